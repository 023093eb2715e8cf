//! Reading a group folder: every card file in name order (stale temporary files swept on the
//! way), one file's cards, and cards by id.
//!
//! It must not change a file other than a stale temporary one.

use std::fs;
use std::path::Path;

use super::VdirBackend;
use super::files::{Found, folder_at};
use super::parts::CardFile;
use crate::backend::{BackendError, Contact, GroupRead, GroupRef, Read, Result, User};
use crate::card::{self};

/// True for a file (any case of `.vcf`) that may be a card; hidden files never are.
pub(super) fn card_file_name(name: &str) -> bool {
    !name.starts_with('.') && name.len() > 4 && name.to_ascii_lowercase().ends_with(".vcf")
}

/// Removes a temporary file a process killed mid-write left, once it is an hour old (no live run
/// owns it then).
pub(super) fn sweep_stale_temp(entry: &fs::DirEntry) {
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

/// Reads.
impl VdirBackend {
    /// The contacts of one card file of a listing, as a read hands them over; what is not a card
    /// is noted.
    pub(super) fn read_file(
        &self,
        path: &Path,
        listed: fs::FileType,
        stem: &str,
    ) -> Result<Vec<Contact>> {
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

    /// Reads every card file (tags only or whole: the file is read either way); no tokens.
    pub(super) async fn read_members(
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
        for (i, (name, listed)) in names.into_iter().enumerate() {
            // Read without awaiting: the runtime gets a turn now and then, and with it a caller
            // that acts on what it was handed (a removal trashes what it reads as it goes).
            if i > 0 && i % crate::backend::YIELD_EVERY == 0 {
                tokio::task::yield_now().await;
            }
            for c in self.read_file(&dir.join(&name), listed, &name[..name.len() - 4])? {
                sink(Read::Contact(c));
            }
        }
        Ok(None)
    }

    pub(super) async fn fetch_by_ids(
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
}
