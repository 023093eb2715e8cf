//! Users, domains and dynamic sets, from the Entra ID directory through Graph: a user by UPN
//! (its immutable object id is the ledger's key), the tenant's verified domains, an Entra
//! group's transitive members (`group:`) and a domain's users (`domain:`), and the findings
//! of `groupsync check`.
//!
//! It must not touch a mailbox's contacts (beyond the one read that tells a mailbox exists).

use serde_json::Value;

use super::http::{ApiError, Request};
use super::{GraphBackend, enc, literal};
use crate::backend::{BackendError, Result, User};

/// Users per page of a directory listing (Graph allows up to 999).
const PAGE: usize = 999;

/// The application permissions groupsync needs, and what each is for.
pub const PERMISSIONS: &[(&str, &str)] = &[
    (
        "Contacts.ReadWrite",
        "read and write the contact folders of mailboxes",
    ),
    ("User.Read.All", "look users up by their address"),
    ("Domain.Read.All", "read the tenant's verified domains"),
    ("GroupMember.Read.All", "expand `group:` destination sets"),
];

impl GraphBackend {
    /// A user by UPN (or object id): `None` when the directory has no such user; `Skipped` for
    /// a disabled account; `Invalid` for an address outside the allowed domains.
    pub(super) async fn lookup_user(&self, name: &str) -> Result<Option<User>> {
        let name = name.trim();
        if let Some((_, domain)) = name.rsplit_once('@') {
            let allowed = self.allowed_domains().await?;
            if !allowed.is_empty() && !allowed.iter().any(|d| d.eq_ignore_ascii_case(domain)) {
                return Err(BackendError::Invalid(format!(
                    "{name}: domain {domain} is not one of the tenant's allowed domains ({})",
                    allowed.join(", ")
                )));
            }
        }
        let looked_up = crate::mutex::lock(&self.looked_up).remove(&name.to_ascii_lowercase());
        let answer = match looked_up {
            Some(a) => a,
            None => self.client.send(None, &user_request(name)).await,
        };
        let u = match answer {
            Ok(a) => a.body,
            Err(e) if e.status == 404 => return Ok(None),
            Err(e) => return Err(directory_error(&e, &format!("looking up {name}"))),
        };
        let id = u["id"].as_str().unwrap_or_default().to_string();
        if id.is_empty() {
            return Err(BackendError::Invalid(format!("{name}: Graph gave no id")));
        }
        if u["accountEnabled"] == Value::Bool(false) {
            return Err(BackendError::Skipped(format!(
                "{name}: the account is disabled"
            )));
        }
        Ok(Some(User {
            id,
            name: name.to_string(),
        }))
    }

    /// Looks up every user a run may need in `$batch` envelopes of 20 (instead of a request
    /// each); `lookup_user` then takes each answer once.
    pub(super) async fn look_up_all(&self, names: &[String]) {
        let mut names: Vec<String> = names
            .iter()
            .filter(|n| !n.contains(':'))
            .map(|n| n.trim().to_ascii_lowercase())
            .collect();
        names.sort();
        names.dedup();
        if names.len() < 2 {
            return;
        }
        let reqs: Vec<Request> = names.iter().map(|n| user_request(n)).collect();
        let answers = self.client.batch(None, &reqs).await;
        let mut cache = crate::mutex::lock(&self.looked_up);
        for (n, a) in names.into_iter().zip(answers) {
            // Only answers that settle the question are kept; others are asked again alone.
            if a.as_ref().map_or_else(|e| e.status == 404, |_| true) {
                cache.insert(n, a);
            }
        }
    }

    /// The domains users may be in: `allowed_domains`, or the tenant's verified ones.
    pub(super) async fn allowed_domains(&self) -> Result<Vec<String>> {
        if let Some(d) = &self.cfg.allowed_domains {
            return Ok(d.clone());
        }
        self.domains
            .get_or_try_init(|| async {
                let a = self
                    .client
                    .send(None, &Request::get("domains.list", "/domains".into()))
                    .await
                    .map_err(|e| directory_error(&e, "listing the tenant's domains"))?;
                Ok(a.body["value"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|d| d["isVerified"] == Value::Bool(true))
                    .filter_map(|d| d["id"].as_str().map(str::to_ascii_lowercase))
                    .collect())
            })
            .await
            .cloned()
    }

    /// A dynamic destination set, read from the directory now: `group:<mail>` (an Entra
    /// group's members, nested groups included) or `domain:<name>` (every user of a domain).
    /// Disabled accounts are left out.
    pub(super) async fn expand(&self, set: &str) -> Result<Vec<String>> {
        let (kind, value) = set.split_once(':').unwrap_or(("", set));
        let value = value.trim();
        let first = match kind {
            "group" => {
                let id = self.group_id(value).await?;
                format!(
                    "/groups/{id}/transitiveMembers/microsoft.graph.user?$select=id,userPrincipalName,accountEnabled&$top={PAGE}"
                )
            }
            "domain" => format!(
                "/users?$filter={}&$count=true&$select=id,userPrincipalName,accountEnabled&$top={PAGE}",
                enc(&format!(
                    "endswith(userPrincipalName,{})",
                    literal(&format!("@{value}"))
                ))
            ),
            _ => {
                return Err(BackendError::Invalid(format!(
                    "dynamic destination {set:?}: the graph backend knows `group:<address>` and `domain:<name>`"
                )));
            }
        };
        let op = if kind == "group" {
            "groups.members"
        } else {
            "users.list"
        };
        let mut names = vec![];
        let mut next = Some(first);
        while let Some(path) = next.take() {
            let req = Request::get(op, path).header("ConsistencyLevel", "eventual");
            let a = self
                .client
                .send(None, &req)
                .await
                .map_err(|e| directory_error(&e, &format!("expanding {set}")))?;
            for u in a.body["value"].as_array().into_iter().flatten() {
                if u["accountEnabled"] != Value::Bool(false)
                    && let Some(n) = u["userPrincipalName"].as_str()
                {
                    names.push(n.to_ascii_lowercase());
                }
            }
            next = a.body["@odata.nextLink"]
                .as_str()
                .and_then(|l| self.client.path_of(l));
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// The object id of the group with this address.
    async fn group_id(&self, mail: &str) -> Result<String> {
        let path = format!(
            "/groups?$filter={}&$select=id,mail",
            enc(&format!("mail eq {}", literal(mail)))
        );
        let a = self
            .client
            .send(None, &Request::get("groups.list", path))
            .await
            .map_err(|e| directory_error(&e, &format!("looking up group {mail}")))?;
        a.body["value"][0]["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| BackendError::Invalid(format!("no group with the address {mail}")))
    }

    /// Whether groupsync may work on the user's mailbox: one read of its folders.
    pub(super) async fn mailbox_reachable(&self, user: &User) -> Result<()> {
        let path = format!("/users/{}/contactFolders?$top=1&$select=id", user.id);
        self.client
            .send(Some(&user.id), &Request::get("folders.list", path))
            .await
            .map(|_| ())
            .map_err(|e| e.to_backend(&format!("mailbox of {}", user.name)))
    }

    /// `groupsync check`: the token, then each permission the directory calls show.
    pub(super) async fn setup_findings(&self) -> Vec<std::result::Result<String, String>> {
        let mut out = vec![];
        match self.client.tokens.token().await {
            Ok(_) => out.push(Ok(format!(
                "app {} has a token from tenant {}",
                self.cfg.client_id, self.cfg.tenant
            ))),
            Err(e) => {
                out.push(Err(e.to_string()));
                return out;
            }
        }
        match self.allowed_domains().await {
            Ok(d) if d.is_empty() => out.push(Err(
                "no verified domain: set allowed_domains, or verify a domain in the Microsoft 365 admin center".into(),
            )),
            Ok(d) => out.push(Ok(format!("allowed domains: {}", d.join(", ")))),
            Err(e) => out.push(Err(e.to_string())),
        }
        out
    }
}

/// The lookup of one user.
fn user_request(name: &str) -> Request {
    Request::get(
        "users.get",
        format!(
            "/users/{}?$select=id,userPrincipalName,accountEnabled",
            enc(name.trim())
        ),
    )
}

/// A directory call's error: a refused permission names the one to grant.
fn directory_error(e: &ApiError, what: &str) -> BackendError {
    match e.status {
        401 | 403 => BackendError::Auth(format!(
            "{what}: {e}. Grant the app these application permissions with admin consent: {}",
            PERMISSIONS
                .iter()
                .map(|(p, why)| format!("{p} ({why})"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        _ if e.is_retryable() => BackendError::Transient(format!("{what}: {e}")),
        _ => BackendError::Invalid(format!("{what}: {e}")),
    }
}
