//! The Microsoft 365 backend end to end: the `groupsync` binary against the fake identity
//! platform and Graph (`fake-graph`), which checks every request against the vendored OpenAPI
//! subset and Outlook's limits (four requests in flight per mailbox, the per-mailbox quota,
//! batch rules). Every test ends by asserting the fake saw no violation.

mod common;

use fake_graph::{FakeGraph, Fault, FaultKind, Options};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

const TAG: &str = "gSync515151";
const TAG_ID: &str = "String {6E9D2C41-7B2A-4F3C-9A51-3D7E0C9B8F12} Name gSync";

struct Rig {
    fake: FakeGraph,
    dir: tempfile::TempDir,
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// A source contact, with every kind of property a copy must carry.
fn contact(i: usize) -> Value {
    json!({
        "displayName": format!("Given{i} Family{i}"),
        "givenName": format!("Given{i}"),
        "surname": format!("Family{i}"),
        "emailAddresses": [
            {"address": format!("p{i}@partner.example"), "name": format!("Given{i}")},
            {"address": format!("p{i}@home.example"), "name": "home"}
        ],
        "businessPhones": [format!("+1 555 01{i:02}")],
        "mobilePhone": format!("+1 555 99{i:02}"),
        "businessAddress": {"street": format!("{i} Main St"), "city": "Springfield", "state": "IL", "postalCode": "62701", "countryOrRegion": "USA"},
        "companyName": "Partner Inc",
        "department": "Buying",
        "jobTitle": "Buyer",
        "birthday": format!("1980-01-{:02}T00:00:00Z", 1 + i % 28),
        "personalNotes": format!("Note {i}, with a comma; and a semicolon\nand a line"),
        "children": ["Kid"],
        "spouseName": "Someone",
        "nickName": format!("n{i}"),
        "imAddresses": [format!("sip:p{i}@partner.example")],
        "businessHomePage": "https://partner.example",
        "categories": ["Suppliers"],
    })
}

/// The properties a copy must carry exactly as its source has them.
fn copied(c: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for k in [
        "displayName",
        "givenName",
        "surname",
        "emailAddresses",
        "businessPhones",
        "mobilePhone",
        "businessAddress",
        "companyName",
        "department",
        "jobTitle",
        "birthday",
        "personalNotes",
        "children",
        "spouseName",
        "nickName",
        "imAddresses",
        "businessHomePage",
    ] {
        out.insert(k.into(), c[k].clone());
    }
    Value::Object(out)
}

/// The `<tag>:<source id>` a contact carries, split.
fn tag_of(c: &Value) -> Option<(String, String)> {
    c["singleValueExtendedProperties"]
        .as_array()?
        .iter()
        .find(|p| p["id"] == TAG_ID)
        .and_then(|p| p["value"].as_str())
        .and_then(|v| v.split_once(':'))
        .map(|(t, s)| (t.to_string(), s.to_string()))
}

impl Rig {
    /// alice (source, folder "Sales" with `n` contacts), bob, carol, dave; a job to bob and
    /// carol; a client secret.
    fn new(n: usize) -> Rig {
        let fake = FakeGraph::start(Options::default());
        for u in ["alice", "bob", "carol", "dave"] {
            fake.add_user(&format!("{u}@example.com"));
        }
        fake.with_mailbox("alice@example.com", |m| {
            let f = m.add_folder("Sales");
            for i in 0..n {
                m.add_contact(&f, contact(i));
            }
            // Not in the folder: never copied.
            let d = m.default_folder();
            m.add_contact(&d, contact(999));
        });
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        fs::write(&secret, format!("{}\n", fake.client_secret())).unwrap();
        set_mode(&secret, 0o600);
        let rig = Rig { fake, dir };
        rig.write_config("client_secret_file = \"secret\"\n");
        fs::create_dir_all(rig.path().join("jobs")).unwrap();
        rig.write_job(&["bob@example.com", "carol@example.com"]);
        rig
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The config, with the credential lines given.
    fn write_config(&self, credential: &str) {
        fs::write(
            self.path().join("groupsync.toml"),
            format!(
                "state = \"state.db\"\njobs_dir = \"jobs\"\n\n[backend]\nkind = \"graph\"\ntenant = \"{t}\"\nclient_id = \"{c}\"\n{credential}graph_url = \"{u}\"\nlogin_url = \"{u}\"\nconcurrency = 4\n",
                t = self.fake.tenant(),
                c = self.fake.client_id(),
                u = self.fake.url
            ),
        )
        .unwrap();
    }

    fn write_job(&self, dests: &[&str]) {
        common::write_job_file(
            self.path(),
            "sales",
            (TAG, "alice@example.com", "Sales"),
            dests,
        );
    }

    fn run(&self) -> (i32, String, String) {
        common::run_job(self.path(), "sales")
    }

    fn run_ok(&self) -> String {
        let (code, out, err) = self.run();
        assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
        self.assert_no_violations();
        out
    }

    fn assert_no_violations(&self) {
        let v = self.fake.violations();
        assert!(
            v.is_empty(),
            "the fake saw requests Graph would refuse: {v:#?}"
        );
    }

    /// The contacts of a user's folder (empty when there is no such folder).
    fn folder(&self, user: &str, name: &str) -> Vec<Value> {
        self.fake
            .with_mailbox(user, |m| match m.folder_by_name(name) {
                Some(f) => m.contacts(&f),
                None => vec![],
            })
    }

    fn has_folder(&self, user: &str, name: &str) -> bool {
        self.fake
            .with_mailbox(user, |m| m.folder_by_name(name).is_some())
    }

    /// The source ids of the tagged copies in a user's "Sales", sorted.
    fn copies(&self, user: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .folder(user, "Sales")
            .iter()
            .filter_map(tag_of)
            .map(|(t, s)| {
                assert_eq!(t, TAG);
                s
            })
            .collect();
        v.sort();
        v
    }

    fn by_source(&self, user: &str) -> BTreeMap<String, Value> {
        self.folder(user, "Sales")
            .into_iter()
            .filter_map(|c| tag_of(&c).map(|(_, s)| (s, c)))
            .collect()
    }

    fn source(&self) -> BTreeMap<String, Value> {
        self.folder("alice@example.com", "Sales")
            .into_iter()
            .map(|c| (c["id"].as_str().unwrap().to_string(), c))
            .collect()
    }

    fn source_ids(&self) -> Vec<String> {
        self.source().into_keys().collect()
    }
}

#[test]
fn every_semantic_on_the_fake() {
    let r = Rig::new(12);
    let src = r.source_ids();
    // The first run makes the folder and a copy of each source contact, tagged, with the
    // visible category, every property as the source has it.
    r.run_ok();
    let source = r.source();
    for u in ["bob@example.com", "carol@example.com"] {
        assert!(r.has_folder(u, "Sales"));
        assert_eq!(r.copies(u), src, "{u}");
        for (sid, copy) in r.by_source(u) {
            assert_eq!(copied(&copy), copied(&source[&sid]), "copy of {sid}");
            let cats = copy["categories"].as_array().unwrap();
            assert!(
                cats.contains(&json!(TAG)) && cats.contains(&json!("Suppliers")),
                "{copy}"
            );
        }
    }
    // A rerun writes nothing.
    r.fake.reset_counts();
    r.run_ok();
    let c = r.fake.counts();
    for w in [
        "contacts.create",
        "contacts.update",
        "contacts.delete",
        "folders.create",
    ] {
        assert_eq!(c.get(w), None, "a no-change rerun called {w}: {c:?}");
    }

    let bob = "bob@example.com";
    let copies = r.by_source(bob);
    let (s0, s1, s2) = (&src[0], &src[1], &src[2]);
    // A user's edit to a copy is overwritten; a deleted copy comes back; a removed category is
    // put back; a user's own contact in the folder is kept untouched.
    let own = r.fake.with_mailbox(bob, |m| {
        let f = m.folder_by_name("Sales").unwrap();
        m.edit(copies[s0]["id"].as_str().unwrap(), |c| {
            c["businessPhones"] = json!(["+1 999"])
        });
        m.delete(copies[s1]["id"].as_str().unwrap());
        m.edit(copies[s2]["id"].as_str().unwrap(), |c| {
            c["categories"] = json!(["Suppliers"])
        });
        m.add_contact(
            &f,
            json!({"displayName": "Own Contact", "givenName": "Own"}),
        )
    });
    let own_before = r.fake.with_mailbox(bob, |m| m.contact(&own).unwrap());
    r.run_ok();
    let after = r.by_source(bob);
    assert_eq!(r.copies(bob), src);
    assert_eq!(copied(&after[s0]), copied(&source[s0]));
    assert!(
        after[s2]["categories"]
            .as_array()
            .unwrap()
            .contains(&json!(TAG))
    );
    assert_eq!(
        r.fake.with_mailbox(bob, |m| m.contact(&own).unwrap()),
        own_before
    );

    // Source changes propagate: an edit, a removal, an addition.
    r.fake.with_mailbox("alice@example.com", |m| {
        let f = m.folder_by_name("Sales").unwrap();
        m.edit(s0, |c| c["givenName"] = json!("Renamed"));
        m.delete(s1);
        m.add_contact(&f, contact(50));
    });
    r.run_ok();
    let src2 = r.source_ids();
    assert_eq!(r.copies(bob), src2);
    assert_eq!(r.copies("carol@example.com"), src2);
    assert_eq!(r.by_source(bob)[s0]["givenName"], json!("Renamed"));

    // Removing bob deletes his folder and its copies for good; his own contact moves to his
    // Contacts folder.
    r.write_job(&["carol@example.com"]);
    r.run_ok();
    assert!(!r.has_folder(bob, "Sales"));
    r.fake.with_mailbox(bob, |m| {
        assert!(!m.deleted_folder_names().contains(&"Sales".to_string()));
        let mine = m.contacts(&m.default_folder());
        assert!(
            mine.iter().any(|c| c["displayName"] == "Own Contact"),
            "{mine:?}"
        );
        assert!(mine.iter().all(|c| tag_of(c).is_none()), "no copy moved");
    });
    assert_eq!(r.copies("carol@example.com"), src2);
    // Adding a destination syncs it; adding bob again makes a new folder.
    r.write_job(&["carol@example.com", "dave@example.com", bob]);
    r.run_ok();
    assert_eq!(r.copies("dave@example.com"), src2);
    assert_eq!(r.copies(bob), src2);
    r.assert_no_violations();
}

#[test]
fn a_first_sync_writes_in_batches_of_twenty_and_a_rerun_reads_one_delta() {
    let r = Rig::new(45);
    r.fake.reset_counts();
    r.run_ok();
    let c = r.fake.counts();
    let get = |k: &str| c.get(k).copied().unwrap_or(0);
    // 45 contacts to 2 destinations: 3 chains of at most 20 each, one create per contact.
    assert_eq!(get("contacts.create"), 90, "{c:?}");
    assert_eq!(get("folders.create"), 2, "{c:?}");
    assert!(get("batch") <= 8, "{c:?}");
    assert_eq!(r.copies("bob@example.com").len(), 45);
    r.fake.reset_counts();
    r.run_ok();
    r.fake.reset_counts();
    r.run_ok();
    let c = r.fake.counts();
    // A no-change rerun: the source folder found and read whole (one page each), the users
    // looked up in one batch, one envelope per destination holding its delta and its folder
    // list, nothing else.
    assert_eq!(c.get("contacts.delta"), Some(&2), "{c:?}");
    assert_eq!(c.get("folders.list"), Some(&3), "{c:?}");
    assert_eq!(c.get("batch"), Some(&3), "{c:?}");
    let get = |k: &str| c.get(k).copied().unwrap_or(0);
    assert_eq!(get("batch.items"), get("users.get") + 4, "{c:?}");
    assert_eq!(c.get("http"), Some(&7), "{c:?}");
    // carol leaves the job: her folder is read whole once (its contacts trashed as they are
    // read), never contact by contact, and each copy is deleted once.
    r.write_job(&["bob@example.com"]);
    r.fake.reset_counts();
    r.run_ok();
    let c = r.fake.counts();
    let get = |k: &str| c.get(k).copied().unwrap_or(0);
    assert_eq!(get("contacts.get"), 0, "{c:?}");
    assert_eq!(get("contacts.delete"), 45, "{c:?}");
    assert!(!r.has_folder("carol@example.com", "Sales"));
    let out = common::groupsync_in(r.path())
        .args(["restore", "--json", "--dest", "carol@example.com"])
        .output()
        .unwrap();
    let trash: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(trash.len(), 45);
}

#[test]
fn an_expired_delta_reads_the_folder_whole_and_converges() {
    let r = Rig::new(5);
    r.run_ok();
    r.run_ok();
    let bob = "bob@example.com";
    let copies = r.by_source(bob);
    let first = copies.values().next().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    r.fake.with_mailbox(bob, |m| {
        m.edit(&first, |c| c["jobTitle"] = json!("Edited"));
        m.expire_delta_tokens();
    });
    r.run_ok();
    let after = r.by_source(bob);
    assert!(
        after.values().all(|c| c["jobTitle"] == "Buyer"),
        "{after:?}"
    );
}

#[test]
fn unknown_disabled_renamed_and_mailboxless_users() {
    let r = Rig::new(3);
    r.fake.add_user("erin@example.com");
    r.fake.set_mailbox("erin@example.com", false);
    // An unknown user is a mistake in the job: nothing is done, and the user is named.
    r.write_job(&["bob@example.com", "nobody@example.com"]);
    let (code, out, err) = r.run();
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        format!("{out}{err}").contains("nobody@example.com"),
        "{out}{err}"
    );
    assert_eq!(r.copies("bob@example.com").len(), 0, "nothing was changed");
    // A user without an Exchange Online mailbox is skipped with a note; the others are synced.
    r.write_job(&["bob@example.com", "carol@example.com", "erin@example.com"]);
    let out = r.run_ok();
    assert!(out.contains("MailboxNotEnabledForRESTAPI"), "{out}");
    assert_eq!(
        r.copies("bob@example.com").len(),
        3,
        "the others are synced"
    );
    // A renamed user keeps their copies (the ledger is keyed by the immutable id).
    r.write_job(&["bob@example.com", "carol@example.com"]);
    r.run_ok();
    r.fake.rename_user("bob@example.com", "robert@example.com");
    r.write_job(&["robert@example.com", "carol@example.com"]);
    r.fake.reset_counts();
    r.run_ok();
    assert_eq!(r.fake.counts().get("contacts.create"), None);
    assert_eq!(r.copies("robert@example.com").len(), 3);
    // A disabled account is skipped with a note, not a failure.
    r.fake.set_enabled("carol@example.com", false);
    let out = r.run_ok();
    assert!(out.contains("disabled"), "{out}");
}

#[test]
fn certificate_credentials_and_refusals_say_how_to_fix_them() {
    let r = Rig::new(2);
    let (cert, key) = r.fake.make_certificate();
    fs::write(r.path().join("app.pem"), cert).unwrap();
    fs::write(r.path().join("app.key"), &key).unwrap();
    set_mode(&r.path().join("app.key"), 0o600);
    r.write_config("certificate_file = \"app.pem\"\nprivate_key_file = \"app.key\"\n");
    r.run_ok();
    assert_eq!(r.copies("bob@example.com").len(), 2);
    // A wrong secret: the fix is named, the secret is not printed.
    fs::write(r.path().join("secret"), "not-the-secret\n").unwrap();
    r.write_config("client_secret_file = \"secret\"\n");
    let (code, out, err) = r.run();
    assert_ne!(code, 0);
    let all = format!("{out}{err}");
    assert!(
        all.contains("AADSTS7000215") && all.contains("client_secret_file"),
        "{all}"
    );
    assert!(
        !all.contains("not-the-secret") && !all.contains(r.fake.client_secret()),
        "{all}"
    );
    assert!(!all.contains(key.lines().nth(1).unwrap()), "{all}");
    // A readable secret file is refused before any request.
    set_mode(&r.path().join("secret"), 0o644);
    let (code, _, err) = r.run();
    assert_ne!(code, 0);
    assert!(err.contains("chmod 600"), "{err}");
    r.assert_no_violations();
}

#[test]
fn throttling_and_lost_answers_never_duplicate_a_copy() {
    let r = Rig::new(30);
    // A 429 for one item of a batch, a lost answer of a whole batch of creates, a 503.
    r.fake.inject(Fault {
        op: "batch".into(),
        user: Some("bob@example.com".into()),
        kind: FaultKind::ItemTooMany {
            index: 3,
            retry_after: 1,
        },
        times: 1,
    });
    r.fake.inject(Fault {
        op: "batch".into(),
        user: Some("carol@example.com".into()),
        kind: FaultKind::ApplyThenFail,
        times: 1,
    });
    r.fake.inject(Fault {
        op: "contacts.list".into(),
        user: Some("alice@example.com".into()),
        kind: FaultKind::Status(503),
        times: 2,
    });
    let (_, out, err) = r.run();
    r.assert_no_violations();
    // Whatever the first run managed, the next converges, and no copy is ever made twice.
    r.run_ok();
    let src = r.source_ids();
    for u in ["bob@example.com", "carol@example.com"] {
        assert_eq!(r.copies(u), src, "{u}: {out}{err}");
    }
}

#[test]
fn dynamic_sets_are_read_from_the_directory() {
    let r = Rig::new(2);
    r.fake.set_group(
        "team@example.com",
        &["bob@example.com", "inner@example.com"],
    );
    r.fake
        .set_group("inner@example.com", &["carol@example.com"]);
    r.write_job(&["group:team@example.com"]);
    r.run_ok();
    assert_eq!(r.copies("bob@example.com").len(), 2);
    assert_eq!(
        r.copies("carol@example.com").len(),
        2,
        "nested groups count"
    );
    r.write_job(&["domain:example.com"]);
    r.run_ok();
    assert_eq!(r.copies("dave@example.com").len(), 2);
}

#[test]
fn graph_keeps_the_contract() {
    use groupsync::backend::Backend;
    use groupsync::backend::graph::{GraphBackend, contact as mapping};
    use groupsync::config::{GraphConfig, GraphCredential};
    let r = Rig::new(0);
    let mut cfg = GraphConfig::with_defaults(
        r.fake.tenant().into(),
        r.fake.client_id().into(),
        GraphCredential::Secret(r.path().join("secret")),
    );
    cfg.graph_url = r.fake.url.clone();
    cfg.login_url = r.fake.url.clone();
    let b = GraphBackend::new(cfg).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let user = rt
        .block_on(b.resolve_user("bob@example.com"))
        .unwrap()
        .expect("bob is in the directory");
    let sample = |i: usize| mapping::to_card(&contact(i), false, "source");
    let subject = common::contract::Subject {
        user,
        default_group: "Contacts",
        sample: &sample,
    };
    rt.block_on(common::contract::check(&b, &subject));
    r.assert_no_violations();
}

#[test]
fn killed_runs_converge_without_duplicates() {
    let r = Rig::new(90);
    let src = r.source_ids();
    r.fake.set_options(Options {
        latency: std::time::Duration::from_millis(10),
        ..Options::default()
    });
    let spawn = || common::spawn_run(r.path(), "sales");
    // Killed while bob's first batch of creates hangs after it was applied.
    r.fake.inject(Fault {
        op: "batch".into(),
        user: Some("bob@example.com".into()),
        kind: FaultKind::Hang {
            secs: 3,
            apply: true,
        },
        times: 1,
    });
    r.fake.reset_counts();
    let mut child = spawn();
    let start = std::time::Instant::now();
    while r.fake.counts().get("contacts.create").copied().unwrap_or(0) < 20
        && start.elapsed() < std::time::Duration::from_secs(20)
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !r.folder("bob@example.com", "Sales").is_empty(),
        "the hung creates were applied"
    );
    // More kills at varied points, with source edits in between.
    common::killed_runs(r.path(), "sales", &[120, 260, 40, 500, 180], |round| {
        r.fake.with_mailbox("alice@example.com", |m| {
            for s in src.iter().skip(round).step_by(7) {
                m.edit(s, |c| c["nickName"] = json!(format!("round {round}")));
            }
        });
    });
    r.fake.set_options(Options::default());
    r.run_ok();
    let source = r.source();
    for u in ["bob@example.com", "carol@example.com"] {
        assert_eq!(r.copies(u), src, "{u}: one copy per source contact");
        for (s, c) in r.by_source(u) {
            assert_eq!(c["nickName"], source[&s]["nickName"], "{u} {s}");
        }
    }
}

/// A JPEG-looking photo.
fn jpeg(n: u8) -> Vec<u8> {
    vec![
        0xFF, 0xD8, 0xFF, 0xE0, 0, 16, b'J', b'F', b'I', b'F', n, 0xFF, 0xD9,
    ]
}

#[test]
fn photos_follow_the_source_and_a_moved_contact_keeps_its_own() {
    let r = Rig::new(3);
    let src = r.source_ids();
    let alice = "alice@example.com";
    r.fake.with_mailbox(alice, |m| {
        m.set_photo(&src[0], &jpeg(1));
        m.set_photo(&src[1], &jpeg(2));
    });
    r.run_ok();
    let bob = "bob@example.com";
    let photo = |u: &str, s: &str| {
        let id = r.by_source(u)[s]["id"].as_str().unwrap().to_string();
        r.fake.with_mailbox(u, |m| m.photo(&id))
    };
    assert_eq!(photo(bob, &src[0]), Some(jpeg(1)));
    assert_eq!(photo(bob, &src[1]), Some(jpeg(2)));
    assert_eq!(photo(bob, &src[2]), None);
    // A rerun puts no photo again; nor does an edit of a source contact that kept its photo
    // (the copy is relabelled, not given the same bytes again).
    r.fake.reset_counts();
    r.run_ok();
    assert_eq!(
        r.fake.counts().get("photo.put"),
        None,
        "{:?}",
        r.fake.counts()
    );
    r.fake.with_mailbox(alice, |m| {
        m.edit(&src[1], |c| c["jobTitle"] = json!("Edited"))
    });
    r.fake.reset_counts();
    r.run_ok();
    let c = r.fake.counts();
    assert_eq!(c.get("photo.put"), None, "{c:?}");
    assert_eq!(c.get("contacts.update"), Some(&2), "{c:?}");
    assert_eq!(
        c.get("photo.get"),
        Some(&1),
        "one read of the photo for both: {c:?}"
    );
    assert_eq!(photo(bob, &src[1]), Some(jpeg(2)));
    assert_eq!(r.by_source(bob)[&src[1]]["jobTitle"], "Edited");
    // A new source photo reaches the copies; a removed one is removed (the copy made anew).
    r.fake.with_mailbox(alice, |m| {
        m.set_photo(&src[0], &jpeg(9));
        m.delete(&src[1]);
        let f = m.folder_by_name("Sales").unwrap();
        let mut c = contact(77);
        c["displayName"] = json!("No Photo Now");
        let id = m.add_contact(&f, c);
        m.edit(&id, |c| c["jobTitle"] = json!("x"));
    });
    r.run_ok();
    assert_eq!(photo(bob, &src[0]), Some(jpeg(9)));
    // src[2] gains a photo, then loses it: its copy loses it too.
    r.fake
        .with_mailbox(alice, |m| m.set_photo(&src[2], &jpeg(3)));
    r.run_ok();
    assert_eq!(photo(bob, &src[2]), Some(jpeg(3)));
    // The source user takes the photo off in Outlook (and edits the contact, or the delta
    // would not tell): the copy is made anew without one.
    r.fake.with_mailbox(alice, |m| {
        m.remove_photo(&src[2]);
        m.edit(&src[2], |c| c["jobTitle"] = json!("Photo gone"));
    });
    r.run_ok();
    assert_eq!(r.copies(bob), r.source_ids());
    assert_eq!(photo(bob, &src[2]), None);
    assert_eq!(r.by_source(bob)[&src[2]]["jobTitle"], "Photo gone");
    // A user's own contact with a photo keeps it when bob is removed from the job.
    let own = r.fake.with_mailbox(bob, |m| {
        let f = m.folder_by_name("Sales").unwrap();
        let id = m.add_contact(&f, json!({"displayName": "Own With Photo"}));
        m.set_photo(&id, &jpeg(42));
        id
    });
    let _ = own;
    r.write_job(&["carol@example.com"]);
    r.run_ok();
    r.fake.with_mailbox(bob, |m| {
        let mine = m.contacts(&m.default_folder());
        let moved = mine
            .iter()
            .find(|c| c["displayName"] == "Own With Photo")
            .expect("moved to Contacts");
        assert_eq!(m.photo(moved["id"].as_str().unwrap()), Some(jpeg(42)));
    });
}

#[test]
fn a_lost_state_and_safety_limits() {
    let r = Rig::new(12);
    r.run_ok();
    // The state database lost: the next run finds every copy by its tag, makes none twice.
    std::fs::remove_file(r.path().join("state.db")).unwrap();
    r.fake.reset_counts();
    r.run_ok();
    assert_eq!(
        r.fake.counts().get("contacts.create"),
        None,
        "{:?}",
        r.fake.counts()
    );
    assert_eq!(r.copies("bob@example.com"), r.source_ids());
    // An emptied source stops the job (exit 3) before anything is deleted.
    r.fake.with_mailbox("alice@example.com", |m| {
        let f = m.folder_by_name("Sales").unwrap();
        for c in m.contacts(&f) {
            m.delete(c["id"].as_str().unwrap());
        }
    });
    let (code, out, err) = r.run();
    assert_eq!(code, 3, "{out}{err}");
    assert_eq!(r.copies("bob@example.com").len(), 12, "nothing deleted");
    r.assert_no_violations();
}

#[test]
fn check_reports_the_setup_the_users_and_the_permissions() {
    let r = Rig::new(2);
    r.fake.set_group("team@example.com", &["dave@example.com"]);
    r.write_job(&["bob@example.com", "group:team@example.com"]);
    let check = || {
        let out = common::groupsync_in(r.path())
            .arg("check")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    r.fake.reset_counts();
    let (code, out) = check();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("allowed domains: example.com"), "{out}");
    assert!(out.contains(r.fake.client_id()), "{out}");
    let c = r.fake.counts();
    assert!(
        !c.keys()
            .any(|k| k.contains("create") || k.contains("update") || k.contains("delete")),
        "check wrote something: {c:?}"
    );
    // A missing source folder and an unknown user, each named.
    common::write_job_file(
        r.path(),
        "sales",
        (TAG, "alice@example.com", "Sale"),
        &["nobody@example.com"],
    );
    let (code, out) = check();
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("nobody@example.com"), "{out}");
    assert!(out.contains("\"Sale\""), "{out}");
    // No consent: the permissions to grant are named; no secret or token is printed.
    r.write_job(&["bob@example.com"]);
    r.fake.set_roles(&[]);
    let (code, out) = check();
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("Contacts.ReadWrite") && out.contains("User.Read.All"),
        "{out}"
    );
    assert!(!out.contains(r.fake.client_secret()), "{out}");
    r.assert_no_violations();
}

#[test]
fn a_quota_storm_is_waited_out_and_a_deletion_limit_stops_the_run() {
    let r = Rig::new(40);
    // 25 requests per mailbox per 2 s (Outlook: 10,000 per 10 minutes): the first run meets
    // 429 after 429, each with its Retry-After, and still converges, breaking no rule.
    r.fake.set_options(Options {
        requests_per_window: 25,
        window: std::time::Duration::from_secs(2),
        ..Options::default()
    });
    r.run_ok();
    assert_eq!(r.copies("bob@example.com"), r.source_ids());
    assert_eq!(r.copies("carol@example.com"), r.source_ids());
    r.fake.set_options(Options::default());
    // The job allows max(2, 1 %) deletions a run: a source that lost 5 contacts stops the run
    // (exit 3).
    let job = r.path().join("jobs/sales.toml");
    let text = fs::read_to_string(&job).unwrap();
    fs::write(
        &job,
        format!("{text}\n[limits]\nmax_delete = 2\nmax_delete_percent = 1\n"),
    )
    .unwrap();
    let src = r.source_ids();
    r.fake.with_mailbox("alice@example.com", |m| {
        for s in src.iter().take(5) {
            m.delete(s);
        }
    });
    let (code, out, err) = r.run();
    assert_eq!(code, 3, "{out}{err}");
    assert_eq!(r.copies("bob@example.com").len(), 40, "nothing deleted");
    r.assert_no_violations();
}

#[test]
fn copies_groupsync_updated_are_known_at_the_next_rerun() {
    let r = Rig::new(10);
    r.run_ok();
    r.run_ok();
    // A user edits two copies and the source one contact: the run overwrites the copies and
    // updates every copy of the source contact.
    let bob = "bob@example.com";
    let copies = r.by_source(bob);
    let src = r.source_ids();
    r.fake.with_mailbox(bob, |m| {
        for s in &src[..2] {
            m.edit(copies[s]["id"].as_str().unwrap(), |c| {
                c["jobTitle"] = json!("mine")
            });
        }
    });
    r.fake.with_mailbox("alice@example.com", |m| {
        m.edit(&src[5], |c| c["jobTitle"] = json!("New"))
    });
    r.fake.reset_counts();
    r.run_ok();
    assert_eq!(
        r.fake.counts().get("contacts.update"),
        Some(&4),
        "{:?}",
        r.fake.counts()
    );
    // The next run sees groupsync's own updates in the delta and knows them by their change
    // key: nothing is read again, nothing written.
    r.fake.reset_counts();
    r.run_ok();
    let c = r.fake.counts();
    assert_eq!(c.get("contacts.get"), None, "{c:?}");
    assert_eq!(c.get("contacts.delta"), Some(&2), "{c:?}");
    assert_eq!(c.get("contacts.update"), None, "{c:?}");
}

/// The folder is found by the id the state remembers: one a user renamed keeps the user's
/// name and the job's copies (none made twice, a source edit reaches it); one a user deleted
/// (into Deleted Items, where its delta goes on as if nothing happened) is not the job's any
/// more, and a new one is made at the next run.
#[test]
fn a_renamed_folder_is_found_by_its_id_and_a_deleted_one_is_made_again() {
    let r = Rig::new(4);
    r.run_ok();
    r.run_ok();
    let bob = "bob@example.com";
    let folder = r
        .fake
        .with_mailbox(bob, |m| m.folder_by_name("Sales").unwrap());
    let before = r.copies(bob);
    r.fake
        .with_mailbox(bob, |m| m.rename_folder(&folder, "Old sales"));
    let first = r.source_ids()[0].clone();
    r.fake.with_mailbox("alice@example.com", |m| {
        m.edit(&first, |c| c["jobTitle"] = json!("Chief buyer"))
    });
    r.run_ok();
    assert_eq!(
        r.fake.with_mailbox(bob, |m| m.folder_names()),
        ["Old sales"],
        "no second folder beside the renamed one"
    );
    let kept: Vec<Value> = r.fake.with_mailbox(bob, |m| m.contacts(&folder));
    assert_eq!(kept.len(), before.len(), "{kept:?}");
    let edited = kept
        .iter()
        .find(|c| tag_of(c).is_some_and(|(_, s)| s == first))
        .unwrap();
    assert_eq!(edited["jobTitle"], "Chief buyer");
    r.fake.with_mailbox(bob, |m| m.trash_folder(&folder));
    r.run_ok();
    let again = r
        .fake
        .with_mailbox(bob, |m| m.folder_by_name("Sales"))
        .unwrap();
    assert_ne!(again, folder, "the deleted folder is not the job's");
    assert_eq!(r.copies(bob), before);
    assert_eq!(
        r.fake.with_mailbox(bob, |m| m.deleted_folder_names()),
        ["Old sales"]
    );
}
