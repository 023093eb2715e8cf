//! People API `Person` ⇄ the engine's vCard form. Every writable Person field (People v1
//! discovery, `updatePersonFields`) is carried whole, as one `X-GOOGLE-<FIELD>` property per
//! entry whose value is the entry's JSON with Google's output-only parts removed, so a copy
//! written back is exactly the source's fields. A few plain vCard properties (FN, EMAIL, ORG) are
//! derived from them for names in reports and for contact filters; they are never written back.
//!
//! The tag lives in `clientData` (`gSync` = `<tag>:<source resourceName>`, the machine identity)
//! and, when `visible_tag` is on, in a `userDefined` field `gSync` = `<tag>` that users see. This
//! module must not do I/O.

use calcard::vcard::{VCard, VCardEntry, VCardProperty, VCardValue};
use serde_json::{Map, Value, json};

use crate::card::{self, FieldSelection};

/// The clientData / userDefined key of the tag.
pub const TAG_KEY: &str = "gSync";

/// A managed-only marker: a copy that needs repair (visible tag or group membership missing)
/// carries it, so it differs from its source and gets rewritten. Never written to Google.
pub const REPAIR_PROPERTY: &str = "X-GSYNC-REPAIR";

/// Person fields copied from source to destination: every field `updatePersonFields` accepts
/// except `clientData` (other apps' data, and the tag) and `memberships` (groups are per user).
/// clientData key on a copy: the source photo it was given (its URL at the source).
pub const PHOTO_KEY: &str = "gSyncPhoto";

/// The card property that carries a contact's photo: the source's photo URL (on a copy: the
/// source photo it was given, read from its `gSyncPhoto` clientData, while it still has it).
pub const PHOTO_PROPERTY: &str = "X-GOOGLE-PHOTOS";

pub const COPIED_FIELDS: &[&str] = &[
    "names",
    "nicknames",
    "emailAddresses",
    "phoneNumbers",
    "addresses",
    "organizations",
    "birthdays",
    "events",
    "relations",
    "urls",
    "biographies",
    "calendarUrls",
    "externalIds",
    "genders",
    "imClients",
    "interests",
    "locales",
    "locations",
    "miscKeywords",
    "occupations",
    "sipAddresses",
    "userDefined",
];

/// Output-only sub-fields (People v1 discovery: "Output only"), removed before comparing or
/// writing: Google fills them in itself.
fn output_only(field: &str, key: &str) -> bool {
    match key {
        "metadata" | "formattedType" => true,
        "displayName" | "displayNameLastFirst" => field == "names",
        "canonicalForm" => field == "phoneNumbers",
        "formattedProtocol" => field == "imClients",
        "formattedValue" => field == "genders",
        _ => false,
    }
}

/// The vCard property name that carries a Person field.
pub fn property_of(field: &str) -> String {
    format!("X-GOOGLE-{}", field.to_ascii_uppercase())
}

/// The Person field a card property (any case) carries.
fn field_of(property: &str) -> Option<&'static str> {
    field_index(property).map(|i| COPIED_FIELDS[i])
}

/// Plain vCard names an administrator may use in a job's `fields`, and the Person fields they
/// stand for.
const ALIASES: &[(&str, &str)] = &[
    ("FN", "names"),
    ("N", "names"),
    ("EMAIL", "emailAddresses"),
    ("TEL", "phoneNumbers"),
    ("ADR", "addresses"),
    ("ORG", "organizations"),
    ("TITLE", "organizations"),
    ("BDAY", "birthdays"),
    ("ANNIVERSARY", "events"),
    ("URL", "urls"),
    ("NOTE", "biographies"),
    ("NICKNAME", "nicknames"),
    ("RELATED", "relations"),
    ("IMPP", "imClients"),
    ("GENDER", "genders"),
    ("LANG", "locales"),
    ("CALURI", "calendarUrls"),
    ("PHOTO", "photos"),
];

/// The Person fields a job manages: `All` is every copied field; a `fields` list may name
/// Person fields (`phoneNumbers`) or vCard properties (`TEL`). `names` is always managed.
pub fn managed_fields(fields: &FieldSelection) -> Vec<&'static str> {
    COPIED_FIELDS
        .iter()
        .copied()
        .filter(|f| fields.manages(&property_of(f)) || *f == "names")
        .collect()
}

/// Extends a job's field list with the `X-GOOGLE-*` properties its names stand for (see
/// `FieldSelection::from_list`).
pub fn expand_field_names(name: &str) -> Vec<String> {
    let upper = name.to_ascii_uppercase();
    let mut out = vec![];
    for (alias, field) in ALIASES {
        if *alias == upper {
            out.push(property_of(field));
        }
    }
    if let Some(f) = COPIED_FIELDS.iter().find(|f| f.eq_ignore_ascii_case(name)) {
        out.push(property_of(f));
    }
    if name.eq_ignore_ascii_case("photos") {
        out.push(PHOTO_PROPERTY.into());
    }
    out
}

/// True when a job copies photos.
pub fn manages_photos(fields: &FieldSelection) -> bool {
    fields.manages(PHOTO_PROPERTY)
}

/// The URL of a Person's own photo (not Google's default letter avatar).
pub fn custom_photo(person: &Value) -> Option<&str> {
    person
        .get("photos")?
        .as_array()?
        .iter()
        .find(|p| p.get("default").and_then(Value::as_bool) != Some(true))
        .and_then(|p| p.get("url").and_then(Value::as_str))
}

/// The photo a card should have (the source photo's URL), if any.
pub fn photo_of_card(card: &VCard) -> Option<String> {
    card.entries
        .iter()
        .find(|e| e.name.as_str().eq_ignore_ascii_case(PHOTO_PROPERTY))
        .and_then(|e| e.values.first())
        .and_then(|v| v.as_text())
        .map(str::to_string)
}

/// A clientData value of a Person.
fn client_data<'a>(person: &'a Value, key: &str) -> Option<&'a str> {
    person
        .get("clientData")?
        .as_array()?
        .iter()
        .find(|e| e.get("key").and_then(Value::as_str) == Some(key))
        .and_then(|e| e.get("value").and_then(Value::as_str))
}

fn text_entry(name: &str, value: String) -> VCardEntry {
    VCardEntry {
        group: None,
        name: VCardProperty::Other(name.to_string()),
        params: vec![],
        values: vec![VCardValue::Text(value)],
    }
}

fn std_entry(name: VCardProperty, value: String) -> VCardEntry {
    VCardEntry {
        group: None,
        name,
        params: vec![],
        values: vec![VCardValue::Text(value)],
    }
}

/// One field entry without its output-only parts; `None` if nothing is left.
fn clean_entry(field: &str, v: &Value) -> Option<Value> {
    let obj = v.as_object()?;
    let mut out = Map::new();
    for (k, val) in obj {
        if output_only(field, k) {
            continue;
        }
        // Memberships etc. never reach here; nested objects (dates) are kept whole.
        out.insert(k.clone(), val.clone());
    }
    if out.is_empty() {
        None
    } else {
        Some(Value::Object(out))
    }
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key)?.as_str().filter(|s| !s.trim().is_empty())
}

/// A name for people, from the writable name parts (never Google's computed displayName, so the
/// same for a source and its copy).
fn display_name(person: &Value) -> String {
    if let Some(n) = person.get("names").and_then(|n| n.get(0)) {
        if let Some(u) = str_of(n, "unstructuredName") {
            return u.to_string();
        }
        let parts: Vec<&str> = ["honorificPrefix", "givenName", "middleName", "familyName"]
            .iter()
            .filter_map(|k| str_of(n, k))
            .collect();
        if !parts.is_empty() {
            return parts.join(" ");
        }
    }
    for (field, key) in [("emailAddresses", "value"), ("organizations", "name")] {
        if let Some(v) = person
            .get(field)
            .and_then(|a| a.get(0))
            .and_then(|e| str_of(e, key))
        {
            return v.to_string();
        }
    }
    "(no name)".into()
}

/// What the tag fields of a Person say.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TagInfo {
    /// From clientData `gSync`: (tag, source resourceName).
    pub machine: Option<(String, String)>,
    /// From userDefined `gSync`.
    pub visible: Option<String>,
}

/// Reads the tag fields of a Person.
pub fn tag_info(person: &Value) -> TagInfo {
    let find = |field: &str| {
        person
            .get(field)
            .and_then(Value::as_array)
            .and_then(|a| {
                a.iter()
                    .find(|e| e.get("key").and_then(Value::as_str) == Some(TAG_KEY))
            })
            .and_then(|e| e.get("value").and_then(Value::as_str))
            .map(str::to_string)
    };
    TagInfo {
        machine: find("clientData").and_then(|v| {
            let (t, s) = v.split_once(':')?;
            Some((t.to_string(), s.to_string()))
        }),
        visible: find("userDefined"),
    }
}

/// The group resource names a Person is a member of.
pub fn memberships(person: &Value) -> Vec<String> {
    person
        .get("memberships")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|m| {
                    m.get("contactGroupMembership")?
                        .get("contactGroupResourceName")?
                        .as_str()
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The engine's card for a Person. `repair` names what a tagged copy lacks (visible tag, group
/// membership), which makes it differ from its source so the engine rewrites it.
pub fn to_card(person: &Value, repair: Option<&str>) -> VCard {
    let info = tag_info(person);
    let tagged = info.machine.is_some();
    let mut entries = vec![
        std_entry(VCardProperty::Version, "4.0".into()),
        std_entry(VCardProperty::Fn, display_name(person)),
    ];
    for field in COPIED_FIELDS {
        let Some(items) = person.get(*field).and_then(Value::as_array) else {
            continue;
        };
        for item in items {
            // The visible tag of a copy is part of the tag, not of the copied content.
            if *field == "userDefined"
                && tagged
                && item.get("key").and_then(Value::as_str) == Some(TAG_KEY)
            {
                continue;
            }
            if let Some(clean) = clean_entry(field, item) {
                let text = serde_json::to_string(&clean).unwrap_or_default();
                entries.push(text_entry(&property_of(field), text));
                match *field {
                    "emailAddresses" => {
                        if let Some(v) = str_of(&clean, "value") {
                            entries.push(std_entry(VCardProperty::Email, v.to_string()));
                        }
                    }
                    "organizations" => {
                        if let Some(v) = str_of(&clean, "name") {
                            entries.push(std_entry(VCardProperty::Org, v.to_string()));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    // The photo: a source's own photo by its URL; on a copy, the source photo it was given,
    // while it still has a photo (one the user removed or replaced reads as different).
    let photo = match (tagged, custom_photo(person)) {
        (_, None) => None,
        (false, Some(url)) => Some(url.to_string()),
        (true, Some(url)) => Some(
            client_data(person, PHOTO_KEY)
                .map(str::to_string)
                .unwrap_or_else(|| format!("unknown:{url}")),
        ),
    };
    if let Some(p) = photo {
        entries.push(text_entry(PHOTO_PROPERTY, p));
    }
    if let Some((tag, source)) = info.machine {
        entries.push(text_entry(card::TAG_PROPERTY, tag));
        entries.push(text_entry(card::SOURCE_PROPERTY, source));
        if let Some(r) = repair {
            entries.push(text_entry(REPAIR_PROPERTY, r.to_string()));
        }
    }
    VCard { entries }
}

/// The Person fields of a card (only those in `fields`), ready for a create or an update body.
pub fn fields_of(card: &VCard, fields: &[&str]) -> Map<String, Value> {
    let mut out = Map::new();
    for f in fields {
        out.insert((*f).to_string(), Value::Array(vec![]));
    }
    for e in &card.entries {
        let Some(field) = field_of(e.name.as_str()) else {
            continue;
        };
        if !fields.contains(&field) {
            continue;
        }
        let Some(text) = e.values.first().and_then(|v| v.as_text()) else {
            continue;
        };
        if let Ok(v) = serde_json::from_str::<Value>(text)
            && let Some(Value::Array(a)) = out.get_mut(field)
        {
            a.push(v);
        }
    }
    out
}

/// The tag and source a copy card carries.
pub fn tag_of_card(card: &VCard) -> Option<(String, String)> {
    Some((card::tag_of(card)?, card::source_of(card)?))
}

/// The clientData of a copy: the machine tag, and the source photo it is given.
pub fn copy_client_data(card: &VCard, tag: &str, source: &str) -> Value {
    let mut cd = vec![json!({ "key": TAG_KEY, "value": format!("{tag}:{source}") })];
    if let Some(url) = photo_of_card(card) {
        cd.push(json!({ "key": PHOTO_KEY, "value": url }));
    }
    Value::Array(cd)
}

/// The body of a new copy as JSON text, appended to `out`: the fields' JSON in the card written
/// out without building a JSON tree (`new_contact` in the tests reads it back as one). Called
/// once per copy written, so it borrows from the card and allocates next to nothing.
pub fn write_new_contact_json(card: &VCard, group: &str, visible_tag: bool, out: &mut Vec<u8>) {
    // (index in COPIED_FIELDS, the entry's JSON), in card order; sorted by field below.
    let mut items: Vec<(usize, &str)> = Vec::with_capacity(card.entries.len());
    for e in &card.entries {
        let Some(field) = field_index(e.name.as_str()) else {
            continue;
        };
        let Some(text) = e.values.first().and_then(|v| v.as_text()) else {
            continue;
        };
        // Only well-formed JSON goes out (checked without building a tree).
        if serde_json::from_str::<&serde_json::value::RawValue>(text).is_err() {
            continue;
        }
        items.push((field, text));
    }
    items.sort_by_key(|(f, _)| *f);
    let tag = card::first_text_ref(card, card::TAG_PROPERTY).map(str::trim);
    let source = card::first_text_ref(card, card::SOURCE_PROPERTY)
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let tag_and_source = tag.zip(source);
    let visible = tag_and_source.filter(|_| visible_tag).map(|(t, _)| t);
    let user_defined = COPIED_FIELDS.len() - 1;
    debug_assert_eq!(COPIED_FIELDS[user_defined], "userDefined");
    out.push(b'{');
    let mut rest = &items[..];
    for (f, field) in COPIED_FIELDS.iter().enumerate() {
        let n = rest.iter().take_while(|(i, _)| *i == f).count();
        let (these, after) = rest.split_at(n);
        rest = after;
        let extra = visible.filter(|_| f == user_defined);
        if these.is_empty() && extra.is_none() {
            continue;
        }
        out.push(b'"');
        out.extend_from_slice(field.as_bytes());
        out.extend_from_slice(b"\":[");
        for (k, (_, text)) in these.iter().enumerate() {
            if k > 0 {
                out.push(b',');
            }
            out.extend_from_slice(text.as_bytes());
        }
        if let Some(t) = extra {
            if !these.is_empty() {
                out.push(b',');
            }
            push_key_value(out, TAG_KEY, t);
        }
        out.extend_from_slice(b"],");
    }
    if let Some((t, src)) = tag_and_source {
        out.extend_from_slice(b"\"clientData\":[");
        push_key_value(out, TAG_KEY, &format!("{t}:{src}"));
        if let Some(url) = card::first_text_ref(card, PHOTO_PROPERTY) {
            out.push(b',');
            push_key_value(out, PHOTO_KEY, url);
        }
        out.extend_from_slice(b"],");
    }
    out.extend_from_slice(
        b"\"memberships\":[{\"contactGroupMembership\":{\"contactGroupResourceName\":",
    );
    push_json_str(out, group);
    out.extend_from_slice(b"}}]}");
}

/// `s` as a JSON string, quotes included, appended to `out` (escaped by serde_json).
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("a string serialises into a vector");
}

/// Appends `{"key":<key>,"value":<value>}` (a clientData or userDefined entry).
fn push_key_value(out: &mut Vec<u8>, key: &str, value: &str) {
    out.extend_from_slice(b"{\"key\":");
    push_json_str(out, key);
    out.extend_from_slice(b",\"value\":");
    push_json_str(out, value);
    out.push(b'}');
}

/// The index in `COPIED_FIELDS` of the Person field a card property (any case) carries.
fn field_index(property: &str) -> Option<usize> {
    const PREFIX: &str = "X-GOOGLE-";
    let head = property.get(..PREFIX.len())?;
    if !head.eq_ignore_ascii_case(PREFIX) {
        return None;
    }
    let rest = &property[PREFIX.len()..];
    COPIED_FIELDS
        .iter()
        .position(|f| f.eq_ignore_ascii_case(rest))
}

/// `write_new_contact_json` read back as a JSON tree (for tests).
#[cfg(test)]
pub fn new_contact(card: &VCard, group: &str, visible_tag: bool) -> Value {
    let mut out = vec![];
    write_new_contact_json(card, group, visible_tag, &mut out);
    serde_json::from_slice(&out).expect("valid JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> Value {
        json!({
            "resourceName": "people/c1",
            "etag": "%EgUBAi43PRoEAQIFByIMR1BSeXBWbWtXeXM9",
            "metadata": {"sources": [{"type": "CONTACT", "id": "1", "etag": "#x"}]},
            "names": [{"metadata": {"primary": true}, "displayName": "Jane Doe",
                       "givenName": "Jane", "familyName": "Doe", "displayNameLastFirst": "Doe, Jane"}],
            "emailAddresses": [{"value": "jane@example.com", "type": "work", "formattedType": "Work"}],
            "phoneNumbers": [{"value": "+1 555 0100", "canonicalForm": "+15550100", "type": "mobile"}],
            "organizations": [{"name": "Acme", "title": "CEO", "current": true}],
            "birthdays": [{"date": {"year": 1980, "month": 2, "day": 29}}],
            "userDefined": [{"key": "desk", "value": "4F"}],
            "clientData": [{"key": "CtsContactHash", "value": "abc"}],
            "memberships": [{"contactGroupMembership": {"contactGroupResourceName": "contactGroups/sales"}}]
        })
    }

    #[test]
    fn copy_round_trips_every_writable_field_without_output_only_parts() {
        let card = to_card(&source(), None);
        let copy = card::make_copy(&card, &FieldSelection::All, "gSync42", "people/c1", "u");
        let body = new_contact(&copy, "contactGroups/g9", true);
        assert_eq!(
            body["names"],
            json!([{"givenName": "Jane", "familyName": "Doe"}])
        );
        assert_eq!(
            body["emailAddresses"],
            json!([{"value": "jane@example.com", "type": "work"}])
        );
        assert_eq!(
            body["phoneNumbers"],
            json!([{"value": "+1 555 0100", "type": "mobile"}])
        );
        assert_eq!(
            body["birthdays"],
            json!([{"date": {"year": 1980, "month": 2, "day": 29}}])
        );
        assert_eq!(
            body["clientData"],
            json!([{"key": "gSync", "value": "gSync42:people/c1"}])
        );
        assert_eq!(
            body["userDefined"],
            json!([{"key": "desk", "value": "4F"}, {"key": "gSync", "value": "gSync42"}])
        );
        assert!(body.get("metadata").is_none() && body.get("etag").is_none());
        // Read back (as Google would return it), the copy has the source's managed digest.
        let mut stored = body.clone();
        stored["resourceName"] = json!("people/c77");
        stored["names"][0]["displayName"] = json!("Jane Doe");
        let back = to_card(&stored, None);
        assert_eq!(card::tag_of(&back).as_deref(), Some("gSync42"));
        assert_eq!(card::source_of(&back).as_deref(), Some("people/c1"));
        assert_eq!(
            card::managed_digest(&back, &FieldSelection::All),
            card::managed_digest(&card, &FieldSelection::All)
        );
        // A repair marker makes it differ.
        let repaired = to_card(&stored, Some("visible-tag"));
        assert_ne!(
            card::managed_digest(&repaired, &FieldSelection::All),
            card::managed_digest(&card, &FieldSelection::All)
        );
        // Derived properties feed names and filters.
        assert_eq!(card::display_name(&card), "Jane Doe");
    }

    /// The create body as the first version built it: a JSON tree, field by field.
    fn reference_body(card: &VCard, group: &str, visible_tag: bool) -> Value {
        let mut body = Map::new();
        let tag = card::tag_of(card);
        let source = card::source_of(card);
        for f in COPIED_FIELDS {
            let mut items: Vec<Value> = card
                .entries
                .iter()
                .filter(|e| e.name.as_str().to_ascii_uppercase() == property_of(f))
                .filter_map(|e| e.values.first()?.as_text())
                .filter_map(|t| serde_json::from_str(t).ok())
                .collect();
            if *f == "userDefined"
                && visible_tag
                && let (Some(t), Some(_)) = (&tag, &source)
            {
                items.push(json!({"key": TAG_KEY, "value": t}));
            }
            if !items.is_empty() {
                body.insert((*f).to_string(), Value::Array(items));
            }
        }
        if let (Some(t), Some(s)) = (&tag, &source) {
            body.insert("clientData".into(), copy_client_data(card, t, s));
        }
        body.insert(
            "memberships".into(),
            json!([{"contactGroupMembership": {"contactGroupResourceName": group}}]),
        );
        Value::Object(body)
    }

    proptest::proptest! {
        /// The create body written as text holds exactly what the tree-built body holds, for
        /// any field entries (in any order and letter case, some not JSON) and any tag, source,
        /// photo and group text (quotes, backslashes, control characters, non-ASCII).
        #[test]
        fn create_body_text_matches_the_tree_built_body(
            entries in proptest::collection::vec(
                (0..COPIED_FIELDS.len(), proptest::bool::ANY, "\\PC{0,8}|[\"\\\\\u{1}\u{1f}é]{0,3}", proptest::bool::weighted(0.9)),
                0..12,
            ),
            tag in proptest::option::of("[ a-zA-Z0-9\"\\\\\u{8}é]{0,6}"),
            source in proptest::option::of("[ a-z0-9/\"\u{c}]{0,6}"),
            photo in proptest::option::of("[a-z:/\"\\\\]{0,8}"),
            group in "[a-zA-Z0-9/\"\\\\]{1,10}",
            visible_tag in proptest::bool::ANY,
        ) {
            let mut card = VCard { entries: vec![] };
            for (field, lower, value, valid) in &entries {
                let name = property_of(COPIED_FIELDS[*field]);
                let name = if *lower { name.to_ascii_lowercase() } else { name };
                let text = if *valid {
                    json!({"value": value}).to_string()
                } else {
                    format!("{{\"value\": {value}")
                };
                card.entries.push(text_entry(&name, text));
            }
            if let Some(t) = tag {
                card.entries.push(text_entry(card::TAG_PROPERTY, t));
            }
            if let Some(s) = source {
                card.entries.push(text_entry(card::SOURCE_PROPERTY, s));
            }
            if let Some(p) = photo {
                card.entries.push(text_entry(PHOTO_PROPERTY, p));
            }
            proptest::prop_assert_eq!(
                new_contact(&card, &group, visible_tag),
                reference_body(&card, &group, visible_tag)
            );
        }
    }

    #[test]
    fn field_names_expand_to_person_fields() {
        assert_eq!(expand_field_names("TEL"), vec!["X-GOOGLE-PHONENUMBERS"]);
        assert_eq!(
            expand_field_names("phoneNumbers"),
            vec!["X-GOOGLE-PHONENUMBERS"]
        );
        let sel = FieldSelection::from_list(Some(&["EMAIL".to_string()]));
        assert_eq!(managed_fields(&sel), vec!["names", "emailAddresses"]);
    }
}

/// One page of connections.list, each contact kept as raw JSON until someone needs it whole.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionsPage<'a> {
    #[serde(borrow, default)]
    pub connections: Vec<&'a serde_json::value::RawValue>,
    pub next_page_token: Option<String>,
    pub next_sync_token: Option<String>,
}

/// A people.getBatchGet answer, each person kept as raw JSON, parsed one at a time.
#[derive(Debug, serde::Deserialize)]
pub struct BatchGetAnswer<'a> {
    #[serde(borrow, default)]
    pub responses: Vec<BatchGetItem<'a>>,
}

/// One person of a getBatchGet answer (absent when it could not be read).
#[derive(Debug, serde::Deserialize)]
pub struct BatchGetItem<'a> {
    #[serde(borrow, default)]
    pub person: Option<&'a serde_json::value::RawValue>,
}

/// A batchCreateContacts answer read with `readMask=metadata`: each created person's resource
/// name and etag, in the order of the request, and nothing else.
#[derive(Debug, Default, serde::Deserialize)]
pub struct CreateAnswer<'a> {
    #[serde(rename = "createdPeople", borrow, default)]
    pub created: Vec<CreatedItem<'a>>,
}

/// One item of a batchCreateContacts answer.
#[derive(Debug, serde::Deserialize)]
pub struct CreatedItem<'a> {
    #[serde(borrow, default)]
    pub person: Option<CreatedPerson<'a>>,
}

/// The parts of a created person a copy's ledger row needs.
#[derive(Debug, serde::Deserialize)]
pub struct CreatedPerson<'a> {
    #[serde(rename = "resourceName", borrow, default)]
    pub resource_name: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    pub etag: std::borrow::Cow<'a, str>,
}

/// One page of connections.list read for what tells its contacts apart (see `Head`): one scan
/// of the page, the rest of each contact skipped. The raw JSON of a contact is found again, by
/// its position, only when a caller needs it whole (see `PageRaw`).
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeadsPage<'a> {
    #[serde(borrow, default)]
    pub connections: Vec<Head<'a>>,
    pub next_page_token: Option<String>,
    pub next_sync_token: Option<String>,
}

/// The raw JSON of the contacts of one page, split out of the page's text the first time a
/// contact is asked for whole: a page where every contact is known by its head is scanned once.
pub struct PageRaw<'a> {
    text: &'a str,
    raws: Option<Vec<&'a serde_json::value::RawValue>>,
}

impl<'a> PageRaw<'a> {
    pub fn new(text: &'a str) -> Self {
        PageRaw { text, raws: None }
    }

    /// The raw JSON of the page's contact at position `i` (`None` if the page has no such
    /// contact, or is not JSON).
    pub fn get(&mut self, i: usize) -> Option<&'a serde_json::value::RawValue> {
        if self.raws.is_none() {
            let page: ConnectionsPage<'a> = serde_json::from_str(self.text).ok()?;
            self.raws = Some(page.connections);
        }
        self.raws.as_ref()?.get(i).copied()
    }
}

/// One contact of a page, for a caller that needs more than its head.
pub struct Whole<'p, 'a> {
    page: &'p mut PageRaw<'a>,
    index: usize,
}

impl<'p, 'a> Whole<'p, 'a> {
    pub fn new(page: &'p mut PageRaw<'a>, index: usize) -> Self {
        Whole { page, index }
    }

    /// The contact's raw JSON (`None` if the page cannot be split into contacts).
    pub fn raw(self) -> Option<&'a serde_json::value::RawValue> {
        self.page.get(self.index)
    }
}

/// What tells contacts apart without reading them whole: name, etag, deleted (in a sync), and
/// the groups they are in. Borrowed from the page's text: thousands are read per destination.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Head<'a> {
    #[serde(borrow)]
    pub resource_name: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub etag: std::borrow::Cow<'a, str>,
    metadata: HeadMetadata,
    #[serde(borrow)]
    memberships: Vec<HeadMembership<'a>>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct HeadMetadata {
    deleted: bool,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct HeadMembership<'a> {
    #[serde(borrow)]
    contact_group_membership: Option<HeadGroup<'a>>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct HeadGroup<'a> {
    #[serde(borrow)]
    contact_group_resource_name: std::borrow::Cow<'a, str>,
}

impl Head<'_> {
    /// True for a contact a sync reports as deleted.
    pub fn deleted(&self) -> bool {
        self.metadata.deleted
    }

    pub fn member_of(&self, group: &str) -> bool {
        self.memberships.iter().any(|m| {
            m.contact_group_membership
                .as_ref()
                .is_some_and(|g| g.contact_group_resource_name == group)
        })
    }
}
