//! The schema of the state database: migrations, applied in order and never edited once
//! released (a new one is appended). `Store::open` brings a database to the latest.

use rusqlite_migration::{M, Migrations};

pub(super) const MIGRATION_SLICE: &[M] = &[
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
    // Retention: what is purged by age is found by its time.
    M::up(
        "CREATE INDEX trash_deleted_at ON trash(deleted_at);
    CREATE INDEX changes_at ON changes(at);",
    ),
    // A trash entry keeps what its delete needs (etag) and what its change-log line says
    // (source, digest): a removal deletes what it trashed, read back page by page.
    M::up(
        "ALTER TABLE trash ADD COLUMN etag TEXT;
    ALTER TABLE trash ADD COLUMN source_id TEXT;
    ALTER TABLE trash ADD COLUMN digest TEXT;
    CREATE INDEX trash_run ON trash(run_id, job, user_id, id);",
    ),
];
pub(super) const MIGRATIONS: Migrations = Migrations::from_slice(MIGRATION_SLICE);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid() {
        MIGRATIONS.validate().unwrap();
    }
}
