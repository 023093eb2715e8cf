//! The wire client: one request with the account's (or the user's own) credentials, retried
//! with backoff on 5xx, 429 and connection errors (honouring Retry-After), and PROPFIND.
//! A status the engine must branch on becomes its `BackendError` here.
//!
//! It must not read or build a vCard.

use backon::{ExponentialBuilder, Retryable};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use std::time::Duration;

use super::{CarddavBackend, xml};
use crate::backend::{BackendError, Result, with_causes};

pub(super) fn io_err(what: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::Transient(format!("{what}: {e}"))
}

/// The path of an href that may be an absolute URL (`http://host:port/a/b/` → `/a/b/`).
pub(super) fn href_path(href: &str) -> String {
    match href.split_once("://") {
        Some((_, rest)) => rest
            .find('/')
            .map(|i| rest[i..].to_string())
            .unwrap_or_else(|| "/".into()),
        None => href.to_string(),
    }
}

/// Requests.
impl CarddavBackend {
    /// The credentials for a path: the user's own when the path is under a home listed in
    /// `credentials_file`, else the admin account's.
    pub(super) fn credentials_for(&self, path: &str) -> Result<(&str, &str)> {
        for (user, password) in &self.cfg.users {
            if path.starts_with(&self.home(user)) {
                return Ok((user.as_str(), password.as_str()));
            }
        }
        match &self.cfg.admin {
            Some(c) => Ok((c.username.as_str(), c.password.as_str())),
            None => Err(BackendError::Auth(format!(
                "no credentials for {path}: the user is not in credentials_file and no admin account (username, password_file) is configured"
            ))),
        }
    }

    /// Sends one request, retrying transient failures. Returns status, headers and body.
    pub(super) async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Option<String>,
    ) -> Result<(StatusCode, HeaderMap, String)> {
        let url = format!("{}{}", self.base, path);
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|e| BackendError::Invalid(e.to_string()))?;
        let (username, password) = self.credentials_for(path)?;
        let attempt = || async {
            let mut req = self
                .http
                .request(method.clone(), &url)
                .basic_auth(username, Some(password));
            for (k, v) in headers {
                req = req.header(
                    *k,
                    HeaderValue::from_str(v).map_err(|e| (None, io_err("header", e)))?,
                );
            }
            if let Some(b) = &body {
                req = req.body(b.clone());
            }
            let resp = req.send().await.map_err(|e| {
                let e = e.without_url();
                (None, io_err(&format!("{method} {url}"), with_causes(&e)))
            })?;
            let status = resp.status();
            // 423 Locked (a server busy with the resource) is worth retrying too.
            if status.is_server_error()
                || status == StatusCode::TOO_MANY_REQUESTS
                || status == StatusCode::LOCKED
            {
                let after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(Duration::from_secs);
                return Err((
                    after,
                    BackendError::Transient(format!("{method} {url}: HTTP {status}")),
                ));
            }
            let headers = resp.headers().clone();
            let text = resp.text().await.map_err(|e| {
                let e = e.without_url();
                (None, io_err(&format!("{method} {url}"), with_causes(&e)))
            })?;
            Ok((status, headers, text))
        };
        attempt
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(200))
                    .with_max_delay(Duration::from_secs(30))
                    .with_max_times(4)
                    .with_jitter(),
            )
            .adjust(|(after, _): &(Option<Duration>, BackendError), d| {
                after.map(|a| a.min(Duration::from_secs(120))).or(d)
            })
            .notify(|(_, e), after| tracing::info!("{e}; retrying in {after:?}"))
            .await
            .map_err(|(_, e)| e)
    }

    pub(super) fn unexpected(what: &str, status: StatusCode, body: &str) -> BackendError {
        let snippet: String = body.chars().take(200).collect();
        match status {
            StatusCode::UNAUTHORIZED => BackendError::Auth(format!(
                "{what}: HTTP 401: the server refused the credentials (`username` and `password_file`, or the user's line in `credentials_file`)"
            )),
            StatusCode::FORBIDDEN => BackendError::Auth(format!(
                "{what}: HTTP 403: the account may not do this; give `username` read and write access to every user's address books"
            )),
            _ => BackendError::Invalid(format!("{what}: unexpected HTTP {status}: {snippet}")),
        }
    }

    pub(super) async fn propfind(
        &self,
        path: &str,
        depth: &str,
        body: &str,
    ) -> Result<Option<Vec<xml::Response>>> {
        let (status, _, text) = self
            .send(
                "PROPFIND",
                path,
                &[
                    ("Depth", depth.to_string()),
                    ("Content-Type", "application/xml; charset=utf-8".into()),
                ],
                Some(body.to_string()),
            )
            .await?;
        match status.as_u16() {
            207 => {
                let mut list = xml::parse_multistatus(&text)
                    .map_err(|e| BackendError::Invalid(format!("PROPFIND {path}: {e}")))?;
                // Some servers (Xandikos) answer absolute URLs, and a missing resource with a
                // 207 whose only response is a 404.
                for r in &mut list {
                    r.href = href_path(&r.href);
                }
                let me = path.trim_end_matches('/');
                if list
                    .iter()
                    .any(|r| r.href.trim_end_matches('/') == me && r.status == Some(404))
                {
                    return Ok(None);
                }
                Ok(Some(list))
            }
            404 => Ok(None),
            _ => Err(Self::unexpected(&format!("PROPFIND {path}"), status, &text)),
        }
    }
}
