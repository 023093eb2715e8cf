//! `$batch`: requests sent in envelopes of at most 20, unordered. Outlook runs four operations
//! of one mailbox's envelope at a time, so an envelope to a mailbox holds all four of the
//! mailbox's places while it runs (a chain with `dependsOn` would run one at a time, four times
//! slower); directory envelopes go four at a time. Each operation has its own answer (in any
//! order), status and Retry-After: those a round did not run (429, or a 5xx of one safe to
//! repeat) go in the next round, after the longest wait asked.
//!
//! It must not send again an operation that may have been applied unless it is safe to repeat:
//! that one comes back `ambiguous`, for the caller to settle.

use reqwest::Method;
use serde_json::Value;
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::http::{
    Answer, ApiError, BATCH_MAX, Body, Client, IMMUTABLE_IDS, PER_MAILBOX, RETRY_AFTER_MAX,
    Request, raw, retry_after,
};

/// Rounds of a batch before the requests it still could not run are given up (for this run).
const BATCH_ROUNDS: usize = 8;

impl Client {
    /// Sends requests in `$batch` envelopes of at most `BATCH_MAX`, and returns each one's
    /// result, in order. Requests to one mailbox (`Some`) go one envelope at a time, which
    /// holds as many of the mailbox's places as Outlook runs of it at once (four); directory
    /// requests (`None`) go four envelopes at a time. Requests a round did not run (429, or a
    /// 5xx of a request safe to repeat) are sent again in the next round, after the longest
    /// wait asked; a request that may have been applied and is not safe to repeat comes back
    /// as an `ambiguous` error for the caller to settle.
    pub async fn batch(
        &self,
        mailbox: Option<&str>,
        reqs: &[Request],
    ) -> Vec<Result<Answer, ApiError>> {
        let mut out: Vec<Option<Result<Answer, ApiError>>> = vec![None; reqs.len()];
        let mut todo: Vec<usize> = (0..reqs.len()).collect();
        for round in 0..BATCH_ROUNDS {
            if todo.is_empty() {
                break;
            }
            let mut again = vec![];
            let mut wait: Option<Duration> = None;
            for (i, a) in self.round(mailbox, reqs, &todo).await {
                let Some(a) = a else {
                    again.push(i);
                    continue;
                };
                if let Err(e) = &a {
                    wait = wait.max(e.retry_after);
                }
                match a {
                    Err(e) if runs_again(&reqs[i], &e) && round + 1 < BATCH_ROUNDS => again.push(i),
                    other => out[i] = Some(other),
                }
            }
            if again.is_empty() {
                // A request the caller settles (a create answered 429) waits its turn too.
                if let Some(w) = wait {
                    tokio::time::sleep(w.min(RETRY_AFTER_MAX)).await;
                }
            } else {
                self.retries
                    .fetch_add(again.len() as u64, Ordering::Relaxed);
                let pause = wait.unwrap_or(Duration::from_millis(250 << round.min(7)));
                tokio::time::sleep(pause.min(RETRY_AFTER_MAX)).await;
            }
            todo = again;
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(not_run())))
            .collect()
    }

    /// One round of a batch: `todo` in envelopes, each request's answer (`None`: not sent,
    /// the mailbox asked for a wait first).
    async fn round(
        &self,
        mailbox: Option<&str>,
        reqs: &[Request],
        todo: &[usize],
    ) -> Vec<(usize, Option<Result<Answer, ApiError>>)> {
        let mut out = Vec::with_capacity(todo.len());
        if mailbox.is_none() {
            for group in todo.chunks(BATCH_MAX * PER_MAILBOX) {
                // A plain loop, not a stream's closure: the backend's futures must stay `Send`
                // for every lifetime, which a closure over a borrowed slice defeats.
                let mut sent = vec![];
                for chunk in group.chunks(BATCH_MAX) {
                    sent.push(self.envelope(None, reqs, chunk));
                }
                let answers = futures::future::join_all(sent).await;
                for (chunk, a) in group.chunks(BATCH_MAX).zip(answers) {
                    out.extend(chunk.iter().copied().zip(a.into_iter().map(Some)));
                }
            }
            return out;
        }
        let mut throttled = false;
        for chunk in todo.chunks(BATCH_MAX) {
            // Throttled: nothing more goes to the mailbox before the wait it asked for.
            if throttled {
                out.extend(chunk.iter().map(|&i| (i, None)));
                continue;
            }
            let answers = self.envelope(mailbox, reqs, chunk).await;
            throttled = answers
                .iter()
                .any(|a| a.as_ref().is_err_and(|e| e.retry_after.is_some()));
            out.extend(chunk.iter().copied().zip(answers.into_iter().map(Some)));
        }
        out
    }

    /// One `$batch` envelope of `idx` (at most `BATCH_MAX` of `reqs`, run in parallel), each
    /// result in order. A failure of the whole envelope is every request's.
    async fn envelope(
        &self,
        mailbox: Option<&str>,
        reqs: &[Request],
        idx: &[usize],
    ) -> Vec<Result<Answer, ApiError>> {
        let items: Vec<Item<'_>> = idx
            .iter()
            .enumerate()
            .map(|(n, &i)| item_json(n, &reqs[i]))
            .collect();
        for &i in idx {
            self.counts.bump(reqs[i].op, 1);
        }
        self.counts.bump("batch.items", idx.len() as u64);
        let mut envelope = Request {
            op: "batch",
            method: Method::POST,
            path: "/$batch".into(),
            headers: vec![],
            body: Some(Body::Json(raw(&Envelope { requests: &items }))),
            idempotent: false,
            raw_answer: false,
            keep: None,
        };
        envelope.idempotent = idx.iter().all(|&i| reqs[i].idempotent);
        let places = if mailbox.is_some() {
            idx.len().min(PER_MAILBOX)
        } else {
            0
        };
        match self.send_holding(mailbox, &envelope, places).await {
            Ok(a) => {
                let mut answers = answers_in_order(&a.body, idx.len());
                for (ans, &i) in answers.iter_mut().zip(idx) {
                    if let (Ok(ans), Some(keep)) = (ans, reqs[i].keep)
                        && let Some(o) = ans.body.as_object_mut()
                    {
                        o.retain(|k, _| keep.contains(&k.as_str()));
                    }
                }
                answers
            }
            Err(e) => idx.iter().map(|_| Err(e.clone())).collect(),
        }
    }
}

/// True when a request a batch answered with `e` is sent again in the next round.
fn runs_again(req: &Request, e: &ApiError) -> bool {
    match e.status {
        424 => true,
        429 | 500 | 502 | 503 | 504 | 0 => req.idempotent || !e.ambiguous,
        _ => false,
    }
}

/// The error of a request no batch round ran.
fn not_run() -> ApiError {
    ApiError {
        status: 0,
        code: String::new(),
        message: "Graph did not run the request in any batch round".into(),
        ambiguous: false,
        retry_after: None,
    }
}

/// A request as a `$batch` item: id `n+1`, its headers (the `Prefer`s joined), and its body
/// (JSON as it is, bytes in base64).
fn item_json(n: usize, req: &Request) -> Item<'_> {
    let mut headers = BTreeMap::new();
    let mut prefer = vec![IMMUTABLE_IDS.to_string()];
    for (k, v) in &req.headers {
        if k.eq_ignore_ascii_case("prefer") {
            prefer.push(v.clone());
        } else {
            headers.insert((*k).to_string(), v.clone());
        }
    }
    headers.insert("Prefer".into(), prefer.join(", "));
    let body = match &req.body {
        Some(Body::Json(v)) => {
            headers.insert("Content-Type".into(), "application/json".into());
            Some(ItemBody::Json(v))
        }
        Some(Body::Bytes(b, kind)) => {
            use base64::Engine as _;
            headers.insert("Content-Type".into(), (*kind).into());
            Some(ItemBody::Text(
                base64::engine::general_purpose::STANDARD.encode(b),
            ))
        }
        None => None,
    };
    Item {
        id: (n + 1).to_string(),
        method: req.method.as_str(),
        url: &req.path,
        headers,
        body,
    }
}

/// A `$batch` envelope.
#[derive(serde::Serialize)]
struct Envelope<'a> {
    requests: &'a [Item<'a>],
}

/// One request of a `$batch` envelope, as Graph reads it.
#[derive(serde::Serialize)]
struct Item<'a> {
    id: String,
    method: &'a str,
    url: &'a str,
    headers: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<ItemBody<'a>>,
}

#[derive(serde::Serialize)]
#[serde(untagged)]
enum ItemBody<'a> {
    Json(&'a RawValue),
    Text(String),
}

/// A batch answer's items (in any order) as results in request order.
fn answers_in_order(body: &Value, n: usize) -> Vec<Result<Answer, ApiError>> {
    let mut out: Vec<Option<Result<Answer, ApiError>>> = vec![None; n];
    for r in body["responses"].as_array().into_iter().flatten() {
        let Some(i) = r["id"]
            .as_str()
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|i| (1..=n).contains(i))
        else {
            continue;
        };
        let status = r["status"].as_u64().unwrap_or(0) as u16;
        let item_body = r.get("body").cloned().unwrap_or(Value::Null);
        out[i - 1] = Some(if (200..300).contains(&status) {
            Ok(Answer {
                status,
                body: item_body,
                bytes: Default::default(),
                held: None,
            })
        } else {
            let headers = &r["headers"];
            let after = headers
                .as_object()
                .and_then(|h| {
                    h.iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
                })
                .and_then(|(_, v)| {
                    v.as_str()
                        .map(str::to_string)
                        .or(v.as_u64().map(|n| n.to_string()))
                });
            Err(ApiError::parse(
                status,
                &item_body,
                retry_after(after.as_deref()),
            ))
        });
    }
    out.into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(ApiError {
                    ambiguous: true,
                    ..not_run()
                })
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn batch_items_are_unordered_and_answers_come_back_in_order() {
        let a = Request::get("contacts.get", "/users/u/contacts/1".into());
        let b = Request::with_body(
            "contacts.create",
            Method::POST,
            "/users/u/contacts".into(),
            json!({"givenName": "A"}),
        );
        let first = serde_json::to_value(item_json(0, &a)).unwrap();
        let second = serde_json::to_value(item_json(1, &b)).unwrap();
        assert!(first.get("dependsOn").is_none() && second.get("dependsOn").is_none());
        assert_eq!(second["id"], "2");
        assert_eq!(second["headers"]["Content-Type"], "application/json");
        let body = json!({"responses": [
            {"id": "2", "status": 429, "headers": {"Retry-After": "7"}, "body": {"error": {"code": "TooManyRequests", "message": "slow"}}},
            {"id": "1", "status": 200, "body": {"id": "x"}},
        ]});
        let r = answers_in_order(&body, 2);
        assert_eq!(r[0].as_ref().unwrap().body["id"], "x");
        let e = r[1].as_ref().unwrap_err();
        assert_eq!(
            (e.status, e.retry_after),
            (429, Some(Duration::from_secs(7)))
        );
        // A create answered 429 may have been applied: it is not sent again blindly.
        assert!(!runs_again(&b, e));
        assert!(runs_again(&a, e));
    }
}
