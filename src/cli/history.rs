//! `groupsync history`: past runs, newest first.

use super::completions::job_names;
use clap_complete::engine::ArgValueCompleter;
use std::io::Write;

use super::{Ctx, exit};

#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// Only this job's runs
    #[arg(add = ArgValueCompleter::new(job_names))]
    pub name: Option<String>,
    /// How many runs to show
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
}

pub fn history(ctx: &Ctx, args: &HistoryArgs, out: &mut dyn Write) -> anyhow::Result<u8> {
    if let Some(name) = &args.name {
        super::known_job(ctx, name)?;
    }
    let runs = crate::mutex::lock(&ctx.store).runs(args.name.as_deref(), args.limit)?;
    if ctx.json {
        serde_json::to_writer_pretty(&mut *out, &runs)?;
        writeln!(out)?;
        return Ok(exit::OK);
    }
    writeln!(
        out,
        "run\tjob\tstarted\tfinished\toutcome\tdests\tfailed\tcreated\tupdated\tdeleted\tmoved"
    )?;
    for r in runs {
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            r.id,
            r.job,
            r.started_at,
            r.finished_at.as_deref().unwrap_or("-"),
            r.outcome,
            r.destinations,
            r.failed,
            r.created,
            r.updated,
            r.deleted,
            r.moved
        )?;
    }
    Ok(exit::OK)
}
