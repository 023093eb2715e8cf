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
#[derive(Debug, Clone, Copy, Default)]
pub struct TrashEntry<'a> {
    pub contact_id: &'a str,
    pub name: &'a str,
    pub reason: &'a str,
    /// The contact as a vCard.
    pub payload: &'a str,
    /// Its etag as read (its delete is conditional on it).
    pub etag: &'a str,
    /// The source contact it is a copy of.
    pub source_id: Option<&'a str>,
    /// The digest of its managed content.
    pub digest: &'a str,
}

/// A copy this run trashed, read back to be deleted (see `Store::trashed_page`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrashedCopy {
    /// The trash entry's id.
    pub id: i64,
    pub contact_id: String,
    pub etag: String,
    pub source_id: Option<String>,
    pub name: String,
    pub digest: String,
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
                "INSERT INTO trash (run_id, deleted_at, job, user_id, user_name, group_name, contact_id, name, reason, payload, etag, source_id, digest)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )?;
            for e in entries {
                put.execute(params![
                    run_id,
                    at,
                    job,
                    user_id,
                    user,
                    group,
                    e.contact_id,
                    e.name,
                    e.reason,
                    e.payload,
                    e.etag,
                    e.source_id,
                    e.digest
                ])?;
            }
            Ok(())
        })?;
        self.batch_tick(true)
    }

    /// The id of the last trash entry written (0: none ever): what is written after it has a
    /// larger id (ids are never reused).
    pub fn trash_last_id(&self) -> Result<i64> {
        self.conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM trash", [], |r| r.get(0))
            .map_err(self.err())
    }

    /// The next `limit` entries (by id, after entry `after`) this run wrote to the trash for
    /// one user's group under `reason`, not restored: a removal deletes what it trashed as it
    /// read the group, page by page, never holding the whole list.
    pub fn trashed_page(
        &self,
        run_id: i64,
        (job, user_id, reason): (&str, &str, &str),
        after: i64,
        limit: usize,
    ) -> Result<Vec<TrashedCopy>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT id, contact_id, COALESCE(etag, ''), source_id, name, COALESCE(digest, '') FROM trash
                 WHERE run_id = ?1 AND job = ?2 AND user_id = ?3 AND reason = ?4 AND id > ?5 AND restored_at IS NULL
                 ORDER BY id LIMIT ?6",
            )
            .map_err(self.err())?;
        let rows = st
            .query_map(
                params![run_id, job, user_id, reason, after, limit as i64],
                |r| {
                    Ok(TrashedCopy {
                        id: r.get(0)?,
                        contact_id: r.get(1)?,
                        etag: r.get(2)?,
                        source_id: r.get(3)?,
                        name: r.get(4)?,
                        digest: r.get(5)?,
                    })
                },
            )
            .map_err(self.err())?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err())
    }

    /// Takes back the trash entries this run wrote for contacts of one user's group that were
    /// not deleted after all (a delete refused or never sent): the trash keeps only what was
    /// deleted, so a restore never makes a second copy of a contact still there.
    pub fn untrash(
        &self,
        run_id: i64,
        job: &str,
        user_id: &str,
        contact_ids: &[&str],
    ) -> Result<()> {
        self.all_or_nothing(|| {
            let mut take = self.conn.prepare_cached(
                "DELETE FROM trash WHERE run_id = ?1 AND job = ?2 AND user_id = ?3 AND contact_id = ?4 AND restored_at IS NULL",
            )?;
            for id in contact_ids {
                take.execute(params![run_id, job, user_id, id])?;
            }
            Ok(())
        })?;
        self.batch_tick(false)
    }

    /// Takes back every entry after entry `after` that this run wrote for one user's group under
    /// `reason` (see `trashed_page`): a removal that stopped takes back what it did not reach.
    pub fn untrash_after(
        &self,
        run_id: i64,
        (job, user_id, reason): (&str, &str, &str),
        after: i64,
    ) -> Result<()> {
        self.conn
            .execute(
                "DELETE FROM trash WHERE run_id = ?1 AND job = ?2 AND user_id = ?3 AND reason = ?4 AND id > ?5 AND restored_at IS NULL",
                params![run_id, job, user_id, reason, after],
            )
            .map_err(self.err())?;
        self.batch_tick(false)
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
