//! The executor: reads the source once, then for each destination reads its group, asks the
//! planner for a plan, checks the safety limits and applies the plan through the backend,
//! recording every change, every deleted payload and the outcome in the state database.
//!
//! It owns the order of a run (source, active destinations, then removed destinations), the
//! safety stops (empty source, deletion limit), and failure isolation: one destination failing is
//! recorded and counted and never stops the others. It must not decide *what* to change (that is
//! the planner's job) nor know which provider it drives.

mod apply;
mod delta;
mod destination;
mod error;
mod finish;
mod pool;
mod probe;
mod record;
mod resolve;
mod run;
mod shared;
mod slot;
mod snapshot;
mod source;
mod trash;

pub use error::JobError;
pub use resolve::{check_dynamic_set, destination_names, is_dynamic_set};

use serde::Serialize;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tracing::Instrument;

use crate::backend::Backend;
use crate::config::Retention;
use crate::mutex::lock;
use crate::plan::{JobSpec, Plan};
use crate::store::{Counts, Purged, Store};
use run::run_inner;

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
    /// This process is one shard of several: only the destinations the shard owns are synced
    /// or cleaned up (see `crate::shard`); `None` = every destination.
    pub shard: Option<crate::shard::Shard>,
    /// Skip destinations still in the job (used by `remove-dest` to clean up at once).
    pub removals_only: bool,
    /// Name of the default collection (removed users' own contacts go there).
    pub default_group: String,
    /// Set by the daemon on shutdown: the destination in progress finishes, no other starts.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Told what is planned and written, and as each destination finishes (the CLI's
    /// progress bar).
    pub progress: Option<Progress>,
    /// How long the state keeps trash and change log; what is older is purged as a real run
    /// starts. `None`: nothing is purged.
    pub retention: Option<Retention>,
}

/// What a run tells whoever shows its progress (the CLI's bar), in contacts written and
/// destinations done. Called from the destination tasks: each call must be quick and must not
/// block.
pub trait ProgressSink: Send + Sync {
    /// A destination's plan holds `n` contact writes (creates, updates, deletes, moves), about to
    /// be made.
    fn planned(&self, n: u64);
    /// `n` of the planned writes were made.
    fn written(&self, n: u64);
    /// `n` planned writes will not be made in this run (the destination failed part way, or was
    /// read and planned again).
    fn dropped(&self, n: u64);
    /// A destination is done: synced, failed or stopped.
    fn finished(&self, report: &DestReport);
}

/// The progress sink of a run (see `ProgressSink`).
#[derive(Clone)]
pub struct Progress(pub Arc<dyn ProgressSink>);

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
    /// Source contacts the destinations' provider cannot hold whole, each named with what its
    /// copies lack ("Bo Ek: EMAIL: 3 of 4 kept").
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_held: Vec<String>,
    pub destinations: Vec<DestReport>,
    pub message: Option<String>,
    pub counts: Counts,
    /// Trash entries and change-log lines past their retention, purged at this run's start (of
    /// every job: the retention is the state's, not the job's).
    #[serde(skip_serializing_if = "Purged::is_empty")]
    pub purged: Purged,
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
            outcome: Outcome::Invalid,
            message: Some(message),
            ..JobReport::new(job, dry_run)
        }
    }

    /// The report of a job about to run: nothing done yet.
    fn new(job: &JobRun, dry_run: bool) -> JobReport {
        JobReport {
            job: job.spec.name.clone(),
            tag: job.spec.tag.clone(),
            run_id: None,
            dry_run,
            outcome: Outcome::Ok,
            source_read: false,
            source_contacts: 0,
            source_filtered_out: 0,
            source_came_back: 0,
            source_unreadable: vec![],
            not_held: vec![],
            destinations: vec![],
            message: None,
            counts: Counts::default(),
            purged: Purged::default(),
        }
    }

    /// Adds up what the destinations did; a run whose destinations failed has failed.
    fn tally(&mut self) {
        for d in &self.destinations {
            let a = d.applied;
            self.counts.created += a.created;
            self.counts.updated += a.updated;
            self.counts.deleted += a.deleted;
            self.counts.moved += a.moved;
        }
        self.counts.destinations = self.destinations.len() as i64;
        self.counts.failed = self
            .destinations
            .iter()
            .filter(|d| d.error.is_some())
            .count() as i64;
        if self.outcome == Outcome::Ok && self.counts.failed > 0 {
            self.outcome = Outcome::Failed;
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
    let mut report = JobReport::new(job, opts.dry_run);
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
    if !opts.dry_run
        && let Some(keep) = opts.retention
    {
        match lock(store).purge_older(keep, chrono::Utc::now()) {
            Ok(p) => report.purged = p,
            // Kept a run longer: the sync itself does not depend on it.
            Err(e) => {
                tracing::warn!(job = %job.spec.name, "could not purge old trash and change log: {e}")
            }
        }
    }
    let calls_before = backend.call_counts();
    let span = tracing::info_span!("run", job = %job.spec.name);
    let ctx = shared::JobCtx {
        backend,
        store,
        job,
        opts,
    };
    if let Err(e) = run_inner(&ctx, &mut report).instrument(span).await {
        report.outcome = if e.is_config() {
            Outcome::Invalid
        } else {
            Outcome::Error
        };
        report.message = Some(e.to_string());
    }
    report.tally();
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
