//! A destination's place among the `concurrency` at the provider: taken before its first call,
//! held to its last, handed on while it records its state; stepping aside while it reads the
//! last answer of a change token's read.

use std::sync::{Arc, Mutex};

/// A destination's place among the `concurrency` at the provider: taken before its first call
/// (`take`), held to its last, then handed to the next destination while this one records its
/// state (`Finish::run`). At most `concurrency` destinations record at once, so a slow state
/// database holds the provider's slots back rather than piling up finished destinations. A
/// destination whose change-token read has made its last call steps aside while it reads that
/// last answer (`step_aside`), and takes a place again before any later call.
pub(super) struct Slot {
    pub(super) provider: Mutex<Option<tokio::sync::OwnedSemaphorePermit>>,
    /// Held by the one destination waiting for its first place: the others wait for this, so a
    /// destination coming back after stepping aside is behind at most one newcomer.
    pub(super) entry: Arc<tokio::sync::Mutex<()>>,
    pub(super) slots: Arc<tokio::sync::Semaphore>,
    pub(super) finishing: Arc<tokio::sync::Semaphore>,
}

impl Slot {
    /// Waits for a first place at the provider, one destination at a time (see `entry`).
    pub(super) async fn enter(&self) {
        let _first = self.entry.lock().await;
        self.take().await;
    }

    /// Waits for a place at the provider (kept if held already).
    pub(super) async fn take(&self) {
        if self.place().is_some() {
            return;
        }
        let place = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the slots are never closed");
        *self.place() = Some(place);
    }

    pub(super) fn place(
        &self,
    ) -> std::sync::MutexGuard<'_, Option<tokio::sync::OwnedSemaphorePermit>> {
        crate::mutex::lock(&self.provider)
    }

    /// Gives the place at the provider to the next destination while this one makes no call.
    pub(super) fn step_aside(&self) {
        self.place().take();
    }

    /// Takes a place among those recording, then gives up the place at the provider.
    pub(super) async fn hand_on(&self) -> tokio::sync::OwnedSemaphorePermit {
        let recording = self
            .finishing
            .clone()
            .acquire_owned()
            .await
            .expect("the slots are never closed");
        self.step_aside();
        recording
    }
}
