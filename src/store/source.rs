//! The `source_contacts` table: what the job's last run read of each source contact (digest,
//! name, per-property digests), so a copy written from it is known field by field without being
//! read again.

use rusqlite::{OptionalExtension, params};

use super::{Result, Store};

impl Store {
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
