//! One Google API call: a bearer token for the impersonated user, the global rate limit, retries
//! with exponential backoff and jitter honouring Retry-After (429, 500, 502, 503, 504 and 403
//! rate-limit reasons), and Google's error body (`google.rpc.Status`, plus the legacy
//! `errors[].reason`) read into `ApiError`.
//!
//! It must not retry a call that may have changed something unless the caller says the call is
//! safe to repeat: a create that timed out is settled by re-reading, not by sending it again.

use backon::{ExponentialBuilder, Retryable};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;

use super::auth::TokenSource;

/// A call that did not succeed.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status, 0 when no answer came.
    pub status: u16,
    /// `error.status` (`FAILED_PRECONDITION`, …) or empty.
    pub code: String,
    /// Reasons from `details[].reason` and `errors[].reason`.
    pub reasons: Vec<String>,
    pub message: String,
    /// The whole `error` object, for batch error details.
    pub body: Value,
    /// True when the request may have reached the server and been applied.
    pub ambiguous: bool,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.status == 0 {
            write!(f, "{}", self.message)
        } else {
            write!(f, "HTTP {} {}: {}", self.status, self.code, self.message)?;
            if !self.reasons.is_empty() {
                write!(f, " ({})", self.reasons.join(", "))?;
            }
            Ok(())
        }
    }
}

impl ApiError {
    pub fn has_reason(&self, r: &str) -> bool {
        self.reasons.iter().any(|x| x == r)
    }

    /// Worth trying again later without changing anything.
    pub fn is_retryable(&self) -> bool {
        matches!(self.status, 0 | 429 | 500 | 502 | 503 | 504)
            || (self.status == 403
                && self.reasons.iter().any(|r| {
                    matches!(
                        r.as_str(),
                        "rateLimitExceeded"
                            | "userRateLimitExceeded"
                            | "quotaExceeded"
                            | "RATE_LIMIT_EXCEEDED"
                    )
                }))
    }

    fn parse(status: StatusCode, text: &str) -> Self {
        let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        let e = v.get("error").cloned().unwrap_or(Value::Null);
        let mut reasons = vec![];
        for list in ["details", "errors"] {
            if let Some(a) = e.get(list).and_then(Value::as_array) {
                reasons.extend(
                    a.iter()
                        .filter_map(|d| d.get("reason").and_then(Value::as_str))
                        .map(str::to_string),
                );
            }
        }
        let message = e
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| text.chars().take(200).collect());
        ApiError {
            status: status.as_u16(),
            code: e
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            reasons,
            message,
            body: e,
            ambiguous: status.is_server_error(),
        }
    }
}

/// Per API method call counts (for `check`, benchmarks and logs).
#[derive(Debug, Default)]
pub struct MethodCounts(std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>);

impl MethodCounts {
    fn bump(&self, m: &'static str) {
        *crate::mutex::lock(&self.0).entry(m).or_default() += 1;
    }

    pub fn snapshot(&self) -> std::collections::BTreeMap<&'static str, u64> {
        crate::mutex::lock(&self.0).clone()
    }
}

/// The HTTP client shared by every call.
pub struct Client {
    pub http: reqwest::Client,
    pub tokens: TokenSource,
    limiter: governor::DefaultDirectRateLimiter,
    pub counts: MethodCounts,
    pub retries: AtomicU64,
    /// Large answers (connections.list pages, up to 1,000 contacts) read and held at once. A
    /// page waits in its connection until it gets a permit, so memory does not grow with the
    /// number of users read in parallel.
    large_answers: Arc<tokio::sync::Semaphore>,
    /// The buffers of large answers that were read and dropped, kept for the next ones (no
    /// more than there are permits): a page is then read into memory already mapped, not into
    /// a megabyte or two of fresh pages, each faulted in (a fifth of a rerun's CPU time).
    large_bodies: Arc<Mutex<Vec<Vec<u8>>>>,
}

/// How many large answers are read and held at once.
const LARGE_ANSWERS: usize = 2;

/// A large answer's text (see `Client::send_large`), held with its permit. Dropped, its buffer
/// goes back to the client for the next large answer.
pub struct LargeAnswer {
    text: String,
    pool: Arc<Mutex<Vec<Vec<u8>>>>,
    _permit: OwnedSemaphorePermit,
}

impl std::ops::Deref for LargeAnswer {
    type Target = str;

    fn deref(&self) -> &str {
        &self.text
    }
}

impl Drop for LargeAnswer {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.text).into_bytes();
        buf.clear();
        let mut pool = crate::mutex::lock(&self.pool);
        if pool.len() < LARGE_ANSWERS {
            pool.push(buf);
        }
    }
}

/// What one call is.
pub struct Call<'a> {
    /// API method name, e.g. `people.batchCreateContacts` (for counts and logs).
    pub name: &'static str,
    pub method: Method,
    pub url: String,
    pub query: Vec<(&'a str, String)>,
    pub body: Option<&'a Value>,
    /// A JSON body already written out (large batch bodies, built without a JSON tree); sent
    /// again on a retry without a copy.
    pub raw_body: Option<&'a bytes::Bytes>,
    /// Impersonated user (email) and scopes.
    pub user: &'a str,
    pub scopes: &'a str,
    /// Safe to send again after a 5xx or a lost answer.
    pub idempotent: bool,
}

impl Client {
    pub fn new(http: reqwest::Client, tokens: TokenSource, requests_per_minute: u32) -> Self {
        let rpm = std::num::NonZeroU32::new(requests_per_minute.max(1)).expect("non-zero");
        let burst = std::num::NonZeroU32::new((requests_per_minute / 60).max(1)).expect("non-zero");
        Client {
            http,
            tokens,
            limiter: governor::RateLimiter::direct(
                governor::Quota::per_minute(rpm).allow_burst(burst),
            ),
            counts: Default::default(),
            retries: Default::default(),
            large_answers: Arc::new(tokio::sync::Semaphore::new(LARGE_ANSWERS)),
            large_bodies: Default::default(),
        }
    }

    /// Sends a call, retrying what is safe to retry; returns the JSON body (`Null` if empty).
    pub async fn send(&self, call: &Call<'_>) -> Result<Value, ApiError> {
        let text = self.send_text(call).await?;
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|_| bad_body(call.name))
    }

    /// Sends a call as `send` does and returns the body as text, for callers that read large
    /// answers without building a JSON tree of them.
    pub async fn send_text(&self, call: &Call<'_>) -> Result<String, ApiError> {
        self.send_text_inner(call, false).await.map(|(t, _)| t)
    }

    /// Sends a call whose answer is large, as `send_text` does. Its body is read only once one
    /// of a few permits is free, into a buffer an earlier large answer left; the permit comes
    /// back with the text, and both go back when the caller drops it.
    pub async fn send_large(&self, call: &Call<'_>) -> Result<LargeAnswer, ApiError> {
        let (text, permit) = self.send_text_inner(call, true).await?;
        Ok(LargeAnswer {
            text,
            pool: self.large_bodies.clone(),
            _permit: permit.expect("a large answer holds a permit"),
        })
    }

    async fn send_text_inner(
        &self,
        call: &Call<'_>,
        large: bool,
    ) -> Result<(String, Option<OwnedSemaphorePermit>), ApiError> {
        let retryable = |(_, e): &Failed| {
            (e.is_retryable() || e.status == 401 && e.reasons.is_empty())
                && (call.idempotent || !e.ambiguous)
        };
        (|| self.attempt(call, large))
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(250))
                    .with_max_delay(Duration::from_secs(32))
                    .with_max_times(6)
                    .with_jitter(),
            )
            .when(retryable)
            .adjust(|(after, _): &Failed, d| after.map(|a| a.min(Duration::from_secs(120))).or(d))
            .notify(|(_, e), after| {
                self.retries.fetch_add(1, Ordering::Relaxed);
                tracing::info!("{}: {e}; retrying in {after:?}", call.name)
            })
            .await
            .map_err(|(_, e)| e)
    }

    /// One attempt at a call: the user's token, a place under the rate limit, the request, and
    /// its answer read whole (a large one once a permit is free).
    async fn attempt(
        &self,
        call: &Call<'_>,
        large: bool,
    ) -> Result<(String, Option<OwnedSemaphorePermit>), Failed> {
        let token = self
            .tokens
            .token(call.user, call.scopes)
            .await
            .map_err(|e| (None, token_error(&e)))?;
        self.limiter.until_ready().await;
        self.counts.bump(call.name);
        let mut req = self
            .http
            .request(call.method.clone(), &call.url)
            .header("authorization", token.bearer())
            .query(&call.query);
        if let Some(b) = call.body {
            req = req.json(b);
        } else if let Some(b) = call.raw_body {
            req = req
                .header("content-type", "application/json")
                .body(b.clone());
        }
        let sent = std::time::Instant::now();
        // A connection that was never made sent nothing.
        let resp = req.send().await.map_err(|e| {
            let ambiguous = !e.is_connect();
            (None, transport_error(call, e, ambiguous))
        })?;
        let to_answer = sent.elapsed();
        let status = resp.status();
        let after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs);
        let (text, permit) = self.answer_of(call, resp, large, to_answer).await?;
        if status.is_success() {
            return Ok((text, permit));
        }
        if status == StatusCode::UNAUTHORIZED {
            self.tokens.forget(call.user).await;
        }
        Err((after, ApiError::parse(status, &text)))
    }

    /// An answer's body as text; a large one waits for a permit and reuses a buffer.
    async fn answer_of(
        &self,
        call: &Call<'_>,
        resp: reqwest::Response,
        large: bool,
        to_answer: Duration,
    ) -> Result<(String, Option<OwnedSemaphorePermit>), Failed> {
        let status = resp.status();
        let permit = match large {
            true => Some(
                self.large_answers
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed"),
            ),
            false => None,
        };
        let buf = match &permit {
            Some(_) => crate::mutex::lock(&self.large_bodies)
                .pop()
                .unwrap_or_default(),
            None => vec![],
        };
        let reading = std::time::Instant::now();
        let text = read_text(resp, buf)
            .await
            .map_err(|e| (None, transport_error(call, e, true)))?;
        tracing::debug!(
            user = call.user,
            status = status.as_u16(),
            answer_ms = to_answer.as_secs_f64() * 1e3,
            body_ms = reading.elapsed().as_secs_f64() * 1e3,
            bytes = text.len(),
            "{}",
            call.name
        );
        Ok((text, permit))
    }
}

/// A failed attempt: the wait the server asked for (Retry-After), and the error.
type Failed = (Option<Duration>, ApiError);

/// A token that could not be had, as a call's error (retried if the token endpoint may answer
/// next time).
fn token_error(e: &crate::backend::BackendError) -> ApiError {
    let retry = e.is_retryable();
    ApiError {
        status: if retry { 0 } else { 401 },
        code: "UNAUTHENTICATED".into(),
        reasons: vec![if retry { "token" } else { "auth" }.into()],
        message: e.to_string(),
        body: Value::Null,
        ambiguous: false,
    }
}

/// A request that failed on the way or whose answer could not be read. `ambiguous`: the
/// request may have reached Google.
fn transport_error(call: &Call<'_>, e: reqwest::Error, ambiguous: bool) -> ApiError {
    ApiError {
        status: 0,
        code: String::new(),
        reasons: vec![],
        message: format!(
            "{} {}: {}",
            call.name,
            call.url,
            crate::backend::with_causes(&e.without_url())
        ),
        body: Value::Null,
        ambiguous,
    }
}

/// Reads an answer's body as text, into `buf` (empty). Unlike `Response::text`, each chunk is
/// copied once into a buffer sized from the content length and dropped at once, so a large
/// page is held once, not two or three times over.
async fn read_text(mut resp: reqwest::Response, mut buf: Vec<u8>) -> reqwest::Result<String> {
    let size = resp.content_length().unwrap_or(0).min(64 << 20) as usize;
    buf.reserve_exact(size);
    while let Some(chunk) = resp.chunk().await? {
        buf.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8(buf)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

/// The error for a successful answer whose body is not the JSON expected.
pub fn bad_body(method: &str) -> ApiError {
    ApiError {
        status: 200,
        code: "BAD_RESPONSE".into(),
        reasons: vec![],
        message: format!("{method} answered with a body that is not the JSON expected"),
        body: Value::Null,
        ambiguous: true,
    }
}
