//! The files of a vdir tree, read and written safely: only regular files are read, never through
//! a symbolic link, never blocking (a FIFO or a device is not opened), and never more than
//! `max_card_bytes`; every file and folder is created with the configured umask, whatever the
//! process's own, and written atomically (a hidden temporary file, then a rename or a hard link).
//!
//! This module owns how bytes reach the disk; it must not know what a card is or decide what to
//! write.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::backend::{BackendError, Result};
use crate::config::VdirOptions;

/// What reading a card file found.
#[derive(Debug)]
pub enum Found {
    /// The file's bytes.
    Bytes(Vec<u8>),
    /// A regular file larger than `max_card_bytes`: its size, and a version that changes when
    /// it does (size, inode, modification time).
    TooLarge { size: u64, version: String },
    /// Not a regular file (a symbolic link, a FIFO, a device, a folder): what it is.
    NotAFile(&'static str),
    /// Nothing there (any more).
    Missing,
}

/// What a directory entry is, in words, for the notes about entries that are skipped.
pub fn kind_of(t: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a folder"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_file() {
        "a file"
    } else {
        "not a regular file"
    }
}

/// The file layer of one vdir tree.
#[derive(Debug)]
pub struct Files {
    pub opts: VdirOptions,
    tmp_counter: AtomicU64,
}

impl Files {
    pub fn new(opts: VdirOptions) -> Self {
        Files {
            opts,
            tmp_counter: AtomicU64::new(0),
        }
    }

    /// Reads a card file: a regular file only, not through a symbolic link, without blocking,
    /// at most `max_card_bytes`. The entry is looked at before it is opened (a FIFO or device is
    /// never opened), and the opened file is checked again (it may have been swapped between).
    pub fn read(&self, path: &Path) -> Result<Found> {
        let meta = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Found::Missing),
            Err(e) => return Err(BackendError::io(path.display(), e)),
        };
        self.read_listed(path, meta.file_type())
    }

    /// [`Files::read`] of a file whose type a folder listing gave (`DirEntry::file_type`, which
    /// does not follow links and, on most file systems, costs no call).
    pub fn read_listed(&self, path: &Path, listed: fs::FileType) -> Result<Found> {
        if !listed.is_file() {
            return Ok(Found::NotAFile(kind_of(&listed)));
        }
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path);
        let file = match file {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Found::Missing),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Ok(Found::NotAFile("a symbolic link"));
            }
            Err(e) => return Err(BackendError::io(path.display(), e)),
        };
        let meta = file
            .metadata()
            .map_err(|e| BackendError::io(path.display(), e))?;
        if !meta.file_type().is_file() {
            return Ok(Found::NotAFile(kind_of(&meta.file_type())));
        }
        let cap = self.opts.max_card_bytes;
        let too_large = |size: u64| Found::TooLarge {
            size,
            version: format!(
                "{size}-{}-{}.{}",
                meta.ino(),
                meta.mtime(),
                meta.mtime_nsec()
            ),
        };
        if meta.len() > cap {
            return Ok(too_large(meta.len()));
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        file.take(cap + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| BackendError::io(path.display(), e))?;
        if bytes.len() as u64 > cap {
            return Ok(too_large(bytes.len() as u64));
        }
        Ok(Found::Bytes(bytes))
    }

    /// The mode of a new file.
    fn file_mode(&self) -> u32 {
        0o666 & !self.opts.umask
    }

    /// Writes `bytes` to a new hidden temporary file in `dir`, with the mode of `like` (a file
    /// it replaces, which keeps its mode and, where allowed, its owner) or the umask's.
    pub fn write_temp(
        &self,
        dir: &Path,
        bytes: &[u8],
        like: Option<&fs::Metadata>,
    ) -> Result<PathBuf> {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".groupsync-{}-{n}.tmp", std::process::id()));
        let mode = like.map_or(self.file_mode(), |m| m.mode() & 0o7777);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| BackendError::io(tmp.display(), e))?;
        let io = |e| {
            let _ = fs::remove_file(&tmp);
            BackendError::io(tmp.display(), e)
        };
        // The process umask took bits off `mode`: set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io)?;
        if let Some(m) = like {
            // Keeps the owner of a user's file where the process may (as root, or its owner);
            // otherwise the file becomes this process's, with the user's mode.
            let _ = std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()));
        }
        f.write_all(bytes).map_err(io)?;
        Ok(tmp)
    }

    /// Puts a temporary file in place of `path` (atomic).
    pub fn replace(&self, tmp: &Path, path: &Path) -> Result<()> {
        fs::rename(tmp, path).map_err(|e| {
            let _ = fs::remove_file(tmp);
            BackendError::io(path.display(), e)
        })
    }

    /// Links `tmp` to a free `<stem>[-n].vcf` in `dir`, never replacing an existing file, and
    /// returns the stem used. `same` says whether an existing file already holds what `tmp`
    /// holds (an attempt that got this far before it was killed): then that one is used.
    pub fn link_new(
        &self,
        dir: &Path,
        stem: &str,
        tmp: &Path,
        same: &dyn Fn(&Path) -> bool,
    ) -> Result<String> {
        let mut n = 0u32;
        let done = |r| {
            let _ = fs::remove_file(tmp);
            r
        };
        loop {
            let id = if n == 0 {
                stem.to_string()
            } else {
                format!("{stem}-{n}")
            };
            let path = dir.join(format!("{id}.vcf"));
            match fs::hard_link(tmp, &path) {
                Ok(()) => return done(Ok(id)),
                Err(e) if e.kind() == ErrorKind::AlreadyExists && same(&path) => {
                    return done(Ok(id));
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => return done(Err(BackendError::io(path.display(), e))),
            }
        }
    }

    /// Makes a folder with the umask's mode (a set-group-ID bit it inherits is kept).
    /// `AlreadyExists` if something is there.
    pub fn make_dir(&self, dir: &Path) -> std::io::Result<()> {
        let mode = 0o777 & !self.opts.umask;
        fs::DirBuilder::new().mode(mode).create(dir)?;
        let inherited = fs::metadata(dir)?.mode() & 0o2000;
        fs::set_permissions(dir, fs::Permissions::from_mode(mode | inherited))
    }
}

/// What is at a folder's path inside a user's folder: `Ok(true)` a folder, `Ok(false)` nothing,
/// an error for anything else: a symbolic link (never followed: it could lead into another
/// user's folder, or back into the source), a file.
pub fn folder_at(path: &Path) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(BackendError::Invalid(format!(
            "{} is a symbolic link; groupsync does not follow links inside a user's folder (make it a real folder)",
            path.display()
        ))),
        Ok(m) if !m.is_dir() => Err(BackendError::Invalid(format!(
            "{} is {}, not a folder",
            path.display(),
            kind_of(&m.file_type())
        ))),
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(BackendError::io(path.display(), e)),
    }
}

/// True when two paths are one file (the same inode): a hard link a killed move left.
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::symlink_metadata(a), fs::symlink_metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}
