//! `bench_graph`: groupsync's Microsoft 365 backend against the fake identity platform and Graph
//! (`fake-graph`) with injected latency (25 ms per call by default), on named workloads:
//!
//! - W1 first fan-out of N contacts (10 % with a photo) to D mailboxes;
//! - W2 the first rerun (each folder's delta, taken when W1 made the folder, names W1's own
//!   writes, known by their change keys: nothing is fetched);
//! - W2b a second no-change rerun (the steady state of a daily job: one envelope a mailbox,
//!   its delta and the folder list that tells a folder a user deleted);
//! - W3 1 % of the source edited and 1 % of the copies edited by their users;
//! - W4 10 destinations removed from the job.
//!
//! The workloads build on each other, each a later day's run (the mailboxes' quota windows
//! start empty). Each is one `groupsync run` of the release binary
//! (`target/release/groupsync`, built first), so its wall time, CPU time and peak RSS are those
//! of the command an administrator runs; the fake runs in this process and counts HTTP requests
//! and Graph operations (a `$batch` is one request holding up to 20 operations). Printed per
//! workload: requests and operations per destination against the minimum the API allows, wall
//! time against the critical path under Outlook's limits, and peak RSS.
//!
//! Run: `cargo build --release --bins --examples && target/release/examples/bench_graph
//! --contacts 1000 --destinations 100` (`--workloads W1,W2b`, `--concurrency N`,
//! `--latency-ms N`). A measuring program, not a test: nothing here asserts.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use fake_graph::{FakeGraph, Options};

#[path = "common/spawn.rs"]
mod spawn;
use serde_json::json;
use spawn::{Spawner, groupsync_binary, spawner};

struct Args {
    contacts: usize,
    destinations: usize,
    concurrency: usize,
    latency_ms: u64,
    workloads: Vec<String>,
}

fn args() -> Args {
    let mut a = Args {
        contacts: 1000,
        destinations: 100,
        concurrency: 16,
        latency_ms: 25,
        workloads: ["W1", "W2", "W2b", "W3", "W4"].map(String::from).to_vec(),
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    for pair in v.chunks(2) {
        let next = pair.get(1).cloned().unwrap_or_default();
        match pair[0].as_str() {
            "--contacts" => a.contacts = next.parse().expect("--contacts N"),
            "--destinations" => a.destinations = next.parse().expect("--destinations N"),
            "--concurrency" => a.concurrency = next.parse().expect("--concurrency N"),
            "--latency-ms" => a.latency_ms = next.parse().expect("--latency-ms N"),
            "--workloads" => a.workloads = next.split(',').map(str::to_string).collect(),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn contact(i: usize) -> serde_json::Value {
    json!({
        "displayName": format!("Given{i} Family{i}"),
        "givenName": format!("Given{i}"),
        "surname": format!("Family{i}"),
        "emailAddresses": [{"address": format!("p{i}@partner.example"), "name": format!("Given{i}")}],
        "mobilePhone": format!("+1 555 {:04}", i % 10000),
        "companyName": format!("Partner {}", i % 50),
        "jobTitle": "Buyer",
        "businessAddress": {"street": format!("{i} Main St"), "city": "Springfield"},
        "personalNotes": format!("Account since {}", 2000 + i % 25),
    })
}

fn write_job(dir: &Path, dests: &[String]) -> anyhow::Result<()> {
    let d: Vec<String> = dests.iter().map(|d| format!("\"{d}\"")).collect();
    std::fs::write(
        dir.join("jobs/bench.toml"),
        format!(
            "tag = \"gSync777\"\nsource = \"source@example.com\"\ngroup = \"Directory\"\ndestinations = [{}]\n",
            d.join(", ")
        ),
    )?;
    Ok(())
}

/// The rig: the fake with the source's folder and the destinations, and the config.
fn set_up(a: &Args, dir: &Path) -> anyhow::Result<(FakeGraph, Vec<String>, Vec<String>)> {
    let fake = FakeGraph::start(Options {
        latency: Duration::from_millis(a.latency_ms),
        ..Options::default()
    });
    std::fs::create_dir_all(dir.join("jobs"))?;
    let secret = dir.join("secret");
    std::fs::write(&secret, fake.client_secret())?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))?;
    }
    std::fs::write(
        dir.join("groupsync.toml"),
        format!(
            "state = \"state.db\"\njobs_dir = \"jobs\"\n[backend]\nkind = \"graph\"\ntenant = \"{t}\"\nclient_id = \"{c}\"\nclient_secret_file = \"secret\"\ngraph_url = \"{u}\"\nlogin_url = \"{u}\"\nconcurrency = {n}\nrequests_per_minute = 1000000\n",
            t = fake.tenant(),
            c = fake.client_id(),
            u = fake.url,
            n = a.concurrency
        ),
    )?;
    fake.add_user("source@example.com");
    let mut ids = vec![];
    fake.with_mailbox("source@example.com", |m| {
        let f = m.add_folder("Directory");
        for i in 0..a.contacts {
            let id = m.add_contact(&f, contact(i));
            if i % 10 == 0 {
                m.set_photo(&id, &[0xFF, 0xD8, 0xFF, 0xE0, (i % 251) as u8, 0xFF, 0xD9]);
            }
            ids.push(id);
        }
    });
    let dests: Vec<String> = (0..a.destinations)
        .map(|i| format!("user{i:04}@example.com"))
        .collect();
    for d in &dests {
        fake.add_user(d);
    }
    write_job(dir, &dests)?;
    Ok((fake, dests, ids))
}

/// The minimum a workload needs per destination, as the API allows: requests, operations
/// (a `$batch` of 20 is one request, 20 operations), and the critical path in calls under the
/// per-mailbox limit (Outlook runs 4 of a batch's operations at once).
fn minimum(w: &str, a: &Args) -> (usize, usize, usize) {
    let (c, photos, n) = (
        a.contacts,
        a.contacts.div_ceil(10),
        (a.contacts / 100).max(1),
    );
    let (pages, delta_pages) = (c.div_ceil(1000), c.div_ceil(200));
    match w {
        // Folder lookup, folder create, its delta token (one call on an empty folder), the
        // creates in batches of 20, one photo PUT per photo.
        "W1" => (
            3 + c.div_ceil(20) + photos.div_ceil(20),
            3 + c + photos,
            3 + c.div_ceil(4) + photos.div_ceil(4),
        ),
        // The delta naming W1's writes, 200 a page, the first page with the folder list.
        "W2" => (delta_pages, delta_pages + 1, delta_pages),
        // The delta, with the folder list that tells a folder a user deleted, in one envelope.
        "W2b" => (1, 2, 1),
        // The delta (and the folder list), the users' edited copies read, the updates (edited
        // source + edited copies).
        "W3" => (
            1 + n.div_ceil(20) + (2 * n).div_ceil(20),
            2 + 3 * n,
            1 + n.div_ceil(4) + (2 * n).div_ceil(4),
        ),
        // The folder found and read whole (its copies trashed as they are read), the copies
        // deleted, the emptied folder checked and deleted.
        _ => (
            3 + pages + c.div_ceil(20),
            3 + pages + c,
            3 + pages + c.div_ceil(4),
        ),
    }
}

fn edit_for_w3(fake: &FakeGraph, a: &Args, source_ids: &[String], dests: &[String]) {
    let n = (a.contacts / 100).max(1);
    fake.with_mailbox("source@example.com", |m| {
        for id in source_ids.iter().step_by(a.contacts / n).take(n) {
            m.edit(id, |c| c["surname"] = json!("Edited"));
        }
    });
    for u in dests {
        fake.with_mailbox(u, |m| {
            let f = m.folder_by_name("Directory").expect("W1 made the folder");
            let ids: Vec<String> = m
                .contacts(&f)
                .iter()
                .rev()
                .take(n)
                .filter_map(|c| c["id"].as_str().map(str::to_string))
                .collect();
            for id in ids {
                m.edit(&id, |c| c["mobilePhone"] = json!("+1 000"));
            }
        });
    }
}

fn main() -> anyhow::Result<()> {
    let bin = groupsync_binary()?;
    if std::env::args().nth(1).as_deref() == Some("--spawner") {
        return spawner(&bin);
    }
    let a = args();
    let mut spawner = Spawner::start()?;
    let dir = std::env::temp_dir().join(format!("groupsync-bench-graph-{}", std::process::id()));
    let (fake, dests, source_ids) = set_up(&a, &dir)?;
    let lat = a.latency_ms as f64 / 1000.0;
    let mut table = String::new();
    writeln!(
        table,
        "bench_graph: {} contacts ({} with a photo) x {} mailboxes, {} ms per call, concurrency {}",
        a.contacts,
        a.contacts.div_ceil(10),
        a.destinations,
        a.latency_ms,
        a.concurrency
    )?;
    writeln!(
        table,
        "{:<4} {:>7} {:>8} {:>7} {:>8} {:>11} {:>9} {:>10} {:>9} {:>8}  requests by operation",
        "",
        "wall s",
        "bound s",
        "cpu s",
        "peak MB",
        "req/dest",
        "min req",
        "ops/dest",
        "min ops",
        "viol"
    )?;
    for w in a.workloads.iter().map(String::as_str) {
        let mut d = a.destinations;
        match w {
            "W3" => edit_for_w3(&fake, &a, &source_ids, &dests),
            "W4" => {
                write_job(&dir, &dests[10..])?;
                d = 10;
            }
            _ => {}
        }
        // Each workload is a later day's run: Outlook's quota windows (10 minutes) start empty.
        fake.next_day();
        fake.reset_counts();
        let u = spawner.run(w, &dir)?;
        let counts = fake.counts();
        let get = |k: &str| counts.get(k).copied().unwrap_or(0) as f64;
        // Not this workload's per-destination cost: the source folder's read (1,000 a page) and
        // its photos (one GET each, on a first fan-out), the users' lookups (in batches of 20),
        // the domains, and in W4 the deltas of the destinations kept.
        let kept = if w == "W4" {
            (a.destinations - 10) as f64
        } else {
            0.0
        };
        let shared =
            a.contacts.div_ceil(1000) as f64 + get("photo.get") + get("domains.list") + kept;
        let lookups = get("users.get");
        let requests = get("http") - get("token") - shared - (lookups / 20.0).ceil();
        let ops = get("http") - get("token") - get("batch") + get("batch.items") - shared - lookups;
        let (min_req, min_ops, path) = minimum(w, &a);
        // The source read, then the destinations `concurrency` at a time, each on its path.
        let waves = d.div_ceil(a.concurrency) as f64;
        let bound = (1.0 + a.contacts.div_ceil(1000) as f64 + waves * path as f64) * lat;
        let by: Vec<String> = counts
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "http" | "batch.items"))
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        writeln!(
            table,
            "{:<4} {:>7.2} {:>8.2} {:>7.2} {:>8.1} {:>11.1} {:>9} {:>10.1} {:>9} {:>8}  {}",
            w,
            u.wall_s,
            bound,
            u.cpu_s,
            u.peak_rss_kb as f64 / 1024.0,
            requests / d as f64,
            min_req,
            ops / d as f64,
            min_ops,
            fake.violations().len(),
            by.join(" ")
        )?;
    }
    print!("{table}");
    let v = fake.violations();
    if !v.is_empty() {
        println!("the fake saw {} violations, first: {}", v.len(), v[0]);
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
