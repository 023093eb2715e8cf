//! One destination's pass: the guards (shutdown, a safety stop, a removed user gone), what
//! changed since it converged (a change token's delta, `delta`), then up to three attempts of
//! observe (the group, read whole or from the delta), decide (plan and deletion limit), apply and
//! record. A conflict (a contact changed between read and write) starts the next attempt.

use std::sync::Mutex;
use std::sync::atomic::Ordering;

use crate::backend::{Backend, BackendError, GroupRef};
use crate::mutex::lock;
use crate::plan::{self, DestSnapshot, LedgerView, Plan, Trashed};
use crate::store::{Counts, Store};

use super::DestReport;
use super::apply::apply;
use super::delta::{Observed, ReadDelta, TOKEN_VERSION, destination_mark, read_delta};
use super::finish::FinishOutcome;
use super::record::{ApplyError, refused_summary};
use super::shared::{DestCtx, Mode};
use super::snapshot::{removal_snapshot, snapshot, snapshot_from_changes};

/// What one attempt read: the snapshot, the ledger it is planned against, the change token
/// taken with the read, and how many copies it wrote to the trash as it read (a removal's, not
/// among the snapshot's entries).
struct Observation {
    snap: DestSnapshot,
    ledger: Option<LedgerView>,
    token: Option<String>,
    trashed: Trashed,
}

/// How an attempt ended.
enum Attempt {
    /// The report is final.
    Done,
    /// A contact changed between read and write: read and plan again.
    Again,
}

/// Snapshots one destination, plans, checks the limits and applies; a conflict is settled by
/// reading and planning again, up to three times.
pub(super) async fn process_destination<B: Backend>(ctx: &DestCtx<'_, B>) -> DestReport {
    let mut report = DestReport {
        user: ctx.user.name.clone(),
        removal: ctx.active().is_none(),
        plan: None,
        applied: Counts::default(),
        error: None,
        refused: vec![],
        stopped: None,
    };
    let Some(saved) = get_ready(ctx, &mut report).await else {
        return report;
    };
    let known_group = saved.as_ref().map(|(_, group)| group.clone());
    let mut observed = Observed::default();
    let saved_token = saved.filter(|_| !ctx.opts.force);
    if let (Some(active), Some(token)) = (ctx.active(), saved_token) {
        match read_delta(ctx, active, token, &mut report).await {
            Some(o) => observed = o,
            None => return report,
        }
    }
    observed.known_group = known_group;
    // Back at the provider, if the change-token read stepped aside.
    ctx.slot.take().await;
    for attempt in 0..3 {
        let Some(seen) = observe(ctx, attempt, &mut observed, &mut report).await else {
            return report;
        };
        match decide_and_apply(ctx, attempt, seen, &mut report).await {
            Attempt::Done => return report,
            Attempt::Again => {}
        }
    }
    report
}

/// Gets ready (the provider's preparation, e.g. Google's token, and the change token kept in
/// the state) before taking a place at the provider, then checks that the destination is still
/// to be run: no shutdown, no safety stop, and a removed user still there. `None` when the
/// report is final; else the saved change token and the group id it was taken for, if any.
async fn get_ready<B: Backend>(
    ctx: &DestCtx<'_, B>,
    report: &mut DestReport,
) -> Option<Option<(String, String)>> {
    let (opts, user) = (ctx.opts, ctx.user);
    let shutting_down = "not run: groupsync is shutting down";
    if opts.cancelled() {
        report.stopped = Some(shutting_down.into());
        return None;
    }
    ctx.backend.prepare_access(user).await;
    // With change tokens: read only what changed since this destination last converged (and
    // find its group by the id remembered with the token).
    let tokens = ctx.backend.capabilities().change_tokens;
    let saved_token = if tokens {
        lock(ctx.reader)
            .change_token(ctx.job_name(), &user.id)
            .ok()
            .flatten()
    } else {
        None
    };
    ctx.slot.enter().await;
    if opts.cancelled() {
        report.stopped = Some(shutting_down.into());
        return None;
    }
    match ctx.mode {
        Mode::Active(a) if a.stopped.load(Ordering::SeqCst) => {
            report.stopped = Some("not run: the job was stopped by a safety limit".into());
            None
        }
        Mode::Active(_) => Some(saved_token),
        Mode::Removal => still_there(ctx, report).await.then_some(saved_token),
    }
}

/// A removed destination's user is still at the provider (true). One deleted has nothing left
/// to clean up (it is forgotten); one suspended waits in the state until it can be reached.
async fn still_there<B: Backend>(ctx: &DestCtx<'_, B>, report: &mut DestReport) -> bool {
    let user = ctx.user;
    match ctx.backend.resolve_user(&user.name).await {
        Ok(Some(_)) => true,
        Ok(None) => {
            if !ctx.opts.dry_run {
                let _ = lock(ctx.store).forget_destination(ctx.job_name(), &user.id);
            }
            false
        }
        Err(BackendError::Skipped(why)) => {
            report.stopped = Some(format!(
                "skipped: {why}; its copies are removed once it can be reached"
            ));
            false
        }
        Err(e) => {
            report.error = Some(format!("looking up {}: {e}", user.name));
            false
        }
    }
}

/// One attempt's read: the group (as read alongside the delta, or now), then, unless the group
/// and the source are as they were when it last converged, its snapshot and ledger. `None` when
/// the report is final.
async fn observe<B: Backend>(
    ctx: &DestCtx<'_, B>,
    attempt: usize,
    observed: &mut Observed,
    report: &mut DestReport,
) -> Option<Observation> {
    // State this destination has not written to in this run: at the first attempt, read
    // without waiting for the writer.
    let state: &Mutex<Store> = if attempt == 0 { ctx.reader } else { ctx.store };
    let vouched = match &observed.group_read {
        None => vouched_group(ctx, state, observed),
        Some(_) => None,
    };
    let read = match (observed.group_read.take(), vouched) {
        (Some(Ok(g)), _) => Ok(g),
        (None, Some(g)) => Ok(Some(g)),
        _ => {
            let known = observed.known_group.as_deref();
            ctx.backend
                .find_group(ctx.user, ctx.target_group, known)
                .await
        }
    };
    let group = match read {
        Ok(g) => g,
        // The user's account is there but their contacts cannot be reached now (a mailbox
        // not in the cloud): a note, as for a suspended user, not a failure.
        Err(BackendError::Skipped(why)) => {
            report.stopped = Some(format!("skipped: {why}"));
            return None;
        }
        Err(e) => {
            report.error = Some(format!("reading {}: {e}", ctx.user.name));
            return None;
        }
    };
    if attempt == 0 && unchanged_since_converged(ctx, state, group.as_ref(), report).await {
        return None;
    }
    // The changes read before stand for this attempt's read while the group is the one they
    // were read for.
    let delta = observed
        .delta
        .take()
        .filter(|d| group.as_ref().is_some_and(|g| g.id == d.group_id));
    let read = read_snapshot(ctx, state, group, delta).await;
    match read {
        Ok(seen) => Some(seen),
        Err(e) => {
            report.error = Some(e);
            None
        }
    }
}

/// The group a change token's delta vouches for (see `Capabilities::group_loss_in_delta`): the
/// one the token was taken for, when the delta named no remembered copy as gone and the
/// destination holds copies (so a group deleted since would have shown as them leaving it).
fn vouched_group<B: Backend>(
    ctx: &DestCtx<'_, B>,
    state: &Mutex<Store>,
    observed: &Observed,
) -> Option<GroupRef> {
    let delta = observed.delta.as_ref()?;
    if !ctx.backend.capabilities().group_loss_in_delta || !delta.gone.is_empty() {
        return None;
    }
    let copies = lock(state).copy_count(ctx.job_name(), &ctx.user.id).ok()?;
    (copies > 0).then(|| GroupRef {
        id: delta.group_id.clone(),
        name: ctx.target_group.to_string(),
        version: None,
    })
}

/// Nothing changed at the source nor in the group since this destination last converged (the
/// group's version and the source's fingerprint are its mark): recorded up to date without
/// reading the group, one request instead of a full read. True when it was.
async fn unchanged_since_converged<B: Backend>(
    ctx: &DestCtx<'_, B>,
    state: &Mutex<Store>,
    group: Option<&GroupRef>,
    report: &mut DestReport,
) -> bool {
    let (Some(active), Some(version)) = (ctx.active(), group.and_then(|g| g.version.as_deref()))
    else {
        return false;
    };
    if ctx.opts.force {
        return false;
    }
    let (job, user) = (ctx.job_name(), ctx.user);
    let mark = destination_mark(&active.fingerprint, version);
    let known = lock(state).fingerprint(job, &user.id).ok().flatten();
    if known.as_deref() != Some(mark.as_str()) {
        return false;
    }
    let copies = lock(state).copy_count(job, &user.id).unwrap_or(0);
    report.plan = Some(Plan::up_to_date(user, copies));
    if !ctx.opts.dry_run {
        ctx.finish(FinishOutcome::Record)
            .run(ctx.store, ctx.slot, report)
            .await;
    }
    true
}

/// The snapshot of this attempt and the ledger it is planned against: from the delta when it
/// stands for the read (only the part of the ledger it needs), else the group read whole (a
/// removal's copies trashed as they are read).
async fn read_snapshot<B: Backend>(
    ctx: &DestCtx<'_, B>,
    state: &Mutex<Store>,
    group: Option<GroupRef>,
    mut delta: Option<ReadDelta>,
) -> Result<Observation, String> {
    let (job, user) = (ctx.job_name(), ctx.user);
    let whole_ledger = || lock(state).ledger(job, &user.id).map_err(|e| e.to_string());
    let reading = |e: BackendError| format!("reading {}: {e}", user.name);
    let Some(active) = ctx.active() else {
        let copies = lock(state).copy_count(job, &user.id).unwrap_or(0);
        let (snap, trashed) = removal_snapshot(ctx, group, copies)
            .await
            .map_err(|e| format!("reading {}: {e}", user.name))?;
        return Ok(Observation {
            snap,
            ledger: None,
            token: None,
            trashed,
        });
    };
    // The ledger the changes were read against is this attempt's ledger: moved, not copied
    // (thousands of rows per destination); only part of it when the changes leave only part
    // of the destination to plan.
    let partial = delta.as_ref().is_some_and(|d| d.scope.is_some());
    let ledger = match delta.as_mut().and_then(|d| d.ledger.take()) {
        Some(l) => l,
        None => whole_ledger()?,
    };
    if let (Some(d), Some(g)) = (delta, group.as_ref())
        && let Some((snap, token)) = snapshot_from_changes(ctx, g, active, &ledger, d)
            .await
            .map_err(reading)?
    {
        return Ok(Observation {
            snap,
            ledger: Some(ledger),
            token,
            trashed: Trashed::default(),
        });
    }
    // The group is read whole: so is the ledger.
    let ledger = if partial { whole_ledger()? } else { ledger };
    let (snap, token) = snapshot(ctx, group, Some(&active.source), Some(&ledger))
        .await
        .map_err(reading)?;
    Ok(Observation {
        snap,
        ledger: Some(ledger),
        token,
        trashed: Trashed::default(),
    })
}

/// Plans, checks the deletion limit, applies and records one attempt.
async fn decide_and_apply<B: Backend>(
    ctx: &DestCtx<'_, B>,
    attempt: usize,
    seen: Observation,
    report: &mut DestReport,
) -> Attempt {
    let Observation {
        mut snap,
        ledger,
        token,
        trashed,
    } = seen;
    let plan = match ctx.active() {
        Some(active) => {
            let plan = plan::plan_destination(
                &active.source,
                &snap,
                &ctx.job.spec,
                &ledger.unwrap_or_default(),
            );
            if let Some(why) = &plan.limit_exceeded
                && !ctx.opts.force
            {
                active.stopped.store(true, Ordering::SeqCst);
                report.stopped = Some(format!(
                    "deletion limit: {why}; nothing was changed at this destination. Run with --force if this is intended"
                ));
                report.plan = Some(plan);
                return Attempt::Done;
            }
            plan
        }
        None => plan::plan_removal(&mut snap, trashed),
    };
    // The plan holds what the apply needs; the summary of every contact can go now.
    let group = snap.group.take();
    drop(snap);
    if ctx.opts.dry_run {
        report.plan = Some(plan);
        return Attempt::Done;
    }
    apply_and_record(ctx, attempt, (plan, group, token), report).await
}

/// Applies a plan and records how it went (`Finish`): what the destination converged to when
/// everything was written, the error otherwise. A conflict before the last attempt asks for
/// another.
async fn apply_and_record<B: Backend>(
    ctx: &DestCtx<'_, B>,
    attempt: usize,
    (mut plan, group, token): (Plan, Option<GroupRef>, Option<String>),
    report: &mut DestReport,
) -> Attempt {
    let (job, user) = (ctx.job_name(), ctx.user);
    if ctx.active().is_some()
        && let Err(e) =
            lock(ctx.store).touch_destination(job, &user.id, &user.name, ctx.target_group)
    {
        report.error = Some(e.to_string());
        return Attempt::Done;
    }
    report.refused.clear();
    let source = ctx.active().map(|a| &a.source);
    let applied = (&mut report.applied, &mut report.refused);
    let take_token = ctx.backend.capabilities().change_tokens && token.is_none();
    let (result, mut finish, made_token) =
        apply(ctx, group.clone(), &mut plan, source, applied, take_token).await;
    let token = token.or(made_token);
    let wrote = !plan.ops.is_empty();
    report.plan = Some(plan.into_summary());
    if let Some(active) = ctx.active() {
        let converged = converged_to(ctx, &result, group.as_ref(), token, wrote).await;
        let (mark, token) = converged;
        finish.mark = Some(mark.map(|v| destination_mark(&active.fingerprint, &v)));
        finish.token = Some(token);
    }
    let failed = match result {
        // Contacts the provider refused: the rest was written; the destination failed, and
        // they are tried again next run.
        Ok(_) if !report.refused.is_empty() => Some(refused_summary(&report.refused)),
        Ok(_) => None,
        Err(ApplyError::Backend(BackendError::Conflict { .. })) if attempt < 2 => {
            tracing::info!(job, dest = %user.name, "a contact changed while syncing; reading again");
            // Recorded before the group is read again, the place at the provider kept.
            finish.failed = Some("a contact changed while syncing".into());
            let store = ctx.store.clone();
            let _ = tokio::task::spawn_blocking(move || finish.write(&store)).await;
            return Attempt::Again;
        }
        Err(e) => {
            let msg = e.to_string();
            tracing::warn!(job, dest = %user.name, "destination failed: {msg}");
            Some(msg)
        }
    };
    finish.outcome = match (&failed, ctx.active()) {
        (None, None) => FinishOutcome::Forget,
        _ => FinishOutcome::Record,
    };
    report.error = failed.clone();
    finish.failed = failed;
    finish.run(ctx.store, ctx.slot, report).await;
    Attempt::Done
}

/// What an active destination converged to, remembered if everything is recorded (see
/// `Finish`): its mark (the group's version after the writes, or the change-token version)
/// and its change token. With change tokens, the token taken before the writes is kept: the
/// writes themselves are recognised later by the etags the ledger now holds.
async fn converged_to<B: Backend, E>(
    ctx: &DestCtx<'_, B>,
    result: &Result<Option<GroupRef>, E>,
    group: Option<&GroupRef>,
    token: Option<String>,
    wrote: bool,
) -> (Option<String>, Option<(String, String)>) {
    let tokened = match (result, token) {
        (Ok(Some(g)), Some(t)) => Some((t, g.id.clone())),
        _ => None,
    };
    let mark = match (result, wrote) {
        _ if tokened.is_some() => Some(TOKEN_VERSION.to_string()),
        (Ok(_), false) => group.and_then(|g| g.version.clone()),
        (Ok(_), true) if ctx.backend.capabilities().group_versions => ctx
            .backend
            .find_group(ctx.user, ctx.target_group, group.map(|g| g.id.as_str()))
            .await
            .ok()
            .flatten()
            .and_then(|g| g.version),
        _ => None,
    };
    (mark, tokened)
}
