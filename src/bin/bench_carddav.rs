//! `groupsync-bench-carddav`: groupsync against a real Radicale, next to the server's own floor
//! and vdirsyncer, on the same data. It starts Radicale from `.venv/` (installing vdirsyncer
//! there if missing), loads N generated contacts into alice's "Team" book with N sequential PUTs
//! (the floor), then for 1 and for D destinations times, for each tool: the first sync, a
//! no-change rerun, and a rerun after K source edits. For each run it prints wall time, the
//! requests by method that Radicale logged, and the client's peak RSS (from /usr/bin/time).
//!
//! A measuring program, not a test: nothing here asserts.

use clap::Parser;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Races groupsync against the Radicale floor and vdirsyncer.
#[derive(Debug, Parser)]
struct Args {
    /// Contacts in the source book
    #[arg(long, default_value_t = 1000)]
    contacts: usize,
    /// Destinations of the fan-out run (a 1-destination run comes first)
    #[arg(long, default_value_t = 10)]
    destinations: usize,
    /// Source contacts edited before the third run
    #[arg(long, default_value_t = 10)]
    edits: usize,
    /// Skip vdirsyncer
    #[arg(long)]
    no_vdirsyncer: bool,
    /// The venv holding radicale (and vdirsyncer)
    #[arg(long, default_value = ".venv")]
    venv: PathBuf,
}

struct Radicale {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Radicale {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Radicale {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    fn log_len(&self) -> usize {
        fs::read_to_string(self.dir.join("radicale.log"))
            .map(|s| s.len())
            .unwrap_or(0)
    }
    /// Requests by method logged since byte `from` of the log.
    fn requests_since(&self, from: usize) -> BTreeMap<String, usize> {
        let log = fs::read_to_string(self.dir.join("radicale.log")).unwrap_or_default();
        let mut out = BTreeMap::new();
        for line in log.get(from..).unwrap_or("").lines() {
            if let Some(i) = line.find(" request for ") {
                let method = line[..i].rsplit(' ').next().unwrap_or("?").to_string();
                *out.entry(method).or_insert(0) += 1;
            }
        }
        out
    }
}

fn start_radicale(venv: &Path) -> anyhow::Result<Radicale> {
    let dir = std::env::temp_dir().join(format!("groupsync-bench-dav-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    fs::write(dir.join("users"), "admin:adminpw\n")?;
    fs::write(
        dir.join("rights"),
        "[admin-all]\nuser: admin\ncollection: .*\npermissions: RrWw\n",
    )?;
    fs::write(
        dir.join("config"),
        format!(
            "[server]\nhosts = 127.0.0.1:{port}\n[auth]\ntype = htpasswd\nhtpasswd_filename = {}\nhtpasswd_encryption = plain\ndelay = 0\n[rights]\ntype = from_file\nfile = {}\n[storage]\nfilesystem_folder = {}\n[logging]\nlevel = info\n",
            dir.join("users").display(),
            dir.join("rights").display(),
            dir.join("collections").display()
        ),
    )?;
    let log = fs::File::create(dir.join("radicale.log"))?;
    let child = Command::new(venv.join("bin/radicale"))
        .arg("--config")
        .arg(dir.join("config"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(20),
            "Radicale did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Radicale { child, port, dir })
}

async fn dav(
    c: &reqwest::Client,
    url: &str,
    method: &str,
    body: Option<String>,
    ctype: &str,
) -> anyhow::Result<u16> {
    let mut r = c
        .request(reqwest::Method::from_bytes(method.as_bytes())?, url)
        .basic_auth("admin", Some("adminpw"));
    if let Some(b) = body {
        r = r.header("Content-Type", ctype).body(b);
    }
    Ok(r.send().await?.status().as_u16())
}

fn mkcol_book(name: &str) -> String {
    groupsync::backend::carddav::xml::mkcol_addressbook(name)
}

/// One timed run of a client program under /usr/bin/time.
struct Measured {
    wall: f64,
    rss_mb: f64,
    requests: BTreeMap<String, usize>,
}

fn timed(server: &Radicale, mut cmd: Command, work: &Path) -> anyhow::Result<Measured> {
    let from = server.log_len();
    let rss_file = work.join("rss.txt");
    let mut timed = Command::new("/usr/bin/time");
    timed
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&rss_file)
        .arg(cmd.get_program());
    timed.args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            timed.env(k, v);
        }
    }
    let _ = &mut cmd;
    let start = Instant::now();
    let out = timed
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    let wall = start.elapsed().as_secs_f64();
    if !out.status.success() {
        eprintln!(
            "warning: {:?} exited {}: {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    let rss_kb: f64 = fs::read_to_string(&rss_file)?
        .lines()
        .last()
        .unwrap_or("0")
        .trim()
        .parse()
        .unwrap_or(0.0);
    Ok(Measured {
        wall,
        rss_mb: rss_kb / 1024.0,
        requests: server.requests_since(from),
    })
}

fn fmt_requests(r: &BTreeMap<String, usize>) -> String {
    r.iter()
        .map(|(m, n)| format!("{n} {m}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let venv = fs::canonicalize(&args.venv).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e} (python3 -m venv .venv && .venv/bin/pip install radicale)",
            args.venv.display()
        )
    })?;
    if !args.no_vdirsyncer && !venv.join("bin/vdirsyncer").exists() {
        eprintln!("installing vdirsyncer into {}", venv.display());
        let ok = Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "vdirsyncer==0.21.0"])
            .status()?
            .success();
        anyhow::ensure!(ok, "pip install vdirsyncer failed");
    }
    let groupsync = std::env::current_exe()?.with_file_name("groupsync");
    anyhow::ensure!(
        groupsync.exists(),
        "build the groupsync binary first (cargo build --release)"
    );
    let server = start_radicale(&venv)?;
    let work = server.dir.join("work");
    fs::create_dir_all(&work)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let http = reqwest::Client::new();
    let base = server.url();
    let dests: Vec<String> = (1..=args.destinations)
        .map(|i| format!("d{i:02}"))
        .collect();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/gen_vcards.py");
    let gen_dir = work.join("cards");
    let generate = |dir: &Path, extra: &[&str]| -> anyhow::Result<Vec<(String, String)>> {
        let out = Command::new("python3")
            .arg(&script)
            .args(["-n", &args.contacts.to_string(), "--seed", "42"])
            .args(extra)
            .arg(dir)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "gen_vcards.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut v = vec![];
        for e in fs::read_dir(dir)? {
            let p = e?.path();
            v.push((
                p.file_name().unwrap().to_string_lossy().to_string(),
                fs::read_to_string(&p)?,
            ));
        }
        v.sort();
        Ok(v)
    };
    let cards = generate(&gen_dir, &[])?;
    // Principals, the source book, and vdirsyncer's destination books (it cannot create them).
    let floor = rt.block_on(async {
        for u in std::iter::once("alice".to_string()).chain(dests.iter().cloned()) {
            dav(&http, &format!("{base}/{u}/"), "MKCOL", None, "").await?;
        }
        dav(
            &http,
            &format!("{base}/alice/team/"),
            "MKCOL",
            Some(mkcol_book("Team")),
            "application/xml",
        )
        .await?;
        for d in &dests {
            for n in [1, dests.len()] {
                dav(
                    &http,
                    &format!("{base}/{d}/vds{n}/"),
                    "MKCOL",
                    Some(mkcol_book(&format!("vds{n}"))),
                    "application/xml",
                )
                .await?;
            }
        }
        let from = server.log_len();
        let start = Instant::now();
        for (name, text) in &cards {
            dav(
                &http,
                &format!("{base}/alice/team/{name}"),
                "PUT",
                Some(text.clone()),
                "text/vcard",
            )
            .await?;
        }
        anyhow::Ok(Measured {
            wall: start.elapsed().as_secs_f64(),
            rss_mb: 0.0,
            requests: server.requests_since(from),
        })
    })?;
    let mut edit_round = 0;
    let mut edit_source = |rt: &tokio::runtime::Runtime| -> anyhow::Result<()> {
        edit_round += 1;
        let dir = work.join(format!("edit{edit_round}"));
        let edited = generate(
            &dir,
            &[
                "--edit",
                &args.edits.to_string(),
                "--edit-round",
                &edit_round.to_string(),
            ],
        )?;
        rt.block_on(async {
            for ((name, new), (_, old)) in edited.iter().zip(cards.iter()) {
                if new != old {
                    dav(
                        &http,
                        &format!("{base}/alice/team/{name}"),
                        "PUT",
                        Some(new.clone()),
                        "text/vcard",
                    )
                    .await?;
                }
            }
            anyhow::Ok(())
        })
    };
    let mut rows: Vec<(String, Measured)> = vec![("floor: N sequential PUTs".into(), floor)];
    for n in [1usize, args.destinations] {
        let set = &dests[..n];
        // groupsync
        let gdir = work.join(format!("gs{n}"));
        fs::create_dir_all(gdir.join("jobs"))?;
        fs::write(gdir.join("pw"), "adminpw\n")?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(gdir.join("pw"), fs::Permissions::from_mode(0o600))?;
        }
        fs::write(
            gdir.join("groupsync.toml"),
            format!(
                "state = \"state.db\"\n[backend]\nkind = \"carddav\"\nurl = \"{base}\"\nusername = \"admin\"\npassword_file = \"pw\"\n"
            ),
        )?;
        let list: Vec<String> = set.iter().map(|d| format!("\"{d}\"")).collect();
        fs::write(
            gdir.join("jobs/team.toml"),
            format!(
                "tag = \"gSync1000000001\"\nsource = \"alice\"\ngroup = \"Team\"\ntarget_group = \"gs{n}\"\ndestinations = [{}]\n",
                list.join(", ")
            ),
        )?;
        let gs_cmd = || {
            let mut c = Command::new(&groupsync);
            c.arg("run")
                .env("GROUPSYNC_CONFIG", gdir.join("groupsync.toml"));
            c
        };
        rows.push((
            format!("groupsync first sync -> {n}"),
            timed(&server, gs_cmd(), &work)?,
        ));
        rows.push((
            format!("groupsync no-change rerun, {n}"),
            timed(&server, gs_cmd(), &work)?,
        ));
        edit_source(&rt)?;
        rows.push((
            format!("groupsync after {} edits, {n}", args.edits),
            timed(&server, gs_cmd(), &work)?,
        ));
        if args.no_vdirsyncer {
            continue;
        }
        // vdirsyncer: one pair per destination, into pre-created empty "vds<n>" books.
        let vdir = work.join(format!("vds{n}"));
        fs::create_dir_all(&vdir)?;
        let mut cfg = format!(
            "[general]\nstatus_path = \"{}/status/\"\n\n[storage src]\ntype = \"carddav\"\nurl = \"{base}/alice/team/\"\nusername = \"admin\"\npassword = \"adminpw\"\nread_only = true\n",
            vdir.display()
        );
        for d in set {
            let _ = write!(
                cfg,
                "\n[storage {d}]\ntype = \"carddav\"\nurl = \"{base}/{d}/vds{n}/\"\nusername = \"admin\"\npassword = \"adminpw\"\n\n[pair src_to_{d}]\na = \"src\"\nb = \"{d}\"\ncollections = null\nconflict_resolution = \"a wins\"\npartial_sync = \"revert\"\n"
            );
        }
        fs::write(vdir.join("config"), cfg)?;
        let vds = |sub: &str| {
            let mut c = Command::new(venv.join("bin/vdirsyncer"));
            c.arg("-c").arg(vdir.join("config")).arg(sub);
            c
        };
        let out = vds("discover").stdin(Stdio::null()).output()?;
        anyhow::ensure!(
            out.status.success(),
            "vdirsyncer discover: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        rows.push((
            format!("vdirsyncer first sync -> {n}"),
            timed(&server, vds("sync"), &work)?,
        ));
        rows.push((
            format!("vdirsyncer no-change rerun, {n}"),
            timed(&server, vds("sync"), &work)?,
        ));
        edit_source(&rt)?;
        rows.push((
            format!("vdirsyncer after {} edits, {n}", args.edits),
            timed(&server, vds("sync"), &work)?,
        ));
    }
    let floor_wall = rows[0].1.wall;
    let mut table = String::new();
    let _ = writeln!(
        table,
        "groupsync-bench-carddav: Radicale (built-in server), {} contacts, 1 and {} destinations, {} edits",
        args.contacts, args.destinations, args.edits
    );
    let _ = writeln!(
        table,
        "{:<36} {:>8} {:>9} {:>8} {:>8}  requests (Radicale log)",
        "run", "wall s", "x floor", "x vds", "RSS MB"
    );
    for (name, m) in &rows {
        let peer = name.replace("groupsync", "vdirsyncer");
        let vs = rows
            .iter()
            .find(|(n, _)| *n == peer && peer != *name)
            .map(|(_, v)| format!("{:.2}", m.wall / v.wall))
            .unwrap_or_else(|| "-".into());
        let per_dest = name
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or(1.0);
        let floor_ratio = if name.contains("first sync") {
            format!("{:.2}", m.wall / (floor_wall * per_dest))
        } else {
            "-".into()
        };
        let _ = writeln!(
            table,
            "{:<36} {:>8.2} {:>9} {:>8} {:>8.1}  {}",
            name,
            m.wall,
            floor_ratio,
            vs,
            m.rss_mb,
            fmt_requests(&m.requests)
        );
    }
    let _ = writeln!(
        table,
        "x floor = wall / (floor x destinations), first syncs only; x vds = groupsync / vdirsyncer on the same run"
    );
    print!("{table}");
    Ok(())
}
