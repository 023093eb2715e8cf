//! Deciding one destination's operations from what was read: the decision per source contact
//! (keep, update, delete a duplicate, hold when the source could not be read, create when no
//! copy answers for it), the ledger rows the plan leaves behind, the job's delete limit, and a
//! removal's plan.
//!
//! It must not read or write anything: a plan is a value, applied by the engine.

use std::collections::BTreeSet;

use super::{
    DeleteOp, DeleteReason, DestEntry, DestKind, DestSnapshot, JobSpec, LedgerCopy, LedgerRow,
    LedgerView, Op, Plan, SourceItem, SourceSet, Trashed, UpdateOp, free_uid,
};
use crate::card;

/// Plans one active destination: after these operations its tagged copies equal the source.
/// With a `scope` (a snapshot of part of the destination), the plan is the part of the whole
/// plan that concerns the source ids in scope; the copies outside it count as unchanged.
pub fn plan_destination(
    source: &SourceSet,
    dest: &DestSnapshot,
    job: &JobSpec,
    ledger: &LedgerView,
) -> Plan {
    let mut p = Planner {
        source,
        dest,
        job,
        ledger,
        plan: Plan::new(&dest.user, false),
        updates: vec![],
        deletes: vec![],
        remembered: vec![],
    };
    if dest.group.is_none() {
        p.plan.ops.push(Op::CreateGroup {
            name: job.target_group.clone(),
        });
    }
    let (copies, orphans) = p.sort_entries();
    p.decide_copies(&copies);
    p.add_ops(&copies);
    p.settle_ledger();
    p.check_limit(copies.len() + orphans);
    p.plan
}

/// A copy of the destination group and the source id it answers for.
type Copy<'a> = (&'a str, &'a DestEntry);

/// One destination's plan as it is being decided.
struct Planner<'a> {
    source: &'a SourceSet,
    dest: &'a DestSnapshot,
    job: &'a JobSpec,
    ledger: &'a LedgerView,
    plan: Plan,
    updates: Vec<Op>,
    deletes: Vec<Op>,
    /// Source ids of copies kept as the ledger remembers them, in source id order.
    remembered: Vec<&'a str>,
}

impl<'a> Planner<'a> {
    /// The copies by source id: one sorted vector (stable: a source's copies stay in the order
    /// read), walked side by side with the source and the ledger, which are sorted the same way.
    /// Thousands of copies are planned per destination; no map or lookup per copy. Contacts that
    /// are not this job's copies are counted; copies that lost their source id are deleted.
    fn sort_entries(&mut self) -> (Vec<Copy<'a>>, usize) {
        let dest = self.dest;
        let mut copies: Vec<Copy<'a>> = Vec::with_capacity(dest.entries.len());
        let mut orphans = 0usize;
        for e in &dest.entries {
            match &e.kind {
                DestKind::Own | DestKind::OtherJob => self.plan.untouched += 1,
                DestKind::Copy {
                    source: Some(s), ..
                } => copies.push((s.as_str(), e)),
                DestKind::Copy { source: None, .. } => {
                    orphans += 1;
                    self.deletes
                        .push(delete_op(e.clone(), DeleteReason::Orphan));
                }
            }
        }
        copies.sort_by(|a, b| a.0.cmp(b.0));
        (copies, orphans)
    }

    /// Walks the copies of each source id next to the source and the ledger.
    fn decide_copies(&mut self, copies: &[Copy<'a>]) {
        let (source, ledger) = (self.source, self.ledger);
        let mut items = source.items.iter().peekable();
        let mut rows = ledger.rows().peekable();
        for group in copies.chunk_by(|a, b| a.0 == b.0) {
            let sid = group[0].0;
            while rows.next_if(|r| r.source_id() < sid).is_some() {}
            let row = rows.next_if(|r| r.source_id() == sid);
            while items.next_if(|(k, _)| k.as_str() < sid).is_some() {}
            let item = items.next_if(|(k, _)| k.as_str() == sid).map(|(_, i)| i);
            if source.unreadable.contains_key(sid) {
                self.hold(sid, group, row);
                continue;
            }
            match item {
                None => {
                    for (_, c) in group {
                        self.deletes
                            .push(delete_op((*c).clone(), DeleteReason::SourceGone));
                    }
                }
                Some(item) => self.decide_one(sid, group, row, item),
            }
        }
    }

    /// Copies of a source contact that could not be read are left as they are, and their
    /// ledger rows kept.
    fn hold(&mut self, sid: &str, group: &[Copy<'a>], row: Option<&LedgerRow>) {
        self.plan.held += group.len();
        self.plan.kept.extend(group.iter().map(|(_, c)| {
            let remembered = row
                .filter(|l| l.contact_id() == c.id)
                .map(LedgerRow::to_copy);
            (
                sid.to_string(),
                remembered.unwrap_or_else(|| LedgerCopy {
                    contact_id: c.id.clone(),
                    ..Default::default()
                }),
            )
        }));
    }

    /// One source contact's copies: the best one is kept (updated if it differs), the others
    /// are deleted as duplicates.
    fn decide_one(
        &mut self,
        sid: &'a str,
        group: &[Copy<'a>],
        row: Option<&LedgerRow>,
        item: &SourceItem,
    ) {
        // A copy is in sync if it has the source's content, or is exactly what this job last
        // wrote from this content (the provider may store it in its own form).
        let in_sync = |c: &DestEntry| {
            matches!(&c.kind, DestKind::Copy { digest, .. } if *digest == item.digest)
                || row.is_some_and(|l| l.written_as(item, c))
        };
        let keeper = group
            .iter()
            .map(|(_, e)| *e)
            .min_by_key(|c| (!in_sync(c), c.id.as_str()))
            .expect("non-empty");
        for (_, c) in group.iter().filter(|(_, c)| c.id != keeper.id) {
            self.deletes
                .push(delete_op((*c).clone(), DeleteReason::Duplicate));
        }
        match &keeper.kind {
            DestKind::Copy { .. } if in_sync(keeper) => {
                self.plan.unchanged += 1;
                // Most copies are as the ledger remembers them: only their source id is noted
                // (no row to write, nothing to allocate).
                if row.is_some_and(|l| l.remembers(&keeper.id, &item.digest, &keeper.etag)) {
                    self.remembered.push(sid);
                    return;
                }
                self.plan.kept.push((
                    item.id.to_string(),
                    LedgerCopy {
                        contact_id: keeper.id.clone(),
                        digest: item.digest.clone(),
                        etag: keeper.etag.clone(),
                    },
                ));
            }
            DestKind::Copy { digest, fields, .. } => {
                self.updates.push(Op::Update(Box::new(UpdateOp {
                    contact_id: keeper.id.clone(),
                    etag: keeper.etag.clone(),
                    source_id: item.id.to_string(),
                    name: item.name.to_string(),
                    fields: card::changed_fields(fields, item.fields(&self.job.fields)),
                    before: digest.clone(),
                })))
            }
            DestKind::Own | DestKind::OtherJob => {
                unreachable!("only copies are grouped by source")
            }
        }
    }

    /// The operations in their order: creates for source contacts without a copy (in source
    /// order; outside the scope of a partial snapshot every source contact has its copy), then
    /// updates, then deletes.
    fn add_ops(&mut self, copies: &[Copy<'a>]) {
        let (source, dest) = (self.source, self.dest);
        let mut copied = copies.iter().map(|(s, _)| *s).peekable();
        let in_scope: Box<dyn Iterator<Item = &SourceItem>> = match &dest.scope {
            None => Box::new(source.items.values()),
            Some(s) => Box::new(s.source_ids.iter().filter_map(|id| source.items.get(id))),
        };
        let missing: Vec<&SourceItem> = in_scope
            .filter(|item| {
                while copied.next_if(|c| *c < &*item.id).is_some() {}
                copied.peek() != Some(&&*item.id)
            })
            .collect();
        let updates = std::mem::take(&mut self.updates);
        let deletes = std::mem::take(&mut self.deletes);
        self.plan
            .ops
            .reserve_exact(missing.len() + updates.len() + deletes.len());
        let taken: BTreeSet<&str> = dest.taken_uids.iter().map(String::as_str).collect();
        for item in missing {
            self.plan.ops.push(Op::Create {
                source_id: item.id.clone(),
                name: item.name.clone(),
                recreate: self.ledger.contains(&item.id),
                uid: free_uid(&self.job.tag, &item.id, &|u| taken.contains(u)),
            });
        }
        self.plan.ops.extend(updates);
        self.plan.ops.extend(deletes);
    }

    /// The ledger after the apply: rows of copies kept, created or updated stay (created and
    /// updated ones are recorded as they are written); kept rows already right are not rewritten.
    fn settle_ledger(&mut self) {
        let ledger = self.ledger;
        let mut answered: Vec<&str> = self
            .plan
            .kept
            .iter()
            .map(|(s, _)| s.as_str())
            .chain(self.remembered.iter().copied())
            .chain(self.plan.ops.iter().filter_map(|o| match o {
                Op::Create { source_id, .. } => Some(&**source_id),
                Op::Update(u) => Some(u.source_id.as_str()),
                _ => None,
            }))
            .collect();
        answered.sort_unstable();
        let mut answered_iter = answered.iter().peekable();
        let forget = ledger
            .rows()
            .map(LedgerRow::source_id)
            .filter(|s| {
                while answered_iter.next_if(|a| **a < *s).is_some() {}
                answered_iter.peek() != Some(&s)
            })
            .map(str::to_string)
            .collect();
        drop(answered);
        self.plan.forget = forget;
        // `kept` is in source id order, as the ledger's rows are.
        let mut rows = ledger.rows().peekable();
        self.plan.kept.retain(|(s, c)| {
            while rows.next_if(|r| r.source_id() < s.as_str()).is_some() {}
            !rows.peek().is_some_and(|r| r.source_id() == s && r.is(c))
        });
    }

    /// Flags a plan that deletes more copies whose source left than the job allows.
    fn check_limit(&mut self, copies_total: usize) {
        let (job, dest) = (self.job, self.dest);
        let counted = self
            .plan
            .ops
            .iter()
            .filter(|o| {
                matches!(
                    o,
                    Op::Delete(d) if matches!(d.reason, DeleteReason::SourceGone | DeleteReason::Orphan)
                )
            })
            .count();
        let outside = dest.scope.as_ref().map_or(0, |s| s.outside);
        self.plan.unchanged += outside;
        let base = copies_total.max(self.ledger.len()) + outside;
        let allowed = job
            .limits
            .max_delete
            .max((base * job.limits.max_delete_percent as usize).div_ceil(100));
        if counted > allowed {
            self.plan.limit_exceeded = Some(format!(
                "{} would lose {counted} of its {base} copies in one run (limit {allowed}: max_delete = {}, max_delete_percent = {})",
                dest.user.name, job.limits.max_delete, job.limits.max_delete_percent
            ));
        }
    }
}

fn delete_op(e: DestEntry, reason: DeleteReason) -> Op {
    let (source_id, name, before) = match e.kind {
        DestKind::Copy {
            source,
            name,
            digest,
            ..
        } => (source, name, digest),
        _ => (None, String::new(), String::new()),
    };
    Op::Delete(Box::new(DeleteOp {
        contact_id: e.id,
        etag: e.etag,
        source_id,
        name,
        reason,
        before,
    }))
}

/// Plans the removal of a destination from the job: every tagged copy is deleted, then the
/// user's own contacts in the group move to the default collection, and the group is deleted when nothing
/// else (another job's copies) remains in it. The snapshot's entries are moved into the plan
/// (thousands of copies per destination are not held twice); `dest.entries` is left empty.
/// The `trashed` copies were written to the trash as the group was read and are not among the
/// entries: one operation deletes them all.
pub fn plan_removal(dest: &mut DestSnapshot, trashed: Trashed) -> Plan {
    let mut plan = Plan::new(&dest.user, true);
    let Some(group) = &dest.group else {
        return plan;
    };
    if trashed.copies > 0 {
        plan.ops.push(Op::DeleteTrashed(trashed));
    }
    let mut moves = vec![];
    let mut deletes = Vec::with_capacity(dest.entries.len());
    let mut other_jobs = 0;
    for e in std::mem::take(&mut dest.entries) {
        match e.kind {
            DestKind::Copy { .. } => deletes.push(delete_op(e, DeleteReason::DestinationRemoved)),
            DestKind::Own if !dest.group_is_default => moves.push(Op::MoveToDefault {
                contact_id: e.id,
                etag: e.etag,
            }),
            DestKind::Own => plan.untouched += 1,
            DestKind::OtherJob => other_jobs += 1,
        }
    }
    plan.untouched += other_jobs;
    plan.ops.reserve_exact(moves.len() + deletes.len() + 1);
    // Deletes first: a provider that keeps several contacts in one place (a vdir file of several
    // cards) reads what it deletes for the trash by position, and a move out of that place first
    // would shift the positions.
    plan.ops.extend(deletes);
    plan.ops.extend(moves);
    if other_jobs == 0 && !dest.group_is_default {
        plan.ops.push(Op::DeleteGroup {
            name: group.name.clone(),
        });
    }
    plan
}
