//! One Microsoft Graph call, and JSON batches of them: the app's bearer token, a client-side
//! rate limit, at most four requests in flight per mailbox (Outlook's limit per app and
//! mailbox), retries honouring Retry-After on 429 and backing off on 500/502/503/504, and
//! Graph's error body (`{"error":{"code","message"}}`) read into `ApiError`.
//!
//! Batches of requests (`Client::batch`) are in `batch.rs`.
//!
//! It must not send again a request that may have changed something unless the caller says it
//! is safe to repeat: a create whose answer was lost is settled by the caller (a read by tag).

use backon::{ExponentialBuilder, Retryable};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::auth::TokenSource;
use crate::backend::BackendError;

/// Outlook's concurrent requests per app and mailbox.
pub const PER_MAILBOX: usize = 4;
/// Requests in one `$batch`.
pub const BATCH_MAX: usize = 20;
/// Large pages (folder listings of up to 1,000 contacts) held at once.
const LARGE_PAGES: usize = 2;
/// Asks for ids that survive a contact's move between folders.
pub(super) const IMMUTABLE_IDS: &str = "IdType=\"ImmutableId\"";

/// A call that did not succeed.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status, 0 when no answer came.
    pub status: u16,
    /// `error.code` (`ErrorItemNotFound`, `MailboxNotEnabledForRESTAPI`, …) or empty.
    pub code: String,
    pub message: String,
    /// True when the request may have reached Graph and been applied.
    pub ambiguous: bool,
    /// The wait Graph asked for (Retry-After).
    pub retry_after: Option<Duration>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            0 => write!(f, "{}", self.message),
            s => write!(f, "HTTP {s} {}: {}", self.code, self.message),
        }
    }
}

impl ApiError {
    /// Worth trying again later without changing anything.
    pub fn is_retryable(&self) -> bool {
        matches!(self.status, 0 | 429 | 500 | 502 | 503 | 504)
    }

    /// The error code, compared without case (Graph spells some codes both ways).
    pub fn is(&self, code: &str) -> bool {
        self.code.eq_ignore_ascii_case(code)
    }

    /// Reads Graph's error body.
    pub fn parse(status: u16, body: &Value, retry_after: Option<Duration>) -> Self {
        let e = body.get("error").unwrap_or(&Value::Null);
        let text = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        ApiError {
            status,
            code: text("code"),
            message: text("message"),
            ambiguous: status >= 500 || status == 429,
            retry_after,
        }
    }

    /// The backend error this is, for `what` (a contact, a folder, a user).
    pub fn to_backend(&self, what: &str) -> BackendError {
        let what = what.to_string();
        match self.status {
            _ if self.is("MailboxNotEnabledForRESTAPI") => BackendError::Skipped(
                "no Exchange Online mailbox (MailboxNotEnabledForRESTAPI: unlicensed, on-premises or inactive)".into(),
            ),
            404 => BackendError::NotFound { what },
            409 => BackendError::AlreadyExists { what },
            412 => BackendError::Conflict { what },
            401 | 403 => BackendError::Auth(format!(
                "{what}: {self}. Grant the app the application permission Contacts.ReadWrite (with admin consent); if an application access policy or an Exchange RBAC scope limits the app, include this mailbox"
            )),
            400 | 413 | 422 => BackendError::Refused(format!("{what}: {self}")),
            _ if self.is_retryable() => BackendError::Transient(format!("{what}: {self}")),
            _ => BackendError::Invalid(format!("{what}: {self}")),
        }
    }
}

/// A request body. JSON is held as text (a few hundred bytes a contact, where a `Value` tree
/// takes several times that): a write of 200 contacts at each of many mailboxes at once stays
/// small.
#[derive(Debug, Clone)]
pub enum Body {
    Json(Box<RawValue>),
    /// Bytes with their content type (a photo).
    Bytes(bytes::Bytes, &'static str),
}

/// One request: to Graph directly (`Client::send`) or inside a batch (`Client::batch`).
#[derive(Debug, Clone)]
pub struct Request {
    /// The operation's name, for counts and logs (`contacts.create`, …).
    pub op: &'static str,
    pub method: Method,
    /// The path after `/v1.0`, query included (`/users/{id}/contactFolders?$top=1`).
    pub path: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Option<Body>,
    /// Safe to send again after an answer that may have been lost.
    pub idempotent: bool,
    /// The answer is left as bytes (`Answer::body` is `Null`): a large page the caller reads
    /// contact by contact instead of as one JSON tree.
    pub raw_answer: bool,
    /// In a batch, only these properties of the answer's body are kept (a create's answer
    /// echoes the whole contact; the caller needs its id and change key): many answers held
    /// at once stay small.
    pub keep: Option<&'static [&'static str]>,
}

/// The longest Retry-After waited out as asked. Outlook's quota is 10,000 requests a mailbox
/// in 10 minutes, and it asks for at most that window; a request sent before the wait is over
/// only earns another 429 (and counts against the quota).
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(600);

impl Request {
    pub fn get(op: &'static str, path: String) -> Self {
        Request {
            op,
            method: Method::GET,
            path,
            headers: vec![],
            body: None,
            idempotent: true,
            raw_answer: false,
            keep: None,
        }
    }

    pub fn with_body(op: &'static str, method: Method, path: String, body: Value) -> Self {
        Request {
            op,
            idempotent: method != Method::POST,
            method,
            path,
            headers: vec![],
            body: Some(Body::Json(raw(&body))),
            raw_answer: false,
            keep: None,
        }
    }

    /// Keeps only these properties of the answer's body in a batch (see `keep`).
    pub fn keeping(mut self, keep: &'static [&'static str]) -> Self {
        self.keep = Some(keep);
        self
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// A successful answer: its status and body (JSON, `Null` when empty or not JSON), and its raw
/// bytes for a photo.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub bytes: bytes::Bytes,
    /// For a large page (`Request::raw_answer`): one of a few places among the pages held at
    /// once, given back when the caller drops the answer.
    pub held: Option<Arc<tokio::sync::OwnedSemaphorePermit>>,
}

/// Calls made, by operation (batch items counted under their own operation too).
#[derive(Debug, Default)]
pub struct OpCounts(Mutex<BTreeMap<&'static str, u64>>);

impl OpCounts {
    pub(super) fn bump(&self, op: &'static str, n: u64) {
        *crate::mutex::lock(&self.0).entry(op).or_default() += n;
    }

    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        crate::mutex::lock(&self.0).clone()
    }
}

/// The HTTP client shared by every call.
pub struct Client {
    http: reqwest::Client,
    pub tokens: TokenSource,
    /// `{graph_url}/v1.0`.
    base: String,
    limiter: governor::DefaultDirectRateLimiter,
    /// One semaphore of `PER_MAILBOX` places per mailbox (user id).
    mailboxes: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    pub counts: OpCounts,
    pub retries: AtomicU64,
    /// Places for large pages held at once (see `Answer::held`).
    large: Arc<tokio::sync::Semaphore>,
}

/// A failed attempt.
type Failed = ApiError;

impl Client {
    pub fn new(
        http: reqwest::Client,
        tokens: TokenSource,
        graph_url: &str,
        requests_per_minute: u32,
    ) -> Self {
        let rpm = std::num::NonZeroU32::new(requests_per_minute.max(1)).expect("non-zero");
        let burst = std::num::NonZeroU32::new((requests_per_minute / 60).max(BATCH_MAX as u32))
            .expect("non-zero");
        Client {
            http,
            tokens,
            base: format!("{}/v1.0", graph_url.trim_end_matches('/')),
            limiter: governor::RateLimiter::direct(
                governor::Quota::per_minute(rpm).allow_burst(burst),
            ),
            mailboxes: Default::default(),
            counts: Default::default(),
            retries: Default::default(),
            large: Arc::new(tokio::sync::Semaphore::new(LARGE_PAGES)),
        }
    }

    /// The absolute URL of a path after `/v1.0`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The path after `/v1.0` of an absolute URL Graph handed out (a nextLink, a deltaLink);
    /// `None` for one that points elsewhere (the token is never sent to another host).
    pub fn path_of(&self, url: &str) -> Option<String> {
        url.strip_prefix(&self.base)
            .filter(|p| p.starts_with('/'))
            .map(str::to_string)
    }

    /// `n` places among the mailbox's `PER_MAILBOX`, held while a request to it runs.
    async fn place(
        &self,
        mailbox: Option<&str>,
        n: usize,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let m = mailbox.filter(|_| n > 0)?;
        let sem = crate::mutex::lock(&self.mailboxes)
            .entry(m.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(PER_MAILBOX)))
            .clone();
        sem.acquire_many_owned(n.min(PER_MAILBOX) as u32).await.ok()
    }

    /// Sends a request (to the mailbox `mailbox`, if it is a mailbox call), retrying what is
    /// safe to retry.
    pub async fn send(&self, mailbox: Option<&str>, req: &Request) -> Result<Answer, ApiError> {
        self.send_holding(mailbox, req, 1).await
    }

    /// `send`, holding `places` of the mailbox's places while the request runs.
    pub(super) async fn send_holding(
        &self,
        mailbox: Option<&str>,
        req: &Request,
        places: usize,
    ) -> Result<Answer, ApiError> {
        // A 401 from Graph is tried once more with a new token; a refused token is not.
        let retryable = |e: &Failed| {
            (e.is_retryable() || e.status == 401 && !e.is("TokenRefused"))
                && (req.idempotent || !e.ambiguous)
        };
        (|| self.attempt(mailbox, req, places))
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(250))
                    .with_max_delay(Duration::from_secs(32))
                    .with_max_times(6)
                    .with_jitter(),
            )
            .when(retryable)
            .adjust(|e: &Failed, d| e.retry_after.map(|a| a.min(RETRY_AFTER_MAX)).or(d))
            .notify(|e, after| {
                self.retries.fetch_add(1, Ordering::Relaxed);
                tracing::info!("{}: {e}; retrying in {after:?}", req.op)
            })
            .await
    }

    /// One attempt: the token, a place in the mailbox and under the rate limit, the request.
    async fn attempt(
        &self,
        mailbox: Option<&str>,
        req: &Request,
        places: usize,
    ) -> Result<Answer, Failed> {
        let token = self.tokens.token().await.map_err(token_error)?;
        let _place = self.place(mailbox, places).await;
        self.limiter.until_ready().await;
        self.counts.bump(req.op, 1);
        let mut r = self
            .http
            .request(req.method.clone(), self.url(&req.path))
            .header("authorization", token.bearer());
        if mailbox.is_some() {
            r = r.header("Prefer", IMMUTABLE_IDS);
        }
        for (k, v) in &req.headers {
            r = r.header(*k, v);
        }
        r = match &req.body {
            Some(Body::Json(v)) => r
                .header("content-type", "application/json")
                .body(v.get().to_owned()),
            Some(Body::Bytes(b, kind)) => r.header("content-type", *kind).body(b.clone()),
            None => r,
        };
        let resp = r.send().await.map_err(|e| {
            let ambiguous = !e.is_connect();
            transport_error(req, e, ambiguous)
        })?;
        let status = resp.status();
        let after = retry_after(
            resp.headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
        );
        // A large page waits in its connection for a place before it is read: memory does not
        // grow with the number of mailboxes read at once.
        let held = match req.raw_answer && status.is_success() {
            true => self.large.clone().acquire_owned().await.ok().map(Arc::new),
            false => None,
        };
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transport_error(req, e, true))?;
        if held.is_some() {
            return Ok(Answer {
                status: status.as_u16(),
                body: Value::Null,
                bytes,
                held,
            });
        }
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(Answer {
                status: status.as_u16(),
                body,
                bytes,
                held: None,
            });
        }
        if status == StatusCode::UNAUTHORIZED {
            self.tokens.forget().await;
        }
        Err(ApiError::parse(status.as_u16(), &body, after))
    }

    pub fn op_counts(&self) -> BTreeMap<&'static str, u64> {
        self.counts.snapshot()
    }
}

/// A value as JSON text.
pub(super) fn raw(v: &impl serde::Serialize) -> Box<RawValue> {
    serde_json::value::to_raw_value(v).expect("JSON values and batch items serialise")
}

pub(super) fn retry_after(v: Option<&str>) -> Option<Duration> {
    v.and_then(|s| s.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// A token that could not be had, as a call's error (retried if the token endpoint may answer
/// next time; an `Auth` refusal is kept whole so its fix reaches the administrator).
fn token_error(e: BackendError) -> ApiError {
    let retry = e.is_retryable();
    ApiError {
        status: if retry { 0 } else { 401 },
        code: if retry {
            String::new()
        } else {
            "TokenRefused".into()
        },
        message: e.to_string(),
        ambiguous: false,
        retry_after: None,
    }
}

/// A request that failed on the way or whose answer could not be read. `ambiguous`: it may
/// have reached Graph.
fn transport_error(req: &Request, e: reqwest::Error, ambiguous: bool) -> ApiError {
    ApiError {
        status: 0,
        code: String::new(),
        message: format!(
            "{} {}: {}",
            req.op,
            req.path.split('?').next().unwrap_or(""),
            crate::backend::with_causes(&e.without_url())
        ),
        ambiguous,
        retry_after: None,
    }
}
