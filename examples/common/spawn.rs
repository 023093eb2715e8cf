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
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?);
    let start = Instant::now();
    let child = cmd.spawn()?;
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
        let Some((w, dir)) = line.split_once(' ') else {
            continue;
        };
        match run_groupsync(bin, Path::new(dir), w) {
            Ok(u) => println!("{} {} {}", u.wall_s, u.cpu_s, u.peak_rss_kb),
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

    pub fn run(&mut self, w: &str, dir: &Path) -> anyhow::Result<Usage> {
        use std::io::{BufRead as _, Write as _};
        writeln!(self.to, "{w} {}", dir.display())?;
        self.to.flush()?;
        let mut line = String::new();
        self.from.read_line(&mut line)?;
        if let Some(e) = line.strip_prefix("error ") {
            anyhow::bail!("{}", e.trim());
        }
        let v: Vec<&str> = line.split_whitespace().collect();
        anyhow::ensure!(v.len() == 3, "the spawner answered {line:?}");
        Ok(Usage {
            wall_s: v[0].parse()?,
            cpu_s: v[1].parse()?,
            peak_rss_kb: v[2].parse()?,
        })
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
