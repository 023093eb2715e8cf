//! The `runs` and `run_calls` tables: the history of runs with their counts and outcome, and the
//! provider calls each made.

use rusqlite::params;
use serde::Serialize;

use super::{Result, Store, now};

/// One run of one job.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub id: i64,
    pub job: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub dry_run: bool,
    pub outcome: String,
    pub destinations: i64,
    pub failed: i64,
    pub created: i64,
    pub updated: i64,
    pub deleted: i64,
    pub moved: i64,
    pub message: Option<String>,
}

/// Per job and outcome, sums over the run history (for metrics).
#[derive(Debug, Clone, Serialize)]
pub struct RunTotals {
    pub job: String,
    pub outcome: String,
    pub runs: i64,
    pub failed: i64,
    pub created: i64,
    pub updated: i64,
    pub deleted: i64,
    pub moved: i64,
    pub last_finished_at: Option<String>,
}

/// Totals of a run, as recorded.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub destinations: i64,
    pub failed: i64,
    pub created: i64,
    pub updated: i64,
    pub deleted: i64,
    pub moved: i64,
}

impl Store {
    /// Starts a run record and returns its id.
    pub fn start_run(&self, job: &str, dry_run: bool) -> Result<i64> {
        self.conn
            .execute(
                "INSERT INTO runs (job, started_at, dry_run) VALUES (?1, ?2, ?3)",
                params![job, now(), dry_run],
            )
            .map_err(self.err())?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Records every run still `running` as `interrupted`: called with the state lock held,
    /// when none of them can still be going (their process was killed). Returns how many.
    pub fn close_stale_runs(&self) -> Result<usize> {
        self.conn
            .execute(
                "UPDATE runs SET outcome = 'interrupted', finished_at = ?1,
                 message = 'the process stopped during the run (killed, or the machine went down); what it wrote is recorded, the rest runs next time'
                 WHERE outcome = 'running'",
                params![now()],
            )
            .map_err(self.err())
    }

    /// Closes a run record.
    pub fn finish_run(
        &self,
        run_id: i64,
        outcome: &str,
        c: Counts,
        message: Option<&str>,
    ) -> Result<()> {
        self.conn
            .execute(
                "UPDATE runs SET finished_at = ?2, outcome = ?3, destinations = ?4, failed = ?5, created = ?6, updated = ?7,
                 deleted = ?8, moved = ?9, message = ?10 WHERE id = ?1",
                params![run_id, now(), outcome, c.destinations, c.failed, c.created, c.updated, c.deleted, c.moved, message],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    /// Records the provider calls of a run, by method.
    pub fn record_calls(&self, run_id: i64, calls: &[(&str, u64)]) -> Result<()> {
        for (method, n) in calls {
            self.conn
                .execute(
                    "INSERT INTO run_calls (run_id, method, count) VALUES (?1, ?2, ?3)
                     ON CONFLICT(run_id, method) DO UPDATE SET count = count + excluded.count",
                    params![run_id, method, *n as i64],
                )
                .map_err(self.err())?;
        }
        Ok(())
    }

    /// Provider calls of every run, by method.
    pub fn call_totals(&self) -> Result<Vec<(String, i64)>> {
        let mut st = self
            .conn
            .prepare("SELECT method, SUM(count) FROM run_calls GROUP BY method ORDER BY method")
            .map_err(self.err())?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.err())?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err())
    }

    /// Totals per job and outcome over every recorded (non-dry) run:
    /// (job, outcome, runs, failed destinations, created, updated, deleted, moved).
    pub fn run_totals(&self) -> Result<Vec<RunTotals>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT job, outcome, COUNT(*), SUM(failed), SUM(created), SUM(updated), SUM(deleted), SUM(moved),
                        MAX(CASE WHEN outcome = 'ok' THEN finished_at END)
                 FROM runs WHERE dry_run = 0 AND outcome != 'running' GROUP BY job, outcome ORDER BY job, outcome",
            )
            .map_err(self.err())?;
        let rows = st
            .query_map([], |r| {
                Ok(RunTotals {
                    job: r.get(0)?,
                    outcome: r.get(1)?,
                    runs: r.get(2)?,
                    failed: r.get(3)?,
                    created: r.get(4)?,
                    updated: r.get(5)?,
                    deleted: r.get(6)?,
                    moved: r.get(7)?,
                    last_finished_at: r.get(8)?,
                })
            })
            .map_err(self.err())?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err())
    }

    /// Runs, newest first.
    pub fn runs(&self, job: Option<&str>, limit: usize) -> Result<Vec<RunRecord>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT id, job, started_at, finished_at, dry_run, outcome, destinations, failed, created, updated, deleted, moved, message
                 FROM runs WHERE (?1 IS NULL OR job = ?1) ORDER BY id DESC LIMIT ?2",
            )
            .map_err(self.err())?;
        let rows = st
            .query_map(params![job, limit as i64], |r| {
                Ok(RunRecord {
                    id: r.get(0)?,
                    job: r.get(1)?,
                    started_at: r.get(2)?,
                    finished_at: r.get(3)?,
                    dry_run: r.get(4)?,
                    outcome: r.get(5)?,
                    destinations: r.get(6)?,
                    failed: r.get(7)?,
                    created: r.get(8)?,
                    updated: r.get(9)?,
                    deleted: r.get(10)?,
                    moved: r.get(11)?,
                    message: r.get(12)?,
                })
            })
            .map_err(self.err())?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err())
    }
}
