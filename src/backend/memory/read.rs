//! Reading the in-memory store: a group whole (after the configured latency), a change token's
//! delta, and contacts by id.
//!
//! It must not change a contact.

use std::sync::atomic::Ordering;

use super::MemoryBackend;
use crate::backend::{
    BackendError, Contact, Delta, GroupRead, GroupRef, Known, KnownCopies, Read, Result, User,
};

/// Reads.
impl MemoryBackend {
    /// Every contact of a group, after the configured latency.
    pub(super) async fn scan(
        &self,
        user: &User,
        group: &GroupRef,
        sink: &mut (dyn FnMut(Contact) + Send),
    ) -> Result<()> {
        self.check_read()?;
        let latency = *self.latency.lock().unwrap();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let contacts: Vec<Contact> = self.with_group(user, group, |g| {
            Ok(g.contacts
                .iter()
                .map(|(id, (etag, card))| Contact {
                    id: id.clone(),
                    etag: etag.clone(),
                    card: Ok(card.clone()),
                })
                .collect())
        })?;
        let cut = match &*self.read_cut.lock().unwrap() {
            Some((u, n)) if *u == user.id => *n,
            _ => usize::MAX,
        };
        for (i, c) in contacts.into_iter().enumerate() {
            // As a provider reading without awaiting does (see `Backend::read_group`).
            if i > 0 && i % crate::backend::YIELD_EVERY == 0 {
                tokio::task::yield_now().await;
            }
            if i == cut {
                return Err(BackendError::Transient(
                    "connection lost mid-read (injected)".into(),
                ));
            }
            sink(c);
        }
        Ok(())
    }

    /// With change tokens, known copies are handed by id and etag (the memory store sees
    /// etags first, as Google's listing does).
    pub(super) async fn read_members(
        &self,
        user: &User,
        group: Option<&GroupRef>,
        how: GroupRead<'_>,
        sink: &mut (dyn FnMut(Read) + Send),
    ) -> Result<Option<String>> {
        self.check_read()?;
        let tokens = self.tokens_on.load(Ordering::Relaxed);
        let token = (tokens && how.token).then(|| self.take_token(&user.id));
        let known = how.known.filter(|_| tokens);
        if let Some(g) = group {
            self.scan(user, g, &mut |c: Contact| match known {
                Some(k) if k(&c.id, &c.etag) => sink(Read::Known {
                    id: c.id,
                    etag: c.etag,
                }),
                _ => sink(Read::Contact(c)),
            })
            .await?;
        }
        Ok(token)
    }

    pub(super) async fn read_delta(
        &self,
        user: &User,
        token: &str,
        group_id: &str,
        known: &dyn KnownCopies,
        sink: &mut (dyn FnMut(Contact) + Send),
        gone: &mut (dyn FnMut(String) + Send),
    ) -> Result<Delta> {
        self.check_read()?;
        let Some((deleted_then, then)) = self.tokens.lock().unwrap().get(token).cloned() else {
            return Ok(Delta::Expired);
        };
        let next = self.take_token(&user.id);
        let now = self.positions(&user.id);
        let changed: Vec<(&String, &(String, String))> = now
            .iter()
            .filter(|(id, at)| then.get(*id) != Some(*at))
            .collect();
        let deleted: Vec<String> = self.deleted.lock().unwrap()[deleted_then..]
            .iter()
            .filter(|(u, id)| u == &user.id && !now.contains_key(id))
            .map(|(_, id)| id.clone())
            .collect();
        // One page: the whole delta.
        known.page(changed.len() + deleted.len());
        for (id, (gid, etag)) in changed {
            let k = known.known(id, etag);
            if gid != group_id {
                if k != Known::No {
                    gone(id.clone());
                }
            } else if k != Known::AsWritten {
                let card = self.with_group(
                    user,
                    &GroupRef {
                        id: gid.clone(),
                        ..Default::default()
                    },
                    |g| Ok(g.contacts.get(id).map(|(_, c)| c.clone())),
                )?;
                if let Some(card) = card {
                    sink(Contact {
                        id: id.clone(),
                        etag: etag.clone(),
                        card: Ok(card),
                    });
                }
            }
        }
        for id in deleted {
            if known.known(&id, "") != Known::No {
                gone(id);
            }
        }
        Ok(Delta::Read { token: next })
    }

    pub(super) async fn fetch_by_ids(
        &self,
        user: &User,
        group: &GroupRef,
        ids: &[String],
        sink: &mut (dyn FnMut(Contact) + Send),
    ) -> Result<()> {
        self.check_read()?;
        self.with_group(user, group, |g| {
            for id in ids {
                if let Some((etag, card)) = g.contacts.get(id) {
                    sink(Contact {
                        id: id.clone(),
                        etag: etag.clone(),
                        card: Ok(card.clone()),
                    });
                }
            }
            Ok(())
        })
    }
}
