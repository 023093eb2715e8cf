//! `groupsync check`: the configuration, the provider set-up (for Google: the admin's delegated
//! token, the scopes, the domains), every job file, and that every user and group a job names
//! exists and may be written (for Google: a delegated token per user), and that no jobs feed
//! each other in a cycle. Dynamic destination sets are read. One line per finding on stdout (`ok`, `note` or `error`, a tab, the finding and
//! its fix); exit 2 if anything is wrong. It changes nothing.

use futures::StreamExt;
use std::io::Write;

use super::{Ctx, exit};
use crate::backend::{Backend, BackendError};
use crate::engine::{self, JobError};
use crate::job;

/// Destination users checked at once.
const CONCURRENCY: usize = 8;

pub async fn check<B: Backend>(ctx: &Ctx, backend: &B, w: &mut dyn Write) -> anyhow::Result<u8> {
    let mut findings = Report::default();
    let code = check_all(ctx, backend, &mut findings).await?;
    if ctx.json {
        serde_json::to_writer_pretty(&mut *w, &findings.lines)?;
        writeln!(w)?;
    } else {
        for f in &findings.lines {
            writeln!(w, "{}\t{}", f.level, f.text)?;
        }
    }
    Ok(code)
}

/// One finding: `ok`, `note` or `error`, and what it is about (with its fix).
#[derive(Debug, serde::Serialize)]
struct Line {
    level: &'static str,
    text: String,
}

/// What `check` found, in order.
#[derive(Default)]
struct Report {
    lines: Vec<Line>,
}

impl Report {
    fn add(&mut self, level: &'static str, text: String) {
        self.lines.push(Line { level, text });
    }
}

async fn check_all<B: Backend>(ctx: &Ctx, backend: &B, out: &mut Report) -> anyhow::Result<u8> {
    let mut problems = 0;
    out.add("ok", format!("config {}", ctx.config.path.display()));
    out.add("ok", format!("state {}", ctx.config.state.display()));
    let setup = backend.check_setup().await;
    let setup_failed = setup.iter().any(|r| r.is_err());
    for r in setup {
        match r {
            Ok(s) => out.add("ok", format!("{}: {s}", backend.kind())),
            Err(s) => {
                out.add("error", format!("{}: {s}", backend.kind()));
                problems += 1;
            }
        }
    }
    if setup_failed {
        // Every user check would fail the same way.
        return Ok(exit::USAGE);
    }
    let all: Vec<job::Job> = job::load_all(&ctx.config.jobs_dir)?
        .into_iter()
        .flatten()
        .collect();
    let (nodes, cycles) = crate::feeds::job_cycles(backend, all.iter().cloned(), &[]).await;
    for c in &cycles {
        out.add("error", c.describe(&nodes));
        problems += 1;
    }
    for j in job::load_all(&ctx.config.jobs_dir)? {
        match j {
            Ok(j) => problems += check_job(ctx, backend, &j, out).await?,
            Err(e) => {
                out.add("error", format!("{e}"));
                problems += 1;
            }
        }
    }
    Ok(if problems > 0 { exit::USAGE } else { exit::OK })
}

/// What is wrong with a job, and what is worth knowing about it.
#[derive(Default)]
struct Findings {
    bad: Vec<String>,
    notes: Vec<String>,
}

/// Checks one job and writes its findings; returns how many problems it has.
async fn check_job<B: Backend>(
    ctx: &Ctx,
    backend: &B,
    j: &job::Job,
    out: &mut Report,
) -> anyhow::Result<usize> {
    let mut f = Findings::default();
    if let Err(why) = backend.check_group_name(&j.target_group) {
        f.bad
            .push(format!("target_group {:?}: {why}", j.target_group));
    }
    check_source(backend, j, &mut f).await;
    let names = destinations(backend, j, &mut f).await;
    let usable = check_destinations(backend, &names, &mut f).await;
    if let Some(tag) = crate::mutex::lock(&ctx.store).job_tag(&j.name)?
        && tag != j.tag
    {
        f.bad.push(format!(
            "tag {} differs from the tag {tag} the job was created with; tags must never be edited",
            j.tag
        ));
    }
    let path = j.path.display().to_string();
    for n in &f.notes {
        out.add("note", format!("{path}: {n}"));
    }
    if f.bad.is_empty() {
        let n = super::output::plural(usable, "destination", "destinations");
        out.add("ok", format!("job {} ({n})", j.name));
    }
    for b in &f.bad {
        out.add("error", format!("{path}: {b}"));
    }
    Ok(f.bad.len())
}

/// The source user exists, may be read, and has the group (by its exact name).
async fn check_source<B: Backend>(backend: &B, j: &job::Job, f: &mut Findings) {
    let bad = &mut f.bad;
    match backend.resolve_user(&j.source).await {
        Ok(None) => bad.push(format!("source user {:?} not found", j.source)),
        Err(e) => bad.push(format!("source user {}: {}", j.source, describe(&e))),
        Ok(Some(u)) => {
            if let Err(e) = backend.check_access(&u).await {
                bad.push(format!("source user {}: {e}", j.source));
                return;
            }
            match backend.find_group(&u, &j.group, None).await {
                Ok(Some(_)) => {}
                Ok(None) => bad.push(format!(
                    "source group {:?} not found for user {} (the name must match exactly)",
                    j.group, j.source
                )),
                Err(e) => bad.push(format!("source group {:?} of {}: {e}", j.group, j.source)),
            }
        }
    }
}

/// Destinations as a run sees them: plain names, and the members of dynamic sets as they are
/// now, exclusions applied.
async fn destinations<B: Backend>(backend: &B, j: &job::Job, f: &mut Findings) -> Vec<String> {
    match engine::destination_names(backend, &j.to_run()).await {
        Ok((names, sets)) => {
            for (set, n) in sets {
                f.notes.push(format!("{set}: {n} users"));
            }
            names
        }
        Err(JobError::Destinations { source, .. }) => {
            f.bad.push(source.to_string());
            vec![]
        }
        Err(e) => {
            f.bad.push(e.to_string());
            vec![]
        }
    }
}

/// Each destination exists and may be written (`CONCURRENCY` at once); returns how many may.
async fn check_destinations<B: Backend>(backend: &B, names: &[String], f: &mut Findings) -> usize {
    backend.prepare_users(names).await;
    let results: Vec<(String, Result<(), BackendError>, bool)> = futures::stream::iter(names)
        .map(|d| async move {
            match backend.resolve_user(d).await {
                Ok(Some(u)) => (d.clone(), backend.check_access(&u).await, true),
                Ok(None) => (
                    d.clone(),
                    Err(BackendError::Invalid(format!(
                        "invalid destination user: {d} (no such user)"
                    ))),
                    false,
                ),
                Err(e) => (d.clone(), Err(e), false),
            }
        })
        .buffered(CONCURRENCY)
        .collect()
        .await;
    let mut usable = 0;
    for (d, r, found) in results {
        match r {
            Ok(()) => usable += 1,
            Err(BackendError::Skipped(why)) => f.notes.push(format!("{d}: skipped, {why}")),
            Err(e) if found => f.bad.push(format!("destination {d}: {e}")),
            Err(e) => f.bad.push(describe(&e)),
        }
    }
    usable
}

fn describe(e: &BackendError) -> String {
    match e {
        BackendError::Skipped(why) => format!("skipped: {why}"),
        e => e.to_string(),
    }
}
