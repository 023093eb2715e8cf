//! Applying a plan: one dispatcher over the operations, in order, in the provider's batches;
//! each result recorded (a contact the provider refuses noted, the others written), the ledger
//! rows and log lines deferred while the next call is in flight.

use std::sync::{Arc, Mutex};

use calcard::vcard::VCard;

use super::finish::{Deferred, DeferredWrite, Finish, FinishOutcome, Settle};
use super::record::{ApplyError, overlapped, refusal, sort_result};
use super::trash::{Trashing, delete_trashed, lcm, read_for_trash, write_trash};
use crate::backend::{Backend, BackendError, GroupRef, User};
use crate::mutex::lock;
use crate::plan::{JobSpec, LedgerCopy, Op, Plan, SourceSet, UpdateOp};
use crate::store::{Change, Counts, Store};
use crate::{card, plan};

/// Applies a plan, in order, stopping at the first failure (the rest is retried next run).
/// Returns the group as it is after the plan (created, or still the one read), and what is left
/// to record in the state once the provider is done with (`Finish`): the state writes of a
/// destination are batched into few transactions, and its last ones are made off its slot.
#[allow(clippy::too_many_arguments)]
pub(super) async fn apply<B: Backend>(
    backend: &B,
    store: &Arc<Mutex<Store>>,
    spec: &JobSpec,
    run_id: i64,
    user: &User,
    group: Option<GroupRef>,
    plan: &mut Plan,
    source: Option<&SourceSet>,
    applied: (&mut Counts, &mut Vec<String>),
) -> (Result<Option<GroupRef>, ApplyError>, Finish) {
    let mut finish = Finish::new(&spec.name, user, run_id, FinishOutcome::Retry);
    if let Err(e) = lock(store).batch_begin() {
        return (Err(e.into()), finish);
    }
    finish.batch = true;
    let base = Change {
        run_id,
        job: &spec.name,
        user_id: &user.id,
        user: &user.name,
        ..Default::default()
    };
    let mut deferred = Deferred::new(&base);
    let result = apply_ops(
        backend,
        store,
        spec,
        &base,
        user,
        group,
        plan,
        source,
        applied,
        &mut deferred,
    )
    .await;
    // What was written before a failure is recorded all the same.
    finish.deferred = Some(deferred);
    match result {
        Ok((group, settle)) => {
            finish.settle = settle;
            (Ok(group), finish)
        }
        Err(e) => (Err(e), finish),
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn apply_ops<B: Backend>(
    backend: &B,
    store: &Arc<Mutex<Store>>,
    spec: &JobSpec,
    base: &Change<'_>,
    user: &User,
    mut group: Option<GroupRef>,
    plan: &mut Plan,
    source: Option<&SourceSet>,
    (applied, refused): (&mut Counts, &mut Vec<String>),
    deferred: &mut Deferred,
) -> Result<(Option<GroupRef>, Option<Settle>), ApplyError> {
    let run_id = base.run_id;
    let log = |c: Change<'_>| lock(store).log_change(&c);
    // Ledger rows of copies left as they are that must change, and rows to remove.
    let kept: Vec<(String, LedgerCopy)> = std::mem::take(&mut plan.kept);
    let forget: Vec<String> = std::mem::take(&mut plan.forget);
    let plan: &Plan = plan;
    // Consecutive operations of one kind go to the provider in batches (one call per batch on a
    // provider with batch endpoints). Deletes are also read in batches first, for the trash.
    let batch = backend.batch_size().clamp(1, 200);
    let item_of = |source_id: &str| {
        source
            .and_then(|s| s.items.get(source_id))
            .ok_or_else(|| ApplyError::Other(format!("source contact {source_id} is gone")))
    };
    let mut i = 0;
    while i < plan.ops.len() {
        let group_ref = || {
            group.clone().ok_or_else(|| {
                ApplyError::Other(format!(
                    "group {:?} of {} is missing",
                    spec.target_group, user.name
                ))
            })
        };
        // The run of operations of the same kind as ops[i], at most `batch` (or 200 for reads).
        let same_kind = |limit: usize| {
            let kind = std::mem::discriminant(&plan.ops[i]);
            let mut j = i;
            while j < plan.ops.len()
                && j - i < limit
                && std::mem::discriminant(&plan.ops[j]) == kind
            {
                j += 1;
            }
            &plan.ops[i..j]
        };
        match &plan.ops[i] {
            Op::CreateGroup { name } => {
                let g = match backend.create_group(user, name).await {
                    Ok(g) => g,
                    Err(BackendError::AlreadyExists { .. }) => {
                        backend.find_group(user, name).await?.ok_or_else(|| {
                            ApplyError::Other(format!("group {name:?} of {} vanished", user.name))
                        })?
                    }
                    Err(e) => return Err(e.into()),
                };
                log(Change {
                    action: "create-group",
                    contact_id: Some(&g.id),
                    name: Some(name),
                    ..base.clone()
                })?;
                group = Some(g);
                i += 1;
            }
            Op::Create { .. } => {
                let ops = same_kind(batch);
                i += ops.len();
                let g = group_ref()?;
                let mut items = Vec::with_capacity(ops.len());
                for op in ops {
                    if let Op::Create {
                        source_id,
                        name,
                        recreate,
                        uid,
                    } = op
                    {
                        items.push(NewCopy {
                            source_id,
                            name,
                            recreate: *recreate,
                            uid: uid.clone(),
                            item: item_of(source_id)?,
                        });
                    }
                }
                create_copies(
                    backend, store, &spec.tag, user, &g, items, deferred, applied, refused,
                )
                .await?;
            }
            Op::Update(_) => {
                let ops = same_kind(batch);
                i += ops.len();
                let g = group_ref()?;
                let mut items: Vec<(&UpdateOp, _)> = Vec::with_capacity(ops.len());
                for op in ops {
                    if let Op::Update(u) = op {
                        items.push((&**u, item_of(&u.source_id)?));
                    }
                }
                let copies = items
                    .iter()
                    .map(|(_, item)| item.copy())
                    .collect::<Result<Vec<_>, String>>()
                    .map_err(ApplyError::Other)?;
                let calls: Vec<(&str, &str, &VCard)> = items
                    .iter()
                    .zip(copies)
                    .map(|((u, _), c)| (u.contact_id.as_str(), u.etag.as_str(), c))
                    .collect();
                let results = overlapped(
                    store,
                    deferred,
                    backend.update_contacts(user, &g, &calls, &spec.fields),
                )
                .await?;
                let mut first_err = None;
                for ((u, item), result) in items.iter().zip(results) {
                    let Some(new_etag) = sort_result(result, &mut first_err, |e| {
                        refusal(deferred, refused, ("update", &u.contact_id, &u.name), e)
                    }) else {
                        continue;
                    };
                    deferred.copy(&u.source_id, &u.contact_id, &item.digest, &new_etag);
                    deferred.writes.push(DeferredWrite::Log {
                        action: "update",
                        source_id: Some(u.source_id.clone()),
                        contact_id: u.contact_id.clone(),
                        name: Some(u.name.clone()),
                        detail: None,
                        fields: Some(u.fields.join(",")),
                        before: Some(u.before.clone()),
                        after: Some(item.digest.clone()),
                    });
                    applied.updated += 1;
                }
                if let Some(e) = first_err {
                    return Err(e.into());
                }
            }
            Op::Delete(_) => {
                // Read for the trash in reads of 200 and deleted in the provider's batches: in
                // chunks that fill both (their least common multiple, at most 1,000).
                let delete_batch = backend.delete_batch_size().clamp(1, 1000);
                let ops = same_kind(usize::MAX);
                i += ops.len();
                let g = group_ref()?;
                // A pipeline, every call still made after the one before: a chunk is read (each
                // contact turned into its trash payload as it arrives) while the trash of the
                // chunk before it is written on the blocking pool; then that chunk is deleted,
                // and this one's trash started. A chunk's trash is written before any of its
                // contacts is deleted, and only once the chunk before it is deleted: a chunk that
                // cannot be read or is refused (a contact changed, or lost its tag) stops the run
                // once the chunk trashed before it is deleted.
                let mut trashed: Option<Trashing> = None;
                // One step more than there are chunks: the last deletes the last chunk's.
                let chunks = ops.chunks(lcm(200, delete_batch).min(1000));
                for chunk in chunks.map(Some).chain([None]) {
                    let read = match chunk {
                        Some(c) => Some(read_for_trash(backend, spec, user, &g, c).await),
                        None => None,
                    };
                    if let Some(t) = trashed.take() {
                        delete_trashed(
                            backend,
                            store,
                            user,
                            &g,
                            delete_batch,
                            t,
                            deferred,
                            (applied, refused),
                        )
                        .await?;
                    }
                    if let Some(read) = read {
                        trashed = Some(write_trash(store, run_id, spec, user, &g, read?));
                    }
                }
            }
            Op::MoveToDefault { .. } => {
                let ops = same_kind(batch);
                i += ops.len();
                let g = group_ref()?;
                let items: Vec<(&str, &str)> = ops
                    .iter()
                    .filter_map(|op| match op {
                        Op::MoveToDefault { contact_id, etag } => {
                            Some((contact_id.as_str(), etag.as_str()))
                        }
                        _ => None,
                    })
                    .collect();
                let results = overlapped(
                    store,
                    deferred,
                    backend.move_contacts_to_default(user, &g, &items),
                )
                .await?;
                let mut first_err = None;
                for ((contact_id, _), result) in items.iter().zip(results) {
                    if sort_result(result, &mut first_err, |e| {
                        refusal(deferred, refused, ("move-to-default", contact_id, ""), e)
                    })
                    .is_none()
                    {
                        continue;
                    }
                    deferred.writes.push(DeferredWrite::Log {
                        action: "move-to-default",
                        source_id: None,
                        contact_id: contact_id.to_string(),
                        name: None,
                        detail: None,
                        fields: None,
                        before: None,
                        after: None,
                    });
                    applied.moved += 1;
                }
                if let Some(e) = first_err {
                    return Err(e.into());
                }
            }
            Op::DeleteGroup { name } => {
                i += 1;
                let g = group_ref()?;
                match overlapped(store, deferred, backend.delete_group(user, &g)).await? {
                    Ok(()) => log(Change {
                        action: "delete-group",
                        contact_id: Some(&g.id),
                        name: Some(name),
                        ..base.clone()
                    })?,
                    Err(BackendError::NotEmpty { what }) => {
                        // Kept for what is not this job's (a contact added meanwhile, a file
                        // that is not a card); never with a copy left in it: that one is read
                        // and planned again.
                        let mut copies = 0usize;
                        backend
                            .scan_group_tags(user, &g, &mut |c| {
                                if c.card.as_ref().ok().and_then(card::tag_of).as_deref()
                                    == Some(spec.tag.as_str())
                                {
                                    copies += 1;
                                }
                            })
                            .await?;
                        if copies > 0 {
                            return Err(ApplyError::Backend(BackendError::Conflict {
                                what: format!("{what}: {copies} copies are still in it"),
                            }));
                        }
                        tracing::warn!(job = %spec.name, dest = %user.name, "{what} is not empty after cleanup (a contact was added meanwhile, or something that is not a card is in it); it is kept");
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok((group, source.is_some().then_some((kept, forget))))
}

/// A copy to create, as the plan names it (`Op::Create`).
pub(super) struct NewCopy<'a> {
    pub(super) source_id: &'a str,
    pub(super) name: &'a str,
    pub(super) recreate: bool,
    /// The UID it gets when not its usual one (see `plan::free_uid`).
    pub(super) uid: Option<String>,
    pub(super) item: &'a plan::SourceItem,
}

/// How many times a create refused for its UID (a contact that has it, which the read did not
/// see) is made again under another.
pub(super) const UID_RETRIES: usize = 3;

/// Creates copies in one batch call. One the provider refuses because its UID is taken (a
/// contact of the user's carries it: a copy whose tag the user removed) is made again under
/// another UID, `<uid>-1`, `<uid>-2`, … (the same on every run); one refused otherwise is noted
/// (`refusal`) and the others stand.
#[allow(clippy::too_many_arguments)]
pub(super) async fn create_copies<B: Backend>(
    backend: &B,
    store: &Arc<Mutex<Store>>,
    tag: &str,
    user: &User,
    g: &GroupRef,
    mut items: Vec<NewCopy<'_>>,
    deferred: &mut Deferred,
    applied: &mut Counts,
    refused: &mut Vec<String>,
) -> Result<(), ApplyError> {
    let mut pending: Vec<usize> = (0..items.len()).collect();
    for attempt in 0..=UID_RETRIES {
        // A copy under another UID is a card of its own; the others are the source's.
        let renamed: Vec<Option<VCard>> = pending
            .iter()
            .map(|&k| {
                let c = &items[k];
                let copy = c.item.copy().map_err(ApplyError::Other)?;
                Ok(c.uid.as_deref().map(|u| card::with_uid(copy, u)))
            })
            .collect::<Result<_, ApplyError>>()?;
        let cards: Vec<&VCard> = pending
            .iter()
            .zip(&renamed)
            .map(|(&k, r)| match r {
                Some(c) => Ok(c),
                None => items[k].item.copy().map_err(ApplyError::Other),
            })
            .collect::<Result<_, ApplyError>>()?;
        let results = overlapped(store, deferred, backend.create_contacts(user, g, &cards)).await?;
        drop(cards);
        let mut again = vec![];
        let mut first_err = None;
        for (&k, result) in pending.iter().zip(results) {
            let c = &mut items[k];
            let result = match result {
                Err(BackendError::AlreadyExists { .. }) if attempt < UID_RETRIES => {
                    let planned = c
                        .uid
                        .take()
                        .unwrap_or_else(|| plan::copy_uid(tag, c.source_id));
                    c.uid = Some(format!("{planned}-{}", attempt + 1));
                    again.push(k);
                    continue;
                }
                r => r,
            };
            let Some(written) = sort_result(result, &mut first_err, |e| {
                refusal(deferred, refused, ("create", "", c.name), e)
            }) else {
                continue;
            };
            deferred.copy(c.source_id, &written.id, &c.item.digest, &written.etag);
            deferred.writes.push(DeferredWrite::Log {
                action: if c.recreate { "recreate" } else { "create" },
                source_id: Some(c.source_id.to_string()),
                contact_id: written.id,
                name: Some(c.name.to_string()),
                detail: c.uid.as_ref().map(|u| format!("uid {u}")),
                fields: None,
                before: None,
                after: Some(c.item.digest.clone()),
            });
            applied.created += 1;
        }
        if let Some(e) = first_err {
            return Err(e.into());
        }
        if again.is_empty() {
            break;
        }
        pending = again;
    }
    Ok(())
}
