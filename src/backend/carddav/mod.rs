//! The CardDAV backend (RFC 6352 over WebDAV, RFC 4918): a user is an address-book home
//! (`home`, default `/{user}/`, must exist on the server), a contact group is an address book in
//! it whose display name is the group name, and a contact is a vCard resource. One account
//! (`username` + `password_file`) must be allowed to read and write every user's address books.
//!
//! Discovery with PROPFIND, creation with extended MKCOL, reads with PROPFIND (etags) plus
//! addressbook-multiget, writes with PUT `If-None-Match: *` / `If-Match` and DELETE `If-Match`
//! (412 → `Conflict`: the engine reads again and re-plans). 5xx, 429 and connection errors are
//! retried with backoff, honouring Retry-After. This module must not decide what to write.

pub mod xml;

use backon::{ExponentialBuilder, Retryable};
use calcard::vcard::VCard;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use std::time::Duration;

use super::counting::CallCounts;
use super::{
    Backend, BackendError, Capabilities, Contact, Delta, GroupRead, GroupRef, KnownCopies, Read,
    Result, User, Written, no_directory,
};
use crate::card::{self, FieldSelection};

/// Connection settings.
#[derive(Debug, Clone)]
pub struct CarddavConfig {
    /// Server base URL, e.g. `https://dav.example.com`.
    pub url: String,
    /// Path template of a user's address-book home; `{user}` is replaced.
    pub home: String,
    /// One account that may read and write every user's address books, if any.
    pub admin: Option<Credentials>,
    /// Per-user credentials (user → password), used for paths under that user's home.
    pub users: std::collections::BTreeMap<String, String>,
    /// Display name of the address book that receives a removed user's own contacts.
    pub default_collection: String,
}

/// A user name and password for HTTP Basic authentication.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <password>)", self.username)
    }
}

/// A CardDAV server.
pub struct CarddavBackend {
    cfg: CarddavConfig,
    http: reqwest::Client,
    base: String,
    /// Address books read by `resolve_user` (one PROPFIND serves both the user check and the
    /// next `find_group` for that user), taken by that `find_group` if under a minute old.
    listings: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, Vec<Book>)>>,
}

fn io_err(what: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::Transient(format!("{what}: {e}"))
}

/// A URL-safe path segment for a new collection or resource.
fn slug(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@') {
                c
            } else {
                '-'
            }
        })
        .take(100)
        .collect();
    if out.is_empty() || out.starts_with('.') {
        out.insert(0, 'x');
    }
    out
}

/// The path of an href that may be an absolute URL (`http://host:port/a/b/` → `/a/b/`).
fn href_path(href: &str) -> String {
    match href.split_once("://") {
        Some((_, rest)) => rest
            .find('/')
            .map(|i| rest[i..].to_string())
            .unwrap_or_else(|| "/".into()),
        None => href.to_string(),
    }
}

/// An address book as a listing shows it.
#[derive(Debug, Clone)]
struct Book {
    group: GroupRef,
    /// Its display name, if it has one: a group is found by it, never by its URL.
    displayname: Option<String>,
}

impl Book {
    fn of(r: xml::Response) -> Book {
        let displayname = r.displayname.clone().filter(|d| !d.is_empty());
        let id = if r.href.ends_with('/') {
            r.href.clone()
        } else {
            format!("{}/", r.href)
        };
        Book {
            group: GroupRef {
                name: displayname
                    .clone()
                    .unwrap_or_else(|| last_segment(&r.href).to_string()),
                id,
                version: r.etag,
            },
            displayname,
        }
    }
}

/// The last path segment of an href, without a trailing slash.
fn last_segment(href: &str) -> &str {
    href.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(href)
}

impl CarddavBackend {
    pub fn new(cfg: CarddavConfig) -> std::result::Result<Self, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("groupsync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        let base = cfg.url.trim_end_matches('/').to_string();
        Ok(CarddavBackend {
            cfg,
            http,
            base,
            listings: Default::default(),
        })
    }

    /// The credentials for a path: the user's own when the path is under a home listed in
    /// `credentials_file`, else the admin account's.
    fn credentials_for(&self, path: &str) -> Result<(&str, &str)> {
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

    fn home(&self, user: &str) -> String {
        let mut h = self.cfg.home.replace("{user}", user);
        if !h.starts_with('/') {
            h.insert(0, '/');
        }
        if !h.ends_with('/') {
            h.push('/');
        }
        h
    }

    /// Sends one request, retrying transient failures. Returns status, headers and body.
    async fn send(
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
            let resp = req
                .send()
                .await
                .map_err(|e| (None, io_err(&format!("{method} {url}"), e)))?;
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
            let text = resp
                .text()
                .await
                .map_err(|e| (None, io_err(&format!("{method} {url}"), e)))?;
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

    fn unexpected(what: &str, status: StatusCode, body: &str) -> BackendError {
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

    async fn propfind(
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

    /// Address books in a user's home, with their collection etag (the version of their content).
    async fn addressbooks(&self, user: &User) -> Result<Vec<Book>> {
        let home = self.home(&user.id);
        let list = self
            .propfind(&home, "1", xml::PROPFIND_COLLECTIONS)
            .await?
            .ok_or_else(|| BackendError::NotFound {
                what: format!("address-book home {home}"),
            })?;
        Ok(list
            .into_iter()
            .filter(|r| {
                r.is_addressbook && r.href.trim_end_matches('/') != home.trim_end_matches('/')
            })
            .map(Book::of)
            .collect())
    }

    async fn multiget(&self, group: &GroupRef, hrefs: &[String]) -> Result<Vec<Contact>> {
        let mut out = Vec::with_capacity(hrefs.len());
        for chunk in hrefs.chunks(200) {
            let (status, _, text) = self
                .send(
                    "REPORT",
                    &group.id,
                    &[
                        ("Depth", "1".into()),
                        ("Content-Type", "application/xml; charset=utf-8".into()),
                    ],
                    Some(xml::multiget(chunk)),
                )
                .await?;
            if status.as_u16() != 207 {
                return Err(Self::unexpected(
                    &format!("REPORT {}", group.id),
                    status,
                    &text,
                ));
            }
            for r in xml::parse_multistatus(&text)
                .map_err(|e| BackendError::Invalid(format!("REPORT {}: {e}", group.id)))?
            {
                let (Some(etag), Some(data)) = (r.etag, r.address_data) else {
                    continue;
                };
                out.push(Contact {
                    id: last_segment(&r.href).to_string(),
                    etag,
                    card: card::parse(&data),
                });
            }
        }
        Ok(out)
    }

    /// The address books of a user: those `resolve_user` just read, else read now.
    async fn listing(&self, user: &User) -> Result<Vec<Book>> {
        let cached = crate::mutex::lock(&self.listings).remove(&user.id);
        match cached {
            Some((at, books)) if at.elapsed() < Duration::from_secs(60) => Ok(books),
            _ => self.addressbooks(user).await,
        }
    }

    /// The book a removed user's own contacts go to (`default_collection`): the one with that
    /// display name, else the one at that path in the user's home (a server's main book often
    /// has a display name of its own).
    async fn find_default(&self, user: &User) -> Result<Option<GroupRef>> {
        let name = &self.cfg.default_collection;
        let books = self.addressbooks(user).await?;
        let at = books
            .iter()
            .position(|b| b.displayname.as_deref() == Some(name.as_str()))
            .or_else(|| books.iter().position(|b| last_segment(&b.group.id) == name));
        Ok(at.map(|i| books[i].group.clone()))
    }

    fn href(group: &GroupRef, id: &str) -> String {
        format!("{}{}", group.id, id)
    }

    async fn etag_of(&self, href: &str) -> Result<String> {
        let list = self
            .propfind(href, "0", xml::PROPFIND_ETAGS)
            .await?
            .ok_or_else(|| BackendError::NotFound {
                what: href.to_string(),
            })?;
        list.into_iter()
            .find_map(|r| r.etag)
            .ok_or_else(|| BackendError::Invalid(format!("{href}: the server gave no etag")))
    }

    async fn get(&self, group: &GroupRef, id: &str) -> Result<Option<Contact>> {
        Ok(self
            .multiget(group, &[Self::href(group, id)])
            .await?
            .into_iter()
            .next())
    }

    async fn put(
        &self,
        href: &str,
        card: &VCard,
        condition: (&str, String),
    ) -> Result<std::result::Result<String, StatusCode>> {
        let (status, headers, text) = self
            .send(
                "PUT",
                href,
                &[
                    ("Content-Type", "text/vcard; charset=utf-8".into()),
                    (condition.0, condition.1),
                ],
                Some(card::to_text(card)),
            )
            .await?;
        match status.as_u16() {
            200..=299 => match headers.get("etag").and_then(|v| v.to_str().ok()) {
                Some(e) => Ok(Ok(e.to_string())),
                None => Ok(Ok(self.etag_of(href).await?)),
            },
            409 | 412 => Ok(Err(status)),
            // The server will not store this card (malformed for it, too large, …): this one
            // contact, never the destination.
            400 | 413 | 415 | 422 => Err(BackendError::Refused(format!(
                "PUT {href}: the server refused the card (HTTP {status}): {}",
                text.chars().take(200).collect::<String>()
            ))),
            _ => Err(Self::unexpected(&format!("PUT {href}"), status, &text)),
        }
    }

    /// True when `group` holds this very card where `create_in` would have put it (a move made
    /// before, cut short before the original was deleted).
    async fn holds_same(&self, group: &GroupRef, card: &VCard) -> Result<bool> {
        let stem = slug(card.uid().unwrap_or("contact"));
        let hrefs: Vec<String> = (0..3)
            .map(|n| match n {
                0 => Self::href(group, &format!("{stem}.vcf")),
                n => Self::href(group, &format!("{stem}-{n}.vcf")),
            })
            .collect();
        let all = FieldSelection::All;
        let want = card::managed_digest(card, &all);
        Ok(self.multiget(group, &hrefs).await?.iter().any(|c| {
            c.card
                .as_ref()
                .is_ok_and(|c| c.uid() == card.uid() && card::managed_digest(c, &all) == want)
        }))
    }

    async fn create_in(&self, group: &GroupRef, card: &VCard) -> Result<Written> {
        let stem = slug(card.uid().unwrap_or("contact"));
        for n in 0..100 {
            let id = if n == 0 {
                format!("{stem}.vcf")
            } else {
                format!("{stem}-{n}.vcf")
            };
            let href = Self::href(group, &id);
            match self.put(&href, card, ("If-None-Match", "*".into())).await? {
                Ok(etag) => return Ok(Written { id, etag }),
                Err(StatusCode::PRECONDITION_FAILED) => {
                    // The name is taken. If it is this very card (a retried create that had
                    // succeeded), it is ours; otherwise try another name.
                    if let Some(existing) = self.get(group, &id).await?
                        && let Ok(c) = &existing.card
                        && card::tag_of(c).is_some()
                        && card::tag_of(c) == card::tag_of(card)
                        && card::source_of(c) == card::source_of(card)
                        && card::source_of(c).is_some()
                    {
                        return Ok(Written {
                            id,
                            etag: existing.etag,
                        });
                    }
                }
                // A card with the same UID under another name (RFC 6352 no-uid-conflict).
                Err(_) => {
                    return Err(BackendError::AlreadyExists {
                        what: format!(
                            "a contact with UID {} in {}",
                            card.uid().unwrap_or("?"),
                            group.id
                        ),
                    });
                }
            }
        }
        Err(BackendError::AlreadyExists {
            what: format!("{stem}.vcf in {}", group.id),
        })
    }
}

/// The single-contact writes the batch writes are made of (see `one_by_one_writes`).
impl CarddavBackend {
    async fn create_one(&self, _user: &User, group: &GroupRef, card: &VCard) -> Result<Written> {
        self.create_in(group, card).await
    }

    async fn update_one(
        &self,
        _user: &User,
        group: &GroupRef,
        id: &str,
        etag: &str,
        card: &VCard,
        fields: &FieldSelection,
    ) -> Result<String> {
        let existing = self
            .get(group, id)
            .await?
            .ok_or_else(|| BackendError::NotFound {
                what: Self::href(group, id),
            })?;
        if existing.etag != etag {
            return Err(BackendError::Conflict {
                what: Self::href(group, id),
            });
        }
        let existing = existing
            .card
            .map_err(|e| BackendError::Invalid(format!("{}: {e}", Self::href(group, id))))?;
        let merged = card::merge_copy(&existing, card, fields);
        match self
            .put(
                &Self::href(group, id),
                &merged,
                ("If-Match", etag.to_string()),
            )
            .await?
        {
            Ok(new_etag) => Ok(new_etag),
            Err(_) => Err(BackendError::Conflict {
                what: Self::href(group, id),
            }),
        }
    }

    async fn delete_one(&self, _user: &User, group: &GroupRef, id: &str, etag: &str) -> Result<()> {
        let href = Self::href(group, id);
        let (status, _, text) = self
            .send("DELETE", &href, &[("If-Match", etag.to_string())], None)
            .await?;
        match status.as_u16() {
            200..=299 | 404 => Ok(()),
            412 => Err(BackendError::Conflict { what: href }),
            _ => Err(Self::unexpected(&format!("DELETE {href}"), status, &text)),
        }
    }

    async fn move_one(&self, user: &User, group: &GroupRef, id: &str, etag: &str) -> Result<()> {
        let default = match self.find_default(user).await? {
            Some(g) => g,
            None => {
                self.create_group(user, &self.cfg.default_collection)
                    .await?
            }
        };
        if default.id == group.id {
            return Ok(());
        }
        let contact = self
            .get(group, id)
            .await?
            .ok_or_else(|| BackendError::NotFound {
                what: Self::href(group, id),
            })?;
        if contact.etag != etag {
            return Err(BackendError::Conflict {
                what: Self::href(group, id),
            });
        }
        let card = contact
            .card
            .map_err(|e| BackendError::Invalid(format!("{}: {e}", Self::href(group, id))))?;
        // Copy first, then delete: a failure in between leaves the contact in both books, and
        // the move made again finds its copy there.
        match self.create_in(&default, &card).await {
            Ok(_) => {}
            // Its UID is in the default book: this card, if a previous attempt got this far;
            // else another card of the user's, and this one stays where it is.
            Err(BackendError::AlreadyExists { what }) => {
                if !self.holds_same(&default, &card).await? {
                    return Err(BackendError::Refused(format!(
                        "{} cannot move to {:?}: {what} is another card there; it is left in {:?}",
                        Self::href(group, id),
                        default.name,
                        group.name
                    )));
                }
            }
            Err(e) => return Err(e),
        }
        self.delete_one(user, group, id, &contact.etag).await
    }
}

impl Backend for CarddavBackend {
    fn kind(&self) -> &'static str {
        "carddav"
    }

    /// A book's collection etag (getctag) changes with every change in it.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            group_versions: true,
            ..Capabilities::PLAIN
        }
    }

    fn call_counts(&self) -> Option<CallCounts> {
        None
    }

    async fn prepare_users(&self, _names: &[String]) {}

    async fn prepare_access(&self, _user: &User) {}

    async fn expand_set(&self, set: &str) -> Result<Vec<String>> {
        Err(no_directory(self.kind(), set))
    }

    async fn check_setup(&self) -> Vec<std::result::Result<String, String>> {
        vec![]
    }

    async fn check_access(&self, _user: &User) -> Result<()> {
        Ok(())
    }

    fn check_group_name(&self, _name: &str) -> std::result::Result<(), String> {
        Ok(())
    }

    async fn read_changes(
        &self,
        _user: &User,
        _token: &str,
        _group_id: &str,
        _known: &dyn KnownCopies,
        _sink: &mut (dyn FnMut(Contact) + Send),
        _gone: &mut (dyn FnMut(String) + Send),
    ) -> Result<Delta> {
        Ok(Delta::Expired)
    }

    async fn resolve_user(&self, name: &str) -> Result<Option<User>> {
        if name.is_empty() || name.contains('/') {
            return Ok(None);
        }
        let user = User {
            id: name.to_string(),
            name: name.to_string(),
        };
        match self.addressbooks(&user).await {
            Ok(books) => {
                crate::mutex::lock(&self.listings)
                    .insert(name.to_string(), (std::time::Instant::now(), books));
                Ok(Some(user))
            }
            Err(BackendError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A group is the address book whose display name is `name`: never one whose URL merely
    /// ends in it (a user's main book at `/bob/default/` is not a group "default").
    async fn find_group(&self, user: &User, name: &str) -> Result<Option<GroupRef>> {
        let books = self.listing(user).await?;
        Ok(books
            .into_iter()
            .find(|b| b.displayname.as_deref() == Some(name))
            .map(|b| b.group))
    }

    /// Made with the display name `name` at a free path: `<slug>/`, else `<slug>-1/`, … A path
    /// already taken by a book of that display name is the one a lost answer hid (the MKCOL was
    /// made, its answer never came, and the retry found the path taken): it is used, so a lost
    /// answer never leaves two books.
    async fn create_group(&self, user: &User, name: &str) -> Result<GroupRef> {
        let home = self.home(&user.id);
        let base = slug(name);
        for n in 0..20 {
            let seg = if n == 0 {
                base.clone()
            } else {
                format!("{base}-{n}")
            };
            let href = format!("{home}{seg}/");
            let (status, _, text) = self
                .send(
                    "MKCOL",
                    &href,
                    &[("Content-Type", "application/xml; charset=utf-8".into())],
                    Some(xml::mkcol_addressbook(name)),
                )
                .await?;
            match status.as_u16() {
                200..=299 => {
                    return Ok(GroupRef {
                        id: href,
                        name: name.to_string(),
                        version: None,
                    });
                }
                // The path is taken: by this very book (a retry after a lost answer), or by
                // another collection or a resource (then the next name is tried).
                405 => {
                    if let Some(list) = self.propfind(&href, "0", xml::PROPFIND_COLLECTIONS).await?
                        && let Some(r) = list
                            .into_iter()
                            .find(|r| r.href.trim_end_matches('/') == href.trim_end_matches('/'))
                        && r.is_addressbook
                    {
                        let book = Book::of(r);
                        if book.displayname.as_deref() == Some(name) {
                            return Ok(book.group);
                        }
                    }
                    continue;
                }
                _ => return Err(Self::unexpected(&format!("MKCOL {href}"), status, &text)),
            }
        }
        Err(BackendError::AlreadyExists {
            what: format!("address book {name:?} of {}", user.name),
        })
    }

    async fn delete_group(&self, user: &User, group: &GroupRef) -> Result<()> {
        let members = self.propfind(&group.id, "1", xml::PROPFIND_ETAGS).await?;
        let Some(members) = members else {
            return Ok(());
        };
        if members
            .iter()
            .any(|r| r.href.trim_end_matches('/') != group.id.trim_end_matches('/'))
        {
            return Err(BackendError::NotEmpty {
                what: format!("address book {:?} of {}", group.name, user.name),
            });
        }
        // Deleting a collection deletes what is in it: make the DELETE conditional on the
        // collection's etag just read empty, so a card added in between is never lost.
        let me = group.id.trim_end_matches('/');
        let etag = members
            .iter()
            .find(|r| r.href.trim_end_matches('/') == me)
            .and_then(|r| r.etag.clone());
        let headers: Vec<(&str, String)> = etag.into_iter().map(|e| ("If-Match", e)).collect();
        let (status, _, text) = self.send("DELETE", &group.id, &headers, None).await?;
        match status.as_u16() {
            200..=299 | 404 => Ok(()),
            412 => Err(BackendError::NotEmpty {
                what: format!(
                    "address book {:?} of {} (changed while being removed)",
                    group.name, user.name
                ),
            }),
            _ => Err(Self::unexpected(
                &format!("DELETE {}", group.id),
                status,
                &text,
            )),
        }
    }

    /// Lists the book's etags (PROPFIND), then reads the cards 200 at a time (multiget); whole
    /// cards either way. No change tokens (yet).
    async fn read_group(
        &self,
        _user: &User,
        group: Option<&GroupRef>,
        _how: GroupRead<'_>,
        sink: &mut (dyn FnMut(Read) + Send),
    ) -> Result<Option<String>> {
        let Some(group) = group else {
            return Ok(None);
        };
        let members = self
            .propfind(&group.id, "1", xml::PROPFIND_ETAGS)
            .await?
            .ok_or_else(|| BackendError::NotFound {
                what: group.id.clone(),
            })?;
        let hrefs: Vec<String> = members
            .into_iter()
            .filter(|r| {
                !r.is_collection && r.href.trim_end_matches('/') != group.id.trim_end_matches('/')
            })
            .map(|r| r.href)
            .collect();
        for chunk in hrefs.chunks(200) {
            for c in self.multiget(group, chunk).await? {
                sink(Read::Contact(c));
            }
        }
        Ok(None)
    }

    async fn fetch_contacts(
        &self,
        _user: &User,
        group: &GroupRef,
        ids: &[String],
        sink: &mut (dyn FnMut(Contact) + Send),
    ) -> Result<()> {
        let hrefs: Vec<String> = ids.iter().map(|id| Self::href(group, id)).collect();
        self.multiget(group, &hrefs)
            .await?
            .into_iter()
            .for_each(sink);
        Ok(())
    }

    one_by_one_writes!();
}
