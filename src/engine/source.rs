//! What the job's last run read of the source, and which source contacts changed since: a copy
//! written from that reading is known field by field without being read again.

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::Arc;

use crate::card;
use crate::plan::SourceSet;
use crate::store::Store;

/// A source contact as the job's last run read it (see `Store::source_contacts`).
#[derive(Debug)]
pub(super) struct PreviousSource {
    pub(super) digest: String,
    pub(super) name: String,
    /// Digest of each managed property (see `card::field_digests`).
    pub(super) fields: Vec<(Arc<str>, u64)>,
}

/// Which source contacts changed since the last run that saved what it read of the source
/// (see `Store::save_source_contacts`).
#[derive(Debug)]
pub(super) struct SourceDiff {
    /// The fingerprint of the source as that run read it (see `SourceSet::fingerprint`).
    pub(super) fingerprint: String,
    /// Source ids whose contact is not the same now: edited, gone, new, or unreadable. Sorted.
    pub(super) ids: BTreeSet<String>,
}

/// The source contacts the job's last run read that are not the same in `source` (edited, or
/// gone from it), and, when that run saved the whole source it read, which source ids changed
/// since. Rows whose field digests cannot be read are left out of the first: their copies are
/// then read again.
pub(super) fn previous_source(
    store: &Store,
    job: &str,
    source: &SourceSet,
) -> (HashMap<String, PreviousSource>, Option<SourceDiff>) {
    // Source ids the last run read that are still in the source, to find the new ones.
    let mut still: HashSet<&str> = HashSet::new();
    let rows = store.source_contacts(job, |id, digest| match source.items.get_key_value(id) {
        Some((k, i)) => {
            still.insert(k.as_str());
            i.digest != digest
        }
        None => true,
    });
    let fingerprint = store.source_fingerprint(job);
    let (rows, fingerprint) = match (rows, fingerprint) {
        (Ok(r), Ok(f)) => (r, f),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(
                job,
                "could not read what the last run saw of the source: {e}"
            );
            return (HashMap::new(), None);
        }
    };
    let since = fingerprint.map(|fingerprint| SourceDiff {
        fingerprint,
        ids: rows
            .iter()
            .map(|(id, ..)| id.clone())
            .chain(
                source
                    .items
                    .keys()
                    .filter(|k| !still.contains(k.as_str()))
                    .cloned(),
            )
            .chain(source.unreadable.keys().cloned())
            .collect(),
    });
    let previous = rows
        .into_iter()
        .filter_map(|(id, digest, name, fields)| {
            let fields = card::field_digests_from_text(&fields)?;
            Some((
                id,
                PreviousSource {
                    digest,
                    name,
                    fields,
                },
            ))
        })
        .collect();
    (previous, since)
}
