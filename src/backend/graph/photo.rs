//! Contact photos: a source photo read once per run (each fetched by one request however many
//! destinations want it, and kept while there is room), put on copies with `PUT …/photo/$value`
//! in `$batch` envelopes, and what photo each copy had when last read. A copy records the
//! source photo it was given and a digest of its bytes (`gSyncPhoto` = `<marker>|<digest>`): a
//! source contact edited without a new photo gets its copies relabelled, not a photo put again.
//! Graph cannot delete a contact's photo: the update of a copy whose source photo is gone
//! deletes the copy and answers `Conflict`, so the engine reads the folder again and makes the
//! copy anew, without a photo.
//!
//! It must not decide which copy gets which photo: the card's photo marker says.

use bytes::Bytes;
use reqwest::Method;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::contact::photo_source;
use super::http::{Body, Request};
use super::{GraphBackend, contacts_path, enc};
use crate::backend::{BackendError, Result, User};

/// Source photo bytes kept at once (a photo is read once, then put on every destination's copy).
const CACHE_BYTES: usize = 64 << 20;
/// Graph's limit on a photo upload.
const MAX_PHOTO: usize = 4 << 20;

/// What a copy had when last read: its photo marker and the digest of the bytes it was given.
pub type PhotoNow = Option<(String, Option<String>)>;

type Fetch = Arc<tokio::sync::OnceCell<Option<Bytes>>>;

/// What the backend remembers of photos during a run.
#[derive(Default)]
pub struct Photos {
    /// (user id, contact id) of copies read with a photo → the photo they had (a copy read
    /// without one is not kept: an update does the same for it as for a copy not read).
    now: Mutex<HashMap<(String, String), PhotoNow>>,
    /// Source photo marker → its bytes once read (`None`: it has none now), and the bytes held.
    cache: Mutex<(HashMap<String, Fetch>, usize)>,
}

impl Photos {
    /// Remembers the photo a copy has (from a read).
    pub fn now(&self, user: &str, id: &str, now: PhotoNow) {
        crate::mutex::lock(&self.now).insert((user.to_string(), id.to_string()), now);
    }

    /// The photo a copy had when last read, and forgets it (an update changes it). `None`: not
    /// read in this run.
    pub fn take(&self, user: &str, id: &str) -> Option<PhotoNow> {
        crate::mutex::lock(&self.now).remove(&(user.to_string(), id.to_string()))
    }

    /// The cell a source photo is read into, shared by every destination that wants it.
    fn cell(&self, marker: &str) -> Fetch {
        let mut cache = crate::mutex::lock(&self.cache);
        if cache.1 > CACHE_BYTES {
            *cache = Default::default();
        }
        cache.0.entry(marker.to_string()).or_default().clone()
    }

    fn held(&self, n: usize) {
        crate::mutex::lock(&self.cache).1 += n;
    }
}

/// The digest a copy records of the photo bytes it was given.
pub fn digest(bytes: &[u8]) -> String {
    crate::card::hex_digest(bytes)
}

impl GraphBackend {
    /// The bytes of the source photo a marker names, read once a run.
    pub(super) async fn source_photo(&self, marker: &str) -> Result<Option<Bytes>> {
        let Some((owner, id)) = photo_source(marker) else {
            return Ok(None);
        };
        let cell = self.photos.cell(marker);
        let got = cell
            .get_or_try_init(|| async {
                let path = format!("/users/{owner}/contacts/{}/photo/$value", enc(id));
                match self
                    .client
                    .send(Some(owner), &Request::get("photo.get", path))
                    .await
                {
                    Ok(a) if !a.bytes.is_empty() => {
                        self.photos.held(a.bytes.len());
                        Ok(Some(a.bytes))
                    }
                    Ok(_) => Ok(None),
                    Err(e) if e.status == 404 => Ok(None),
                    Err(e) => Err(e.to_backend("a source contact's photo")),
                }
            })
            .await?;
        Ok(got.clone())
    }

    /// Puts photos on contacts of a folder (`(id, bytes)`), then reads their change keys (a
    /// photo changes the contact's); each result is the contact's change key now.
    pub(super) async fn put_photos(
        &self,
        user: &User,
        folder: &str,
        items: &[(String, Bytes)],
    ) -> Vec<Result<String>> {
        let mut out: Vec<Option<Result<String>>> = items.iter().map(|_| None).collect();
        let mut puts = vec![];
        for (k, (id, b)) in items.iter().enumerate() {
            if b.len() > MAX_PHOTO {
                out[k] = Some(Err(BackendError::Refused(format!(
                    "the source photo is {} bytes, over Graph's 4 MB",
                    b.len()
                ))));
                continue;
            }
            let path = format!("{}/{}/photo/$value", contacts_path(user, folder), enc(id));
            let mut r = Request::get("photo.put", path);
            r.method = Method::PUT;
            r.body = Some(Body::Bytes(b.clone(), "image/jpeg"));
            puts.push((k, r));
        }
        let reqs: Vec<Request> = puts.iter().map(|(_, r)| r.clone()).collect();
        for ((k, _), r) in puts
            .iter()
            .zip(self.client.batch(Some(&user.id), &reqs).await)
        {
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
        for (k, r) in todo
            .iter()
            .zip(self.client.batch(Some(&user.id), &gets).await)
        {
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

/// What a write does about a copy's photo.
pub enum PhotoPlan {
    /// Nothing: the copy has the photo it should (or none, as it should).
    Keep,
    /// The source photo is the same bytes under a new marker: `gSyncPhoto` set to this value.
    Relabel(String),
    /// `gSyncPhoto` set to this value, and these bytes put.
    Put(String, Bytes),
    /// The copy has a photo its source no longer has: deleted, to be made anew.
    Remake,
}

impl PhotoPlan {
    /// The `gSyncPhoto` value the write sets, if any.
    pub fn value(&self) -> Option<&str> {
        match self {
            PhotoPlan::Relabel(v) | PhotoPlan::Put(v, _) => Some(v),
            _ => None,
        }
    }
}

impl GraphBackend {
    /// The photo a new copy gets: its source's, if the source has one now. A source photo that
    /// cannot be read now is left for the next run (the copy then differs from its source).
    pub(super) async fn photo_for_new(&self, card: &calcard::vcard::VCard) -> PhotoPlan {
        let Some(want) = super::contact::photo_of(card) else {
            return PhotoPlan::Keep;
        };
        match self.source_photo(&want).await {
            Ok(Some(b)) => PhotoPlan::Put(format!("{want}|{}", digest(&b)), b),
            Ok(None) => PhotoPlan::Keep,
            Err(e) => {
                tracing::warn!("{e}; the copy is made without its photo, which follows next run");
                PhotoPlan::Keep
            }
        }
    }

    /// What an update does about a copy's photo, from the photo its card wants and the one the
    /// copy had when read (a copy not read in this run gets the photo put, to be sure).
    pub(super) async fn photo_for_update(
        &self,
        user: &User,
        id: &str,
        card: &calcard::vcard::VCard,
    ) -> PhotoPlan {
        let want = super::contact::photo_of(card);
        let now = self.photos.take(&user.id, id);
        let bytes = match &want {
            Some(w) => match self.source_photo(w).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!("{e}; the copy's photo follows next run");
                    return PhotoPlan::Keep;
                }
            },
            None => None,
        };
        let had = matches!(now, Some(Some(_)));
        match (want, bytes, now) {
            (Some(w), Some(_), Some(Some((m, _)))) if m == w => PhotoPlan::Keep,
            (Some(w), Some(b), now) => {
                let d = digest(&b);
                let value = format!("{w}|{d}");
                match now {
                    Some(Some((_, Some(given)))) if given == d => PhotoPlan::Relabel(value),
                    _ => PhotoPlan::Put(value, b),
                }
            }
            _ if had => PhotoPlan::Remake,
            _ => PhotoPlan::Keep,
        }
    }
}
