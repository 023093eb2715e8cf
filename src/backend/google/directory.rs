//! Directory (Admin SDK) reads, as the configured admin: one user (users.get), many users at
//! once (users.list, so a run with many destinations costs a few pages instead of a call per
//! user), and the members of dynamic destination sets (`group:` with nested groups through
//! members.list, `ou:` and `domain:` through users.list).
//!
//! It must not decide who is a destination (the engine does, with exclusions and limits); it
//! only answers who is in a set and what the directory says of a user.

use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use super::GoogleBackend;
use super::auth::DIRECTORY_SCOPES;
use super::calls::api;
use super::http::ApiError;
use crate::backend::{BackendError, Result, User};

/// Below this many names in one domain, users.get one by one is cheaper than listing.
const LIST_FROM: usize = 10;
/// How long a listed user is trusted: a run's lookups, not the next run's (a daemon process
/// lives across runs, and users get suspended in between).
const FRESH: Duration = Duration::from_secs(600);

/// What the directory says of a user, as the backend needs it.
#[derive(Debug, Clone)]
pub(super) struct DirUser {
    pub id: String,
    pub primary_email: String,
    pub suspended: bool,
    pub archived: bool,
}

impl DirUser {
    fn from_json(v: &Value) -> Option<DirUser> {
        let id = v
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())?;
        let primary = v.get("primaryEmail").and_then(Value::as_str)?;
        Some(DirUser {
            id: id.to_string(),
            primary_email: primary.to_string(),
            suspended: v.get("suspended").and_then(Value::as_bool) == Some(true),
            archived: v.get("archived").and_then(Value::as_bool) == Some(true),
        })
    }

    /// Every address the user answers to (primary and aliases), lower-cased.
    fn addresses(v: &Value) -> Vec<String> {
        let mut out = vec![];
        for k in ["primaryEmail"] {
            if let Some(s) = v.get(k).and_then(Value::as_str) {
                out.push(s.to_ascii_lowercase());
            }
        }
        for k in ["aliases", "nonEditableAliases"] {
            for a in v.get(k).and_then(Value::as_array).into_iter().flatten() {
                if let Some(s) = a.as_str() {
                    out.push(s.to_ascii_lowercase());
                }
            }
        }
        out
    }
}

impl GoogleBackend {
    /// users.list pages (500 users each) for `scope` (`("domain", d)` or
    /// `("customer", "my_customer")`) with an optional search query, handed to `each` until it
    /// returns false. Every user seen is remembered for `resolve_user`.
    pub(super) async fn list_users(
        &self,
        scope: (&'static str, &str),
        search: Option<&str>,
        each: &mut (dyn FnMut(&Value) -> bool + Send),
    ) -> std::result::Result<(), ApiError> {
        let mut page: Option<String> = None;
        loop {
            let mut q = vec![
                (scope.0, scope.1.to_string()),
                ("maxResults", "500".to_string()),
                ("orderBy", "email".to_string()),
                ("projection", "basic".to_string()),
                ("viewType", "admin_view".to_string()),
            ];
            if let Some(s) = search {
                q.push(("query", s.to_string()));
            }
            if let Some(p) = &page {
                q.push(("pageToken", p.clone()));
            }
            let v = self
                .as_admin("directory.users.list", self.directory("users"), q)
                .await?;
            let mut go_on = true;
            {
                let mut cache = crate::mutex::lock(&self.directory_cache);
                let now = Instant::now();
                cache.retain(|_, (at, _)| at.elapsed() < FRESH);
                for u in v
                    .get("users")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(d) = DirUser::from_json(u) {
                        for a in DirUser::addresses(u) {
                            cache.insert(a, (now, d.clone()));
                        }
                    }
                    if go_on && !each(u) {
                        go_on = false;
                    }
                }
            }
            match v.get("nextPageToken").and_then(Value::as_str) {
                Some(t) if !t.is_empty() && go_on => page = Some(t.to_string()),
                _ => return Ok(()),
            }
        }
    }

    /// Reads the users named in `names` with users.list where many share a domain (pages sorted
    /// by address, stopping past the last name wanted); the rest are left to users.get. Users
    /// listed moments ago (by a dynamic set) are not listed again.
    pub(super) async fn prefetch_users(&self, names: &[String]) {
        let mut by_domain: HashMap<String, BTreeSet<String>> = HashMap::new();
        for n in names {
            let n = n.trim().to_ascii_lowercase();
            // Already read moments ago (a dynamic set's listing): no need to list it again.
            if self.fresh_user(&n).is_some() {
                continue;
            }
            if n.contains('@') {
                by_domain
                    .entry(domain_of(&n).to_string())
                    .or_default()
                    .insert(n);
            }
        }
        for (domain, wanted) in by_domain {
            if wanted.len() < LIST_FROM {
                continue;
            }
            let last = wanted.iter().next_back().cloned().unwrap_or_default();
            let r = self
                .list_users(("domain", &domain), None, &mut |u| {
                    let email = u
                        .get("primaryEmail")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_ascii_lowercase();
                    email < last
                })
                .await;
            if let Err(e) = r {
                tracing::info!(domain = %domain, "listing the domain's users failed ({e}); looking users up one by one");
            }
        }
    }

    /// A user listed moments ago, by address.
    fn fresh_user(&self, key: &str) -> Option<DirUser> {
        crate::mutex::lock(&self.directory_cache)
            .get(key)
            .filter(|(at, _)| at.elapsed() < FRESH)
            .map(|(_, d)| d.clone())
    }

    /// The directory's answer for one name: from a listing made moments ago, else users.get.
    /// `Ok(None)`: no such user.
    pub(super) async fn directory_user(&self, name: &str) -> Result<Option<DirUser>> {
        let key = name.trim().to_ascii_lowercase();
        if let Some(d) = self.fresh_user(&key) {
            return Ok(Some(d));
        }
        let v = match self
            .as_admin(
                "directory.users.get",
                self.directory(&format!("users/{key}")),
                vec![
                    ("projection", "basic".into()),
                    ("viewType", "admin_view".into()),
                ],
            )
            .await
        {
            Ok(v) => v,
            Err(e) if e.status == 404 => return Ok(None),
            Err(e) if e.status == 400 && e.has_reason("invalid") => return Ok(None),
            Err(e) => return Err(self.directory_error(e, &format!("looking up user {name}"))),
        };
        DirUser::from_json(&v).map(Some).ok_or_else(|| {
            BackendError::Invalid(format!(
                "the Directory API answered for {name} without a user id or address"
            ))
        })
    }

    /// A directory user as a `User`, checked: inside the allowed domains, not suspended or
    /// archived (those are `Skipped`).
    pub(super) async fn checked_user(&self, name: &str, d: DirUser) -> Result<User> {
        let domains = self.allowed_domains().await?;
        let email = &d.primary_email;
        if !domains
            .iter()
            .any(|x| x == &domain_of(email).to_ascii_lowercase())
        {
            return Err(BackendError::Invalid(format!(
                "user {name} ({email}) is outside the allowed domains ({})",
                domains.join(", ")
            )));
        }
        if d.suspended {
            return Err(BackendError::Skipped(format!("{name} is suspended")));
        }
        if d.archived {
            return Err(BackendError::Skipped(format!("{name} is archived")));
        }
        crate::mutex::lock(&self.emails).insert(d.id.clone(), d.primary_email.clone());
        Ok(User {
            id: d.id,
            name: name.to_string(),
        })
    }

    /// The primary addresses of a dynamic set's users, suspended and archived ones included
    /// (they are skipped with a note when resolved, not removed from the job).
    pub(super) async fn expand(&self, set: &str) -> Result<Vec<String>> {
        let what = format!("destination set {set}");
        let mut out: Vec<String> = vec![];
        if let Some(group) = set.strip_prefix("group:") {
            self.group_members(group, &mut out)
                .await
                .map_err(|e| self.directory_error(e, &what))?;
        } else if let Some(ou) = set.strip_prefix("ou:") {
            let search = format!("orgUnitPath='{}'", ou.replace('\'', "\\'"));
            self.list_users(("customer", "my_customer"), Some(&search), &mut |u| {
                if let Some(e) = u.get("primaryEmail").and_then(Value::as_str) {
                    out.push(e.to_string());
                }
                true
            })
            .await
            .map_err(|e| self.directory_error(e, &what))?;
        } else if let Some(domain) = set.strip_prefix("domain:") {
            let allowed = self.allowed_domains().await?;
            if !allowed.iter().any(|d| d.eq_ignore_ascii_case(domain)) {
                return Err(BackendError::Invalid(format!(
                    "{what}: {domain} is not one of the allowed domains ({})",
                    allowed.join(", ")
                )));
            }
            self.list_users(("domain", domain), None, &mut |u| {
                if let Some(e) = u.get("primaryEmail").and_then(Value::as_str) {
                    out.push(e.to_string());
                }
                true
            })
            .await
            .map_err(|e| self.directory_error(e, &what))?;
        } else {
            return Err(BackendError::Invalid(format!(
                "{what}: not a dynamic set (group:, ou: or domain:)"
            )));
        }
        Ok(out)
    }

    /// Users of a Google group, nested groups included (members.list with derived membership,
    /// 200 a page). Members that are not users (groups, the whole customer) are left out.
    async fn group_members(
        &self,
        group: &str,
        out: &mut Vec<String>,
    ) -> std::result::Result<(), ApiError> {
        let mut page: Option<String> = None;
        let mut seen = BTreeSet::new();
        loop {
            let mut q = vec![
                ("includeDerivedMembership", "true".to_string()),
                ("maxResults", "200".to_string()),
            ];
            if let Some(p) = &page {
                q.push(("pageToken", p.clone()));
            }
            let v = self
                .as_admin(
                    "directory.members.list",
                    self.directory(&format!(
                        "groups/{}/members",
                        group.trim().to_ascii_lowercase()
                    )),
                    q,
                )
                .await?;
            for m in v
                .get("members")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if m.get("type").and_then(Value::as_str) == Some("USER")
                    && let Some(e) = m.get("email").and_then(Value::as_str)
                    && seen.insert(e.to_ascii_lowercase())
                {
                    out.push(e.to_string());
                }
            }
            match v.get("nextPageToken").and_then(Value::as_str) {
                Some(t) if !t.is_empty() => page = Some(t.to_string()),
                _ => return Ok(()),
            }
        }
    }

    /// A Directory error, with the fix for a refusal (403).
    fn directory_error(&self, e: ApiError, what: &str) -> BackendError {
        if e.status == 404 {
            BackendError::Invalid(format!("{what}: no such group or org unit ({e})"))
        } else if e.status == 403 {
            BackendError::Auth(format!(
                "{what}: the Directory API refused it as {}: {e}. `admin` must be a Workspace administrator, and the scopes {} must be authorised for the service account",
                self.cfg.admin,
                DIRECTORY_SCOPES.join(",")
            ))
        } else {
            api(e, what)
        }
    }
}

pub(super) fn domain_of(email: &str) -> &str {
    email.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
}

impl GoogleBackend {
    /// The domains users may belong to: `allowed_domains`, or every verified domain of the
    /// customer (domains.list, primary and secondary alike).
    pub async fn allowed_domains(&self) -> Result<Vec<String>> {
        if let Some(d) = &self.cfg.allowed_domains {
            return Ok(d.iter().map(|d| d.to_ascii_lowercase()).collect());
        }
        self.domains
            .get_or_try_init(|| async {
                let v = self
                    .as_admin(
                        "directory.domains.list",
                        self.directory("customer/my_customer/domains"),
                        vec![],
                    )
                    .await
                    .map_err(|e| api(e, "listing the customer's domains"))?;
                let mut out = vec![];
                for d in v
                    .get("domains")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if d.get("verified").and_then(Value::as_bool) == Some(true)
                        && let Some(n) = d.get("domainName").and_then(Value::as_str)
                    {
                        out.push(n.to_ascii_lowercase());
                        for a in d
                            .get("domainAliases")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                        {
                            if a.get("verified").and_then(Value::as_bool) == Some(true)
                                && let Some(n) = a.get("domainAliasName").and_then(Value::as_str)
                            {
                                out.push(n.to_ascii_lowercase());
                            }
                        }
                    }
                }
                Ok(out)
            })
            .await
            .cloned()
    }
}
