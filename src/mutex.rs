//! The one way groupsync locks a mutex: taking it over from a thread that panicked while holding
//! it. What mutexes guard here (the state database, the providers' caches) stays usable after a
//! panic, which is one destination's failure, never the run's. This module imports nothing.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, whether or not a thread panicked while holding it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
