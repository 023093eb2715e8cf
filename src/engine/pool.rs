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
