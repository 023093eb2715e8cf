//! The CardDAV backend against a real Radicale server, started on 127.0.0.1 with a free port, a
//! temporary storage folder and an admin account that may write every user's address books
//! (htpasswd + rights file, as in shared/notes/carddav-servers.md). `.ci/run` installs Radicale
//! into `.venv/` under the repository; without it these tests fail (they are never skipped).

mod common;

use predicates::prelude::*;
use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use groupsync::backend::carddav::{CarddavBackend, CarddavConfig};
use groupsync::backend::{Backend, BackendError, GroupRef, User};
use groupsync::card;

const TAG: &str = "gSync5550001";

fn radicale_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("GROUPSYNC_RADICALE") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/radicale");
    if venv.exists() {
        return venv;
    }
    if let Ok(out) = Command::new("sh")
        .args(["-c", "command -v radicale"])
        .output()
        && out.status.success()
    {
        return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    }
    panic!(
        "Radicale is needed by the CardDAV tests: python3 -m venv .venv && .venv/bin/pip install radicale (.ci/run does this)"
    );
}

struct Server {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let p = dir.path();
        fs::write(p.join("users"), "admin:adminpw\n").unwrap();
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
        let log = fs::File::create(p.join("radicale.log")).unwrap();
        let child = Command::new(radicale_bin())
            .arg("--config")
            .arg(p.join("config"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("radicale starts");
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "Radicale did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Server { child, port, dir }
    }

    /// Requests the server has logged so far.
    fn requests(&self) -> usize {
        fs::read_to_string(self.dir.path().join("radicale.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" request for "))
            .count()
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn backend(&self) -> CarddavBackend {
        CarddavBackend::new(CarddavConfig {
            url: self.url(),
            home: "/{user}/".into(),
            username: "admin".into(),
            password: "adminpw".into(),
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
            r.send().await.unwrap().status().as_u16()
        })
    }

    fn mkbook(&self, path: &str, name: &str) {
        let s = self.dav(
            "MKCOL",
            path,
            Some(&groupsync::backend::carddav::xml::mkcol_addressbook(name)),
            &[("Content-Type", "application/xml")],
        );
        assert_eq!(s, 201, "MKCOL {path}");
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
            let Some(g) = b.find_group(&u, group).await.unwrap() else {
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

/// A Radicale server with alice (source, "Team" with `n` cards), bob, carol, dave; a config
/// and a job file pointing at it.
fn setup(n: usize, dests: &[&str]) -> (Server, tempfile::TempDir) {
    let s = Server::start();
    for u in ["alice", "bob", "carol", "dave"] {
        assert_eq!(s.dav("MKCOL", &format!("/{u}/"), None, &[]), 201);
    }
    s.mkbook("/alice/team/", "Team");
    for i in 0..n {
        assert_eq!(
            s.put(
                &format!("/alice/team/p{i}.vcf"),
                &vcard(&format!("p{i}"), &format!("Person {i}"))
            ),
            201
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

#[test]
fn every_semantic_against_radicale() {
    let (s, t) = setup(3, &["bob", "carol"]);
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
        204
    );
    // 5: a contact bob adds himself is kept.
    assert_eq!(
        s.put("/bob/Team/own.vcf", &vcard("bob-own", "Bob Own")),
        201
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
        204
    );
    assert_eq!(
        s.put("/alice/team/p9.vcf", &vcard("p9", "Person Nine")),
        201
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

#[test]
fn a_collection_deleted_between_runs_is_recreated() {
    let (s, t) = setup(2, &["bob"]);
    gs(&t).arg("run").assert().success();
    assert_eq!(s.dav("DELETE", "/bob/Team/", None, &[]), 200);
    gs(&t)
        .arg("run")
        .assert()
        .success()
        .stdout(predicate::str::contains("bob: created 2"));
    assert_eq!(sources(&s.copies("bob", "Team")), vec!["p0.vcf", "p1.vcf"]);
}

#[test]
fn stale_etags_are_conflicts_not_overwrites() {
    let (s, t) = setup(1, &["bob"]);
    gs(&t).arg("run").assert().success();
    let (id, etag, c) = s.copies("bob", "Team").remove(0);
    // Someone edits the copy after we read it.
    assert_eq!(
        s.put(
            &format!("/bob/Team/{id}"),
            &card::to_text(&c).replace("Person 0", "Edited")
        ),
        204
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
        &id,
        &etag,
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
    let (_s, t) = setup(0, &["bob"]);
    set_mode(&t.path().join("password"), 0o644);
    gs(&t).arg("status").assert().code(2).stderr(
        predicate::str::contains("readable by group or others")
            .and(predicate::str::contains("chmod 600"))
            .and(predicate::str::contains("adminpw").not()),
    );
}

#[test]
fn a_server_stopped_mid_way_fails_the_run_and_the_rerun_converges() {
    let (mut s, t) = setup(60, &["bob", "carol"]);
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
    drop(s);
    let status = child.wait().unwrap();
    // Start it again on the same storage and port; the rerun converges.
    let child = Command::new(radicale_bin())
        .arg("--config")
        .arg(storage.join("config"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(50));
    }
    let s2 = Server {
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

#[test]
fn a_no_change_rerun_does_not_read_the_destinations() {
    let (s, t) = setup(5, &["bob", "carol", "dave"]);
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
        204
    );
    let before = scans(&t);
    gs(&t)
        .arg("run")
        .assert()
        .success()
        .stdout(predicate::str::contains("carol: created 0, updated 1"));
    assert_eq!(scans(&t) - before, 2, "the source and carol only");
}
