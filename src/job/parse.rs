//! Reading a job file: the TOML into a `Job`, every value checked where it is written (an error
//! names the file, line and column of the value at fault).
//!
//! It must not write a file or talk to the backend.

use serde::Deserialize;
use std::collections::BTreeSet;
use std::path::Path;
use toml::Spanned;

use super::{Job, check_name};
use crate::card::ContactFilter;
use crate::config::ConfigError;
use crate::plan::{Limits, is_tag};
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
