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
//! Each workload runs in a fresh process (this program with `--phase`), so its peak RSS (VmHWM) is
//! groupsync's own; the fake runs in the parent and counts the calls by API method. Printed: calls
//! by method, calls per destination against the theoretical minimum, wall time against the
//! critical-path bound at the configured concurrency, and peak RSS.
//!
//! Run: `cargo run --release --example bench_google -- --contacts 1000 --destinations 100`
//! (`--workloads W1,W2b` runs a subset, `--concurrency N` and `--latency-ms N` change the set-up;
//! `BENCH_WRAP=heaptrack` runs each workload under a profiler such as heaptrack).
//! A measuring program, not a test: nothing here asserts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fake_google::{FakeGoogle, Options};
use groupsync::backend::counting::Counting;
use groupsync::backend::google::GoogleBackend;
use groupsync::config::{BackendConfig, Config};
use groupsync::engine::{self, RunOptions};
use groupsync::store::Store;
use serde_json::json;

struct Args {
    contacts: usize,
    destinations: usize,
    concurrency: usize,
    latency_ms: u64,
    phase: Option<String>,
    dir: Option<PathBuf>,
    workloads: Vec<String>,
}

fn args() -> Args {
    let mut a = Args {
        contacts: 1000,
        destinations: 100,
        concurrency: 16,
        latency_ms: 25,
        phase: None,
        dir: None,
        workloads: ["W1", "W2", "W2b", "W3", "W4"].map(String::from).to_vec(),
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
            "--phase" => a.phase = Some(next),
            "--dir" => a.dir = Some(PathBuf::from(next)),
            "--workloads" => a.workloads = next.split(',').map(str::to_string).collect(),
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

/// One workload, in this (child) process.
fn run_phase(dir: &Path) -> anyhow::Result<()> {
    groupsync::procstat::tune_allocator();
    let config = Config::load(&dir.join("groupsync.toml"))?;
    let BackendConfig::Google(g) = &config.backend else {
        anyhow::bail!("expected a google backend");
    };
    let concurrency = g.concurrency;
    let backend = Counting::new(GoogleBackend::new(g.clone()).map_err(anyhow::Error::msg)?);
    let store = Mutex::new(Store::open(&config.state)?);
    let job = groupsync::job::load_named(&config.jobs_dir, "bench")?;
    let opts = RunOptions {
        concurrency,
        default_group: "My Contacts".into(),
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let start = Instant::now();
    let report = rt.block_on(engine::run_job(&backend, &store, &job.to_run(), &opts));
    let wall = start.elapsed().as_secs_f64();
    if report.outcome != engine::Outcome::Ok {
        anyhow::bail!("run ended {:?}: {:?}", report.outcome, report.message);
    }
    println!(
        "{}",
        json!({
            "wall_s": wall,
            "counts": report.counts,
            "peak_rss_kb": groupsync::procstat::peak_rss_kb(),
            "cpu_s": groupsync::procstat::cpu_seconds(),
        })
    );
    Ok(())
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
    let a = args();
    if a.phase.is_some() {
        return run_phase(a.dir.as_deref().expect("--dir"));
    }
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
    writeln!(
        table,
        "bench_google: {} contacts x {} destinations, {} ms per call, concurrency {}",
        a.contacts, a.destinations, a.latency_ms, a.concurrency
    )?;
    writeln!(
        table,
        "{:<4} {:>7} {:>8} {:>6} {:>8} {:>8} {:>5} {:>8} {:>9} {:>8} {:>8}  calls by method",
        "",
        "wall s",
        "bound s",
        "x bnd",
        "cpu s",
        "fake s",
        "late",
        "calls",
        "per dest",
        "minimum",
        "peak MB"
    )?;
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
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
            // List groups, read, one batch update.
            "W3" => (2 + pages, 3 + pages),
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
        let mut cmd = match std::env::var("BENCH_WRAP") {
            Ok(w) => {
                let mut c = Command::new(w);
                c.arg(std::env::current_exe()?);
                c
            }
            Err(_) => Command::new(std::env::current_exe()?),
        };
        let out = cmd.args(["--phase", w, "--dir"]).arg(&dir).output()?;
        if !out.status.success() {
            anyhow::bail!("{w} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let fake_cpu = groupsync::procstat::cpu_seconds() - fake_cpu;
        // The phase prints one JSON line (a wrapper such as heaptrack may print more).
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().rfind(|l| l.starts_with('{')).unwrap_or("{}");
        let v: serde_json::Value = serde_json::from_str(line)?;
        let counts = fake.counts();
        let late = fake.late_calls();
        let wall = v["wall_s"].as_f64().unwrap_or(0.0);
        let api_calls: u64 = counts
            .iter()
            .filter(|(k, _)| k.as_str() != "token")
            .map(|(_, n)| n)
            .sum();
        let per_dest = (api_calls as f64 - source_calls as f64) / d as f64;
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
            "{:<4} {:>7.2} {:>8.2} {:>6.2} {:>8.2} {:>8.2} {:>5} {:>8} {:>9.2} {:>8} {:>8.1}  {}",
            w,
            wall,
            bound,
            wall / bound,
            v["cpu_s"].as_f64().unwrap_or(0.0),
            fake_cpu,
            late,
            api_calls,
            per_dest,
            min_per_dest,
            v["peak_rss_kb"].as_f64().unwrap_or(0.0) / 1024.0,
            by.join(" ")
        )?;
        last = counts;
    }
    let _ = last;
    writeln!(
        table,
        "calls = API calls (token requests listed, not counted); per dest = (calls - source reads) / destinations touched; minimum = fewest calls per destination the API allows for that workload; bound = critical path at this concurrency and latency; x bnd = wall / bound; late = calls the fake answered after the latency because its own work took longer; cpu = groupsync's CPU time (user + system) for the whole process, fake = the fake's CPU time in the same run (both share this machine's cores)"
    )?;
    print!("{table}");
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
