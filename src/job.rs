//! Job files: one `<jobs_dir>/<name>.toml` per job. This module parses and checks them (every
//! error names file, line and column), creates new ones, and edits them with `toml_edit` so that
//! comments and layout survive. It must not talk to the backend: checks that need the provider
//! (does this user exist?) are the commands' job.

use serde::Deserialize;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use toml::Spanned;

use crate::card::{ContactFilter, FieldSelection};
use crate::config::ConfigError;
use crate::engine::JobRun;
use crate::plan::{JobSpec, Limits, is_tag};
use crate::schedule::Schedule;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    tag: Spanned<String>,
    source: Spanned<String>,
    group: Spanned<String>,
    #[serde(default)]
    destinations: Vec<Spanned<String>>,
    #[serde(default)]
    exclude: Vec<Spanned<String>>,
    target_group: Option<Spanned<String>>,
    #[serde(default = "yes")]
    enabled: bool,
    fields: Option<Vec<Spanned<String>>>,
    filter: Option<RawFilter>,
    limits: Option<RawLimits>,
    schedule: Option<Spanned<String>>,
    timezone: Option<Spanned<String>>,
    window: Option<Spanned<String>>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilter {
    email: Option<Spanned<String>>,
    name: Option<Spanned<String>>,
    organization: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_delete: Option<usize>,
    max_delete_percent: Option<Spanned<u32>>,
}

/// A checked job file.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub path: PathBuf,
    pub tag: String,
    pub source: String,
    pub group: String,
    pub target_group: String,
    /// As written, in order.
    pub destinations: Vec<String>,
    pub exclude: Vec<String>,
    pub enabled: bool,
    pub fields: Option<Vec<String>>,
    pub filter: ContactFilter,
    pub filter_text: Vec<(String, String)>,
    pub limits: Limits,
    pub schedule: Option<String>,
    pub timezone: Option<String>,
    pub window: Option<String>,
}

impl Job {
    /// Destinations with exclusions applied.
    pub fn effective_destinations(&self) -> Vec<String> {
        let ex: BTreeSet<&str> = self.exclude.iter().map(String::as_str).collect();
        self.destinations
            .iter()
            .filter(|d| !ex.contains(d.as_str()))
            .cloned()
            .collect()
    }

    /// When `groupsync serve` runs this job (checked when the file was parsed).
    pub fn schedule(&self) -> Schedule {
        Schedule::new(
            self.schedule.as_deref(),
            self.timezone.as_deref(),
            self.window.as_deref(),
        )
        .expect("checked at parse time")
    }

    /// What the engine needs to run this job.
    pub fn to_run(&self) -> JobRun {
        JobRun {
            spec: JobSpec {
                name: self.name.clone(),
                tag: self.tag.clone(),
                target_group: self.target_group.clone(),
                fields: FieldSelection::from_list(self.fields.as_deref()),
                filter: self.filter.clone(),
                limits: self.limits,
            },
            source: self.source.clone(),
            group: self.group.clone(),
            destinations: self.effective_destinations(),
            exclude: self.exclude.clone(),
        }
    }
}

/// Checks a job name: letters, digits, `.`, `_`, `-`, not starting with `.` or `-`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !name.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid job name {name:?}: use letters, digits, '.', '_' and '-' (not first)"
        ))
    }
}

/// The file of a job.
pub fn job_path(jobs_dir: &Path, name: &str) -> PathBuf {
    jobs_dir.join(format!("{name}.toml"))
}

/// Parses and checks a job file's text.
pub fn parse(path: &Path, text: &str) -> Result<Job, ConfigError> {
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    check_name(&name).map_err(|m| ConfigError::file(path, m))?;
    let raw: RawJob = toml::from_str(text).map_err(|e| ConfigError::from_toml(path, text, &e))?;
    let at = At { path, text };
    at.check_names(&raw)?;
    at.check_destinations(&raw)?;
    let (filter, filter_text) = at.filter(raw.filter.as_ref())?;
    let limits = at.limits(raw.limits.as_ref())?;
    let fields = at.fields(raw.fields.as_deref())?;
    at.check_schedule(&raw)?;
    Ok(Job {
        name,
        path: path.to_path_buf(),
        tag: raw.tag.into_inner(),
        target_group: raw
            .target_group
            .map(Spanned::into_inner)
            .unwrap_or_else(|| raw.group.get_ref().clone()),
        source: raw.source.into_inner(),
        group: raw.group.into_inner(),
        destinations: raw
            .destinations
            .into_iter()
            .map(Spanned::into_inner)
            .collect(),
        exclude: raw.exclude.into_iter().map(Spanned::into_inner).collect(),
        enabled: raw.enabled,
        fields,
        filter,
        filter_text,
        limits,
        schedule: raw.schedule.map(Spanned::into_inner),
        timezone: raw.timezone.map(Spanned::into_inner),
        window: raw.window.map(Spanned::into_inner),
    })
}

/// A job file being checked: an error names the file and the line of the value at fault.
struct At<'a> {
    path: &'a Path,
    text: &'a str,
}

impl At<'_> {
    fn at(&self, s: &std::ops::Range<usize>, m: String) -> ConfigError {
        ConfigError::at(self.path, self.text, s.start, m)
    }

    /// The tag's form, and no empty source, group or target group.
    fn check_names(&self, raw: &RawJob) -> Result<(), ConfigError> {
        let at = |s: &std::ops::Range<usize>, m: String| self.at(s, m);
        if !is_tag(raw.tag.get_ref()) {
            return Err(at(
                &raw.tag.span(),
                format!(
                    "tag {:?} is not of the form gSync<digits>; tags are assigned by `groupsync job new` and never edited",
                    raw.tag.get_ref()
                ),
            ));
        }
        for (what, v) in [("source", &raw.source), ("group", &raw.group)] {
            if v.get_ref().trim().is_empty() {
                return Err(at(&v.span(), format!("`{what}` is empty")));
            }
        }
        if let Some(t) = &raw.target_group
            && t.get_ref().trim().is_empty()
        {
            return Err(at(&t.span(), "`target_group` is empty".into()));
        }
        Ok(())
    }

    /// Destinations and exclusions: well-formed sets, no empty, duplicate or source user.
    fn check_destinations(&self, raw: &RawJob) -> Result<(), ConfigError> {
        let at = |s: &std::ops::Range<usize>, m: String| self.at(s, m);
        for d in raw.destinations.iter().chain(&raw.exclude) {
            if let Err(m) = crate::engine::check_dynamic_set(d.get_ref()) {
                return Err(at(&d.span(), m));
            }
        }
        let mut seen = BTreeSet::new();
        for d in &raw.destinations {
            let v = d.get_ref();
            if v.trim().is_empty() {
                return Err(at(&d.span(), "empty destination user".into()));
            }
            if v == raw.source.get_ref() {
                return Err(at(
                    &d.span(),
                    format!("the source user {v:?} is listed as its own destination"),
                ));
            }
            if !seen.insert(v.as_str()) {
                return Err(at(&d.span(), format!("duplicate destination {v:?}")));
            }
        }
        Ok(())
    }

    /// The `[filter]` regexes, compiled, and their text (shown by `job show`).
    fn filter(
        &self,
        raw: Option<&RawFilter>,
    ) -> Result<(ContactFilter, Vec<(String, String)>), ConfigError> {
        let mut filter = ContactFilter::default();
        let mut filter_text = vec![];
        if let Some(f) = raw {
            for (key, val, slot) in [
                ("email", &f.email, &mut filter.email),
                ("name", &f.name, &mut filter.name),
                ("organization", &f.organization, &mut filter.organization),
            ] {
                if let Some(v) = val {
                    let re = regex::Regex::new(v.get_ref()).map_err(|e| {
                        self.at(
                            &v.span(),
                            format!("filter.{key} is not a valid regular expression: {e}"),
                        )
                    })?;
                    *slot = Some(re);
                    filter_text.push((key.to_string(), v.get_ref().clone()));
                }
            }
        }
        Ok((filter, filter_text))
    }

    /// The `[limits]` on deletions.
    fn limits(&self, raw: Option<&RawLimits>) -> Result<Limits, ConfigError> {
        let mut limits = Limits::default();
        if let Some(l) = raw {
            if let Some(n) = l.max_delete {
                limits.max_delete = n;
            }
            if let Some(p) = &l.max_delete_percent {
                if *p.get_ref() > 100 {
                    return Err(self.at(
                        &p.span(),
                        "limits.max_delete_percent must be between 0 and 100".into(),
                    ));
                }
                limits.max_delete_percent = *p.get_ref();
            }
        }
        Ok(limits)
    }

    /// The managed `fields`, upper-cased; each must look like a vCard property name.
    fn fields(&self, raw: Option<&[Spanned<String>]>) -> Result<Option<Vec<String>>, ConfigError> {
        let Some(list) = raw else {
            return Ok(None);
        };
        let mut out = vec![];
        for f in list {
            let v = f.get_ref();
            if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(self.at(
                    &f.span(),
                    format!(
                        "{v:?} is not a vCard property name (e.g. \"EMAIL\", \"TEL\", \"ORG\")"
                    ),
                ));
            }
            out.push(v.to_ascii_uppercase());
        }
        Ok(Some(out))
    }

    /// Schedule, time zone and window are checked together; the error points at the key at
    /// fault.
    fn check_schedule(&self, raw: &RawJob) -> Result<(), ConfigError> {
        if let Err(m) = Schedule::new(
            raw.schedule.as_ref().map(|s| s.get_ref().as_str()),
            raw.timezone.as_ref().map(|s| s.get_ref().as_str()),
            raw.window.as_ref().map(|s| s.get_ref().as_str()),
        ) {
            let span = if m.starts_with("timezone") {
                raw.timezone.as_ref().map(|s| s.span())
            } else if m.starts_with("window") {
                raw.window.as_ref().map(|s| s.span())
            } else {
                raw.schedule.as_ref().map(|s| s.span())
            };
            return Err(match span {
                Some(sp) => self.at(&sp, m),
                None => ConfigError::file(self.path, m),
            });
        }
        Ok(())
    }
}

/// Loads one job file.
pub fn load(path: &Path) -> Result<Job, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::file(path, format!("cannot read job file: {e}")))?;
    parse(path, &text)
}

/// Loads a job by name.
pub fn load_named(jobs_dir: &Path, name: &str) -> Result<Job, ConfigError> {
    check_name(name).map_err(|m| ConfigError::file(jobs_dir, m))?;
    let path = job_path(jobs_dir, name);
    if !path.exists() {
        return Err(ConfigError::file(
            &path,
            format!("no job named {name:?} (no such file)"),
        ));
    }
    load(&path)
}

/// Every `*.toml` file in the jobs folder, sorted, each loaded or with its error.
pub fn load_all(jobs_dir: &Path) -> Result<Vec<Result<Job, ConfigError>>, ConfigError> {
    let rd = match std::fs::read_dir(jobs_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => {
            return Err(ConfigError::file(
                jobs_dir,
                format!("cannot read jobs folder: {e}"),
            ));
        }
    };
    let mut paths: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "toml")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    paths.sort();
    Ok(paths.iter().map(|p| load(p)).collect())
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_job_parses_back() {
        let text = new_job_text(
            "gSync123",
            "alice",
            "Sales",
            &["bob".into(), "carol".into()],
            None,
        );
        let job = parse(Path::new("jobs/sales.toml"), &text).unwrap();
        assert_eq!(job.name, "sales");
        assert_eq!(job.target_group, "Sales");
        assert_eq!(job.destinations, vec!["bob", "carol"]);
    }

    #[test]
    fn dynamic_sets_are_checked_where_written() {
        let base = "tag = \"gSync1\"\nsource = \"a@x.com\"\ngroup = \"g\"\n";
        let ok = format!(
            "{base}destinations = [\"group:sales@x.com\", \"ou:/Sales/East\", \"domain:x.com\", \"b@x.com\"]\nexclude = [\"group:temps@x.com\"]\n"
        );
        let job = parse(Path::new("j.toml"), &ok).unwrap();
        assert_eq!(job.to_run().destinations.len(), 4);
        assert_eq!(job.to_run().exclude, vec!["group:temps@x.com"]);
        for (bad, says) in [
            ("group:sales", "group:<group address>"),
            ("ou:Sales", "starting with /"),
            ("domain:x", "domain:<domain name>"),
        ] {
            let text = format!("{base}destinations = [\"b@x.com\",\n  \"{bad}\"]\n");
            let e = parse(Path::new("j.toml"), &text).unwrap_err().to_string();
            assert!(e.contains("j.toml:5:") && e.contains(says), "{e}");
        }
    }

    #[test]
    fn edits_keep_comments() {
        let text = "# top\ntag = \"gSync1\"\nsource = \"a\"\ngroup = \"g\"\ndestinations = [\n  \"b\", # bob\n  \"c\",\n]\n";
        let one_line = "tag = \"gSync1\"\nsource = \"a\"\ngroup = \"g\"\ndestinations = [\"b\", \"c\"] # both\n";
        assert_eq!(
            remove_destinations(
                &add_destinations(one_line, &["d".into()]).unwrap(),
                &["b".into()]
            )
            .unwrap(),
            one_line.replace("[\"b\", \"c\"]", "[\"c\", \"d\"]")
        );
        let added = add_destinations(text, &["d".into()]).unwrap();
        assert!(
            added.contains("# top") && added.contains("# bob") && added.contains("\"d\""),
            "{added}"
        );
        let removed = remove_destinations(&added, &["c".into()]).unwrap();
        assert!(
            removed.contains("# bob") && !removed.contains("\"c\""),
            "{removed}"
        );
        assert_eq!(
            parse(Path::new("j.toml"), &removed).unwrap().destinations,
            vec!["b", "d"]
        );
    }

    #[test]
    fn errors_point_at_the_line() {
        let text =
            "tag = \"gSync1\"\nsource = \"a\"\ngroup = \"g\"\ndestinations = [\"b\",\n \"b\"]\n";
        let e = parse(Path::new("j.toml"), text).unwrap_err();
        assert_eq!(e.line, Some(5), "{e}");
        assert!(e.message.contains("duplicate destination"), "{e}");
        let e = parse(
            Path::new("j.toml"),
            "tag = \"gSync1\"\nsource = \"a\"\ngroup = \"g\"\ndestinations = [\"a\"]\n",
        )
        .unwrap_err();
        assert!(e.message.contains("its own destination"), "{e}");
        let e = parse(
            Path::new("j.toml"),
            "tag = \"gSync1\"\nsource = \"a\"\ngroup = \"g\"\ncolour = 1\n",
        )
        .unwrap_err();
        assert_eq!((e.line, e.column), (Some(4), Some(1)), "{e}");
        let e = parse(
            Path::new("j.toml"),
            "tag = \"x\"\nsource = \"a\"\ngroup = \"g\"\n",
        )
        .unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
        let e = parse(
            Path::new("j.toml"),
            "tag = \"gSync1\"\nsource = \"a\"\ngroup = \"g\"\n[filter]\nemail = \"(\"\n",
        )
        .unwrap_err();
        assert_eq!(e.line, Some(5), "{e}");
    }

    #[test]
    fn fresh_tags_differ() {
        let mut taken = BTreeSet::new();
        for _ in 0..100 {
            let t = fresh_tag(&taken);
            assert!(is_tag(&t));
            assert!(taken.insert(t));
        }
    }
}
