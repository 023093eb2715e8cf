//! The directory: users (immutable GUID ids, user principal names that can be renamed, the
//! enabled flag, whether an Exchange mailbox exists), domains, and groups with nested
//! membership; and the Graph calls on them: `GET /users/{id|upn}`, `GET /users` (with the
//! advanced query `endswith(userPrincipalName,…)`), `GET /domains`, `GET /groups?$filter=mail
//! eq '…'` and `GET /groups/{id}/transitiveMembers/microsoft.graph.user`.
//!
//! These paths are NOT in the vendored OpenAPI subset (it covers personal contacts only): their
//! query options and answers are hand-coded here from Microsoft's Graph documentation (the
//! user, domain and group resources, "Advanced query capabilities on Microsoft Entra ID
//! objects", and List group transitive members), and so are their errors
//! (`Request_ResourceNotFound`, `Request_BadRequest`, `Request_UnsupportedQuery`).

use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use crate::State;
use crate::http::{Fail, Req, Resp};
use crate::util;

/// A directory user.
#[derive(Debug, Clone)]
pub(crate) struct User {
    pub id: String,
    pub upn: String,
    pub mail: String,
    pub display_name: String,
    pub enabled: bool,
    pub has_mailbox: bool,
}

/// A group: its address and members (user ids, group ids, or addresses not yet resolved).
#[derive(Debug, Clone)]
pub(crate) struct Group {
    pub id: String,
    pub mail: String,
    pub members: Vec<String>,
}

/// A domain of the tenant.
#[derive(Debug, Clone)]
pub(crate) struct Domain {
    pub name: String,
    pub verified: bool,
    pub default: bool,
}

/// Users, groups and domains.
#[derive(Debug, Default)]
pub(crate) struct Directory {
    /// By id; listing order is id order (as Graph's, not alphabetical by name).
    users: BTreeMap<String, User>,
    /// Lower-case UPN → id.
    by_upn: HashMap<String, String>,
    groups: Vec<Group>,
    pub domains: Vec<Domain>,
}

const USER_PROPS: &[&str] = &[
    "id",
    "userPrincipalName",
    "mail",
    "accountEnabled",
    "displayName",
];
const GROUP_PROPS: &[&str] = &["id", "mail", "displayName"];
const DOMAIN_PROPS: &[&str] = &[
    "id",
    "isVerified",
    "isDefault",
    "isInitial",
    "authenticationType",
    "supportedServices",
];

impl Directory {
    /// A user by id or UPN (case-insensitive).
    pub fn user(&self, key: &str) -> Option<&User> {
        self.users.get(key).or_else(|| {
            self.by_upn
                .get(&key.to_ascii_lowercase())
                .and_then(|id| self.users.get(id))
        })
    }

    fn user_mut(&mut self, key: &str) -> Option<&mut User> {
        let id = self.user(key)?.id.clone();
        self.users.get_mut(&id)
    }

    /// Adds an enabled user with a mailbox; returns the id.
    pub fn add_user(&mut self, upn: &str) -> String {
        let id = util::guid();
        let name = upn.split('@').next().unwrap_or(upn).to_string();
        self.by_upn.insert(upn.to_ascii_lowercase(), id.clone());
        self.users.insert(
            id.clone(),
            User {
                id: id.clone(),
                upn: upn.to_string(),
                mail: upn.to_string(),
                display_name: name,
                enabled: true,
                has_mailbox: true,
            },
        );
        id
    }

    /// Renames a user: the old UPN no longer finds them; `mail` follows the UPN.
    pub fn rename(&mut self, old: &str, new: &str) {
        let u = self.user_mut(old).expect("user to rename");
        u.upn = new.to_string();
        u.mail = new.to_string();
        let id = u.id.clone();
        self.by_upn.remove(&old.to_ascii_lowercase());
        self.by_upn.insert(new.to_ascii_lowercase(), id);
    }

    pub fn set_enabled(&mut self, upn: &str, enabled: bool) {
        self.user_mut(upn).expect("user").enabled = enabled;
    }

    pub fn set_mailbox(&mut self, upn: &str, has: bool) {
        self.user_mut(upn).expect("user").has_mailbox = has;
    }

    /// Removes a user; returns their id.
    pub fn delete(&mut self, upn: &str) -> Option<String> {
        let id = self.user(upn)?.id.clone();
        let u = self.users.remove(&id)?;
        self.by_upn.remove(&u.upn.to_ascii_lowercase());
        Some(id)
    }

    /// Adds or replaces a group; members are UPNs (kept as user ids) or group addresses.
    pub fn set_group(&mut self, mail: &str, members: &[&str]) -> String {
        let members: Vec<String> = members
            .iter()
            .map(|m| match self.user(m) {
                Some(u) => u.id.clone(),
                None => m.to_ascii_lowercase(),
            })
            .collect();
        if let Some(g) = self
            .groups
            .iter_mut()
            .find(|g| g.mail.eq_ignore_ascii_case(mail))
        {
            g.members = members;
            return g.id.clone();
        }
        let id = util::guid();
        self.groups.push(Group {
            id: id.clone(),
            mail: mail.to_ascii_lowercase(),
            members,
        });
        id
    }

    fn group(&self, key: &str) -> Option<&Group> {
        self.groups
            .iter()
            .find(|g| g.id == key || g.mail.eq_ignore_ascii_case(key))
    }

    /// Every user reachable from a group through nested groups, each once, breadth first.
    fn transitive_users(&self, group: &Group) -> Vec<&User> {
        let mut out = vec![];
        let mut seen_users = HashSet::new();
        let mut seen_groups = HashSet::from([group.id.clone()]);
        let mut queue: VecDeque<&String> = group.members.iter().collect();
        while let Some(m) = queue.pop_front() {
            if let Some(u) = self.user(m) {
                if seen_users.insert(u.id.clone()) {
                    out.push(u);
                }
            } else if let Some(g) = self.group(m)
                && seen_groups.insert(g.id.clone())
            {
                queue.extend(g.members.iter());
            }
        }
        out
    }
}

/// The query options each directory call accepts.
fn allowed(op: &str) -> &'static [&'static str] {
    match op {
        "users.get" => &["$select"],
        "users.list" => &["$filter", "$count", "$select", "$top", "$skiptoken"],
        "domains.list" => &["$select"],
        "groups.list" => &["$filter", "$select", "$top", "$count", "$skiptoken"],
        "groups.members" => &["$select", "$top", "$skiptoken", "$count"],
        _ => &[],
    }
}

/// Answers a directory call. `key` is the user key (users.get) or group id (groups.members).
pub(crate) fn handle(st: &State, op: &str, req: &Req, key: &str) -> Result<Resp, Fail> {
    let mut seen = HashSet::new();
    for (k, _) in &req.query {
        if !allowed(op).contains(&k.as_str()) {
            return Err(Fail::bad(
                "Request_BadRequest",
                format!(
                    "Unsupported Query. Query option '{k}' is not supported on {op} (the fake accepts {:?}).",
                    allowed(op)
                ),
            ));
        }
        if !seen.insert(k) {
            return Err(Fail::bad(
                "Request_BadRequest",
                format!("Query option '{k}' was given more than once."),
            ));
        }
    }
    if !req.body.is_empty() {
        return Err(Fail::bad(
            "Request_BadRequest",
            "A GET request must not have a body.",
        ));
    }
    let dir = crate::lock(&st.dir);
    match op {
        "users.get" => {
            let select = select(req, USER_PROPS)?;
            match dir.user(key) {
                Some(u) => Ok(Resp::json(200, user_json(u, select.as_deref(), false))),
                None => Err(not_found(key)),
            }
        }
        "users.list" => users_list(st, &dir, req),
        "domains.list" => {
            let select = select(req, DOMAIN_PROPS)?;
            let value: Vec<Value> = dir
                .domains
                .iter()
                .map(|d| pick(domain_json(d), select.as_deref()))
                .collect();
            Ok(Resp::json(
                200,
                json!({"@odata.context": format!("{}/v1.0/$metadata#domains", st.url()), "value": value}),
            ))
        }
        "groups.list" => groups_list(st, &dir, req),
        "groups.members" => members(st, &dir, req, key),
        _ => Err(Fail::bad(
            "BadRequest",
            format!("{op} is not a directory call"),
        )),
    }
}

fn not_found(key: &str) -> Fail {
    Fail::new(
        404,
        "Request_ResourceNotFound",
        format!(
            "Resource '{key}' does not exist or one of its queried reference-property objects are not present."
        ),
        false,
    )
}

/// The `$select` list, each name one of `props`.
fn select(req: &Req, props: &[&str]) -> Result<Option<Vec<String>>, Fail> {
    let Some(s) = req.q("$select") else {
        return Ok(None);
    };
    let names: Vec<String> = s.split(',').map(|n| n.trim().to_string()).collect();
    if let Some(bad) = names.iter().find(|n| !props.contains(&n.as_str())) {
        return Err(Fail::bad(
            "Request_BadRequest",
            format!("Could not find a property named '{bad}' (the fake serves {props:?})."),
        ));
    }
    Ok(Some(names))
}

fn pick(full: Value, select: Option<&[String]>) -> Value {
    match (select, full) {
        (Some(names), Value::Object(o)) => Value::Object(
            o.into_iter()
                .filter(|(k, _)| names.iter().any(|n| n == k) || k.starts_with('@'))
                .collect(),
        ),
        (_, v) => v,
    }
}

/// A user as Graph answers it: the default property set, or exactly the selected ones.
fn user_json(u: &User, select: Option<&[String]>, typed: bool) -> Value {
    let mut o = Map::new();
    if typed {
        o.insert("@odata.type".into(), json!("#microsoft.graph.user"));
    }
    let all = [
        ("id", json!(u.id)),
        ("userPrincipalName", json!(u.upn)),
        ("mail", json!(u.mail)),
        ("displayName", json!(u.display_name)),
        ("accountEnabled", json!(u.enabled)),
    ];
    match select {
        Some(names) => {
            for (k, v) in all {
                if names.iter().any(|n| n == k) {
                    o.insert(k.into(), v);
                }
            }
        }
        None => {
            for (k, v) in all.into_iter().filter(|(k, _)| *k != "accountEnabled") {
                o.insert(k.into(), v);
            }
            for k in [
                "givenName",
                "surname",
                "jobTitle",
                "mobilePhone",
                "officeLocation",
                "preferredLanguage",
            ] {
                o.insert(k.into(), Value::Null);
            }
            o.insert("businessPhones".into(), json!([]));
        }
    }
    Value::Object(o)
}

fn domain_json(d: &Domain) -> Value {
    json!({
        "id": d.name,
        "authenticationType": "Managed",
        "isVerified": d.verified,
        "isDefault": d.default,
        "isInitial": false,
        "supportedServices": if d.verified { json!(["Email"]) } else { json!([]) },
    })
}

const SKIP_PREFIX: &str = "RFNwdAIAAQAAA";

/// `$top` (1..=999, else `default`) and the offset from a `$skiptoken` this fake gave.
fn paging(req: &Req, default: usize) -> Result<(usize, usize), Fail> {
    let top = match req.q("$top").map(str::parse::<usize>) {
        None => default,
        Some(Ok(n)) if (1..=999).contains(&n) => n,
        Some(_) => {
            return Err(Fail::bad(
                "Request_BadRequest",
                format!(
                    "Invalid page size specified: '{}'. Must be between 1 and 999 inclusive.",
                    req.q("$top").unwrap_or("")
                ),
            ));
        }
    };
    let skip = match req.q("$skiptoken") {
        None => 0,
        Some(t) => t
            .strip_prefix(SKIP_PREFIX)
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| {
                Fail::bad(
                    "Request_BadRequest",
                    format!("'{t}' is not a $skiptoken this fake gave."),
                )
            })?,
    };
    Ok((skip, top))
}

/// One page of a directory collection, with an absolute `@odata.nextLink` when more follow.
fn page(st: &State, req: &Req, items: Vec<Value>, skip: usize, top: usize, count: bool) -> Resp {
    let total = items.len();
    let value: Vec<Value> = items.into_iter().skip(skip).take(top).collect();
    let mut out = json!({"@odata.context": format!("{}/v1.0/$metadata#{}", st.url(), req.segs[0]), "value": value});
    if count {
        out["@odata.count"] = json!(total);
    }
    if skip + top < total {
        let mut q: Vec<(String, String)> = req
            .query
            .iter()
            .filter(|(k, _)| k != "$skiptoken")
            .cloned()
            .collect();
        q.push(("$skiptoken".into(), format!("{SKIP_PREFIX}{}", skip + top)));
        out["@odata.nextLink"] = json!(format!(
            "{}/v1.0{}?{}",
            st.url(),
            req.raw_path,
            util::encode_query(&q)
        ));
    }
    Resp::json(200, out)
}

/// One term of a users `$filter`.
enum Term {
    EndsWith(String, String),
    Enabled(bool),
}

fn parse_user_filter(f: &str) -> Result<Vec<Term>, Fail> {
    let unsupported = || {
        Fail::bad(
            "Request_UnsupportedQuery",
            format!(
                "Unsupported or invalid query filter clause specified for the fake: {f:?} (it knows endswith(userPrincipalName|mail,'…') and accountEnabled eq true|false, joined by 'and')."
            ),
        )
    };
    let mut terms = vec![];
    for t in crate::odata::split_outside_quotes(f, " and ") {
        let t = t.trim();
        if let Some(inner) = t
            .strip_prefix("endswith(")
            .and_then(|r| r.strip_suffix(')'))
        {
            let (prop, lit) = inner.split_once(',').ok_or_else(unsupported)?;
            let prop = prop.trim();
            if prop != "userPrincipalName" && prop != "mail" {
                return Err(unsupported());
            }
            let lit = crate::odata::string_literal(lit.trim()).ok_or_else(unsupported)?;
            terms.push(Term::EndsWith(prop.to_string(), lit.to_ascii_lowercase()));
        } else if let Some(v) = t.strip_prefix("accountEnabled eq ") {
            match v.trim() {
                "true" => terms.push(Term::Enabled(true)),
                "false" => terms.push(Term::Enabled(false)),
                _ => return Err(unsupported()),
            }
        } else {
            return Err(unsupported());
        }
    }
    Ok(terms)
}

fn users_list(st: &State, dir: &Directory, req: &Req) -> Result<Resp, Fail> {
    let terms = match req.q("$filter") {
        Some(f) => parse_user_filter(f)?,
        None => vec![],
    };
    let count = req.q("$count") == Some("true");
    let eventual = req
        .header("consistencylevel")
        .is_some_and(|v| v.eq_ignore_ascii_case("eventual"));
    let advanced = terms.iter().any(|t| matches!(t, Term::EndsWith(..)));
    if advanced && !(eventual && count) {
        return Err(Fail::bad(
            "Request_UnsupportedQuery",
            "Operator 'endsWith' is not supported because the required parameters might be missing. Try adding $count with a value of true and the 'ConsistencyLevel' header with a value of 'eventual'.",
        ));
    }
    if count && !eventual {
        return Err(Fail::bad(
            "Request_UnsupportedQuery",
            "$count is only supported with the 'ConsistencyLevel: eventual' header (advanced query).",
        ));
    }
    let select = select(req, USER_PROPS)?;
    let (skip, top) = paging(req, 100)?;
    let items: Vec<Value> = dir
        .users
        .values()
        .filter(|u| {
            terms.iter().all(|t| match t {
                Term::EndsWith(p, s) => {
                    let v = if p == "mail" { &u.mail } else { &u.upn };
                    v.to_ascii_lowercase().ends_with(s)
                }
                Term::Enabled(e) => u.enabled == *e,
            })
        })
        .map(|u| user_json(u, select.as_deref(), false))
        .collect();
    Ok(page(st, req, items, skip, top, count))
}

fn groups_list(st: &State, dir: &Directory, req: &Req) -> Result<Resp, Fail> {
    let mail = match req.q("$filter") {
        None => None,
        Some(f) => {
            let lit = f
                .trim()
                .strip_prefix("mail eq ")
                .and_then(|l| crate::odata::string_literal(l.trim()))
                .ok_or_else(|| {
                    Fail::bad(
                        "Request_UnsupportedQuery",
                        format!(
                            "Unsupported query filter for the fake: {f:?} (it knows mail eq '…')."
                        ),
                    )
                })?;
            Some(lit)
        }
    };
    let select = select(req, GROUP_PROPS)?;
    let (skip, top) = paging(req, 100)?;
    let items: Vec<Value> = dir
        .groups
        .iter()
        .filter(|g| mail.as_ref().is_none_or(|m| g.mail.eq_ignore_ascii_case(m)))
        .map(|g| {
            let name = g.mail.split('@').next().unwrap_or_default();
            pick(
                json!({"id": g.id, "mail": g.mail, "displayName": name}),
                select.as_deref(),
            )
        })
        .collect();
    Ok(page(st, req, items, skip, top, false))
}

fn members(st: &State, dir: &Directory, req: &Req, group_id: &str) -> Result<Resp, Fail> {
    let select = select(req, USER_PROPS)?;
    let (skip, top) = paging(req, 100)?;
    let group = dir
        .groups
        .iter()
        .find(|g| g.id == group_id)
        .ok_or_else(|| not_found(group_id))?;
    let items: Vec<Value> = dir
        .transitive_users(group)
        .into_iter()
        .map(|u| user_json(u, select.as_deref(), true))
        .collect();
    Ok(page(st, req, items, skip, top, false))
}
