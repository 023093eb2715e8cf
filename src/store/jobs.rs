//! The `jobs` and `schedule` tables: each job's tag (a job's tag never changes, and no two jobs
//! share one), its last source count, and when the daemon last ran it and runs it next.

use rusqlite::{OptionalExtension, params};

use super::{Result, Store, now};

impl Store {
    /// The tag the database remembers for a job, if any.
    pub fn job_tag(&self, job: &str) -> Result<Option<String>> {
        self.conn
            .query_row("SELECT tag FROM jobs WHERE name = ?1", [job], |r| r.get(0))
            .optional()
            .map_err(self.err())
    }

    /// The job a tag belongs to, if any.
    pub fn job_with_tag(&self, tag: &str) -> Result<Option<String>> {
        self.conn
            .query_row("SELECT name FROM jobs WHERE tag = ?1", [tag], |r| r.get(0))
            .optional()
            .map_err(self.err())
    }

    /// Remembers a job's tag (first run).
    pub fn remember_job(&self, job: &str, tag: &str) -> Result<()> {
        self.conn
            .execute("INSERT INTO jobs (name, tag, created_at) VALUES (?1, ?2, ?3) ON CONFLICT(name) DO NOTHING", params![job, tag, now()])
            .map(|_| ())
            .map_err(self.err())
    }

    /// Forgets everything about a job but its history (after `job delete`).
    pub fn forget_job(&self, job: &str) -> Result<()> {
        for sql in [
            "DELETE FROM jobs WHERE name = ?1",
            "DELETE FROM destinations WHERE job = ?1",
            "DELETE FROM copies WHERE job = ?1",
            "DELETE FROM source_contacts WHERE job = ?1",
        ] {
            self.conn.execute(sql, [job]).map_err(self.err())?;
        }
        Ok(())
    }

    pub fn set_source_count(&self, job: &str, n: usize) -> Result<()> {
        self.conn
            .execute(
                "UPDATE jobs SET last_source_count = ?2 WHERE name = ?1",
                params![job, n as i64],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    /// The source count of the job's last successful read, if any.
    pub fn last_source_count(&self, job: &str) -> Result<Option<i64>> {
        Ok(self
            .conn
            .query_row(
                "SELECT last_source_count FROM jobs WHERE name = ?1",
                [job],
                |r| r.get::<_, Option<i64>>(0),
            )
            .optional()
            .map_err(self.err())?
            .flatten())
    }

    /// When a job last ran and is next due, as the daemon recorded them.
    pub fn schedule_get(&self, job: &str) -> Result<(Option<String>, Option<String>)> {
        Ok(self
            .conn
            .query_row(
                "SELECT last_run_at, next_run_at FROM schedule WHERE job = ?1",
                [job],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.err())?
            .unwrap_or((None, None)))
    }

    /// Records a job's last and next run (RFC 3339, UTC).
    pub fn schedule_set(&self, job: &str, last: Option<&str>, next: Option<&str>) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO schedule (job, last_run_at, next_run_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(job) DO UPDATE SET last_run_at = coalesce(excluded.last_run_at, last_run_at), next_run_at = excluded.next_run_at",
                params![job, last, next],
            )
            .map(|_| ())
            .map_err(self.err())
    }
}
