//! Which jobs feed which: a job copies into its destinations' `target_group`, and a job whose
//! source user is one of those destinations, reading a group of that name, copies those copies
//! on. A chain of such jobs is fine (A → B, B's group → C: C gets A's contacts through B). A
//! cycle is not: copies would be copied back around forever, so a set of jobs with a cycle is
//! refused, naming the jobs, at `job new`, `job add-dest`, `check`, `run` and `plan`.
//!
//! Users are compared by name, without letter case; `domain:` sets by their users' domain;
//! `group:` and `ou:` sets by their members as the provider lists them now (`expand_needed`
//! reads only the sets of jobs whose target group some job reads). What names alone cannot see
//! (an alias, a set that changes after the check) is caught at run time: a contact that came
//! through a job is never copied by it again (`card::came_through`).
//!
//! This module owns the graph; it must not decide what a run does.

use std::collections::{BTreeMap, BTreeSet};

use crate::backend::{Backend, BackendError};
use crate::engine::is_dynamic_set;
use crate::job::Job;

/// A job as the graph sees it.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub source: String,
    pub group: String,
    pub target_group: String,
    /// Destinations as written (users and dynamic sets), exclusions not yet applied.
    pub destinations: Vec<String>,
    pub exclude: Vec<String>,
}

impl Node {
    pub fn of(job: &Job) -> Node {
        Node {
            name: job.name.clone(),
            source: job.source.clone(),
            group: job.group.clone(),
            target_group: job.target_group.clone(),
            destinations: job.destinations.clone(),
            exclude: job.exclude.clone(),
        }
    }

    /// True when `user` may be one of this job's destinations. `members` holds the `group:`
    /// and `ou:` sets read from the provider; one not there is taken as holding no one.
    fn reaches(&self, user: &str, members: &BTreeMap<String, BTreeSet<String>>) -> bool {
        let user = user.to_lowercase();
        let holds = |entry: &String| {
            if let Some(domain) = entry.strip_prefix("domain:") {
                user.rsplit_once('@')
                    .is_some_and(|(_, d)| d.eq_ignore_ascii_case(domain))
            } else if is_dynamic_set(entry) {
                members.get(entry).is_some_and(|m| m.contains(&user))
            } else {
                entry.to_lowercase() == user
            }
        };
        user != self.source.to_lowercase()
            && self.destinations.iter().any(holds)
            && !self.exclude.iter().any(holds)
    }
}

/// A cycle of jobs, in the order they feed each other (the last feeds the first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cycle(pub Vec<String>);

impl Cycle {
    /// What is wrong and how to fix it, naming the jobs, users and groups.
    pub fn describe(&self, nodes: &[Node]) -> String {
        let node = |n: &str| nodes.iter().find(|j| j.name == n);
        let mut steps = vec![];
        for (i, name) in self.0.iter().enumerate() {
            let next = &self.0[(i + 1) % self.0.len()];
            if let (Some(a), Some(b)) = (node(name), node(next)) {
                steps.push(format!(
                    "job {name} copies into {}'s {:?}, which job {next} reads",
                    b.source, a.target_group
                ));
            }
        }
        format!(
            "jobs {} feed each other ({}): their copies would be copied back and forth forever, so they are refused. Give one of them another target_group, or take the destination out",
            self.0.join(", "),
            steps.join("; ")
        )
    }

    pub fn contains(&self, job: &str) -> bool {
        self.0.iter().any(|j| j == job)
    }
}

/// The jobs `job` feeds: those whose source user it may copy to, in the group they read.
fn fed_by<'a>(
    job: &Node,
    nodes: &'a [Node],
    members: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<&'a Node> {
    nodes
        .iter()
        .filter(|k| k.name != job.name && k.group == job.target_group)
        .filter(|k| job.reaches(&k.source, members))
        .collect()
}

/// Every cycle among the jobs, each once (as found from its job first in name order).
pub fn cycles(nodes: &[Node], members: &BTreeMap<String, BTreeSet<String>>) -> Vec<Cycle> {
    let mut order: Vec<&Node> = nodes.iter().collect();
    order.sort_by(|a, b| a.name.cmp(&b.name));
    let mut found: Vec<Cycle> = vec![];
    let mut in_cycle: BTreeSet<String> = BTreeSet::new();
    for start in order {
        if in_cycle.contains(&start.name) {
            continue;
        }
        // Depth first from `start`, remembering the path, until it comes back to `start`.
        let mut path: Vec<&Node> = vec![start];
        let mut next: Vec<Vec<&Node>> = vec![fed_by(start, nodes, members)];
        let mut seen: BTreeSet<&str> = BTreeSet::from([start.name.as_str()]);
        while let Some(options) = next.last_mut() {
            let Some(k) = options.pop() else {
                next.pop();
                path.pop();
                continue;
            };
            if k.name == start.name {
                let names: Vec<String> = path.iter().map(|n| n.name.clone()).collect();
                in_cycle.extend(names.iter().cloned());
                found.push(Cycle(names));
                break;
            }
            if seen.insert(k.name.as_str()) {
                path.push(k);
                next.push(fed_by(k, nodes, members));
            }
        }
    }
    found
}

/// The `group:` and `ou:` sets read for the graph, and those that could not be read (taken as
/// holding no one: a run of their job reads them again, and stops if it cannot).
pub type Members = BTreeMap<String, BTreeSet<String>>;

/// Reads the `group:` and `ou:` sets the graph needs: those of jobs whose target group some
/// other job reads (no other set can close a cycle).
pub async fn expand_needed<B: Backend>(
    backend: &B,
    nodes: &[Node],
) -> (Members, Vec<(String, BackendError)>) {
    let mut members = BTreeMap::new();
    let mut failed = vec![];
    for j in nodes {
        let feeds_some = nodes
            .iter()
            .any(|k| k.name != j.name && k.group == j.target_group);
        if !feeds_some {
            continue;
        }
        for set in j.destinations.iter().chain(&j.exclude) {
            if !is_dynamic_set(set) || set.starts_with("domain:") || members.contains_key(set) {
                continue;
            }
            match backend.expand_set(set).await {
                Ok(users) => {
                    members.insert(
                        set.clone(),
                        users.into_iter().map(|u| u.to_lowercase()).collect(),
                    );
                }
                Err(e) => failed.push((set.clone(), e)),
            }
        }
    }
    (members, failed)
}

/// The cycles among `jobs` (every enabled job, with `jobs` given in place of those of the same
/// name), reading the sets they need.
pub async fn job_cycles<B: Backend>(
    backend: &B,
    all: impl IntoIterator<Item = Job>,
    jobs: &[Job],
) -> (Vec<Node>, Vec<Cycle>) {
    let mut nodes: Vec<Node> = all
        .into_iter()
        .filter(|j| j.enabled && !jobs.iter().any(|k| k.name == j.name))
        .map(|j| Node::of(&j))
        .collect();
    nodes.extend(jobs.iter().map(Node::of));
    let (members, failed) = expand_needed(backend, &nodes).await;
    for (set, e) in failed {
        tracing::warn!("{set}: {e}; its members are not known to close a cycle of jobs");
    }
    let found = cycles(&nodes, &members);
    (nodes, found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, source: &str, group: &str, target: &str, dests: &[&str]) -> Node {
        Node {
            name: name.into(),
            source: source.into(),
            group: group.into(),
            target_group: target.into(),
            destinations: dests.iter().map(|d| d.to_string()).collect(),
            exclude: vec![],
        }
    }

    #[test]
    fn jobs_that_feed_each_other_are_a_cycle_and_a_chain_is_not() {
        let none = BTreeMap::new();
        // alice/Team → bob, bob/Team → alice.
        let two = [
            node("a", "alice", "Team", "Team", &["bob"]),
            node("b", "Bob", "Team", "Team", &["ALICE", "carol"]),
        ];
        let c = cycles(&two, &none);
        assert_eq!(c, vec![Cycle(vec!["a".into(), "b".into()])]);
        let text = c[0].describe(&two);
        assert!(text.contains("jobs a, b feed each other"), "{text}");
        assert!(text.contains("target_group"), "{text}");
        // A chain: a → bob's "Team", b reads bob's "Team" → carol's "Other". No cycle.
        let chain = [
            node("a", "alice", "Team", "Team", &["bob"]),
            node("b", "bob", "Team", "Other", &["carol", "alice"]),
        ];
        assert!(cycles(&chain, &none).is_empty());
        // Three jobs around; one more job hanging off the cycle is not in it.
        let three = [
            node("x", "u1", "G", "H", &["u2"]),
            node("y", "u2", "H", "I", &["u3"]),
            node("z", "u3", "I", "G", &["u1"]),
            node("w", "u3", "I", "J", &["u4"]),
        ];
        assert_eq!(
            cycles(&three, &none),
            vec![Cycle(vec!["x".into(), "y".into(), "z".into()])]
        );
    }

    #[test]
    fn dynamic_sets_close_cycles_by_their_members() {
        let mut a = node(
            "a",
            "alice@example.com",
            "Team",
            "Team",
            &["domain:example.com"],
        );
        let b = node(
            "b",
            "bob@example.com",
            "Team",
            "Team",
            &["group:all@example.com"],
        );
        let mut members = BTreeMap::new();
        assert!(cycles(&[a.clone(), b.clone()], &members).is_empty());
        members.insert(
            "group:all@example.com".to_string(),
            BTreeSet::from(["alice@example.com".to_string()]),
        );
        assert_eq!(cycles(&[a.clone(), b.clone()], &members).len(), 1);
        // Excluding bob breaks it.
        a.exclude = vec!["bob@example.com".into()];
        assert!(cycles(&[a, b], &members).is_empty());
    }
}
