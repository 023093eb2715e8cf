//! The backend trait: the only way the engine reaches contacts. A backend knows how one provider
//! (a vdir tree, an in-memory store, later Google People, CardDAV, Microsoft Graph) stores users,
//! contact groups and contacts; it knows nothing of jobs, plans, tags or the state database.
//!
//! Every write is conditional on the etag the engine saw when it read the contact, so a contact
//! that changed under the engine is never overwritten blindly (`BackendError::Conflict`).

pub mod carddav;
pub mod counting;
pub mod google;
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

/// A contacts provider. Methods are async so HTTP backends fit; implementations must be safe to
/// call for different users at once, and the engine never calls two writes for one user at once.
pub trait Backend: Send + Sync {
    /// Short name of the provider kind ("vdir", "memory", …) for logs and reports.
    fn kind(&self) -> &'static str;

    /// Calls made so far, by method, when the backend counts them (see `counting::Counting`).
    fn call_counts(&self) -> Option<counting::CallCounts> {
        None
    }

    /// Looks a user up by the name used in job files. `Ok(None)` means no such user.
    fn resolve_user(&self, name: &str) -> impl Future<Output = Result<Option<User>>> + Send;

    /// Checks the provider set-up itself for `groupsync check` (credentials, administrator
    /// rights, domains): one line per finding, `Ok` for what works, `Err` for what does not,
    /// saying how to fix it.
    fn check_setup(&self) -> impl Future<Output = Vec<std::result::Result<String, String>>> + Send {
        async { vec![] }
    }

    /// Checks that groupsync may act on `user`'s contacts (Google: a delegated token with the
    /// contacts scope), for `groupsync check`.
    fn check_access(&self, _user: &User) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }

    /// Called once per run with every user name the run may look up, before any `resolve_user`:
    /// a provider with a directory listing (Google's users.list) reads them in a few pages
    /// instead of one call each. Errors are not fatal: lookups then go one by one.
    fn prepare_users(&self, _names: &[String]) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Called for a user about to be read or written (a destination about to be processed, the
    /// source while the destinations are looked up) while other calls are in flight, so the
    /// provider can get ready for the user's calls off the critical path (Google: the user's
    /// access token, an RS256 signature and a round trip to the token endpoint). Errors are left
    /// for the user's own calls to meet.
    fn prepare_access(&self, _user: &User) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Expands a dynamic destination set (`group:sales@example.com`, `ou:/Sales`,
    /// `domain:example.com`) to user names, read from the provider's directory now. An error is
    /// never an empty set.
    fn expand_set(&self, set: &str) -> impl Future<Output = Result<Vec<String>>> + Send {
        let kind = self.kind();
        async move {
            Err(BackendError::Invalid(format!(
                "dynamic destination {set:?}: the {kind} backend has no directory of users (dynamic sets need kind = \"google\")"
            )))
        }
    }

    /// Checks that a group name can be made at this provider (vdir: one plain folder name), so
    /// a job naming one that cannot is refused before anything is written.
    fn check_group_name(&self, name: &str) -> std::result::Result<(), String> {
        let _ = name;
        Ok(())
    }

    /// Finds a user's contact group by its display name.
    fn find_group(
        &self,
        user: &User,
        name: &str,
    ) -> impl Future<Output = Result<Option<GroupRef>>> + Send;

    /// Creates a contact group; `AlreadyExists` if one of that name exists.
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

    /// Reads every contact of a group, handing each to `sink` as it is read, so a caller can keep
    /// a summary instead of the whole group in memory.
    fn scan_group(
        &self,
        user: &User,
        group: &GroupRef,
        sink: &mut (dyn FnMut(Contact) + Send),
    ) -> impl Future<Output = Result<()>> + Send;

    /// Reads the named contacts of a group (for the trash, before a delete), handing each to
    /// `sink` as it is read, so a caller can turn each into what it keeps while the next ones
    /// are read. Missing ids are left out.
    fn fetch_contacts(
        &self,
        user: &User,
        group: &GroupRef,
        ids: &[String],
        sink: &mut (dyn FnMut(Contact) + Send),
    ) -> impl Future<Output = Result<()>> + Send;

    /// Creates a contact in a group and returns what was stored: its id and etag. A provider may
    /// store the card differently from how it was sent (reorder, normalise); the etag is of what
    /// it stored, so the engine can tell "as we wrote it" from "edited since".
    fn create_contact(
        &self,
        user: &User,
        group: &GroupRef,
        card: &VCard,
    ) -> impl Future<Output = Result<Written>> + Send;

    /// Replaces the managed part of a contact (see `card::merge_copy`) if its etag is still
    /// `etag`; returns the new etag.
    fn update_contact(
        &self,
        user: &User,
        group: &GroupRef,
        id: &str,
        etag: &str,
        card: &VCard,
        fields: &FieldSelection,
    ) -> impl Future<Output = Result<String>> + Send;

    /// Deletes a contact if its etag is still `etag`.
    fn delete_contact(
        &self,
        user: &User,
        group: &GroupRef,
        id: &str,
        etag: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Reads a group as `scan_group` does, for a destination leaving the job: each contact is
    /// read only as far as telling this job's copies from the rest needs (the tag properties
    /// `card::tag_of` and `card::source_of` read). What a removal deletes is read whole for the
    /// trash before it is deleted. A provider that cannot read less hands contacts whole.
    fn scan_group_tags(
        &self,
        user: &User,
        group: &GroupRef,
        sink: &mut (dyn FnMut(Contact) + Send),
    ) -> impl Future<Output = Result<()>> + Send {
        self.scan_group(user, group, sink)
    }

    /// True when `GroupRef::version` changes with every change in a group (CardDAV getctag);
    /// when false the engine does not read a group again just to learn its new version.
    fn group_versions(&self) -> bool {
        true
    }

    /// True when the provider hands out change tokens (Google sync tokens): a token taken by
    /// `scan_group_with_token` lets `read_changes` read only what changed since.
    fn change_tokens(&self) -> bool {
        false
    }

    /// Reads a group as `scan_group` does and returns a change token valid from the moment the
    /// read began (`None` from a provider without tokens). With `group` = `None` (the group does
    /// not exist yet) no contact is handed to `sink`; only the token is taken.
    fn scan_group_with_token(
        &self,
        user: &User,
        group: Option<&GroupRef>,
        sink: &mut (dyn FnMut(Contact) + Send),
    ) -> impl Future<Output = Result<Option<String>>> + Send {
        async move {
            if let Some(g) = group {
                self.scan_group(user, g, sink).await?;
            }
            Ok(None)
        }
    }

    /// Reads a group as `scan_group_with_token` does, except that a contact for which
    /// `known(id, etag)` is true is handed to `known_sink` as (id, etag) without being read
    /// whole: the engine knows it is a copy exactly as it wrote it. A provider that cannot see
    /// etags before reading contacts whole hands everything to `sink`.
    fn scan_group_known(
        &self,
        user: &User,
        group: Option<&GroupRef>,
        known: &(dyn Fn(&str, &str) -> bool + Send + Sync),
        sink: &mut (dyn FnMut(Contact) + Send),
        known_sink: &mut (dyn FnMut(String, String) + Send),
    ) -> impl Future<Output = Result<Option<String>>> + Send {
        let _ = (known, known_sink);
        self.scan_group_with_token(user, group, sink)
    }

    /// Reads what changed in a user's contacts since `token` (taken by `scan_group_known` or
    /// an earlier `read_changes`), so a destination can be brought in line without reading its
    /// group whole. `known` says whether a contact is a copy the engine remembers and whether it
    /// has the etag the engine wrote or last read (pass an empty etag for a deleted contact), and
    /// hears how many contacts each page of the delta holds before they are asked about
    /// (`KnownCopies::page`). A changed contact now in the group `group_id` is handed to `sink` whole, unless
    /// it is `Known::AsWritten` (the engine's own write). A remembered copy (any `Known` but
    /// `No`) deleted since, or no longer in the group, is handed to `gone`. Every other change
    /// (contacts elsewhere in the user's contacts) is left out. A provider without change
    /// tokens answers `Delta::Expired`. The caller may start work of its own on the first
    /// change handed over (the engine reads the group alongside the rest): a provider that reads
    /// the delta in pages yields to the runtime once after handing it over. A provider that can
    /// tell its last call before it reads that answer says so (`KnownCopies::last_call`), and
    /// yields once: the engine gives the destination's place to another meanwhile.
    fn read_changes(
        &self,
        _user: &User,
        _token: &str,
        _group_id: &str,
        _known: &dyn KnownCopies,
        _sink: &mut (dyn FnMut(Contact) + Send),
        _gone: &mut (dyn FnMut(String) + Send),
    ) -> impl Future<Output = Result<Delta>> + Send {
        async { Ok(Delta::Expired) }
    }

    /// True when a copy carrying this card property must be read before it is updated (Google:
    /// a photo, whose state on the copy only a read tells); other copies may be updated from
    /// what the engine remembers of them (see `read_changes`).
    fn read_before_update(&self, _property: &str) -> bool {
        false
    }

    /// How many contacts one call of a group read answers (Google: 1,000 a page). The engine
    /// compares it with `batch_size` to choose between reading a few named contacts and reading
    /// the whole group again.
    fn page_size(&self) -> usize {
        1000
    }

    /// How many contacts one batch call takes (1: the provider has no batch endpoint). The engine
    /// hands the batch methods below at most this many items at a time.
    fn batch_size(&self) -> usize {
        1
    }

    /// How many contacts one batch delete takes (Google: 500, more than its other batches).
    fn delete_batch_size(&self) -> usize {
        self.batch_size()
    }

    /// Creates several contacts in one group. One result per card, in order; a provider without
    /// batch endpoints creates them one by one and stops at the first failure that is not one
    /// contact's (`BackendError::is_contact_level`; the results then end early). Every `Ok` is a contact that exists, even when a later one failed.
    fn create_contacts(
        &self,
        user: &User,
        group: &GroupRef,
        cards: &[&VCard],
    ) -> impl Future<Output = Vec<Result<Written>>> + Send {
        async move {
            let mut out = Vec::with_capacity(cards.len());
            for card in cards {
                let r = self.create_contact(user, group, card).await;
                let failed = r.as_ref().is_err_and(|e| !e.is_contact_level());
                out.push(r);
                if failed {
                    break;
                }
            }
            out
        }
    }

    /// Updates several contacts (`(id, etag, desired card)`), as `update_contact` does. One result
    /// per item, in order, ending early after a failure that is not one contact's when done one
    /// by one.
    fn update_contacts(
        &self,
        user: &User,
        group: &GroupRef,
        items: &[(&str, &str, &VCard)],
        fields: &FieldSelection,
    ) -> impl Future<Output = Vec<Result<String>>> + Send {
        async move {
            let mut out = Vec::with_capacity(items.len());
            for (id, etag, card) in items {
                let r = self
                    .update_contact(user, group, id, etag, card, fields)
                    .await;
                let failed = r.as_ref().is_err_and(|e| !e.is_contact_level());
                out.push(r);
                if failed {
                    break;
                }
            }
            out
        }
    }

    /// Deletes several contacts (`(id, etag)`), each only if its etag is unchanged. One result
    /// per item, in order, ending early after a failure that is not one contact's when done one
    /// by one.
    fn delete_contacts(
        &self,
        user: &User,
        group: &GroupRef,
        items: &[(&str, &str)],
    ) -> impl Future<Output = Vec<Result<()>>> + Send {
        async move {
            let mut out = Vec::with_capacity(items.len());
            for (id, etag) in items {
                let r = self.delete_contact(user, group, id, etag).await;
                let failed = r.as_ref().is_err_and(|e| !e.is_contact_level());
                out.push(r);
                if failed {
                    break;
                }
            }
            out
        }
    }

    /// Moves several contacts (`(id, etag)`) to the default collection, as `move_to_default`
    /// does.
    fn move_contacts_to_default(
        &self,
        user: &User,
        group: &GroupRef,
        items: &[(&str, &str)],
    ) -> impl Future<Output = Vec<Result<()>>> + Send {
        async move {
            let mut out = Vec::with_capacity(items.len());
            for (id, etag) in items {
                let r = self.move_to_default(user, group, id, etag).await;
                let failed = r.as_ref().is_err_and(|e| !e.is_contact_level());
                out.push(r);
                if failed {
                    break;
                }
            }
            out
        }
    }

    /// Moves a contact out of `group` into the user's default collection ("My Contacts"), if
    /// its etag is still `etag` where the provider can tell (`Conflict` otherwise). A move cut
    /// short and made again never leaves the contact twice.
    fn move_to_default(
        &self,
        user: &User,
        group: &GroupRef,
        id: &str,
        etag: &str,
    ) -> impl Future<Output = Result<()>> + Send;
}
