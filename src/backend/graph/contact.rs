//! Graph contacts and the engine's vCards, both ways.
//!
//! A contact read from Graph becomes a card that carries every copied contact property whole,
//! as the JSON of its value in an `X-MSGRAPH-<PROPERTY>` entry (so a copy from one mailbox to
//! another loses nothing), plus `FN`, `EMAIL` and `ORG` derived from them (what job filters and
//! reports read). A card written to Graph takes those entries back; a card from elsewhere (a
//! vCard) is mapped from its standard properties, and what a Graph contact cannot hold (a
//! fourth email, a third business phone) is named by `vcard::cannot_hold`.
//!
//! The tag lives in single-value extended properties of groupsync's own property set:
//! `gSync` = `<tag>:<source id>`, `gSyncVia` = the jobs the source came through. A visible
//! Outlook category (the tag itself) is added when the backend's `visible_tag` is on; a copy
//! whose category a user removed is still known by its extended property.
//!
//! This module does no I/O.

use calcard::vcard::{VCard, VCardEntry, VCardProperty, VCardValue};
use serde_json::{Map, Value, json};

use super::fields::{COPIED, card_property};
use super::vcard::{ADDRESS_PARTS, ADDRESSES, LISTS, capacity, from_vcard, is_empty, values};
use crate::card;
use crate::card::FieldSelection;

/// groupsync's property set (a GUID of its own) for the named extended properties.
const PROPERTY_SET: &str = "{6E9D2C41-7B2A-4F3C-9A51-3D7E0C9B8F12}";
/// Holds `<tag>:<source id>` on a copy.
pub const TAG_NAME: &str = "gSync";
/// Holds the tags of the jobs a copy came through before (`gSync1,gSync2`).
pub const VIA_NAME: &str = "gSyncVia";
/// On a contact moved to the default folder: the id it had in the job's folder.
pub const MOVED_NAME: &str = "gSyncMoved";
/// On a copy with a photo: the source photo it was given (see `PHOTO_PROPERTY`).
pub const PHOTO_NAME: &str = "gSyncPhoto";
/// The card property that says which photo a contact has: on a source contact, where its
/// photo is and which version (`photo <user id> <contact id> <change key>`); on a copy, the
/// source photo it was given, while it still has a photo.
pub const PHOTO_PROPERTY: &str = super::fields::PHOTO;
/// On a folder groupsync made: `folder`.
pub const FOLDER_NAME: &str = "gSyncFolder";
/// Marks a copy whose visible category a user removed, so the engine rewrites it; never sent
/// (the same marker as a Google copy's, always managed: see `FieldSelection::from_list`).
pub use crate::card::REPAIR_PROPERTY;
/// The id of one of groupsync's named extended properties.
pub fn property_id(name: &str) -> String {
    format!("String {PROPERTY_SET} Name {name}")
}

/// The `$select` of a whole read: every copied property and the change key.
pub fn select_whole() -> String {
    let mut s = String::from("id,changeKey");
    for p in COPIED {
        s.push(',');
        s.push_str(p);
    }
    s
}

/// The `$select` of a tags-only read.
pub const SELECT_TAGS: &str = "id,changeKey,displayName,categories";

/// The `$expand` that brings the photo's presence and groupsync's tag properties along.
pub fn expand_tags() -> String {
    format!(
        "photo,singleValueExtendedProperties($filter=id eq '{}' or id eq '{}' or id eq '{}')",
        property_id(TAG_NAME),
        property_id(VIA_NAME),
        property_id(PHOTO_NAME)
    )
}

/// Where a source photo is: (user id, contact id), from a `PHOTO_PROPERTY` value.
pub fn photo_source(marker: &str) -> Option<(&str, &str)> {
    let mut parts = marker.strip_prefix("photo ")?.split(' ');
    Some((parts.next()?, parts.next()?))
}

/// On a copy: the digest of the photo bytes it was given (its `gSyncPhoto` is
/// `<marker>|<digest>`), so a source photo that did not change is not put again.
pub fn photo_digest(c: &Value) -> Option<String> {
    c["photo"].as_object()?;
    let given = extended(c, PHOTO_NAME)?;
    given.split_once('|').map(|(_, d)| d.to_string())
}

/// Sets a copy's `gSyncPhoto` (`<marker>|<digest>`) in a contact body made by `new_contact` or
/// `update_body`.
pub fn set_photo_value(body: &mut Value, value: &str) {
    if let Some(props) = body["singleValueExtendedProperties"].as_array_mut() {
        props.push(json!({"id": property_id(PHOTO_NAME), "value": value}));
    }
}

/// The photo marker a card carries.
pub fn photo_of(card: &VCard) -> Option<String> {
    card::first_text_ref(card, PHOTO_PROPERTY).map(str::to_string)
}

/// The photo marker of a contact read from `owner`'s mailbox: a copy's is the source photo it
/// was given; anyone else's says where it is and which version.
fn photo_marker(c: &Value, owner: &str, tagged: bool) -> Option<String> {
    c["photo"].as_object()?;
    if tagged {
        let given = extended(c, PHOTO_NAME).unwrap_or_else(|| "unknown".into());
        return Some(given.split('|').next().unwrap_or_default().to_string());
    }
    Some(format!(
        "photo {owner} {} {}",
        c["id"].as_str()?,
        c["changeKey"].as_str()?
    ))
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

/// The value of one of groupsync's extended properties on a contact read with `expand_tags`.
pub fn extended(contact: &Value, name: &str) -> Option<String> {
    let id = property_id(name);
    contact["singleValueExtendedProperties"]
        .as_array()?
        .iter()
        .find(|p| {
            p["id"]
                .as_str()
                .is_some_and(|i| i.eq_ignore_ascii_case(&id))
        })
        .and_then(|p| p["value"].as_str())
        .map(str::to_string)
}

/// The tag and source id of a copy (`<tag>:<source id>`).
pub fn tag_of(contact: &Value) -> Option<(String, String)> {
    let v = extended(contact, TAG_NAME)?;
    let (tag, source) = v.split_once(':')?;
    card::is_tag(tag).then(|| (tag.to_string(), source.to_string()))
}

/// The display name Outlook would show: `displayName`, else the name parts, else an address.
fn shown_name(c: &Value) -> String {
    if let Some(d) = c["displayName"].as_str().filter(|d| !d.is_empty()) {
        return d.to_string();
    }
    let parts: Vec<&str> = ["givenName", "middleName", "surname"]
        .iter()
        .filter_map(|k| c[*k].as_str().filter(|s| !s.is_empty()))
        .collect();
    if !parts.is_empty() {
        return parts.join(" ");
    }
    c["emailAddresses"][0]["address"]
        .as_str()
        .unwrap_or("(no name)")
        .to_string()
}

/// A Graph contact of `owner`'s mailbox as a card (see the module's doc). `visible_tag`: a
/// copy without its category is marked for repair.
pub fn to_card(c: &Value, visible_tag: bool, owner: &str) -> VCard {
    let tag = tag_of(c);
    let mut entries = Vec::with_capacity(16);
    entries.push(std_entry(VCardProperty::Version, "4.0".into()));
    entries.push(std_entry(VCardProperty::Fn, shown_name(c)));
    for p in COPIED {
        let mut v = c[*p].clone();
        if *p == "categories"
            && let (Some((t, _)), Some(list)) = (&tag, v.as_array_mut())
        {
            list.retain(|x| x.as_str() != Some(t.as_str()));
        }
        if is_empty(&v) {
            continue;
        }
        entries.push(text_entry(&card_property(p), v.to_string()));
    }
    for e in c["emailAddresses"].as_array().into_iter().flatten() {
        if let Some(a) = e["address"].as_str().filter(|a| !a.is_empty()) {
            entries.push(std_entry(VCardProperty::Email, a.to_string()));
        }
    }
    if let Some(o) = c["companyName"].as_str().filter(|o| !o.is_empty()) {
        entries.push(std_entry(VCardProperty::Org, o.to_string()));
    }
    if let Some(p) = photo_marker(c, owner, tag.is_some()) {
        entries.push(text_entry(PHOTO_PROPERTY, p));
    }
    if let Some((t, source)) = tag {
        let shown = c["categories"]
            .as_array()
            .is_some_and(|l| l.iter().any(|x| x.as_str() == Some(t.as_str())));
        entries.push(text_entry(card::TAG_PROPERTY, t));
        entries.push(text_entry(card::SOURCE_PROPERTY, source));
        if let Some(via) = extended(c, VIA_NAME) {
            entries.push(text_entry(card::VIA_PROPERTY, via));
        }
        if visible_tag && !shown {
            entries.push(text_entry(REPAIR_PROPERTY, "category".into()));
        }
    }
    VCard { entries }
}

/// The contact properties of a card, as Graph holds them: the `X-MSGRAPH-*` entries whole,
/// the rest mapped from standard vCard properties (each list cut to what Graph holds).
pub fn properties_of(card: &VCard) -> Map<String, Value> {
    let mut out = Map::new();
    for p in COPIED {
        if let Some((_, text)) = values(card, &card_property(p)).next()
            && let Ok(v) = serde_json::from_str::<Value>(&text)
        {
            out.insert((*p).to_string(), v);
        }
    }
    from_vcard(card, &mut out);
    for p in LISTS {
        if let Some(list) = out.get_mut(*p).and_then(Value::as_array_mut) {
            list.truncate(capacity(p));
        }
    }
    out
}

/// The tag properties and category of a copy, into a contact body.
fn put_tag(card: &VCard, visible_tag: bool, body: &mut Map<String, Value>) {
    let (Some(tag), Some(source)) = (card::tag_of(card), card::source_of(card)) else {
        return;
    };
    let mut props = vec![json!({"id": property_id(TAG_NAME), "value": format!("{tag}:{source}")})];
    if let Some(via) = card::first_text_ref(card, card::VIA_PROPERTY).filter(|v| !v.is_empty()) {
        props.push(json!({"id": property_id(VIA_NAME), "value": via}));
    }
    body.insert("singleValueExtendedProperties".into(), Value::Array(props));
    let cats = body
        .entry("categories")
        .or_insert_with(|| Value::Array(vec![]));
    if let Some(list) = cats.as_array_mut() {
        list.retain(|x| x.as_str() != Some(tag.as_str()));
        if visible_tag {
            list.push(json!(tag));
        }
    }
}

/// The body of a new contact made from a card.
pub fn new_contact(card: &VCard, visible_tag: bool) -> Value {
    let mut body = properties_of(card);
    put_tag(card, visible_tag, &mut body);
    Value::Object(body)
}

/// The body of an update that makes a copy's managed properties those of `desired`: every
/// managed property the card lacks is cleared, `displayName` is always sent (Graph may
/// otherwise make one up), and the tag and category are set again.
pub fn update_body(desired: &VCard, fields: &FieldSelection, visible_tag: bool) -> Value {
    let have = properties_of(desired);
    let mut body = Map::new();
    for p in COPIED {
        let managed = *p == "displayName" || fields.manages(&card_property(p));
        if !managed {
            continue;
        }
        let v = have.get(*p).cloned().unwrap_or_else(|| cleared(p));
        body.insert((*p).to_string(), v);
    }
    put_tag(desired, visible_tag, &mut body);
    Value::Object(body)
}

/// The value that clears a property.
fn cleared(p: &str) -> Value {
    if LISTS.contains(&p) {
        json!([])
    } else if ADDRESSES.contains(&p) {
        Value::Object(
            ADDRESS_PARTS
                .iter()
                .map(|k| ((*k).to_string(), Value::Null))
                .collect(),
        )
    } else {
        Value::Null
    }
}

/// The body of a user's own contact copied into the default folder (there is no move in
/// Graph): every writable property it has, and a mark of the contact it came from, so a move
/// cut short is found and not made twice.
pub fn moved_copy(c: &Value, from_id: &str) -> Value {
    let mut body = Map::new();
    for p in COPIED {
        if let Some(v) = c.get(*p).filter(|v| !is_empty(v)) {
            body.insert((*p).to_string(), v.clone());
        }
    }
    body.insert(
        "singleValueExtendedProperties".into(),
        json!([{ "id": property_id(MOVED_NAME), "value": from_id }]),
    );
    Value::Object(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::graph::vcard::cannot_hold;

    fn graph_contact() -> Value {
        json!({
            "id": "AAMk1", "changeKey": "ck1",
            "displayName": "Ada Lovelace", "givenName": "Ada", "surname": "Lovelace",
            "emailAddresses": [{"address": "ada@example.com", "name": "Ada"}],
            "businessPhones": ["+44 1"], "mobilePhone": null, "homePhones": [],
            "businessAddress": {"street": "1 St", "city": "London", "state": null, "postalCode": null, "countryOrRegion": null},
            "homeAddress": {"street": null, "city": null, "state": null, "postalCode": null, "countryOrRegion": null},
            "companyName": "Engines", "categories": ["gSync9", "Friends"],
            "singleValueExtendedProperties": [
                {"id": property_id(TAG_NAME), "value": "gSync9:SRC1"},
                {"id": property_id(VIA_NAME), "value": "gSync3"},
            ],
        })
    }

    #[test]
    fn a_copy_reads_with_its_tag_and_every_property_whole() {
        let c = to_card(&graph_contact(), true, "u");
        assert_eq!(card::tag_of(&c).as_deref(), Some("gSync9"));
        assert_eq!(card::source_of(&c).as_deref(), Some("SRC1"));
        assert_eq!(card::came_through(&c), ["gSync3", "gSync9"]);
        assert_eq!(card::display_name(&c), "Ada Lovelace");
        let text = card::to_text(&c);
        assert!(
            text.contains("X-MSGRAPH-CATEGORIES:[\"Friends\"]"),
            "{text}"
        );
        assert!(text.contains("EMAIL:ada@example.com"));
        assert!(
            !text.contains("X-MSGRAPH-HOMEADDRESS"),
            "empty address left out"
        );
        assert!(!text.contains(REPAIR_PROPERTY));
        // Written back, nothing is lost and the tag is put back.
        let back = new_contact(&c, true);
        for k in [
            "displayName",
            "givenName",
            "emailAddresses",
            "businessPhones",
            "businessAddress",
            "companyName",
        ] {
            assert_eq!(back[k], graph_contact()[k], "{k}");
        }
        assert_eq!(back["categories"], json!(["Friends", "gSync9"]));
        assert_eq!(tag_of(&back), Some(("gSync9".into(), "SRC1".into())));
    }

    #[test]
    fn a_copy_without_its_category_is_marked_for_repair() {
        let mut g = graph_contact();
        g["categories"] = json!(["Friends"]);
        let text = card::to_text(&to_card(&g, true, "u"));
        assert!(text.contains(REPAIR_PROPERTY), "{text}");
        assert!(!card::to_text(&to_card(&g, false, "u")).contains(REPAIR_PROPERTY));
    }

    #[test]
    fn a_vcard_maps_to_graph_and_what_graph_cannot_hold_is_named() {
        let c = card::parse(
            "BEGIN:VCARD\r\nVERSION:4.0\r\nFN:Bo Ek\r\nN:Ek;Bo;;;\r\nEMAIL:a@x.se\r\nEMAIL:b@x.se\r\nEMAIL:c@x.se\r\nEMAIL:d@x.se\r\nTEL;TYPE=cell:+46 70\r\nTEL;TYPE=work:+46 8\r\nORG:Acme;Sales\r\nBDAY:19800102\r\nADR;TYPE=home:;;Storgatan 1;Lund;;22350;Sweden\r\nIMPP:xmpp:bo@x.se\r\nURL:https://a.se\r\nURL:https://b.se\r\nGEO:geo:55.7,13.2\r\nEND:VCARD\r\n",
        )
        .unwrap();
        let body = new_contact(&c, true);
        assert_eq!(body["givenName"], "Bo");
        assert_eq!(body["surname"], "Ek");
        assert_eq!(body["emailAddresses"].as_array().unwrap().len(), 3);
        assert_eq!(body["mobilePhone"], "+46 70");
        assert_eq!(body["businessPhones"], json!(["+46 8"]));
        assert_eq!(body["department"], "Sales");
        assert_eq!(body["birthday"], "1980-01-02T00:00:00Z");
        assert_eq!(body["homeAddress"]["street"], "Storgatan 1");
        assert_eq!(body["homeAddress"]["city"], "Lund");
        assert_eq!(body["homeAddress"]["countryOrRegion"], "Sweden");
        assert_eq!(body["imAddresses"], json!(["xmpp:bo@x.se"]));
        assert_eq!(body["businessHomePage"], "https://a.se");
        assert_eq!(
            cannot_hold(&c),
            [
                "emailAddresses: 3 of 4 kept",
                "GEO: 1 not held",
                "URL: 1 of 2 kept"
            ]
        );
    }

    #[test]
    fn a_card_read_from_graph_loses_nothing_when_written_back() {
        let read = to_card(&graph_contact(), true, "u");
        assert_eq!(cannot_hold(&read), Vec::<String>::new());
    }

    #[test]
    fn an_update_clears_what_the_desired_card_lacks() {
        let desired = to_card(&graph_contact(), true, "u");
        let body = update_body(&desired, &FieldSelection::All, false);
        assert_eq!(body["homePhones"], json!([]));
        assert_eq!(body["mobilePhone"], Value::Null);
        assert_eq!(body["homeAddress"]["street"], Value::Null);
        assert_eq!(body["categories"], json!(["Friends"]));
        assert_eq!(body["displayName"], "Ada Lovelace");
    }
}
