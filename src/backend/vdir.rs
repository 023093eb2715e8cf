//! The vdir backend: a folder of vCard files per contact group, one folder per user.
//!
//! Layout (fixed: tools and docs outside the code rely on it):
//! `<root>/<user>/` is a user (a user exists iff the folder exists), `<root>/<user>/<group>/` is a
//! contact group holding one `.vcf` file per contact, `<root>/<user>/My Contacts/` is the user's
//! default collection. A contact's id is its file name without `.vcf`; its etag is a digest of
//! the file's bytes, so any edit, by any tool, is seen.
//!
//! Writes are atomic: the new content goes to a hidden temporary file in the same folder, which is
//! then renamed (update) or hard-linked (create, which never replaces an existing file) into
//! place. Hidden files (starting with `.`) are ignored when reading. This module must not decide
//! what to write: it only stores what the engine asks for, after checking the etag.

use calcard::vcard::VCard;
use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Backend, BackendError, Contact, GroupRef, Result, User, Written};
use crate::card::{self, FieldSelection};

/// Name of the default collection in every user's folder.
pub const DEFAULT_COLLECTION: &str = "My Contacts";

/// A vdir tree rooted at `root`.
#[derive(Debug)]
pub struct VdirBackend {
    root: PathBuf,
    tmp_counter: AtomicU64,
}

/// Checks that a user or group name is a single, ordinary path component.
pub fn check_component(kind: &str, name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err(format!("{kind} name is empty"));
    }
    if name.starts_with('.') || name.contains('/') || name.contains('\\') || name.contains('\0') {
        return Err(format!(
            "{kind} name {name:?} is not a plain folder name (no '/', no leading '.')"
        ));
    }
    Ok(())
}

impl VdirBackend {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        VdirBackend {
            root: root.into(),
            tmp_counter: AtomicU64::new(0),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn user_dir(&self, user: &User) -> PathBuf {
        self.root.join(&user.id)
    }

    fn group_dir(&self, user: &User, group: &GroupRef) -> PathBuf {
        self.user_dir(user).join(&group.id)
    }

    fn contact_path(&self, user: &User, group: &GroupRef, id: &str) -> Result<PathBuf> {
        check_component("contact", id).map_err(BackendError::Invalid)?;
        Ok(self.group_dir(user, group).join(format!("{id}.vcf")))
    }

    fn write_temp(&self, dir: &Path, bytes: &[u8]) -> Result<PathBuf> {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".groupsync-{}-{n}.tmp", std::process::id()));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| BackendError::io(tmp.display(), e))?;
        f.write_all(bytes)
            .map_err(|e| BackendError::io(tmp.display(), e))?;
        Ok(tmp)
    }

    /// Links `tmp` to a free `<stem>[-n].vcf` in `dir`, never replacing an existing file.
    fn link_new(&self, dir: &Path, stem: &str, tmp: &Path) -> Result<String> {
        let mut n = 0u32;
        loop {
            let id = if n == 0 {
                stem.to_string()
            } else {
                format!("{stem}-{n}")
            };
            let path = dir.join(format!("{id}.vcf"));
            match fs::hard_link(tmp, &path) {
                Ok(()) => {
                    let _ = fs::remove_file(tmp);
                    return Ok(id);
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => {
                    let _ = fs::remove_file(tmp);
                    return Err(BackendError::io(path.display(), e));
                }
            }
        }
    }

    fn read_contact(&self, path: &Path, id: &str) -> Result<Option<Contact>> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(BackendError::io(path.display(), e)),
        };
        let etag = card::hex_digest(&bytes);
        let card = match String::from_utf8(bytes) {
            Ok(text) => card::parse(&text),
            Err(_) => Err("not UTF-8 text".to_string()),
        };
        Ok(Some(Contact {
            id: id.to_string(),
            etag,
            card,
        }))
    }

    fn expect_etag(&self, path: &Path, id: &str, etag: &str) -> Result<Option<Contact>> {
        match self.read_contact(path, id)? {
            None => Ok(None),
            Some(c) if c.etag != etag => Err(BackendError::Conflict {
                what: path.display().to_string(),
            }),
            Some(c) => Ok(Some(c)),
        }
    }
}

/// A file stem for a new contact: its UID with anything unusual replaced, or "contact".
fn stem_for(card: &VCard) -> String {
    let uid = card.uid().unwrap_or("contact");
    let mut s: String = uid
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '@' | '+' | '=') {
                c
            } else {
                '_'
            }
        })
        .take(120)
        .collect();
    if s.is_empty() || s.starts_with('.') {
        s = format!("c{s}");
    }
    s
}

impl Backend for VdirBackend {
    fn kind(&self) -> &'static str {
        "vdir"
    }

    async fn resolve_user(&self, name: &str) -> Result<Option<User>> {
        if check_component("user", name).is_err() {
            return Ok(None);
        }
        let dir = self.root.join(name);
        match fs::metadata(&dir) {
            Ok(m) if m.is_dir() => Ok(Some(User {
                id: name.to_string(),
                name: name.to_string(),
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BackendError::io(dir.display(), e)),
        }
    }

    async fn find_group(&self, user: &User, name: &str) -> Result<Option<GroupRef>> {
        if check_component("group", name).is_err() {
            return Ok(None);
        }
        let dir = self.user_dir(user).join(name);
        match fs::metadata(&dir) {
            Ok(m) if m.is_dir() => Ok(Some(GroupRef {
                id: name.to_string(),
                name: name.to_string(),
                version: None,
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BackendError::io(dir.display(), e)),
        }
    }

    async fn create_group(&self, user: &User, name: &str) -> Result<GroupRef> {
        check_component("group", name).map_err(BackendError::Invalid)?;
        let dir = self.user_dir(user).join(name);
        match fs::create_dir(&dir) {
            Ok(()) => Ok(GroupRef {
                id: name.to_string(),
                name: name.to_string(),
                version: None,
            }),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Err(BackendError::AlreadyExists {
                what: dir.display().to_string(),
            }),
            Err(e) => Err(BackendError::io(dir.display(), e)),
        }
    }

    async fn delete_group(&self, user: &User, group: &GroupRef) -> Result<()> {
        let dir = self.group_dir(user, group);
        match fs::remove_dir(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) if e.kind() == ErrorKind::DirectoryNotEmpty => Err(BackendError::NotEmpty {
                what: dir.display().to_string(),
            }),
            Err(e) => Err(BackendError::io(dir.display(), e)),
        }
    }

    async fn scan_group(
        &self,
        user: &User,
        group: &GroupRef,
        sink: &mut (dyn FnMut(Contact) + Send),
    ) -> Result<()> {
        let dir = self.group_dir(user, group);
        let mut names: Vec<String> = vec![];
        for entry in fs::read_dir(&dir)
            .map_err(|e| BackendError::io(dir.display(), e))?
            .filter_map(|e| e.ok())
        {
            let Ok(n) = entry.file_name().into_string() else {
                continue;
            };
            if n.starts_with(".groupsync-") && n.ends_with(".tmp") {
                // Left by a process killed mid-write; an hour old means no live run owns it.
                let stale = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age.as_secs() > 3600);
                if stale {
                    let _ = fs::remove_file(entry.path());
                }
            } else if !n.starts_with('.') && n.len() > 4 && n.to_ascii_lowercase().ends_with(".vcf")
            {
                names.push(n);
            }
        }
        names.sort();
        for name in names {
            let id = &name[..name.len() - 4];
            if let Some(c) = self.read_contact(&dir.join(&name), id)? {
                sink(c);
            }
        }
        Ok(())
    }

    async fn fetch_contacts(
        &self,
        user: &User,
        group: &GroupRef,
        ids: &[String],
        sink: &mut (dyn FnMut(Contact) + Send),
    ) -> Result<()> {
        for id in ids {
            if let Some(c) = self.read_contact(&self.contact_path(user, group, id)?, id)? {
                sink(c);
            }
        }
        Ok(())
    }

    async fn create_contact(&self, user: &User, group: &GroupRef, card: &VCard) -> Result<Written> {
        let dir = self.group_dir(user, group);
        let text = card::to_text(card);
        let tmp = self.write_temp(&dir, text.as_bytes())?;
        let id = self.link_new(&dir, &stem_for(card), &tmp)?;
        Ok(Written {
            id,
            etag: card::hex_digest(text.as_bytes()),
        })
    }

    async fn update_contact(
        &self,
        user: &User,
        group: &GroupRef,
        id: &str,
        etag: &str,
        card: &VCard,
        fields: &FieldSelection,
    ) -> Result<String> {
        let path = self.contact_path(user, group, id)?;
        let existing =
            self.expect_etag(&path, id, etag)?
                .ok_or_else(|| BackendError::NotFound {
                    what: path.display().to_string(),
                })?;
        let existing = existing
            .card
            .map_err(|e| BackendError::Invalid(format!("{}: {e}", path.display())))?;
        let merged = card::to_text(&card::merge_copy(&existing, card, fields));
        let tmp = self.write_temp(&self.group_dir(user, group), merged.as_bytes())?;
        fs::rename(&tmp, &path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            BackendError::io(path.display(), e)
        })?;
        Ok(card::hex_digest(merged.as_bytes()))
    }

    async fn delete_contact(
        &self,
        user: &User,
        group: &GroupRef,
        id: &str,
        etag: &str,
    ) -> Result<()> {
        let path = self.contact_path(user, group, id)?;
        if self.expect_etag(&path, id, etag)?.is_none() {
            return Ok(());
        }
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BackendError::io(path.display(), e)),
        }
    }

    async fn move_to_default(&self, user: &User, group: &GroupRef, id: &str) -> Result<()> {
        if group.id == DEFAULT_COLLECTION {
            return Ok(());
        }
        let from = self.contact_path(user, group, id)?;
        let to_dir = self.user_dir(user).join(DEFAULT_COLLECTION);
        match fs::create_dir(&to_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(BackendError::io(to_dir.display(), e)),
        }
        let mut n = 0u32;
        loop {
            let name = if n == 0 {
                format!("{id}.vcf")
            } else {
                format!("{id}-{n}.vcf")
            };
            let to = to_dir.join(name);
            match fs::hard_link(&from, &to) {
                Ok(()) => break,
                Err(e) if e.kind() == ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    return Err(BackendError::NotFound {
                        what: from.display().to_string(),
                    });
                }
                Err(e) => return Err(BackendError::io(to.display(), e)),
            }
        }
        fs::remove_file(&from).map_err(|e| BackendError::io(from.display(), e))
    }
}
