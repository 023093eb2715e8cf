//! A destination as the planner sees it: each contact of the group classified (the user's own,
//! another job's, or this job's copy with its source id and digests), and what part of the
//! group was read.
//!
//! It must not decide anything: `decide` does.

use calcard::vcard::VCard;

use super::source::SourceSet;
use super::{JobSpec, is_tag};
use crate::backend::{GroupRef, User};
use crate::card::{self};

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
        fields: crate::card::FieldDigests,
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
    /// [`DestEntry::classify`] without the work a copy's summary takes (its name and digest):
    /// for a contact read for its tags only (`Depth::TagsOnly`), or known not to be a copy.
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
