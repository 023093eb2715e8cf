//! The destinations of a job: plain names as written and the members of its dynamic sets
//! (`group:`, `ou:`, `domain:`) read now, exclusions applied; each looked up at the provider
//! (while the source user is looked up alongside); those the state remembers and the job no
//! longer names, to be cleaned up. A user the job file names that does not exist, or whose
//! credentials the provider refuses, refuses the job before anything is written.

use futures::StreamExt;
use std::collections::BTreeSet;
use tokio::sync::oneshot;

use crate::backend::{Backend, BackendError, User};
use crate::mutex::lock;
use crate::store::DestRecord;

use super::error::JobError;
use super::shared::{AbortOnDrop, JobCtx, failed_dest, report_progress};
use super::{DestReport, JobReport, JobRun};

/// A user looked up at the provider.
type Lookup = Result<Option<User>, BackendError>;

/// The destinations of this run.
pub(super) struct Resolved {
    /// The job's destination names (dynamic sets expanded), in job-file order.
    pub(super) names: Vec<String>,
    /// True when the job has dynamic sets (their shrinking is guarded).
    pub(super) dynamic: bool,
    /// The destinations to sync, found at the provider.
    pub(super) active: Vec<User>,
    /// Destinations the state remembers that the job no longer names, with their target group.
    pub(super) removed: Vec<(User, String)>,
    /// How many destinations the state remembered (of this shard's, when sharded).
    pub(super) stored_count: usize,
    /// The source user's lookup (and its access token), made while the destinations were
    /// looked up; `None` when the run only cleans up.
    pub(super) source_user: Option<AbortOnDrop<Lookup>>,
    /// Ends once the source has its token: the destinations started ahead take theirs after.
    pub(super) source_ready: Option<oneshot::Receiver<()>>,
}

/// Looks up every destination of the job (failures reported in `report`, each its own), and
/// finds those to clean up. Refuses the job when the job file names users that cannot be synced.
pub(super) async fn resolve_destinations<B: Backend + 'static>(
    ctx: &JobCtx<'_, B>,
    report: &mut JobReport,
) -> Result<Resolved, JobError> {
    let (job, opts) = (ctx.job, ctx.opts);
    let (names, _) = destination_names(&**ctx.backend, job).await?;
    let stored = lock(ctx.store).destinations(&job.spec.name)?;
    {
        let mut all: Vec<String> = names.clone();
        all.extend(stored.iter().map(|d| d.user.clone()));
        all.push(job.source.clone());
        ctx.backend.prepare_users(&all).await;
    }
    let (mut source_user, source_ready) = look_up_source(ctx);
    let wanted = names
        .iter()
        .filter(|n| opts.only.as_ref().is_none_or(|o| o.contains(*n)));
    // Users are looked up `concurrency` at a time (one provider call each).
    let looked_up: Vec<(&String, Lookup)> = futures::stream::iter(wanted)
        .map(|name| async move { (name, ctx.backend.resolve_user(name).await) })
        .buffered(opts.concurrency.max(1))
        .collect()
        .await;
    refuse_bad_names(ctx, &looked_up, &mut source_user).await?;
    let mut active = vec![];
    // A shard syncs the users it owns; a name that finds no user is reported by one shard only,
    // the one its name falls to.
    let mine = |id: &str| opts.shard.is_none_or(|s| s.owns(id));
    for (name, r) in looked_up {
        let failed = match r {
            Ok(Some(u)) if mine(&u.id) => {
                active.push(u);
                continue;
            }
            Ok(Some(_)) => continue,
            _ if !mine(name) => continue,
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
    let stored_count = stored.iter().filter(|d| mine(&d.user_id)).count();
    let removed = removed_destinations(ctx, &names, &active, stored);
    if opts.removals_only {
        active.clear();
        report.destinations.clear();
    }
    Ok(Resolved {
        dynamic: job.destinations.iter().any(|d| is_dynamic_set(d)),
        names,
        active,
        removed,
        stored_count,
        source_user,
        source_ready,
    })
}

/// The source user is looked up, and gets ready for its reads (Google: its access token), while
/// the destinations are looked up: its first read follows them without a wait. Stopped if the
/// run ends first; its answer is used only if the source is read. The receiver ends when it is
/// ready (the destinations started ahead get ready after it, as the source is read first).
fn look_up_source<B: Backend + 'static>(
    ctx: &JobCtx<'_, B>,
) -> (Option<AbortOnDrop<Lookup>>, Option<oneshot::Receiver<()>>) {
    if ctx.opts.removals_only {
        return (None, None);
    }
    let (ready, ready_rx) = oneshot::channel::<()>();
    let backend = ctx.backend.clone();
    let name = ctx.job.source.clone();
    let task = AbortOnDrop(tokio::spawn(async move {
        let user = backend.resolve_user(&name).await;
        if let Ok(Some(u)) = &user {
            backend.prepare_access(u).await;
        }
        drop(ready);
        user
    }));
    (Some(task), Some(ready_rx))
}

/// A user the job file names that does not exist, or whose credentials the provider refuses, is
/// the configuration's fault: the job is refused before anything is written. Refused
/// credentials for the source too mean the account is at fault, not the users.
async fn refuse_bad_names<B: Backend>(
    ctx: &JobCtx<'_, B>,
    looked_up: &[(&String, Lookup)],
    source_user: &mut Option<AbortOnDrop<Lookup>>,
) -> Result<(), JobError> {
    let job = ctx.job;
    let named: BTreeSet<String> = job
        .destinations
        .iter()
        .filter(|d| !is_dynamic_set(d))
        .map(|d| d.to_lowercase())
        .collect();
    let problems: Vec<String> = looked_up
        .iter()
        .filter_map(|(name, r)| match r {
            Ok(None) if named.contains(&name.to_lowercase()) => {
                Some(format!("{name} (no such user)"))
            }
            Err(BackendError::Auth(why)) => Some(format!("{name}: {why}")),
            _ => None,
        })
        .collect();
    if problems.is_empty() {
        return Ok(());
    }
    let refused = |(_, r): &(&String, Lookup)| matches!(r, Err(BackendError::Auth(_)));
    if let Some(AbortOnDrop(task)) = source_user.as_mut()
        && looked_up.iter().any(refused)
        && let Ok(Err(e @ BackendError::Auth(_))) = task.await
    {
        return Err(JobError::SourceRead {
            user: job.source.clone(),
            group: job.group.clone(),
            source: e,
        });
    }
    Err(JobError::BadDestinations {
        job: job.spec.name.clone(),
        problems,
    })
}

/// The destinations the state remembers that the job no longer names (nor finds under another
/// name), with the target group they were synced to: they are cleaned up.
fn removed_destinations<B: Backend>(
    ctx: &JobCtx<'_, B>,
    names: &[String],
    active: &[User],
    stored: Vec<DestRecord>,
) -> Vec<(User, String)> {
    let active_ids: BTreeSet<&str> = active.iter().map(|u| u.id.as_str()).collect();
    let named: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    // A shard cleans up only the destinations it owns: one the job still names but another
    // shard now owns (the number of shards changed) is that shard's to sync, never removed.
    let shard = ctx.opts.shard;
    stored
        .into_iter()
        .filter(|d| shard.is_none_or(|s| s.owns(&d.user_id)))
        .filter(|d| !active_ids.contains(d.user_id.as_str()) && !named.contains(d.user.as_str()))
        .filter(|d| ctx.opts.only.as_ref().is_none_or(|o| o.contains(&d.user)))
        .map(|d| {
            let user = User {
                id: d.user_id,
                name: d.user,
            };
            (user, d.target_group)
        })
        .collect()
}

/// The prefixes of dynamic destination sets.
pub(super) const DYNAMIC_PREFIXES: [&str; 3] = ["group:", "ou:", "domain:"];

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
