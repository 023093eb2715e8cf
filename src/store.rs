//! The state database (SQLite, WAL, append-only migrations): the ledger of copies, every
//! destination ever synced, run history, the per-contact change log and the trash of deleted
//! payloads. The tags on the copies stay the source of truth: this database is a cache and a
//! history, and losing it costs a full re-read, never data. This module must not decide anything
//! about a sync; it stores what the engine tells it and answers questions about the past.

use rusqlite::{Connection, OptionalExtension, params};
use rusqlite_migration::{M, Migrations};
use serde::Serialize;
use std::path::Path;
use std::time::Duration;

use crate::plan::{LedgerCopy, LedgerRow, LedgerView};

const MIGRATION_SLICE: &[M] = &[
    M::up(
        "CREATE TABLE jobs (
        name TEXT PRIMARY KEY,
        tag TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL,
        last_source_count INTEGER
    );
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job TEXT NOT NULL,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        dry_run INTEGER NOT NULL DEFAULT 0,
        outcome TEXT NOT NULL DEFAULT 'running',
        destinations INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        created INTEGER NOT NULL DEFAULT 0,
        updated INTEGER NOT NULL DEFAULT 0,
        deleted INTEGER NOT NULL DEFAULT 0,
        moved INTEGER NOT NULL DEFAULT 0,
        message TEXT
    );
    CREATE INDEX runs_job ON runs(job, id);
    CREATE TABLE destinations (
        job TEXT NOT NULL,
        user_id TEXT NOT NULL,
        user_name TEXT NOT NULL,
        target_group TEXT NOT NULL,
        first_synced_at TEXT NOT NULL,
        last_run_id INTEGER,
        last_attempt_at TEXT,
        last_success_at TEXT,
        last_outcome TEXT,
        last_error TEXT,
        PRIMARY KEY (job, user_id)
    );
    CREATE TABLE copies (
        job TEXT NOT NULL,
        user_id TEXT NOT NULL,
        source_id TEXT NOT NULL,
        contact_id TEXT NOT NULL,
        digest TEXT NOT NULL,
        PRIMARY KEY (job, user_id, source_id)
    );
    CREATE TABLE changes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id INTEGER NOT NULL,
        at TEXT NOT NULL,
        job TEXT NOT NULL,
        user_id TEXT NOT NULL,
        user_name TEXT NOT NULL,
        action TEXT NOT NULL,
        source_id TEXT,
        contact_id TEXT,
        name TEXT,
        detail TEXT
    );
    CREATE INDEX changes_job ON changes(job, user_id, id);
    CREATE TABLE trash (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id INTEGER NOT NULL,
        deleted_at TEXT NOT NULL,
        job TEXT NOT NULL,
        user_id TEXT NOT NULL,
        user_name TEXT NOT NULL,
        group_name TEXT NOT NULL,
        contact_id TEXT NOT NULL,
        name TEXT NOT NULL,
        reason TEXT NOT NULL,
        payload TEXT NOT NULL,
        restored_at TEXT
    );",
    ),
    M::up(
        "ALTER TABLE changes ADD COLUMN fields TEXT;
    ALTER TABLE changes ADD COLUMN before_digest TEXT;
    ALTER TABLE changes ADD COLUMN after_digest TEXT;
    CREATE TABLE run_calls (
        run_id INTEGER NOT NULL,
        method TEXT NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (run_id, method)
    );
    CREATE TABLE schedule (
        job TEXT PRIMARY KEY,
        last_run_at TEXT,
        next_run_at TEXT
    );",
    ),
    M::up("ALTER TABLE copies ADD COLUMN etag TEXT;"),
    M::up("ALTER TABLE destinations ADD COLUMN fingerprint TEXT;"),
    M::up(
        "ALTER TABLE destinations ADD COLUMN change_token TEXT;
    ALTER TABLE destinations ADD COLUMN group_id TEXT;",
    ),
    M::up(
        "CREATE TABLE source_contacts (
        job TEXT NOT NULL,
        source_id TEXT NOT NULL,
        digest TEXT NOT NULL,
        name TEXT NOT NULL,
        fields TEXT NOT NULL,
        PRIMARY KEY (job, source_id)
    );",
    ),
    M::up(
        "CREATE INDEX copies_contact ON copies(job, user_id, contact_id);
    ALTER TABLE jobs ADD COLUMN source_fingerprint TEXT;",
    ),
    // How many copies each destination's ledger holds, kept by the database itself: counting
    // a destination's rows is a scan of thousands of index entries, and every run reports it.
    M::up(
        "CREATE TABLE copy_counts (
        job TEXT NOT NULL,
        user_id TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (job, user_id)
    );
    INSERT INTO copy_counts (job, user_id, n)
        SELECT job, user_id, COUNT(*) FROM copies GROUP BY job, user_id;
    CREATE TRIGGER copies_counted_in AFTER INSERT ON copies BEGIN
        INSERT INTO copy_counts (job, user_id, n) VALUES (NEW.job, NEW.user_id, 1)
            ON CONFLICT (job, user_id) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER copies_counted_out AFTER DELETE ON copies BEGIN
        UPDATE copy_counts SET n = n - 1 WHERE job = OLD.job AND user_id = OLD.user_id;
    END;
    CREATE TRIGGER copies_counted_moved AFTER UPDATE OF job, user_id ON copies
        WHEN NEW.job IS NOT OLD.job OR NEW.user_id IS NOT OLD.user_id BEGIN
        UPDATE copy_counts SET n = n - 1 WHERE job = OLD.job AND user_id = OLD.user_id;
        INSERT INTO copy_counts (job, user_id, n) VALUES (NEW.job, NEW.user_id, 1)
            ON CONFLICT (job, user_id) DO UPDATE SET n = n + 1;
    END;",
    ),
];
const MIGRATIONS: Migrations = Migrations::from_slice(MIGRATION_SLICE);

/// Puts one ledger row (job, user id, source id, contact id, digest, etag), new or in place of
/// the one for that source id. An upsert, not `INSERT OR REPLACE`: a replaced row would be
/// deleted without its delete trigger, and `copy_counts` would count it twice.
const PUT_COPY: &str = "INSERT INTO copies (job, user_id, source_id, contact_id, digest, etag) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
    ON CONFLICT(job, user_id, source_id) DO UPDATE SET contact_id = excluded.contact_id, digest = excluded.digest, etag = excluded.etag";

/// A ledger row from (source id, contact id, digest, etag) columns.
fn ledger_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LedgerRow> {
    let text = |i: usize| {
        r.get_ref(i)
            .and_then(|v| v.as_str().map_err(rusqlite::Error::from))
    };
    Ok(LedgerRow::new(text(0)?, text(1)?, text(2)?, text(3)?))
}

/// Errors of the state database; all of them stop the command (exit 1 or 2 at the edge).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state database {path}: migration failed: {source}")]
    Migration {
        path: String,
        #[source]
        source: rusqlite_migration::Error,
    },
}

impl StoreError {
    /// True when a retry might work (the database was busy).
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Sqlite { source: rusqlite::Error::SqliteFailure(e, _), .. } if e.code == rusqlite::ErrorCode::DatabaseBusy)
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

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

/// The state database.
pub struct Store {
    conn: Connection,
    path: String,
    /// Writes in the open transaction (see `batch_begin`); `None` when none is open.
    batch: std::cell::Cell<Option<usize>>,
    /// Batches begun and not yet ended: destinations applied at the same time share one open
    /// transaction, committed when the last of them ends (or every `BATCH` writes).
    batch_depth: std::cell::Cell<usize>,
}

/// Writes per transaction while a batch is open.
const BATCH: usize = 500;

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Store {
    /// Opens (creating if needed) the database at `path` and brings it to the latest schema.
    pub fn open(path: &Path) -> Result<Store> {
        let p = path.display().to_string();
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            let _ = std::fs::create_dir_all(parent);
        }
        let conn = Connection::open(path).map_err(|source| StoreError::Sqlite {
            path: p.clone(),
            source,
        })?;
        Self::setup(conn, p, true)
    }

    /// An in-memory database (tests).
    pub fn open_in_memory() -> Result<Store> {
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Sqlite {
            path: ":memory:".into(),
            source,
        })?;
        Self::setup(conn, ":memory:".into(), false)
    }

    fn setup(mut conn: Connection, path: String, wal: bool) -> Result<Store> {
        let e = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        conn.busy_timeout(Duration::from_secs(5)).map_err(e)?;
        if wal {
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))
                .map_err(e)?;
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(e)?;
        // A 1 MB page cache (SQLite's default is 2 MB): the writes that fill it (ledger rows,
        // log lines, the trash) are made off the destinations' critical path, and its reads of
        // state not written yet go through a reader of its own (`reader`).
        conn.pragma_update(None, "cache_size", -1024).map_err(e)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(e)?;
        MIGRATIONS
            .to_latest(&mut conn)
            .map_err(|source| StoreError::Migration {
                path: path.clone(),
                source,
            })?;
        Ok(Store {
            conn,
            path,
            batch: std::cell::Cell::new(None),
            batch_depth: std::cell::Cell::new(0),
        })
    }

    /// A second connection to the same database, for reads that must not wait for the writer
    /// (in WAL mode a reader goes on while a transaction is written and committed). It sees only
    /// committed writes: it is for state the run has not written to yet. `None` for an
    /// in-memory database, which a second connection cannot see.
    pub fn reader(&self) -> Result<Option<Store>> {
        if self.path == ":memory:" {
            return Ok(None);
        }
        let e = |source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        };
        let conn = Connection::open_with_flags(
            &self.path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(e)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(e)?;
        // Point lookups and one destination's ledger at a time: a small page cache will do
        // (the writer's keeps the default 2 MB).
        conn.pragma_update(None, "cache_size", -256).map_err(e)?;
        Ok(Some(Store {
            conn,
            path: self.path.clone(),
            batch: std::cell::Cell::new(None),
            batch_depth: std::cell::Cell::new(0),
        }))
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Groups the log and ledger writes that follow into transactions of up to `BATCH` writes,
    /// until `batch_end`. Batches nest: destinations applied at the same time share the open
    /// transaction, and it is committed when the last of them ends. A trash entry is always
    /// committed at once, because the delete that follows it must never happen without it.
    /// Writes are committed in the order they were made, so a crash loses at most the last
    /// `BATCH` writes, never an earlier one; the copies themselves are found again from their
    /// tags.
    pub fn batch_begin(&self) -> Result<()> {
        if self.batch.get().is_none() {
            self.conn.execute_batch("BEGIN").map_err(self.err())?;
            self.batch.set(Some(0));
        }
        self.batch_depth.set(self.batch_depth.get() + 1);
        Ok(())
    }

    /// Ends one batch; the open transaction is committed when no batch is left.
    pub fn batch_end(&self) -> Result<()> {
        let depth = self.batch_depth.get().saturating_sub(1);
        self.batch_depth.set(depth);
        if depth == 0 {
            self.commit_open()?;
        }
        Ok(())
    }

    /// Commits the open transaction, if any.
    fn commit_open(&self) -> Result<()> {
        if self.batch.take().is_some() {
            self.conn.execute_batch("COMMIT").map_err(self.err())?;
        }
        Ok(())
    }

    fn batch_tick(&self, force_commit: bool) -> Result<()> {
        if let Some(n) = self.batch.get() {
            if force_commit || n + 1 >= BATCH {
                self.conn
                    .execute_batch("COMMIT; BEGIN")
                    .map_err(self.err())?;
                self.batch.set(Some(0));
            } else {
                self.batch.set(Some(n + 1));
            }
        }
        Ok(())
    }

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

    /// What the ledger remembers of one destination.
    pub fn ledger(&self, job: &str, user_id: &str) -> Result<LedgerView> {
        let mut st = self
            .conn
            .prepare_cached("SELECT source_id, contact_id, digest, coalesce(etag, '') FROM copies WHERE job = ?1 AND user_id = ?2")
            .map_err(self.err())?;
        // Grown as read (a count first would cost a scan of its own); `LedgerView::new` sizes
        // it exactly, and it is the one held while the destination is planned.
        let mut rows: Vec<LedgerRow> = vec![];
        let found = st
            .query_map(params![job, user_id], ledger_row)
            .map_err(self.err())?;
        for row in found {
            rows.push(row.map_err(self.err())?);
        }
        Ok(LedgerView::new(rows))
    }

    /// What the ledger remembers of the copy with this contact id at one destination (an index
    /// lookup: a change token's delta names a few contacts among thousands).
    pub fn copy_by_contact(
        &self,
        job: &str,
        user_id: &str,
        contact_id: &str,
    ) -> Result<Option<LedgerRow>> {
        self.conn
            .prepare_cached("SELECT source_id, contact_id, digest, coalesce(etag, '') FROM copies WHERE job = ?1 AND user_id = ?2 AND contact_id = ?3")
            .and_then(|mut st| {
                st.query_row(params![job, user_id, contact_id], ledger_row)
                    .optional()
            })
            .map_err(self.err())
    }

    /// The part of a destination's ledger that remembers copies of these source ids (one
    /// lookup each): what a plan of only those source contacts needs.
    pub fn ledger_rows<'a>(
        &self,
        job: &str,
        user_id: &str,
        source_ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<LedgerView> {
        let mut st = self
            .conn
            .prepare_cached("SELECT source_id, contact_id, digest, coalesce(etag, '') FROM copies WHERE job = ?1 AND user_id = ?2 AND source_id = ?3")
            .map_err(self.err())?;
        let mut rows = vec![];
        for sid in source_ids {
            if let Some(r) = st
                .query_row(params![job, user_id, sid], ledger_row)
                .optional()
                .map_err(self.err())?
            {
                rows.push(r);
            }
        }
        Ok(LedgerView::new(rows))
    }

    /// Contact id → etag of every copy the ledger remembers at one destination (all a change
    /// token check needs, without the rest of the ledger).
    pub fn copy_etags(
        &self,
        job: &str,
        user_id: &str,
    ) -> Result<std::collections::HashMap<String, String>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT contact_id, coalesce(etag, '') FROM copies WHERE job = ?1 AND user_id = ?2",
            )
            .map_err(self.err())?;
        st.query_map(params![job, user_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.err())?
            .collect::<rusqlite::Result<_>>()
            .map_err(self.err())
    }

    /// Number of copies the ledger remembers at one destination (kept in `copy_counts` by
    /// triggers on `copies`: one row read, not a count of thousands).
    pub fn copy_count(&self, job: &str, user_id: &str) -> Result<usize> {
        self.conn
            .prepare_cached("SELECT n FROM copy_counts WHERE job = ?1 AND user_id = ?2")
            .and_then(|mut st| {
                st.query_row(params![job, user_id], |r| r.get::<_, i64>(0))
                    .optional()
            })
            .map(|n| n.unwrap_or(0).max(0) as usize)
            .map_err(self.err())
    }

    /// Number of copies the ledger remembers for a job, all destinations together.
    pub fn ledger_count(&self, job: &str) -> Result<i64> {
        self.conn
            .query_row(
                "SELECT coalesce(SUM(n), 0) FROM copy_counts WHERE job = ?1",
                [job],
                |r| r.get(0),
            )
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

    /// Records one copy.
    pub fn record_copy(
        &self,
        job: &str,
        user_id: &str,
        source_id: &str,
        contact_id: &str,
        digest: &str,
        etag: &str,
    ) -> Result<()> {
        self.conn
            .prepare_cached(PUT_COPY)
            .and_then(|mut st| {
                st.execute(params![job, user_id, source_id, contact_id, digest, etag])
            })
            .map_err(self.err())?;
        self.batch_tick(false)
    }

    /// Brings the ledger of one destination to what it holds after a run. The copies written
    /// in the run were recorded one by one as they were written (`record_copy`); `kept` are
    /// copies left as they were whose rows change; `forget` are the source ids whose rows go.
    pub fn settle_ledger(
        &self,
        job: &str,
        user_id: &str,
        kept: &[(String, LedgerCopy)],
        forget: &[String],
    ) -> Result<()> {
        if kept.is_empty() && forget.is_empty() {
            return Ok(());
        }
        self.all_or_nothing(|| {
            let mut del = self.conn.prepare_cached(
                "DELETE FROM copies WHERE job = ?1 AND user_id = ?2 AND source_id = ?3",
            )?;
            for s in forget {
                del.execute(params![job, user_id, s])?;
            }
            let mut put = self.conn.prepare_cached(PUT_COPY)?;
            for (s, c) in kept {
                put.execute(params![job, user_id, s, c.contact_id, c.digest, c.etag])?;
            }
            Ok(())
        })
    }

    /// The source contacts as the job's last run read them: (source id, digest, name, field
    /// digests as `card::field_digests_text` wrote them). A copy the ledger says was written
    /// from one of these digests is known field by field without being read again.
    /// Only the rows `wanted(source id, digest)` picks are read whole.
    pub fn source_contacts(
        &self,
        job: &str,
        mut wanted: impl FnMut(&str, &str) -> bool,
    ) -> Result<Vec<(String, String, String, String)>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT source_id, digest FROM source_contacts WHERE job = ?1")
            .map_err(self.err())?;
        let mut picked: Vec<String> = vec![];
        let mut rows = st.query([job]).map_err(self.err())?;
        while let Some(r) = rows.next().map_err(self.err())? {
            let text = |i: usize| {
                r.get_ref(i)
                    .and_then(|v| v.as_str().map_err(rusqlite::Error::from))
            };
            let (id, digest) = (text(0).map_err(self.err())?, text(1).map_err(self.err())?);
            if wanted(id, digest) {
                picked.push(id.to_string());
            }
        }
        drop(rows);
        let mut one = self
            .conn
            .prepare_cached(
                "SELECT source_id, digest, name, fields FROM source_contacts WHERE job = ?1 AND source_id = ?2",
            )
            .map_err(self.err())?;
        picked
            .iter()
            .map(|id| {
                one.query_row(params![job, id], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .map_err(self.err())
            })
            .collect()
    }

    /// Remembers the source contacts a run read (see `source_contacts`): rows that changed are
    /// written, rows of contacts no longer read are removed, the rest is left as it is.
    /// `current` yields (source id, digest, name); `fields(source id)` gives the field digests
    /// text of a row to write. `fingerprint` is the fingerprint of the source these rows are
    /// (see `source_fingerprint`), `None` when they are not all of it.
    pub fn save_source_contacts<'a>(
        &self,
        job: &str,
        current: impl Iterator<Item = (&'a str, &'a str, &'a str)>,
        fields: impl Fn(&str) -> String,
        fingerprint: Option<&str>,
    ) -> Result<()> {
        self.all_or_nothing(|| {
            self.conn
                .prepare_cached("UPDATE jobs SET source_fingerprint = ?2 WHERE name = ?1")?
                .execute(params![job, fingerprint])?;
            let mut old: std::collections::HashMap<String, String> = self
                .conn
                .prepare_cached("SELECT source_id, digest FROM source_contacts WHERE job = ?1")?
                .query_map([job], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let mut put = self.conn.prepare_cached(
                "INSERT OR REPLACE INTO source_contacts (job, source_id, digest, name, fields) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for (id, digest, name) in current {
                if old.remove(id).as_deref() != Some(digest) {
                    put.execute(params![job, id, digest, name, fields(id)])?;
                }
            }
            let mut del = self
                .conn
                .prepare_cached("DELETE FROM source_contacts WHERE job = ?1 AND source_id = ?2")?;
            for id in old.keys() {
                del.execute(params![job, id])?;
            }
            Ok(())
        })
    }

    /// The fingerprint of the source the job's `source_contacts` are (all of it, as the last run
    /// that saved them read it), if it was saved.
    pub fn source_fingerprint(&self, job: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT source_fingerprint FROM jobs WHERE name = ?1",
                [job],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()
            .map_err(self.err())?
            .flatten())
    }

    /// Runs `write` in a savepoint: all of it or none of it, inside the open batch when other
    /// destinations share one (then committed with it, in order), else a transaction of its own.
    fn all_or_nothing(&self, write: impl FnOnce() -> rusqlite::Result<()>) -> Result<()> {
        self.conn
            .execute_batch("SAVEPOINT all_or_nothing")
            .map_err(self.err())?;
        let written = write();
        let end = if written.is_ok() {
            "RELEASE all_or_nothing"
        } else {
            "ROLLBACK TO all_or_nothing; RELEASE all_or_nothing"
        };
        let ended = self.conn.execute_batch(end);
        written.map_err(self.err())?;
        ended.map_err(self.err())?;
        self.batch_tick(false)
    }

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

impl Drop for Store {
    /// A batch left open (its run was cancelled) is committed: what was written stays recorded.
    fn drop(&mut self) {
        let _ = self.commit_open();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The second connection reads the same database without waiting for the writer, and
    /// sees what is committed only: the engine reads through it only state the run has not
    /// written yet.
    #[test]
    fn a_reader_sees_what_is_committed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state.db")).unwrap();
        let reader = s.reader().unwrap().expect("a file has a reader");
        s.record_copy("j", "u", "s1", "c1", "d", "e").unwrap();
        assert!(reader.copy_by_contact("j", "u", "c1").unwrap().is_some());
        s.batch_begin().unwrap();
        s.record_copy("j", "u", "s2", "c2", "d", "e").unwrap();
        assert!(reader.copy_by_contact("j", "u", "c2").unwrap().is_none());
        assert_eq!(reader.copy_count("j", "u").unwrap(), 1);
        s.batch_end().unwrap();
        assert!(reader.copy_by_contact("j", "u", "c2").unwrap().is_some());
        assert!(reader.record_copy("j", "u", "s3", "c3", "d", "e").is_err());
        assert!(Store::open_in_memory().unwrap().reader().unwrap().is_none());
    }

    #[test]
    fn migrations_are_valid() {
        MIGRATIONS.validate().unwrap();
    }

    /// The number of rows `copies` holds at each destination, counted.
    fn counted(s: &Store) -> Vec<(String, String, i64)> {
        let mut st = s
            .conn
            .prepare(
                "SELECT job, user_id, COUNT(*) FROM copies GROUP BY job, user_id ORDER BY 1, 2",
            )
            .unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// A database made before `copy_counts` existed gets the counts of the copies it holds.
    #[test]
    fn the_copy_counts_start_from_the_copies_held() {
        let mut conn = Connection::open_in_memory().unwrap();
        let before = MIGRATION_SLICE.len() - 1;
        MIGRATIONS.to_version(&mut conn, before).unwrap();
        for (job, user, n) in [("j", "a", 3), ("j", "b", 1), ("k", "a", 2)] {
            for i in 0..n {
                conn.execute(
                    "INSERT INTO copies (job, user_id, source_id, contact_id, digest) VALUES (?1, ?2, ?3, 'c', 'd')",
                    params![job, user, format!("s{i}")],
                )
                .unwrap();
            }
        }
        let s = Store::setup(conn, ":memory:".into(), false).unwrap();
        assert_eq!(s.copy_count("j", "a").unwrap(), 3);
        assert_eq!(s.copy_count("j", "b").unwrap(), 1);
        assert_eq!(s.copy_count("k", "a").unwrap(), 2);
        assert_eq!(s.copy_count("k", "b").unwrap(), 0);
        assert_eq!(s.ledger_count("j").unwrap(), 4);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// Whatever writes the ledger — copies recorded again and anew, settled, forgotten one
        /// by one, a destination or a job forgotten — each destination's count is the number
        /// of its rows.
        #[test]
        fn copy_counts_follow_every_write(ops in proptest::collection::vec((0u8..5, 0u8..2, 0u8..3, 0u8..6), 1..60)) {
            let s = Store::open_in_memory().unwrap();
            for (op, job, user, source) in ops {
                let (job, user, sid) = (format!("j{job}"), format!("u{user}"), format!("s{source}"));
                match op {
                    0 => s.record_copy(&job, &user, &sid, &format!("c{source}"), "d", "e").unwrap(),
                    1 => {
                        let kept = vec![(sid.clone(), LedgerCopy { contact_id: "c".into(), digest: "d2".into(), etag: "e2".into() })];
                        s.settle_ledger(&job, &user, &kept, &[]).unwrap();
                    }
                    2 => s.settle_ledger(&job, &user, &[], std::slice::from_ref(&sid)).unwrap(),
                    3 => s.forget_destination(&job, &user).unwrap(),
                    _ => s.forget_job(&job).unwrap(),
                }
                for j in ["j0", "j1"] {
                    let want: Vec<_> = counted(&s).into_iter().filter(|(x, _, _)| x == j).collect();
                    let total: i64 = want.iter().map(|(_, _, n)| n).sum();
                    proptest::prop_assert_eq!(s.ledger_count(j).unwrap(), total);
                    for u in ["u0", "u1", "u2"] {
                        let n = want.iter().find(|(_, x, _)| x == u).map_or(0, |(_, _, n)| *n);
                        proptest::prop_assert_eq!(s.copy_count(j, u).unwrap() as i64, n, "{} {}", j, u);
                    }
                }
            }
        }
    }

    #[test]
    fn concurrent_batches_share_one_transaction_until_the_last_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let s = Store::open(&path).unwrap();
        // Another process (a `groupsync status`) reading the database.
        let reader = || {
            let c = Connection::open(&path).unwrap();
            c.query_row("SELECT COUNT(*) FROM copies", [], |r| r.get::<_, i64>(0))
                .unwrap()
        };
        s.batch_begin().unwrap(); // destination A
        s.record_copy("j", "a", "s1", "c1", "d", "e").unwrap();
        s.batch_begin().unwrap(); // destination B, while A is still being applied
        s.record_copy("j", "b", "s1", "c2", "d", "e").unwrap();
        s.batch_end().unwrap(); // A ends: B's writes stay in the one open transaction
        assert!(!s.conn.is_autocommit(), "a transaction stays open for B");
        s.record_copy("j", "b", "s2", "c3", "d", "e").unwrap();
        assert_eq!(reader(), 0, "nothing is committed while a batch is open");
        s.batch_end().unwrap();
        assert!(s.conn.is_autocommit());
        assert_eq!(
            reader(),
            3,
            "all three rows are committed when the last batch ends"
        );
        // A batch left open is committed when the store is dropped.
        s.batch_begin().unwrap();
        s.record_copy("j", "c", "s1", "c4", "d", "e").unwrap();
        drop(s);
        assert_eq!(reader(), 4);
    }

    #[test]
    fn source_contacts_keep_the_last_read_and_forget_the_rest() {
        let s = Store::open_in_memory().unwrap();
        let save = |job: &str, rows: &[(&str, &str)]| {
            s.save_source_contacts(
                job,
                rows.iter().map(|(i, d)| (*i, *d, "Name")),
                |id| {
                    let d = rows.iter().find(|r| r.0 == id).unwrap().1;
                    format!("N={d}\n")
                },
                Some(&format!("fp-{}", rows.len())),
            )
            .unwrap()
        };
        s.remember_job("j", "gSync1").unwrap();
        save("j", &[("s1", "a"), ("s2", "b")]);
        save("k", &[("s1", "z")]);
        // s1 edited, s2 gone, s3 new.
        save("j", &[("s1", "a2"), ("s3", "c"), ("s4", "d")]);
        assert_eq!(s.source_fingerprint("j").unwrap().as_deref(), Some("fp-3"));
        assert_eq!(
            s.source_fingerprint("k").unwrap(),
            None,
            "no job row: nothing saved"
        );
        save("j", &[("s1", "a2"), ("s3", "c")]);
        assert_eq!(s.source_fingerprint("j").unwrap().as_deref(), Some("fp-2"));
        assert_eq!(
            s.source_contacts("j", |_, d| d == "c").unwrap(),
            vec![("s3".into(), "c".into(), "Name".into(), "N=c\n".into())]
        );
        let mut got = s.source_contacts("j", |_, _| true).unwrap();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("s1".into(), "a2".into(), "Name".into(), "N=a2\n".into()),
                ("s3".into(), "c".into(), "Name".into(), "N=c\n".into()),
            ]
        );
        let all = |_: &str, _: &str| true;
        assert_eq!(
            s.source_contacts("k", all).unwrap().len(),
            1,
            "other jobs untouched"
        );
        s.forget_job("j").unwrap();
        assert!(s.source_contacts("j", all).unwrap().is_empty());
    }

    #[test]
    fn ledger_round_trip() {
        let s = Store::open_in_memory().unwrap();
        s.remember_job("j", "gSync1").unwrap();
        s.record_copy("j", "u", "s1", "c1", "d", "e1").unwrap();
        assert_eq!(s.ledger_count("j").unwrap(), 1);
        s.record_copy("j", "u", "s3", "c3", "d", "e3").unwrap();
        s.record_copy("j", "u", "s4", "c4", "d", "e4").unwrap();
        // s1 is gone, s2 kept (new to the ledger), s3 written in the run, s4 kept as it was.
        let kept = |sid: &str, c: &str, e: &str| {
            (
                sid.to_string(),
                LedgerCopy {
                    contact_id: c.into(),
                    digest: "d".into(),
                    etag: e.into(),
                },
            )
        };
        s.settle_ledger("j", "u", &[kept("s2", "c2", "e2")], &["s1".to_string()])
            .unwrap();
        assert_eq!(
            s.ledger("j", "u")
                .unwrap()
                .rows()
                .map(|r| (r.source_id().to_string(), r.etag().to_string()))
                .collect::<Vec<_>>(),
            vec![
                ("s2".to_string(), "e2".to_string()),
                ("s3".to_string(), "e3".to_string()),
                ("s4".to_string(), "e4".to_string())
            ]
        );
        // Part of the ledger, by source id or by contact id; another user's rows are not mixed in.
        s.record_copy("j", "v", "s3", "other", "d", "e9").unwrap();
        let part = s.ledger_rows("j", "u", ["s4", "s9", "s2"]).unwrap();
        assert_eq!(
            part.rows()
                .map(|r| (r.source_id(), r.contact_id(), r.etag()))
                .collect::<Vec<_>>(),
            vec![("s2", "c2", "e2"), ("s4", "c4", "e4")]
        );
        let r = s.copy_by_contact("j", "u", "c3").unwrap().unwrap();
        assert_eq!((r.source_id(), r.digest(), r.etag()), ("s3", "d", "e3"));
        assert!(s.copy_by_contact("j", "u", "other").unwrap().is_none());
        assert!(
            s.copy_by_contact("j", "u", "c1").unwrap().is_none(),
            "forgotten"
        );
        s.forget_job("j").unwrap();
        assert_eq!(s.ledger_count("j").unwrap(), 0);
        assert_eq!(s.job_tag("j").unwrap(), None);
    }
}
