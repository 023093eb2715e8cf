//! Shared helpers for the CLI tests: a temporary vdir tree with a config file.
#![allow(dead_code)]

pub mod contract;

use assert_cmd::Command;
use std::fs;
use std::path::{Path, PathBuf};

pub struct Tree {
    pub dir: tempfile::TempDir,
}

pub const TAG: &str = "gSync1234567890";

pub fn card(uid: &str, name: &str, email: &str) -> String {
    format!(
        "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:{uid}\r\nFN:{name}\r\nN:{name};;;;\r\nEMAIL;TYPE=INTERNET:{email}\r\nX-UNKNOWN;X-PARAM=1:survives\r\nEND:VCARD\r\n"
    )
}

impl Tree {
    /// alice (source, group "Team" with `n` contacts), bob, carol, dave; no job yet.
    pub fn new(n: usize) -> Tree {
        let dir = tempfile::tempdir().unwrap();
        let t = Tree { dir };
        fs::write(t.path().join("groupsync.toml"), "state = \"state.db\"\njobs_dir = \"jobs\"\n\n[backend]\nkind = \"vdir\"\nroot = \"contacts\"\n").unwrap();
        fs::create_dir_all(t.path().join("jobs")).unwrap();
        for u in ["alice", "bob", "carol", "dave"] {
            fs::create_dir_all(t.user(u).join("My Contacts")).unwrap();
        }
        fs::create_dir_all(t.group("alice", "Team")).unwrap();
        for i in 0..n {
            t.put_source(i, &format!("Person {i:03}"));
        }
        t
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn user(&self, u: &str) -> PathBuf {
        self.path().join("contacts").join(u)
    }

    pub fn group(&self, u: &str, g: &str) -> PathBuf {
        self.user(u).join(g)
    }

    /// A user whose "Team" cannot be written (a file is where the folder should be): a
    /// destination that fails.
    pub fn failing_user(&self, u: &str) {
        fs::create_dir_all(self.user(u)).unwrap();
        fs::write(self.group(u, "Team"), "in the way").unwrap();
    }

    pub fn put_source(&self, i: usize, name: &str) {
        fs::write(
            self.group("alice", "Team").join(format!("p{i:03}.vcf")),
            card(&format!("p{i:03}"), name, &format!("p{i}@example.com")),
        )
        .unwrap();
    }

    /// A job file with a fixed tag (for snapshots).
    pub fn write_job(&self, name: &str, dests: &[&str], extra: &str) {
        let d: Vec<String> = dests.iter().map(|d| format!("\"{d}\"")).collect();
        fs::write(
            self.path().join("jobs").join(format!("{name}.toml")),
            format!("# the team job\ntag = \"{TAG}\"\nsource = \"alice\"\ngroup = \"Team\"\ndestinations = [{}]\n{extra}", d.join(", ")),
        )
        .unwrap();
    }

    pub fn cmd(&self) -> Command {
        groupsync_in(self.path())
    }

    /// (file name, content) of every .vcf in a folder, sorted.
    pub fn cards(&self, u: &str, g: &str) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = match fs::read_dir(self.group(u, g)) {
            Err(_) => vec![],
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                // Regular files only: a test may leave a FIFO or a link to a device there.
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| (e.file_name().to_string_lossy().to_string(), e.path()))
                .filter(|(n, _)| n.ends_with(".vcf"))
                .map(|(n, p)| (n, fs::read_to_string(p).unwrap()))
                .collect(),
        };
        v.sort();
        v
    }

    /// Copies (cards with the tag) in a folder.
    pub fn copies(&self, u: &str, g: &str) -> Vec<(String, String)> {
        self.cards(u, g)
            .into_iter()
            .filter(|(_, c)| c.contains("X-GSYNC:gSync"))
            .collect()
    }

    pub fn read_job(&self, name: &str) -> String {
        fs::read_to_string(self.path().join("jobs").join(format!("{name}.toml"))).unwrap()
    }
}

/// Every source id carried by the copies in a folder, sorted (duplicates kept).
pub fn source_ids(copies: &[(String, String)]) -> Vec<String> {
    let mut v: Vec<String> = copies
        .iter()
        .filter_map(|(_, c)| {
            c.lines()
                .find(|l| l.starts_with("X-GSYNC-SOURCE:"))
                .map(|l| l["X-GSYNC-SOURCE:".len()..].trim().to_string())
        })
        .collect();
    v.sort();
    v
}

/// Replaces timestamps and run-dependent numbers so output can be snapshotted.
pub fn redact(s: &str) -> String {
    let ts = regex::Regex::new(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ").unwrap();
    let tmp = regex::Regex::new(r"/tmp/\.tmp[A-Za-z0-9]+").unwrap();
    tmp.replace_all(&ts.replace_all(s, "[time]"), "[tmp]")
        .to_string()
}

/// The `groupsync` binary, run in `dir` with the config `dir/groupsync.toml`, no log settings
/// from outside, and a short wait for the lock.
pub fn groupsync_in(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_groupsync"));
    c.env("GROUPSYNC_CONFIG", dir.join("groupsync.toml"))
        .env_remove("GROUPSYNC_LOG")
        .env("GROUPSYNC_LOCK_WAIT", "1")
        .current_dir(dir);
    c
}

/// `groupsync run <job>` in `dir`: its exit code, stdout and stderr.
pub fn run_job(dir: &Path, job: &str) -> (i32, String, String) {
    let out = groupsync_in(dir).args(["run", job]).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes `dir/jobs/<name>.toml`: a job with this tag, source user, group and destinations.
pub fn write_job_file(
    dir: &Path,
    name: &str,
    (tag, source, group): (&str, &str, &str),
    dests: &[&str],
) {
    let d: Vec<String> = dests.iter().map(|d| format!("\"{d}\"")).collect();
    fs::write(
        dir.join("jobs").join(format!("{name}.toml")),
        format!(
            "tag = \"{tag}\"\nsource = \"{source}\"\ngroup = \"{group}\"\ndestinations = [{}]\n",
            d.join(", ")
        ),
    )
    .unwrap();
}

/// `groupsync run <job>` in `dir`, in the background, its output dropped (to be killed).
pub fn spawn_run(dir: &Path, job: &str) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_groupsync"))
        .args(["run", job])
        .env("GROUPSYNC_CONFIG", dir.join("groupsync.toml"))
        .env("GROUPSYNC_LOCK_WAIT", "5")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Runs `groupsync run <job>` and kills it, once per kill time (milliseconds after the start),
/// calling `before(round)` ahead of each run (to change the source in between).
pub fn killed_runs(dir: &Path, job: &str, kill_ms: &[u64], mut before: impl FnMut(usize)) {
    for (round, ms) in kill_ms.iter().enumerate() {
        before(round);
        let mut child = spawn_run(dir, job);
        std::thread::sleep(std::time::Duration::from_millis(*ms));
        child.kill().unwrap();
        child.wait().unwrap();
        // A request the killed run had sent may still be at the server; a restart (a systemd
        // timer, a person) comes later than that.
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
