//! The planner: a pure function from (source snapshot, destination snapshot, job, ledger) to an
//! ordered `Plan` of operations for one destination. It has no I/O and no clock, so the same
//! input always gives the same plan, and property tests can check it on generated inputs.
//!
//! Rules it enforces: only contacts carrying the job's tag are ever updated or deleted; a
//! contact that came through the job (its own copy, or a copy of it) is never a source item; after the plan is applied the tagged copies equal the source, one per source contact;
//! copies of a source contact that could not be read are left alone (never deleted for a read
//! error); deletions beyond the job's limit are flagged, not silently applied.

use calcard::vcard::VCard;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::OnceLock;

use crate::backend::{GroupRef, User};
use crate::card::{self, ContactFilter, FieldSelection};

/// What the planner needs of a job.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub name: String,
    pub tag: String,
    pub target_group: String,
    pub fields: FieldSelection,
    pub filter: ContactFilter,
    pub limits: Limits,
}

/// Deletion limits for one destination in one run: more than `max(max_delete, max_percent% of
/// its copies)` deletions stop the job unless forced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub max_delete: usize,
    pub max_delete_percent: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_delete: 10,
            max_delete_percent: 10,
        }
    }
}

/// One contact of the source group, ready to be copied.
#[derive(Debug, Clone)]
pub struct SourceItem {
    pub id: String,
    /// The etag the source contact was read with.
    pub etag: Box<str>,
    pub name: String,
    /// Digest of the managed part (see `card::managed_digest`).
    pub digest: String,
    /// Digest of each managed property (see `card::field_digests`), worked out the first time
    /// an update needs them: most source contacts are never updated anywhere in a run.
    fields: OnceLock<Vec<(std::sync::Arc<str>, u64)>>,
    /// The copy a destination must hold (its UID is used only when creating), as vCard text: one
    /// allocation instead of a few dozen. A run holds one per source contact for its whole
    /// length, and on most runs few of them are written anywhere.
    copy_text: Box<str>,
    /// The copy read back from `copy_text`, kept once a write or a comparison needed it: a
    /// first fan-out creates every copy at every destination, and an edited source contact is
    /// updated at every destination. It never holds more than a fan-out does. Destinations
    /// that need it at the same time wait for the one reading it.
    copy: OnceLock<Result<VCard, String>>,
}

impl SourceItem {
    /// Digest of each managed property of the copy (see `card::field_digests`).
    pub fn fields(&self, selection: &card::FieldSelection) -> &[(std::sync::Arc<str>, u64)] {
        self.fields.get_or_init(|| match self.copy() {
            Ok(c) => card::field_digests(c, selection),
            Err(_) => vec![],
        })
    }

    /// Reads the copy back from its text.
    fn read_copy(&self) -> Result<VCard, String> {
        card::read_copy(&self.copy_text)
            .map_err(|e| format!("the copy of source contact {}: {e}", self.id))
    }

    /// The copy, read once and kept for the rest of the run (every destination written needs
    /// the same one).
    pub fn copy(&self) -> Result<&VCard, String> {
        self.copy
            .get_or_init(|| {
                // A clone is sized exactly; the parser's vectors and strings carry spare room,
                // and this one is held for the rest of the run.
                self.read_copy().map(|read| {
                    let exact = read.clone();
                    drop(read);
                    exact
                })
            })
            .as_ref()
            .map_err(String::clone)
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
}

impl SourceSet {
    /// Adds one contact read from the source group, with the etag it was read with (what a
    /// write back to the source would be conditional on).
    pub fn add(&mut self, job: &JobSpec, id: String, etag: String, card: Result<VCard, String>) {
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
                        id,
                        etag: etag.into_boxed_str(),
                        name,
                        digest,
                        fields: Default::default(),
                        copy_text,
                        copy: Default::default(),
                    },
                );
            }
        }
    }
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

/// What the planner knows of one contact found in the destination group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestKind {
    /// Not carrying any gSync tag, or unreadable: the user's own. Never modified or deleted.
    Own,
    /// Carrying another job's tag: never touched by this job.
    OtherJob,
    /// A copy made by this job. `source` is `None` when the source id property was removed.
    Copy {
        source: Option<String>,
        digest: String,
        name: String,
        /// Digest of each managed property (see `card::field_digests`).
        fields: Vec<(std::sync::Arc<str>, u64)>,
    },
}

/// One contact of the destination group.
#[derive(Debug, Clone)]
pub struct DestEntry {
    pub id: String,
    pub etag: String,
    pub kind: DestKind,
}

impl DestEntry {
    /// Summarises a contact read from a destination group for this job. The per-property
    /// digests of a copy (what an update names as changed) are kept only when `source` is given
    /// and the copy's content differs from its source's: the planner needs them for nothing else,
    /// and thousands of copies are summarised per destination.
    pub fn classify(
        job: &JobSpec,
        id: String,
        etag: String,
        card: &Result<VCard, String>,
        source: Option<&SourceSet>,
    ) -> Self {
        let kind = match card {
            Err(_) => DestKind::Own,
            Ok(c) => match card::tag_of(c) {
                Some(t) if t == job.tag => {
                    let source_id = card::source_of(c);
                    let digest = card::managed_digest(c, &job.fields);
                    let differs = source.is_some_and(|s| {
                        source_id
                            .as_ref()
                            .and_then(|sid| s.items.get(sid))
                            .is_some_and(|item| item.digest != digest)
                    });
                    DestKind::Copy {
                        fields: if differs {
                            card::field_digests(c, &job.fields)
                        } else {
                            vec![]
                        },
                        source: source_id,
                        digest,
                        name: card::display_name(c),
                    }
                }
                Some(t) if is_tag(&t) => DestKind::OtherJob,
                _ => DestKind::Own,
            },
        };
        DestEntry { id, etag, kind }
    }
}

impl DestEntry {
    /// [`DestEntry::classify`] of a contact read for its tags only (`Depth::TagsOnly`,
    /// a removal's run): a copy carries no name or digest, the read has neither to give.
    pub fn classify_tags(
        job: &JobSpec,
        id: String,
        etag: String,
        card: &Result<VCard, String>,
    ) -> Self {
        let kind = match card.as_ref().ok().and_then(card::tag_of) {
            Some(t) if t == job.tag => DestKind::Copy {
                fields: vec![],
                source: card.as_ref().ok().and_then(card::source_of),
                digest: String::new(),
                name: String::new(),
            },
            Some(t) if is_tag(&t) => DestKind::OtherJob,
            _ => DestKind::Own,
        };
        DestEntry { id, etag, kind }
    }
}

pub use crate::card::is_tag;

/// A destination as read in this run.
#[derive(Debug, Clone)]
pub struct DestSnapshot {
    pub user: User,
    /// The target group, if it exists.
    pub group: Option<GroupRef>,
    /// True when the target group is the user's default collection (never moved out of, never deleted).
    pub group_is_default: bool,
    pub entries: Vec<DestEntry>,
    /// `None`: `entries` is the whole group. `Some`: only part of it was read (see `Scope`).
    pub scope: Option<Scope>,
    /// UIDs in the group that a fresh copy of this job could get (see `taken_uid`), as far as
    /// the read saw: a copy created here gets another.
    pub taken_uids: Vec<String>,
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

/// What a snapshot of part of a destination holds. `entries` and the ledger given to the
/// planner hold, whole, the copies of the source ids in `source_ids` (and every contact that
/// changed since the destination last converged); every other copy the ledger remembers is in
/// sync with its source, exactly as remembered, and the only copy of it: there are `outside`
/// of them, and nothing is planned for them. The engine builds such a snapshot from a change
/// token's delta when the destination converged to the source as the last run read it: then
/// only source contacts that changed since, and copies that changed since, need a plan.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Sorted, without duplicates.
    pub source_ids: Vec<String>,
    pub outside: usize,
}

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
    fn written_as(&self, item: &SourceItem, entry: &DestEntry) -> bool {
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
    fn remembers(&self, contact_id: &str, digest: &str, etag: &str) -> bool {
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

    /// The positions of the rows sorted by contact id, for `find_contact`.
    pub fn contact_order(&self) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.rows.len() as u32).collect();
        order.sort_unstable_by(|a, b| {
            self.rows[*a as usize]
                .contact_id()
                .cmp(self.rows[*b as usize].contact_id())
        });
        order
    }

    /// The row of the copy with this contact id, found through `order` (see `contact_order`).
    pub fn find_contact(&self, order: &[u32], contact_id: &str) -> Option<&LedgerRow> {
        order
            .binary_search_by(|i| self.rows[*i as usize].contact_id().cmp(contact_id))
            .ok()
            .map(|i| &self.rows[order[i] as usize])
    }
}

/// Why a copy is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeleteReason {
    /// Its source contact left the group (or the job's filter now leaves it out).
    SourceGone,
    /// A second copy of the same source contact (from an interrupted run or a user's duplicate).
    Duplicate,
    /// Tagged, but without the source id: cannot be matched to a source contact.
    Orphan,
    /// The destination was removed from the job.
    DestinationRemoved,
}

impl DeleteReason {
    /// The reason as a word, as it is serialised (the trash and the change log keep it).
    pub fn as_str(self) -> &'static str {
        match self {
            DeleteReason::SourceGone => "source-gone",
            DeleteReason::Duplicate => "duplicate",
            DeleteReason::Orphan => "orphan",
            DeleteReason::DestinationRemoved => "destination-removed",
        }
    }
}

/// One operation at one destination, in the order the executor applies them. Updates and
/// deletes are boxed: a plan is mostly creates (a first run holds one per source contact at
/// every destination in flight), and an enum is as large as its largest kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Op {
    CreateGroup {
        name: String,
    },
    Create {
        source_id: String,
        name: String,
        recreate: bool,
        /// The copy's UID when its usual one (`copy_uid`) is taken in the destination (a copy
        /// whose tag the user removed keeps it): a fresh copy never shares a UID.
        #[serde(skip_serializing_if = "Option::is_none")]
        uid: Option<String>,
    },
    Update(Box<UpdateOp>),
    Delete(Box<DeleteOp>),
    MoveToDefault {
        contact_id: String,
        etag: String,
    },
    DeleteGroup {
        name: String,
    },
}

/// A copy brought back to its source's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpdateOp {
    pub contact_id: String,
    pub etag: String,
    pub source_id: String,
    pub name: String,
    /// Managed properties that differ from the source.
    pub fields: Vec<String>,
    /// Digest of the copy's managed content before the update.
    pub before: String,
}

/// A copy deleted (its payload goes to the trash first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeleteOp {
    pub contact_id: String,
    pub etag: String,
    pub source_id: Option<String>,
    /// The copy's name and the digest of its managed content, as the snapshot read them: what
    /// a plan shows. The change log and the trash take both from the copy as it is read for the
    /// trash, just before the delete (a removal reads its group for the tags only).
    pub name: String,
    pub reason: DeleteReason,
    pub before: String,
}

impl Op {
    /// A short verb for reports.
    pub fn verb(&self) -> &'static str {
        match self {
            Op::CreateGroup { .. } => "create-group",
            Op::Create {
                recreate: false, ..
            } => "create",
            Op::Create { recreate: true, .. } => "recreate",
            Op::Update(_) => "update",
            Op::Delete(_) => "delete",
            Op::MoveToDefault { .. } => "move-to-default",
            Op::DeleteGroup { .. } => "delete-group",
        }
    }
}

/// Everything one destination needs in one run.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub user: String,
    pub user_id: String,
    pub removal: bool,
    /// The operations, in order (emptied in a real run's report once applied).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ops: Vec<Op>,
    /// Copies already equal to their source.
    pub unchanged: usize,
    /// Contacts in the group that are not this job's copies (left alone).
    pub untouched: usize,
    /// Copies left alone because their source contact could not be read.
    pub held: usize,
    /// Set when the plan deletes more than the job's limit allows.
    pub limit_exceeded: Option<String>,
    /// Copies kept as they are whose ledger row must change (or is missing), by source id.
    #[serde(skip)]
    pub kept: Vec<(String, LedgerCopy)>,
    /// Source ids the ledger remembers that no copy answers for after this plan (the copy was
    /// deleted, or is gone): their rows are removed once the plan is applied.
    #[serde(skip)]
    pub forget: Vec<String>,
}

impl Plan {
    pub fn count(&self, verb: &str) -> usize {
        self.ops.iter().filter(|o| o.verb() == verb).count()
    }

    /// A destination known to be in sync without reading it.
    pub fn up_to_date(user: &User, copies: usize) -> Plan {
        Plan {
            user: user.name.clone(),
            user_id: user.id.clone(),
            removal: false,
            ops: vec![],
            unchanged: copies,
            untouched: 0,
            held: 0,
            limit_exceeded: None,
            kept: vec![],
            forget: vec![],
        }
    }

    /// The plan without its per-contact operations, once they are applied: a run's report keeps
    /// only this, so memory does not grow with the number of destinations.
    pub fn into_summary(mut self) -> Plan {
        self.ops = vec![];
        self.kept = vec![];
        self.forget = vec![];
        self
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Plans one active destination: after these operations its tagged copies equal the source.
/// With a `scope` (a snapshot of part of the destination), the plan is the part of the whole
/// plan that concerns the source ids in scope; the copies outside it count as unchanged.
pub fn plan_destination(
    source: &SourceSet,
    dest: &DestSnapshot,
    job: &JobSpec,
    ledger: &LedgerView,
) -> Plan {
    let mut plan = Plan {
        user: dest.user.name.clone(),
        user_id: dest.user.id.clone(),
        removal: false,
        ops: vec![],
        unchanged: 0,
        untouched: 0,
        held: 0,
        limit_exceeded: None,
        kept: vec![],
        forget: vec![],
    };
    if dest.group.is_none() {
        plan.ops.push(Op::CreateGroup {
            name: job.target_group.clone(),
        });
    }
    // The copies by source id: one sorted vector (stable: a source's copies stay in the order
    // read), walked side by side with the source and the ledger, which are sorted the same way.
    // Thousands of copies are planned per destination; no map or lookup per copy.
    let mut copies: Vec<(&str, &DestEntry)> = Vec::with_capacity(dest.entries.len());
    let mut deletes = vec![];
    let mut updates = vec![];
    let mut orphans = 0usize;
    // Source ids of copies kept as the ledger remembers them, in source id order.
    let mut remembered: Vec<&str> = vec![];
    for e in &dest.entries {
        match &e.kind {
            DestKind::Own | DestKind::OtherJob => plan.untouched += 1,
            DestKind::Copy {
                source: Some(s), ..
            } => copies.push((s.as_str(), e)),
            DestKind::Copy { source: None, .. } => {
                orphans += 1;
                deletes.push(delete_op(e.clone(), DeleteReason::Orphan));
            }
        }
    }
    let copies_total = copies.len() + orphans;
    copies.sort_by(|a, b| a.0.cmp(b.0));
    let mut items = source.items.iter().peekable();
    let mut rows = ledger.rows().peekable();
    for group in copies.chunk_by(|a, b| a.0 == b.0) {
        let sid = group[0].0;
        while rows.next_if(|r| r.source_id() < sid).is_some() {}
        let row = rows.next_if(|r| r.source_id() == sid);
        while items.next_if(|(k, _)| k.as_str() < sid).is_some() {}
        let item = items.next_if(|(k, _)| k.as_str() == sid).map(|(_, i)| i);
        let copies = group.iter().map(|(_, e)| *e);
        if source.unreadable.contains_key(sid) {
            plan.held += group.len();
            plan.kept.extend(copies.map(|c| {
                let remembered = row
                    .filter(|l| l.contact_id() == c.id)
                    .map(LedgerRow::to_copy);
                (
                    sid.to_string(),
                    remembered.unwrap_or_else(|| LedgerCopy {
                        contact_id: c.id.clone(),
                        ..Default::default()
                    }),
                )
            }));
            continue;
        }
        match item {
            None => {
                for c in copies {
                    deletes.push(delete_op(c.clone(), DeleteReason::SourceGone));
                }
            }
            Some(item) => {
                // A copy is in sync if it has the source's content, or is exactly what this job
                // last wrote from this content (the provider may store it in its own form).
                let in_sync = |c: &DestEntry| {
                    matches!(&c.kind, DestKind::Copy { digest, .. } if *digest == item.digest)
                        || row.is_some_and(|l| l.written_as(item, c))
                };
                let keeper = copies
                    .clone()
                    .min_by_key(|c| (!in_sync(c), c.id.as_str()))
                    .expect("non-empty");
                for c in copies.filter(|c| c.id != keeper.id) {
                    deletes.push(delete_op(c.clone(), DeleteReason::Duplicate));
                }
                match &keeper.kind {
                    DestKind::Copy { .. } if in_sync(keeper) => {
                        plan.unchanged += 1;
                        // Most copies are as the ledger remembers them: only their source id
                        // is noted (no row to write, nothing to allocate).
                        if row.is_some_and(|l| l.remembers(&keeper.id, &item.digest, &keeper.etag))
                        {
                            remembered.push(sid);
                            continue;
                        }
                        plan.kept.push((
                            item.id.clone(),
                            LedgerCopy {
                                contact_id: keeper.id.clone(),
                                digest: item.digest.clone(),
                                etag: keeper.etag.clone(),
                            },
                        ));
                    }
                    DestKind::Copy { digest, fields, .. } => {
                        updates.push(Op::Update(Box::new(UpdateOp {
                            contact_id: keeper.id.clone(),
                            etag: keeper.etag.clone(),
                            source_id: item.id.clone(),
                            name: item.name.clone(),
                            fields: card::changed_fields(fields, item.fields(&job.fields)),
                            before: digest.clone(),
                        })))
                    }
                    DestKind::Own | DestKind::OtherJob => {
                        unreachable!("only copies are grouped by source")
                    }
                }
            }
        }
    }
    // Source contacts without a copy, in source order (both sorted by source id). Outside the
    // scope of a partial snapshot, every source contact has its copy.
    let mut copied = copies.iter().map(|(s, _)| *s).peekable();
    let in_scope: Box<dyn Iterator<Item = &SourceItem>> = match &dest.scope {
        None => Box::new(source.items.values()),
        Some(s) => Box::new(s.source_ids.iter().filter_map(|id| source.items.get(id))),
    };
    let missing: Vec<&SourceItem> = in_scope
        .filter(|item| {
            while copied.next_if(|c| *c < item.id.as_str()).is_some() {}
            copied.peek() != Some(&item.id.as_str())
        })
        .collect();
    plan.ops
        .reserve_exact(missing.len() + updates.len() + deletes.len());
    let taken: std::collections::BTreeSet<&str> =
        dest.taken_uids.iter().map(String::as_str).collect();
    for item in missing {
        plan.ops.push(Op::Create {
            source_id: item.id.clone(),
            name: item.name.clone(),
            recreate: ledger.contains(&item.id),
            uid: free_uid(&job.tag, &item.id, &|u| taken.contains(u)),
        });
    }
    plan.ops.extend(updates);
    plan.ops.extend(deletes);
    // The ledger after the apply: rows of copies kept, created or updated stay (created and
    // updated ones are recorded as they are written); kept rows already right are not rewritten.
    let mut answered: Vec<&str> = plan
        .kept
        .iter()
        .map(|(s, _)| s.as_str())
        .chain(remembered.iter().copied())
        .chain(plan.ops.iter().filter_map(|o| match o {
            Op::Create { source_id, .. } => Some(source_id.as_str()),
            Op::Update(u) => Some(u.source_id.as_str()),
            _ => None,
        }))
        .collect();
    answered.sort_unstable();
    let mut answered_iter = answered.iter().peekable();
    plan.forget = ledger
        .rows()
        .map(LedgerRow::source_id)
        .filter(|s| {
            while answered_iter.next_if(|a| **a < *s).is_some() {}
            answered_iter.peek() != Some(&s)
        })
        .map(str::to_string)
        .collect();
    drop(answered);
    // `kept` is in source id order, as the ledger's rows are.
    let mut rows = ledger.rows().peekable();
    plan.kept.retain(|(s, c)| {
        while rows.next_if(|r| r.source_id() < s.as_str()).is_some() {}
        !rows.peek().is_some_and(|r| r.source_id() == s && r.is(c))
    });
    let counted = plan
        .ops
        .iter()
        .filter(|o| {
            matches!(
                o,
                Op::Delete(d) if matches!(d.reason, DeleteReason::SourceGone | DeleteReason::Orphan)
            )
        })
        .count();
    let outside = dest.scope.as_ref().map_or(0, |s| s.outside);
    plan.unchanged += outside;
    let base = copies_total.max(ledger.len()) + outside;
    let allowed = job
        .limits
        .max_delete
        .max((base * job.limits.max_delete_percent as usize).div_ceil(100));
    if counted > allowed {
        plan.limit_exceeded = Some(format!(
            "{} would lose {counted} of its {base} copies in one run (limit {allowed}: max_delete = {}, max_delete_percent = {})",
            dest.user.name, job.limits.max_delete, job.limits.max_delete_percent
        ));
    }
    plan
}

fn delete_op(e: DestEntry, reason: DeleteReason) -> Op {
    let (source_id, name, before) = match e.kind {
        DestKind::Copy {
            source,
            name,
            digest,
            ..
        } => (source, name, digest),
        _ => (None, String::new(), String::new()),
    };
    Op::Delete(Box::new(DeleteOp {
        contact_id: e.id,
        etag: e.etag,
        source_id,
        name,
        reason,
        before,
    }))
}

/// Plans the removal of a destination from the job: every tagged copy is deleted, then the
/// user's own contacts in the group move to the default collection, and the group is deleted when nothing
/// else (another job's copies) remains in it. The snapshot's entries are moved into the plan
/// (thousands of copies per destination are not held twice); `dest.entries` is left empty.
pub fn plan_removal(dest: &mut DestSnapshot) -> Plan {
    let mut plan = Plan {
        user: dest.user.name.clone(),
        user_id: dest.user.id.clone(),
        removal: true,
        ops: vec![],
        unchanged: 0,
        untouched: 0,
        held: 0,
        limit_exceeded: None,
        kept: vec![],
        forget: vec![],
    };
    let Some(group) = &dest.group else {
        return plan;
    };
    let mut moves = vec![];
    let mut deletes = Vec::with_capacity(dest.entries.len());
    let mut other_jobs = 0;
    for e in std::mem::take(&mut dest.entries) {
        match e.kind {
            DestKind::Copy { .. } => deletes.push(delete_op(e, DeleteReason::DestinationRemoved)),
            DestKind::Own if !dest.group_is_default => moves.push(Op::MoveToDefault {
                contact_id: e.id,
                etag: e.etag,
            }),
            DestKind::Own => plan.untouched += 1,
            DestKind::OtherJob => other_jobs += 1,
        }
    }
    plan.untouched += other_jobs;
    plan.ops.reserve_exact(moves.len() + deletes.len() + 1);
    // Deletes first: a provider that keeps several contacts in one place (a vdir file of several
    // cards) reads what it deletes for the trash by position, and a move out of that place first
    // would shift the positions.
    plan.ops.extend(deletes);
    plan.ops.extend(moves);
    if other_jobs == 0 && !dest.group_is_default {
        plan.ops.push(Op::DeleteGroup {
            name: group.name.clone(),
        });
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ledger_finds_each_row_by_source_id_and_keeps_the_last_of_two() {
        let ids: Vec<String> = (0..200).rev().map(|i| format!("people/c{i:03}")).collect();
        let mut rows: Vec<LedgerRow> = ids
            .iter()
            .map(|s| LedgerRow::new(s, &format!("{s}-copy"), "d1", "e1"))
            .collect();
        rows.push(LedgerRow::new("people/c007", "other", "d2", "e2"));
        let l = LedgerView::new(rows);
        assert_eq!(l.len(), 200);
        for s in &ids {
            let r = l.get(s).expect("every row is found");
            assert_eq!(r.source_id(), s);
            if s == "people/c007" {
                assert_eq!(
                    (r.contact_id(), r.digest(), r.etag()),
                    ("other", "d2", "e2")
                );
            } else {
                assert_eq!(r.contact_id(), format!("{s}-copy"));
                assert_eq!((r.digest(), r.etag()), ("d1", "e1"));
            }
        }
        assert!(l.get("people/c200").is_none() && !l.contains(""));
        let copy = l.get("people/c001").unwrap().to_copy();
        assert!(l.get("people/c001").unwrap().is(&copy));
        assert!(!l.get("people/c002").unwrap().is(&copy));
        // An empty etag or digest is kept as empty.
        let r = LedgerRow::new("s", "c", "", "");
        assert_eq!(
            (r.source_id(), r.contact_id(), r.digest(), r.etag()),
            ("s", "c", "", "")
        );
    }

    #[test]
    fn a_delete_reason_as_a_word_is_its_serialised_form() {
        for r in [
            DeleteReason::SourceGone,
            DeleteReason::Duplicate,
            DeleteReason::Orphan,
            DeleteReason::DestinationRemoved,
        ] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }

    /// A contact read for its tags only is told apart as a whole read tells it: this job's copy
    /// (with its source, or none when the source property is gone), another job's, the user's
    /// own (untagged, a malformed tag, or unreadable).
    #[test]
    fn a_tags_only_read_tells_copies_apart_as_a_whole_read_does() {
        let job = JobSpec {
            name: "j".into(),
            tag: "gSync42".into(),
            target_group: "Team".into(),
            fields: FieldSelection::All,
            filter: ContactFilter::default(),
            limits: Limits::default(),
        };
        let card = |extra: &str| {
            card::parse(&format!(
                "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Jane\r\n{extra}END:VCARD\r\n"
            ))
        };
        let cases = [
            (
                card("X-GSYNC:gSync42\r\nX-GSYNC-SOURCE:s1\r\n"),
                "copy of s1",
            ),
            (card("X-GSYNC:gSync42\r\n"), "copy of none"),
            (card("X-GSYNC:gSync7\r\nX-GSYNC-SOURCE:s1\r\n"), "other job"),
            (card("X-GSYNC:gSyncX\r\n"), "own"),
            (card(""), "own"),
            (Err("unreadable".to_string()), "own"),
        ];
        let what = |e: &DestEntry| match &e.kind {
            DestKind::Copy { source, .. } => {
                format!("copy of {}", source.as_deref().unwrap_or("none"))
            }
            DestKind::OtherJob => "other job".into(),
            DestKind::Own => "own".into(),
        };
        for (c, expected) in cases {
            let tags = DestEntry::classify_tags(&job, "c".into(), "e".into(), &c);
            let whole = DestEntry::classify(&job, "c".into(), "e".into(), &c, None);
            assert_eq!(what(&tags), expected, "{c:?}");
            assert_eq!(what(&whole), expected, "{c:?}");
            assert_eq!((tags.id.as_str(), tags.etag.as_str()), ("c", "e"));
        }
    }
}
