//! What the state remembers of each copy (the ledger), as the planner reads it: one compact row
//! per source id, found by source id or by contact id without a map per copy.
//!
//! It must not touch the database: the engine hands the rows in.

use super::dest::DestEntry;
use super::source::SourceItem;

/// What the state database remembers of one copy: its id, the source digest it was written
/// from, and the etag the provider gave back for that write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerCopy {
    pub contact_id: String,
    pub digest: String,
    pub etag: String,
}

/// What the state database remembers of one destination: its copies, by source id. Kept
/// compact, because a run holds the ledger of every destination in flight: one sorted vector
/// of rows, each row one allocation.
#[derive(Debug, Clone, Default)]
pub struct LedgerView {
    /// Sorted by source id, one row per source id.
    rows: Vec<LedgerRow>,
}

/// One remembered copy: source id, contact id, digest and etag in one string.
#[derive(Clone, PartialEq, Eq)]
pub struct LedgerRow {
    text: Box<str>,
    /// Where the contact id, the digest and the etag begin in `text`.
    at: [u32; 3],
}

impl LedgerRow {
    pub fn new(source_id: &str, contact_id: &str, digest: &str, etag: &str) -> Self {
        let parts = [source_id, contact_id, digest, etag];
        let mut text = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        let mut at = [0u32; 3];
        for (i, part) in parts.into_iter().enumerate() {
            if i > 0 {
                at[i - 1] = text.len() as u32;
            }
            text.push_str(part);
        }
        LedgerRow {
            text: text.into_boxed_str(),
            at,
        }
    }

    fn part(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.at[i - 1] as usize };
        let end = self.at.get(i).map_or(self.text.len(), |&e| e as usize);
        &self.text[start..end]
    }

    pub fn source_id(&self) -> &str {
        self.part(0)
    }

    pub fn contact_id(&self) -> &str {
        self.part(1)
    }

    pub fn digest(&self) -> &str {
        self.part(2)
    }

    pub fn etag(&self) -> &str {
        self.part(3)
    }

    /// True if `entry` is exactly what this row says this job last wrote for `item`: same
    /// contact, same etag (nobody changed it since), written from the same source content. Such
    /// a copy is in sync even when the provider stores it in its own form (reordered,
    /// normalised).
    pub(super) fn written_as(&self, item: &SourceItem, entry: &DestEntry) -> bool {
        self.contact_id() == entry.id
            && self.etag() == entry.etag
            && !self.etag().is_empty()
            && self.digest() == item.digest
    }

    /// True if this row remembers exactly `copy`.
    pub fn is(&self, copy: &LedgerCopy) -> bool {
        self.remembers(&copy.contact_id, &copy.digest, &copy.etag)
    }

    /// True if this row remembers exactly this contact, written from this digest, with this etag.
    pub(super) fn remembers(&self, contact_id: &str, digest: &str, etag: &str) -> bool {
        self.contact_id() == contact_id && self.digest() == digest && self.etag() == etag
    }

    pub fn to_copy(&self) -> LedgerCopy {
        LedgerCopy {
            contact_id: self.contact_id().to_string(),
            digest: self.digest().to_string(),
            etag: self.etag().to_string(),
        }
    }
}

impl std::fmt::Debug for LedgerRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerRow")
            .field("source_id", &self.source_id())
            .field("contact_id", &self.contact_id())
            .field("digest", &self.digest())
            .field("etag", &self.etag())
            .finish()
    }
}

impl LedgerView {
    /// The ledger of these rows; of two rows for one source id the last is kept.
    pub fn new(rows: impl IntoIterator<Item = LedgerRow>) -> Self {
        let mut rows: Vec<LedgerRow> = rows.into_iter().collect();
        rows.reverse();
        rows.sort_by(|a, b| a.source_id().cmp(b.source_id()));
        rows.dedup_by(|a, b| a.source_id() == b.source_id());
        rows.shrink_to_fit();
        LedgerView { rows }
    }

    /// What the ledger remembers of the copy of `source_id`.
    pub fn get(&self, source_id: &str) -> Option<&LedgerRow> {
        self.rows
            .binary_search_by(|r| r.source_id().cmp(source_id))
            .ok()
            .map(|i| &self.rows[i])
    }

    pub fn contains(&self, source_id: &str) -> bool {
        self.get(source_id).is_some()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The rows, by source id.
    pub fn rows(&self) -> impl Iterator<Item = &LedgerRow> {
        self.rows.iter()
    }
}
