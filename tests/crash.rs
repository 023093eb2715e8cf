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
    let mut kills = 0;
    for round in 0..12 {
        if round > 0 {
            // The source moves on between crashes, so every run has work to be killed in.
            for _ in 0..150 {
                let i = (next() % 300) as usize;
                t.put_source(i, &format!("Edited {round} {i}"));
            }
            t.put_source(300 + round, &format!("Added {round}"));
        }
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_groupsync"))
            .arg("run")
            .env("GROUPSYNC_CONFIG", t.path().join("groupsync.toml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let at = Duration::from_micros(next() % (full.as_micros() as u64).max(1));
        std::thread::sleep(at);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
    }
    assert!(
        kills >= 6,
        "only {kills} of 12 runs were killed mid-way; the test proves nothing"
    );
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
