//! Operations: the metrics textfile (parsed as Prometheus text and checked), the /metrics
//! listener, webhook notifications against a local HTTP receiver (with a retry), and email
//! against a local SMTP sink.

mod common;

use common::Tree;
use std::collections::BTreeMap;
use std::fs;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

fn samples(text: &str) -> BTreeMap<String, f64> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    scrape
        .samples
        .into_iter()
        .map(|s| {
            let mut labels: Vec<String> =
                s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            let v = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            };
            (format!("{}{{{}}}", s.metric, labels.join(",")), v)
        })
        .collect()
}

#[test]
fn metrics_textfile_counts_runs_changes_calls_and_last_success() {
    let t = Tree::new(3);
    fs::write(
        t.path().join("groupsync.toml"),
        "state = \"state.db\"\n[backend]\nkind = \"vdir\"\nroot = \"contacts\"\n[metrics]\ntextfile = \"metrics/groupsync.prom\"\n",
    )
    .unwrap();
    fs::create_dir_all(t.path().join("metrics")).unwrap();
    t.write_job("team", &["bob", "carol"], "");
    t.cmd().arg("run").assert().success();
    fs::remove_file(t.group("alice", "Team").join("p000.vcf")).unwrap();
    t.cmd().arg("run").assert().success();
    let m = samples(&fs::read_to_string(t.path().join("metrics/groupsync.prom")).unwrap());
    assert_eq!(
        m["groupsync_runs_total{job=team,outcome=ok}"], 2.0,
        "{m:#?}"
    );
    assert_eq!(
        m["groupsync_contacts_changed_total{action=created,job=team}"],
        6.0
    );
    assert_eq!(
        m["groupsync_contacts_changed_total{action=deleted,job=team}"],
        2.0
    );
    assert_eq!(m["groupsync_destination_failures_total{job=team}"], 0.0);
    assert_eq!(m["groupsync_api_calls_total{method=create_contact}"], 6.0);
    assert_eq!(m["groupsync_api_calls_total{method=delete_contact}"], 2.0);
    assert_eq!(
        m["groupsync_api_calls_total{method=scan_group}"], 4.0,
        "source twice, two destinations on the second run"
    );
    let last = m["groupsync_last_success_timestamp_seconds{job=team}"];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - last).abs() < 120.0,
        "last success {last} vs now {now}"
    );
    // A failing destination is counted.
    t.failing_user("ghost");
    t.write_job("team", &["bob", "ghost"], "");
    t.cmd().arg("run").assert().code(1);
    let m = samples(&fs::read_to_string(t.path().join("metrics/groupsync.prom")).unwrap());
    assert_eq!(m["groupsync_runs_total{job=team,outcome=failed}"], 1.0);
    assert_eq!(m["groupsync_destination_failures_total{job=team}"], 1.0);
}

#[tokio::test]
async fn metrics_listener_serves_the_same_text() {
    let t = Tree::new(2);
    t.write_job("team", &["bob"], "");
    t.cmd().arg("run").assert().success();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(groupsync::metrics::serve_http(
        listener,
        t.path().join("state.db"),
        None,
    ));
    let get = |path: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    let resp = get("/metrics").await;
    assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
    let body = resp.split("\r\n\r\n").nth(1).unwrap();
    assert_eq!(
        samples(body)["groupsync_runs_total{job=team,outcome=ok}"],
        1.0
    );
    assert!(get("/").await.starts_with("HTTP/1.1 404"));
    server.abort();
}

/// A local HTTP receiver: answers 500 to the first POST, 200 after; keeps the bodies.
async fn receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(vec![]));
    let seen = bodies.clone();
    tokio::spawn(async move {
        let mut n = 0;
        loop {
            let (sock, _) = listener.accept().await.unwrap();
            let mut r = BufReader::new(sock);
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                r.read_line(&mut line).await.unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                if line == "\r\n" || line.is_empty() {
                    break;
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).await.unwrap();
            seen.lock().unwrap().push(String::from_utf8(body).unwrap());
            n += 1;
            let status = if n == 1 {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let _ = r
                .get_mut()
                .write_all(
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await;
        }
    });
    (url, bodies)
}

/// A local SMTP sink: speaks just enough SMTP and keeps each message's data.
async fn smtp_sink() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mails = Arc::new(Mutex::new(vec![]));
    let seen = mails.clone();
    tokio::spawn(async move {
        loop {
            let (sock, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(sock);
                r.get_mut().write_all(b"220 sink ESMTP\r\n").await.unwrap();
                let mut data = String::new();
                let mut in_data = false;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        break;
                    }
                    if in_data {
                        if line == ".\r\n" {
                            in_data = false;
                            seen.lock().unwrap().push(std::mem::take(&mut data));
                            r.get_mut().write_all(b"250 queued\r\n").await.unwrap();
                        } else {
                            data.push_str(&line);
                        }
                        continue;
                    }
                    let cmd = line.to_ascii_uppercase();
                    let reply: &[u8] = if cmd.starts_with("EHLO") || cmd.starts_with("HELO") {
                        b"250-sink\r\n250 8BITMIME\r\n"
                    } else if cmd.starts_with("DATA") {
                        in_data = true;
                        b"354 go ahead\r\n"
                    } else if cmd.starts_with("QUIT") {
                        let _ = r.get_mut().write_all(b"221 bye\r\n").await;
                        break;
                    } else {
                        b"250 ok\r\n"
                    };
                    r.get_mut().write_all(reply).await.unwrap();
                }
            });
        }
    });
    (port, mails)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_notified_by_webhook_and_email() {
    let (url, hooks) = receiver().await;
    let (port, mails) = smtp_sink().await;
    let t = Tree::new(2);
    fs::write(
        t.path().join("groupsync.toml"),
        format!(
            "state = \"state.db\"\n[backend]\nkind = \"vdir\"\nroot = \"contacts\"\n[notify]\nwebhook = \"{url}\"\nemail_to = [\"ops@example.com\"]\nemail_from = \"groupsync@example.com\"\nsmtp = \"smtp://127.0.0.1:{port}\"\n"
        ),
    )
    .unwrap();
    t.write_job("team", &["bob"], "");
    let dir = t.path().to_path_buf();
    let mut cmd = t.cmd();
    let ok = tokio::task::spawn_blocking(move || {
        cmd.arg("run").assert().success();
    });
    ok.await.unwrap();
    assert!(
        hooks.lock().unwrap().is_empty(),
        "a good run notifies nobody by default"
    );
    t.failing_user("ghost");
    t.write_job("team", &["bob", "ghost"], "");
    let mut cmd = t.cmd();
    tokio::task::spawn_blocking(move || {
        cmd.arg("run").assert().code(1);
    })
    .await
    .unwrap();
    let bodies = hooks.lock().unwrap().clone();
    assert_eq!(
        bodies.len(),
        2,
        "one 500, then a retry that succeeded: {bodies:?}"
    );
    let v: serde_json::Value = serde_json::from_str(&bodies[1]).unwrap();
    assert_eq!(v["job"], "team");
    assert_eq!(v["outcome"], "failed");
    assert_eq!(v["failed"][0]["user"], "ghost");
    assert!(
        v["failed"][0]["error"]
            .as_str()
            .unwrap()
            .contains("not a folder")
    );
    let mails = mails.lock().unwrap().clone();
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert!(
        mails[0].contains("Subject: [groupsync] team: failed"),
        "{}",
        mails[0]
    );
    assert!(mails[0].contains("ghost"), "{}", mails[0]);
    drop(dir);
}

#[test]
fn bad_notify_and_metrics_settings_are_named() {
    let t = Tree::new(0);
    let cfg = |extra: &str| {
        fs::write(
            t.path().join("groupsync.toml"),
            format!("[backend]\nkind = \"vdir\"\nroot = \"contacts\"\n{extra}"),
        )
        .unwrap()
    };
    cfg("[notify]\non = \"sometimes\"\n");
    t.cmd()
        .arg("status")
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "groupsync.toml:5:6: notify.on \"sometimes\"",
        ));
    cfg("[metrics]\nlisten = \"everywhere\"\n");
    t.cmd()
        .arg("status")
        .assert()
        .code(2)
        .stderr(predicates::str::contains("metrics.listen \"everywhere\""));
    cfg("[notify]\nemail_to = [\"ops@example.com\"]\n");
    t.cmd()
        .arg("status")
        .assert()
        .code(2)
        .stderr(predicates::str::contains("email_to needs email_from"));
}

#[test]
fn the_packaged_config_is_valid() {
    let text = include_str!("../packaging/groupsync.toml");
    let c = groupsync::config::Config::parse(
        std::path::Path::new("/etc/groupsync/groupsync.toml"),
        text,
    )
    .unwrap();
    assert_eq!(
        c.state,
        std::path::PathBuf::from("/var/lib/groupsync/state.db")
    );
    assert_eq!(c.jobs_dir, std::path::PathBuf::from("/etc/groupsync/jobs"));
}

#[test]
fn deleted_payloads_are_read_in_one_batch_per_destination() {
    let t = Tree::new(6);
    fs::write(
        t.path().join("groupsync.toml"),
        "state = \"state.db\"\n[backend]\nkind = \"vdir\"\nroot = \"contacts\"\n[metrics]\ntextfile = \"m.prom\"\n",
    )
    .unwrap();
    t.write_job("team", &["bob"], "");
    t.cmd().arg("run").assert().success();
    for i in 0..3 {
        fs::remove_file(t.group("alice", "Team").join(format!("p{i:03}.vcf"))).unwrap();
    }
    t.cmd().arg("run").assert().success();
    let m = samples(&fs::read_to_string(t.path().join("m.prom")).unwrap());
    assert_eq!(m["groupsync_api_calls_total{method=delete_contact}"], 3.0);
    assert_eq!(
        m["groupsync_api_calls_total{method=fetch_contacts}"], 1.0,
        "one read for the three trash payloads"
    );
    t.cmd()
        .arg("restore")
        .assert()
        .success()
        .stdout(predicates::str::contains("Person 002"));
}
