//! Address books as groups: listed (and the listing kept a minute for the next lookup), found by
//! display name, made with extended MKCOL (falling back to MKCOL then PROPPATCH), and deleted
//! only when empty; the default book a user's own contacts move to.
//!
//! It must not touch a card.

use std::time::Duration;

use super::{CarddavBackend, xml};
use crate::backend::{BackendError, GroupRef, Result, User};

/// A URL-safe path segment for a new collection or resource.
pub(super) fn slug(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@') {
                c
            } else {
                '-'
            }
        })
        .take(100)
        .collect();
    if out.is_empty() || out.starts_with('.') {
        out.insert(0, 'x');
    }
    out
}

/// An address book as a listing shows it.
#[derive(Debug, Clone)]
pub(super) struct Book {
    group: GroupRef,
    /// Its display name, if it has one: a group is found by it, never by its URL.
    displayname: Option<String>,
}

/// The last path segment of an href, without a trailing slash.
pub(super) fn last_segment(href: &str) -> &str {
    href.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(href)
}

/// Address books.
impl Book {
    fn of(r: xml::Response) -> Book {
        let displayname = r.displayname.clone().filter(|d| !d.is_empty());
        let id = if r.href.ends_with('/') {
            r.href.clone()
        } else {
            format!("{}/", r.href)
        };
        Book {
            group: GroupRef {
                name: displayname
                    .clone()
                    .unwrap_or_else(|| last_segment(&r.href).to_string()),
                id,
                version: r.etag,
            },
            displayname,
        }
    }
}

impl CarddavBackend {
    /// Address books in a user's home, with their collection etag (the version of their content).
    pub(super) async fn addressbooks(&self, user: &User) -> Result<Vec<Book>> {
        let home = self.home(&user.id);
        let list = self
            .propfind(&home, "1", xml::PROPFIND_COLLECTIONS)
            .await?
            .ok_or_else(|| BackendError::NotFound {
                what: format!("address-book home {home}"),
            })?;
        Ok(list
            .into_iter()
            .filter(|r| {
                r.is_addressbook && r.href.trim_end_matches('/') != home.trim_end_matches('/')
            })
            .map(Book::of)
            .collect())
    }

    /// The address books of a user: those `resolve_user` just read, else read now.
    pub(super) async fn listing(&self, user: &User) -> Result<Vec<Book>> {
        let cached = crate::mutex::lock(&self.listings).remove(&user.id);
        match cached {
            Some((at, books)) if at.elapsed() < Duration::from_secs(60) => Ok(books),
            _ => self.addressbooks(user).await,
        }
    }

    /// The book a removed user's own contacts go to (`default_collection`): the one with that
    /// display name, else the one at that path in the user's home (a server's main book often
    /// has a display name of its own).
    pub(super) async fn find_default(&self, user: &User) -> Result<Option<GroupRef>> {
        let name = &self.cfg.default_collection;
        let books = self.addressbooks(user).await?;
        let at = books
            .iter()
            .position(|b| b.displayname.as_deref() == Some(name.as_str()))
            .or_else(|| books.iter().position(|b| last_segment(&b.group.id) == name));
        Ok(at.map(|i| books[i].group.clone()))
    }

    /// A group is the address book whose display name is `name`: never one whose URL merely
    /// ends in it (a user's main book at `/bob/default/` is not a group "default").
    pub(super) async fn group_named(&self, user: &User, name: &str) -> Result<Option<GroupRef>> {
        let books = self.listing(user).await?;
        Ok(books
            .into_iter()
            .find(|b| b.displayname.as_deref() == Some(name))
            .map(|b| b.group))
    }

    /// Made with the display name `name` at a free path: `<slug>/`, else `<slug>-1/`, … A path
    /// already taken by a book of that display name is the one a lost answer hid (the MKCOL was
    /// made, its answer never came, and the retry found the path taken): it is used, so a lost
    /// answer never leaves two books.
    pub(super) async fn make_group(&self, user: &User, name: &str) -> Result<GroupRef> {
        let home = self.home(&user.id);
        let base = slug(name);
        for n in 0..20 {
            let seg = if n == 0 {
                base.clone()
            } else {
                format!("{base}-{n}")
            };
            let href = format!("{home}{seg}/");
            let (status, _, text) = self
                .send(
                    "MKCOL",
                    &href,
                    &[("Content-Type", "application/xml; charset=utf-8".into())],
                    Some(xml::mkcol_addressbook(name)),
                )
                .await?;
            match status.as_u16() {
                200..=299 => {
                    return Ok(GroupRef {
                        id: href,
                        name: name.to_string(),
                        version: None,
                    });
                }
                // The path is taken: by this very book (a retry after a lost answer), or by
                // another collection or a resource (then the next name is tried).
                405 => {
                    if let Some(list) = self.propfind(&href, "0", xml::PROPFIND_COLLECTIONS).await?
                        && let Some(r) = list
                            .into_iter()
                            .find(|r| r.href.trim_end_matches('/') == href.trim_end_matches('/'))
                        && r.is_addressbook
                    {
                        let book = Book::of(r);
                        if book.displayname.as_deref() == Some(name) {
                            return Ok(book.group);
                        }
                    }
                    continue;
                }
                _ => return Err(Self::unexpected(&format!("MKCOL {href}"), status, &text)),
            }
        }
        Err(BackendError::AlreadyExists {
            what: format!("address book {name:?} of {}", user.name),
        })
    }

    pub(super) async fn remove_group(&self, user: &User, group: &GroupRef) -> Result<()> {
        let members = self.propfind(&group.id, "1", xml::PROPFIND_ETAGS).await?;
        let Some(members) = members else {
            return Ok(());
        };
        if members
            .iter()
            .any(|r| r.href.trim_end_matches('/') != group.id.trim_end_matches('/'))
        {
            return Err(BackendError::NotEmpty {
                what: format!("address book {:?} of {}", group.name, user.name),
            });
        }
        // Deleting a collection deletes what is in it: make the DELETE conditional on the
        // collection's etag just read empty, so a card added in between is never lost.
        let me = group.id.trim_end_matches('/');
        let etag = members
            .iter()
            .find(|r| r.href.trim_end_matches('/') == me)
            .and_then(|r| r.etag.clone());
        let headers: Vec<(&str, String)> = etag.into_iter().map(|e| ("If-Match", e)).collect();
        let (status, _, text) = self.send("DELETE", &group.id, &headers, None).await?;
        match status.as_u16() {
            200..=299 | 404 => Ok(()),
            412 => Err(BackendError::NotEmpty {
                what: format!(
                    "address book {:?} of {} (changed while being removed)",
                    group.name, user.name
                ),
            }),
            _ => Err(Self::unexpected(
                &format!("DELETE {}", group.id),
                status,
                &text,
            )),
        }
    }
}
