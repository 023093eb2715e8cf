//! Writing card files: a create links a new file into place (never over another), an update
//! rewrites the file (or its part of a file of several cards) after checking its etag, a delete
//! removes it, a move links it into the default collection first. Every write is atomic.
//!
//! It must not decide what to write.

use calcard::vcard::VCard;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::files::{Found, folder_at, same_file};
use super::parts::{CardFile, Target};
use super::{DEFAULT_COLLECTION, VdirBackend};
use crate::backend::{BackendError, GroupRef, Result, User, Written};
use crate::card::{self, FieldSelection};

/// A card file as it was read for a write: its text and its metadata (a rewrite keeps its mode).
pub(super) struct Loaded {
    path: PathBuf,
    text: String,
    meta: fs::Metadata,
}

/// A file stem for a new contact: its UID with anything unusual replaced, or "contact".
pub(super) fn stem_for(card: &VCard) -> String {
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

/// Contact writes (the batch writes are made of these, see `one_by_one_writes`).
impl VdirBackend {
    /// Reads a card file for a write. `Ok(None)`: it is gone. Anything but a card file now (a
    /// link, a FIFO, too large, not text) changed since the engine read it: a conflict.
    pub(super) fn load(&self, path: PathBuf) -> Result<Option<Loaded>> {
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
    pub(super) fn rewrite(&self, l: &Loaded, text: &str) -> Result<()> {
        let dir = l.path.parent().unwrap_or(Path::new("."));
        let tmp = self.files.write_temp(dir, text.as_bytes(), Some(&l.meta))?;
        self.files.replace(&tmp, &l.path)
    }

    /// Moves a whole file to the default collection: a hard link there, then the name in the
    /// group removed. A link a killed move left (the same file under both names) is recognised,
    /// so the card is never left twice.
    pub(super) fn move_file(&self, from: &Path, to_dir: &Path, stem: &str) -> Result<()> {
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

    pub(super) async fn create_one(
        &self,
        user: &User,
        group: &GroupRef,
        card: &VCard,
    ) -> Result<Written> {
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

    pub(super) async fn update_one(
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

    pub(super) async fn delete_one(
        &self,
        user: &User,
        group: &GroupRef,
        id: &str,
        etag: &str,
    ) -> Result<()> {
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

    pub(super) async fn move_one(
        &self,
        user: &User,
        group: &GroupRef,
        id: &str,
        etag: &str,
    ) -> Result<()> {
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
