//! `bench_google`: groupsync's Google backend against the fake People/Directory API with injected
//! latency (25 ms per call by default), on named workloads:
//!
//! - W1 first fan-out of N contacts to D destinations;
//! - W2 a no-change rerun right after W1 (the sync token's delta holds the copies W1 wrote, 1,000
//!   a page);
//! - W2b a second no-change rerun (the steady state of a daily job);
//! - W3 1 % of the source edited and 1 % of the copies tampered with by users;
//! - W4 10 destinations removed from the job.
//!
//! The workloads build on each other: W3 and W4 expect the runs before them. Run without W2 in
//! between, W4's 90 kept destinations first read the delta of W1's writes (as W2 does), so their
//! calls are above the minimum printed.
//!
//! Each workload is one `groupsync run` of the release binary (`target/release/groupsync`, built
//! first with `cargo build --release`), so its wall time, CPU time and peak RSS are those of the
//! command an administrator runs; the fake runs in this process and counts the calls by API
//! method. Printed: calls by method, calls per destination against the theoretical minimum, wall
//! time against the critical-path bound at the configured concurrency, and peak RSS.
//!
//! Run: `cargo build --release && cargo run --release --example bench_google -- --contacts 1000
//! --destinations 100`
//! (`--workloads W1,W2b` runs a subset, `--concurrency N` and `--latency-ms N` change the set-up;
//! `--shards N` runs each workload as N shards at once, `groupsync run --shard I/N` each: the
//! wall time is the slowest shard's, the CPU time their sum, the peak RSS the largest, and the
//! source reads are counted once per shard;
//! `BENCH_WRAP=heaptrack` runs each workload under a profiler such as heaptrack).
//! A measuring program, not a test: nothing here asserts.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use fake_google::{FakeGoogle, Options};

#[path = "common/spawn.rs"]
mod spawn;
use spawn::{Spawner, groupsync_binary, spawner};

/// The fake (this process) allocates with mimalloc: it halves the fake's CPU, which shares this
/// machine's cores with the groupsync being measured. groupsync itself is the release binary, with
/// the system allocator it ships with.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
use serde_json::json;

struct Args {
    contacts: usize,
    destinations: usize,
    concurrency: usize,
    latency_ms: u64,
    workloads: Vec<String>,
    /// Run each workload as this many shards at once (`groupsync run --shard I/N`); 0: one
    /// process.
    shards: u32,
}

fn args() -> Args {
    let mut a = Args {
        contacts: 1000,
        destinations: 100,
        concurrency: 16,
        latency_ms: 25,
        workloads: ["W1", "W2", "W2b", "W3", "W4"].map(String::from).to_vec(),
        shards: 0,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let next = v.get(i + 1).cloned().unwrap_or_default();
        match v[i].as_str() {
            "--contacts" => a.contacts = next.parse().expect("--contacts N"),
            "--destinations" => a.destinations = next.parse().expect("--destinations N"),
            "--concurrency" => a.concurrency = next.parse().expect("--concurrency N"),
            "--latency-ms" => a.latency_ms = next.parse().expect("--latency-ms N"),
            "--workloads" => a.workloads = next.split(',').map(str::to_string).collect(),
            "--shards" => a.shards = next.parse().expect("--shards N"),
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

/// Where a workload's wall time went, from the fake's timeline of People API calls.
struct Phases {
    before_s: f64,
    after_s: f64,
    dests: usize,
    calls: usize,
    busy_s: f64,
    idle_s: f64,
    slot_s: f64,
}

impl Phases {
    fn of(
        calls: &[fake_google::TimedCall],
        source: &str,
        spawned: Instant,
        exited: Instant,
        concurrency: usize,
    ) -> Phases {
        use std::collections::HashMap;
        let mut spans: HashMap<&str, (Instant, Instant, f64, usize)> = HashMap::new();
        for c in calls.iter().filter(|c| c.user != source) {
            let busy = (c.answered - c.arrived).as_secs_f64();
            let e = spans
                .entry(c.user.as_str())
                .or_insert((c.arrived, c.answered, 0.0, 0));
            e.0 = e.0.min(c.arrived);
            e.1 = e.1.max(c.answered);
            e.2 += busy;
            e.3 += 1;
        }
        let first = spans.values().map(|s| s.0).min().unwrap_or(exited);
        let last = spans.values().map(|s| s.1).max().unwrap_or(exited);
        let span: f64 = spans.values().map(|s| (s.1 - s.0).as_secs_f64()).sum();
        let busy: f64 = spans.values().map(|s| s.2).sum();
        let slots = concurrency as f64 * (last.saturating_duration_since(first)).as_secs_f64();
        Phases {
            before_s: first.saturating_duration_since(spawned).as_secs_f64(),
            after_s: exited.saturating_duration_since(last).as_secs_f64(),
            dests: spans.len(),
            calls: spans.values().map(|s| s.3).sum(),
            busy_s: busy,
            idle_s: span - busy,
            slot_s: (slots - span).max(0.0),
        }
    }

    fn row(&self, w: &str) -> String {
        let per = |x: f64| x * 1000.0 / self.dests.max(1) as f64;
        format!(
            "{:<4} {:>8.2} {:>8.2} {:>8.1} {:>9.1} {:>9.1} {:>9.1}",
            w,
            self.before_s,
            self.after_s,
            self.calls as f64 / self.dests.max(1) as f64,
            per(self.busy_s),
            per(self.idle_s),
            per(self.slot_s),
        )
    }
}

fn person(i: usize, rev: usize) -> serde_json::Value {
    json!({
        "names": [{"givenName": format!("Given{i}"), "familyName": format!("Family{i} r{rev}")}],
        "emailAddresses": [{"value": format!("p{i}@partner.example"), "type": "work"}],
        "phoneNumbers": [{"value": format!("+1 555 {:04}", i % 10000), "type": "mobile"}],
        "organizations": [{"name": format!("Partner {}", i % 50), "title": "Buyer"}],
        "addresses": [{"streetAddress": format!("{i} Main St"), "city": "Springfield", "type": "work"}],
        "biographies": [{"value": format!("Account since {}", 2000 + i % 25), "contentType": "TEXT_PLAIN"}],
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

fn main() -> anyhow::Result<()> {
    let bin = groupsync_binary()?;
    if std::env::args().nth(1).as_deref() == Some("--spawner") {
        return spawner(&bin);
    }
    let a = args();
    // Before the fake holds anything (see `spawner`).
    let mut spawner = Spawner::start()?;
    let fake = FakeGoogle::start(Options {
        latency: Duration::from_millis(a.latency_ms),
        ..Options::default()
    });
    let dir = std::env::temp_dir().join(format!("groupsync-bench-google-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("jobs"))?;
    let key = dir.join("key.json");
    std::fs::write(&key, fake.key_json())?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    }
    std::fs::write(
        dir.join("groupsync.toml"),
        format!(
            "state = \"state.db\"\njobs_dir = \"jobs\"\n[backend]\nkind = \"google\"\nkey_file = \"key.json\"\nadmin = \"admin@example.com\"\npeople_url = \"{u}\"\ndirectory_url = \"{u}\"\nconcurrency = {c}\nrequests_per_minute = 1000000\n",
            u = fake.url,
            c = a.concurrency
        ),
    )?;
    fake.add_user("source@example.com", false);
    let mut source_ids = vec![];
    fake.with_book("source@example.com", |b| {
        let g = b.add_group("Directory");
        for i in 0..a.contacts {
            let mut p = person(i, 0);
            p["memberships"] = json!([{"contactGroupMembership": {"contactGroupResourceName": g}}]);
            source_ids.push(b.add_contact(p));
        }
    });
    let dests: Vec<String> = (0..a.destinations)
        .map(|i| format!("user{i:04}@example.com"))
        .collect();
    for d in &dests {
        fake.add_user(d, false);
    }
    write_job(&dir, &dests)?;

    let per_dest_batches = a.contacts.div_ceil(200);
    let pages = a.contacts.div_ceil(1000).max(1);
    let lat = a.latency_ms as f64 / 1000.0;
    let waves = |d: usize| d.div_ceil(a.concurrency) as f64;
    let mut table = String::new();
    let mut phases = String::new();
    let mut shard_lines = String::new();
    // Every shard reads the source and looks the users up.
    let shard_factor = a.shards.max(1) as usize;
    writeln!(
        table,
        "bench_google: {} contacts x {} destinations, {} ms per call, concurrency {}{}",
        a.contacts,
        a.destinations,
        a.latency_ms,
        a.concurrency,
        match a.shards {
            0 => String::new(),
            n => format!(", {n} shards at once"),
        }
    )?;
    writeln!(
        table,
        "{:<4} {:>7} {:>8} {:>6} {:>8} {:>8} {:>5} {:>6} {:>8} {:>9} {:>8} {:>8}  calls by method",
        "",
        "wall s",
        "bound s",
        "x bnd",
        "cpu s",
        "fake s",
        "late",
        "gap ms",
        "calls",
        "per dest",
        "minimum",
        "peak MB"
    )?;
    for w in a.workloads.iter().map(String::as_str) {
        let mut d = a.destinations;
        // Per destination: the minimum calls, and the calls on one destination's critical path.
        let (min_per_dest, source_calls) = match w {
            // contactGroups.list, a connections.list for the sync token, contactGroups.create,
            // the batch creates (users come from one users.list, counted with the source).
            "W1" => (3 + per_dest_batches, 3 + pages),
            // One read that tells "nothing changed".
            // The delta since the token taken before W1's writes: those writes, 1,000 a page.
            "W2" => (a.contacts.div_ceil(1000), 3 + pages),
            "W2b" => (1, 3 + pages),
            // The sync-token read (the tampered copies, 1,000 a page), batch updates (the
            // edited and the tampered copies, 200 each). The copies are known from the ledger,
            // not read whole, and the group is the one the token was taken for: no copy left it.
            "W3" => {
                let n = (a.contacts / 100).max(1);
                (n.div_ceil(1000) + (2 * n).div_ceil(200), 3 + pages)
            }
            // For each removed destination: list groups, read, batch gets for the trash (200
            // each), batch deletes (500 each), get + delete the group. The 90 others cost one
            // sync-token read each, counted with the source.
            _ => {
                d = 10;
                (
                    3 + per_dest_batches + a.contacts.div_ceil(500) + pages,
                    3 + pages + (a.destinations - 10),
                )
            }
        };
        match w {
            "W3" => {
                let n = (a.contacts / 100).max(1);
                fake.with_book("source@example.com", |b| {
                    for rn in source_ids.iter().step_by(a.contacts / n).take(n) {
                        b.edit(rn, |p| p["names"][0]["familyName"] = json!("Edited"));
                    }
                });
                for u in &dests {
                    fake.with_book(u, |b| {
                        let copies: Vec<String> = b.contact_names().take(n).cloned().collect();
                        for rn in copies {
                            b.edit(&rn, |p| {
                                p["phoneNumbers"] = json!([{"value": "+1 000", "type": "home"}])
                            });
                        }
                    });
                }
            }
            "W4" => write_job(&dir, &dests[10..])?,
            _ => {}
        }
        fake.reset_counts();
        let fake_cpu = groupsync::procstat::cpu_seconds();
        let spawned = Instant::now();
        let runs = spawner.run_shards(w, &dir, a.shards)?;
        let exited = Instant::now();
        let v = spawn::Usage {
            wall_s: runs.iter().map(|u| u.wall_s).fold(0.0, f64::max),
            cpu_s: runs.iter().map(|u| u.cpu_s).sum(),
            peak_rss_kb: runs.iter().map(|u| u.peak_rss_kb).max().unwrap_or(0),
        };
        if a.shards > 0 {
            let peaks: Vec<String> = runs
                .iter()
                .map(|u| format!("{:.1}", u.peak_rss_kb as f64 / 1024.0))
                .collect();
            let synced = dests
                .iter()
                .filter(|u| fake.with_book(u, |b| b.contact_names().count()) == a.contacts)
                .count();
            writeln!(
                shard_lines,
                "{w}: peak MB per shard {}; destinations holding exactly {} copies: {synced} of {}",
                peaks.join(" / "),
                a.contacts,
                dests.len() - if w == "W4" { 10 } else { 0 },
            )?;
        }
        // `BENCH_TIMELINE=W4:user0000@example.com` prints that user's calls in that workload.
        if let Ok(t) = std::env::var("BENCH_TIMELINE")
            && let Some((tw, tu)) = t.split_once(':')
            && tw == w
        {
            let calls = fake.timeline();
            // `W3:*`: the mean gap before each method's calls, over every destination.
            if tu == "*" {
                let mut last: std::collections::HashMap<&str, Instant> = Default::default();
                let mut gaps: std::collections::BTreeMap<&str, (f64, u32)> = Default::default();
                let mut sorted: Vec<&fake_google::TimedCall> = calls.iter().collect();
                sorted.sort_by_key(|c| c.arrived);
                for c in sorted
                    .into_iter()
                    .filter(|c| c.user != "source@example.com")
                {
                    if let Some(l) = last.get(c.user.as_str()) {
                        let g = gaps.entry(c.method.as_str()).or_default();
                        g.0 += c.arrived.saturating_duration_since(*l).as_secs_f64() * 1e3;
                        g.1 += 1;
                    }
                    last.insert(c.user.as_str(), c.answered);
                }
                for (m, (sum, n)) in gaps {
                    eprintln!("gap before {m}: {:.1} ms mean over {n}", sum / n as f64);
                }
            }
            let mut last: Option<Instant> = None;
            for c in calls.iter().filter(|c| c.user == tu) {
                let since = |t: Instant| t.saturating_duration_since(spawned).as_secs_f64() * 1e3;
                let gap = last.map_or(0.0, |l| {
                    c.arrived.saturating_duration_since(l).as_secs_f64() * 1e3
                });
                eprintln!(
                    "{:>9.1} {:>9.1} gap {:>6.1}  {}",
                    since(c.arrived),
                    since(c.answered),
                    gap,
                    c.method
                );
                last = Some(c.answered);
            }
        }
        let fake_cpu = groupsync::procstat::cpu_seconds() - fake_cpu;
        writeln!(
            phases,
            "{}",
            Phases::of(
                &fake.timeline(),
                "source@example.com",
                spawned,
                exited,
                a.concurrency
            )
            .row(w)
        )?;
        let counts = fake.counts();
        let late = fake.late_calls();
        let (gap, _) = fake.client_gap();
        let wall = v.wall_s;
        let api_calls: u64 = counts
            .iter()
            .filter(|(k, _)| k.as_str() != "token")
            .map(|(_, n)| n)
            .sum();
        let source_calls = source_calls * shard_factor;
        let per_dest = (api_calls as f64 - source_calls as f64) / d as f64;
        let waves = |d: usize| waves(d.div_ceil(shard_factor));
        // The source is read first; in W4 the 90 remaining destinations (one read each, in
        // waves) come before the removals.
        let bound = if w == "W4" {
            (3.0 + pages as f64 + waves(a.destinations - d) + waves(d) * min_per_dest as f64) * lat
        } else {
            (source_calls as f64 + waves(d) * min_per_dest as f64) * lat
        };
        let by: Vec<String> = counts
            .iter()
            .map(|(k, n)| {
                format!(
                    "{}={n}",
                    k.trim_start_matches("people.people.")
                        .trim_start_matches("people.")
                        .trim_start_matches("directory.")
                )
            })
            .collect();
        writeln!(
            table,
            "{:<4} {:>7.2} {:>8.2} {:>6.2} {:>8.2} {:>8.2} {:>5} {:>6.1} {:>8} {:>9.2} {:>8} {:>8.1}  {}",
            w,
            wall,
            bound,
            wall / bound,
            v.cpu_s,
            fake_cpu,
            late,
            gap.as_secs_f64() * 1000.0,
            api_calls,
            per_dest,
            min_per_dest,
            v.peak_rss_kb as f64 / 1024.0,
            by.join(" ")
        )?;
    }
    writeln!(
        table,
        "calls = API calls (token requests listed, not counted); per dest = (calls - source reads) / destinations touched; minimum = fewest calls per destination the API allows for that workload; bound = critical path at this concurrency and latency; x bnd = wall / bound; late = calls the fake answered after the latency because its own work took longer; gap ms = mean time from the fake's answer to a user's next People API call (groupsync's share of the critical path, waiting for a core included); cpu = groupsync's CPU time (user + system) for the whole process, fake = the fake's CPU time in the same run (both share this machine's cores)"
    )?;
    writeln!(
        table,
        "\nwhere the wall time went (People API calls as the fake saw them)\n{:<4} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9}\n{phases}before = from start to the first destination's first call (the source read included); after = from the last answer to exit; per destination: calls = People API calls, busy = those calls' time at the fake, idle = the rest of its span (first call to last answer) = groupsync's work between its calls, slot = its share of the concurrency slots' time outside any destination's span (starting and finishing destinations)",
        "", "before s", "after s", "calls", "busy ms", "idle ms", "slot ms"
    )?;
    print!("{table}");
    if a.shards > 0 {
        print!("\nshards\n{shard_lines}");
    }
    let v = fake.violations();
    if !v.is_empty() {
        eprintln!(
            "the fake saw {} requests Google would refuse: {:?}",
            v.len(),
            &v[..v.len().min(5)]
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
