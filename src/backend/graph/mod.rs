//! The Microsoft 365 backend: Exchange Online contact folders through Microsoft Graph v1.0,
//! with an app registration's client credentials (application permissions, no user signs in).
//!
//! - A user is an Entra ID user, keyed by its immutable object id (a UPN rename keeps the
//!   ledger); mailbox calls go to `/users/{id}`.
//! - A group is a top-level contact folder of the user's mailbox; the default collection is the
//!   mailbox's own Contacts folder (`/users/{id}/contacts`), named `Contacts`.
//! - A copy is tagged by a single-value extended property (see `contact`), and shown with an
//!   Outlook category when `visible_tag` is on.
//! - Reads list a folder 1,000 contacts a page with the tag expanded; reruns read the folder's
//!   contacts delta (the deltaLink is the change token) and fetch only what changed.
//! - Writes go in `$batch` envelopes of 20, each conditional on the contact's change key
//!   (`If-Match`); never more than four requests in flight per mailbox (Outlook's limit). A
//!   create whose answer was lost is never sent again before the folder is read by tag.
//!
//! This module must not decide what to write, and never logs a secret, a key or a token.

pub mod auth;
mod batch;
pub mod contact;
mod directory;
pub mod fields;
mod groups;
pub mod http;
mod photo;
mod read;
mod vcard;
mod write;

use calcard::vcard::VCard;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use super::counting::CallCounts;
use super::{Backend, Capabilities, Contact, GroupRef, Result, User, Written};
use crate::card::FieldSelection;
pub use crate::config::GraphConfig;
use http::Client;

/// The name of a mailbox's default contacts folder, where a removed destination's own contacts
/// go.
pub const DEFAULT_FOLDER: &str = "Contacts";
/// Contacts one write call takes (split into `$batch` envelopes of `http::BATCH_MAX`).
const WRITE_CHUNK: usize = 200;
/// The id groupsync uses for the default folder (its contacts are at `/users/{id}/contacts`).
pub const DEFAULT_FOLDER_ID: &str = "contacts";

/// Microsoft 365 through Microsoft Graph.
pub struct GraphBackend {
    cfg: GraphConfig,
    client: Client,
    /// The tenant's verified domains (or `allowed_domains`), read once.
    domains: tokio::sync::OnceCell<Vec<String>>,
    photos: photo::Photos,
    /// Users looked up ahead in batches (`prepare_users`), by lower-case name, each taken once.
    looked_up: Mutex<HashMap<String, std::result::Result<http::Answer, http::ApiError>>>,
}

impl GraphBackend {
    /// Opens the backend: reads the secret, or the certificate and its key (mode 0600).
    pub fn new(cfg: GraphConfig) -> std::result::Result<Self, String> {
        let proof = auth::Proof::load(&cfg.credential)?;
        Self::with_proof(cfg, proof)
    }

    /// Opens the backend with credentials already loaded.
    pub fn with_proof(cfg: GraphConfig, proof: auth::Proof) -> std::result::Result<Self, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(cfg.request_timeout))
            .user_agent(concat!("groupsync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        let tokens = auth::TokenSource::new(&cfg, proof, http.clone());
        let client = Client::new(http, tokens, &cfg.graph_url, cfg.requests_per_minute);
        Ok(GraphBackend {
            cfg,
            client,
            domains: Default::default(),
            photos: Default::default(),
            looked_up: Default::default(),
        })
    }

    pub fn config(&self) -> &GraphConfig {
        &self.cfg
    }

    /// Graph calls made so far, by operation (batch items under their own operation too, and
    /// `batch.items` in all), and tokens fetched.
    pub fn api_calls(&self) -> BTreeMap<&'static str, u64> {
        let mut m = self.client.op_counts();
        m.insert(
            "oauth2.token",
            self.client
                .tokens
                .fetched
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        m
    }
}

impl Backend for GraphBackend {
    delegate_to_rooms!(known_ids);

    delegate_read_changes!();

    fn kind(&self) -> &'static str {
        "graph"
    }

    fn cannot_hold(&self, card: &VCard) -> Vec<String> {
        vcard::cannot_hold(card)
    }

    /// Writes 200 at a time (sent as ten `$batch` envelopes of 20, so a write's photos go in
    /// few envelopes too), delta tokens, pages of 1,000, conditional deletes; no folder
    /// versions.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            group_versions: false,
            change_tokens: true,
            page_size: 1000,
            batch_size: WRITE_CHUNK,
            delete_batch_size: WRITE_CHUNK,
            read_before_update: &[contact::PHOTO_PROPERTY],
            conditional_deletes: true,
            group_loss_in_delta: false,
        }
    }

    fn call_counts(&self) -> Option<CallCounts> {
        None
    }

    fn check_group_name(&self, name: &str) -> std::result::Result<(), String> {
        if name.eq_ignore_ascii_case(DEFAULT_FOLDER) {
            return Err(format!(
                "{name:?} is every mailbox's default contacts folder: give the job a folder of its own"
            ));
        }
        Ok(())
    }

    async fn prepare_users(&self, names: &[String]) {
        self.look_up_all(names).await
    }

    /// The app's token ahead of the first call (one token serves every mailbox).
    async fn prepare_access(&self, _user: &User) {
        let _ = self.client.tokens.token().await;
    }

    async fn check_setup(&self) -> Vec<std::result::Result<String, String>> {
        self.setup_findings().await
    }

    async fn check_access(&self, user: &User) -> Result<()> {
        self.mailbox_reachable(user).await
    }

    async fn expand_set(&self, set: &str) -> Result<Vec<String>> {
        self.expand(set).await
    }

    async fn resolve_user(&self, name: &str) -> Result<Option<User>> {
        self.lookup_user(name).await
    }

    async fn create_contacts(
        &self,
        user: &User,
        group: &GroupRef,
        cards: &[&VCard],
    ) -> Vec<Result<Written>> {
        self.create_all(user, group, cards).await
    }

    async fn update_contacts(
        &self,
        user: &User,
        group: &GroupRef,
        items: &[(&str, &str, &VCard)],
        fields: &FieldSelection,
    ) -> Vec<Result<String>> {
        self.update_all(user, group, items, fields).await
    }

    async fn delete_contacts(
        &self,
        user: &User,
        group: &GroupRef,
        items: &[(&str, &str)],
    ) -> Vec<Result<()>> {
        self.delete_all(user, group, items).await
    }

    async fn move_contacts_to_default(
        &self,
        user: &User,
        group: &GroupRef,
        items: &[(&str, &str)],
    ) -> Vec<Result<()>> {
        self.move_all_to_default(user, group, items).await
    }
}

/// The path of a folder's contacts collection.
fn contacts_path(user: &User, folder: &str) -> String {
    if folder == DEFAULT_FOLDER_ID {
        format!("/users/{}/contacts", user.id)
    } else {
        format!("/users/{}/contactFolders/{folder}/contacts", user.id)
    }
}

/// Percent-encodes a query value (OData filters hold spaces, quotes and braces).
fn enc(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 8);
    for b in v.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b',' | b'$' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// An OData string literal: quotes doubled.
fn literal(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}
