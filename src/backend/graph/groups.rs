//! Contact folders: found by display name among a mailbox's top-level folders (the default
//! Contacts folder by its name), made with groupsync's mark on them, and deleted for good
//! (`permanentDelete`, so a folder made later under the same name does not meet this one in
//! Deleted Items) once empty.
//!
//! It must not delete a folder that still holds a contact.

use reqwest::Method;
use serde_json::json;

use super::contact::{FOLDER_NAME, property_id};
use super::http::Request;
use super::{DEFAULT_FOLDER, DEFAULT_FOLDER_ID, GraphBackend, contacts_path, enc, literal};
use crate::backend::{BackendError, GroupRef, Result, User};

/// A folder found, under the job's name.
fn folder(id: &str, name: &str) -> GroupRef {
    GroupRef {
        id: id.to_string(),
        name: name.to_string(),
        version: None,
    }
}

impl GraphBackend {
    /// The top-level folder of that name (case as Outlook compares: without case), or the
    /// default Contacts folder. With the id the state remembers (`known`), the folder of that
    /// id while it is a top-level folder, whatever it is called now: a folder a user renamed
    /// keeps the user's name and the job's copies (none made a second time beside it). A
    /// folder the user deleted (now in Deleted Items) is not top-level, and is not the job's.
    pub(super) async fn group_named(
        &self,
        user: &User,
        name: &str,
        known: Option<&str>,
    ) -> Result<Option<GroupRef>> {
        if name.eq_ignore_ascii_case(DEFAULT_FOLDER) {
            return Ok(Some(GroupRef {
                id: DEFAULT_FOLDER_ID.into(),
                name: DEFAULT_FOLDER.into(),
                version: None,
            }));
        }
        let base = format!("/users/{}/contactFolders?$select=id,displayName", user.id);
        let Some(known) = known else {
            let filter = enc(&format!("displayName eq {}", literal(name)));
            let folders = self
                .top_folders(user, format!("{base}&$filter={filter}"))
                .await?;
            return Ok(folders
                .iter()
                .find(|(_, n)| n.eq_ignore_ascii_case(name))
                .map(|(id, _)| folder(id, name)));
        };
        // One page holds every folder of all but the rarest mailboxes.
        let folders = self.top_folders(user, format!("{base}&$top=1000")).await?;
        if folders.iter().any(|(id, _)| id == known) {
            return Ok(Some(folder(known, name)));
        }
        Ok(folders
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(name))
            .map(|(id, _)| folder(id, name)))
    }

    /// A mailbox's top-level folders from a listing (every page): (id, display name).
    async fn top_folders(&self, user: &User, first: String) -> Result<Vec<(String, String)>> {
        let mut out = vec![];
        let mut next = Some(first);
        while let Some(path) = next {
            let a = self
                .client
                .send(Some(&user.id), &Request::get("folders.list", path))
                .await
                .map_err(|e| e.to_backend(&format!("contact folders of {}", user.name)))?;
            for f in a.body["value"].as_array().into_iter().flatten() {
                if let (Some(id), Some(n)) = (f["id"].as_str(), f["displayName"].as_str()) {
                    out.push((id.to_string(), n.to_string()));
                }
            }
            next = self.next_link(&a.body, "@odata.nextLink")?;
        }
        Ok(out)
    }

    /// Makes a top-level folder; one of that name already there (made by a request whose
    /// answer was lost, or by the user) is the folder.
    pub(super) async fn make_group(&self, user: &User, name: &str) -> Result<GroupRef> {
        let body = json!({
            "displayName": name,
            "singleValueExtendedProperties": [{"id": property_id(FOLDER_NAME), "value": "folder"}],
        });
        let path = format!("/users/{}/contactFolders", user.id);
        let req = Request::with_body("folders.create", Method::POST, path, body);
        match self.client.send(Some(&user.id), &req).await {
            Ok(a) => match a.body["id"].as_str() {
                Some(id) => Ok(GroupRef {
                    id: id.to_string(),
                    name: name.to_string(),
                    version: None,
                }),
                None => Err(BackendError::Invalid(
                    "Graph made a folder without an id".into(),
                )),
            },
            Err(e) if e.status == 409 || e.ambiguous => {
                match self.group_named(user, name, None).await? {
                    Some(g) => Ok(g),
                    None => Err(e.to_backend(&format!("folder {name:?} of {}", user.name))),
                }
            }
            Err(e) => Err(e.to_backend(&format!("folder {name:?} of {}", user.name))),
        }
    }

    /// Deletes an empty folder for good; `NotEmpty` while it holds a contact.
    pub(super) async fn remove_group(&self, user: &User, group: &GroupRef) -> Result<()> {
        if group.id == DEFAULT_FOLDER_ID {
            return Err(BackendError::Invalid(
                "the default Contacts folder is never deleted".into(),
            ));
        }
        let what = format!("folder {:?} of {}", group.name, user.name);
        let path = format!("{}?$top=1&$select=id", contacts_path(user, &group.id));
        let a = self
            .client
            .send(Some(&user.id), &Request::get("contacts.list", path))
            .await
            .map_err(|e| e.to_backend(&what))?;
        if a.body["value"].as_array().is_some_and(|v| !v.is_empty()) {
            return Err(BackendError::NotEmpty { what });
        }
        let base = format!("/users/{}/contactFolders/{}", user.id, group.id);
        let mut hard = Request::with_body(
            "folders.permanentDelete",
            Method::POST,
            format!("{base}/permanentDelete"),
            json!({}),
        );
        hard.body = None;
        hard.idempotent = true;
        match self.client.send(Some(&user.id), &hard).await {
            Ok(_) => Ok(()),
            Err(e) if e.status == 404 && e.is("ErrorItemNotFound") => Ok(()),
            // Where permanentDelete is not offered (national clouds), an ordinary delete.
            Err(e) if matches!(e.status, 400 | 404 | 405 | 501) => {
                let mut soft = Request::get("folders.delete", base);
                soft.method = Method::DELETE;
                match self.client.send(Some(&user.id), &soft).await {
                    Ok(_) => Ok(()),
                    Err(e) if e.status == 404 => Ok(()),
                    Err(e) => Err(e.to_backend(&what)),
                }
            }
            Err(e) => Err(e.to_backend(&what)),
        }
    }
}
