//! The trash, written before every delete: a run of deletes read for the trash chunk by chunk
//! (`read_for_trash`, `write_trash`), or a removed destination's copies trashed as its group is
//! read (`read_into_trash`); and what a delete that did not happen takes back out (`untrash`).
//! It deletes nothing itself.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use super::record::ApplyError;
use super::shared::DestCtx;
use crate::backend::{Backend, BackendError, GroupRead, GroupRef, Read, User};
use crate::card;
use crate::mutex::lock;
use crate::plan::{DeleteOp, DeleteReason, DestEntry, JobSpec, Op, Trashed};
use crate::store::{Store, StoreError, TrashEntry};

/// How many copies a removal's read gathers before it writes them to the trash (see
/// `read_into_trash`): what a provider hands over between two turns it gives the runtime.
const TRASH_CHUNK: usize = crate::backend::YIELD_EVERY;

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

impl Doomed {
    /// A copy of this job as read (`None`: not this job's copy), named and summarised as it is
    /// now, with its text for the trash.
    fn of(
        spec: &JobSpec,
        (contact_id, etag): (&str, &str),
        c: &calcard::vcard::VCard,
        (source_id, reason): (Option<String>, DeleteReason),
    ) -> Option<Doomed> {
        if card::tag_of(c).as_deref() != Some(spec.tag.as_str()) {
            return None;
        }
        let (mut text, before) = card::text_and_digest(c, &spec.fields);
        // Held until the trash is written: without the slack of its growth.
        text.shrink_to_fit();
        Some(Doomed {
            contact_id: contact_id.to_string(),
            etag: etag.to_string(),
            source_id,
            name: card::display_name(c),
            reason: reason.as_str(),
            before,
            payload: text,
        })
    }
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
    (spec, user, g): (&JobSpec, &User, &GroupRef),
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
            let what = (d.source_id.clone(), d.reason);
            match current
                .card
                .as_ref()
                .ok()
                .and_then(|c| Doomed::of(spec, (&d.contact_id, &d.etag), c, what))
            {
                Some(doomed) => read[i] = Some(doomed),
                None => {
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
                etag: &d.etag,
                source_id: d.source_id.as_deref(),
                digest: &d.before,
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

/// Reads a group leaving the job whole, and writes each of the job's copies to the trash as the
/// read goes: a removal deletes every copy it reads, so each contact is read once, and a copy is
/// never read again by id for its trash. Copies are trashed a chunk at a time (`TRASH_CHUNK`,
/// or what the provider hands over before it gives the runtime a turn), on the blocking pool
/// (while the next page's request is in flight, at a page's end); the read goes on once the
/// chunk is written. The trash entries keep what the deletes need (`Store::trashed_page`), so
/// a removal holds one chunk, whatever the size of the group. Returns the contacts that are
/// not this job's copies, summarised, and the copies trashed. On a failure nothing it trashed
/// stays trashed.
pub(super) async fn read_into_trash<B: Backend>(
    ctx: &DestCtx<'_, B>,
    g: &GroupRef,
) -> Result<(Vec<DestEntry>, Trashed), ApplyError> {
    let (spec, user) = (&ctx.job.spec, ctx.user);
    let after = lock(ctx.store).trash_last_id()?;
    let pending: Mutex<Vec<Doomed>> = Mutex::new(vec![]);
    let mut others = vec![];
    let mut sink = |r| {
        let Read::Contact(c) = r else { return };
        let copy = c.card.as_ref().ok().and_then(|card| {
            let what = (card::source_of(card), REMOVED);
            Doomed::of(spec, (&c.id, &c.etag), card, what)
        });
        match copy {
            Some(d) => lock(&pending).push(d),
            None => others.push(DestEntry::classify_tags(spec, c.id, c.etag, &c.card)),
        }
    };
    let read = ctx
        .backend
        .read_group(user, Some(g), GroupRead::WHOLE, &mut sink);
    let done = trash_as_read(ctx, g, read, &pending).await;
    if done.is_err() {
        untrash_from(ctx, after);
    }
    Ok((
        others,
        Trashed {
            copies: done?,
            after,
        },
    ))
}

/// Drives a group read whose sink gathers copies in `pending`, writing them to the trash a
/// chunk at a time (see `read_into_trash`). Returns how many it trashed.
async fn trash_as_read<B: Backend>(
    ctx: &DestCtx<'_, B>,
    g: &GroupRef,
    read: impl Future<Output = Result<Option<String>, BackendError>>,
    pending: &Mutex<Vec<Doomed>>,
) -> Result<usize, ApplyError> {
    let (spec, user) = (&ctx.job.spec, ctx.user);
    let mut read = std::pin::pin!(read);
    let mut copies = 0;
    loop {
        // The read goes on until it ends, or until a chunk is full while it waits for an
        // answer: it is not polled again before that chunk is written.
        let ended = std::future::poll_fn(|cx| match read.as_mut().poll(cx) {
            Poll::Ready(r) => Poll::Ready(Some(r)),
            Poll::Pending if lock(pending).len() >= TRASH_CHUNK => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        })
        .await;
        if let Some(Err(e)) = ended {
            return Err(e.into());
        }
        let chunk = std::mem::take(&mut *lock(pending));
        if !chunk.is_empty() {
            copies += chunk.len();
            trashed(write_trash(ctx.store, ctx.run_id, spec, user, g, chunk)).await?;
        }
        if ended.is_some() {
            return Ok(copies);
        }
    }
}

/// The reason of a removal's deletes, under which its copies are trashed as they are read.
const REMOVED: DeleteReason = DeleteReason::DestinationRemoved;

/// The next page of copies a removal trashed as it read the group (see `read_into_trash`),
/// after trash entry `after`, as the deletes take them.
pub(super) fn trashed_page<B>(
    ctx: &DestCtx<'_, B>,
    after: i64,
    limit: usize,
) -> Result<Vec<(i64, Doomed)>, ApplyError> {
    let who = (ctx.job_name(), ctx.user.id.as_str(), REMOVED.as_str());
    let page = lock(ctx.store).trashed_page(ctx.run_id, who, after, limit)?;
    Ok(page
        .into_iter()
        .map(|t| {
            let d = Doomed {
                contact_id: t.contact_id,
                etag: t.etag,
                source_id: t.source_id,
                name: t.name,
                reason: REMOVED.as_str(),
                before: t.digest,
                payload: String::new(),
            };
            (t.id, d)
        })
        .collect())
}

/// Takes every copy a removal trashed after trash entry `after` back out of the trash: the
/// removal stopped before it deleted them (see `Store::untrash_after`). A failure here is
/// logged: the removal's own failure is what the destination reports.
pub(super) fn untrash_from<B>(ctx: &DestCtx<'_, B>, after: i64) {
    let (job, user) = (ctx.job_name(), ctx.user);
    let who = (job, user.id.as_str(), REMOVED.as_str());
    if let Err(e) = lock(ctx.store).untrash_after(ctx.run_id, who, after) {
        tracing::warn!(job, dest = %user.name, "taking the copies not deleted back out of the trash: {e}");
    }
}

/// Waits for a chunk's trash to be written.
pub(super) async fn trashed(t: Trashing) -> Result<Vec<Doomed>, ApplyError> {
    t.await
        .map_err(|e| ApplyError::Other(format!("writing the trash: {e}")))?
        .map_err(ApplyError::from)
}

/// Takes the trash entries of contacts that were not deleted after all back out of the trash
/// (see `Store::untrash`). A failure here is logged: the delete's own failure is what the
/// destination reports.
pub(super) fn untrash<B>(ctx: &DestCtx<'_, B>, contact_ids: &[&str]) {
    if contact_ids.is_empty() {
        return;
    }
    let (job, user) = (ctx.job_name(), ctx.user);
    if let Err(e) = lock(ctx.store).untrash(ctx.run_id, job, &user.id, contact_ids) {
        tracing::warn!(job, dest = %user.name, "taking {} contacts not deleted back out of the trash: {e}", contact_ids.len());
    }
}
