//! Fidelity on realistic data: contacts from `tests/data/gen_vcards.py` (a copy of the project's
//! shared generator: vCard 3.0 and 4.0, inline photos, folding, escaping, non-ASCII names,
//! Apple-style grouped properties) go through a real run. Every copy must hold the same managed
//! properties as its source, photos must stay valid data URIs, a rerun must change nothing, and
//! editing K source contacts must update exactly K copies per destination.

mod common;

use common::Tree;
use predicates::prelude::*;
use std::fs;
use std::path::Path;
use std::process::Command;

use groupsync::card::{self, FieldSelection};

fn generate(dir: &Path, extra: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/gen_vcards.py");
    let out = Command::new("python3")
        .arg(&script)
        .args([
            "-n",
            "200",
            "--seed",
            "11",
            "--vcard-version",
            "mixed",
            "--photo-ratio",
            "0.25",
        ])
        .args(extra)
        .arg(dir)
        .output()
        .expect("python3 runs the generator (.ci/run installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn realistic_cards_are_copied_faithfully_and_idempotently() {
    let t = Tree::new(0);
    let src = t.group("alice", "Team");
    generate(&src, &[]);
    t.write_job("team", &["bob", "carol"], "");
    t.cmd()
        .arg("run")
        .assert()
        .success()
        .stdout(predicate::str::contains("bob: created 200"));

    let sources: std::collections::BTreeMap<String, String> = fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_stem().unwrap().to_string_lossy().to_string(),
                fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    let mut photos = 0;
    for u in ["bob", "carol"] {
        let copies = t.copies(u, "Team");
        assert_eq!(copies.len(), 200);
        for (name, text) in copies {
            let copy = card::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            let sid = card::source_of(&copy).unwrap();
            let source = card::parse(&sources[&sid]).unwrap();
            let a: Vec<_> = card::managed_entries(&source, &FieldSelection::All).collect();
            let b: Vec<_> = card::managed_entries(&copy, &FieldSelection::All).collect();
            assert_eq!(a, b, "copy {name} of {sid} differs from its source");
            assert_eq!(
                card::version(&copy),
                card::version(&source),
                "{name}: version changed"
            );
            let unfolded = text.replace("\r\n ", "");
            assert!(
                !unfolded.contains("base64\\,"),
                "{name}: escaped comma breaks the data URI"
            );
            if unfolded.contains("PHOTO") {
                photos += 1;
            }
            assert!(
                text.lines().all(|l| l.len() <= 76),
                "{name}: a line is not folded"
            );
        }
    }
    assert!(photos > 40, "the data has photos ({photos})");

    t.cmd()
        .arg("run")
        .assert()
        .success()
        .stdout(predicate::str::contains("bob: up to date (200 copies)"));

    // Ten source contacts edited: ten updates per destination, nothing else.
    let edited = t.path().join("edited");
    generate(&edited, &["--edit", "10"]);
    for e in fs::read_dir(&edited).unwrap() {
        let p = e.unwrap().path();
        fs::copy(&p, src.join(p.file_name().unwrap())).unwrap();
    }
    t.cmd().arg("run").assert().success().stdout(
        predicate::str::contains("bob: created 0, updated 10, deleted 0, moved 0").and(
            predicate::str::contains("carol: created 0, updated 10, deleted 0, moved 0"),
        ),
    );
}
