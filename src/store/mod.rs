//! The state database (SQLite, WAL, append-only migrations), one file per table: the jobs and
//! their tags (`jobs`), run history (`runs`), every destination ever synced (`destinations`),
//! the ledger of copies (`ledger`), what the last run read of each source (`source`), the
//! per-contact change log (`log`) and the trash of deleted payloads (`trash`), both kept only as
//! long as the configuration says (`retention`); `schema` holds the migrations. The database
//! is its owner's alone (`crate::private`). The tags on the copies stay the source of truth: this database is a cache and a
//! history, and losing it costs a full re-read, never data. This module must not decide anything
//! about a sync; it stores what the engine tells it and answers questions about the past.

mod destinations;
mod jobs;
mod ledger;
mod log;
mod retention;
mod runs;
mod schema;
mod source;
mod trash;

pub use destinations::DestRecord;
pub use log::{Change, ChangeRecord};
pub use retention::Purged;
pub use runs::{Counts, RunRecord, RunTotals};
pub use trash::{TrashEntry, TrashRecord, TrashedCopy};

use rusqlite::Connection;
use std::path::Path;
use std::time::Duration;

use schema::MIGRATIONS;

/// Errors of the state database; all of them stop the command (exit 1 or 2 at the edge).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state database: {0}")]
    Private(#[from] crate::private::NotPrivate),
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
    /// Opens (creating if needed, mode 0600, its folder 0700) the database at `path` and brings
    /// it to the latest schema. A database other users may read is tightened, with a warning.
    pub fn open(path: &Path) -> Result<Store> {
        let p = path.display().to_string();
        // Owner-only, whatever the umask: SQLite gives its WAL and shared-memory files the
        // database's mode; older ones left loose are tightened too.
        crate::private::ensure_file(path)?;
        for suffix in ["-wal", "-shm"] {
            let mut name = path.as_os_str().to_os_string();
            name.push(suffix);
            crate::private::tighten(Path::new(&name))?;
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
}

impl Drop for Store {
    /// A batch left open (its run was cancelled) is committed: what was written stays recorded.
    fn drop(&mut self) {
        let _ = self.commit_open();
    }
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
}
