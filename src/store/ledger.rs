//! The `copies` table (the ledger) and `copy_counts` (kept by triggers): which contact is the
//! copy of which source contact at each destination, written from which source digest, with
//! the etag of that write.

use rusqlite::{OptionalExtension, params};

use super::{Result, Store};
use crate::plan::{LedgerCopy, LedgerRow, LedgerView};

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

impl Store {
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

    /// Every copy's contact id and etag at one destination, handed to `each` as read (what a
    /// change token's delta is told by; no source ids or digests, which it does not need).
    pub fn each_copy_etag(
        &self,
        job: &str,
        user_id: &str,
        each: &mut dyn FnMut(&str, &str),
    ) -> Result<()> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT contact_id, coalesce(etag, '') FROM copies WHERE job = ?1 AND user_id = ?2",
            )
            .map_err(self.err())?;
        let mut rows = st.query(params![job, user_id]).map_err(self.err())?;
        while let Some(r) = rows.next().map_err(self.err())? {
            let id = r
                .get_ref(0)
                .and_then(|v| Ok(v.as_str()?))
                .map_err(self.err())?;
            let etag = r
                .get_ref(1)
                .and_then(|v| Ok(v.as_str()?))
                .map_err(self.err())?;
            each(id, etag);
        }
        Ok(())
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
}

#[cfg(test)]
mod tests {
    use super::super::schema::{MIGRATION_SLICE, MIGRATIONS};
    use super::*;
    use rusqlite::Connection;

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
