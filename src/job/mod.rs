//! Job files: one `<jobs_dir>/<name>.toml` per job. `parse` reads and checks them (every error
//! names file, line and column); `edit` creates new ones and edits them with `toml_edit` so that
//! comments and layout survive; this file holds the `Job` and finds and loads the files. It must not talk to the backend: checks that need the provider
//! (does this user exist?) are the commands' job.

mod edit;
mod parse;

pub use edit::{add_destinations, fresh_tag, new_job_text, remove_destinations, write_atomic};
pub use parse::parse;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::card::{ContactFilter, FieldSelection};
use crate::config::ConfigError;
use crate::engine::JobRun;
use crate::plan::{JobSpec, Limits};
use crate::schedule::Schedule;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::is_tag;

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
