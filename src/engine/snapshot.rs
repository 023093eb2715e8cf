//! A destination's summary for the planner: its group read whole (copies known as written taken
//! from the ledger; a removal's copies trashed as they are read), or built from a change
//! token's delta.

use std::collections::{HashMap, HashSet};

use super::delta::ReadDelta;
use super::record::ApplyError;
use super::shared::{ActiveInputs, DestCtx};
use super::trash::read_into_trash;
use crate::backend::{Backend, BackendError, Capabilities, Depth, GroupRead, GroupRef, Read};
use crate::plan;
use crate::plan::{
    DestEntry, DestKind, DestSnapshot, LedgerRow, LedgerView, Scope, SourceSet, Trashed,
};

/// Reads the destination group and summarises it for the planner, with the provider's change
/// token when it has them (see `Backend::change_tokens`). A copy the ledger says was written
/// from the source's current content, and that still has the etag of that write, is summarised
/// from the ledger without being read whole (see `GroupRead::known`).
pub(super) async fn snapshot<B: Backend>(
    ctx: &DestCtx<'_, B>,
    group: Option<GroupRef>,
    source: Option<&SourceSet>,
    ledger: Option<&LedgerView>,
) -> Result<(DestSnapshot, Option<String>), BackendError> {
    let (backend, spec, user) = (ctx.backend, &ctx.job.spec, ctx.user);
    // How many contacts to expect: the copies remembered.
    let expected = ledger.map_or(0, LedgerView::len);
    // contact id → the ledger's row for the copy (source id, digest, etag of our write)
    let mut written: HashMap<&str, &LedgerRow> = HashMap::new();
    if let (Some(source), Some(ledger)) = (source, ledger) {
        for l in ledger.rows() {
            if !l.etag().is_empty()
                && source
                    .items
                    .get(l.source_id())
                    .is_some_and(|item| item.digest == l.digest())
            {
                written.insert(l.contact_id(), l);
            }
        }
    }
    let known = |id: &str, etag: &str| written.get(id).is_some_and(|l| l.etag() == etag);
    // Sized from the start: a grown vector of thousands of entries would carry up to twice
    // its length, for every destination in flight.
    let mut entries = Vec::with_capacity(expected);
    let mut taken = vec![];
    let mut hits = vec![];
    let mut sink = |r| match r {
        Read::Contact(c) => {
            taken.extend(plan::taken_uid(spec, &c.card));
            entries.push(DestEntry::classify(spec, c.id, c.etag, &c.card, source))
        }
        Read::Known { id, etag } => hits.push((id, etag)),
    };
    // With change tokens the read takes one, even of a group not there yet; a provider without
    // them is read only when the group exists (no call otherwise).
    let tokens = backend.capabilities().change_tokens;
    let how = GroupRead {
        depth: Depth::Whole,
        token: tokens,
        known: tokens.then_some(&known),
    };
    let token = if tokens || group.is_some() {
        backend
            .read_group(user, group.as_ref(), how, &mut sink)
            .await?
    } else {
        None
    };
    for (id, etag) in hits {
        let Some(l) = written.get(id.as_str()) else {
            continue;
        };
        let sid = l.source_id();
        let name = source
            .and_then(|s| s.items.get(sid))
            .map(|i| i.name.clone())
            .unwrap_or_default();
        entries.push(DestEntry {
            id,
            etag,
            kind: DestKind::Copy {
                source: Some(sid.to_string()),
                digest: l.digest().to_string(),
                name: name.to_string(),
                fields: vec![],
            },
        });
    }
    Ok((snapshot_of(ctx, group, (entries, taken), None), token))
}

/// A destination's snapshot as read in this run (see `DestSnapshot`).
pub(super) fn snapshot_of<B>(
    ctx: &DestCtx<'_, B>,
    group: Option<GroupRef>,
    (entries, taken_uids): (Vec<DestEntry>, Vec<String>),
    scope: Option<Scope>,
) -> DestSnapshot {
    DestSnapshot {
        user: ctx.user.clone(),
        group,
        group_is_default: ctx.target_group == ctx.opts.default_group,
        entries,
        scope,
        taken_uids,
    }
}

/// Reads a destination leaving the job. A real removal writes the job's copies to the trash as
/// it reads the group whole (`read_into_trash`: the plan deletes every one, from the trash, and
/// none is read again for it): they are counted, not summarised. A provider whose deletes take
/// no etag (`conditional_deletes`: Google) reads each chunk of copies whole just before their
/// delete anyway, to refuse one changed since: its removal reads the group for the tags only,
/// and the trash is written from that read (see `delete_with_trash`). A dry run reads it whole,
/// for the plan to name each copy. Returns the snapshot and the copies trashed.
pub(super) async fn removal_snapshot<B: Backend>(
    ctx: &DestCtx<'_, B>,
    group: Option<GroupRef>,
    expected: usize,
) -> Result<(DestSnapshot, Trashed), ApplyError> {
    let spec = &ctx.job.spec;
    let dry_run = ctx.opts.dry_run;
    let mut trashed = Trashed::default();
    let entries = match &group {
        Some(g) if !dry_run && ctx.backend.capabilities().conditional_deletes => {
            let (entries, copies) = read_into_trash(ctx, g).await?;
            trashed = copies;
            entries
        }
        Some(g) => {
            let mut entries = Vec::with_capacity(expected);
            let mut sink = |r| {
                if let Read::Contact(c) = r {
                    entries.push(match dry_run {
                        true => DestEntry::classify(spec, c.id, c.etag, &c.card, None),
                        false => DestEntry::classify_tags(spec, c.id, c.etag, &c.card),
                    })
                }
            };
            let how = if dry_run {
                GroupRead::WHOLE
            } else {
                GroupRead::TAGS
            };
            ctx.backend
                .read_group(ctx.user, Some(g), how, &mut sink)
                .await?;
            entries
        }
        None => vec![],
    };
    let snap = snapshot_of(ctx, group, (entries, vec![]), None);
    Ok((snap, trashed))
}

/// Summarises a destination from its ledger and what changed since its change token, without
/// reading the group whole. The ledger is what the group held when the destination last
/// converged, as this job wrote or read it; the delta names every contact that changed since.
/// A remembered copy the delta does not name is therefore unchanged, and is summarised from
/// the ledger: as in sync if it was written from the source as it is now, or field by field
/// from `previous` (what the last run read of its source) if it was written from that. The
/// others — written from a source the last run did not see, without an etag in the ledger, or
/// carrying a property the backend must read before an update (`Capabilities::read_before_update`) — are
/// read by id. `None` when that would take more calls than reading the group whole. The user's
/// own contacts in the group that did not change are not read, so `untouched` counts only
/// those that did.
pub(super) async fn snapshot_from_changes<B: Backend>(
    ctx: &DestCtx<'_, B>,
    group: &GroupRef,
    active: &ActiveInputs,
    ledger: &LedgerView,
    delta: ReadDelta,
) -> Result<Option<(DestSnapshot, Option<String>)>, BackendError> {
    let (backend, spec, user) = (ctx.backend, &ctx.job.spec, ctx.user);
    let source = &active.source;
    let caps = backend.capabilities();
    let ReadDelta {
        token,
        changed,
        gone,
        scope,
        mut taken_uids,
        ..
    } = delta;
    let read: HashSet<&str> = changed.iter().map(|e| e.id.as_str()).collect();
    let mut entries = Vec::with_capacity(ledger.len() + changed.len());
    let mut fetch = vec![];
    for l in ledger.rows() {
        let id = l.contact_id();
        if gone.contains(id) || read.contains(id) {
            continue;
        }
        let Some((name, fields)) = known_copy(l, active, spec, &caps) else {
            fetch.push(id.to_string());
            continue;
        };
        let sid = l.source_id();
        entries.push(DestEntry {
            id: id.to_string(),
            etag: l.etag().to_string(),
            kind: DestKind::Copy {
                source: Some(sid.to_string()),
                digest: l.digest().to_string(),
                name,
                fields,
            },
        });
    }
    drop(read);
    let fetch_calls = fetch.len().div_ceil(caps.batch_size.max(1));
    let copies = ledger.len() + scope.as_ref().map_or(0, |s| s.outside);
    let read_calls = copies.div_ceil(caps.page_size.max(1)).max(1);
    if fetch_calls > read_calls {
        return Ok(None);
    }
    if !fetch.is_empty() {
        backend
            .fetch_contacts(user, group, &fetch, &mut |c| {
                taken_uids.extend(plan::taken_uid(spec, &c.card));
                entries.push(DestEntry::classify(
                    spec,
                    c.id,
                    c.etag,
                    &c.card,
                    Some(source),
                ))
            })
            .await?;
    }
    entries.extend(changed);
    Ok(Some((
        snapshot_of(ctx, Some(group.clone()), (entries, taken_uids), scope),
        Some(token),
    )))
}

/// What a remembered copy that did not change holds, known without reading it: written from
/// the source as it is now (or held: its source cannot be read), or from the source as the
/// last run read it. `None`: it must be read (no etag remembered, written from a source the
/// last run did not see, or carrying a property the backend must read before an update).
fn known_copy(
    l: &LedgerRow,
    active: &ActiveInputs,
    spec: &plan::JobSpec,
    caps: &Capabilities,
) -> Option<(String, crate::card::FieldDigests)> {
    let (source, previous) = (&active.source, &active.previous);
    let sid = l.source_id();
    let item = source.items.get(sid);
    match (item, previous.get(sid)) {
        _ if l.etag().is_empty() => None,
        (Some(i), _) if i.digest == l.digest() => Some((i.name.to_string(), vec![])),
        _ if source.unreadable.contains_key(sid) => Some((String::new(), vec![])),
        (item, Some(p))
            if p.digest == l.digest()
                && !p
                    .fields
                    .iter()
                    .chain(item.iter().flat_map(|i| i.fields(&spec.fields)))
                    .any(|(name, _)| caps.read_before_update.contains(&&**name)) =>
        {
            Some((
                item.map_or_else(|| p.name.clone(), |i| i.name.to_string()),
                p.fields.clone(),
            ))
        }
        _ => None,
    }
}
