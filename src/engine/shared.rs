//! What the phases of a run share: the job's context, what the active destinations share (the
//! source as read, what the last run read of it), a task stopped when dropped, and a
//! destination's report when it fails before it starts. Data only: this module calls no phase.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use crate::backend::User;
use crate::mutex::lock;
use crate::plan::SourceSet;
use crate::store::{Counts, Store};

use super::finish::{Finish, FinishOutcome};
use super::slot::Slot;
use super::{DestReport, JobRun, RunOptions};

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
        p.0.finished(r);
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

/// A source contact as the job's last run read it (see `Store::source_contacts`).
#[derive(Debug)]
pub(super) struct PreviousSource {
    pub(super) digest: String,
    pub(super) name: String,
    /// Digest of each managed property (see `card::field_digests`).
    pub(super) fields: crate::card::FieldDigests,
}

/// Which source contacts changed since the last run that saved what it read of the source
/// (see `Store::save_source_contacts`).
#[derive(Debug)]
pub(super) struct SourceDiff {
    /// The fingerprint of the source as that run read it (see `SourceSet::fingerprint`).
    pub(super) fingerprint: String,
    /// Source ids whose contact is not the same now: edited, gone, new, or unreadable. Sorted.
    pub(super) ids: BTreeSet<String>,
}

/// What the last run read of the source contacts that changed since, and which changed.
pub(super) type Previous = (HashMap<String, PreviousSource>, Option<SourceDiff>);

/// What every phase of one job's run works with.
pub(super) struct JobCtx<'a, B> {
    pub(super) backend: &'a Arc<B>,
    pub(super) store: &'a Arc<Mutex<Store>>,
    pub(super) job: &'a JobRun,
    pub(super) opts: &'a RunOptions,
}

/// Which kind of work a destination gets in this run.
pub(super) enum Mode<'a> {
    /// In the job: bring its copies in line with the source.
    Active(&'a ActiveInputs),
    /// Dropped from the job: remove the copies and the group, keep the user's own contacts.
    Removal,
}

/// Everything one destination's pass works with.
pub(super) struct DestCtx<'a, B> {
    pub(super) backend: &'a B,
    pub(super) store: &'a Arc<Mutex<Store>>,
    /// A read-only connection for state this destination has not written in this run.
    pub(super) reader: &'a Mutex<Store>,
    pub(super) job: &'a JobRun,
    pub(super) opts: &'a RunOptions,
    pub(super) user: &'a User,
    pub(super) target_group: &'a str,
    pub(super) run_id: i64,
    pub(super) mode: Mode<'a>,
    pub(super) slot: &'a Slot,
}

impl<B> DestCtx<'_, B> {
    pub(super) fn active(&self) -> Option<&ActiveInputs> {
        match self.mode {
            Mode::Active(a) => Some(a),
            Mode::Removal => None,
        }
    }

    pub(super) fn job_name(&self) -> &str {
        &self.job.spec.name
    }

    /// A finish record of this destination, with this outcome.
    pub(super) fn finish(&self, outcome: FinishOutcome) -> Finish {
        Finish::new(self.job_name(), self.user, self.run_id, outcome)
    }
}
