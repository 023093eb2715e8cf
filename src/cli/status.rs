//! `groupsync status`: for every job, its last run and the state of each destination.

use std::io::Write;

use super::{Ctx, exit};
use crate::job::{self, Job};
use crate::schedule::Schedule;
use crate::store::{DestRecord, RunRecord, Store};

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Merge what the state of every shard says: the shards of --shard's N, or of the one N
    /// whose state files are found
    #[arg(long)]
    pub all_shards: bool,
}

/// The job files that can be read, each one that cannot named on stderr; the exit code says
/// whether any could not (2).
pub(super) fn readable_jobs(ctx: &Ctx) -> anyhow::Result<(Vec<Job>, u8)> {
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
    Ok((jobs, code))
}

pub fn status(ctx: &Ctx, out: &mut dyn Write) -> anyhow::Result<u8> {
    let store = crate::mutex::lock(&ctx.store);
    let (jobs, code) = readable_jobs(ctx)?;
    let mut all = vec![];
    for j in &jobs {
        let st = JobStatus::of(&store, j)?;
        if ctx.json {
            all.push(st.json());
        } else {
            st.write(out)?;
        }
    }
    if ctx.json {
        serde_json::to_writer_pretty(&mut *out, &all)?;
        writeln!(out)?;
    }
    Ok(code)
}

/// One job as `status` shows it (from one state database).
pub(super) struct JobStatus<'j> {
    pub(super) job: &'j Job,
    pub(super) last: Option<RunRecord>,
    pub(super) last_ok: Option<RunRecord>,
    pub(super) dests: Vec<DestRecord>,
    pub(super) sched: Schedule,
    /// When `groupsync serve` runs the job next: from its last run and its schedule.
    pub(super) next: String,
    pub(super) active: Vec<String>,
}

impl<'j> JobStatus<'j> {
    pub(super) fn of(store: &Store, j: &'j Job) -> anyhow::Result<Self> {
        let last = store.runs(Some(&j.name), 1)?.into_iter().next();
        let last_ok = store
            .runs(Some(&j.name), 50)?
            .into_iter()
            .find(|r| r.outcome == "ok");
        let dests = store.destinations(&j.name)?;
        let last_start = match store.schedule_get(&j.name)? {
            (Some(t), _) => Some(t),
            _ => last.as_ref().map(|r| r.started_at.clone()),
        };
        let last_start = last_start
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&chrono::Utc));
        let sched = j.schedule();
        let next = sched
            .due(last_start, chrono::Utc::now())
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        Ok(JobStatus {
            job: j,
            last,
            last_ok,
            dests,
            sched,
            next,
            active: j.effective_destinations(),
        })
    }

    /// Destinations of the job that no run has reached yet.
    fn never(&self) -> Vec<&String> {
        self.active
            .iter()
            .filter(|u| !self.dests.iter().any(|d| &d.user == *u))
            .collect()
    }

    pub(super) fn json(&self) -> serde_json::Value {
        let j = self.job;
        serde_json::json!({
            "job": j.name,
            "tag": j.tag,
            "enabled": j.enabled,
            "last_run": self.last,
            "last_success_at": self.last_ok.as_ref().and_then(|r| r.finished_at.clone()),
            "next_run_at": self.next,
            "schedule": self.sched.pattern,
            "timezone": self.sched.tz.name(),
            "destinations": self.dests.iter().map(|d| serde_json::json!({
                "user": d.user,
                "copies": d.copies,
                "last_outcome": d.last_outcome,
                "last_success_at": d.last_success_at,
                "last_error": d.last_error,
                "pending_removal": !self.active.contains(&d.user),
            })).collect::<Vec<_>>(),
            "never_synced": self.never(),
        })
    }

    pub(super) fn write(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let j = self.job;
        let state = if j.enabled { "" } else { " [disabled]" };
        match &self.last {
            Some(r) => writeln!(
                out,
                "{} ({}){state}: last run #{} at {}: {} (created {}, updated {}, deleted {}, moved {}, {} of {} destinations failed)",
                j.name,
                j.tag,
                r.id,
                r.started_at,
                r.outcome,
                r.created,
                r.updated,
                r.deleted,
                r.moved,
                r.failed,
                r.destinations
            )?,
            None => writeln!(out, "{} ({}){state}: never run", j.name, j.tag)?,
        }
        if let Some(m) = self.last.as_ref().and_then(|r| r.message.as_ref()) {
            writeln!(out, "  {m}")?;
        }
        if j.enabled {
            writeln!(
                out,
                "  next run (groupsync serve): {} ({} {})",
                self.next,
                self.sched.pattern,
                self.sched.tz.name()
            )?;
        }
        for d in &self.dests {
            let pending = if self.active.contains(&d.user) {
                ""
            } else {
                " (removed from job; cleaned up at the next run)"
            };
            let err = d
                .last_error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            writeln!(
                out,
                "  {}: {}, last {}{err}{pending}",
                d.user,
                super::output::plural(d.copies as usize, "copy", "copies"),
                d.last_outcome.as_deref().unwrap_or("not finished")
            )?;
        }
        for u in self.never() {
            writeln!(out, "  {u}: not synced yet")?;
        }
        Ok(())
    }
}
