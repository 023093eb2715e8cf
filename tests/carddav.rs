//! The CardDAV backend against real servers, Radicale and Xandikos, each started on 127.0.0.1
//! with a free port and a temporary storage folder. Radicale runs with an admin account that may
//! write every user's address books (htpasswd + a rights file whose admin rule comes first: see
//! docs/carddav.md). Xandikos only authenticates behind TLS (`--autocert`), so
//! it runs without authentication here, on loopback; the client still sends its credentials.
//! `.ci/run` installs both into `.venv/` under the repository; without them these tests fail
//! (they are never skipped).

mod common;

use predicates::prelude::*;
use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use groupsync::backend::carddav::{CarddavBackend, CarddavConfig, Credentials};
use groupsync::backend::{Backend, BackendError, BackendExt, GroupRef, User};
use groupsync::card;

const TAG: &str = "gSync5550001";

/// A server program from `.venv/bin` (or $GROUPSYNC_<NAME> or the PATH).
fn server_bin(name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(format!("GROUPSYNC_{}", name.to_ascii_uppercase())) {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".venv/bin")
        .join(name);
    if venv.exists() {
        return venv;
    }
    if let Ok(out) = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        && out.status.success()
    {
        return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    }
    panic!(
        "{name} is needed by the CardDAV tests: python3 -m venv .venv && .venv/bin/pip install radicale xandikos (.ci/run does this)"
    );
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Radicale,
    Xandikos,
}

struct Server {
    kind: Kind,
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Server {
    fn start(kind: Kind) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let p = dir.path();
        if kind == Kind::Radicale {
            fs::write(p.join("users"), "admin:adminpw\nalice:alicepw\nbob:bobpw\n").unwrap();
            fs::write(
                p.join("rights"),
                "[admin-all]\nuser: admin\ncollection: .*\npermissions: RrWw\n\n[root]\nuser: .+\ncollection:\npermissions: R\n\n[principal]\nuser: .+\ncollection: {user}\npermissions: RW\n\n[own]\nuser: .+\ncollection: {user}/[^/]+\npermissions: rw\n",
            )
            .unwrap();
            fs::write(
                p.join("config"),
                format!(
                    "[server]\nhosts = 127.0.0.1:{port}\n[auth]\ntype = htpasswd\nhtpasswd_filename = {}\nhtpasswd_encryption = plain\ndelay = 0\n[rights]\ntype = from_file\nfile = {}\n[storage]\nfilesystem_folder = {}\n[logging]\nlevel = info\n",
                    p.join("users").display(),
                    p.join("rights").display(),
                    p.join("collections").display()
                ),
            )
            .unwrap();
        }
        if kind == Kind::Xandikos {
            fs::create_dir_all(p.join("data")).unwrap();
        }
        let child = Self::spawn(kind, p, port);
        Server {
            kind,
            child,
            port,
            dir,
        }
    }

    /// Starts the server program on `dir` and `port` and waits until it accepts connections.
    fn spawn(kind: Kind, dir: &Path, port: u16) -> Child {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))
            .unwrap();
        let mut cmd = match kind {
            Kind::Radicale => {
                let mut c = Command::new(server_bin("radicale"));
                c.arg("--config").arg(dir.join("config"));
                c
            }
            Kind::Xandikos => {
                let mut c = Command::new(server_bin("xandikos"));
                c.arg("serve").arg("-d").arg(dir.join("data")).args([
                    "-l",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                ]);
                c
            }
        };
        let log2 = log.try_clone().unwrap();
        let child = cmd
            .stdout(log)
            .stderr(log2)
            .spawn()
            .expect("the server starts");
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{kind:?} did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }

    /// Stops the server as an administrator would (SIGTERM), waiting for it to exit.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            if start.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Requests the server has logged so far.
    fn requests(&self) -> usize {
        let log = fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        match self.kind {
            Kind::Radicale => log.lines().filter(|l| l.contains(" request for ")).count(),
            Kind::Xandikos => log.lines().filter(|l| l.contains(" HTTP/1.1\" ")).count(),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn backend(&self) -> CarddavBackend {
        CarddavBackend::new(CarddavConfig {
            url: self.url(),
            home: "/{user}/".into(),
            admin: Some(Credentials {
                username: "admin".into(),
                password: "adminpw".into(),
            }),
            users: Default::default(),
            default_collection: "contacts".into(),
        })
        .unwrap()
    }

    /// A raw request as the admin.
    fn dav(&self, method: &str, path: &str, body: Option<&str>, headers: &[(&str, &str)]) -> u16 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let c = reqwest::Client::new();
            let mut r = c
                .request(
                    reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                    format!("{}{path}", self.url()),
                )
                .basic_auth("admin", Some("adminpw"));
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            if let Some(b) = body {
                r = r.body(b.to_string());
            }
            // Servers differ in which 2xx they answer (Radicale 200 on DELETE, Xandikos 204): any
            // success reads as 200.
            let c = r.send().await.unwrap().status().as_u16();
            if (200..300).contains(&c) { 200 } else { c }
        })
    }

    fn mkbook(&self, path: &str, name: &str) {
        let s = self.dav(
            "MKCOL",
            path,
            Some(&groupsync::backend::carddav::xml::mkcol_addressbook(name)),
            &[("Content-Type", "application/xml")],
        );
        assert_eq!(s, 200, "MKCOL {path}");
    }

    fn put(&self, path: &str, vcard: &str) -> u16 {
        self.dav("PUT", path, Some(vcard), &[("Content-Type", "text/vcard")])
    }

    /// (id, etag, text) of every card in a user's address book with this display name.
    fn cards(&self, user: &str, group: &str) -> Vec<(String, String, calcard::vcard::VCard)> {
        let b = self.backend();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let u = User {
                id: user.into(),
                name: user.into(),
            };
            let Some(g) = b.find_group(&u, group, None).await.unwrap() else {
                return vec![];
            };
            let mut out = vec![];
            b.scan_group(&u, &g, &mut |c| out.push((c.id, c.etag, c.card.unwrap())))
                .await
                .unwrap();
            out.sort_by(|a, b| a.0.cmp(&b.0));
            out
        })
    }

    fn has_book(&self, user: &str, group: &str) -> bool {
        let b = self.backend();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let u = User {
            id: user.into(),
            name: user.into(),
        };
        rt.block_on(b.find_group(&u, group, None))
            .unwrap()
            .is_some()
    }

    fn copies(&self, user: &str, group: &str) -> Vec<(String, String, calcard::vcard::VCard)> {
        self.cards(user, group)
            .into_iter()
            .filter(|(_, _, c)| card::tag_of(c).as_deref() == Some(TAG))
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn vcard(uid: &str, name: &str) -> String {
    format!(
        "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:{uid}\r\nFN:{name}\r\nN:{name};;;;\r\nEMAIL;TYPE=INTERNET:{uid}@example.com\r\nTEL;TYPE=CELL:+1 555-0100\r\nX-CUSTOM:kept\r\nEND:VCARD\r\n"
    )
}

/// A server with alice (source, "Team" with `n` cards), bob, carol, dave; a config
/// and a job file pointing at it.
fn setup(kind: Kind, n: usize, dests: &[&str]) -> (Server, tempfile::TempDir) {
    let s = Server::start(kind);
    for u in ["alice", "bob", "carol", "dave"] {
        assert_eq!(s.dav("MKCOL", &format!("/{u}/"), None, &[]), 200);
    }
    s.mkbook("/alice/team/", "Team");
    for i in 0..n {
        assert_eq!(
            s.put(
                &format!("/alice/team/p{i}.vcf"),
                &vcard(&format!("p{i}"), &format!("Person {i}"))
            ),
            200
        );
    }
    let t = tempfile::tempdir().unwrap();
    fs::write(t.path().join("password"), "adminpw\n").unwrap();
    set_mode(&t.path().join("password"), 0o600);
    fs::write(
        t.path().join("groupsync.toml"),
        format!("state = \"state.db\"\n[backend]\nkind = \"carddav\"\nurl = \"{}\"\nusername = \"admin\"\npassword_file = \"password\"\n", s.url()),
    )
    .unwrap();
    fs::create_dir_all(t.path().join("jobs")).unwrap();
    let d: Vec<String> = dests.iter().map(|d| format!("\"{d}\"")).collect();
    fs::write(
        t.path().join("jobs/team.toml"),
        format!(
            "tag = \"{TAG}\"\nsource = \"alice\"\ngroup = \"Team\"\ndestinations = [{}]\n",
            d.join(", ")
        ),
    )
    .unwrap();
    (s, t)
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn gs(t: &tempfile::TempDir) -> assert_cmd::Command {
    let mut c = assert_cmd::Command::new(env!("CARGO_BIN_EXE_groupsync"));
    c.env("GROUPSYNC_CONFIG", t.path().join("groupsync.toml"))
        .env("GROUPSYNC_LOCK_WAIT", "1")
        .env_remove("GROUPSYNC_LOG");
    c
}

fn sources(copies: &[(String, String, calcard::vcard::VCard)]) -> Vec<String> {
    let mut v: Vec<String> = copies
        .iter()
        .filter_map(|(_, _, c)| card::source_of(c))
        .collect();
    v.sort();
    v
}

fn every_semantic(kind: Kind) {
    let (s, t) = setup(kind, 3, &["bob", "carol"]);
    // 1-3: first run creates the group and tagged copies at each destination.
    gs(&t)
        .arg("run")
        .assert()
        .success()
        .stdout(predicate::str::contains("bob: created 3"));
    for u in ["bob", "carol"] {
        let c = s.copies(u, "Team");
        assert_eq!(sources(&c), vec!["p0.vcf", "p1.vcf", "p2.vcf"], "{u}");
        assert!(card::to_text(&c[0].2).contains("X-CUSTOM:kept"));
    }
    // Radicale re-serialises what it stores: a rerun must still write nothing.
    gs(&t)
        .arg("run")
        .assert()
        .success()
        .stdout(predicate::str::contains("bob: up to date (3 copies)"));
    // 4: an edit to a copy is overwritten.
    let (id, _, c) = s.copies("bob", "Team").remove(0);
    let href = format!("/bob/Team/{id}");
    assert_eq!(
        s.put(
            &href,
            &card::to_text(&c).replace("@example.com", "@tampered.example")
        ),
        200
    );
    // 5: a contact bob adds himself is kept.
    assert_eq!(
        s.put("/bob/Team/own.vcf", &vcard("bob-own", "Bob Own")),
        200
    );
    // 7: a deleted copy comes back.
    let (gone, _, _) = s.copies("carol", "Team").remove(1);
    assert_eq!(
        s.dav("DELETE", &format!("/carol/Team/{gone}"), None, &[]),
        200
    );
    // 6: source edits, additions and removals propagate.
    assert_eq!(
        s.put("/alice/team/p1.vcf", &vcard("p1", "Person One Renamed")),
        200
    );
    assert_eq!(
        s.put("/alice/team/p9.vcf", &vcard("p9", "Person Nine")),
        200
    );
    assert_eq!(s.dav("DELETE", "/alice/team/p2.vcf", None, &[]), 200);
    gs(&t).arg("run").assert().success();
    for u in ["bob", "carol"] {
        let c = s.copies(u, "Team");
        assert_eq!(sources(&c), vec!["p0.vcf", "p1.vcf", "p9.vcf"], "{u}");
        assert!(
            c.iter()
                .all(|(_, _, c)| !card::to_text(c).contains("tampered")),
            "{u}"
        );
        assert!(
            c.iter()
                .any(|(_, _, c)| card::display_name(c) == "Person One Renamed")
        );
    }
    assert!(
        s.cards("bob", "Team")
            .iter()
            .any(|(id, _, _)| id == "own.vcf")
    );
    gs(&t).arg("run").assert().success().stdout(
        predicate::str::contains("bob: up to date (3 copies)")
            .and(predicate::str::contains("carol: up to date (3 copies)")),
    );
    // 8: removing bob deletes the group and copies; his own card moves to "contacts".
    gs(&t)
        .args(["job", "remove-dest", "team", "bob"])
        .assert()
        .success();
    assert!(s.cards("bob", "Team").is_empty());
    assert!(!s.has_book("bob", "Team"), "the book itself is deleted");
    let mine = s.cards("bob", "contacts");
    assert_eq!(mine.len(), 1);
    assert_eq!(card::display_name(&mine[0].2), "Bob Own");
    // 9: a new destination right away.
    gs(&t)
        .args(["job", "add-dest", "team", "dave", "--now"])
        .assert()
        .success()
        .stdout(predicate::str::contains("dave: created 3"));
    // An unknown user is named.
    gs(&t)
        .args(["job", "add-dest", "team", "ghost"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("invalid destination user: ghost"));
}

fn a_collection_deleted_between_runs_is_recreated(kind: Kind) {
    let (s, t) = setup(kind, 2, &["bob"]);
    gs(&t).arg("run").assert().success();
    assert_eq!(s.dav("DELETE", "/bob/Team/", None, &[]), 200);
    gs(&t)
        .arg("run")
        .assert()
        .success()
        .stdout(predicate::str::contains("bob: created 2"));
    assert_eq!(sources(&s.copies("bob", "Team")), vec!["p0.vcf", "p1.vcf"]);
}

fn stale_etags_are_conflicts_not_overwrites(kind: Kind) {
    let (s, t) = setup(kind, 1, &["bob"]);
    gs(&t).arg("run").assert().success();
    let (id, etag, c) = s.copies("bob", "Team").remove(0);
    // Someone edits the copy after we read it.
    assert_eq!(
        s.put(
            &format!("/bob/Team/{id}"),
            &card::to_text(&c).replace("Person 0", "Edited")
        ),
        200
    );
    let b = s.backend();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let user = User {
        id: "bob".into(),
        name: "bob".into(),
    };
    let group = GroupRef {
        id: "/bob/Team/".into(),
        name: "Team".into(),
        version: None,
    };
    let update = rt.block_on(b.update_contact(
        &user,
        &group,
        (&id, &etag),
        &c,
        &groupsync::card::FieldSelection::All,
    ));
    assert!(
        matches!(update, Err(BackendError::Conflict { .. })),
        "{update:?}"
    );
    let delete = rt.block_on(b.delete_contact(&user, &group, &id, &etag));
    assert!(
        matches!(delete, Err(BackendError::Conflict { .. })),
        "{delete:?}"
    );
    assert_eq!(
        card::display_name(&s.copies("bob", "Team")[0].2),
        "Edited",
        "nothing was overwritten"
    );
    // The next run repairs it.
    gs(&t)
        .arg("run")
        .assert()
        .success()
        .stdout(predicate::str::contains("updated 1"));
}

#[test]
fn a_readable_password_file_is_refused() {
    let (_s, t) = setup(Kind::Radicale, 0, &["bob"]);
    set_mode(&t.path().join("password"), 0o644);
    gs(&t).arg("status").assert().code(2).stderr(
        predicate::str::contains("readable by group or others")
            .and(predicate::str::contains("chmod 600"))
            .and(predicate::str::contains("adminpw").not()),
    );
}

fn a_server_stopped_mid_way_fails_the_run_and_the_rerun_converges(kind: Kind) {
    let (mut s, t) = setup(kind, 60, &["bob", "carol"]);
    let port = s.port;
    // Keep the server's storage and config when it stops.
    let storage_dir = std::mem::replace(&mut s.dir, tempfile::tempdir().unwrap());
    let storage = storage_dir.path().to_path_buf();
    // Stop the server while the run is going on.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_groupsync"))
        .arg("run")
        .env("GROUPSYNC_CONFIG", t.path().join("groupsync.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    s.stop();
    drop(s);
    let status = child.wait().unwrap();
    // Start it again on the same storage and port; the rerun converges.
    let child = Server::spawn(kind, &storage, port);
    let s2 = Server {
        kind,
        child,
        port,
        dir: storage_dir,
    };
    assert!(!status.success(), "the run was cut by the server stopping");
    gs(&t).arg("run").assert().success();
    for u in ["bob", "carol"] {
        let c = s2.copies(u, "Team");
        assert_eq!(c.len(), 60, "{u}: one copy per source contact");
    }
    gs(&t)
        .arg("run")
        .assert()
        .success()
        .stdout(predicate::str::contains("bob: up to date (60 copies)"));
}

fn scans(t: &tempfile::TempDir) -> u64 {
    let text = fs::read_to_string(t.path().join("metrics.prom")).unwrap();
    text.lines()
        .find(|l| l.starts_with("groupsync_api_calls_total{method=\"scan_group\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn a_no_change_rerun_does_not_read_the_destinations(kind: Kind) {
    let (s, t) = setup(kind, 5, &["bob", "carol", "dave"]);
    let cfg = fs::read_to_string(t.path().join("groupsync.toml")).unwrap();
    fs::write(
        t.path().join("groupsync.toml"),
        format!("{cfg}[metrics]\ntextfile = \"metrics.prom\"\n"),
    )
    .unwrap();
    gs(&t).arg("run").assert().success();
    let first = scans(&t);
    let requests = s.requests();
    assert!(requests > 0, "the server log counts requests");
    gs(&t)
        .arg("run")
        .assert()
        .success()
        .stdout(predicate::str::contains("dave: up to date (5 copies)"));
    assert_eq!(
        scans(&t) - first,
        1,
        "only the source group is read; the destinations' collection etags are unchanged"
    );
    assert_eq!(
        s.requests() - requests,
        3 + 3,
        "source: home, book, multiget; then one PROPFIND per destination"
    );
    // A change inside one destination's book is seen through its collection etag.
    let (id, _, c) = s.copies("carol", "Team").remove(0);
    assert_eq!(
        s.put(
            &format!("/carol/Team/{id}"),
            &card::to_text(&c).replace("Person", "Tampered")
        ),
        200
    );
    let before = scans(&t);
    gs(&t)
        .arg("run")
        .assert()
        .success()
        .stdout(predicate::str::contains("carol: created 0, updated 1"));
    assert_eq!(scans(&t) - before, 2, "the source and carol only");
}

/// A user removes the tag from a copy (the card becomes theirs, UID and all): it is kept as it
/// is, and the fresh copy made next to it gets a UID and an href of its own, so the server never
/// refuses it and later runs are not blocked.
fn a_copy_whose_tag_was_removed_keeps_its_uid_and_the_fresh_copy_gets_another(kind: Kind) {
    let (s, t) = setup(kind, 2, &["bob"]);
    gs(&t).arg("run").assert().success();
    let (id, _, c) = s
        .copies("bob", "Team")
        .into_iter()
        .find(|(_, _, c)| card::source_of(c).as_deref() == Some("p0.vcf"))
        .unwrap();
    let mine = card::to_text(&c)
        .lines()
        .filter(|l| !l.starts_with("X-GSYNC:"))
        .map(|l| format!("{l}\r\n"))
        .collect::<String>()
        .replace("Person 0", "Person 0 (mine)");
    assert_eq!(s.put(&format!("/bob/Team/{id}"), &mine), 200);
    gs(&t)
        .arg("run")
        .assert()
        .success()
        .stdout(predicate::str::contains("bob: created 1"));
    let cards = s.cards("bob", "Team");
    let kept = cards.iter().find(|(i, _, _)| *i == id).unwrap();
    assert_eq!(card::display_name(&kept.2), "Person 0 (mine)");
    assert!(card::tag_of(&kept.2).is_none());
    let fresh: Vec<_> = s
        .copies("bob", "Team")
        .into_iter()
        .filter(|(_, _, c)| card::source_of(c).as_deref() == Some("p0.vcf"))
        .collect();
    assert_eq!(fresh.len(), 1);
    assert_ne!(fresh[0].0, id, "its own href");
    assert_ne!(fresh[0].2.uid(), kept.2.uid(), "its own UID");
    // Later runs are not blocked: an edit at the source reaches bob.
    assert_eq!(
        s.put("/alice/team/p1.vcf", &vcard("p1", "Person One Renamed")),
        200
    );
    gs(&t)
        .arg("run")
        .assert()
        .success()
        .stdout(predicate::str::contains("bob: created 0, updated 1"));
}

/// A group is the book with that display name, never one whose URL ends in the name; two names
/// that make the same URL segment get two books; a MKCOL whose answer was lost (the book was
/// made) is not made again under another name.
fn groups_are_found_by_display_name_only(kind: Kind) {
    let (s, t) = setup(kind, 2, &["bob"]);
    s.mkbook("/bob/default/", "Contacts");
    assert_eq!(
        s.put("/bob/default/mine.vcf", &vcard("bob-mine", "Bob Mine")),
        200
    );
    let job = |target: &str| {
        format!(
            "tag = \"{TAG}\"\nsource = \"alice\"\ngroup = \"Team\"\ndestinations = [\"bob\"]\ntarget_group = \"{target}\"\n"
        )
    };
    fs::write(t.path().join("jobs/team.toml"), job("default")).unwrap();
    gs(&t).arg("run").assert().success();
    assert_eq!(
        s.cards("bob", "Contacts").len(),
        1,
        "bob's main book untouched"
    );
    assert_eq!(
        s.copies("bob", "default").len(),
        2,
        "a book named \"default\""
    );
    // "Sales/EU" and "Sales EU" both make the segment "Sales-EU": two books all the same.
    fs::write(t.path().join("jobs/team.toml"), job("Sales/EU")).unwrap();
    fs::write(
        t.path().join("jobs/other.toml"),
        job("Sales EU").replace(TAG, "gSync5550002"),
    )
    .unwrap();
    gs(&t).arg("run").assert().success();
    assert_eq!(s.copies("bob", "Sales/EU").len(), 2);
    let other = s.cards("bob", "Sales EU");
    assert_eq!(other.len(), 2);
    assert!(
        other
            .iter()
            .all(|(_, _, c)| card::tag_of(c).as_deref() == Some("gSync5550002"))
    );
    // A lost answer: the book exists under the path a MKCOL would take, with the name asked for.
    s.mkbook("/bob/Lost/", "Lost");
    let b = s.backend();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bob = User {
        id: "bob".into(),
        name: "bob".into(),
    };
    let g = rt.block_on(b.create_group(&bob, "Lost")).unwrap();
    assert_eq!(g.id, "/bob/Lost/");
    assert!(!s.has_book("bob", "Lost-1"));
    let other = rt.block_on(b.create_group(&bob, "Contacts")).unwrap();
    assert_ne!(
        other.id, "/bob/default/",
        "a book of another name is never taken"
    );
}

#[test]
fn a_copy_whose_tag_was_removed_keeps_its_uid_and_the_fresh_copy_gets_another_radicale() {
    a_copy_whose_tag_was_removed_keeps_its_uid_and_the_fresh_copy_gets_another(Kind::Radicale);
}

#[test]
fn a_copy_whose_tag_was_removed_keeps_its_uid_and_the_fresh_copy_gets_another_xandikos() {
    a_copy_whose_tag_was_removed_keeps_its_uid_and_the_fresh_copy_gets_another(Kind::Xandikos);
}

#[test]
fn groups_are_found_by_display_name_only_radicale() {
    groups_are_found_by_display_name_only(Kind::Radicale);
}

#[test]
fn groups_are_found_by_display_name_only_xandikos() {
    groups_are_found_by_display_name_only(Kind::Xandikos);
}

/// The backend contract (`common::contract`), against the real server.
fn keeps_the_contract(kind: Kind) {
    let (s, _t) = setup(kind, 0, &[]);
    let b = s.backend();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sample = |i: usize| card::parse(&vcard(&format!("c{i}"), &format!("Person {i}"))).unwrap();
    let subject = common::contract::Subject {
        user: User {
            id: "bob".into(),
            name: "bob".into(),
        },
        default_group: "contacts",
        sample: &sample,
    };
    rt.block_on(common::contract::check(&b, &subject));
}

#[test]
fn radicale_keeps_the_contract() {
    keeps_the_contract(Kind::Radicale);
}

#[test]
fn xandikos_keeps_the_contract() {
    keeps_the_contract(Kind::Xandikos);
}

#[test]
fn every_semantic_radicale() {
    every_semantic(Kind::Radicale);
}

#[test]
fn every_semantic_xandikos() {
    every_semantic(Kind::Xandikos);
}

#[test]
fn a_collection_deleted_between_runs_is_recreated_radicale() {
    a_collection_deleted_between_runs_is_recreated(Kind::Radicale);
}

#[test]
fn a_collection_deleted_between_runs_is_recreated_xandikos() {
    a_collection_deleted_between_runs_is_recreated(Kind::Xandikos);
}

#[test]
fn stale_etags_are_conflicts_not_overwrites_radicale() {
    stale_etags_are_conflicts_not_overwrites(Kind::Radicale);
}

#[test]
fn stale_etags_are_conflicts_not_overwrites_xandikos() {
    stale_etags_are_conflicts_not_overwrites(Kind::Xandikos);
}

#[test]
fn a_server_stopped_mid_way_fails_the_run_and_the_rerun_converges_radicale() {
    a_server_stopped_mid_way_fails_the_run_and_the_rerun_converges(Kind::Radicale);
}

#[test]
fn a_server_stopped_mid_way_fails_the_run_and_the_rerun_converges_xandikos() {
    a_server_stopped_mid_way_fails_the_run_and_the_rerun_converges(Kind::Xandikos);
}

#[test]
fn a_no_change_rerun_does_not_read_the_destinations_radicale() {
    a_no_change_rerun_does_not_read_the_destinations(Kind::Radicale);
}

#[test]
fn a_no_change_rerun_does_not_read_the_destinations_xandikos() {
    a_no_change_rerun_does_not_read_the_destinations(Kind::Xandikos);
}

/// Realistic cards from `tests/data/gen_vcards.py` (3.0 and 4.0, photos, folding, escaping).
fn realistic_cards_round_trip(kind: Kind) {
    let (s, t) = setup(kind, 0, &["bob"]);
    let generated = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/gen_vcards.py");
    let out = Command::new("python3")
        .arg(&script)
        .args([
            "-n",
            "60",
            "--seed",
            "5",
            "--vcard-version",
            "mixed",
            "--photo-ratio",
            "0.3",
        ])
        .arg(generated.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut sent = std::collections::BTreeMap::new();
    for e in fs::read_dir(generated.path()).unwrap() {
        let p = e.unwrap().path();
        let text = fs::read_to_string(&p).unwrap();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        assert_eq!(s.put(&format!("/alice/team/{name}"), &text), 200, "{name}");
        sent.insert(name, text);
    }
    gs(&t)
        .arg("run")
        .assert()
        .success()
        .stdout(predicate::str::contains("bob: created 60"));
    // What the server keeps of the source is what the copies must hold, whatever the server's
    // own re-serialisation (Radicale drops 4.0 photo data and extra NICKNAME values).
    let stored: std::collections::BTreeMap<String, calcard::vcard::VCard> = s
        .cards("alice", "Team")
        .into_iter()
        .map(|(id, _, c)| (id, c))
        .collect();
    let copies = s.copies("bob", "Team");
    assert_eq!(copies.len(), 60);
    let fields = groupsync::card::FieldSelection::All;
    for (_, _, copy) in &copies {
        let src = &stored[&card::source_of(copy).unwrap()];
        let mut a: Vec<String> = card::managed_entries(src, &fields)
            .map(entry_text)
            .collect();
        let mut b: Vec<String> = card::managed_entries(copy, &fields)
            .map(entry_text)
            .collect();
        a.sort();
        b.sort();
        assert_eq!(
            a,
            b,
            "copy of {} differs from the source as stored",
            card::display_name(src)
        );
        assert_eq!(card::version(copy), card::version(src));
    }
    gs(&t)
        .arg("run")
        .assert()
        .success()
        .stdout(predicate::str::contains("bob: up to date (60 copies)"));
    assert_eq!(sent.len(), 60);
}

fn entry_text(e: &calcard::vcard::VCardEntry) -> String {
    let mut t = String::new();
    e.write_to(&mut t, true).unwrap();
    t
}

#[test]
fn realistic_cards_round_trip_radicale() {
    realistic_cards_round_trip(Kind::Radicale);
}

#[test]
fn realistic_cards_round_trip_xandikos() {
    realistic_cards_round_trip(Kind::Xandikos);
}

#[test]
fn per_user_credentials_radicale() {
    let (s, t) = setup(Kind::Radicale, 2, &["bob", "carol"]);
    fs::write(
        t.path().join("users.secret"),
        "# user = password\nalice = alicepw\nbob = bobpw\n",
    )
    .unwrap();
    set_mode(&t.path().join("users.secret"), 0o600);
    fs::write(
        t.path().join("groupsync.toml"),
        format!("state = \"state.db\"\n[backend]\nkind = \"carddav\"\nurl = \"{}\"\ncredentials_file = \"users.secret\"\n", s.url()),
    )
    .unwrap();
    // carol has no credentials: the job's configuration is at fault, and nothing is written
    // until it is fixed.
    gs(&t)
        .arg("run")
        .assert()
        .code(2)
        .stdout(predicate::str::contains("carol: no credentials"))
        .stderr(predicate::str::contains("credentials_file"));
    assert!(s.copies("bob", "Team").is_empty());
    // Without carol, bob's own account writes bob's book.
    fs::write(
        t.path().join("jobs/team.toml"),
        format!(
            "tag = \"{TAG}\"\nsource = \"alice\"\ngroup = \"Team\"\ndestinations = [\"bob\"]\n"
        ),
    )
    .unwrap();
    gs(&t)
        .arg("run")
        .assert()
        .success()
        .stdout(predicate::str::contains("bob: created 2"));
    assert_eq!(s.copies("bob", "Team").len(), 2);
    gs(&t)
        .arg("run")
        .assert()
        .success()
        .stdout(predicate::str::contains("bob: up to date (2 copies)"));
    // A refused password names the source (the account reads it first) and the keys to fix.
    fs::write(
        t.path().join("users.secret"),
        "alice = wrong\nbob = bobpw\n",
    )
    .unwrap();
    gs(&t).arg("run").assert().code(2).stderr(
        predicate::str::contains("\"alice\"")
            .and(predicate::str::contains("HTTP 401"))
            .and(predicate::str::contains("credentials_file")),
    );
    set_mode(&t.path().join("users.secret"), 0o640);
    gs(&t).arg("status").assert().code(2).stderr(
        predicate::str::contains("credentials_file")
            .and(predicate::str::contains("chmod 600"))
            .and(predicate::str::contains("bobpw").not()),
    );
}
