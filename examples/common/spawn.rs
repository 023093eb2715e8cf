//! Shared by the benchmark programs: each workload is one `groupsync run bench --json` of the
//! release binary, spawned from a small helper process and measured with `wait4` (wall time,
//! CPU time, peak RSS). Included by each benchmark with `#[path]`; not an example of its own.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// What the run of one workload cost: groupsync's own process, as the operating system counted
/// it.
pub struct Usage {
    pub wall_s: f64,
    pub cpu_s: f64,
    pub peak_rss_kb: u64,
}

/// Runs `groupsync run bench` (the real command, as an administrator would) with the config in
/// `dir`, and measures it: wall time from spawn to exit, and the process's CPU time and peak RSS
/// from `wait4`. `BENCH_WRAP` (a profiler such as heaptrack) runs it under that command.
fn run_groupsync(bin: &Path, dir: &Path, w: &str) -> anyhow::Result<Usage> {
    let child = spawn_groupsync(bin, dir, w, None)?;
    wait_groupsync(child, dir, w)
}

/// Runs every shard of `count` at once (`groupsync run bench --shard I/N`), each its own
/// process, and measures each.
fn run_shards(bin: &Path, dir: &Path, w: &str, count: u32) -> anyhow::Result<Vec<Usage>> {
    let children: Vec<(String, Started)> = (0..count)
        .map(|i| {
            let tag = format!("{w}-{i}-of-{count}");
            let shard = format!("{i}/{count}");
            Ok((tag.clone(), spawn_groupsync(bin, dir, &tag, Some(&shard))?))
        })
        .collect::<anyhow::Result<_>>()?;
    children
        .into_iter()
        .map(|(tag, c)| wait_groupsync(c, dir, &tag))
        .collect()
}

/// A started run and when it started.
struct Started {
    child: std::process::Child,
    start: Instant,
}

fn spawn_groupsync(
    bin: &Path,
    dir: &Path,
    w: &str,
    shard: Option<&str>,
) -> anyhow::Result<Started> {
    let mut cmd = match std::env::var("BENCH_WRAP") {
        Ok(wrap) => {
            let mut c = Command::new(wrap);
            c.arg(bin);
            c
        }
        Err(_) => Command::new(bin),
    };
    let out_path = dir.join(format!("{w}.out"));
    let err_path = dir.join(format!("{w}.err"));
    cmd.args(["run", "bench", "--json"])
        .env("GROUPSYNC_CONFIG", dir.join("groupsync.toml"))
        .env_remove("RUST_LOG")
        .env_remove("GROUPSYNC_SHARD")
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?);
    if let Some(s) = shard {
        cmd.args(["--shard", s]);
    }
    let start = Instant::now();
    let child = cmd.spawn()?;
    Ok(Started { child, start })
}

/// Waits for a started run and measures it (see `run_groupsync`).
fn wait_groupsync(started: Started, dir: &Path, w: &str) -> anyhow::Result<Usage> {
    let (child, start) = (started.child, started.start);
    let out_path = dir.join(format!("{w}.out"));
    let err_path = dir.join(format!("{w}.err"));
    let mut status = 0;
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: wait4 writes the child's exit status and a whole `rusage` into the pointers it is
    // given; the rusage is zero-initialised, so it is valid even if the call fails.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, ru.as_mut_ptr()) };
    let wall_s = start.elapsed().as_secs_f64();
    // SAFETY: see above.
    let ru = unsafe { ru.assume_init() };
    anyhow::ensure!(
        pid > 0,
        "waiting for groupsync: {}",
        std::io::Error::last_os_error()
    );
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        anyhow::bail!(
            "{w}: groupsync run failed ({status:#x}): {}\n{}",
            std::fs::read_to_string(&err_path).unwrap_or_default(),
            std::fs::read_to_string(&out_path).unwrap_or_default()
        );
    }
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    Ok(Usage {
        wall_s,
        cpu_s: t(ru.ru_utime) + t(ru.ru_stime),
        // Linux counts ru_maxrss in KiB.
        peak_rss_kb: ru.ru_maxrss.max(0) as u64,
    })
}

/// The `groupsync` binary next to this program (`target/release/groupsync` for
/// `target/release/examples/bench_…`), refused when missing or built before the library
/// this program was built with (a stale binary would measure old code).
pub fn groupsync_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let dir = me
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow::anyhow!("cannot tell where {} lives", me.display()))?;
    let bin = dir.join("groupsync");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified());
    match (modified(&bin), modified(&dir.join("libgroupsync.rlib"))) {
        (Err(_), _) => anyhow::bail!(
            "{} is missing: build it first (cargo build --release)",
            bin.display()
        ),
        (Ok(b), Ok(lib)) if b < lib => anyhow::bail!(
            "{} is older than the library: rebuild it (cargo build --release)",
            bin.display()
        ),
        _ => Ok(bin),
    }
}

/// Runs workloads for the parent: one request line (`<workload> <dir>`) in, one usage line
/// (`<wall s> <cpu s> <peak RSS KiB>` or `error <message>`) out.
///
/// A process starts as a copy of its parent, and Linux counts the copy's memory into the peak
/// RSS that `wait4` reports, even after `exec`. Spawned from the parent, which holds the fake's
/// data, every run would report the parent's size; spawned from this small process, started
/// before the fake holds anything, each run reports its own.
pub fn spawner(bin: &Path) -> anyhow::Result<()> {
    use std::io::BufRead as _;
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let line = line?;
        let mut words = line.split(' ');
        let (Some(w), Some(dir)) = (words.next(), words.next()) else {
            continue;
        };
        let shards: u32 = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        let usage = match shards {
            0 => run_groupsync(bin, Path::new(dir), w).map(|u| vec![u]),
            n => run_shards(bin, Path::new(dir), w, n),
        };
        match usage {
            Ok(us) => {
                let each: Vec<String> = us
                    .iter()
                    .map(|u| format!("{} {} {}", u.wall_s, u.cpu_s, u.peak_rss_kb))
                    .collect();
                println!("{}", each.join(" "));
            }
            Err(e) => println!("error {}", format!("{e:#}").replace('\n', " | ")),
        }
    }
    Ok(())
}

/// The parent's end of the spawner.
pub struct Spawner {
    child: std::process::Child,
    to: std::process::ChildStdin,
    from: std::io::BufReader<std::process::ChildStdout>,
}

impl Spawner {
    pub fn start() -> anyhow::Result<Spawner> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--spawner")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let to = child.stdin.take().expect("piped");
        let from = std::io::BufReader::new(child.stdout.take().expect("piped"));
        Ok(Spawner { child, to, from })
    }

    #[allow(dead_code)] // each benchmark includes this file; not all of them run unsharded only
    pub fn run(&mut self, w: &str, dir: &Path) -> anyhow::Result<Usage> {
        let mut all = self.run_shards(w, dir, 0)?;
        anyhow::ensure!(all.len() == 1, "the spawner answered {} runs", all.len());
        Ok(all.remove(0))
    }

    /// Runs the `count` shards of the workload at once (`count` 0: one unsharded run); the
    /// usage of each.
    pub fn run_shards(&mut self, w: &str, dir: &Path, count: u32) -> anyhow::Result<Vec<Usage>> {
        use std::io::{BufRead as _, Write as _};
        writeln!(self.to, "{w} {} {count}", dir.display())?;
        self.to.flush()?;
        let mut line = String::new();
        self.from.read_line(&mut line)?;
        if let Some(e) = line.strip_prefix("error ") {
            anyhow::bail!("{}", e.trim());
        }
        let v: Vec<&str> = line.split_whitespace().collect();
        anyhow::ensure!(
            !v.is_empty() && v.len().is_multiple_of(3),
            "the spawner answered {line:?}"
        );
        v.chunks(3)
            .map(|u| {
                Ok(Usage {
                    wall_s: u[0].parse()?,
                    cpu_s: u[1].parse()?,
                    peak_rss_kb: u[2].parse()?,
                })
            })
            .collect()
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
