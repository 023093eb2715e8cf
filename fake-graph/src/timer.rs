//! Wakes tasks at exact instants, for the fake's injected latency. tokio's timer counts whole
//! milliseconds and fires up to a millisecond (often more) after the instant asked for: at 25 ms
//! a call that is a 4–8 % error on every call, which a benchmark's critical-path bound would
//! wrongly charge to the client. This thread sleeps with the OS's own precision (tens of µs).
//! It owns nothing but the deadlines it was given.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Instant;
use tokio::sync::oneshot;

type Wake = (Instant, oneshot::Sender<()>);

pub struct Timer {
    tx: Mutex<mpsc::Sender<Wake>>,
}

impl Timer {
    /// Starts the timer's thread; it ends when the timer is dropped.
    pub fn new() -> Timer {
        let (tx, rx) = mpsc::channel::<Wake>();
        std::thread::Builder::new()
            .name("fake-timer".into())
            .spawn(move || {
                let mut due: BTreeMap<(Instant, u64), oneshot::Sender<()>> = BTreeMap::new();
                let mut seq = 0u64;
                loop {
                    let now = Instant::now();
                    while let Some(entry) = due.first_entry() {
                        if entry.key().0 > now {
                            break;
                        }
                        let _ = entry.remove().send(());
                    }
                    let got = match due.keys().next() {
                        Some((at, _)) => rx.recv_timeout(at.saturating_duration_since(now)),
                        None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                    };
                    match got {
                        Ok((at, wake)) => {
                            seq += 1;
                            due.insert((at, seq), wake);
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            })
            .expect("the fake's timer thread starts");
        Timer { tx: Mutex::new(tx) }
    }

    /// Returns at `at` (at once if it has passed).
    pub async fn sleep_until(&self, at: Instant) {
        if at <= Instant::now() {
            return;
        }
        let (wake, woken) = oneshot::channel();
        if self.tx.lock().unwrap().send((at, wake)).is_ok() {
            let _ = woken.await;
        }
    }
}
