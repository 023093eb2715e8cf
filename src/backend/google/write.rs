//! Writing contacts through the batch endpoints: creates and updates 200 a call, deletes 500,
//! moves to My Contacts 1,000 a call; photos one call each. A batch create whose answer was
//! lost is never sent again blindly: the user's contacts are read back and matched by tag.
//!
//! It must not decide what to write (the engine's plan does).

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
        let key = |c: &VCard| person::tag_of_card(c).map(|(t, s)| format!("{t}:{s}"));
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
            // Written out as text into one buffer: the fields are JSON already, no tree is built.
            let mut body = b"{\"contacts\":[".to_vec();
            for (n, i) in todo.iter().enumerate() {
                if n > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(b"{\"contactPerson\":");
                person::write_new_contact_json(
                    chunk[*i],
                    &group.id,
                    self.cfg.visible_tag,
                    &mut body,
                );
                body.push(b'}');
            }
            body.extend_from_slice(b"],\"readMask\":\"metadata\",\"sources\":[\"");
            body.extend_from_slice(CONTACT_SOURCES.as_bytes());
            body.extend_from_slice(b"\"]}");
            let body = bytes::Bytes::from(body);
            let email = self.email(user);
            let call = self.people_call(
                &email,
                Ask::new(
                    "people.batchCreateContacts",
                    Method::POST,
                    "people:batchCreateContacts",
                )
                .once()
                .raw(&body),
            );
            match self.client.send_text(&call).await.and_then(|text| {
                // Read into borrowed parts, not a JSON tree: only names and etags are kept.
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
                    .collect::<Vec<_>>())
            }) {
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
                Err(e) => {
                    let errors = contact_errors(&e);
                    if !e.ambiguous && errors.is_none() {
                        // Refused as a whole: nothing was created.
                        last_err = Some(api(e, &format!("creating contacts of {}", user.name)));
                        break;
                    }
                    // Some or all may exist: look them up by tag before anything is sent again.
                    tracing::info!(dest = %user.name, "batch create answered {e}; reading back by tag");
                    let wanted: Vec<&VCard> = todo.iter().map(|i| chunk[*i]).collect();
                    let found = match self.find_created(user, &wanted).await {
                        Ok(f) => f,
                        Err(read) => {
                            last_err = Some(read);
                            break;
                        }
                    };
                    let mut refused = None;
                    for (n, i) in todo.iter().enumerate() {
                        if let Some(w) = key(chunk[*i]).and_then(|k| found.get(&k)) {
                            done.insert(*i, w.clone());
                        } else if let Some(s) = errors.as_ref().and_then(|m| m.get(&n.to_string()))
                        {
                            refused.get_or_insert_with(|| {
                                status_error(s, &format!("contact {} of {}", i, user.name))
                            });
                        }
                    }
                    if let Some(r) = refused {
                        // An item the API refused will be refused again: stop here.
                        last_err = Some(r);
                        break;
                    }
                    last_err = Some(BackendError::Transient(format!(
                        "creating contacts of {}: {e}",
                        user.name
                    )));
                }
            }
        }
        let mut written = vec![];
        for i in 0..chunk.len() {
            match done.remove(&i) {
                Some(w) => written.push(w),
                None => {
                    let err = last_err.unwrap_or_else(|| {
                        BackendError::Transient(format!("creating contacts of {}", user.name))
                    });
                    // Later ones that did get created are not reported: the next run finds
                    // them by tag.
                    return Err((written, err));
                }
            }
        }
        Ok(written)
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
        // Written out as text into one buffer: the bodies are JSON already, no tree is built.
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
        let body = bytes::Bytes::from(body);
        let email = self.email(user);
        let what = |id: &str| format!("contact {id} of {}", user.name);
        match self
            .client
            .send(
                &self.people_call(
                    &email,
                    Ask::new(
                        "people.batchUpdateContacts",
                        Method::POST,
                        "people:batchUpdateContacts",
                    )
                    .raw(&body),
                ),
            )
            .await
        {
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
            Err(e) => match contact_errors(&e) {
                // The others were updated; their new etags are unknown (the next run compares
                // content instead).
                Some(errors) => chunk
                    .iter()
                    .map(|(id, _, _)| {
                        let r = match errors.get(id.as_str()) {
                            Some(s) => Err(status_error(s, &what(id))),
                            None => Ok(String::new()),
                        };
                        (id.clone(), r)
                    })
                    .collect(),
                None => {
                    // Refused as a whole: the first contact carries the error, the rest were
                    // not tried.
                    let msg = e.to_string();
                    let what = format!("updating contacts of {}", user.name);
                    let mut out = vec![];
                    for (i, (id, _, _)) in chunk.iter().enumerate() {
                        let err = if i == 0 {
                            api(e.clone(), &what)
                        } else {
                            BackendError::Transient(format!(
                                "not updated: the batch failed ({msg})"
                            ))
                        };
                        out.push((id.clone(), Err(err)));
                    }
                    out
                }
            },
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
        let mut managed = person::managed_fields(fields);
        let manages_ud = managed.contains(&"userDefined");
        // With photos, the copy's clientData says which source photo it has.
        let photos = person::manages_photos(fields);
        if photos {
            managed.push("clientData");
        }
        // Each contact's body (JSON text); `true` when it needs userDefined written although
        // the job does not manage it (its visible tag is put back, the user's other entries
        // kept).
        let mut bodies: Vec<(String, Vec<u8>, bool)> = Vec::with_capacity(items.len());
        {
            let repairs = crate::mutex::lock(&self.repairs);
            for (id, etag, card) in items {
                let mut p = person::field_entries(card, &managed);
                let mut extra = false;
                if self.cfg.visible_tag
                    && let Some((tag, _)) = person::tag_of_card(card)
                {
                    let ud = if manages_ud {
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
                        extra = !manages_ud;
                    }
                }
                if photos && let Some((tag, source)) = person::tag_of_card(card) {
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
        }
        let mut results: HashMap<String, Result<String>> = HashMap::new();
        for extra in [false, true] {
            let mut mask = managed.clone();
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
        // Photos that changed, one call each, on the contacts updated.
        if photos {
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
        // In input order, ending at the first failure.
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
