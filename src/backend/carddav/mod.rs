//! The CardDAV backend (RFC 6352 over WebDAV, RFC 4918): a user is an address-book home
//! (`home`, default `/{user}/`, must exist on the server), a contact group is an address book in
//! it whose display name is the group name, and a contact is a vCard resource. One account
//! (`username` + `password_file`) must be allowed to read and write every user's address books.
//!
//! Discovery with PROPFIND, creation with extended MKCOL, reads with PROPFIND (etags) plus
//! addressbook-multiget, writes with PUT `If-None-Match: *` / `If-Match` and DELETE `If-Match`
//! (412 → `Conflict`: the engine reads again and re-plans). 5xx, 429 and connection errors are
//! retried with backoff, honouring Retry-After. This module must not decide what to write.

mod groups;
mod http;
mod read;
mod write;
pub mod xml;

use groups::Book;

use calcard::vcard::VCard;
use std::time::Duration;

use super::{Backend, BackendError, Capabilities, Contact, GroupRef, Result, User, Written};
use crate::card::FieldSelection;

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
}

impl Backend for CarddavBackend {
    fn kind(&self) -> &'static str {
        "carddav"
    }

    fn cannot_hold(&self, _card: &VCard) -> Vec<String> {
        Vec::new()
    }

    /// A book's collection etag (getctag) changes with every change in it.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            group_versions: true,
            ..Capabilities::PLAIN
        }
    }

    fn check_group_name(&self, _name: &str) -> std::result::Result<(), String> {
        Ok(())
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

    no_directory!();

    no_change_tokens!();

    delegate_to_rooms!();

    one_by_one_writes!();
}
