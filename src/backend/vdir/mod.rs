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
mod groups;
mod parts;
mod read;
mod write;

pub use crate::config::VdirOptions;

use calcard::vcard::VCard;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::{Backend, BackendError, Capabilities, Contact, GroupRef, Result, User, Written};
use crate::card::FieldSelection;
use files::Files;
use parts::Loc;

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
}

impl Backend for VdirBackend {
    fn kind(&self) -> &'static str {
        "vdir"
    }

    fn cannot_hold(&self, _card: &VCard) -> Vec<String> {
        Vec::new()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::PLAIN
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

    no_directory!();

    no_change_tokens!();

    delegate_to_rooms!();

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
