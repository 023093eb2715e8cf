//! The one recorder of a batch's results: a contact the provider refuses is noted (in the report
//! and the change log) and the others stand; the first other failure is returned once every result
//! is taken. Also the provider call made while the last batch's records are written.

use std::sync::{Arc, Mutex};

use super::finish::{Deferred, DeferredWrite};
use crate::backend::BackendError;
use crate::store::{Store, StoreError};

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

/// Sorts one result of a batch: `Some` on success. A refusal of this one contact (see
/// `BackendError::is_contact_level`) goes to `refuse`, and the batch's other items stand; the
/// first other failure is kept in `first_err`, for the caller to return once every result is
/// taken.
pub(super) fn sort_result<T>(
    result: Result<T, BackendError>,
    first_err: &mut Option<BackendError>,
    refuse: impl FnOnce(BackendError),
) -> Option<T> {
    match result {
        Ok(t) => Some(t),
        Err(e) if e.is_contact_level() => {
            refuse(e);
            None
        }
        Err(e) => {
            first_err.get_or_insert(e);
            None
        }
    }
}

/// Notes a contact the provider refused: in the destination's report, and in the change log
/// (`refused`, with the reason). The destination's other changes are made; it is reported as
/// failed, and the contact is tried again at the next run.
pub(super) fn refusal(
    deferred: &mut Deferred,
    refused: &mut Vec<String>,
    (action, contact_id, name): (&str, &str, &str),
    e: BackendError,
) {
    let who = match (name.is_empty(), contact_id.is_empty()) {
        (false, _) => name.to_string(),
        (true, false) => contact_id.to_string(),
        (true, true) => "a contact".to_string(),
    };
    refused.push(format!("{action} {who}: {e}"));
    deferred.writes.push(DeferredWrite::Log {
        action: "refused",
        source_id: None,
        contact_id: contact_id.to_string(),
        name: (!name.is_empty()).then(|| name.to_string()),
        detail: Some(format!("{action}: {e}")),
        fields: None,
        before: None,
        after: None,
    });
}
