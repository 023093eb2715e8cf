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
mod calls;
mod directory;
pub mod fields;
mod groups;
pub mod http;
pub mod person;
mod photo;
mod read;
mod write;

use calcard::vcard::VCard;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use super::counting::CallCounts;
use super::{Backend, Capabilities, Contact, GroupRef, Result, User, Written};
use crate::card::FieldSelection;
pub use crate::config::GoogleConfig;
use auth::{CONTACTS_SCOPE, DIRECTORY_SCOPES, ServiceAccount, TokenSource};
use http::Client;

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
}

impl Backend for GoogleBackend {
    delegate_to_rooms!();

    delegate_read_changes!();

    fn kind(&self) -> &'static str {
        "google"
    }

    fn cannot_hold(&self, _card: &VCard) -> Vec<String> {
        Vec::new()
    }

    /// Batches of 200 (500 for deletes), sync tokens, pages of 1,000; no group versions; what
    /// photo a copy has now is known only from reading it (its gSyncPhoto clientData); a contact
    /// group deleted shows in the sync token's delta as its members leaving it.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            group_versions: false,
            change_tokens: true,
            page_size: 1000,
            batch_size: 200,
            delete_batch_size: 500,
            read_before_update: &[person::PHOTO_PROPERTY],
            conditional_deletes: false,
            group_loss_in_delta: true,
        }
    }

    fn call_counts(&self) -> Option<CallCounts> {
        None
    }

    fn check_group_name(&self, _name: &str) -> std::result::Result<(), String> {
        Ok(())
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
        _group: &GroupRef,
        items: &[(&str, &str, &VCard)],
        fields: &FieldSelection,
    ) -> Vec<Result<String>> {
        self.update_all(user, items, fields).await
    }

    async fn delete_contacts(
        &self,
        user: &User,
        _group: &GroupRef,
        items: &[(&str, &str)],
    ) -> Vec<Result<()>> {
        self.delete_all(user, items).await
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
