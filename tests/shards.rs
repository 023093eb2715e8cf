//! Shards side by side: every destination is synced by exactly one shard, each shard keeps its
//! own state, lock and metrics, changing the number of shards moves destinations without ever
//! removing one that is still in the job, and a destination that leaves the job is cleaned up
//! by the shard that owns it.

mod common;

use common::Tree;
use groupsync::shard::shard_of;
use predicates::prelude::*;
use std::collections::BTreeSet;
use std::fs;

const USERS: usize = 24;

fn users() -> Vec<String> {
    (0..USERS).map(|i| format!("u{i:02}")).collect()
}

/// The tree with 24 destination users and a job naming `dests` of them.
fn tree(contacts: usize) -> Tree {
    let t = Tree::new(contacts);
    for u in users() {
        fs::create_dir_all(t.user(&u).join("My Contacts")).unwrap();
    }
    t
}

fn job(t: &Tree, dests: &[String]) {
    let d: Vec<&str> = dests.iter().map(String::as_str).collect();
    t.write_job("team", &d, "");
}

/// Runs every shard of `n` at once, each its own process; all must succeed.
fn run_shards(t: &Tree, n: u32) {
    let children: Vec<_> = (0..n)
        .map(|i| {
            std::process::Command::new(env!("CARGO_BIN_EXE_groupsync"))
                .args(["run", "--shard", &format!("{i}/{n}")])
                .env("GROUPSYNC_CONFIG", t.path().join("groupsync.toml"))
                .env_remove("GROUPSYNC_LOG")
                .env_remove("GROUPSYNC_SHARD")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "shard {i}/{n}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// What `groupsync --json ARGS` prints; it must succeed.
fn json(t: &Tree, args: &[&str]) -> serde_json::Value {
    let out = t.cmd().arg("--json").args(args).assert().success();
    serde_json::from_slice(&out.get_output().stdout).unwrap()
}

/// The destinations a shard's state knows for the job.
fn known(t: &Tree, shard: &str) -> BTreeSet<String> {
    json(t, &["status", "--shard", shard])[0]["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["user"].as_str().unwrap().to_string())
        .collect()
}

/// Trash entries in a shard's state (a copy deleted there).
fn trashed(t: &Tree, shard: &str) -> usize {
    json(t, &["restore", "--shard", shard])
        .as_array()
        .unwrap()
        .len()
}

fn assert_synced(t: &Tree, dests: &[String], contacts: usize) {
    for u in dests {
        assert_eq!(t.copies(u, "Team").len(), contacts, "{u}");
    }
}

#[test]
fn shards_split_the_destinations_and_changing_n_never_removes_one_still_in_the_job() {
    let t = tree(5);
    let all = users();
    job(&t, &all);
    run_shards(&t, 3);
    assert_synced(&t, &all, 5);
    // Each destination is known to exactly the shard its id hashes to.
    let mut seen = BTreeSet::new();
    for i in 0..3 {
        let k = known(&t, &format!("{i}/3"));
        for u in &k {
            assert_eq!(shard_of(u, 3), i, "{u} synced by shard {i}/3");
            assert!(seen.insert(u.clone()), "{u} synced twice");
        }
        assert!(t.path().join(format!("state.shard-{i}-of-3.db")).exists());
    }
    assert_eq!(seen.len(), USERS);
    assert!(
        !t.path().join("state.db").exists(),
        "no unsharded state was made"
    );

    // status --all-shards merges the three states: every destination once, with its shard.
    let v = json(&t, &["status", "--all-shards"]);
    assert_eq!(v[0]["shards"].as_array().unwrap().len(), 3, "{v}");
    let dests = v[0]["destinations"].as_array().unwrap();
    assert_eq!(dests.len(), USERS);
    for d in dests {
        let u = d["user"].as_str().unwrap();
        assert_eq!(d["shard"], format!("{}/3", shard_of(u, 3)), "{u}");
    }
    assert_eq!(v[0]["never_synced"], serde_json::json!([]));
    t.cmd()
        .args(["status", "--all-shards"])
        .assert()
        .success()
        .stdout(predicate::str::contains("team (gSync").and(predicate::str::contains("3 shards")));

    // 3 -> 4: a quarter moves to the new shard, which rebuilds them from their tags. The old
    // shards, run again after, must leave the ones that moved alone.
    run_shards(&t, 4);
    run_shards(&t, 3);
    assert_synced(&t, &all, 5);
    let moved: Vec<&String> = all.iter().filter(|u| shard_of(u, 4) == 3).collect();
    assert!(!moved.is_empty());
    assert_eq!(known(&t, "3/4").len(), moved.len());
    // 4 -> 3 again, then 4 once more: nothing was ever deleted anywhere.
    run_shards(&t, 4);
    for s in ["0/3", "1/3", "2/3", "0/4", "1/4", "2/4", "3/4"] {
        assert_eq!(trashed(&t, s), 0, "shard {s} deleted a copy");
    }
    assert_synced(&t, &all, 5);

    // Shards of 3 and of 4 have state now: --all-shards asks which.
    t.cmd()
        .args(["status", "--all-shards"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--shard 0/3 or --shard 0/4"));
    t.cmd()
        .args(["status", "--all-shards", "--shard", "0/4"])
        .assert()
        .success()
        .stdout(predicate::str::contains("4 shards"));

    // A destination leaves the job: the shard of 4 that owns it cleans it up; it is left
    // alone by every other.
    let gone = all[0].clone();
    let rest: Vec<String> = all[1..].to_vec();
    job(&t, &rest);
    run_shards(&t, 4);
    assert!(t.copies(&gone, "Team").is_empty(), "{gone} cleaned up");
    let owner = format!("{}/4", shard_of(&gone, 4));
    assert_eq!(trashed(&t, &owner), 5);
    assert_synced(&t, &rest, 5);
}

#[test]
fn a_shard_is_named_right_or_refused() {
    let t = tree(1);
    job(&t, &users());
    for bad in ["3/3", "1/0", "two/3", "1"] {
        t.cmd()
            .args(["run", "--shard", bad])
            .assert()
            .code(2)
            .stderr(predicate::str::contains("shard"));
    }
    // The environment of a pod: GROUPSYNC_SHARDS and its index.
    t.cmd()
        .args(["run", "--shard-from-env"])
        .env("GROUPSYNC_SHARDS", "2")
        .env("HOSTNAME", "groupsync-1")
        .env_remove("JOB_COMPLETION_INDEX")
        .env_remove("GROUPSYNC_SHARD_INDEX")
        .assert()
        .success();
    assert!(t.path().join("state.shard-1-of-2.db").exists());
    t.cmd()
        .args(["run", "--shard-from-env"])
        .env_remove("GROUPSYNC_SHARDS")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("GROUPSYNC_SHARDS"));
    // A state path with {shard} needs a shard.
    let config = t.path().join("groupsync.toml");
    let text = fs::read_to_string(&config)
        .unwrap()
        .replace("state.db", "state-{shard}.db");
    fs::write(&config, text).unwrap();
    t.cmd()
        .arg("status")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("{shard}"));
    t.cmd().args(["run", "--shard", "0/2"]).assert().success();
    assert!(t.path().join("state-0-of-2.db").exists());
}

#[test]
fn each_shard_writes_its_own_metrics_labelled_with_it() {
    let t = tree(2);
    job(&t, &users());
    let config = t.path().join("groupsync.toml");
    let mut text = fs::read_to_string(&config).unwrap();
    text.push_str("\n[metrics]\ntextfile = \"groupsync.prom\"\n");
    fs::write(&config, text).unwrap();
    run_shards(&t, 2);
    for i in 0..2 {
        let prom =
            fs::read_to_string(t.path().join(format!("groupsync.shard-{i}-of-2.prom"))).unwrap();
        let samples: Vec<&str> = prom.lines().filter(|l| !l.starts_with('#')).collect();
        assert!(!samples.is_empty());
        for s in samples {
            assert!(s.contains(&format!("shard=\"{i}/2\"")), "{s}");
        }
        prometheus_parse::Scrape::parse(prom.lines().map(|l| Ok(l.to_string()))).unwrap();
    }
}

/// A destination removed from the job after the number of shards changed, before its new shard
/// ever ran, is known only to its old shard's state: the new shards leave it (they never knew
/// it), and running the old shards once more cleans it up, as the docs say.
#[test]
fn a_destination_removed_across_a_change_of_n_is_cleaned_up_by_its_old_shards() {
    let t = tree(3);
    let all = users();
    job(&t, &all);
    run_shards(&t, 3);
    // One that moves from 3 shards to 4.
    let gone = all
        .iter()
        .find(|u| shard_of(u, 3) != shard_of(u, 4))
        .unwrap()
        .clone();
    let rest: Vec<String> = all.iter().filter(|u| **u != gone).cloned().collect();
    job(&t, &rest);
    run_shards(&t, 4);
    assert_eq!(
        t.copies(&gone, "Team").len(),
        3,
        "the new shards never knew {gone}"
    );
    run_shards(&t, 3);
    assert!(
        t.copies(&gone, "Team").is_empty(),
        "its old shard cleaned {gone} up"
    );
    assert_synced(&t, &rest, 3);
}
