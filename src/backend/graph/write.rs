//! Writing contacts: creates, updates and deletes in `$batch` envelopes (updates and deletes
//! conditional on the change key, `If-Match`), and the move of a user's own contact to the
//! default folder (Graph has no move for contacts: copied with its photo and a mark of where it
//! came from, then deleted; a move cut short is found by that mark and not made twice).
//!
//! A create whose answer was lost (a timeout, a 5xx, a 429) may have been made: the folder is
//! read by the copy's tag before it is sent again, so a copy is never made twice.
//!
//! It must not decide what to write.

use calcard::vcard::VCard;
use reqwest::Method;
use serde_json::Value;

use super::contact::{self, MOVED_NAME, TAG_NAME, property_id};
use super::http::{ApiError, Body, Request};
use super::photo::PhotoPlan;
use super::{DEFAULT_FOLDER_ID, GraphBackend, contacts_path, enc, literal};
use crate::backend::{BackendError, GroupRef, Result, User, Written};
use crate::card::{self, FieldSelection};
use bytes::Bytes;

/// The photos to put after a write: `(index, (contact id, bytes))` of each written contact
/// whose plan puts one.
fn photos_to_put<T>(
    plans: &[PhotoPlan],
    out: &[Result<T>],
    id_of: impl Fn(&T) -> String,
) -> Vec<(usize, (String, Bytes))> {
    plans
        .iter()
        .zip(out)
        .enumerate()
        .filter_map(|(k, (p, r))| match (p, r) {
            (PhotoPlan::Put(_, b), Ok(w)) => Some((k, (id_of(w), b.clone()))),
            _ => None,
        })
        .collect()
}

/// The result of one update: the new change key; a copy deleted to be made anew is a
/// `Conflict`.
fn updated(
    r: std::result::Result<super::http::Answer, ApiError>,
    p: &PhotoPlan,
    what: &str,
) -> Result<String> {
    match (r, p) {
        (Ok(_), PhotoPlan::Remake) => Err(BackendError::Conflict {
            what: format!("{what} (its source photo is gone: made anew)"),
        }),
        (Ok(a), _) => a.body["changeKey"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| BackendError::Invalid(format!("{what}: no change key"))),
        (Err(e), _) => Err(e.to_backend(what)),
    }
}

/// Times a create whose answer was lost is read back and sent again before it is left for the
/// next run.
const SETTLE_ROUNDS: usize = 6;

/// What a write's answer is kept of.
const WRITTEN: &[&str] = &["id", "changeKey"];

/// The `If-Match` of a change key.
fn if_match(etag: &str) -> String {
    format!("W/\"{etag}\"")
}

/// A contact's path in a folder.
fn contact_path(user: &User, folder: &str, id: &str) -> String {
    format!("{}/{}", contacts_path(user, folder), enc(id))
}

/// Results up to and including the first failure that is not one contact's.
fn until_stop<T>(results: Vec<Result<T>>) -> Vec<Result<T>> {
    let mut out = Vec::with_capacity(results.len());
    for r in results {
        let stop = r.as_ref().is_err_and(|e| !e.is_contact_level());
        out.push(r);
        if stop {
            break;
        }
    }
    out
}

impl GraphBackend {
    /// Creates contacts, with their photos; a create whose answer was lost is settled by a
    /// read by tag.
    pub(super) async fn create_all(
        &self,
        user: &User,
        group: &GroupRef,
        cards: &[&VCard],
    ) -> Vec<Result<Written>> {
        let what = |c: &VCard| format!("contact {:?} of {}", card::display_name(c), user.name);
        let mut plans = Vec::with_capacity(cards.len());
        let mut reqs = Vec::with_capacity(cards.len());
        for c in cards {
            let plan = self.photo_for_new(c).await;
            let mut body = contact::new_contact(c, self.cfg.visible_tag);
            if let Some(v) = plan.value() {
                contact::set_photo_value(&mut body, v);
            }
            let path = contacts_path(user, &group.id);
            let create = Request::with_body("contacts.create", Method::POST, path, body);
            reqs.push(create.keeping(WRITTEN));
            plans.push(plan);
        }
        let answers = self.client.batch(Some(&user.id), &reqs).await;
        let mut out = vec![];
        for ((r, c), req) in answers.into_iter().zip(cards).zip(&reqs) {
            out.push(match r {
                Ok(a) => written(&a.body)
                    .ok_or_else(|| BackendError::Invalid(format!("{}: Graph gave no id", what(c)))),
                Err(e) if e.ambiguous => self.settle_create(user, group, c, req, &e).await,
                Err(e) => Err(e.to_backend(&what(c))),
            });
        }
        let photos = photos_to_put(&plans, &out, |w| w.id.clone());
        self.with_photos(user, &group.id, photos, &mut out, |w, etag| w.etag = etag)
            .await;
        until_stop(out)
    }

    /// Puts the photos `items` (`(index in out, (contact id, bytes))`) and sets each
    /// written contact's new change key, or its error.
    async fn with_photos<T>(
        &self,
        user: &User,
        folder: &str,
        items: Vec<(usize, (String, Bytes))>,
        out: &mut [Result<T>],
        set: impl Fn(&mut T, String),
    ) {
        if items.is_empty() {
            return;
        }
        let (at, puts): (Vec<usize>, Vec<(String, Bytes)>) = items.into_iter().unzip();
        for (k, r) in at
            .into_iter()
            .zip(self.put_photos(user, folder, &puts).await)
        {
            match (r, &mut out[k]) {
                (Ok(etag), Ok(w)) => set(w, etag),
                (Err(e), slot) => *slot = Err(e),
                _ => {}
            }
        }
    }

    /// A create that may have been made: the copy found by its tag, else made now (once).
    async fn settle_create(
        &self,
        user: &User,
        group: &GroupRef,
        c: &VCard,
        req: &Request,
        lost: &ApiError,
    ) -> Result<Written> {
        let what = format!("contact {:?} of {}", card::display_name(c), user.name);
        let (Some(tag), Some(source)) = (card::tag_of(c), card::source_of(c)) else {
            // A contact without a tag cannot be told from one made twice: left for next run.
            return Err(BackendError::Transient(format!("{what}: {lost}")));
        };
        let filter = format!(
            "singleValueExtendedProperties/Any(ep: ep/id eq {} and ep/value eq {})",
            literal(&property_id(TAG_NAME)),
            literal(&format!("{tag}:{source}"))
        );
        let path = format!(
            "{}?$filter={}&$select=id,changeKey",
            contacts_path(user, &group.id),
            enc(&filter)
        );
        let find = Request::get("contacts.list", path);
        let mut lost = lost.clone();
        // Each round reads the folder by tag before the create is sent again: never twice.
        for _ in 0..SETTLE_ROUNDS {
            if let Some(after) = lost.retry_after {
                tokio::time::sleep(after.min(std::time::Duration::from_secs(120))).await;
            }
            let found = self
                .client
                .send(Some(&user.id), &find)
                .await
                .map_err(|e| e.to_backend(&what))?;
            if let Some(w) = found.body["value"].get(0).and_then(written) {
                return Ok(w);
            }
            match self.client.send(Some(&user.id), req).await {
                Ok(a) => {
                    return written(&a.body)
                        .ok_or_else(|| BackendError::Invalid(format!("{what}: no id")));
                }
                Err(e) if e.ambiguous => lost = e,
                Err(e) => return Err(e.to_backend(&what)),
            }
        }
        Err(BackendError::Transient(format!("{what}: {lost}")))
    }

    /// Updates copies, each only if its change key is still the one given, and their photos.
    /// Graph cannot take a photo off a contact: a copy whose source photo is gone is deleted
    /// and answered `Conflict`, so the engine reads the folder again and makes it anew.
    pub(super) async fn update_all(
        &self,
        user: &User,
        group: &GroupRef,
        items: &[(&str, &str, &VCard)],
        fields: &FieldSelection,
    ) -> Vec<Result<String>> {
        let mut plans = Vec::with_capacity(items.len());
        let mut reqs = Vec::with_capacity(items.len());
        for (id, etag, c) in items {
            let plan = self.photo_for_update(user, id, c).await;
            reqs.push(match &plan {
                PhotoPlan::Remake => delete_request(user, &group.id, id, etag),
                p => {
                    let mut body = contact::update_body(c, fields, self.cfg.visible_tag);
                    if let Some(v) = p.value() {
                        contact::set_photo_value(&mut body, v);
                    }
                    let path = contact_path(user, &group.id, id);
                    Request::with_body("contacts.update", Method::PATCH, path, body)
                        .header("If-Match", if_match(etag))
                        .keeping(WRITTEN)
                }
            });
            plans.push(plan);
        }
        let answers = self.client.batch(Some(&user.id), &reqs).await;
        let mut out: Vec<Result<String>> = answers
            .into_iter()
            .zip(items.iter().zip(&plans))
            .map(|(r, ((id, ..), p))| updated(r, p, &format!("contact {id} of {}", user.name)))
            .collect();
        let ids: Vec<String> = items.iter().map(|(id, ..)| id.to_string()).collect();
        let photos = photos_to_put(&plans, &out, |_| String::new())
            .into_iter()
            .map(|(k, (_, b))| (k, (ids[k].clone(), b)))
            .collect();
        self.with_photos(user, &group.id, photos, &mut out, |e, etag| *e = etag)
            .await;
        until_stop(out)
    }

    /// Deletes contacts, each only if its change key is still the one given; one already gone
    /// is deleted.
    pub(super) async fn delete_all(
        &self,
        user: &User,
        group: &GroupRef,
        items: &[(&str, &str)],
    ) -> Vec<Result<()>> {
        let reqs: Vec<Request> = items
            .iter()
            .map(|(id, etag)| delete_request(user, &group.id, id, etag))
            .collect();
        let answers = self.client.batch(Some(&user.id), &reqs).await;
        let out = answers
            .into_iter()
            .zip(items)
            .map(|(r, (id, _))| match r {
                Ok(_) => Ok(()),
                Err(e) if e.status == 404 => Ok(()),
                Err(e) => Err(e.to_backend(&format!("contact {id} of {}", user.name))),
            })
            .collect();
        until_stop(out)
    }

    /// Moves a user's own contacts to the default folder, one by one.
    pub(super) async fn move_all_to_default(
        &self,
        user: &User,
        group: &GroupRef,
        items: &[(&str, &str)],
    ) -> Vec<Result<()>> {
        let mut out = vec![];
        for (id, etag) in items {
            let r = self.move_one(user, group, id, etag).await;
            let stop = r.as_ref().is_err_and(|e| !e.is_contact_level());
            out.push(r);
            if stop {
                break;
            }
        }
        out
    }

    /// One move: read it (refused if changed), find or make its copy in the default folder,
    /// carry its photo, delete it.
    async fn move_one(&self, user: &User, group: &GroupRef, id: &str, etag: &str) -> Result<()> {
        let what = format!("contact {id} of {}", user.name);
        let fail = |e: ApiError| e.to_backend(&what);
        let path = contact_path(user, &group.id, id);
        let c = match self
            .client
            .send(Some(&user.id), &Request::get("contacts.get", path.clone()))
            .await
        {
            Ok(a) => a.body,
            Err(e) if e.status == 404 => return Ok(()),
            Err(e) => return Err(fail(e)),
        };
        if c["changeKey"].as_str() != Some(etag) {
            return Err(BackendError::Conflict { what });
        }
        let new_id = match self.moved_before(user, id).await.map_err(fail)? {
            Some(n) => n,
            None => {
                let body = contact::moved_copy(&c, id);
                let req = Request::with_body(
                    "contacts.create",
                    Method::POST,
                    contacts_path(user, DEFAULT_FOLDER_ID),
                    body,
                );
                let a = self.client.send(Some(&user.id), &req).await.map_err(fail)?;
                a.body["id"].as_str().unwrap_or_default().to_string()
            }
        };
        self.carry_photo(user, &path, &contact_path(user, DEFAULT_FOLDER_ID, &new_id))
            .await
            .map_err(fail)?;
        match self
            .client
            .send(Some(&user.id), &delete_request(user, &group.id, id, etag))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.status == 404 => Ok(()),
            Err(e) => Err(fail(e)),
        }
    }

    /// The id of the copy an earlier, cut-short move of `id` made in the default folder.
    async fn moved_before(
        &self,
        user: &User,
        id: &str,
    ) -> std::result::Result<Option<String>, ApiError> {
        let filter = format!(
            "singleValueExtendedProperties/Any(ep: ep/id eq {} and ep/value eq {})",
            literal(&property_id(MOVED_NAME)),
            literal(id)
        );
        let path = format!(
            "{}?$filter={}&$select=id",
            contacts_path(user, DEFAULT_FOLDER_ID),
            enc(&filter)
        );
        let a = self
            .client
            .send(Some(&user.id), &Request::get("contacts.list", path))
            .await?;
        Ok(a.body["value"][0]["id"].as_str().map(str::to_string))
    }

    /// Copies a contact's photo (if it has one) to another contact.
    async fn carry_photo(
        &self,
        user: &User,
        from: &str,
        to: &str,
    ) -> std::result::Result<(), ApiError> {
        let get = Request::get("photo.get", format!("{from}/photo/$value"));
        let photo = match self.client.send(Some(&user.id), &get).await {
            Ok(a) if !a.bytes.is_empty() => a.bytes,
            Ok(_) => return Ok(()),
            Err(e) if e.status == 404 => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut put = Request::get("photo.put", format!("{to}/photo/$value"));
        put.method = Method::PUT;
        put.body = Some(Body::Bytes(photo, "image/jpeg"));
        self.client.send(Some(&user.id), &put).await.map(|_| ())
    }
}

/// A conditional delete.
fn delete_request(user: &User, folder: &str, id: &str, etag: &str) -> Request {
    let mut r = Request::get("contacts.delete", contact_path(user, folder, id))
        .header("If-Match", if_match(etag));
    r.method = Method::DELETE;
    r
}

/// The id and change key of a contact Graph answered with.
fn written(c: &Value) -> Option<Written> {
    Some(Written {
        id: c["id"].as_str()?.to_string(),
        etag: c["changeKey"].as_str()?.to_string(),
    })
}
