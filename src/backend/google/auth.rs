//! Service-account authentication with domain-wide delegation: an RS256 JWT-bearer assertion
//! (RFC 7523) signed with jsonwebtoken, POSTed to the key file's `token_uri`, for one impersonated
//! user and one scope set. Tokens are cached per (user, scopes) and refreshed five minutes before
//! they expire.
//!
//! This module owns the key and the tokens. It must never log, print or put into an error the
//! private key or a token; errors name the user and the fix instead.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::BackendError;

/// Scope of every People API call.
pub const CONTACTS_SCOPE: &str = "https://www.googleapis.com/auth/contacts";
/// Scopes of the Directory calls (users, group members, org units, domains).
pub const DIRECTORY_SCOPES: &[&str] = &[
    "https://www.googleapis.com/auth/admin.directory.user.readonly",
    "https://www.googleapis.com/auth/admin.directory.group.member.readonly",
    "https://www.googleapis.com/auth/admin.directory.domain.readonly",
];

/// Every scope the service account's client id must be granted in the Admin console.
pub fn all_scopes() -> String {
    let mut s = vec![CONTACTS_SCOPE];
    s.extend_from_slice(DIRECTORY_SCOPES);
    s.join(",")
}

/// The parts of a service-account key file that are used.
#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: String,
    client_id: Option<String>,
    private_key: String,
    token_uri: Option<String>,
}

/// A loaded service-account key. `Debug` never shows the key.
pub struct ServiceAccount {
    pub client_email: String,
    pub client_id: String,
    pub token_uri: String,
    key: EncodingKey,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServiceAccount({}, <key>)", self.client_email)
    }
}

impl ServiceAccount {
    /// Reads a key file, refusing one that group or others may read.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = crate::config::read_secret(path, "key_file")?;
        Self::from_json(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses a key file's JSON.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let k: KeyFile = serde_json::from_str(text).map_err(|e| {
            format!(
                "not a service-account key file (JSON with client_email, private_key): {}",
                // serde's message names the missing field or the line; it never quotes values.
                e
            )
        })?;
        if let Some(kind) = &k.kind
            && kind != "service_account"
        {
            return Err(format!(
                "key file type is {kind:?}, expected \"service_account\" (create a key for a service account in the Cloud console)"
            ));
        }
        let key = EncodingKey::from_rsa_pem(k.private_key.as_bytes())
            .map_err(|_| "private_key is not an RSA private key in PEM form".to_string())?;
        Ok(ServiceAccount {
            client_email: k.client_email,
            client_id: k.client_id.unwrap_or_default(),
            token_uri: k
                .token_uri
                .unwrap_or_else(|| "https://oauth2.googleapis.com/token".into()),
            key,
        })
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct TokenError {
    error: String,
    error_description: Option<String>,
}

/// An access token. `Debug` never shows it.
#[derive(Clone)]
pub struct AccessToken(Arc<str>);

impl AccessToken {
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessToken(<redacted>)")
    }
}

type CacheKey = (String, String);

/// Gets and caches access tokens for impersonated users.
pub struct TokenSource {
    account: ServiceAccount,
    http: reqwest::Client,
    cache: tokio::sync::Mutex<HashMap<CacheKey, (AccessToken, Instant)>>,
    /// One fetch per key at a time: users run in parallel, but a user's first calls must not
    /// each ask for a token.
    inflight: std::sync::Mutex<HashMap<CacheKey, Arc<tokio::sync::Mutex<()>>>>,
    pub fetched: std::sync::atomic::AtomicU64,
}

impl TokenSource {
    pub fn new(account: ServiceAccount, http: reqwest::Client) -> Self {
        TokenSource {
            account,
            http,
            cache: Default::default(),
            inflight: Default::default(),
            fetched: Default::default(),
        }
    }

    pub fn account(&self) -> &ServiceAccount {
        &self.account
    }

    /// A token for `user` with `scopes` (space-separated), from the cache when it has more than
    /// five minutes left.
    pub async fn token(&self, user: &str, scopes: &str) -> Result<AccessToken, BackendError> {
        let key = (user.to_string(), scopes.to_string());
        let gate = crate::mutex::lock(&self.inflight)
            .entry(key.clone())
            .or_default()
            .clone();
        let _one = gate.lock().await;
        if let Some((t, until)) = self.cache.lock().await.get(&key)
            && Instant::now() + Duration::from_secs(300) < *until
        {
            return Ok(t.clone());
        }
        let (token, lifetime) = self.fetch(user, scopes).await?;
        self.cache
            .lock()
            .await
            .insert(key, (token.clone(), Instant::now() + lifetime));
        Ok(token)
    }

    /// Forgets a user's tokens (after a 401).
    pub async fn forget(&self, user: &str) {
        self.cache.lock().await.retain(|(u, _), _| u != user);
    }

    async fn fetch(
        &self,
        user: &str,
        scopes: &str,
    ) -> Result<(AccessToken, Duration), BackendError> {
        let assertion = self.sign(user, scopes).await?;
        let form = [
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", assertion.as_str()),
        ];
        let resp = self.post(&form).await?;
        self.fetched
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        if status.is_success() {
            let t: TokenResponse = serde_json::from_slice(&body).map_err(|_| {
                BackendError::Invalid(format!(
                    "token endpoint {} answered {status} with a body that is not a token response",
                    self.account.token_uri
                ))
            })?;
            let lifetime = Duration::from_secs(t.expires_in.unwrap_or(3600).clamp(60, 3600));
            return Ok((AccessToken(t.access_token.into()), lifetime));
        }
        Err(self.refused(user, status, &body))
    }

    /// The signed assertion (RS256) that asks for `user`'s token for `scopes`, valid an hour.
    async fn sign(&self, user: &str, scopes: &str) -> Result<String, BackendError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // An RSA signature costs about a millisecond of CPU: it is made on the blocking pool, so
        // that the first calls of many users are signed on every core, not on the thread that
        // drives the run.
        let (key, iss, sub, scope, aud) = (
            self.account.key.clone(),
            self.account.client_email.clone(),
            user.to_string(),
            scopes.to_string(),
            self.account.token_uri.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let claims = Claims {
                iss: &iss,
                sub: &sub,
                scope: &scope,
                aud: &aud,
                iat: now,
                exp: now + 3600,
            };
            jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|signed| signed.map_err(|e| e.to_string()))
        .map_err(|e| BackendError::Invalid(format!("signing the token request failed: {e}")))
    }

    /// Posts the token request, again after a 5xx or a connection error (four tries).
    async fn post(&self, form: &[(&str, &str)]) -> Result<reqwest::Response, BackendError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .http
                .post(&self.account.token_uri)
                .form(form)
                .send()
                .await
            {
                Ok(r) if r.status().is_server_error() && attempt < 4 => {}
                Ok(r) => return Ok(r),
                Err(e) if attempt < 4 => {
                    tracing::debug!("token endpoint: {}", e.without_url());
                }
                Err(e) => {
                    return Err(BackendError::Transient(format!(
                        "token endpoint {}: {}",
                        self.account.token_uri,
                        crate::backend::with_causes(&e.without_url())
                    )));
                }
            }
            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
        }
    }

    /// What a token endpoint's refusal means: delegation not set up, a revoked key, an unknown
    /// or suspended user, or an outage.
    fn refused(&self, user: &str, status: reqwest::StatusCode, body: &[u8]) -> BackendError {
        let err: Option<TokenError> = serde_json::from_slice(body).ok();
        let (code, desc) = match &err {
            Some(e) => (
                e.error.as_str(),
                e.error_description.as_deref().unwrap_or(""),
            ),
            None => ("", ""),
        };
        // Google's descriptions end with a full stop; the messages below add their own.
        let desc = desc.trim_end_matches('.');
        match code {
            "unauthorized_client" => BackendError::Auth(format!(
                "domain-wide delegation is not set up for {user}: {code}: {desc}. In the Admin console (Security → Access and data control → API controls → Domain-wide delegation) authorise client id {} for the scopes {}",
                self.account.client_id,
                all_scopes()
            )),
            "invalid_grant" if desc.contains("JWT") || desc.contains("verifier") => {
                BackendError::Auth(format!(
                    "the service account key was refused ({code}: {desc}): the key may be deleted or revoked; create a new key for {}",
                    self.account.client_email
                ))
            }
            "invalid_grant" | "invalid_request" | "access_denied" | "invalid_account" => {
                BackendError::Invalid(format!(
                    "unknown or suspended user {user}: the token endpoint refused to impersonate them ({code}: {desc})"
                ))
            }
            _ if status.as_u16() == 429 || status.is_server_error() => {
                BackendError::Transient(format!("token endpoint answered {status}"))
            }
            _ => BackendError::Invalid(format!(
                "token endpoint answered {status} for {user}: {code} {desc}"
            )),
        }
    }
}
