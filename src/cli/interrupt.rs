//! Ctrl-C (SIGINT) and SIGTERM during a command that runs jobs (`run`, `plan`, the `job`
//! commands): the destinations in progress finish and are recorded, no other starts, the run is
//! recorded as `interrupted`, and the command exits 130 (SIGINT) or 143 (SIGTERM), as shells and
//! systemd expect. A second signal exits at once; the run it cut is then recorded as
//! `interrupted` by the next command that opens the state (`Store::close_stale_runs`).
//!
//! `serve` has its own shutdown (see `serve`); this module must not be used there.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// A listener for SIGINT and SIGTERM, stopped when dropped.
pub struct Interrupt {
    /// Set at the first signal: the engine starts no other destination (`RunOptions::cancel`).
    pub cancel: Arc<AtomicBool>,
    signal: Arc<AtomicI32>,
    task: tokio::task::JoinHandle<()>,
}

impl Interrupt {
    /// Starts listening (on the current runtime).
    pub fn listen() -> Interrupt {
        let cancel = Arc::new(AtomicBool::new(false));
        let signal = Arc::new(AtomicI32::new(0));
        let (c, s) = (cancel.clone(), signal.clone());
        let task = tokio::spawn(async move {
            loop {
                let got = next_signal().await;
                if s.swap(got, Ordering::SeqCst) != 0 {
                    eprintln!("interrupted again: stopping now");
                    std::process::exit(128 + got);
                }
                c.store(true, Ordering::SeqCst);
                eprintln!(
                    "interrupted: finishing the destinations in progress, starting no other (interrupt again to stop at once)"
                );
            }
        });
        Interrupt {
            cancel,
            signal,
            task,
        }
    }

    /// The exit code for the signal that came, if one did: 128 + its number.
    pub fn exit_code(&self) -> Option<u8> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            n => Some((128 + n) as u8),
        }
    }

    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
}

impl Drop for Interrupt {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits for SIGINT or SIGTERM and returns its number.
async fn next_signal() -> i32 {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = term.recv() => libc::SIGTERM,
            _ = tokio::signal::ctrl_c() => libc::SIGINT,
        },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            libc::SIGINT
        }
    }
}
