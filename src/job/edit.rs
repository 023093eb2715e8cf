//! Writing job files: a new job's text with a fresh tag, destinations added or removed with
//! `toml_edit` (comments and layout kept with their values), and the atomic write.
//!
//! It must not check a job (`parse` does, before anything is written).

use std::collections::BTreeSet;
use std::path::Path;

/// Makes a fresh tag, different from every tag in `taken`.
pub fn fresh_tag(taken: &BTreeSet<String>) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut n = 0u64;
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.write_u64(n);
        h.write_u32(std::process::id());
        let tag = format!("gSync{:010}", h.finish() % 10_000_000_000);
        if !taken.contains(&tag) {
            return tag;
        }
        n += 1;
    }
}

fn toml_string(s: &str) -> String {
    toml_edit::Value::from(s).to_string().trim().to_string()
}

fn toml_array(items: &[String]) -> String {
    let parts: Vec<String> = items.iter().map(|s| toml_string(s)).collect();
    format!("[{}]", parts.join(", "))
}

/// The text of a new job file.
pub fn new_job_text(
    tag: &str,
    source: &str,
    group: &str,
    destinations: &[String],
    target_group: Option<&str>,
) -> String {
    let mut t = String::new();
    t.push_str("# groupsync job. Edit freely; `groupsync job add-dest/remove-dest` keep comments and layout.\n");
    t.push_str("# The tag marks every copy this job makes. It is assigned once and must never be edited.\n");
    t.push_str(&format!("tag = {}\n\n", toml_string(tag)));
    t.push_str("# The user whose contact group is copied, and the group.\n");
    t.push_str(&format!(
        "source = {}\ngroup = {}\n",
        toml_string(source),
        toml_string(group)
    ));
    if let Some(tg) = target_group {
        t.push_str(&format!("# Name of the group at each destination (default: the same as `group`).\ntarget_group = {}\n", toml_string(tg)));
    }
    t.push_str("\n# Users who receive a copy of the group, and users never to sync.\n");
    t.push_str(&format!(
        "destinations = {}\nexclude = []\n\n",
        toml_array(destinations)
    ));
    t.push_str("enabled = true\n");
    t.push_str("# When `groupsync serve` runs this job (cron, in `timezone`).\nschedule = \"0 3 * * *\"\ntimezone = \"UTC\"\n");
    t
}

/// In a one-value-per-line array, the comment after a value (`"bob", # sales`) is stored by
/// toml_edit at the start of the *next* value's prefix (or the array's trailing text). These
/// helpers keep such a comment with its value when values are added or removed.
fn upto_last_newline(s: &str) -> &str {
    s.rfind('\n').map_or("", |i| &s[..=i])
}

fn after_first_newline(s: &str) -> Option<&str> {
    s.find('\n').map(|i| &s[i + 1..])
}

fn after_last_newline(s: &str) -> &str {
    s.rfind('\n').map_or(s, |i| &s[i + 1..])
}

fn prefix_of(v: &toml_edit::Value) -> String {
    v.decor()
        .prefix()
        .and_then(|p| p.as_str())
        .unwrap_or("")
        .to_string()
}

/// Adds users to a job file's `destinations`, keeping its layout and comments.
pub fn add_destinations(text: &str, users: &[String]) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("{e}"))?;
    let item = doc
        .entry("destinations")
        .or_insert(toml_edit::value(toml_edit::Array::new()));
    let arr = item
        .as_array_mut()
        .ok_or("`destinations` is not an array")?;
    for u in users {
        if arr.iter().any(|v| v.as_str() == Some(u)) {
            continue;
        }
        let last_prefix = arr.iter().last().map(prefix_of).unwrap_or_default();
        let mut v = toml_edit::Value::from(u.as_str());
        if last_prefix.contains('\n') {
            // One per line: the new value takes the last line's place, its comment stays above.
            let indent = after_last_newline(&last_prefix).to_string();
            let trailing = arr.trailing().as_str().unwrap_or("").to_string();
            let head = if trailing.contains('\n') {
                upto_last_newline(&trailing).to_string()
            } else {
                "\n".to_string()
            };
            v.decor_mut().set_prefix(format!("{head}{indent}"));
            arr.set_trailing(format!("\n{}", after_last_newline(&trailing)));
            arr.set_trailing_comma(true);
        } else if !arr.is_empty() {
            v.decor_mut().set_prefix(" ");
        }
        arr.push_formatted(v);
    }
    Ok(doc.to_string())
}

/// Removes users from a job file's `destinations`, keeping its layout and the comments of the
/// values that stay.
pub fn remove_destinations(text: &str, users: &[String]) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("{e}"))?;
    let Some(arr) = doc.get_mut("destinations").and_then(|i| i.as_array_mut()) else {
        return Err("`destinations` is not an array".into());
    };
    let doomed: Vec<usize> = arr
        .iter()
        .enumerate()
        .filter(|(_, v)| v.as_str().is_some_and(|s| users.iter().any(|u| u == s)))
        .map(|(i, _)| i)
        .collect();
    for &i in doomed.iter().rev() {
        let prefix = arr.get(i).map(prefix_of).unwrap_or_default();
        arr.remove(i);
        if let Some(next) = arr.get_mut(i) {
            let next_prefix = prefix_of(next);
            let joined = match after_first_newline(&next_prefix) {
                Some(rest) if prefix.contains('\n') => {
                    format!("{}{rest}", upto_last_newline(&prefix))
                }
                _ => prefix,
            };
            next.decor_mut()
                .set_prefix(if i == 0 && !joined.contains('\n') {
                    joined.trim_start().to_string()
                } else {
                    joined
                });
        } else {
            let trailing = arr.trailing().as_str().unwrap_or("").to_string();
            if prefix.contains('\n') {
                let rest = after_first_newline(&trailing).unwrap_or(&trailing);
                arr.set_trailing(format!("{}{rest}", upto_last_newline(&prefix)));
            }
            if arr.is_empty() {
                arr.set_trailing_comma(false);
            }
        }
    }
    Ok(doc.to_string())
}

/// Writes a file atomically (temporary file + rename) in its own folder.
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("job"),
        std::process::id()
    ));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
