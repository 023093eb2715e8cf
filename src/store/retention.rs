//! How long the state keeps what it holds about people: trash entries and change-log lines older
//! than the configured number of days are purged at the start of every real run
//! (`purge_older`), the trash can be emptied by hand (`purge_trash`, `groupsync restore
//! --purge`), and a purged job forgets both (`forget_job_history`).
//!
//! It must not decide how long anything is kept (the configuration does) nor read a clock: the
//! caller gives the time to count back from.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{Result, Store};
use crate::config::Retention;

/// What a purge removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Purged {
    /// Trash entries.
    pub trash: u64,
    /// Change-log lines.
    pub log: u64,
}

impl Purged {
    pub fn is_empty(&self) -> bool {
        self.trash == 0 && self.log == 0
    }
}

/// The time `days` before `now`, as the state writes times (RFC 3339, seconds, UTC), so that a
/// text comparison is a time comparison.
fn cutoff(now: DateTime<Utc>, days: u32) -> String {
    (now - chrono::Duration::days(days.into())).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Store {
    /// Purges trash entries and change-log lines, of every job, older than the retention allows
    /// at `now`.
    pub fn purge_older(&self, retention: Retention, now: DateTime<Utc>) -> Result<Purged> {
        Ok(Purged {
            trash: self.delete_where(
                "DELETE FROM trash WHERE deleted_at < ?1",
                &cutoff(now, retention.trash_days),
            )?,
            log: self.delete_where(
                "DELETE FROM changes WHERE at < ?1",
                &cutoff(now, retention.log_days),
            )?,
        })
    }

    /// Runs one `DELETE` with one parameter; returns how many rows went.
    fn delete_where(&self, sql: &str, param: &str) -> Result<u64> {
        self.conn
            .execute(sql, [param])
            .map(|n| n as u64)
            .map_err(self.err())
    }

    /// Empties the trash by hand: the entries of `job`, `user` and `run` (each when given),
    /// restored or not, deleted before `before` (when given). Returns how many went.
    pub fn purge_trash(
        &self,
        job: Option<&str>,
        user: Option<&str>,
        run: Option<i64>,
        before: Option<DateTime<Utc>>,
    ) -> Result<u64> {
        let before = before.map(|t| cutoff(t, 0));
        self.conn
            .execute(
                "DELETE FROM trash WHERE (?1 IS NULL OR job = ?1) AND (?2 IS NULL OR user_name = ?2 OR user_id = ?2)
                 AND (?3 IS NULL OR run_id = ?3) AND (?4 IS NULL OR deleted_at < ?4)",
                params![job, user, run, before],
            )
            .map(|n| n as u64)
            .map_err(self.err())
    }

    /// Forgets a job's trash and change log (`job delete --purge`, once its destinations are
    /// cleaned up).
    pub fn forget_job_history(&self, job: &str) -> Result<Purged> {
        Ok(Purged {
            trash: self.delete_where("DELETE FROM trash WHERE job = ?1", job)?,
            log: self.delete_where("DELETE FROM changes WHERE job = ?1", job)?,
        })
    }

    /// True when trash entry `id` existed once (ids are never reused) and is gone: purged.
    pub fn trash_was_purged(&self, id: i64) -> Result<bool> {
        let last: Option<i64> = self
            .conn
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'trash'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())?;
        Ok(id > 0 && last.is_some_and(|l| id <= l) && self.trash_get(id)?.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Change, TrashEntry};

    fn with_entries() -> (Store, i64) {
        let s = Store::open_in_memory().unwrap();
        let run = s.start_run("team", false).unwrap();
        let entry = TrashEntry {
            contact_id: "c1",
            name: "Ada",
            reason: "source-gone",
            payload: "BEGIN:VCARD\r\nVERSION:4.0\r\nFN:Ada\r\nEND:VCARD\r\n",
            ..Default::default()
        };
        s.trash(run, "team", ("u1", "bob", "Team"), &[entry, entry])
            .unwrap();
        s.log_change(&Change {
            run_id: run,
            job: "team",
            user_id: "u1",
            user: "bob",
            action: "deleted",
            ..Default::default()
        })
        .unwrap();
        (s, run)
    }

    /// The clock is given, not read: a purge a day before the retention ends keeps everything,
    /// a purge a day after it removes everything.
    #[test]
    fn entries_go_once_older_than_the_retention_and_not_before() {
        let keep = Retention {
            trash_days: 90,
            log_days: 365,
        };
        let (s, _) = with_entries();
        let now = Utc::now();
        let days = |d| now + chrono::Duration::days(d);
        assert_eq!(s.purge_older(keep, now).unwrap(), Purged::default());
        assert_eq!(s.purge_older(keep, days(89)).unwrap(), Purged::default());
        assert_eq!(s.trash_list(None, None, None).unwrap().len(), 2);
        assert_eq!(
            s.purge_older(keep, days(91)).unwrap(),
            Purged { trash: 2, log: 0 }
        );
        assert_eq!(s.changes("team", None, None, 10).unwrap().len(), 1);
        assert_eq!(
            s.purge_older(keep, days(366)).unwrap(),
            Purged { trash: 0, log: 1 }
        );
        assert!(s.changes("team", None, None, 10).unwrap().is_empty());
    }

    #[test]
    fn a_purged_entry_is_told_from_one_that_never_was() {
        let (s, run) = with_entries();
        let ids: Vec<i64> = s
            .trash_list(None, None, None)
            .unwrap()
            .iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(s.purge_trash(Some("other"), None, None, None).unwrap(), 0);
        assert_eq!(
            s.purge_trash(Some("team"), Some("bob"), Some(run), None)
                .unwrap(),
            2
        );
        for id in ids {
            assert!(s.trash_was_purged(id).unwrap());
        }
        assert!(!s.trash_was_purged(1000).unwrap());
        assert!(!s.trash_was_purged(0).unwrap());
    }

    #[test]
    fn a_forgotten_job_keeps_no_trash_and_no_log() {
        let (s, _) = with_entries();
        assert_eq!(
            s.forget_job_history("team").unwrap(),
            Purged { trash: 2, log: 1 }
        );
        assert!(s.trash_list(None, None, None).unwrap().is_empty());
    }
}
