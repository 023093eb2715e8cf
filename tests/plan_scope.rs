//! The planner's partial snapshots (`plan::Scope`): planning only the source ids a change
//! token's delta leaves open gives the same plan as planning the whole destination.
//!
//! Each case generates the source as the last run read it, a destination converged to it (one
//! copy per source contact, the ledger remembering each), then the source as this run reads it
//! (edited, new, gone and unreadable contacts) and what users did to the group since (copies
//! edited, deleted, moved out, duplicated, untagged, stripped of their source id; contacts of
//! their own added). The whole snapshot holds every contact of the group and the whole ledger;
//! the partial one holds what the engine keeps for it (see `engine::delta_scope`): the contacts
//! that changed, and the copies and ledger rows of the source ids that changed or that a
//! changed contact names. Both plans must agree on every operation, every ledger row kept or
//! forgotten, the counts, and the deletion limit.

use std::collections::BTreeSet;

use calcard::vcard::VCard;
use proptest::prelude::*;

use groupsync::backend::{GroupRef, User};
use groupsync::card::{self, ContactFilter, FieldSelection};
use groupsync::plan::{
    self, DestEntry, DestKind, DestSnapshot, JobSpec, LedgerRow, LedgerView, Limits, Scope,
    SourceSet,
};

const TAG: &str = "gSync5";

/// A source contact as one run reads it.
#[derive(Debug, Clone)]
enum Now {
    Absent,
    Readable(u8),
    Unreadable,
}

/// What a user did to one copy since the destination converged.
#[derive(Debug, Clone)]
enum Tamper {
    Nothing,
    Edit(u8),
    Delete,
    MoveOut,
    Duplicate,
    StripTag,
    DropSourceId,
}

fn now() -> impl Strategy<Value = Now> {
    prop_oneof![
        1 => Just(Now::Absent),
        6 => any::<u8>().prop_map(Now::Readable),
        1 => Just(Now::Unreadable),
    ]
}

fn tamper() -> impl Strategy<Value = Tamper> {
    prop_oneof![
        12 => Just(Tamper::Nothing),
        2 => any::<u8>().prop_map(Tamper::Edit),
        1 => Just(Tamper::Delete),
        1 => Just(Tamper::MoveOut),
        1 => Just(Tamper::Duplicate),
        1 => Just(Tamper::StripTag),
        1 => Just(Tamper::DropSourceId),
    ]
}

fn card_of(seed: u8) -> VCard {
    card::parse(&format!(
        "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:u{seed}\r\nFN:Person {seed}\r\nN:{seed};Person;;;\r\nEMAIL:p{seed}@example.com\r\nNOTE:note {}\r\nEND:VCARD\r\n",
        seed % 7
    ))
    .unwrap()
}

/// `card` with the properties named `drop` left out, and `extra` lines added.
fn rewritten(card: &VCard, drop: &[&str], extra: &str) -> VCard {
    let text = card::to_text(card);
    let mut out: Vec<&str> = text
        .split("\r\n")
        .filter(|l| {
            let name = l
                .split([':', ';'])
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            !drop.contains(&name.as_str()) && *l != "END:VCARD" && !l.is_empty()
        })
        .collect();
    out.extend(extra.split("\r\n").filter(|l| !l.is_empty()));
    out.push("END:VCARD");
    card::parse(&(out.join("\r\n") + "\r\n")).unwrap()
}

fn source_set(job: &JobSpec, contacts: &[(String, Option<u8>, bool)]) -> SourceSet {
    let mut s = SourceSet::default();
    for (id, seed, unreadable) in contacts {
        match (seed, unreadable) {
            (_, true) => s.add(job, id.clone(), String::new(), Err("unreadable".into())),
            (Some(seed), false) => s.add(job, id.clone(), format!("e{seed}"), Ok(card_of(*seed))),
            (None, false) => {}
        }
    }
    s
}

#[allow(clippy::type_complexity)]
fn check(
    before: Vec<Option<u8>>,
    after: Vec<Now>,
    tampered: Vec<Tamper>,
    own_added: u8,
    limits: (usize, u8),
) -> Result<(), TestCaseError> {
    let job = JobSpec {
        name: "job".into(),
        tag: TAG.into(),
        target_group: "Team".into(),
        fields: FieldSelection::All,
        filter: ContactFilter::default(),
        limits: Limits {
            max_delete: limits.0,
            max_delete_percent: limits.1.into(),
        },
    };
    let id = |i: usize| format!("people/s{i:02}");
    let prev = source_set(
        &job,
        &before
            .iter()
            .enumerate()
            .map(|(i, s)| (id(i), *s, false))
            .collect::<Vec<_>>(),
    );
    let cur = source_set(
        &job,
        &after
            .iter()
            .enumerate()
            .map(|(i, n)| match n {
                Now::Absent => (id(i), None, false),
                Now::Readable(s) => (id(i), Some(*s), false),
                Now::Unreadable => (id(i), None, true),
            })
            .collect::<Vec<_>>(),
    );

    // The destination as it converged to `prev`, and what users did since.
    let mut rows = vec![];
    let mut group: Vec<DestEntry> = vec![];
    let mut changed_ids: BTreeSet<String> = BTreeSet::new();
    let classify = |cid: &str, etag: &str, card: VCard| {
        DestEntry::classify(&job, cid.into(), etag.into(), &Ok(card), Some(&cur))
    };
    for (n, (sid, item)) in prev.items.iter().enumerate() {
        let cid = format!("people/c{n:02}");
        let etag = format!("e{n}");
        rows.push(LedgerRow::new(sid, &cid, &item.digest, &etag));
        let copy = VCard::clone(&item.copy().unwrap());
        let t = tampered.get(n).cloned().unwrap_or(Tamper::Nothing);
        match t {
            Tamper::Nothing => group.push(classify(&cid, &etag, copy)),
            Tamper::Edit(s) => {
                group.push(classify(
                    &cid,
                    "edited",
                    rewritten(&copy, &["NOTE"], &format!("NOTE:edited {s}")),
                ));
                changed_ids.insert(cid);
            }
            Tamper::Delete | Tamper::MoveOut => {
                changed_ids.insert(cid);
            }
            Tamper::Duplicate => {
                group.push(classify(&cid, &etag, copy.clone()));
                let dup = format!("people/d{n:02}");
                group.push(classify(&dup, "dup", copy));
                changed_ids.insert(dup);
            }
            Tamper::StripTag => {
                group.push(classify(
                    &cid,
                    "mine",
                    rewritten(&copy, &[card::TAG_PROPERTY, card::SOURCE_PROPERTY], ""),
                ));
                changed_ids.insert(cid);
            }
            Tamper::DropSourceId => {
                group.push(classify(
                    &cid,
                    "orphan",
                    rewritten(&copy, &[card::SOURCE_PROPERTY], ""),
                ));
                changed_ids.insert(cid);
            }
        }
    }
    for k in 0..own_added {
        let oid = format!("people/o{k}");
        group.push(classify(&oid, "own", card_of(200 + k)));
        changed_ids.insert(oid);
    }
    let ledger = LedgerView::new(rows.clone());
    let user = User {
        id: "u1".into(),
        name: "u1@example.com".into(),
    };
    let snap = |entries: Vec<DestEntry>, scope: Option<Scope>| DestSnapshot {
        user: user.clone(),
        group: Some(GroupRef {
            id: "contactGroups/team".into(),
            name: "Team".into(),
            version: None,
        }),
        group_is_default: false,
        entries,
        scope,
        taken_uids: vec![],
    };
    let whole = plan::plan_destination(&cur, &snap(group.clone(), None), &job, &ledger);

    // The part the engine keeps: source ids that changed since `prev` (edited, new, gone,
    // unreadable), those changed contacts are copies of, and those of the ledger rows of the
    // contacts the delta names.
    let mut ids: BTreeSet<String> = prev
        .items
        .keys()
        .chain(cur.items.keys())
        .filter(|s| prev.items.get(*s).map(|i| &i.digest) != cur.items.get(*s).map(|i| &i.digest))
        .cloned()
        .collect();
    ids.extend(cur.unreadable.keys().cloned());
    for e in group.iter().filter(|e| changed_ids.contains(&e.id)) {
        if let DestKind::Copy {
            source: Some(s), ..
        } = &e.kind
        {
            ids.insert(s.clone());
        }
    }
    for r in &rows {
        if changed_ids.contains(r.contact_id()) {
            ids.insert(r.source_id().to_string());
        }
    }
    let part_rows: Vec<LedgerRow> = rows
        .iter()
        .filter(|r| ids.contains(r.source_id()))
        .cloned()
        .collect();
    let outside = rows.len() - part_rows.len();
    let entries: Vec<DestEntry> = group
        .iter()
        .filter(|e| {
            changed_ids.contains(&e.id)
                || matches!(&e.kind, DestKind::Copy { source: Some(s), .. } if ids.contains(s))
        })
        .cloned()
        .collect();
    let read = entries.len();
    let partial = plan::plan_destination(
        &cur,
        &snap(
            entries,
            Some(Scope {
                source_ids: ids.into_iter().collect(),
                outside,
            }),
        ),
        &job,
        &LedgerView::new(part_rows),
    );
    prop_assert_eq!(
        serde_json::to_value(&partial).unwrap(),
        serde_json::to_value(&whole).unwrap(),
        "{} of {} contacts read",
        read,
        group.len()
    );
    prop_assert_eq!(&partial.kept, &whole.kept);
    prop_assert_eq!(&partial.forget, &whole.forget);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_partial_plan_is_the_whole_plan(
        (before, after) in (0..14usize).prop_flat_map(|n| (
            proptest::collection::vec(proptest::option::weighted(0.85, any::<u8>()), n),
            proptest::collection::vec(now(), n),
        )),
        tampered in proptest::collection::vec(tamper(), 0..14),
        own_added in 0..3u8,
        limits in (0..4usize, prop_oneof![Just(0u8), 1..60u8]),
    ) {
        // Unchanged sources keep their seed: most of the destination is in sync.
        let after = after
            .into_iter()
            .zip(&before)
            .enumerate()
            .map(|(i, (n, b))| match (n, b) {
                (Now::Readable(_), Some(s)) if i % 3 != 0 => Now::Readable(*s),
                (n, _) => n,
            })
            .collect();
        check(before, after, tampered, own_added, limits)?;
    }
}
