//! `groupsync.toml`: where the state database and the job files are, which backend to use
//! (`backend`: every provider's keys), metrics and notifications; secret files are read by
//! `secrets`. Relative paths resolve against the config file's folder. Unknown keys are errors,
//! and every error names the file, line and column. This module must not touch the backend or
//! the state, and imports no provider: providers import their settings from here.

mod backend;
mod secrets;
mod state;

pub use backend::{
    BackendConfig, DEFAULT_MAX_CARD_BYTES, DEFAULT_UMASK, GoogleConfig, GraphConfig,
    GraphCredential, VdirOptions,
};
pub use secrets::{read_credentials, read_secret};
pub use state::Retention;

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Where `groupsync.toml` is looked for when neither `--config` nor `GROUPSYNC_CONFIG` is given.
pub const DEFAULT_CONFIG: &str = "/etc/groupsync/groupsync.toml";

/// A configuration or job-file error, pointing at the place at fault.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}{}: {message}", location(.line, .column))]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

fn location(line: &Option<usize>, column: &Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(":{l}:{c}"),
        (Some(l), None) => format!(":{l}"),
        _ => String::new(),
    }
}

impl ConfigError {
    /// An error about a whole file.
    pub fn file(file: &Path, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.display().to_string(),
            line: None,
            column: None,
            message: message.into(),
        }
    }

    /// An error at a byte offset of a file's text.
    pub fn at(file: &Path, text: &str, offset: usize, message: impl Into<String>) -> Self {
        let (line, column) = line_col(text, offset);
        ConfigError {
            file: file.display().to_string(),
            line: Some(line),
            column: Some(column),
            message: message.into(),
        }
    }

    /// Turns a TOML parse or schema error into one with line and column.
    pub fn from_toml(file: &Path, text: &str, e: &toml::de::Error) -> Self {
        let msg = e.message().trim().to_string();
        match e.span() {
            Some(span) => Self::at(file, text, span.start, msg),
            None => Self::file(file, msg),
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state: Option<toml::Spanned<toml::Value>>,
    jobs_dir: Option<String>,
    backend: toml::Spanned<backend::RawBackend>,
    metrics: Option<RawMetrics>,
    notify: Option<RawNotify>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    textfile: Option<String>,
    listen: Option<toml::Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    on: Option<toml::Spanned<String>>,
    webhook: Option<toml::Spanned<String>>,
    email_to: Option<Vec<toml::Spanned<String>>>,
    email_from: Option<toml::Spanned<String>>,
    smtp: Option<toml::Spanned<String>>,
    sendmail: Option<String>,
}

/// `[metrics]`: a node_exporter textfile written after each run, and an HTTP listener for
/// `groupsync serve`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    pub textfile: Option<PathBuf>,
    pub listen: Option<std::net::SocketAddr>,
}

/// When to notify.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NotifyOn {
    /// A run that failed, could not run, or was stopped by a safety limit.
    #[default]
    Failure,
    /// Every run (a summary), failures included.
    Always,
}

/// `[notify]`: a webhook (JSON POST) and/or email (SMTP or the local sendmail).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotifyConfig {
    pub on: NotifyOn,
    pub webhook: Option<String>,
    pub email_to: Vec<String>,
    pub email_from: Option<String>,
    /// `smtp://host[:port]` (STARTTLS when offered is not attempted) or `smtps://host[:port]` (TLS).
    pub smtp: Option<String>,
    /// Path of a sendmail-compatible program, used when `smtp` is not set.
    pub sendmail: Option<PathBuf>,
}

/// The loaded configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    pub state: PathBuf,
    /// How long the state keeps trash entries and change-log lines (`[state]`).
    pub retention: Retention,
    pub jobs_dir: PathBuf,
    pub backend: BackendConfig,
    pub metrics: MetricsConfig,
    pub notify: NotifyConfig,
}

/// Which config file to use: `--config`, else `GROUPSYNC_CONFIG` (clap fills both into `flag`),
/// else the system default.
pub fn config_path(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
}

impl Config {
    /// Loads and checks a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::NotFound {
                " (pass --config FILE or set GROUPSYNC_CONFIG)"
            } else {
                ""
            };
            ConfigError::file(path, format!("cannot read configuration: {e}{hint}"))
        })?;
        Self::parse(path, &text)
    }

    /// Checks config text as if it came from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::from_toml(path, text, &e))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base
        };
        let resolve = |p: &str| {
            if Path::new(p).is_absolute() {
                PathBuf::from(p)
            } else {
                base.join(p)
            }
        };
        let backend = backend::Keys {
            path,
            text,
            raw: raw.backend.get_ref(),
            resolve: &resolve,
        }
        .backend()?;
        let at = |sp: std::ops::Range<usize>, m: String| ConfigError::at(path, text, sp.start, m);
        let metrics = match &raw.metrics {
            Some(m) => metrics_config(m, &at, &resolve)?,
            None => MetricsConfig::default(),
        };
        let notify = match &raw.notify {
            Some(n) => notify_config(n, &at, path)?,
            None => NotifyConfig::default(),
        };
        let (state_path, retention) = state::parse(raw.state.as_ref(), &at)?;
        Ok(Config {
            path: path.to_path_buf(),
            state: resolve(state_path.as_deref().unwrap_or("state.db")),
            retention,
            jobs_dir: resolve(raw.jobs_dir.as_deref().unwrap_or("jobs")),
            backend,
            metrics,
            notify,
        })
    }
}

/// Where a value of the configuration is: an error names its line.
type At<'a> = dyn Fn(std::ops::Range<usize>, String) -> ConfigError + 'a;

/// The `[metrics]` table.
fn metrics_config(
    m: &RawMetrics,
    at: &At<'_>,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<MetricsConfig, ConfigError> {
    let listen = match &m.listen {
        None => None,
        Some(l) => Some(l.get_ref().parse().map_err(|_| {
            at(
                l.span(),
                format!(
                    "metrics.listen {:?} is not an address:port such as \"127.0.0.1:9477\"",
                    l.get_ref()
                ),
            )
        })?),
    };
    Ok(MetricsConfig {
        textfile: m.textfile.as_deref().map(resolve),
        listen,
    })
}

/// The `[notify]` table: a webhook, email through SMTP or sendmail, on failure or always.
fn notify_config(n: &RawNotify, at: &At<'_>, path: &Path) -> Result<NotifyConfig, ConfigError> {
    let mut notify = NotifyConfig::default();
    if let Some(on) = &n.on {
        notify.on = match on.get_ref().as_str() {
            "failure" => NotifyOn::Failure,
            "always" => NotifyOn::Always,
            other => {
                return Err(at(
                    on.span(),
                    format!("notify.on {other:?} must be \"failure\" or \"always\""),
                ));
            }
        };
    }
    if let Some(w) = &n.webhook {
        let why = "must be an http:// or https:// URL";
        notify.webhook = Some(with_scheme(
            w,
            &["http://", "https://"],
            "notify.webhook",
            why,
            at,
        )?);
    }
    for to in n.email_to.iter().flatten() {
        if !to.get_ref().contains('@') {
            return Err(at(
                to.span(),
                format!("notify.email_to {:?} is not an email address", to.get_ref()),
            ));
        }
        notify.email_to.push(to.get_ref().clone());
    }
    notify.email_from = n.email_from.as_ref().map(|f| f.get_ref().clone());
    if let Some(smtp) = &n.smtp {
        let why = "must look like smtp://host:25 or smtps://host:465";
        notify.smtp = Some(with_scheme(
            smtp,
            &["smtp://", "smtps://"],
            "notify.smtp",
            why,
            at,
        )?);
    }
    notify.sendmail = n.sendmail.as_deref().map(PathBuf::from);
    if !notify.email_to.is_empty() {
        if notify.email_from.is_none() {
            return Err(ConfigError::file(
                path,
                "[notify] email_to needs email_from (the sender address)",
            ));
        }
        if notify.smtp.is_none() && notify.sendmail.is_none() {
            notify.sendmail = Some(PathBuf::from("/usr/sbin/sendmail"));
        }
    }
    Ok(notify)
}

/// A URL setting, which must start with one of `schemes`; the error names the key and its line.
fn with_scheme(
    v: &toml::Spanned<String>,
    schemes: &[&str],
    key: &str,
    why: &str,
    at: &At<'_>,
) -> Result<String, ConfigError> {
    let u = v.get_ref();
    if !schemes.iter().any(|s| u.starts_with(s)) {
        return Err(at(v.span(), format!("{key} {u:?} {why}")));
    }
    Ok(u.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_resolve_against_the_file() {
        let c = Config::parse(
            Path::new("/etc/gs/groupsync.toml"),
            "state = \"s.db\"\n[backend]\nkind = \"vdir\"\nroot = \"contacts\"\n",
        )
        .unwrap();
        assert_eq!(c.state, PathBuf::from("/etc/gs/s.db"));
        assert_eq!(c.jobs_dir, PathBuf::from("/etc/gs/jobs"));
        assert_eq!(
            c.backend,
            BackendConfig::Vdir {
                root: PathBuf::from("/etc/gs/contacts"),
                concurrency: 4,
                options: Default::default(),
            }
        );
    }

    #[test]
    fn vdir_umask_and_card_size_are_checked_where_written() {
        let parse = |extra: &str| {
            Config::parse(
                Path::new("/etc/gs/groupsync.toml"),
                &format!("[backend]\nkind = \"vdir\"\nroot = \"c\"\n{extra}"),
            )
        };
        let Ok(Config {
            backend: BackendConfig::Vdir { options, .. },
            ..
        }) = parse("umask = \"0027\"\nmax_card_bytes = 65536\n")
        else {
            panic!()
        };
        assert_eq!((options.umask, options.max_card_bytes), (0o027, 65536));
        for (bad, what) in [
            ("umask = \"0777\"\n", "umask"),
            ("umask = \"22x\"\n", "umask"),
            ("max_card_bytes = 10\n", "max_card_bytes"),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(what) && e.contains(":4:"), "{bad}: {e}");
        }
    }

    #[test]
    fn carddav_needs_an_account_or_per_user_credentials() {
        let base = "[backend]\nkind = \"carddav\"\nurl = \"https://dav.example.com\"\n";
        let e = Config::parse(Path::new("g.toml"), base).unwrap_err();
        assert!(e.message.contains("credentials_file"), "{e}");
        let e = Config::parse(
            Path::new("g.toml"),
            &format!("{base}username = \"admin\"\n"),
        )
        .unwrap_err();
        assert!(e.message.contains("needs `password_file`"), "{e}");
        let c = Config::parse(
            Path::new("/etc/gs/g.toml"),
            &format!("{base}credentials_file = \"users.secret\"\n"),
        )
        .unwrap();
        match c.backend {
            BackendConfig::Carddav {
                admin,
                credentials_file,
                ..
            } => {
                assert!(admin.is_none());
                assert_eq!(
                    credentials_file,
                    Some(PathBuf::from("/etc/gs/users.secret"))
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_key_names_line_and_column() {
        let e = Config::parse(
            Path::new("g.toml"),
            "state = \"s.db\"\n[backend]\nkind = \"vdir\"\nrot = \"x\"\n",
        )
        .unwrap_err();
        assert_eq!((e.line, e.column), (Some(4), Some(1)), "{e}");
        assert!(e.to_string().starts_with("g.toml:4:1: "), "{e}");
        assert!(e.message.contains("rot"), "{e}");
    }
}
