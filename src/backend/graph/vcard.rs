//! Standard vCard properties as Graph contact properties, for a card that did not come from
//! Graph (one from Graph carries its contact whole in `X-MSGRAPH-*` entries), and what a Graph
//! contact has no room for (`cannot_hold`), so it is named instead of dropped silently.
//!
//! This module does no I/O.

use calcard::vcard::{VCard, VCardEntry, VCardProperty, VCardValue};
use serde_json::{Map, Value, json};

use crate::card;

pub(super) const LISTS: &[&str] = &[
    "emailAddresses",
    "imAddresses",
    "businessPhones",
    "homePhones",
    "children",
    "categories",
];
pub(super) const ADDRESSES: &[&str] = &["businessAddress", "homeAddress", "otherAddress"];
pub(super) const ADDRESS_PARTS: &[&str] =
    &["street", "city", "state", "postalCode", "countryOrRegion"];

/// How many of a list property Graph holds (emails 3, business and home phones 2 each).
pub(super) fn capacity(property: &str) -> usize {
    match property {
        "emailAddresses" | "imAddresses" => 3,
        "businessPhones" | "homePhones" => 2,
        _ => usize::MAX,
    }
}

/// The first text value of each entry of a card property.
pub(super) fn values<'a>(
    card: &'a VCard,
    name: &str,
) -> impl Iterator<Item = (&'a VCardEntry, String)> {
    card.entries
        .iter()
        .filter(move |e| e.name.as_str().eq_ignore_ascii_case(name))
        .filter_map(|e| Some((e, e.values.first()?.as_text()?.to_string())))
}

/// The components of a structured entry (N, ORG), however the parser held them.
fn parts(e: &VCardEntry) -> Vec<String> {
    match e.values.as_slice() {
        [VCardValue::Component(c)] => c.clone(),
        vs => vs
            .iter()
            .map(|v| match v {
                VCardValue::Component(c) => c.join(" "),
                v => v.as_text().unwrap_or("").to_string(),
            })
            .collect(),
    }
}

fn has_type(e: &VCardEntry, t: &str) -> bool {
    let text = format!("{:?}", e.params).to_ascii_lowercase();
    text.contains(t)
}

/// Fills what `out` lacks from the card's standard properties.
pub(super) fn from_vcard(card: &VCard, out: &mut Map<String, Value>) {
    let mut put = |k: &str, v: Value| {
        if !out.contains_key(k) && !is_empty(&v) {
            out.insert(k.to_string(), v);
        }
    };
    put("displayName", json!(card::display_name(card)));
    if let Some(e) = card.entries.iter().find(|e| e.name == VCardProperty::N) {
        let p = parts(e);
        let part = |i: usize| p.get(i).map_or("", String::as_str);
        put("surname", json!(part(0)));
        put("givenName", json!(part(1)));
        put("middleName", json!(part(2)));
        put("title", json!(part(3)));
        put("generation", json!(part(4)));
    }
    let emails: Vec<Value> = values(card, "EMAIL")
        .map(|(_, a)| json!({"address": a, "name": a}))
        .collect();
    put("emailAddresses", Value::Array(emails));
    let (mut work, mut home, mut mobile) = (vec![], vec![], None);
    for (e, number) in values(card, "TEL") {
        if has_type(e, "cell") && mobile.is_none() {
            mobile = Some(number);
        } else if has_type(e, "home") {
            home.push(json!(number));
        } else {
            work.push(json!(number));
        }
    }
    put("businessPhones", Value::Array(work));
    put("homePhones", Value::Array(home));
    put("mobilePhone", json!(mobile));
    if let Some(e) = card.entries.iter().find(|e| e.name == VCardProperty::Org) {
        let p = parts(e);
        let part = |i: usize| p.get(i).map_or("", String::as_str);
        put("companyName", json!(part(0)));
        put("department", json!(part(1)));
    }
    for (k, prop) in [
        ("jobTitle", "TITLE"),
        ("personalNotes", "NOTE"),
        ("nickName", "NICKNAME"),
        ("businessHomePage", "URL"),
        ("profession", "ROLE"),
    ] {
        put(k, json!(values(card, prop).next().map(|(_, v)| v)));
    }
    let bday = card
        .entries
        .iter()
        .find(|e| e.name == VCardProperty::Bday)
        .and_then(|e| e.values.first())
        .and_then(birthday_of);
    put("birthday", json!(bday));
    let cats: Vec<Value> = values(card, "CATEGORIES")
        .flat_map(|(_, v)| {
            v.split([',', ';'])
                .map(|s| json!(s.trim()))
                .collect::<Vec<_>>()
        })
        .collect();
    put("categories", Value::Array(cats));
    let ims: Vec<Value> = values(card, "IMPP").map(|(_, v)| json!(v)).collect();
    put("imAddresses", Value::Array(ims));
    put_addresses(card, &mut put);
}

/// The first home, work and other ADR of a card, as Graph's three addresses.
fn put_addresses(card: &VCard, put: &mut impl FnMut(&str, Value)) {
    for (kind, field) in [
        (Some("home"), "homeAddress"),
        (Some("work"), "businessAddress"),
        (None, "otherAddress"),
    ] {
        let e = card.entries.iter().find(|e| {
            e.name == VCardProperty::Adr
                && kind.map_or(!has_type(e, "home") && !has_type(e, "work"), |k| {
                    has_type(e, k)
                })
        });
        if let Some(e) = e {
            put(field, address_of(&parts(e)));
        }
    }
}

/// A vCard ADR (post office box, extended, street, locality, region, postal code, country)
/// as a Graph physical address.
fn address_of(p: &[String]) -> Value {
    let part = |i: usize| p.get(i).map_or("", String::as_str).trim();
    let street = [part(0), part(1), part(2)]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    let mut a = Map::new();
    for (k, v) in ADDRESS_PARTS
        .iter()
        .zip([street.as_str(), part(3), part(4), part(5), part(6)])
    {
        if !v.is_empty() {
            a.insert((*k).to_string(), json!(v));
        }
    }
    Value::Object(a)
}

/// A vCard BDAY value (a date, or text such as `1980-01-02`) as Graph's birthday; one without
/// a year cannot be held.
fn birthday_of(v: &VCardValue) -> Option<String> {
    match v {
        VCardValue::PartialDateTime(d) => Some(format!(
            "{:04}-{:02}-{:02}T00:00:00Z",
            d.year?, d.month?, d.day?
        )),
        v => birthday(v.as_text()?),
    }
}

/// A text BDAY (`1980-01-02`, `19800102`, with or without a time) as Graph's birthday.
fn birthday(v: &str) -> Option<String> {
    let digits: String = v
        .chars()
        .take_while(|c| *c != 'T')
        .filter(char::is_ascii_digit)
        .collect();
    (digits.len() == 8).then(|| {
        format!(
            "{}-{}-{}T00:00:00Z",
            &digits[..4],
            &digits[4..6],
            &digits[6..8]
        )
    })
}

/// What of a card a Graph contact cannot hold, for `plan` and the run report: one line per
/// vCard property with more values than Graph has room for ("EMAIL: 3 of 4 kept") or with no
/// Graph field at all ("GEO: 1 not held"). A card read from Graph carries its contact whole
/// (`X-MSGRAPH-*`) and loses nothing.
pub fn cannot_hold(card: &VCard) -> Vec<String> {
    let mut whole = Map::new();
    from_vcard(card, &mut whole);
    let mut lost = vec![];
    for p in LISTS {
        let n = whole.get(*p).and_then(Value::as_array).map_or(0, Vec::len);
        if n > capacity(p) {
            lost.push(format!("{p}: {} of {n} kept", capacity(p)));
        }
    }
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for e in &card.entries {
        let name = e.name.as_str().to_ascii_uppercase();
        if !name.starts_with(super::fields::PREFIX) && !card::is_internal_property(&name) {
            *counts.entry(name).or_default() += 1;
        }
    }
    for (name, n) in counts {
        match room(&name) {
            Some(k) if n > k => lost.push(format!("{name}: {k} of {n} kept")),
            Some(_) => {}
            None => lost.push(format!("{name}: {n} not held")),
        }
    }
    lost
}

/// How many entries of a vCard property a Graph contact has room for (lists are counted by
/// their Graph property in `cannot_hold`); `None`: no Graph field holds it.
fn room(name: &str) -> Option<usize> {
    match name {
        "EMAIL" | "TEL" | "IMPP" | "CATEGORIES" => Some(usize::MAX),
        "ADR" => Some(ADDRESSES.len()),
        "FN" | "N" | "ORG" | "TITLE" | "ROLE" | "NOTE" | "NICKNAME" | "URL" | "BDAY" => Some(1),
        _ => None,
    }
}

/// A value that holds nothing: null, "", [], or an address whose parts are all empty.
pub(super) fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.iter().all(is_empty),
        Value::Object(o) => o.values().all(is_empty),
        _ => false,
    }
}
