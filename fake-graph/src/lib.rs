//! A stateful fake of the Microsoft identity platform's token endpoint and Microsoft Graph v1.0
//! (users, domains, groups, contact folders, contacts, contact delta, contact photos,
//! `$batch`), for groupsync's tests and benchmarks. It is never part of the shipped binary.
//!
//! [`FakeGraph::start`] serves one base URL on 127.0.0.1 from its own thread and tokio
//! runtime: `POST /{tenant}/oauth2/v2.0/token` and everything under `/v1.0`. Mailbox calls are
//! checked against the vendored OpenAPI subset in `specs/` (paths, verbs, query options, body
//! properties and types, see `spec.rs`) and against Exchange's own rules; directory calls
//! against hand-coded rules (`directory.rs`). Whatever a client does wrong is answered as Graph
//! would, and recorded in [`FakeGraph::violations`], which tests assert to be empty. It also
//! models Exchange's limits (MailboxConcurrency, a request quota per window, Retry-After) and
//! lets tests inject faults per operation ([`Fault`]).
//!
//! Module map: `lib.rs` public API and shared state; `routes.rs` the request pipeline;
//! `auth.rs` tokens; `directory.rs` users, domains, groups; `mailbox.rs` mailbox storage;
//! `folders.rs`, `contacts.rs`, `delta.rs` mailbox handlers; `odata.rs` query options;
//! `batch.rs` JSON batching; `limits.rs` throttling and faults; `spec.rs` the OpenAPI contract;
//! `http.rs` request, response and error values; `timer.rs` exact latency; `util.rs` ids, times.

#![warn(missing_docs)]

mod auth;
mod batch;
mod contacts;
mod delta;
mod directory;
mod folders;
mod http;
mod limits;
mod mailbox;
mod odata;
mod routes;
mod spec;
mod timer;
mod util;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

pub use mailbox::Mailbox;

/// Settings of a fake (changeable while it runs with [`FakeGraph::set_options`]).
#[derive(Debug, Clone)]
pub struct Options {
    /// How long every Graph call takes (not token requests): the answer is held back until
    /// this long after the request arrived. Changes are applied first.
    pub latency: Duration,
    /// Calls per mailbox per `window` before 429 TooManyRequests (batch items count one each).
    pub requests_per_window: u32,
    /// The quota's sliding window.
    pub window: Duration,
    /// Requests in flight per mailbox before 429 ApplicationThrottled (MailboxConcurrency).
    pub max_concurrent_per_mailbox: usize,
    /// How long an access token is valid.
    pub token_lifetime: Duration,
    /// The most contacts a delta page holds, whatever `Prefer: odata.maxpagesize` asks.
    pub delta_page_cap: usize,
    /// A delta token expires (410) once more changes than this happened in its folder since.
    pub delta_token_cache: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            latency: Duration::ZERO,
            requests_per_window: 10_000,
            window: Duration::from_secs(600),
            max_concurrent_per_mailbox: 4,
            token_lifetime: Duration::from_secs(3599),
            delta_page_cap: 200,
            delta_token_cache: 10_000,
        }
    }
}

/// What an injected fault does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// Answer with this status and a Graph error body (503 `serviceNotAvailable`, 504
    /// `gatewayTimeout` …), changing nothing.
    Status(u16),
    /// 429 TooManyRequests with `Retry-After: retry_after`, changing nothing.
    TooMany {
        /// Seconds, in the `Retry-After` header.
        retry_after: u64,
    },
    /// Apply the change, then answer 504 as if the answer were lost.
    ApplyThenFail,
    /// Answer only `secs` later (504 when not `apply`; the real answer when `apply`, the
    /// change made first). The mailbox's concurrency slot is released before the wait.
    Hang {
        /// How long the answer is held back after the call's latency.
        secs: u64,
        /// Whether the change is made (before the wait).
        apply: bool,
    },
    /// In a batch: the item at this index answers 400 ErrorInvalidProperty, not applied.
    FailItem(usize),
    /// In a batch: the item at this index answers 429 with its own Retry-After, not applied.
    ItemTooMany {
        /// The item's index in the request's `requests` array.
        index: usize,
        /// Seconds, in the item's `Retry-After` header.
        retry_after: u64,
    },
    /// The next deltaLink replay answers 410 Gone.
    ExpireDelta,
}

/// A fault to inject into the next calls of one operation.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Operation name: `token`, `users.get`, `users.list`, `domains.list`, `groups.list`,
    /// `groups.members`, `folders.list`, `folders.get`, `folders.create`, `folders.update`,
    /// `folders.delete`, `folders.permanentDelete`, `contacts.list`, `contacts.get`,
    /// `contacts.create`, `contacts.update`, `contacts.delete`, `contacts.permanentDelete`,
    /// `contacts.delta`, `photo.get`, `photo.put`, `batch`. `FailItem`/`ItemTooMany` match a
    /// batch by `batch` or by the operation of the item they name.
    pub op: String,
    /// Only for calls on this user's mailbox (UPN or id), or any.
    pub user: Option<String>,
    /// What it does.
    pub kind: FaultKind,
    /// How many calls it hits.
    pub times: u32,
}

/// Locks a mutex, ignoring poisoning (a panicking test thread must not wedge the fake).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Everything a running fake shares between its server thread and the test.
pub(crate) struct State {
    pub tenant: String,
    pub client_id: String,
    pub client_secret: String,
    url: OnceLock<String>,
    pub spec: spec::Spec,
    pub schema: contacts::Schema,
    pub dir: Mutex<directory::Directory>,
    pub auth: Mutex<auth::AuthState>,
    /// User id → mailbox (locked on its own, so mailboxes are served in parallel).
    pub mailboxes: Mutex<HashMap<String, Arc<Mutex<Mailbox>>>>,
    pub limits: limits::Limits,
    options: Mutex<Options>,
    pub timer: timer::Timer,
    violations: Mutex<Vec<String>>,
    counts: Mutex<BTreeMap<String, u64>>,
    /// 410 answers so far (their error code alternates).
    pub resets: AtomicU64,
}

impl State {
    /// The base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        self.url.get().map(String::as_str).unwrap_or_default()
    }

    pub fn token_url(&self) -> String {
        format!("{}/{}/oauth2/v2.0/token", self.url(), self.tenant)
    }

    pub fn options(&self) -> Options {
        lock(&self.options).clone()
    }

    pub fn violation(&self, what: String) {
        lock(&self.violations).push(what);
    }

    pub fn count(&self, what: &str) {
        *lock(&self.counts).entry(what.to_string()).or_default() += 1;
    }
}

/// A running fake on 127.0.0.1; dropping it stops the server thread.
pub struct FakeGraph {
    /// `http://127.0.0.1:PORT`: both the login URL and the Graph URL.
    pub url: String,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for FakeGraph {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves `st` on a free loopback port from a new thread: (address, stop, thread).
fn serve(
    st: Arc<State>,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("fake-graph".into())
        .spawn(move || {
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
                    .fallback(routes::handle)
                    .layer(axum::middleware::from_fn(routes::stamp_arrival))
                    .layer(axum::extract::DefaultBodyLimit::max(200 * 1024 * 1024))
                    .with_state(st);
                axum::serve(
                    listener,
                    app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
                )
                .with_graceful_shutdown(async {
                    let _ = stop_rx.await;
                })
                .await
                .ok();
            });
        })
        .expect("the fake's thread starts");
    (addr_rx.recv().expect("fake started"), stop_tx, thread)
}

impl FakeGraph {
    /// Starts a fake with a new tenant id, client id and secret; domain `example.com`
    /// (verified, default) exists and all four app roles are granted.
    pub fn start(options: Options) -> FakeGraph {
        let spec = spec::Spec::load(include_str!("../specs/graph-contacts-subset.yaml"));
        let schema = contacts::Schema::new(&spec);
        let mut dir = directory::Directory::default();
        dir.domains.push(directory::Domain {
            name: "example.com".into(),
            verified: true,
            default: true,
        });
        let state = Arc::new(State {
            tenant: util::guid(),
            client_id: util::guid(),
            client_secret: format!("fgS8Q~{}", util::b64url(&util::random_bytes(26))),
            url: OnceLock::new(),
            spec,
            schema,
            dir: Mutex::new(dir),
            auth: Mutex::new(auth::AuthState::new()),
            mailboxes: Default::default(),
            limits: Default::default(),
            options: Mutex::new(options),
            timer: timer::Timer::new(),
            violations: Default::default(),
            counts: Default::default(),
            resets: AtomicU64::new(0),
        });
        let (addr, stop, thread) = serve(state.clone());
        let url = format!("http://{addr}");
        state.url.set(url.clone()).expect("url set once");
        FakeGraph {
            url,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The tenant id (a GUID).
    pub fn tenant(&self) -> &str {
        &self.state.tenant
    }

    /// The app's client id (a GUID).
    pub fn client_id(&self) -> &str {
        &self.state.client_id
    }

    /// The app's client secret.
    pub fn client_secret(&self) -> &str {
        &self.state.client_secret
    }

    /// `{url}/{tenant}/oauth2/v2.0/token`.
    pub fn token_url(&self) -> String {
        self.state.token_url()
    }

    /// Generates an RSA-2048 key and a self-signed certificate and registers the certificate
    /// for the app: (certificate PEM, PKCS#8 private key PEM).
    pub fn make_certificate(&self) -> (String, String) {
        auth::make_certificate(&self.state)
    }

    /// Sets the app roles granted (tokens issued later carry them; earlier ones keep theirs).
    pub fn set_roles(&self, roles: &[&str]) {
        lock(&self.state.auth).roles = roles.iter().map(|r| r.to_string()).collect();
    }

    /// Adds a domain (not the default).
    pub fn add_domain(&self, name: &str, verified: bool) {
        let d = directory::Domain {
            name: name.into(),
            verified,
            default: false,
        };
        lock(&self.state.dir).domains.push(d);
    }

    /// Adds an enabled user with a mailbox (mail = UPN); returns their immutable id (a GUID).
    pub fn add_user(&self, upn: &str) -> String {
        let id = lock(&self.state.dir).add_user(upn);
        lock(&self.state.mailboxes).insert(id.clone(), Arc::new(Mutex::new(Mailbox::new())));
        id
    }

    /// Renames a user: found by the new UPN and by id, no longer by the old UPN.
    pub fn rename_user(&self, old_upn: &str, new_upn: &str) {
        lock(&self.state.dir).rename(old_upn, new_upn);
    }

    /// Enables or disables a user's account.
    pub fn set_enabled(&self, upn: &str, enabled: bool) {
        lock(&self.state.dir).set_enabled(upn, enabled);
    }

    /// Gives a user an Exchange mailbox or takes it away (its contents are kept): without one,
    /// every mailbox call for them answers 404 MailboxNotEnabledForRESTAPI.
    pub fn set_mailbox(&self, upn: &str, has_mailbox: bool) {
        let mut dir = lock(&self.state.dir);
        dir.set_mailbox(upn, has_mailbox);
        let id = dir.user(upn).expect("user").id.clone();
        drop(dir);
        lock(&self.state.mailboxes)
            .entry(id)
            .or_insert_with(|| Arc::new(Mutex::new(Mailbox::new())));
    }

    /// Deletes a user and their mailbox.
    pub fn delete_user(&self, upn: &str) {
        if let Some(id) = lock(&self.state.dir).delete(upn) {
            lock(&self.state.mailboxes).remove(&id);
        }
    }

    /// Adds or replaces (keeping its id) a group; members are UPNs or other groups' addresses
    /// (nested). Returns the group's id.
    pub fn set_group(&self, mail: &str, members: &[&str]) -> String {
        lock(&self.state.dir).set_group(mail, members)
    }

    /// Runs `f` on a user's mailbox (by UPN or id), as the user working in Outlook would.
    pub fn with_mailbox<R>(&self, upn: &str, f: impl FnOnce(&mut Mailbox) -> R) -> R {
        let id = lock(&self.state.dir)
            .user(upn)
            .unwrap_or_else(|| panic!("no user {upn}"))
            .id
            .clone();
        let mb = lock(&self.state.mailboxes)
            .get(&id)
            .cloned()
            .expect("mailbox");
        let mut mb = lock(&mb);
        f(&mut mb)
    }

    /// Injects a fault.
    pub fn inject(&self, fault: Fault) {
        self.state.limits.inject(fault);
    }

    /// Requests per operation name, plus `http` (HTTP requests, a batch once), `batch.items`,
    /// `token` (token requests) and `token.granted`.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        lock(&self.state.counts).clone()
    }

    /// Clears the counts and `max_in_flight`.
    pub fn reset_counts(&self) {
        lock(&self.state.counts).clear();
        self.state.limits.reset_max();
    }

    /// The next day: every mailbox's quota window starts empty (a window is 10 minutes, and
    /// the runs of a daily job a day apart). Counts and violations are kept.
    pub fn next_day(&self) {
        self.state.limits.clear_windows();
    }

    /// Every request that broke the API's rules, in words ("op for user: what").
    pub fn violations(&self) -> Vec<String> {
        lock(&self.state.violations).clone()
    }

    /// Replaces the options.
    pub fn set_options(&self, o: Options) {
        *lock(&self.state.options) = o;
    }

    /// The most concurrency slots any mailbox had in use at once since start or
    /// `reset_counts`.
    pub fn max_in_flight(&self) -> usize {
        self.state.limits.max_in_flight()
    }
}
