//! One user's mailbox: the root Contacts folder, top-level contact folders (live, or moved to
//! Deleted Items), contacts with their change keys, extended properties and photos, and the
//! per-folder change log that delta queries read (each change to a folder's contents is stamped
//! with the folder's next sequence number). [`Mailbox`] is also a test's handle on the mailbox:
//! changes made through it are stamped like a client's ("the user edited it in Outlook").
//! This module keeps state; the HTTP rules are in `contacts.rs` and `delta.rs`.

use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::delta::{Round, Token};
use crate::util;

/// What the last change of a contact in a folder's log was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// Created, changed, or moved in.
    Upsert,
    /// Deleted.
    Deleted,
    /// Moved to another folder.
    MovedOut,
}

/// A contact folder.
#[derive(Debug, Clone)]
pub(crate) struct Folder {
    pub id: String,
    pub name: String,
    /// The root Contacts folder's id for a top-level folder; Deleted Items' once deleted.
    pub parent: String,
    pub ext: Vec<(String, String)>,
    pub order: u64,
    /// Contacts in the folder: creation order → id.
    pub items: BTreeMap<u64, String>,
    /// Sequence number of the folder's last change.
    pub seq: u64,
    /// Contact id → (sequence number, kind) of its last change in this folder.
    pub log: HashMap<String, (u64, Change)>,
}

/// A contact's photo.
#[derive(Debug, Clone)]
pub(crate) struct Photo {
    pub bytes: Vec<u8>,
    pub content_type: String,
    pub width: u32,
    pub height: u32,
}

/// A stored contact.
#[derive(Debug, Clone)]
pub(crate) struct Contact {
    pub id: String,
    pub folder: String,
    /// The regular properties as the client sent them (nulls, `[]` and `{}` left out).
    pub props: Map<String, Value>,
    pub change_key: String,
    pub created: String,
    pub modified: String,
    /// Single-value extended properties (id, value).
    pub ext: Vec<(String, String)>,
    pub photo: Option<Photo>,
    pub order: u64,
}

impl Contact {
    /// `W/"<changeKey>"`.
    pub fn etag(&self) -> String {
        format!("W/\"{}\"", self.change_key)
    }
}

/// Keys of a contact's JSON that are not regular properties.
const META: &[&str] = &[
    "id",
    "changeKey",
    "parentFolderId",
    "createdDateTime",
    "lastModifiedDateTime",
    "@odata.etag",
    "@odata.type",
    "singleValueExtendedProperties",
    "photo",
];

/// Drops nulls, empty collections and empty objects (a read writes them back as defaults).
pub(crate) fn normalize(props: &mut Map<String, Value>) {
    props.retain(|_, v| match v {
        Value::Null => false,
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    });
}

/// Upserts extended properties by id (case-insensitive).
pub(crate) fn upsert_ext(ext: &mut Vec<(String, String)>, new: Vec<(String, String)>) {
    for (id, v) in new {
        match ext.iter_mut().find(|(i, _)| i.eq_ignore_ascii_case(&id)) {
            Some(e) => e.1 = v,
            None => ext.push((id, v)),
        }
    }
}

/// `[{id, value}]` → pairs (entries that are not so are skipped).
pub(crate) fn ext_pairs(v: Option<&Value>) -> Vec<(String, String)> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some((
                e["id"].as_str()?.to_string(),
                e["value"].as_str()?.to_string(),
            ))
        })
        .collect()
}

/// Why a folder operation failed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FolderError {
    NotFound,
    /// The root Contacts folder cannot be deleted.
    Distinguished,
    /// A live top-level folder already has the name.
    Exists,
    /// A folder in Deleted Items already has the name (Exchange cannot move it there).
    MoveFailed,
}

/// One user's folders and contacts.
#[derive(Debug)]
pub struct Mailbox {
    key: Vec<u8>,
    root: String,
    deleted: String,
    pub(crate) folders: HashMap<String, Folder>,
    pub(crate) contacts: HashMap<String, Contact>,
    next: u64,
    /// Bumped by `expire_delta_tokens`; tokens of an older epoch are gone.
    pub(crate) epoch: u64,
    pub(crate) tokens: HashMap<String, Token>,
    pub(crate) rounds: HashMap<String, Round>,
    round_order: VecDeque<String>,
}

/// Delta rounds (paging states) kept per mailbox; older ones are forgotten.
const ROUNDS_KEPT: usize = 256;

impl Mailbox {
    pub(crate) fn new() -> Mailbox {
        let mut m = Mailbox {
            key: util::random_bytes(20),
            root: String::new(),
            deleted: String::new(),
            folders: HashMap::new(),
            contacts: HashMap::new(),
            next: 0,
            epoch: 0,
            tokens: HashMap::new(),
            rounds: HashMap::new(),
            round_order: VecDeque::new(),
        };
        m.root = m.new_id(false);
        m.deleted = m.new_id(false);
        let root = m.root.clone();
        m.insert_folder("Contacts", "msgfolderroot".to_string(), vec![], Some(root));
        m
    }

    fn new_id(&mut self, long: bool) -> String {
        self.next += 1;
        util::exchange_id(&self.key, self.next, long)
    }

    pub(crate) fn next_order(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    fn insert_folder(
        &mut self,
        name: &str,
        parent: String,
        ext: Vec<(String, String)>,
        id: Option<String>,
    ) -> String {
        let id = id.unwrap_or_else(|| self.new_id(false));
        let order = self.next_order();
        self.folders.insert(
            id.clone(),
            Folder {
                id: id.clone(),
                name: name.to_string(),
                parent,
                ext,
                order,
                items: BTreeMap::new(),
                seq: 0,
                log: HashMap::new(),
            },
        );
        id
    }

    /// Folders under `parent` (the root: live top-level folders), in creation order.
    pub(crate) fn folders_under(&self, parent: &str) -> Vec<&Folder> {
        let mut v: Vec<&Folder> = self
            .folders
            .values()
            .filter(|f| f.parent == parent)
            .collect();
        v.sort_by_key(|f| f.order);
        v
    }

    /// Live top-level folders.
    pub(crate) fn live_folders(&self) -> Vec<&Folder> {
        self.folders_under(&self.root)
    }

    /// Creates a top-level folder; `Exists` when a live one has the name (case-insensitive).
    pub(crate) fn create_folder(
        &mut self,
        name: &str,
        ext: Vec<(String, String)>,
    ) -> Result<String, FolderError> {
        if self
            .live_folders()
            .iter()
            .any(|f| f.name.eq_ignore_ascii_case(name))
        {
            return Err(FolderError::Exists);
        }
        Ok(self.insert_folder(name, self.root.clone(), ext, None))
    }

    /// Renames a folder and upserts its extended properties.
    pub(crate) fn update_folder(
        &mut self,
        id: &str,
        name: Option<&str>,
        ext: Vec<(String, String)>,
    ) -> Result<(), FolderError> {
        let parent = self
            .folders
            .get(id)
            .ok_or(FolderError::NotFound)?
            .parent
            .clone();
        if let Some(n) = name
            && self
                .folders_under(&parent)
                .iter()
                .any(|f| f.id != id && f.name.eq_ignore_ascii_case(n))
        {
            return Err(FolderError::Exists);
        }
        let f = self.folders.get_mut(id).ok_or(FolderError::NotFound)?;
        if let Some(n) = name {
            f.name = n.to_string();
        }
        upsert_ext(&mut f.ext, ext);
        Ok(())
    }

    /// Moves a folder to Deleted Items (a folder already there is removed for good).
    pub(crate) fn delete_folder(&mut self, id: &str) -> Result<(), FolderError> {
        let f = self.folders.get(id).ok_or(FolderError::NotFound)?;
        if id == self.root {
            return Err(FolderError::Distinguished);
        }
        if f.parent == self.deleted {
            return self.purge_folder(id);
        }
        let name = f.name.clone();
        if self
            .folders_under(&self.deleted)
            .iter()
            .any(|d| d.name.eq_ignore_ascii_case(&name))
        {
            return Err(FolderError::MoveFailed);
        }
        let deleted = self.deleted.clone();
        self.folders.get_mut(id).expect("folder").parent = deleted;
        Ok(())
    }

    /// Removes a folder and its contacts for good.
    pub(crate) fn purge_folder(&mut self, id: &str) -> Result<(), FolderError> {
        if id == self.root {
            return Err(FolderError::Distinguished);
        }
        let f = self.folders.remove(id).ok_or(FolderError::NotFound)?;
        for cid in f.items.values() {
            self.contacts.remove(cid);
        }
        Ok(())
    }

    /// A contact, if it is in `folder` (any folder when `None`).
    pub(crate) fn contact_in(&self, id: &str, folder: Option<&str>) -> Option<&Contact> {
        self.contacts
            .get(id)
            .filter(|c| folder.is_none_or(|f| c.folder == f))
    }

    fn stamp(&mut self, folder: &str, id: &str, change: Change) {
        if let Some(f) = self.folders.get_mut(folder) {
            f.seq += 1;
            f.log.insert(id.to_string(), (f.seq, change));
        }
    }

    /// Creates a contact in a folder (which must exist); returns its id.
    pub(crate) fn create_contact(
        &mut self,
        folder: &str,
        mut props: Map<String, Value>,
        ext: Vec<(String, String)>,
    ) -> String {
        normalize(&mut props);
        if !props.contains_key("displayName") {
            // Exchange fills in the display name from the name parts.
            let name: Vec<&str> = ["givenName", "middleName", "surname"]
                .iter()
                .filter_map(|k| props.get(*k).and_then(Value::as_str))
                .filter(|s| !s.is_empty())
                .collect();
            if !name.is_empty() {
                props.insert("displayName".into(), json!(name.join(" ")));
            }
        }
        let id = self.new_id(true);
        let order = self.next_order();
        let now = util::iso_now();
        let mut e = vec![];
        upsert_ext(&mut e, ext);
        self.contacts.insert(
            id.clone(),
            Contact {
                id: id.clone(),
                folder: folder.to_string(),
                props,
                change_key: util::change_key(),
                created: now.clone(),
                modified: now,
                ext: e,
                photo: None,
                order,
            },
        );
        self.folders
            .get_mut(folder)
            .expect("folder exists")
            .items
            .insert(order, id.clone());
        self.stamp(folder, &id, Change::Upsert);
        id
    }

    /// Applies a PATCH: regular properties replace the stored ones (null clears), extended
    /// properties are upserted. A new change key always; a delta stamp only when a regular
    /// property was in the patch (as Graph tracks no navigation properties).
    pub(crate) fn update_contact(
        &mut self,
        id: &str,
        patch: Map<String, Value>,
        ext: Vec<(String, String)>,
    ) {
        let Some(c) = self.contacts.get_mut(id) else {
            return;
        };
        let regular = !patch.is_empty();
        for (k, v) in patch {
            c.props.insert(k, v);
        }
        normalize(&mut c.props);
        upsert_ext(&mut c.ext, ext);
        c.change_key = util::change_key();
        c.modified = util::iso_now();
        let folder = c.folder.clone();
        if regular {
            self.stamp(&folder, id, Change::Upsert);
        }
    }

    /// Removes a contact (DELETE and permanentDelete alike).
    pub(crate) fn remove_contact(&mut self, id: &str) {
        if let Some(c) = self.contacts.remove(id) {
            if let Some(f) = self.folders.get_mut(&c.folder) {
                f.items.remove(&c.order);
            }
            self.stamp(&c.folder, id, Change::Deleted);
        }
    }

    /// Sets a contact's photo: a new change key, no delta stamp.
    pub(crate) fn put_photo(&mut self, id: &str, bytes: &[u8], content_type: &str) {
        if let Some(c) = self.contacts.get_mut(id) {
            let (width, height) = util::image_size(bytes).unwrap_or((96, 96));
            c.photo = Some(Photo {
                bytes: bytes.to_vec(),
                content_type: content_type.to_string(),
                width,
                height,
            });
            c.change_key = util::change_key();
            c.modified = util::iso_now();
        }
    }

    /// Remembers a delta round; forgets the oldest beyond [`ROUNDS_KEPT`].
    pub(crate) fn keep_round(&mut self, id: String, round: Round) {
        self.rounds.insert(id.clone(), round);
        self.round_order.push_back(id);
        while self.round_order.len() > ROUNDS_KEPT {
            if let Some(old) = self.round_order.pop_front() {
                self.rounds.remove(&old);
            }
        }
    }

    fn full_json(c: &Contact) -> Value {
        let mut o = c.props.clone();
        o.entry("categories").or_insert(json!([]));
        o.insert("id".into(), json!(c.id));
        o.insert("changeKey".into(), json!(c.change_key));
        o.insert("parentFolderId".into(), json!(c.folder));
        o.insert("createdDateTime".into(), json!(c.created));
        o.insert("lastModifiedDateTime".into(), json!(c.modified));
        let ext: Vec<Value> = c
            .ext
            .iter()
            .map(|(i, v)| json!({"id": i, "value": v}))
            .collect();
        o.insert("singleValueExtendedProperties".into(), json!(ext));
        Value::Object(o)
    }

    /// Adds a top-level folder (panics if a live one has the name); returns its id.
    pub fn add_folder(&mut self, name: &str) -> String {
        self.create_folder(name, vec![])
            .expect("no live folder of that name")
    }

    /// Renames a folder, as a user in Outlook (panics if a folder beside it has the name).
    pub fn rename_folder(&mut self, id: &str, name: &str) {
        self.update_folder(id, Some(name), vec![])
            .expect("a folder of that id, and no other of that name beside it");
    }

    /// Deletes a folder as a user in Outlook does: into Deleted Items, contacts and all.
    pub fn trash_folder(&mut self, id: &str) {
        self.delete_folder(id).expect("a folder of that id");
    }

    /// A live top-level folder's id by name (case-insensitive).
    pub fn folder_by_name(&self, name: &str) -> Option<String> {
        self.live_folders()
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
            .map(|f| f.id.clone())
    }

    /// Names of the live top-level folders, in creation order.
    pub fn folder_names(&self) -> Vec<String> {
        self.live_folders().iter().map(|f| f.name.clone()).collect()
    }

    /// Names of the folders in Deleted Items.
    pub fn deleted_folder_names(&self) -> Vec<String> {
        self.folders_under(&self.deleted)
            .iter()
            .map(|f| f.name.clone())
            .collect()
    }

    /// Id of the root Contacts folder (its contacts are at `/users/{u}/contacts`).
    pub fn default_folder(&self) -> String {
        self.root.clone()
    }

    /// Every contact of a folder, in creation order: its stored properties plus `id`,
    /// `changeKey`, `parentFolderId`, `createdDateTime`, `lastModifiedDateTime`, `categories`
    /// and `singleValueExtendedProperties` (all of them).
    pub fn contacts(&self, folder_id: &str) -> Vec<Value> {
        let Some(f) = self.folders.get(folder_id) else {
            return vec![];
        };
        f.items
            .values()
            .filter_map(|id| self.contacts.get(id))
            .map(Self::full_json)
            .collect()
    }

    /// Adds a contact as the user would in Outlook (read-only keys in `contact` are ignored;
    /// `singleValueExtendedProperties` are kept); returns its id.
    pub fn add_contact(&mut self, folder_id: &str, contact: Value) -> String {
        let mut props = contact.as_object().cloned().unwrap_or_default();
        let ext = ext_pairs(props.get("singleValueExtendedProperties"));
        props.retain(|k, _| !META.contains(&k.as_str()));
        self.create_contact(folder_id, props, ext)
    }

    /// A contact by id, in any folder, as [`Mailbox::contacts`] writes it.
    pub fn contact(&self, id: &str) -> Option<Value> {
        self.contacts.get(id).map(Self::full_json)
    }

    /// Edits a contact's JSON (as [`Mailbox::contact`] gives it) as the user would: a new
    /// change key; stamped for delta when a regular property changed (extended properties are
    /// replaced by the edited list, and are not tracked by delta).
    pub fn edit(&mut self, id: &str, f: impl FnOnce(&mut Value)) {
        let Some(c) = self.contacts.get(id) else {
            panic!("no contact {id}")
        };
        let mut j = Self::full_json(c);
        f(&mut j);
        let mut props = j.as_object().cloned().unwrap_or_default();
        let ext = ext_pairs(props.get("singleValueExtendedProperties"));
        props.retain(|k, _| !META.contains(&k.as_str()));
        normalize(&mut props);
        let c = self.contacts.get_mut(id).expect("contact");
        let changed = c.props != props;
        c.props = props;
        c.ext = ext;
        c.change_key = util::change_key();
        c.modified = util::iso_now();
        let folder = c.folder.clone();
        if changed {
            self.stamp(&folder, id, Change::Upsert);
        }
    }

    /// Deletes a contact as the user would.
    pub fn delete(&mut self, id: &str) {
        self.remove_contact(id);
    }

    /// Moves a contact to another folder: `@removed` (changed) in the old folder's delta, an
    /// upsert in the new one's; the id stays (immutable ids), the change key changes.
    pub fn move_contact(&mut self, id: &str, folder_id: &str) {
        let Some(c) = self.contacts.get_mut(id) else {
            panic!("no contact {id}")
        };
        assert!(
            self.folders.contains_key(folder_id),
            "no folder {folder_id}"
        );
        let (old, order) = (
            std::mem::replace(&mut c.folder, folder_id.to_string()),
            c.order,
        );
        c.change_key = util::change_key();
        c.modified = util::iso_now();
        if let Some(f) = self.folders.get_mut(&old) {
            f.items.remove(&order);
        }
        self.folders
            .get_mut(folder_id)
            .expect("folder")
            .items
            .insert(order, id.to_string());
        self.stamp(&old, id, Change::MovedOut);
        self.stamp(folder_id, id, Change::Upsert);
    }

    /// Gives a contact a photo (JPEG unless the bytes are a PNG), as the user would.
    pub fn set_photo(&mut self, id: &str, bytes: &[u8]) {
        let ct = if bytes.starts_with(b"\x89PNG") {
            "image/png"
        } else {
            "image/jpeg"
        };
        self.put_photo(id, bytes, ct);
    }

    /// Takes a contact's photo off, as a user can in Outlook (Graph itself cannot): its change
    /// key changes, and the delta does not report it (a navigation property).
    pub fn remove_photo(&mut self, id: &str) {
        if let Some(c) = self.contacts.get_mut(id) {
            c.photo = None;
            c.change_key = util::change_key();
            c.modified = util::iso_now();
        }
    }

    /// A contact's photo bytes.
    pub fn photo(&self, id: &str) -> Option<Vec<u8>> {
        self.contacts
            .get(id)?
            .photo
            .as_ref()
            .map(|p| p.bytes.clone())
    }

    /// Makes every delta token and paging link given so far answer 410 Gone.
    pub fn expire_delta_tokens(&mut self) {
        self.epoch += 1;
    }
}
