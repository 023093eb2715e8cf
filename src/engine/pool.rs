//! The destination pool: each destination a task, at most `concurrency` of them at the
//! provider at once (`Slot`), started ahead so that a place handed on goes to one ready to call;
//! reports in the order of the job file.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tracing::Instrument;

use crate::backend::{Backend, User};

use super::DestReport;
use super::destination::process_destination;
use super::shared::{
    ActiveInputs, DestCtx, DestShared, Mode, STARTED_AHEAD, failed_dest, report_progress,
};
use super::slot::Slot;

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
    let places = Places::new(concurrency);
    loop {
        while tasks.len() < STARTED_AHEAD * concurrency
            && let Some((i, (user, target_group))) = dests.next()
        {
            reports.push(None);
            let name = user.name.clone();
            let task = destination_task(shared, user, target_group, places.slot(), inputs);
            let handle = tasks.spawn(task);
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

/// `concurrency` destinations at the provider, and as many recording their state after their
/// last call (see `Slot`). Tasks are started ahead of their slot: each gets ready
/// (`Backend::prepare_access`, its state read) before it waits for one, so a slot handed on
/// goes to a destination ready to make its first call.
struct Places {
    slots: Arc<tokio::sync::Semaphore>,
    finishing: Arc<tokio::sync::Semaphore>,
    entry: Arc<tokio::sync::Mutex<()>>,
}

impl Places {
    fn new(concurrency: usize) -> Self {
        Places {
            slots: Arc::new(tokio::sync::Semaphore::new(concurrency)),
            finishing: Arc::new(tokio::sync::Semaphore::new(concurrency)),
            entry: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// One destination's way to the places.
    fn slot(&self) -> Slot {
        Slot {
            provider: Mutex::new(None),
            entry: self.entry.clone(),
            slots: self.slots.clone(),
            finishing: self.finishing.clone(),
        }
    }
}

/// One destination's pass as a task of its own (owning what it uses), in its tracing span.
fn destination_task<B: Backend + 'static>(
    shared: &DestShared<B>,
    user: User,
    target_group: String,
    slot: Slot,
    inputs: Option<&Arc<ActiveInputs>>,
) -> impl Future<Output = DestReport> + Send + 'static {
    let span = if inputs.is_none() {
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
    async move {
        let mode = match &inputs {
            Some(a) => Mode::Active(a),
            None => Mode::Removal,
        };
        let ctx = DestCtx {
            backend: &*backend,
            store: &store,
            reader: &reader,
            job: &job,
            opts: &opts,
            user: &user,
            target_group: &target_group,
            run_id,
            mode,
            slot: &slot,
        };
        process_destination(&ctx).await
    }
    .instrument(span)
}
