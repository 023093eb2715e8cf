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
    let mut b = Bench {
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        http: reqwest::Client::new(),
        base: server.url(),
        dests: (1..=args.destinations)
            .map(|i| format!("d{i:02}"))
            .collect(),
        cards: vec![],
        edit_round: 0,
        args,
        venv,
        groupsync,
        server,
        work,
    };
    b.cards = b.generate(&b.work.join("cards"), &[])?;
    let floor = b.load_floor()?;
    let mut rows: Vec<(String, Measured)> = vec![("floor: N sequential PUTs".into(), floor)];
    for n in [1usize, b.args.destinations] {
        b.groupsync_runs(n, &mut rows)?;
        if !b.args.no_vdirsyncer {
            b.vdirsyncer_runs(n, &mut rows)?;
        }
    }
    print!("{}", table(&b.args, &rows));
    Ok(())
}

/// Everything the runs share: the server, the generated cards, the clients' paths.
struct Bench {
    args: Args,
    venv: PathBuf,
    groupsync: PathBuf,
    server: Radicale,
    work: PathBuf,
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    base: String,
    dests: Vec<String>,
    /// The source book's cards (file name, text), as loaded.
    cards: Vec<(String, String)>,
    edit_round: usize,
}

impl Bench {
    /// The contacts `gen_vcards.py` writes into `dir` (same seed every time), sorted by name.
    fn generate(&self, dir: &Path, extra: &[&str]) -> anyhow::Result<Vec<(String, String)>> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/gen_vcards.py");
        let out = Command::new("python3")
            .arg(&script)
            .args(["-n", &self.args.contacts.to_string(), "--seed", "42"])
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
    }

    /// PUTs a card into alice's source book.
    async fn put_source(&self, name: &str, text: &str) -> anyhow::Result<u16> {
        let url = format!("{}/alice/team/{name}", self.base);
        dav(
            &self.http,
            &url,
            "PUT",
            Some(text.to_string()),
            "text/vcard",
        )
        .await
    }

    /// Makes the principals, the source book and vdirsyncer's destination books (it cannot
    /// create them), then loads the source with N sequential PUTs: the server's floor.
    fn load_floor(&self) -> anyhow::Result<Measured> {
        let (http, base) = (&self.http, &self.base);
        self.rt.block_on(async {
            for u in std::iter::once("alice").chain(self.dests.iter().map(String::as_str)) {
                dav(http, &format!("{base}/{u}/"), "MKCOL", None, "").await?;
            }
            let book = |name: &str| Some(mkcol_book(name));
            let url = format!("{base}/alice/team/");
            dav(http, &url, "MKCOL", book("Team"), "application/xml").await?;
            for d in &self.dests {
                for n in [1, self.dests.len()] {
                    let url = format!("{base}/{d}/vds{n}/");
                    dav(
                        http,
                        &url,
                        "MKCOL",
                        book(&format!("vds{n}")),
                        "application/xml",
                    )
                    .await?;
                }
            }
            let from = self.server.log_len();
            let start = Instant::now();
            for (name, text) in &self.cards {
                self.put_source(name, text).await?;
            }
            anyhow::Ok(Measured {
                wall: start.elapsed().as_secs_f64(),
                rss_mb: 0.0,
                requests: self.server.requests_since(from),
            })
        })
    }

    /// Edits `--edits` source contacts (a new round of edits each time).
    fn edit_source(&mut self) -> anyhow::Result<()> {
        self.edit_round += 1;
        let dir = self.work.join(format!("edit{}", self.edit_round));
        let (edits, round) = (self.args.edits.to_string(), self.edit_round.to_string());
        let edited = self.generate(&dir, &["--edit", &edits, "--edit-round", &round])?;
        self.rt.block_on(async {
            for ((name, new), (_, old)) in edited.iter().zip(self.cards.iter()) {
                if new != old {
                    self.put_source(name, new).await?;
                }
            }
            anyhow::Ok(())
        })
    }

    /// The three runs of groupsync for the first `n` destinations, into a "gs<n>" group.
    fn groupsync_runs(
        &mut self,
        n: usize,
        rows: &mut Vec<(String, Measured)>,
    ) -> anyhow::Result<()> {
        let base = &self.base;
        let gdir = self.work.join(format!("gs{n}"));
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
        let list: Vec<String> = self.dests[..n].iter().map(|d| format!("\"{d}\"")).collect();
        fs::write(
            gdir.join("jobs/team.toml"),
            format!(
                "tag = \"gSync1000000001\"\nsource = \"alice\"\ngroup = \"Team\"\ntarget_group = \"gs{n}\"\ndestinations = [{}]\n",
                list.join(", ")
            ),
        )?;
        let (exe, cfg) = (self.groupsync.clone(), gdir.join("groupsync.toml"));
        let cmd = move || {
            let mut c = Command::new(&exe);
            c.arg("run").env("GROUPSYNC_CONFIG", &cfg);
            c
        };
        self.three_runs("groupsync", n, &cmd, rows)
    }

    /// The three runs of vdirsyncer: one pair per destination, into pre-created empty
    /// "vds<n>" books.
    fn vdirsyncer_runs(
        &mut self,
        n: usize,
        rows: &mut Vec<(String, Measured)>,
    ) -> anyhow::Result<()> {
        let base = &self.base;
        let vdir = self.work.join(format!("vds{n}"));
        fs::create_dir_all(&vdir)?;
        let mut cfg = format!(
            "[general]\nstatus_path = \"{}/status/\"\n\n[storage src]\ntype = \"carddav\"\nurl = \"{base}/alice/team/\"\nusername = \"admin\"\npassword = \"adminpw\"\nread_only = true\n",
            vdir.display()
        );
        for d in &self.dests[..n] {
            let _ = write!(
                cfg,
                "\n[storage {d}]\ntype = \"carddav\"\nurl = \"{base}/{d}/vds{n}/\"\nusername = \"admin\"\npassword = \"adminpw\"\n\n[pair src_to_{d}]\na = \"src\"\nb = \"{d}\"\ncollections = null\nconflict_resolution = \"a wins\"\npartial_sync = \"revert\"\n"
            );
        }
        fs::write(vdir.join("config"), cfg)?;
        let (exe, cfg) = (self.venv.join("bin/vdirsyncer"), vdir.join("config"));
        let vds = move |sub: &str| {
            let mut c = Command::new(&exe);
            c.arg("-c").arg(&cfg).arg(sub);
            c
        };
        let out = vds("discover").stdin(Stdio::null()).output()?;
        anyhow::ensure!(
            out.status.success(),
            "vdirsyncer discover: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.three_runs("vdirsyncer", n, &|| vds("sync"), rows)
    }

    /// A client's first sync, no-change rerun, and rerun after the source was edited.
    fn three_runs(
        &mut self,
        client: &str,
        n: usize,
        cmd: &dyn Fn() -> Command,
        rows: &mut Vec<(String, Measured)>,
    ) -> anyhow::Result<()> {
        let (server, work) = (&self.server, &self.work);
        rows.push((
            format!("{client} first sync -> {n}"),
            timed(server, cmd(), work)?,
        ));
        rows.push((
            format!("{client} no-change rerun, {n}"),
            timed(server, cmd(), work)?,
        ));
        self.edit_source()?;
        let label = format!("{client} after {} edits, {n}", self.args.edits);
        rows.push((label, timed(&self.server, cmd(), &self.work)?));
        Ok(())
    }
}

/// The results as a table: wall time against the floor (first syncs) and against vdirsyncer on
/// the same run, peak RSS, and the requests Radicale logged.
fn table(args: &Args, rows: &[(String, Measured)]) -> String {
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
    for (name, m) in rows {
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
    table
}
