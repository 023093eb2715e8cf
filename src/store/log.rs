//! The `changes` table: the change log, one line per change to a contact (who, what, when,
//! which properties, the managed digests before and after).

use rusqlite::params;
use serde::Serialize;

use super::{Result, Store, now};

/// One line to append to the change log.
#[derive(Debug, Clone, Default)]
pub struct Change<'a> {
    pub run_id: i64,
    pub job: &'a str,
    pub user_id: &'a str,
    pub user: &'a str,
    pub action: &'a str,
    pub source_id: Option<&'a str>,
    pub contact_id: Option<&'a str>,
    pub name: Option<&'a str>,
    pub detail: Option<&'a str>,
    /// Comma-separated property names that changed (updates).
    pub fields: Option<&'a str>,
    /// Digest of the managed content before and after.
    pub before: Option<&'a str>,
    pub after: Option<&'a str>,
}

/// One line of the change log, as read back.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeRecord {
    pub id: i64,
    pub run_id: i64,
    pub at: String,
    pub job: String,
    pub user_id: String,
    pub user: String,
    pub action: String,
    pub source_id: Option<String>,
    pub contact_id: Option<String>,
    pub name: Option<String>,
    pub detail: Option<String>,
    pub fields: Vec<String>,
    pub before: Option<String>,
    pub after: Option<String>,
}

impl Store {
    /// Appends one line to the change log.
    pub fn log_change(&self, c: &Change<'_>) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO changes (run_id, at, job, user_id, user_name, action, source_id, contact_id, name, detail, fields, before_digest, after_digest)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    c.run_id, now(), c.job, c.user_id, c.user, c.action, c.source_id, c.contact_id, c.name, c.detail, c.fields, c.before, c.after
                ])
            })
            .map_err(self.err())?;
        self.batch_tick(false)
    }

    /// Change-log lines of a job, newest first, optionally narrowed to a destination (name or
    /// id) and to contacts whose name contains `contact` (case-insensitive).
    pub fn changes(
        &self,
        job: &str,
        dest: Option<&str>,
        contact: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ChangeRecord>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT id, run_id, at, job, user_id, user_name, action, source_id, contact_id, name, detail, fields, before_digest, after_digest
                 FROM changes WHERE job = ?1 AND (?2 IS NULL OR user_name = ?2 OR user_id = ?2)
                 AND (?3 IS NULL OR instr(lower(coalesce(name, '')), lower(?3)) > 0) ORDER BY id DESC LIMIT ?4",
            )
            .map_err(self.err())?;
        let rows = st
            .query_map(params![job, dest, contact, limit as i64], |r| {
                Ok(ChangeRecord {
                    id: r.get(0)?,
                    run_id: r.get(1)?,
                    at: r.get(2)?,
                    job: r.get(3)?,
                    user_id: r.get(4)?,
                    user: r.get(5)?,
                    action: r.get(6)?,
                    source_id: r.get(7)?,
                    contact_id: r.get(8)?,
                    name: r.get(9)?,
                    detail: r.get(10)?,
                    fields: r
                        .get::<_, Option<String>>(11)?
                        .map(|f| {
                            f.split(',')
                                .filter(|x| !x.is_empty())
                                .map(str::to_string)
                                .collect()
                        })
                        .unwrap_or_default(),
                    before: r.get(12)?,
                    after: r.get(13)?,
                })
            })
            .map_err(self.err())?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err())
    }
}
