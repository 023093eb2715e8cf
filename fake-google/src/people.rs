//! One user's contacts and contact groups, and the People API methods on them, with the rules
//! the API documents: batch limits, field masks, unique group names, etag preconditions, a
//! contact always keeps one group, system groups only gain members in myContacts/starred.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};

use crate::stored::{ID_PLACEHOLDER, Stored, member_of};

pub(crate) type Fail = (u16, &'static str, String, Value);

fn bad(msg: impl Into<String>) -> Fail {
    (400, "INVALID_ARGUMENT", msg.into(), json!([]))
}

/// Person fields a read mask may name (People v1 `personFields`).
const PERSON_FIELDS: &[&str] = &[
    "addresses",
    "ageRanges",
    "biographies",
    "birthdays",
    "calendarUrls",
    "clientData",
    "coverPhotos",
    "emailAddresses",
    "events",
    "externalIds",
    "genders",
    "imClients",
    "interests",
    "locales",
    "locations",
    "memberships",
    "metadata",
    "miscKeywords",
    "names",
    "nicknames",
    "occupations",
    "organizations",
    "phoneNumbers",
    "photos",
    "relations",
    "sipAddresses",
    "skills",
    "urls",
    "userDefined",
];

/// Fields `updatePersonFields` / `updateMask` accept.
const UPDATABLE: &[&str] = &[
    "addresses",
    "biographies",
    "birthdays",
    "calendarUrls",
    "clientData",
    "emailAddresses",
    "events",
    "externalIds",
    "genders",
    "imClients",
    "interests",
    "locales",
    "locations",
    "memberships",
    "miscKeywords",
    "names",
    "nicknames",
    "occupations",
    "organizations",
    "phoneNumbers",
    "relations",
    "sipAddresses",
    "urls",
    "userDefined",
];

const SINGLETONS: &[&str] = &["names", "biographies", "birthdays", "genders"];
const GROUP_FIELDS: &[&str] = &["clientData", "groupType", "memberCount", "metadata", "name"];

#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub system: bool,
    pub etag: String,
}

/// A sync token handed out by connections.list.
#[derive(Debug, Clone)]
struct SyncToken {
    /// Changes after this sequence number are what the token's next sync returns.
    seq: u64,
    /// The other parameters of the call that took it; calls using it must repeat them.
    params: String,
    expired: bool,
}

/// One user's contacts.
#[derive(Debug, Clone)]
pub struct Book {
    pub groups: BTreeMap<String, Group>,
    /// resourceName → stored Person (with output-only fields as Google fills them).
    pub(crate) contacts: BTreeMap<String, Stored>,
    seq: u64,
    /// resourceName → sequence number of its last change.
    changed: BTreeMap<String, u64>,
    /// Deleted contacts: resourceName → (sequence number of the deletion, last etag).
    deleted: BTreeMap<String, (u64, String)>,
    tokens: HashMap<String, SyncToken>,
    /// Photo id → bytes of the photos of this user's contacts.
    pub photo_bytes: HashMap<String, Vec<u8>>,
}

impl Default for Book {
    fn default() -> Self {
        let mut groups = BTreeMap::new();
        for (id, name) in [("myContacts", "myContacts"), ("starred", "starred")] {
            groups.insert(
                format!("contactGroups/{id}"),
                Group {
                    name: name.into(),
                    system: true,
                    etag: "sys".into(),
                },
            );
        }
        Book {
            groups,
            contacts: BTreeMap::new(),
            seq: 0,
            changed: BTreeMap::new(),
            deleted: BTreeMap::new(),
            tokens: HashMap::new(),
            photo_bytes: HashMap::new(),
        }
    }
}

fn mask(s: &str, allowed: &[&str], what: &str) -> Result<Vec<String>, Fail> {
    let mut out = vec![];
    for f in s.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        if !allowed.contains(&f) {
            return Err(bad(format!("Invalid {what} path: \"{f}\"")));
        }
        out.push(f.to_string());
    }
    Ok(out)
}

fn q<'a>(query: &'a [(String, String)], k: &str) -> Option<&'a str> {
    query.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
}

fn ok(v: Value) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/json; charset=UTF-8")],
        v.to_string(),
    )
        .into_response()
}

/// An answer whose body is already JSON text.
fn ok_text(body: String) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/json; charset=UTF-8")],
        body,
    )
        .into_response()
}

/// The object `v` with `key` set to `raw` (JSON text), as text: a person already written as
/// text is put in an answer without being read back into a tree.
fn with_raw(v: Value, key: &str, raw: &str) -> String {
    let s = v.to_string();
    let open = &s[..s.len() - 1];
    let comma = if open.len() > 1 { "," } else { "" };
    format!("{open}{comma}\"{key}\":{raw}}}")
}

/// A JSON array of elements already written as text.
fn raw_array(items: &[String]) -> String {
    format!("[{}]", items.join(","))
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// Fills in the output-only parts of one field's entries as Google does (`metadata` with the
/// contact's id as `ID_PLACEHOLDER`, `formattedType`, `displayName`, `canonicalForm`). A pure
/// function of the field's name and value, so `Stored` keeps its result per distinct value.
fn enrich(field: &str, v: &mut Value) {
    let Some(items) = v.as_array_mut() else {
        return;
    };
    for (i, item) in items.iter_mut().enumerate() {
        let Some(e) = item.as_object_mut() else {
            continue;
        };
        e.insert(
            "metadata".into(),
            json!({"primary": i == 0, "source": {"type": "CONTACT", "id": ID_PLACEHOLDER}}),
        );
        if let Some(t) = e.get("type").and_then(Value::as_str) {
            let t = capitalise(t);
            e.insert("formattedType".into(), json!(t));
        }
        match field {
            "names" => {
                let parts: Vec<&str> = ["givenName", "familyName"]
                    .iter()
                    .filter_map(|k| e.get(*k).and_then(Value::as_str))
                    .collect();
                let dn = e
                    .get("unstructuredName")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| parts.join(" "));
                e.insert("displayName".into(), json!(dn));
                e.insert("displayNameLastFirst".into(), json!(dn));
            }
            "phoneNumbers" => {
                if let Some(v) = e.get("value").and_then(Value::as_str) {
                    let digits: String = v
                        .chars()
                        .filter(|c| c.is_ascii_digit() || *c == '+')
                        .collect();
                    e.insert("canonicalForm".into(), json!(digits));
                }
            }
            _ => {}
        }
    }
}

impl Book {
    fn next(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn etag(&mut self) -> String {
        format!("%EgUBAj{}", self.next())
    }

    /// Adds a user contact group; returns its resource name.
    pub fn add_group(&mut self, name: &str) -> String {
        let rn = format!("contactGroups/{:x}", 0x1000 + self.next());
        let etag = self.etag();
        self.groups.insert(
            rn.clone(),
            Group {
                name: name.into(),
                system: false,
                etag,
            },
        );
        rn
    }

    pub fn group_by_name(&self, name: &str) -> Option<String> {
        self.groups
            .iter()
            .find(|(_, g)| !g.system && g.name == name)
            .map(|(rn, _)| rn.clone())
    }

    /// Adds a contact as the user would (memberships as given, else My Contacts).
    pub fn add_contact(&mut self, mut person: Value) -> String {
        let rn = format!("people/c{:019}", self.next());
        if person.get("memberships").is_none() {
            person["memberships"] = json!([{"contactGroupMembership": {"contactGroupResourceName": "contactGroups/myContacts"}}]);
        }
        self.store(&rn, person);
        rn
    }

    /// A contact as Google answers it with every field, if it exists.
    pub fn contact(&self, rn: &str) -> Option<Value> {
        self.contacts.get(rn).map(|s| s.value(rn))
    }

    /// Every contact's resource name, in order.
    pub fn contact_names(&self) -> impl Iterator<Item = &String> {
        self.contacts.keys()
    }

    /// Every contact, as Google answers it with every field.
    pub fn all_contacts(&self) -> impl Iterator<Item = Value> + '_ {
        self.contacts.iter().map(|(rn, s)| s.value(rn))
    }

    /// Edits a contact as the user would; the etag changes.
    pub fn edit(&mut self, rn: &str, f: impl FnOnce(&mut Value)) {
        let mut p = self.contact(rn).expect("contact to edit");
        f(&mut p);
        self.store(rn, p);
    }

    /// Deletes a contact (a sync after this sees it as deleted).
    pub fn delete(&mut self, rn: &str) {
        if let Some(p) = self.contacts.remove(rn) {
            let seq = self.next();
            let etag = p.etag().to_string();
            self.changed.remove(rn);
            self.deleted.insert(rn.to_string(), (seq, etag));
        }
    }

    /// Deletes a user contact group as Google does: its members lose the membership (or are
    /// deleted with `delete_contacts`).
    pub fn delete_group(&mut self, rn: &str, delete_contacts: bool) {
        let members: Vec<String> = self
            .contacts
            .iter()
            .filter(|(_, p)| p.groups().any(|g| g == rn))
            .map(|(k, _)| k.clone())
            .collect();
        for m in members {
            if delete_contacts {
                self.delete(&m);
            } else {
                let mut p = self.contacts[&m].value(&m);
                if let Some(a) = p.get_mut("memberships").and_then(Value::as_array_mut) {
                    a.retain(|x| {
                        x["contactGroupMembership"]["contactGroupResourceName"] != json!(rn)
                    });
                }
                self.store(&m, p);
            }
        }
        self.groups.remove(rn);
    }

    /// Sets a contact's photo (`base` is where this user's photos are served); the etag changes.
    pub fn set_photo(&mut self, rn: &str, bytes: &[u8], base: &str) {
        let pid = format!("p{}", self.next());
        self.photo_bytes.insert(pid.clone(), bytes.to_vec());
        let mut p = self.contacts[rn].value(rn);
        p["photos"] = json!([{"url": format!("{base}/{pid}")}]);
        self.store(rn, p);
    }

    /// Makes every sync token handed out so far expired (Google: 7 days after the full sync).
    pub fn expire_sync_tokens(&mut self) {
        for t in self.tokens.values_mut() {
            t.expired = true;
        }
    }

    fn issue_token(&mut self, seq: u64, params: String) -> String {
        let t = format!("sync{}", self.tokens.len() + 1);
        self.tokens.insert(
            t.clone(),
            SyncToken {
                seq,
                params,
                expired: false,
            },
        );
        t
    }

    /// Contacts in a group.
    pub fn members(&self, group: &str) -> Vec<Value> {
        self.contacts
            .iter()
            .filter(|(_, p)| p.groups().any(|g| g == group))
            .map(|(rn, p)| p.value(rn))
            .collect()
    }

    /// Stores a person with Google's output-only fields filled in.
    fn store(&mut self, rn: &str, p: Value) {
        let etag = self.etag();
        self.put(rn, Stored::new(etag, p, enrich));
    }

    /// Keeps `stored` (its etag just taken with `etag`) as the contact `rn`, changed now.
    fn put(&mut self, rn: &str, stored: Stored) {
        self.contacts.insert(rn.to_string(), stored);
        let seq = self.seq;
        self.changed.insert(rn.to_string(), seq);
        self.deleted.remove(rn);
    }

    fn group_json(&self, rn: &str, fields: &[String], max_members: usize) -> Value {
        let g = &self.groups[rn];
        let members: Vec<&str> = self
            .contacts
            .iter()
            .filter(|(_, p)| p.groups().any(|x| x == rn))
            .map(|(k, _)| k.as_str())
            .collect();
        let mut o = Map::new();
        o.insert("resourceName".into(), json!(rn));
        o.insert("etag".into(), json!(g.etag));
        for f in fields {
            match f.as_str() {
                "name" => {
                    o.insert("name".into(), json!(g.name));
                    o.insert("formattedName".into(), json!(g.name));
                }
                "groupType" => {
                    o.insert(
                        "groupType".into(),
                        json!(if g.system {
                            "SYSTEM_CONTACT_GROUP"
                        } else {
                            "USER_CONTACT_GROUP"
                        }),
                    );
                }
                "memberCount" => {
                    o.insert("memberCount".into(), json!(members.len()));
                }
                "metadata" => {
                    o.insert(
                        "metadata".into(),
                        json!({"updateTime": "2026-01-01T00:00:00Z"}),
                    );
                }
                _ => {}
            }
        }
        if max_members > 0 {
            o.insert(
                "memberResourceNames".into(),
                json!(members.iter().take(max_members).collect::<Vec<_>>()),
            );
        }
        Value::Object(o)
    }

    /// Checks and normalises the memberships of a person being written.
    fn check_memberships(&self, p: &mut Value) -> Result<(), Fail> {
        let groups = member_of(p);
        for g in &groups {
            match self.groups.get(g) {
                None => return Err(bad(format!("Contact group {g} not found"))),
                Some(gr)
                    if gr.system
                        && g != "contactGroups/myContacts"
                        && g != "contactGroups/starred" =>
                {
                    return Err(bad(format!("Cannot add contacts to system group {g}")));
                }
                _ => {}
            }
        }
        if groups.is_empty() {
            return Err((
                400,
                "FAILED_PRECONDITION",
                "A contact must always have at least one contact group membership".into(),
                json!([]),
            ));
        }
        Ok(())
    }

    fn check_person(p: &Value) -> Result<(), Fail> {
        for f in SINGLETONS {
            if p.get(*f)
                .and_then(Value::as_array)
                .is_some_and(|a| a.len() > 1)
            {
                return Err(bad(format!(
                    "Field {f} may have at most one value for a contact"
                )));
            }
        }
        Ok(())
    }
}

/// An entry of a connections.list answer: a person, or a deleted marker in a sync.
enum Listed<'a> {
    Person(&'a str, &'a Stored),
    Deleted(Value),
}

fn person_mask(query: &[(String, String)], key: &str) -> Result<Vec<String>, Fail> {
    let s = q(query, key).ok_or_else(|| {
        bad(format!(
            "{key} mask is required. Please specify one or more valid paths."
        ))
    })?;
    let m = mask(s, PERSON_FIELDS, key)?;
    if m.is_empty() {
        return Err(bad(format!(
            "{key} mask is required. Please specify one or more valid paths."
        )));
    }
    Ok(m)
}

fn page_size(query: &[(String, String)], default: usize) -> Result<usize, Fail> {
    match q(query, "pageSize") {
        None => Ok(default),
        Some(s) => match s.parse::<i64>() {
            Ok(0) => Ok(default),
            Ok(n) if (1..=1000).contains(&n) => Ok(n as usize),
            _ => Err(bad(format!("pageSize must be between 1 and 1000, got {s}"))),
        },
    }
}

fn offset(query: &[(String, String)]) -> Result<usize, Fail> {
    match q(query, "pageToken") {
        None | Some("") => Ok(0),
        Some(t) => t
            .strip_prefix("o")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| bad("Invalid pageToken")),
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn call(
    b: &mut Book,
    id: &str,
    params: &HashMap<String, String>,
    query: &[(String, String)],
    body: Option<Value>,
    fail_item: Option<usize>,
    client_errors: &mut Vec<String>,
    photo_base: &str,
) -> Result<Response, Fail> {
    let mut body = body.unwrap_or(Value::Null);
    match id {
        "people.contactGroups.list" => {
            let fields = match q(query, "groupFields") {
                Some(s) => mask(s, GROUP_FIELDS, "groupFields")?,
                None => vec![
                    "metadata".into(),
                    "groupType".into(),
                    "memberCount".into(),
                    "name".into(),
                ],
            };
            let size = page_size(query, 30)?;
            let from = offset(query)?;
            let all: Vec<String> = b.groups.keys().cloned().collect();
            let page: Vec<Value> = all
                .iter()
                .skip(from)
                .take(size)
                .map(|rn| b.group_json(rn, &fields, 0))
                .collect();
            let mut out = json!({"contactGroups": page, "totalItems": all.len()});
            if from + size < all.len() {
                out["nextPageToken"] = json!(format!("o{}", from + size));
            }
            Ok(ok(out))
        }
        "people.contactGroups.create" => {
            let name = body["contactGroup"]["name"]
                .as_str()
                .unwrap_or("")
                .trim()
                .to_string();
            if name.is_empty() {
                return Err(bad("contact_group.name is required"));
            }
            if b.group_by_name(&name).is_some() {
                return Err((
                    409,
                    "ALREADY_EXISTS",
                    "Contact group name already exists.".into(),
                    json!([]),
                ));
            }
            let read = match body.get("readGroupFields").and_then(Value::as_str) {
                Some(s) => mask(
                    s,
                    &["clientData", "groupType", "metadata", "name"],
                    "readGroupFields",
                )?,
                None => vec!["metadata".into(), "groupType".into(), "name".into()],
            };
            let rn = b.add_group(&name);
            Ok(ok(b.group_json(&rn, &read, 0)))
        }
        "people.contactGroups.get" => {
            let rn = format!("contactGroups/{}", params["contactGroupsId"]);
            if !b.groups.contains_key(&rn) {
                return Err((
                    404,
                    "NOT_FOUND",
                    "Requested entity was not found.".into(),
                    json!([]),
                ));
            }
            let fields = match q(query, "groupFields") {
                Some(s) => mask(s, GROUP_FIELDS, "groupFields")?,
                None => vec![
                    "metadata".into(),
                    "groupType".into(),
                    "memberCount".into(),
                    "name".into(),
                ],
            };
            let max: usize = q(query, "maxMembers")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            Ok(ok(b.group_json(&rn, &fields, max)))
        }
        "people.contactGroups.delete" => {
            let rn = format!("contactGroups/{}", params["contactGroupsId"]);
            match b.groups.get(&rn) {
                None => {
                    return Err((
                        404,
                        "NOT_FOUND",
                        "Requested entity was not found.".into(),
                        json!([]),
                    ));
                }
                Some(g) if g.system => return Err(bad("System contact groups cannot be deleted")),
                _ => {}
            }
            let delete_contacts = q(query, "deleteContacts") == Some("true");
            b.delete_group(&rn, delete_contacts);
            Ok(ok(json!({})))
        }
        "people.contactGroups.members.modify" => {
            let rn = format!("contactGroups/{}", params["contactGroupsId"]);
            let group = b
                .groups
                .get(&rn)
                .ok_or_else(|| {
                    (
                        404,
                        "NOT_FOUND",
                        "Requested entity was not found.".to_string(),
                        json!([]),
                    )
                })?
                .clone();
            let list = |k: &str| -> Vec<String> {
                body.get(k)
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let (add, remove) = (list("resourceNamesToAdd"), list("resourceNamesToRemove"));
            if add.len() + remove.len() > 1000 {
                return Err(bad("Cannot modify more than 1000 members in one request"));
            }
            if add.is_empty() && remove.is_empty() {
                return Err(bad(
                    "resource_names_to_add or resource_names_to_remove must be set",
                ));
            }
            if !add.is_empty()
                && group.system
                && rn != "contactGroups/myContacts"
                && rn != "contactGroups/starred"
            {
                return Err(bad(format!("Cannot add contacts to system group {rn}")));
            }
            let mut not_found = vec![];
            let mut last = vec![];
            for a in &add {
                match b.contact(a) {
                    None => not_found.push(a.clone()),
                    Some(mut p) => {
                        if !member_of(&p).contains(&rn) {
                            p["memberships"]
                                .as_array_mut()
                                .expect("memberships")
                                .push(json!({
                                    "contactGroupMembership": {"contactGroupResourceName": rn}
                                }));
                            b.store(a, p);
                        }
                    }
                }
            }
            for r in &remove {
                match b.contact(r) {
                    None => not_found.push(r.clone()),
                    Some(mut p) => {
                        let groups = member_of(&p);
                        if groups == vec![rn.clone()] {
                            last.push(r.clone());
                        } else if groups.contains(&rn) {
                            if let Some(a) = p.get_mut("memberships").and_then(Value::as_array_mut)
                            {
                                a.retain(|x| {
                                    x["contactGroupMembership"]["contactGroupResourceName"]
                                        != json!(rn)
                                });
                            }
                            b.store(r, p);
                        }
                    }
                }
            }
            let mut out = json!({});
            if !not_found.is_empty() {
                out["notFoundResourceNames"] = json!(not_found);
            }
            if !last.is_empty() {
                out["canNotRemoveLastContactGroupResourceNames"] = json!(last);
            }
            Ok(ok(out))
        }
        "people.people.connections.list" => {
            if params.get("peopleId").map(String::as_str) != Some("me") {
                return Err(bad("resource_name must be people/me"));
            }
            let fields = person_mask(query, "personFields")?;
            let size = page_size(query, 100)?;
            let want_token = q(query, "requestSyncToken") == Some("true");
            // What a sync token is bound to: every parameter but the page and sync tokens.
            let mut bound: Vec<String> = query
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "pageToken" | "syncToken"))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            bound.sort();
            let bound = bound.join("&");
            // Page tokens carry the offset and the sequence number the listing started at.
            let (from, start) = match q(query, "pageToken") {
                None | Some("") => (0, b.seq),
                Some(t) => t
                    .strip_prefix('o')
                    .and_then(|t| t.split_once(':'))
                    .and_then(|(o, s)| Some((o.parse().ok()?, s.parse().ok()?)))
                    .ok_or_else(|| bad("Invalid pageToken"))?,
            };
            let listing: Vec<Listed<'_>> = match q(query, "syncToken") {
                None => b
                    .contacts
                    .iter()
                    .map(|(rn, p)| Listed::Person(rn, p))
                    .collect(),
                Some(t) => {
                    let Some(tok) = b.tokens.get(t).cloned() else {
                        return Err(bad("Sync token is invalid."));
                    };
                    if tok.expired {
                        return Err((
                            400,
                            "FAILED_PRECONDITION",
                            "Sync token is expired. Clear local cache and retry call without the sync token.".into(),
                            json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "EXPIRED_SYNC_TOKEN", "domain": "people.googleapis.com"}]),
                        ));
                    }
                    if tok.params != bound {
                        return Err(bad(format!(
                            "Parameters of a sync request must match the request that produced the sync token (got {bound}, token made with {})",
                            tok.params
                        )));
                    }
                    // Changed and deleted since the token, oldest first, as of `start`.
                    let mut delta: Vec<(u64, Listed<'_>)> = b
                        .changed
                        .iter()
                        .filter(|(_, s)| **s > tok.seq && **s <= start)
                        .map(|(rn, s)| (*s, Listed::Person(rn, &b.contacts[rn])))
                        .collect();
                    delta.extend(
                        b.deleted
                            .iter()
                            .filter(|(_, (s, _))| *s > tok.seq && *s <= start)
                            .map(|(rn, (s, etag))| {
                                (
                                    *s,
                                    Listed::Deleted(json!({"resourceName": rn, "etag": etag, "metadata": {"deleted": true}})),
                                )
                            }),
                    );
                    delta.sort_by_key(|(s, _)| *s);
                    delta.into_iter().map(|(_, p)| p).collect()
                }
            };
            let total = listing.len();
            let mut page =
                String::with_capacity(listing.len().saturating_sub(from).min(size) * 1024 + 2);
            page.push('[');
            for (i, item) in listing.iter().skip(from).take(size).enumerate() {
                if i > 0 {
                    page.push(',');
                }
                match item {
                    Listed::Person(rn, p) => p.write_json(rn, Some(&fields), &mut page),
                    Listed::Deleted(v) => page.push_str(&v.to_string()),
                }
            }
            page.push(']');
            let mut out = json!({"totalItems": total, "totalPeople": total});
            if from + size < total {
                out["nextPageToken"] = json!(format!("o{}:{start}", from + size));
            } else if want_token {
                out["nextSyncToken"] = json!(b.issue_token(start, bound));
            }
            // `{"connections": [...], ...rest}` without building a tree of the page.
            let rest = out.to_string();
            let body = format!("{{\"connections\":{page},{}", &rest[1..]);
            Ok((
                StatusCode::OK,
                [("content-type", "application/json; charset=UTF-8")],
                body,
            )
                .into_response())
        }
        "people.people.getBatchGet" => {
            let fields = person_mask(query, "personFields")?;
            let names: Vec<&str> = query
                .iter()
                .filter(|(k, _)| k == "resourceNames")
                .map(|(_, v)| v.as_str())
                .collect();
            if names.is_empty() || names.len() > 200 {
                return Err(bad(format!(
                    "resource_names must hold 1 to 200 names, got {}",
                    names.len()
                )));
            }
            let responses: Vec<String> = names
                .iter()
                .map(|n| match b.contacts.get(*n) {
                    Some(p) => with_raw(
                        json!({"requestedResourceName": n, "httpStatusCode": 200, "status": {}}),
                        "person",
                        &p.json_text(n, &fields),
                    ),
                    None => json!({"requestedResourceName": n, "httpStatusCode": 404, "status": {"code": 5, "message": "Requested entity was not found."}}).to_string(),
                })
                .collect();
            Ok(ok_text(format!(
                "{{\"responses\":{}}}",
                raw_array(&responses)
            )))
        }
        "people.people.batchCreateContacts" => {
            let contacts = match body.get_mut("contacts").map(Value::take) {
                Some(Value::Array(a)) => a,
                _ => vec![],
            };
            if contacts.is_empty() || contacts.len() > 200 {
                return Err(bad(format!(
                    "contacts must hold 1 to 200 contacts, got {}",
                    contacts.len()
                )));
            }
            let read = match body.get("readMask").and_then(Value::as_str) {
                Some(s) => mask(s, PERSON_FIELDS, "readMask")?,
                None => return Err(bad("read_mask is required")),
            };
            let mut created = vec![];
            let mut errors = Map::new();
            for (i, mut c) in contacts.into_iter().enumerate() {
                let mut p = match c.get_mut("contactPerson").map(Value::take) {
                    Some(p @ Value::Object(_)) => p,
                    _ => json!({}),
                };
                let checked = if fail_item == Some(i) {
                    Err(bad("injected item failure"))
                } else {
                    Book::check_person(&p).and_then(|_| {
                        if p.get("memberships").is_none() {
                            p["memberships"] = json!([{"contactGroupMembership": {"contactGroupResourceName": "contactGroups/myContacts"}}]);
                        }
                        b.check_memberships(&mut p)
                    })
                };
                match checked {
                    Ok(()) => {
                        let rn = format!("people/c{:019}", b.next());
                        b.store(&rn, p);
                        created.push(with_raw(
                            json!({"requestedResourceName": rn, "httpStatusCode": 200}),
                            "person",
                            &b.contacts[&rn].json_text(&rn, &read),
                        ));
                    }
                    Err((_, code, msg, _)) => {
                        if fail_item != Some(i) {
                            client_errors.push(format!("contacts[{i}]: {msg}"));
                        }
                        errors.insert(i.to_string(), json!({"code": if code == "FAILED_PRECONDITION" {9} else {3}, "message": msg}));
                    }
                }
            }
            if !errors.is_empty() {
                return Err((
                    400,
                    "INVALID_ARGUMENT",
                    "Request contains an invalid argument.".into(),
                    json!([{"@type": "type.googleapis.com/google.people.v1.BatchCreateContactsErrorDetails", "contactErrors": errors}]),
                ));
            }
            Ok(ok_text(format!(
                "{{\"createdPeople\":{}}}",
                raw_array(&created)
            )))
        }
        "people.people.batchUpdateContacts" => {
            let contacts = match body.get_mut("contacts").map(Value::take) {
                Some(Value::Object(m)) => m,
                _ => Map::new(),
            };
            if contacts.is_empty() || contacts.len() > 200 {
                return Err(bad(format!(
                    "contacts must hold 1 to 200 contacts, got {}",
                    contacts.len()
                )));
            }
            let update = match body.get("updateMask").and_then(Value::as_str) {
                Some(s) => mask(s, UPDATABLE, "updateMask")?,
                None => return Err(bad("update_mask is required")),
            };
            if update.is_empty() {
                return Err(bad("update_mask is required"));
            }
            let read = match body.get("readMask").and_then(Value::as_str) {
                Some(s) => mask(s, PERSON_FIELDS, "readMask")?,
                None => return Err(bad("read_mask is required")),
            };
            let mut results = vec![];
            let mut errors = Map::new();
            for (i, (rn, p)) in contacts.into_iter().enumerate() {
                let Some(current) = b.contacts.get(&rn) else {
                    errors.insert(
                        rn,
                        json!({"code": 5, "message": "Requested entity was not found."}),
                    );
                    continue;
                };
                if fail_item == Some(i) {
                    errors.insert(rn, json!({"code": 3, "message": "injected item failure"}));
                    continue;
                }
                if p.get("etag").and_then(Value::as_str) != Some(current.etag()) {
                    errors.insert(rn, json!({"code": 9, "message": "Request person.etag is different than the current person.etag. Clear local cache and get the latest person."}));
                    continue;
                }
                if let Err((_, _, m, _)) = Book::check_person(&p) {
                    client_errors.push(format!("{rn}: {m}"));
                    errors.insert(rn, json!({"code": 3, "message": m}));
                    continue;
                }
                let groups = if update.iter().any(|f| f == "memberships") {
                    let mut m = json!({});
                    if let Some(v) = p.get("memberships") {
                        m["memberships"] = v.clone();
                    }
                    if let Err((_, _, msg, _)) = b.check_memberships(&mut m) {
                        client_errors.push(format!("{rn}: {msg}"));
                        errors.insert(rn, json!({"code": 9, "message": msg}));
                        continue;
                    }
                    Some(member_of(&m))
                } else {
                    None
                };
                let etag = b.etag();
                let next = b.contacts[&rn].updated(etag, &update, &p, groups, enrich);
                b.put(&rn, next);
                results.push(format!(
                    "{}:{}",
                    Value::from(rn.as_str()),
                    with_raw(
                        json!({"requestedResourceName": rn, "httpStatusCode": 200}),
                        "person",
                        &b.contacts[&rn].json_text(&rn, &read),
                    )
                ));
            }
            if !errors.is_empty() {
                return Err((
                    400,
                    "INVALID_ARGUMENT",
                    "Request contains an invalid argument.".into(),
                    json!([{"@type": "type.googleapis.com/google.people.v1.BatchUpdateContactsErrorDetails", "contactErrors": errors}]),
                ));
            }
            Ok(ok_text(format!(
                "{{\"updateResult\":{{{}}}}}",
                results.join(",")
            )))
        }
        "people.people.batchDeleteContacts" => {
            let names: Vec<String> = body["resourceNames"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            if names.is_empty() || names.len() > 500 {
                return Err(bad(format!(
                    "resource_names must hold 1 to 500 names, got {}",
                    names.len()
                )));
            }
            for n in names {
                b.delete(&n);
            }
            Ok(ok(json!({})))
        }
        "people.people.updateContactPhoto" | "people.people.deleteContactPhoto" => {
            let rn = format!("people/{}", params["peopleId"]);
            if !b.contacts.contains_key(&rn) {
                return Err((
                    404,
                    "NOT_FOUND",
                    "Requested entity was not found.".into(),
                    json!([]),
                ));
            }
            let read = if id.ends_with("updateContactPhoto") {
                use base64::Engine;
                let bytes = body
                    .get("photoBytes")
                    .and_then(Value::as_str)
                    .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                    .ok_or_else(|| bad("photo_bytes is required and must be base64"))?;
                let png = bytes.starts_with(b"\x89PNG\r\n\x1a\n");
                let jpeg = bytes.starts_with(&[0xff, 0xd8, 0xff]);
                if !png && !jpeg {
                    return Err(bad(
                        "All requests must have a valid photo format: JPEG or PNG.",
                    ));
                }
                b.set_photo(&rn, &bytes, photo_base);
                match body.get("personFields").and_then(Value::as_str) {
                    Some(s) => mask(s, PERSON_FIELDS, "personFields")?,
                    None => vec![],
                }
            } else {
                let mut p = b.contacts[&rn].value(&rn);
                if let Some(o) = p.as_object_mut() {
                    o.remove("photos");
                }
                b.store(&rn, p);
                match q(query, "personFields") {
                    Some(s) => mask(s, PERSON_FIELDS, "personFields")?,
                    None => vec![],
                }
            };
            Ok(ok_text(with_raw(
                json!({}),
                "person",
                &b.contacts[&rn].json_text(&rn, &read),
            )))
        }
        other => Err((
            501,
            "UNIMPLEMENTED",
            format!("{other} is not implemented by the fake"),
            json!([]),
        )),
    }
}
