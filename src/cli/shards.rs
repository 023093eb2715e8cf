//! `groupsync status --all-shards`: what the state databases of every shard say, merged: per job,
//! each shard's last run and every destination with the shard that keeps it. It reads the
//! shards' databases only; it must not write to them.

use std::collections::BTreeSet;
use std::io::Write;

use super::status::JobStatus;
use super::{Ctx, usage};
use crate::job;
use crate::shard::{self, Shard};
use crate::store::Store;

/// The shards whose state to merge: those of `--shard`'s N, or of the one N found.
fn shard_stores(ctx: &Ctx) -> anyhow::Result<Vec<(Shard, Store)>> {
    let configured = &ctx.configured_state;
    let files = shard::state_files(configured, ctx.shard.map(|s| s.count));
    let counts: BTreeSet<u32> = files.iter().map(|(s, _)| s.count).collect();
    match counts.len() {
        0 => {
            return Err(usage(format!(
                "no shard's state found next to {} (a shard's is named like {})",
                configured.display(),
                Shard { index: 0, count: 2 }.path(configured).display()
            )));
        }
        1 => {}
        _ => {
            let list: Vec<String> = counts.iter().map(|n| format!("0/{n}")).collect();
            return Err(usage(format!(
                "state files of shards of several counts are next to {} ({} shards): say which with --shard, e.g. --shard {}",
                configured.display(),
                counts
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                list.join(" or --shard ")
            )));
        }
    }
    files
        .into_iter()
        .map(|(s, path)| Ok((s, Store::open(&path)?)))
        .collect()
}

pub fn all_shards(ctx: &Ctx, out: &mut dyn Write) -> anyhow::Result<u8> {
    let stores = shard_stores(ctx)?;
    let count = stores.first().map(|(s, _)| s.count).unwrap_or(0);
    if stores.len() < count as usize {
        let have: Vec<String> = stores.iter().map(|(s, _)| s.to_string()).collect();
        eprintln!(
            "note: {} of {count} shards have a state yet ({})",
            stores.len(),
            have.join(", ")
        );
    }
    let (jobs, code) = super::status::readable_jobs(ctx)?;
    let mut all = vec![];
    for j in &jobs {
        let per: Vec<(Shard, JobStatus<'_>)> = stores
            .iter()
            .map(|(s, store)| Ok((*s, JobStatus::of(store, j)?)))
            .collect::<anyhow::Result<_>>()?;
        if ctx.json {
            all.push(merged_json(j, &per));
        } else {
            write_merged(j, &per, out)?;
        }
    }
    if ctx.json {
        serde_json::to_writer_pretty(&mut *out, &all)?;
        writeln!(out)?;
    }
    Ok(code)
}

/// The job's destinations no shard has synced yet.
fn never_synced(j: &job::Job, per: &[(Shard, JobStatus<'_>)]) -> Vec<String> {
    let synced: BTreeSet<&str> = per
        .iter()
        .flat_map(|(_, st)| st.dests.iter().map(|d| d.user.as_str()))
        .collect();
    j.effective_destinations()
        .into_iter()
        .filter(|u| !synced.contains(u.as_str()))
        .collect()
}

fn merged_json(j: &job::Job, per: &[(Shard, JobStatus<'_>)]) -> serde_json::Value {
    let shards: Vec<serde_json::Value> = per
        .iter()
        .map(|(s, st)| {
            let mut v = st.json();
            serde_json::json!({
                "shard": s.to_string(),
                "last_run": v["last_run"].take(),
                "last_success_at": v["last_success_at"].take(),
                "next_run_at": v["next_run_at"].take(),
            })
        })
        .collect();
    let destinations: Vec<serde_json::Value> = per
        .iter()
        .flat_map(|(s, st)| {
            let mut v = st.json();
            let list = v["destinations"].take();
            let shard = s.to_string();
            list.as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |mut d| {
                    d["shard"] = serde_json::json!(shard);
                    d
                })
        })
        .collect();
    serde_json::json!({
        "job": j.name,
        "tag": j.tag,
        "enabled": j.enabled,
        "schedule": j.schedule().pattern,
        "timezone": j.schedule().tz.name(),
        "shards": shards,
        "destinations": destinations,
        "never_synced": never_synced(j, per),
    })
}

fn write_merged(
    j: &job::Job,
    per: &[(Shard, JobStatus<'_>)],
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let state = if j.enabled { "" } else { " [disabled]" };
    writeln!(out, "{} ({}){state}: {} shards", j.name, j.tag, per.len())?;
    for (s, st) in per {
        let mut text = Vec::new();
        st.write(&mut text)?;
        let text = String::from_utf8_lossy(&text);
        let mut lines = text.lines();
        if let Some(first) = lines.next() {
            // The job's own line, as the shard saw it: from its last run on.
            let run = first.split_once(": ").map_or(first, |(_, r)| r);
            writeln!(out, "  shard {s}: {run}")?;
        }
        for l in lines.filter(|l| !l.contains("not synced yet")) {
            writeln!(out, "  {l}")?;
        }
    }
    for u in never_synced(j, per) {
        writeln!(out, "  {u}: not synced yet")?;
    }
    Ok(())
}
