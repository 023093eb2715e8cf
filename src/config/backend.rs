//! The `[backend]` table: every provider's keys, their defaults and their checks, in one place.
//! Providers take their settings from here (`BackendConfig`, `VdirOptions`, `GoogleConfig`);
//! this module imports no provider.

use serde::Deserialize;
use std::path::{Path, PathBuf};

use super::ConfigError;

/// Every key of every backend kind (docs/configuration.md lists them; tests/docs.rs keeps the
/// two alike), so a typo is caught whatever the kind.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(super) struct RawBackend {
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
    certificate_file: Option<String>,
    private_key_file: Option<String>,
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
        options: VdirOptions,
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
    Google(GoogleConfig),
    /// Microsoft 365 (Microsoft Graph) with an app registration's client credentials. The
    /// secret or the private key is read (mode 0600) when the backend is opened.
    Graph(GraphConfig),
}

/// How the vdir backend treats files (the vdir keys `max_card_bytes` and `umask`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VdirOptions {
    /// A card file larger than this is not read (it is reported, and never modified).
    pub max_card_bytes: u64,
    /// The umask new files and folders get (`0o022`: files 0644, folders 0755), applied whatever
    /// the process's umask is.
    pub umask: u32,
}

/// 4 MiB: a card with a large photo is a few hundred KiB.
pub const DEFAULT_MAX_CARD_BYTES: u64 = 4 * 1024 * 1024;
/// Files 0644, folders 0755: readable by the users whose folders they are in (see docs/vdir.md for
/// the group and ACL recipes that keep them private to each user).
pub const DEFAULT_UMASK: u32 = 0o022;

impl Default for VdirOptions {
    fn default() -> Self {
        VdirOptions {
            max_card_bytes: DEFAULT_MAX_CARD_BYTES,
            umask: DEFAULT_UMASK,
        }
    }
}

/// Settings of the Google backend (`[backend] kind = "google"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoogleConfig {
    pub key_file: PathBuf,
    /// Admin user impersonated for Directory calls.
    pub admin: String,
    /// Domains whose users may be sources or destinations; `None`: every verified domain.
    pub allowed_domains: Option<Vec<String>>,
    pub people_url: String,
    pub directory_url: String,
    /// Overrides the key file's `token_uri`.
    pub token_url: Option<String>,
    pub concurrency: usize,
    pub requests_per_minute: u32,
    pub visible_tag: bool,
    /// Seconds one HTTP request may take before it is abandoned (and retried when safe).
    pub request_timeout: u64,
}

impl GoogleConfig {
    pub fn with_defaults(key_file: PathBuf, admin: String) -> Self {
        GoogleConfig {
            key_file,
            admin,
            allowed_domains: None,
            people_url: "https://people.googleapis.com".into(),
            directory_url: "https://admin.googleapis.com".into(),
            token_url: None,
            concurrency: 16,
            requests_per_minute: 3000,
            visible_tag: true,
            request_timeout: 120,
        }
    }
}

/// How a Microsoft 365 app proves who it is: a client secret, or a certificate whose private
/// key signs each token request (the certificate itself is uploaded to the app registration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphCredential {
    /// `client_secret_file`: the secret's value, alone in a file of mode 0600.
    Secret(PathBuf),
    /// `certificate_file` (PEM, the one uploaded) and `private_key_file` (PKCS#8 PEM, 0600).
    Certificate {
        certificate: PathBuf,
        private_key: PathBuf,
    },
}

/// Settings of the Microsoft 365 backend (`[backend] kind = "graph"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphConfig {
    /// The directory (tenant) id or a verified domain of the tenant.
    pub tenant: String,
    /// The app registration's application (client) id.
    pub client_id: String,
    pub credential: GraphCredential,
    /// Graph's base URL, without `/v1.0` (the client appends it).
    pub graph_url: String,
    /// The identity platform's base URL (the client appends `/{tenant}/oauth2/v2.0/token`).
    pub login_url: String,
    /// Domains whose users may be sources or destinations; `None`: the tenant's verified ones.
    pub allowed_domains: Option<Vec<String>>,
    /// Mailboxes worked on at once.
    pub concurrency: usize,
    /// Requests per minute across all mailboxes (a client-side cap under Graph's own limits).
    pub requests_per_minute: u32,
    /// Also put the job's tag as an Outlook category users can see.
    pub visible_tag: bool,
    /// Seconds one HTTP request may take before it is abandoned (and retried when safe).
    pub request_timeout: u64,
}

impl GraphConfig {
    pub fn with_defaults(tenant: String, client_id: String, credential: GraphCredential) -> Self {
        GraphConfig {
            tenant,
            client_id,
            credential,
            graph_url: "https://graph.microsoft.com".into(),
            login_url: "https://login.microsoftonline.com".into(),
            allowed_domains: None,
            concurrency: 16,
            requests_per_minute: 6000,
            visible_tag: true,
            request_timeout: 120,
        }
    }

    /// The token endpoint: `{login_url}/{tenant}/oauth2/v2.0/token`.
    pub fn token_url(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            self.login_url.trim_end_matches('/'),
            self.tenant
        )
    }
}

/// The `[backend]` table being read: where its errors point, and how its paths resolve.
pub(super) struct Keys<'a> {
    pub path: &'a Path,
    pub text: &'a str,
    pub raw: &'a RawBackend,
    pub resolve: &'a dyn Fn(&str) -> PathBuf,
}

impl Keys<'_> {
    /// An error about the backend, pointing at its `kind`.
    fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::at(self.path, self.text, self.raw.kind.span().start, message)
    }

    /// A key the kind cannot do without.
    fn need(&self, value: &Option<String>, key: &str, why: &str) -> Result<String, ConfigError> {
        value.clone().ok_or_else(|| {
            self.error(format!(
                "backend kind {:?} needs `{key}` ({why})",
                self.raw.kind.get_ref()
            ))
        })
    }

    /// A URL key: http:// or https://.
    fn url(&self, key: &str, u: &str) -> Result<String, ConfigError> {
        if u.starts_with("http://") || u.starts_with("https://") {
            Ok(u.to_string())
        } else {
            Err(self.error(format!(
                "backend `{key}` {u:?} must start with http:// or https://"
            )))
        }
    }

    /// The keys the cloud providers (Google, Graph) read alike, over their defaults.
    fn cloud_keys(&self, requests_per_minute: &mut u32, visible_tag: &mut bool, timeout: &mut u64) {
        if let Some(r) = self.raw.requests_per_minute {
            *requests_per_minute = r.max(1);
        }
        if let Some(v) = self.raw.visible_tag {
            *visible_tag = v;
        }
        if let Some(t) = self.raw.request_timeout {
            *timeout = t.max(1);
        }
    }

    fn concurrency(&self, default: usize) -> usize {
        self.raw.concurrency.unwrap_or(default).max(1)
    }

    /// The backend this table describes.
    pub fn backend(&self) -> Result<BackendConfig, ConfigError> {
        match self.raw.kind.get_ref().as_str() {
            "vdir" => self.vdir(),
            "carddav" => self.carddav(),
            "google" => self.google().map(BackendConfig::Google),
            "graph" => self.graph().map(BackendConfig::Graph),
            other => Err(self.error(format!(
                "unknown backend kind {other:?} (expected one of \"vdir\", \"google\", \"carddav\", \"graph\")"
            ))),
        }
    }

    fn vdir(&self) -> Result<BackendConfig, ConfigError> {
        let root = self.need(&self.raw.root, "root", "the folder of user folders")?;
        Ok(BackendConfig::Vdir {
            root: (self.resolve)(&root),
            concurrency: self.concurrency(4),
            options: self.vdir_options()?,
        })
    }

    /// The vdir keys `max_card_bytes` and `umask` (an octal string such as "0022").
    fn vdir_options(&self) -> Result<VdirOptions, ConfigError> {
        let at = |span: std::ops::Range<usize>, m: String| {
            ConfigError::at(self.path, self.text, span.start, m)
        };
        let mut o = VdirOptions::default();
        if let Some(n) = &self.raw.max_card_bytes {
            if *n.get_ref() < 1024 {
                return Err(at(
                    n.span(),
                    "max_card_bytes must be at least 1024 (a card with its name and a phone number)"
                        .into(),
                ));
            }
            o.max_card_bytes = *n.get_ref();
        }
        if let Some(u) = &self.raw.umask {
            o.umask = u32::from_str_radix(u.get_ref().trim(), 8)
                .ok()
                .filter(|m| *m <= 0o777 && m & 0o700 == 0)
                .ok_or_else(|| {
                    at(
                        u.span(),
                        format!(
                            "umask {:?}: write an octal mask as a string, e.g. \"0022\" (files 0644) or \"0027\" (files 0640); it must leave the owner's bits",
                            u.get_ref()
                        ),
                    )
                })?;
        }
        Ok(o)
    }

    fn carddav(&self) -> Result<BackendConfig, ConfigError> {
        let b = self.raw;
        let url = self.need(&b.url, "url", "the server's base URL")?;
        let url = self.url("url", &url)?;
        let admin = match (&b.username, &b.password_file) {
            (Some(u), Some(p)) => Some((u.clone(), (self.resolve)(p))),
            (None, None) if b.credentials_file.is_none() => {
                return Err(self.error(
                    "backend kind \"carddav\" needs `username` + `password_file` (one account for every user) or `credentials_file` (per-user passwords)",
                ));
            }
            (None, None) => None,
            (Some(_), None) => return Err(self.error("backend `username` needs `password_file`")),
            (None, Some(_)) => return Err(self.error("backend `password_file` needs `username`")),
        };
        Ok(BackendConfig::Carddav {
            url,
            home: b.home.clone().unwrap_or_else(|| "/{user}/".into()),
            admin,
            credentials_file: b.credentials_file.as_deref().map(self.resolve),
            default_collection: b
                .default_collection
                .clone()
                .unwrap_or_else(|| "contacts".into()),
            concurrency: self.concurrency(4),
        })
    }

    fn google(&self) -> Result<GoogleConfig, ConfigError> {
        let b = self.raw;
        let key_file = self.need(&b.key_file, "key_file", "the service account's JSON key")?;
        let admin = self.need(
            &b.admin,
            "admin",
            "an administrator impersonated for Directory calls",
        )?;
        let mut g = GoogleConfig::with_defaults((self.resolve)(&key_file), admin);
        if let Some(u) = &b.people_url {
            g.people_url = self.url("people_url", u)?;
        }
        if let Some(u) = &b.directory_url {
            g.directory_url = self.url("directory_url", u)?;
        }
        g.token_url = b.token_url.clone();
        g.allowed_domains = b.allowed_domains.clone();
        g.concurrency = self.concurrency(g.concurrency);
        self.cloud_keys(
            &mut g.requests_per_minute,
            &mut g.visible_tag,
            &mut g.request_timeout,
        );
        Ok(g)
    }

    fn graph(&self) -> Result<GraphConfig, ConfigError> {
        let b = self.raw;
        let tenant = self.need(&b.tenant, "tenant", "the directory (tenant) id")?;
        let client_id = self.need(&b.client_id, "client_id", "the app registration's id")?;
        let credential = match (
            &b.client_secret_file,
            &b.certificate_file,
            &b.private_key_file,
        ) {
            (Some(s), None, None) => GraphCredential::Secret((self.resolve)(s)),
            (None, Some(c), Some(k)) => GraphCredential::Certificate {
                certificate: (self.resolve)(c),
                private_key: (self.resolve)(k),
            },
            (None, None, None) => {
                return Err(self.error(
                    "backend kind \"graph\" needs `client_secret_file`, or `certificate_file` + `private_key_file`",
                ));
            }
            (Some(_), _, _) => {
                return Err(self.error(
                    "backend kind \"graph\": give `client_secret_file` or `certificate_file` + `private_key_file`, not both",
                ));
            }
            (None, Some(_), None) => {
                return Err(self.error("backend `certificate_file` needs `private_key_file`"));
            }
            (None, None, Some(_)) => {
                return Err(self.error("backend `private_key_file` needs `certificate_file`"));
            }
        };
        let mut g = GraphConfig::with_defaults(tenant, client_id, credential);
        if let Some(u) = &b.graph_url {
            g.graph_url = self.url("graph_url", u)?.trim_end_matches('/').to_string();
        }
        if let Some(u) = &b.login_url {
            g.login_url = self.url("login_url", u)?.trim_end_matches('/').to_string();
        }
        g.allowed_domains = b.allowed_domains.clone();
        g.concurrency = self.concurrency(g.concurrency);
        self.cloud_keys(
            &mut g.requests_per_minute,
            &mut g.visible_tag,
            &mut g.request_timeout,
        );
        Ok(g)
    }
}
