//! What a run tells its progress sink (the CLI's bar): every contact write it plans, each one
//! made, what a failure leaves unmade, and each destination as it finishes. The bar's estimate of
//! the work left is only as true as these counts.

use std::sync::{Arc, Mutex};

use groupsync::backend::memory::{DEFAULT_GROUP, Faults, MemoryBackend};
use groupsync::card::{self, ContactFilter, FieldSelection};
use groupsync::engine::{self, DestReport, JobRun, Outcome, Progress, ProgressSink, RunOptions};
use groupsync::plan::{JobSpec, Limits};
use groupsync::store::Store;

/// Every call the sink got, summed.
#[derive(Debug, Default, Clone, PartialEq)]
struct Heard {
    planned: u64,
    written: u64,
    dropped: u64,
    finished: Vec<String>,
}

#[derive(Default)]
struct Recording(Mutex<Heard>);

impl ProgressSink for Recording {
    fn planned(&self, n: u64) {
        self.0.lock().unwrap().planned += n;
    }
    fn written(&self, n: u64) {
        self.0.lock().unwrap().written += n;
    }
    fn dropped(&self, n: u64) {
        self.0.lock().unwrap().dropped += n;
    }
    fn finished(&self, r: &DestReport) {
        self.0.lock().unwrap().finished.push(r.user.clone());
    }
}

fn job(destinations: &[&str]) -> JobRun {
    JobRun {
        spec: JobSpec {
            name: "job".into(),
            tag: "gSync77".into(),
            target_group: "Team".into(),
            fields: FieldSelection::All,
            filter: ContactFilter::default(),
            limits: Limits::default(),
        },
        source: "src".into(),
        group: "G".into(),
        destinations: destinations.iter().map(|d| d.to_string()).collect(),
        exclude: vec![],
    }
}

fn card_of(i: usize) -> calcard::vcard::VCard {
    card::parse(&format!(
        "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:uid-{i}\r\nFN:Person {i}\r\nN:{i};Person;;;\r\nEMAIL:p{i}@example.com\r\nEND:VCARD\r\n"
    ))
    .unwrap()
}

/// Runs `job` with a recording sink; the outcome and what the sink heard.
fn run(backend: &Arc<MemoryBackend>, store: &Arc<Mutex<Store>>, j: &JobRun) -> (Outcome, Heard) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sink = Arc::new(Recording::default());
    let opts = RunOptions {
        concurrency: 2,
        default_group: DEFAULT_GROUP.into(),
        progress: Some(Progress(sink.clone())),
        ..Default::default()
    };
    let report = rt.block_on(engine::run_job(backend, store, j, &opts));
    let heard = sink.0.lock().unwrap().clone();
    (report.outcome, heard)
}

#[test]
fn the_sink_hears_every_planned_write_made_or_dropped_and_every_destination() {
    let backend = Arc::new(MemoryBackend::new());
    for u in ["src", "u0", "u1", "u2"] {
        backend.add_user(u);
    }
    for i in 0..60 {
        backend.put("src", "G", card_of(i));
    }
    backend.set_batch_size(10);
    let store = Arc::new(Mutex::new(Store::open_in_memory().unwrap()));

    // The first fan-out: 60 creates at each of 3 destinations, all made.
    let (outcome, heard) = run(&backend, &store, &job(&["u0", "u1", "u2"]));
    assert_eq!(outcome, Outcome::Ok);
    assert_eq!((heard.planned, heard.written, heard.dropped), (180, 180, 0));
    let mut finished = heard.finished.clone();
    finished.sort();
    assert_eq!(finished, ["u0", "u1", "u2"]);

    // A no-change rerun plans nothing and still tells each destination's end.
    let (_, heard) = run(&backend, &store, &job(&["u0", "u1", "u2"]));
    assert_eq!((heard.planned, heard.written, heard.dropped), (0, 0, 0));
    assert_eq!(heard.finished.len(), 3);

    // u2 removed, the provider cut at its 25th delete: what was not deleted is told as
    // dropped, so the bar's total shrinks to what was really done.
    backend.set_faults(Faults {
        fail_write: None,
        cut_at_write: Some(24), // the counter starts again at 0
    });
    let (outcome, heard) = run(&backend, &store, &job(&["u0", "u1"]));
    assert_eq!(outcome, Outcome::Failed, "{heard:?}");
    assert_eq!(heard.planned, 60);
    assert!(heard.written < 60, "{heard:?}");
    assert_eq!(heard.written + heard.dropped, heard.planned, "{heard:?}");
    assert_eq!(heard.finished.len(), 3);
    let left = backend
        .dump("u2")
        .into_iter()
        .filter(|(_, _, c)| card::tag_of(c).is_some())
        .count() as u64;
    assert_eq!(
        60 - heard.written,
        left,
        "written counts exactly the copies deleted"
    );
}
