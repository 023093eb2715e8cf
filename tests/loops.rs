//! Jobs that feed each other: a cycle (alice's group to bob, bob's group of that name back to
//! alice) is refused, naming the jobs, at `job new`, `job add-dest`, `check`, `run` and `plan`;
//! a chain keeps working; and what names alone cannot see (here a user folder reached under two
//! names) never grows at run time, because a contact that came through a job is never copied by
//! it again.

mod common;

use common::{Tree, card};
use predicates::prelude::*;
use std::fs;

fn job_file(
    t: &Tree,
    name: &str,
    tag: &str,
    source: &str,
    group: &str,
    dests: &[&str],
    target: &str,
) {
    let d: Vec<String> = dests.iter().map(|d| format!("\"{d}\"")).collect();
    fs::write(
        t.path().join("jobs").join(format!("{name}.toml")),
        format!(
            "tag = \"{tag}\"\nsource = \"{source}\"\ngroup = \"{group}\"\ndestinations = [{}]\ntarget_group = \"{target}\"\n",
            d.join(", ")
        ),
    )
    .unwrap();
}

#[test]
fn a_cycle_of_jobs_is_refused_where_it_is_made() {
    let t = Tree::new(3);
    t.cmd()
        .args([
            "job", "new", "out", "--source", "alice", "--group", "Team", "--dest", "bob",
        ])
        .assert()
        .success();
    assert_eq!(t.copies("bob", "Team").len(), 3);
    // bob's "Team" back to alice: refused, nothing written.
    t.cmd()
        .args([
            "job", "new", "back", "--source", "bob", "--group", "Team", "--dest", "alice",
        ])
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains("jobs back, out feed each other")
                .and(predicate::str::contains("nothing was written")),
        );
    assert!(!t.path().join("jobs/back.toml").exists());
    // Made without alice, then alice added: refused too, the file unchanged.
    t.cmd()
        .args([
            "job", "new", "back", "--source", "bob", "--group", "Team", "--dest", "carol",
        ])
        .assert()
        .success();
    let before = t.read_job("back");
    t.cmd()
        .args(["job", "add-dest", "back", "alice"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("feed each other"));
    assert_eq!(t.read_job("back"), before);
}

#[test]
fn a_cycle_written_by_hand_is_refused_at_run_and_check_and_the_other_jobs_run() {
    let t = Tree::new(3);
    fs::create_dir_all(t.group("bob", "Team")).unwrap();
    fs::write(
        t.group("bob", "Team").join("b.vcf"),
        card("b", "Bob's", "b@x"),
    )
    .unwrap();
    job_file(&t, "out", "gSync11", "alice", "Team", &["bob"], "Team");
    job_file(&t, "back", "gSync12", "bob", "Team", &["alice"], "Team");
    job_file(&t, "side", "gSync13", "alice", "Team", &["dave"], "Team");
    let alice = t.cards("alice", "Team");
    t.cmd()
        .arg("run")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("jobs back, out feed each other"))
        .stdout(predicate::str::contains("dave: created 3"));
    assert_eq!(t.cards("alice", "Team"), alice);
    assert!(t.copies("bob", "Team").is_empty());
    t.cmd()
        .args(["plan", "out"])
        .assert()
        .code(2)
        .stdout(predicate::str::contains("refused"));
    t.cmd()
        .arg("check")
        .assert()
        .code(2)
        .stdout(predicate::str::contains(
            "error\tjobs back, out feed each other",
        ));
    // Disabling one of them breaks the cycle.
    let back = fs::read_to_string(t.path().join("jobs/back.toml")).unwrap();
    fs::write(
        t.path().join("jobs/back.toml"),
        format!("{back}enabled = false\n"),
    )
    .unwrap();
    t.cmd().arg("run").assert().success();
    assert_eq!(t.copies("bob", "Team").len(), 3);
}

/// A chain: alice's "Team" to bob, bob's "Team" to carol's "Relay": carol gets alice's contacts
/// (through bob) and bob's own, once each, run after run.
#[test]
fn a_chain_of_jobs_keeps_working() {
    let t = Tree::new(2);
    fs::create_dir_all(t.group("bob", "Team")).unwrap();
    fs::write(
        t.group("bob", "Team").join("b.vcf"),
        card("b", "Bob's", "b@x"),
    )
    .unwrap();
    job_file(&t, "first", "gSync21", "alice", "Team", &["bob"], "Team");
    job_file(&t, "second", "gSync22", "bob", "Team", &["carol"], "Relay");
    for _ in 0..3 {
        t.cmd().arg("run").assert().success();
    }
    let relay = t.cards("carol", "Relay");
    assert_eq!(relay.len(), 3, "{relay:?}");
    assert_eq!(
        relay
            .iter()
            .filter(|(_, c)| c.contains("X-GSYNC-VIA:gSync21"))
            .count(),
        2,
        "alice's contacts came through the first job"
    );
    t.cmd()
        .arg("run")
        .assert()
        .success()
        .stdout(predicate::str::contains("carol: up to date (3 copies)"));
}

/// bob's folder is also reachable as "bobby" (a link to it: an administrator's layout), so no
/// name shows the two jobs feed each other. Runs still converge: each contact goes around the
/// cycle once, and no further.
#[test]
fn jobs_that_feed_each_other_unseen_never_grow() {
    let t = Tree::new(2);
    std::os::unix::fs::symlink("bob", t.user("bobby")).unwrap();
    fs::create_dir_all(t.group("bob", "Team")).unwrap();
    fs::write(
        t.group("bob", "Team").join("b.vcf"),
        card("b", "Bob's", "b@x"),
    )
    .unwrap();
    job_file(&t, "out", "gSync31", "alice", "Team", &["bob"], "Team");
    job_file(&t, "back", "gSync32", "bobby", "Team", &["alice"], "Team");
    t.cmd().arg("check").assert().success();
    for _ in 0..3 {
        t.cmd().arg("run").assert().success();
    }
    // alice: her 2, bob's 1 through "back", her 2 back through "out" then "back".
    // bob: his 1, alice's 2 through "out", his own back through "back" then "out".
    let counts = || (t.cards("alice", "Team").len(), t.cards("bob", "Team").len());
    assert_eq!(counts(), (5, 4), "{:?}", t.cards("alice", "Team"));
    for _ in 0..3 {
        let out = t.cmd().arg("run").assert().success();
        let text = String::from_utf8_lossy(&out.get_output().stdout).to_string();
        assert!(text.contains("came through this job"), "{text}");
        assert!(
            !text.contains("created 1") && !text.contains("created 2"),
            "{text}"
        );
        assert_eq!(counts(), (5, 4));
    }
    // Every copy names the jobs it came through, and none came through one job twice.
    for (_, c) in t
        .copies("alice", "Team")
        .iter()
        .chain(&t.copies("bob", "Team"))
    {
        let via = c
            .lines()
            .find(|l| l.starts_with("X-GSYNC-VIA:"))
            .map(|l| l["X-GSYNC-VIA:".len()..].to_string())
            .unwrap_or_default();
        let tag = c.lines().find(|l| l.starts_with("X-GSYNC:")).unwrap();
        assert!(!via.contains(&tag["X-GSYNC:".len()..]), "{c}");
    }
}
