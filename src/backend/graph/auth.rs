//! App-only authentication to Microsoft Graph: the OAuth 2.0 client-credentials grant at
//! `{login_url}/{tenant}/oauth2/v2.0/token` for the scope `https://graph.microsoft.com/.default`,
//! proved by a client secret or by a certificate (a client assertion: a JWT signed PS256 with the
//! certificate's private key, its `x5t#S256` header the SHA-256 thumbprint of the certificate).
//! The grant itself is the `oauth2` crate's; its HTTP goes through groupsync's one reqwest client.
//! One token serves every mailbox; it is cached and renewed five minutes before it expires.
//!
//! This module owns the secret, the key and the token. It must never log, print or put into an
//! error any of them; an `AADSTS` refusal is turned into the fix an administrator needs.

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use oauth2::basic::{BasicClient, BasicErrorResponse};
use oauth2::{AuthType, ClientId, ClientSecret, RequestTokenError, Scope, TokenResponse, TokenUrl};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::backend::BackendError;
use crate::config::{GraphConfig, GraphCredential};

/// The one scope of an app-only Graph token: every application permission granted to the app.
pub const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How the app proves who it is, loaded. `Debug` shows neither the secret nor the key.
pub enum Proof {
    Secret(String),
    Certificate {
        key: EncodingKey,
        /// base64url SHA-256 of the certificate's DER (the assertion's `x5t#S256`).
        thumbprint: String,
    },
}

impl std::fmt::Debug for Proof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Proof::Secret(_) => f.write_str("Proof::Secret(<redacted>)"),
            Proof::Certificate { thumbprint, .. } => {
                write!(f, "Proof::Certificate({thumbprint}, <key>)")
            }
        }
    }
}

impl Proof {
    /// Reads the secret or the certificate and its key (the secret and the key only from files
    /// of mode 0600).
    pub fn load(credential: &GraphCredential) -> Result<Proof, String> {
        match credential {
            GraphCredential::Secret(path) => {
                crate::config::read_secret(path, "client_secret_file").map(Proof::Secret)
            }
            GraphCredential::Certificate {
                certificate,
                private_key,
            } => {
                let cert = std::fs::read_to_string(certificate)
                    .map_err(|e| format!("certificate_file {}: {e}", certificate.display()))?;
                let thumbprint = thumbprint_of(&cert)
                    .map_err(|e| format!("certificate_file {}: {e}", certificate.display()))?;
                let pem = crate::config::read_secret(private_key, "private_key_file")?;
                let key = EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|_| {
                    format!(
                        "private_key_file {}: not an RSA private key in PEM form",
                        private_key.display()
                    )
                })?;
                Ok(Proof::Certificate { key, thumbprint })
            }
        }
    }
}

/// The `x5t#S256` of a PEM certificate: base64url (no padding) of SHA-256 over its DER.
pub fn thumbprint_of(pem: &str) -> Result<String, String> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END CERTIFICATE-----"))
        .collect();
    if body.is_empty() {
        return Err("no PEM certificate (-----BEGIN CERTIFICATE-----) in the file".into());
    }
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|_| "the PEM certificate is not valid base64".to_string())?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(&der)))
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

#[derive(serde::Serialize)]
struct Claims<'a> {
    aud: &'a str,
    iss: &'a str,
    sub: &'a str,
    jti: String,
    nbf: u64,
    exp: u64,
}

/// Gets and caches the app's token.
pub struct TokenSource {
    tenant: String,
    client_id: String,
    token_url: String,
    proof: Proof,
    http: reqwest::Client,
    cache: tokio::sync::Mutex<Option<(AccessToken, Instant)>>,
    pub fetched: AtomicU64,
}

/// What went wrong on the way to the token endpoint (for the `oauth2` crate's HTTP hook).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Transport(String);

impl TokenSource {
    pub fn new(cfg: &GraphConfig, proof: Proof, http: reqwest::Client) -> Self {
        TokenSource {
            tenant: cfg.tenant.clone(),
            client_id: cfg.client_id.clone(),
            token_url: cfg.token_url(),
            proof,
            http,
            cache: Default::default(),
            fetched: Default::default(),
        }
    }

    /// The token, from the cache while it has more than five minutes left.
    pub async fn token(&self) -> Result<AccessToken, BackendError> {
        let mut cache = self.cache.lock().await;
        if let Some((t, until)) = cache.as_ref()
            && Instant::now() + Duration::from_secs(300) < *until
        {
            return Ok(t.clone());
        }
        let (token, lifetime) = self.fetch().await?;
        *cache = Some((token.clone(), Instant::now() + lifetime));
        Ok(token)
    }

    /// Forgets the token (after Graph answered 401).
    pub async fn forget(&self) {
        *self.cache.lock().await = None;
    }

    async fn fetch(&self) -> Result<(AccessToken, Duration), BackendError> {
        let url = TokenUrl::new(self.token_url.clone())
            .map_err(|_| BackendError::Invalid(format!("token URL {:?}", self.token_url)))?;
        let client = BasicClient::new(ClientId::new(self.client_id.clone()))
            .set_token_uri(url)
            .set_auth_type(AuthType::RequestBody);
        let answer = match &self.proof {
            Proof::Secret(secret) => {
                let client = client.set_client_secret(ClientSecret::new(secret.clone()));
                self.send(client.exchange_client_credentials()).await
            }
            Proof::Certificate { key, thumbprint } => {
                let assertion = self.sign(key, thumbprint)?;
                let exchange = client
                    .exchange_client_credentials()
                    .add_extra_param("client_assertion_type", ASSERTION_TYPE)
                    .add_extra_param("client_assertion", assertion);
                self.send(exchange).await
            }
        };
        self.fetched.fetch_add(1, Ordering::Relaxed);
        match answer {
            Ok(t) => {
                let lifetime = t
                    .expires_in()
                    .unwrap_or(Duration::from_secs(3600))
                    .clamp(Duration::from_secs(60), Duration::from_secs(86400));
                Ok((
                    AccessToken(t.access_token().secret().as_str().into()),
                    lifetime,
                ))
            }
            Err(e) => Err(self.refused(e)),
        }
    }

    /// Sends one client-credentials request for the Graph scope through reqwest.
    async fn send(
        &self,
        exchange: oauth2::ClientCredentialsTokenRequest<
            '_,
            BasicErrorResponse,
            oauth2::basic::BasicTokenResponse,
        >,
    ) -> Result<oauth2::basic::BasicTokenResponse, Refusal> {
        let exchange = exchange.add_scope(Scope::new(GRAPH_SCOPE.into()));
        // The hook's future owns what it uses: one borrowing `self` trips the compiler's
        // reasoning about the backend's futures being `Send`.
        let (client, url) = (self.http.clone(), self.token_url.clone());
        let http = move |req: oauth2::HttpRequest| post(client.clone(), url.clone(), req);
        exchange.request_async(&http).await
    }

    /// The client assertion: PS256 over aud/iss/sub/jti/nbf/exp, valid ten minutes.
    fn sign(&self, key: &EncodingKey, thumbprint: &str) -> Result<String, BackendError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut header = Header::new(Algorithm::PS256);
        header.x5t_s256 = Some(thumbprint.to_string());
        // Unique per assertion (Microsoft refuses a replayed one): the time and a counter.
        let jti = crate::card::hex_digest(
            format!(
                "{now}:{}:{:?}",
                self.fetched.load(Ordering::Relaxed),
                Instant::now()
            )
            .as_bytes(),
        );
        let claims = Claims {
            aud: &self.token_url,
            iss: &self.client_id,
            sub: &self.client_id,
            jti,
            nbf: now.saturating_sub(60),
            exp: now + 540,
        };
        jsonwebtoken::encode(&header, &claims, key)
            .map_err(|e| BackendError::Invalid(format!("signing the client assertion failed: {e}")))
    }

    /// What a refusal means, with the fix: the AADSTS code decides.
    fn refused(&self, e: Refusal) -> BackendError {
        let (tenant, app) = (&self.tenant, &self.client_id);
        let desc = match e {
            RequestTokenError::ServerResponse(r) => r
                .error_description()
                .cloned()
                .unwrap_or_else(|| r.error().to_string()),
            RequestTokenError::Request(t) => return BackendError::Transient(t.0),
            other => {
                return BackendError::Invalid(format!(
                    "token endpoint {}: {other}",
                    self.token_url
                ));
            }
        };
        let code = desc.split(':').next().unwrap_or("").trim().to_string();
        // The first sentence says what Microsoft saw; trace and correlation ids follow it.
        let said = desc.lines().next().unwrap_or("").trim_end_matches('.');
        let fix = match code.as_str() {
            "AADSTS90002" | "AADSTS900023" => format!(
                "tenant {tenant:?} was not found: set `tenant` to the Directory (tenant) ID shown on the app registration's Overview page"
            ),
            "AADSTS700016" => format!(
                "no app with client id {app} in tenant {tenant}: set `client_id` to the Application (client) ID of the app registration, in the tenant it was registered in"
            ),
            "AADSTS7000215" | "AADSTS7000222" => format!(
                "the client secret of app {app} was refused: put the secret's Value (not its Secret ID) alone in client_secret_file; if it expired, add a new one under Certificates & secrets"
            ),
            "AADSTS700027" | "AADSTS700024" | "AADSTS700023" | "AADSTS50027" => format!(
                "the certificate assertion of app {app} was refused: upload certificate_file to the app registration (Certificates & secrets → Certificates), check that private_key_file is its key and the clock is right"
            ),
            "AADSTS70011" => {
                "the scope was refused: groupsync asks for https://graph.microsoft.com/.default"
                    .into()
            }
            "AADSTS7000112" | "AADSTS700025" => format!(
                "app {app} is disabled or not allowed to use client credentials in tenant {tenant}: enable it in Enterprise applications"
            ),
            _ => return BackendError::Auth(format!("token endpoint refused app {app}: {said}")),
        };
        BackendError::Auth(format!("{fix} ({said})"))
    }
}

/// One token request, through reqwest, retried on a 5xx or a connection error.
async fn post(
    http: reqwest::Client,
    token_url: String,
    req: oauth2::HttpRequest,
) -> Result<oauth2::HttpResponse, Transport> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let r = reqwest::Request::try_from(req.clone())
            .map_err(|e| Transport(format!("token request: {e}")))?;
        match http.execute(r).await {
            Ok(resp) if resp.status().is_server_error() && attempt < 4 => {}
            Ok(resp) => return http_response(resp).await,
            Err(e) if attempt < 4 => {
                tracing::debug!("token endpoint: {}", e.without_url());
            }
            Err(e) => {
                return Err(Transport(format!(
                    "token endpoint {}: {}",
                    token_url,
                    crate::backend::with_causes(&e.without_url())
                )));
            }
        }
        tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
    }
}

type Refusal = RequestTokenError<Transport, BasicErrorResponse>;

/// reqwest's answer as the `http` response the `oauth2` crate reads.
async fn http_response(resp: reqwest::Response) -> Result<oauth2::HttpResponse, Transport> {
    let mut b = oauth2::http::Response::builder().status(resp.status());
    for (k, v) in resp.headers() {
        b = b.header(k, v);
    }
    let body = resp.bytes().await.map_err(|e| {
        Transport(format!(
            "token endpoint: {}",
            crate::backend::with_causes(&e)
        ))
    })?;
    b.body(body.to_vec())
        .map_err(|e| Transport(format!("token endpoint: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thumbprint_is_the_sha256_of_the_der_in_base64url() {
        let der = b"not really a certificate but bytes";
        let pem = format!(
            "junk\n-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::engine::general_purpose::STANDARD.encode(der)
        );
        let want = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(der));
        assert_eq!(thumbprint_of(&pem).unwrap(), want);
        assert!(!want.contains('=') && !want.contains('+') && !want.contains('/'));
        assert!(thumbprint_of("-----BEGIN PRIVATE KEY-----\nAAAA\n").is_err());
    }
}
