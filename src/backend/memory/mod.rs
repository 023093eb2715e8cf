//! An in-memory backend: users, groups and contacts in maps behind a mutex. The engine's tests
//! and property tests run on it, with injected faults (one write fails, or every operation from
//! the Nth on fails, as if the process died there). It must behave like a real provider where the
//! engine can tell: etags change on every write, ids are never reused, a group with contacts in it
//! cannot be deleted, two contacts of one group never share a UID (as on a CardDAV server).

mod groups;
mod read;
mod write;

use calcard::vcard::VCard;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Backend, BackendError, Capabilities, Contact, GroupRef, Result, User, Written};
use crate::card::{self, FieldSelection};

/// Name of every user's default collection.
pub const DEFAULT_GROUP: &str = "My Contacts";

#[derive(Debug, Clone, Default)]
struct MemGroup {
    name: String,
    contacts: BTreeMap<String, (String, VCard)>,
}

impl MemGroup {
    /// Like a CardDAV ctag: changes with every change inside the group (etags never repeat).
    fn version(&self) -> String {
        let mut text = String::new();
        for (id, (etag, _)) in &self.contacts {
            text.push_str(id);
            text.push(':');
            text.push_str(etag);
            text.push(';');
        }
        card::hex_digest(text.as_bytes())
    }
}

#[derive(Debug, Clone, Default)]
struct MemUser {
    groups: BTreeMap<String, MemGroup>,
}

/// Where a user's contacts are: contact id → (group id, etag).
type Positions = BTreeMap<String, (String, String)>;

/// When writes fail. Counted over every write call (create, update, delete, move, group changes).
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// The write with this number (0-based) fails once with a transient error.
    pub fail_write: Option<u64>,
    /// Every call, read or write, from the write with this number on fails: the run is cut there.
    pub cut_at_write: Option<u64>,
}

/// The in-memory provider.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    users: Mutex<BTreeMap<String, MemUser>>,
    next_id: AtomicU64,
    writes: AtomicU64,
    faults: Mutex<Faults>,
    normalize: std::sync::atomic::AtomicBool,
    /// Added to every group scan (tokio time: tests run it paused).
    latency: Mutex<std::time::Duration>,
    /// What `batch_size` answers (0 = 1): makes the engine hand over batches, which this
    /// backend runs one by one with the trait's default batch methods.
    batch: std::sync::atomic::AtomicUsize,
    /// Hands out change tokens (as Google's sync tokens) instead of group versions.
    tokens_on: std::sync::atomic::AtomicBool,
    /// Change token → what the user's contacts were when it was taken: contact id → (group id,
    /// etag), and how many contacts had been deleted by then.
    tokens: Mutex<HashMap<String, (usize, Positions)>>,
    /// Every deleted contact, in order: (user, contact id). A change token's delta names the
    /// ones deleted after it was taken, even those created after it.
    deleted: Mutex<Vec<(String, String)>>,
    /// Looking up a group of this user panics (see `panic_for`).
    panic_user: Mutex<Option<String>>,
    /// Creates and updates of a card holding this text are refused (see `refuse_cards_with`).
    refuse: Mutex<Option<String>>,
    /// What `cannot_hold` says this backend has room for: so many emails a card (0: any).
    /// Cards are still stored whole; only the report is tested with it.
    holds_emails: std::sync::atomic::AtomicUsize,
    /// A group read of this user (an id) fails once it has handed over so many contacts (see
    /// `cut_reads_of`).
    read_cut: Mutex<Option<(String, usize)>>,
}

impl MemoryBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `cannot_hold` name the emails of a card past the first `n` (see `holds_emails`).
    pub fn hold_emails(&self, n: usize) {
        self.holds_emails.store(n, Ordering::Relaxed);
    }

    /// Makes every group read of `user` (an id) fail, as a connection lost mid-read, once it
    /// has handed over `after` contacts; `None` lifts it.
    pub fn cut_reads_of(&self, cut: Option<(&str, usize)>) {
        *self.read_cut.lock().unwrap() = cut.map(|(u, n)| (u.to_string(), n));
    }

    /// Makes the engine apply plans in batches of `n`.
    pub fn set_batch_size(&self, n: usize) {
        self.batch.store(n, Ordering::Relaxed);
    }

    /// Makes the backend hand out change tokens (see `Backend::change_tokens`) in place of
    /// group versions, as Google does.
    pub fn set_change_tokens(&self, on: bool) {
        self.tokens_on.store(on, Ordering::Relaxed);
    }

    /// Makes looking up any group of `user` (an id) panic, as a bug in a provider would: one
    /// destination's panic must be reported as that destination's failure, never end the run.
    pub fn panic_for(&self, user: &str) {
        *self.panic_user.lock().unwrap() = Some(user.to_string());
    }

    /// Makes the provider refuse to create or update any card holding `marker` (as a server
    /// refuses a card it cannot store): that contact only, never the destination.
    pub fn refuse_cards_with(&self, marker: Option<&str>) {
        *self.refuse.lock().unwrap() = marker.map(str::to_string);
    }

    /// Makes every change token handed out so far expire.
    pub fn expire_change_tokens(&self) {
        self.tokens.lock().unwrap().clear();
    }

    /// Where every contact of a user is now: contact id → (group id, etag).
    fn positions(&self, user: &str) -> Positions {
        let users = self.users.lock().unwrap();
        let mut out = BTreeMap::new();
        if let Some(u) = users.get(user) {
            for (gid, g) in &u.groups {
                for (id, (etag, _)) in &g.contacts {
                    out.insert(id.clone(), (gid.clone(), etag.clone()));
                }
            }
        }
        out
    }

    fn take_token(&self, user: &str) -> String {
        let token = self.fresh("t");
        let now = self.positions(user);
        let deleted = self.deleted.lock().unwrap().len();
        self.tokens
            .lock()
            .unwrap()
            .insert(token.clone(), (deleted, now));
        token
    }

    fn tombstone(&self, user: &str, id: &str) {
        self.deleted
            .lock()
            .unwrap()
            .push((user.to_string(), id.to_string()));
    }

    /// Adds a user (with an empty default collection).
    pub fn add_user(&self, name: &str) {
        let mut users = self.users.lock().unwrap();
        let user = users.entry(name.to_string()).or_default();
        if !user.groups.values().any(|g| g.name == DEFAULT_GROUP) {
            let id = self.fresh("g");
            user.groups.insert(
                id,
                MemGroup {
                    name: DEFAULT_GROUP.into(),
                    ..Default::default()
                },
            );
        }
    }

    fn fresh(&self, prefix: &str) -> String {
        format!("{prefix}{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Sets the faults for the next calls and resets the write counter.
    pub fn set_faults(&self, faults: Faults) {
        *self.faults.lock().unwrap() = faults;
        self.writes.store(0, Ordering::SeqCst);
    }

    /// Makes the provider store cards in its own form (properties sorted by name, as some
    /// servers re-serialise them), so a copy never reads back exactly as it was written.
    pub fn set_normalize(&self, on: bool) {
        self.normalize.store(on, Ordering::SeqCst);
    }

    fn stored_form(&self, mut card: VCard) -> VCard {
        if self.normalize.load(Ordering::SeqCst) {
            card.entries.sort_by_key(|e| {
                if e.name == calcard::vcard::VCardProperty::Version {
                    String::new()
                } else {
                    e.name.as_str().to_ascii_uppercase()
                }
            });
        }
        card
    }

    /// Makes every group scan take this long (tokio time), like a slow provider.
    pub fn set_latency(&self, d: std::time::Duration) {
        *self.latency.lock().unwrap() = d;
    }

    /// Number of writes since the last `set_faults`.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    fn check_read(&self) -> Result<()> {
        let f = *self.faults.lock().unwrap();
        if let Some(cut) = f.cut_at_write
            && self.writes.load(Ordering::SeqCst) >= cut
        {
            return Err(BackendError::Transient("connection lost (injected)".into()));
        }
        Ok(())
    }

    /// Refuses a card that carries the marker `refuse_cards_with` set (a card the provider
    /// cannot store).
    fn check_refused(&self, card: &VCard) -> Result<()> {
        let marker = self.refuse.lock().unwrap().clone();
        match marker {
            Some(m) if card::to_text(card).contains(&m) => Err(BackendError::Refused(format!(
                "the provider refuses this card ({m})"
            ))),
            _ => Ok(()),
        }
    }

    fn check_write(&self) -> Result<()> {
        let f = *self.faults.lock().unwrap();
        let n = self.writes.fetch_add(1, Ordering::SeqCst);
        if f.cut_at_write.is_some_and(|cut| n >= cut) {
            return Err(BackendError::Transient("connection lost (injected)".into()));
        }
        if f.fail_write == Some(n) {
            return Err(BackendError::Transient("server error (injected)".into()));
        }
        Ok(())
    }

    /// Test access: a group's id by name, creating it if asked.
    pub fn group_id(&self, user: &str, name: &str, create: bool) -> Option<String> {
        let mut users = self.users.lock().unwrap();
        let u = users.get_mut(user)?;
        if let Some((id, _)) = u.groups.iter().find(|(_, g)| g.name == name) {
            return Some(id.clone());
        }
        if !create {
            return None;
        }
        let id = self.fresh("g");
        u.groups.insert(
            id.clone(),
            MemGroup {
                name: name.into(),
                ..Default::default()
            },
        );
        Some(id)
    }

    /// Test access: puts a contact straight into a group (creating the group), returns its id.
    pub fn put(&self, user: &str, group: &str, card: VCard) -> String {
        let gid = self.group_id(user, group, true).expect("user exists");
        let id = self.fresh("c");
        let etag = self.fresh("e");
        let mut users = self.users.lock().unwrap();
        users
            .get_mut(user)
            .unwrap()
            .groups
            .get_mut(&gid)
            .unwrap()
            .contacts
            .insert(id.clone(), (etag, card));
        id
    }

    /// Test access: replaces a contact's card wherever it is. Returns false if it is gone.
    pub fn replace(&self, user: &str, id: &str, card: VCard) -> bool {
        let etag = self.fresh("e");
        let mut users = self.users.lock().unwrap();
        let Some(u) = users.get_mut(user) else {
            return false;
        };
        for g in u.groups.values_mut() {
            if let Some(slot) = g.contacts.get_mut(id) {
                *slot = (etag, card);
                return true;
            }
        }
        false
    }

    /// Test access: removes a contact wherever it is.
    pub fn remove(&self, user: &str, id: &str) -> bool {
        let mut users = self.users.lock().unwrap();
        let Some(u) = users.get_mut(user) else {
            return false;
        };
        let removed = u
            .groups
            .values_mut()
            .any(|g| g.contacts.remove(id).is_some());
        drop(users);
        if removed {
            self.tombstone(user, id);
        }
        removed
    }

    /// Test access: every (group name, contact id, card) of a user.
    pub fn dump(&self, user: &str) -> Vec<(String, String, VCard)> {
        let users = self.users.lock().unwrap();
        let mut out = vec![];
        if let Some(u) = users.get(user) {
            for g in u.groups.values() {
                for (id, (_, c)) in &g.contacts {
                    out.push((g.name.clone(), id.clone(), c.clone()));
                }
            }
        }
        out
    }

    /// Test access: names of a user's groups.
    pub fn group_names(&self, user: &str) -> Vec<String> {
        let users = self.users.lock().unwrap();
        users
            .get(user)
            .map(|u| u.groups.values().map(|g| g.name.clone()).collect())
            .unwrap_or_default()
    }
}

/// A user of the store, or `NotFound`.
fn user_mut<'a>(users: &'a mut BTreeMap<String, MemUser>, user: &User) -> Result<&'a mut MemUser> {
    users
        .get_mut(&user.id)
        .ok_or_else(|| BackendError::NotFound {
            what: format!("user {}", user.name),
        })
}

impl Backend for MemoryBackend {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn cannot_hold(&self, card: &VCard) -> Vec<String> {
        let room = self.holds_emails.load(Ordering::Relaxed);
        let n = card
            .entries
            .iter()
            .filter(|e| e.name.as_str().eq_ignore_ascii_case("EMAIL"))
            .count();
        if room > 0 && n > room {
            vec![format!("EMAIL: {room} of {n} kept")]
        } else {
            vec![]
        }
    }

    fn capabilities(&self) -> Capabilities {
        let batch = self.batch.load(Ordering::Relaxed).max(1);
        let tokens = self.tokens_on.load(Ordering::Relaxed);
        Capabilities {
            group_versions: true,
            change_tokens: tokens,
            // As if each contact took a call of its own: the engine then reads only what
            // changed whenever it can, so the tests exercise that path.
            page_size: 1,
            batch_size: batch,
            delete_batch_size: batch,
            read_before_update: &[],
            conditional_deletes: true,
            // Only an empty group is ever deleted here (a removal's last step).
            group_loss_in_delta: tokens,
        }
    }

    fn check_group_name(&self, _name: &str) -> std::result::Result<(), String> {
        Ok(())
    }

    async fn resolve_user(&self, name: &str) -> Result<Option<User>> {
        self.check_read()?;
        let users = self.users.lock().unwrap();
        Ok(users.contains_key(name).then(|| User {
            id: name.to_string(),
            name: name.to_string(),
        }))
    }

    no_directory!();

    delegate_read_changes!();

    delegate_to_rooms!();

    one_by_one_writes!();
}
