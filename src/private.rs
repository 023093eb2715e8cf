//! Files groupsync keeps about people are its owner's alone. The state database holds the trash
//! (the full vCard of every contact it deleted), the change log and the ledger, so the database,
//! its WAL and shared-memory files and the lock next to it are created mode 0600 (a folder made
//! for them 0700) whatever the process's umask, and an existing one that group or others may
//! read or write is tightened, with a warning naming it. If it cannot be tightened (another
//! user's file), the command stops and says how to fix it.
//!
//! This module must not touch the users' own data: vdir copies keep the mode the vdir settings
//! give them, and the metrics textfile is written for node_exporter to read (see `metrics`).

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of a private file.
pub const FILE_MODE: u32 = 0o600;
/// Mode of a folder made for private files.
pub const DIR_MODE: u32 = 0o700;

/// A private file that could not be made, or made private.
#[derive(Debug, thiserror::Error)]
pub enum NotPrivate {
    #[error(
        "{path} can be read by other users and could not be made private ({source}); fix: chmod 600 {path} as its owner, or remove it"
    )]
    Loose {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot create {path}: {source}")]
    Create {
        path: String,
        #[source]
        source: io::Error,
    },
}

fn create_error(path: &Path) -> impl Fn(io::Error) -> NotPrivate + '_ {
    move |source| NotPrivate::Create {
        path: path.display().to_string(),
        source,
    }
}

/// Creates the folder `dir` and its missing parents, each mode 0700; folders that exist are
/// left as they are (they may be shared, such as /var/lib).
pub fn create_dir(dir: &Path) -> io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
}

/// Makes sure the file at `path` is private: created empty with mode 0600 if it does not exist
/// (its folder too, 0700), tightened to the owner's bits if group or others have any. Returns
/// whether it was tightened (the caller warns).
pub fn ensure_file(path: &Path) -> Result<bool, NotPrivate> {
    let fail = create_error(path);
    if let Some(parent) = path.parent() {
        create_dir(parent).map_err(&fail)?;
    }
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
    {
        Ok(_) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => tighten(path),
        Err(e) => Err(fail(e)),
    }
}

/// Tightens an existing file to its owner's bits if group or others have any; a file that does
/// not exist is fine. Returns whether it was tightened.
pub fn tighten(path: &Path) -> Result<bool, NotPrivate> {
    let fail = |source| NotPrivate::Loose {
        path: path.display().to_string(),
        source,
    };
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(fail(e)),
    };
    let mode = meta.permissions().mode();
    if mode & 0o077 == 0 {
        return Ok(false);
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o700)).map_err(fail)?;
    tracing::warn!(
        "{} could be read by other users (mode {:o}); it holds people's contact details and is now mode {:o}",
        path.display(),
        mode & 0o777,
        mode & 0o700
    );
    Ok(true)
}

/// Opens (creating if needed, mode 0600) a private file for reading and writing, without
/// truncating it; an existing one is tightened first.
pub fn open_rw(path: &Path) -> Result<fs::File, NotPrivate> {
    ensure_file(path)?;
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(create_error(path))
}
