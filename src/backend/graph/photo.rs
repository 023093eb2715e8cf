//! Contact photos: a source photo read once per run (kept in a small cache while copies are
//! written), put on copies with `PUT …/photo/$value` in `$batch` chains, and the photo each copy
//! had when last read (so an update knows whether its photo must change). Graph cannot delete a
//! contact's photo: the update of a copy whose source photo is gone deletes the copy and answers
//! `Conflict`, so the engine reads the folder again and makes the copy anew, without a photo.
//!
//! It must not decide which copy gets which photo: the card's photo marker says.

use bytes::Bytes;
use reqwest::Method;
use std::collections::HashMap;
use std::sync::Mutex;

use super::contact::photo_source;
use super::http::{Body, Request};
use super::{GraphBackend, contacts_path, enc};
use crate::backend::{BackendError, Result, User};

/// Source photos kept at once (a photo is read once, then put on every destination's copy).
const CACHE_LIMIT: usize = 64;
/// Graph's limit on a photo upload.
const MAX_PHOTO: usize = 4 << 20;

/// What the backend remembers of photos during a run.
#[derive(Default)]
pub struct Photos {
    /// (user id, contact id) of copies read → the photo marker they had.
    now: Mutex<HashMap<(String, String), Option<String>>>,
    /// Source photo marker → its bytes (`None`: it has none now).
    cache: Mutex<HashMap<String, Option<Bytes>>>,
}

impl Photos {
    /// Remembers the photo a copy has (from a read).
    pub fn now(&self, user: &str, id: &str, marker: Option<String>) {
        crate::mutex::lock(&self.now).insert((user.to_string(), id.to_string()), marker);
    }

    /// The photo a copy had when last read, and forgets it (an update changes it). `None`: not
    /// read in this run.
    pub fn take(&self, user: &str, id: &str) -> Option<Option<String>> {
        crate::mutex::lock(&self.now).remove(&(user.to_string(), id.to_string()))
    }
}

impl GraphBackend {
    /// The bytes of the source photo a marker names, read once.
    async fn source_photo(&self, marker: &str) -> Result<Option<Bytes>> {
        if let Some(b) = crate::mutex::lock(&self.photos.cache).get(marker) {
            return Ok(b.clone());
        }
        let Some((owner, id)) = photo_source(marker) else {
            return Ok(None);
        };
        let path = format!("/users/{owner}/contacts/{}/photo/$value", enc(id));
        let bytes = match self
            .client
            .send(Some(owner), &Request::get("photo.get", path))
            .await
        {
            Ok(a) if !a.bytes.is_empty() => Some(a.bytes),
            Ok(_) => None,
            Err(e) if e.status == 404 => None,
            Err(e) => return Err(e.to_backend("a source contact's photo")),
        };
        let mut cache = crate::mutex::lock(&self.photos.cache);
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(marker.to_string(), bytes.clone());
        Ok(bytes)
    }

    /// Puts photos on contacts of a folder (`(id, marker)`), then reads their change keys
    /// (a photo changes the contact's); each result is the contact's change key now.
    pub(super) async fn put_photos(
        &self,
        user: &User,
        folder: &str,
        items: &[(String, String)],
    ) -> Vec<Result<String>> {
        let mut puts = vec![];
        let mut out: Vec<Option<Result<String>>> = items.iter().map(|_| None).collect();
        for (k, (id, marker)) in items.iter().enumerate() {
            match self.source_photo(marker).await {
                Ok(Some(b)) if b.len() > MAX_PHOTO => {
                    out[k] = Some(Err(BackendError::Refused(format!(
                        "the source photo is {} bytes, over Graph's 4 MB",
                        b.len()
                    ))))
                }
                Ok(Some(b)) => {
                    let path = format!("{}/{}/photo/$value", contacts_path(user, folder), enc(id));
                    let mut r = Request::get("photo.put", path);
                    r.method = Method::PUT;
                    r.body = Some(Body::Bytes(b, "image/jpeg"));
                    puts.push((k, r));
                }
                Ok(None) => {}
                Err(e) => out[k] = Some(Err(e)),
            }
        }
        let reqs: Vec<Request> = puts.iter().map(|(_, r)| r.clone()).collect();
        for ((k, _), r) in puts.iter().zip(self.client.batch(&user.id, &reqs).await) {
            if let Err(e) = r {
                out[*k] = Some(Err(
                    e.to_backend(&format!("photo of contact {}", items[*k].0))
                ));
            }
        }
        let todo: Vec<usize> = (0..items.len()).filter(|k| out[*k].is_none()).collect();
        let gets: Vec<Request> = todo
            .iter()
            .map(|k| {
                let path = format!(
                    "{}/{}?$select=id,changeKey",
                    contacts_path(user, folder),
                    enc(&items[*k].0)
                );
                Request::get("contacts.get", path)
            })
            .collect();
        for (k, r) in todo.iter().zip(self.client.batch(&user.id, &gets).await) {
            out[*k] = Some(match r {
                Ok(a) => a.body["changeKey"]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| BackendError::Invalid("a contact without a change key".into())),
                Err(e) => Err(e.to_backend(&format!("contact {}", items[*k].0))),
            });
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(BackendError::Invalid("photo not put".into()))))
            .collect()
    }
}
