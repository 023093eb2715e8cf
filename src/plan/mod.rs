//! The planner: a pure function from (source snapshot, destination snapshot, job, ledger) to an
//! ordered `Plan` of operations for one destination. It has no I/O and no clock, so the same
//! input always gives the same plan, and property tests can check it on generated inputs.
//!
//! Rules it enforces: only contacts carrying the job's tag are ever updated or deleted; a
//! contact that came through the job (its own copy, or a copy of it) is never a source item; after the plan is applied the tagged copies equal the source, one per source contact;
//! copies of a source contact that could not be read are left alone (never deleted for a read
//! error); deletions beyond the job's limit are flagged, not silently applied.

mod decide;
mod dest;
mod ledger;
mod source;

pub use decide::{plan_destination, plan_removal};
pub use dest::{DestEntry, DestKind, DestSnapshot, Scope};
pub use ledger::{LedgerCopy, LedgerRow, LedgerView};
pub use source::{SourceItem, SourceSet, copy_uid, free_uid, taken_uid};

use serde::Serialize;

use crate::backend::User;
use crate::card::{ContactFilter, FieldSelection};

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

pub use crate::card::is_tag;

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
        source_id: std::sync::Arc<str>,
        name: std::sync::Arc<str>,
        recreate: bool,
        /// The copy's UID when its usual one (`copy_uid`) is taken in the destination (a copy
        /// whose tag the user removed keeps it): a fresh copy never shares a UID.
        #[serde(skip_serializing_if = "Option::is_none")]
        uid: Option<String>,
    },
    Update(Box<UpdateOp>),
    Delete(Box<DeleteOp>),
    /// Every copy of a removed destination that this run wrote to the trash as it read the
    /// group (see `plan_removal`): deleted as the trash holds them, page by page, not listed
    /// one by one in the plan.
    DeleteTrashed(Trashed),
    MoveToDefault {
        contact_id: String,
        etag: String,
    },
    DeleteGroup {
        name: String,
    },
}

/// The copies a removal wrote to the trash as it read the group (`Op::DeleteTrashed`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Trashed {
    /// How many.
    pub copies: usize,
    /// The last trash entry written before them: theirs come after it.
    pub after: i64,
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
    /// trash: just before the delete, or as a removal reads its group (the same read).
    pub name: String,
    pub reason: DeleteReason,
    pub before: String,
}

impl Op {
    /// How many contacts the operation writes.
    pub fn contacts(&self) -> usize {
        match self {
            Op::CreateGroup { .. } | Op::DeleteGroup { .. } => 0,
            Op::DeleteTrashed(t) => t.copies,
            _ => 1,
        }
    }

    /// A short verb for reports.
    pub fn verb(&self) -> &'static str {
        match self {
            Op::CreateGroup { .. } => "create-group",
            Op::Create {
                recreate: false, ..
            } => "create",
            Op::Create { recreate: true, .. } => "recreate",
            Op::Update(_) => "update",
            Op::Delete(_) | Op::DeleteTrashed(_) => "delete",
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
    /// How many contacts the operations of this verb touch (groups count one each).
    pub fn count(&self, verb: &str) -> usize {
        self.ops
            .iter()
            .filter(|o| o.verb() == verb)
            .map(|o| match o {
                Op::DeleteTrashed(t) => t.copies,
                _ => 1,
            })
            .sum()
    }

    /// How many contacts the plan writes: creates, updates, deletes and moves (a group's
    /// creation or deletion is not a contact).
    pub fn contact_writes(&self) -> usize {
        self.ops.iter().map(Op::contacts).sum()
    }

    /// A plan for `user` with nothing in it yet.
    pub fn new(user: &User, removal: bool) -> Plan {
        Plan {
            user: user.name.clone(),
            user_id: user.id.clone(),
            removal,
            ops: vec![],
            unchanged: 0,
            untouched: 0,
            held: 0,
            limit_exceeded: None,
            kept: vec![],
            forget: vec![],
        }
    }

    /// A destination known to be in sync without reading it.
    pub fn up_to_date(user: &User, copies: usize) -> Plan {
        Plan {
            unchanged: copies,
            ..Plan::new(user, false)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::card;

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
