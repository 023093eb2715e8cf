//! The executor: reads the source once, then for each destination reads its group, asks the
//! planner for a plan, checks the safety limits and applies the plan through the backend,
//! recording every change, every deleted payload and the outcome in the state database.
//!
//! It owns the order of a run (source, active destinations, then removed destinations), the
//! safety stops (empty source, deletion limit), and failure isolation: one destination failing is
//! recorded and counted and never stops the others. It must not decide *what* to change (that is
//! the planner's job) nor know which provider it drives.

use futures::StreamExt;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tracing::Instrument;

use calcard::vcard::VCard;

use crate::backend::{Backend, BackendError, Delta, GroupRef, Known, KnownCopies, User};
use crate::card;
use crate::mutex::lock;
use crate::plan::{
    self, DeleteOp, DestEntry, DestKind, DestSnapshot, JobSpec, LedgerCopy, LedgerRow, LedgerView,
    Op, Plan, Scope, SourceSet, UpdateOp,
};
use crate::store::{Change, Counts, Store, StoreError, TrashEntry};

/// A job as the engine runs it.
#[derive(Debug, Clone)]
pub struct JobRun {
    pub spec: JobSpec,
    pub source: String,
    pub group: String,
    /// Destination user names and dynamic sets (`group:…`, `ou:…`, `domain:…`, expanded at each
    /// run), exclusions of plain names already applied, in job-file order.
    pub destinations: Vec<String>,
    /// Exclusions as written (users and dynamic sets), applied to the expanded sets.
    pub exclude: Vec<String>,
}

/// The prefixes of dynamic destination sets.
const DYNAMIC_PREFIXES: [&str; 3] = ["group:", "ou:", "domain:"];

/// True when a destination entry is a dynamic set rather than a user.
pub fn is_dynamic_set(entry: &str) -> bool {
    DYNAMIC_PREFIXES.iter().any(|p| entry.starts_with(p))
}

/// Checks the form of a dynamic set entry (`group:<address>`, `ou:/<path>`, `domain:<name>`);
/// a plain user name passes.
pub fn check_dynamic_set(entry: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("dynamic destination {entry:?}: {why}"));
    if let Some(g) = entry.strip_prefix("group:") {
        if !g.contains('@') || g.trim() != g {
            return bad("write group:<group address>, e.g. group:sales@example.com");
        }
    } else if let Some(ou) = entry.strip_prefix("ou:") {
        if !ou.starts_with('/') {
            return bad("write ou:<org unit path>, starting with /, e.g. ou:/Sales");
        }
    } else if let Some(d) = entry.strip_prefix("domain:")
        && (!d.contains('.') || d.contains('@') || d.trim() != d)
    {
        return bad("write domain:<domain name>, e.g. domain:example.com");
    }
    Ok(())
}

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Plan only: read everything, write nothing (not even history).
    pub dry_run: bool,
    /// Go past the safety limits.
    pub force: bool,
    /// Destinations processed at once (at least 1).
    pub concurrency: usize,
    /// Only sync these destination users (and clean up only these removed ones); `None` = all.
    pub only: Option<BTreeSet<String>>,
    /// Skip destinations still in the job (used by `remove-dest` to clean up at once).
    pub removals_only: bool,
    /// Name of the default collection (removed users' own contacts go there).
    pub default_group: String,
    /// Set by the daemon on shutdown: the destination in progress finishes, no other starts.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Called as each destination finishes (the CLI's progress bar).
    pub progress: Option<Progress>,
}

/// A callback for each finished destination.
#[derive(Clone)]
pub struct Progress(pub Arc<dyn Fn(&DestReport) + Send + Sync>);

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress")
    }
}

impl RunOptions {
    fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::SeqCst))
    }
}

/// Job-level failures: nothing was written to any destination.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("source user {0:?} not found")]
    SourceUser(String),
    #[error("source group {group:?} not found for user {user:?}")]
    SourceGroup { user: String, group: String },
    #[error("reading source group {group:?} of {user:?}: {source}")]
    SourceRead {
        user: String,
        group: String,
        #[source]
        source: BackendError,
    },
    #[error(
        "job {job:?} has tag {found} in its file but was created with tag {expected}; a job's tag must never be edited"
    )]
    TagChanged {
        job: String,
        expected: String,
        found: String,
    },
    #[error(
        "tag {tag} of job {job:?} already belongs to job {other:?}; every job needs its own tag"
    )]
    TagInUse {
        job: String,
        tag: String,
        other: String,
    },
    #[error("{source}; nothing was changed (reading the dynamic destinations)")]
    Destinations {
        set: String,
        #[source]
        source: BackendError,
    },
    /// Destinations named in the job file that cannot be synced as configured: unknown users,
    /// or users the provider refuses the credentials for. Checked before anything is written.
    #[error(
        "job {job:?} names destinations that cannot be synced: {}; nothing was changed. Fix the job file (or the credentials) and run again",
        problems.join("; ")
    )]
    BadDestinations { job: String, problems: Vec<String> },
    /// The target group's name cannot be made at this provider.
    #[error("job {job:?}: target_group {group:?}: {why}; nothing was changed")]
    BadGroupName {
        job: String,
        group: String,
        why: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl JobError {
    pub fn is_retryable(&self) -> bool {
        match self {
            JobError::SourceRead { source, .. } | JobError::Destinations { source, .. } => {
                source.is_retryable()
            }
            JobError::Store(e) => e.is_retryable(),
            _ => false,
        }
    }

    /// True when the job's configuration is at fault (exit code 2): the job file names what
    /// does not exist or cannot be, or the provider refuses the credentials. Nothing was
    /// changed, and running again as it is will fail the same way.
    pub fn is_config(&self) -> bool {
        match self {
            JobError::SourceUser(_)
            | JobError::SourceGroup { .. }
            | JobError::TagChanged { .. }
            | JobError::TagInUse { .. }
            | JobError::BadDestinations { .. }
            | JobError::BadGroupName { .. } => true,
            JobError::SourceRead { source, .. } | JobError::Destinations { source, .. } => {
                matches!(source, BackendError::Auth(_))
            }
            JobError::Store(_) => false,
        }
    }
}

/// How a job's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Ok,
    /// At least one destination failed; the others were synced.
    Failed,
    /// A safety limit stopped the job.
    Stopped,
    /// The job could not run at all (the provider could not be reached, the state database
    /// failed, …); nothing was changed.
    Error,
    /// The job's configuration is at fault (an unknown user, a missing source group, a refused
    /// password, an edited tag, jobs that feed each other): nothing was changed. Exit code 2.
    Invalid,
    /// Shutdown came during the run: the destination in progress finished, the rest did not run.
    Interrupted,
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Stopped => "stopped",
            Outcome::Error => "error",
            Outcome::Invalid => "invalid",
            Outcome::Interrupted => "interrupted",
        }
    }
}

/// What happened at one destination.
#[derive(Debug, Clone, Serialize)]
pub struct DestReport {
    pub user: String,
    pub removal: bool,
    /// The plan (for dry runs and reports).
    pub plan: Option<Plan>,
    /// Operations applied (equal to the plan's when it succeeded).
    pub applied: Counts,
    pub error: Option<String>,
    /// Contacts the provider refused (each named, with the reason): the destination's other
    /// changes were made, and it is reported as failed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
    /// Set when this destination was not applied because a safety limit stopped the job.
    pub stopped: Option<String>,
}

/// What happened in one job's run.
#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    pub job: String,
    pub tag: String,
    pub run_id: Option<i64>,
    pub dry_run: bool,
    pub outcome: Outcome,
    /// False when the run only cleaned up removed destinations (the source was not read).
    pub source_read: bool,
    pub source_contacts: usize,
    pub source_filtered_out: usize,
    /// Contacts in the source group that came through this job (its copies, or copies of them
    /// made by other jobs): not copied again.
    pub source_came_back: usize,
    pub source_unreadable: Vec<String>,
    pub destinations: Vec<DestReport>,
    pub message: Option<String>,
    pub counts: Counts,
}

impl JobReport {
    /// Exit code contribution: 0 ok, 1 failed, 2 the job's configuration is at fault, 3 stopped
    /// by a safety limit.
    pub fn exit_code(&self) -> u8 {
        match self.outcome {
            Outcome::Ok => 0,
            Outcome::Failed | Outcome::Error | Outcome::Interrupted => 1,
            Outcome::Invalid => 2,
            Outcome::Stopped => 3,
        }
    }

    /// The report of a job refused before it ran (its configuration is at fault): nothing was
    /// read or written. Recorded in the history like any run, unless a dry run.
    pub fn refused(job: &JobRun, dry_run: bool, message: String) -> JobReport {
        JobReport {
            job: job.spec.name.clone(),
            tag: job.spec.tag.clone(),
            run_id: None,
            dry_run,
            outcome: Outcome::Invalid,
            source_read: false,
            source_contacts: 0,
            source_filtered_out: 0,
            source_came_back: 0,
            source_unreadable: vec![],
            destinations: vec![],
            message: Some(message),
            counts: Counts::default(),
        }
    }
}

/// Runs one job. Never panics on provider errors: they end up in the report.
///
/// Destinations run as tasks, `opts.concurrency` at a time, so their reading, planning and
/// writing use every core the runtime has; this is why the backend and the state come in `Arc`s.
pub async fn run_job<B: Backend + 'static>(
    backend: &Arc<B>,
    store: &Arc<Mutex<Store>>,
    job: &JobRun,
    opts: &RunOptions,
) -> JobReport {
    let mut report = JobReport {
        job: job.spec.name.clone(),
        tag: job.spec.tag.clone(),
        run_id: None,
        dry_run: opts.dry_run,
        outcome: Outcome::Ok,
        source_read: false,
        source_contacts: 0,
        source_filtered_out: 0,
        source_came_back: 0,
        source_unreadable: vec![],
        destinations: vec![],
        message: None,
        counts: Counts::default(),
    };
    if !opts.dry_run {
        match lock(store).start_run(&job.spec.name, false) {
            Ok(id) => report.run_id = Some(id),
            Err(e) => {
                report.outcome = Outcome::Error;
                report.message = Some(e.to_string());
                return report;
            }
        }
    }
    let calls_before = backend.call_counts();
    let span = tracing::info_span!("run", job = %job.spec.name);
    if let Err(e) = run_inner(backend, store, job, opts, &mut report)
        .instrument(span)
        .await
    {
        report.outcome = if e.is_config() {
            Outcome::Invalid
        } else {
            Outcome::Error
        };
        report.message = Some(e.to_string());
    }
    for d in &report.destinations {
        let a = d.applied;
        report.counts.created += a.created;
        report.counts.updated += a.updated;
        report.counts.deleted += a.deleted;
        report.counts.moved += a.moved;
    }
    report.counts.destinations = report.destinations.len() as i64;
    report.counts.failed = report
        .destinations
        .iter()
        .filter(|d| d.error.is_some())
        .count() as i64;
    if report.outcome == Outcome::Ok && report.counts.failed > 0 {
        report.outcome = Outcome::Failed;
    }
    if let (Some(run_id), Some(before), Some(after)) =
        (report.run_id, calls_before, backend.call_counts())
    {
        let calls = after.since(&before);
        let nonzero: Vec<(&str, u64)> = calls
            .by_method()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect();
        if let Err(e) = lock(store).record_calls(run_id, &nonzero) {
            tracing::warn!(job = %job.spec.name, "could not record provider calls: {e}");
        }
    }
    if let Some(run_id) = report.run_id
        && let Err(e) = lock(store).finish_run(
            run_id,
            report.outcome.as_str(),
            report.counts,
            report.message.as_deref(),
        )
    {
        tracing::error!(job = %job.spec.name, "could not record the run: {e}");
    }
    report
}

/// Records a job refused before it ran (its configuration is at fault, see
/// `JobReport::refused`) in the history, unless a dry run, and returns its report.
pub fn refuse_job(store: &Mutex<Store>, job: &JobRun, dry_run: bool, message: String) -> JobReport {
    let mut report = JobReport::refused(job, dry_run, message);
    if !dry_run {
        let s = lock(store);
        let recorded = s.start_run(&job.spec.name, false).and_then(|id| {
            report.run_id = Some(id);
            s.finish_run(
                id,
                report.outcome.as_str(),
                report.counts,
                report.message.as_deref(),
            )
        });
        if let Err(e) = recorded {
            tracing::error!(job = %job.spec.name, "could not record the run: {e}");
        }
    }
    report
}

async fn run_inner<B: Backend + 'static>(
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

/// Destination tasks started ahead of their place at the provider, per place: each gets ready
/// (its token, its change token) while earlier ones call.
const STARTED_AHEAD: usize = 3;

/// A task stopped when its handle is dropped.
struct AbortOnDrop<T = ()>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What every destination task of a run shares.
struct DestShared<B> {
    backend: Arc<B>,
    store: Arc<Mutex<Store>>,
    /// A second connection for the reads of state the run has not written yet (see
    /// `Store::reader`), so they never wait for another destination's writes; `store` itself
    /// when there is none.
    reader: Arc<Mutex<Store>>,
    job: Arc<JobRun>,
    opts: RunOptions,
    run_id: i64,
}

/// What the active destinations of a run share, read-only but for `stopped`.
struct ActiveInputs {
    source: SourceSet,
    /// The last run's reading of source contacts that changed since (see `previous_source`).
    previous: HashMap<String, PreviousSource>,
    /// Which source contacts changed since the last run (see `SourceDiff`).
    since: Option<SourceDiff>,
    /// Digest of everything this run would copy (see `SourceSet::fingerprint`).
    fingerprint: String,
    /// Set by the first destination that hits a safety limit: no other starts.
    stopped: AtomicBool,
}

/// Runs `process_destination` for each (user, target group), each as its own task, at most
/// `concurrency` of them at the provider at once (see `Slot`); active destinations with
/// `inputs`, removed ones without. Reports
/// come back in the order of `dests`, whatever order they finished in; a task that panicked is
/// reported as a failed destination, and the others go on.
async fn run_destinations<B: Backend + 'static>(
    shared: &DestShared<B>,
    concurrency: usize,
    dests: impl Iterator<Item = (User, String)>,
    inputs: Option<&Arc<ActiveInputs>>,
) -> Vec<DestReport> {
    let removal = inputs.is_none();
    let mut tasks = tokio::task::JoinSet::new();
    let mut running: HashMap<tokio::task::Id, (usize, String)> = HashMap::new();
    let mut reports: Vec<Option<DestReport>> = vec![];
    let mut dests = dests.enumerate();
    // `concurrency` destinations at the provider, and as many recording their state after their
    // last call (see `Slot`). Tasks are started ahead of their slot: each gets ready
    // (`Backend::prepare_access`, its state read) before it waits for one, so a slot
    // handed on goes to a destination ready to make its first call.
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let finishing = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let entry = Arc::new(tokio::sync::Mutex::new(()));
    loop {
        while tasks.len() < STARTED_AHEAD * concurrency
            && let Some((i, (user, target_group))) = dests.next()
        {
            let slot = Slot {
                provider: Mutex::new(None),
                entry: entry.clone(),
                slots: slots.clone(),
                finishing: finishing.clone(),
            };
            reports.push(None);
            let name = user.name.clone();
            let span = if removal {
                tracing::info_span!("dest", dest = %user.name, removal = true)
            } else {
                tracing::info_span!("dest", dest = %user.name)
            };
            let backend = shared.backend.clone();
            let store = shared.store.clone();
            let reader = shared.reader.clone();
            let job = shared.job.clone();
            let opts = shared.opts.clone();
            let run_id = shared.run_id;
            let inputs = inputs.cloned();
            let task = async move {
                let mode = match &inputs {
                    Some(a) => Mode::Active {
                        source: &a.source,
                        previous: &a.previous,
                        since: a.since.as_ref(),
                        stopped: &a.stopped,
                        fingerprint: &a.fingerprint,
                    },
                    None => Mode::Removal,
                };
                process_destination(
                    &*backend,
                    (&store, &reader),
                    &job,
                    &opts,
                    &user,
                    &target_group,
                    run_id,
                    mode,
                    &slot,
                )
                .await
            };
            let handle = tasks.spawn(task.instrument(span));
            running.insert(handle.id(), (i, name));
        }
        let Some(done) = tasks.join_next_with_id().await else {
            break;
        };
        let (i, report) = match done {
            Ok((id, report)) => (running.remove(&id).map_or(usize::MAX, |r| r.0), report),
            Err(e) => {
                let (i, user) = running.remove(&e.id()).unwrap_or_default();
                let why = if e.is_panic() {
                    "internal error: the destination's task panicked (see the log)"
                } else {
                    "internal error: the destination's task was cancelled"
                };
                (i, failed_dest(&user, removal, why.into()))
            }
        };
        report_progress(&shared.opts, &report);
        if let Some(slot) = reports.get_mut(i) {
            *slot = Some(report);
        }
    }
    reports.into_iter().flatten().collect()
}

/// The job's destination users: plain names as written, then the members of its dynamic sets
/// (read now), without exclusions (users or sets) and without repeats; and each dynamic set with
/// its number of members. A set that cannot be read stops the run: it is never taken as empty.
pub async fn destination_names<B: Backend>(
    backend: &B,
    job: &JobRun,
) -> Result<(Vec<String>, Vec<(String, usize)>), JobError> {
    let mut excluded: BTreeSet<String> = BTreeSet::new();
    for e in &job.exclude {
        if is_dynamic_set(e) {
            let members = backend
                .expand_set(e)
                .await
                .map_err(|source| JobError::Destinations {
                    set: e.clone(),
                    source,
                })?;
            excluded.extend(members.into_iter().map(|m| m.to_lowercase()));
        } else {
            excluded.insert(e.to_lowercase());
        }
    }
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut names = vec![];
    let mut push = |n: String, names: &mut Vec<String>| {
        let key = n.to_lowercase();
        if key != job.source.to_lowercase() && !excluded.contains(&key) && seen.insert(key) {
            names.push(n);
        }
    };
    for d in job.destinations.iter().filter(|d| !is_dynamic_set(d)) {
        push(d.clone(), &mut names);
    }
    let mut sets = vec![];
    for d in job.destinations.iter().filter(|d| is_dynamic_set(d)) {
        let mut members = backend
            .expand_set(d)
            .await
            .map_err(|source| JobError::Destinations {
                set: d.clone(),
                source,
            })?;
        sets.push((d.clone(), members.len()));
        members.sort();
        for m in members {
            push(m, &mut names);
        }
    }
    Ok((names, sets))
}

/// Logs a finished destination and tells the progress callback.
fn report_progress(opts: &RunOptions, r: &DestReport) {
    let a = r.applied;
    match (&r.error, &r.stopped) {
        (Some(e), _) => tracing::warn!(dest = %r.user, "destination failed: {e}"),
        (None, Some(s)) => tracing::warn!(dest = %r.user, "destination not synced: {s}"),
        (None, None) if !opts.dry_run => {
            tracing::info!(dest = %r.user, created = a.created, updated = a.updated, deleted = a.deleted, moved = a.moved, "destination synced")
        }
        _ => {}
    }
    if let Some(p) = &opts.progress {
        (p.0)(r);
    }
}

fn failed_dest(user: &str, removal: bool, error: String) -> DestReport {
    DestReport {
        user: user.to_string(),
        removal,
        plan: None,
        applied: Counts::default(),
        error: Some(error),
        refused: vec![],
        stopped: None,
    }
}

/// Reads the destination group and summarises it for the planner, with the provider's change
/// token when it has them (see `Backend::change_tokens`). A copy the ledger says was written
/// from the source's current content, and that still has the etag of that write, is summarised
/// from the ledger without being read whole (see `Backend::scan_group_known`).
#[allow(clippy::too_many_arguments)]
async fn snapshot<B: Backend>(
    backend: &B,
    spec: &JobSpec,
    user: &User,
    group: Option<GroupRef>,
    group_name: &str,
    default_group: &str,
    source: Option<&SourceSet>,
    ledger: Option<&LedgerView>,
    expected: usize,
) -> Result<(DestSnapshot, Option<String>), BackendError> {
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
    let mut sink = |c: crate::backend::Contact| {
        taken.extend(plan::taken_uid(spec, &c.card));
        entries.push(DestEntry::classify(spec, c.id, c.etag, &c.card, source))
    };
    let mut known_sink = |id: String, etag: String| hits.push((id, etag));
    let token = if backend.change_tokens() {
        backend
            .scan_group_known(user, group.as_ref(), &known, &mut sink, &mut known_sink)
            .await?
    } else {
        // A provider without tokens is read only when the group exists (no call otherwise).
        if let Some(g) = &group {
            backend.scan_group(user, g, &mut sink).await?;
        }
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
                name,
                fields: vec![],
            },
        });
    }
    Ok((
        snapshot_of(
            user,
            group,
            group_name == default_group,
            (entries, taken),
            None,
        ),
        token,
    ))
}

/// A destination's snapshot as read in this run (see `DestSnapshot`).
fn snapshot_of(
    user: &User,
    group: Option<GroupRef>,
    group_is_default: bool,
    (entries, taken_uids): (Vec<DestEntry>, Vec<String>),
    scope: Option<Scope>,
) -> DestSnapshot {
    DestSnapshot {
        user: user.clone(),
        group,
        group_is_default,
        entries,
        scope,
        taken_uids,
    }
}

/// Reads a destination leaving the job. Each contact is read only for its tags, unless `whole`
/// (a dry run, whose plan names what it would delete): a real removal reads what it deletes
/// whole for the trash, and names it from that (see `apply_ops`).
async fn removal_snapshot<B: Backend>(
    backend: &B,
    spec: &JobSpec,
    user: &User,
    group: Option<GroupRef>,
    (group_name, default_group): (&str, &str),
    expected: usize,
    whole: bool,
) -> Result<(DestSnapshot, Option<String>), BackendError> {
    let mut entries = Vec::with_capacity(expected);
    if let Some(g) = &group {
        if whole {
            backend
                .scan_group(user, g, &mut |c| {
                    entries.push(DestEntry::classify(spec, c.id, c.etag, &c.card, None))
                })
                .await?;
        } else {
            backend
                .scan_group_tags(user, g, &mut |c| {
                    entries.push(DestEntry::classify_tags(spec, c.id, c.etag, &c.card))
                })
                .await?;
        }
    }
    Ok((
        snapshot_of(
            user,
            group,
            group_name == default_group,
            (entries, vec![]),
            None,
        ),
        None,
    ))
}

/// What a change token's delta told of one destination, kept for the first attempt's snapshot
/// (see `snapshot_from_changes`).
struct ReadDelta {
    /// The token the read gave back, valid from the moment it began.
    token: String,
    /// The group the token was taken for.
    group_id: String,
    /// Contacts in the group that changed since (the engine's own writes left out), summarised.
    changed: Vec<DestEntry>,
    /// Remembered copies deleted since, or no longer in the group.
    gone: HashSet<String>,
    /// UIDs of the changed contacts a fresh copy must not get (see `plan::taken_uid`).
    taken_uids: Vec<String>,
    /// The ledger, when the read needed it: whole, or the part `scope` names.
    ledger: Option<LedgerView>,
    /// Set when only part of the destination needs a plan (see `plan::Scope`).
    scope: Option<Scope>,
}

/// A source contact as the job's last run read it (see `Store::source_contacts`).
#[derive(Debug)]
struct PreviousSource {
    digest: String,
    name: String,
    /// Digest of each managed property (see `card::field_digests`).
    fields: Vec<(Arc<str>, u64)>,
}

/// Which source contacts changed since the last run that saved what it read of the source
/// (see `Store::save_source_contacts`).
#[derive(Debug)]
struct SourceDiff {
    /// The fingerprint of the source as that run read it (see `SourceSet::fingerprint`).
    fingerprint: String,
    /// Source ids whose contact is not the same now: edited, gone, new, or unreadable. Sorted.
    ids: BTreeSet<String>,
}

/// The source contacts the job's last run read that are not the same in `source` (edited, or
/// gone from it), and, when that run saved the whole source it read, which source ids changed
/// since. Rows whose field digests cannot be read are left out of the first: their copies are
/// then read again.
fn previous_source(
    store: &Store,
    job: &str,
    source: &SourceSet,
) -> (HashMap<String, PreviousSource>, Option<SourceDiff>) {
    // Source ids the last run read that are still in the source, to find the new ones.
    let mut still: HashSet<&str> = HashSet::new();
    let rows = store.source_contacts(job, |id, digest| match source.items.get_key_value(id) {
        Some((k, i)) => {
            still.insert(k.as_str());
            i.digest != digest
        }
        None => true,
    });
    let fingerprint = store.source_fingerprint(job);
    let (rows, fingerprint) = match (rows, fingerprint) {
        (Ok(r), Ok(f)) => (r, f),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(
                job,
                "could not read what the last run saw of the source: {e}"
            );
            return (HashMap::new(), None);
        }
    };
    let since = fingerprint.map(|fingerprint| SourceDiff {
        fingerprint,
        ids: rows
            .iter()
            .map(|(id, ..)| id.clone())
            .chain(
                source
                    .items
                    .keys()
                    .filter(|k| !still.contains(k.as_str()))
                    .cloned(),
            )
            .chain(source.unreadable.keys().cloned())
            .collect(),
    });
    let previous = rows
        .into_iter()
        .filter_map(|(id, digest, name, fields)| {
            let fields = card::field_digests_from_text(&fields)?;
            Some((
                id,
                PreviousSource {
                    digest,
                    name,
                    fields,
                },
            ))
        })
        .collect();
    (previous, since)
}

/// A destination's ledger with a lookup by contact id (a delta names contacts, not sources).
struct LedgerByContact {
    view: LedgerView,
    order: Vec<u32>,
}

impl LedgerByContact {
    fn new(view: LedgerView) -> Self {
        let order = view.contact_order();
        LedgerByContact { view, order }
    }

    fn get(&self, contact_id: &str) -> Option<&LedgerRow> {
        self.view.find_contact(&self.order, contact_id)
    }
}

/// How many contacts of a change token's delta are looked up in the ledger one at a time (an
/// index lookup each) before the ledger's size is counted.
const POINT_LOOKUPS: usize = 64;

/// What one index lookup of a copy costs, in rows of a whole ledger load (measured at 5,000
/// copies on 5 million: about 7 µs against 0.8 µs a row). Past `POINT_LOOKUPS`, a delta is
/// looked up one contact at a time while it names fewer than the ledger's size over this.
const LOOKUP_COST: usize = 8;

/// What the ledger says of the contacts a change token's delta names, as the delta is read:
/// a few are looked up one at a time, and for many the whole ledger is loaded (see
/// `LedgerProbe`).
enum Probe {
    /// The rows looked up so far, by contact id (`None`: no copy the ledger knows).
    Points(HashMap<String, Option<LedgerRow>>),
    /// The whole ledger (`None`: the state database failed).
    Whole(Option<LedgerByContact>),
}

/// The engine's side of `Backend::read_changes` for one destination: the `Probe`, the ledger's
/// size once counted, and how many lookups one at a time the delta's pages allow.
struct LedgerProbe<'a> {
    store: &'a Mutex<Store>,
    job: &'a str,
    user_id: &'a str,
    state: Mutex<ProbeState>,
}

struct ProbeState {
    probe: Probe,
    /// How many copies the ledger holds, once counted (or loaded).
    total: Option<usize>,
    /// How many contacts may be looked up one at a time before the ledger is loaded whole.
    budget: usize,
}

impl<'a> LedgerProbe<'a> {
    fn new(store: &'a Mutex<Store>, job: &'a str, user_id: &'a str) -> Self {
        LedgerProbe {
            store,
            job,
            user_id,
            state: Mutex::new(ProbeState {
                probe: Probe::Points(HashMap::new()),
                total: None,
                budget: POINT_LOOKUPS,
            }),
        }
    }

    fn into_inner(self) -> ProbeState {
        self.state.into_inner().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads the whole ledger in place of the lookups.
    fn load_whole(&self, st: &mut ProbeState) {
        let whole = lock(self.store)
            .ledger(self.job, self.user_id)
            .ok()
            .map(LedgerByContact::new);
        if let Some(l) = &whole {
            st.total = Some(l.view.len());
        }
        st.probe = Probe::Whole(whole);
    }
}

impl KnownCopies for LedgerProbe<'_> {
    /// Past `POINT_LOOKUPS` contacts, counts the ledger once, and either allows the page's
    /// lookups one at a time (when they cost less than a whole load) or loads it whole.
    fn page(&self, n: usize) {
        let mut st = crate::mutex::lock(&self.state);
        let Probe::Points(found) = &st.probe else {
            return;
        };
        let want = found.len() + n;
        if want <= st.budget {
            return;
        }
        let total = match st.total {
            Some(t) => t,
            None => match lock(self.store).copy_count(self.job, self.user_id) {
                Ok(t) => {
                    st.total = Some(t);
                    t
                }
                Err(_) => {
                    st.probe = Probe::Whole(None);
                    return;
                }
            },
        };
        if want <= (total / LOOKUP_COST).max(POINT_LOOKUPS) {
            st.budget = want;
        } else {
            self.load_whole(&mut st);
        }
    }

    /// Whether the contact `id` with `etag` is a copy as this job wrote it, changed since, or
    /// not a copy the ledger knows.
    fn known(&self, id: &str, etag: &str) -> Known {
        let mut guard = crate::mutex::lock(&self.state);
        let st = &mut *guard;
        if let Probe::Points(found) = &mut st.probe
            && !found.contains_key(id)
        {
            if found.len() < st.budget {
                match lock(self.store).copy_by_contact(self.job, self.user_id, id) {
                    Ok(row) => {
                        found.insert(id.to_string(), row);
                    }
                    Err(_) => st.probe = Probe::Whole(None),
                }
            } else {
                self.load_whole(st);
            }
        }
        let row = match &st.probe {
            Probe::Points(found) => found.get(id).and_then(Option::as_ref),
            Probe::Whole(Some(l)) => l.get(id),
            // The state database failed: everything counts as changed (and the run below
            // reports the failure).
            Probe::Whole(None) => return Known::Changed,
        };
        match row {
            None => Known::No,
            Some(row) if !etag.is_empty() && row.etag() == etag => Known::AsWritten,
            Some(_) => Known::Changed,
        }
    }
}

/// The part of a destination a change token's delta leaves to plan, when the destination
/// converged to the source as the last run read it (`since`): the source contacts that changed
/// since, the copies the delta names (`found`, by contact id) and the source contacts the
/// changed contacts (`changed`) are copies of. `total`: the ledger's size, when the probe
/// counted it. `None` when that is not known, or not small
/// enough to be worth looking up one at a time; then the whole ledger is loaded.
fn delta_scope(
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

/// Summarises a destination from its ledger and what changed since its change token, without
/// reading the group whole. The ledger is what the group held when the destination last
/// converged, as this job wrote or read it; the delta names every contact that changed since.
/// A remembered copy the delta does not name is therefore unchanged, and is summarised from
/// the ledger: as in sync if it was written from the source as it is now, or field by field
/// from `previous` (what the last run read of its source) if it was written from that. The
/// others — written from a source the last run did not see, without an etag in the ledger, or
/// carrying a property the backend must read before an update (`read_before_update`) — are
/// read by id. `None` when that would take more calls than reading the group whole. The user's
/// own contacts in the group that did not change are not read, so `untouched` counts only
/// those that did.
#[allow(clippy::too_many_arguments)]
async fn snapshot_from_changes<B: Backend>(
    backend: &B,
    spec: &JobSpec,
    user: &User,
    group: &GroupRef,
    group_name: &str,
    default_group: &str,
    (source, previous): (&SourceSet, &HashMap<String, PreviousSource>),
    ledger: &LedgerView,
    delta: ReadDelta,
) -> Result<Option<(DestSnapshot, Option<String>)>, BackendError> {
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
        let sid = l.source_id();
        let item = source.items.get(sid);
        // Written from the source as it is now (or held: its source cannot be read), or from
        // the source as the last run read it: known without reading it.
        let (name, fields) = match (item, previous.get(sid)) {
            _ if l.etag().is_empty() => {
                fetch.push(id.to_string());
                continue;
            }
            (Some(i), _) if i.digest == l.digest() => (i.name.clone(), vec![]),
            _ if source.unreadable.contains_key(sid) => (String::new(), vec![]),
            (item, Some(p))
                if p.digest == l.digest()
                    && !p
                        .fields
                        .iter()
                        .chain(item.iter().flat_map(|i| i.fields(&spec.fields)))
                        .any(|(name, _)| backend.read_before_update(name)) =>
            {
                (
                    item.map_or_else(|| p.name.clone(), |i| i.name.clone()),
                    p.fields.clone(),
                )
            }
            _ => {
                fetch.push(id.to_string());
                continue;
            }
        };
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
    let fetch_calls = fetch.len().div_ceil(backend.batch_size().max(1));
    let copies = ledger.len() + scope.as_ref().map_or(0, |s| s.outside);
    let read_calls = copies.div_ceil(backend.page_size().max(1)).max(1);
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
        snapshot_of(
            user,
            Some(group.clone()),
            group_name == default_group,
            (entries, taken_uids),
            scope,
        ),
        Some(token),
    )))
}

fn lcm(a: usize, b: usize) -> usize {
    let gcd = |mut a: usize, mut b: usize| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    a / gcd(a, b) * b
}

/// The group version recorded for a destination that converged under a change token.
const TOKEN_VERSION: &str = "change-token";

/// True when a destination's last run converged to the source with this fingerprint under a
/// change token.
fn converged_under_token(
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
fn destination_mark(source_fingerprint: &str, group_version: &str) -> String {
    card::hex_digest(format!("{source_fingerprint}|{group_version}").as_bytes())
}

/// Which kind of work a destination gets in this run.
enum Mode<'a> {
    /// In the job: bring its copies in line with the source.
    Active {
        source: &'a SourceSet,
        /// The last run's reading of source contacts that changed since (see `previous_source`).
        previous: &'a HashMap<String, PreviousSource>,
        /// Which source contacts changed since the last run (see `SourceDiff`).
        since: Option<&'a SourceDiff>,
        stopped: &'a AtomicBool,
        /// Digest of everything this run would copy (see `SourceSet::fingerprint`).
        fingerprint: &'a str,
    },
    /// Dropped from the job: remove the copies and the group, keep the user's own contacts.
    Removal,
}

/// Snapshots one destination, plans, checks the limits and applies; a conflict (a contact changed
/// between read and write) is settled by reading and planning again, up to three times.
#[allow(clippy::too_many_arguments)]
async fn process_destination<B: Backend>(
    backend: &B,
    (store, reader): (&Arc<Mutex<Store>>, &Mutex<Store>),
    job: &JobRun,
    opts: &RunOptions,
    user: &User,
    target_group: &str,
    run_id: i64,
    mode: Mode<'_>,
    slot: &Slot,
) -> DestReport {
    let spec = &job.spec;
    let removal = matches!(mode, Mode::Removal);
    let mut report = DestReport {
        user: user.name.clone(),
        removal,
        plan: None,
        applied: Counts::default(),
        error: None,
        refused: vec![],
        stopped: None,
    };
    if opts.cancelled() {
        report.stopped = Some("not run: groupsync is shutting down".into());
        return report;
    }
    // Got ready before the slot is taken: the provider's preparation (Google: the user's
    // token) and the change token kept in the state.
    backend.prepare_access(user).await;
    // With change tokens: read only what changed since this destination last converged. When
    // nothing that concerns the group changed and the source is the same, that one call is the
    // whole run; otherwise what it read feeds the first attempt's snapshot.
    let saved_token = if backend.change_tokens() && !opts.force && !removal {
        lock(reader)
            .change_token(&spec.name, &user.id)
            .ok()
            .flatten()
    } else {
        None
    };
    slot.enter().await;
    if opts.cancelled() {
        report.stopped = Some("not run: groupsync is shutting down".into());
        return report;
    }
    match &mode {
        Mode::Active { stopped, .. } if stopped.load(Ordering::SeqCst) => {
            report.stopped = Some("not run: the job was stopped by a safety limit".into());
            return report;
        }
        Mode::Active { .. } => {}
        // A user deleted from the provider has nothing left to clean up.
        Mode::Removal => match backend.resolve_user(&user.name).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                if !opts.dry_run {
                    let _ = lock(store).forget_destination(&spec.name, &user.id);
                }
                return report;
            }
            // Suspended, archived: nothing can be done for now, and nothing is lost; the
            // cleanup waits in the state until the user can be reached again.
            Err(BackendError::Skipped(why)) => {
                report.stopped = Some(format!(
                    "skipped: {why}; its copies are removed once it can be reached"
                ));
                return report;
            }
            Err(e) => {
                report.error = Some(format!("looking up {}: {e}", user.name));
                return report;
            }
        },
    }
    let mut delta: Option<ReadDelta> = None;
    // The group, when it was read alongside the changes.
    let mut group_read: Option<Result<Option<GroupRef>, BackendError>> = None;
    if let Mode::Active {
        fingerprint,
        source,
        since,
        ..
    } = &mode
        && let Some((token, group_id)) = saved_token
    {
        // Looked up at the first change only: a destination where nothing changed never needs
        // the ledger, and one where little changed needs a few rows of it.
        let probe = LedgerProbe::new(reader, &spec.name, &user.id);
        let mut changed = vec![];
        let mut taken_uids = vec![];
        let mut gone = HashSet::new();
        // The first change the delta names means the group is read next: it is asked for then,
        // while the rest of the delta is read (a read alongside a read).
        let asked = AtomicBool::new(false);
        let ask = tokio::sync::Notify::new();
        let wanted = || {
            if !asked.swap(true, Ordering::Relaxed) {
                ask.notify_one();
            }
        };
        let probing = Probing {
            probe: &probe,
            slot,
            group_asked: &asked,
        };
        let read = {
            let mut each = |c: crate::backend::Contact| {
                wanted();
                taken_uids.extend(plan::taken_uid(spec, &c.card));
                changed.push(DestEntry::classify(
                    spec,
                    c.id,
                    c.etag,
                    &c.card,
                    Some(*source),
                ))
            };
            let mut each_gone = |id| {
                wanted();
                gone.insert(id);
            };
            let mut reading = std::pin::pin!(backend.read_changes(
                user,
                &token,
                &group_id,
                &probing,
                &mut each,
                &mut each_gone,
            ));
            // A call of its own: with a place at the provider, taken again if the read stepped
            // aside before its first change was found.
            let mut lookup = std::pin::pin!(async {
                ask.notified().await;
                slot.take().await;
                backend.find_group(user, target_group).await
            });
            let read = loop {
                tokio::select! {
                    biased;
                    read = &mut reading => break read,
                    g = &mut lookup, if group_read.is_none() => group_read = Some(g),
                }
            };
            if group_read.is_none() && asked.load(Ordering::Relaxed) {
                group_read = Some(lookup.await);
            }
            read
        };
        let ProbeState { probe, total, .. } = probe.into_inner();
        match read {
            Ok(Delta::Read { token: next }) => {
                if changed.is_empty()
                    && gone.is_empty()
                    && converged_under_token(reader, spec, user, fingerprint)
                {
                    let copies = total.unwrap_or_else(|| {
                        lock(reader).copy_count(&spec.name, &user.id).unwrap_or(0)
                    });
                    report.plan = Some(Plan::up_to_date(user, copies));
                    if !opts.dry_run {
                        let mut finish =
                            Finish::new(&spec.name, user, run_id, FinishOutcome::Record);
                        finish.token = Some(Some((next, group_id)));
                        finish.run(store, slot, &mut report).await;
                    }
                    return report;
                }
                // The ledger as `known` loaded it, or the part the plan needs (`Whole(None)`:
                // the state database failed, and the whole group is read below, which reports
                // it).
                let part = match (&probe, since) {
                    (Probe::Points(found), Some(since)) => {
                        delta_scope(reader, spec, user, since, &changed, found, total)
                    }
                    _ => None,
                };
                let ledger = match (probe, part) {
                    (_, Some((part, scope))) => Some((Some(part), Some(scope))),
                    (Probe::Whole(Some(l)), None) => Some((Some(l.view), None)),
                    // Loaded by the attempt below.
                    (Probe::Points(_), None) => Some((None, None)),
                    (Probe::Whole(None), None) => None,
                };
                if let Some((ledger, scope)) = ledger {
                    delta = Some(ReadDelta {
                        token: next,
                        group_id,
                        changed,
                        gone,
                        taken_uids,
                        ledger,
                        scope,
                    });
                }
            }
            Ok(Delta::Expired) => {
                tracing::info!(job = %spec.name, dest = %user.name, "change token expired; reading the whole group");
            }
            Err(e) => {
                tracing::info!(job = %spec.name, dest = %user.name, "could not read changes ({e}); reading the whole group");
            }
        }
    }
    // Back at the provider, if the change-token read stepped aside.
    slot.take().await;
    for attempt in 0..3 {
        // State this destination has not written to in this run: at the first attempt, read
        // without waiting for the writer.
        let state: &Mutex<Store> = if attempt == 0 { reader } else { store };
        let read = match group_read.take() {
            Some(Ok(g)) => Ok(g),
            _ => backend.find_group(user, target_group).await,
        };
        let group = match read {
            Ok(g) => g,
            Err(e) => {
                report.error = Some(format!("reading {}: {e}", user.name));
                return report;
            }
        };
        // Nothing changed at the source nor in the group since this destination last
        // converged: no need to read the group (one request instead of a full read).
        if let (Mode::Active { fingerprint, .. }, Some(version)) =
            (&mode, group.as_ref().and_then(|g| g.version.as_deref()))
            && attempt == 0
            && !opts.force
        {
            let mark = destination_mark(fingerprint, version);
            let known = lock(state).fingerprint(&spec.name, &user.id).ok().flatten();
            if known.as_deref() == Some(mark.as_str()) {
                let copies = lock(state).copy_count(&spec.name, &user.id).unwrap_or(0);
                report.plan = Some(Plan::up_to_date(user, copies));
                if !opts.dry_run {
                    Finish::new(&spec.name, user, run_id, FinishOutcome::Record)
                        .run(store, slot, &mut report)
                        .await;
                }
                return report;
            }
        }
        let source_set = match &mode {
            Mode::Active { source, .. } => Some(*source),
            Mode::Removal => None,
        };
        // The changes read above stand for this attempt's read while the group is the one
        // they were read for.
        let mut delta = delta
            .take()
            .filter(|d| group.as_ref().is_some_and(|g| g.id == d.group_id));
        // The ledger the changes were read against is this attempt's ledger: moved, not copied
        // (thousands of rows per destination). Only part of it when the changes leave only part
        // of the destination to plan.
        let partial = delta.as_ref().is_some_and(|d| d.scope.is_some());
        let mut ledger = match (&mode, delta.as_mut().and_then(|d| d.ledger.take())) {
            (Mode::Active { .. }, Some(l)) => Some(l),
            (Mode::Active { .. }, None) => match lock(state).ledger(&spec.name, &user.id) {
                Ok(l) => Some(l),
                Err(e) => {
                    report.error = Some(e.to_string());
                    return report;
                }
            },
            (Mode::Removal, _) => None,
        };
        let from_changes = match (delta, &mode, &group, &ledger) {
            (
                Some(d),
                Mode::Active {
                    source, previous, ..
                },
                Some(g),
                Some(ledger),
            ) => {
                let read = snapshot_from_changes(
                    backend,
                    spec,
                    user,
                    g,
                    target_group,
                    &opts.default_group,
                    (source, previous),
                    ledger,
                    d,
                )
                .await;
                match read {
                    Ok(s) => s,
                    Err(e) => {
                        report.error = Some(format!("reading {}: {e}", user.name));
                        return report;
                    }
                }
            }
            _ => None,
        };
        let read = match from_changes {
            Some(s) => Ok(s),
            None if removal => {
                let copies = lock(state).copy_count(&spec.name, &user.id).unwrap_or(0);
                removal_snapshot(
                    backend,
                    spec,
                    user,
                    group,
                    (target_group, &opts.default_group),
                    copies,
                    opts.dry_run,
                )
                .await
            }
            None => {
                // The group is read whole: so is the ledger.
                if partial {
                    match lock(state).ledger(&spec.name, &user.id) {
                        Ok(l) => ledger = Some(l),
                        Err(e) => {
                            report.error = Some(e.to_string());
                            return report;
                        }
                    }
                }
                snapshot(
                    backend,
                    spec,
                    user,
                    group,
                    target_group,
                    &opts.default_group,
                    source_set,
                    ledger.as_ref(),
                    // How many contacts to expect: the copies remembered.
                    ledger.as_ref().map_or(0, LedgerView::len),
                )
                .await
            }
        };
        let (mut snap, token) = match read {
            Ok(s) => s,
            Err(e) => {
                report.error = Some(format!("reading {}: {e}", user.name));
                return report;
            }
        };
        let (plan, source) = match &mode {
            Mode::Active {
                source, stopped, ..
            } => {
                let ledger = ledger.unwrap_or_default();
                let plan = plan::plan_destination(source, &snap, spec, &ledger);
                if let Some(why) = &plan.limit_exceeded
                    && !opts.force
                {
                    stopped.store(true, Ordering::SeqCst);
                    report.stopped = Some(format!(
                        "deletion limit: {why}; nothing was changed at this destination. Run with --force if this is intended"
                    ));
                    report.plan = Some(plan);
                    return report;
                }
                (plan, Some(*source))
            }
            Mode::Removal => (plan::plan_removal(&mut snap), None),
        };
        // The plan holds what the apply needs; the summary of every contact can go now.
        let DestSnapshot {
            group: snap_group,
            entries,
            ..
        } = snap;
        drop(entries);
        let mut plan = plan;
        if opts.dry_run {
            report.plan = Some(plan);
            return report;
        }
        if !removal
            && let Err(e) =
                lock(store).touch_destination(&spec.name, &user.id, &user.name, &spec.target_group)
        {
            report.error = Some(e.to_string());
            return report;
        }
        report.refused.clear();
        let (result, mut finish) = apply(
            backend,
            store,
            spec,
            run_id,
            user,
            snap_group.clone(),
            &mut plan,
            source,
            (&mut report.applied, &mut report.refused),
        )
        .await;
        let wrote = !plan.ops.is_empty();
        report.plan = Some(plan.into_summary());
        if let Mode::Active { fingerprint, .. } = &mode {
            // What this destination converged to, remembered if everything is recorded (see
            // `Finish`). With change tokens, the token taken before the writes is kept: the
            // writes themselves are recognised later by the etags the ledger now holds.
            let tokened = match (&result, &token) {
                (Ok(Some(g)), Some(t)) => Some((t.clone(), g.id.clone())),
                _ => None,
            };
            let mark = match (&result, wrote) {
                _ if tokened.is_some() => Some(TOKEN_VERSION.to_string()),
                (Ok(_), false) => snap_group.as_ref().and_then(|g| g.version.clone()),
                (Ok(_), true) if backend.group_versions() => backend
                    .find_group(user, target_group)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|g| g.version),
                _ => None,
            };
            finish.mark = Some(mark.map(|v| destination_mark(fingerprint, &v)));
            finish.token = Some(tokened);
        }
        match result {
            // Contacts the provider refused: the rest was written; the destination failed, and
            // they are tried again next run.
            Ok(_) if !report.refused.is_empty() => {
                let msg = refused_summary(&report.refused);
                report.error = Some(msg.clone());
                finish.failed = Some(msg);
                finish.outcome = FinishOutcome::Record;
                finish.run(store, slot, &mut report).await;
                return report;
            }
            Ok(_) => {
                finish.outcome = if removal {
                    FinishOutcome::Forget
                } else {
                    FinishOutcome::Record
                };
                finish.run(store, slot, &mut report).await;
                return report;
            }
            Err(ApplyError::Backend(BackendError::Conflict { .. })) if attempt < 2 => {
                tracing::info!(job = %spec.name, dest = %user.name, "a contact changed while syncing; reading again");
                // Recorded before the group is read again, the slot kept.
                finish.failed = Some("a contact changed while syncing".into());
                let store = store.clone();
                let _ = tokio::task::spawn_blocking(move || finish.write(&store)).await;
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::warn!(job = %spec.name, dest = %user.name, "destination failed: {msg}");
                report.error = Some(msg.clone());
                finish.failed = Some(msg);
                finish.outcome = FinishOutcome::Record;
                finish.run(store, slot, &mut report).await;
                return report;
            }
        }
    }
    report
}

/// A destination's place among the `concurrency` at the provider: taken before its first call
/// (`take`), held to its last, then handed to the next destination while this one records its
/// state (`Finish::run`). At most `concurrency` destinations record at once, so a slow state
/// database holds the provider's slots back rather than piling up finished destinations. A
/// destination whose change-token read has made its last call steps aside while it reads that
/// last answer (`step_aside`), and takes a place again before any later call.
struct Slot {
    provider: Mutex<Option<tokio::sync::OwnedSemaphorePermit>>,
    /// Held by the one destination waiting for its first place: the others wait for this, so a
    /// destination coming back after stepping aside is behind at most one newcomer.
    entry: Arc<tokio::sync::Mutex<()>>,
    slots: Arc<tokio::sync::Semaphore>,
    finishing: Arc<tokio::sync::Semaphore>,
}

impl Slot {
    /// Waits for a first place at the provider, one destination at a time (see `entry`).
    async fn enter(&self) {
        let _first = self.entry.lock().await;
        self.take().await;
    }

    /// Waits for a place at the provider (kept if held already).
    async fn take(&self) {
        if self.place().is_some() {
            return;
        }
        let place = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the slots are never closed");
        *self.place() = Some(place);
    }

    fn place(&self) -> std::sync::MutexGuard<'_, Option<tokio::sync::OwnedSemaphorePermit>> {
        crate::mutex::lock(&self.provider)
    }

    /// Gives the place at the provider to the next destination while this one makes no call.
    fn step_aside(&self) {
        self.place().take();
    }

    /// Takes a place among those recording, then gives up the place at the provider.
    async fn hand_on(&self) -> tokio::sync::OwnedSemaphorePermit {
        let recording = self
            .finishing
            .clone()
            .acquire_owned()
            .await
            .expect("the slots are never closed");
        self.step_aside();
        recording
    }
}

/// A change-token read's view of the ledger (`LedgerProbe`) that also steps its destination
/// aside at the provider once the read has made its last call (`KnownCopies::last_call`): the
/// next destination's first call goes out while this one reads the last page. Not when the
/// group is being read alongside (`group_asked`), which is a call of its own.
struct Probing<'a> {
    probe: &'a LedgerProbe<'a>,
    slot: &'a Slot,
    group_asked: &'a AtomicBool,
}

impl KnownCopies for Probing<'_> {
    fn page(&self, n: usize) {
        self.probe.page(n)
    }

    fn known(&self, id: &str, etag: &str) -> Known {
        self.probe.known(id, etag)
    }

    fn last_call(&self) {
        if !self.group_asked.load(Ordering::Relaxed) {
            self.slot.step_aside();
        }
    }
}

/// What a destination writes to the state after its last provider call: the ledger rows and
/// log lines of its last batch, the ledger settled after a whole plan, what it converged to,
/// and its outcome. Written on the blocking pool once its slot is handed on (`run`), so the next
/// destination's calls are not held up by this one's bookkeeping. Nothing here calls the
/// provider.
struct Finish {
    job: String,
    user_id: String,
    run_id: i64,
    /// Ledger rows and log lines not written yet; written first, in order.
    deferred: Option<Deferred>,
    /// Ledger rows of copies left as they were that change (`Plan::kept`), and source ids whose
    /// rows go (`Plan::forget`): set when the whole plan was applied.
    settle: Option<Settle>,
    /// A state batch (`Store::batch_begin`) to end.
    batch: bool,
    /// Why the destination failed, if it did.
    failed: Option<String>,
    /// What the destination converged to (`Store::set_fingerprint`) and its change token, each
    /// written when `Some`: as given when the destination succeeded and everything above was
    /// written, cleared otherwise.
    mark: Option<Option<String>>,
    token: Option<Option<(String, String)>>,
    outcome: FinishOutcome,
}

/// A copy about to be deleted, as the trash and the change log keep it.
struct Doomed {
    contact_id: String,
    etag: String,
    source_id: Option<String>,
    name: String,
    /// Why it goes (`DeleteReason::as_str`).
    reason: &'static str,
    /// Its managed digest as read.
    before: String,
    /// Its vCard text, for the trash.
    payload: String,
}

/// Ledger rows of copies left as they were that change, and source ids whose rows go (see
/// `Store::settle_ledger`).
type Settle = (Vec<(String, LedgerCopy)>, Vec<String>);

/// How a destination's run ends in the state.
enum FinishOutcome {
    /// Not at all: the destination is tried again in this run.
    Retry,
    /// Its outcome is recorded (`Store::destination_outcome`), with the error if it failed.
    Record,
    /// A removed destination cleaned up: it is forgotten (or, if that failed, its error
    /// recorded).
    Forget,
}

impl Finish {
    fn new(job: &str, user: &User, run_id: i64, outcome: FinishOutcome) -> Finish {
        Finish {
            job: job.to_string(),
            user_id: user.id.clone(),
            run_id,
            deferred: None,
            settle: None,
            batch: false,
            failed: None,
            mark: None,
            token: None,
            outcome,
        }
    }

    /// Hands the slot on, writes everything on the blocking pool, and reports a state error in
    /// `report` (a provider error already there stays).
    async fn run(self, store: &Arc<Mutex<Store>>, slot: &Slot, report: &mut DestReport) {
        let recording = slot.hand_on().await;
        let store = store.clone();
        let written = tokio::task::spawn_blocking(move || {
            let written = self.write(&store);
            drop(recording);
            written
        })
        .await;
        let error = match written {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("internal error: recording the destination: {e}"),
        };
        if report.error.is_none() {
            tracing::warn!(dest = %report.user, "destination failed: {error}");
            report.error = Some(error);
        }
    }

    /// Writes everything, in order, under one lock of the state; returns the first error.
    fn write(self, store: &Mutex<Store>) -> Result<(), StoreError> {
        let s = lock(store);
        let mut first = Ok(());
        if let Some(mut d) = self.deferred {
            first = d.write_to(&s);
        }
        if first.is_ok()
            && let Some((kept, forget)) = &self.settle
        {
            first = s.settle_ledger(&self.job, &self.user_id, kept, forget);
        }
        if self.batch {
            let ended = s.batch_end();
            if first.is_ok() {
                first = ended;
            }
        }
        let converged = first.is_ok() && self.failed.is_none();
        if let Some(mark) = &self.mark {
            let mark = mark.as_deref().filter(|_| converged);
            let _ = s.set_fingerprint(&self.job, &self.user_id, mark);
        }
        if let Some(token) = &self.token {
            let token = token
                .as_ref()
                .filter(|_| converged)
                .map(|(t, g)| (t.as_str(), g.as_str()));
            let _ = s.set_change_token(&self.job, &self.user_id, token);
        }
        let error = match (&self.failed, &first) {
            (Some(f), _) => Some(f.clone()),
            (None, Err(e)) => Some(e.to_string()),
            (None, Ok(())) => None,
        };
        let ended = match (self.outcome, error) {
            (FinishOutcome::Retry, _) => Ok(()),
            (FinishOutcome::Forget, None) => s.forget_destination(&self.job, &self.user_id),
            (_, error) => {
                s.destination_outcome(&self.job, &self.user_id, self.run_id, error.as_deref())
            }
        };
        // An outcome not recorded after a provider failure is not worth another error.
        if first.is_ok() && self.failed.is_none() {
            first = ended;
        }
        first
    }
}

#[derive(Debug, thiserror::Error)]
enum ApplyError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Other(String),
}

/// Applies a plan, in order, stopping at the first failure (the rest is retried next run).
/// Returns the group as it is after the plan (created, or still the one read), and what is left
/// to record in the state once the provider is done with (`Finish`): the state writes of a
/// destination are batched into few transactions, and its last ones are made off its slot.
#[allow(clippy::too_many_arguments)]
async fn apply<B: Backend>(
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

/// Ledger rows and log lines of the batches a destination has written, not yet in the state
/// database: they are written while the destination's next call is in flight (`overlapped`), so
/// recording one batch is off the destination's critical path. A crash before they are written
/// loses them like an uncommitted transaction would: the copies are found again by their tags.
struct Deferred {
    /// Whose writes these are (run, job, user), shared by every batch of the destination.
    base: Arc<DeferredBase>,
    writes: Vec<DeferredWrite>,
}

enum DeferredWrite {
    Copy {
        source_id: String,
        contact_id: String,
        digest: String,
        etag: String,
    },
    Log {
        action: &'static str,
        source_id: Option<String>,
        contact_id: String,
        name: Option<String>,
        detail: Option<String>,
        fields: Option<String>,
        before: Option<String>,
        after: Option<String>,
    },
}

/// A `Change`'s run, job and user without borrows, to write from another thread.
struct DeferredBase {
    run_id: i64,
    job: String,
    user_id: String,
    user: String,
}

impl Deferred {
    fn new(base: &Change<'_>) -> Self {
        Deferred {
            base: Arc::new(DeferredBase {
                run_id: base.run_id,
                job: base.job.to_string(),
                user_id: base.user_id.to_string(),
                user: base.user.to_string(),
            }),
            writes: vec![],
        }
    }

    /// The writes deferred so far, to be written elsewhere; this one is left empty.
    fn take(&mut self) -> Deferred {
        Deferred {
            base: self.base.clone(),
            writes: std::mem::take(&mut self.writes),
        }
    }

    fn copy(&mut self, source_id: &str, contact_id: &str, digest: &str, etag: &str) {
        self.writes.push(DeferredWrite::Copy {
            source_id: source_id.to_string(),
            contact_id: contact_id.to_string(),
            digest: digest.to_string(),
            etag: etag.to_string(),
        });
    }

    /// Writes everything deferred, in order, under one lock of the state.
    fn write(&mut self, store: &Mutex<Store>) -> Result<(), StoreError> {
        if self.writes.is_empty() {
            return Ok(());
        }
        self.write_to(&lock(store))
    }

    /// Writes everything deferred, in order, to the state locked by the caller.
    fn write_to(&mut self, s: &Store) -> Result<(), StoreError> {
        let b = &*self.base;
        let base = Change {
            run_id: b.run_id,
            job: &b.job,
            user_id: &b.user_id,
            user: &b.user,
            ..Default::default()
        };
        for w in self.writes.drain(..) {
            match w {
                DeferredWrite::Copy {
                    source_id,
                    contact_id,
                    digest,
                    etag,
                } => s.record_copy(
                    base.job,
                    base.user_id,
                    &source_id,
                    &contact_id,
                    &digest,
                    &etag,
                )?,
                DeferredWrite::Log {
                    action,
                    source_id,
                    contact_id,
                    name,
                    detail,
                    fields,
                    before,
                    after,
                } => s.log_change(&Change {
                    action,
                    source_id: source_id.as_deref(),
                    contact_id: Some(&contact_id),
                    name: name.as_deref(),
                    detail: detail.as_deref(),
                    fields: fields.as_deref(),
                    before: before.as_deref(),
                    after: after.as_deref(),
                    ..base.clone()
                })?,
            }
        }
        Ok(())
    }
}

/// Runs a provider call with the deferred writes of the batches before it: the call is started
/// (its request goes out at its first poll), the deferred writes are made on the blocking pool
/// while it is in flight, then both are awaited. (Made on this task, the writes would also hold
/// up the connection task that sends the request: tokio runs a task just woken on the same
/// thread, after the one that woke it.) A failed state write is reported after the call has
/// finished, so a write in flight is never abandoned halfway.
async fn overlapped<T>(
    store: &Arc<Mutex<Store>>,
    deferred: &mut Deferred,
    call: impl std::future::Future<Output = T>,
) -> Result<T, ApplyError> {
    let mut call = std::pin::pin!(call);
    let first = futures::poll!(call.as_mut());
    let written = (!deferred.writes.is_empty()).then(|| {
        let mut writes = deferred.take();
        let store = store.clone();
        tokio::task::spawn_blocking(move || writes.write(&store))
    });
    let out = match first {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => call.await,
    };
    if let Some(written) = written {
        written
            .await
            .map_err(|e| ApplyError::Other(format!("recording the last batch: {e}")))??;
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
async fn apply_ops<B: Backend>(
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

/// What a destination whose provider refused some contacts reports.
fn refused_summary(refused: &[String]) -> String {
    let n = refused.len();
    let first = refused.first().map(String::as_str).unwrap_or_default();
    if n == 1 {
        format!("1 contact was refused ({first}); every other change was made")
    } else {
        format!("{n} contacts were refused (first: {first}); every other change was made")
    }
}

/// A copy to create, as the plan names it (`Op::Create`).
struct NewCopy<'a> {
    source_id: &'a str,
    name: &'a str,
    recreate: bool,
    /// The UID it gets when not its usual one (see `plan::free_uid`).
    uid: Option<String>,
    item: &'a plan::SourceItem,
}

/// How many times a create refused for its UID (a contact that has it, which the read did not
/// see) is made again under another.
const UID_RETRIES: usize = 3;

/// Creates copies in one batch call. One the provider refuses because its UID is taken (a
/// contact of the user's carries it: a copy whose tag the user removed) is made again under
/// another UID, `<uid>-1`, `<uid>-2`, … (the same on every run); one refused otherwise is noted
/// (`refusal`) and the others stand.
#[allow(clippy::too_many_arguments)]
async fn create_copies<B: Backend>(
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

/// Sorts one result of a batch: `Some` on success. A refusal of this one contact (see
/// `BackendError::is_contact_level`) goes to `refuse`, and the batch's other items stand; the
/// first other failure is kept in `first_err`, for the caller to return once every result is
/// taken.
fn sort_result<T>(
    result: Result<T, BackendError>,
    first_err: &mut Option<BackendError>,
    refuse: impl FnOnce(BackendError),
) -> Option<T> {
    match result {
        Ok(t) => Some(t),
        Err(e) if e.is_contact_level() => {
            refuse(e);
            None
        }
        Err(e) => {
            first_err.get_or_insert(e);
            None
        }
    }
}

/// Notes a contact the provider refused: in the destination's report, and in the change log
/// (`refused`, with the reason). The destination's other changes are made; it is reported as
/// failed, and the contact is tried again at the next run.
fn refusal(
    deferred: &mut Deferred,
    refused: &mut Vec<String>,
    (action, contact_id, name): (&str, &str, &str),
    e: BackendError,
) {
    let who = match (name.is_empty(), contact_id.is_empty()) {
        (false, _) => name.to_string(),
        (true, false) => contact_id.to_string(),
        (true, true) => "a contact".to_string(),
    };
    refused.push(format!("{action} {who}: {e}"));
    deferred.writes.push(DeferredWrite::Log {
        action: "refused",
        source_id: None,
        contact_id: contact_id.to_string(),
        name: (!name.is_empty()).then(|| name.to_string()),
        detail: Some(format!("{action}: {e}")),
        fields: None,
        before: None,
        after: None,
    });
}

/// The contacts of a run of deletes, read for the trash: each turned into what the trash and
/// the change log keep as it arrives, in the plan's order; a contact already gone is left out
/// (nothing to delete). Refused, with nothing kept, when a contact changed since it was planned
/// (`Conflict`: it is read and planned again) or no longer carries the job's tag.
async fn read_for_trash<B: Backend>(
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
type Trashing = tokio::task::JoinHandle<Result<Vec<Doomed>, StoreError>>;

/// Writes contacts about to be deleted to the trash, on the blocking pool (a thousand contacts'
/// text is a long write for a runtime thread).
fn write_trash(
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

/// Once their trash is written, deletes the contacts in the provider's batches; each delete is
/// logged (deferred, see `Deferred`).
#[allow(clippy::too_many_arguments)]
async fn delete_trashed<B: Backend>(
    backend: &B,
    store: &Arc<Mutex<Store>>,
    user: &User,
    g: &GroupRef,
    delete_batch: usize,
    trashing: Trashing,
    deferred: &mut Deferred,
    (applied, refused): (&mut Counts, &mut Vec<String>),
) -> Result<(), ApplyError> {
    let doomed = trashing
        .await
        .map_err(|e| ApplyError::Other(format!("writing the trash: {e}")))??;
    for chunk in doomed.chunks(delete_batch) {
        let calls: Vec<(&str, &str)> = chunk
            .iter()
            .map(|d| (d.contact_id.as_str(), d.etag.as_str()))
            .collect();
        let results = overlapped(store, deferred, backend.delete_contacts(user, g, &calls)).await?;
        let mut first_err = None;
        for (d, result) in chunk.iter().zip(results) {
            if sort_result(result, &mut first_err, |e| {
                refusal(deferred, refused, ("delete", &d.contact_id, &d.name), e)
            })
            .is_none()
            {
                continue;
            }
            deferred.writes.push(DeferredWrite::Log {
                action: "delete",
                source_id: d.source_id.clone(),
                contact_id: d.contact_id.clone(),
                name: Some(d.name.clone()),
                detail: Some(d.reason.to_string()),
                fields: None,
                before: Some(d.before.clone()),
                after: None,
            });
            applied.deleted += 1;
        }
        if let Some(e) = first_err {
            return Err(e.into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A destination's last state writes (`Finish`): what was written is recorded whatever
    /// happened; what it converged to (mark, change token) is remembered only when it
    /// succeeded, and cleared otherwise; its outcome says which; a removed destination that
    /// succeeded is forgotten, one to be tried again gets no outcome.
    #[test]
    fn finish_remembers_convergence_only_on_success() {
        let store = Mutex::new(Store::open_in_memory().unwrap());
        let run_id = lock(&store).start_run("j", false).unwrap();
        let user = User {
            id: "u1".into(),
            name: "u@example.com".into(),
        };
        let base = Change {
            run_id,
            job: "j",
            user_id: "u1",
            user: "u@example.com",
            ..Default::default()
        };
        for (i, failed) in [None, Some("the provider said no")].into_iter().enumerate() {
            lock(&store)
                .touch_destination("j", "u1", "u@example.com", "G")
                .unwrap();
            lock(&store)
                .set_fingerprint("j", "u1", Some("old"))
                .unwrap();
            let mut deferred = Deferred::new(&base);
            deferred.copy(&format!("s{i}"), &format!("c{i}"), "d", "e");
            let mut finish = Finish::new("j", &user, run_id, FinishOutcome::Record);
            finish.deferred = Some(deferred);
            finish.settle = Some((vec![], vec![]));
            finish.failed = failed.map(str::to_string);
            finish.mark = Some(Some("new".into()));
            finish.token = Some(Some(("t".into(), "g".into())));
            finish.write(&store).unwrap();
            let s = lock(&store);
            assert!(
                s.copy_by_contact("j", "u1", &format!("c{i}"))
                    .unwrap()
                    .is_some()
            );
            let ok = failed.is_none();
            assert_eq!(s.fingerprint("j", "u1").unwrap().is_some(), ok);
            assert_eq!(s.change_token("j", "u1").unwrap().is_some(), ok);
            let d = s.destinations("j").unwrap().pop().unwrap();
            assert_eq!(d.last_error.as_deref(), failed);
            assert_eq!(
                d.last_outcome.as_deref(),
                Some(if ok { "ok" } else { "failed" })
            );
        }
        // Tried again: no outcome recorded, the convergence cleared.
        lock(&store)
            .set_fingerprint("j", "u1", Some("old"))
            .unwrap();
        let mut finish = Finish::new("j", &user, run_id, FinishOutcome::Retry);
        finish.failed = Some("a contact changed".into());
        finish.mark = Some(Some("new".into()));
        finish.write(&store).unwrap();
        let d = lock(&store).destinations("j").unwrap().pop().unwrap();
        assert_eq!(d.last_error.as_deref(), Some("the provider said no"));
        assert_eq!(lock(&store).fingerprint("j", "u1").unwrap(), None);
        // A removal that succeeded: forgotten with its ledger.
        Finish::new("j", &user, run_id, FinishOutcome::Forget)
            .write(&store)
            .unwrap();
        assert!(lock(&store).destinations("j").unwrap().is_empty());
        assert_eq!(lock(&store).copy_count("j", "u1").unwrap(), 0);
    }

    /// The probe answers a delta's contacts alike whichever way it reads the ledger (one at a
    /// time, counted first, or whole), and reads it the way the page hints call for.
    #[test]
    fn a_probe_answers_alike_one_at_a_time_and_whole() {
        let store = Mutex::new(Store::open_in_memory().unwrap());
        for i in 0..1000 {
            lock(&store)
                .record_copy(
                    "j",
                    "u",
                    &format!("s{i}"),
                    &format!("c{i}"),
                    "d",
                    &format!("e{i}"),
                )
                .unwrap();
        }
        // (page hint, contacts asked about, whole at the end, counted)
        let cases = [
            (None, 10, false, false),
            (Some(100), 100, false, true),
            (Some(1000), 200, true, true),
            (None, 100, true, true),
        ];
        for (hint, asked, whole, counted) in cases {
            let probe = LedgerProbe::new(&store, "j", "u");
            if let Some(n) = hint {
                probe.page(n);
            }
            for k in 0..asked {
                // A copy as written, one changed since, one deleted, and a contact no copy.
                let (id, etag, want) = match k % 4 {
                    0 => (format!("c{k}"), format!("e{k}"), Known::AsWritten),
                    1 => (format!("c{k}"), "other".to_string(), Known::Changed),
                    2 => (format!("c{k}"), String::new(), Known::Changed),
                    _ => (format!("x{k}"), "e".to_string(), Known::No),
                };
                assert_eq!(probe.known(&id, &etag), want, "{hint:?} {asked}: {id}");
            }
            let st = probe.into_inner();
            assert_eq!(
                matches!(st.probe, Probe::Whole(Some(_))),
                whole,
                "{hint:?} {asked}"
            );
            assert_eq!(st.total, counted.then_some(1000), "{hint:?} {asked}");
        }
    }
}
