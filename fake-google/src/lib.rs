//! A stateful fake of Google's OAuth token endpoint (JWT-bearer grant), the Admin SDK Directory
//! API (users.get, domains.list) and the People API (contact groups, connections, batch contact
//! methods), for groupsync's tests and benchmarks. It is never part of the shipped binary.
//!
//! Every request is checked against the official discovery documents vendored in `specs/`
//! (method, path, query parameters, body fields; unknown ones are refused with 400, as Google
//! does), and against the rules the People API documents: batch limits, unique group names (409),
//! etag preconditions, "a contact must keep at least one group", field masks, and strictly
//! sequential mutations per user. Anything a client does wrong is answered as Google would and
//! also recorded in `violations()`, which tests assert to be empty.
//!
//! Faults can be injected per API method: an HTTP status, 429 with Retry-After, a change applied
//! and then answered with 503 (a lost answer), a partial batch failure (`contactErrors`).

mod people;
pub mod spec;
mod stored;
mod timer;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use people::Book;
pub use stored::Stored;

/// A fault to inject into the next calls of one API method.
#[derive(Debug, Clone)]
pub enum FaultKind {
    /// Answer with this HTTP status (5xx, 403 …) and a Google error body, changing nothing.
    Status(u16),
    /// 429 RESOURCE_EXHAUSTED with `Retry-After: secs`.
    TooMany { retry_after: u64 },
    /// Apply the change, then answer 503 as if the answer were lost.
    ApplyThenFail,
    /// In a batch create or update, fail the item at this index (per-item `contactErrors`).
    FailItem(usize),
    /// Before a batch update is applied, the user edits the first contact it names (its etag
    /// changes), as if they had edited it between the client's read and its write.
    EditFirst,
    /// Answer only after this long (a hung server; the client's timeout should fire first).
    /// With `apply` the change is made before the wait, so the answer is lost after the fact.
    Hang { secs: u64, apply: bool },
}

#[derive(Debug, Clone)]
pub struct Fault {
    /// API method id, e.g. `people.people.batchCreateContacts`.
    pub method: String,
    /// Only for calls as this user (email), or any user.
    pub user: Option<String>,
    pub kind: FaultKind,
    /// How many calls it hits.
    pub times: u32,
}

/// Settings of a fake.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long every API call takes (not token requests), the fake's own work included: the
    /// answer is held back until `latency` has passed since the request arrived. Mutations are
    /// applied first, so a client that gives up waiting may find them done.
    pub latency: Duration,
    /// People API calls per user per minute before 429 RESOURCE_EXHAUSTED; `None`: no limit.
    pub per_user_per_minute: Option<u32>,
    /// The quota's window (a minute, as Google's; tests shorten it).
    pub quota_window: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            latency: Duration::ZERO,
            per_user_per_minute: None,
            quota_window: Duration::from_secs(60),
        }
    }
}

/// A Directory user.
#[derive(Debug, Clone)]
pub struct DirUser {
    pub id: String,
    pub primary_email: String,
    pub aliases: Vec<String>,
    pub suspended: bool,
    pub archived: bool,
    pub is_admin: bool,
    /// Org unit path, `/` by default.
    pub org_unit: String,
}

/// A Directory group: its address and its members' addresses (users or other groups).
#[derive(Debug, Clone)]
pub struct DirGroup {
    pub id: String,
    pub email: String,
    pub members: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Domain {
    pub name: String,
    pub primary: bool,
    pub verified: bool,
}

/// Everything the fake remembers.
pub struct World {
    pub users: Vec<DirUser>,
    pub groups: Vec<DirGroup>,
    /// Org unit paths that exist (besides `/`).
    pub org_units: HashSet<String>,
    pub domains: Vec<Domain>,
    /// Scopes granted to the service account's client id (domain-wide delegation).
    pub granted_scopes: HashSet<String>,
    /// Access token → (user email as impersonated, scopes).
    tokens: HashMap<String, (String, Vec<String>)>,
    /// Directory id → that user's contacts (locked on their own, so users are served in
    /// parallel).
    pub books: HashMap<String, Arc<Mutex<Book>>>,
    next: u64,
}

impl World {
    pub fn user(&self, key: &str) -> Option<&DirUser> {
        let k = key.to_ascii_lowercase();
        self.users.iter().find(|u| {
            u.id == key
                || u.primary_email.eq_ignore_ascii_case(&k)
                || u.aliases.iter().any(|a| a.eq_ignore_ascii_case(&k))
        })
    }

    fn next_id(&mut self) -> u64 {
        self.next += 1;
        self.next
    }
}

/// Shared state of a running fake.
pub struct State {
    pub world: Mutex<World>,
    people_spec: spec::Spec,
    directory_spec: spec::Spec,
    violations: Mutex<Vec<String>>,
    counts: Mutex<BTreeMap<String, u64>>,
    /// API calls whose own work took longer than `Options::latency` (answered late).
    late: std::sync::atomic::AtomicU64,
    /// When each user's last People API answer was sent, and the time and number of gaps
    /// between such an answer and that user's next call (see `Fake::client_gap`).
    answered: Mutex<HashMap<String, Instant>>,
    /// Ends the injected latency on time (see `timer`).
    timer: timer::Timer,
    gap_us: std::sync::atomic::AtomicU64,
    gaps: std::sync::atomic::AtomicU64,
    /// Every People API call since the last `reset_counts`: who, when it arrived, when it was
    /// answered (see `Fake::timeline`).
    timeline: Mutex<Vec<TimedCall>>,
    /// Every access token granted since the last `reset_counts`: to whom, and when.
    grants: Mutex<Vec<(String, Instant)>>,
    faults: Mutex<Vec<Fault>>,
    inflight: Mutex<HashSet<String>>,
    quota: Mutex<HashMap<String, (Instant, u32)>>,
    pub options: Mutex<Options>,
    sa_email: String,
    client_id: String,
    public_pem: String,
    private_pem: String,
    token_url: Mutex<String>,
}

/// A running fake on 127.0.0.1.
pub struct FakeGoogle {
    pub url: String,
    pub state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for FakeGoogle {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Generates an RSA key for a test service account: (private PKCS#8 PEM, public PEM).
fn generate_key() -> (String, String) {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("RSA key");
    let private = key.to_pkcs8_pem(LineEnding::LF).expect("PEM").to_string();
    let public = key
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("PEM");
    (private, public)
}

impl FakeGoogle {
    /// Starts a fake on a free loopback port, on its own thread, with a fresh service-account
    /// key. Domain `example.com` (primary, verified) and an admin `admin@example.com` exist, and
    /// every scope is granted.
    pub fn start(options: Options) -> FakeGoogle {
        let (private_pem, public_pem) = generate_key();
        let state = Arc::new(State {
            world: Mutex::new(World {
                users: vec![],
                groups: vec![],
                org_units: HashSet::new(),
                domains: vec![Domain {
                    name: "example.com".into(),
                    primary: true,
                    verified: true,
                }],
                granted_scopes: [
                    "https://www.googleapis.com/auth/contacts",
                    "https://www.googleapis.com/auth/admin.directory.user.readonly",
                    "https://www.googleapis.com/auth/admin.directory.group.member.readonly",
                    "https://www.googleapis.com/auth/admin.directory.domain.readonly",
                ]
                .into_iter()
                .map(str::to_string)
                .collect(),
                tokens: HashMap::new(),
                books: HashMap::new(),
                next: 1000,
            }),
            people_spec: spec::Spec::load(include_str!("../specs/people-v1-discovery.json")),
            directory_spec: spec::Spec::load(include_str!(
                "../specs/admin-directory-v1-discovery.json"
            )),
            violations: Default::default(),
            counts: Default::default(),
            late: Default::default(),
            answered: Default::default(),
            timer: timer::Timer::new(),
            gap_us: Default::default(),
            timeline: Default::default(),
            grants: Default::default(),
            gaps: Default::default(),
            faults: Default::default(),
            inflight: Default::default(),
            quota: Default::default(),
            options: Mutex::new(options),
            sa_email: "groupsync@test-project.iam.gserviceaccount.com".into(),
            client_id: "104242424242424242424".into(),
            public_pem,
            private_pem,
            token_url: Mutex::new(String::new()),
        });
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind 127.0.0.1:0");
                addr_tx.send(listener.local_addr().expect("addr")).ok();
                let app = axum::Router::new()
                    .fallback(handle)
                    .layer(axum::middleware::from_fn(stamp_arrival))
                    .with_state(st);
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    })
                    .await
                    .ok();
            });
        });
        let addr = addr_rx.recv().expect("fake started");
        let url = format!("http://{addr}");
        *state.token_url.lock().unwrap() = format!("{url}/token");
        let fake = FakeGoogle {
            url,
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        fake.add_user("admin@example.com", true);
        fake
    }

    /// The service account's JSON key file, pointing at this fake's token endpoint.
    pub fn key_json(&self) -> String {
        json!({
            "type": "service_account",
            "project_id": "test-project",
            "private_key_id": "0123456789abcdef",
            "private_key": self.state.private_pem,
            "client_email": self.state.sa_email,
            "client_id": self.state.client_id,
            "token_uri": self.state.token_url.lock().unwrap().clone(),
        })
        .to_string()
    }

    pub fn client_id(&self) -> &str {
        &self.state.client_id
    }

    pub fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.state.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a Directory user (and their empty contacts); returns the immutable id.
    pub fn add_user(&self, email: &str, admin: bool) -> String {
        let mut w = self.world();
        let id = format!("1{:020}", w.next_id());
        w.users.push(DirUser {
            id: id.clone(),
            primary_email: email.to_ascii_lowercase(),
            aliases: vec![],
            suspended: false,
            archived: false,
            is_admin: admin,
            org_unit: "/".into(),
        });
        w.books.insert(id.clone(), Default::default());
        id
    }

    pub fn add_domain(&self, name: &str, verified: bool) {
        self.world().domains.push(Domain {
            name: name.into(),
            primary: false,
            verified,
        });
    }

    /// Renames a user; the old address becomes an alias (as in Google Workspace).
    pub fn rename_user(&self, old: &str, new: &str) {
        let mut w = self.world();
        let u = w
            .users
            .iter_mut()
            .find(|u| u.primary_email.eq_ignore_ascii_case(old))
            .expect("user to rename");
        u.aliases.push(u.primary_email.clone());
        u.primary_email = new.to_ascii_lowercase();
    }

    pub fn set_suspended(&self, email: &str, suspended: bool) {
        let mut w = self.world();
        if let Some(u) = w
            .users
            .iter_mut()
            .find(|u| u.primary_email.eq_ignore_ascii_case(email))
        {
            u.suspended = suspended;
        }
    }

    /// Moves a user to an org unit (`/Sales`, `/Sales/East`).
    pub fn set_org_unit(&self, email: &str, path: &str) {
        let mut w = self.world();
        let mut p = path.to_string();
        while p.len() > 1 {
            w.org_units.insert(p.clone());
            p = p
                .rsplit_once('/')
                .map(|(a, _)| a.to_string())
                .unwrap_or_default();
        }
        if let Some(u) = w
            .users
            .iter_mut()
            .find(|u| u.primary_email.eq_ignore_ascii_case(email))
        {
            u.org_unit = path.into();
        }
    }

    /// Adds (or replaces) a Directory group with these member addresses (users or groups).
    pub fn set_group(&self, email: &str, members: &[&str]) {
        let mut w = self.world();
        let id = format!("0{:016x}", w.next_id());
        w.groups.retain(|g| !g.email.eq_ignore_ascii_case(email));
        w.groups.push(DirGroup {
            id,
            email: email.to_ascii_lowercase(),
            members: members.iter().map(|m| m.to_ascii_lowercase()).collect(),
        });
    }

    /// Removes a user from the Directory (their contacts go with them).
    pub fn delete_user(&self, email: &str) {
        let mut w = self.world();
        if let Some(i) = w
            .users
            .iter()
            .position(|u| u.primary_email.eq_ignore_ascii_case(email))
        {
            let u = w.users.remove(i);
            w.books.remove(&u.id);
        }
    }

    /// Sets the scopes granted to the service account's client id.
    pub fn set_granted_scopes(&self, scopes: &[&str]) {
        self.world().granted_scopes = scopes.iter().map(|s| s.to_string()).collect();
    }

    /// Gives a contact of `email` a photo, as the user uploading one in Google Contacts would.
    pub fn set_photo(&self, email: &str, rn: &str, bytes: &[u8]) {
        let base = format!("{}/photos", self.state.base_url());
        let id = self.world().user(email).expect("user").id.clone();
        self.with_book(email, |b| b.set_photo(rn, bytes, &format!("{base}/{id}")));
    }

    /// Runs `f` on a user's contacts, as that user editing them in Google Contacts would.
    pub fn with_book<R>(&self, email: &str, f: impl FnOnce(&mut Book) -> R) -> R {
        let book = {
            let mut w = self.world();
            let id = w.user(email).expect("user").id.clone();
            w.books.entry(id).or_default().clone()
        };
        let mut b = book.lock().unwrap();
        f(&mut b)
    }

    /// An access token for `email` with every granted scope, without the JWT exchange (for
    /// tests that send raw requests).
    pub fn issue_token(&self, email: &str) -> String {
        let mut w = self.world();
        let scopes: Vec<String> = w.granted_scopes.iter().cloned().collect();
        let n = w.next_id();
        let token = format!("ya29.test-{n}");
        w.tokens.insert(token.clone(), (email.to_string(), scopes));
        token
    }

    pub fn inject(&self, fault: Fault) {
        self.state.faults.lock().unwrap().push(fault);
    }

    /// Requests per API method id (`people.people.batchCreateContacts`, `token`, …).
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.state.counts.lock().unwrap().clone()
    }

    pub fn reset_counts(&self) {
        self.state.counts.lock().unwrap().clear();
        self.state
            .late
            .store(0, std::sync::atomic::Ordering::Relaxed);
        self.state.answered.lock().unwrap().clear();
        self.state.timeline.lock().unwrap().clear();
        self.state.grants.lock().unwrap().clear();
        self.state
            .gap_us
            .store(0, std::sync::atomic::Ordering::Relaxed);
        self.state
            .gaps
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// Since the last `reset_counts`: the mean time between the fake sending a user an answer
    /// from the People API and that user's next People API call arriving, and how many such
    /// gaps there were. It is the client's share of a destination's critical path (reading the
    /// answer, planning, writing the next request, and waiting for a core to do it on).
    pub fn client_gap(&self) -> (Duration, u64) {
        let n = self.state.gaps.load(std::sync::atomic::Ordering::Relaxed);
        let us = self.state.gap_us.load(std::sync::atomic::Ordering::Relaxed);
        (Duration::from_micros(us.checked_div(n).unwrap_or(0)), n)
    }

    /// Every People API call since the last `reset_counts`, in the order they were answered.
    pub fn timeline(&self) -> Vec<TimedCall> {
        self.state.timeline.lock().unwrap().clone()
    }

    /// The access tokens granted since the last `reset_counts`: the user each was for
    /// (lower-cased), and when, in the order they were granted.
    pub fn token_grants(&self) -> Vec<(String, Instant)> {
        self.state.grants.lock().unwrap().clone()
    }

    /// API calls since the last `reset_counts` whose own work in the fake took longer than
    /// `Options::latency`, so that they were answered late (a benchmark's bound then does not
    /// hold for them).
    pub fn late_calls(&self) -> u64 {
        self.state.late.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every request that broke the API's rules, in words.
    pub fn violations(&self) -> Vec<String> {
        self.state.violations.lock().unwrap().clone()
    }

    pub fn set_options(&self, o: Options) {
        *self.state.options.lock().unwrap() = o;
    }
}

/// A Google error response: `{"error": {code, message, status, details}}`.
pub(crate) fn error(status: u16, code: &str, message: &str, details: Value) -> Response {
    let body = json!({
        "error": {
            "code": status,
            "message": message,
            "status": code,
            "details": details,
        }
    });
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [("content-type", "application/json; charset=UTF-8")],
        body.to_string(),
    )
        .into_response()
}

fn ok(v: Value) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/json; charset=UTF-8")],
        v.to_string(),
    )
        .into_response()
}

impl State {
    /// This fake's base URL (http://127.0.0.1:port).
    fn base_url(&self) -> String {
        self.token_url
            .lock()
            .unwrap()
            .trim_end_matches("/token")
            .to_string()
    }

    fn violation(&self, what: String) {
        self.violations.lock().unwrap().push(what);
    }

    fn count(&self, m: &str) {
        *self
            .counts
            .lock()
            .unwrap()
            .entry(m.to_string())
            .or_default() += 1;
    }

    fn take_fault(&self, method: &str, user: &str) -> Option<FaultKind> {
        let mut f = self.faults.lock().unwrap();
        let i = f.iter().position(|x| {
            x.method == method
                && x.user
                    .as_deref()
                    .is_none_or(|u| u.eq_ignore_ascii_case(user))
        })?;
        let kind = f[i].kind.clone();
        f[i].times -= 1;
        if f[i].times == 0 {
            f.remove(i);
        }
        Some(kind)
    }
}

/// When a request's head arrived, before its body was read: the injected latency counts from
/// there, as a server's answer time does.
#[derive(Clone, Copy)]
struct Arrived(Instant);

/// One People API call as the fake saw it (see `Fake::timeline`).
#[derive(Clone, Debug)]
pub struct TimedCall {
    /// The user it was made as, lower-cased.
    pub user: String,
    /// The API method (its discovery id).
    pub method: String,
    pub arrived: Instant,
    pub answered: Instant,
}

async fn stamp_arrival(mut req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    req.extensions_mut().insert(Arrived(Instant::now()));
    next.run(req).await
}

async fn handle(
    axum::extract::State(st): axum::extract::State<Arc<State>>,
    axum::Extension(Arrived(started)): axum::Extension<Arrived>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let query: Vec<(String, String)> = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if path == "/token" && method == Method::POST {
        st.count("token");
        return token(&st, &headers, &body);
    }
    // Photo URLs, as googleusercontent.com serves them (no credentials needed).
    if let Some(rest) = path.strip_prefix("/photos/")
        && method == Method::GET
    {
        st.count("photo.get");
        let w = st.world.lock().unwrap();
        let found = rest
            .split_once('/')
            .and_then(|(user, pid)| w.books.get(user).cloned().map(|b| (b, pid)));
        drop(w);
        let found = found.and_then(|(b, pid)| b.lock().unwrap().photo_bytes.get(pid).cloned());
        return match found {
            Some(b) => (StatusCode::OK, [("content-type", "image/png")], b).into_response(),
            None => (StatusCode::NOT_FOUND, "no such photo").into_response(),
        };
    }
    let (spec, api) = if path.starts_with("/admin/directory/") {
        (&st.directory_spec, "directory")
    } else {
        (&st.people_spec, "people")
    };
    let Some((m, params)) = spec.find(method.as_str(), &path) else {
        st.violation(format!(
            "{method} {path}: no such method in the {api} discovery document"
        ));
        return error(
            404,
            "NOT_FOUND",
            "Requested entity was not found.",
            json!([]),
        );
    };
    let id = m.id.clone();
    st.count(&id);
    if let Err(e) = spec.check_query(m, &query) {
        st.violation(format!("{id}: {e}"));
        return error(400, "INVALID_ARGUMENT", &e, json!([]));
    }
    let json_body: Option<Value> = if body.is_empty() {
        None
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => Some(v),
            Err(e) => {
                st.violation(format!("{id}: body is not JSON: {e}"));
                return error(
                    400,
                    "INVALID_ARGUMENT",
                    "Invalid JSON payload received.",
                    json!([]),
                );
            }
        }
    };
    if let Err(e) = spec.check_body(m, json_body.as_ref()) {
        st.violation(format!("{id}: {e}"));
        return error(400, "INVALID_ARGUMENT", &e, json!([]));
    }
    // Who is calling.
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let Some((email, scopes)) = st.world.lock().unwrap().tokens.get(token).cloned() else {
        return error(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
            json!([]),
        );
    };
    let opts = st.options.lock().unwrap().clone();
    let mutation = method != Method::GET;
    // Held while a mutation is processed; released on every way out, a client that hung up
    // (the handler dropped at an await) included.
    let mut guard = InFlight { st: &st, key: None };
    if api == "people" && mutation {
        let key = email.to_ascii_lowercase();
        let mut inflight = st.inflight.lock().unwrap();
        if inflight.insert(key.clone()) {
            guard.key = Some(key);
        } else {
            drop(inflight);
            st.violation(format!(
                "{id}: a second mutation for {email} while one is in flight (Google: send mutate requests for one user sequentially)"
            ));
        }
    }
    let user_key = (api == "people").then(|| email.to_ascii_lowercase());
    if let Some(k) = &user_key
        && let Some(t) = st.answered.lock().unwrap().remove(k)
    {
        let gap = started.saturating_duration_since(t);
        st.gap_us
            .fetch_add(gap.as_micros() as u64, std::sync::atomic::Ordering::Relaxed);
        st.gaps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let mut delay = Duration::ZERO;
    let resp = dispatch(
        &st, api, &id, &params, &query, json_body, &email, &scopes, &opts, &mut delay,
    );
    // The call takes `latency` in all, the fake's own work included (at least that work): a
    // server's answer time, not a network delay added on top of the fake's CPU.
    match opts.latency.checked_sub(started.elapsed()) {
        Some(_) => st.timer.sleep_until(started + opts.latency).await,
        None => {
            if !opts.latency.is_zero() {
                st.late.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
    drop(guard);
    if let Some(user) = user_key {
        let answered = Instant::now();
        st.timeline.lock().unwrap().push(TimedCall {
            user: user.clone(),
            method: id.clone(),
            arrived: started,
            answered,
        });
        st.answered.lock().unwrap().insert(user, answered);
    }
    // A hang: whatever was done is done; the answer comes late (the client gave up by then).
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    resp
}

/// A user's mutation in progress (see `State::inflight`).
struct InFlight<'a> {
    st: &'a State,
    key: Option<String>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            self.st.inflight.lock().unwrap().remove(&k);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn dispatch(
    st: &State,
    api: &str,
    id: &str,
    params: &HashMap<String, String>,
    query: &[(String, String)],
    body: Option<Value>,
    email: &str,
    scopes: &[String],
    opts: &Options,
    delay: &mut Duration,
) -> Response {
    if api == "people" {
        if !scopes
            .iter()
            .any(|s| s == "https://www.googleapis.com/auth/contacts")
        {
            return error(
                403,
                "PERMISSION_DENIED",
                "Request had insufficient authentication scopes.",
                json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT"}]),
            );
        }
        if let Some(limit) = opts.per_user_per_minute {
            let mut q = st.quota.lock().unwrap();
            let e = q
                .entry(email.to_ascii_lowercase())
                .or_insert((Instant::now(), 0));
            if e.0.elapsed() >= opts.quota_window {
                *e = (Instant::now(), 0);
            }
            e.1 += 1;
            if e.1 > limit {
                drop(q);
                st.count("quota-refused");
                return error(
                    429,
                    "RESOURCE_EXHAUSTED",
                    "Quota exceeded for quota metric 'Critical read requests (Contact and Profile Reads)' and limit 'Critical read requests (Contact and Profile Reads) per minute per user'",
                    json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "RATE_LIMIT_EXCEEDED", "domain": "googleapis.com"}]),
                );
            }
        }
    }
    let fault = st.take_fault(id, email);
    match &fault {
        Some(FaultKind::Status(s)) => {
            let code = match s {
                500 => "INTERNAL",
                503 => "UNAVAILABLE",
                504 => "DEADLINE_EXCEEDED",
                403 => "PERMISSION_DENIED",
                _ => "UNKNOWN",
            };
            return error(*s, code, "injected failure", json!([]));
        }
        Some(FaultKind::TooMany { retry_after }) => {
            let mut r = error(
                429,
                "RESOURCE_EXHAUSTED",
                "Resource has been exhausted (e.g. check quota).",
                json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "RATE_LIMIT_EXCEEDED", "domain": "googleapis.com"}]),
            );
            r.headers_mut()
                .insert("retry-after", retry_after.to_string().parse().unwrap());
            return r;
        }
        _ => {}
    }
    if let Some(FaultKind::Hang { secs, apply: false }) = &fault {
        *delay = Duration::from_secs(*secs);
        return error(504, "DEADLINE_EXCEEDED", "injected hang", json!([]));
    }
    let resp = if api == "directory" {
        directory(st, id, params, query, email, scopes)
    } else {
        let mut w = st.world.lock().unwrap();
        let Some(user) = w.user(email).map(|u| u.id.clone()) else {
            return error(
                403,
                "PERMISSION_DENIED",
                "The caller does not exist.",
                json!([]),
            );
        };
        let book = w.books.entry(user.clone()).or_default().clone();
        drop(w);
        let mut book = book.lock().unwrap();
        let fail_item = match fault {
            Some(FaultKind::FailItem(i)) => Some(i),
            _ => None,
        };
        if matches!(fault, Some(FaultKind::EditFirst))
            && let Some(first) = body
                .as_ref()
                .and_then(|b| b.get("contacts"))
                .and_then(Value::as_object)
                .and_then(|m| m.keys().next().cloned())
            && book.contacts.contains_key(&first)
        {
            book.edit(&first, |p| {
                p["nicknames"] = json!([{"value": "edited meanwhile"}]);
            });
        }
        let mut client_errors = vec![];
        let photo_base = format!("{}/{}", st.base_url().trim_end_matches('/'), "photos");
        let r = people::call(
            &mut book,
            id,
            params,
            query,
            body,
            fail_item,
            &mut client_errors,
            &format!("{photo_base}/{user}"),
        )
        .unwrap_or_else(|(s, c, m, d)| {
            // A refused request (not a per-item batch failure) is a client bug.
            if s == 400 && d == json!([]) {
                st.violation(format!("{id} as {email}: {m}"));
            }
            error(s, c, &m, d)
        });
        drop(book);
        for e in client_errors {
            st.violation(format!("{id} as {email}: {e}"));
        }
        r
    };
    if let Some(FaultKind::Hang { secs, apply: true }) = &fault {
        *delay = Duration::from_secs(*secs);
    }
    if matches!(fault, Some(FaultKind::ApplyThenFail)) {
        return error(
            503,
            "UNAVAILABLE",
            "The service is currently unavailable.",
            json!([]),
        );
    }
    resp
}

fn directory(
    st: &State,
    id: &str,
    params: &HashMap<String, String>,
    query: &[(String, String)],
    email: &str,
    scopes: &[String],
) -> Response {
    let w = st.world.lock().unwrap();
    let caller_is_admin = w.user(email).is_some_and(|u| u.is_admin && !u.suspended);
    if !caller_is_admin {
        return error(
            403,
            "PERMISSION_DENIED",
            "Not Authorized to access this resource/api",
            json!([{"reason": "forbidden"}]),
        );
    }
    let has = |s: &str| scopes.iter().any(|x| x.starts_with(s));
    match id {
        "directory.users.get" => {
            if !has("https://www.googleapis.com/auth/admin.directory.user") {
                return error(
                    403,
                    "PERMISSION_DENIED",
                    "Request had insufficient authentication scopes.",
                    json!([]),
                );
            }
            let key = params.get("userKey").cloned().unwrap_or_default();
            let key = percent_decode(&key);
            match w.user(&key) {
                Some(u) => ok(user_json(u)),
                None => error(
                    404,
                    "NOT_FOUND",
                    "Resource Not Found: userKey",
                    json!([{"reason": "notFound"}]),
                ),
            }
        }
        "directory.users.list" => {
            if !has("https://www.googleapis.com/auth/admin.directory.user") {
                return error(
                    403,
                    "PERMISSION_DENIED",
                    "Request had insufficient authentication scopes.",
                    json!([]),
                );
            }
            let get = |k: &str| query.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str());
            let domain = get("domain").map(str::to_ascii_lowercase);
            match (get("customer"), &domain) {
                (Some("my_customer") | Some("C0abcdefg"), None) => {}
                (None, Some(d)) if w.domains.iter().any(|x| &x.name == d) => {}
                (None, Some(_)) => {
                    return error(
                        403,
                        "PERMISSION_DENIED",
                        "Not Authorized to access this resource/api",
                        json!([{"reason": "forbidden"}]),
                    );
                }
                _ => {
                    st.violation(
                        "directory.users.list: exactly one of customer or domain must be given"
                            .into(),
                    );
                    return error(
                        400,
                        "INVALID_ARGUMENT",
                        "Bad Request",
                        json!([{"reason": "badRequest"}]),
                    );
                }
            }
            let (from, size) = match directory_page(st, id, query, 100, 500) {
                Ok(p) => p,
                Err(r) => return *r,
            };
            // The search syntax the fake knows: orgUnitPath='/X' (the unit and those under it).
            let ou = match get("query") {
                None => None,
                Some(q) => match q
                    .strip_prefix("orgUnitPath=")
                    .map(|v| v.trim_matches('\'').to_string())
                {
                    Some(v) => Some(v),
                    None => {
                        st.violation(format!(
                            "directory.users.list: query {q:?} is not understood by the fake"
                        ));
                        return error(
                            400,
                            "INVALID_ARGUMENT",
                            "Invalid Input",
                            json!([{"reason": "invalid"}]),
                        );
                    }
                },
            };
            if let Some(ou) = &ou
                && ou != "/"
                && !w.org_units.contains(ou)
            {
                return error(
                    400,
                    "INVALID_ARGUMENT",
                    "Invalid Input: orgUnitPath",
                    json!([{"reason": "invalid"}]),
                );
            }
            let mut users: Vec<&DirUser> = w
                .users
                .iter()
                .filter(|u| {
                    domain
                        .as_ref()
                        .is_none_or(|d| u.primary_email.ends_with(&format!("@{d}")))
                })
                .filter(|u| {
                    ou.as_ref().is_none_or(|ou| {
                        ou == "/" || u.org_unit == *ou || u.org_unit.starts_with(&format!("{ou}/"))
                    })
                })
                .collect();
            users.sort_by(|a, b| a.primary_email.cmp(&b.primary_email));
            let users: Vec<Value> = users.iter().map(|u| user_json(u)).collect();
            directory_list("admin#directory#users", "users", users, from, size)
        }
        "directory.members.list" => {
            if !has("https://www.googleapis.com/auth/admin.directory.group") {
                return error(
                    403,
                    "PERMISSION_DENIED",
                    "Request had insufficient authentication scopes.",
                    json!([]),
                );
            }
            let get = |k: &str| query.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str());
            let key = percent_decode(params.get("groupKey").map(String::as_str).unwrap_or(""));
            let Some(group) = w.groups.iter().find(|g| g.email.eq_ignore_ascii_case(&key)) else {
                return error(
                    404,
                    "NOT_FOUND",
                    "Resource Not Found: groupKey",
                    json!([{"reason": "notFound"}]),
                );
            };
            let (from, size) = match directory_page(st, id, query, 200, 200) {
                Ok(p) => p,
                Err(r) => return *r,
            };
            let derived = get("includeDerivedMembership") == Some("true");
            // Members in order; with derived membership, nested groups' members follow them.
            let mut members: Vec<Value> = vec![];
            let mut seen: HashSet<String> = HashSet::new();
            let mut queue: Vec<String> = group.members.clone();
            let mut visited: HashSet<String> = HashSet::from([group.email.clone()]);
            while !queue.is_empty() {
                let m = queue.remove(0);
                if !seen.insert(m.clone()) {
                    continue;
                }
                if let Some(u) = w.user(&m) {
                    members.push(json!({"kind": "admin#directory#member", "id": u.id, "email": u.primary_email, "role": "MEMBER", "type": "USER", "status": if u.suspended {"SUSPENDED"} else {"ACTIVE"}}));
                } else if let Some(g) = w.groups.iter().find(|g| g.email == m) {
                    members.push(json!({"kind": "admin#directory#member", "id": g.id, "email": g.email, "role": "MEMBER", "type": "GROUP", "status": "ACTIVE"}));
                    if derived && visited.insert(g.email.clone()) {
                        queue.extend(g.members.iter().cloned());
                    }
                }
            }
            directory_list("admin#directory#members", "members", members, from, size)
        }
        "directory.domains.list" => {
            if !has("https://www.googleapis.com/auth/admin.directory.domain") {
                return error(
                    403,
                    "PERMISSION_DENIED",
                    "Request had insufficient authentication scopes.",
                    json!([]),
                );
            }
            let c = params.get("customer").map(String::as_str).unwrap_or("");
            if c != "my_customer" && c != "C0abcdefg" {
                return error(
                    400,
                    "INVALID_ARGUMENT",
                    "Bad Request",
                    json!([{"reason": "badRequest"}]),
                );
            }
            ok(json!({
                "kind": "admin#directory#domains",
                "domains": w.domains.iter().map(|d| json!({
                    "kind": "admin#directory#domain",
                    "domainName": d.name,
                    "isPrimary": d.primary,
                    "verified": d.verified,
                    "creationTime": "1600000000000",
                })).collect::<Vec<_>>(),
            }))
        }
        other => {
            st.violation(format!("{other}: not implemented by the fake"));
            error(
                501,
                "UNIMPLEMENTED",
                "not implemented by the fake",
                json!([]),
            )
        }
    }
}

/// The page a Directory list call asks for: (first item, page size), from `maxResults` (1 to
/// `limit`, else `default`) and a `pageToken` this fake gave. A bad one is a client bug.
fn directory_page(
    st: &State,
    id: &str,
    query: &[(String, String)],
    default: usize,
    limit: usize,
) -> Result<(usize, usize), Box<Response>> {
    let get = |k: &str| query.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str());
    let size = match get("maxResults").map(str::parse::<usize>) {
        None => default,
        Some(Ok(n)) if (1..=limit).contains(&n) => n,
        _ => {
            st.violation(format!("{id}: maxResults must be 1 to {limit}"));
            return Err(Box::new(error(
                400,
                "INVALID_ARGUMENT",
                "Invalid value for maxResults",
                json!([{"reason": "invalid"}]),
            )));
        }
    };
    let from = match get("pageToken") {
        None | Some("") => 0,
        Some(t) => match t.strip_prefix('p').and_then(|n| n.parse().ok()) {
            Some(n) => n,
            None => {
                st.violation(format!("{id}: a pageToken the fake never gave"));
                return Err(Box::new(error(
                    400,
                    "INVALID_ARGUMENT",
                    "Invalid pageToken",
                    json!([]),
                )));
            }
        },
    };
    Ok((from, size))
}

/// One page of a Directory list answer (`{kind, <key>: [...], nextPageToken}`).
fn directory_list(kind: &str, key: &str, items: Vec<Value>, from: usize, size: usize) -> Response {
    let total = items.len();
    let page: Vec<Value> = items.into_iter().skip(from).take(size).collect();
    let mut out = json!({"kind": kind, key: page});
    if from + size < total {
        out["nextPageToken"] = json!(format!("p{}", from + size));
    }
    ok(out)
}

/// A Directory user resource (projection basic).
fn user_json(u: &DirUser) -> Value {
    json!({
        "kind": "admin#directory#user",
        "id": u.id,
        "primaryEmail": u.primary_email,
        "aliases": u.aliases,
        "suspended": u.suspended,
        "archived": u.archived,
        "isAdmin": u.is_admin,
        "orgUnitPath": u.org_unit,
        "customerId": "C0abcdefg",
        "name": {"fullName": u.primary_email},
    })
}

fn percent_decode(s: &str) -> String {
    form_urlencoded::parse(format!("k={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// The OAuth token endpoint: RFC 7523 JWT-bearer grant, as Google answers it.
fn token(st: &State, headers: &HeaderMap, body: &[u8]) -> Response {
    let oauth_err = |status: u16, e: &str, d: &str| {
        (
            StatusCode::from_u16(status).unwrap(),
            [("content-type", "application/json")],
            json!({"error": e, "error_description": d}).to_string(),
        )
            .into_response()
    };
    if !headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
    {
        st.violation("token: body is not application/x-www-form-urlencoded".into());
        return oauth_err(400, "invalid_request", "Bad Request");
    }
    let form: HashMap<String, String> = form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        st.violation(format!("token: grant_type {:?}", form.get("grant_type")));
        return oauth_err(400, "unsupported_grant_type", "Invalid grant_type");
    }
    let Some(assertion) = form.get("assertion") else {
        st.violation("token: no assertion".into());
        return oauth_err(
            400,
            "invalid_request",
            "Missing required parameter: assertion",
        );
    };
    let token_url = st.token_url.lock().unwrap().clone();
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(st.public_pem.as_bytes()).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_audience(&[token_url]);
    v.set_issuer(&[st.sa_email.as_str()]);
    v.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
    let claims: Value = match jsonwebtoken::decode::<Value>(assertion, &key, &v) {
        Ok(d) => d.claims,
        Err(e) => {
            st.violation(format!("token: bad assertion: {e}"));
            return oauth_err(400, "invalid_grant", "Invalid JWT Signature.");
        }
    };
    let iat = claims["iat"].as_u64().unwrap_or(0);
    let exp = claims["exp"].as_u64().unwrap_or(0);
    if exp <= iat || exp - iat > 3600 {
        st.violation(format!("token: exp - iat = {}", exp as i64 - iat as i64));
        return oauth_err(
            400,
            "invalid_grant",
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.",
        );
    }
    let scopes: Vec<String> = claims["scope"]
        .as_str()
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let sub = claims["sub"].as_str().unwrap_or("").to_string();
    let mut w = st.world.lock().unwrap();
    if scopes.is_empty() || !scopes.iter().all(|s| w.granted_scopes.contains(s)) {
        return oauth_err(
            401,
            "unauthorized_client",
            "Client is unauthorized to retrieve access tokens using this method, or client not authorized for any of the scopes requested.",
        );
    }
    match w.user(&sub) {
        None => return oauth_err(400, "invalid_grant", "Invalid email or User ID"),
        Some(u) if u.suspended => {
            return oauth_err(400, "invalid_grant", "Invalid email or User ID");
        }
        Some(_) => {}
    }
    let n = w.next_id();
    let token = format!("ya29.fake-{n}-{}", rand::random::<u64>());
    st.grants
        .lock()
        .unwrap()
        .push((sub.to_ascii_lowercase(), Instant::now()));
    w.tokens.insert(token.clone(), (sub, scopes));
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"}).to_string(),
    )
        .into_response()
}
