//! `groupsync plan` and `groupsync run`: pick the jobs, run them through the engine, print the
//! reports. `plan` is `run --dry-run`: it reads everything and writes nothing.

use super::completions::job_names;
use clap_complete::engine::ArgValueCompleter;
use std::io::Write;
use std::sync::Arc;

use super::{Ctx, exit, output, progress, usage};
use crate::backend::Backend;
use crate::engine::{self, JobReport, RunOptions};
use crate::job::{self, Job};
use crate::serve::AfterRun;

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Jobs to plan (default: every enabled job)
    #[arg(add = ArgValueCompleter::new(job_names))]
    pub names: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Jobs to run (default: every enabled job)
    #[arg(add = ArgValueCompleter::new(job_names))]
    pub names: Vec<String>,
    /// Show what would be done, change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Go past the safety limits (deletion limit, empty-source guard)
    #[arg(long)]
    pub force: bool,
}

/// The jobs named, or every enabled job. Broken job files are reported; with names given, a
/// broken or missing one is an error.
pub fn select_jobs(ctx: &Ctx, names: &[String]) -> anyhow::Result<(Vec<Job>, bool)> {
    if !names.is_empty() {
        let mut jobs = vec![];
        for n in names {
            jobs.push(job::load_named(&ctx.config.jobs_dir, n)?);
        }
        return Ok((jobs, false));
    }
    let mut broken = false;
    let mut jobs = vec![];
    for j in job::load_all(&ctx.config.jobs_dir)? {
        match j {
            Ok(j) if j.enabled => jobs.push(j),
            Ok(_) => {}
            Err(e) => {
                eprintln!("error: {e}");
                broken = true;
            }
        }
    }
    Ok((jobs, broken))
}

/// Runs jobs and prints their reports; returns the worst exit code.
pub async fn run_jobs<B: Backend + 'static>(
    ctx: &Ctx,
    backend: &Arc<B>,
    jobs: &[Job],
    opts: &RunOptions,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let mut code = exit::OK;
    let mut reports = vec![];
    let hooks = ctx.hooks();
    let refused = feeding_cycles(ctx, backend, jobs).await?;
    for (k, j) in jobs.iter().enumerate() {
        if ctx.interrupted() {
            let left: Vec<&str> = jobs[k..].iter().map(|j| j.name.as_str()).collect();
            eprintln!("interrupted: not run: {}", left.join(", "));
            break;
        }
        let report = match refused.get(&j.name) {
            Some(why) => engine::refuse_job(&ctx.store, &j.to_run(), opts.dry_run, why.clone()),
            None => {
                let (bar, progress) = progress::job_bar(ctx, j).unzip();
                let opts = &RunOptions {
                    progress,
                    ..opts.clone()
                };
                let report = engine::run_job(backend, &ctx.store, &j.to_run(), opts).await;
                if let Some(b) = bar {
                    b.finish_and_clear();
                }
                report
            }
        };
        if !opts.dry_run {
            hooks.after_run(&report).await;
        }
        code = worst(code, report.exit_code());
        if !ctx.json {
            output::print_report(&report, j, out)?;
        }
        reports.push(report);
    }
    if ctx.json {
        serde_json::to_writer_pretty(&mut *out, &reports)?;
        writeln!(out)?;
    }
    for r in &reports {
        if let Some(m) = &r.message {
            eprintln!(
                "{}: {}: {m}",
                r.job,
                match r.outcome {
                    engine::Outcome::Stopped => "stopped",
                    engine::Outcome::Invalid => "refused",
                    _ => "error",
                }
            );
        }
    }
    Ok(code)
}

/// The jobs among `jobs` that are in a cycle of jobs feeding each other (with every enabled
/// job of the jobs folder), each with what to tell: they are refused, the others run.
pub async fn feeding_cycles<B: Backend>(
    ctx: &Ctx,
    backend: &Arc<B>,
    jobs: &[Job],
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let all = job::load_all(&ctx.config.jobs_dir)?.into_iter().flatten();
    let (nodes, cycles) = crate::feeds::job_cycles(&**backend, all, jobs).await;
    let mut refused = std::collections::BTreeMap::new();
    for c in &cycles {
        for name in &c.0 {
            refused
                .entry(name.clone())
                .or_insert_with(|| c.describe(&nodes));
        }
    }
    Ok(refused)
}

/// Combines exit codes: a safety stop (3) outranks a failure (1), which outranks success.
pub fn worst(a: u8, b: u8) -> u8 {
    let rank = |c: u8| match c {
        exit::STOPPED => 3,
        exit::USAGE => 2,
        exit::FAILED => 1,
        _ => 0,
    };
    if rank(b) > rank(a) { b } else { a }
}

pub async fn plan<B: Backend + 'static>(
    ctx: &Ctx,
    backend: &Arc<B>,
    args: &PlanArgs,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let (jobs, broken) = select_jobs(ctx, &args.names)?;
    if jobs.is_empty() && !broken {
        return Err(usage(format!(
            "no enabled jobs in {}",
            ctx.config.jobs_dir.display()
        )));
    }
    let opts = RunOptions {
        dry_run: true,
        ..ctx.run_options()
    };
    let code = run_jobs(ctx, backend, &jobs, &opts, out).await?;
    Ok(if broken {
        worst(code, exit::USAGE)
    } else {
        code
    })
}

pub async fn run<B: Backend + 'static>(
    ctx: &Ctx,
    backend: &Arc<B>,
    args: &RunArgs,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let (jobs, broken) = select_jobs(ctx, &args.names)?;
    if jobs.is_empty() && !broken {
        eprintln!("no enabled jobs in {}", ctx.config.jobs_dir.display());
        if ctx.json {
            writeln!(out, "[]")?;
        }
        return Ok(exit::OK);
    }
    let _lock = if args.dry_run {
        None
    } else {
        Some(ctx.lock()?)
    };
    let opts = RunOptions {
        dry_run: args.dry_run,
        force: args.force,
        ..ctx.run_options()
    };
    let code = run_jobs(ctx, backend, &jobs, &opts, out).await?;
    Ok(if broken {
        worst(code, exit::USAGE)
    } else {
        code
    })
}

/// Runs one job with options, its after-run hooks included; the report is the caller's to print.
pub async fn run_quietly<B: Backend + 'static>(
    ctx: &Ctx,
    backend: &Arc<B>,
    job: &Job,
    opts: &RunOptions,
) -> JobReport {
    let report = engine::run_job(backend, &ctx.store, &job.to_run(), opts).await;
    if !opts.dry_run {
        ctx.hooks().after_run(&report).await;
    }
    if let Some(m) = &report.message {
        eprintln!("{}: {m}", report.job);
    }
    report
}
