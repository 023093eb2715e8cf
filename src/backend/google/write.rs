//! Writing contacts through the batch endpoints: creates and updates 200 a call, deletes 500,
//! moves to My Contacts 1,000 a call; photos one call each. A batch create whose answer was
//! lost is never sent again blindly: the user's contacts are read back and matched by tag.
//!
//! It must not decide what to write (the engine's plan does).

use bytes::Bytes;
use calcard::vcard::VCard;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

use super::calls::{Ask, api, contact_errors, status_error};
use super::http;
use super::{CONTACT_SOURCES, GoogleBackend, MY_CONTACTS, person};
use crate::backend::{BackendError, GroupRef, Result, User, Written};
use crate::card::FieldSelection;

/// Contact writes.
impl GoogleBackend {
    /// After a batch create whose answer was lost or partial: which of `cards` now exist,
    /// found by their machine tag (`<tag>:<source>`) among the user's contacts.
    pub(super) async fn find_created(
        &self,
        user: &User,
        cards: &[&VCard],
    ) -> Result<HashMap<String, Written>> {
        let wanted: HashMap<String, ()> = cards
            .iter()
            .filter_map(|c| person::tag_of_card(c))
            .map(|(t, s)| (format!("{t}:{s}"), ()))
            .collect();
        let mut found = HashMap::new();
        self.list_connections(user, "clientData,metadata", &mut |p| {
            if let Some((t, s)) = person::tag_info(&p).machine {
                let key = format!("{t}:{s}");
                if wanted.contains_key(&key) {
                    found.insert(
                        key,
                        Written {
                            id: p["resourceName"].as_str().unwrap_or("").to_string(),
                            etag: p["etag"].as_str().unwrap_or("").to_string(),
                        },
                    );
                }
            }
        })
        .await?;
        Ok(found)
    }

    /// Creates up to 200 contacts with batchCreateContacts. When the answer is lost (a 5xx or a
    /// dropped connection after sending) or a batch fails in part, the user's contacts are read
    /// back and matched by tag; only the ones confirmed absent are sent again (up to 3 times).
    /// Returns what was created, in order, or what was created before the first failure.
    pub(super) async fn create_chunk(
        &self,
        user: &User,
        group: &GroupRef,
        chunk: &[&VCard],
    ) -> std::result::Result<Vec<Written>, (Vec<Written>, BackendError)> {
        let mut done: HashMap<usize, Written> = HashMap::new();
        let mut last_err = None;
        for attempt in 0..3u32 {
            let todo: Vec<usize> = (0..chunk.len()).filter(|i| !done.contains_key(i)).collect();
            if todo.is_empty() {
                break;
            }
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
            }
            let body = self.create_body(group, todo.iter().map(|i| chunk[*i]));
            match self.send_create(user, &body).await {
                Ok(created) => {
                    for (n, w) in created.into_iter().enumerate().take(todo.len()) {
                        if let Some(w) = w {
                            done.insert(todo[n], w);
                        }
                    }
                    if done.len() < chunk.len() && last_err.is_none() {
                        last_err = Some(BackendError::Invalid(format!(
                            "batchCreateContacts for {} answered without every created contact",
                            user.name
                        )));
                    }
                }
                Err(e) => match self.read_back(user, chunk, &todo, e, &mut done).await {
                    Next::Again(err) => last_err = Some(err),
                    Next::Stop(err) => {
                        last_err = Some(err);
                        break;
                    }
                },
            }
        }
        in_order(done, chunk.len(), last_err, user)
    }

    /// A batch create's body, written out as text into one buffer: the fields are JSON
    /// already, no tree is built.
    fn create_body<'c>(&self, group: &GroupRef, cards: impl Iterator<Item = &'c VCard>) -> Bytes {
        let mut body = b"{\"contacts\":[".to_vec();
        for (n, card) in cards.enumerate() {
            if n > 0 {
                body.push(b',');
            }
            body.extend_from_slice(b"{\"contactPerson\":");
            person::write_new_contact_json(card, &group.id, self.cfg.visible_tag, &mut body);
            body.push(b'}');
        }
        body.extend_from_slice(b"],\"readMask\":\"metadata\",\"sources\":[\"");
        body.extend_from_slice(CONTACT_SOURCES.as_bytes());
        body.extend_from_slice(b"\"]}");
        Bytes::from(body)
    }

    /// Sends one batch create (never retried blindly) and reads its answer into borrowed
    /// parts, not a JSON tree: only names and etags are kept, in the order sent.
    async fn send_create(
        &self,
        user: &User,
        body: &Bytes,
    ) -> std::result::Result<Vec<Option<Written>>, http::ApiError> {
        let email = self.email(user);
        let call = self.people_call(
            &email,
            Ask::new(
                "people.batchCreateContacts",
                Method::POST,
                "people:batchCreateContacts",
            )
            .once()
            .raw(body),
        );
        let text = self.client.send_text(&call).await?;
        let answer: person::CreateAnswer = if text.trim().is_empty() {
            person::CreateAnswer::default()
        } else {
            serde_json::from_str(&text).map_err(|_| http::bad_body(call.name))?
        };
        Ok(answer
            .created
            .into_iter()
            .map(|c| {
                c.person.map(|p| Written {
                    id: p.resource_name.into_owned(),
                    etag: p.etag.into_owned(),
                })
            })
            .collect())
    }

    /// After a batch create failed: unless it was refused as a whole (nothing was created),
    /// the contacts sent are looked up by tag, and those found are done. An item the API
    /// refused will be refused again, so the chunk stops there.
    async fn read_back(
        &self,
        user: &User,
        chunk: &[&VCard],
        todo: &[usize],
        e: http::ApiError,
        done: &mut HashMap<usize, Written>,
    ) -> Next {
        let errors = contact_errors(&e);
        if !e.ambiguous && errors.is_none() {
            return Next::Stop(api(e, &format!("creating contacts of {}", user.name)));
        }
        tracing::info!(dest = %user.name, "batch create answered {e}; reading back by tag");
        let wanted: Vec<&VCard> = todo.iter().map(|i| chunk[*i]).collect();
        let found = match self.find_created(user, &wanted).await {
            Ok(f) => f,
            Err(read) => return Next::Stop(read),
        };
        let key = |c: &VCard| person::tag_of_card(c).map(|(t, s)| format!("{t}:{s}"));
        let mut refused = None;
        for (n, i) in todo.iter().enumerate() {
            if let Some(w) = key(chunk[*i]).and_then(|k| found.get(&k)) {
                done.insert(*i, w.clone());
            } else if let Some(s) = errors.as_ref().and_then(|m| m.get(&n.to_string())) {
                refused.get_or_insert_with(|| {
                    status_error(s, &format!("contact {} of {}", i, user.name))
                });
            }
        }
        match refused {
            Some(r) => Next::Stop(r),
            None => Next::Again(BackendError::Transient(format!(
                "creating contacts of {}: {e}",
                user.name
            ))),
        }
    }

    /// Sets (or removes) a copy's photo and takes its new etag. A failure is logged, not
    /// returned: the contact itself was written, and the next run sees the photo missing and
    /// tries again.
    pub(super) async fn give_photo(&self, user: &User, w: &mut Written, url: Option<&str>) {
        match self.set_photo(user, &w.id, url).await {
            Ok(etag) => {
                w.etag = etag;
                let key = (user.id.clone(), w.id.clone());
                let mut now = crate::mutex::lock(&self.photo_now);
                match url {
                    Some(u) => now.insert(key, u.to_string()),
                    None => now.remove(&key),
                };
            }
            Err(e) => {
                tracing::warn!(dest = %user.name, contact = %w.id, "photo not copied: {e}; the next run tries again")
            }
        }
    }

    /// One batchUpdateContacts call; a result per contact.
    pub(super) async fn update_batch(
        &self,
        user: &User,
        chunk: &[&(String, Vec<u8>, bool)],
        mask: &[&str],
    ) -> Vec<(String, Result<String>)> {
        let body = update_body(chunk, mask);
        let email = self.email(user);
        let call = self.people_call(
            &email,
            Ask::new(
                "people.batchUpdateContacts",
                Method::POST,
                "people:batchUpdateContacts",
            )
            .raw(&body),
        );
        match self.client.send(&call).await {
            Ok(v) => {
                let mut repairs = crate::mutex::lock(&self.repairs);
                chunk
                    .iter()
                    .map(|(id, _, _)| {
                        repairs.remove(&(user.id.clone(), id.clone()));
                        let etag = v
                            .get("updateResult")
                            .and_then(|r| r.get(id.as_str()))
                            .and_then(|r| r.get("person"))
                            .and_then(|p| p.get("etag"))
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string();
                        (id.clone(), Ok(etag))
                    })
                    .collect()
            }
            Err(e) => update_failed(user, chunk, e),
        }
    }

    pub(super) async fn create_all(
        &self,
        user: &User,
        group: &GroupRef,
        cards: &[&VCard],
    ) -> Vec<Result<Written>> {
        let mut out = Vec::with_capacity(cards.len());
        for chunk in cards.chunks(200) {
            let (mut done, err) = match self.create_chunk(user, group, chunk).await {
                Ok(done) => (done, None),
                Err((done, err)) => (done, Some(err)),
            };
            // Photos, one call each (the People API has no batch for them).
            for (w, card) in done.iter_mut().zip(chunk) {
                if let Some(url) = person::photo_of_card(card) {
                    self.give_photo(user, w, Some(&url)).await;
                }
            }
            out.extend(done.into_iter().map(Ok));
            if let Some(e) = err {
                out.push(Err(e));
                return out;
            }
        }
        out
    }

    pub(super) async fn update_all(
        &self,
        user: &User,
        items: &[(&str, &str, &VCard)],
        fields: &FieldSelection,
    ) -> Vec<Result<String>> {
        let shape = UpdateShape::of(fields);
        let bodies = self.update_bodies(user, items, &shape);
        let mut results: HashMap<String, Result<String>> = HashMap::new();
        for extra in [false, true] {
            let mut mask = shape.managed.clone();
            if extra {
                mask.push("userDefined");
            }
            let group: Vec<&(String, Vec<u8>, bool)> =
                bodies.iter().filter(|b| b.2 == extra).collect();
            for chunk in group.chunks(200) {
                let done = self.update_batch(user, chunk, &mask).await;
                let stop = done.iter().any(|(_, r)| r.is_err());
                results.extend(done);
                if stop {
                    break;
                }
            }
        }
        if shape.photos {
            self.update_photos(user, items, &mut results).await;
        }
        updated_in_order(items, results, user)
    }

    /// Each contact's body (JSON text); `true` when it needs userDefined written although the
    /// job does not manage it (its visible tag is put back, the user's other entries kept).
    fn update_bodies(
        &self,
        user: &User,
        items: &[(&str, &str, &VCard)],
        shape: &UpdateShape,
    ) -> Vec<(String, Vec<u8>, bool)> {
        let repairs = crate::mutex::lock(&self.repairs);
        let mut bodies = Vec::with_capacity(items.len());
        for (id, etag, card) in items {
            let mut p = person::field_entries(card, &shape.managed);
            let mut extra = false;
            if self.cfg.visible_tag
                && let Some((tag, _)) = person::tag_of_card(card)
            {
                let ud = if shape.manages_ud {
                    p.remove("userDefined")
                } else {
                    repairs.get(&(user.id.clone(), id.to_string())).map(|r| {
                        r.user_defined
                            .iter()
                            .map(|e| e.to_string().into())
                            .collect()
                    })
                };
                if let Some(mut ud) = ud {
                    ud.push(person::key_value_json(person::TAG_KEY, &tag).into());
                    p.insert("userDefined", ud);
                    extra = !shape.manages_ud;
                }
            }
            if shape.photos
                && let Some((tag, source)) = person::tag_of_card(card)
            {
                let machine = format!("{tag}:{source}");
                let entries = person::copy_client_data(card, &machine)
                    .map(|(key, value)| person::key_value_json(key, value).into())
                    .collect();
                p.insert("clientData", entries);
            }
            let mut body = Vec::with_capacity(1024);
            person::write_update_json(&p, id, etag, &mut body);
            bodies.push((id.to_string(), body, extra));
        }
        bodies
    }

    /// Photos that changed, one call each, on the contacts updated.
    async fn update_photos(
        &self,
        user: &User,
        items: &[(&str, &str, &VCard)],
        results: &mut HashMap<String, Result<String>>,
    ) {
        for (id, _, card) in items {
            let want = person::photo_of_card(card);
            let key = (user.id.clone(), id.to_string());
            let have = crate::mutex::lock(&self.photo_now).get(&key).cloned();
            if want != have
                && let Some(Ok(etag)) = results.get_mut(*id)
            {
                let mut w = Written {
                    id: id.to_string(),
                    etag: etag.clone(),
                };
                self.give_photo(user, &mut w, want.as_deref()).await;
                *etag = w.etag;
            }
        }
    }

    pub(super) async fn delete_all(&self, user: &User, items: &[(&str, &str)]) -> Vec<Result<()>> {
        let mut out = Vec::with_capacity(items.len());
        for chunk in items.chunks(500) {
            let names: Vec<&str> = chunk.iter().map(|(id, _)| *id).collect();
            let body = json!({ "resourceNames": names });
            match self
                .as_user(
                    user,
                    Ask::new(
                        "people.batchDeleteContacts",
                        Method::POST,
                        "people:batchDeleteContacts",
                    )
                    .body(&body),
                )
                .await
            {
                Ok(_) => out.extend(chunk.iter().map(|_| Ok(()))),
                Err(e) => {
                    out.push(Err(api(e, &format!("deleting contacts of {}", user.name))));
                    return out;
                }
            }
        }
        out
    }

    /// Group memberships have no etag precondition: the etags are not checked (a membership
    /// change never alters the contact itself).
    pub(super) async fn move_all_to_default(
        &self,
        user: &User,
        group: &GroupRef,
        items: &[(&str, &str)],
    ) -> Vec<Result<()>> {
        let ids: Vec<&str> = items.iter().map(|(id, _)| *id).collect();
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(1000) {
            // Into My Contacts first, so no contact is ever left without a group.
            let r = match self.modify_members(user, MY_CONTACTS, chunk, &[]).await {
                Ok(_) => self.modify_members(user, &group.id, &[], chunk).await,
                Err(e) => Err(e),
            };
            match r {
                Ok(_) => out.extend(chunk.iter().map(|_| Ok(()))),
                Err(e) => {
                    out.push(Err(api(
                        e,
                        &format!("moving contacts of {} to My Contacts", user.name),
                    )));
                    return out;
                }
            }
        }
        out
    }
}

/// What an update writes: the People fields the job manages (with clientData when photos are
/// managed: it says which source photo a copy has).
struct UpdateShape {
    managed: Vec<&'static str>,
    manages_ud: bool,
    photos: bool,
}

impl UpdateShape {
    fn of(fields: &FieldSelection) -> Self {
        let mut managed = person::managed_fields(fields);
        let manages_ud = managed.contains(&"userDefined");
        let photos = person::manages_photos(fields);
        if photos {
            managed.push("clientData");
        }
        UpdateShape {
            managed,
            manages_ud,
            photos,
        }
    }
}

/// Update results in input order, ending at the first failure.
fn updated_in_order(
    items: &[(&str, &str, &VCard)],
    mut results: HashMap<String, Result<String>>,
    user: &User,
) -> Vec<Result<String>> {
    let mut out = Vec::with_capacity(items.len());
    for (id, _, _) in items {
        match results.remove(*id) {
            Some(r) => {
                let failed = r.is_err();
                out.push(r);
                if failed {
                    break;
                }
            }
            None => {
                out.push(Err(BackendError::Transient(format!(
                    "contact {id} of {} was not updated (an earlier batch failed)",
                    user.name
                ))));
                break;
            }
        }
    }
    out
}

/// A batch update's body, written out as text into one buffer: the bodies are JSON already, no
/// tree is built.
fn update_body(chunk: &[&(String, Vec<u8>, bool)], mask: &[&str]) -> Bytes {
    let mut body = b"{\"contacts\":{".to_vec();
    for (n, (id, p, _)) in chunk.iter().enumerate() {
        if n > 0 {
            body.push(b',');
        }
        serde_json::to_writer(&mut body, id).expect("a string serialises into a vector");
        body.push(b':');
        body.extend_from_slice(p);
    }
    body.extend_from_slice(b"},\"updateMask\":");
    serde_json::to_writer(&mut body, &mask.join(",")).expect("a string serialises");
    body.extend_from_slice(b",\"readMask\":\"metadata\",\"sources\":[\"");
    body.extend_from_slice(CONTACT_SOURCES.as_bytes());
    body.extend_from_slice(b"\"]}");
    Bytes::from(body)
}

/// Each contact's result when a batch update failed. With per-contact errors, the others were
/// updated and their new etags are unknown (the next run compares content instead). Refused as
/// a whole: the first contact carries the error, the rest were not tried.
fn update_failed(
    user: &User,
    chunk: &[&(String, Vec<u8>, bool)],
    e: http::ApiError,
) -> Vec<(String, Result<String>)> {
    if let Some(errors) = contact_errors(&e) {
        return chunk
            .iter()
            .map(|(id, _, _)| {
                let r = match errors.get(id.as_str()) {
                    Some(s) => Err(status_error(s, &format!("contact {id} of {}", user.name))),
                    None => Ok(String::new()),
                };
                (id.clone(), r)
            })
            .collect();
    }
    let msg = e.to_string();
    let what = format!("updating contacts of {}", user.name);
    chunk
        .iter()
        .enumerate()
        .map(|(i, (id, _, _))| {
            let err = if i == 0 {
                api(e.clone(), &what)
            } else {
                BackendError::Transient(format!("not updated: the batch failed ({msg})"))
            };
            (id.clone(), Err(err))
        })
        .collect()
}

/// What a chunk of creates does after a failed attempt.
enum Next {
    /// Send what is still missing again.
    Again(BackendError),
    /// Stop: what is missing would fail again.
    Stop(BackendError),
}

/// What a chunk created, in order, up to the first contact that was not; then the error.
/// Later ones that did get created are not reported: the next run finds them by tag.
fn in_order(
    mut done: HashMap<usize, Written>,
    len: usize,
    last_err: Option<BackendError>,
    user: &User,
) -> std::result::Result<Vec<Written>, (Vec<Written>, BackendError)> {
    let mut written = vec![];
    for i in 0..len {
        match done.remove(&i) {
            Some(w) => written.push(w),
            None => {
                let err = last_err.unwrap_or_else(|| {
                    BackendError::Transient(format!("creating contacts of {}", user.name))
                });
                return Err((written, err));
            }
        }
    }
    Ok(written)
}
