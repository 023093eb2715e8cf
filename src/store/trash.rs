//! The `trash` table: the payload of every contact groupsync deleted, written before the delete,
//! for `groupsync restore`.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{Result, Store, now};

/// A deleted contact kept for `restore`.
#[derive(Debug, Clone, Serialize)]
pub struct TrashRecord {
    pub id: i64,
    pub run_id: i64,
    pub deleted_at: String,
    pub job: String,
    pub user_id: String,
    pub user: String,
    pub group: String,
    pub contact_id: String,
    pub name: String,
    pub reason: String,
    #[serde(skip)]
    pub payload: String,
    pub restored_at: Option<String>,
}

/// A contact about to be deleted, for the trash (see `Store::trash`).
#[derive(Debug, Clone, Copy)]
pub struct TrashEntry<'a> {
    pub contact_id: &'a str,
    pub name: &'a str,
    pub reason: &'a str,
    /// The contact as a vCard.
    pub payload: &'a str,
}

impl Store {
    /// Keeps the payloads of contacts about to be deleted from one user's group, all of them or
    /// none, and commits them at once (with the open batch): a delete is never sent before its
    /// contact is in the trash. One transaction for a run of deletes, not one per contact.
    pub fn trash(
        &self,
        run_id: i64,
        job: &str,
        (user_id, user, group): (&str, &str, &str),
        entries: &[TrashEntry<'_>],
    ) -> Result<()> {
        let at = now();
        self.all_or_nothing(|| {
            let mut put = self.conn.prepare_cached(
                "INSERT INTO trash (run_id, deleted_at, job, user_id, user_name, group_name, contact_id, name, reason, payload)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            for e in entries {
                put.execute(params![
                    run_id, at, job, user_id, user, group, e.contact_id, e.name, e.reason, e.payload
                ])?;
            }
            Ok(())
        })?;
        self.batch_tick(true)
    }

    /// Trash entries not yet restored, newest first, optionally narrowed.
    pub fn trash_list(
        &self,
        job: Option<&str>,
        user: Option<&str>,
        run: Option<i64>,
    ) -> Result<Vec<TrashRecord>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT id, run_id, deleted_at, job, user_id, user_name, group_name, contact_id, name, reason, payload, restored_at
                 FROM trash WHERE restored_at IS NULL AND (?1 IS NULL OR job = ?1) AND (?2 IS NULL OR user_name = ?2 OR user_id = ?2)
                 AND (?3 IS NULL OR run_id = ?3) ORDER BY id DESC",
            )
            .map_err(self.err())?;
        let rows = st
            .query_map(params![job, user, run], trash_row)
            .map_err(self.err())?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err())
    }

    /// One trash entry by id.
    pub fn trash_get(&self, id: i64) -> Result<Option<TrashRecord>> {
        self.conn
            .query_row(
                "SELECT id, run_id, deleted_at, job, user_id, user_name, group_name, contact_id, name, reason, payload, restored_at FROM trash WHERE id = ?1",
                [id],
                trash_row,
            )
            .optional()
            .map_err(self.err())
    }

    pub fn mark_restored(&self, id: i64) -> Result<()> {
        self.conn
            .execute(
                "UPDATE trash SET restored_at = ?2 WHERE id = ?1",
                params![id, now()],
            )
            .map(|_| ())
            .map_err(self.err())
    }
}

fn trash_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TrashRecord> {
    Ok(TrashRecord {
        id: r.get(0)?,
        run_id: r.get(1)?,
        deleted_at: r.get(2)?,
        job: r.get(3)?,
        user_id: r.get(4)?,
        user: r.get(5)?,
        group: r.get(6)?,
        contact_id: r.get(7)?,
        name: r.get(8)?,
        reason: r.get(9)?,
        payload: r.get(10)?,
        restored_at: r.get(11)?,
    })
}
