//! Per-mailbox limits and injected faults. It owns:
//! - concurrency slots (Exchange's MailboxConcurrency: at most
//!   `Options::max_concurrent_per_mailbox` requests in flight per mailbox; a parallel `$batch`
//!   of k items for a mailbox holds min(k, 4) slots, a chain 1), and the most ever held;
//! - the request quota: a sliding window of accepted calls' arrival times per mailbox
//!   (`Options::requests_per_window` per `Options::window`);
//! - Retry-After bookkeeping: after a 429 with `Retry-After: s` is sent for a mailbox, a call
//!   for it arriving within s seconds is a client bug (on another TCP connection, calls
//!   arriving in the first [`RETRY_GRACE`] after the answer was sent are forgiven: they may
//!   have been on their way);
//! - the list of injected faults.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{Fault, FaultKind, State, lock};

/// Calls that arrive this soon after a 429 was sent were already on their way.
pub(crate) const RETRY_GRACE: Duration = Duration::from_millis(5);

/// Limits' state.
#[derive(Default)]
pub(crate) struct Limits {
    inflight: Mutex<HashMap<String, usize>>,
    max_in_flight: AtomicUsize,
    windows: Mutex<HashMap<String, VecDeque<Instant>>>,
    /// Mailbox → the last Retry-After given for it.
    blocked: Mutex<HashMap<String, Block>>,
    faults: Mutex<Vec<Fault>>,
}

/// A Retry-After that was sent: when, until when it runs, on which connection.
struct Block {
    sent: Instant,
    until: Instant,
    peer: Option<SocketAddr>,
}

/// Concurrency slots held; released when dropped (also when a client hangs up mid-call).
pub(crate) struct Slots {
    st: Arc<State>,
    held: Vec<(String, usize)>,
}

impl Drop for Slots {
    fn drop(&mut self) {
        let mut inflight = lock(&self.st.limits.inflight);
        for (m, n) in self.held.drain(..) {
            if let Some(c) = inflight.get_mut(&m) {
                *c = c.saturating_sub(n);
                if *c == 0 {
                    inflight.remove(&m);
                }
            }
        }
    }
}

impl Limits {
    /// Takes `n` slots of each mailbox listed, up to `limit` per mailbox. Returns the slots
    /// taken and the mailboxes refused (over the limit: nothing taken for them).
    pub fn acquire(
        st: &Arc<State>,
        want: &[(String, usize)],
        limit: usize,
    ) -> (Slots, Vec<String>) {
        let mut inflight = lock(&st.limits.inflight);
        let mut held = vec![];
        let mut refused = vec![];
        for (m, n) in want {
            let cur = inflight.get(m).copied().unwrap_or(0);
            if cur + n > limit {
                refused.push(m.clone());
                continue;
            }
            inflight.insert(m.clone(), cur + n);
            st.limits
                .max_in_flight
                .fetch_max(cur + n, Ordering::Relaxed);
            held.push((m.clone(), *n));
        }
        drop(inflight);
        (
            Slots {
                st: st.clone(),
                held,
            },
            refused,
        )
    }

    /// The most slots any mailbox held at once since the last reset.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::Relaxed)
    }

    pub fn reset_max(&self) {
        let now = lock(&self.inflight).values().copied().max().unwrap_or(0);
        self.max_in_flight.store(now, Ordering::Relaxed);
    }

    /// Forgets every mailbox's quota window: the calls of a run a day ago no longer count.
    pub fn clear_windows(&self) {
        lock(&self.windows).clear();
    }

    /// Counts a call against the mailbox's quota; `Err(seconds until there is room)` when the
    /// window is full (the call is then not counted).
    pub fn quota(&self, mailbox: &str, limit: u32, window: Duration) -> Result<(), u64> {
        let now = Instant::now();
        let mut w = lock(&self.windows);
        let q = w.entry(mailbox.to_string()).or_default();
        while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
            q.pop_front();
        }
        if q.len() >= limit as usize {
            let oldest = *q.front().expect("a full window has calls");
            let wait = (oldest + window).saturating_duration_since(now);
            return Err(wait.as_secs_f64().ceil().max(1.0) as u64);
        }
        q.push_back(now);
        Ok(())
    }

    /// When a call for `mailbox` that arrived at `received` on connection `peer` breaks a
    /// Retry-After: how long was left. A call on the connection the 429 was sent on was
    /// certainly sent after it was read; on another connection, after [`RETRY_GRACE`].
    pub fn broken_retry_after(
        &self,
        mailbox: &str,
        received: Instant,
        peer: Option<SocketAddr>,
    ) -> Option<Duration> {
        let blocked = lock(&self.blocked);
        let b = blocked.get(mailbox)?;
        let same_connection = peer.is_some() && peer == b.peer && received >= b.sent;
        let broken = received < b.until && (same_connection || received >= b.sent + RETRY_GRACE);
        broken.then(|| b.until.duration_since(received))
    }

    /// Notes that a 429 with `Retry-After: secs` for `mailbox` is being sent now on `peer`.
    pub fn block(&self, mailbox: &str, secs: u64, peer: Option<SocketAddr>) {
        let now = Instant::now();
        let until = now + Duration::from_secs(secs);
        let mut blocked = lock(&self.blocked);
        if blocked.get(mailbox).is_none_or(|b| until >= b.until) {
            blocked.insert(
                mailbox.to_string(),
                Block {
                    sent: now,
                    until,
                    peer,
                },
            );
        }
    }

    pub fn inject(&self, f: Fault) {
        lock(&self.faults).push(f);
    }

    /// Takes one use of the first fault for `op` whose user matches (one of `user_keys`, or
    /// any user) and whose kind passes `kind_ok`.
    pub fn take(
        &self,
        op: &str,
        user_keys: &[&str],
        kind_ok: impl Fn(&FaultKind) -> bool,
    ) -> Option<FaultKind> {
        let mut faults = lock(&self.faults);
        let i = faults.iter().position(|f| {
            f.op == op
                && kind_ok(&f.kind)
                && f.user
                    .as_deref()
                    .is_none_or(|u| user_keys.iter().any(|k| k.eq_ignore_ascii_case(u)))
        })?;
        let kind = faults[i].kind.clone();
        faults[i].times = faults[i].times.saturating_sub(1);
        if faults[i].times == 0 {
            faults.remove(i);
        }
        Some(kind)
    }
}
