//! One job's run, phase by phase: the tag check, the destinations resolved, the source read,
//! the active destinations fanned out, then the removed ones cleaned up.

use futures::StreamExt;
use std::collections::BTreeSet;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;

use crate::backend::Backend;
use crate::backend::BackendError;
use crate::backend::User;
use crate::card;
use crate::mutex::lock;
use crate::plan::SourceSet;
use crate::store::Store;

use super::error::JobError;
use super::pool::{
    AbortOnDrop, ActiveInputs, DestShared, STARTED_AHEAD, failed_dest, report_progress,
    run_destinations,
};
use super::resolve::{destination_names, is_dynamic_set};
use super::source::previous_source;
use super::{DestReport, JobReport, JobRun, Outcome, RunOptions};

pub(super) async fn run_inner<B: Backend + 'static>(
    backend: &Arc<B>,
    store: &Arc<Mutex<Store>>,
    job: &JobRun,
    opts: &RunOptions,
    report: &mut JobReport,
) -> Result<(), JobError> {
    let spec = &job.spec;
    {
        let s = lock(store);
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
        if !opts.dry_run {
            s.remember_job(&spec.name, &spec.tag)?;
        }
    }
    if let Err(why) = backend.check_group_name(&spec.target_group) {
        return Err(JobError::BadGroupName {
            job: spec.name.clone(),
            group: spec.target_group.clone(),
            why,
        });
    }

    // Which destinations are in the job (dynamic sets read now), and which were synced before
    // but are no longer in it.
    let (names, _) = destination_names(&**backend, job).await?;
    let dynamic = job.destinations.iter().any(|d| is_dynamic_set(d));
    let stored = lock(store).destinations(&spec.name)?;
    {
        let mut all: Vec<String> = names.clone();
        all.extend(stored.iter().map(|d| d.user.clone()));
        all.push(job.source.clone());
        backend.prepare_users(&all).await;
    }
    // The source user is looked up, and gets ready for its reads (Google: its access token),
    // while the destinations are looked up: its first read follows them without a wait. Stopped
    // if the run ends first; its answer is used only if the source is read. The destinations
    // started ahead get ready after it (`source_ready`), as the source is read before them.
    let (source_ready, source_ready_rx) = tokio::sync::oneshot::channel::<()>();
    let mut source_user = (!opts.removals_only).then(|| {
        let backend = backend.clone();
        let name = job.source.clone();
        AbortOnDrop(tokio::spawn(async move {
            let user = backend.resolve_user(&name).await;
            if let Ok(Some(u)) = &user {
                backend.prepare_access(u).await;
            }
            drop(source_ready);
            user
        }))
    });
    let mut active: Vec<User> = vec![];
    let mut active_names: BTreeSet<&str> = BTreeSet::new();
    let mut to_resolve: Vec<&String> = vec![];
    for name in &names {
        active_names.insert(name);
        if opts.only.as_ref().is_some_and(|o| !o.contains(name)) {
            continue;
        }
        to_resolve.push(name);
    }
    // Users are looked up `concurrency` at a time (one provider call each).
    let resolved: Vec<(&String, Result<Option<User>, BackendError>)> =
        futures::stream::iter(to_resolve)
            .map(|name| async move { (name, backend.resolve_user(name).await) })
            .buffered(opts.concurrency.max(1))
            .collect()
            .await;
    // A user the job file names that does not exist, or whose credentials the provider
    // refuses, is the configuration's fault: the job is refused before anything is written.
    let named: BTreeSet<String> = job
        .destinations
        .iter()
        .filter(|d| !is_dynamic_set(d))
        .map(|d| d.to_lowercase())
        .collect();
    let problems: Vec<String> = resolved
        .iter()
        .filter_map(|(name, r)| match r {
            Ok(None) if named.contains(&name.to_lowercase()) => {
                Some(format!("{name} (no such user)"))
            }
            Err(BackendError::Auth(why)) => Some(format!("{name}: {why}")),
            _ => None,
        })
        .collect();
    if !problems.is_empty() {
        // Refused credentials for the source too: the account is at fault, not the users.
        if let Some(AbortOnDrop(task)) = source_user.as_mut()
            && resolved
                .iter()
                .any(|(_, r)| matches!(r, Err(BackendError::Auth(_))))
            && let Ok(Err(e @ BackendError::Auth(_))) = task.await
        {
            return Err(JobError::SourceRead {
                user: job.source.clone(),
                group: job.group.clone(),
                source: e,
            });
        }
        return Err(JobError::BadDestinations {
            job: spec.name.clone(),
            problems,
        });
    }
    for (name, r) in resolved {
        let failed = match r {
            Ok(Some(u)) => {
                active.push(u);
                continue;
            }
            Ok(None) => failed_dest(
                name,
                false,
                format!("invalid destination user: {name} (no such user)"),
            ),
            Err(BackendError::Skipped(why)) => DestReport {
                stopped: Some(format!("skipped: {why}")),
                error: None,
                ..failed_dest(name, false, String::new())
            },
            Err(e) => failed_dest(name, false, format!("looking up {name}: {e}")),
        };
        report_progress(opts, &failed);
        report.destinations.push(failed);
    }
    let active_ids: BTreeSet<String> = active.iter().map(|u| u.id.clone()).collect();
    let stored_count = stored.len();
    let removed: Vec<(User, String)> = stored
        .into_iter()
        .filter(|d| !active_ids.contains(&d.user_id) && !active_names.contains(d.user.as_str()))
        .filter(|d| opts.only.as_ref().is_none_or(|o| o.contains(&d.user)))
        .map(|d| {
            (
                User {
                    id: d.user_id,
                    name: d.user,
                },
                d.target_group,
            )
        })
        .collect();
    if opts.removals_only {
        active.clear();
        report.destinations.retain(|_| false);
    }
    // A dynamic set that shrinks past the deletion limit in one run (a directory hiccup, a
    // group emptied by mistake) stops the job before anything is removed.
    if dynamic && !opts.force && opts.only.is_none() {
        let allowed = spec
            .limits
            .max_delete
            .max((stored_count * spec.limits.max_delete_percent as usize).div_ceil(100));
        if removed.len() > allowed {
            report.outcome = Outcome::Stopped;
            report.message = Some(format!(
                "the job's destinations shrank from {stored_count} to {} users in one run ({} would be removed, limit {allowed}: max_delete = {}, max_delete_percent = {}); nothing was changed. Check the dynamic sets, or run with --force if this is intended",
                stored_count.saturating_sub(removed.len()),
                removed.len(),
                spec.limits.max_delete,
                spec.limits.max_delete_percent
            ));
            return Ok(());
        }
    }

    // The first destinations get ready (Google: their access tokens) while the source is read,
    // so that the first places go to destinations ready to call as soon as it is in. Stopped if
    // the run ends first.
    let _early = {
        let first: Vec<User> = active
            .iter()
            .take(STARTED_AHEAD * opts.concurrency.max(1))
            .cloned()
            .collect();
        let backend = backend.clone();
        AbortOnDrop(tokio::spawn(async move {
            let _ = source_ready_rx.await;
            futures::future::join_all(first.iter().map(|u| backend.prepare_access(u))).await;
        }))
    };
    // The source, read once for all destinations.
    let mut source = SourceSet::default();
    if !active.is_empty() {
        // The lookup made while the destinations were looked up; made here if there was none
        // (or its task failed).
        let joined = match source_user.as_mut() {
            Some(AbortOnDrop(task)) => task.await.ok(),
            None => None,
        };
        let looked_up = match joined {
            Some(r) => r,
            None => backend.resolve_user(&job.source).await,
        };
        let src_user = looked_up.map_err(|e| JobError::SourceRead {
            user: job.source.clone(),
            group: job.group.clone(),
            source: e,
        })?;
        let src_user = src_user.ok_or_else(|| JobError::SourceUser(job.source.clone()))?;
        let read_err = |e| JobError::SourceRead {
            user: job.source.clone(),
            group: job.group.clone(),
            source: e,
        };
        let group = backend
            .find_group(&src_user, &job.group)
            .await
            .map_err(read_err)?
            .ok_or_else(|| JobError::SourceGroup {
                user: job.source.clone(),
                group: job.group.clone(),
            })?;
        backend
            .scan_group(&src_user, &group, &mut |c| source.add(spec, c.id, c.card))
            .await
            .map_err(read_err)?;
        report.source_read = true;
        report.source_contacts = source.items.len();
        report.source_filtered_out = source.filtered_out;
        report.source_came_back = source.came_back;
        if source.came_back > 0 {
            tracing::warn!(job = %spec.name, "{} contacts in source group {:?} of {} came through this job (its own copies, or copies of them made by other jobs); they are not copied again", source.came_back, job.group, job.source);
        }
        report.source_unreadable = source
            .unreadable
            .iter()
            .map(|(id, why)| format!("{id}: {why}"))
            .collect();
        for u in &report.source_unreadable {
            tracing::warn!(job = %spec.name, "source contact left as it is, it cannot be read: {u}");
        }

        // Empty-source guard: a group that suddenly reads empty never wipes destinations.
        if source.items.is_empty() && source.unreadable.is_empty() && !opts.force {
            let s = lock(store);
            let remembered = s.ledger_count(&spec.name)?;
            let last = s.last_source_count(&spec.name)?.unwrap_or(0);
            if remembered > 0 || last > 0 {
                report.outcome = Outcome::Stopped;
                report.message = Some(format!(
                    "source group {:?} of {} reads empty (filtered out: {}) while {} copies exist; nothing was changed. Run with --force if this is intended",
                    job.group, job.source, source.filtered_out, remembered
                ));
                return Ok(());
            }
        }
        if !opts.dry_run {
            lock(store).set_source_count(&spec.name, source.items.len())?;
        }
    }

    let source_fingerprint = source.fingerprint(spec);
    // What the last run read of the source contacts that changed since: copies written from
    // them are known field by field without being read again.
    let (previous, since) = if active.is_empty() || !backend.change_tokens() {
        (HashMap::new(), None)
    } else {
        previous_source(&lock(store), &spec.name, &source)
    };
    // Active destinations, `concurrency` at a time.
    let active_inputs = Arc::new(ActiveInputs {
        source,
        previous,
        since,
        fingerprint: source_fingerprint,
        stopped: AtomicBool::new(false),
    });
    let concurrency = opts.concurrency.max(1);
    let reader = match lock(store).reader() {
        Ok(Some(r)) => Arc::new(Mutex::new(r)),
        Ok(None) => store.clone(),
        Err(e) => {
            tracing::debug!(job = %spec.name, "no second connection to the state ({e}); reads share the writer's");
            store.clone()
        }
    };
    let shared = DestShared {
        backend: backend.clone(),
        store: store.clone(),
        reader,
        job: Arc::new(job.clone()),
        opts: opts.clone(),
        run_id: report.run_id.unwrap_or(0),
    };
    let results = run_destinations(
        &shared,
        concurrency,
        active.into_iter().map(|u| (u, spec.target_group.clone())),
        Some(&active_inputs),
    )
    .await;
    report.destinations.extend(results);
    let source = &active_inputs.source;
    if !opts.dry_run && report.source_read && backend.change_tokens() {
        let saved = lock(store).save_source_contacts(
            &spec.name,
            source
                .items
                .values()
                .map(|i| (i.id.as_str(), i.digest.as_str(), i.name.as_str())),
            |id| {
                source.items.get(id).map_or_else(String::new, |i| {
                    card::field_digests_text(i.fields(&spec.fields))
                })
            },
            // The rows are the whole source only when every contact could be read.
            source
                .unreadable
                .is_empty()
                .then_some(active_inputs.fingerprint.as_str()),
        );
        if let Err(e) = saved {
            tracing::warn!(job = %spec.name, "could not remember the source contacts: {e}");
        }
    }
    // Report destinations in job-file order, whatever order they finished in.
    let order = |u: &str| names.iter().position(|d| d == u).unwrap_or(usize::MAX);
    report.destinations.sort_by_key(|d| order(&d.user));
    if opts.cancelled() {
        let skipped = report
            .destinations
            .iter()
            .filter(|d| d.stopped.is_some())
            .count();
        report.outcome = Outcome::Interrupted;
        report.message = Some(format!(
            "interrupted by shutdown: {skipped} destinations not run; they run next time"
        ));
        return Ok(());
    }
    if active_inputs.stopped.load(Ordering::SeqCst) {
        report.outcome = Outcome::Stopped;
        // The first destination, in job-file order, that hit the limit (others may have been
        // skipped, or not run because of it).
        report.message = report
            .destinations
            .iter()
            .filter(|d| d.plan.as_ref().is_some_and(|p| p.limit_exceeded.is_some()))
            .find_map(|d| d.stopped.clone())
            .or(report.message.take());
        return Ok(());
    }

    // Removed destinations: copies deleted, users' own contacts kept, group removed.
    let removals = run_destinations(&shared, concurrency, removed.into_iter(), None).await;
    report.destinations.extend(removals);
    Ok(())
}
