//! `groupsync-bench`: builds a vdir tree (a source group of N contacts, D destination users) and
//! measures three runs of one job, each in a fresh process: the first fan-out, a no-change
//! rerun, and a rerun after editing a share of the source. For each it prints provider
//! operations by kind, wall time and the process's peak RSS (VmHWM).
//!
//! This is a measuring program, not a test: nothing here asserts, and no test times anything.

use clap::Parser;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use groupsync::backend::counting::{CallCounts, Counting};
use groupsync::backend::vdir::VdirBackend;
use groupsync::config::{BackendConfig, Config};
use groupsync::engine::{self, RunOptions};
use groupsync::store::Store;

/// Measures groupsync on a generated vdir tree (5,000 contacts × 100 destinations by default).
#[derive(Debug, Parser)]
struct Args {
    /// Contacts in the source group
    #[arg(long, default_value_t = 5000)]
    contacts: usize,
    /// Destination users
    #[arg(long, default_value_t = 100)]
    destinations: usize,
    /// Share of the source edited before the third run, in percent
    #[arg(long, default_value_t = 1.0)]
    edit_percent: f64,
    /// Where to build the tree (default: a temporary folder, removed afterwards)
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Internal: run one phase on an existing tree and print its measurements as JSON
    #[arg(long, hide = true)]
    phase: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(phase) = &args.phase {
        return run_phase(phase, args.dir.as_deref().expect("--dir"));
    }
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile_dir()?;
            tmp.clone()
        }
    };
    let t = Instant::now();
    build_tree(&dir, args.contacts, args.destinations)?;
    eprintln!(
        "built {} contacts × {} destinations in {:.1}s at {}",
        args.contacts,
        args.destinations,
        t.elapsed().as_secs_f64(),
        dir.display()
    );
    let mut rows = vec![];
    for phase in ["first run", "no-change rerun", "rerun after edits"] {
        if phase == "rerun after edits" {
            let n = ((args.contacts as f64) * args.edit_percent / 100.0).round() as usize;
            edit_source(&dir, args.contacts, n)?;
            eprintln!("edited {n} source contacts");
        }
        let out = Command::new(std::env::current_exe()?)
            .arg("--phase")
            .arg(phase)
            .arg("--dir")
            .arg(&dir)
            .output()?;
        if !out.status.success() {
            anyhow::bail!(
                "phase {phase} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        rows.push(v);
    }
    print!("{}", table(&args, &rows)?);
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// The phases' measurements as a table.
fn table(args: &Args, rows: &[serde_json::Value]) -> anyhow::Result<String> {
    let mut table = String::new();
    writeln!(
        table,
        "groupsync-bench: vdir, {} contacts x {} destinations, {}% edits",
        args.contacts, args.destinations, args.edit_percent
    )?;
    writeln!(
        table,
        "{:<18} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>10} {:>8}",
        "phase",
        "wall s",
        "lists",
        "read",
        "create",
        "update",
        "delete",
        "writes",
        "ops/dest",
        "peak MB"
    )?;
    for r in rows {
        let c: CallCounts = serde_json::from_value(r["calls"].clone()).unwrap_or_default();
        let calls = c.reads() + c.writes();
        writeln!(
            table,
            "{:<18} {:>9.2} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>10.1} {:>8.1}",
            r["phase"].as_str().unwrap_or(""),
            r["wall_s"].as_f64().unwrap_or(0.0),
            c.scan_group,
            c.contacts_read,
            c.create_contact,
            c.update_contact,
            c.delete_contact,
            c.writes(),
            calls as f64 / args.destinations.max(1) as f64,
            r["peak_rss_kb"].as_f64().unwrap_or(0.0) / 1024.0,
        )?;
    }
    writeln!(
        table,
        "lists = group scans (source + one per destination); read = contacts read; writes = creates+updates+deletes+group changes; ops/dest = provider calls per destination"
    )?;
    Ok(table)
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("groupsync-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// A deterministic xorshift generator (no dependency, same data on every machine).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

const FIRST: &[&str] = &[
    "Ada",
    "Grace",
    "Alan",
    "Katherine",
    "Linus",
    "Margaret",
    "Dennis",
    "Barbara",
    "José",
    "Zoë",
    "Søren",
    "Aiko",
    "Wei",
    "Fatima",
    "Olu",
];
const LAST: &[&str] = &[
    "Lovelace",
    "Hopper",
    "Turing",
    "Johnson",
    "Torvalds",
    "Hamilton",
    "Ritchie",
    "Liskov",
    "Núñez",
    "Müller",
    "Østergaard",
    "Tanaka",
    "Zhang",
    "Haddad",
    "Adeyemi",
];
const ORGS: &[&str] = &[
    "Example Corp",
    "Acme\\, Inc.",
    "Initech;Accounting",
    "Globex",
    "Umbrella;Research",
];

fn contact(i: usize, edit: u64) -> String {
    let mut r = Rng(0x9E37_79B9_7F4A_7C15
        ^ (i as u64).wrapping_mul(0x2545_F491_4F6C_DD1D)
        ^ edit.wrapping_mul(0x1234_5678_9ABC_DEF1));
    let first = r.pick(FIRST);
    let last = r.pick(LAST);
    let mut s = format!(
        "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:c{i:06}\r\nFN:{first} {last} {i}\r\nN:{last};{first};;;\r\n"
    );
    for k in 0..1 + r.next() % 3 {
        let _ = write!(
            s,
            "EMAIL;TYPE=INTERNET,{}:{}.{}{i}.{k}@example.com\r\n",
            r.pick(&["WORK", "HOME"]),
            first.to_lowercase(),
            last.to_lowercase()
        );
    }
    for _ in 0..r.next() % 3 {
        let _ = write!(
            s,
            "TEL;TYPE={}:+1 555-01{:02}\r\n",
            r.pick(&["CELL", "WORK", "HOME"]),
            r.next() % 100
        );
    }
    let _ = write!(
        s,
        "ORG:{}\r\nTITLE:Engineer {}\r\n",
        r.pick(ORGS),
        r.next() % 10
    );
    let _ = write!(
        s,
        "ADR;TYPE=WORK:;;{} Main Street;Springfield;;{:05};USA\r\n",
        r.next() % 999,
        r.next() % 99999
    );
    let _ = write!(
        s,
        "NOTE:Met at the {} conference. Prefers email\\, mornings.{}\r\n",
        2000 + r.next() % 26,
        if edit > 0 {
            format!(" Edit {edit}.")
        } else {
            String::new()
        }
    );
    s.push_str("END:VCARD\r\n");
    s
}

fn build_tree(dir: &Path, contacts: usize, destinations: usize) -> anyhow::Result<()> {
    let root = dir.join("contacts");
    let src = root.join("source").join("Directory");
    std::fs::create_dir_all(&src)?;
    for i in 0..contacts {
        std::fs::write(src.join(format!("c{i:06}.vcf")), contact(i, 0))?;
    }
    let mut dests = vec![];
    for d in 0..destinations {
        let u = format!("user{d:04}");
        std::fs::create_dir_all(root.join(&u).join("My Contacts"))?;
        dests.push(format!("\"{u}\""));
    }
    std::fs::create_dir_all(dir.join("jobs"))?;
    std::fs::write(
        dir.join("groupsync.toml"),
        "state = \"state.db\"\njobs_dir = \"jobs\"\n[backend]\nkind = \"vdir\"\nroot = \"contacts\"\n",
    )?;
    std::fs::write(
        dir.join("jobs").join("bench.toml"),
        format!(
            "tag = \"gSync1000000001\"\nsource = \"source\"\ngroup = \"Directory\"\ndestinations = [{}]\n",
            dests.join(", ")
        ),
    )?;
    Ok(())
}

fn edit_source(dir: &Path, contacts: usize, n: usize) -> anyhow::Result<()> {
    let src = dir.join("contacts").join("source").join("Directory");
    let step = (contacts / n.max(1)).max(1);
    for k in 0..n {
        let i = (k * step) % contacts;
        std::fs::write(src.join(format!("c{i:06}.vcf")), contact(i, 1))?;
    }
    Ok(())
}

fn run_phase(phase: &str, dir: &Path) -> anyhow::Result<()> {
    groupsync::procstat::tune_allocator();
    let config = Config::load(&dir.join("groupsync.toml"))?;
    let BackendConfig::Vdir {
        root, concurrency, ..
    } = &config.backend
    else {
        anyhow::bail!("the benchmark builds a vdir tree; its config must use kind = \"vdir\"");
    };
    let backend = Arc::new(Counting::new(VdirBackend::new(root)));
    let store = Arc::new(Mutex::new(Store::open(&config.state)?));
    let job = groupsync::job::load_named(&config.jobs_dir, "bench")?;
    let opts = RunOptions {
        concurrency: *concurrency,
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
    let v = serde_json::json!({
        "phase": phase,
        "wall_s": wall,
        "calls": backend.counts(),
        "counts": report.counts,
        "peak_rss_kb": groupsync::procstat::peak_rss_kb(),
    });
    println!("{v}");
    Ok(())
}
