//! The backend trait: the only way the engine reaches contacts. A backend knows how one provider
//! (an in-memory store, a vdir tree, a CardDAV server, Google Workspace) stores users, contact
//! groups and contacts; it knows nothing of jobs, plans, tags or the state database. What a
//! provider can do is one `Capabilities` value; every provider folder has the same rooms (see
//! `shape`), and passes the same contract tests (`tests/common/contract.rs`).
//!
//! Every write is conditional on the etag the engine saw when it read the contact, so a contact
//! that changed under the engine is never overwritten blindly (`BackendError::Conflict`).

#[macro_use]
mod shape;

pub mod carddav;
pub mod counting;
pub mod google;
pub mod graph;
pub mod memory;
pub mod vdir;

use calcard::vcard::VCard;
use std::future::Future;

use crate::card::FieldSelection;

/// A user as the provider knows them: `id` is the provider's immutable id (the ledger's key),
/// `name` is what the job file says (an address, a login, a folder name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct User {
    pub id: String,
    pub name: String,
}

/// A contact group of one user.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupRef {
    pub id: String,
    pub name: String,
    /// The provider's version of the whole group (CardDAV getctag / collection etag), when it
    /// has one that changes with every change inside the group. Lets a rerun skip reading a
    /// group nobody touched.
    pub version: Option<String>,
}

/// One contact as read from a group. `card` is `Err` when the provider's payload cannot be read
/// as a contact; such a contact is never modified by the engine.
#[derive(Debug, Clone)]
pub struct Contact {
    pub id: String,
    pub etag: String,
    pub card: std::result::Result<VCard, String>,
}

/// A contact as stored by a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub id: String,
    pub etag: String,
}

/// What can go wrong in a backend. Callers branch on it: `Conflict` means re-read and re-plan,
/// retryable errors are tried again at the next run (or by the HTTP layer's own backoff).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{what} changed since it was read")]
    Conflict { what: String },
    #[error("{what} already exists")]
    AlreadyExists { what: String },
    #[error("{what} is not empty")]
    NotEmpty { what: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("temporary failure: {0}")]
    Transient(String),
    /// The user exists but must not be synced now (suspended, archived): a note, not a failure.
    #[error("{0}")]
    Skipped(String),
    /// The provider refused the credentials, or the account may not do this: a configuration
    /// error (the message names the key to fix), never worth retrying as it is.
    #[error("{0}")]
    Auth(String),
    /// The provider refused this one contact (a card it cannot store, one too large): the
    /// destination's other contacts are written all the same.
    #[error("{0}")]
    Refused(String),
}

impl BackendError {
    /// True when the same call may succeed later without anything else changing.
    pub fn is_retryable(&self) -> bool {
        match self {
            BackendError::Transient(_) | BackendError::Conflict { .. } => true,
            BackendError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::WouldBlock
            ),
            _ => false,
        }
    }

    /// True when the error concerns one contact only (its UID is taken, the provider refuses
    /// the card): the destination's other contacts are written, and this one is tried again at
    /// the next run.
    pub fn is_contact_level(&self) -> bool {
        matches!(
            self,
            BackendError::AlreadyExists { .. } | BackendError::Refused(_)
        )
    }

    pub(crate) fn io(path: impl std::fmt::Display, source: std::io::Error) -> Self {
        BackendError::Io {
            path: path.to_string(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, BackendError>;

/// How many contacts a group read hands over before it gives the runtime a turn (see
/// `Backend::read_group`).
pub const YIELD_EVERY: usize = 200;

/// How the engine knows a contact a change token's delta names (see `Backend::read_changes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// Not one of the copies the engine remembers at this destination.
    No,
    /// A remembered copy, with another etag than the one the engine wrote or last read.
    Changed,
    /// A remembered copy with exactly the etag the engine wrote or last read.
    AsWritten,
}

/// What the engine knows of the contacts a change token's delta names, asked by
/// `Backend::read_changes` contact by contact.
pub trait KnownCopies: Send + Sync {
    /// A hint before a run of `n` contacts is asked about (a page of the delta): the engine
    /// looks a few up one at a time, and loads its whole ledger for many.
    fn page(&self, n: usize) {
        let _ = n;
    }

    /// Whether the contact `id` with `etag` (empty for a deleted contact) is a copy the engine
    /// remembers, and whether it has the etag the engine wrote or last read.
    fn known(&self, id: &str, etag: &str) -> Known;

    /// Told once the read has made its last call to the provider (what is left is reading the
    /// answer in hand): the engine lets another destination call meanwhile. A backend tells it
    /// only when sure; one that never does is correct, only slower.
    fn last_call(&self) {}
}

impl<F: Fn(&str, &str) -> Known + Send + Sync> KnownCopies for F {
    fn known(&self, id: &str, etag: &str) -> Known {
        self(id, etag)
    }
}

/// What `Backend::read_changes` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delta {
    /// The changes were read; this new token is valid from the moment the read began.
    Read { token: String },
    /// The provider no longer honours the token: the group must be read whole.
    Expired,
}

/// What a provider can do, in one value: the engine asks for it instead of probing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// `GroupRef::version` changes with every change in a group (CardDAV getctag): a group
    /// whose version did not change since a destination converged is not read again.
    pub group_versions: bool,
    /// The provider hands out change tokens (Google sync tokens): `read_group` takes one, and
    /// `read_changes` reads only what changed since.
    pub change_tokens: bool,
    /// How many contacts one call of a group read answers (Google: 1,000 a page); the engine
    /// compares it with `batch_size` to choose between reading a few contacts by id and reading
    /// the group whole.
    pub page_size: usize,
    /// How many contacts one batch call takes (1: no batch endpoint); the engine hands the
    /// batch methods at most this many at a time.
    pub batch_size: usize,
    /// How many contacts one batch delete takes (Google: 500, more than its other batches).
    pub delete_batch_size: usize,
    /// Card properties whose state on a copy only a read tells (Google: the photo): a copy
    /// carrying one is read before it is updated; others may be updated from what the engine
    /// remembers (see `read_changes`).
    pub read_before_update: &'static [&'static str],
    /// Deletes and moves are conditional on the etag given (Google's batch delete and group
    /// memberships take none: the engine reads what it deletes just before, for the trash, and
    /// refuses a contact changed since).
    pub conditional_deletes: bool,
    /// A group deleted shows in its change token's delta as every member leaving it (Google:
    /// deleting a contact group takes the membership off each member, which changes them). A
    /// delta that names no remembered copy as gone then vouches for the group: the engine uses
    /// the group id remembered with the token instead of looking the group up.
    pub group_loss_in_delta: bool,
}

impl Capabilities {
    /// A provider without batch endpoints, change tokens or group versions.
    pub const PLAIN: Capabilities = Capabilities {
        group_versions: false,
        change_tokens: false,
        page_size: 1000,
        batch_size: 1,
        delete_batch_size: 1,
        read_before_update: &[],
        conditional_deletes: true,
        group_loss_in_delta: false,
    };
}

/// How much of a group to read (see `Backend::read_group`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Each contact whole.
    Whole,
    /// Each contact only as far as telling this job's copies from the rest needs (the tag
    /// properties `card::tag_of` and `card::source_of` read); a provider that cannot read less
    /// hands contacts whole.
    TagsOnly,
}

/// Tells the contacts the engine knows exactly as it wrote them, by id and etag.
pub type KnownAsWritten<'a> = dyn Fn(&str, &str) -> bool + Send + Sync + 'a;

/// What a group read is asked for (see `Backend::read_group`).
#[derive(Clone, Copy)]
pub struct GroupRead<'a> {
    pub depth: Depth,
    /// Take a change token valid from the moment the read began (with `change_tokens`).
    pub token: bool,
    /// Contacts the engine knows exactly as it wrote them (`known(id, etag)`): a provider that
    /// sees etags before it reads contacts whole hands them as `Read::Known`, not read.
    pub known: Option<&'a KnownAsWritten<'a>>,
}

impl GroupRead<'_> {
    /// Every contact whole, no token.
    pub const WHOLE: GroupRead<'static> = GroupRead {
        depth: Depth::Whole,
        token: false,
        known: None,
    };
    /// Every contact for its tags only, no token.
    pub const TAGS: GroupRead<'static> = GroupRead {
        depth: Depth::TagsOnly,
        token: false,
        known: None,
    };
}

/// One contact a group read hands over.
#[derive(Debug)]
pub enum Read {
    /// Read (whole, or for its tags: see `Depth`).
    Contact(Contact),
    /// Known to the engine as written (see `GroupRead::known`): its id and etag, not read.
    Known { id: String, etag: String },
}

/// A contacts provider. Methods are async so HTTP backends fit; implementations must be safe to
/// call for different users at once, and the engine never calls two writes for one user at once.
/// The trait has no default methods: a wrapper (`counting::Counting`) forwards every one, so it
/// cannot fall out of step with it. Single-contact helpers are in `BackendExt`; a provider
/// without batch endpoints writes its batches with `one_by_one`.
pub trait Backend: Send + Sync {
    /// Short name of the provider kind ("vdir", "memory", …) for logs and reports.
    fn kind(&self) -> &'static str;

    /// What the provider can do.
    fn capabilities(&self) -> Capabilities;

    /// Calls made so far, by method, when the backend counts them (see `counting::Counting`).
    fn call_counts(&self) -> Option<counting::CallCounts>;

    /// Looks a user up by the name used in job files. `Ok(None)` means no such user.
    fn resolve_user(&self, name: &str) -> impl Future<Output = Result<Option<User>>> + Send;

    /// Called once per run with every user name the run may look up, before any `resolve_user`:
    /// a provider with a directory listing (Google's users.list) reads them in a few pages
    /// instead of one call each. Errors are not fatal: lookups then go one by one.
    fn prepare_users(&self, names: &[String]) -> impl Future<Output = ()> + Send;

    /// Called for a user about to be read or written (a destination about to be processed, the
    /// source while the destinations are looked up) while other calls are in flight, so the
    /// provider can get ready for the user's calls off the critical path (Google: the user's
    /// access token). Errors are left for the user's own calls to meet.
    fn prepare_access(&self, user: &User) -> impl Future<Output = ()> + Send;

    /// Expands a dynamic destination set (`group:sales@example.com`, `ou:/Sales`,
    /// `domain:example.com`) to user names, read from the provider's directory now. An error is
    /// never an empty set; a provider without a directory says so (`no_directory`).
    fn expand_set(&self, set: &str) -> impl Future<Output = Result<Vec<String>>> + Send;

    /// Checks the provider set-up itself for `groupsync check` (credentials, administrator
    /// rights, domains): one line per finding, `Ok` for what works, `Err` for what does not,
    /// saying how to fix it.
    fn check_setup(&self) -> impl Future<Output = Vec<std::result::Result<String, String>>> + Send;

    /// Checks that groupsync may act on `user`'s contacts (Google: a delegated token with the
    /// contacts scope), for `groupsync check`.
    fn check_access(&self, user: &User) -> impl Future<Output = Result<()>> + Send;

    /// Checks that a group name can be made at this provider (vdir: one plain folder name), so
    /// a job naming one that cannot is refused before anything is written.
    fn check_group_name(&self, name: &str) -> std::result::Result<(), String>;

    /// What of `card` a contact at this provider cannot hold, one line per property ("EMAIL: 3
    /// of 4 kept"), so `plan` and the run report name it instead of dropping it silently.
    /// Empty where the provider keeps the card whole (every provider keeps its own cards whole).
    fn cannot_hold(&self, card: &VCard) -> Vec<String>;

    /// Finds a user's contact group by its display name. `known` is the id the state remembers
    /// for it, if any: a provider whose groups can be renamed (Graph's folders) finds the group
    /// by that id first, so a group a user renamed is not made a second time; others may
    /// ignore it.
    fn find_group(
        &self,
        user: &User,
        name: &str,
        known: Option<&str>,
    ) -> impl Future<Output = Result<Option<GroupRef>>> + Send;

    /// Creates a contact group. If one of that name exists: `AlreadyExists`, or that group
    /// (a provider that finds the group a lost answer hid); never a second group of that name.
    fn create_group(
        &self,
        user: &User,
        name: &str,
    ) -> impl Future<Output = Result<GroupRef>> + Send;

    /// Deletes an empty contact group; `NotEmpty` if it still holds contacts (nothing is lost).
    fn delete_group(
        &self,
        user: &User,
        group: &GroupRef,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Reads the contacts of a group, handing each to `sink` as it is read (so a caller can keep
    /// a summary instead of the whole group in memory), as `how` asks: whole or for the tags,
    /// known copies handed by id and etag without being read where the provider can. Returns a
    /// change token valid from the moment the read began when `how.token` asks for one and the
    /// provider has them (`None` otherwise). With `group` = `None` (the group does not exist
    /// yet) no contact is handed over; only the token is taken. A provider that reads without
    /// awaiting (files), or hands over a large page, yields to the runtime every `YIELD_EVERY`
    /// contacts: a caller acts on what it was handed between its polls (a removal writes its
    /// trash as the read goes).
    fn read_group(
        &self,
        user: &User,
        group: Option<&GroupRef>,
        how: GroupRead<'_>,
        sink: &mut (dyn FnMut(Read) + Send),
    ) -> impl Future<Output = Result<Option<String>>> + Send;

    /// Reads the named contacts of a group (for the trash, before a delete; a few copies by id),
    /// handing each to `sink` as it is read. Missing ids are left out.
    fn fetch_contacts(
        &self,
        user: &User,
        group: &GroupRef,
        ids: &[String],
        sink: &mut (dyn FnMut(Contact) + Send),
    ) -> impl Future<Output = Result<()>> + Send;

    /// Reads what changed in a user's contacts since `token` (taken by `read_group` or an
    /// earlier `read_changes`), so a destination can be brought in line without reading its
    /// group whole. `known` says whether a contact is a copy the engine remembers and whether it
    /// has the etag the engine wrote or last read (pass an empty etag for a deleted contact),
    /// and hears how many contacts each page of the delta holds before they are asked about
    /// (`KnownCopies::page`). A changed contact now in the group `group_id` is handed to `sink`
    /// whole, unless it is `Known::AsWritten` (the engine's own write). A remembered copy (any
    /// `Known` but `No`) deleted since, or no longer in the group, is handed to `gone`. Every
    /// other change is left out. A provider without change tokens answers `Delta::Expired`.
    /// The caller may start work of its own on the first change handed over (the engine reads
    /// the group alongside the rest): a provider that reads the delta in pages yields to the
    /// runtime once after handing it over. A provider that can tell its last call before it
    /// reads that answer says so (`KnownCopies::last_call`), and yields once: the engine gives
    /// the destination's place to another meanwhile.
    fn read_changes(
        &self,
        user: &User,
        token: &str,
        group_id: &str,
        known: &dyn KnownCopies,
        sink: &mut (dyn FnMut(Contact) + Send),
        gone: &mut (dyn FnMut(String) + Send),
    ) -> impl Future<Output = Result<Delta>> + Send;

    /// Creates contacts in one group; returns what was stored of each, in order: its id and
    /// etag. A provider may store a card differently from how it was sent (reorder, normalise);
    /// the etag is of what it stored, so the engine can tell "as we wrote it" from "edited
    /// since". The results end early after a failure that is not one contact's
    /// (`BackendError::is_contact_level`); every `Ok` is a contact that exists.
    fn create_contacts(
        &self,
        user: &User,
        group: &GroupRef,
        cards: &[&VCard],
    ) -> impl Future<Output = Vec<Result<Written>>> + Send;

    /// Replaces the managed part of contacts (`(id, etag, desired card)`, see
    /// `card::merge_copy`), each only if its etag is still the one given; returns the new etags,
    /// as `create_contacts` returns results.
    fn update_contacts(
        &self,
        user: &User,
        group: &GroupRef,
        items: &[(&str, &str, &VCard)],
        fields: &FieldSelection,
    ) -> impl Future<Output = Vec<Result<String>>> + Send;

    /// Deletes contacts (`(id, etag)`), each only if its etag is unchanged.
    fn delete_contacts(
        &self,
        user: &User,
        group: &GroupRef,
        items: &[(&str, &str)],
    ) -> impl Future<Output = Vec<Result<()>>> + Send;

    /// Moves contacts (`(id, etag)`) out of `group` into the user's default collection ("My
    /// Contacts"), each if its etag is still the one given where the provider can tell
    /// (`Conflict` otherwise). A move cut short and made again never leaves the contact twice.
    fn move_contacts_to_default(
        &self,
        user: &User,
        group: &GroupRef,
        items: &[(&str, &str)],
    ) -> impl Future<Output = Vec<Result<()>>> + Send;
}

/// Runs a provider's single-contact write for each item, in order, and stops at the first
/// failure that is not one contact's (its batch methods, for a provider without batch
/// endpoints).
pub async fn one_by_one<I, T, F>(items: I, mut each: impl FnMut(I::Item) -> F) -> Vec<Result<T>>
where
    I: IntoIterator,
    F: Future<Output = Result<T>>,
{
    let mut out = vec![];
    for item in items {
        let r = each(item).await;
        let stop = r.as_ref().is_err_and(|e| !e.is_contact_level());
        out.push(r);
        if stop {
            break;
        }
    }
    out
}

/// An error and its causes on one line, outermost first, each said once: "error sending request:
/// client error (Connect): tcp connect error: Connection refused (os error 111)". reqwest's own
/// message names neither the refused connection, nor DNS, TLS or a timeout; its causes do.
pub fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// What `expand_set` answers at a provider without a directory of users.
pub fn no_directory(kind: &str, set: &str) -> BackendError {
    BackendError::Invalid(format!(
        "dynamic destination {set:?}: the {kind} backend has no directory of users (dynamic sets need kind = \"google\" or \"graph\"; Microsoft 365 has group: and domain:)"
    ))
}

/// Single-contact helpers over a provider's batch methods, and a plain read of a group.
pub trait BackendExt: Backend {
    /// Reads a group whole, handing each contact to `sink`.
    fn scan_group(
        &self,
        user: &User,
        group: &GroupRef,
        sink: &mut (dyn FnMut(Contact) + Send),
    ) -> impl Future<Output = Result<()>> + Send {
        async move {
            let mut each = |r| {
                if let Read::Contact(c) = r {
                    sink(c)
                }
            };
            self.read_group(user, Some(group), GroupRead::WHOLE, &mut each)
                .await
                .map(|_| ())
        }
    }

    /// Creates one contact.
    fn create_contact(
        &self,
        user: &User,
        group: &GroupRef,
        card: &VCard,
    ) -> impl Future<Output = Result<Written>> + Send {
        async move { only(self.create_contacts(user, group, &[card]).await) }
    }

    /// Updates one contact (see `update_contacts`).
    fn update_contact(
        &self,
        user: &User,
        group: &GroupRef,
        (id, etag): (&str, &str),
        card: &VCard,
        fields: &FieldSelection,
    ) -> impl Future<Output = Result<String>> + Send {
        async move {
            only(
                self.update_contacts(user, group, &[(id, etag, card)], fields)
                    .await,
            )
        }
    }

    /// Deletes one contact (see `delete_contacts`).
    fn delete_contact(
        &self,
        user: &User,
        group: &GroupRef,
        id: &str,
        etag: &str,
    ) -> impl Future<Output = Result<()>> + Send {
        async move { only(self.delete_contacts(user, group, &[(id, etag)]).await) }
    }
}

impl<B: Backend> BackendExt for B {}

/// The one result of a batch of one.
fn only<T>(mut results: Vec<Result<T>>) -> Result<T> {
    results
        .pop()
        .unwrap_or_else(|| Err(BackendError::Invalid("the provider gave no result".into())))
}
