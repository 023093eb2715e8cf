//! The vdir backend: a folder of vCard files per contact group, one folder per user.
//!
//! Layout (fixed: tools and docs outside the code rely on it):
//! `<root>/<user>/` is a user (a user exists iff the folder exists), `<root>/<user>/<group>/` is a
//! contact group holding `.vcf` files, `<root>/<user>/My Contacts/` is the user's default
//! collection. A file usually holds one contact, whose id is its file name without `.vcf` and
//! whose etag is a digest of the file's bytes, so any edit, by any tool, is seen. A file that
//! holds several vCards is several contacts (`parts`).
//!
//! Only regular files are read: a symbolic link, FIFO, device or folder named like a card is
//! skipped with a note, and a symbolic link where a group or the default collection should be is
//! refused (it could lead into another user's folder, or back into the source). A file larger
//! than `max_card_bytes` is not read (`files`). Writes are atomic: the new content goes to a
//! hidden temporary file in the same folder, which is then renamed (update) or hard-linked
//! (create, which never replaces an existing file) into place, with the configured umask. Hidden
//! files (starting with `.`) are ignored when reading. This module must not decide what to
//! write: it only stores what the engine asks for, after checking the etag.

mod files;
mod parts;

pub use crate::config::VdirOptions;

use calcard::vcard::VCard;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::counting::CallCounts;
use super::{
    Backend, BackendError, Capabilities, Contact, Delta, GroupRead, GroupRef, KnownCopies, Read,
    Result, User, Written, no_directory,
};
use crate::card::{self, FieldSelection};
use files::{Files, Found, folder_at, same_file};
use parts::{CardFile, Loc, Target};

/// Name of the default collection in every user's folder.
pub const DEFAULT_COLLECTION: &str = "My Contacts";

/// A vdir tree rooted at `root`.
#[derive(Debug)]
pub struct VdirBackend {
    root: PathBuf,
    files: Files,
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

/// A card file as it was read for a write: its text and its metadata (a rewrite keeps its mode).
struct Loaded {
    path: PathBuf,
    text: String,
    meta: fs::Metadata,
}

impl VdirBackend {
    /// A tree with the default options (see `VdirOptions`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self::with_options(root, VdirOptions::default())
    }

    pub fn with_options(root: impl Into<PathBuf>, opts: VdirOptions) -> Self {
        VdirBackend {
            root: root.into(),
            files: Files::new(opts),
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

    /// The file of a contact id, and where in it the contact is.
    fn locate<'a>(&self, user: &User, group: &GroupRef, id: &'a str) -> Result<(PathBuf, Loc<'a>)> {
        let loc = Loc::parse(id)
            .ok_or_else(|| BackendError::Invalid(format!("{id:?} is not a vdir contact id")))?;
        check_component("contact", loc.stem).map_err(BackendError::Invalid)?;
        Ok((
            self.group_dir(user, group)
                .join(format!("{}.vcf", loc.stem)),
            loc,
        ))
    }

    /// The contacts of one card file of a listing, as a read hands them over; what is not a card
    /// is noted.
    fn read_file(&self, path: &Path, listed: fs::FileType, stem: &str) -> Result<Vec<Contact>> {
        Ok(match self.files.read_listed(path, listed)? {
            Found::Missing => vec![],
            Found::NotAFile(what) => {
                tracing::warn!(
                    "{}: {what}, not a card file; skipped (groupsync reads regular files only, and never follows links)",
                    path.display()
                );
                vec![]
            }
            Found::TooLarge { size, version } => {
                let why = format!(
                    "{size} bytes, larger than max_card_bytes = {}; not read, left as it is",
                    self.files.opts.max_card_bytes
                );
                tracing::warn!("{}: {why}", path.display());
                vec![Contact {
                    id: stem.to_string(),
                    etag: version,
                    card: Err(why),
                }]
            }
            Found::Bytes(bytes) => match String::from_utf8(bytes) {
                Ok(text) => CardFile::new(&text).contacts(stem),
                Err(e) => vec![Contact {
                    id: stem.to_string(),
                    etag: card::hex_digest(e.as_bytes()),
                    card: Err("not UTF-8 text".to_string()),
                }],
            },
        })
    }

    /// Reads a card file for a write. `Ok(None)`: it is gone. Anything but a card file now (a
    /// link, a FIFO, too large, not text) changed since the engine read it: a conflict.
    fn load(&self, path: PathBuf) -> Result<Option<Loaded>> {
        let conflict = |what: &str| BackendError::Conflict {
            what: format!("{} ({what} now)", path.display()),
        };
        let bytes = match self.files.read(&path)? {
            Found::Missing => return Ok(None),
            Found::NotAFile(what) => return Err(conflict(what)),
            Found::TooLarge { .. } => return Err(conflict("too large")),
            Found::Bytes(b) => b,
        };
        let text = String::from_utf8(bytes).map_err(|_| conflict("not UTF-8 text"))?;
        let meta = fs::symlink_metadata(&path).map_err(|e| BackendError::io(path.display(), e))?;
        Ok(Some(Loaded { path, text, meta }))
    }

    /// Writes `text` in place of a loaded file, keeping its mode (the file may be the user's).
    fn rewrite(&self, l: &Loaded, text: &str) -> Result<()> {
        let dir = l.path.parent().unwrap_or(Path::new("."));
        let tmp = self.files.write_temp(dir, text.as_bytes(), Some(&l.meta))?;
        self.files.replace(&tmp, &l.path)
    }

    /// The default collection, made if missing; a symbolic link there is refused.
    fn default_dir(&self, user: &User) -> Result<PathBuf> {
        let dir = self.user_dir(user).join(DEFAULT_COLLECTION);
        if !folder_at(&dir)? {
            match self.files.make_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(BackendError::io(dir.display(), e)),
            }
        }
        Ok(dir)
    }

    /// Moves a whole file to the default collection: a hard link there, then the name in the
    /// group removed. A link a killed move left (the same file under both names) is recognised,
    /// so the card is never left twice.
    fn move_file(&self, from: &Path, to_dir: &Path, stem: &str) -> Result<()> {
        let mut n = 0u32;
        loop {
            let name = if n == 0 {
                format!("{stem}.vcf")
            } else {
                format!("{stem}-{n}.vcf")
            };
            let to = to_dir.join(name);
            match fs::hard_link(from, &to) {
                Ok(()) => break,
                Err(e) if e.kind() == ErrorKind::AlreadyExists && same_file(from, &to) => break,
                Err(e) if e.kind() == ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    return Err(BackendError::NotFound {
                        what: from.display().to_string(),
                    });
                }
                Err(e) => return Err(BackendError::io(to.display(), e)),
            }
        }
        fs::remove_file(from).map_err(|e| BackendError::io(from.display(), e))
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

/// True for a file (any case of `.vcf`) that may be a card; hidden files never are.
fn card_file_name(name: &str) -> bool {
    !name.starts_with('.') && name.len() > 4 && name.to_ascii_lowercase().ends_with(".vcf")
}

/// Removes a temporary file a process killed mid-write left, once it is an hour old (no live run
/// owns it then).
fn sweep_stale_temp(entry: &fs::DirEntry) {
    let stale = entry
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age.as_secs() > 3600);
    if stale {
        let _ = fs::remove_file(entry.path());
    }
}

/// The single-contact writes the batch writes are made of (see `one_by_one_writes`).
impl VdirBackend {
    async fn create_one(&self, user: &User, group: &GroupRef, card: &VCard) -> Result<Written> {
        let dir = self.group_dir(user, group);
        folder_at(&dir)?;
        let text = card::to_text(card);
        let tmp = self.files.write_temp(&dir, text.as_bytes(), None)?;
        let id = self
            .files
            .link_new(&dir, &stem_for(card), &tmp, &|_| false)?;
        Ok(Written {
            id,
            etag: card::hex_digest(text.as_bytes()),
        })
    }

    async fn update_one(
        &self,
        user: &User,
        group: &GroupRef,
        id: &str,
        etag: &str,
        card: &VCard,
        fields: &FieldSelection,
    ) -> Result<String> {
        folder_at(&self.group_dir(user, group))?;
        let (path, loc) = self.locate(user, group, id)?;
        let shown = path.display().to_string();
        let l = self.load(path)?.ok_or_else(|| BackendError::NotFound {
            what: shown.clone(),
        })?;
        let file = CardFile::new(&l.text);
        let target = file.find(loc, etag).ok_or_else(|| BackendError::Conflict {
            what: shown.clone(),
        })?;
        let range = match &target {
            Target::Whole => 0..l.text.len(),
            Target::Part(r) => r.clone(),
        };
        let existing = card::parse(&l.text[range.clone()])
            .map_err(|e| BackendError::Invalid(format!("{shown}: {e}")))?;
        let merged = card::to_text(&card::merge_copy(&existing, card, fields));
        match target {
            Target::Whole => {
                let dir = l.path.parent().unwrap_or(Path::new("."));
                let tmp = self.files.write_temp(dir, merged.as_bytes(), None)?;
                self.files.replace(&tmp, &l.path)?;
            }
            // Only this card's bytes change; every other card of the file stays as it is.
            Target::Part(r) => {
                let text = file.splice(&r, &merged).expect("the card is kept");
                self.rewrite(&l, &text)?;
            }
        }
        Ok(card::hex_digest(merged.as_bytes()))
    }

    async fn delete_one(&self, user: &User, group: &GroupRef, id: &str, etag: &str) -> Result<()> {
        folder_at(&self.group_dir(user, group))?;
        let (path, loc) = self.locate(user, group, id)?;
        let Some(l) = self.load(path)? else {
            return Ok(());
        };
        let file = CardFile::new(&l.text);
        let remove = |l: &Loaded| match fs::remove_file(&l.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BackendError::io(l.path.display(), e)),
        };
        match file.find(loc, etag) {
            None => Err(BackendError::Conflict {
                what: l.path.display().to_string(),
            }),
            Some(Target::Whole) => remove(&l),
            // The other cards of the file stay, byte for byte; a file left with none goes.
            Some(Target::Part(r)) => match file.splice(&r, "") {
                Some(text) => self.rewrite(&l, &text),
                None => remove(&l),
            },
        }
    }

    async fn move_one(&self, user: &User, group: &GroupRef, id: &str, etag: &str) -> Result<()> {
        if group.id == DEFAULT_COLLECTION {
            return Ok(());
        }
        folder_at(&self.group_dir(user, group))?;
        let (path, loc) = self.locate(user, group, id)?;
        let to_dir = self.default_dir(user)?;
        let shown = path.display().to_string();
        let l = self.load(path)?.ok_or_else(|| BackendError::NotFound {
            what: shown.clone(),
        })?;
        let file = CardFile::new(&l.text);
        match file.find(loc, etag) {
            None => Err(BackendError::Conflict { what: shown }),
            Some(Target::Whole) => self.move_file(&l.path, &to_dir, loc.stem),
            // One card of several: written to a file of its own there first (one a killed move
            // already wrote, with the same bytes, is used), then taken out of its file.
            Some(Target::Part(r)) => {
                let text = &l.text[r.clone()];
                let tmp = self.files.write_temp(&to_dir, text.as_bytes(), None)?;
                let same = |p: &Path| matches!(self.files.read(p), Ok(Found::Bytes(b)) if b == text.as_bytes());
                let stem = format!("{}-{}", loc.stem, loc.part.unwrap_or(1));
                self.files.link_new(&to_dir, &stem, &tmp, &same)?;
                match file.splice(&r, "") {
                    Some(rest) => self.rewrite(&l, &rest),
                    None => fs::remove_file(&l.path).map_err(|e| BackendError::io(shown, e)),
                }
            }
        }
    }
}

impl Backend for VdirBackend {
    fn kind(&self) -> &'static str {
        "vdir"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::PLAIN
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

    fn check_group_name(&self, name: &str) -> std::result::Result<(), String> {
        check_component("group", name)
    }

    async fn resolve_user(&self, name: &str) -> Result<Option<User>> {
        if check_component("user", name).is_err() {
            return Ok(None);
        }
        // A user's folder may be a link (an administrator's layout); what is inside it is not.
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
        let found = folder_at(&self.user_dir(user).join(name))?;
        Ok(found.then(|| GroupRef {
            id: name.to_string(),
            name: name.to_string(),
            version: None,
        }))
    }

    async fn create_group(&self, user: &User, name: &str) -> Result<GroupRef> {
        check_component("group", name).map_err(BackendError::Invalid)?;
        let dir = self.user_dir(user).join(name);
        match self.files.make_dir(&dir) {
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

    /// Reads every card file (tags only or whole: the file is read either way); no tokens.
    async fn read_group(
        &self,
        user: &User,
        group: Option<&GroupRef>,
        _how: GroupRead<'_>,
        sink: &mut (dyn FnMut(Read) + Send),
    ) -> Result<Option<String>> {
        let Some(group) = group else {
            return Ok(None);
        };
        let dir = self.group_dir(user, group);
        // Refused before it is listed: a linked group could be another user's, or the source.
        folder_at(&dir)?;
        let mut names: Vec<(String, fs::FileType)> = vec![];
        for entry in fs::read_dir(&dir)
            .map_err(|e| BackendError::io(dir.display(), e))?
            .filter_map(|e| e.ok())
        {
            let Ok(n) = entry.file_name().into_string() else {
                continue;
            };
            if n.starts_with(".groupsync-") && n.ends_with(".tmp") {
                sweep_stale_temp(&entry);
            } else if card_file_name(&n) {
                let listed = entry
                    .file_type()
                    .map_err(|e| BackendError::io(entry.path().display(), e))?;
                names.push((n, listed));
            }
        }
        names.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, listed) in names {
            for c in self.read_file(&dir.join(&name), listed, &name[..name.len() - 4])? {
                sink(Read::Contact(c));
            }
        }
        Ok(None)
    }

    async fn fetch_contacts(
        &self,
        user: &User,
        group: &GroupRef,
        ids: &[String],
        sink: &mut (dyn FnMut(Contact) + Send),
    ) -> Result<()> {
        folder_at(&self.group_dir(user, group))?;
        for id in ids {
            let (path, loc) = self.locate(user, group, id)?;
            match self.files.read(&path)? {
                Found::Bytes(bytes) => {
                    let Ok(text) = String::from_utf8(bytes) else {
                        continue;
                    };
                    if let Some(c) = CardFile::new(&text).get(loc, id) {
                        sink(c);
                    }
                }
                // Whatever it is now, it is not the card that was read: nothing to hand over.
                Found::NotAFile(_) | Found::TooLarge { .. } | Found::Missing => {}
            }
        }
        Ok(())
    }

    one_by_one_writes!();
}

#[cfg(test)]
mod tests {
    use super::files::kind_of;
    use super::*;

    fn kind(path: &Path) -> &'static str {
        kind_of(&fs::symlink_metadata(path).unwrap().file_type())
    }

    #[test]
    fn entries_are_named_by_what_they_are() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("f"), "x").unwrap();
        std::os::unix::fs::symlink("f", d.path().join("l")).unwrap();
        assert_eq!(kind(&d.path().join("f")), "a file");
        assert_eq!(kind(&d.path().join("l")), "a symbolic link");
        assert_eq!(kind(d.path()), "a folder");
    }
}
