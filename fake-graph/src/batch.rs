//! JSON batching, `POST /v1.0/$batch`: the envelope is checked against
//! `x-subset.batchRequest` and Graph's rules (1 to 20 requests, unique ids, relative URLs
//! without the version segment, a `Content-Type` header with every body, binary bodies in
//! base64), and `dependsOn` must make either a full chain (each item after the first depends
//! on the one before it) or nothing (all parallel). Each item then runs through the same code
//! path as a top-level request (`routes::execute`), counted, throttled and faulted
//! individually. A chain runs one item at a time and answers 424 for every item after a
//! failed one; a parallel batch runs up to 4 items of one mailbox at once. While it runs, the
//! envelope holds min(k, 4) concurrency slots of each mailbox it has k items for (1 for a
//! chain). Answers come in reverse request order (clients must match them by id).
//!
//! Faults on `batch` hit the whole envelope when their user has an item in it (`Status`,
//! `TooMany`: nothing runs; `ApplyThenFail`: everything runs, the envelope answers 504;
//! `Hang`), or one item (`FailItem`, `ItemTooMany`, also matched by the item's own op).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

use crate::http::{Body, Fail, Req, Resp, graph_error};
use crate::limits::Limits;
use crate::routes::{self, execute, throttled};
use crate::{FaultKind, State, auth, lock};

/// One request of the envelope, as parsed.
struct Item {
    id: String,
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<Value>,
    depends: Vec<String>,
}

/// One item ready to run.
struct Work {
    index: usize,
    req: Result<Req, Fail>,
    op: &'static str,
    who: String,
    mailbox: Option<String>,
    /// The item's user's UPN and id (fault matching).
    keys: Vec<String>,
    fault: Option<FaultKind>,
    refused: bool,
}

/// An envelope's answer, the Retry-Afters it gives (mailbox, seconds: noted once sent), and
/// how long an injected hang holds it back.
struct Outcome {
    resp: Resp,
    blocks: Vec<(String, u64)>,
    hang: Duration,
}

/// Answers a batch envelope.
pub(crate) async fn handle(st: &Arc<State>, req: Req) -> Resp {
    st.count("batch");
    let opts = st.options();
    let out = match envelope(st, &req).await {
        Ok(o) => o,
        Err(f) => {
            if f.violation {
                st.violation(format!("batch: {} {}", f.status, f.message));
            }
            Outcome {
                resp: f.resp(),
                blocks: vec![],
                hang: Duration::ZERO,
            }
        }
    };
    st.timer.sleep_until(req.arrived + opts.latency).await;
    if !out.hang.is_zero() {
        tokio::time::sleep(out.hang).await;
    }
    for (m, secs) in out.blocks {
        st.limits.block(&m, secs, req.peer);
    }
    out.resp
}

fn parse(st: &State, req: &Req) -> Result<Vec<Item>, Fail> {
    if req.method != "POST" {
        return Err(Fail::new(405, "BadRequest", "$batch takes POST.", true));
    }
    if !req.query.is_empty() {
        return Err(Fail::bad("BadRequest", "$batch takes no query options."));
    }
    let ct = req.header("content-type").unwrap_or_default();
    if !ct.to_ascii_lowercase().starts_with("application/json") {
        return Err(Fail::bad(
            "BadRequest",
            format!("A batch must be sent as application/json, not {ct:?}."),
        ));
    }
    let v: Value = serde_json::from_slice(&req.body)
        .map_err(|e| Fail::bad("BadRequest", format!("Invalid batch payload format: {e}")))?;
    let schema = json!({"$ref": "#/components/schemas/x-subset.batchRequest"});
    if !v.is_object() {
        return Err(Fail::bad(
            "BadRequest",
            "Invalid batch payload format: not an object.",
        ));
    }
    st.spec.check_value(&schema, &v, "batch")?;
    let Some(reqs) = v["requests"].as_array() else {
        return Err(Fail::bad(
            "BadRequest",
            "Invalid batch payload format: no requests.",
        ));
    };
    let mut items = vec![];
    for r in reqs {
        let s = |k: &str| r[k].as_str().map(str::to_string);
        let (Some(id), Some(method), Some(url)) = (s("id"), s("method"), s("url")) else {
            return Err(Fail::bad(
                "BadRequest",
                format!(
                    "Invalid batch payload format: every request needs id, method and url: {r}"
                ),
            ));
        };
        items.push(Item {
            id,
            method: method.to_ascii_uppercase(),
            url,
            headers: r["headers"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| {
                    (
                        k.to_ascii_lowercase(),
                        v.as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect(),
            body: r.get("body").cloned(),
            depends: r["dependsOn"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d.as_str().map(str::to_string))
                .collect(),
        });
    }
    Ok(items)
}

/// Checks the envelope's rules; returns whether the items form a chain.
fn check_items(items: &[Item]) -> Result<bool, Fail> {
    if items.is_empty() || items.len() > 20 {
        return Err(Fail::bad(
            "BadRequest",
            format!("A batch holds 1 to 20 requests, not {}.", items.len()),
        ));
    }
    let mut ids = HashSet::new();
    for it in items {
        if !ids.insert(it.id.to_ascii_lowercase()) {
            return Err(Fail::bad(
                "BadRequest",
                format!("Batch request ids must be unique: '{}' is repeated.", it.id),
            ));
        }
    }
    if items.iter().all(|i| i.depends.is_empty()) {
        return Ok(false);
    }
    for (k, it) in items.iter().enumerate() {
        let ok = match k {
            0 => it.depends.is_empty(),
            _ => it.depends.len() == 1 && it.depends[0] == items[k - 1].id,
        };
        if !ok {
            return Err(Fail::bad(
                "BadRequest",
                format!(
                    "dependsOn must chain every request to the one before it, or be absent from all: request '{}' has {:?}.",
                    it.id, it.depends
                ),
            ));
        }
    }
    Ok(true)
}

/// The request an item stands for.
fn item_req(it: &Item) -> Result<Req, Fail> {
    if !it.url.starts_with('/') {
        return Err(Fail::bad(
            "BadRequest",
            format!("The url {:?} must be relative and start with '/'.", it.url),
        ));
    }
    let lower = it.url.to_ascii_lowercase();
    if lower.starts_with("/v1.0/") || lower.starts_with("/beta/") {
        return Err(Fail::bad(
            "BadRequest",
            format!("The url {:?} must not include the version segment.", it.url),
        ));
    }
    if !["GET", "POST", "PATCH", "PUT", "DELETE"].contains(&it.method.as_str()) {
        return Err(Fail::bad(
            "BadRequest",
            format!("Invalid method {:?}.", it.method),
        ));
    }
    let ct = it
        .headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map(|(_, v)| v.to_ascii_lowercase());
    let body = match (&it.body, ct) {
        (None, _) => vec![],
        (Some(_), None) => {
            return Err(Fail::bad(
                "BadRequest",
                "Content-Type header must be specified in the request when a body is present.",
            ));
        }
        (Some(b), Some(ct))
            if ct.starts_with("image/") || ct.starts_with("application/octet-stream") =>
        {
            let text = b
                .as_str()
                .ok_or_else(|| Fail::bad("BadRequest", "A binary body must be a base64 string."))?;
            STANDARD.decode(text).map_err(|e| {
                Fail::bad("BadRequest", format!("A binary body must be base64: {e}"))
            })?
        }
        (Some(b), Some(_)) => serde_json::to_vec(b).unwrap_or_default(),
    };
    Ok(Req::new(&it.method, &it.url, it.headers.clone(), body))
}

async fn envelope(st: &Arc<State>, req: &Req) -> Result<Outcome, Fail> {
    let roles = Arc::new(auth::bearer(st, req)?);
    let items = parse(st, req)?;
    let chain = check_items(&items)?;
    let mut work: Vec<Work> = items
        .iter()
        .enumerate()
        .map(|(i, it)| prepare_work(st, i, it))
        .collect();
    for w in &mut work {
        if let Ok(r) = &mut w.req {
            r.received = req.received;
            r.peer = req.peer;
        }
    }
    let mailboxes: Vec<String> = work.iter().filter_map(|w| w.mailbox.clone()).collect();
    let keys: Vec<&str> = work
        .iter()
        .flat_map(|w| w.keys.iter().map(String::as_str))
        .collect();
    let fault = st.limits.take("batch", &keys, |k| {
        matches!(
            k,
            FaultKind::Status(_)
                | FaultKind::TooMany { .. }
                | FaultKind::ApplyThenFail
                | FaultKind::Hang { .. }
        )
    });
    let done = |resp: Resp, blocks: Vec<(String, u64)>, hang: u64| {
        let hang = Duration::from_secs(hang);
        Ok(Outcome { resp, blocks, hang })
    };
    match fault {
        Some(FaultKind::Status(s)) => return done(routes::injected(s), vec![], 0),
        Some(FaultKind::TooMany { retry_after }) => {
            let blocks = mailboxes.iter().map(|m| (m.clone(), retry_after)).collect();
            return done(routes::too_many(retry_after), blocks, 0);
        }
        Some(FaultKind::Hang { secs, apply: false }) => {
            return done(routes::injected(504), vec![], secs);
        }
        _ => {}
    }
    for w in &mut work {
        w.fault = item_fault(st, w);
    }
    let slots = take_slots(st, &mut work, chain);
    let results = match chain {
        true => run_chain(st, work, roles).await,
        false => run_parallel(st, work, roles).await,
    };
    drop(slots);
    let mut responses = vec![];
    let mut blocks = vec![];
    for (i, (resp, mailbox)) in results.into_iter().enumerate().rev() {
        if let (Some(m), Some(secs), 429) = (mailbox, resp.retry_after(), resp.status) {
            blocks.push((m, secs));
        }
        responses.push(item_json(&items[i].id, &resp));
    }
    let resp = Resp::json(200, json!({"responses": responses}));
    match fault {
        Some(FaultKind::ApplyThenFail) => done(routes::injected(504), vec![], 0),
        Some(FaultKind::Hang { secs, .. }) => done(resp, blocks, secs),
        _ => done(resp, blocks, 0),
    }
}

/// Takes the batch's concurrency slots: per mailbox, min(k, 4) for k parallel items, 1 for a
/// chain. Items of a mailbox over its limit are marked refused (and that is recorded).
fn take_slots(st: &Arc<State>, work: &mut [Work], chain: bool) -> crate::limits::Slots {
    let mut per_mailbox: HashMap<String, usize> = HashMap::new();
    for w in work.iter() {
        if let Some(m) = &w.mailbox {
            *per_mailbox.entry(m.clone()).or_default() += 1;
        }
    }
    let want: Vec<(String, usize)> = per_mailbox
        .into_iter()
        .map(|(m, k)| (m, if chain { 1 } else { k.min(4) }))
        .collect();
    let limit = st.options().max_concurrent_per_mailbox;
    let (slots, refused) = Limits::acquire(st, &want, limit);
    for m in &refused {
        let who = work
            .iter()
            .find(|w| w.mailbox.as_ref() == Some(m))
            .map(|w| w.who.clone())
            .unwrap_or_default();
        st.violation(format!(
            "batch for {who}: its items would exceed the MailboxConcurrency limit of {limit}"
        ));
    }
    for w in work.iter_mut() {
        w.refused = w.mailbox.as_ref().is_some_and(|m| refused.contains(m));
    }
    slots
}

type Answer = (Resp, Option<String>);

/// Runs a chain one item at a time; after a failure the rest answer 424 unexecuted.
async fn run_chain(st: &Arc<State>, work: Vec<Work>, roles: Arc<Vec<String>>) -> Vec<Answer> {
    let mut results = vec![];
    let mut failed = false;
    for w in work {
        if failed {
            st.count("batch.items");
            st.count(w.op);
            let r = graph_error(
                424,
                "FailedDependency",
                "The request failed because a request it depends on failed.",
            );
            results.push((r, None));
            continue;
        }
        let (_, r, m) = run_item(st.clone(), w, roles.clone()).await;
        failed = r.status >= 400;
        results.push((r, m));
    }
    results
}

/// Runs a parallel batch: up to 4 items of one mailbox at once.
async fn run_parallel(st: &Arc<State>, work: Vec<Work>, roles: Arc<Vec<String>>) -> Vec<Answer> {
    let n = work.len();
    let mut sems: HashMap<String, Arc<Semaphore>> = HashMap::new();
    let mut set = tokio::task::JoinSet::new();
    for w in work {
        let key = w.mailbox.clone().unwrap_or_default();
        let sem = sems
            .entry(key)
            .or_insert_with(|| Arc::new(Semaphore::new(4)))
            .clone();
        let (st, roles) = (st.clone(), roles.clone());
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            run_item(st, w, roles).await
        });
    }
    let mut results: Vec<Option<Answer>> = vec![None; n];
    while let Some(done) = set.join_next().await {
        let (i, r, m) = done.expect("batch item task");
        results[i] = Some((r, m));
    }
    results
        .into_iter()
        .map(|r| r.expect("every item answered"))
        .collect()
}

/// Routes an item for its operation name, user and mailbox.
fn prepare_work(st: &State, index: usize, it: &Item) -> Work {
    let req = item_req(it);
    let (op, who, mailbox, keys) = match &req {
        Ok(r) => {
            let op = routes::route(st, r).map(|x| x.op).unwrap_or_else(|e| e.0);
            let user = match r.segs.first().map(String::as_str) {
                Some("users") if r.segs.len() > 2 => {
                    r.segs.get(1).and_then(|k| lock(&st.dir).user(k).cloned())
                }
                _ => None,
            };
            let who = user
                .as_ref()
                .map(|u| u.upn.clone())
                .or_else(|| r.segs.get(1).cloned())
                .unwrap_or_else(|| "-".into());
            let keys = user
                .as_ref()
                .map(|u| vec![u.upn.clone(), u.id.clone()])
                .unwrap_or_default();
            (op, who, routes::mailbox_of(st, r), keys)
        }
        Err(_) => ("unknown", "-".to_string(), None, vec![]),
    };
    Work {
        index,
        req,
        op,
        who,
        mailbox,
        keys,
        fault: None,
        refused: false,
    }
}

/// Takes the `FailItem`/`ItemTooMany` fault for an item, matched by `batch` or its op.
fn item_fault(st: &State, w: &Work) -> Option<FaultKind> {
    let keys: Vec<&str> = w.keys.iter().map(String::as_str).collect();
    let is_mine = |k: &FaultKind| match k {
        FaultKind::FailItem(i) => *i == w.index,
        FaultKind::ItemTooMany { index: i, .. } => *i == w.index,
        _ => false,
    };
    st.limits
        .take("batch", &keys, is_mine)
        .or_else(|| st.limits.take(w.op, &keys, is_mine))
}

/// Runs one item: (its index, its answer, its mailbox).
async fn run_item(
    st: Arc<State>,
    w: Work,
    roles: Arc<Vec<String>>,
) -> (usize, Resp, Option<String>) {
    st.count("batch.items");
    let mut req = match w.req {
        Ok(r) => r,
        Err(f) => {
            st.violation(format!(
                "batch item {} for {}: {} {}",
                w.index, w.who, f.status, f.message
            ));
            return (w.index, f.resp(), None);
        }
    };
    if w.refused || w.fault.is_some() {
        st.count(w.op);
        let resp = match w.fault {
            _ if w.refused => throttled(&st.options())
                .resp()
                .with_header("Retry-After", "1"),
            Some(FaultKind::ItemTooMany { retry_after, .. }) => {
                graph_error(429, "TooManyRequests", "Too many requests.")
                    .with_header("Retry-After", retry_after.to_string())
            }
            _ => graph_error(400, "ErrorInvalidProperty", "Injected failure."),
        };
        return (w.index, resp, w.mailbox);
    }
    req.arrived = Instant::now();
    let out = execute(&st, &req, Some(&roles), false).await;
    (w.index, out.resp, out.mailbox.or(w.mailbox))
}

/// A batch answer item.
fn item_json(id: &str, r: &Resp) -> Value {
    let mut o = json!({"id": id, "status": r.status, "headers": r.item_headers()});
    match &r.body {
        Body::Json(v) => o["body"] = v.clone(),
        Body::Bytes(_, b) => o["body"] = json!(STANDARD.encode(b)),
        Body::Empty => {}
    }
    o
}
