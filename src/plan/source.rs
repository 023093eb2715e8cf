//! The source group as the planner sees it: each contact's copy (built once, shared by every
//! destination), its managed content's digest and per-property digests, the contacts that could
//! not be read, and the UIDs copies get.
//!
//! It must not read the provider: the engine fills it.

use calcard::vcard::VCard;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use crate::mutex::lock;

use super::JobSpec;
use crate::card::{self};

/// One contact of the source group, ready to be copied.
#[derive(Debug, Clone)]
pub struct SourceItem {
    /// Shared with every plan's creates of it (`Op::Create`): a first fan-out plans one per
    /// source contact at every destination in flight.
    pub id: Arc<str>,
    /// The etag the source contact was read with.
    pub etag: Box<str>,
    pub name: Arc<str>,
    /// Digest of the managed part (see `card::managed_digest`).
    pub digest: String,
    /// Digest of each managed property (see `card::field_digests`), worked out the first time
    /// an update needs them: most source contacts are never updated anywhere in a run.
    fields: OnceLock<crate::card::FieldDigests>,
    /// The copy a destination must hold (its UID is used only when creating), as vCard text: one
    /// allocation instead of a few dozen. A run holds one per source contact for its whole
    /// length, and on most runs few of them are written anywhere.
    copy_text: Box<str>,
    /// The copy parsed from `copy_text`, while a destination writing it holds it.
    parsed: Parsed,
}

/// A copy parsed from its text, shared by the destinations writing it at the same time and
/// dropped when the last lets go (see `SourceItem::copy`). A clone starts empty.
#[derive(Default)]
struct Parsed(Mutex<Weak<VCard>>);

impl Clone for Parsed {
    fn clone(&self) -> Self {
        Parsed::default()
    }
}

impl std::fmt::Debug for Parsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Parsed")
    }
}

impl SourceItem {
    /// Digest of each managed property of the copy (see `card::field_digests`).
    pub fn fields(&self, selection: &card::FieldSelection) -> &[(Arc<str>, u64)] {
        self.fields.get_or_init(|| match self.copy() {
            Ok(c) => card::field_digests(&c, selection),
            Err(_) => vec![],
        })
    }

    /// Reads the copy back from its text.
    fn read_copy(&self) -> Result<VCard, String> {
        card::read_copy(&self.copy_text)
            .map_err(|e| format!("the copy of source contact {}: {e}", self.id))
    }

    /// The copy, parsed from its text when a write needs it. Destinations writing it at the
    /// same time (a first fan-out writes every contact everywhere, in much the same order)
    /// share one parse, dropped when the last of them is done: a run never holds every copy
    /// parsed (about 5 KB each, against 1.5 KB of text) for its whole length.
    pub fn copy(&self) -> Result<Arc<VCard>, String> {
        let mut held = lock(&self.parsed.0);
        if let Some(c) = held.upgrade() {
            return Ok(c);
        }
        let c = Arc::new(self.read_copy()?);
        *held = Arc::downgrade(&c);
        Ok(c)
    }
}

/// The source group as read in this run.
#[derive(Debug, Clone, Default)]
pub struct SourceSet {
    pub items: BTreeMap<String, SourceItem>,
    /// Ids of source contacts that exist but could not be read, with the reason.
    pub unreadable: BTreeMap<String, String>,
    /// Source contacts the job's filter left out.
    pub filtered_out: usize,
    /// Contacts in the source group that came through this job (its own copies, or copies of
    /// them made by other jobs): never copied again, so jobs that feed each other never grow.
    pub came_back: usize,
    /// Source contacts whose copy the destinations' provider cannot hold whole: the contact's
    /// name and what is lost (see `Backend::cannot_hold`).
    pub not_held: Vec<String>,
}

impl SourceSet {
    /// A digest of everything a run copies for this job: the tag, the target group, and each
    /// source contact's id and managed content. Equal fingerprints mean equal desired copies.
    pub fn fingerprint(&self, job: &JobSpec) -> String {
        let mut text = format!("{}|{}|", job.tag, job.target_group);
        for (id, item) in &self.items {
            text.push_str(id);
            text.push('=');
            text.push_str(&item.digest);
            text.push(';');
        }
        for id in self.unreadable.keys() {
            text.push_str(id);
            text.push_str("=?;");
        }
        card::hex_digest(text.as_bytes())
    }
}

/// The UID a new copy gets: derived from the tag and source id, so it is the same at every
/// destination and on every retry.
pub fn copy_uid(tag: &str, source_id: &str) -> String {
    format!("{}-{}", tag, &card::hex_digest(source_id.as_bytes())[..16])
}

/// The UID of a contact read from a destination, if it has the form of this job's copy UIDs
/// (`<tag>-…`, see `copy_uid`) and is not this job's copy of a source contact (whose own UID no
/// fresh copy of another source can get): a fresh copy must not get it. Thousands of copies
/// are read per destination; none of their UIDs is kept.
pub fn taken_uid(job: &JobSpec, card: &Result<VCard, String>) -> Option<String> {
    let card = card.as_ref().ok()?;
    if card::tag_of(card).is_some_and(|t| t == job.tag) && card::source_of(card).is_some() {
        return None;
    }
    let uid = card.uid()?.trim();
    (uid.len() > job.tag.len()
        && uid.starts_with(job.tag.as_str())
        && uid.as_bytes()[job.tag.len()] == b'-')
        .then(|| uid.to_string())
}

/// A UID for a copy of `source_id` that none of `taken` has: `copy_uid`, else it with `-1`,
/// `-2`, … (the same at every retry, as long as what is taken is the same).
pub fn free_uid(tag: &str, source_id: &str, taken: &dyn Fn(&str) -> bool) -> Option<String> {
    let base = copy_uid(tag, source_id);
    if !taken(&base) {
        return None;
    }
    (1..).map(|n| format!("{base}-{n}")).find(|u| !taken(u))
}

impl SourceSet {
    /// Adds one contact read from the source group, with the etag it was read with (what a
    /// write back to the source would be conditional on).
    pub fn add(&mut self, job: &JobSpec, id: String, etag: String, card: Result<VCard, String>) {
        self.add_checked(job, id, etag, card, &|_| Vec::new());
    }

    /// `add`, noting what of the copy the destinations cannot hold (`cannot_hold`: the
    /// provider's `Backend::cannot_hold`) in `not_held`.
    pub fn add_checked(
        &mut self,
        job: &JobSpec,
        id: String,
        etag: String,
        card: Result<VCard, String>,
        cannot_hold: &dyn Fn(&VCard) -> Vec<String>,
    ) {
        match card {
            Err(reason) => {
                self.unreadable.insert(id, reason);
            }
            Ok(card) => {
                if card::came_through(&card).contains(&job.tag) {
                    self.came_back += 1;
                    return;
                }
                if !job.filter.keeps(&card) {
                    self.filtered_out += 1;
                    return;
                }
                let uid = copy_uid(&job.tag, &id);
                let copy = card::make_copy(&card, &job.fields, &job.tag, &id, &uid);
                let lost = cannot_hold(&copy);
                if !lost.is_empty() {
                    let name = card::display_name(&card);
                    self.not_held.push(format!("{name}: {}", lost.join(", ")));
                }
                // A copy read back from its text equals it (`to_text` writes every property
                // `read_copy` reads; tests/vcards.rs checks it on realistic cards), so the
                // digest is taken here, without reading it back.
                let (copy_text, digest) = card::text_and_digest(&copy, &job.fields);
                let copy_text = copy_text.into_boxed_str();
                drop(copy);
                let name = card::display_name(&card);
                self.items.insert(
                    id.clone(),
                    SourceItem {
                        id: id.into(),
                        etag: etag.into_boxed_str(),
                        name: name.into(),
                        digest,
                        fields: Default::default(),
                        copy_text,
                        parsed: Parsed::default(),
                    },
                );
            }
        }
    }
}
