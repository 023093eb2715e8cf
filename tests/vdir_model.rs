//! A state-machine property test of the engine over a real vdir tree, with what real clients and
//! hostile users leave there: files holding several vCards (a copy and the user's own cards, or
//! several of the user's), copies whose tag the user removed, FIFOs, folders named like cards, a
//! link to another user's private card or to a device in the source group, runs killed inside a
//! move to "My Contacts", destinations added and removed, lost state databases. After every run
//! it checks:
//!
//! - every card a user owns is still there, byte for byte, exactly once (in the group or in
//!   "My Contacts"): never lost, never doubled;
//! - another user's private card never reaches a destination, and the source is never written;
//! - each active destination holds one copy of each source card, equal to it, and no two cards
//!   of its group share a UID;
//! - a removed destination holds no copy anywhere;
//! - no run hangs (each has a deadline).
//!
//! Cases: 2,000 by default (`VDIR_MODEL_CASES` overrides).

use proptest::prelude::*;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use groupsync::backend::vdir::VdirBackend;
use groupsync::card::{self, ContactFilter, FieldSelection};
use groupsync::engine::{self, JobReport, JobRun, Outcome, RunOptions};
use groupsync::plan::{JobSpec, Limits};
use groupsync::store::Store;

const TAG: &str = "gSync99";
const USERS: [&str; 2] = ["u0", "u1"];
const SECRET: &str = "SECRET-OF-U1";

#[derive(Debug, Clone)]
enum Action {
    SrcAdd(u16),
    /// One file holding two source cards.
    SrcAddPair(u16),
    SrcEdit(usize, u16),
    SrcRemove(usize),
    /// A FIFO, a link to u1's private card, a folder named like a card, or a link to a device.
    SrcHostile(u8),
    DestEdit(usize, usize),
    DestStripTag(usize, usize),
    /// A card of the user's own appended to a copy's file (a phone's export).
    DestMerge(usize, usize, u16),
    /// A file of two of the user's own cards.
    DestOwnPair(usize, u16),
    DestHostile(usize, u8),
    AddDest(usize),
    RemoveDest(usize),
    /// A removal run killed inside a move of a card of the user's (a file of one card linked
    /// into "My Contacts" and still in the group; or the first card of a file of two written
    /// there and still in its file), then run again.
    KilledMove(usize, u16, bool),
    Run,
    LoseState,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => any::<u16>().prop_map(Action::SrcAdd),
        1 => any::<u16>().prop_map(Action::SrcAddPair),
        2 => (any::<usize>(), any::<u16>()).prop_map(|(k, s)| Action::SrcEdit(k, s)),
        1 => any::<usize>().prop_map(Action::SrcRemove),
        1 => (0..4u8).prop_map(Action::SrcHostile),
        2 => (0..2usize, any::<usize>()).prop_map(|(u, k)| Action::DestEdit(u, k)),
        1 => (0..2usize, any::<usize>()).prop_map(|(u, k)| Action::DestStripTag(u, k)),
        2 => (0..2usize, any::<usize>(), any::<u16>()).prop_map(|(u, k, s)| Action::DestMerge(u, k, s)),
        1 => (0..2usize, any::<u16>()).prop_map(|(u, s)| Action::DestOwnPair(u, s)),
        1 => (0..2usize, 0..3u8).prop_map(|(u, k)| Action::DestHostile(u, k)),
        2 => (0..2usize).prop_map(Action::AddDest),
        2 => (0..2usize).prop_map(Action::RemoveDest),
        2 => (0..2usize, any::<u16>(), any::<bool>()).prop_map(|(u, s, p)| Action::KilledMove(u, s, p)),
        4 => Just(Action::Run),
        1 => Just(Action::LoseState),
    ]
}

fn card_text(seed: u16, what: &str) -> String {
    format!(
        "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:{what}-{seed}\r\nFN:{what} {seed}\r\nN:{seed};{what};;;\r\nEMAIL;TYPE=work:{what}{seed}@example.com\r\nNOTE:note {seed}\r\nEND:VCARD\r\n"
    )
}

/// The vCard blocks of a text, each with its line breaks.
fn blocks(text: &str) -> Vec<String> {
    card::split_cards(text)
        .into_iter()
        .map(|r| text[r].to_string())
        .filter(|b| b.to_ascii_uppercase().contains("BEGIN:VCARD"))
        .collect()
}

/// The regular `.vcf` files of a folder: (name, text).
fn files(dir: &Path) -> Vec<(String, String)> {
    let Ok(rd) = fs::read_dir(dir) else {
        return vec![];
    };
    let mut out: Vec<(String, String)> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| (e.file_name().to_string_lossy().to_string(), e.path()))
        .filter(|(n, _)| n.ends_with(".vcf") && !n.starts_with('.'))
        .map(|(n, p)| (n, fs::read_to_string(p).unwrap_or_default()))
        .collect();
    out.sort();
    out
}

/// The managed content of a card, whatever the order of its properties.
fn content(c: &calcard::vcard::VCard) -> String {
    let v4 = card::version(c) == calcard::vcard::VCardVersion::V4_0;
    let mut lines: Vec<String> = card::managed_entries(c, &FieldSelection::All)
        .map(|e| {
            let mut t = String::new();
            e.write_to(&mut t, v4).unwrap();
            t
        })
        .collect();
    lines.sort();
    lines.concat()
}

struct World {
    dir: tempfile::TempDir,
    store: Arc<Mutex<Store>>,
    job: JobRun,
    dests: [bool; 2],
    /// Destinations the state knows (synced since it was last lost).
    known: [bool; 2],
    /// Cards each user owns, by text: how many times each must be found.
    own: [BTreeMap<String, usize>; 2],
    /// Source files the test wrote (name → text).
    source: BTreeMap<String, String>,
    next: u32,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let w = World {
            dir,
            store: Arc::new(Mutex::new(Store::open_in_memory().unwrap())),
            job: JobRun {
                spec: JobSpec {
                    name: "job".into(),
                    tag: TAG.into(),
                    target_group: "Team".into(),
                    fields: FieldSelection::All,
                    filter: ContactFilter::default(),
                    limits: Limits {
                        max_delete: 1000,
                        max_delete_percent: 100,
                    },
                },
                source: "src".into(),
                group: "G".into(),
                destinations: vec![],
                exclude: vec![],
            },
            dests: [false; 2],
            known: [false; 2],
            own: Default::default(),
            source: BTreeMap::new(),
            next: 0,
        };
        fs::create_dir_all(w.group("src", "G")).unwrap();
        fs::create_dir_all(w.group("u1", "Private")).unwrap();
        fs::write(
            w.group("u1", "Private").join("secret.vcf"),
            card_text(1, SECRET),
        )
        .unwrap();
        for u in USERS {
            fs::create_dir_all(w.group(u, "My Contacts")).unwrap();
        }
        w
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("contacts")
    }

    fn group(&self, u: &str, g: &str) -> PathBuf {
        self.root().join(u).join(g)
    }

    fn fresh(&mut self, what: &str) -> String {
        self.next += 1;
        format!("{what}{}", self.next)
    }

    /// The copies at a destination's group: (file name, block).
    fn copies(&self, u: usize) -> Vec<(String, String)> {
        files(&self.group(USERS[u], "Team"))
            .into_iter()
            .flat_map(|(n, t)| blocks(&t).into_iter().map(move |b| (n.clone(), b)))
            .filter(|(_, b)| b.contains(&format!("X-GSYNC:{TAG}")))
            .collect()
    }

    fn add_own(&mut self, u: usize, text: &str) {
        *self.own[u].entry(text.to_string()).or_default() += 1;
    }

    /// Runs the job with a deadline: a run that hangs (on a FIFO, a device) fails the test.
    fn run(&mut self, force: bool) -> JobReport {
        self.job.destinations = (0..2)
            .filter(|u| self.dests[*u])
            .map(|u| USERS[u].to_string())
            .collect();
        let backend = Arc::new(VdirBackend::new(self.root()));
        let (store, job) = (self.store.clone(), self.job.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let opts = RunOptions {
                force,
                concurrency: 1,
                default_group: "My Contacts".into(),
                ..Default::default()
            };
            let _ = tx.send(rt.block_on(engine::run_job(&backend, &store, &job, &opts)));
        });
        let report = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("a run hung (30 s)");
        for d in &report.destinations {
            let u = USERS.iter().position(|x| *x == d.user).unwrap();
            if d.removal && d.error.is_none() {
                self.known[u] = false;
            } else if !d.removal && d.plan.is_some() {
                self.known[u] = true;
            }
        }
        report
    }

    /// Every card a user owns is there exactly as often as it should be; the secret is nowhere
    /// but in u1's private group; the source is as the test wrote it.
    fn check_always(&self) -> Result<(), TestCaseError> {
        for (u, name) in USERS.iter().enumerate() {
            let mut found: BTreeMap<String, usize> = BTreeMap::new();
            for g in ["Team", "My Contacts"] {
                for (_, text) in files(&self.group(name, g)) {
                    for b in blocks(&text) {
                        if !b.contains("X-GSYNC:gSync") {
                            *found.entry(b).or_default() += 1;
                        }
                    }
                }
            }
            prop_assert_eq!(&found, &self.own[u], "the cards {} owns", *name);
            for g in ["Team", "My Contacts"] {
                for (n, text) in files(&self.group(name, g)) {
                    prop_assert!(
                        !text.contains(SECRET),
                        "the secret leaked to {}/{g}/{n}",
                        *name
                    );
                }
            }
        }
        let now: BTreeMap<String, String> = files(&self.group("src", "G")).into_iter().collect();
        prop_assert_eq!(&now, &self.source, "the source group was written");
        Ok(())
    }

    /// After a successful run: each active destination holds one copy of each source card,
    /// equal to it, no two cards of its group share a UID; a removed one holds no copy.
    fn check_converged(&self) -> Result<(), TestCaseError> {
        let mut expected: Vec<String> = self
            .source
            .values()
            .flat_map(|t| blocks(t))
            .filter_map(|b| card::parse(&b).ok())
            .map(|c| content(&c))
            .collect();
        expected.sort();
        for (u, name) in USERS.iter().enumerate() {
            let copies = self.copies(u);
            if self.dests[u] {
                let mut got: Vec<String> = copies
                    .iter()
                    .map(|(_, b)| content(&card::parse(b).unwrap()))
                    .collect();
                got.sort();
                prop_assert_eq!(&got, &expected, "copies at {}", *name);
                let mut uids = std::collections::BTreeSet::new();
                for (_, text) in files(&self.group(name, "Team")) {
                    for b in blocks(&text) {
                        if let Some(uid) = card::parse(&b)
                            .ok()
                            .and_then(|c| c.uid().map(str::to_string))
                        {
                            prop_assert!(
                                uids.insert(uid.clone()),
                                "UID {} twice at {}",
                                uid,
                                *name
                            );
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn run_case(actions: Vec<Action>) -> Result<(), TestCaseError> {
    let mut w = World::new();
    // Users removed while the state did not know them keep their copies (nothing remembers
    // them); those removed while it did must end with none.
    let mut cleanup: [bool; 2] = [false; 2];
    for a in actions {
        match a {
            Action::SrcAdd(s) => {
                let name = format!("{}.vcf", w.fresh("s"));
                let text = card_text(s, "Person");
                fs::write(w.group("src", "G").join(&name), &text).unwrap();
                w.source.insert(name, text);
            }
            Action::SrcAddPair(s) => {
                let name = format!("{}.vcf", w.fresh("pair"));
                let text = format!("{}{}", card_text(s, "Left"), card_text(s, "Right"));
                fs::write(w.group("src", "G").join(&name), &text).unwrap();
                w.source.insert(name, text);
            }
            Action::SrcEdit(k, s) if !w.source.is_empty() => {
                let name = w.source.keys().nth(k % w.source.len()).unwrap().clone();
                let text = card_text(s, "Edited");
                fs::write(w.group("src", "G").join(&name), &text).unwrap();
                w.source.insert(name, text);
            }
            Action::SrcRemove(k) if !w.source.is_empty() => {
                let name = w.source.keys().nth(k % w.source.len()).unwrap().clone();
                fs::remove_file(w.group("src", "G").join(&name)).unwrap();
                w.source.remove(&name);
            }
            Action::SrcHostile(kind) => {
                let at = w.group("src", "G").join(format!("{}.vcf", w.fresh("h")));
                hostile(&at, kind, &w.group("u1", "Private").join("secret.vcf"));
            }
            Action::DestEdit(u, k) => {
                let copies = w.copies(u);
                if !copies.is_empty() {
                    let (file, block) = &copies[k % copies.len()];
                    let path = w.group(USERS[u], "Team").join(file);
                    let text = fs::read_to_string(&path).unwrap();
                    let edited = block.replace("@example.com", "@tampered.example");
                    fs::write(&path, text.replacen(block.as_str(), &edited, 1)).unwrap();
                }
            }
            Action::DestStripTag(u, k) => {
                let copies = w.copies(u);
                if !copies.is_empty() {
                    let (file, block) = &copies[k % copies.len()];
                    let path = w.group(USERS[u], "Team").join(file);
                    let text = fs::read_to_string(&path).unwrap();
                    let mine: String = block
                        .split_inclusive('\n')
                        .filter(|l| !l.starts_with("X-GSYNC:"))
                        .collect();
                    fs::write(&path, text.replacen(block.as_str(), &mine, 1)).unwrap();
                    w.add_own(u, &mine);
                }
            }
            Action::DestMerge(u, k, s) => {
                let copies = w.copies(u);
                if !copies.is_empty() {
                    let (file, _) = &copies[k % copies.len()];
                    let path = w.group(USERS[u], "Team").join(file);
                    let text = fs::read_to_string(&path).unwrap();
                    let own = card_text(s, &w.fresh("Own"));
                    fs::write(&path, format!("{text}{own}")).unwrap();
                    w.add_own(u, &own);
                }
            }
            Action::DestOwnPair(u, s) => {
                let g = w.group(USERS[u], "Team");
                if g.is_dir() {
                    let (a, b) = (
                        card_text(s, &w.fresh("Mine")),
                        card_text(s, &w.fresh("Mine")),
                    );
                    let name = format!("{}.vcf", w.fresh("export"));
                    fs::write(g.join(name), format!("{a}{b}")).unwrap();
                    w.add_own(u, &a);
                    w.add_own(u, &b);
                }
            }
            Action::DestHostile(u, kind) => {
                let g = w.group(USERS[u], "Team");
                if g.is_dir() {
                    let at = g.join(format!("{}.vcf", w.fresh("h")));
                    hostile(&at, kind, Path::new("/dev/zero"));
                }
            }
            Action::AddDest(u) => {
                w.dests[u] = true;
                cleanup[u] = false;
            }
            Action::RemoveDest(u) if w.dests[u] => {
                w.dests[u] = false;
                cleanup[u] = w.known[u];
            }
            Action::KilledMove(u, seed, part) if !w.dests[u] && w.known[u] => {
                // What a removal killed inside a move leaves.
                let g = w.group(USERS[u], "Team");
                let mine = w.group(USERS[u], "My Contacts");
                if g.is_dir() {
                    let name = w.fresh("moving");
                    let a = card_text(seed, &w.fresh("Moving"));
                    if part {
                        let b = card_text(seed, &w.fresh("Staying"));
                        fs::write(g.join(format!("{name}.vcf")), format!("{a}{b}")).unwrap();
                        fs::write(mine.join(format!("{name}-1.vcf")), &a).unwrap();
                        w.add_own(u, &b);
                    } else {
                        fs::write(g.join(format!("{name}.vcf")), &a).unwrap();
                        fs::hard_link(
                            g.join(format!("{name}.vcf")),
                            mine.join(format!("{name}.vcf")),
                        )
                        .unwrap();
                    }
                    w.add_own(u, &a);
                }
                let report = w.run(true);
                prop_assert!(report.outcome == Outcome::Ok, "{report:?}");
                w.check_always()?;
                w.check_converged()?;
            }
            Action::LoseState => {
                *w.store.lock().unwrap() = Store::open_in_memory().unwrap();
                w.known = [false; 2];
                cleanup = [false; 2];
            }
            Action::Run => {
                let report = w.run(false);
                prop_assert!(
                    matches!(report.outcome, Outcome::Ok | Outcome::Stopped),
                    "{report:?}"
                );
                w.check_always()?;
                if report.outcome == Outcome::Ok {
                    w.check_converged()?;
                    for u in 0..2 {
                        if cleanup[u] && !w.dests[u] {
                            prop_assert!(w.copies(u).is_empty(), "copies left at {}", USERS[u]);
                            cleanup[u] = false;
                        }
                    }
                }
            }
            _ => {}
        }
    }
    // The last run converges, and the one after changes nothing.
    let report = w.run(true);
    prop_assert!(report.outcome == Outcome::Ok, "{report:?}");
    w.check_always()?;
    w.check_converged()?;
    for u in 0..2 {
        if cleanup[u] && !w.dests[u] {
            prop_assert!(w.copies(u).is_empty(), "copies left at {}", USERS[u]);
        }
    }
    {
        let again = w.run(false);
        let c = again.counts;
        prop_assert_eq!(
            c.created + c.updated + c.deleted + c.moved,
            0,
            "{:?}",
            again
        );
    }
    Ok(())
}

/// Something that is not a card file, at `at`: a FIFO, a link to `target`, a folder, or a
/// link to a device.
fn hostile(at: &Path, kind: u8, target: &Path) {
    match kind {
        0 => {
            let c = std::ffi::CString::new(at.as_os_str().as_encoded_bytes()).unwrap();
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        }
        1 => std::os::unix::fs::symlink(target, at).unwrap(),
        2 => fs::create_dir(at).unwrap(),
        _ => std::os::unix::fs::symlink("/dev/zero", at).unwrap(),
    }
}

fn cases() -> u32 {
    std::env::var("VDIR_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn vdir_keeps_the_rules(actions in proptest::collection::vec(action(), 1..30)) {
        run_case(actions)?;
    }
}
