//! The one recorder of a batch's results: a contact the provider refuses is noted (in the report
//! and the change log) and the others stand; the first other failure is returned once every result
//! is taken. Also the provider call made while the last batch's records are written.

use std::sync::{Arc, Mutex};

use super::finish::{Deferred, DeferredWrite};
use crate::backend::BackendError;
use crate::store::{Counts, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub(super) enum ApplyError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Other(String),
}

/// Runs a provider call with the deferred writes of the batches before it: the call is started
/// (its request goes out at its first poll), the deferred writes are made on the blocking pool
/// while it is in flight, then both are awaited. (Made on this task, the writes would also hold
/// up the connection task that sends the request: tokio runs a task just woken on the same
/// thread, after the one that woke it.) A failed state write is reported after the call has
/// finished, so a write in flight is never abandoned halfway.
pub(super) async fn overlapped<T>(
    store: &Arc<Mutex<Store>>,
    deferred: &mut Deferred,
    call: impl std::future::Future<Output = T>,
) -> Result<T, ApplyError> {
    let mut call = std::pin::pin!(call);
    let first = futures::poll!(call.as_mut());
    let written = (!deferred.writes.is_empty()).then(|| {
        let mut writes = deferred.take();
        let store = store.clone();
        tokio::task::spawn_blocking(move || writes.write(&store))
    });
    let out = match first {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => call.await,
    };
    if let Some(written) = written {
        written
            .await
            .map_err(|e| ApplyError::Other(format!("recording the last batch: {e}")))??;
    }
    Ok(out)
}

/// What a destination whose provider refused some contacts reports.
pub(super) fn refused_summary(refused: &[String]) -> String {
    let n = refused.len();
    let first = refused.first().map(String::as_str).unwrap_or_default();
    if n == 1 {
        format!("1 contact was refused ({first}); every other change was made")
    } else {
        format!("{n} contacts were refused (first: {first}); every other change was made")
    }
}

/// Where a destination's results are recorded while its plan is applied: the ledger rows and
/// log lines to write (while the next call is in flight), the counts, and the contacts the
/// provider refused.
pub(super) struct Recorder<'a> {
    pub(super) deferred: Deferred,
    pub(super) applied: &'a mut Counts,
    pub(super) refused: &'a mut Vec<String>,
}

impl Recorder<'_> {
    /// Takes one batch's results, in the order of `items`: each success goes to `done`, which
    /// records it; a refusal of that one contact (`BackendError::is_contact_level`) is noted,
    /// the contact named by `who` (its id, its name; asked only then), and the batch's other items
    /// stand; the
    /// first other failure is returned once every result is taken.
    pub(super) fn take<I, T>(
        &mut self,
        action: &str,
        batch: impl IntoIterator<Item = (I, Result<T, BackendError>)>,
        who: impl Fn(&I) -> (String, String),
        mut done: impl FnMut(&mut Recorder<'_>, I, T),
    ) -> Result<(), ApplyError> {
        let mut first_err = None;
        for (item, result) in batch {
            match result {
                Ok(t) => done(self, item, t),
                Err(e) if e.is_contact_level() => {
                    let (id, name) = who(&item);
                    self.refuse(action, &id, &name, e);
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), |e| Err(e.into()))
    }

    /// Notes a contact the provider refused: in the destination's report, and in the change
    /// log (`refused`, with the reason). The destination's other changes are made; it is
    /// reported as failed, and the contact is tried again at the next run.
    pub(super) fn refuse(&mut self, action: &str, contact_id: &str, name: &str, e: BackendError) {
        let who = match (name.is_empty(), contact_id.is_empty()) {
            (false, _) => name,
            (true, false) => contact_id,
            (true, true) => "a contact",
        };
        self.refused.push(format!("{action} {who}: {e}"));
        self.log(
            "refused",
            None,
            contact_id,
            Some(name).filter(|n| !n.is_empty()),
        )
        .detail(format!("{action}: {e}"));
    }

    /// Records a copy written (its ledger row).
    pub(super) fn copy(&mut self, source_id: &str, contact_id: &str, digest: &str, etag: &str) {
        self.deferred.copy(source_id, contact_id, digest, etag);
    }

    /// A change-log line, to be filled (see `LogLine`).
    pub(super) fn log(
        &mut self,
        action: &'static str,
        source_id: Option<&str>,
        contact_id: &str,
        name: Option<&str>,
    ) -> LogLine<'_> {
        self.deferred.writes.push(DeferredWrite::Log {
            action,
            source_id: source_id.map(str::to_string),
            contact_id: contact_id.to_string(),
            name: name.map(str::to_string),
            detail: None,
            fields: None,
            before: None,
            after: None,
        });
        let Some(DeferredWrite::Log {
            detail,
            fields,
            before,
            after,
            ..
        }) = self.deferred.writes.last_mut()
        else {
            unreachable!("a log line was just pushed")
        };
        LogLine {
            detail,
            fields,
            before,
            after,
        }
    }
}

/// The optional parts of a change-log line just recorded.
pub(super) struct LogLine<'a> {
    detail: &'a mut Option<String>,
    fields: &'a mut Option<String>,
    before: &'a mut Option<String>,
    after: &'a mut Option<String>,
}

impl LogLine<'_> {
    pub(super) fn detail(self, d: String) -> Self {
        *self.detail = Some(d);
        self
    }

    pub(super) fn fields(self, f: String) -> Self {
        *self.fields = Some(f);
        self
    }

    /// The digests of the managed content before and after the change.
    pub(super) fn digests(self, before: Option<&str>, after: Option<&str>) -> Self {
        *self.before = before.map(str::to_string);
        *self.after = after.map(str::to_string);
        self
    }
}
