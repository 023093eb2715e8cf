//! Group folders: found by name (never through a symbolic link), made, deleted only when
//! empty; the default collection a user's own contacts move to.
//!
//! It must not touch a card file.

use std::fs;
use std::io::ErrorKind;
use std::path::PathBuf;

use super::files::folder_at;
use super::{DEFAULT_COLLECTION, VdirBackend, check_component};
use crate::backend::{BackendError, GroupRef, Result, User};

/// Group folders.
impl VdirBackend {
    /// The default collection, made if missing; a symbolic link there is refused.
    pub(super) fn default_dir(&self, user: &User) -> Result<PathBuf> {
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

    pub(super) async fn group_named(&self, user: &User, name: &str) -> Result<Option<GroupRef>> {
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

    pub(super) async fn make_group(&self, user: &User, name: &str) -> Result<GroupRef> {
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

    pub(super) async fn remove_group(&self, user: &User, group: &GroupRef) -> Result<()> {
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
}
