//! `groupsync restore`: lists the trash (contacts deleted by groupsync, newest first), puts
//! entries back into the group they were deleted from, or empties it (`--purge`). The trash
//! also empties itself: entries older than `[state] keep_trash_days` are purged at every run.

use super::completions::job_names;
use clap_complete::engine::ArgValueCompleter;
use std::io::Write;

use super::{Ctx, exit, usage};
use crate::backend::{Backend, BackendExt};
use crate::card;
use crate::store::TrashRecord;

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// Trash entries to restore (ids from the listing)
    pub ids: Vec<i64>,
    /// Only entries of this job
    #[arg(long, add = ArgValueCompleter::new(job_names))]
    pub job: Option<String>,
    /// Only entries of this destination user
    #[arg(long)]
    pub dest: Option<String>,
    /// Only entries deleted by this run
    #[arg(long)]
    pub run: Option<i64>,
    /// Restore every entry the filters select (without it, the filters only narrow the listing)
    #[arg(long)]
    pub all: bool,
    /// Remove the tag from restored contacts, so they become the user's own and are never
    /// deleted again by the job (without it, a copy whose source is still gone is deleted again
    /// at the next run)
    #[arg(long)]
    pub untag: bool,
    /// Delete the entries the filters select from the trash for good, instead of restoring them
    #[arg(long, conflicts_with_all = ["ids", "all", "untag"])]
    pub purge: bool,
    /// With --purge: only entries deleted more than DAYS days ago
    #[arg(long, value_name = "DAYS", requires = "purge")]
    pub older_than: Option<u32>,
}

pub async fn restore<B: Backend>(
    ctx: &Ctx,
    backend: &B,
    args: &RestoreArgs,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    if let Some(job) = &args.job {
        super::known_job(ctx, job)?;
    }
    if args.purge {
        return purge(ctx, args, out);
    }
    let list = crate::mutex::lock(&ctx.store).trash_list(
        args.job.as_deref(),
        args.dest.as_deref(),
        args.run,
    )?;
    if args.ids.is_empty() && !args.all {
        if ctx.json {
            serde_json::to_writer_pretty(&mut *out, &list)?;
            writeln!(out)?;
        } else {
            writeln!(out, "id\tdeleted\trun\tjob\tuser\tgroup\treason\tname")?;
            for t in &list {
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    t.id, t.deleted_at, t.run_id, t.job, t.user, t.group, t.reason, t.name
                )?;
            }
        }
        return Ok(exit::OK);
    }
    let mut chosen = vec![];
    if args.all {
        chosen = list;
    }
    for id in &args.ids {
        // The store's lock is let go before `missing` takes it again.
        let found = crate::mutex::lock(&ctx.store).trash_get(*id)?;
        let t = found.ok_or_else(|| missing(ctx, *id))?;
        if t.restored_at.is_some() {
            return Err(usage(format!(
                "trash entry {id} was already restored at {}",
                t.restored_at.unwrap_or_default()
            )));
        }
        chosen.push(t);
    }
    let _lock = ctx.lock()?;
    put_back_all(ctx, backend, &chosen, args.untag, out).await
}

/// Puts the chosen entries back, one by one; prints what was restored (a line each, or one JSON
/// array), and says on stderr what could not be. Exit 1 if any failed.
async fn put_back_all<B: Backend>(
    ctx: &Ctx,
    backend: &B,
    chosen: &[TrashRecord],
    untag: bool,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let mut code = exit::OK;
    let mut done = vec![];
    for t in chosen {
        let restored = match put_back(backend, t, untag).await {
            Ok(id) => {
                crate::mutex::lock(&ctx.store).mark_restored(t.id)?;
                if !ctx.json {
                    writeln!(
                        out,
                        "restored {}\t{}\t{}/{}\t{id}",
                        t.id, t.name, t.user, t.group
                    )?;
                }
                Ok(id)
            }
            Err(e) => {
                eprintln!(
                    "error: restoring trash entry {} ({} of {}): {}",
                    t.id,
                    t.name,
                    t.user,
                    super::one_line(&e)
                );
                code = exit::FAILED;
                Err(super::one_line(&e))
            }
        };
        done.push(Restored::of(t, restored));
    }
    if ctx.json {
        serde_json::to_writer_pretty(&mut *out, &done)?;
        writeln!(out)?;
    }
    Ok(code)
}

/// One entry `restore ID…` or `restore --all` tried to put back (its `--json` output).
#[derive(serde::Serialize)]
struct Restored<'a> {
    id: i64,
    name: &'a str,
    user: &'a str,
    group: &'a str,
    /// The new contact's id; null when it could not be restored.
    contact_id: Option<String>,
    /// Why it could not be restored; null when it was.
    error: Option<String>,
}

impl<'a> Restored<'a> {
    fn of(t: &'a TrashRecord, r: Result<String, String>) -> Self {
        let (contact_id, error) = match r {
            Ok(id) => (Some(id), None),
            Err(e) => (None, Some(e)),
        };
        Restored {
            id: t.id,
            name: &t.name,
            user: &t.user,
            group: &t.group,
            contact_id,
            error,
        }
    }
}

/// Creates a trash entry's card again in the group it was deleted from (made again if gone);
/// returns the new contact's id.
async fn put_back<B: Backend>(backend: &B, t: &TrashRecord, untag: bool) -> anyhow::Result<String> {
    let mut c = card::parse(&t.payload)
        .map_err(|e| anyhow::anyhow!("trash entry {} is not a readable vCard: {e}", t.id))?;
    if untag {
        c = card::untag(&c);
    }
    let user = backend
        .resolve_user(&t.user)
        .await?
        .ok_or_else(|| anyhow::anyhow!("user {} no longer exists", t.user))?;
    let group = match backend.find_group(&user, &t.group, None).await? {
        Some(g) => g,
        None => backend.create_group(&user, &t.group).await?,
    };
    Ok(backend.create_contact(&user, &group, &c).await?.id)
}

/// Why a trash entry is not there: purged (with how long the trash keeps entries), or never
/// made.
fn missing(ctx: &Ctx, id: i64) -> anyhow::Error {
    match crate::mutex::lock(&ctx.store).trash_was_purged(id) {
        Ok(true) => usage(format!(
            "trash entry {id} was purged and cannot be restored (the trash keeps entries {} days: [state] keep_trash_days; or it was emptied with restore --purge)",
            ctx.config.retention.trash_days
        )),
        _ => usage(format!("no trash entry {id}")),
    }
}

/// `restore --purge`: the entries the filters select, deleted for good.
fn purge(ctx: &Ctx, args: &RestoreArgs, out: &mut dyn Write) -> anyhow::Result<u8> {
    let _lock = ctx.lock()?;
    let before = args
        .older_than
        .map(|d| chrono::Utc::now() - chrono::Duration::days(d.into()));
    let n = crate::mutex::lock(&ctx.store).purge_trash(
        args.job.as_deref(),
        args.dest.as_deref(),
        args.run,
        before,
    )?;
    if ctx.json {
        serde_json::to_writer_pretty(&mut *out, &serde_json::json!({ "purged": n }))?;
        writeln!(out)?;
    } else {
        writeln!(out, "purged {n} trash entries")?;
    }
    Ok(exit::OK)
}
