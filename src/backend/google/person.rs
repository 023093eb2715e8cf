//! People API `Person` ⇄ the engine's vCard form. Every writable Person field (People v1
//! discovery, `updatePersonFields`) is carried whole, as one `X-GOOGLE-<FIELD>` property per
//! entry whose value is the entry's JSON with Google's output-only parts removed, so a copy
//! written back is exactly the source's fields. A few plain vCard properties (FN, EMAIL, ORG) are
//! derived from them for names in reports and for contact filters; they are never written back.
//!
//! The tag lives in `clientData` (`gSync` = `<tag>:<source resourceName>`, the machine identity)
//! and, when `visible_tag` is on, in a `userDefined` field `gSync` = `<tag>` that users see. This
//! module must not do I/O.

use std::borrow::Cow;
use std::collections::BTreeMap;

use calcard::vcard::{VCard, VCardEntry, VCardProperty, VCardValue};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::card::{self, FieldSelection, REPAIR_PROPERTY};

pub use super::fields::{COPIED_FIELDS, PHOTO_PROPERTY, expand_field_names, property_of};
use super::fields::{COPIED_PROPERTIES, field_index};

/// The clientData / userDefined key of the tag.
pub const TAG_KEY: &str = "gSync";

/// clientData key on a copy: the source photo it was given (its URL at the source).
pub const PHOTO_KEY: &str = "gSyncPhoto";
/// clientData key on a copy: the tags of the jobs its source came through (`card::VIA_PROPERTY`).
pub const VIA_KEY: &str = "gSyncVia";

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

/// The Person field a card property (any case) carries.
fn field_of(property: &str) -> Option<&'static str> {
    field_index(property).map(|i| COPIED_FIELDS[i])
}

/// The Person fields a job manages: `All` is every copied field; a `fields` list may name
/// Person fields (`phoneNumbers`) or vCard properties (`TEL`). `names` is always managed.
pub fn managed_fields(fields: &FieldSelection) -> Vec<&'static str> {
    COPIED_FIELDS
        .iter()
        .copied()
        .filter(|f| fields.manages(&property_of(f)) || *f == "names")
        .collect()
}

/// True when a job copies photos.
pub fn manages_photos(fields: &FieldSelection) -> bool {
    fields.manages(PHOTO_PROPERTY)
}

/// The photo a card should have (the source photo's URL), if any.
pub fn photo_of_card(card: &VCard) -> Option<String> {
    card::first_text_ref(card, PHOTO_PROPERTY).map(str::to_string)
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

/// A name for people, from the writable name parts (never Google's computed displayName, so the
/// same for a source and its copy).
fn display_name(doc: &Doc<'_>) -> String {
    if let Some(n) = doc.first_entry("names") {
        if let Some(u) = entry_str(&n, "unstructuredName") {
            return u.into_owned();
        }
        let parts: Vec<Cow<'_, str>> = ["honorificPrefix", "givenName", "middleName", "familyName"]
            .iter()
            .filter_map(|k| entry_str(&n, k))
            .collect();
        if !parts.is_empty() {
            return parts.join(" ");
        }
    }
    for (field, key) in [("emailAddresses", "value"), ("organizations", "name")] {
        if let Some(v) = doc.first_entry(field).and_then(|e| entry_str(&e, key)) {
            return v.into_owned();
        }
    }
    "(no name)".into()
}

/// A JSON object key or string, borrowed from the text unless it holds escapes.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// One field entry (a JSON object) by key, each value left as raw JSON. Ordered by key, as a
/// `serde_json::Map` is: the copy's text must be the one a JSON tree of it would write.
type Entry<'a> = BTreeMap<Text<'a>, &'a RawValue>;

/// The string `key` of an entry, when it is one.
fn entry_text<'a>(entry: &Entry<'a>, key: &str) -> Option<Cow<'a, str>> {
    let raw = entry.get(&Text(Cow::Borrowed(key)))?;
    serde_json::from_str::<Text<'a>>(raw.get())
        .ok()
        .map(|Text(s)| s)
}

/// The string `key` of an entry, when it is one and not blank.
fn entry_str<'a>(entry: &Entry<'a>, key: &str) -> Option<Cow<'a, str>> {
    entry_text(entry, key).filter(|s| !s.trim().is_empty())
}

/// A Person as read from the API, its fields left as raw JSON until they are needed: a card is
/// written from it without a JSON tree of the whole person (thousands are read per
/// destination whole, and each tree is a few hundred allocations).
#[derive(Debug, Default)]
pub struct Doc<'a> {
    top: BTreeMap<Text<'a>, &'a RawValue>,
}

impl<'a> Doc<'a> {
    /// Reads a Person's JSON text (an error if it is not a JSON object).
    pub fn parse(text: &'a str) -> serde_json::Result<Doc<'a>> {
        Ok(Doc {
            top: serde_json::from_str(text)?,
        })
    }

    fn raw(&self, key: &str) -> Option<&'a RawValue> {
        self.top.get(&Text(Cow::Borrowed(key))).copied()
    }

    /// A string field (`resourceName`, `etag`); empty when absent or not a string.
    pub fn str(&self, key: &str) -> Cow<'a, str> {
        self.raw(key)
            .and_then(|r| serde_json::from_str::<Text<'a>>(r.get()).ok())
            .map(|Text(s)| s)
            .unwrap_or_default()
    }

    /// Whether the person has the field `key`.
    pub fn has(&self, key: &str) -> bool {
        self.raw(key).is_some()
    }

    /// The entries of an array field (empty when absent or not an array).
    fn entries(&self, field: &str) -> Vec<&'a RawValue> {
        self.raw(field)
            .and_then(|r| serde_json::from_str(r.get()).ok())
            .unwrap_or_default()
    }

    /// The first entry of an array field, when it is an object.
    fn first_entry(&self, field: &str) -> Option<Entry<'a>> {
        let first = *self.entries(field).first()?;
        serde_json::from_str(first.get()).ok()
    }

    /// The entries of an array field that are objects.
    fn objects(&self, field: &str) -> Vec<Entry<'a>> {
        self.entries(field)
            .into_iter()
            .filter_map(|r| serde_json::from_str(r.get()).ok())
            .collect()
    }

    /// The value of the first `key`/`value` entry of `field` (clientData, userDefined) whose
    /// key is `key`.
    fn keyed(&self, field: &str, key: &str) -> Option<Cow<'a, str>> {
        self.objects(field)
            .into_iter()
            .find(|e| entry_text(e, "key").is_some_and(|k| k == key))
            .and_then(|e| entry_text(&e, "value"))
    }

    /// What the tag fields say (as [`tag_info`] of the person's tree).
    pub fn tag_info(&self) -> TagInfo {
        TagInfo {
            machine: self.keyed("clientData", TAG_KEY).and_then(|v| {
                let (t, s) = v.split_once(':')?;
                Some((t.to_string(), s.to_string()))
            }),
            visible: self.keyed("userDefined", TAG_KEY).map(Cow::into_owned),
        }
    }

    /// The URL of the person's own photo (as [`custom_photo`] of its tree).
    fn custom_photo(&self) -> Option<Cow<'a, str>> {
        self.objects("photos")
            .into_iter()
            .find(|p| p.get(&Text(Cow::Borrowed("default"))).map(|r| r.get()) != Some("true"))
            .and_then(|p| entry_text(&p, "url"))
    }

    /// The userDefined entries but the visible tag, each without its metadata: what a repair
    /// of the visible tag writes back.
    pub fn user_entries_but_tag(&self) -> Vec<Value> {
        let entries: Vec<Value> = self
            .raw("userDefined")
            .and_then(|r| serde_json::from_str(r.get()).ok())
            .unwrap_or_default();
        entries
            .into_iter()
            .filter(|e| e.get("key").and_then(Value::as_str) != Some(TAG_KEY))
            .map(|mut e| {
                if let Some(o) = e.as_object_mut() {
                    o.remove("metadata");
                }
                e
            })
            .collect()
    }
}

/// Writes one field entry without its output-only parts as compact JSON, keys in order, as
/// `serde_json` writes a tree of it; `None` (and nothing written) if it is not an object or
/// nothing is left. Strings are written again by serde_json's escaper (Google escapes `<`,
/// `>`, `&`, `=` and `'` as `\uXXXX`; a tree would not), anything else through a tree.
fn write_clean_entry(field: &str, entry: &Entry<'_>, out: &mut Vec<u8>) -> Option<()> {
    let start = out.len();
    out.push(b'{');
    let mut any = false;
    for (Text(k), raw) in entry {
        if output_only(field, k) {
            continue;
        }
        if any {
            out.push(b',');
        }
        any = true;
        push_json_str(out, k);
        out.push(b':');
        let text = raw.get();
        let written = if text.starts_with('"') {
            serde_json::from_str::<Text<'_>>(text)
                .ok()
                .map(|Text(s)| push_json_str(out, &s))
        } else {
            serde_json::from_str::<Value>(text)
                .ok()
                .and_then(|v| serde_json::to_writer(&mut *out, &v).ok())
        };
        if written.is_none() {
            out.truncate(start);
            return None;
        }
    }
    if !any {
        out.truncate(start);
        return None;
    }
    out.push(b'}');
    Some(())
}

/// What the tag fields of a Person say.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TagInfo {
    /// From clientData `gSync`: (tag, source resourceName).
    pub machine: Option<(String, String)>,
    /// From userDefined `gSync`.
    pub visible: Option<String>,
}

/// Reads the tag fields of a Person (as [`Doc::tag_info`] does).
pub fn tag_info(person: &Value) -> TagInfo {
    let text = person.to_string();
    Doc::parse(&text).unwrap_or_default().tag_info()
}

/// The engine's card for a Person. `repair` names what a tagged copy lacks (visible tag, group
/// membership), which makes it differ from its source so the engine rewrites it.
pub fn to_card(person: &Value, repair: Option<&str>) -> VCard {
    let text = person.to_string();
    let doc = Doc::parse(&text).unwrap_or_default();
    doc_to_card(&doc, &doc.tag_info(), repair)
}

/// [`to_card`] of a Person read as a [`Doc`], `info` its [`Doc::tag_info`].
pub fn doc_to_card(doc: &Doc<'_>, info: &TagInfo, repair: Option<&str>) -> VCard {
    let tagged = info.machine.is_some();
    let mut entries = Vec::with_capacity(24);
    entries.push(std_entry(VCardProperty::Version, "4.0".into()));
    entries.push(std_entry(VCardProperty::Fn, display_name(doc)));
    let mut text = Vec::with_capacity(256);
    for (field, property) in COPIED_FIELDS.iter().zip(COPIED_PROPERTIES) {
        for raw in doc.entries(field) {
            let Ok(item) = serde_json::from_str::<Entry<'_>>(raw.get()) else {
                continue;
            };
            // The visible tag of a copy is part of the tag, not of the copied content.
            if *field == "userDefined"
                && tagged
                && entry_str(&item, "key").is_some_and(|k| k == TAG_KEY)
            {
                continue;
            }
            text.clear();
            if write_clean_entry(field, &item, &mut text).is_none() {
                continue;
            }
            let json = String::from_utf8(text.clone()).expect("serde_json writes UTF-8");
            entries.push(text_entry(property, json));
            let derived = match *field {
                "emailAddresses" => Some((VCardProperty::Email, "value")),
                "organizations" => Some((VCardProperty::Org, "name")),
                _ => None,
            };
            if let Some((prop, key)) = derived
                && let Some(v) = entry_str(&item, key)
            {
                entries.push(std_entry(prop, v.into_owned()));
            }
        }
    }
    // The photo: a source's own photo by its URL; on a copy, the source photo it was given,
    // while it still has a photo (one the user removed or replaced reads as different).
    let photo = match (tagged, doc.custom_photo()) {
        (_, None) => None,
        (false, Some(url)) => Some(url.into_owned()),
        (true, Some(url)) => Some(
            doc.keyed("clientData", PHOTO_KEY)
                .map(Cow::into_owned)
                .unwrap_or_else(|| format!("unknown:{url}")),
        ),
    };
    if let Some(p) = photo {
        entries.push(text_entry(PHOTO_PROPERTY, p));
    }
    if let Some((tag, source)) = &info.machine {
        entries.push(text_entry(card::TAG_PROPERTY, tag.clone()));
        entries.push(text_entry(card::SOURCE_PROPERTY, source.clone()));
        if let Some(via) = doc.keyed("clientData", VIA_KEY) {
            entries.push(text_entry(card::VIA_PROPERTY, via.into_owned()));
        }
        if let Some(r) = repair {
            entries.push(text_entry(REPAIR_PROPERTY, r.to_string()));
        }
    }
    VCard { entries }
}

/// The Person fields of a card (only those in `fields`, each present, empty when the card has
/// none), as the JSON text of each entry, ready for an update body. An entry that is not JSON
/// is left out.
pub fn field_entries<'c>(
    card: &'c VCard,
    fields: &[&'static str],
) -> BTreeMap<&'static str, Vec<Cow<'c, str>>> {
    let mut out: BTreeMap<&'static str, Vec<Cow<'c, str>>> =
        fields.iter().map(|f| (*f, vec![])).collect();
    for e in &card.entries {
        let Some(field) = field_of(e.name.as_str()) else {
            continue;
        };
        let Some(entries) = out.get_mut(field) else {
            continue;
        };
        let Some(text) = e.values.first().and_then(|v| v.as_text()) else {
            continue;
        };
        // Only well-formed JSON goes out (checked without building a tree).
        if serde_json::from_str::<&RawValue>(text).is_ok() {
            entries.push(Cow::Borrowed(text));
        }
    }
    out
}

/// A Person's update body as JSON text: its fields (see [`field_entries`]), `etag` and
/// `resourceName`.
pub fn write_update_json(
    fields: &BTreeMap<&'static str, Vec<Cow<'_, str>>>,
    id: &str,
    etag: &str,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"{\"etag\":");
    push_json_str(out, etag);
    out.extend_from_slice(b",\"resourceName\":");
    push_json_str(out, id);
    for (field, entries) in fields {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(field.as_bytes());
        out.extend_from_slice(b"\":[");
        for (k, e) in entries.iter().enumerate() {
            if k > 0 {
                out.push(b',');
            }
            out.extend_from_slice(e.as_bytes());
        }
        out.push(b']');
    }
    out.push(b'}');
}

/// `{"key":<key>,"value":<value>}` as JSON text (a clientData or userDefined entry).
pub fn key_value_json(key: &str, value: &str) -> String {
    let mut out = vec![];
    push_key_value(&mut out, key, value);
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// The tag and source a copy card carries.
pub fn tag_of_card(card: &VCard) -> Option<(String, String)> {
    Some((card::tag_of(card)?, card::source_of(card)?))
}

/// The clientData of a copy, as (key, value) entries: the machine tag (`machine` =
/// `<tag>:<source>`), the source photo it is given, and the jobs its source came through.
pub fn copy_client_data<'c>(
    card: &'c VCard,
    machine: &'c str,
) -> impl Iterator<Item = (&'static str, &'c str)> {
    std::iter::once((TAG_KEY, machine))
        .chain(card::first_text_ref(card, PHOTO_PROPERTY).map(|url| (PHOTO_KEY, url)))
        .chain(card::first_text_ref(card, card::VIA_PROPERTY).map(|via| (VIA_KEY, via)))
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
        let machine = format!("{t}:{src}");
        for (i, (key, value)) in copy_client_data(card, &machine).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_key_value(out, key, value);
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
    use serde_json::{Map, json};

    /// The URL of a Person's own photo (not Google's default letter avatar).
    pub fn custom_photo(person: &Value) -> Option<&str> {
        person
            .get("photos")?
            .as_array()?
            .iter()
            .find(|p| p.get("default").and_then(Value::as_bool) != Some(true))
            .and_then(|p| p.get("url").and_then(Value::as_str))
    }

    #[test]
    fn each_copied_field_has_its_property() {
        assert_eq!(COPIED_PROPERTIES.len(), COPIED_FIELDS.len());
        for (f, p) in COPIED_FIELDS.iter().zip(COPIED_PROPERTIES) {
            assert_eq!(property_of(f), *p);
            assert_eq!(field_of(p), Some(*f));
        }
    }

    /// Reads the tag fields of a Person's tree: the reference `Doc::tag_info` must agree with.
    fn tree_tag_info(person: &Value) -> TagInfo {
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

    /// A clientData value of a Person.
    fn client_data<'a>(person: &'a Value, key: &str) -> Option<&'a str> {
        person
            .get("clientData")?
            .as_array()?
            .iter()
            .find(|e| e.get("key").and_then(Value::as_str) == Some(key))
            .and_then(|e| e.get("value").and_then(Value::as_str))
    }

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
            let mut cd = vec![json!({ "key": TAG_KEY, "value": format!("{t}:{s}") })];
            if let Some(url) = photo_of_card(card) {
                cd.push(json!({ "key": PHOTO_KEY, "value": url }));
            }
            if let Some(via) = card::first_text_ref(card, card::VIA_PROPERTY) {
                cd.push(json!({ "key": VIA_KEY, "value": via }));
            }
            body.insert("clientData".into(), Value::Array(cd));
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
            via in proptest::option::of("[a-zA-Z0-9,\"]{0,12}"),
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
            if let Some(v) = via {
                card.entries.push(text_entry(card::VIA_PROPERTY, v));
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

    /// The card a Person's JSON tree gives, written as `to_card` was before it read persons
    /// as `Doc`s: the reference the fast reader must match text for text (a different text
    /// would make every copy look edited once).
    fn tree_card(person: &Value, repair: Option<&str>) -> VCard {
        fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
            v.get(key)?.as_str().filter(|s| !s.trim().is_empty())
        }
        let name = || -> String {
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
        };
        let info = tree_tag_info(person);
        let tagged = info.machine.is_some();
        let mut entries = vec![
            std_entry(VCardProperty::Version, "4.0".into()),
            std_entry(VCardProperty::Fn, name()),
        ];
        for field in COPIED_FIELDS {
            let Some(items) = person.get(*field).and_then(Value::as_array) else {
                continue;
            };
            for item in items {
                if *field == "userDefined"
                    && tagged
                    && item.get("key").and_then(Value::as_str) == Some(TAG_KEY)
                {
                    continue;
                }
                let Some(obj) = item.as_object() else {
                    continue;
                };
                let clean: Map<String, Value> = obj
                    .iter()
                    .filter(|(k, _)| !output_only(field, k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                if clean.is_empty() {
                    continue;
                }
                let clean = Value::Object(clean);
                entries.push(text_entry(&property_of(field), clean.to_string()));
                let derived = match *field {
                    "emailAddresses" => str_of(&clean, "value").map(|v| (VCardProperty::Email, v)),
                    "organizations" => str_of(&clean, "name").map(|v| (VCardProperty::Org, v)),
                    _ => None,
                };
                if let Some((p, v)) = derived {
                    entries.push(std_entry(p, v.to_string()));
                }
            }
        }
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
            if let Some(via) = client_data(person, VIA_KEY) {
                entries.push(text_entry(card::VIA_PROPERTY, via.to_string()));
            }
            if let Some(r) = repair {
                entries.push(text_entry(REPAIR_PROPERTY, r.to_string()));
            }
        }
        VCard { entries }
    }

    /// JSON values as Person field entries hold them, odd ones included: strings with quotes,
    /// backslashes, control and HTML characters, blanks and non-ASCII; floats and exponents;
    /// nested objects (dates) and arrays.
    fn json_leaf() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        prop_oneof![
            "[a-zA-Z0-9 <>&='\"\\\\\u{1}\n\téü€😀]{0,12}".prop_map(Value::from),
            Just(Value::from(" ")),
            any::<i64>().prop_map(Value::from),
            prop_oneof![Just(1.5), Just(1e21), Just(-0.25), Just(2.0)].prop_map(Value::from),
            any::<bool>().prop_map(Value::from),
            Just(Value::Null),
        ]
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        json_leaf().prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z]{1,3}|year|month|day", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A field entry: writable keys, output-only ones, and the keys the name, the email, the
    /// organisation and the tag are read from.
    fn entry() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let key = prop_oneof![
            Just("value"),
            Just("type"),
            Just("name"),
            Just("key"),
            Just("metadata"),
            Just("formattedType"),
            Just("displayName"),
            Just("canonicalForm"),
            Just("givenName"),
            Just("familyName"),
            Just("unstructuredName"),
            Just("honorificPrefix"),
            Just("date"),
            Just("formattedValue"),
            Just("zé"),
        ];
        prop_oneof![
            8 => proptest::collection::btree_map(key, prop_oneof![3 => json_leaf(), 1 => json_value(), 1 => Just(Value::from(TAG_KEY))], 0..5)
                .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
            1 => json_leaf(),
        ]
    }

    fn person_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let field = prop_oneof![
            4 => proptest::sample::select(COPIED_FIELDS.to_vec()),
            1 => Just("clientData"), 1 => Just("photos"), 1 => Just("memberships"),
        ];
        let tag = prop_oneof![
            Just(None),
            Just(Some(
                json!([{"key": TAG_KEY, "value": "gSync7:people/c42"}, {"key": PHOTO_KEY, "value": "https://p/1"}])
            )),
            Just(Some(
                json!([{"key": VIA_KEY, "value": "gSync3,gSync5"}, {"key": TAG_KEY, "value": "gSync7:people/c42"}])
            )),
            Just(Some(
                json!([{"key": 7, "value": "x"}, "odd", {"key": TAG_KEY, "value": 3}, {"key": TAG_KEY, "value": "gSync7:people/c<1>"}])
            )),
            Just(Some(json!([{"key": TAG_KEY, "value": "no-colon"}]))),
        ];
        let photos = prop_oneof![
            Just(None),
            Just(Some(json!([{"url": "https://lh3/x", "default": false}]))),
            Just(Some(json!([{"url": "https://lh3/d", "default": true}]))),
            Just(Some(
                json!([{"url": "https://lh3/d", "default": true}, {"default": false}, {"url": "https://lh3/y"}])
            )),
            Just(Some(json!([{"url": "https://lh3/d", "default": "true"}]))),
        ];
        let visible = prop_oneof![
            Just(None),
            Just(Some(
                json!([{"key": "desk", "value": "4F"}, {"key": TAG_KEY, "value": "gSync7"}])
            )),
        ];
        (
            proptest::collection::btree_map(field, prop_oneof![9 => proptest::collection::vec(entry(), 0..4).prop_map(Value::Array), 1 => json_leaf()], 0..8),
            tag,
            photos,
            visible,
        )
            .prop_map(|(fields, tag, photos, visible)| {
                let mut o: Map<String, Value> =
                    fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                o.insert("resourceName".into(), json!("people/c9"));
                o.insert("etag".into(), json!("%E<&>"));
                if let Some(t) = tag {
                    o.insert("clientData".into(), t);
                }
                if let Some(p) = photos {
                    o.insert("photos".into(), p);
                }
                if let Some(v) = visible {
                    o.insert("userDefined".into(), v);
                }
                Value::Object(o)
            })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// The fast reader (`Doc`, no tree) gives the card a JSON tree gives, for any Person,
        /// escaped as serde_json escapes or as Google does (`\u003c` for `<` and so on).
        #[test]
        fn a_doc_reads_the_card_a_tree_does(p in person_value(), google_escapes: bool, repair: bool) {
            let mut text = p.to_string();
            if google_escapes {
                for (c, e) in [("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("=", "\\u003d"), ("'", "\\u0027")] {
                    text = text.replace(c, e);
                }
            }
            let repair = repair.then_some("visible-tag");
            let tree: Value = serde_json::from_str(&text).unwrap();
            let doc = Doc::parse(&text).unwrap();
            let fast = doc_to_card(&doc, &doc.tag_info(), repair);
            proptest::prop_assert_eq!(card::to_text(&fast), card::to_text(&tree_card(&tree, repair)));
            proptest::prop_assert_eq!(doc.str("etag"), "%E<&>");
            // What the trash keeps of it, written in one pass.
            let only = FieldSelection::from_list(Some(&["TEL".to_string(), "urls".to_string()]));
            for f in [&FieldSelection::All, &only] {
                let (text, digest) = card::text_and_digest(&fast, f);
                proptest::prop_assert_eq!(text, card::to_text(&fast));
                proptest::prop_assert_eq!(digest, card::managed_digest(&fast, f));
            }
        }
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
    len: usize,
}

impl<'p, 'a> Whole<'p, 'a> {
    /// The contact at `index` of a page of `len` contacts.
    pub fn new(page: &'p mut PageRaw<'a>, index: usize, len: usize) -> Self {
        Whole { page, index, len }
    }

    /// Where the contact is on its page.
    pub fn index(&self) -> usize {
        self.index
    }

    /// How many contacts its page holds.
    pub fn page_len(&self) -> usize {
        self.len
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
