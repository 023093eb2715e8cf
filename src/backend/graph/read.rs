//! Reading a folder: whole (1,000 contacts a page, the tag properties expanded), by id (in
//! `$batch` envelopes), and by its contacts delta, whose deltaLink is the change token.
//!
//! A delta names what changed, with the change key; only contacts the engine does not know as
//! it wrote them are fetched whole (a delta cannot expand the tag). Removed contacts, and those
//! moved out of the folder, are handed to `gone`. An expired delta (410, `syncStateNotFound`,
//! `resyncRequired`) is `Delta::Expired`: the engine reads the folder whole.
//!
//! It must not write.

use serde_json::Value;

use super::contact::{self, SELECT_TAGS};
use super::http::{ApiError, Request};
use super::{DEFAULT_FOLDER_ID, GraphBackend, contacts_path, enc};
use crate::backend::{
    BackendError, Contact, Delta, Depth, GroupRead, GroupRef, Known, KnownCopies, Read, Result,
    User,
};
use crate::card;

/// A page of a folder listing, each contact left as its JSON text.
#[derive(serde::Deserialize)]
struct Page {
    value: Vec<Box<serde_json::value::RawValue>>,
    #[serde(rename = "@odata.nextLink")]
    next: Option<String>,
}

/// Contacts per page of a folder listing.
const LIST_PAGE: usize = 1000;
/// Contacts per page of a delta (Graph answers at most about 200 contacts a delta page).
const DELTA_PAGE: usize = 200;

impl GraphBackend {
    /// A contact of `user`'s as the engine takes it; the photo a copy has now is remembered
    /// for its update.
    fn contact_of(&self, user: &User, c: &Value) -> Contact {
        let card = contact::to_card(c, self.cfg.visible_tag, &user.id);
        let id = c["id"].as_str().unwrap_or_default().to_string();
        // Only a copy with a photo is remembered: an update treats a copy read without one as
        // one not read (both get the source's photo put), and a run reads tens of thousands.
        if card::tag_of(&card).is_some()
            && let Some(m) = contact::photo_of(&card)
        {
            let now = Some((m, contact::photo_digest(c)));
            self.photos.now(&user.id, &id, now);
        }
        Contact {
            id,
            etag: c["changeKey"].as_str().unwrap_or_default().to_string(),
            card: Ok(card),
        }
    }

    /// The query of a read at `depth`: the properties and the tag.
    fn read_query(depth: Depth) -> String {
        let select = match depth {
            Depth::Whole => contact::select_whole(),
            Depth::TagsOnly => SELECT_TAGS.to_string(),
        };
        format!(
            "$select={}&$expand={}",
            enc(&select),
            enc(&contact::expand_tags())
        )
    }

    /// Reads a folder (see `Backend::read_group`). With a token asked for, the folder's delta
    /// is walked first (ids only) to its deltaLink, so the token is valid from before the read.
    pub(super) async fn read_members(
        &self,
        user: &User,
        group: Option<&GroupRef>,
        how: GroupRead<'_>,
        sink: &mut (dyn FnMut(Read) + Send),
    ) -> Result<Option<String>> {
        let Some(group) = group else {
            return Ok(None);
        };
        let token = match how.token {
            true => Some(self.delta_link(user, &group.id).await?),
            false => None,
        };
        let what = format!("folder {:?} of {}", group.name, user.name);
        let mut next = Some(format!(
            "{}?$top={LIST_PAGE}&{}",
            contacts_path(user, &group.id),
            Self::read_query(how.depth)
        ));
        while let Some(path) = next.take() {
            let mut req = Request::get("contacts.list", path);
            req.raw_answer = true;
            let a = self
                .client
                .send(Some(&user.id), &req)
                .await
                .map_err(|e| e.to_backend(&what))?;
            // A page of up to 1,000 contacts is read one contact at a time, never as one tree.
            let page: Page = serde_json::from_slice(&a.bytes)
                .map_err(|e| BackendError::Invalid(format!("{what}: a page Graph sent: {e}")))?;
            for (i, raw) in page.value.iter().enumerate() {
                // A page is handed over in parts, the runtime given a turn between them: a
                // caller acts on what it was handed (a removal trashes it as the read goes).
                if i > 0 && i % crate::backend::YIELD_EVERY == 0 {
                    tokio::task::yield_now().await;
                }
                let Ok(c) = serde_json::from_str::<Value>(raw.get()) else {
                    continue;
                };
                let (id, etag) = (
                    c["id"].as_str().unwrap_or(""),
                    c["changeKey"].as_str().unwrap_or(""),
                );
                match how.known {
                    Some(k) if k(id, etag) => sink(Read::Known {
                        id: id.to_string(),
                        etag: etag.to_string(),
                    }),
                    _ => sink(Read::Contact(self.contact_of(user, &c))),
                }
            }
            next = match page.next {
                Some(l) => Some(self.client.path_of(&l).ok_or_else(|| {
                    BackendError::Invalid(format!("Graph handed a link to another host: {l}"))
                })?),
                None => None,
            };
        }
        Ok(token)
    }

    /// The path of a link Graph handed out, refused if it points at another host.
    pub(super) fn next_link(&self, body: &Value, key: &str) -> Result<Option<String>> {
        match body[key].as_str() {
            None => Ok(None),
            Some(l) => self.client.path_of(l).map(Some).ok_or_else(|| {
                BackendError::Invalid(format!("Graph handed a link to another host: {l}"))
            }),
        }
    }

    /// Walks a folder's delta from the start to its deltaLink, reading ids and change keys
    /// (the change key is what later rounds of this token tell groupsync's own writes by).
    async fn delta_link(&self, user: &User, folder: &str) -> Result<String> {
        let first = format!("{}/delta?$select=id,changeKey", contacts_path(user, folder));
        let mut next = first;
        loop {
            let a = self
                .delta_page(user, &next)
                .await
                .map_err(|e| e.to_backend(&format!("contacts delta of {}", user.name)))?;
            if let Some(d) = a["@odata.deltaLink"].as_str() {
                return Ok(d.to_string());
            }
            next = self.next_link(&a, "@odata.nextLink")?.ok_or_else(|| {
                BackendError::Invalid("a delta page with neither nextLink nor deltaLink".into())
            })?;
        }
    }

    async fn delta_page(&self, user: &User, path: &str) -> std::result::Result<Value, ApiError> {
        let req = delta_request(path);
        self.client.send(Some(&user.id), &req).await.map(|a| a.body)
    }

    /// The first page of a rerun's delta, read with the mailbox's top-level folders in one
    /// envelope: `None` when the folder is no longer one of them. A folder a user deleted sits
    /// in Deleted Items, and its delta goes on as if nothing had happened: the token is void,
    /// and the engine's full read makes the folder again.
    async fn first_delta_page(
        &self,
        user: &User,
        path: &str,
        folder: &str,
    ) -> std::result::Result<Option<Value>, ApiError> {
        if folder == DEFAULT_FOLDER_ID {
            return self.delta_page(user, path).await.map(Some);
        }
        let folders = Request::get(
            "folders.list",
            format!("/users/{}/contactFolders?$select=id&$top=1000", user.id),
        );
        let reqs = [delta_request(path), folders];
        let mut answers = self.client.batch(Some(&user.id), &reqs).await.into_iter();
        let (Some(page), Some(listed)) = (answers.next(), answers.next()) else {
            unreachable!("a batch answers each of its requests")
        };
        let (page, listed) = (page?.body, listed?.body);
        let top = listed["value"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|f| f["id"].as_str() == Some(folder));
        // Past 1,000 folders (a next page), the folder is taken to be there.
        Ok((top || listed.get("@odata.nextLink").is_some()).then_some(page))
    }

    /// Reads contacts of a folder by id, in `$batch` envelopes; missing ones are left out.
    pub(super) async fn fetch_by_ids(
        &self,
        user: &User,
        group: &GroupRef,
        ids: &[String],
        sink: &mut (dyn FnMut(Contact) + Send),
    ) -> Result<()> {
        let query = Self::read_query(Depth::Whole);
        let reqs: Vec<Request> = ids
            .iter()
            .map(|id| {
                let path = format!("{}/{}?{query}", contacts_path(user, &group.id), enc(id));
                Request::get("contacts.get", path)
            })
            .collect();
        for r in self.client.batch(Some(&user.id), &reqs).await {
            match r {
                Ok(a) => sink(self.contact_of(user, &a.body)),
                Err(e) if e.status == 404 => {}
                Err(e) => return Err(e.to_backend(&format!("contacts of {}", user.name))),
            }
        }
        Ok(())
    }

    /// Reads what changed in a folder since `token` (see `Backend::read_changes`).
    pub(super) async fn read_delta(
        &self,
        user: &User,
        token: &str,
        group_id: &str,
        known: &dyn KnownCopies,
        sink: &mut (dyn FnMut(Contact) + Send),
        gone: &mut (dyn FnMut(String) + Send),
    ) -> Result<Delta> {
        let Some(mut next) = self.client.path_of(token) else {
            return Ok(Delta::Expired);
        };
        let mut wanted = vec![];
        let mut first = true;
        let link = loop {
            let read = if std::mem::take(&mut first) {
                self.first_delta_page(user, &next, group_id).await
            } else {
                self.delta_page(user, &next).await.map(Some)
            };
            let page = match read {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(Delta::Expired),
                Err(e) if expired(&e) => return Ok(Delta::Expired),
                Err(e) => return Err(e.to_backend(&format!("contacts delta of {}", user.name))),
            };
            let items = page["value"].as_array().cloned().unwrap_or_default();
            known.page(items.len());
            for c in &items {
                let id = c["id"].as_str().unwrap_or_default();
                if c.get("@removed").is_some() {
                    if known.known(id, "") != Known::No {
                        gone(id.to_string());
                    }
                } else if known.known(id, c["changeKey"].as_str().unwrap_or("")) != Known::AsWritten
                    && !wanted.iter().any(|w| w == id)
                {
                    wanted.push(id.to_string());
                }
            }
            if let Some(d) = page["@odata.deltaLink"].as_str() {
                break d.to_string();
            }
            match self.next_link(&page, "@odata.nextLink")? {
                Some(n) => next = n,
                None => return Ok(Delta::Expired),
            }
        };
        if wanted.is_empty() {
            known.last_call();
            tokio::task::yield_now().await;
        }
        let group = GroupRef {
            id: group_id.to_string(),
            ..Default::default()
        };
        let mut found = std::collections::HashSet::new();
        self.fetch_by_ids(user, &group, &wanted, &mut |c| {
            found.insert(c.id.clone());
            sink(c)
        })
        .await?;
        for id in wanted.into_iter().filter(|id| !found.contains(id)) {
            if known.known(&id, "") != Known::No {
                gone(id);
            }
        }
        Ok(Delta::Read { token: link })
    }
}

/// A delta page's request.
fn delta_request(path: &str) -> Request {
    Request::get("contacts.delta", path.to_string())
        .header("Prefer", format!("odata.maxpagesize={DELTA_PAGE}"))
}

/// The delta token is no longer honoured: read the folder whole.
fn expired(e: &ApiError) -> bool {
    e.status == 410
        || e.is("syncStateNotFound")
        || e.is("resyncRequired")
        || e.is("SyncStateInvalid")
}
