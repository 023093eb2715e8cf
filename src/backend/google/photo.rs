//! Contact photos: the People API has no batch call for them, so a copy's photo is set with
//! updateContactPhoto (or removed with deleteContactPhoto) one contact at a time, after the
//! batch create or update of its fields. The source photo is downloaded once per run and kept in
//! a small cache (photos are a few kB to a few hundred kB each).
//!
//! A copy records the source photo it was given in its `gSyncPhoto` clientData, so a rerun can
//! tell "has the source's photo" from "has none" without downloading anything. It must not
//! decide which contacts get a photo (the plan does).

use base64::Engine;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

use super::calls::{Ask, api};
use super::{CONTACT_SOURCES, GoogleBackend};
use crate::backend::{BackendError, Result, User};

/// Photos kept in memory at most (the cache is emptied when it is full).
const CACHE_LIMIT: usize = 64;
/// The largest photo copied; Google stores contact photos far smaller.
const MAX_PHOTO: usize = 10 << 20;

/// Downloaded source photos, by URL.
#[derive(Default)]
pub(super) struct PhotoCache(std::sync::Mutex<HashMap<String, Arc<Vec<u8>>>>);

impl GoogleBackend {
    /// The bytes of a source photo (from the cache, or downloaded).
    async fn photo_bytes(&self, url: &str) -> Result<Arc<Vec<u8>>> {
        if let Some(b) = crate::mutex::lock(&self.photos.0).get(url) {
            return Ok(b.clone());
        }
        let what = || format!("the source photo {url}");
        let resp = self.client.http.get(url).send().await.map_err(|e| {
            BackendError::Transient(format!(
                "{}: {}",
                what(),
                crate::backend::with_causes(&e.without_url())
            ))
        })?;
        if !resp.status().is_success() {
            let s = resp.status();
            return Err(if s.is_server_error() || s.as_u16() == 429 {
                BackendError::Transient(format!("{}: HTTP {s}", what()))
            } else {
                BackendError::Invalid(format!("{}: HTTP {s}", what()))
            });
        }
        let bytes = resp.bytes().await.map_err(|e| {
            BackendError::Transient(format!(
                "{}: {}",
                what(),
                crate::backend::with_causes(&e.without_url())
            ))
        })?;
        if bytes.len() > MAX_PHOTO {
            return Err(BackendError::Invalid(format!(
                "{} is {} bytes, more than {MAX_PHOTO}",
                what(),
                bytes.len()
            )));
        }
        let bytes = Arc::new(bytes.to_vec());
        let mut cache = crate::mutex::lock(&self.photos.0);
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(url.to_string(), bytes.clone());
        Ok(bytes)
    }

    /// Gives a copy the source photo at `url` (or, with `None`, removes its photo); returns the
    /// copy's new etag.
    pub(super) async fn set_photo(
        &self,
        user: &User,
        rn: &str,
        url: Option<&str>,
    ) -> Result<String> {
        let what = format!("the photo of contact {rn} of {}", user.name);
        let v = match url {
            Some(url) => {
                let bytes = self.photo_bytes(url).await?;
                let body = json!({
                    "photoBytes": base64::engine::general_purpose::STANDARD.encode(bytes.as_slice()),
                    "personFields": "metadata",
                    "sources": [CONTACT_SOURCES],
                });
                self.as_user(user, Ask::new("people.updateContactPhoto", Method::PATCH, format!("{rn}:updateContactPhoto")).body(&body))
                .await
            }
            None => {
                self.as_user(user, Ask::new("people.deleteContactPhoto", Method::DELETE, format!("{rn}:deleteContactPhoto")).query(vec![
                        ("personFields", "metadata".into()),
                        ("sources", CONTACT_SOURCES.into()),
                    ]))
                .await
            }
        }
        .map_err(|e| api(e, &what))?;
        v.pointer("/person/etag")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| BackendError::Invalid(format!("{what}: the answer has no etag")))
    }
}
