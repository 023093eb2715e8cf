//! The daemon under tokio's paused clock: it fires on time, follows local time across DST,
//! catches up a missed run once, picks up new job files, waits for run windows, never overlaps
//! runs, and on shutdown finishes the destination in progress and records the run.

use chrono::{DateTime, Utc};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

use groupsync::backend::memory::{DEFAULT_GROUP, MemoryBackend};
use groupsync::card;
use groupsync::engine::{Outcome, RunOptions};
use groupsync::serve::{Daemon, Event, TokioClock};
use groupsync::store::Store;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

struct Rig {
    dir: tempfile::TempDir,
    backend: Arc<MemoryBackend>,
    store: Arc<Mutex<Store>>,
}

impl Rig {
    fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("jobs")).unwrap();
        let backend = Arc::new(MemoryBackend::new());
        for u in ["src", "u1", "u2", "u3"] {
            backend.add_user(u);
        }
        for i in 0..2 {
            backend.put(
                "src",
                "G",
                card::parse(&format!(
                    "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:P{i}\r\nEND:VCARD\r\n"
                ))
                .unwrap(),
            );
        }
        let store = Arc::new(Mutex::new(
            Store::open(&dir.path().join("state.db")).unwrap(),
        ));
        Rig {
            dir,
            backend,
            store,
        }
    }

    fn job(&self, name: &str, tag: &str, dests: &[&str], extra: &str) {
        write_job(self.dir.path(), name, tag, dests, extra);
    }

    /// Runs the daemon for `dur` of (paused) time from `base`; `during` runs beside it.
    async fn serve(
        &self,
        base: &str,
        dur: Duration,
        during: impl std::future::Future<Output = ()>,
    ) -> Vec<Event> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let daemon = Daemon {
            backend: &self.backend,
            store: &self.store,
            jobs_dir: self.dir.path().join("jobs"),
            state: self.dir.path().join("state.db"),
            opts: RunOptions {
                concurrency: 1,
                default_group: DEFAULT_GROUP.into(),
                ..Default::default()
            },
            reload: Duration::from_secs(60),
            events: Some(tx),
            after_run: None,
        };
        let clock = TokioClock::starting_at(utc(base));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let stopper = async move {
            tokio::join!(during, tokio::time::sleep(dur));
            let _ = stop_tx.send(());
        };
        let (r, _) = tokio::join!(
            daemon.run(&clock, async move {
                let _ = stop_rx.await;
            }),
            stopper
        );
        r.unwrap();
        drop(daemon);
        let mut events = vec![];
        while let Ok(e) = rx.try_recv() {
            events.push(e);
        }
        events
    }

    fn last_ran(&self, job: &str, at: &str) {
        self.store
            .lock()
            .unwrap()
            .schedule_set(job, Some(&utc(at).to_rfc3339()), None)
            .unwrap();
    }
}

fn write_job(dir: &Path, name: &str, tag: &str, dests: &[&str], extra: &str) {
    let d: Vec<String> = dests.iter().map(|d| format!("\"{d}\"")).collect();
    std::fs::write(
        dir.join("jobs").join(format!("{name}.toml")),
        format!(
            "tag = \"{tag}\"\nsource = \"src\"\ngroup = \"G\"\ndestinations = [{}]\n{extra}",
            d.join(", ")
        ),
    )
    .unwrap();
}

fn starts(events: &[Event], job: &str) -> Vec<DateTime<Utc>> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Started { job: j, at } if j == job => Some(*at),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn fires_on_time_every_day() {
    let rig = Rig::new();
    rig.job(
        "daily",
        "gSync11",
        &["u1"],
        "schedule = \"0 3 * * *\"\ntimezone = \"UTC\"\n",
    );
    rig.last_ran("daily", "2026-05-31T03:00:00Z");
    let events = rig
        .serve(
            "2026-06-01T00:00:00Z",
            Duration::from_secs(50 * 3600),
            async {},
        )
        .await;
    assert_eq!(
        starts(&events, "daily"),
        vec![utc("2026-06-01T03:00:00Z"), utc("2026-06-02T03:00:00Z")]
    );
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Finished {
            outcome: Outcome::Ok,
            ..
        }
    )));
    assert_eq!(
        rig.backend
            .dump("u1")
            .iter()
            .filter(|(g, _, _)| g == "G")
            .count(),
        2,
        "the job really ran"
    );
}

#[tokio::test(start_paused = true)]
async fn follows_local_time_across_spring_forward() {
    let rig = Rig::new();
    rig.job(
        "berlin",
        "gSync12",
        &["u1"],
        "schedule = \"30 2 * * *\"\ntimezone = \"Europe/Berlin\"\n",
    );
    rig.last_ran("berlin", "2026-03-27T01:30:00Z");
    let events = rig
        .serve(
            "2026-03-28T00:00:00Z",
            Duration::from_secs(72 * 3600),
            async {},
        )
        .await;
    assert_eq!(
        starts(&events, "berlin"),
        vec![
            utc("2026-03-28T01:30:00Z"),
            utc("2026-03-29T01:00:00Z"),
            utc("2026-03-30T00:30:00Z")
        ],
        "02:30 CET; 03:00 CEST right after the gap; 02:30 CEST"
    );
}

#[tokio::test(start_paused = true)]
async fn runs_once_in_the_autumn_overlap() {
    let rig = Rig::new();
    rig.job(
        "berlin",
        "gSync13",
        &["u1"],
        "schedule = \"30 2 * * *\"\ntimezone = \"Europe/Berlin\"\n",
    );
    rig.last_ran("berlin", "2026-10-23T00:30:00Z");
    let events = rig
        .serve(
            "2026-10-24T00:00:00Z",
            Duration::from_secs(72 * 3600),
            async {},
        )
        .await;
    assert_eq!(
        starts(&events, "berlin"),
        vec![
            utc("2026-10-24T00:30:00Z"),
            utc("2026-10-25T00:30:00Z"),
            utc("2026-10-26T01:30:00Z")
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn catches_up_a_missed_run_once_and_runs_a_new_job_at_once() {
    let rig = Rig::new();
    rig.job("missed", "gSync14", &["u1"], "schedule = \"0 3 * * *\"\n");
    rig.last_ran("missed", "2026-05-25T03:00:00Z");
    rig.job("fresh", "gSync15", &["u2"], "schedule = \"0 3 * * *\"\n");
    let events = rig
        .serve("2026-06-01T10:00:00Z", Duration::from_secs(3600), async {})
        .await;
    assert_eq!(
        starts(&events, "missed"),
        vec![utc("2026-06-01T10:00:00Z")],
        "five missed days: one catch-up run"
    );
    assert_eq!(starts(&events, "fresh"), vec![utc("2026-06-01T10:00:00Z")]);
    let (_, next) = rig.store.lock().unwrap().schedule_get("missed").unwrap();
    assert_eq!(next.as_deref().map(utc), Some(utc("2026-06-02T03:00:00Z")));
}

#[tokio::test(start_paused = true)]
async fn picks_up_a_new_job_file_without_restart() {
    let rig = Rig::new();
    let jobs = rig.dir.path().to_path_buf();
    let during = async move {
        tokio::time::sleep(Duration::from_secs(600)).await;
        write_job(&jobs, "late", "gSync16", &["u1"], "");
    };
    let events = rig
        .serve("2026-06-01T10:00:00Z", Duration::from_secs(3600), during)
        .await;
    let s = starts(&events, "late");
    assert_eq!(s.len(), 1, "{events:?}");
    assert!(
        s[0] > utc("2026-06-01T10:10:00Z") && s[0] <= utc("2026-06-01T10:11:00Z"),
        "within the reload interval: {s:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn waits_for_the_run_window() {
    let rig = Rig::new();
    rig.job(
        "night",
        "gSync17",
        &["u1"],
        "schedule = \"0 12 * * *\"\nwindow = \"22:00-06:00\"\n",
    );
    rig.last_ran("night", "2026-05-31T22:00:00Z");
    let events = rig
        .serve(
            "2026-06-01T08:00:00Z",
            Duration::from_secs(20 * 3600),
            async {},
        )
        .await;
    assert_eq!(starts(&events, "night"), vec![utc("2026-06-01T22:00:00Z")]);
}

#[tokio::test(start_paused = true)]
async fn never_overlaps_runs() {
    let rig = Rig::new();
    rig.backend.set_latency(Duration::from_secs(600));
    rig.job(
        "a",
        "gSync18",
        &["u1", "u2"],
        "schedule = \"*/5 * * * *\"\n",
    );
    rig.job("b", "gSync19", &["u3"], "schedule = \"*/5 * * * *\"\n");
    let events = rig
        .serve(
            "2026-06-01T10:00:00Z",
            Duration::from_secs(4 * 3600),
            async {},
        )
        .await;
    let mut running: Option<String> = None;
    let mut runs = 0;
    for e in &events {
        match e {
            Event::Started { job, .. } => {
                assert!(
                    running.is_none(),
                    "{job} started while {running:?} was running"
                );
                running = Some(job.clone());
                runs += 1;
            }
            Event::Finished { job, .. } => {
                assert_eq!(running.as_deref(), Some(job.as_str()));
                running = None;
            }
            Event::Busy { .. } => {}
        }
    }
    assert!(runs >= 6, "both jobs ran repeatedly: {runs}");
    assert!(!starts(&events, "b").is_empty());
}

#[tokio::test(start_paused = true)]
async fn shutdown_finishes_the_destination_in_progress() {
    let rig = Rig::new();
    rig.backend.set_latency(Duration::from_secs(600));
    rig.job("slow", "gSync20", &["u1", "u2", "u3"], "");
    for u in ["u1", "u2", "u3"] {
        rig.backend.group_id(u, "G", true);
    }
    // Source scan 10 min, u1 10 min, u2 in progress when the stop comes at 25 min.
    let events = rig
        .serve(
            "2026-06-01T10:00:00Z",
            Duration::from_secs(25 * 60),
            async {},
        )
        .await;
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::Finished {
                outcome: Outcome::Interrupted,
                ..
            }
        )),
        "{events:?}"
    );
    let groups = |u: &str| {
        rig.backend
            .dump(u)
            .iter()
            .filter(|(g, _, _)| g == "G")
            .count()
    };
    assert_eq!(
        (groups("u1"), groups("u2"), groups("u3")),
        (2, 2, 0),
        "u2 finished, u3 waits for the next run"
    );
    let runs = rig.store.lock().unwrap().runs(Some("slow"), 5).unwrap();
    assert_eq!(runs[0].outcome, "interrupted");
    assert_eq!(runs[0].created, 4);
}
