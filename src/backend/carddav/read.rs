//! Reading an address book: PROPFIND for the etags (and the known copies, which need no body),
//! then addressbook-multiget for the cards the engine must see; one card by id.
//!
//! It must not write anything to the server.

use super::groups::last_segment;
use super::{CarddavBackend, xml};
use crate::backend::{BackendError, Contact, GroupRead, GroupRef, Read, Result, User};
use crate::card::{self};

/// Reads.
impl CarddavBackend {
    pub(super) async fn multiget(
        &self,
        group: &GroupRef,
        hrefs: &[String],
    ) -> Result<Vec<Contact>> {
        let mut out = Vec::with_capacity(hrefs.len());
        for chunk in hrefs.chunks(200) {
            let (status, _, text) = self
                .send(
                    "REPORT",
                    &group.id,
                    &[
                        ("Depth", "1".into()),
                        ("Content-Type", "application/xml; charset=utf-8".into()),
                    ],
                    Some(xml::multiget(chunk)),
                )
                .await?;
            if status.as_u16() != 207 {
                return Err(Self::unexpected(
                    &format!("REPORT {}", group.id),
                    status,
                    &text,
                ));
            }
            for r in xml::parse_multistatus(&text)
                .map_err(|e| BackendError::Invalid(format!("REPORT {}: {e}", group.id)))?
            {
                let (Some(etag), Some(data)) = (r.etag, r.address_data) else {
                    continue;
                };
                out.push(Contact {
                    id: last_segment(&r.href).to_string(),
                    etag,
                    card: card::parse(&data),
                });
            }
        }
        Ok(out)
    }

    pub(super) async fn etag_of(&self, href: &str) -> Result<String> {
        let list = self
            .propfind(href, "0", xml::PROPFIND_ETAGS)
            .await?
            .ok_or_else(|| BackendError::NotFound {
                what: href.to_string(),
            })?;
        list.into_iter()
            .find_map(|r| r.etag)
            .ok_or_else(|| BackendError::Invalid(format!("{href}: the server gave no etag")))
    }

    pub(super) async fn get(&self, group: &GroupRef, id: &str) -> Result<Option<Contact>> {
        Ok(self
            .multiget(group, &[Self::href(group, id)])
            .await?
            .into_iter()
            .next())
    }

    /// Lists the book's etags (PROPFIND), then reads the cards 200 at a time (multiget); whole
    /// cards either way. No change tokens (yet).
    pub(super) async fn read_members(
        &self,
        _user: &User,
        group: Option<&GroupRef>,
        _how: GroupRead<'_>,
        sink: &mut (dyn FnMut(Read) + Send),
    ) -> Result<Option<String>> {
        let Some(group) = group else {
            return Ok(None);
        };
        let members = self
            .propfind(&group.id, "1", xml::PROPFIND_ETAGS)
            .await?
            .ok_or_else(|| BackendError::NotFound {
                what: group.id.clone(),
            })?;
        let hrefs: Vec<String> = members
            .into_iter()
            .filter(|r| {
                !r.is_collection && r.href.trim_end_matches('/') != group.id.trim_end_matches('/')
            })
            .map(|r| r.href)
            .collect();
        for chunk in hrefs.chunks(200) {
            for c in self.multiget(group, chunk).await? {
                sink(Read::Contact(c));
            }
        }
        Ok(None)
    }

    pub(super) async fn fetch_by_ids(
        &self,
        _user: &User,
        group: &GroupRef,
        ids: &[String],
        sink: &mut (dyn FnMut(Contact) + Send),
    ) -> Result<()> {
        let hrefs: Vec<String> = ids.iter().map(|id| Self::href(group, id)).collect();
        self.multiget(group, &hrefs)
            .await?
            .into_iter()
            .for_each(sink);
        Ok(())
    }
}
