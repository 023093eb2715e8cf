//! The Grafana dashboard and the Prometheus alert rules under `deploy/` name only metrics
//! groupsync exports, with labels those metrics carry, and the dashboard is valid JSON.

use groupsync::metrics::render;
use groupsync::store::{Counts, Store};
use std::collections::{BTreeMap, BTreeSet};

/// Each metric family `render` writes, with its label names, from a state that has runs of
/// every kind.
fn exported() -> BTreeMap<String, BTreeSet<String>> {
    let s = Store::open_in_memory().unwrap();
    for outcome in ["ok", "failed", "stopped", "error", "invalid"] {
        let id = s.start_run("team", false).unwrap();
        let counts = Counts {
            created: 1,
            failed: 1,
            ..Default::default()
        };
        s.finish_run(id, outcome, counts, None).unwrap();
        s.record_calls(id, &[("people.connections.list", 2)])
            .unwrap();
    }
    let text = render(&s).unwrap();
    let mut families: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, rest) = line.split_once('{').unwrap_or((line, ""));
        let labels = families.entry(name.to_string()).or_default();
        for pair in rest.split(',') {
            if let Some((k, _)) = pair.split_once('=') {
                labels.insert(k.to_string());
            }
        }
    }
    families
}

/// The metric names in an expression text, and the label names used next to them.
fn used(text: &str) -> Vec<(String, Vec<String>)> {
    let metric = regex::Regex::new(r"groupsync_[a-z_]+(\{[^}]*\})?").unwrap();
    let label = regex::Regex::new(r"([a-z_]+)\s*(=~|!=|=)").unwrap();
    metric
        .find_iter(text)
        .map(|m| {
            let s = m.as_str();
            let (name, sel) = s.split_once('{').unwrap_or((s, ""));
            let labels = label.captures_iter(sel).map(|c| c[1].to_string()).collect();
            (name.to_string(), labels)
        })
        .collect()
}

fn check(file: &str, exprs: &str, families: &BTreeMap<String, BTreeSet<String>>) -> usize {
    let uses = used(exprs);
    for (name, labels) in &uses {
        let known = families
            .get(name)
            .unwrap_or_else(|| panic!("{file} uses {name}, which groupsync does not export"));
        for l in labels {
            assert!(known.contains(l), "{file}: {name} has no label {l}");
        }
    }
    uses.len()
}

#[test]
fn the_alert_rules_use_only_exported_metrics() {
    let families = exported();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/prometheus/groupsync-alerts.yml"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let exprs: String = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        exprs.lines().count(),
        text.matches("- alert:").count(),
        "one expr per alert"
    );
    assert!(check(path, &exprs, &families) >= 5);
    // Outcomes the rules match on are outcomes a run can have.
    for outcome in ["failed", "error", "invalid", "stopped"] {
        assert!(exprs.contains(outcome), "no rule for outcome {outcome}");
    }
}

#[test]
fn the_dashboard_is_json_and_uses_only_exported_metrics() {
    let families = exported();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/groupsync-dashboard.json"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let exprs: String = v["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join("\n");
    let n = check(path, &exprs, &families);
    // Every family groupsync exports has a panel.
    for family in families.keys() {
        assert!(exprs.contains(family.as_str()), "no panel shows {family}");
    }
    assert!(n >= families.len());
}
