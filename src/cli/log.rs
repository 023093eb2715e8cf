//! `groupsync log JOB`: the per-contact change log: when, which run, which destination, what
//! was done to which contact, which properties changed, and the managed-content digest before
//! and after (equal digests mean equal copies).

use super::completions::job_names;
use clap_complete::engine::ArgValueCompleter;
use std::io::Write;

use super::{Ctx, exit};

#[derive(Debug, clap::Args)]
pub struct LogArgs {
    /// The job
    #[arg(add = ArgValueCompleter::new(job_names))]
    pub name: String,
    /// Only changes at this destination user
    #[arg(long)]
    pub dest: Option<String>,
    /// Only contacts whose name contains this (case-insensitive)
    #[arg(long)]
    pub contact: Option<String>,
    /// How many lines, newest first
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

fn short(d: &Option<String>) -> &str {
    d.as_deref()
        .map(|d| &d[..d.len().min(8)])
        .filter(|d| !d.is_empty())
        .unwrap_or("-")
}

pub fn log(ctx: &Ctx, args: &LogArgs, out: &mut dyn Write) -> anyhow::Result<u8> {
    // The job may have been deleted since; its history stays readable.
    super::known_job(ctx, &args.name)?;
    let changes = crate::mutex::lock(&ctx.store).changes(
        &args.name,
        args.dest.as_deref(),
        args.contact.as_deref(),
        args.limit,
    )?;
    if ctx.json {
        serde_json::to_writer_pretty(&mut *out, &changes)?;
        writeln!(out)?;
        return Ok(exit::OK);
    }
    writeln!(
        out,
        "when\trun\tuser\taction\tcontact\tfields\tbefore -> after"
    )?;
    for c in &changes {
        let what = match (c.action.as_str(), &c.detail) {
            ("delete", Some(why)) => format!("delete ({why})"),
            (a, _) => a.to_string(),
        };
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{} -> {}",
            c.at,
            c.run_id,
            c.user,
            what,
            c.name.as_deref().or(c.contact_id.as_deref()).unwrap_or("-"),
            if c.fields.is_empty() {
                "-".to_string()
            } else {
                c.fields.join(",")
            },
            short(&c.before),
            short(&c.after)
        )?;
    }
    Ok(exit::OK)
}
