//! A change token's delta: the ledger probe that answers what the engine knows of each contact
//! the delta names, the part of the destination left to plan (`plan::Scope`), and the marks of a
//! destination that converged.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::backend::{Backend, BackendError, Delta, GroupRef, User};
use crate::card;
use crate::mutex::lock;
use crate::plan::{self, DestEntry, DestKind, JobSpec, LedgerRow, LedgerView, Plan, Scope};
use crate::store::Store;

use super::DestReport;
use super::finish::FinishOutcome;
use super::probe::{LedgerProbe, Probe, ProbeState, Probing};
use super::shared::{ActiveInputs, DestCtx, SourceDiff};

/// What a change token's delta told of one destination, kept for the first attempt's snapshot
/// (see `snapshot_from_changes`).
pub(super) struct ReadDelta {
    /// The token the read gave back, valid from the moment it began.
    pub(super) token: String,
    /// The group the token was taken for.
    pub(super) group_id: String,
    /// Contacts in the group that changed since (the engine's own writes left out), summarised.
    pub(super) changed: Vec<DestEntry>,
    /// Remembered copies deleted since, or no longer in the group.
    pub(super) gone: HashSet<String>,
    /// UIDs of the changed contacts a fresh copy must not get (see `plan::taken_uid`).
    pub(super) taken_uids: Vec<String>,
    /// The ledger, when the read needed it: whole, or the part `scope` names.
    pub(super) ledger: Option<LedgerView>,
    /// Set when only part of the destination needs a plan (see `plan::Scope`).
    pub(super) scope: Option<Scope>,
}

/// What a change token's read found before the attempts: the delta, when it stands for the
/// first attempt's read, and the group, when it was read alongside.
#[derive(Default)]
pub(super) struct Observed {
    pub(super) delta: Option<ReadDelta>,
    pub(super) group_read: Option<Result<Option<GroupRef>, BackendError>>,
    /// The id of the group, as the state remembers it (see `Backend::find_group`).
    pub(super) known_group: Option<String>,
}

/// What a delta handed over.
#[derive(Default)]
struct Changes {
    /// Contacts in the group that changed since, summarised.
    changed: Vec<DestEntry>,
    /// Remembered copies deleted since, or no longer in the group.
    gone: HashSet<String>,
    /// UIDs of the changed contacts a fresh copy must not get.
    taken_uids: Vec<String>,
}

/// Reads what changed since the destination last converged (its saved change token and the
/// group it was taken for). When nothing that concerns the group changed and the source is the
/// same, that one call is the whole run: the destination is recorded up to date and `None`
/// returned (the report is final). Otherwise what it read feeds the first attempt.
pub(super) async fn read_delta<B: Backend>(
    ctx: &DestCtx<'_, B>,
    active: &ActiveInputs,
    (token, group_id): (String, String),
    report: &mut DestReport,
) -> Option<Observed> {
    let (spec, user) = (&ctx.job.spec, ctx.user);
    // Looked up at the first change only: a destination where nothing changed never needs the
    // ledger, and one where little changed needs a few rows of it.
    let probe = LedgerProbe::new(ctx.reader, &spec.name, &user.id);
    let mut observed = Observed::default();
    let (read, changes) = read_changes(
        ctx,
        active,
        &probe,
        (&token, &group_id),
        &mut observed.group_read,
    )
    .await;
    let ProbeState { probe, total, .. } = probe.into_inner();
    match read {
        Ok(Delta::Read { token: next }) => {
            if changes.changed.is_empty()
                && changes.gone.is_empty()
                && converged_under_token(ctx.reader, spec, user, &active.fingerprint)
            {
                let copies = total.unwrap_or_else(|| {
                    lock(ctx.reader)
                        .copy_count(&spec.name, &user.id)
                        .unwrap_or(0)
                });
                report.plan = Some(Plan::up_to_date(user, copies));
                if !ctx.opts.dry_run {
                    let mut finish = ctx.finish(FinishOutcome::Record);
                    finish.token = Some(Some((next, group_id)));
                    finish.run(ctx.store, ctx.slot, report).await;
                }
                return None;
            }
            observed.delta =
                delta_for_attempt(ctx, active, (probe, total), changes, (next, group_id));
        }
        Ok(Delta::Expired) => {
            tracing::info!(job = %spec.name, dest = %user.name, "change token expired; reading the whole group");
        }
        Err(e) => {
            tracing::info!(job = %spec.name, dest = %user.name, "could not read changes ({e}); reading the whole group");
        }
    }
    Some(observed)
}

/// Reads the delta. The first change it names means the group is read next: it is asked for
/// then, while the rest of the delta is read (a read alongside a read), with a place at the
/// provider taken again if the read stepped aside before its first change was found.
async fn read_changes<B: Backend>(
    ctx: &DestCtx<'_, B>,
    active: &ActiveInputs,
    probe: &LedgerProbe<'_>,
    (token, group_id): (&str, &str),
    group_read: &mut Option<Result<Option<GroupRef>, BackendError>>,
) -> (Result<Delta, BackendError>, Changes) {
    let (spec, user, slot) = (&ctx.job.spec, ctx.user, ctx.slot);
    let mut changes = Changes::default();
    let asked = AtomicBool::new(false);
    let ask = tokio::sync::Notify::new();
    let wanted = || {
        if !asked.swap(true, Ordering::Relaxed) {
            ask.notify_one();
        }
    };
    let probing = Probing {
        probe,
        slot,
        group_asked: &asked,
    };
    // A changed contact needs the group looked up unless the delta itself vouches for it
    // (see `Capabilities::group_loss_in_delta`): then only a copy gone does.
    let vouches = ctx.backend.capabilities().group_loss_in_delta;
    let read = {
        let mut each = |c: crate::backend::Contact| {
            if !vouches {
                wanted();
            }
            changes.taken_uids.extend(plan::taken_uid(spec, &c.card));
            let source = Some(&active.source);
            (changes.changed).push(DestEntry::classify(spec, c.id, c.etag, &c.card, source))
        };
        let mut each_gone = |id| {
            wanted();
            changes.gone.insert(id);
        };
        let mut reading = std::pin::pin!(ctx.backend.read_changes(
            user,
            token,
            group_id,
            &probing,
            &mut each,
            &mut each_gone,
        ));
        let mut lookup = std::pin::pin!(async {
            ask.notified().await;
            slot.take().await;
            let known = Some(group_id);
            ctx.backend.find_group(user, ctx.target_group, known).await
        });
        let read = loop {
            tokio::select! {
                biased;
                read = &mut reading => break read,
                g = &mut lookup, if group_read.is_none() => *group_read = Some(g),
            }
        };
        if group_read.is_none() && asked.load(Ordering::Relaxed) {
            *group_read = Some(lookup.await);
        }
        read
    };
    (read, changes)
}

/// What the delta leaves the first attempt: the changes and the ledger as `known` loaded it, or
/// the part of it the plan needs. `None` when the state database failed (`Whole(None)`): the
/// whole group is read, which reports it.
fn delta_for_attempt<B>(
    ctx: &DestCtx<'_, B>,
    active: &ActiveInputs,
    (probe, total): (Probe, Option<usize>),
    changes: Changes,
    (token, group_id): (String, String),
) -> Option<ReadDelta> {
    let part = match (&probe, active.since.as_ref()) {
        (Probe::Points(found), Some(since)) => delta_scope(
            ctx.reader,
            &ctx.job.spec,
            ctx.user,
            since,
            &changes.changed,
            found,
            total,
        ),
        _ => None,
    };
    let (ledger, scope) = match (probe, part) {
        (_, Some((part, scope))) => (Some(part), Some(scope)),
        // Loaded by the attempt (a whole probe holds only contact ids and etags).
        (Probe::Points(_) | Probe::Whole(Some(_)), None) => (None, None),
        (Probe::Whole(None), None) => return None,
    };
    Some(ReadDelta {
        token,
        group_id,
        changed: changes.changed,
        gone: changes.gone,
        taken_uids: changes.taken_uids,
        ledger,
        scope,
    })
}

/// The part of a destination a change token's delta leaves to plan, when the destination
/// converged to the source as the last run read it (`since`): the source contacts that changed
/// since, the copies the delta names (`found`, by contact id) and the source contacts the
/// changed contacts (`changed`) are copies of. `total`: the ledger's size, when the probe
/// counted it. `None` when that is not known, or not small
/// enough to be worth looking up one at a time; then the whole ledger is loaded.
pub(super) fn delta_scope(
    store: &Mutex<Store>,
    spec: &JobSpec,
    user: &User,
    since: &SourceDiff,
    changed: &[DestEntry],
    found: &HashMap<String, Option<LedgerRow>>,
    total: Option<usize>,
) -> Option<(LedgerView, Scope)> {
    let mark = lock(store)
        .fingerprint(&spec.name, &user.id)
        .ok()
        .flatten()?;
    if mark != destination_mark(&since.fingerprint, TOKEN_VERSION) {
        return None;
    }
    let mut ids: BTreeSet<&str> = since.ids.iter().map(String::as_str).collect();
    for e in changed {
        if let DestKind::Copy {
            source: Some(s), ..
        } = &e.kind
        {
            ids.insert(s);
        }
    }
    ids.extend(found.values().flatten().map(LedgerRow::source_id));
    let s = lock(store);
    let total = match total {
        Some(t) => t,
        None => s.copy_count(&spec.name, &user.id).ok()?,
    };
    if ids.len() > total / 2 {
        return None;
    }
    let part = s
        .ledger_rows(&spec.name, &user.id, ids.iter().copied())
        .ok()?;
    drop(s);
    let outside = total.checked_sub(part.len())?;
    tracing::debug!(
        job = %spec.name,
        dest = %user.name,
        "planning the copies of {} source contacts; the other {outside} copies are as the last run left them",
        ids.len()
    );
    Some((
        part,
        Scope {
            source_ids: ids.into_iter().map(str::to_string).collect(),
            outside,
        },
    ))
}

/// The group version recorded for a destination that converged under a change token.
pub(super) const TOKEN_VERSION: &str = "change-token";

/// True when a destination's last run converged to the source with this fingerprint under a
/// change token.
pub(super) fn converged_under_token(
    store: &Mutex<Store>,
    spec: &JobSpec,
    user: &User,
    fingerprint: &str,
) -> bool {
    let mark = destination_mark(fingerprint, TOKEN_VERSION);
    lock(store)
        .fingerprint(&spec.name, &user.id)
        .ok()
        .flatten()
        .as_deref()
        == Some(mark.as_str())
}

/// What a destination converged to: this run's source and the group's version.
pub(super) fn destination_mark(source_fingerprint: &str, group_version: &str) -> String {
    card::hex_digest(format!("{source_fingerprint}|{group_version}").as_bytes())
}
