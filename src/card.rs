//! vCard handling shared by every backend: parsing and writing through `calcard`, the job's tag
//! properties, the managed/unmanaged split of a card, content digests and contact filters.
//!
//! This module owns the exact shape of a copy (which properties carry the tag and the source
//! contact's id) and the rule that decides which properties of a copy the job manages. It must not
//! do I/O: backends read and write bytes, this module only turns bytes into cards and back.

use calcard::vcard::{VCard, VCardEntry, VCardProperty, VCardValue, VCardVersion};
use calcard::{Entry, Parser};
use regex::Regex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::{BTreeSet, HashSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

/// Property that carries the job's tag (`gSync<digits>`) on every copy. It is what a user sees.
pub const TAG_PROPERTY: &str = "X-GSYNC";
/// Property that carries the id of the source contact a copy was made from.
pub const SOURCE_PROPERTY: &str = "X-GSYNC-SOURCE";
/// Property that carries the tags of the jobs a copy came through before this one (a copy of a
/// copy: `gSync1,gSync2`): a job never copies a contact that came through it, so jobs that feed
/// each other never grow.
pub const VIA_PROPERTY: &str = "X-GSYNC-VIA";
/// A managed-only marker a provider puts on a copy that needs repair (its visible tag, or its
/// group membership, missing), so it differs from its source and gets rewritten. Never written
/// to a provider.
pub const REPAIR_PROPERTY: &str = "X-GSYNC-REPAIR";

/// Properties that describe the card itself rather than the person: never copied, never compared.
const STRUCTURAL: &[&str] = &[
    "BEGIN",
    "END",
    "VERSION",
    "UID",
    "PRODID",
    "REV",
    TAG_PROPERTY,
    SOURCE_PROPERTY,
    VIA_PROPERTY,
];

/// True for a property that describes the card itself or is groupsync's own bookkeeping
/// (VERSION, UID, the tag properties, the repair marker), not the person.
pub fn is_internal_property(name: &str) -> bool {
    STRUCTURAL.iter().any(|s| s.eq_ignore_ascii_case(name))
        || name.eq_ignore_ascii_case(REPAIR_PROPERTY)
}

/// Parses one vCard from text. Errors are short human sentences (the caller adds the file name).
pub fn parse(text: &str) -> Result<VCard, String> {
    let mut parser = Parser::new(text);
    match parser.entry() {
        Entry::VCard(_) if !text.to_ascii_uppercase().contains("END:VCARD") => {
            Err("unterminated vCard (missing END:VCARD)".into())
        }
        Entry::VCard(card) => {
            if card
                .entries
                .iter()
                .any(|e| e.name == VCardProperty::Fn || e.name == VCardProperty::N)
            {
                Ok(card)
            } else {
                Err("vCard has neither FN nor N".into())
            }
        }
        Entry::Eof => Err("no vCard in file".into()),
        Entry::InvalidLine(line) => Err(format!("invalid line: {}", truncate(&line, 60))),
        Entry::UnterminatedComponent(c) => Err(format!("unterminated {c} (missing END:VCARD)")),
        Entry::ICalendar(_) => Err("expected a vCard, found an iCalendar object".into()),
        other => Err(format!("not a vCard: {other:?}")
            .chars()
            .take(120)
            .collect()),
    }
}

/// Where each vCard of a text holding several is: the byte range of each `BEGIN:VCARD` …
/// `END:VCARD` block, its last line's line break included. Text between blocks belongs to none.
/// A block without its `END:VCARD` runs to the next `BEGIN:VCARD` (or the end). A text with no
/// `BEGIN:VCARD` line at all is one block: the whole text (which will not parse).
pub fn split_cards(text: &str) -> Vec<std::ops::Range<usize>> {
    let mut out = vec![];
    let mut start: Option<usize> = None;
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let here = at;
        at += line.len();
        let trimmed = line.trim();
        if trimmed.eq_ignore_ascii_case("BEGIN:VCARD") {
            if let Some(s) = start.replace(here) {
                out.push(s..here);
            }
        } else if trimmed.eq_ignore_ascii_case("END:VCARD")
            && let Some(s) = start.take()
        {
            out.push(s..at);
        }
    }
    if let Some(s) = start {
        out.push(s..text.len());
    }
    if out.is_empty() {
        out.push(0..text.len());
    }
    out
}

/// Reads back a copy this program wrote with `to_text`: any vCard, without `parse`'s checks
/// on what a source contact must have (a copy holds only the managed properties).
pub fn read_copy(text: &str) -> Result<VCard, String> {
    match Parser::new(text).entry() {
        Entry::VCard(card) => Ok(card),
        other => Err(format!("not a vCard: {other:?}")
            .chars()
            .take(120)
            .collect()),
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n).collect::<String>() + "…"
    }
}

/// Writes a card in its own version (3.0 stays 3.0, 4.0 stays 4.0), CRLF line endings, folded.
///
/// calcard 0.3.14 writes a 4.0 inline photo as `data:image/jpeg;base64\,…`: the escaped comma
/// breaks the data URI for other readers (RFC 6350 does not escape URI values), so it is written
/// unescaped here. calcard reads both forms.
pub fn to_text(card: &VCard) -> String {
    write_card(card, None).0
}

/// [`to_text`] and [`managed_digest`] of a card in one pass: each entry is written once, into
/// the text, and the managed ones are hashed from there.
pub fn text_and_digest(card: &VCard, fields: &FieldSelection) -> (String, String) {
    let (text, digest) = write_card(card, Some(fields));
    (text, digest.unwrap_or_default())
}

/// Writes a card (see [`to_text`]), hashing its managed entries (see [`managed_digest`]) when
/// `fields` is given.
fn write_card(card: &VCard, fields: Option<&FieldSelection>) -> (String, Option<String>) {
    let v = version(card);
    let is_v4 = v == VCardVersion::V4_0;
    let mut out = String::with_capacity(512);
    let _ = write!(out, "BEGIN:VCARD\r\nVERSION:{v}\r\n");
    let mut hasher = fields.map(|_| Sha256::new_with_prefix(format!("{v}\n")));
    for e in &card.entries {
        if matches!(
            e.name,
            VCardProperty::Begin | VCardProperty::End | VCardProperty::Version
        ) {
            continue;
        }
        let start = out.len();
        let _ = e.write_to(&mut out, is_v4);
        if let (Some(h), Some(f)) = (hasher.as_mut(), fields)
            && f.manages(&upper_name(e))
        {
            h.update(&out.as_bytes()[start..]);
        }
        if is_v4 && e.values.iter().any(|v| matches!(v, VCardValue::Binary(_))) {
            // "base64\\," is written in one piece, so folding never splits it.
            let line = out[start..].replacen("base64\\,", "base64,", 1);
            out.truncate(start);
            out.push_str(&line);
        }
    }
    out.push_str("END:VCARD\r\n");
    (out, hasher.map(|h| hex_of(&h.finalize())))
}

/// The version a card declares, defaulting to 3.0 (what most servers and tools write).
pub fn version(card: &VCard) -> VCardVersion {
    card.version().unwrap_or(VCardVersion::V3_0)
}

/// A property's name in upper case, borrowed when it already is (as every name this tool writes).
fn upper_name(entry: &VCardEntry) -> Cow<'_, str> {
    let name = entry.name.as_str();
    if name.bytes().any(|b| b.is_ascii_lowercase()) {
        Cow::Owned(name.to_ascii_uppercase())
    } else {
        Cow::Borrowed(name)
    }
}

fn first_text(card: &VCard, name: &str) -> Option<String> {
    first_text_ref(card, name).map(str::to_string)
}

/// The text of the first `name` property (any case) of a card, borrowed.
pub fn first_text_ref<'a>(card: &'a VCard, name: &str) -> Option<&'a str> {
    card.entries
        .iter()
        .find(|e| e.name.as_str().eq_ignore_ascii_case(name))
        .and_then(|e| e.values.first())
        .and_then(|v| v.as_text())
}

/// The tag a card carries, if any.
pub fn tag_of(card: &VCard) -> Option<String> {
    first_text(card, TAG_PROPERTY).map(|s| s.trim().to_string())
}

/// The source contact id a copy carries, if any.
pub fn source_of(card: &VCard) -> Option<String> {
    first_text(card, SOURCE_PROPERTY)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// True for a well-formed tag: `gSync` followed by one or more digits.
pub fn is_tag(s: &str) -> bool {
    s.len() > 5 && s.starts_with("gSync") && s[5..].bytes().all(|b| b.is_ascii_digit())
}

/// The tags of the jobs a contact came through: those its `X-GSYNC-VIA` names, and the tag it
/// carries (a copy made by another job), sorted, once each.
pub fn came_through(card: &VCard) -> Vec<String> {
    let mut tags: BTreeSet<String> = first_text_ref(card, VIA_PROPERTY)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| is_tag(t))
        .map(str::to_string)
        .collect();
    tags.extend(tag_of(card).filter(|t| is_tag(t)));
    tags.into_iter().collect()
}

/// A name for people: FN, else the components of N, else "(no name)".
pub fn display_name(card: &VCard) -> String {
    if let Some(fnv) = first_text(card, "FN").filter(|s| !s.trim().is_empty()) {
        return fnv;
    }
    if let Some(n) = card.entries.iter().find(|e| e.name == VCardProperty::N) {
        let parts: Vec<String> = n
            .values
            .iter()
            .filter_map(value_text)
            .filter(|s| !s.is_empty())
            .collect();
        if !parts.is_empty() {
            return parts.join(" ");
        }
    }
    "(no name)".into()
}

fn value_text(v: &VCardValue) -> Option<String> {
    match v {
        VCardValue::Text(t) => Some(t.clone()),
        VCardValue::Component(parts) => Some(parts.join(" ")),
        _ => None,
    }
}

fn entry_texts<'a>(card: &'a VCard, prop: VCardProperty) -> impl Iterator<Item = String> + 'a {
    card.entries
        .iter()
        .filter(move |e| e.name == prop)
        .flat_map(|e| e.values.iter().filter_map(value_text))
}

/// Which properties of a copy the job manages. Everything else on a copy is left as the
/// destination has it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum FieldSelection {
    /// Every property of the source card except the structural ones (VERSION, UID, PRODID, REV,
    /// and the tag properties). Anything a user adds to a copy is removed on the next run.
    #[default]
    All,
    /// Only these property names (upper case). FN and N are always included: a card needs a name.
    Only(BTreeSet<String>),
}

impl FieldSelection {
    /// Builds a selection from a job's `fields` list.
    pub fn from_list(fields: Option<&[String]>) -> Self {
        match fields {
            None => FieldSelection::All,
            Some(list) => {
                let mut set: BTreeSet<String> =
                    list.iter().map(|f| f.trim().to_ascii_uppercase()).collect();
                set.insert("FN".into());
                set.insert("N".into());
                // Google keeps each Person field in an X-GOOGLE-* property: `TEL` or
                // `phoneNumbers` in a job file stands for X-GOOGLE-PHONENUMBERS too.
                // Graph keeps each contact property in an X-MSGRAPH-* property the same way.
                for f in list.iter().chain(["names".to_string()].iter()) {
                    set.extend(crate::backend::google::fields::expand_field_names(f.trim()));
                    set.extend(crate::backend::graph::fields::expand_field_names(f.trim()));
                }
                // The repair marker of a copy is always managed.
                set.insert(REPAIR_PROPERTY.into());
                FieldSelection::Only(set)
            }
        }
    }

    /// True if the job manages this property name (already upper case).
    pub fn manages(&self, name: &str) -> bool {
        if STRUCTURAL.contains(&name) {
            return false;
        }
        match self {
            FieldSelection::All => true,
            FieldSelection::Only(set) => set.contains(name),
        }
    }
}

/// The entries of `card` that the job manages, in card order.
pub fn managed_entries<'a>(
    card: &'a VCard,
    fields: &'a FieldSelection,
) -> impl Iterator<Item = &'a VCardEntry> + 'a {
    card.entries
        .iter()
        .filter(move |e| fields.manages(&upper_name(e)))
}

/// A stable digest of what the job manages on a card: its version and managed entries, written
/// the way the card would be written. Two cards with the same digest need no update.
pub fn managed_digest(card: &VCard, fields: &FieldSelection) -> String {
    let v = version(card);
    let mut text = format!("{v}\n");
    for e in managed_entries(card, fields) {
        let _ = e.write_to(&mut text, v == VCardVersion::V4_0);
    }
    hex_digest(text.as_bytes())
}

/// The digest of each managed property of a card, by property name, sorted by name.
pub type FieldDigests = Vec<(Arc<str>, u64)>;

/// A short digest of each managed property (all entries of one name together), sorted by name,
/// to tell which properties differ between two cards (the change log's "fields").
pub fn field_digests(card: &VCard, fields: &FieldSelection) -> FieldDigests {
    use std::hash::{Hash, Hasher};
    let is_v4 = version(card) == VCardVersion::V4_0;
    let mut by_name: std::collections::BTreeMap<String, std::collections::hash_map::DefaultHasher> =
        Default::default();
    for e in managed_entries(card, fields) {
        let mut text = String::new();
        let _ = e.write_to(&mut text, is_v4);
        text.hash(by_name.entry(upper_name(e).into_owned()).or_default());
    }
    by_name
        .into_iter()
        .map(|(k, h)| (intern(k), h.finish()))
        .collect()
}

/// A `field_digests` list as text (`NAME=digest` lines), for the state database.
pub fn field_digests_text(fields: &[(Arc<str>, u64)]) -> String {
    let mut text = String::with_capacity(fields.len() * 40);
    for (name, digest) in fields {
        text.push_str(name);
        text.push('=');
        text.push_str(&format!("{digest:016x}"));
        text.push('\n');
    }
    text
}

/// Reads `field_digests_text` back; `None` if the text is not one it wrote.
pub fn field_digests_from_text(text: &str) -> Option<FieldDigests> {
    text.lines()
        .map(|l| {
            let (name, digest) = l.rsplit_once('=')?;
            Some((
                intern(name.to_string()),
                u64::from_str_radix(digest, 16).ok()?,
            ))
        })
        .collect()
}

/// One shared copy of each property name: digest lists are kept for every contact of every
/// destination being synced, and hold a few dozen distinct names between them.
fn intern(name: String) -> Arc<str> {
    static NAMES: std::sync::LazyLock<Mutex<HashSet<Arc<str>>>> =
        std::sync::LazyLock::new(Default::default);
    let mut names = crate::mutex::lock(&NAMES);
    if let Some(n) = names.get(name.as_str()) {
        return n.clone();
    }
    let n: Arc<str> = name.into();
    names.insert(n.clone());
    n
}

/// Names of the properties whose digests differ between two `field_digests` lists.
pub fn changed_fields(a: &[(Arc<str>, u64)], b: &[(Arc<str>, u64)]) -> Vec<String> {
    let ma: std::collections::BTreeMap<&str, u64> = a.iter().map(|(k, v)| (&**k, *v)).collect();
    let mb: std::collections::BTreeMap<&str, u64> = b.iter().map(|(k, v)| (&**k, *v)).collect();
    let mut names: BTreeSet<&str> = ma.keys().copied().collect();
    names.extend(mb.keys().copied());
    names
        .into_iter()
        .filter(|n| ma.get(n) != mb.get(n))
        .map(str::to_string)
        .collect()
}

/// Hex SHA-256 of bytes, shortened to 32 hex digits (128 bits: collisions are not a concern).
pub fn hex_digest(bytes: &[u8]) -> String {
    hex_of(&Sha256::digest(bytes))
}

/// The first half of a SHA-256 digest in hex.
fn hex_of(d: &[u8]) -> String {
    let mut s = String::with_capacity(32);
    for b in &d[..16] {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn text_entry(name: &str, value: &str) -> VCardEntry {
    VCardEntry {
        group: None,
        name: VCardProperty::Other(name.to_string()),
        params: vec![],
        values: vec![VCardValue::Text(value.to_string())],
    }
}

/// The copy of a source card a destination must hold: the source's managed entries, a UID of its
/// own, and the tag properties (with the jobs the source came through, `VIA_PROPERTY`).
pub fn make_copy(
    source: &VCard,
    fields: &FieldSelection,
    tag: &str,
    source_id: &str,
    uid: &str,
) -> VCard {
    let v = version(source);
    // Sized exactly: the run holds one copy per source contact for its whole length.
    let mut entries = Vec::with_capacity(managed_entries(source, fields).count() + 4);
    entries.push(VCardEntry {
        group: None,
        name: VCardProperty::Version,
        params: vec![],
        values: vec![VCardValue::Text(v.to_string())],
    });
    entries.push(VCardEntry {
        group: None,
        name: VCardProperty::Uid,
        params: vec![],
        values: vec![VCardValue::Text(uid.to_string())],
    });
    entries.extend(managed_entries(source, fields).cloned());
    entries.push(text_entry(TAG_PROPERTY, tag));
    entries.push(text_entry(SOURCE_PROPERTY, source_id));
    let via = came_through(source);
    if !via.is_empty() {
        entries.push(text_entry(VIA_PROPERTY, &via.join(",")));
    }
    VCard { entries }
}

/// The card with its UID replaced by `uid` (added if it had none).
pub fn with_uid(card: &VCard, uid: &str) -> VCard {
    let mut entries = Vec::with_capacity(card.entries.len() + 1);
    let mut set = false;
    for e in &card.entries {
        if e.name == VCardProperty::Uid {
            if !set {
                entries.push(VCardEntry {
                    group: None,
                    name: VCardProperty::Uid,
                    params: vec![],
                    values: vec![VCardValue::Text(uid.to_string())],
                });
                set = true;
            }
        } else {
            entries.push(e.clone());
        }
    }
    if !set {
        let at = entries
            .iter()
            .position(|e| e.name == VCardProperty::Version)
            .map_or(0, |i| i + 1);
        entries.insert(
            at,
            VCardEntry {
                group: None,
                name: VCardProperty::Uid,
                params: vec![],
                values: vec![VCardValue::Text(uid.to_string())],
            },
        );
    }
    VCard { entries }
}

/// Updates an existing copy to `desired`: managed entries and the version come from `desired`;
/// the copy's UID and every property the job does not manage stay as the destination has them.
pub fn merge_copy(existing: &VCard, desired: &VCard, fields: &FieldSelection) -> VCard {
    let mut entries: Vec<VCardEntry> = Vec::with_capacity(desired.entries.len() + 4);
    for e in &desired.entries {
        if e.name == VCardProperty::Version {
            entries.push(e.clone());
        }
    }
    let mut kept_uid = false;
    for e in &existing.entries {
        let name = upper_name(e);
        if name == "UID" {
            kept_uid = true;
            entries.push(e.clone());
        } else if !fields.manages(&name)
            && !matches!(
                &*name,
                "VERSION" | "BEGIN" | "END" | TAG_PROPERTY | SOURCE_PROPERTY | VIA_PROPERTY
            )
        {
            entries.push(e.clone());
        }
    }
    for e in &desired.entries {
        let name = upper_name(e);
        if fields.manages(&name)
            || matches!(&*name, TAG_PROPERTY | SOURCE_PROPERTY | VIA_PROPERTY)
            || (name == "UID" && !kept_uid)
        {
            entries.push(e.clone());
        }
    }
    VCard { entries }
}

/// Removes the tag properties, turning a copy into an ordinary contact (used by `restore --untag`).
pub fn untag(card: &VCard) -> VCard {
    VCard {
        entries: card
            .entries
            .iter()
            .filter(|e| {
                !matches!(
                    &*upper_name(e),
                    TAG_PROPERTY | SOURCE_PROPERTY | VIA_PROPERTY
                )
            })
            .cloned()
            .collect(),
    }
}

/// A job's contact filter: every regex given must match at least one value of its property.
#[derive(Debug, Clone, Default)]
pub struct ContactFilter {
    pub email: Option<Regex>,
    pub name: Option<Regex>,
    pub organization: Option<Regex>,
}

impl ContactFilter {
    /// True if the filter keeps this source card.
    pub fn keeps(&self, card: &VCard) -> bool {
        if let Some(re) = &self.email
            && !entry_texts(card, VCardProperty::Email).any(|v| re.is_match(&v))
        {
            return false;
        }
        if let Some(re) = &self.name {
            let name = display_name(card);
            if !re.is_match(&name) && !entry_texts(card, VCardProperty::N).any(|v| re.is_match(&v))
            {
                return false;
            }
        }
        if let Some(re) = &self.organization
            && !entry_texts(card, VCardProperty::Org).any(|v| re.is_match(&v))
        {
            return false;
        }
        true
    }

    /// True when the filter keeps everything.
    pub fn is_empty(&self) -> bool {
        self.email.is_none() && self.name.is_none() && self.organization.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V3: &str = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:abc\r\nFN:Jane Doe\r\nN:Doe;Jane;;;\r\nEMAIL;TYPE=INTERNET,WORK:jane@example.com\r\nitem1.X-ABLabel:Other\r\nX-CUSTOM;FOO=bar:keep me\r\nORG:Example\\, Inc.;Sales\r\nEND:VCARD\r\n";

    #[test]
    fn field_digests_survive_their_text_form() {
        let card = parse(V3).unwrap();
        let fields = field_digests(&card, &FieldSelection::All);
        assert!(fields.len() > 3, "{fields:?}");
        let text = field_digests_text(&fields);
        assert_eq!(field_digests_from_text(&text), Some(fields));
        assert_eq!(field_digests_from_text("EMAIL=not hex\n"), None);
        assert_eq!(field_digests_from_text(""), Some(vec![]));
    }

    #[test]
    fn v3_round_trips_with_params_and_unknown_properties() {
        let card = parse(V3).unwrap();
        let out = to_text(&card);
        assert!(out.contains("VERSION:3.0"), "{out}");
        assert!(
            out.contains("EMAIL;TYPE=INTERNET,WORK:jane@example.com"),
            "{out}"
        );
        assert!(out.contains("X-CUSTOM;FOO=bar:keep me"), "{out}");
        assert!(out.contains("item1.X-ABLabel:Other"), "{out}");
        assert!(out.contains("ORG:Example\\, Inc.;Sales"), "{out}");
        assert_eq!(parse(&out).unwrap(), card);
    }

    #[test]
    fn copy_carries_tag_and_source_and_keeps_version() {
        let card = parse(V3).unwrap();
        let copy = make_copy(&card, &FieldSelection::All, "gSync42", "src-1", "u1");
        let text = to_text(&copy);
        let back = parse(&text).unwrap();
        assert_eq!(tag_of(&back).as_deref(), Some("gSync42"));
        assert_eq!(source_of(&back).as_deref(), Some("src-1"));
        assert_eq!(back.uid(), Some("u1"));
        assert_eq!(version(&back), VCardVersion::V3_0);
        assert_eq!(
            managed_digest(&back, &FieldSelection::All),
            managed_digest(&card, &FieldSelection::All)
        );
    }

    /// A copy of a copy names the jobs its source came through; a job reading such a contact
    /// knows whether it came through it.
    #[test]
    fn a_copy_of_a_copy_names_the_jobs_it_came_through() {
        let src = parse(V3).unwrap();
        assert!(came_through(&src).is_empty());
        let first = make_copy(&src, &FieldSelection::All, "gSync1", "s", "u1");
        assert_eq!(came_through(&first), ["gSync1"]);
        assert!(first_text_ref(&first, VIA_PROPERTY).is_none());
        let second = make_copy(&first, &FieldSelection::All, "gSync2", "u1", "u2");
        assert_eq!(first_text_ref(&second, VIA_PROPERTY), Some("gSync1"));
        assert_eq!(came_through(&second), ["gSync1", "gSync2"]);
        let third = make_copy(&second, &FieldSelection::All, "gSync3", "u2", "u3");
        assert_eq!(first_text_ref(&third, VIA_PROPERTY), Some("gSync1,gSync2"));
        // It is not managed content: the three copies hold the same.
        assert_eq!(
            managed_digest(&third, &FieldSelection::All),
            managed_digest(&src, &FieldSelection::All)
        );
        assert!(
            untag(&third)
                .entries
                .iter()
                .all(|e| e.name.as_str() != VIA_PROPERTY)
        );
    }

    #[test]
    fn merge_keeps_unmanaged_and_replaces_managed() {
        let src = parse(V3).unwrap();
        let only = FieldSelection::from_list(Some(&["EMAIL".to_string()]));
        let copy = make_copy(&src, &only, "gSync1", "s", "u");
        let edited = parse(
            &to_text(&copy)
                .replace("jane@example.com", "x@y.z")
                .replace("END:VCARD", "NOTE:mine\r\nEND:VCARD"),
        )
        .unwrap();
        assert_ne!(managed_digest(&edited, &only), managed_digest(&src, &only));
        let merged = merge_copy(&edited, &copy, &only);
        assert_eq!(managed_digest(&merged, &only), managed_digest(&src, &only));
        assert!(to_text(&merged).contains("NOTE:mine"));
        assert_eq!(tag_of(&merged).as_deref(), Some("gSync1"));
    }

    #[test]
    fn filter_matches_email_name_org() {
        let card = parse(V3).unwrap();
        let f = ContactFilter {
            email: Some(Regex::new("@example\\.com$").unwrap()),
            ..Default::default()
        };
        assert!(f.keeps(&card));
        let f = ContactFilter {
            organization: Some(Regex::new("^Acme").unwrap()),
            ..Default::default()
        };
        assert!(!f.keeps(&card));
        let f = ContactFilter {
            name: Some(Regex::new("Jane").unwrap()),
            ..Default::default()
        };
        assert!(f.keeps(&card));
    }

    #[test]
    fn v4_inline_photo_keeps_a_valid_data_uri() {
        let text = "BEGIN:VCARD\r\nVERSION:4.0\r\nFN:x\r\nPHOTO:data:image/jpeg;base64,/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAUDBAQEAwUEBAQFBQUGBwwIBwcHBw8LCwkMEQ8SEhEPERETFhwXExQaFRERGCEYGhwdHx8fExciJCIeJBweHx7/\r\nEND:VCARD\r\n";
        let card = parse(text).unwrap();
        let out = to_text(&card);
        let unfolded = out.replace("\r\n ", "");
        assert!(
            unfolded.contains("PHOTO:data:image/jpeg;base64,/9j/4AAQ"),
            "{out}"
        );
        assert!(out.lines().all(|l| l.len() <= 76), "{out}");
        assert_eq!(parse(&out).unwrap(), card);
    }

    #[test]
    fn one_pass_text_and_digest_are_to_text_and_managed_digest() {
        let lower = V3.replace("X-CUSTOM", "x-custom").replace("EMAIL", "email");
        let photo = "BEGIN:VCARD\r\nVERSION:4.0\r\nFN:x\r\nNOTE:n\r\nPHOTO:data:image/jpeg;base64,/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAUDBAQEAwUEBAQFBQUGBwwIBwcHBw8LCwkMEQ8SEhEPERETFhwXExQaFRERGCEYGhwdHx8fExciJCIeJBweHx7/\r\nEND:VCARD\r\n";
        let selections = [
            FieldSelection::All,
            FieldSelection::from_list(Some(&["EMAIL".to_string()])),
            FieldSelection::from_list(Some(&["PHOTO".to_string(), "x-custom".to_string()])),
        ];
        let mut digests = HashSet::new();
        for text in [V3, lower.as_str(), photo] {
            let card = parse(text).unwrap();
            let copy = make_copy(&card, &FieldSelection::All, "gSync42", "src-1", "u1");
            for c in [&card, &copy] {
                for f in &selections {
                    let (text, digest) = text_and_digest(c, f);
                    assert_eq!(text, to_text(c));
                    assert_eq!(digest, managed_digest(c, f));
                    digests.insert(digest);
                }
            }
        }
        // The selections do tell the cards apart.
        assert!(digests.len() >= 6, "{digests:?}");
    }

    #[test]
    fn several_cards_in_one_text_are_split_at_their_blocks() {
        let a = "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:A\r\nEND:VCARD\r\n";
        let b = "begin:vcard\nVERSION:3.0\nFN:B\nend:vcard";
        let text = format!("{a}\r\n{b}");
        let parts = split_cards(&text);
        assert_eq!(parts.len(), 2);
        assert_eq!(&text[parts[0].clone()], a);
        assert_eq!(&text[parts[1].clone()], b);
        assert_eq!(
            parse(&text[parts[1].clone()]).map(|c| display_name(&c)),
            Ok("B".into())
        );
        // One card, or none: the whole text is one block.
        assert_eq!(split_cards(a), vec![0..a.len()]);
        assert_eq!(split_cards("hello"), vec![0..5]);
        // A block without its end runs to the next one.
        let cut = format!("BEGIN:VCARD\r\nFN:cut\r\n{a}");
        let parts = split_cards(&cut);
        assert_eq!(parts.len(), 2);
        assert_eq!(&cut[parts[1].clone()], a);
        assert!(parse(&cut[parts[0].clone()]).is_err());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse("hello").is_err());
        assert!(parse("BEGIN:VCARD\r\nVERSION:3.0\r\nFN:x\r\n").is_err());
    }
}
