//! The `state` setting: where the state database is, and how long it keeps what it holds about
//! people. Either `state = "path"`, or a `[state]` table with `path`, `keep_trash_days` (how long a
//! deleted contact stays restorable, default 90) and `keep_log_days` (how long a line of the change
//! log is kept, default 365).
//!
//! It must not open the database or purge anything (the engine purges at every run).

use serde::Deserialize;

use super::{At, ConfigError};

/// How long the state keeps what it holds about people, in days. What is older is purged at the
/// start of every real run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Trash entries (the full vCard of every contact groupsync deleted).
    pub trash_days: u32,
    /// Change-log lines (who, what, when, which properties).
    pub log_days: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            trash_days: 90,
            log_days: 365,
        }
    }
}

/// The longest retention accepted: a hundred years is "keep it".
const MAX_DAYS: u32 = 36_500;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    path: Option<String>,
    keep_trash_days: Option<i64>,
    keep_log_days: Option<i64>,
}

/// The database's path (as written, not yet resolved) and the retention.
pub(super) fn parse(
    raw: Option<&toml::Spanned<toml::Value>>,
    at: &At<'_>,
) -> Result<(Option<String>, Retention), ConfigError> {
    let Some(raw) = raw else {
        return Ok((None, Retention::default()));
    };
    let table = match raw.get_ref() {
        toml::Value::String(s) => return Ok((Some(s.clone()), Retention::default())),
        toml::Value::Table(t) => t,
        _ => {
            return Err(at(
                raw.span(),
                "`state` must be a path (state = \"state.db\") or a [state] table with path, keep_trash_days and keep_log_days".into(),
            ));
        }
    };
    let parsed = RawState::deserialize(toml::Value::Table(table.clone()))
        .map_err(|e| at(raw.span(), format!("[state]: {}", e.message())))?;
    let days = |key: &str, v: Option<i64>, default: u32| match v {
        None => Ok(default),
        Some(n) if (0..=MAX_DAYS as i64).contains(&n) => Ok(n as u32),
        Some(n) => Err(at(
            raw.span(),
            format!("state.{key} = {n} must be a number of days from 0 to {MAX_DAYS}"),
        )),
    };
    let d = Retention::default();
    let retention = Retention {
        trash_days: days("keep_trash_days", parsed.keep_trash_days, d.trash_days)?,
        log_days: days("keep_log_days", parsed.keep_log_days, d.log_days)?,
    };
    Ok((parsed.path, retention))
}
