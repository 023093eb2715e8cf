//! The single-contact writes the batch writes are made of (see `one_by_one_writes`): etags
//! change on every write, a stale etag is a `Conflict`, one UID per group.
//!
//! It must not decide what to write.

use calcard::vcard::VCard;

use super::{DEFAULT_GROUP, MemGroup, MemoryBackend, user_mut};
use crate::backend::{BackendError, GroupRef, Result, User, Written};
use crate::card::{self, FieldSelection};

/// Contact writes.
impl MemoryBackend {
    pub(super) async fn create_one(
        &self,
        user: &User,
        group: &GroupRef,
        card: &VCard,
    ) -> Result<Written> {
        self.check_write()?;
        self.check_refused(card)?;
        let id = self.fresh("c");
        let etag = self.fresh("e");
        let stored = self.stored_form(card.clone());
        self.with_group(user, group, |g| {
            // As a CardDAV server (RFC 6352 no-uid-conflict): one UID per address book.
            if let Some(uid) = card.uid()
                && g.contacts.values().any(|(_, c)| c.uid() == Some(uid))
            {
                return Err(BackendError::AlreadyExists {
                    what: format!("a contact with UID {uid}"),
                });
            }
            g.contacts.insert(id.clone(), (etag.clone(), stored));
            Ok(Written { id, etag })
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
        self.check_write()?;
        self.check_refused(card)?;
        let new_etag = self.fresh("e");
        self.with_group(user, group, |g| {
            let slot = g
                .contacts
                .get_mut(id)
                .ok_or_else(|| BackendError::NotFound {
                    what: format!("contact {id}"),
                })?;
            if slot.0 != etag {
                return Err(BackendError::Conflict {
                    what: format!("contact {id}"),
                });
            }
            let merged = self.stored_form(card::merge_copy(&slot.1, card, fields));
            *slot = (new_etag.clone(), merged);
            Ok(new_etag)
        })
    }

    pub(super) async fn delete_one(
        &self,
        user: &User,
        group: &GroupRef,
        id: &str,
        etag: &str,
    ) -> Result<()> {
        self.check_write()?;
        self.with_group(user, group, |g| {
            match g.contacts.get(id) {
                None => return Ok(()),
                Some((e, _)) if e != etag => {
                    return Err(BackendError::Conflict {
                        what: format!("contact {id}"),
                    });
                }
                _ => {}
            }
            g.contacts.remove(id);
            Ok(())
        })?;
        self.tombstone(&user.id, id);
        Ok(())
    }

    pub(super) async fn move_one(
        &self,
        user: &User,
        group: &GroupRef,
        id: &str,
        etag: &str,
    ) -> Result<()> {
        self.check_write()?;
        let mut users = self.users.lock().unwrap();
        let u = user_mut(&mut users, user)?;
        let default_id = match u.groups.iter().find(|(_, g)| g.name == DEFAULT_GROUP) {
            Some((id, _)) => id.clone(),
            None => {
                let gid = self.fresh("g");
                u.groups.insert(
                    gid.clone(),
                    MemGroup {
                        name: DEFAULT_GROUP.into(),
                        ..Default::default()
                    },
                );
                gid
            }
        };
        if default_id == group.id {
            return Ok(());
        }
        let Some(entry) = u.groups.get_mut(&group.id).and_then(|g| {
            let (current, _) = g.contacts.get(id)?;
            if current != etag {
                return Some(Err(BackendError::Conflict {
                    what: format!("contact {id}"),
                }));
            }
            g.contacts.remove(id).map(Ok)
        }) else {
            return Err(BackendError::NotFound {
                what: format!("contact {id}"),
            });
        };
        let entry = entry?;
        u.groups
            .get_mut(&default_id)
            .unwrap()
            .contacts
            .insert(id.to_string(), entry);
        Ok(())
    }
}
