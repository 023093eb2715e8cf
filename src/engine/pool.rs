//! The destination pool: each destination a task, at most `concurrency` of them at the
//! provider at once (`Slot`), started ahead so that a place handed on goes to one ready to call;
//! reports in the order of the job file.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use tracing::Instrument;

use crate::backend::{Backend, User};
use crate::plan::SourceSet;
use crate::store::{Counts, Store};

use super::destination::{Mode, process_destination};
use super::run::JobCtx;
use super::slot::Slot;
use super::source::{PreviousSource, SourceDiff};
use super::{DestReport, JobRun, RunOptions};
use crate::mutex::lock;

/// Destination tasks started ahead of their place at the provider, per place: each gets ready
/// (its token, its change token) while earlier ones call.
pub(super) const STARTED_AHEAD: usize = 3;

/// A task stopped when its handle is dropped.
pub(super) struct AbortOnDrop<T = ()>(pub(super) tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What every destination task of a run shares.
pub(super) struct DestShared<B> {
    pub(super) backend: Arc<B>,
    pub(super) store: Arc<Mutex<Store>>,
    /// A second connection for the reads of state the run has not written yet (see
    /// `Store::reader`), so they never wait for another destination's writes; `store` itself
    /// when there is none.
    pub(super) reader: Arc<Mutex<Store>>,
    pub(super) job: Arc<JobRun>,
    pub(super) opts: RunOptions,
    pub(super) run_id: i64,
}

impl<B> DestShared<B> {
    /// What the destinations of one job's run share, with a second, read-only connection to
    /// the state when the state is a file.
    pub(super) fn new(ctx: &JobCtx<'_, B>, run_id: i64) -> Self {
        let reader = match lock(ctx.store).reader() {
            Ok(Some(r)) => Arc::new(Mutex::new(r)),
            Ok(None) => ctx.store.clone(),
            Err(e) => {
                tracing::debug!(job = %ctx.job.spec.name, "no second connection to the state ({e}); reads share the writer's");
                ctx.store.clone()
            }
        };
        DestShared {
            backend: ctx.backend.clone(),
            store: ctx.store.clone(),
            reader,
            job: Arc::new(ctx.job.clone()),
            opts: ctx.opts.clone(),
            run_id,
        }
    }
}

/// What the active destinations of a run share, read-only but for `stopped`.
pub(super) struct ActiveInputs {
    pub(super) source: SourceSet,
    /// The last run's reading of source contacts that changed since (see `previous_source`).
    pub(super) previous: HashMap<String, PreviousSource>,
    /// Which source contacts changed since the last run (see `SourceDiff`).
    pub(super) since: Option<SourceDiff>,
    /// Digest of everything this run would copy (see `SourceSet::fingerprint`).
    pub(super) fingerprint: String,
    /// Set by the first destination that hits a safety limit: no other starts.
    pub(super) stopped: AtomicBool,
}

/// Runs `process_destination` for each (user, target group), each as its own task, at most
/// `concurrency` of them at the provider at once (see `Slot`); active destinations with
/// `inputs`, removed ones without. Reports
/// come back in the order of `dests`, whatever order they finished in; a task that panicked is
/// reported as a failed destination, and the others go on.
pub(super) async fn run_destinations<B: Backend + 'static>(
    shared: &DestShared<B>,
    dests: impl Iterator<Item = (User, String)>,
    inputs: Option<&Arc<ActiveInputs>>,
) -> Vec<DestReport> {
    let removal = inputs.is_none();
    let concurrency = shared.opts.concurrency.max(1);
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

/// Logs a finished destination and tells the progress callback.
pub(super) fn report_progress(opts: &RunOptions, r: &DestReport) {
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

pub(super) fn failed_dest(user: &str, removal: bool, error: String) -> DestReport {
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
