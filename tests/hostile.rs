//! What real clients and hostile input do to a vdir tree, end to end through the `groupsync`
//! binary: files holding several vCards, symbolic links, FIFOs, devices, folders named like
//! cards, huge cards, symlinked groups, and a run killed inside a move. Nothing a user owns is
//! lost, nothing of another user's leaks, and no run hangs.

mod common;

use common::{TAG, Tree, card, source_ids};
use predicates::prelude::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};
use std::time::Duration;

/// A run that would hang on a FIFO fails the test instead of the suite.
const HANG: Duration = Duration::from_secs(60);

/// Every vCard (BEGIN…END block) in a folder's .vcf files, with the file it is in.
fn blocks(t: &Tree, u: &str, g: &str) -> Vec<(String, String)> {
    let mut out = vec![];
    for (name, text) in t.cards(u, g) {
        let mut cur: Option<String> = None;
        for line in text.split_inclusive('\n') {
            if line.trim().eq_ignore_ascii_case("BEGIN:VCARD") {
                cur = Some(String::new());
            }
            if let Some(c) = cur.as_mut() {
                c.push_str(line);
            }
            if line.trim().eq_ignore_ascii_case("END:VCARD")
                && let Some(c) = cur.take()
            {
                out.push((name.clone(), c));
            }
        }
    }
    out
}

fn mkfifo(path: &std::path::Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

/// A user's export holds a copy and a card of their own in one file: the copy is brought back in
/// line, deleted when its source goes, and the user's card is never lost (it stays in its file,
/// byte for byte, and moves to "My Contacts" when the user leaves the job).
#[test]
fn a_card_of_the_users_own_in_a_copys_file_is_never_lost() {
    let t = Tree::new(3);
    t.write_job("team", &["bob"], "");
    t.cmd().arg("run").assert().success();
    let copies = t.copies("bob", "Team");
    assert_eq!(copies.len(), 3);
    // bob's phone exported the copy of p001, edited, and a card of his own, into one file.
    let (file, copy) = copies
        .iter()
        .find(|(_, c)| c.contains("X-GSYNC-SOURCE:p001"))
        .unwrap()
        .clone();
    let own = card("bob-own-1", "Bob Own", "bob@own.example");
    let edited = copy.replace("p1@example.com", "p1@tampered.example");
    fs::write(t.group("bob", "Team").join(&file), format!("{edited}{own}")).unwrap();

    // The edit is overwritten; bob's card stays where it is, byte for byte.
    t.cmd().arg("run").assert().success();
    let now = blocks(&t, "bob", "Team");
    assert!(
        now.iter().any(|(_, b)| b == &own),
        "bob's own card was lost: {now:?}"
    );
    let p1: Vec<_> = now
        .iter()
        .filter(|(_, b)| b.contains("X-GSYNC-SOURCE:p001"))
        .collect();
    assert_eq!(p1.len(), 1, "{now:?}");
    assert!(p1[0].1.contains("p1@example.com"), "{p1:?}");
    // A rerun changes nothing.
    t.cmd()
        .arg("run")
        .assert()
        .success()
        .stdout(predicate::str::contains("bob: up to date (3 copies)"));

    // The source contact goes: its copy goes, bob's card stays.
    fs::remove_file(t.group("alice", "Team").join("p001.vcf")).unwrap();
    t.cmd().arg("run").assert().success();
    let now = blocks(&t, "bob", "Team");
    assert!(now.iter().any(|(_, b)| b == &own), "{now:?}");
    assert_eq!(source_ids(&t.copies("bob", "Team")), vec!["p000", "p002"]);

    // bob leaves the job: his card moves to "My Contacts", nothing of the job is left.
    fs::write(
        t.group("bob", "Team").join("more.vcf"),
        format!("{own}{copy}"),
    )
    .unwrap();
    t.write_job("team", &[], "");
    t.cmd().arg("run").assert().success();
    assert!(
        !t.group("bob", "Team").exists(),
        "{:?}",
        t.cards("bob", "Team")
    );
    let mine = blocks(&t, "bob", "My Contacts");
    assert_eq!(
        mine.iter().filter(|(_, b)| **b == own).count(),
        2,
        "both of bob's cards moved, once each: {mine:?}"
    );
    assert!(
        mine.iter().all(|(_, b)| !b.contains("X-GSYNC:")),
        "{mine:?}"
    );
}

/// A run killed after a user's own card was linked into "My Contacts" and before it was unlinked
/// from the group leaves it in both; the next run finishes the move without a second copy.
#[test]
fn a_run_killed_inside_a_move_leaves_the_card_once() {
    let t = Tree::new(2);
    t.write_job("team", &["bob"], "");
    t.cmd().arg("run").assert().success();
    let own = card("bob-own", "Bob Own", "bob@own.example");
    let in_group = t.group("bob", "Team").join("own.vcf");
    fs::write(&in_group, &own).unwrap();
    t.write_job("team", &[], "");
    // What the killed run left: the same file under both names (a hard link).
    fs::hard_link(&in_group, t.group("bob", "My Contacts").join("own.vcf")).unwrap();
    // And the first card of a file of two, already written to "My Contacts", still in its file.
    let other = card("bob-other", "Bob Other", "other@own.example");
    let second = card("bob-second", "Bob Second", "second@own.example");
    fs::write(
        t.group("bob", "Team").join("export.vcf"),
        format!("{other}{second}"),
    )
    .unwrap();
    fs::write(t.group("bob", "My Contacts").join("export-1.vcf"), &other).unwrap();

    t.cmd().arg("run").assert().success();
    assert!(
        !t.group("bob", "Team").exists(),
        "{:?}",
        t.cards("bob", "Team")
    );
    let mine = blocks(&t, "bob", "My Contacts");
    assert_eq!(
        mine.iter().filter(|(_, b)| **b == own).count(),
        1,
        "{mine:?}"
    );
    for c in [&other, &second] {
        assert_eq!(mine.iter().filter(|(_, b)| b == c).count(), 1, "{mine:?}");
    }
}

/// A symbolic link in a source group is not followed: another user's private card is never
/// copied, and copies a link made before are removed.
#[test]
fn a_symlinked_card_is_never_copied() {
    let t = Tree::new(2);
    fs::create_dir_all(t.group("carol", "Private")).unwrap();
    let secret = t.group("carol", "Private").join("secret.vcf");
    fs::write(
        &secret,
        card("secret", "Carol Secret", "secret@carol.example"),
    )
    .unwrap();
    symlink(&secret, t.group("alice", "Team").join("leak.vcf")).unwrap();
    t.write_job("team", &["bob"], "");
    t.cmd()
        .arg("run")
        .timeout(HANG)
        .assert()
        .success()
        .stderr(predicate::str::contains("leak.vcf").and(predicate::str::contains("link")));
    assert_eq!(source_ids(&t.copies("bob", "Team")), vec!["p000", "p001"]);
    for (_, c) in t.cards("bob", "Team") {
        assert!(!c.contains("Secret"), "{c}");
    }
    // A copy a link made before this release goes.
    fs::write(
        t.group("bob", "Team").join("old-leak.vcf"),
        format!(
            "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:old\r\nFN:Carol Secret\r\nX-GSYNC:{TAG}\r\nX-GSYNC-SOURCE:leak\r\nEND:VCARD\r\n"
        ),
    )
    .unwrap();
    t.cmd().arg("run").assert().success();
    assert_eq!(source_ids(&t.copies("bob", "Team")), vec!["p000", "p001"]);
}

/// FIFOs, devices and folders named like cards, in a source or a destination group, are skipped
/// with a note naming them: the run neither hangs nor fails, and none of them is touched.
#[test]
fn fifos_devices_and_folders_never_hang_or_fail_a_run() {
    let t = Tree::new(2);
    t.write_job("team", &["bob"], "");
    fs::create_dir_all(t.group("bob", "Team")).unwrap();
    for g in [t.group("alice", "Team"), t.group("bob", "Team")] {
        mkfifo(&g.join("pipe.vcf"));
        symlink("/dev/zero", g.join("zero.vcf")).unwrap();
        fs::create_dir(g.join("folder.vcf")).unwrap();
    }
    symlink("/dev/zero", t.group("alice", "Team").join("zero-dev.vcf")).unwrap();
    let out = t.cmd().arg("run").timeout(HANG).assert().success();
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    for n in ["pipe.vcf", "zero.vcf", "folder.vcf"] {
        assert!(err.contains(n), "no note names {n}: {err}");
    }
    assert_eq!(source_ids(&t.copies("bob", "Team")), vec!["p000", "p001"]);
    let bob = t.group("bob", "Team");
    assert!(
        fs::symlink_metadata(bob.join("pipe.vcf"))
            .unwrap()
            .file_type()
            .is_fifo_like()
    );
    assert!(bob.join("folder.vcf").is_dir());
    // Removing bob keeps what is not a card where it is (the group stays, holding them).
    t.write_job("team", &[], "");
    t.cmd().arg("run").timeout(HANG).assert().success();
    assert!(t.copies("bob", "Team").is_empty());
    assert!(bob.join("folder.vcf").is_dir());
}

trait FifoLike {
    fn is_fifo_like(&self) -> bool;
}

impl FifoLike for fs::FileType {
    fn is_fifo_like(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_fifo()
    }
}

/// A card larger than `max_card_bytes` is not read: in a source group it is held (its copies are
/// left as they are), in a destination group it is the user's and left alone.
#[test]
fn a_huge_card_is_not_read() {
    let t = Tree::new(2);
    let config = t.path().join("groupsync.toml");
    let text = fs::read_to_string(&config).unwrap();
    fs::write(&config, format!("{text}max_card_bytes = 100000\n")).unwrap();
    t.write_job("team", &["bob"], "");
    t.cmd().arg("run").assert().success();
    let note = "X".repeat(200_000);
    let huge = card("huge", "Huge Card", "huge@example.com")
        .replace("END:VCARD", &format!("NOTE:{note}\r\nEND:VCARD"));
    fs::write(t.group("alice", "Team").join("p001.vcf"), &huge).unwrap();
    fs::write(t.group("bob", "Team").join("mine.vcf"), &huge).unwrap();
    let out = t.cmd().arg("run").assert().success();
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(err.contains("max_card_bytes"), "{err}");
    // p001's copy is held as it was; bob's huge card is untouched.
    assert_eq!(source_ids(&t.copies("bob", "Team")), vec!["p000", "p001"]);
    assert_eq!(
        fs::read_to_string(t.group("bob", "Team").join("mine.vcf")).unwrap(),
        huge
    );
}

/// A destination group that is a symbolic link (here to the source group itself) is refused
/// with an error naming it; the source is never written to.
#[test]
fn a_symlinked_group_is_refused() {
    let t = Tree::new(3);
    symlink(t.group("alice", "Team"), t.group("bob", "Team")).unwrap();
    t.write_job("team", &["bob", "carol"], "");
    let before = t.cards("alice", "Team");
    t.cmd()
        .arg("run")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("symbolic link"));
    assert_eq!(t.cards("alice", "Team"), before, "the source was written");
    assert_eq!(t.copies("carol", "Team").len(), 3, "carol is synced");
    t.cmd().arg("run").assert().code(1);
    assert_eq!(t.cards("alice", "Team"), before);
}

/// The vdir backend writes its files with the configured umask (default 0022), whatever the
/// process's: the shipped units run with UMask=0077, and users must still read their copies.
#[test]
fn copies_are_written_with_the_configured_umask() {
    for (umask, file, dir) in [(None, 0o644, 0o755), (Some("0027"), 0o640, 0o750)] {
        umask_case(umask, file, dir);
    }
}

fn umask_case(umask: Option<&str>, file_mode: u32, dir_mode: u32) {
    use std::os::unix::process::CommandExt;
    let t = Tree::new(1);
    let config = t.path().join("groupsync.toml");
    let text = fs::read_to_string(&config).unwrap();
    if let Some(u) = umask {
        fs::write(&config, format!("{text}umask = \"{u}\"\n")).unwrap();
    }
    t.write_job("team", &["bob"], "");
    // As under the shipped units (UMask=0077).
    let mut std_cmd = std::process::Command::new(env!("CARGO_BIN_EXE_groupsync"));
    std_cmd
        .arg("run")
        .env("GROUPSYNC_CONFIG", &config)
        .env_remove("GROUPSYNC_LOG");
    unsafe {
        std_cmd.pre_exec(|| {
            libc::umask(0o077);
            Ok(())
        });
    }
    assert_cmd::Command::from_std(std_cmd).assert().success();
    let dir = fs::metadata(t.group("bob", "Team")).unwrap();
    assert_eq!(
        dir.mode() & 0o777,
        dir_mode,
        "group folder, umask {umask:?}"
    );
    let cards = t.cards("bob", "Team");
    assert_eq!(cards.len(), 1);
    for (name, _) in cards {
        let m = fs::metadata(t.group("bob", "Team").join(name)).unwrap();
        assert_eq!(m.mode() & 0o777, file_mode, "umask {umask:?}");
    }
}

/// A copy whose tag the user removed is theirs, UID and all; the fresh copy made next to it gets
/// a UID and a file name of its own (khard and vdirsyncer refuse two cards with one UID).
#[test]
fn a_fresh_copy_never_shares_a_uid_with_a_card_of_the_users() {
    let t = Tree::new(2);
    t.write_job("team", &["bob"], "");
    t.cmd().arg("run").assert().success();
    let (file, copy) = t
        .copies("bob", "Team")
        .into_iter()
        .find(|(_, c)| c.contains("X-GSYNC-SOURCE:p000"))
        .unwrap();
    let mine: String = copy
        .split_inclusive('\n')
        .filter(|l| !l.starts_with("X-GSYNC:"))
        .collect();
    fs::write(t.group("bob", "Team").join(&file), &mine).unwrap();
    t.cmd().arg("run").assert().success();
    let uids: Vec<String> = blocks(&t, "bob", "Team")
        .iter()
        .filter_map(|(_, b)| {
            b.lines()
                .find(|l| l.starts_with("UID:"))
                .map(str::to_string)
        })
        .collect();
    let unique: std::collections::BTreeSet<&String> = uids.iter().collect();
    assert_eq!(uids.len(), 3, "{uids:?}");
    assert_eq!(unique.len(), 3, "two cards share a UID: {uids:?}");
    assert_eq!(
        fs::read_to_string(t.group("bob", "Team").join(&file)).unwrap(),
        mine
    );
    assert_eq!(source_ids(&t.copies("bob", "Team")), vec!["p000", "p001"]);
    t.cmd()
        .arg("run")
        .assert()
        .success()
        .stdout(predicate::str::contains("bob: up to date (2 copies)"));
}
