//! `groupsync serve`: the daemon. It runs each enabled job on its schedule (cron in the job's
//! time zone, see `schedule`), one run at a time, so no job ever runs twice at once. A run missed
//! while the daemon was down is caught up once at start. Job files are re-read at least every
//! `reload` interval, so edits need no restart. On shutdown (SIGTERM) the destination in progress
//! finishes and is recorded; the others wait for the next run.
//!
//! It owns timing only: what a run does is the engine's job. Time comes from a `Clock`, so tests
//! drive it with tokio's paused clock.

use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::backend::Backend;
use crate::engine::{self, JobReport, Outcome, RunOptions};
use crate::job::{self, Job};
use crate::lock;
use crate::store::Store;

/// Where the daemon gets the time.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The system's wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that starts at `base` and advances with tokio's clock (paused in tests).
pub struct TokioClock {
    base: DateTime<Utc>,
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn starting_at(base: DateTime<Utc>) -> Self {
        TokioClock {
            base,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        self.base + chrono::Duration::from_std(self.start.elapsed()).unwrap_or_default()
    }
}

/// What the daemon did, for tests and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Started {
        job: String,
        at: DateTime<Utc>,
    },
    Finished {
        job: String,
        at: DateTime<Utc>,
        outcome: Outcome,
    },
    /// The state lock was held by another process; the run is retried later.
    Busy {
        job: String,
        at: DateTime<Utc>,
    },
}

/// What happens after every run (notifications, metrics): the same for `run` and `serve`.
pub trait AfterRun: Send + Sync {
    fn after_run<'a>(&'a self, report: &'a JobReport) -> futures::future::BoxFuture<'a, ()>;
}

/// The daemon's settings.
pub struct Daemon<'a, B> {
    pub backend: &'a Arc<B>,
    pub store: &'a Arc<Mutex<Store>>,
    pub jobs_dir: PathBuf,
    /// The state database's path (its lock file sits next to it).
    pub state: PathBuf,
    /// Options for every run (concurrency, default group).
    pub opts: RunOptions,
    /// How often job files are re-read when nothing is due sooner.
    pub reload: Duration,
    pub events: Option<tokio::sync::mpsc::UnboundedSender<Event>>,
    pub after_run: Option<&'a dyn AfterRun>,
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

impl<B: Backend + 'static> Daemon<'_, B> {
    fn emit(&self, e: Event) {
        if let Some(tx) = &self.events {
            let _ = tx.send(e);
        }
    }

    /// When a job last started: the daemon's record, else the newest run in the history.
    fn last_run(&self, job: &str) -> Option<DateTime<Utc>> {
        let store = crate::mutex::lock(self.store);
        if let Ok((Some(last), _)) = store.schedule_get(job) {
            return parse_time(&last);
        }
        store
            .runs(Some(job), 1)
            .ok()?
            .into_iter()
            .find(|r| !r.dry_run)
            .and_then(|r| parse_time(&r.started_at))
    }

    /// Enabled jobs, re-read from disk; broken files are logged once per distinct error.
    fn load_jobs(&self, reported: &mut BTreeMap<String, String>) -> Vec<Job> {
        let mut jobs = vec![];
        match job::load_all(&self.jobs_dir) {
            Err(e) => tracing::error!("{e}"),
            Ok(all) => {
                let mut seen = BTreeMap::new();
                for j in all {
                    match j {
                        Ok(j) if j.enabled => jobs.push(j),
                        Ok(_) => {}
                        Err(e) => {
                            let msg = e.to_string();
                            if reported.get(&e.file) != Some(&msg) {
                                tracing::error!(
                                    "{msg}; this job is skipped until the file is fixed"
                                );
                            }
                            seen.insert(e.file.clone(), msg);
                        }
                    }
                }
                *reported = seen;
            }
        }
        jobs
    }

    /// Runs until `shutdown` completes.
    pub async fn run(
        &self,
        clock: &dyn Clock,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        let mut reported = BTreeMap::new();
        let cancel = Arc::new(AtomicBool::new(false));
        tracing::info!(jobs_dir = %self.jobs_dir.display(), "groupsync serve started");
        loop {
            let now = clock.now();
            let jobs = self.load_jobs(&mut reported);
            let mut due: Vec<(DateTime<Utc>, &Job)> = jobs
                .iter()
                .map(|j| (j.schedule().due(self.last_run(&j.name), now), j))
                .collect();
            due.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)));
            let mut wake = now + chrono::Duration::from_std(self.reload).unwrap_or_default();
            for (at, job) in &due {
                if *at > now {
                    wake = wake.min(*at);
                    continue;
                }
                // One run at a time, and never beside a `groupsync run` on the same state.
                let held = match lock::acquire(&self.state, Duration::ZERO) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(job = %job.name, "{e}; retrying in a minute");
                        self.emit(Event::Busy {
                            job: job.name.clone(),
                            at: clock.now(),
                        });
                        wake = wake.min(clock.now() + chrono::Duration::seconds(60));
                        continue;
                    }
                };
                let started = clock.now();
                self.emit(Event::Started {
                    job: job.name.clone(),
                    at: started,
                });
                tracing::info!(job = %job.name, "scheduled run starting");
                let (report, shutting_down) =
                    self.run_due(job, &jobs, &cancel, &mut shutdown).await;
                drop(held);
                let next = self.record(clock, job, started, &report).await;
                if shutting_down {
                    tracing::info!("groupsync serve stopped");
                    return Ok(());
                }
                wake = wake.min(next);
            }
            let sleep = (wake - clock.now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .min(self.reload);
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = &mut shutdown => {
                    tracing::info!("groupsync serve stopped");
                    return Ok(());
                }
            }
        }
    }

    /// Runs one due job to its end, or refuses it when it is in a cycle of jobs feeding each
    /// other (as `run` refuses it). A shutdown asked meanwhile stops the run between
    /// destinations; the second value says it was asked.
    async fn run_due<S: Future<Output = ()>>(
        &self,
        job: &Job,
        jobs: &[Job],
        cancel: &Arc<AtomicBool>,
        shutdown: &mut std::pin::Pin<&mut S>,
    ) -> (JobReport, bool) {
        let opts = RunOptions {
            cancel: Some(cancel.clone()),
            ..self.opts.clone()
        };
        let job_run = job.to_run();
        let (nodes, cycles) =
            crate::feeds::job_cycles(&**self.backend, jobs.iter().cloned(), &[]).await;
        let refused = cycles
            .iter()
            .find(|c| c.contains(&job.name))
            .map(|c| c.describe(&nodes));
        if let Some(why) = refused {
            tracing::error!(job = %job.name, "{why}");
            return (engine::refuse_job(self.store, &job_run, false, why), false);
        }
        let run = engine::run_job(self.backend, self.store, &job_run, &opts);
        tokio::pin!(run);
        tokio::select! {
            r = &mut run => (r, false),
            _ = shutdown => {
                tracing::info!(job = %job.name, "shutdown requested: finishing the destination in progress");
                cancel.store(true, Ordering::SeqCst);
                (run.await, true)
            }
        }
    }

    /// After a scheduled run: its start and the next run in the schedule table, the event, the
    /// after-run hooks. Returns when the job is due next.
    async fn record(
        &self,
        clock: &dyn Clock,
        job: &Job,
        started: DateTime<Utc>,
        report: &JobReport,
    ) -> DateTime<Utc> {
        let next = job.schedule().due(Some(started), clock.now());
        {
            let store = crate::mutex::lock(self.store);
            let _ = store.schedule_set(
                &job.name,
                Some(&started.to_rfc3339()),
                Some(&next.to_rfc3339()),
            );
        }
        tracing::info!(job = %job.name, outcome = report.outcome.as_str(), next = %next, "scheduled run finished");
        self.emit(Event::Finished {
            job: job.name.clone(),
            at: clock.now(),
            outcome: report.outcome,
        });
        if let Some(hooks) = self.after_run {
            hooks.after_run(report).await;
        }
        next
    }
}
