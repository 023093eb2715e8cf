//! `groupsync job …`: create, change, list, show and delete job files. Edits go through
//! `toml_edit` (comments and layout kept) and are checked before they are written: an unknown
//! user, a missing source group or a duplicate leaves the file exactly as it was.

use super::completions::job_names;
use clap::{Args, Subcommand};
use clap_complete::engine::ArgValueCompleter;
use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Arc;

use super::run::run_quietly;
use super::{Ctx, exit, usage};
use crate::backend::Backend;
use crate::engine::{JobReport, RunOptions};
use crate::job::{self, Job};

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Create a job file with a fresh tag, and run it at once (unless --no-run)
    New(NewJob),
    /// Add destination users to a job (synced at the next run, or at once with --now)
    AddDest {
        /// The job (its file is <jobs_dir>/NAME.toml)
        #[arg(add = ArgValueCompleter::new(job_names))]
        name: String,
        /// Users to add, as the provider names them (an email address; a vdir user folder), or
        /// a set read at every run (group:NAME, ou:PATH, domain:NAME)
        #[arg(required = true)]
        users: Vec<String>,
        /// Sync the new destinations now
        #[arg(long)]
        now: bool,
    },
    /// Remove destination users: their copies and group are removed at once (or at the next run
    /// with --defer); contacts they added themselves move to "My Contacts"
    RemoveDest {
        /// The job (its file is <jobs_dir>/NAME.toml)
        #[arg(add = ArgValueCompleter::new(job_names))]
        name: String,
        /// Users to remove, as the job file names them
        #[arg(required = true)]
        users: Vec<String>,
        /// Leave the cleanup to the next run
        #[arg(long)]
        defer: bool,
    },
    /// List jobs
    List,
    /// Show one job and what the state database knows of it
    Show {
        /// The job (its file is <jobs_dir>/NAME.toml)
        #[arg(add = ArgValueCompleter::new(job_names))]
        name: String,
    },
    /// Delete a job file; with --purge, first remove its copies and groups from every destination
    Delete {
        /// The job (its file is <jobs_dir>/NAME.toml)
        #[arg(add = ArgValueCompleter::new(job_names))]
        name: String,
        /// Clean up every destination, and forget the job's trash and change log, before deleting
        /// the job (without it, copies stay)
        #[arg(long)]
        purge: bool,
    },
}

/// What `job new` is given.
#[derive(Debug, Args)]
pub struct NewJob {
    /// Job name (the file is <jobs_dir>/NAME.toml)
    name: String,
    /// The user whose group is copied
    #[arg(long)]
    source: String,
    /// The source user's contact group to copy
    #[arg(long)]
    group: String,
    /// A destination user (repeat for several)
    #[arg(long = "dest", required = true)]
    dest: Vec<String>,
    /// Name of the group at the destinations (default: same as --group)
    #[arg(long)]
    target_group: Option<String>,
    /// Only write the job file; the first run happens with the next `groupsync run`
    #[arg(long)]
    no_run: bool,
}

pub async fn job<B: Backend + 'static>(
    ctx: &Ctx,
    backend: &Arc<B>,
    cmd: &JobCommand,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    match cmd {
        JobCommand::New(args) => new(ctx, backend, args, out).await,
        JobCommand::AddDest { name, users, now } => {
            add_dest(ctx, backend, name, users, *now, out).await
        }
        JobCommand::RemoveDest { name, users, defer } => {
            remove_dest(ctx, backend, name, users, *defer, out).await
        }
        JobCommand::List => list(ctx, out),
        JobCommand::Show { name } => show(ctx, name, out),
        JobCommand::Delete { name, purge } => delete(ctx, backend, name, *purge, out).await,
    }
}

/// Fails with "invalid destination user" for the first user the backend does not know.
async fn check_users<B: Backend + 'static>(
    backend: &Arc<B>,
    users: &[String],
) -> anyhow::Result<()> {
    for u in users {
        if crate::engine::is_dynamic_set(u) {
            crate::engine::check_dynamic_set(u).map_err(usage)?;
            let members = backend
                .expand_set(u)
                .await
                .map_err(|e| usage(e.to_string()))?;
            eprintln!("{u}: {} users now", members.len());
            continue;
        }
        if backend.resolve_user(u).await?.is_none() {
            return Err(usage(format!(
                "invalid destination user: {u} (no such user in the {} backend)",
                backend.kind()
            )));
        }
    }
    Ok(())
}

fn check_unique(users: &[String]) -> anyhow::Result<()> {
    let mut seen = BTreeSet::new();
    for u in users {
        if !seen.insert(u) {
            return Err(usage(format!("duplicate destination {u:?}")));
        }
    }
    Ok(())
}

async fn new<B: Backend + 'static>(
    ctx: &Ctx,
    backend: &Arc<B>,
    args: &NewJob,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let NewJob {
        name,
        source,
        group,
        dest: dests,
        target_group,
        no_run,
    } = args;
    let target_group = target_group.as_deref();
    job::check_name(name).map_err(usage)?;
    let path = job::job_path(&ctx.config.jobs_dir, name);
    if path.exists() {
        return Err(usage(format!(
            "job {name:?} already exists ({})",
            path.display()
        )));
    }
    check_unique(dests)?;
    if dests.iter().any(|d| d == source) {
        return Err(usage(format!(
            "the source user {source:?} cannot be its own destination"
        )));
    }
    let src = backend
        .resolve_user(source)
        .await?
        .ok_or_else(|| usage(format!("invalid source user: {source} (no such user)")))?;
    if backend.find_group(&src, group, None).await?.is_none() {
        return Err(usage(format!(
            "source group {group:?} not found for user {source}"
        )));
    }
    check_users(backend, dests).await?;
    let target = target_group.unwrap_or(group);
    backend.check_group_name(target).map_err(|why| {
        usage(format!(
            "target group {target:?}: {why}; nothing was written"
        ))
    })?;
    // A fresh tag, unlike any job file's or any the state database remembers.
    let mut taken: BTreeSet<String> = job::load_all(&ctx.config.jobs_dir)?
        .into_iter()
        .filter_map(|j| j.ok())
        .map(|j| j.tag)
        .collect();
    let tag = loop {
        let t = job::fresh_tag(&taken);
        if crate::mutex::lock(&ctx.store).job_with_tag(&t)?.is_none() {
            break t;
        }
        taken.insert(t);
    };
    let text = job::new_job_text(&tag, source, group, dests, target_group);
    let parsed = job::parse(&path, &text)?;
    refuse_cycles(ctx, backend, &parsed).await?;
    job::write_atomic(&path, &text)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    eprintln!("created job {name} ({tag}) in {}", path.display());
    if *no_run {
        return edit_done(ctx, &parsed, Edit::Created, None, out);
    }
    let _lock = ctx.lock()?;
    let report = run_quietly(ctx, backend, &parsed, &ctx.run_options()).await;
    edit_done(ctx, &parsed, Edit::Created, Some(report), out)
}

async fn add_dest<B: Backend + 'static>(
    ctx: &Ctx,
    backend: &Arc<B>,
    name: &str,
    users: &[String],
    now: bool,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let current = job::load_named(&ctx.config.jobs_dir, name)?;
    check_unique(users)?;
    for u in users {
        if *u == current.source {
            return Err(usage(format!(
                "the source user {u:?} cannot be its own destination"
            )));
        }
        if current.exclude.contains(u) {
            return Err(usage(format!(
                "{u:?} is in the exclude list of job {name}; remove it from `exclude` in {} first",
                current.path.display()
            )));
        }
    }
    check_users(backend, users).await?;
    let new_users: Vec<String> = users
        .iter()
        .filter(|u| !current.destinations.contains(u))
        .cloned()
        .collect();
    for u in users.iter().filter(|u| current.destinations.contains(u)) {
        eprintln!("{u} is already a destination of {name}");
    }
    let (job, text) = edited(&current, |t| job::add_destinations(t, &new_users))?;
    refuse_cycles(ctx, backend, &job).await?;
    job::write_atomic(&job.path, &text)?;
    eprintln!(
        "job {name}: added {}",
        if new_users.is_empty() {
            "nothing".to_string()
        } else {
            new_users.join(", ")
        }
    );
    let report = if now && !new_users.is_empty() {
        let _lock = ctx.lock()?;
        let opts = RunOptions {
            only: Some(new_users.iter().cloned().collect()),
            ..ctx.run_options()
        };
        Some(run_quietly(ctx, backend, &job, &opts).await)
    } else {
        None
    };
    edit_done(ctx, &job, Edit::Added(&new_users), report, out)
}

async fn remove_dest<B: Backend + 'static>(
    ctx: &Ctx,
    backend: &Arc<B>,
    name: &str,
    users: &[String],
    defer: bool,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let current = job::load_named(&ctx.config.jobs_dir, name)?;
    for u in users {
        if !current.destinations.contains(u) {
            return Err(usage(format!("{u:?} is not a destination of job {name}")));
        }
    }
    let job = edit(&current, |t| job::remove_destinations(t, users))?;
    eprintln!("job {name}: removed {}", users.join(", "));
    if defer {
        return edit_done(ctx, &job, Edit::Removed(users), None, out);
    }
    let _lock = ctx.lock()?;
    // The user may never have been synced (no state yet): record them so the cleanup finds them.
    remember_destinations(ctx, backend, &job, users).await?;
    let opts = RunOptions {
        only: Some(users.iter().cloned().collect()),
        removals_only: true,
        ..ctx.run_options()
    };
    let report = run_quietly(ctx, backend, &job, &opts).await;
    edit_done(ctx, &job, Edit::Removed(users), Some(report), out)
}

/// What a `job` command changed in a job file.
enum Edit<'a> {
    /// `job new`: the file was written.
    Created,
    Added(&'a [String]),
    Removed(&'a [String]),
}

/// After an edit: the run's report as text, or, with `--json`, one object (the job as it is now,
/// the users added or removed, if any, and the run's report or null). Returns the exit code.
fn edit_done(
    ctx: &Ctx,
    job: &Job,
    edit: Edit<'_>,
    report: Option<JobReport>,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let code = report.as_ref().map_or(exit::OK, JobReport::exit_code);
    if ctx.json {
        let mut v = serde_json::json!({ "job": job_json(job), "run": report });
        match edit {
            Edit::Created => {}
            Edit::Added(u) => v["added"] = serde_json::json!(u),
            Edit::Removed(u) => v["removed"] = serde_json::json!(u),
        }
        serde_json::to_writer_pretty(&mut *out, &v)?;
        writeln!(out)?;
    } else if let Some(r) = &report {
        super::output::print_report(r, job, out)?;
    }
    Ok(code)
}

/// Applies a text edit to a job file, checks the result, writes it atomically.
/// Applies a text edit to a job file and checks the result; `write` puts it in place.
fn edited(
    current: &Job,
    f: impl FnOnce(&str) -> Result<String, String>,
) -> anyhow::Result<(Job, String)> {
    let text = std::fs::read_to_string(&current.path)?;
    let new_text = f(&text).map_err(|e| usage(format!("{}: {e}", current.path.display())))?;
    let parsed = job::parse(&current.path, &new_text)?;
    Ok((parsed, new_text))
}

/// Applies a text edit to a job file, checks the result, writes it atomically.
fn edit(current: &Job, f: impl FnOnce(&str) -> Result<String, String>) -> anyhow::Result<Job> {
    let (parsed, text) = edited(current, f)?;
    job::write_atomic(&current.path, &text)?;
    Ok(parsed)
}

/// Refuses a job that would feed a cycle of jobs (see `feeds`), before its file is written.
async fn refuse_cycles<B: Backend + 'static>(
    ctx: &Ctx,
    backend: &Arc<B>,
    job: &Job,
) -> anyhow::Result<()> {
    let refused = super::run::feeding_cycles(ctx, backend, std::slice::from_ref(job)).await?;
    match refused.get(&job.name) {
        Some(why) => Err(usage(format!("{why}; nothing was written"))),
        None => Ok(()),
    }
}

fn list(ctx: &Ctx, out: &mut dyn Write) -> anyhow::Result<u8> {
    let mut code = exit::OK;
    let mut jobs = vec![];
    for j in job::load_all(&ctx.config.jobs_dir)? {
        match j {
            Ok(j) => jobs.push(j),
            Err(e) => {
                eprintln!("error: {e}");
                code = exit::USAGE;
            }
        }
    }
    if ctx.json {
        let v: Vec<_> = jobs.iter().map(job_json).collect();
        serde_json::to_writer_pretty(&mut *out, &v)?;
        writeln!(out)?;
    } else {
        for j in &jobs {
            writeln!(
                out,
                "{}\t{}\t{}\t{}/{}\t{}",
                j.name,
                if j.enabled { "enabled" } else { "disabled" },
                j.tag,
                j.source,
                j.group,
                super::output::plural(
                    j.effective_destinations().len(),
                    "destination",
                    "destinations"
                )
            )?;
        }
    }
    Ok(code)
}

fn job_json(j: &Job) -> serde_json::Value {
    serde_json::json!({
        "name": j.name,
        "file": j.path.display().to_string(),
        "tag": j.tag,
        "enabled": j.enabled,
        "source": j.source,
        "group": j.group,
        "target_group": j.target_group,
        "destinations": j.destinations,
        "exclude": j.exclude,
        "fields": j.fields,
        "filter": j.filter_text.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        "limits": j.limits,
        "schedule": j.schedule,
        "timezone": j.timezone,
    })
}

fn show(ctx: &Ctx, name: &str, out: &mut dyn Write) -> anyhow::Result<u8> {
    let j = job::load_named(&ctx.config.jobs_dir, name)?;
    let store = crate::mutex::lock(&ctx.store);
    let dests = store.destinations(&j.name)?;
    if ctx.json {
        let mut v = job_json(&j);
        v["synced_destinations"] = serde_json::to_value(&dests)?;
        serde_json::to_writer_pretty(&mut *out, &v)?;
        writeln!(out)?;
        return Ok(exit::OK);
    }
    writeln!(out, "job:          {}", j.name)?;
    writeln!(out, "file:         {}", j.path.display())?;
    writeln!(out, "tag:          {}", j.tag)?;
    writeln!(out, "enabled:      {}", j.enabled)?;
    writeln!(out, "source:       {} / {:?}", j.source, j.group)?;
    writeln!(out, "target group: {:?}", j.target_group)?;
    writeln!(out, "destinations: {}", j.destinations.join(", "))?;
    if !j.exclude.is_empty() {
        writeln!(out, "exclude:      {}", j.exclude.join(", "))?;
    }
    writeln!(
        out,
        "fields:       {}",
        j.fields
            .as_ref()
            .map(|f| f.join(", "))
            .unwrap_or_else(|| "all".into())
    )?;
    for (k, v) in &j.filter_text {
        writeln!(out, "filter:       {k} =~ {v}")?;
    }
    writeln!(
        out,
        "limits:       max_delete = {}, max_delete_percent = {}",
        j.limits.max_delete, j.limits.max_delete_percent
    )?;
    if let Some(s) = &j.schedule {
        writeln!(
            out,
            "schedule:     {s} ({})",
            j.timezone.as_deref().unwrap_or("UTC")
        )?;
    }
    for d in &dests {
        let pending = if j.effective_destinations().contains(&d.user) {
            ""
        } else {
            " (removed; cleaned up at the next run)"
        };
        writeln!(
            out,
            "synced:       {}: {}, last {}{}",
            d.user,
            super::output::plural(d.copies as usize, "copy", "copies"),
            d.last_outcome.as_deref().unwrap_or("never"),
            pending
        )?;
    }
    Ok(exit::OK)
}

async fn delete<B: Backend + 'static>(
    ctx: &Ctx,
    backend: &Arc<B>,
    name: &str,
    purge: bool,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let j = job::load_named(&ctx.config.jobs_dir, name)?;
    let _lock = ctx.lock()?;
    let mut report = None;
    if purge {
        remember_destinations(ctx, backend, &j, &j.destinations).await?;
        let mut emptied = j.clone();
        emptied.destinations.clear();
        let opts = RunOptions {
            removals_only: true,
            ..ctx.run_options()
        };
        let r = run_quietly(ctx, backend, &emptied, &opts).await;
        if !ctx.json {
            super::output::print_report(&r, &emptied, out)?;
        }
        let kept = r.destinations.iter().any(|d| d.error.is_some()) || r.message.is_some();
        let code = r.exit_code();
        if kept {
            eprintln!(
                "job {name} kept: some destinations could not be cleaned up; run `groupsync job delete {name} --purge` again"
            );
            deleted_json(ctx, &j, false, None, Some(r), out)?;
            return Ok(super::run::worst(code, exit::FAILED));
        }
        report = Some(r);
    }
    std::fs::remove_file(&j.path)?;
    let forgot = {
        let store = crate::mutex::lock(&ctx.store);
        store.forget_job(&j.name)?;
        // Its copies are gone: what the state kept about them goes too.
        purge
            .then(|| store.forget_job_history(&j.name))
            .transpose()?
    };
    let said = match forgot {
        Some(p) => format!(
            "; its trash ({} entries) and change log ({} lines) are forgotten",
            p.trash, p.log
        ),
        None => "; its copies stay at the destinations".to_string(),
    };
    eprintln!("deleted job {name} ({}){said}", j.path.display());
    let code = report.as_ref().map_or(exit::OK, JobReport::exit_code);
    deleted_json(ctx, &j, true, forgot, report, out)?;
    Ok(code)
}

/// With `--json`, what `job delete` did: whether the file is gone, what the state forgot, and
/// the cleanup run's report (or null).
fn deleted_json(
    ctx: &Ctx,
    j: &Job,
    deleted: bool,
    forgot: Option<crate::store::Purged>,
    report: Option<JobReport>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    if ctx.json {
        let v = serde_json::json!({
            "job": job_json(j),
            "deleted": deleted,
            "forgot": forgot,
            "run": report,
        });
        serde_json::to_writer_pretty(&mut *out, &v)?;
        writeln!(out)?;
    }
    Ok(())
}

/// Records `users` as destinations of `job` in the state (a user never synced has no row yet),
/// so that a cleanup run finds them.
async fn remember_destinations<B: Backend + 'static>(
    ctx: &Ctx,
    backend: &Arc<B>,
    job: &Job,
    users: &[String],
) -> anyhow::Result<()> {
    for u in users {
        if let Some(user) = backend.resolve_user(u).await? {
            crate::mutex::lock(&ctx.store).touch_destination(
                &job.name,
                &user.id,
                &user.name,
                &job.target_group,
            )?;
        }
    }
    Ok(())
}
