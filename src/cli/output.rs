//! Human-readable output of run and plan reports (stdout). Stable wording: tests snapshot it.

use std::io::Write;

use crate::engine::{DestReport, JobReport, Outcome};
use crate::job::Job;
use crate::plan::{DeleteReason, Op, Plan};

pub(super) fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// One line summing up a plan.
pub fn plan_summary(p: &Plan, job: &Job) -> String {
    let mut parts = vec![];
    for op in &p.ops {
        if let Op::CreateGroup { name } = op {
            parts.push(format!("create group {name:?}"));
        }
    }
    let c = p.count("create") + p.count("recreate");
    if c > 0 {
        parts.push(format!("create {c}"));
    }
    let u = p.count("update");
    if u > 0 {
        parts.push(format!("update {u}"));
    }
    let d = p.count("delete");
    if d > 0 {
        parts.push(format!("delete {d}"));
    }
    let m = p.count("move-to-default");
    if m > 0 {
        parts.push(format!(
            "move {} to \"My Contacts\"",
            plural(m, "own contact", "own contacts")
        ));
    }
    if p.count("delete-group") > 0 {
        parts.push(format!("delete group {:?}", job.target_group));
    }
    if parts.is_empty() {
        if p.removal {
            return "nothing to clean up".into();
        }
        return format!("up to date ({})", plural(p.unchanged, "copy", "copies"));
    }
    let mut s = parts.join(", ");
    if !p.removal && p.unchanged > 0 {
        s.push_str(&format!("; {} unchanged", p.unchanged));
    }
    if p.untouched > 0 {
        s.push_str(&format!(
            "; {} left alone",
            plural(
                p.untouched,
                "contact not made by this job",
                "contacts not made by this job"
            )
        ));
    }
    if p.held > 0 {
        s.push_str(&format!("; {} held (source unreadable)", p.held));
    }
    s
}

fn op_line(op: &Op) -> Option<String> {
    Some(match op {
        Op::CreateGroup { .. } | Op::DeleteGroup { .. } => return None,
        Op::Create {
            name,
            recreate: false,
            ..
        } => format!("create    {name}"),
        Op::Create {
            name,
            recreate: true,
            ..
        } => format!("recreate  {name} (deleted at the destination)"),
        Op::Update(u) => format!("update    {}", u.name),
        Op::Delete(d) => {
            let name = &d.name;
            let why = match d.reason {
                DeleteReason::SourceGone => "no longer in the source group",
                DeleteReason::Duplicate => "duplicate copy",
                DeleteReason::Orphan => "tagged copy without source id",
                DeleteReason::DestinationRemoved => "destination removed from job",
            };
            format!("delete    {name} ({why})")
        }
        Op::MoveToDefault { contact_id, .. } => {
            format!("move      {contact_id} to \"My Contacts\" (the user's own contact)")
        }
        Op::DeleteTrashed(t) => {
            let copies = plural(t.copies, "copy", "copies");
            format!("delete    {copies} (destination removed from job)")
        }
    })
}

fn dest_line(d: &DestReport, job: &Job, dry_run: bool) -> String {
    let who = if d.removal {
        format!("{} (removed from job)", d.user)
    } else {
        d.user.clone()
    };
    if let Some(s) = &d.stopped {
        return format!("  {who}: STOPPED: {s}");
    }
    let planned = d
        .plan
        .as_ref()
        .map(|p| plan_summary(p, job))
        .unwrap_or_default();
    match (&d.error, dry_run) {
        (Some(e), _) if d.plan.is_none() => format!("  {who}: FAILED: {e}"),
        (Some(e), _) => format!("  {who}: FAILED after {} changes: {e}", total(d)),
        (None, true) => format!("  {who}: {planned}"),
        (None, false) => {
            let a = d.applied;
            if a.created + a.updated + a.deleted + a.moved == 0 {
                format!("  {who}: {planned}")
            } else {
                format!(
                    "  {who}: created {}, updated {}, deleted {}, moved {}",
                    a.created, a.updated, a.deleted, a.moved
                )
            }
        }
    }
}

fn total(d: &DestReport) -> i64 {
    d.applied.created + d.applied.updated + d.applied.deleted + d.applied.moved
}

/// Prints a job's report: a header, a line per destination, and for plans the operations.
pub fn print_report(r: &JobReport, job: &Job, out: &mut dyn Write) -> std::io::Result<()> {
    let what = if r.dry_run { "plan" } else { "run" };
    let outcome = match r.outcome {
        Outcome::Ok => "ok",
        Outcome::Failed => "some destinations failed",
        Outcome::Stopped => "stopped by a safety limit",
        Outcome::Error => "error",
        Outcome::Invalid => "refused: the job's configuration is at fault",
        Outcome::Interrupted => "interrupted",
    };
    let mut src = format!(
        "source {}/{:?}: {}",
        job.source,
        job.group,
        plural(r.source_contacts, "contact", "contacts")
    );
    if r.source_filtered_out > 0 {
        src.push_str(&format!(" ({} filtered out)", r.source_filtered_out));
    }
    if r.source_came_back > 0 {
        src.push_str(&format!(
            " ({} came through this job, not copied again)",
            r.source_came_back
        ));
    }
    if r.source_read {
        writeln!(out, "{what} {} ({}): {outcome}; {src}", r.job, r.tag)?;
    } else {
        writeln!(out, "{what} {} ({}): {outcome}", r.job, r.tag)?;
    }
    for u in &r.source_unreadable {
        writeln!(
            out,
            "  source contact unreadable, its copies are left as they are: {u}"
        )?;
    }
    for n in &r.not_held {
        writeln!(out, "  source contact not held whole, its copies lack: {n}")?;
    }
    if let Some(m) = &r.message {
        writeln!(out, "  {m}")?;
    }
    if !r.purged.is_empty() {
        writeln!(
            out,
            "  state: purged {} and {} past their retention ([state] keep_trash_days, keep_log_days)",
            plural(r.purged.trash as usize, "trash entry", "trash entries"),
            plural(r.purged.log as usize, "change-log line", "change-log lines")
        )?;
    }
    for d in &r.destinations {
        writeln!(out, "{}", dest_line(d, job, r.dry_run))?;
        if r.dry_run
            && let Some(p) = &d.plan
        {
            for line in p.ops.iter().filter_map(op_line) {
                writeln!(out, "    {line}")?;
            }
        }
    }
    Ok(())
}
