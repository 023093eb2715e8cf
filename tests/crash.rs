//! Crash test: a real `groupsync run` on a vdir tree is killed (SIGKILL) at pseudo-random points,
//! several times, with source edits in between; then one run to completion must leave exactly one
//! copy per source contact at every destination and every contact a user added untouched.

mod common;

use common::{Tree, card, source_ids};
use predicates::prelude::*;
use std::fs;
use std::time::{Duration, Instant};

#[test]
fn killed_runs_converge_without_duplicates_or_damage() {
    let t = Tree::new(300);
    let dests = ["bob", "carol", "dave"];
    t.write_job("team", &dests, "");
    // Every user has contacts of their own in the group before the first run.
    let mut own = vec![];
    for u in dests {
        fs::create_dir_all(t.group(u, "Team")).unwrap();
        let c = card(
            &format!("{u}-own"),
            &format!("{u}'s own"),
            &format!("{u}@example.net"),
        );
        fs::write(t.group(u, "Team").join("own.vcf"), &c).unwrap();
        own.push((t.group(u, "Team").join("own.vcf"), c));
    }
    // How long an uninterrupted first run takes here, measured on a copy of the tree.
    let probe = Tree::new(300);
    probe.write_job("team", &dests, "");
    let start = Instant::now();
    probe.cmd().arg("run").assert().success();
    let full = start.elapsed().max(Duration::from_millis(50));

    let mut rng = 0x9E3779B97F4A7C15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // The kill point is drawn from a window that starts at the length of a whole first run and
    // shrinks whenever a run finished before its kill came: later runs have less to do, and a
    // machine may be faster or slower than the probe said. Rounds go on until enough runs were
    // really killed mid-way.
    let mut window = full;
    let (mut kills, mut round) = (0, 0);
    while kills < 8 {
        round += 1;
        assert!(
            round <= 60,
            "only {kills} of {round} runs were killed mid-way; the test proves nothing"
        );
        // The source moves on between crashes, so every run has work to be killed in.
        for _ in 0..150 {
            let i = (next() % 300) as usize;
            t.put_source(i, &format!("Edited {round} {i}"));
        }
        t.put_source(300 + round, &format!("Added {round}"));
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_groupsync"))
            .arg("run")
            .env("GROUPSYNC_CONFIG", t.path().join("groupsync.toml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let at = Duration::from_micros(next() % (window.as_micros() as u64).max(1));
        std::thread::sleep(at);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        } else {
            window = (window * 2 / 3).max(Duration::from_millis(5));
        }
        child.wait().unwrap();
    }
    t.cmd().arg("run").assert().success();
    let source: Vec<String> = {
        let mut v: Vec<String> = fs::read_dir(t.group("alice", "Team"))
            .unwrap()
            .map(|e| {
                e.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .trim_end_matches(".vcf")
                    .to_string()
            })
            .collect();
        v.sort();
        v
    };
    for u in dests {
        assert_eq!(source_ids(&t.copies(u, "Team")), source, "copies at {u}");
    }
    for (path, c) in own {
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            c,
            "{} was touched",
            path.display()
        );
    }
    // And nothing is left to do.
    t.cmd().arg("run").assert().success().stdout(
        predicates::str::contains("created")
            .not()
            .or(predicates::str::contains("created 0")),
    );
}

/// A tree with `n` destination users (d00, d01, …), each to get `contacts` copies.
fn many_destinations(n: usize, contacts: usize) -> (Tree, Vec<String>) {
    let t = Tree::new(contacts);
    let users: Vec<String> = (0..n).map(|i| format!("d{i:02}")).collect();
    for u in &users {
        fs::create_dir_all(t.user(u)).unwrap();
    }
    let names: Vec<&str> = users.iter().map(String::as_str).collect();
    t.write_job("team", &names, "");
    let cfg = t.path().join("groupsync.toml");
    let text = fs::read_to_string(&cfg).unwrap();
    fs::write(&cfg, format!("{text}concurrency = 1\n")).unwrap();
    (t, users)
}

fn spawn_run(t: &Tree) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_groupsync"))
        .arg("run")
        .env("GROUPSYNC_CONFIG", t.path().join("groupsync.toml"))
        .env_remove("GROUPSYNC_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until the first destination has its group (the run is under way).
fn wait_for_start(t: &Tree, first: &str) {
    let start = Instant::now();
    while !t.group(first, "Team").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the run never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGINT or SIGTERM during `groupsync run`: the destination in progress finishes, no other
/// starts, the run is recorded as interrupted, and the exit code is 130 or 143. The next run
/// does the rest.
#[test]
fn an_interrupted_run_stops_between_destinations_and_says_so() {
    for (signal, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        let (t, users) = many_destinations(40, 150);
        let child = spawn_run(&t);
        wait_for_start(&t, &users[0]);
        unsafe { libc::kill(child.id() as i32, signal) };
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{err}");
        assert!(err.contains("interrupted"), "{err}");
        // Every destination is whole or untouched: the one in progress was finished.
        let done: Vec<&String> = users
            .iter()
            .filter(|u| t.copies(u, "Team").len() == 150)
            .collect();
        for u in &users {
            let n = t.copies(u, "Team").len();
            assert!(n == 0 || n == 150, "{u} was left half-done: {n}");
        }
        assert!(
            !done.is_empty() && done.len() < users.len(),
            "{}",
            done.len()
        );
        t.cmd()
            .arg("history")
            .assert()
            .success()
            .stdout(predicates::str::contains("\tinterrupted\t"));
        t.cmd().arg("run").assert().success();
        for u in &users {
            assert_eq!(t.copies(u, "Team").len(), 150, "{u}");
        }
    }
}

/// A run killed outright (SIGKILL) cannot record anything: the next command that opens the
/// state records it as interrupted.
#[test]
fn a_killed_run_is_shown_interrupted_by_the_next_command() {
    let (t, users) = many_destinations(40, 150);
    let mut child = spawn_run(&t);
    wait_for_start(&t, &users[0]);
    child.kill().unwrap();
    child.wait().unwrap();
    let state = rusqlite_outcomes(&t);
    assert_eq!(
        state,
        vec!["running".to_string()],
        "what the killed run left"
    );
    t.cmd()
        .arg("status")
        .assert()
        .success()
        .stdout(predicates::str::contains("running").not());
    assert_eq!(rusqlite_outcomes(&t), vec!["interrupted".to_string()]);
    t.cmd()
        .arg("history")
        .assert()
        .success()
        .stdout(predicates::str::contains("\tinterrupted\t"));
}

/// The outcomes of the runs in the state database, oldest first.
fn rusqlite_outcomes(t: &Tree) -> Vec<String> {
    let s = groupsync::store::Store::open(&t.path().join("state.db")).unwrap();
    let mut runs: Vec<String> = s
        .runs(Some("team"), 10)
        .unwrap()
        .into_iter()
        .map(|r| r.outcome)
        .collect();
    runs.reverse();
    runs
}
