//! The HTTP entry point (an axum fallback handler) and the one code path every Graph call
//! takes, whether a top-level request or a `$batch` item: route (directory paths hand-coded,
//! mailbox paths through the spec) → count → bearer token (top level; a batch's items use the
//! envelope's) → query options and body against the spec → app roles → the user and mailbox →
//! Retry-After check → concurrency slot (top level; the batch envelope holds its items' slots)
//! → quota → faults → the handler → latency. A refusal that a correct client would not have
//! caused is recorded in `violations()` as "op for user: what".

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::contacts::Ctx;
use crate::directory::User;
use crate::http::{Fail, Req, Resp, graph_error};
use crate::limits::Limits;
use crate::mailbox::Mailbox;
use crate::spec::{BodyKind, Found};
use crate::{FaultKind, Options, State, auth, batch, contacts, delta, directory, folders, lock};

/// When a request's head arrived: the latency counts from there.
#[derive(Clone, Copy)]
pub(crate) struct Arrived(pub Instant);

pub(crate) async fn stamp_arrival(
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    req.extensions_mut().insert(Arrived(Instant::now()));
    next.run(req).await
}

/// Every request the fake gets.
pub(crate) async fn handle(
    axum::extract::State(st): axum::extract::State<Arc<State>>,
    axum::Extension(Arrived(arrived)): axum::Extension<Arrived>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    st.count("http");
    let path = uri.path();
    let target = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let hdrs: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segs.len() == 4 && segs[1..] == ["oauth2", "v2.0", "token"] {
        st.count("token");
        if method != Method::POST {
            st.violation(format!("token: {method} instead of POST"));
            return graph_error(405, "BadRequest", "The token endpoint takes POST.").into_axum();
        }
        let req = Req::new("POST", &target, hdrs, body.to_vec());
        return auth::token_call(&st, segs[0], &req).await.into_axum();
    }
    let Some(rest) = target.strip_prefix("/v1.0").filter(|r| r.starts_with('/')) else {
        st.violation(format!(
            "{method} {path}: not a path this fake serves (token endpoint or /v1.0/…)"
        ));
        return graph_error(404, "BadRequest", "Invalid version or path.").into_axum();
    };
    let mut req = Req::new(method.as_str(), rest, hdrs, body.to_vec());
    req.arrived = arrived;
    req.received = arrived;
    req.peer = Some(peer);
    if req.segs == ["$batch"] {
        return batch::handle(&st, req).await.into_axum();
    }
    let out = execute(&st, &req, None, true).await;
    if let (Some(m), Some(secs)) = (&out.mailbox, out.resp.retry_after())
        && out.resp.status == 429
    {
        st.limits.block(m, secs, req.peer);
    }
    out.resp.into_axum()
}

/// A routed call.
pub(crate) struct Route {
    /// Operation name (`contacts.create`), used for counts, faults and violations.
    pub op: &'static str,
    /// Path parameters (`user-id`, `contactFolder-id`, `contact-id`).
    pub params: HashMap<String, String>,
    /// The path's user key (id or UPN), group id for `groups.members`.
    pub key: String,
    spec_op: Option<usize>,
    body: BodyKind,
}

/// The operation name of a spec `operationId`.
fn op_name(id: &str) -> &'static str {
    match id {
        "user_ListContactFolder" => "folders.list",
        "user_CreateContactFolder" => "folders.create",
        "user_GetContactFolder" => "folders.get",
        "user_UpdateContactFolder" => "folders.update",
        "user_DeleteContactFolder" => "folders.delete",
        "user.contactFolder_permanentDelete" => "folders.permanentDelete",
        "user.contactFolder_ListChildFolder" => "folders.children.list",
        "user.contactFolder_CreateChildFolder" => "folders.children.create",
        "user.contactFolder_delta" => "folders.delta",
        "user.contactFolder_ListContact" | "user_ListContact" => "contacts.list",
        "user.contactFolder_CreateContact" | "user_CreateContact" => "contacts.create",
        "user.contactFolder_GetContact" | "user_GetContact" => "contacts.get",
        "user.contactFolder_UpdateContact" | "user_UpdateContact" => "contacts.update",
        "user.contactFolder_DeleteContact" | "user_DeleteContact" => "contacts.delete",
        "user.contactFolder.contact_permanentDelete" => "contacts.permanentDelete",
        "user.contactFolder.contact_delta" => "contacts.delta",
        "user.contactFolder.contact_GetPhotoContent" | "user.contact_GetPhotoContent" => {
            "photo.get"
        }
        "user.contactFolder.contact_SetPhotoContent" | "user.contact_SetPhotoContent" => {
            "photo.put"
        }
        _ => "unknown",
    }
}

fn directory_route(op: &'static str, key: &str) -> Route {
    Route {
        op,
        params: HashMap::new(),
        key: key.to_string(),
        spec_op: None,
        body: BodyKind::None,
    }
}

/// Finds what a request is for; `Err((op, failure))` for a path or method Graph does not
/// serve (a client bug).
pub(crate) fn route(st: &State, req: &Req) -> Result<Route, (&'static str, Fail)> {
    let s: Vec<&str> = req.segs.iter().map(String::as_str).collect();
    let directory = match s.as_slice() {
        ["users"] => Some(directory_route("users.list", "")),
        ["users", u] => Some(directory_route("users.get", u)),
        ["domains"] => Some(directory_route("domains.list", "")),
        ["groups"] => Some(directory_route("groups.list", "")),
        ["groups", g, "transitiveMembers", "microsoft.graph.user"] => {
            Some(directory_route("groups.members", g))
        }
        _ => None,
    };
    if let Some(r) = directory {
        if req.method != "GET" {
            return Err((
                r.op,
                Fail::new(
                    405,
                    "Request_BadRequest",
                    "Specified HTTP method is not allowed for the request target.",
                    true,
                ),
            ));
        }
        return Ok(r);
    }
    let last = s.last().copied().unwrap_or_default();
    let method = match req.method.as_str() {
        // Graph takes a photo by PATCH as well as PUT.
        "PATCH" if last == "$value" => "PUT",
        m => m,
    };
    match st.spec.find(method, &req.segs) {
        Found::Op(op, params) if s.first() == Some(&"users") => Ok(Route {
            op: op_name(&op.id),
            key: params.get("user-id").cloned().unwrap_or_default(),
            params,
            spec_op: st.spec.ops.iter().position(|o| std::ptr::eq(o, op)),
            body: op.body.clone(),
        }),
        Found::WrongMethod if last == "$value" && method == "DELETE" => Err((
            "photo.delete",
            Fail::new(
                405,
                "ErrorInvalidRequest",
                "The delete operation supports only user or group photos",
                true,
            ),
        )),
        Found::WrongMethod => Err((
            "unknown",
            Fail::new(
                405,
                "BadRequest",
                format!("Specified HTTP method {method} is not allowed for the request target."),
                true,
            ),
        )),
        _ => Err((
            "unknown",
            Fail::bad(
                "BadRequest",
                format!("Resource not found for the segment '{last}'."),
            ),
        )),
    }
}

/// The app role an operation needs.
fn role(op: &str) -> &'static str {
    match op {
        "users.get" | "users.list" => "User.Read.All",
        "domains.list" => "Domain.Read.All",
        "groups.list" | "groups.members" => "GroupMember.Read.All",
        _ => "Contacts.ReadWrite",
    }
}

fn is_directory(op: &str) -> bool {
    role(op) != "Contacts.ReadWrite"
}

/// A call that passed its checks.
struct Prepared {
    route: Route,
    body: Option<Value>,
    user: Option<(User, Arc<Mutex<Mailbox>>)>,
}

/// What a call came to: the answer, and the mailbox (user id) it was for.
pub(crate) struct Outcome {
    pub resp: Resp,
    pub mailbox: Option<String>,
}

/// Runs one call (top level, or a batch item with the envelope's `roles`); `own_slot`: take a
/// concurrency slot for it (top level), else the batch envelope holds it.
pub(crate) async fn execute(
    st: &Arc<State>,
    req: &Req,
    roles: Option<&[String]>,
    own_slot: bool,
) -> Outcome {
    let opts = st.options();
    let mut hang = Duration::ZERO;
    let mut slots = None;
    let (resp, mailbox) = match prepare(st, req, roles) {
        Err((op, who, fail)) => {
            if fail.violation {
                st.violation(format!("{op} for {who}: {} {}", fail.status, fail.message));
            }
            (fail.resp(), None)
        }
        Ok(call) => {
            let m = call.user.as_ref().map(|(u, _)| u.id.clone());
            (
                run(st, req, call, &opts, own_slot, &mut slots, &mut hang),
                m,
            )
        }
    };
    st.timer.sleep_until(req.arrived + opts.latency).await;
    drop(slots);
    if !hang.is_zero() {
        tokio::time::sleep(hang).await;
    }
    Outcome { resp, mailbox }
}

type Refused = (&'static str, String, Fail);

fn prepare(st: &State, req: &Req, roles: Option<&[String]>) -> Result<Prepared, Refused> {
    let route = match route(st, req) {
        Ok(r) => r,
        Err((op, fail)) => {
            st.count(op);
            return Err((
                op,
                req.segs.get(1).cloned().unwrap_or_else(|| "-".into()),
                fail,
            ));
        }
    };
    let op = route.op;
    st.count(op);
    let who = if route.key.is_empty() {
        "-".to_string()
    } else {
        route.key.clone()
    };
    let refuse = |fail: Fail| (op, who.clone(), fail);
    let granted = match roles {
        Some(r) => r.to_vec(),
        None => auth::bearer(st, req).map_err(refuse)?,
    };
    if let Some(i) = route.spec_op {
        st.spec
            .check_query(&st.spec.ops[i], &req.query)
            .map_err(|m| refuse(Fail::bad("BadRequest", m)))?;
    }
    let body = check_body(st, &route, req).map_err(refuse)?;
    if !granted.iter().any(|r| r == role(op)) {
        let fail = if is_directory(op) {
            Fail::new(
                403,
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
                false,
            )
        } else {
            Fail::new(
                403,
                "ErrorAccessDenied",
                "Access is denied. Check credentials and try again.",
                false,
            )
        };
        return Err(refuse(fail));
    }
    let user = match is_directory(op) {
        true => None,
        false => Some(mailbox(st, &route.key).map_err(refuse)?),
    };
    Ok(Prepared { route, body, user })
}

/// Checks the body against what the operation takes; a JSON body is returned parsed.
fn check_body(st: &State, route: &Route, req: &Req) -> Result<Option<Value>, Fail> {
    match &route.body {
        BodyKind::Json(schema) => {
            let ct = req.header("content-type").unwrap_or_default();
            if !ct.to_ascii_lowercase().starts_with("application/json") {
                return Err(Fail::bad(
                    "BadRequest",
                    format!(
                        "A JSON body must be sent as Content-Type: application/json, not {ct:?}."
                    ),
                ));
            }
            let v: Value = serde_json::from_slice(&req.body).map_err(|e| {
                Fail::bad(
                    "BadRequest",
                    format!("Unable to read JSON request payload: {e}."),
                )
            })?;
            st.spec.check_entity(schema, &v)?;
            Ok(Some(v))
        }
        BodyKind::Binary => Ok(None),
        BodyKind::None => {
            let text = String::from_utf8_lossy(&req.body);
            match text.trim() {
                "" | "{}" => Ok(None),
                _ => Err(Fail::bad(
                    "BadRequest",
                    format!("{} {} takes no request body.", req.method, route.op),
                )),
            }
        }
    }
}

/// The user and mailbox of a mailbox call.
fn mailbox(st: &State, key: &str) -> Result<(User, Arc<Mutex<Mailbox>>), Fail> {
    let Some(user) = lock(&st.dir).user(key).cloned() else {
        return Err(Fail::new(
            404,
            "ErrorInvalidUser",
            format!("The requested user '{key}' is invalid."),
            false,
        ));
    };
    let mb = lock(&st.mailboxes).get(&user.id).cloned();
    match mb {
        Some(mb) if user.has_mailbox => Ok((user, mb)),
        _ => Err(Fail::new(
            404,
            "MailboxNotEnabledForRESTAPI",
            "REST API is not yet supported for this mailbox.",
            false,
        )),
    }
}

/// The user id a request path is for, if it is a mailbox call (for a batch's slots).
pub(crate) fn mailbox_of(st: &State, req: &Req) -> Option<String> {
    if req.segs.len() < 3 || req.segs[0] != "users" {
        return None;
    }
    lock(&st.dir).user(&req.segs[1]).map(|u| u.id.clone())
}

/// An injected status's Graph error code.
pub(crate) fn injected(status: u16) -> Resp {
    let code = match status {
        503 => "serviceNotAvailable",
        504 => "gatewayTimeout",
        502 => "badGateway",
        500 => "generalException",
        429 => "TooManyRequests",
        403 => "ErrorAccessDenied",
        404 => "ErrorItemNotFound",
        _ => "UnknownError",
    };
    graph_error(status, code, "Injected failure.")
}

pub(crate) fn too_many(secs: u64) -> Resp {
    graph_error(429, "TooManyRequests", "Too many requests are being made to this mailbox. Retry after the time given in Retry-After.")
        .with_header("Retry-After", secs.to_string())
}

/// Limits, faults, the handler.
fn run(
    st: &Arc<State>,
    req: &Req,
    call: Prepared,
    opts: &Options,
    own_slot: bool,
    slots: &mut Option<crate::limits::Slots>,
    hang: &mut Duration,
) -> Resp {
    let op = call.route.op;
    let who = match &call.user {
        Some((u, _)) => u.upn.clone(),
        None if call.route.key.is_empty() => "-".to_string(),
        None => call.route.key.clone(),
    };
    let fail = |f: Fail| {
        if f.violation {
            st.violation(format!("{op} for {who}: {} {}", f.status, f.message));
        }
        f.resp()
    };
    if let Some((u, _)) = &call.user {
        if let Some(left) = st.limits.broken_retry_after(&u.id, req.received, req.peer) {
            st.violation(format!(
                "{op} for {who}: sent {:.2}s before the Retry-After it was given had elapsed",
                left.as_secs_f64()
            ));
        }
        if own_slot {
            let (s, refused) =
                Limits::acquire(st, &[(u.id.clone(), 1)], opts.max_concurrent_per_mailbox);
            if !refused.is_empty() {
                return fail(throttled(opts)).with_header("Retry-After", "1");
            }
            *slots = Some(s);
        }
        if let Err(secs) = st
            .limits
            .quota(&u.id, opts.requests_per_window, opts.window)
        {
            return too_many(secs);
        }
    }
    let keys: Vec<&str> = match &call.user {
        Some((u, _)) => vec![u.upn.as_str(), u.id.as_str()],
        None => vec![call.route.key.as_str()],
    };
    let replay = op == "contacts.delta" && req.q("$deltatoken").is_some();
    let fault = st.limits.take(op, &keys, |k| match k {
        FaultKind::FailItem(_) | FaultKind::ItemTooMany { .. } => false,
        FaultKind::ExpireDelta => replay,
        _ => true,
    });
    match fault {
        Some(FaultKind::Status(s)) => return injected(s),
        Some(FaultKind::TooMany { retry_after }) => return too_many(retry_after),
        Some(FaultKind::Hang { secs, apply: false }) => {
            *hang = Duration::from_secs(secs);
            return injected(504);
        }
        _ => {}
    }
    let expire = matches!(fault, Some(FaultKind::ExpireDelta));
    let resp = dispatch(st, req, &call, opts, expire).unwrap_or_else(fail);
    match fault {
        Some(FaultKind::ApplyThenFail) => injected(504),
        Some(FaultKind::Hang { secs, apply: true }) => {
            *hang = Duration::from_secs(secs);
            resp
        }
        _ => resp,
    }
}

/// 429 MailboxConcurrency (a client bug: a well-behaved client never exceeds it).
pub(crate) fn throttled(opts: &Options) -> Fail {
    Fail::new(
        429,
        "ApplicationThrottled",
        format!(
            "Application is over its MailboxConcurrency limit. (at most {} requests in flight per mailbox)",
            opts.max_concurrent_per_mailbox
        ),
        true,
    )
}

fn dispatch(
    st: &State,
    req: &Req,
    call: &Prepared,
    opts: &Options,
    expire: bool,
) -> Result<Resp, Fail> {
    let op = call.route.op;
    let ctx = Ctx { st, opts };
    let Some((_, mb)) = &call.user else {
        return directory::handle(st, op, req, &call.route.key);
    };
    let mut mb = lock(mb);
    let params = &call.route.params;
    let body = call.body.clone();
    match op {
        "contacts.delta" => {
            let folder = params.get("contactFolder-id").cloned().unwrap_or_default();
            delta::handle(&ctx, &mut mb, &folder, req, expire)
        }
        o if o.starts_with("folders.children") || o == "folders.delta" => Err(Fail::new(
            501,
            "NotImplemented",
            format!("{o} is in the spec but not implemented by the fake."),
            true,
        )),
        o if o.starts_with("folders.") => folders::handle(&ctx, &mut mb, op, params, req, body),
        _ => contacts::handle(&ctx, &mut mb, op, params, req, body),
    }
}
