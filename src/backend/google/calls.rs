//! How a People or Directory call is phrased (as a user, or as the configured admin) and what
//! a failed call means to the engine (`api`, and a batch's per-contact errors).
//!
//! It must not retry (the wire client `http` does) nor decide anything from an answer.

use reqwest::Method;
use serde_json::Value;
use std::collections::HashMap;

use super::GoogleBackend;
use super::auth::{CONTACTS_SCOPE, DIRECTORY_SCOPES};
use super::http::{ApiError, Call};
use crate::backend::{BackendError, User};

pub(super) fn api(e: ApiError, what: &str) -> BackendError {
    if e.is_retryable() {
        BackendError::Transient(format!("{what}: {e}"))
    } else if e.status == 404 {
        BackendError::NotFound {
            what: what.to_string(),
        }
    } else if e.status == 409 {
        BackendError::AlreadyExists {
            what: what.to_string(),
        }
    } else if e.code == "FAILED_PRECONDITION"
        || e.has_reason("failedPrecondition")
        || e.status == 412
    {
        BackendError::Conflict {
            what: what.to_string(),
        }
    } else if e.status == 401 || e.status == 403 {
        // Not a rate limit (those are retryable, above): the service account may not do this.
        BackendError::Auth(format!("{what}: {e}"))
    } else {
        BackendError::Invalid(format!("{what}: {e}"))
    }
}

/// Per-item errors of a failed batch call (`BatchCreateContactsErrorDetails` /
/// `BatchUpdateContactsErrorDetails`): key (index or resourceName) → Status.
pub(super) fn contact_errors(e: &ApiError) -> Option<HashMap<String, Value>> {
    let details = e.body.get("details")?.as_array()?;
    let mut out = HashMap::new();
    for d in details {
        if let Some(m) = d.get("contactErrors").and_then(Value::as_object) {
            for (k, v) in m {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

pub(super) fn status_error(status: &Value, what: &str) -> BackendError {
    let code = status.get("code").and_then(Value::as_i64).unwrap_or(0);
    let msg = status
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("failed");
    match code {
        // FAILED_PRECONDITION: the etag is stale.
        9 => BackendError::Conflict {
            what: what.to_string(),
        },
        5 => BackendError::NotFound {
            what: what.to_string(),
        },
        8 | 13 | 14 | 4 | 10 => BackendError::Transient(format!("{what}: {msg}")),
        // INVALID_ARGUMENT for one contact of a batch: that contact only.
        3 => BackendError::Refused(format!("{what}: {msg}")),
        7 | 16 => BackendError::Auth(format!("{what}: {msg}")),
        _ => BackendError::Invalid(format!("{what}: {msg}")),
    }
}

/// A People API request before it is addressed to a user: its API method name (for counts and
/// logs), HTTP method, path under `/v1/`, query and body, and whether it may be sent again.
pub(super) struct Ask<'a> {
    name: &'static str,
    method: Method,
    path: String,
    query: Vec<(&'a str, String)>,
    body: Option<&'a Value>,
    raw_body: Option<&'a bytes::Bytes>,
    idempotent: bool,
}

impl<'a> Ask<'a> {
    /// A request without query or body, safe to send again.
    pub(super) fn new(name: &'static str, method: Method, path: impl Into<String>) -> Self {
        Ask {
            name,
            method,
            path: path.into(),
            query: vec![],
            body: None,
            raw_body: None,
            idempotent: true,
        }
    }

    pub(super) fn query(self, query: Vec<(&'a str, String)>) -> Self {
        Ask { query, ..self }
    }

    pub(super) fn body(self, body: &'a Value) -> Self {
        Ask {
            body: Some(body),
            ..self
        }
    }

    /// A JSON body already written out (see `http::Call::raw_body`).
    pub(super) fn raw(self, body: &'a bytes::Bytes) -> Self {
        Ask {
            raw_body: Some(body),
            ..self
        }
    }

    /// Not to be sent again after a lost answer (a create: it may have been made).
    pub(super) fn once(self) -> Self {
        Ask {
            idempotent: false,
            ..self
        }
    }
}

/// Addresses and calls.
impl GoogleBackend {
    pub(super) fn email(&self, user: &User) -> String {
        crate::mutex::lock(&self.emails)
            .get(&user.id)
            .cloned()
            .unwrap_or_else(|| user.name.clone())
    }

    pub(super) fn people(&self, path: &str) -> String {
        format!("{}/v1/{path}", self.cfg.people_url.trim_end_matches('/'))
    }

    pub(super) fn directory(&self, path: &str) -> String {
        format!(
            "{}/admin/directory/v1/{path}",
            self.cfg.directory_url.trim_end_matches('/')
        )
    }

    pub(super) async fn as_admin(
        &self,
        name: &'static str,
        url: String,
        query: Vec<(&str, String)>,
    ) -> std::result::Result<Value, ApiError> {
        self.client
            .send(&Call {
                name,
                method: Method::GET,
                url,
                query,
                body: None,
                raw_body: None,
                user: &self.cfg.admin,
                scopes: &DIRECTORY_SCOPES.join(" "),
                idempotent: true,
            })
            .await
    }

    /// `ask` addressed as `email` (the user's primary address).
    pub(super) fn people_call<'a>(&self, email: &'a str, ask: Ask<'a>) -> Call<'a> {
        Call {
            name: ask.name,
            method: ask.method,
            url: self.people(&ask.path),
            query: ask.query,
            body: ask.body,
            raw_body: ask.raw_body,
            user: email,
            scopes: CONTACTS_SCOPE,
            idempotent: ask.idempotent,
        }
    }

    /// Sends `ask` as `user` and reads its answer as JSON.
    pub(super) async fn as_user(
        &self,
        user: &User,
        ask: Ask<'_>,
    ) -> std::result::Result<Value, ApiError> {
        let email = self.email(user);
        self.client.send(&self.people_call(&email, ask)).await
    }
}
