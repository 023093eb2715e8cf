//! End-to-end tests of the `groupsync` binary on temporary vdir trees: one test per semantic of
//! the rules of docs/concepts.md, each bad input, the safety limits, and snapshots of `plan` and `status`.

mod common;

use common::{TAG, Tree, card, redact, source_ids};
use predicates::prelude::*;
use std::fs;

#[test]
fn s1_job_new_runs_at_once_and_no_run_does_not() {
    let t = Tree::new(3);
    t.cmd()
        .args([
            "job", "new", "team", "--source", "alice", "--group", "Team", "--dest", "bob",
            "--dest", "carol",
        ])
        .assert()
        .success();
    assert_eq!(t.copies("bob", "Team").len(), 3);
    assert_eq!(t.copies("carol", "Team").len(), 3);
    let job = t.read_job("team");
    assert!(
        regex::Regex::new(r#"tag = "gSync\d{10}""#)
            .unwrap()
            .is_match(&job),
        "{job}"
    );

    t.cmd()
        .args([
            "job",
            "new",
            "later",
            "--source",
            "alice",
            "--group",
            "Team",
            "--dest",
            "dave",
            "--target-group",
            "Later",
            "--no-run",
        ])
        .assert()
        .success();
    assert!(t.cards("dave", "Later").is_empty());
    assert!(!t.group("dave", "Later").exists());
    t.cmd().args(["run", "later"]).assert().success();
    assert_eq!(t.copies("dave", "Later").len(), 3);
    // Two jobs never share a tag.
    assert_ne!(
        t.read_job("team").lines().find(|l| l.starts_with("tag")),
        t.read_job("later").lines().find(|l| l.starts_with("tag"))
    );
}

#[test]
fn s2_s3_group_created_copies_tagged_and_faithful() {
    let t = Tree::new(4);
    t.write_job("team", &["bob"], "target_group = \"Colleagues\"\n");
    t.cmd().arg("run").assert().success();
    let copies = t.copies("bob", "Colleagues");
    assert_eq!(copies.len(), 4);
    for (_, c) in &copies {
        assert!(c.contains(&format!("X-GSYNC:{TAG}\r\n")), "{c}");
        assert!(
            c.contains("X-UNKNOWN;X-PARAM=1:survives"),
            "unknown properties survive: {c}"
        );
        assert!(c.contains("VERSION:3.0"), "{c}");
    }
    assert_eq!(source_ids(&copies), vec!["p000", "p001", "p002", "p003"]);
}

#[test]
fn s3_losing_the_state_database_costs_no_duplicate() {
    let t = Tree::new(5);
    t.write_job("team", &["bob", "carol"], "");
    t.cmd().arg("run").assert().success();
    let before = t.cards("bob", "Team");
    for f in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = fs::remove_file(t.path().join(f));
    }
    t.cmd()
        .arg("run")
        .assert()
        .success()
        .stdout(predicate::str::contains("bob: up to date (5 copies)"));
    assert_eq!(t.cards("bob", "Team"), before);
}

#[test]
fn s4_edits_to_a_copy_are_overwritten() {
    let t = Tree::new(2);
    t.write_job("team", &["bob"], "");
    t.cmd().arg("run").assert().success();
    let (name, text) = t.copies("bob", "Team").remove(0);
    let path = t.group("bob", "Team").join(&name);
    fs::write(
        &path,
        text.replace("@example.com", "@tampered.example")
            .replace("END:VCARD", "NOTE:added by bob\r\nEND:VCARD"),
    )
    .unwrap();
    t.cmd()
        .arg("run")
        .assert()
        .success()
        .stdout(predicate::str::contains("updated 1"));
    assert_eq!(fs::read_to_string(&path).unwrap(), text);
}

#[test]
fn s5_contacts_a_user_adds_to_the_group_are_kept() {
    let t = Tree::new(2);
    t.write_job("team", &["bob"], "");
    t.cmd().arg("run").assert().success();
    let own = card("bob-own", "Bob's Friend", "friend@example.net");
    fs::write(t.group("bob", "Team").join("friend.vcf"), &own).unwrap();
    // Even a card carrying another job's tag is not ours.
    let other = card("other", "Other Job", "o@example.net").replace(
        "END:VCARD",
        "X-GSYNC:gSync999\r\nX-GSYNC-SOURCE:p000\r\nEND:VCARD",
    );
    fs::write(t.group("bob", "Team").join("other.vcf"), &other).unwrap();
    fs::remove_file(t.group("alice", "Team").join("p000.vcf")).unwrap();
    t.cmd().arg("run").assert().success();
    assert_eq!(
        fs::read_to_string(t.group("bob", "Team").join("friend.vcf")).unwrap(),
        own
    );
    assert_eq!(
        fs::read_to_string(t.group("bob", "Team").join("other.vcf")).unwrap(),
        other
    );
    assert_eq!(
        t.copies("bob", "Team").len(),
        2,
        "one copy of ours and the other job's card"
    );
}

#[test]
fn s6_source_changes_propagate() {
    let t = Tree::new(3);
    t.write_job("team", &["bob", "carol"], "");
    t.cmd().arg("run").assert().success();
    t.put_source(1, "Person One Renamed");
    t.put_source(7, "Person Seven");
    fs::remove_file(t.group("alice", "Team").join("p002.vcf")).unwrap();
    t.cmd()
        .arg("run")
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "bob: created 1, updated 1, deleted 1, moved 0",
        ));
    for u in ["bob", "carol"] {
        let copies = t.copies(u, "Team");
        assert_eq!(source_ids(&copies), vec!["p000", "p001", "p007"]);
        assert!(
            copies
                .iter()
                .any(|(_, c)| c.contains("FN:Person One Renamed"))
        );
    }
    // The deleted copy is in the trash, and can be restored.
    t.cmd().arg("restore").assert().success().stdout(
        predicate::str::contains("Person 002").and(predicate::str::contains("source-gone")),
    );
    t.cmd()
        .args(["restore", "--dest", "bob", "--all", "--untag"])
        .assert()
        .success();
    let restored: Vec<_> = t
        .cards("bob", "Team")
        .into_iter()
        .filter(|(_, c)| c.contains("FN:Person 002"))
        .collect();
    assert_eq!(restored.len(), 1);
    assert!(
        !restored[0].1.contains("X-GSYNC"),
        "restored untagged: {}",
        restored[0].1
    );
    t.cmd().arg("run").assert().success();
    assert_eq!(
        t.cards("bob", "Team")
            .iter()
            .filter(|(_, c)| c.contains("FN:Person 002"))
            .count(),
        1,
        "an untagged restore is the user's own now"
    );
}

#[test]
fn s7_a_deleted_copy_comes_back() {
    let t = Tree::new(3);
    t.write_job("team", &["bob"], "");
    t.cmd().arg("run").assert().success();
    let (name, text) = t.copies("bob", "Team").remove(1);
    fs::remove_file(t.group("bob", "Team").join(&name)).unwrap();
    t.cmd()
        .arg("plan")
        .assert()
        .success()
        .stdout(predicate::str::contains("recreate"));
    t.cmd()
        .arg("run")
        .assert()
        .success()
        .stdout(predicate::str::contains("created 1"));
    assert_eq!(
        fs::read_to_string(t.group("bob", "Team").join(&name)).unwrap(),
        text
    );
}

#[test]
fn s8_removing_a_destination_cleans_it_and_keeps_its_own_contacts() {
    let t = Tree::new(3);
    t.write_job("team", &["bob", "carol", "dave"], "");
    t.cmd().arg("run").assert().success();
    let own = card("bob-own", "Bob's Friend", "friend@example.net");
    fs::write(t.group("bob", "Team").join("friend.vcf"), &own).unwrap();
    // At once.
    t.cmd()
        .args(["job", "remove-dest", "team", "bob"])
        .assert()
        .success();
    assert!(!t.group("bob", "Team").exists(), "group removed");
    assert_eq!(
        fs::read_to_string(t.group("bob", "My Contacts").join("friend.vcf")).unwrap(),
        own
    );
    assert_eq!(t.copies("carol", "Team").len(), 3, "others untouched");
    // Deferred: cleaned at the next run.
    t.cmd()
        .args(["job", "remove-dest", "team", "carol", "--defer"])
        .assert()
        .success();
    assert_eq!(t.copies("carol", "Team").len(), 3);
    t.cmd()
        .arg("status")
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "carol: 3 copies, last ok (removed from job; cleaned up at the next run)",
        ));
    t.cmd().arg("run").assert().success();
    assert!(!t.group("carol", "Team").exists());
    // Removed by editing the file by hand.
    let job = t.read_job("team").replace("\"dave\"", "");
    fs::write(t.path().join("jobs/team.toml"), job.replace(", ]", "]")).unwrap();
    t.cmd()
        .arg("run")
        .assert()
        .success()
        .stdout(predicate::str::contains("dave (removed from job)"));
    assert!(!t.group("dave", "Team").exists());
}

#[test]
fn s9_adding_a_destination_syncs_at_the_next_run_or_now() {
    let t = Tree::new(2);
    t.write_job("team", &["bob"], "");
    t.cmd().arg("run").assert().success();
    t.cmd()
        .args(["job", "add-dest", "team", "carol"])
        .assert()
        .success();
    assert!(t.copies("carol", "Team").is_empty());
    t.cmd().arg("run").assert().success();
    assert_eq!(t.copies("carol", "Team").len(), 2);
    t.cmd()
        .args(["job", "add-dest", "team", "dave", "--now"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("dave: created 2").and(predicate::str::contains("bob").not()),
        );
    assert_eq!(t.copies("dave", "Team").len(), 2);
}

#[test]
fn s10_cli_edits_keep_comments_and_layout() {
    let t = Tree::new(1);
    fs::write(
        t.path().join("jobs/team.toml"),
        format!("# Team directory, owned by HR.\ntag = \"{TAG}\" # never edit\nsource = \"alice\"\ngroup = \"Team\"\n\n# who gets it\ndestinations = [\n  \"bob\",   # sales\n  \"carol\", # support\n]\n\n[limits]\nmax_delete = 5 # careful\n"),
    )
    .unwrap();
    t.cmd()
        .args(["job", "add-dest", "team", "dave"])
        .assert()
        .success();
    t.cmd()
        .args(["job", "remove-dest", "team", "bob", "--defer"])
        .assert()
        .success();
    insta::assert_snapshot!("edited_job_file", t.read_job("team"));
}

#[test]
fn bad_destination_user_is_named_and_the_file_unchanged() {
    let t = Tree::new(1);
    t.write_job("team", &["bob"], "");
    let before = t.read_job("team");
    t.cmd()
        .args(["job", "add-dest", "team", "carol", "nosuchuser"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "invalid destination user: nosuchuser",
        ));
    assert_eq!(t.read_job("team"), before);
    t.cmd()
        .args([
            "job", "new", "x", "--source", "alice", "--group", "Team", "--dest", "ghost",
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("invalid destination user: ghost"));
    assert!(!t.path().join("jobs/x.toml").exists());
    // A user the job file names who does not exist (a typo in a hand edit, an account deleted
    // since) is the configuration's fault: the job is refused before anything is written.
    t.write_job("team", &["bob", "ghost"], "");
    t.cmd()
        .arg("run")
        .assert()
        .code(2)
        .stdout(predicate::str::contains("ghost (no such user)"))
        .stderr(predicate::str::contains("nothing was changed"));
    assert!(t.copies("bob", "Team").is_empty());
    t.cmd()
        .arg("history")
        .assert()
        .success()
        .stdout(predicate::str::contains("invalid"));
    t.write_job("team", &["bob"], "");
    t.cmd().arg("run").assert().success();
    assert_eq!(t.copies("bob", "Team").len(), 1);
}

/// Every check that can fail runs before anything is written, and a failure of the job's
/// configuration exits 2: an edited tag, a missing source group or user, a target group the
/// provider cannot make.
#[test]
fn configuration_errors_exit_2_and_change_nothing() {
    let t = Tree::new(2);
    t.write_job("team", &["bob"], "");
    t.cmd().arg("run").assert().success();
    let before = t.cards("bob", "Team");
    // An edited tag.
    let text = t.read_job("team").replace(TAG, "gSync42");
    fs::write(t.path().join("jobs/team.toml"), text).unwrap();
    t.cmd()
        .arg("run")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("must never be edited"));
    // A source group that is gone.
    t.write_job("team", &["bob"], "");
    fs::rename(t.group("alice", "Team"), t.group("alice", "Old")).unwrap();
    t.cmd()
        .arg("run")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("source group \"Team\" not found"));
    fs::rename(t.group("alice", "Old"), t.group("alice", "Team")).unwrap();
    // A target group no vdir folder can be.
    t.write_job("team", &["bob"], "target_group = \"a/b\"\n");
    t.cmd()
        .arg("run")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("target_group \"a/b\""));
    assert_eq!(t.cards("bob", "Team"), before);
    t.cmd()
        .args([
            "job",
            "new",
            "slash",
            "--source",
            "alice",
            "--group",
            "Team",
            "--dest",
            "carol",
            "--target-group",
            "a/b",
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("target group \"a/b\""));
    assert!(!t.path().join("jobs/slash.toml").exists());
    t.cmd()
        .arg("check")
        .assert()
        .code(2)
        .stdout(predicate::str::contains("a/b"));
}

#[test]
fn bad_job_definitions_are_refused() {
    let t = Tree::new(1);
    let new = |args: &[&str]| {
        let mut c = t.cmd();
        c.args(["job", "new", "x", "--source", "alice"]).args(args);
        c.assert()
    };
    new(&["--group", "Nope", "--dest", "bob"])
        .code(2)
        .stderr(predicate::str::contains(
            "source group \"Nope\" not found for user alice",
        ));
    new(&["--group", "Team", "--dest", "alice"])
        .code(2)
        .stderr(predicate::str::contains("cannot be its own destination"));
    new(&["--group", "Team", "--dest", "bob", "--dest", "bob"])
        .code(2)
        .stderr(predicate::str::contains("duplicate destination \"bob\""));
    new(&["--group", "Team"])
        .code(2)
        .stderr(predicate::str::contains("--dest"));
    assert!(!t.path().join("jobs/x.toml").exists());
    t.cmd()
        .args([
            "job", "new", "bad/name", "--source", "alice", "--group", "Team", "--dest", "bob",
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("invalid job name"));
}

#[test]
fn malformed_files_name_file_line_and_column() {
    let t = Tree::new(1);
    t.write_job("team", &["bob"], "colour = \"blue\"\n");
    t.cmd()
        .arg("run")
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "jobs/team.toml:6:1: unknown field `colour`",
        ));
    t.write_job("team", &["bob", "bob"], "");
    t.cmd().arg("check").assert().code(2).stdout(
        predicate::str::contains("team.toml:5:")
            .and(predicate::str::contains("duplicate destination \"bob\"")),
    );
    t.write_job("team", &["bob"], "");
    fs::write(
        t.path().join("jobs/broken.toml"),
        "tag = \"gSync5\"\nsource = \"alice\"\ngroup = \n",
    )
    .unwrap();
    // The good job still runs; the broken one is reported and the exit code says so.
    t.cmd()
        .arg("run")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("broken.toml:3:"))
        .stdout(predicate::str::contains("bob: created 1"));
    fs::remove_file(t.path().join("jobs/broken.toml")).unwrap();
    fs::write(
        t.path().join("groupsync.toml"),
        "state = \"state.db\"\n[backend]\nkind = \"vdir\"\nroot = \"contacts\"\nconcurency = 3\n",
    )
    .unwrap();
    t.cmd()
        .arg("run")
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "groupsync.toml:5:1: unknown field `concurency`",
        ));
    fs::write(
        t.path().join("groupsync.toml"),
        "[backend]\nkind = \"vdir\"\nroot = \"nowhere\"\n",
    )
    .unwrap();
    t.cmd()
        .arg("run")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("nowhere is not a folder"));
    t.cmd()
        .env("GROUPSYNC_CONFIG", t.path().join("missing.toml"))
        .arg("run")
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "missing.toml: cannot read configuration",
        ));
}

#[test]
fn a_garbage_source_card_is_held_not_deleted_everywhere() {
    let t = Tree::new(3);
    t.write_job("team", &["bob"], "");
    t.cmd().arg("run").assert().success();
    fs::write(
        t.group("alice", "Team").join("p001.vcf"),
        "this is not a vcard",
    )
    .unwrap();
    t.cmd()
        .arg("run")
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "source contact unreadable, its copies are left as they are: p001",
        ));
    assert_eq!(
        source_ids(&t.copies("bob", "Team")),
        vec!["p000", "p001", "p002"]
    );
}

#[test]
fn deletion_limit_stops_the_job_unless_forced() {
    let t = Tree::new(30);
    t.write_job("team", &["bob", "carol"], "");
    t.cmd().arg("run").assert().success();
    for i in 0..12 {
        fs::remove_file(t.group("alice", "Team").join(format!("p{i:03}.vcf"))).unwrap();
    }
    let before = t.cards("bob", "Team");
    t.cmd().arg("run").assert().code(3).stdout(
        predicate::str::is_match(
            "STOPPED: deletion limit: (bob|carol) would lose 12 of its 30 copies",
        )
        .unwrap(),
    );
    assert_eq!(t.cards("bob", "Team"), before);
    assert_eq!(t.copies("carol", "Team").len(), 30);
    t.cmd().args(["run", "--force"]).assert().success();
    assert_eq!(t.copies("bob", "Team").len(), 18);
    assert_eq!(t.copies("carol", "Team").len(), 18);
}

#[test]
fn an_empty_source_never_wipes_destinations_unless_forced() {
    let t = Tree::new(3);
    t.write_job("team", &["bob"], "");
    t.cmd().arg("run").assert().success();
    for i in 0..3 {
        fs::remove_file(t.group("alice", "Team").join(format!("p{i:03}.vcf"))).unwrap();
    }
    t.cmd()
        .arg("run")
        .assert()
        .code(3)
        .stderr(predicate::str::contains("reads empty"));
    assert_eq!(t.copies("bob", "Team").len(), 3);
    t.cmd().args(["run", "--force"]).assert().success();
    assert!(t.copies("bob", "Team").is_empty());
}

#[test]
fn a_failing_destination_does_not_stop_the_others() {
    let t = Tree::new(2);
    t.write_job("team", &["bob", "carol", "dave"], "");
    // carol's "Team" is a file, not a folder: her destination cannot be written.
    fs::write(t.group("carol", "Team"), "in the way").unwrap();
    t.cmd()
        .arg("run")
        .assert()
        .code(1)
        .stdout(predicate::str::contains("carol: FAILED"));
    assert_eq!(t.copies("bob", "Team").len(), 2);
    assert_eq!(t.copies("dave", "Team").len(), 2);
    t.cmd()
        .arg("status")
        .assert()
        .success()
        .stdout(predicate::str::contains("1 of 3 destinations failed"));
    fs::remove_file(t.group("carol", "Team")).unwrap();
    t.cmd().arg("run").assert().success();
    assert_eq!(t.copies("carol", "Team").len(), 2);
}

#[test]
fn two_runs_on_one_state_never_overlap() {
    let t = Tree::new(1);
    t.write_job("team", &["bob"], "");
    let held = groupsync::lock::acquire(
        &t.path().join("state.db"),
        std::time::Duration::from_secs(1),
    )
    .unwrap();
    t.cmd()
        .arg("run")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("another groupsync process"));
    assert!(t.copies("bob", "Team").is_empty());
    drop(held);
    t.cmd().arg("run").assert().success();
}

#[test]
fn delete_keeps_copies_and_purge_removes_them() {
    let t = Tree::new(2);
    t.write_job("team", &["bob"], "");
    t.cmd().arg("run").assert().success();
    t.cmd().args(["job", "delete", "team"]).assert().success();
    assert_eq!(t.copies("bob", "Team").len(), 2);
    t.write_job("team2", &["carol"], "");
    t.cmd().arg("run").assert().success();
    fs::write(
        t.group("carol", "Team").join("own.vcf"),
        card("own", "Own", "own@example.net"),
    )
    .unwrap();
    t.cmd()
        .args(["job", "delete", "team2", "--purge"])
        .assert()
        .success();
    assert!(!t.path().join("jobs/team2.toml").exists());
    assert!(!t.group("carol", "Team").exists());
    assert_eq!(t.cards("carol", "My Contacts").len(), 1);
}

#[test]
fn filters_and_field_selection() {
    let t = Tree::new(4);
    t.write_job(
        "team",
        &["bob"],
        "fields = [\"EMAIL\"]\n[filter]\nemail = \"^p[01]@\"\n",
    );
    t.cmd()
        .arg("run")
        .assert()
        .success()
        .stdout(predicate::str::contains("2 contacts (2 filtered out)"));
    let copies = t.copies("bob", "Team");
    assert_eq!(source_ids(&copies), vec!["p000", "p001"]);
    assert!(
        !copies[0].1.contains("X-UNKNOWN"),
        "unselected fields are not copied: {}",
        copies[0].1
    );
    // A field the job does not manage, added by the user, survives.
    let path = t.group("bob", "Team").join(&copies[0].0);
    let edited = copies[0]
        .1
        .replace("END:VCARD", "NOTE:my note\r\nEND:VCARD")
        .replace("p0@example.com", "changed@example.com");
    fs::write(&path, &edited).unwrap();
    t.cmd().arg("run").assert().success();
    let now = fs::read_to_string(&path).unwrap();
    assert!(
        now.contains("NOTE:my note") && now.contains("p0@example.com") && !now.contains("changed@"),
        "{now}"
    );
}

#[test]
fn plan_writes_nothing_and_snapshots() {
    let t = Tree::new(3);
    t.write_job("team", &["bob", "carol"], "");
    t.cmd().arg("run").assert().success();
    fs::write(
        t.group("bob", "Team").join("own.vcf"),
        card("own", "Own", "own@example.net"),
    )
    .unwrap();
    t.put_source(1, "Renamed");
    t.put_source(5, "Newcomer");
    fs::remove_file(t.group("alice", "Team").join("p000.vcf")).unwrap();
    t.cmd()
        .args(["job", "remove-dest", "team", "carol", "--defer"])
        .assert()
        .success();
    let before = (t.cards("bob", "Team"), t.cards("carol", "Team"));
    let out = t
        .cmd()
        .arg("plan")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    insta::assert_snapshot!("plan_output", String::from_utf8(out).unwrap());
    t.cmd().args(["run", "--dry-run"]).assert().success();
    assert_eq!((t.cards("bob", "Team"), t.cards("carol", "Team")), before);
    t.cmd().arg("run").assert().success();
    let status = t
        .cmd()
        .arg("status")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    insta::assert_snapshot!("status_output", redact(&String::from_utf8(status).unwrap()));
    let json = t
        .cmd()
        .args(["status", "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(v[0]["job"], "team");
    assert_eq!(v[0]["last_run"]["outcome"], "ok");
    let hist = t
        .cmd()
        .args(["history", "team", "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&hist).unwrap();
    assert_eq!(
        v.as_array().unwrap().len(),
        2,
        "two runs recorded (plan and dry runs are not)"
    );
}

#[test]
fn completions_man_and_broken_pipe() {
    let t = Tree::new(0);
    t.cmd()
        .args(["completions", "bash"])
        .assert()
        .success()
        .stdout(predicate::str::contains("groupsync"));
    t.cmd()
        .arg("man")
        .assert()
        .success()
        .stdout(predicate::str::contains(".TH groupsync"));
    // A reader that goes away early is not an error.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_groupsync"))
        .args(["completions", "zsh"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.cmd().arg("frobnicate").assert().code(2);
}

/// The change log's lines (after its header) grouped by run, newest first, then by destination
/// (by name, last first), each destination's lines in the order the log gave them.
fn by_run_and_destination(log: &str) -> String {
    let mut lines: Vec<&str> = log.lines().collect();
    let header = lines.remove(0);
    let key = |l: &&str| {
        let cols: Vec<&str> = l.split('\t').collect();
        let run: u64 = cols.get(1).and_then(|r| r.parse().ok()).unwrap_or(0);
        (
            std::cmp::Reverse(run),
            std::cmp::Reverse(cols.get(2).map(|u| u.to_string())),
        )
    };
    lines.sort_by_key(key);
    format!("{header}\n{}\n", lines.join("\n"))
}

#[test]
fn log_shows_each_change_with_fields_and_digests() {
    let t = Tree::new(3);
    // The log lists changes in the order they were recorded; destinations run in parallel, and
    // one records its last changes while the next one starts, so the lines of one run are
    // grouped by destination below (each destination's own lines keep their order).
    fs::write(
        t.path().join("groupsync.toml"),
        "state = \"state.db\"\njobs_dir = \"jobs\"\n\n[backend]\nkind = \"vdir\"\nroot = \"contacts\"\nconcurrency = 1\n",
    )
    .unwrap();
    t.write_job("team", &["bob", "carol"], "");
    t.cmd().arg("run").assert().success();
    // The source renames one contact; bob tampers with another's email; a third leaves the source.
    t.put_source(1, "Person One Renamed");
    let (name, text) = t
        .copies("bob", "Team")
        .into_iter()
        .find(|(_, c)| c.contains("FN:Person 002"))
        .unwrap();
    fs::write(
        t.group("bob", "Team").join(name),
        text.replace("p2@example.com", "p2@tampered.example"),
    )
    .unwrap();
    fs::remove_file(t.group("alice", "Team").join("p000.vcf")).unwrap();
    t.cmd().arg("run").assert().success();
    t.cmd()
        .args(["job", "remove-dest", "team", "carol"])
        .assert()
        .success();
    let out = t
        .cmd()
        .args(["log", "team"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    insta::assert_snapshot!(
        "log_output",
        by_run_and_destination(&redact(&String::from_utf8(out).unwrap()))
    );
    let only = t
        .cmd()
        .args(["log", "team", "--dest", "bob", "--contact", "person 002"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let only = String::from_utf8(only).unwrap();
    assert_eq!(
        only.lines().count(),
        3,
        "header, the update and the create: {only}"
    );
    assert!(only.contains("update\tPerson 002\tEMAIL\t"), "{only}");
    let json = t
        .cmd()
        .args(["log", "team", "--json", "--limit", "1"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
}

#[test]
fn log_json_lines_carry_job_and_destination() {
    let t = Tree::new(2);
    t.write_job("team", &["bob", "ghost"], "");
    // ghost's "Team" is a file, not a folder: that destination fails.
    t.failing_user("ghost");
    let out = t
        .cmd()
        .args(["--log-json", "-v", "run"])
        .assert()
        .code(1)
        .get_output()
        .stderr
        .clone();
    let text = String::from_utf8(out).unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let dest_events: Vec<_> = events
        .iter()
        .filter(|e| e["fields"]["dest"].is_string())
        .collect();
    assert!(dest_events.len() >= 2, "{text}");
    for e in dest_events {
        let in_spans = e["spans"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["job"] == "team"));
        assert!(in_spans || e["fields"]["job"] == "team", "{e}");
    }
    assert!(
        events
            .iter()
            .any(|e| e["fields"]["dest"] == "ghost" && e["level"] == "WARN"),
        "{text}"
    );
}
