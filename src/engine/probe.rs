//! The engine's side of a change token's read (`Backend::read_changes`): what it knows of each
//! contact the delta names (a copy it remembers, as written or changed), looked up in the ledger
//! one contact at a time while few are named, the whole ledger loaded once when many are.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::slot::Slot;
use crate::backend::{Known, KnownCopies};
use crate::mutex::lock;
use crate::plan::LedgerRow;
use crate::store::Store;

/// A destination's copies as a delta is told by, for a whole load: a digest of each contact id
/// and of its etag. A few bytes a copy where a ledger row holds a few hundred (two ids of some
/// 150 characters each at Graph); a false match of two 64-bit digests among a destination's
/// copies is not a practical concern.
pub(super) struct EtagsByContact(HashMap<u64, u64>);

impl EtagsByContact {
    fn load(store: &Mutex<Store>, job: &str, user_id: &str) -> Option<Self> {
        let mut map = HashMap::new();
        lock(store)
            .each_copy_etag(job, user_id, &mut |id, etag| {
                map.insert(digest(id), digest(etag));
            })
            .ok()?;
        map.shrink_to_fit();
        Some(EtagsByContact(map))
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    /// `Some(etag is the one remembered)` for a remembered copy.
    fn matches(&self, contact_id: &str, etag: &str) -> Option<bool> {
        self.0.get(&digest(contact_id)).map(|e| *e == digest(etag))
    }
}

fn digest(s: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(s)
}

/// How many contacts of a change token's delta are looked up in the ledger one at a time (an
/// index lookup each) before the ledger's size is counted.
pub(super) const POINT_LOOKUPS: usize = 64;

/// What one index lookup of a copy costs, in rows of a whole ledger load (measured at 5,000
/// copies on 5 million: about 7 µs against 0.8 µs a row). Past `POINT_LOOKUPS`, a delta is
/// looked up one contact at a time while it names fewer than the ledger's size over this.
pub(super) const LOOKUP_COST: usize = 8;

/// What the ledger says of the contacts a change token's delta names, as the delta is read:
/// a few are looked up one at a time, and for many the whole ledger is loaded (see
/// `LedgerProbe`).
pub(super) enum Probe {
    /// The rows looked up so far, by contact id (`None`: no copy the ledger knows).
    Points(HashMap<String, Option<LedgerRow>>),
    /// The whole ledger's contact ids and etags (`None`: the state database failed).
    Whole(Option<EtagsByContact>),
}

/// The engine's side of `Backend::read_changes` for one destination: the `Probe`, the ledger's
/// size once counted, and how many lookups one at a time the delta's pages allow.
pub(super) struct LedgerProbe<'a> {
    pub(super) store: &'a Mutex<Store>,
    pub(super) job: &'a str,
    pub(super) user_id: &'a str,
    pub(super) state: Mutex<ProbeState>,
}

pub(super) struct ProbeState {
    pub(super) probe: Probe,
    /// How many copies the ledger holds, once counted (or loaded).
    pub(super) total: Option<usize>,
    /// How many contacts may be looked up one at a time before the ledger is loaded whole.
    pub(super) budget: usize,
}

impl<'a> LedgerProbe<'a> {
    pub(super) fn new(store: &'a Mutex<Store>, job: &'a str, user_id: &'a str) -> Self {
        LedgerProbe {
            store,
            job,
            user_id,
            state: Mutex::new(ProbeState {
                probe: Probe::Points(HashMap::new()),
                total: None,
                budget: POINT_LOOKUPS,
            }),
        }
    }

    pub(super) fn into_inner(self) -> ProbeState {
        self.state.into_inner().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads the whole ledger's contact ids and etags in place of the lookups.
    pub(super) fn load_whole(&self, st: &mut ProbeState) {
        let whole = EtagsByContact::load(self.store, self.job, self.user_id);
        if let Some(l) = &whole {
            st.total = Some(l.len());
        }
        st.probe = Probe::Whole(whole);
    }
}

impl KnownCopies for LedgerProbe<'_> {
    /// Past `POINT_LOOKUPS` contacts, counts the ledger once, and either allows the page's
    /// lookups one at a time (when they cost less than a whole load) or loads it whole.
    fn page(&self, n: usize) {
        let mut st = crate::mutex::lock(&self.state);
        let Probe::Points(found) = &st.probe else {
            return;
        };
        let want = found.len() + n;
        if want <= st.budget {
            return;
        }
        let total = match st.total {
            Some(t) => t,
            None => match lock(self.store).copy_count(self.job, self.user_id) {
                Ok(t) => {
                    st.total = Some(t);
                    t
                }
                Err(_) => {
                    st.probe = Probe::Whole(None);
                    return;
                }
            },
        };
        if want <= (total / LOOKUP_COST).max(POINT_LOOKUPS) {
            st.budget = want;
        } else {
            self.load_whole(&mut st);
        }
    }

    /// Whether the contact `id` with `etag` is a copy as this job wrote it, changed since, or
    /// not a copy the ledger knows.
    fn known(&self, id: &str, etag: &str) -> Known {
        let mut guard = crate::mutex::lock(&self.state);
        let st = &mut *guard;
        if let Probe::Points(found) = &mut st.probe
            && !found.contains_key(id)
        {
            if found.len() < st.budget {
                match lock(self.store).copy_by_contact(self.job, self.user_id, id) {
                    Ok(row) => {
                        found.insert(id.to_string(), row);
                    }
                    Err(_) => st.probe = Probe::Whole(None),
                }
            } else {
                self.load_whole(st);
            }
        }
        let found = match &st.probe {
            Probe::Points(found) => found
                .get(id)
                .and_then(Option::as_ref)
                .map(|row| row.etag() == etag),
            Probe::Whole(Some(l)) => l.matches(id, etag),
            // The state database failed: everything counts as changed (and the run below
            // reports the failure).
            Probe::Whole(None) => return Known::Changed,
        };
        match found {
            None => Known::No,
            Some(same) if same && !etag.is_empty() => Known::AsWritten,
            Some(_) => Known::Changed,
        }
    }
}

/// A change-token read's view of the ledger (`LedgerProbe`) that also steps its destination
/// aside at the provider once the read has made its last call (`KnownCopies::last_call`): the
/// next destination's first call goes out while this one reads the last page. Not when the
/// group is being read alongside (`group_asked`), which is a call of its own.
pub(super) struct Probing<'a> {
    pub(super) probe: &'a LedgerProbe<'a>,
    pub(super) slot: &'a Slot,
    pub(super) group_asked: &'a AtomicBool,
}

impl KnownCopies for Probing<'_> {
    fn page(&self, n: usize) {
        self.probe.page(n)
    }

    fn known(&self, id: &str, etag: &str) -> Known {
        self.probe.known(id, etag)
    }

    fn last_call(&self) {
        if !self.group_asked.load(Ordering::Relaxed) {
            self.slot.step_aside();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe answers a delta's contacts alike whichever way it reads the ledger (one at a
    /// time, counted first, or whole), and reads it the way the page hints call for.
    #[test]
    fn a_probe_answers_alike_one_at_a_time_and_whole() {
        let store = Mutex::new(Store::open_in_memory().unwrap());
        for i in 0..1000 {
            lock(&store)
                .record_copy(
                    "j",
                    "u",
                    &format!("s{i}"),
                    &format!("c{i}"),
                    "d",
                    &format!("e{i}"),
                )
                .unwrap();
        }
        // (page hint, contacts asked about, whole at the end, counted)
        let cases = [
            (None, 10, false, false),
            (Some(100), 100, false, true),
            (Some(1000), 200, true, true),
            (None, 100, true, true),
        ];
        for (hint, asked, whole, counted) in cases {
            let probe = LedgerProbe::new(&store, "j", "u");
            if let Some(n) = hint {
                probe.page(n);
            }
            for k in 0..asked {
                // A copy as written, one changed since, one deleted, and a contact no copy.
                let (id, etag, want) = match k % 4 {
                    0 => (format!("c{k}"), format!("e{k}"), Known::AsWritten),
                    1 => (format!("c{k}"), "other".to_string(), Known::Changed),
                    2 => (format!("c{k}"), String::new(), Known::Changed),
                    _ => (format!("x{k}"), "e".to_string(), Known::No),
                };
                assert_eq!(probe.known(&id, &etag), want, "{hint:?} {asked}: {id}");
            }
            let st = probe.into_inner();
            assert_eq!(
                matches!(st.probe, Probe::Whole(Some(_))),
                whole,
                "{hint:?} {asked}"
            );
            assert_eq!(st.total, counted.then_some(1000), "{hint:?} {asked}");
        }
    }
}
