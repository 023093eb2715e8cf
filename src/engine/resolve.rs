//! The destinations of a job: plain names as written and the members of its dynamic sets
//! (`group:`, `ou:`, `domain:`) read now, exclusions applied.

use std::collections::BTreeSet;

use crate::backend::Backend;

use super::JobRun;
use super::error::JobError;

/// The prefixes of dynamic destination sets.
pub(super) const DYNAMIC_PREFIXES: [&str; 3] = ["group:", "ou:", "domain:"];

/// True when a destination entry is a dynamic set rather than a user.
pub fn is_dynamic_set(entry: &str) -> bool {
    DYNAMIC_PREFIXES.iter().any(|p| entry.starts_with(p))
}

/// Checks the form of a dynamic set entry (`group:<address>`, `ou:/<path>`, `domain:<name>`);
/// a plain user name passes.
pub fn check_dynamic_set(entry: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("dynamic destination {entry:?}: {why}"));
    if let Some(g) = entry.strip_prefix("group:") {
        if !g.contains('@') || g.trim() != g {
            return bad("write group:<group address>, e.g. group:sales@example.com");
        }
    } else if let Some(ou) = entry.strip_prefix("ou:") {
        if !ou.starts_with('/') {
            return bad("write ou:<org unit path>, starting with /, e.g. ou:/Sales");
        }
    } else if let Some(d) = entry.strip_prefix("domain:")
        && (!d.contains('.') || d.contains('@') || d.trim() != d)
    {
        return bad("write domain:<domain name>, e.g. domain:example.com");
    }
    Ok(())
}

/// The job's destination users: plain names as written, then the members of its dynamic sets
/// (read now), without exclusions (users or sets) and without repeats; and each dynamic set with
/// its number of members. A set that cannot be read stops the run: it is never taken as empty.
pub async fn destination_names<B: Backend>(
    backend: &B,
    job: &JobRun,
) -> Result<(Vec<String>, Vec<(String, usize)>), JobError> {
    let mut excluded: BTreeSet<String> = BTreeSet::new();
    for e in &job.exclude {
        if is_dynamic_set(e) {
            let members = backend
                .expand_set(e)
                .await
                .map_err(|source| JobError::Destinations {
                    set: e.clone(),
                    source,
                })?;
            excluded.extend(members.into_iter().map(|m| m.to_lowercase()));
        } else {
            excluded.insert(e.to_lowercase());
        }
    }
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut names = vec![];
    let mut push = |n: String, names: &mut Vec<String>| {
        let key = n.to_lowercase();
        if key != job.source.to_lowercase() && !excluded.contains(&key) && seen.insert(key) {
            names.push(n);
        }
    };
    for d in job.destinations.iter().filter(|d| !is_dynamic_set(d)) {
        push(d.clone(), &mut names);
    }
    let mut sets = vec![];
    for d in job.destinations.iter().filter(|d| is_dynamic_set(d)) {
        let mut members = backend
            .expand_set(d)
            .await
            .map_err(|source| JobError::Destinations {
                set: d.clone(),
                source,
            })?;
        sets.push((d.clone(), members.len()));
        members.sort();
        for m in members {
            push(m, &mut names);
        }
    }
    Ok((names, sets))
}
