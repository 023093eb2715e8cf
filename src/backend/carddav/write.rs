//! Writing cards: PUT `If-None-Match: *` to create (a new slug if the name is taken, after
//! checking the book does not already hold the same card), PUT `If-Match` to update, DELETE
//! `If-Match`, and a move to the default book as a copy there then a delete here.
//! A 412 is a `Conflict`: the engine reads again and re-plans.
//!
//! It must not decide what to write.

use calcard::vcard::VCard;
use reqwest::StatusCode;

use super::CarddavBackend;
use super::groups::slug;
use crate::backend::{BackendError, GroupRef, Result, User, Written};
use crate::card::{self, FieldSelection};

/// Contact writes (the batch writes are made of these, see `one_by_one_writes`).
impl CarddavBackend {
    pub(super) fn href(group: &GroupRef, id: &str) -> String {
        format!("{}{}", group.id, id)
    }

    pub(super) async fn put(
        &self,
        href: &str,
        card: &VCard,
        condition: (&str, String),
    ) -> Result<std::result::Result<String, StatusCode>> {
        let (status, headers, text) = self
            .send(
                "PUT",
                href,
                &[
                    ("Content-Type", "text/vcard; charset=utf-8".into()),
                    (condition.0, condition.1),
                ],
                Some(card::to_text(card)),
            )
            .await?;
        match status.as_u16() {
            200..=299 => match headers.get("etag").and_then(|v| v.to_str().ok()) {
                Some(e) => Ok(Ok(e.to_string())),
                None => Ok(Ok(self.etag_of(href).await?)),
            },
            409 | 412 => Ok(Err(status)),
            // The server will not store this card (malformed for it, too large, …): this one
            // contact, never the destination.
            400 | 413 | 415 | 422 => Err(BackendError::Refused(format!(
                "PUT {href}: the server refused the card (HTTP {status}): {}",
                text.chars().take(200).collect::<String>()
            ))),
            _ => Err(Self::unexpected(&format!("PUT {href}"), status, &text)),
        }
    }

    /// True when `group` holds this very card where `create_in` would have put it (a move made
    /// before, cut short before the original was deleted).
    pub(super) async fn holds_same(&self, group: &GroupRef, card: &VCard) -> Result<bool> {
        let stem = slug(card.uid().unwrap_or("contact"));
        let hrefs: Vec<String> = (0..3)
            .map(|n| match n {
                0 => Self::href(group, &format!("{stem}.vcf")),
                n => Self::href(group, &format!("{stem}-{n}.vcf")),
            })
            .collect();
        let all = FieldSelection::All;
        let want = card::managed_digest(card, &all);
        Ok(self.multiget(group, &hrefs).await?.iter().any(|c| {
            c.card
                .as_ref()
                .is_ok_and(|c| c.uid() == card.uid() && card::managed_digest(c, &all) == want)
        }))
    }

    pub(super) async fn create_in(&self, group: &GroupRef, card: &VCard) -> Result<Written> {
        let stem = slug(card.uid().unwrap_or("contact"));
        for n in 0..100 {
            let id = if n == 0 {
                format!("{stem}.vcf")
            } else {
                format!("{stem}-{n}.vcf")
            };
            let href = Self::href(group, &id);
            match self.put(&href, card, ("If-None-Match", "*".into())).await? {
                Ok(etag) => return Ok(Written { id, etag }),
                Err(StatusCode::PRECONDITION_FAILED) => {
                    // The name is taken. If it is this very card (a retried create that had
                    // succeeded), it is ours; otherwise try another name.
                    if let Some(existing) = self.get(group, &id).await?
                        && let Ok(c) = &existing.card
                        && card::tag_of(c).is_some()
                        && card::tag_of(c) == card::tag_of(card)
                        && card::source_of(c) == card::source_of(card)
                        && card::source_of(c).is_some()
                    {
                        return Ok(Written {
                            id,
                            etag: existing.etag,
                        });
                    }
                }
                // A card with the same UID under another name (RFC 6352 no-uid-conflict).
                Err(_) => {
                    return Err(BackendError::AlreadyExists {
                        what: format!(
                            "a contact with UID {} in {}",
                            card.uid().unwrap_or("?"),
                            group.id
                        ),
                    });
                }
            }
        }
        Err(BackendError::AlreadyExists {
            what: format!("{stem}.vcf in {}", group.id),
        })
    }

    pub(super) async fn create_one(
        &self,
        _user: &User,
        group: &GroupRef,
        card: &VCard,
    ) -> Result<Written> {
        self.create_in(group, card).await
    }

    pub(super) async fn update_one(
        &self,
        _user: &User,
        group: &GroupRef,
        id: &str,
        etag: &str,
        card: &VCard,
        fields: &FieldSelection,
    ) -> Result<String> {
        let existing = self
            .get(group, id)
            .await?
            .ok_or_else(|| BackendError::NotFound {
                what: Self::href(group, id),
            })?;
        if existing.etag != etag {
            return Err(BackendError::Conflict {
                what: Self::href(group, id),
            });
        }
        let existing = existing
            .card
            .map_err(|e| BackendError::Invalid(format!("{}: {e}", Self::href(group, id))))?;
        let merged = card::merge_copy(&existing, card, fields);
        match self
            .put(
                &Self::href(group, id),
                &merged,
                ("If-Match", etag.to_string()),
            )
            .await?
        {
            Ok(new_etag) => Ok(new_etag),
            Err(_) => Err(BackendError::Conflict {
                what: Self::href(group, id),
            }),
        }
    }

    pub(super) async fn delete_one(
        &self,
        _user: &User,
        group: &GroupRef,
        id: &str,
        etag: &str,
    ) -> Result<()> {
        let href = Self::href(group, id);
        let (status, _, text) = self
            .send("DELETE", &href, &[("If-Match", etag.to_string())], None)
            .await?;
        match status.as_u16() {
            200..=299 | 404 => Ok(()),
            412 => Err(BackendError::Conflict { what: href }),
            _ => Err(Self::unexpected(&format!("DELETE {href}"), status, &text)),
        }
    }

    pub(super) async fn move_one(
        &self,
        user: &User,
        group: &GroupRef,
        id: &str,
        etag: &str,
    ) -> Result<()> {
        let default = match self.find_default(user).await? {
            Some(g) => g,
            None => self.make_group(user, &self.cfg.default_collection).await?,
        };
        if default.id == group.id {
            return Ok(());
        }
        let contact = self
            .get(group, id)
            .await?
            .ok_or_else(|| BackendError::NotFound {
                what: Self::href(group, id),
            })?;
        if contact.etag != etag {
            return Err(BackendError::Conflict {
                what: Self::href(group, id),
            });
        }
        let card = contact
            .card
            .map_err(|e| BackendError::Invalid(format!("{}: {e}", Self::href(group, id))))?;
        // Copy first, then delete: a failure in between leaves the contact in both books, and
        // the move made again finds its copy there.
        match self.create_in(&default, &card).await {
            Ok(_) => {}
            // Its UID is in the default book: this card, if a previous attempt got this far;
            // else another card of the user's, and this one stays where it is.
            Err(BackendError::AlreadyExists { what }) => {
                if !self.holds_same(&default, &card).await? {
                    return Err(BackendError::Refused(format!(
                        "{} cannot move to {:?}: {what} is another card there; it is left in {:?}",
                        Self::href(group, id),
                        default.name,
                        group.name
                    )));
                }
            }
            Err(e) => return Err(e),
        }
        self.delete_one(user, group, id, &contact.etag).await
    }
}
