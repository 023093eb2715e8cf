//! The progress bar of `run`, `plan` and the `job` commands that sync: on stderr, on a terminal
//! only, over the contacts a job writes and the destinations it has done, with a rate and an
//! estimate of the time left from the work actually left. It shows nothing the run did not
//! tell it, and it never writes to stdout.

use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;

use crate::engine::{DestReport, Progress, ProgressSink};
use crate::job::Job;

use super::Ctx;

/// How a job's run stands, as the engine told it.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Tally {
    /// Destinations of the job.
    pub destinations: u64,
    /// Destinations done (synced, failed or stopped).
    pub done: u64,
    /// Plans made so far (one per destination that had something to write).
    pub plans: u64,
    /// Contact writes planned and not dropped.
    pub planned: u64,
    /// Contact writes made.
    pub written: u64,
}

impl Tally {
    /// The work units of the run: one per destination (its reads and its plan) plus one per
    /// contact written. The destinations not planned yet are expected to write as many contacts
    /// as the planned ones did on average.
    pub fn units(&self) -> (u64, u64) {
        let unplanned = self.destinations.saturating_sub(self.done.max(self.plans));
        let expected = (unplanned * self.planned)
            .checked_div(self.plans)
            .unwrap_or(0);
        let total = self.destinations + self.planned + expected;
        let done = self.done + self.written;
        (done.min(total), total)
    }

    /// The line beside the bar: contacts written of those expected, destinations done, and the
    /// write rate.
    pub fn message(&self, job: &str, secs: f64) -> String {
        let (_, total) = self.units();
        let contacts = total - self.destinations;
        let mut s = format!("{job}: {}/{} destinations", self.done, self.destinations);
        if contacts > 0 {
            s.push_str(&format!(", {}/{} contacts", self.written, contacts));
            if secs >= 1.0 {
                s.push_str(&format!(", {:.0}/s", self.written as f64 / secs));
            }
        }
        s
    }
}

/// A job's bar and its tally.
struct Bar {
    bar: ProgressBar,
    job: String,
    started: Instant,
    tally: Mutex<Tally>,
}

impl Bar {
    fn update(&self, f: impl FnOnce(&mut Tally)) {
        let mut t = crate::mutex::lock(&self.tally);
        f(&mut t);
        let (done, total) = t.units();
        self.bar
            .set_message(t.message(&self.job, self.started.elapsed().as_secs_f64()));
        self.bar.set_length(total);
        self.bar.set_position(done);
    }
}

impl ProgressSink for Bar {
    fn planned(&self, n: u64) {
        if n > 0 {
            self.update(|t| {
                t.plans += 1;
                t.planned += n;
            });
        }
    }
    fn written(&self, n: u64) {
        self.update(|t| t.written += n);
    }
    fn dropped(&self, n: u64) {
        self.update(|t| t.planned = t.planned.saturating_sub(n));
    }
    fn finished(&self, _: &DestReport) {
        self.update(|t| t.done += 1);
    }
}

/// A job's bar on stderr, only on a terminal (and never with `--json` or `--no-progress`).
/// Returns the bar (to clear when the job is done) and the sink the engine tells.
pub fn job_bar(ctx: &Ctx, job: &Job) -> Option<(ProgressBar, Progress)> {
    if !ctx.progress {
        return None;
    }
    let bar = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template("[{bar:30}] {msg} ({eta} left)") {
        bar.set_style(style.progress_chars("=> "));
    }
    let sink = Bar {
        bar: bar.clone(),
        job: job.name.clone(),
        started: Instant::now(),
        tally: Mutex::new(Tally {
            destinations: job.effective_destinations().len() as u64,
            ..Tally::default()
        }),
    };
    sink.update(|_| {});
    Some((bar, Progress(Arc::new(sink))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_work_left_counts_what_unplanned_destinations_are_expected_to_write() {
        // 10 destinations; 2 planned 100 writes each; 50 written; 1 done.
        let t = Tally {
            destinations: 10,
            done: 1,
            plans: 2,
            planned: 200,
            written: 50,
        };
        // 10 destination units + 200 planned + 8 unplanned x 100 expected.
        assert_eq!(t.units(), (51, 1010));
        assert_eq!(
            t.message("team", 10.0),
            "team: 1/10 destinations, 50/1000 contacts, 5/s"
        );
    }

    #[test]
    fn a_run_with_nothing_to_write_counts_destinations() {
        let t = Tally {
            destinations: 4,
            done: 3,
            ..Tally::default()
        };
        assert_eq!(t.units(), (3, 4));
        assert_eq!(t.message("team", 0.5), "team: 3/4 destinations");
    }

    #[test]
    fn dropped_writes_leave_the_estimate() {
        let mut t = Tally {
            destinations: 2,
            done: 0,
            plans: 2,
            planned: 100,
            written: 10,
        };
        t.planned -= 40; // one destination failed with 40 of its writes not made
        t.done = 2;
        assert_eq!(t.units(), (12, 62));
    }
}
