//! Shards: the destinations of every job split over N processes that run side by side (systemd
//! instances, Kubernetes pods), each with its own state database, lock and share of the rate
//! limit. A destination belongs to one shard, by a hash of the provider's immutable user id that
//! is the same on every machine and release:
//!
//! ```text
//! key   = the first 8 bytes of SHA-256(user id, UTF-8), as a big-endian u64
//! shard = jump_consistent_hash(key, N)     (Lamping and Veach, 2014)
//! ```
//!
//! A jump hash moves as few destinations as can be when N changes: from 3 to 4 shards, a quarter
//! of them move to the new shard and none moves between the old ones. This module owns the
//! `I/N` value, the hash, and where a shard keeps its state and metrics; it must not decide what
//! a run does with a destination that is not its own (the engine does).

use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The most shards a job set may be split into.
pub const MAX_SHARDS: u32 = 10_000;

/// The environment variables a pod or a job gives its index in (`--shard-from-env`): an Indexed
/// Job's `JOB_COMPLETION_INDEX`, then `GROUPSYNC_SHARD_INDEX` (a StatefulSet exposes its pod
/// index label through the downward API under that name), then a `-<n>` at the end of
/// `HOSTNAME` (a StatefulSet pod's name).
pub const INDEX_VARS: [&str; 2] = ["JOB_COMPLETION_INDEX", "GROUPSYNC_SHARD_INDEX"];

/// The environment variable that gives the number of shards to `--shard-from-env`.
pub const COUNT_VAR: &str = "GROUPSYNC_SHARDS";

/// One shard of N: `index` in `0..count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = String;

    /// `I/N`, or `I-of-N` (a systemd instance name cannot hold a `/`), with
    /// `0 <= I < N <= 10000`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "shard {s:?}: write I/N, the shard's index from 0 to N-1 and the number of shards (e.g. 0/4, or 0-of-4)"
            )
        };
        let (i, n) = s
            .split_once('/')
            .or_else(|| s.split_once("-of-"))
            .ok_or_else(bad)?;
        let index: u32 = i.trim().parse().map_err(|_| bad())?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || count > MAX_SHARDS {
            return Err(format!(
                "shard {s:?}: the number of shards must be from 1 to {MAX_SHARDS}"
            ));
        }
        if index >= count {
            return Err(format!(
                "shard {s:?}: the index must be from 0 to {} (shards count from 0)",
                count - 1
            ));
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// Whether the destination with this immutable user id belongs to this shard.
    pub fn owns(&self, user_id: &str) -> bool {
        shard_of(user_id, self.count) == self.index
    }

    /// True for `0/1`: one shard holding everything, the same as no shard at all.
    pub fn is_whole(&self) -> bool {
        self.count == 1
    }

    /// What names this shard in file names: `I-of-N`.
    pub fn tag(&self) -> String {
        format!("{}-of-{}", self.index, self.count)
    }

    /// Where this shard keeps a file the configuration names once (the state database, the
    /// metrics textfile): `{shard}` in the path becomes `I-of-N`; without it, `state.db` becomes
    /// `state.shard-I-of-N.db`. Shard `0/1` keeps the path as configured.
    pub fn path(&self, configured: &Path) -> PathBuf {
        let text = configured.to_string_lossy();
        if text.contains("{shard}") {
            return PathBuf::from(text.replace("{shard}", &self.tag()));
        }
        if self.is_whole() {
            return configured.to_path_buf();
        }
        let stem = configured
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = match configured.extension() {
            Some(ext) => format!("{stem}.shard-{}.{}", self.tag(), ext.to_string_lossy()),
            None => format!("{stem}.shard-{}", self.tag()),
        };
        configured.with_file_name(name)
    }

    /// A client-side rate limit shared by N shards: each gets its Nth, at least 1.
    pub fn share(&self, per_minute: u32) -> u32 {
        (per_minute / self.count).max(1)
    }

    /// The shard a pod or an indexed job runs as: its index from the environment (see
    /// `INDEX_VARS`, then `HOSTNAME`), the number of shards from `GROUPSYNC_SHARDS`.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Shard, String> {
        let count = get(COUNT_VAR).ok_or_else(|| {
            format!("--shard-from-env: {COUNT_VAR} is not set (the number of shards)")
        })?;
        let index = INDEX_VARS
            .iter()
            // An empty value is unset (the downward API gives "" for a label a cluster lacks).
            .find_map(|v| get(v).filter(|i| !i.trim().is_empty()))
            .or_else(|| {
                let host = get("HOSTNAME")?;
                let (_, n) = host.rsplit_once('-')?;
                n.chars().all(|c| c.is_ascii_digit()).then(|| n.to_string())
            })
            .ok_or_else(|| {
                format!(
                    "--shard-from-env: no index in {} or {} (set by an Indexed Job, or by the downward API), nor at the end of HOSTNAME",
                    INDEX_VARS[0], INDEX_VARS[1]
                )
            })?;
        format!("{index}/{count}").parse()
    }
}

/// The state databases of the shards of `count` found next to the configured path (see
/// `Shard::path`), with their shards, in index order; `count` `None`: every shard file found,
/// of any count.
pub fn state_files(configured: &Path, count: Option<u32>) -> Vec<(Shard, PathBuf)> {
    // The configured path with `I-of-N` where a shard's name goes, split around it.
    let probe = Shard { index: 0, count: 2 }.path(configured);
    let text = probe.to_string_lossy();
    let Some((before, after)) = text.split_once("0-of-2") else {
        return vec![];
    };
    let (dir, prefix) = match before.rsplit_once('/') {
        Some((d, p)) => (
            PathBuf::from(if d.is_empty() { "/" } else { d }),
            p.to_string(),
        ),
        None => (PathBuf::from("."), before.to_string()),
    };
    let (suffix, rest) = match after.split_once('/') {
        Some((s, r)) => (s.to_string(), Some(r.to_string())),
        None => (after.to_string(), None),
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return vec![];
    };
    let mut found: Vec<(Shard, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let tag = name.strip_prefix(&prefix)?.strip_suffix(&suffix)?;
            let (i, n) = tag.split_once("-of-")?;
            let shard: Shard = format!("{i}/{n}").parse().ok()?;
            let path = match &rest {
                Some(r) => e.path().join(r),
                None => e.path(),
            };
            (count.is_none_or(|c| c == shard.count) && path.exists()).then_some((shard, path))
        })
        .collect();
    found.sort_by_key(|(s, _)| (s.count, s.index));
    found
}

/// The shard, of `count`, that a destination with this immutable user id belongs to.
pub fn shard_of(user_id: &str, count: u32) -> u32 {
    let digest = Sha256::digest(user_id.as_bytes());
    let mut key = [0u8; 8];
    key.copy_from_slice(&digest[..8]);
    jump(u64::from_be_bytes(key), count)
}

/// Jump consistent hash: the bucket of `key` among `buckets`, moving only `1/buckets` of the
/// keys when a bucket is added.
fn jump(mut key: u64, buckets: u32) -> u32 {
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fixed vectors, computed independently (Python's hashlib and the paper's loop): the hash
    /// must never change, or a new release would move destinations between shards.
    #[test]
    fn the_hash_is_the_documented_one() {
        let vectors: [(&str, [u32; 6]); 5] = [
            ("bob", [0, 1, 1, 1, 8, 620]),
            ("carol", [0, 1, 1, 1, 9, 510]),
            ("103847562910384756291", [0, 1, 1, 1, 6, 103]),
            ("00000000-0000-0000-0000-000000000001", [0, 1, 1, 1, 4, 509]),
            ("user0001@example.com", [0, 0, 2, 3, 3, 113]),
        ];
        for (id, want) in vectors {
            let got: Vec<u32> = [1, 2, 3, 4, 10, 1000]
                .iter()
                .map(|n| shard_of(id, *n))
                .collect();
            assert_eq!(got, want, "{id}");
        }
    }

    #[test]
    fn a_new_shard_takes_a_share_and_nothing_else_moves() {
        let ids: Vec<String> = (0..10_000).map(|i| format!("user{i:04}")).collect();
        let moved: Vec<&String> = ids
            .iter()
            .filter(|u| shard_of(u, 3) != shard_of(u, 4))
            .collect();
        assert_eq!(moved.len(), 2459);
        assert!(moved.iter().all(|u| shard_of(u, 4) == 3));
        let sizes: Vec<usize> = (0..4)
            .map(|k| ids.iter().filter(|u| shard_of(u, 4) == k).count())
            .collect();
        assert_eq!(sizes, [2487, 2549, 2505, 2459]);
    }

    #[test]
    fn a_shard_is_written_i_slash_n() {
        assert_eq!("2/4".parse::<Shard>(), Ok(Shard { index: 2, count: 4 }));
        assert_eq!("2-of-4".parse::<Shard>(), Ok(Shard { index: 2, count: 4 }));
        for bad in ["4/4", "1/0", "x/2", "2", "-1/3", "0/10001"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        assert!("4/4".parse::<Shard>().unwrap_err().contains("from 0 to 3"));
    }

    #[test]
    fn each_shard_keeps_its_own_files() {
        let s = Shard { index: 1, count: 4 };
        assert_eq!(
            s.path(Path::new("/var/lib/g/state.db")),
            Path::new("/var/lib/g/state.shard-1-of-4.db")
        );
        assert_eq!(
            s.path(Path::new("/var/lib/g/{shard}/state.db")),
            Path::new("/var/lib/g/1-of-4/state.db")
        );
        assert_eq!(s.path(Path::new("state")), Path::new("state.shard-1-of-4"));
        let whole = Shard { index: 0, count: 1 };
        assert_eq!(
            whole.path(Path::new("/x/state.db")),
            Path::new("/x/state.db")
        );
        assert_eq!(s.share(3000), 750);
        assert_eq!(Shard { index: 0, count: 7 }.share(3), 1);
    }

    #[test]
    fn the_state_files_of_every_shard_are_found() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "state.db",
            "state.shard-0-of-2.db",
            "state.shard-1-of-2.db",
            "state.shard-2-of-3.db",
            "state.shard-x-of-2.db",
        ] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let configured = dir.path().join("state.db");
        let two: Vec<String> = state_files(&configured, Some(2))
            .iter()
            .map(|(s, _)| s.to_string())
            .collect();
        assert_eq!(two, ["0/2", "1/2"]);
        assert_eq!(state_files(&configured, None).len(), 3);
        // `{shard}` as a folder.
        for tag in ["0-of-3", "1-of-3"] {
            std::fs::create_dir_all(dir.path().join(tag)).unwrap();
            std::fs::write(dir.path().join(tag).join("s.db"), "").unwrap();
        }
        let found = state_files(&dir.path().join("{shard}/s.db"), None);
        assert_eq!(found.len(), 2);
        assert_eq!(found[1].1, dir.path().join("1-of-3/s.db"));
    }

    #[test]
    fn a_pod_finds_its_shard_in_its_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let indexed = env(&[
            ("GROUPSYNC_SHARDS", "4"),
            ("JOB_COMPLETION_INDEX", "3"),
            ("HOSTNAME", "x-1"),
        ]);
        assert_eq!(Shard::from_env(indexed), Ok(Shard { index: 3, count: 4 }));
        let statefulset = env(&[
            ("GROUPSYNC_SHARDS", "3"),
            ("GROUPSYNC_SHARD_INDEX", ""),
            ("HOSTNAME", "groupsync-2"),
        ]);
        assert_eq!(
            Shard::from_env(statefulset),
            Ok(Shard { index: 2, count: 3 })
        );
        let downward = env(&[
            ("GROUPSYNC_SHARDS", "3"),
            ("GROUPSYNC_SHARD_INDEX", "1"),
            ("HOSTNAME", "groupsync-2"),
        ]);
        assert_eq!(Shard::from_env(downward), Ok(Shard { index: 1, count: 3 }));
        assert!(
            Shard::from_env(env(&[("HOSTNAME", "g-1")]))
                .unwrap_err()
                .contains("GROUPSYNC_SHARDS")
        );
        assert!(Shard::from_env(env(&[("GROUPSYNC_SHARDS", "2"), ("HOSTNAME", "box")])).is_err());
        assert!(Shard::from_env(env(&[("GROUPSYNC_SHARDS", "2"), ("HOSTNAME", "g-5")])).is_err());
    }
}
