//! Prometheus metrics in the text exposition format (version 0.0.4), computed from the state
//! database so that counters only ever grow and survive restarts: runs by job and outcome,
//! failed destinations, contacts created/updated/deleted/moved, provider calls by method, and the
//! time of the last successful run of each job.
//!
//! Written as a node_exporter textfile after each run (atomically: temporary file + rename), and
//! served over HTTP by `groupsync serve` when `[metrics] listen` is set. The HTTP side answers
//! `GET /metrics` and nothing else; it is a few lines on tokio's TcpListener, because one
//! read-only endpoint does not justify an HTTP server framework in the binary.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::shard::Shard;
use crate::store::{Store, StoreError};

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics text for everything the state database holds.
pub fn render(store: &Store) -> Result<String, StoreError> {
    let totals = store.run_totals()?;
    let calls = store.call_totals()?;
    let mut s = String::new();
    family(
        &mut s,
        "groupsync_runs_total counter",
        "Runs of each job, by outcome (ok, failed, stopped, error, invalid, interrupted).",
        totals.iter().map(|t| {
            let labels = format!("job=\"{}\",outcome=\"{}\"", esc(&t.job), esc(&t.outcome));
            (labels, t.runs)
        }),
    );
    // Per job: failed destinations, then contacts created, updated, deleted, moved.
    let mut jobs: BTreeMap<&str, [i64; 5]> = Default::default();
    for t in &totals {
        let e = jobs.entry(t.job.as_str()).or_default();
        for (sum, n) in e
            .iter_mut()
            .zip([t.failed, t.created, t.updated, t.deleted, t.moved])
        {
            *sum += n;
        }
    }
    family(
        &mut s,
        "groupsync_destination_failures_total counter",
        "Destinations that failed in a run, by job.",
        jobs.iter()
            .map(|(job, v)| (format!("job=\"{}\"", esc(job)), v[0])),
    );
    family(
        &mut s,
        "groupsync_contacts_changed_total counter",
        "Contacts changed at destinations, by job and action.",
        jobs.iter().flat_map(|(job, v)| {
            ["created", "updated", "deleted", "moved"]
                .iter()
                .enumerate()
                .map(move |(i, action)| {
                    (
                        format!("job=\"{}\",action=\"{action}\"", esc(job)),
                        v[i + 1],
                    )
                })
        }),
    );
    family(
        &mut s,
        "groupsync_api_calls_total counter",
        "Provider calls, by method.",
        calls
            .iter()
            .map(|(method, n)| (format!("method=\"{}\"", esc(method)), *n)),
    );
    let mut last: BTreeMap<&str, i64> = Default::default();
    for t in &totals {
        if let Some(ts) = t
            .last_finished_at
            .as_deref()
            .and_then(|x| chrono::DateTime::parse_from_rfc3339(x).ok())
        {
            let e = last.entry(t.job.as_str()).or_default();
            *e = (*e).max(ts.timestamp());
        }
    }
    family(
        &mut s,
        "groupsync_last_success_timestamp_seconds gauge",
        "Unix time of the end of the last successful run, by job.",
        last.iter()
            .map(|(job, ts)| (format!("job=\"{}\"", esc(job)), *ts)),
    );
    Ok(s)
}

/// One metric family: `name_and_type` is "<name> <counter|gauge>"; each sample is its labels
/// (escaped) and value.
fn family(
    s: &mut String,
    name_and_type: &str,
    help: &str,
    samples: impl Iterator<Item = (String, i64)>,
) {
    let name = name_and_type.split(' ').next().unwrap_or_default();
    let _ = writeln!(s, "# HELP {name} {help}");
    let _ = writeln!(s, "# TYPE {name_and_type}");
    for (labels, value) in samples {
        let _ = writeln!(s, "{name}{{{labels}}} {value}");
    }
}

/// Writes the textfile atomically, so node_exporter never reads half a file, mode 0644.
pub fn write_textfile(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("groupsync.prom"),
        std::process::id()
    ));
    std::fs::write(&tmp, text)?;
    // Read by node_exporter, usually another user: 0644 whatever the umask (a systemd unit's
    // UMask=0077 would hide it). It holds job names and counts, nothing about a person.
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(&tmp, path)
}

/// The metrics of one shard of several: every sample gets a `shard="I/N"` label, so the
/// textfiles and listeners of all shards can be collected side by side and summed by job.
pub fn for_shard(text: &str, shard: Option<Shard>) -> String {
    let Some(shard) = shard.filter(|s| !s.is_whole()) else {
        return text.to_string();
    };
    let label = format!("shard=\"{shard}\"");
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            out.push_str(line);
        } else if let Some((name, rest)) = line.split_once('{') {
            let _ = write!(out, "{name}{{{label},{rest}");
        } else if let Some((name, rest)) = line.split_once(' ') {
            let _ = write!(out, "{name}{{{label}}} {rest}");
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// Serves `GET /metrics` on `listener` until the task is dropped, reading a fresh state
/// connection for each scrape; the samples of a shard carry its label (see `for_shard`).
pub async fn serve_http(listener: tokio::net::TcpListener, state: PathBuf, shard: Option<Shard>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            // Read the request head (up to the blank line), bounded.
            while n < buf.len() {
                match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    sock.read(&mut buf[n..]),
                )
                .await
                {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                    Ok(Ok(k)) => {
                        n += k;
                        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                }
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let line = head.lines().next().unwrap_or("");
            let (status, body, ctype) = if line.starts_with("GET /metrics ")
                || line == "GET /metrics"
            {
                match tokio::task::spawn_blocking(move || {
                    Store::open(&state).and_then(|s| render(&s).map(|t| for_shard(&t, shard)))
                })
                .await
                {
                    Ok(Ok(text)) => ("200 OK", text, "text/plain; version=0.0.4; charset=utf-8"),
                    _ => (
                        "500 Internal Server Error",
                        "state database unavailable\n".to_string(),
                        "text/plain",
                    ),
                }
            } else {
                ("404 Not Found", "try /metrics\n".to_string(), "text/plain")
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}
