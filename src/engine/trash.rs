//! Deletes, trash first: each run of deletes read for the trash chunk by chunk, each chunk's
//! trash written before any of its contacts is deleted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::record::ApplyError;
use crate::backend::{Backend, BackendError, GroupRef, User};
use crate::card;
use crate::mutex::lock;
use crate::plan::{DeleteOp, JobSpec, Op};
use crate::store::{Store, StoreError, TrashEntry};

/// A copy about to be deleted, as the trash and the change log keep it.
pub(super) struct Doomed {
    pub(super) contact_id: String,
    pub(super) etag: String,
    pub(super) source_id: Option<String>,
    pub(super) name: String,
    /// Why it goes (`DeleteReason::as_str`).
    pub(super) reason: &'static str,
    /// Its managed digest as read.
    pub(super) before: String,
    /// Its vCard text, for the trash.
    pub(super) payload: String,
}

pub(super) fn lcm(a: usize, b: usize) -> usize {
    let gcd = |mut a: usize, mut b: usize| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    a / gcd(a, b) * b
}

/// The contacts of a run of deletes, read for the trash: each turned into what the trash and
/// the change log keep as it arrives, in the plan's order; a contact already gone is left out
/// (nothing to delete). Refused, with nothing kept, when a contact changed since it was planned
/// (`Conflict`: it is read and planned again) or no longer carries the job's tag.
pub(super) async fn read_for_trash<B: Backend>(
    backend: &B,
    spec: &JobSpec,
    user: &User,
    g: &GroupRef,
    ops: &[Op],
) -> Result<Vec<Doomed>, ApplyError> {
    let deletes: Vec<&DeleteOp> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Delete(d) => Some(&**d),
            _ => None,
        })
        .collect();
    // Where each contact is in the plan's order; what was read of it goes there.
    let at: HashMap<&str, usize> = deletes
        .iter()
        .enumerate()
        .map(|(i, d)| (d.contact_id.as_str(), i))
        .collect();
    let ids: Vec<String> = deletes.iter().map(|d| d.contact_id.clone()).collect();
    let mut read: Vec<Option<Doomed>> = (0..deletes.len()).map(|_| None).collect();
    let mut refused: Option<ApplyError> = None;
    backend
        .fetch_contacts(user, g, &ids, &mut |current| {
            let Some(&i) = at.get(current.id.as_str()) else {
                return;
            };
            let d = deletes[i];
            if refused.is_some() {
                return;
            }
            if current.etag != d.etag {
                refused = Some(ApplyError::Backend(BackendError::Conflict {
                    what: format!("contact {} of {}", d.contact_id, user.name),
                }));
                return;
            }
            // Named and summarised as it is now, as the trash keeps it (a removal read only
            // its tags).
            match &current.card {
                Ok(c) if card::tag_of(c).as_deref() == Some(spec.tag.as_str()) => {
                    let (mut payload, before) = card::text_and_digest(c, &spec.fields);
                    // Held until the trash is written: without the slack of its growth.
                    payload.shrink_to_fit();
                    read[i] = Some(Doomed {
                        contact_id: d.contact_id.clone(),
                        etag: d.etag.clone(),
                        source_id: d.source_id.clone(),
                        name: card::display_name(c),
                        reason: d.reason.as_str(),
                        before,
                        payload,
                    });
                }
                _ => {
                    refused = Some(ApplyError::Other(format!(
                        "contact {} of {} no longer carries tag {}; left alone",
                        d.contact_id, user.name, spec.tag
                    )))
                }
            }
        })
        .await?;
    if let Some(e) = refused {
        return Err(e);
    }
    Ok(read.into_iter().flatten().collect())
}

/// Contacts whose trash is being written (`write_trash`), handed back once it is.
pub(super) type Trashing = tokio::task::JoinHandle<Result<Vec<Doomed>, StoreError>>;

/// Writes contacts about to be deleted to the trash, on the blocking pool (a thousand contacts'
/// text is a long write for a runtime thread).
pub(super) fn write_trash(
    store: &Arc<Mutex<Store>>,
    run_id: i64,
    spec: &JobSpec,
    user: &User,
    g: &GroupRef,
    mut doomed: Vec<Doomed>,
) -> Trashing {
    let store = store.clone();
    let (job, user_id, user_name, group_name) = (
        spec.name.clone(),
        user.id.clone(),
        user.name.clone(),
        g.name.clone(),
    );
    tokio::task::spawn_blocking(move || {
        let trash: Vec<TrashEntry<'_>> = doomed
            .iter()
            .map(|d| TrashEntry {
                contact_id: &d.contact_id,
                name: &d.name,
                reason: d.reason,
                payload: &d.payload,
            })
            .collect();
        let written = lock(&store).trash(run_id, &job, (&user_id, &user_name, &group_name), &trash);
        drop(trash);
        // The text is in the trash now: what the deletes still need is small.
        written.map(|_| {
            for d in &mut doomed {
                d.payload = String::new();
            }
            doomed
        })
    })
}
