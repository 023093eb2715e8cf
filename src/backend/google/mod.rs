//! The Google Workspace backend: People API v1 for contacts and contact groups, Admin SDK
//! Directory for users and domains, a service account with domain-wide delegation for both.
//!
//! - A user is a Directory user, keyed by its immutable id (an email rename keeps the ledger);
//!   People calls impersonate their primary email, Directory calls impersonate `admin`.
//! - A group is a user contact group (`contactGroups/…`); its members are found by listing the
//!   user's connections (1,000 a page) and filtering on memberships, never one call per member.
//! - Writes go through the batch endpoints (create/update ≤ 200, delete ≤ 500 per call), with
//!   etags from a fresh read; a stale etag is a `Conflict` (the engine re-reads and re-plans).
//! - A batch create whose answer was lost is never sent again blindly: the user's contacts are
//!   re-read and matched by tag first.
//!
//! This module must not decide what to write, and never logs a key or a token.

pub mod auth;
mod directory;
pub mod fields;
pub mod http;
pub mod person;
mod photo;

use calcard::vcard::VCard;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use super::counting::CallCounts;
use super::{
    Backend, BackendError, Capabilities, Contact, Delta, Depth, GroupRead, GroupRef, Known,
    KnownAsWritten, KnownCopies, Read, Result, User, Written,
};
use crate::card::FieldSelection;
pub use crate::config::GoogleConfig;
use auth::{CONTACTS_SCOPE, DIRECTORY_SCOPES, ServiceAccount, TokenSource};
use http::{ApiError, Call, Client};

/// The default group that receives a removed user's own contacts.
pub const MY_CONTACTS: &str = "contactGroups/myContacts";
const CONTACT_SOURCES: &str = "READ_SOURCE_TYPE_CONTACT";

/// What a tagged copy needs besides its fields: the user's other userDefined entries, kept when
/// the visible tag is put back on a copy whose userDefined the job does not manage.
#[derive(Debug, Clone)]
struct Repair {
    user_defined: Vec<Value>,
}

/// Google Workspace through the People and Directory APIs.
pub struct GoogleBackend {
    cfg: GoogleConfig,
    client: Client,
    /// Directory id → primary email, filled by `resolve_user`.
    emails: Mutex<HashMap<String, String>>,
    domains: tokio::sync::OnceCell<Vec<String>>,
    /// (user id, resourceName) of tagged copies whose visible tag is missing.
    repairs: Mutex<HashMap<(String, String), Repair>>,
    /// Recent directory listings: every address (primary, alias) → when it was read, the user.
    directory_cache: Mutex<HashMap<String, (std::time::Instant, directory::DirUser)>>,
    /// (user id, resourceName) of copies → the source photo they have now (from the last read).
    photo_now: Mutex<HashMap<(String, String), String>>,
    photos: photo::PhotoCache,
}

fn api(e: ApiError, what: &str) -> BackendError {
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

/// A read asked for ahead: its request is sent, its answer is taken later (`answer`).
type Ahead<F> = std::pin::Pin<Box<futures::future::MaybeDone<F>>>;

/// Starts `read` and lets the connection task send its request before the caller goes on. The
/// next page or batch of a read is asked for this way before the current one is read, so
/// reading it costs no time on the user's critical path.
async fn ask_ahead<F: std::future::Future>(read: F) -> Ahead<F> {
    let mut asked = Box::pin(futures::future::maybe_done(read));
    let _ = futures::poll!(asked.as_mut());
    // Yielding once lets the connection task send the request.
    tokio::task::yield_now().await;
    asked
}

/// The answer of a read asked for ahead.
async fn answer<F: std::future::Future>(asked: &mut Ahead<F>) -> F::Output {
    asked.as_mut().await;
    asked
        .as_mut()
        .take_output()
        .expect("an answer is taken once")
}

/// The `nextPageToken` of a listing's page, found in its last few KiB without parsing the
/// contacts before it: Google writes a response's fields in their declared order, the page token
/// after the contacts, followed only by counts and the sync token. `None` when it is not there
/// (the last page, or another layout). A guess the caller checks against the parsed page: a
/// contact's own text cannot hold this key, but a wrong guess would only cost a read.
fn next_page_token_at_end(text: &str) -> Option<String> {
    let value = key_at_end(text, "nextPageToken")?;
    let mut de = serde_json::Deserializer::from_str(value);
    let token = <String as serde::Deserialize>::deserialize(&mut de).ok()?;
    (!token.is_empty()).then_some(token)
}

/// The text after `"key":` in the last 4 KiB of a listing's page, where Google writes the
/// fields that follow the contacts. Found only as a key: in a contact's string values, quotes are
/// escaped.
fn key_at_end<'t>(text: &'t str, key: &str) -> Option<&'t str> {
    const TAIL: usize = 4096;
    let mut from = text.len().saturating_sub(TAIL);
    while !text.is_char_boundary(from) {
        from += 1;
    }
    let tail = &text[from..];
    let quoted = format!("\"{key}\"");
    let at = tail.rfind(&quoted)?;
    tail[at + quoted.len()..].trim_start().strip_prefix(':')
}

/// What a listing does after handing a contact over (see `list_connections_synced`).
enum Then {
    Next,
    Stop,
    /// Yields to the runtime before the next contact, so that what the caller started on this
    /// one (a request) gets going.
    Yield,
}

/// The People fields read for every contact: the copied ones plus what tells copies apart.
fn read_fields() -> String {
    let mut f: Vec<&str> = person::COPIED_FIELDS.to_vec();
    f.extend(["clientData", "memberships", "metadata", "photos"]);
    f.join(",")
}

fn domain_of(email: &str) -> &str {
    email.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
}

impl GoogleBackend {
    /// Opens the backend: loads the key (refusing a key file others may read).
    pub fn new(cfg: GoogleConfig) -> std::result::Result<Self, String> {
        let mut account = ServiceAccount::load(&cfg.key_file)?;
        if let Some(t) = &cfg.token_url {
            account.token_uri = t.clone();
        }
        Self::with_account(cfg, account)
    }

    /// Opens the backend with a key already loaded.
    pub fn with_account(
        cfg: GoogleConfig,
        account: ServiceAccount,
    ) -> std::result::Result<Self, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(cfg.request_timeout))
            .user_agent(concat!("groupsync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        let tokens = TokenSource::new(account, http.clone());
        let client = Client::new(http, tokens, cfg.requests_per_minute);
        Ok(GoogleBackend {
            cfg,
            client,
            emails: Default::default(),
            domains: Default::default(),
            repairs: Default::default(),
            directory_cache: Default::default(),
            photo_now: Default::default(),
            photos: Default::default(),
        })
    }

    pub fn config(&self) -> &GoogleConfig {
        &self.cfg
    }

    /// API calls made so far, by method (`people.batchCreateContacts`, …), and tokens fetched.
    pub fn api_calls(&self) -> BTreeMap<&'static str, u64> {
        let mut m = self.client.counts.snapshot();
        m.insert(
            "oauth2.token",
            self.client
                .tokens
                .fetched
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        m
    }

    fn email(&self, user: &User) -> String {
        crate::mutex::lock(&self.emails)
            .get(&user.id)
            .cloned()
            .unwrap_or_else(|| user.name.clone())
    }

    fn people(&self, path: &str) -> String {
        format!("{}/v1/{path}", self.cfg.people_url.trim_end_matches('/'))
    }

    fn directory(&self, path: &str) -> String {
        format!(
            "{}/admin/directory/v1/{path}",
            self.cfg.directory_url.trim_end_matches('/')
        )
    }

    async fn as_admin(
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

    /// A People API call as `email` (the user's primary address), without a body.
    fn people_call<'a>(
        email: &'a str,
        name: &'static str,
        method: Method,
        url: String,
        query: Vec<(&'a str, String)>,
        idempotent: bool,
    ) -> Call<'a> {
        Call {
            name,
            method,
            url,
            query,
            body: None,
            raw_body: None,
            user: email,
            scopes: CONTACTS_SCOPE,
            idempotent,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn as_user(
        &self,
        user: &User,
        name: &'static str,
        method: Method,
        url: String,
        query: Vec<(&str, String)>,
        body: Option<&Value>,
        idempotent: bool,
    ) -> std::result::Result<Value, ApiError> {
        let email = self.email(user);
        self.client
            .send(&Call {
                body,
                ..Self::people_call(&email, name, method, url, query, idempotent)
            })
            .await
    }

    /// The domains users may belong to: `allowed_domains`, or every verified domain of the
    /// customer (domains.list, primary and secondary alike).
    pub async fn allowed_domains(&self) -> Result<Vec<String>> {
        if let Some(d) = &self.cfg.allowed_domains {
            return Ok(d.iter().map(|d| d.to_ascii_lowercase()).collect());
        }
        self.domains
            .get_or_try_init(|| async {
                let v = self
                    .as_admin(
                        "directory.domains.list",
                        self.directory("customer/my_customer/domains"),
                        vec![],
                    )
                    .await
                    .map_err(|e| api(e, "listing the customer's domains"))?;
                let mut out = vec![];
                for d in v
                    .get("domains")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if d.get("verified").and_then(Value::as_bool) == Some(true)
                        && let Some(n) = d.get("domainName").and_then(Value::as_str)
                    {
                        out.push(n.to_ascii_lowercase());
                        for a in d
                            .get("domainAliases")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                        {
                            if a.get("verified").and_then(Value::as_bool) == Some(true)
                                && let Some(n) = a.get("domainAliasName").and_then(Value::as_str)
                            {
                                out.push(n.to_ascii_lowercase());
                            }
                        }
                    }
                }
                Ok(out)
            })
            .await
            .cloned()
    }

    /// Lists a user's contact groups (one call for up to 1,000 groups).
    async fn list_groups(&self, user: &User) -> Result<Vec<Value>> {
        let mut out = vec![];
        let mut page: Option<String> = None;
        loop {
            let mut q = vec![
                ("pageSize", "1000".to_string()),
                ("groupFields", "name,groupType,metadata".to_string()),
            ];
            if let Some(p) = &page {
                q.push(("pageToken", p.clone()));
            }
            let v = self
                .as_user(
                    user,
                    "people.contactGroups.list",
                    Method::GET,
                    self.people("contactGroups"),
                    q,
                    None,
                    true,
                )
                .await
                .map_err(|e| api(e, &format!("contact groups of {}", user.name)))?;
            if let Some(a) = v.get("contactGroups").and_then(Value::as_array) {
                out.extend(a.iter().cloned());
            }
            match v.get("nextPageToken").and_then(Value::as_str) {
                Some(t) if !t.is_empty() => page = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
    }

    /// Every contact of a user (connections.list, 1,000 a page), handed to `each`.
    async fn list_connections(
        &self,
        user: &User,
        fields: &str,
        each: &mut (dyn FnMut(Value) + Send),
    ) -> Result<()> {
        let mut bad = false;
        self.list_connections_synced(user, fields, None, false, None, &mut |_, whole| {
            match whole.raw().map(|raw| serde_json::from_str(raw.get())) {
                Some(Ok(p)) => each(p),
                _ => bad = true,
            }
            if bad { Then::Stop } else { Then::Next }
        })
        .await
        .map_err(|e| api(e, &format!("contacts of {}", user.name)))?;
        if bad {
            return Err(BackendError::Invalid(format!(
                "contacts of {}: the People API answered a contact that is not JSON",
                user.name
            )));
        }
        Ok(())
    }

    /// connections.list with sync tokens: `since` lists only what changed after that token,
    /// `request_token` asks for the next token (it comes with the last page). Each contact is
    /// handed to `each` as its head (name, etag, groups) and a way to its raw JSON, split out of
    /// the page only when a caller needs a contact whole (a page where every contact is known by
    /// its head is scanned once); `each` returns `Then::Stop` to stop reading early (no token is
    /// returned then). `last_call` is called once the last page's text is in, before it is
    /// parsed, when its end says it is the last (a sync token and no page token).
    async fn list_connections_synced(
        &self,
        user: &User,
        fields: &str,
        since: Option<&str>,
        request_token: bool,
        last_call: Option<&(dyn Fn() + Sync)>,
        each: &mut (dyn FnMut(person::Head<'_>, person::Whole<'_, '_>) -> Then + Send),
    ) -> std::result::Result<Option<String>, ApiError> {
        let email = self.email(user);
        // Every parameter but the page and sync tokens must be the same on the call that took
        // the token and the calls that use it.
        let fetch = |page: Option<String>| {
            let mut q = vec![
                ("pageSize", "1000".to_string()),
                ("personFields", fields.to_string()),
                ("sources", CONTACT_SOURCES.to_string()),
            ];
            if request_token {
                q.push(("requestSyncToken", "true".to_string()));
            }
            if let Some(t) = since {
                q.push(("syncToken", t.to_string()));
            }
            if let Some(p) = page {
                q.push(("pageToken", p));
            }
            let call = Self::people_call(
                &email,
                "people.connections.list",
                Method::GET,
                self.people("people/me/connections"),
                q,
                true,
            );
            async move { self.client.send_large(&call).await }
        };
        let mut next = ask_ahead(fetch(None)).await;
        loop {
            let text = answer(&mut next).await?;
            // The next page is asked for before this one is read: with the token found at the
            // page's end, before it is parsed; checked against the page once parsed.
            let guess = next_page_token_at_end(&text);
            if let Some(t) = &guess {
                next = ask_ahead(fetch(Some(t.clone()))).await;
            }
            // Only the last page holds a sync token (People v1): no call follows this one.
            let last =
                request_token && guess.is_none() && key_at_end(&text, "nextSyncToken").is_some();
            if last && let Some(told) = last_call {
                told();
                // What the caller let go (its place, to a destination waiting for it) gets
                // going before this page is parsed: woken from here, it would wait in this
                // worker's next-task slot until the page is done.
                tokio::task::yield_now().await;
            }
            let v: person::HeadsPage<'_> = serde_json::from_str(&text)
                .map_err(|_| http::bad_body("people.connections.list"))?;
            let more = v.next_page_token.clone().filter(|t| !t.is_empty());
            if more != guess
                && let Some(t) = &more
            {
                if last {
                    // A page token after all: not a page the API writes.
                    return Err(http::bad_body("people.connections.list"));
                }
                next = ask_ahead(fetch(Some(t.clone()))).await;
            }
            let mut raws = person::PageRaw::new(&text);
            let len = v.connections.len();
            for (i, head) in v.connections.into_iter().enumerate() {
                match each(head, person::Whole::new(&mut raws, i, len)) {
                    Then::Next => {}
                    Then::Stop => return Ok(None),
                    Then::Yield => tokio::task::yield_now().await,
                }
            }
            if more.is_none() {
                return Ok(v.next_sync_token);
            }
        }
    }

    /// Forgets the repairs noted at the user's last read: a new read notes them again.
    fn forget_repairs(&self, user: &User) {
        crate::mutex::lock(&self.repairs).retain(|(u, _), _| u != &user.id);
    }

    /// Parses a contact listed by `list_connections_synced` whole and hands it to `sink`; the
    /// error names the contact.
    fn read_whole(
        &self,
        user: &User,
        head: &person::Head<'_>,
        whole: person::Whole<'_, '_>,
        sink: &mut (dyn FnMut(Contact) + Send),
    ) -> std::result::Result<(), String> {
        let raw = whole
            .raw()
            .ok_or_else(|| format!("{}: the page is not a list of contacts", head.resource_name))?;
        let p =
            person::Doc::parse(raw.get()).map_err(|e| format!("{}: {e}", head.resource_name))?;
        sink(self.contact_of(user, &p));
        Ok(())
    }

    fn contact_of(&self, user: &User, p: &person::Doc<'_>) -> Contact {
        let id = p.str("resourceName").into_owned();
        let etag = p.str("etag").into_owned();
        let info = p.tag_info();
        let repair = (self.cfg.visible_tag
            && info
                .machine
                .as_ref()
                .is_some_and(|(t, _)| info.visible.as_ref() != Some(t)))
        .then_some("visible-tag");
        if repair.is_some() {
            let user_defined = p.user_entries_but_tag();
            crate::mutex::lock(&self.repairs)
                .insert((user.id.clone(), id.clone()), Repair { user_defined });
        }
        let card = person::doc_to_card(p, &info, repair);
        if info.machine.is_some() {
            let mut now = crate::mutex::lock(&self.photo_now);
            match person::photo_of_card(&card) {
                Some(url) => now.insert((user.id.clone(), id.clone()), url),
                None => now.remove(&(user.id.clone(), id.clone())),
            };
        }
        Contact {
            card: Ok(card),
            id,
            etag,
        }
    }

    /// After a batch create whose answer was lost or partial: which of `cards` now exist,
    /// found by their machine tag (`<tag>:<source>`) among the user's contacts.
    async fn find_created(
        &self,
        user: &User,
        cards: &[&VCard],
    ) -> Result<HashMap<String, Written>> {
        let wanted: HashMap<String, ()> = cards
            .iter()
            .filter_map(|c| person::tag_of_card(c))
            .map(|(t, s)| (format!("{t}:{s}"), ()))
            .collect();
        let mut found = HashMap::new();
        self.list_connections(user, "clientData,metadata", &mut |p| {
            if let Some((t, s)) = person::tag_info(&p).machine {
                let key = format!("{t}:{s}");
                if wanted.contains_key(&key) {
                    found.insert(
                        key,
                        Written {
                            id: p["resourceName"].as_str().unwrap_or("").to_string(),
                            etag: p["etag"].as_str().unwrap_or("").to_string(),
                        },
                    );
                }
            }
        })
        .await?;
        Ok(found)
    }

    async fn modify_members(
        &self,
        user: &User,
        group: &str,
        add: &[&str],
        remove: &[&str],
    ) -> std::result::Result<Value, ApiError> {
        let body = json!({ "resourceNamesToAdd": add, "resourceNamesToRemove": remove });
        self.as_user(
            user,
            "people.contactGroups.members.modify",
            Method::POST,
            self.people(&format!("{group}/members:modify")),
            vec![],
            Some(&body),
            true,
        )
        .await
    }
    /// Creates up to 200 contacts with batchCreateContacts. When the answer is lost (a 5xx or a
    /// dropped connection after sending) or a batch fails in part, the user's contacts are read
    /// back and matched by tag; only the ones confirmed absent are sent again (up to 3 times).
    /// Returns what was created, in order, or what was created before the first failure.
    async fn create_chunk(
        &self,
        user: &User,
        group: &GroupRef,
        chunk: &[&VCard],
    ) -> std::result::Result<Vec<Written>, (Vec<Written>, BackendError)> {
        let key = |c: &VCard| person::tag_of_card(c).map(|(t, s)| format!("{t}:{s}"));
        let mut done: HashMap<usize, Written> = HashMap::new();
        let mut last_err = None;
        for attempt in 0..3u32 {
            let todo: Vec<usize> = (0..chunk.len()).filter(|i| !done.contains_key(i)).collect();
            if todo.is_empty() {
                break;
            }
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
            }
            // Written out as text into one buffer: the fields are JSON already, no tree is built.
            let mut body = b"{\"contacts\":[".to_vec();
            for (n, i) in todo.iter().enumerate() {
                if n > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(b"{\"contactPerson\":");
                person::write_new_contact_json(
                    chunk[*i],
                    &group.id,
                    self.cfg.visible_tag,
                    &mut body,
                );
                body.push(b'}');
            }
            body.extend_from_slice(b"],\"readMask\":\"metadata\",\"sources\":[\"");
            body.extend_from_slice(CONTACT_SOURCES.as_bytes());
            body.extend_from_slice(b"\"]}");
            let body = bytes::Bytes::from(body);
            let email = self.email(user);
            let call = Call {
                raw_body: Some(&body),
                ..Self::people_call(
                    &email,
                    "people.batchCreateContacts",
                    Method::POST,
                    self.people("people:batchCreateContacts"),
                    vec![],
                    false,
                )
            };
            match self.client.send_text(&call).await.and_then(|text| {
                // Read into borrowed parts, not a JSON tree: only names and etags are kept.
                let answer: person::CreateAnswer = if text.trim().is_empty() {
                    person::CreateAnswer::default()
                } else {
                    serde_json::from_str(&text).map_err(|_| http::bad_body(call.name))?
                };
                Ok(answer
                    .created
                    .into_iter()
                    .map(|c| {
                        c.person.map(|p| Written {
                            id: p.resource_name.into_owned(),
                            etag: p.etag.into_owned(),
                        })
                    })
                    .collect::<Vec<_>>())
            }) {
                Ok(created) => {
                    for (n, w) in created.into_iter().enumerate().take(todo.len()) {
                        if let Some(w) = w {
                            done.insert(todo[n], w);
                        }
                    }
                    if done.len() < chunk.len() && last_err.is_none() {
                        last_err = Some(BackendError::Invalid(format!(
                            "batchCreateContacts for {} answered without every created contact",
                            user.name
                        )));
                    }
                }
                Err(e) => {
                    let errors = contact_errors(&e);
                    if !e.ambiguous && errors.is_none() {
                        // Refused as a whole: nothing was created.
                        last_err = Some(api(e, &format!("creating contacts of {}", user.name)));
                        break;
                    }
                    // Some or all may exist: look them up by tag before anything is sent again.
                    tracing::info!(dest = %user.name, "batch create answered {e}; reading back by tag");
                    let wanted: Vec<&VCard> = todo.iter().map(|i| chunk[*i]).collect();
                    let found = match self.find_created(user, &wanted).await {
                        Ok(f) => f,
                        Err(read) => {
                            last_err = Some(read);
                            break;
                        }
                    };
                    let mut refused = None;
                    for (n, i) in todo.iter().enumerate() {
                        if let Some(w) = key(chunk[*i]).and_then(|k| found.get(&k)) {
                            done.insert(*i, w.clone());
                        } else if let Some(s) = errors.as_ref().and_then(|m| m.get(&n.to_string()))
                        {
                            refused.get_or_insert_with(|| {
                                status_error(s, &format!("contact {} of {}", i, user.name))
                            });
                        }
                    }
                    if let Some(r) = refused {
                        // An item the API refused will be refused again: stop here.
                        last_err = Some(r);
                        break;
                    }
                    last_err = Some(BackendError::Transient(format!(
                        "creating contacts of {}: {e}",
                        user.name
                    )));
                }
            }
        }
        let mut written = vec![];
        for i in 0..chunk.len() {
            match done.remove(&i) {
                Some(w) => written.push(w),
                None => {
                    let err = last_err.unwrap_or_else(|| {
                        BackendError::Transient(format!("creating contacts of {}", user.name))
                    });
                    // Later ones that did get created are not reported: the next run finds
                    // them by tag.
                    return Err((written, err));
                }
            }
        }
        Ok(written)
    }

    /// Sets (or removes) a copy's photo and takes its new etag. A failure is logged, not
    /// returned: the contact itself was written, and the next run sees the photo missing and
    /// tries again.
    async fn give_photo(&self, user: &User, w: &mut Written, url: Option<&str>) {
        match self.set_photo(user, &w.id, url).await {
            Ok(etag) => {
                w.etag = etag;
                let key = (user.id.clone(), w.id.clone());
                let mut now = crate::mutex::lock(&self.photo_now);
                match url {
                    Some(u) => now.insert(key, u.to_string()),
                    None => now.remove(&key),
                };
            }
            Err(e) => {
                tracing::warn!(dest = %user.name, contact = %w.id, "photo not copied: {e}; the next run tries again")
            }
        }
    }

    /// One batchUpdateContacts call; a result per contact.
    async fn update_batch(
        &self,
        user: &User,
        chunk: &[&(String, Vec<u8>, bool)],
        mask: &[&str],
    ) -> Vec<(String, Result<String>)> {
        // Written out as text into one buffer: the bodies are JSON already, no tree is built.
        let mut body = b"{\"contacts\":{".to_vec();
        for (n, (id, p, _)) in chunk.iter().enumerate() {
            if n > 0 {
                body.push(b',');
            }
            serde_json::to_writer(&mut body, id).expect("a string serialises into a vector");
            body.push(b':');
            body.extend_from_slice(p);
        }
        body.extend_from_slice(b"},\"updateMask\":");
        serde_json::to_writer(&mut body, &mask.join(",")).expect("a string serialises");
        body.extend_from_slice(b",\"readMask\":\"metadata\",\"sources\":[\"");
        body.extend_from_slice(CONTACT_SOURCES.as_bytes());
        body.extend_from_slice(b"\"]}");
        let body = bytes::Bytes::from(body);
        let email = self.email(user);
        let what = |id: &str| format!("contact {id} of {}", user.name);
        match self
            .client
            .send(&Call {
                raw_body: Some(&body),
                ..Self::people_call(
                    &email,
                    "people.batchUpdateContacts",
                    Method::POST,
                    self.people("people:batchUpdateContacts"),
                    vec![],
                    true,
                )
            })
            .await
        {
            Ok(v) => {
                let mut repairs = crate::mutex::lock(&self.repairs);
                chunk
                    .iter()
                    .map(|(id, _, _)| {
                        repairs.remove(&(user.id.clone(), id.clone()));
                        let etag = v
                            .get("updateResult")
                            .and_then(|r| r.get(id.as_str()))
                            .and_then(|r| r.get("person"))
                            .and_then(|p| p.get("etag"))
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string();
                        (id.clone(), Ok(etag))
                    })
                    .collect()
            }
            Err(e) => match contact_errors(&e) {
                // The others were updated; their new etags are unknown (the next run compares
                // content instead).
                Some(errors) => chunk
                    .iter()
                    .map(|(id, _, _)| {
                        let r = match errors.get(id.as_str()) {
                            Some(s) => Err(status_error(s, &what(id))),
                            None => Ok(String::new()),
                        };
                        (id.clone(), r)
                    })
                    .collect(),
                None => {
                    // Refused as a whole: the first contact carries the error, the rest were
                    // not tried.
                    let msg = e.to_string();
                    let what = format!("updating contacts of {}", user.name);
                    let mut out = vec![];
                    for (i, (id, _, _)) in chunk.iter().enumerate() {
                        let err = if i == 0 {
                            api(e.clone(), &what)
                        } else {
                            BackendError::Transient(format!(
                                "not updated: the batch failed ({msg})"
                            ))
                        };
                        out.push((id.clone(), Err(err)));
                    }
                    out
                }
            },
        }
    }
}

/// Per-item errors of a failed batch call (`BatchCreateContactsErrorDetails` /
/// `BatchUpdateContactsErrorDetails`): key (index or resourceName) → Status.
fn contact_errors(e: &ApiError) -> Option<HashMap<String, Value>> {
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

fn status_error(status: &Value, what: &str) -> BackendError {
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

/// The two ways Google reads a group (`Backend::read_group`).
impl GoogleBackend {
    /// The group's contacts read whole, those `known` as written handed by id and etag, with a
    /// sync token valid from the read's start (a listing always asks for one).
    async fn read_whole_group(
        &self,
        user: &User,
        group: Option<&GroupRef>,
        known: &KnownAsWritten<'_>,
        sink: &mut (dyn FnMut(Read) + Send),
    ) -> Result<Option<String>> {
        self.forget_repairs(user);
        let fields = read_fields();
        let mut bad = None;
        let token = self
            .list_connections_synced(user, &fields, None, true, None, &mut |head, whole| {
                if let Some(g) = group
                    && head.member_of(&g.id)
                {
                    // A copy as the engine wrote it: no need to read it whole.
                    if known(&head.resource_name, &head.etag) {
                        sink(Read::Known {
                            id: head.resource_name.into_owned(),
                            etag: head.etag.into_owned(),
                        });
                        return Then::Next;
                    }
                    if let Err(why) =
                        self.read_whole(user, &head, whole, &mut |c| sink(Read::Contact(c)))
                    {
                        bad = Some(why);
                        return Then::Stop;
                    }
                }
                Then::Next
            })
            .await
            .map_err(|e| api(e, &format!("contacts of {}", user.name)))?;
        if let Some(why) = bad {
            return Err(BackendError::Invalid(format!(
                "contacts of {}: unreadable contact {why}",
                user.name
            )));
        }
        Ok(token)
    }

    /// The group's contacts read for their tags only (clientData), a few dozen bytes each
    /// instead of the whole contact.
    async fn read_tags(
        &self,
        user: &User,
        group: &GroupRef,
        sink: &mut (dyn FnMut(Read) + Send),
    ) -> Result<()> {
        let mut bad = None;
        self.list_connections_synced(
            user,
            "clientData,memberships,metadata",
            None,
            false,
            None,
            &mut |head, whole| {
                if !head.member_of(&group.id) {
                    return Then::Next;
                }
                let p = whole
                    .raw()
                    .and_then(|raw| person::Doc::parse(raw.get()).ok());
                match p {
                    Some(p) => {
                        sink(Read::Contact(Contact {
                            id: head.resource_name.into_owned(),
                            etag: head.etag.into_owned(),
                            card: Ok(person::doc_to_card(&p, &p.tag_info(), None)),
                        }));
                        Then::Next
                    }
                    None => {
                        bad = Some(head.resource_name.into_owned());
                        Then::Stop
                    }
                }
            },
        )
        .await
        .map_err(|e| api(e, &format!("contacts of {}", user.name)))?;
        match bad {
            Some(id) => Err(BackendError::Invalid(format!(
                "contacts of {}: unreadable contact {id}",
                user.name
            ))),
            None => Ok(()),
        }
    }
}

impl Backend for GoogleBackend {
    fn kind(&self) -> &'static str {
        "google"
    }

    /// Batches of 200 (500 for deletes), sync tokens, pages of 1,000; no group versions; what
    /// photo a copy has now is known only from reading it (its gSyncPhoto clientData).
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            group_versions: false,
            change_tokens: true,
            page_size: 1000,
            batch_size: 200,
            delete_batch_size: 500,
            read_before_update: &[person::PHOTO_PROPERTY],
            conditional_deletes: false,
        }
    }

    fn call_counts(&self) -> Option<CallCounts> {
        None
    }

    fn check_group_name(&self, _name: &str) -> std::result::Result<(), String> {
        Ok(())
    }

    async fn read_group(
        &self,
        user: &User,
        group: Option<&GroupRef>,
        how: GroupRead<'_>,
        sink: &mut (dyn FnMut(Read) + Send),
    ) -> Result<Option<String>> {
        match (how.depth, group) {
            (Depth::TagsOnly, Some(g)) => self.read_tags(user, g, sink).await.map(|_| None),
            _ => {
                let known = how.known.unwrap_or(&|_, _| false);
                let token = self.read_whole_group(user, group, known, sink).await?;
                Ok(token.filter(|_| how.token))
            }
        }
    }

    async fn prepare_users(&self, names: &[String]) {
        self.prefetch_users(names).await
    }

    /// Takes the user's People API token ahead of its first call (cached, then found there).
    async fn prepare_access(&self, user: &User) {
        let _ = self
            .client
            .tokens
            .token(&self.email(user), CONTACTS_SCOPE)
            .await;
    }

    async fn check_setup(&self) -> Vec<std::result::Result<String, String>> {
        let mut out = vec![];
        let scopes = DIRECTORY_SCOPES.join(" ");
        match self.client.tokens.token(&self.cfg.admin, &scopes).await {
            Ok(_) => out.push(Ok(format!(
                "service account may act as admin {} with the Directory scopes",
                self.cfg.admin
            ))),
            Err(e) => {
                out.push(Err(format!("admin {}: {e}", self.cfg.admin)));
                return out;
            }
        }
        match self.allowed_domains().await {
            Ok(d) if d.is_empty() => out.push(Err(
                "no verified domain: set allowed_domains, or verify the domains in the Admin console".into(),
            )),
            Ok(d) => out.push(Ok(format!("allowed domains: {}", d.join(", ")))),
            Err(e) => out.push(Err(format!(
                "listing the domains as {}: {e} (is {} a Workspace administrator?)",
                self.cfg.admin, self.cfg.admin
            ))),
        }
        out
    }

    async fn check_access(&self, user: &User) -> Result<()> {
        let email = self.email(user);
        self.client
            .tokens
            .token(&email, CONTACTS_SCOPE)
            .await
            .map(|_| ())
    }

    async fn expand_set(&self, set: &str) -> Result<Vec<String>> {
        self.expand(set).await
    }

    async fn resolve_user(&self, name: &str) -> Result<Option<User>> {
        match self.directory_user(name).await? {
            Some(d) => self.checked_user(name, d).await.map(Some),
            None => Ok(None),
        }
    }

    async fn find_group(&self, user: &User, name: &str) -> Result<Option<GroupRef>> {
        for g in self.list_groups(user).await? {
            let is_user_group =
                g.get("groupType").and_then(Value::as_str) != Some("SYSTEM_CONTACT_GROUP");
            if is_user_group && g.get("name").and_then(Value::as_str) == Some(name) {
                return Ok(Some(GroupRef {
                    id: g["resourceName"].as_str().unwrap_or("").to_string(),
                    name: name.to_string(),
                    version: None,
                }));
            }
        }
        Ok(None)
    }

    async fn create_group(&self, user: &User, name: &str) -> Result<GroupRef> {
        let body = json!({ "contactGroup": { "name": name }, "readGroupFields": "name,groupType,metadata" });
        let v = self
            .as_user(
                user,
                "people.contactGroups.create",
                Method::POST,
                self.people("contactGroups"),
                vec![],
                Some(&body),
                false,
            )
            .await
            .map_err(|e| api(e, &format!("contact group {name:?} of {}", user.name)))?;
        Ok(GroupRef {
            id: v["resourceName"].as_str().unwrap_or("").to_string(),
            name: name.to_string(),
            version: None,
        })
    }

    async fn delete_group(&self, user: &User, group: &GroupRef) -> Result<()> {
        let what = format!("contact group {:?} of {}", group.name, user.name);
        let v = self
            .as_user(
                user,
                "people.contactGroups.get",
                Method::GET,
                self.people(&group.id),
                vec![("groupFields", "memberCount".into())],
                None,
                true,
            )
            .await
            .map_err(|e| api(e, &what))?;
        if v.get("memberCount").and_then(Value::as_i64).unwrap_or(0) > 0 {
            return Err(BackendError::NotEmpty { what });
        }
        self.as_user(
            user,
            "people.contactGroups.delete",
            Method::DELETE,
            self.people(&group.id),
            vec![("deleteContacts", "false".into())],
            None,
            true,
        )
        .await
        .map_err(|e| api(e, &what))?;
        Ok(())
    }

    async fn read_changes(
        &self,
        user: &User,
        token: &str,
        group_id: &str,
        known: &dyn KnownCopies,
        sink: &mut (dyn FnMut(Contact) + Send),
        gone: &mut (dyn FnMut(String) + Send),
    ) -> Result<Delta> {
        self.forget_repairs(user);
        let fields = read_fields();
        let mut bad = None;
        // After the first change is handed over, the caller gets to act on it (it reads the
        // group alongside the rest): the listing yields once.
        let mut handed = false;
        let mut handed_over = move || {
            if std::mem::replace(&mut handed, true) {
                Then::Next
            } else {
                Then::Yield
            }
        };
        let r = self
            .list_connections_synced(
                user,
                &fields,
                Some(token),
                true,
                Some(&|| known.last_call()),
                &mut |head, whole| {
                    if whole.index() == 0 {
                        known.page(whole.page_len());
                    }
                    if head.deleted() {
                        if known.known(&head.resource_name, "") != Known::No {
                            gone(head.resource_name.into_owned());
                            return handed_over();
                        }
                        return Then::Next;
                    }
                    let k = known.known(&head.resource_name, &head.etag);
                    if !head.member_of(group_id) {
                        if k != Known::No {
                            gone(head.resource_name.into_owned());
                            return handed_over();
                        }
                        return Then::Next;
                    }
                    if k == Known::AsWritten {
                        return Then::Next;
                    }
                    match self.read_whole(user, &head, whole, sink) {
                        Ok(()) => handed_over(),
                        Err(why) => {
                            bad = Some(why);
                            Then::Stop
                        }
                    }
                },
            )
            .await;
        if let Some(why) = bad {
            return Err(BackendError::Invalid(format!(
                "changes in the contacts of {}: unreadable contact {why}",
                user.name
            )));
        }
        match r {
            Ok(Some(token)) => Ok(Delta::Read { token }),
            // The last page came without a token: read the group whole.
            Ok(None) => Ok(Delta::Expired),
            Err(e) if e.status == 410 || e.has_reason("EXPIRED_SYNC_TOKEN") => Ok(Delta::Expired),
            Err(e) => Err(api(e, &format!("changes in the contacts of {}", user.name))),
        }
    }

    async fn fetch_contacts(
        &self,
        user: &User,
        _group: &GroupRef,
        ids: &[String],
        sink: &mut (dyn FnMut(Contact) + Send),
    ) -> Result<()> {
        let email = self.email(user);
        let call_for = |chunk: &[String]| {
            let mut q: Vec<(&str, String)> = chunk
                .iter()
                .map(|id| ("resourceNames", id.clone()))
                .collect();
            q.push(("personFields", read_fields()));
            q.push(("sources", CONTACT_SOURCES.into()));
            Self::people_call(
                &email,
                "people.getBatchGet",
                Method::GET,
                self.people("people:batchGet"),
                q,
                true,
            )
        };
        let fail = |e| api(e, &format!("contacts of {}", user.name));
        let fetch = |chunk: &[String]| {
            let call = call_for(chunk);
            async move { self.client.send_text(&call).await }
        };
        let mut chunks = ids.chunks(200);
        let Some(first) = chunks.next() else {
            return Ok(());
        };
        let mut next = ask_ahead(fetch(first)).await;
        loop {
            let text = answer(&mut next).await.map_err(fail)?;
            // The next batch is asked for before this one is read, as the pages of a listing
            // are. Reads only: no two mutations for one user are ever in flight.
            let more = chunks.next();
            if let Some(c) = more {
                next = ask_ahead(fetch(c)).await;
            }
            // Parsed one person at a time: a tree of the whole answer (200 persons) would be
            // held at every destination being removed at once.
            let answer: person::BatchGetAnswer<'_> = serde_json::from_str(&text)
                .map_err(|_| fail(http::bad_body("people.getBatchGet")))?;
            for raw in answer.responses.into_iter().filter_map(|r| r.person) {
                let p = person::Doc::parse(raw.get())
                    .map_err(|_| fail(http::bad_body("people.getBatchGet")))?;
                if p.has("resourceName") {
                    sink(self.contact_of(user, &p));
                }
            }
            if more.is_none() {
                break;
            }
        }
        Ok(())
    }

    async fn create_contacts(
        &self,
        user: &User,
        group: &GroupRef,
        cards: &[&VCard],
    ) -> Vec<Result<Written>> {
        let mut out = Vec::with_capacity(cards.len());
        for chunk in cards.chunks(200) {
            let (mut done, err) = match self.create_chunk(user, group, chunk).await {
                Ok(done) => (done, None),
                Err((done, err)) => (done, Some(err)),
            };
            // Photos, one call each (the People API has no batch for them).
            for (w, card) in done.iter_mut().zip(chunk) {
                if let Some(url) = person::photo_of_card(card) {
                    self.give_photo(user, w, Some(&url)).await;
                }
            }
            out.extend(done.into_iter().map(Ok));
            if let Some(e) = err {
                out.push(Err(e));
                return out;
            }
        }
        out
    }

    async fn update_contacts(
        &self,
        user: &User,
        _group: &GroupRef,
        items: &[(&str, &str, &VCard)],
        fields: &FieldSelection,
    ) -> Vec<Result<String>> {
        let mut managed = person::managed_fields(fields);
        let manages_ud = managed.contains(&"userDefined");
        // With photos, the copy's clientData says which source photo it has.
        let photos = person::manages_photos(fields);
        if photos {
            managed.push("clientData");
        }
        // Each contact's body (JSON text); `true` when it needs userDefined written although
        // the job does not manage it (its visible tag is put back, the user's other entries
        // kept).
        let mut bodies: Vec<(String, Vec<u8>, bool)> = Vec::with_capacity(items.len());
        {
            let repairs = crate::mutex::lock(&self.repairs);
            for (id, etag, card) in items {
                let mut p = person::field_entries(card, &managed);
                let mut extra = false;
                if self.cfg.visible_tag
                    && let Some((tag, _)) = person::tag_of_card(card)
                {
                    let ud = if manages_ud {
                        p.remove("userDefined")
                    } else {
                        repairs.get(&(user.id.clone(), id.to_string())).map(|r| {
                            r.user_defined
                                .iter()
                                .map(|e| e.to_string().into())
                                .collect()
                        })
                    };
                    if let Some(mut ud) = ud {
                        ud.push(person::key_value_json(person::TAG_KEY, &tag).into());
                        p.insert("userDefined", ud);
                        extra = !manages_ud;
                    }
                }
                if photos && let Some((tag, source)) = person::tag_of_card(card) {
                    let machine = format!("{tag}:{source}");
                    let entries = person::copy_client_data(card, &machine)
                        .map(|(key, value)| person::key_value_json(key, value).into())
                        .collect();
                    p.insert("clientData", entries);
                }
                let mut body = Vec::with_capacity(1024);
                person::write_update_json(&p, id, etag, &mut body);
                bodies.push((id.to_string(), body, extra));
            }
        }
        let mut results: HashMap<String, Result<String>> = HashMap::new();
        for extra in [false, true] {
            let mut mask = managed.clone();
            if extra {
                mask.push("userDefined");
            }
            let group: Vec<&(String, Vec<u8>, bool)> =
                bodies.iter().filter(|b| b.2 == extra).collect();
            for chunk in group.chunks(200) {
                let done = self.update_batch(user, chunk, &mask).await;
                let stop = done.iter().any(|(_, r)| r.is_err());
                results.extend(done);
                if stop {
                    break;
                }
            }
        }
        // Photos that changed, one call each, on the contacts updated.
        if photos {
            for (id, _, card) in items {
                let want = person::photo_of_card(card);
                let key = (user.id.clone(), id.to_string());
                let have = crate::mutex::lock(&self.photo_now).get(&key).cloned();
                if want != have
                    && let Some(Ok(etag)) = results.get_mut(*id)
                {
                    let mut w = Written {
                        id: id.to_string(),
                        etag: etag.clone(),
                    };
                    self.give_photo(user, &mut w, want.as_deref()).await;
                    *etag = w.etag;
                }
            }
        }
        // In input order, ending at the first failure.
        let mut out = Vec::with_capacity(items.len());
        for (id, _, _) in items {
            match results.remove(*id) {
                Some(r) => {
                    let failed = r.is_err();
                    out.push(r);
                    if failed {
                        break;
                    }
                }
                None => {
                    out.push(Err(BackendError::Transient(format!(
                        "contact {id} of {} was not updated (an earlier batch failed)",
                        user.name
                    ))));
                    break;
                }
            }
        }
        out
    }

    async fn delete_contacts(
        &self,
        user: &User,
        _group: &GroupRef,
        items: &[(&str, &str)],
    ) -> Vec<Result<()>> {
        let mut out = Vec::with_capacity(items.len());
        for chunk in items.chunks(500) {
            let names: Vec<&str> = chunk.iter().map(|(id, _)| *id).collect();
            let body = json!({ "resourceNames": names });
            match self
                .as_user(
                    user,
                    "people.batchDeleteContacts",
                    Method::POST,
                    self.people("people:batchDeleteContacts"),
                    vec![],
                    Some(&body),
                    true,
                )
                .await
            {
                Ok(_) => out.extend(chunk.iter().map(|_| Ok(()))),
                Err(e) => {
                    out.push(Err(api(e, &format!("deleting contacts of {}", user.name))));
                    return out;
                }
            }
        }
        out
    }

    /// Group memberships have no etag precondition: the etags are not checked (a membership
    /// change never alters the contact itself).
    async fn move_contacts_to_default(
        &self,
        user: &User,
        group: &GroupRef,
        items: &[(&str, &str)],
    ) -> Vec<Result<()>> {
        let ids: Vec<&str> = items.iter().map(|(id, _)| *id).collect();
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(1000) {
            // Into My Contacts first, so no contact is ever left without a group.
            let r = match self.modify_members(user, MY_CONTACTS, chunk, &[]).await {
                Ok(_) => self.modify_members(user, &group.id, &[], chunk).await,
                Err(e) => Err(e),
            };
            match r {
                Ok(_) => out.extend(chunk.iter().map(|_| Ok(()))),
                Err(e) => {
                    out.push(Err(api(
                        e,
                        &format!("moving contacts of {} to My Contacts", user.name),
                    )));
                    return out;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::{key_at_end, next_page_token_at_end};
    use serde_json::json;

    /// A page as Google writes it: the contacts, then the page token, the counts and the sync
    /// token.
    fn page(values: &[String], page_token: Option<&str>, sync_token: Option<&str>) -> String {
        let people: Vec<serde_json::Value> = values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                json!({"resourceName": format!("people/c{i}"), "etag": "e",
                    "userDefined": [{"key": v, "value": v}], "biographies": [{"value": v}]})
            })
            .collect();
        let mut text = format!(
            "{{\"connections\":{}",
            serde_json::to_string(&people).unwrap()
        );
        if let Some(t) = page_token {
            text.push_str(&format!(",\"nextPageToken\": {}", json!(t)));
        }
        text.push_str(",\"totalPeople\":7,\"totalItems\":7");
        if let Some(t) = sync_token {
            text.push_str(&format!(",\"nextSyncToken\":{}", json!(t)));
        }
        text.push('}');
        text
    }

    proptest::proptest! {
        /// The token found at a page's end is the page's own, whatever its contacts hold (the
        /// keys' own names, quotes, a colon), and found whenever Google's layout puts it there;
        /// so is the sync token.
        #[test]
        fn the_page_token_found_at_the_end_is_the_pages(
            values in proptest::collection::vec(
                "nextPageToken|\"nextPageToken\": \"x\"|\"nextSyncToken\":\"y\"|\\PC{0,12}", 0..40),
            page_token in proptest::option::of("[a-zA-Z0-9:_\"\\\\-]{1,40}"),
            sync_token in proptest::option::of("[a-zA-Z0-9]{1,200}"),
        ) {
            let text = page(&values, page_token.as_deref(), sync_token.as_deref());
            let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
            proptest::prop_assert_eq!(parsed["nextPageToken"].as_str(), page_token.as_deref());
            proptest::prop_assert_eq!(next_page_token_at_end(&text), page_token);
            // The last page of a sync listing is known by its sync token, before it is parsed.
            proptest::prop_assert_eq!(
                key_at_end(&text, "nextSyncToken").is_some(),
                parsed["nextSyncToken"].is_string()
            );
        }
    }

    /// A page whose token is not near its end (another layout) gives no guess: the page is
    /// parsed first.
    #[test]
    fn a_page_token_before_the_contacts_is_not_guessed() {
        let filler = "x".repeat(5000);
        let text = format!(
            "{{\"nextPageToken\":\"p2\",\"connections\":[{{\"resourceName\":\"people/c1\",\"biographies\":[{{\"value\":\"{filler}\"}}]}}]}}"
        );
        assert_eq!(next_page_token_at_end(&text), None);
    }
}
