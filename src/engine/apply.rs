//! Applying a plan: one dispatcher over the operations, in order, in the provider's batches
//! (`Applier::run`), each kind in a method of its own; every batch's results go through one
//! recorder (`Recorder::take`: a contact the provider refuses is noted, the others written), and
//! the ledger rows and log lines are written while the next call is in flight.

use calcard::vcard::VCard;
use std::sync::Arc;

use super::finish::{Deferred, Finish, FinishOutcome, Settle};
use super::record::{ApplyError, Recorder, overlapped};
use super::shared::DestCtx;
use super::trash::{
    Doomed, Trashing, lcm, read_for_trash, trashed, trashed_page, untrash, untrash_from,
    write_trash,
};
use crate::backend::{Backend, BackendError, Depth, GroupRead, GroupRef, Read, Written};
use crate::card;
use crate::mutex::lock;
use crate::plan::{self, Op, Plan, SourceItem, SourceSet, UpdateOp};
use crate::store::{Change, Counts};

/// Applies a plan, in order, stopping at the first failure (the rest is retried next run).
/// Returns the group as it is after the plan (created, or still the one read), and what is left
/// to record in the state once the provider is done with (`Finish`): the state writes of a
/// destination are batched into few transactions, and its last ones are made off its place.
///
/// With `take_token` (a provider with change tokens that had none to give while the group was
/// missing: Graph's are per folder), a group the plan makes has its change token taken before
/// anything is written to it, and returned: the next run reads only what changed since (this
/// run's own writes, known by their etags) instead of the whole group.
pub(super) async fn apply<B: Backend>(
    ctx: &DestCtx<'_, B>,
    group: Option<GroupRef>,
    plan: &mut Plan,
    source: Option<&SourceSet>,
    (applied, refused): (&mut Counts, &mut Vec<String>),
    take_token: bool,
) -> (Result<Option<GroupRef>, ApplyError>, Finish, Option<String>) {
    let mut finish = ctx.finish(FinishOutcome::Retry);
    if let Err(e) = lock(ctx.store).batch_begin() {
        return (Err(e.into()), finish, None);
    }
    finish.batch = true;
    let base = Change {
        run_id: ctx.run_id,
        job: &ctx.job.spec.name,
        user_id: &ctx.user.id,
        user: &ctx.user.name,
        ..Default::default()
    };
    // Ledger rows of copies left as they are that must change, and rows to remove.
    let settle: Settle = (
        std::mem::take(&mut plan.kept),
        std::mem::take(&mut plan.forget),
    );
    let told = Told::planned(ctx, plan.contact_writes(), applied);
    let mut a = Applier {
        ctx,
        source,
        group,
        rec: Recorder {
            deferred: Deferred::new(&base),
            applied,
            refused,
        },
        base,
        take_token,
        new_token: None,
        told,
    };
    let result = a.run(&plan.ops).await;
    a.told.rest_dropped(ctx, a.rec.applied);
    // What was written before a failure is recorded all the same.
    finish.deferred = Some(a.rec.deferred);
    match result {
        Ok(()) => {
            finish.settle = source.is_some().then_some(settle);
            (Ok(a.group), finish, a.new_token)
        }
        Err(e) => (Err(e), finish, None),
    }
}

/// One destination's plan being applied.
pub(super) struct Applier<'a, 'c, B> {
    pub(super) ctx: &'a DestCtx<'c, B>,
    source: Option<&'a SourceSet>,
    /// The group, once it exists.
    group: Option<GroupRef>,
    pub(super) rec: Recorder<'a>,
    /// Whose changes these are (run, job, user), for the change log.
    base: Change<'a>,
    /// Take the change token of a group this plan makes (see `apply`).
    take_token: bool,
    /// The change token taken on the group this plan made, before anything was written to it.
    new_token: Option<String>,
    /// What the run's progress sink was told of this plan.
    told: Told,
}

/// What a plan's application told the progress sink: the writes it planned, and the count of
/// contacts written (`Counts`) it has reported up to.
pub(super) struct Told {
    planned: u64,
    start: u64,
    reported: u64,
}

/// The contacts written, as the counts say.
fn written(c: &Counts) -> u64 {
    (c.created + c.updated + c.deleted + c.moved).max(0) as u64
}

impl Told {
    /// Tells the sink of a plan's writes.
    fn planned<B>(ctx: &DestCtx<'_, B>, planned: usize, applied: &Counts) -> Told {
        if let Some(p) = &ctx.opts.progress {
            p.0.planned(planned as u64);
        }
        let start = written(applied);
        Told {
            planned: planned as u64,
            start,
            reported: start,
        }
    }

    /// Tells the sink of the writes counted since the last call.
    pub(super) fn progressed<B>(&mut self, ctx: &DestCtx<'_, B>, applied: &Counts) {
        let now = written(applied);
        if now > self.reported {
            if let Some(p) = &ctx.opts.progress {
                p.0.written(now - self.reported);
            }
            self.reported = now;
        }
    }

    /// Tells the sink of the last writes, and that the rest of the plan will not be made.
    fn rest_dropped<B>(&mut self, ctx: &DestCtx<'_, B>, applied: &Counts) {
        self.progressed(ctx, applied);
        let made = self.reported - self.start;
        if let (Some(p), true) = (&ctx.opts.progress, made < self.planned) {
            p.0.dropped(self.planned - made);
        }
    }
}

/// A copy to create, as the plan names it (`Op::Create`).
struct NewCopy<'a> {
    source_id: &'a str,
    name: &'a str,
    recreate: bool,
    /// The UID it gets when not its usual one (see `plan::free_uid`).
    uid: Option<String>,
    item: &'a SourceItem,
}

/// The source contact a copy is made from (borrowed from the source set, not from the applier).
fn item_of<'s>(
    source: Option<&'s SourceSet>,
    source_id: &str,
) -> Result<&'s SourceItem, ApplyError> {
    source
        .and_then(|s| s.items.get(source_id))
        .ok_or_else(|| ApplyError::Other(format!("source contact {source_id} is gone")))
}

/// How many times a create refused for its UID (a contact that has it, which the read did not
/// see) is made again under another.
const UID_RETRIES: usize = 3;

impl<B: Backend> Applier<'_, '_, B> {
    /// Applies the operations in order: consecutive operations of one kind go to the provider
    /// in batches (one call per batch on a provider with batch endpoints).
    async fn run(&mut self, ops: &[Op]) -> Result<(), ApplyError> {
        let batch = self.ctx.backend.capabilities().batch_size.clamp(1, 200);
        let mut i = 0;
        while i < ops.len() {
            // Deletes are taken in one run (read for the trash, then deleted, chunk by chunk).
            let limit = match &ops[i] {
                Op::CreateGroup { .. } | Op::DeleteGroup { .. } | Op::DeleteTrashed(_) => 1,
                Op::Delete(_) => usize::MAX,
                _ => batch,
            };
            let kind = std::mem::discriminant(&ops[i]);
            let n = ops[i..]
                .iter()
                .take(limit)
                .take_while(|o| std::mem::discriminant(*o) == kind)
                .count();
            let run = &ops[i..i + n];
            i += n;
            match &run[0] {
                Op::CreateGroup { name } => self.create_group(name).await?,
                Op::Create { .. } => self.create(run).await?,
                Op::Update(_) => self.update(run).await?,
                Op::Delete(_) => delete_with_trash(self, run).await?,
                Op::DeleteTrashed(t) => delete_trashed(self, *t).await?,
                Op::MoveToDefault { .. } => self.move_to_default(run).await?,
                Op::DeleteGroup { name } => self.delete_group(name).await?,
            }
            self.told.progressed(self.ctx, self.rec.applied);
        }
        Ok(())
    }

    /// The group the contact operations go to; it exists once the plan's first operation ran.
    pub(super) fn group(&self) -> Result<GroupRef, ApplyError> {
        self.group.clone().ok_or_else(|| {
            ApplyError::Other(format!(
                "group {:?} of {} is missing",
                self.ctx.target_group, self.ctx.user.name
            ))
        })
    }

    /// A provider call made while the records of the batch before it are written.
    pub(super) async fn call<T>(
        &mut self,
        call: impl std::future::Future<Output = T>,
    ) -> Result<T, ApplyError> {
        overlapped(self.ctx.store, &mut self.rec.deferred, call).await
    }

    fn log_now(&self, action: &str, group: &GroupRef, name: &str) -> Result<(), ApplyError> {
        let line = Change {
            action,
            contact_id: Some(&group.id),
            name: Some(name),
            ..self.base.clone()
        };
        Ok(lock(self.ctx.store).log_change(&line)?)
    }

    async fn create_group(&mut self, name: &str) -> Result<(), ApplyError> {
        let (backend, user) = (self.ctx.backend, self.ctx.user);
        let g = match backend.create_group(user, name).await {
            Ok(g) => g,
            Err(BackendError::AlreadyExists { .. }) => {
                backend.find_group(user, name, None).await?.ok_or_else(|| {
                    ApplyError::Other(format!("group {name:?} of {} vanished", user.name))
                })?
            }
            Err(e) => return Err(e.into()),
        };
        self.log_now("create-group", &g, name)?;
        if self.take_token {
            let how = GroupRead {
                depth: Depth::TagsOnly,
                token: true,
                known: None,
            };
            match backend.read_group(user, Some(&g), how, &mut |_| {}).await {
                Ok(t) => self.new_token = t,
                Err(e) => tracing::info!(
                    dest = %user.name,
                    "no change token for the new group {name:?} ({e}); the next run reads it whole"
                ),
            }
        }
        self.group = Some(g);
        Ok(())
    }

    async fn create(&mut self, ops: &[Op]) -> Result<(), ApplyError> {
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
                    item: item_of(self.source, source_id)?,
                });
            }
        }
        self.create_copies(items).await
    }

    /// Creates copies in one batch call. One the provider refuses because its UID is taken (a
    /// contact of the user's carries it: a copy whose tag the user removed) is made again under
    /// another UID, `<uid>-1`, `<uid>-2`, … (the same on every run); one refused otherwise is
    /// noted and the others stand.
    async fn create_copies(&mut self, mut items: Vec<NewCopy<'_>>) -> Result<(), ApplyError> {
        let g = self.group()?;
        let mut pending: Vec<usize> = (0..items.len()).collect();
        for attempt in 0..=UID_RETRIES {
            let results = self.create_batch(&g, &items, &pending).await?;
            let mut again = vec![];
            let mut taken = vec![];
            for (&k, result) in pending.iter().zip(results) {
                match result {
                    Err(BackendError::AlreadyExists { .. }) if attempt < UID_RETRIES => {
                        again.push(k)
                    }
                    r => taken.push((k, r)),
                }
            }
            let tag = &self.ctx.job.spec.tag;
            for &k in &again {
                let c = &mut items[k];
                let planned = (c.uid.take()).unwrap_or_else(|| plan::copy_uid(tag, c.source_id));
                c.uid = Some(format!("{planned}-{}", attempt + 1));
            }
            let taken = taken.into_iter().map(|(k, r)| (&items[k], r));
            let who = |c: &&NewCopy<'_>| (String::new(), c.name.to_string());
            self.rec.take("create", taken, who, |rec, c, w: Written| {
                rec.copy(c.source_id, &w.id, &c.item.digest, &w.etag);
                let action = if c.recreate { "recreate" } else { "create" };
                let line = rec.log(action, Some(c.source_id), &w.id, Some(c.name));
                let line = line.digests(None, Some(&c.item.digest));
                if let Some(u) = &c.uid {
                    line.detail(format!("uid {u}"));
                }
                rec.applied.created += 1;
            })?;
            if again.is_empty() {
                break;
            }
            pending = again;
        }
        Ok(())
    }

    /// One create call for the copies `pending` names; a copy under another UID is a card of
    /// its own, the others are the source's.
    async fn create_batch(
        &mut self,
        g: &GroupRef,
        items: &[NewCopy<'_>],
        pending: &[usize],
    ) -> Result<Vec<Result<Written, BackendError>>, ApplyError> {
        let copies: Vec<Arc<VCard>> = pending
            .iter()
            .map(|&k| {
                let c = &items[k];
                let copy = c.item.copy().map_err(ApplyError::Other)?;
                Ok(match c.uid.as_deref() {
                    Some(u) => Arc::new(card::with_uid(&copy, u)),
                    None => copy,
                })
            })
            .collect::<Result<_, ApplyError>>()?;
        let cards: Vec<&VCard> = copies.iter().map(|c| &**c).collect();
        let (backend, user) = (self.ctx.backend, self.ctx.user);
        self.call(backend.create_contacts(user, g, &cards)).await
    }

    async fn update(&mut self, ops: &[Op]) -> Result<(), ApplyError> {
        let g = self.group()?;
        let mut items: Vec<(&UpdateOp, &SourceItem)> = Vec::with_capacity(ops.len());
        for op in ops {
            if let Op::Update(u) = op {
                items.push((&**u, item_of(self.source, &u.source_id)?));
            }
        }
        let copies = items
            .iter()
            .map(|(_, item)| item.copy())
            .collect::<Result<Vec<_>, String>>()
            .map_err(ApplyError::Other)?;
        let calls: Vec<(&str, &str, &VCard)> = items
            .iter()
            .zip(&copies)
            .map(|((u, _), c)| (u.contact_id.as_str(), u.etag.as_str(), &**c))
            .collect();
        let (backend, user, fields) = (self.ctx.backend, self.ctx.user, &self.ctx.job.spec.fields);
        let results = self
            .call(backend.update_contacts(user, &g, &calls, fields))
            .await?;
        let who = |(u, _): &(&UpdateOp, &SourceItem)| (u.contact_id.clone(), u.name.clone());
        let batch = items.into_iter().zip(results);
        self.rec.take("update", batch, who, |rec, (u, item), etag| {
            rec.copy(&u.source_id, &u.contact_id, &item.digest, &etag);
            rec.log("update", Some(&u.source_id), &u.contact_id, Some(&u.name))
                .fields(u.fields.join(","))
                .digests(Some(&u.before), Some(&item.digest));
            rec.applied.updated += 1;
        })
    }

    async fn move_to_default(&mut self, ops: &[Op]) -> Result<(), ApplyError> {
        let g = self.group()?;
        let items: Vec<(&str, &str)> = ops
            .iter()
            .filter_map(|op| match op {
                Op::MoveToDefault { contact_id, etag } => {
                    Some((contact_id.as_str(), etag.as_str()))
                }
                _ => None,
            })
            .collect();
        let (backend, user) = (self.ctx.backend, self.ctx.user);
        let results = self
            .call(backend.move_contacts_to_default(user, &g, &items))
            .await?;
        let who = |(id, _): &(&str, &str)| (id.to_string(), String::new());
        let batch = items.iter().copied().zip(results);
        self.rec
            .take("move-to-default", batch, who, |rec, (id, _), ()| {
                rec.log("move-to-default", None, id, None);
                rec.applied.moved += 1;
            })
    }

    /// Deletes the group, emptied. Kept for what is not this job's (a contact added meanwhile,
    /// a file that is not a card); never with a copy left in it: that one is read and planned
    /// again (a conflict).
    async fn delete_group(&mut self, name: &str) -> Result<(), ApplyError> {
        let g = self.group()?;
        let (backend, user, spec) = (self.ctx.backend, self.ctx.user, &self.ctx.job.spec);
        let what = match self.call(backend.delete_group(user, &g)).await? {
            Ok(()) => return self.log_now("delete-group", &g, name),
            Err(BackendError::NotEmpty { what }) => what,
            Err(e) => return Err(e.into()),
        };
        let mut copies = 0usize;
        let mut count = |r| {
            if let Read::Contact(c) = r
                && c.card.as_ref().ok().and_then(card::tag_of).as_deref() == Some(&spec.tag)
            {
                copies += 1;
            }
        };
        backend
            .read_group(user, Some(&g), GroupRead::TAGS, &mut count)
            .await?;
        if copies > 0 {
            return Err(ApplyError::Backend(BackendError::Conflict {
                what: format!("{what}: {copies} copies are still in it"),
            }));
        }
        tracing::warn!(job = %spec.name, dest = %user.name, "{what} is not empty after cleanup (a contact was added meanwhile, or something that is not a card is in it); it is kept");
        Ok(())
    }
}

/// Deletes a run of copies, trash first. Read for the trash in reads of 200 and deleted in the
/// provider's batches: in chunks that fill both (their least common multiple, at most 1,000). A
/// pipeline, every call still made after the one before: a chunk is read (each contact turned
/// into its trash payload as it arrives) while the trash of the chunk before it is written on
/// the blocking pool; then that chunk is deleted, and this one's trash started. A chunk's trash
/// is written before any of its contacts is deleted, and only once the chunk before it is
/// deleted: a chunk that cannot be read or is refused (a contact changed, or lost its tag) stops
/// the run once the chunk trashed before it is deleted.
pub(super) async fn delete_with_trash<B: Backend>(
    a: &mut Applier<'_, '_, B>,
    ops: &[Op],
) -> Result<(), ApplyError> {
    let ctx = a.ctx;
    let (backend, spec, user) = (ctx.backend, &ctx.job.spec, ctx.user);
    let g = a.group()?;
    let delete_batch = backend.capabilities().delete_batch_size.clamp(1, 1000);
    let mut trashing: Option<Trashing> = None;
    // One step more than there are chunks: the last deletes the last chunk's.
    let chunks = ops.chunks(lcm(200, delete_batch).min(1000));
    for chunk in chunks.map(Some).chain([None]) {
        let read = match chunk {
            Some(c) => Some(read_for_trash(backend, (spec, user, &g), c).await),
            None => None,
        };
        if let Some(t) = trashing.take() {
            let doomed = trashed(t).await?;
            delete_doomed(a, &g, delete_batch, &doomed).await?;
        }
        if let Some(read) = read {
            trashing = Some(write_trash(ctx.store, ctx.run_id, spec, user, &g, read?));
        }
    }
    Ok(())
}

/// Deletes the copies a removal wrote to the trash as it read the group (`Op::DeleteTrashed`),
/// read back from the trash a page at a time (up to 1,000, in the provider's delete batches):
/// a removal never holds the list. Each delete is conditional on the etag the read saw (only a
/// provider with `conditional_deletes` plans one). When it stops, the copies not deleted are
/// taken back out of the trash.
async fn delete_trashed<B: Backend>(
    a: &mut Applier<'_, '_, B>,
    t: plan::Trashed,
) -> Result<(), ApplyError> {
    let ctx = a.ctx;
    let g = a.group()?;
    let delete_batch = ctx.backend.capabilities().delete_batch_size.clamp(1, 1000);
    let page = lcm(200, delete_batch).min(1000);
    let mut after = t.after;
    loop {
        let (ids, doomed): (Vec<i64>, Vec<Doomed>) = match trashed_page(ctx, after, page) {
            Ok(p) => p.into_iter().unzip(),
            Err(e) => {
                untrash_from(ctx, after);
                return Err(e);
            }
        };
        let Some(&last) = ids.last() else {
            return Ok(());
        };
        // The copies of this page not deleted are taken back by `delete_doomed`; those of the
        // pages after it, here.
        if let Err(e) = delete_doomed(a, &g, delete_batch, &doomed).await {
            untrash_from(ctx, last);
            return Err(e);
        }
        after = last;
    }
}

/// The contact ids of contacts about to be deleted.
fn ids(doomed: &[Doomed]) -> Vec<&str> {
    doomed.iter().map(|d| d.contact_id.as_str()).collect()
}

/// Deletes contacts whose trash is written, in the provider's batches; each delete is logged
/// (deferred, see `Deferred`). A contact not deleted after all (refused, or not sent after a
/// failure) is taken back out of the trash: the trash keeps what was deleted.
async fn delete_doomed<B: Backend>(
    a: &mut Applier<'_, '_, B>,
    g: &GroupRef,
    delete_batch: usize,
    doomed: &[Doomed],
) -> Result<(), ApplyError> {
    let (ctx, backend, user) = (a.ctx, a.ctx.backend, a.ctx.user);
    for (k, chunk) in doomed.chunks(delete_batch).enumerate() {
        let rest = &doomed[((k + 1) * delete_batch).min(doomed.len())..];
        let calls: Vec<(&str, &str)> = chunk
            .iter()
            .map(|d| (d.contact_id.as_str(), d.etag.as_str()))
            .collect();
        let results = match a.call(backend.delete_contacts(user, g, &calls)).await {
            Ok(r) => r,
            Err(e) => {
                untrash(ctx, &ids(&doomed[k * delete_batch..]));
                return Err(e);
            }
        };
        // Refused, or left without an answer by a failure that is not one contact's.
        let mut kept = ids(&chunk[results.len().min(chunk.len())..]);
        kept.extend(
            chunk
                .iter()
                .zip(&results)
                .filter(|(_, r)| r.is_err())
                .map(|(d, _)| d.contact_id.as_str()),
        );
        let who = |d: &&Doomed| (d.contact_id.clone(), d.name.clone());
        let taken = a
            .rec
            .take("delete", chunk.iter().zip(results), who, |rec, d, ()| {
                let source = d.source_id.as_deref();
                rec.log("delete", source, &d.contact_id, Some(&d.name))
                    .detail(d.reason.to_string())
                    .digests(Some(&d.before), None);
                rec.applied.deleted += 1;
            });
        if taken.is_err() {
            kept.extend(ids(rest));
        }
        untrash(ctx, &kept);
        taken?;
        a.told.progressed(ctx, a.rec.applied);
    }
    Ok(())
}
