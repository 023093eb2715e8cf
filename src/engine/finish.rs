//! What a destination leaves to record once the provider is done with it (`Finish`), and the
//! ledger rows and log lines written while its next call is in flight (`Deferred`).

use std::sync::{Arc, Mutex};

use crate::backend::User;
use crate::mutex::lock;
use crate::plan::LedgerCopy;
use crate::store::{Change, Store, StoreError};

use super::DestReport;
use super::slot::Slot;

/// What a destination writes to the state after its last provider call: the ledger rows and
/// log lines of its last batch, the ledger settled after a whole plan, what it converged to,
/// and its outcome. Written on the blocking pool once its slot is handed on (`run`), so the next
/// destination's calls are not held up by this one's bookkeeping. Nothing here calls the
/// provider.
pub(super) struct Finish {
    pub(super) job: String,
    pub(super) user_id: String,
    pub(super) run_id: i64,
    /// Ledger rows and log lines not written yet; written first, in order.
    pub(super) deferred: Option<Deferred>,
    /// Ledger rows of copies left as they were that change (`Plan::kept`), and source ids whose
    /// rows go (`Plan::forget`): set when the whole plan was applied.
    pub(super) settle: Option<Settle>,
    /// A state batch (`Store::batch_begin`) to end.
    pub(super) batch: bool,
    /// Why the destination failed, if it did.
    pub(super) failed: Option<String>,
    /// What the destination converged to (`Store::set_fingerprint`) and its change token, each
    /// written when `Some`: as given when the destination succeeded and everything above was
    /// written, cleared otherwise.
    pub(super) mark: Option<Option<String>>,
    pub(super) token: Option<Option<(String, String)>>,
    pub(super) outcome: FinishOutcome,
}

/// Ledger rows of copies left as they were that change, and source ids whose rows go (see
/// `Store::settle_ledger`).
pub(super) type Settle = (Vec<(String, LedgerCopy)>, Vec<String>);

/// How a destination's run ends in the state.
pub(super) enum FinishOutcome {
    /// Not at all: the destination is tried again in this run.
    Retry,
    /// Its outcome is recorded (`Store::destination_outcome`), with the error if it failed.
    Record,
    /// A removed destination cleaned up: it is forgotten (or, if that failed, its error
    /// recorded).
    Forget,
}

impl Finish {
    pub(super) fn new(job: &str, user: &User, run_id: i64, outcome: FinishOutcome) -> Finish {
        Finish {
            job: job.to_string(),
            user_id: user.id.clone(),
            run_id,
            deferred: None,
            settle: None,
            batch: false,
            failed: None,
            mark: None,
            token: None,
            outcome,
        }
    }

    /// Hands the slot on, writes everything on the blocking pool, and reports a state error in
    /// `report` (a provider error already there stays).
    pub(super) async fn run(self, store: &Arc<Mutex<Store>>, slot: &Slot, report: &mut DestReport) {
        let recording = slot.hand_on().await;
        let store = store.clone();
        let written = tokio::task::spawn_blocking(move || {
            let written = self.write(&store);
            drop(recording);
            written
        })
        .await;
        let error = match written {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("internal error: recording the destination: {e}"),
        };
        if report.error.is_none() {
            tracing::warn!(dest = %report.user, "destination failed: {error}");
            report.error = Some(error);
        }
    }

    /// Writes everything, in order, under one lock of the state; returns the first error.
    pub(super) fn write(self, store: &Mutex<Store>) -> Result<(), StoreError> {
        let s = lock(store);
        let mut first = Ok(());
        if let Some(mut d) = self.deferred {
            first = d.write_to(&s);
        }
        if first.is_ok()
            && let Some((kept, forget)) = &self.settle
        {
            first = s.settle_ledger(&self.job, &self.user_id, kept, forget);
        }
        if self.batch {
            let ended = s.batch_end();
            if first.is_ok() {
                first = ended;
            }
        }
        let converged = first.is_ok() && self.failed.is_none();
        if let Some(mark) = &self.mark {
            let mark = mark.as_deref().filter(|_| converged);
            let _ = s.set_fingerprint(&self.job, &self.user_id, mark);
        }
        if let Some(token) = &self.token {
            let token = token
                .as_ref()
                .filter(|_| converged)
                .map(|(t, g)| (t.as_str(), g.as_str()));
            let _ = s.set_change_token(&self.job, &self.user_id, token);
        }
        let error = match (&self.failed, &first) {
            (Some(f), _) => Some(f.clone()),
            (None, Err(e)) => Some(e.to_string()),
            (None, Ok(())) => None,
        };
        let ended = match (self.outcome, error) {
            (FinishOutcome::Retry, _) => Ok(()),
            (FinishOutcome::Forget, None) => s.forget_destination(&self.job, &self.user_id),
            (_, error) => {
                s.destination_outcome(&self.job, &self.user_id, self.run_id, error.as_deref())
            }
        };
        // An outcome not recorded after a provider failure is not worth another error.
        if first.is_ok() && self.failed.is_none() {
            first = ended;
        }
        first
    }
}

/// Ledger rows and log lines of the batches a destination has written, not yet in the state
/// database: they are written while the destination's next call is in flight (`overlapped`), so
/// recording one batch is off the destination's critical path. A crash before they are written
/// loses them like an uncommitted transaction would: the copies are found again by their tags.
pub(super) struct Deferred {
    /// Whose writes these are (run, job, user), shared by every batch of the destination.
    pub(super) base: Arc<DeferredBase>,
    pub(super) writes: Vec<DeferredWrite>,
}

pub(super) enum DeferredWrite {
    Copy {
        source_id: String,
        contact_id: String,
        digest: String,
        etag: String,
    },
    Log {
        action: &'static str,
        source_id: Option<String>,
        contact_id: String,
        name: Option<String>,
        detail: Option<String>,
        fields: Option<String>,
        before: Option<String>,
        after: Option<String>,
    },
}

/// A `Change`'s run, job and user without borrows, to write from another thread.
pub(super) struct DeferredBase {
    pub(super) run_id: i64,
    pub(super) job: String,
    pub(super) user_id: String,
    pub(super) user: String,
}

impl Deferred {
    pub(super) fn new(base: &Change<'_>) -> Self {
        Deferred {
            base: Arc::new(DeferredBase {
                run_id: base.run_id,
                job: base.job.to_string(),
                user_id: base.user_id.to_string(),
                user: base.user.to_string(),
            }),
            writes: vec![],
        }
    }

    /// The writes deferred so far, to be written elsewhere; this one is left empty.
    pub(super) fn take(&mut self) -> Deferred {
        Deferred {
            base: self.base.clone(),
            writes: std::mem::take(&mut self.writes),
        }
    }

    pub(super) fn copy(&mut self, source_id: &str, contact_id: &str, digest: &str, etag: &str) {
        self.writes.push(DeferredWrite::Copy {
            source_id: source_id.to_string(),
            contact_id: contact_id.to_string(),
            digest: digest.to_string(),
            etag: etag.to_string(),
        });
    }

    /// Writes everything deferred, in order, under one lock of the state.
    pub(super) fn write(&mut self, store: &Mutex<Store>) -> Result<(), StoreError> {
        if self.writes.is_empty() {
            return Ok(());
        }
        self.write_to(&lock(store))
    }

    /// Writes everything deferred, in order, to the state locked by the caller.
    pub(super) fn write_to(&mut self, s: &Store) -> Result<(), StoreError> {
        let b = &*self.base;
        let base = Change {
            run_id: b.run_id,
            job: &b.job,
            user_id: &b.user_id,
            user: &b.user,
            ..Default::default()
        };
        for w in self.writes.drain(..) {
            match w {
                DeferredWrite::Copy {
                    source_id,
                    contact_id,
                    digest,
                    etag,
                } => s.record_copy(
                    base.job,
                    base.user_id,
                    &source_id,
                    &contact_id,
                    &digest,
                    &etag,
                )?,
                DeferredWrite::Log {
                    action,
                    source_id,
                    contact_id,
                    name,
                    detail,
                    fields,
                    before,
                    after,
                } => s.log_change(&Change {
                    action,
                    source_id: source_id.as_deref(),
                    contact_id: Some(&contact_id),
                    name: name.as_deref(),
                    detail: detail.as_deref(),
                    fields: fields.as_deref(),
                    before: before.as_deref(),
                    after: after.as_deref(),
                    ..base.clone()
                })?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A destination's last state writes (`Finish`): what was written is recorded whatever
    /// happened; what it converged to (mark, change token) is remembered only when it
    /// succeeded, and cleared otherwise; its outcome says which; a removed destination that
    /// succeeded is forgotten, one to be tried again gets no outcome.
    #[test]
    fn finish_remembers_convergence_only_on_success() {
        let store = Mutex::new(Store::open_in_memory().unwrap());
        let run_id = lock(&store).start_run("j", false).unwrap();
        let user = User {
            id: "u1".into(),
            name: "u@example.com".into(),
        };
        let base = Change {
            run_id,
            job: "j",
            user_id: "u1",
            user: "u@example.com",
            ..Default::default()
        };
        for (i, failed) in [None, Some("the provider said no")].into_iter().enumerate() {
            lock(&store)
                .touch_destination("j", "u1", "u@example.com", "G")
                .unwrap();
            lock(&store)
                .set_fingerprint("j", "u1", Some("old"))
                .unwrap();
            let mut deferred = Deferred::new(&base);
            deferred.copy(&format!("s{i}"), &format!("c{i}"), "d", "e");
            let mut finish = Finish::new("j", &user, run_id, FinishOutcome::Record);
            finish.deferred = Some(deferred);
            finish.settle = Some((vec![], vec![]));
            finish.failed = failed.map(str::to_string);
            finish.mark = Some(Some("new".into()));
            finish.token = Some(Some(("t".into(), "g".into())));
            finish.write(&store).unwrap();
            let s = lock(&store);
            assert!(
                s.copy_by_contact("j", "u1", &format!("c{i}"))
                    .unwrap()
                    .is_some()
            );
            let ok = failed.is_none();
            assert_eq!(s.fingerprint("j", "u1").unwrap().is_some(), ok);
            assert_eq!(s.change_token("j", "u1").unwrap().is_some(), ok);
            let d = s.destinations("j").unwrap().pop().unwrap();
            assert_eq!(d.last_error.as_deref(), failed);
            assert_eq!(
                d.last_outcome.as_deref(),
                Some(if ok { "ok" } else { "failed" })
            );
        }
        // Tried again: no outcome recorded, the convergence cleared.
        lock(&store)
            .set_fingerprint("j", "u1", Some("old"))
            .unwrap();
        let mut finish = Finish::new("j", &user, run_id, FinishOutcome::Retry);
        finish.failed = Some("a contact changed".into());
        finish.mark = Some(Some("new".into()));
        finish.write(&store).unwrap();
        let d = lock(&store).destinations("j").unwrap().pop().unwrap();
        assert_eq!(d.last_error.as_deref(), Some("the provider said no"));
        assert_eq!(lock(&store).fingerprint("j", "u1").unwrap(), None);
        // A removal that succeeded: forgotten with its ledger.
        Finish::new("j", &user, run_id, FinishOutcome::Forget)
            .write(&store)
            .unwrap();
        assert!(lock(&store).destinations("j").unwrap().is_empty());
        assert_eq!(lock(&store).copy_count("j", "u1").unwrap(), 0);
    }
}
