//! The state database holds people's contact details (the trash keeps every deleted vCard, the
//! change log who changed what): its files are the owner's alone whatever the umask, and what it
//! keeps about people goes once older than the retention the configuration sets.

mod common;

use common::Tree;
use predicates::prelude::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn mode(p: &Path) -> u32 {
    fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// A config whose state lives in a folder groupsync makes (`var/`), with a metrics textfile
/// and the given `[state]` retention keys.
fn config(t: &Tree, state_keys: &str) {
    fs::write(
        t.path().join("groupsync.toml"),
        format!(
            "jobs_dir = \"jobs\"\n\n[state]\npath = \"var/state.db\"\n{state_keys}\n[backend]\nkind = \"vdir\"\nroot = \"contacts\"\n\n[metrics]\ntextfile = \"metrics.prom\"\n"
        ),
    )
    .unwrap();
}

/// `groupsync <args>` under a shell that set `umask` first (the test process's own umask is
/// left alone).
fn run_with_umask(t: &Tree, umask: &str, args: &str) -> assert_cmd::assert::Assert {
    let bin = env!("CARGO_BIN_EXE_groupsync");
    let mut sh = assert_cmd::Command::new("sh");
    sh.arg("-c")
        .arg(format!("umask {umask}; exec \"$GS_BIN\" {args}"))
        .env("GS_BIN", bin)
        .env("GROUPSYNC_CONFIG", t.path().join("groupsync.toml"))
        .env("GROUPSYNC_LOCK_WAIT", "1")
        .env_remove("GROUPSYNC_LOG")
        .current_dir(t.path());
    sh.assert()
}

#[test]
fn state_files_are_private_whatever_the_umask() {
    for umask in ["000", "022"] {
        let t = Tree::new(3);
        t.write_job("team", &["bob"], "");
        config(&t, "");
        run_with_umask(&t, umask, "run").success();
        let var = t.path().join("var");
        assert_eq!(mode(&var), 0o700, "state folder, umask {umask}");
        for f in ["state.db", "state.db.lock"] {
            assert_eq!(mode(&var.join(f)), 0o600, "{f}, umask {umask}");
        }
        for f in ["state.db-wal", "state.db-shm"] {
            if var.join(f).exists() {
                assert_eq!(mode(&var.join(f)), 0o600, "{f}, umask {umask}");
            }
        }
        // Read by node_exporter, another user: readable, and nothing about a person in it.
        assert_eq!(mode(&t.path().join("metrics.prom")), 0o644, "umask {umask}");
        // The users' copies keep the vdir provider's own umask (0022 by default).
        let copy = &t.copies("bob", "Team")[0].0;
        assert_eq!(mode(&t.group("bob", "Team").join(copy)), 0o644);
    }
}

/// SQLite's write-ahead log and shared-memory files exist only while the database is open:
/// opened here, in this test's process with umask 000, they must be owner-only too.
#[test]
fn the_write_ahead_log_is_private_while_the_database_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    // SAFETY: umask only swaps the process's file-creation mask; restored below.
    let old = unsafe { libc::umask(0) };
    let store = groupsync::store::Store::open(&path);
    // A write, so that the log and the shared memory exist.
    let wrote = store.as_ref().map(|s| s.start_run("team", false));
    let modes: Vec<(String, u32)> = ["", "-wal", "-shm"]
        .iter()
        .map(|s| {
            let p = dir.path().join(format!("state.db{s}"));
            (p.display().to_string(), mode(&p))
        })
        .collect();
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    wrote.unwrap().unwrap();
    for (p, m) in modes {
        assert_eq!(m, 0o600, "{p}");
    }
}

#[test]
fn a_state_database_others_can_read_is_tightened_with_a_warning() {
    let t = Tree::new(2);
    t.write_job("team", &["bob"], "");
    config(&t, "");
    t.cmd().arg("run").assert().success();
    let db = t.path().join("var/state.db");
    let lock = t.path().join("var/state.db.lock");
    fs::set_permissions(&db, fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(&lock, fs::Permissions::from_mode(0o666)).unwrap();
    t.cmd()
        .arg("run")
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "state.db could be read by other users (mode 644)",
        ))
        .stderr(predicate::str::contains(
            "state.db.lock could be read by other users (mode 666)",
        ));
    assert_eq!(mode(&db), 0o600);
    assert_eq!(mode(&lock), 0o600);
}

/// bob gets copies of three contacts, then two leave the source: two copies go to the trash.
fn two_in_the_trash(state_keys: &str) -> Tree {
    let t = Tree::new(3);
    t.write_job("team", &["bob"], "");
    config(&t, state_keys);
    t.cmd().arg("run").assert().success();
    for i in [0, 1] {
        fs::remove_file(t.group("alice", "Team").join(format!("p{i:03}.vcf"))).unwrap();
    }
    t.cmd().arg("run").assert().success();
    t
}

fn trash_ids(t: &Tree) -> Vec<i64> {
    let out = t.cmd().args(["--json", "restore"]).assert().success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect()
}

#[test]
fn nothing_younger_than_the_retention_is_purged() {
    let t = two_in_the_trash("keep_trash_days = 1\nkeep_log_days = 1\n");
    t.cmd()
        .arg("run")
        .assert()
        .success()
        .stdout(predicate::str::contains("purged").not());
    assert_eq!(trash_ids(&t).len(), 2);
    let log = t.cmd().args(["log", "team"]).assert().success();
    assert!(String::from_utf8_lossy(&log.get_output().stdout).contains("delete"));
}

#[test]
fn what_is_past_the_retention_is_purged_counted_and_cannot_be_restored() {
    let t = two_in_the_trash("");
    let ids = trash_ids(&t);
    assert_eq!(ids.len(), 2);
    config(&t, "keep_trash_days = 0\nkeep_log_days = 0\n");
    // A second later, everything written before is older than "0 days".
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = t.cmd().args(["--json", "run"]).assert().success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let purged = &v[0]["purged"];
    assert_eq!(purged["trash"], 2, "{v}");
    assert!(purged["log"].as_u64().unwrap() >= 5, "{v}");
    assert!(trash_ids(&t).is_empty());
    t.cmd()
        .args(["restore", &ids[0].to_string()])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(format!(
            "trash entry {} was purged and cannot be restored (the trash keeps entries 0 days",
            ids[0]
        )));
    t.cmd()
        .args(["restore", "9999"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no trash entry 9999"));
}

#[test]
fn the_trash_is_emptied_by_hand_as_the_filters_say() {
    let t = two_in_the_trash("");
    let purge = |args: &[&str], n: u64| {
        t.cmd()
            .args(["restore", "--purge"])
            .args(args)
            .assert()
            .success()
            .stdout(format!("purged {n} trash entries\n"));
    };
    purge(&["--dest", "carol"], 0);
    // A job nobody knows is a usage error, not an empty selection.
    t.cmd()
        .args(["restore", "--purge", "--job", "other"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no job named \"other\""));
    purge(&["--older-than", "1"], 0);
    assert_eq!(trash_ids(&t).len(), 2);
    purge(&["--dest", "bob", "--job", "team"], 2);
    assert!(trash_ids(&t).is_empty());
    t.cmd()
        .args(["restore", "--older-than", "3"])
        .assert()
        .code(2);
    t.cmd()
        .args(["restore", "--purge", "--all"])
        .assert()
        .code(2);
}

#[test]
fn a_purged_job_forgets_its_trash_and_its_change_log() {
    let t = two_in_the_trash("");
    t.cmd()
        .args(["job", "delete", "team", "--purge"])
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "its trash (3 entries) and change log",
        ));
    assert!(t.copies("bob", "Team").is_empty());
    assert!(trash_ids(&t).is_empty());
}

#[test]
fn a_bad_state_table_is_named_with_its_line() {
    let t = Tree::new(1);
    for (keys, says) in [
        ("keep_trash_day = 3\n", "unknown field `keep_trash_day`"),
        (
            "keep_log_days = -1\n",
            "state.keep_log_days = -1 must be a number of days",
        ),
    ] {
        config(&t, keys);
        t.cmd()
            .arg("check")
            .assert()
            .code(2)
            .stderr(predicate::str::contains("groupsync.toml:3"))
            .stderr(predicate::str::contains(says));
    }
}
