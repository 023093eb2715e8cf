//! The source: read once for all destinations (its user looked up alongside the destinations),
//! guarded against reading empty, and what the job's last run read of it, so that a copy written
//! from that reading is known field by field without being read again.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;

use crate::backend::{Backend, BackendExt, User};
use crate::card;
use crate::mutex::lock;
use crate::plan::SourceSet;
use crate::store::Store;

use super::JobReport;
use super::error::JobError;
use super::resolve::Resolved;
use super::shared::{AbortOnDrop, ActiveInputs, JobCtx, Previous, PreviousSource, SourceDiff};

/// Reads the source group, once for all destinations, and gathers what they share. `None` when
/// the empty-source guard stopped the job (the report says so). With no active destination
/// (a run that only cleans up) the source is not read.
pub(super) async fn read_source<B: Backend>(
    ctx: &JobCtx<'_, B>,
    resolved: &mut Resolved,
    report: &mut JobReport,
) -> Result<Option<ActiveInputs>, JobError> {
    let (job, spec) = (ctx.job, &ctx.job.spec);
    let mut source = SourceSet::default();
    if !resolved.active.is_empty() {
        let user = source_user(ctx, resolved).await?;
        let read_err = |e| JobError::SourceRead {
            user: job.source.clone(),
            group: job.group.clone(),
            source: e,
        };
        let backend = &**ctx.backend;
        let group = backend
            .find_group(&user, &job.group, None)
            .await
            .map_err(read_err)?
            .ok_or_else(|| JobError::SourceGroup {
                user: job.source.clone(),
                group: job.group.clone(),
            })?;
        backend
            .scan_group(&user, &group, &mut |c| {
                source.add_checked(spec, c.id, c.etag, c.card, &|copy| {
                    backend.cannot_hold(copy)
                })
            })
            .await
            .map_err(read_err)?;
        note_source(ctx, &source, report);
        if reads_empty(ctx, &source, report)? {
            return Ok(None);
        }
        if !ctx.opts.dry_run {
            lock(ctx.store).set_source_count(&spec.name, source.items.len())?;
        }
    }
    let tokens = ctx.backend.capabilities().change_tokens;
    let (previous, since) = if resolved.active.is_empty() || !tokens {
        (HashMap::new(), None)
    } else {
        previous_source(&lock(ctx.store), &spec.name, &source)
    };
    Ok(Some(ActiveInputs {
        fingerprint: source.fingerprint(spec),
        source,
        previous,
        since,
        stopped: AtomicBool::new(false),
    }))
}

/// The source user: the lookup made while the destinations were looked up, or made now if there
/// was none (or its task failed). Not found is the job file's fault.
async fn source_user<B: Backend>(
    ctx: &JobCtx<'_, B>,
    resolved: &mut Resolved,
) -> Result<User, JobError> {
    let job = ctx.job;
    let joined = match resolved.source_user.as_mut() {
        Some(AbortOnDrop(task)) => task.await.ok(),
        None => None,
    };
    let looked_up = match joined {
        Some(r) => r,
        None => ctx.backend.resolve_user(&job.source).await,
    };
    looked_up
        .map_err(|e| JobError::SourceRead {
            user: job.source.clone(),
            group: job.group.clone(),
            source: e,
        })?
        .ok_or_else(|| JobError::SourceUser(job.source.clone()))
}

/// What the report and the log say of the source as read.
fn note_source<B: Backend>(ctx: &JobCtx<'_, B>, source: &SourceSet, report: &mut JobReport) {
    let job = ctx.job;
    report.source_read = true;
    report.source_contacts = source.items.len();
    report.source_filtered_out = source.filtered_out;
    report.source_came_back = source.came_back;
    if source.came_back > 0 {
        tracing::warn!(job = %job.spec.name, "{} contacts in source group {:?} of {} came through this job (its own copies, or copies of them made by other jobs); they are not copied again", source.came_back, job.group, job.source);
    }
    report.source_unreadable = source
        .unreadable
        .iter()
        .map(|(id, why)| format!("{id}: {why}"))
        .collect();
    for u in &report.source_unreadable {
        tracing::warn!(job = %job.spec.name, "source contact left as it is, it cannot be read: {u}");
    }
    report.not_held = source.not_held.clone();
    for n in &report.not_held {
        tracing::warn!(job = %job.spec.name, "{} cannot hold all of a source contact, its copies lack: {n}", ctx.backend.kind());
    }
}

/// The empty-source guard: a group that suddenly reads empty never wipes destinations (true
/// when it stopped the job; `--force` goes past it).
fn reads_empty<B: Backend>(
    ctx: &JobCtx<'_, B>,
    source: &SourceSet,
    report: &mut JobReport,
) -> Result<bool, JobError> {
    if !source.items.is_empty() || !source.unreadable.is_empty() || ctx.opts.force {
        return Ok(false);
    }
    let (job, s) = (ctx.job, lock(ctx.store));
    let remembered = s.ledger_count(&job.spec.name)?;
    let last = s.last_source_count(&job.spec.name)?.unwrap_or(0);
    if remembered == 0 && last == 0 {
        return Ok(false);
    }
    report.outcome = super::Outcome::Stopped;
    report.message = Some(format!(
        "source group {:?} of {} reads empty (filtered out: {}) while {} copies exist; nothing was changed. Run with --force if this is intended",
        job.group, job.source, source.filtered_out, remembered
    ));
    Ok(true)
}

/// Remembers what this run read of the source (with change tokens only: it is what lets a
/// delta's copies be known without a read). A failure is logged, not fatal.
pub(super) fn save_source<B: Backend>(
    ctx: &JobCtx<'_, B>,
    inputs: &ActiveInputs,
    report: &JobReport,
) {
    let spec = &ctx.job.spec;
    if ctx.opts.dry_run || !report.source_read || !ctx.backend.capabilities().change_tokens {
        return;
    }
    let source = &inputs.source;
    let saved = lock(ctx.store).save_source_contacts(
        &spec.name,
        source
            .items
            .values()
            .map(|i| (&*i.id, i.digest.as_str(), &*i.name)),
        |id| {
            source.items.get(id).map_or_else(String::new, |i| {
                card::field_digests_text(i.fields(&spec.fields))
            })
        },
        // The rows are the whole source only when every contact could be read.
        source
            .unreadable
            .is_empty()
            .then_some(inputs.fingerprint.as_str()),
    );
    if let Err(e) = saved {
        tracing::warn!(job = %spec.name, "could not remember the source contacts: {e}");
    }
}

/// The source contacts the job's last run read that are not the same in `source` (edited, or
/// gone from it), and, when that run saved the whole source it read, which source ids changed
/// since. Rows whose field digests cannot be read are left out of the first: their copies are
/// then read again.
pub(super) fn previous_source(store: &Store, job: &str, source: &SourceSet) -> Previous {
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
