//! One destination's pass: the guards (shutdown, a safety stop, a removed user gone), what
//! changed since it converged (a change token's delta), then up to three attempts of snapshot,
//! plan, deletion limit, apply and record.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::backend::{Backend, BackendError, Delta, GroupRef, User};
use crate::mutex::lock;
use crate::plan;
use crate::plan::{DestEntry, DestSnapshot, LedgerView, Plan, SourceSet};
use crate::store::{Counts, Store};

use super::apply::apply;
use super::delta::{
    LedgerProbe, Probe, ProbeState, Probing, ReadDelta, TOKEN_VERSION, converged_under_token,
    delta_scope, destination_mark,
};
use super::finish::{Finish, FinishOutcome};
use super::record::{ApplyError, refused_summary};
use super::shared::{PreviousSource, SourceDiff};
use super::slot::Slot;
use super::snapshot::{removal_snapshot, snapshot, snapshot_from_changes};
use super::{DestReport, JobRun, RunOptions};

/// Which kind of work a destination gets in this run.
pub(super) enum Mode<'a> {
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
pub(super) async fn process_destination<B: Backend>(
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
