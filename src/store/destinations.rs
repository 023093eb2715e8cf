//! The `destinations` table: every destination a job has synced and not yet cleaned up (this is
//! how one dropped from a job file is found), its last outcome, and what it converged to (the
//! mark, the provider's change token).

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{Result, Store, now};

/// A destination the job has synced at least once.
#[derive(Debug, Clone, Serialize)]
pub struct DestRecord {
    pub job: String,
    pub user_id: String,
    pub user: String,
    pub target_group: String,
    pub first_synced_at: String,
    pub last_attempt_at: Option<String>,
    pub last_success_at: Option<String>,
    pub last_outcome: Option<String>,
    pub last_error: Option<String>,
    pub copies: i64,
}

impl Store {
    /// Every destination this job has synced and not yet cleaned up.
    pub fn destinations(&self, job: &str) -> Result<Vec<DestRecord>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT d.job, d.user_id, d.user_name, d.target_group, d.first_synced_at, d.last_attempt_at, d.last_success_at,
                        d.last_outcome, d.last_error,
                        coalesce((SELECT n FROM copy_counts c WHERE c.job = d.job AND c.user_id = d.user_id), 0)
                 FROM destinations d WHERE d.job = ?1 ORDER BY d.user_name",
            )
            .map_err(self.err())?;
        let rows = st
            .query_map([job], |r| {
                Ok(DestRecord {
                    job: r.get(0)?,
                    user_id: r.get(1)?,
                    user: r.get(2)?,
                    target_group: r.get(3)?,
                    first_synced_at: r.get(4)?,
                    last_attempt_at: r.get(5)?,
                    last_success_at: r.get(6)?,
                    last_outcome: r.get(7)?,
                    last_error: r.get(8)?,
                    copies: r.get(9)?,
                })
            })
            .map_err(self.err())?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err())
    }

    /// Records that a destination is part of the job (before anything is written to it).
    pub fn touch_destination(
        &self,
        job: &str,
        user_id: &str,
        user: &str,
        target_group: &str,
    ) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO destinations (job, user_id, user_name, target_group, first_synced_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(job, user_id) DO UPDATE SET user_name = excluded.user_name, target_group = excluded.target_group",
                params![job, user_id, user, target_group, now()],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    /// Records the outcome of a destination in a run.
    pub fn destination_outcome(
        &self,
        job: &str,
        user_id: &str,
        run_id: i64,
        error: Option<&str>,
    ) -> Result<()> {
        let t = now();
        let outcome = if error.is_some() { "failed" } else { "ok" };
        self.conn
            .execute(
                "UPDATE destinations SET last_run_id = ?3, last_attempt_at = ?4, last_outcome = ?5, last_error = ?6,
                 last_success_at = CASE WHEN ?6 IS NULL THEN ?4 ELSE last_success_at END WHERE job = ?1 AND user_id = ?2",
                params![job, user_id, run_id, t, outcome, error],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    /// What a destination converged to after its last successful sync (see the engine).
    pub fn fingerprint(&self, job: &str, user_id: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT fingerprint FROM destinations WHERE job = ?1 AND user_id = ?2",
                params![job, user_id],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()
            .map_err(self.err())?
            .flatten())
    }

    pub fn set_fingerprint(&self, job: &str, user_id: &str, mark: Option<&str>) -> Result<()> {
        self.conn
            .execute(
                "UPDATE destinations SET fingerprint = ?3 WHERE job = ?1 AND user_id = ?2",
                params![job, user_id, mark],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    /// The provider's change token for a destination and the id of its group (see
    /// `Backend::read_changes`), if the last run left one.
    pub fn change_token(&self, job: &str, user_id: &str) -> Result<Option<(String, String)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT change_token, group_id FROM destinations WHERE job = ?1 AND user_id = ?2",
                params![job, user_id],
                |r| {
                    Ok((
                        r.get::<_, Option<String>>(0)?,
                        r.get::<_, Option<String>>(1)?,
                    ))
                },
            )
            .optional()
            .map_err(self.err())?
            .and_then(|(t, g)| Some((t?, g?))))
    }

    /// Keeps (or with `None` forgets) a destination's change token and group id.
    pub fn set_change_token(
        &self,
        job: &str,
        user_id: &str,
        token: Option<(&str, &str)>,
    ) -> Result<()> {
        let (t, g) = token.unzip();
        self.conn
            .execute(
                "UPDATE destinations SET change_token = ?3, group_id = ?4 WHERE job = ?1 AND user_id = ?2",
                params![job, user_id, t, g],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    /// Forgets a destination that was cleaned up.
    pub fn forget_destination(&self, job: &str, user_id: &str) -> Result<()> {
        self.conn
            .execute(
                "DELETE FROM destinations WHERE job = ?1 AND user_id = ?2",
                params![job, user_id],
            )
            .map_err(self.err())?;
        self.conn
            .execute(
                "DELETE FROM copies WHERE job = ?1 AND user_id = ?2",
                params![job, user_id],
            )
            .map(|_| ())
            .map_err(self.err())
    }
}
