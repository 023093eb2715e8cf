//! One job's run, phase by phase: the tag check, the destinations resolved (`resolve`), the
//! source read (`source`), the active destinations fanned out, then the removed ones cleaned up
//! (`pool`). Each phase may end the run with the report's outcome set.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::backend::{Backend, User};
use crate::mutex::lock;

use super::error::JobError;
use super::pool::run_destinations;
use super::resolve::{Resolved, resolve_destinations};
use super::shared::{AbortOnDrop, ActiveInputs, DestShared, JobCtx, STARTED_AHEAD};
use super::source::{read_source, save_source};
use super::{JobReport, Outcome};

pub(super) async fn run_inner<B: Backend + 'static>(
    ctx: &JobCtx<'_, B>,
    report: &mut JobReport,
) -> Result<(), JobError> {
    check_tag(ctx)?;
    let mut resolved = resolve_destinations(ctx, report).await?;
    if shrank_too_much(ctx, &resolved, report) {
        return Ok(());
    }
    let _early = prepare_early(ctx, &mut resolved);
    let Some(inputs) = read_source(ctx, &mut resolved, report).await? else {
        return Ok(());
    };
    let inputs = Arc::new(inputs);
    let shared = DestShared::new(ctx, report.run_id.unwrap_or(0));
    let active = std::mem::take(&mut resolved.active);
    let target = &ctx.job.spec.target_group;
    let results = run_destinations(
        &shared,
        active.into_iter().map(|u| (u, target.clone())),
        Some(&inputs),
    )
    .await;
    report.destinations.extend(results);
    save_source(ctx, &inputs, report);
    // Report destinations in job-file order, whatever order they finished in.
    let order = |u: &str| resolved.names.iter().position(|d| d == u);
    report
        .destinations
        .sort_by_key(|d| order(&d.user).unwrap_or(usize::MAX));
    if ended_early(ctx, &inputs, report) {
        return Ok(());
    }
    // Removed destinations: copies deleted, users' own contacts kept, group removed. The
    // source is not needed for them: let go of it first.
    drop(inputs);
    let removed = std::mem::take(&mut resolved.removed);
    let removals = run_destinations(&shared, removed.into_iter(), None).await;
    report.destinations.extend(removals);
    Ok(())
}

/// A job's tag never changes, and no two jobs share one; the target group's name must be one
/// the provider can make. Remembers the job's tag on its first real run.
fn check_tag<B: Backend>(ctx: &JobCtx<'_, B>) -> Result<(), JobError> {
    let spec = &ctx.job.spec;
    let s = lock(ctx.store);
    match s.job_tag(&spec.name)? {
        Some(t) if t != spec.tag => {
            return Err(JobError::TagChanged {
                job: spec.name.clone(),
                expected: t,
                found: spec.tag.clone(),
            });
        }
        _ => {}
    }
    if let Some(other) = s.job_with_tag(&spec.tag)?
        && other != spec.name
    {
        return Err(JobError::TagInUse {
            job: spec.name.clone(),
            tag: spec.tag.clone(),
            other,
        });
    }
    if !ctx.opts.dry_run {
        s.remember_job(&spec.name, &spec.tag)?;
    }
    drop(s);
    ctx.backend
        .check_group_name(&spec.target_group)
        .map_err(|why| JobError::BadGroupName {
            job: spec.name.clone(),
            group: spec.target_group.clone(),
            why,
        })
}

/// A dynamic set that shrinks past the deletion limit in one run (a directory hiccup, a group
/// emptied by mistake) stops the job before anything is removed: true when it did.
fn shrank_too_much<B: Backend>(
    ctx: &JobCtx<'_, B>,
    resolved: &Resolved,
    report: &mut JobReport,
) -> bool {
    let (spec, opts) = (&ctx.job.spec, ctx.opts);
    if !resolved.dynamic || opts.force || opts.only.is_some() {
        return false;
    }
    let stored = resolved.stored_count;
    let limits = spec.limits;
    let allowed = limits
        .max_delete
        .max((stored * limits.max_delete_percent as usize).div_ceil(100));
    let removed = resolved.removed.len();
    if removed <= allowed {
        return false;
    }
    report.outcome = Outcome::Stopped;
    report.message = Some(format!(
        "the job's destinations shrank from {stored} to {} users in one run ({removed} would be removed, limit {allowed}: max_delete = {}, max_delete_percent = {}); nothing was changed. Check the dynamic sets, or run with --force if this is intended",
        stored.saturating_sub(removed),
        limits.max_delete,
        limits.max_delete_percent
    ));
    true
}

/// The first destinations get ready (Google: their access tokens) while the source is read, so
/// that the first places go to destinations ready to call as soon as it is in; after the
/// source's own token. Stopped if the run ends first.
fn prepare_early<B: Backend + 'static>(
    ctx: &JobCtx<'_, B>,
    resolved: &mut Resolved,
) -> AbortOnDrop {
    let first: Vec<User> = resolved
        .active
        .iter()
        .take(STARTED_AHEAD * ctx.opts.concurrency.max(1))
        .cloned()
        .collect();
    let backend = ctx.backend.clone();
    let source_ready = resolved.source_ready.take();
    AbortOnDrop(tokio::spawn(async move {
        if let Some(ready) = source_ready {
            let _ = ready.await;
        }
        futures::future::join_all(first.iter().map(|u| backend.prepare_access(u))).await;
    }))
}

/// After the active destinations: an interruption or a safety stop ends the run before the
/// removals (true when it did), with the outcome and message that say so.
fn ended_early<B: Backend>(
    ctx: &JobCtx<'_, B>,
    inputs: &ActiveInputs,
    report: &mut JobReport,
) -> bool {
    if ctx.opts.cancelled() {
        let skipped = report
            .destinations
            .iter()
            .filter(|d| d.stopped.is_some())
            .count();
        report.outcome = Outcome::Interrupted;
        report.message = Some(format!(
            "interrupted by shutdown: {skipped} destinations not run; they run next time"
        ));
        return true;
    }
    if inputs.stopped.load(Ordering::SeqCst) {
        report.outcome = Outcome::Stopped;
        // The first destination, in job-file order, that hit the limit (others may have been
        // skipped, or not run because of it).
        report.message = report
            .destinations
            .iter()
            .filter(|d| d.plan.as_ref().is_some_and(|p| p.limit_exceeded.is_some()))
            .find_map(|d| d.stopped.clone())
            .or(report.message.take());
        return true;
    }
    false
}
