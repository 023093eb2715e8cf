//! The Kubernetes manifests under `deploy/kubernetes/` parse, carry what running shards side by
//! side needs (the shard count equal to the pods, the index from the environment, a state per
//! shard, no two pods for one index, a hardened pod), their config and job file are ones
//! groupsync accepts, and each pod's environment gives it its own shard.

use serde_norway::Value;
use std::path::{Path, PathBuf};

use groupsync::shard::Shard;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

/// Every document of a manifest file.
fn docs(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(dir().join(file)).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{file}: {e}")))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// The one document of this kind in a file.
fn one(file: &str, kind: &str) -> Value {
    let mut found: Vec<Value> = docs(file)
        .into_iter()
        .filter(|d| d["kind"] == kind)
        .collect();
    assert_eq!(found.len(), 1, "{file}: one {kind}");
    found.remove(0)
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v:?}"))
}

/// The container named `groupsync` of a pod spec.
fn container(pod: &Value) -> &Value {
    pod["containers"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "groupsync")
        .expect("a container named groupsync")
}

/// A container's plain environment variables (name, value).
fn env(c: &Value) -> Vec<(String, Option<String>)> {
    c["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| {
            (
                s(&e["name"]).to_string(),
                e["value"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// The pod and every container run as a non-root user, read-only, with no privilege to gain.
fn assert_hardened(what: &str, pod: &Value) {
    let sc = &pod["securityContext"];
    assert_eq!(sc["runAsNonRoot"], Value::Bool(true), "{what}");
    assert_ne!(n(&sc["runAsUser"]), 0, "{what}");
    assert_eq!(s(&sc["seccompProfile"]["type"]), "RuntimeDefault", "{what}");
    assert_eq!(
        pod["automountServiceAccountToken"],
        Value::Bool(false),
        "{what}"
    );
    let all = pod["containers"]
        .as_sequence()
        .unwrap()
        .iter()
        .chain(pod["initContainers"].as_sequence().into_iter().flatten());
    for c in all {
        let csc = &c["securityContext"];
        let name = s(&c["name"]);
        assert_eq!(
            csc["readOnlyRootFilesystem"],
            Value::Bool(true),
            "{what} {name}"
        );
        assert_eq!(
            csc["allowPrivilegeEscalation"],
            Value::Bool(false),
            "{what} {name}"
        );
        assert_eq!(csc["capabilities"]["drop"][0], "ALL", "{what} {name}");
    }
}

/// The shard count a container is given, checked to be there once.
fn shards_env(c: &Value) -> u32 {
    let e = env(c);
    let v: Vec<&Option<String>> = e
        .iter()
        .filter(|(k, _)| k == "GROUPSYNC_SHARDS")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(v.len(), 1, "GROUPSYNC_SHARDS once");
    v[0].as_deref().unwrap().parse().unwrap()
}

#[test]
fn the_statefulset_runs_one_serve_per_shard_with_a_state_of_its_own() {
    let sts = one("statefulset.yaml", "StatefulSet");
    let spec = &sts["spec"];
    let pod = &spec["template"]["spec"];
    let c = container(pod);
    assert_eq!(c["args"][0], "serve");
    assert_eq!(c["args"][1], "--shard-from-env");
    let replicas = n(&spec["replicas"]) as u32;
    assert_eq!(shards_env(c), replicas, "GROUPSYNC_SHARDS equals replicas");
    assert_eq!(s(&spec["podManagementPolicy"]), "Parallel");
    // The index from the downward API: the pod-index label.
    let index = c["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "GROUPSYNC_SHARD_INDEX")
        .expect("GROUPSYNC_SHARD_INDEX");
    assert_eq!(
        s(&index["valueFrom"]["fieldRef"]["fieldPath"]),
        "metadata.labels['apps.kubernetes.io/pod-index']"
    );
    // A volume per pod, mounted where the config puts the state.
    let claim = s(&spec["volumeClaimTemplates"][0]["metadata"]["name"]);
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m["name"] == claim && m["mountPath"] == "/var/lib/groupsync")
    );
    assert_hardened("statefulset", pod);
    // Each pod's environment gives it its own shard: the label, or else its name.
    let seen: Vec<Shard> = (0..replicas)
        .map(|i| {
            let index = i.to_string();
            let host = format!("{}-{i}", s(&sts["metadata"]["name"]));
            Shard::from_env(|k| match k {
                "GROUPSYNC_SHARDS" => Some(replicas.to_string()),
                "GROUPSYNC_SHARD_INDEX" => Some(index.clone()),
                "HOSTNAME" => Some(host.clone()),
                _ => None,
            })
            .unwrap()
        })
        .collect();
    for (i, shard) in seen.iter().enumerate() {
        assert_eq!(
            *shard,
            Shard {
                index: i as u32,
                count: replicas
            }
        );
    }
}

#[test]
fn the_cronjob_runs_an_indexed_job_one_pod_per_shard_never_two() {
    let cron = one("cronjob.yaml", "CronJob");
    assert_eq!(s(&cron["spec"]["concurrencyPolicy"]), "Forbid");
    let job = &cron["spec"]["jobTemplate"]["spec"];
    assert_eq!(s(&job["completionMode"]), "Indexed");
    assert_eq!(s(&job["podReplacementPolicy"]), "Failed");
    assert!(n(&job["backoffLimitPerIndex"]) >= 1);
    let completions = n(&job["completions"]) as u32;
    assert_eq!(n(&job["parallelism"]) as u32, completions);
    let pod = &job["template"]["spec"];
    assert_eq!(s(&pod["restartPolicy"]), "Never");
    let c = container(pod);
    assert_eq!(c["args"][0], "run");
    assert_eq!(c["args"][1], "--shard-from-env");
    assert_eq!(
        shards_env(c),
        completions,
        "GROUPSYNC_SHARDS equals completions"
    );
    assert_hardened("cronjob", pod);
    // The shared volume holds each shard's own state file.
    let pvc = one("cronjob.yaml", "PersistentVolumeClaim");
    let claim = s(&pvc["metadata"]["name"]);
    assert!(
        pod["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|v| v["persistentVolumeClaim"]["claimName"] == claim)
    );
    for i in 0..completions {
        let index = i.to_string();
        let shard = Shard::from_env(|k| match k {
            "GROUPSYNC_SHARDS" => Some(completions.to_string()),
            "JOB_COMPLETION_INDEX" => Some(index.clone()),
            _ => None,
        })
        .unwrap();
        assert_eq!(
            shard,
            Shard {
                index: i,
                count: completions
            }
        );
        assert_eq!(
            shard.path(Path::new("/var/lib/groupsync/state.db")),
            Path::new(&format!(
                "/var/lib/groupsync/state.shard-{i}-of-{completions}.db"
            ))
        );
    }
}

#[test]
fn the_configmap_holds_a_config_and_a_job_groupsync_accepts() {
    let cm = one("configmap.yaml", "ConfigMap");
    let config = s(&cm["data"]["groupsync.toml"]);
    let parsed =
        groupsync::config::Config::parse(Path::new("/etc/groupsync/groupsync.toml"), config)
            .unwrap_or_else(|e| panic!("configmap groupsync.toml: {e}"));
    assert_eq!(parsed.state, Path::new("/var/lib/groupsync/state.db"));
    let jobs: Vec<(String, String)> = cm["data"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| (s(k).to_string(), s(v).to_string()))
        .filter(|(k, _)| k != "groupsync.toml")
        .collect();
    assert!(!jobs.is_empty());
    for (name, text) in jobs {
        groupsync::job::parse(&Path::new("/etc/groupsync/jobs").join(&name), &text)
            .unwrap_or_else(|e| panic!("configmap {name}: {e}"));
    }
    // Mounted where GROUPSYNC_CONFIG says, the job files under jobs/.
    let sts = one("statefulset.yaml", "StatefulSet");
    let c = container(&sts["spec"]["template"]["spec"]);
    let config_env = env(c)
        .into_iter()
        .find(|(k, _)| k == "GROUPSYNC_CONFIG")
        .unwrap()
        .1
        .unwrap();
    assert_eq!(config_env, "/etc/groupsync/groupsync.toml");
    // The secret is a placeholder, never a key.
    let secret = one("secret.yaml", "Secret");
    for (_, v) in secret["stringData"].as_mapping().unwrap() {
        assert!(!s(v).contains("PRIVATE KEY"), "secret.yaml holds a key");
    }
}
