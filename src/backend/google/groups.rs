//! A user's contact groups: listed (one call for up to 1,000), found by name, made, deleted
//! only when empty, and their memberships changed.
//!
//! It must not touch a contact itself.

use reqwest::Method;
use serde_json::{Value, json};

use super::GoogleBackend;
use super::calls::{Ask, api};
use super::http::ApiError;
use crate::backend::{BackendError, GroupRef, Result, User};

/// Contact groups.
impl GoogleBackend {
    /// Lists a user's contact groups (one call for up to 1,000 groups).
    pub(super) async fn list_groups(&self, user: &User) -> Result<Vec<Value>> {
        let mut out = vec![];
        let mut page: Option<String> = None;
        loop {
            let mut q = vec![
                ("pageSize", "1000".to_string()),
                ("groupFields", "name,groupType,metadata".to_string()),
            ];
            if let Some(p) = &page {
                q.push(("pageToken", p.clone()));
            }
            let v = self
                .as_user(
                    user,
                    Ask::new("people.contactGroups.list", Method::GET, "contactGroups").query(q),
                )
                .await
                .map_err(|e| api(e, &format!("contact groups of {}", user.name)))?;
            if let Some(a) = v.get("contactGroups").and_then(Value::as_array) {
                out.extend(a.iter().cloned());
            }
            match v.get("nextPageToken").and_then(Value::as_str) {
                Some(t) if !t.is_empty() => page = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
    }

    pub(super) async fn modify_members(
        &self,
        user: &User,
        group: &str,
        add: &[&str],
        remove: &[&str],
    ) -> std::result::Result<Value, ApiError> {
        let body = json!({ "resourceNamesToAdd": add, "resourceNamesToRemove": remove });
        self.as_user(
            user,
            Ask::new(
                "people.contactGroups.members.modify",
                Method::POST,
                format!("{group}/members:modify"),
            )
            .body(&body),
        )
        .await
    }

    pub(super) async fn group_named(&self, user: &User, name: &str) -> Result<Option<GroupRef>> {
        for g in self.list_groups(user).await? {
            let is_user_group =
                g.get("groupType").and_then(Value::as_str) != Some("SYSTEM_CONTACT_GROUP");
            if is_user_group && g.get("name").and_then(Value::as_str) == Some(name) {
                return Ok(Some(GroupRef {
                    id: g["resourceName"].as_str().unwrap_or("").to_string(),
                    name: name.to_string(),
                    version: None,
                }));
            }
        }
        Ok(None)
    }

    pub(super) async fn make_group(&self, user: &User, name: &str) -> Result<GroupRef> {
        let body = json!({ "contactGroup": { "name": name }, "readGroupFields": "name,groupType,metadata" });
        let v = self
            .as_user(
                user,
                Ask::new("people.contactGroups.create", Method::POST, "contactGroups")
                    .body(&body)
                    .once(),
            )
            .await
            .map_err(|e| api(e, &format!("contact group {name:?} of {}", user.name)))?;
        Ok(GroupRef {
            id: v["resourceName"].as_str().unwrap_or("").to_string(),
            name: name.to_string(),
            version: None,
        })
    }

    pub(super) async fn remove_group(&self, user: &User, group: &GroupRef) -> Result<()> {
        let what = format!("contact group {:?} of {}", group.name, user.name);
        let v = self
            .as_user(
                user,
                Ask::new("people.contactGroups.get", Method::GET, &group.id)
                    .query(vec![("groupFields", "memberCount".into())]),
            )
            .await
            .map_err(|e| api(e, &what))?;
        if v.get("memberCount").and_then(Value::as_i64).unwrap_or(0) > 0 {
            return Err(BackendError::NotEmpty { what });
        }
        self.as_user(
            user,
            Ask::new("people.contactGroups.delete", Method::DELETE, &group.id)
                .query(vec![("deleteContacts", "false".into())]),
        )
        .await
        .map_err(|e| api(e, &what))?;
        Ok(())
    }
}
