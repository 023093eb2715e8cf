//! `groupsync.toml`: where the state database and the job files are, and which backend to use.
//! Relative paths resolve against the config file's folder. Unknown keys are errors, and every
//! error names the file, line and column. This module must not touch the backend or the state.

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
    state: Option<String>,
    jobs_dir: Option<String>,
    backend: toml::Spanned<RawBackend>,
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

/// Every key of every backend kind (the README lists them), so a typo is caught whatever the kind.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RawBackend {
    kind: toml::Spanned<String>,
    root: Option<String>,
    concurrency: Option<usize>,
    max_card_bytes: Option<toml::Spanned<u64>>,
    umask: Option<toml::Spanned<String>>,
    default_collection: Option<String>,
    key_file: Option<String>,
    admin: Option<String>,
    allowed_domains: Option<Vec<String>>,
    people_url: Option<String>,
    directory_url: Option<String>,
    requests_per_minute: Option<u32>,
    visible_tag: Option<bool>,
    request_timeout: Option<u64>,
    url: Option<String>,
    home: Option<String>,
    username: Option<String>,
    password_file: Option<String>,
    credentials_file: Option<String>,
    tenant: Option<String>,
    client_id: Option<String>,
    client_secret_file: Option<String>,
    graph_url: Option<String>,
    login_url: Option<String>,
    token_url: Option<String>,
}

/// The backend to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendConfig {
    /// A local tree of vCard folders.
    Vdir {
        root: PathBuf,
        concurrency: usize,
        options: crate::backend::vdir::VdirOptions,
    },
    /// A CardDAV server. Secrets are read from `password_file` / `credentials_file` (mode
    /// 0600) when the backend is opened.
    Carddav {
        url: String,
        home: String,
        /// The admin account and its password file, if one is configured.
        admin: Option<(String, PathBuf)>,
        /// Per-user `user = password` lines.
        credentials_file: Option<PathBuf>,
        default_collection: String,
        concurrency: usize,
    },
    /// Google Workspace (People API + Directory) with a service account. The key is read (mode
    /// 0600) when the backend is opened.
    Google(crate::backend::google::GoogleConfig),
}

/// The vdir keys `max_card_bytes` and `umask` (an octal string such as "0022").
fn vdir_options(
    path: &Path,
    text: &str,
    b: &RawBackend,
) -> Result<crate::backend::vdir::VdirOptions, ConfigError> {
    let mut o = crate::backend::vdir::VdirOptions::default();
    if let Some(n) = &b.max_card_bytes {
        if *n.get_ref() < 1024 {
            return Err(ConfigError::at(
                path,
                text,
                n.span().start,
                "max_card_bytes must be at least 1024 (a card with its name and a phone number)",
            ));
        }
        o.max_card_bytes = *n.get_ref();
    }
    if let Some(u) = &b.umask {
        o.umask = u32::from_str_radix(u.get_ref().trim(), 8)
            .ok()
            .filter(|m| *m <= 0o777 && m & 0o700 == 0)
            .ok_or_else(|| {
                ConfigError::at(
                    path,
                    text,
                    u.span().start,
                    format!(
                        "umask {:?}: write an octal mask as a string, e.g. \"0022\" (files 0644) or \"0027\" (files 0640); it must leave the owner's bits",
                        u.get_ref()
                    ),
                )
            })?;
    }
    Ok(o)
}

/// Reads a per-user credentials file: `user = password` lines, `#` comments. Refused unless
/// mode 0600; a bad line is named by number, never by content.
pub fn read_credentials(path: &Path) -> Result<std::collections::BTreeMap<String, String>, String> {
    let text = read_secret(path, "credentials_file")?;
    let mut users = std::collections::BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, password)) = line.split_once('=') else {
            return Err(format!(
                "credentials_file {}:{}: expected `user = password`",
                path.display(),
                i + 1
            ));
        };
        let (user, password) = (user.trim(), password.trim());
        if user.is_empty() || password.is_empty() {
            return Err(format!(
                "credentials_file {}:{}: empty user or password",
                path.display(),
                i + 1
            ));
        }
        if users
            .insert(user.to_string(), password.to_string())
            .is_some()
        {
            return Err(format!(
                "credentials_file {}:{}: user {user:?} is listed twice",
                path.display(),
                i + 1
            ));
        }
    }
    Ok(users)
}

/// Reads a secret file, refusing one that others can read. The secret never enters an error.
pub fn read_secret(path: &Path, key: &str) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{key} {}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "{key} {} is readable by group or others (mode {mode:o}); run: chmod 600 {}",
                path.display(),
                path.display()
            ));
        }
    }
    let _ = meta;
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("{key} {}: {e}", path.display()))?;
    let secret = text.trim_end_matches(['\r', '\n']).to_string();
    if secret.is_empty() {
        return Err(format!("{key} {} is empty", path.display()));
    }
    Ok(secret)
}

/// The loaded configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    pub state: PathBuf,
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
        let b = raw.backend.get_ref();
        let kind_span = b.kind.span();
        let backend = match b.kind.get_ref().as_str() {
            "vdir" => {
                let root = b.root.as_deref().ok_or_else(|| {
                    ConfigError::at(
                        path,
                        text,
                        kind_span.start,
                        "backend kind \"vdir\" needs `root` (the folder of user folders)",
                    )
                })?;
                BackendConfig::Vdir {
                    root: resolve(root),
                    concurrency: b.concurrency.unwrap_or(4).max(1),
                    options: vdir_options(path, text, b)?,
                }
            }
            "carddav" => {
                let need = |v: &Option<String>, key: &str| {
                    v.clone().ok_or_else(|| {
                        ConfigError::at(
                            path,
                            text,
                            kind_span.start,
                            format!("backend kind \"carddav\" needs `{key}`"),
                        )
                    })
                };
                let url = need(&b.url, "url")?;
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(ConfigError::at(
                        path,
                        text,
                        kind_span.start,
                        format!("backend url {url:?} must start with http:// or https://"),
                    ));
                }
                if b.username.is_none() && b.credentials_file.is_none() {
                    return Err(ConfigError::at(
                        path,
                        text,
                        kind_span.start,
                        "backend kind \"carddav\" needs `username` + `password_file` (one account for every user) or `credentials_file` (per-user passwords)",
                    ));
                }
                BackendConfig::Carddav {
                    url,
                    home: b.home.clone().unwrap_or_else(|| "/{user}/".into()),
                    admin: match (&b.username, &b.password_file) {
                        (Some(u), Some(p)) => Some((u.clone(), resolve(p))),
                        (None, None) => None,
                        (Some(_), None) => {
                            return Err(ConfigError::at(
                                path,
                                text,
                                kind_span.start,
                                "backend `username` needs `password_file`",
                            ));
                        }
                        (None, Some(_)) => {
                            return Err(ConfigError::at(
                                path,
                                text,
                                kind_span.start,
                                "backend `password_file` needs `username`",
                            ));
                        }
                    },
                    credentials_file: b.credentials_file.as_deref().map(resolve),
                    default_collection: b
                        .default_collection
                        .clone()
                        .unwrap_or_else(|| "contacts".into()),
                    concurrency: b.concurrency.unwrap_or(4).max(1),
                }
            }
            "google" => {
                let need = |v: &Option<String>, key: &str, why: &str| {
                    v.clone().ok_or_else(|| {
                        ConfigError::at(
                            path,
                            text,
                            kind_span.start,
                            format!("backend kind \"google\" needs `{key}` ({why})"),
                        )
                    })
                };
                let key_file = need(&b.key_file, "key_file", "the service account's JSON key")?;
                let admin = need(
                    &b.admin,
                    "admin",
                    "an administrator impersonated for Directory calls",
                )?;
                let mut g =
                    crate::backend::google::GoogleConfig::with_defaults(resolve(&key_file), admin);
                for (v, slot, key) in [
                    (&b.people_url, &mut g.people_url, "people_url"),
                    (&b.directory_url, &mut g.directory_url, "directory_url"),
                ] {
                    if let Some(u) = v {
                        if !(u.starts_with("http://") || u.starts_with("https://")) {
                            return Err(ConfigError::at(
                                path,
                                text,
                                kind_span.start,
                                format!(
                                    "backend `{key}` {u:?} must start with http:// or https://"
                                ),
                            ));
                        }
                        *slot = u.clone();
                    }
                }
                g.token_url = b.token_url.clone();
                g.allowed_domains = b.allowed_domains.clone();
                if let Some(c) = b.concurrency {
                    g.concurrency = c.max(1);
                }
                if let Some(r) = b.requests_per_minute {
                    g.requests_per_minute = r.max(1);
                }
                if let Some(v) = b.visible_tag {
                    g.visible_tag = v;
                }
                if let Some(t) = b.request_timeout {
                    g.request_timeout = t.max(1);
                }
                BackendConfig::Google(g)
            }
            k @ "graph" => {
                return Err(ConfigError::at(
                    path,
                    text,
                    kind_span.start,
                    format!(
                        "backend kind {k:?} is not available in this version yet (available: \"vdir\", \"carddav\", \"google\")"
                    ),
                ));
            }
            other => {
                return Err(ConfigError::at(
                    path,
                    text,
                    kind_span.start,
                    format!(
                        "unknown backend kind {other:?} (expected one of \"vdir\", \"google\", \"carddav\", \"graph\")"
                    ),
                ));
            }
        };
        let at = |sp: std::ops::Range<usize>, m: String| ConfigError::at(path, text, sp.start, m);
        let mut metrics = MetricsConfig::default();
        if let Some(m) = &raw.metrics {
            metrics.textfile = m.textfile.as_deref().map(resolve);
            if let Some(l) = &m.listen {
                metrics.listen = Some(l.get_ref().parse().map_err(|_| {
                    at(
                        l.span(),
                        format!(
                            "metrics.listen {:?} is not an address:port such as \"127.0.0.1:9477\"",
                            l.get_ref()
                        ),
                    )
                })?);
            }
        }
        let mut notify = NotifyConfig::default();
        if let Some(n) = &raw.notify {
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
                let u = w.get_ref();
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return Err(at(
                        w.span(),
                        format!("notify.webhook {u:?} must be an http:// or https:// URL"),
                    ));
                }
                notify.webhook = Some(u.clone());
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
                let u = smtp.get_ref();
                if !(u.starts_with("smtp://") || u.starts_with("smtps://")) {
                    return Err(at(
                        smtp.span(),
                        format!(
                            "notify.smtp {u:?} must look like smtp://host:25 or smtps://host:465"
                        ),
                    ));
                }
                notify.smtp = Some(u.clone());
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
        }
        Ok(Config {
            path: path.to_path_buf(),
            state: resolve(raw.state.as_deref().unwrap_or("state.db")),
            jobs_dir: resolve(raw.jobs_dir.as_deref().unwrap_or("jobs")),
            backend,
            metrics,
            notify,
        })
    }
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
    fn credentials_file_errors_name_the_line_not_the_secret() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("gs-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("users.secret");
        std::fs::write(&f, "alice = s3cret\nbob s3cret2\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = read_credentials(&f).unwrap_err();
        assert!(e.contains(":2:") && !e.contains("s3cret"), "{e}");
        std::fs::write(&f, "alice = s3cret\n").unwrap();
        assert_eq!(read_credentials(&f).unwrap()["alice"], "s3cret");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_credentials(&f).unwrap_err().contains("chmod 600"));
        std::fs::remove_dir_all(&dir).unwrap();
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
