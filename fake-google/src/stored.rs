//! How the fake keeps a stored Person: compactly, so a benchmark can hold millions of contacts.
//!
//! A person is kept as its etag, its group memberships, and the JSON text of each other field
//! (with Google's output-only parts already filled in). Field texts are interned: the copies of
//! one source contact at a thousand users share one text per field. The parts that name the
//! contact itself (`resourceName`, the person's `metadata`, each field entry's
//! `metadata.source.id`, memberships) are written out when the person is read, not stored.
//! This module must not decide anything about the API's rules; `people.rs` does.

use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};

/// Stands for the contact's own id inside a stored field text (a JSON string `"\u0001"`).
pub(crate) const ID_PLACEHOLDER: &str = "\u{1}";
const ID_PLACEHOLDER_JSON: &str = "\\u0001";

static INTERNED: LazyLock<Mutex<HashSet<Arc<str>>>> = LazyLock::new(Default::default);

fn intern(s: &str) -> Arc<str> {
    let mut set = INTERNED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(a) = set.get(s) {
        return a.clone();
    }
    let a: Arc<str> = Arc::from(s);
    set.insert(a.clone());
    a
}

/// (the enriching function, field name, the field's value as written) → its stored text,
/// enriched and interned.
type Enriched = HashMap<(usize, Arc<str>, Value), Arc<str>>;

static ENRICHED: LazyLock<Mutex<Enriched>> = LazyLock::new(Default::default);

/// One field of a person being stored: its name and its enriched text, both interned.
fn field_text(name: &str, v: Value, enrich: fn(&str, &mut Value)) -> (Arc<str>, Arc<str>) {
    let name = intern(name);
    let key = (enrich as usize, name.clone(), v);
    let mut memo = ENRICHED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(t) = memo.get(&key) {
        return (name, t.clone());
    }
    let mut v = key.2.clone();
    enrich(&name, &mut v);
    let text = intern(&v.to_string());
    memo.insert(key, text.clone());
    (name, text)
}

/// One stored person. See the module documentation.
#[derive(Debug, Clone)]
pub struct Stored {
    etag: Box<str>,
    /// Field name → the field's JSON text, `ID_PLACEHOLDER` standing for the contact's id.
    fields: Box<[(Arc<str>, Arc<str>)]>,
    /// Resource names of the contact groups it belongs to, in order.
    groups: Box<[Box<str>]>,
}

impl Stored {
    /// Keeps a person as written by a client (or a test), with `etag`. `resourceName`,
    /// `etag`, `metadata` and `memberships` are taken apart; each other field is passed through
    /// `enrich` (which fills in Google's output-only parts, `ID_PLACEHOLDER` standing for the
    /// contact's id) once per distinct value: the copies of one contact at many users share it.
    pub(crate) fn new(etag: String, person: Value, enrich: fn(&str, &mut Value)) -> Stored {
        let groups = member_of(&person).into_iter().map(Into::into).collect();
        let Value::Object(o) = person else {
            panic!("a person is a JSON object");
        };
        let fields = o
            .into_iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "resourceName" | "etag" | "metadata" | "memberships"
                )
            })
            .map(|(k, v)| field_text(&k, v, enrich))
            .collect();
        Stored {
            etag: etag.into(),
            fields,
            groups,
        }
    }

    pub fn etag(&self) -> &str {
        &self.etag
    }

    /// Resource names of the contact's groups.
    pub fn groups(&self) -> impl Iterator<Item = &str> {
        self.groups.iter().map(|g| &**g)
    }

    /// The whole person, as Google answers it with every field in the read mask.
    pub fn value(&self, rn: &str) -> Value {
        let mut out = String::new();
        self.write_json(rn, None, &mut out);
        serde_json::from_str(&out).expect("stored person is JSON")
    }

    /// The person reduced to `fields` (all of them with `None`), as JSON text appended to
    /// `out`. `resourceName` and `etag` are always there; a contact without a photo of its own
    /// gets Google's letter avatar when `photos` is asked for.
    ///
    /// Written straight as text (no JSON tree): a benchmark's no-change rerun lists millions of
    /// contacts, and the fake shares the machine's cores with the client being measured.
    pub fn write_json(&self, rn: &str, fields: Option<&[String]>, out: &mut String) {
        let id = rn.trim_start_matches("people/");
        let wanted = |f: &str| fields.is_none_or(|fs| fs.iter().any(|x| x == f));
        out.push_str("{\"resourceName\":");
        push_json_str(out, rn);
        out.push_str(",\"etag\":");
        push_json_str(out, &self.etag);
        if wanted("metadata") {
            out.push_str(",\"metadata\":{\"sources\":[{\"type\":\"CONTACT\",\"id\":");
            push_json_str(out, id);
            out.push_str(",\"etag\":\"#");
            push_json_escaped(out, &self.etag);
            out.push_str("\"}],\"objectType\":\"PERSON\"}");
        }
        if wanted("memberships") {
            out.push_str(",\"memberships\":[");
            for (i, g) in self.groups.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"metadata\":{\"primary\":");
                out.push_str(if i == 0 { "true" } else { "false" });
                out.push_str(",\"source\":{\"type\":\"CONTACT\",\"id\":");
                push_json_str(out, id);
                out.push_str("}},\"contactGroupMembership\":{\"contactGroupId\":");
                push_json_str(out, g.trim_start_matches("contactGroups/"));
                out.push_str(",\"contactGroupResourceName\":");
                push_json_str(out, g);
                out.push_str("}}");
            }
            out.push(']');
        }
        for (k, v) in self.fields.iter() {
            if !wanted(k) {
                continue;
            }
            out.push_str(",\"");
            out.push_str(k);
            out.push_str("\":");
            // The contact's id in place of each placeholder, written as a JSON string's inside.
            let mut parts = v.split(ID_PLACEHOLDER_JSON);
            out.push_str(parts.next().unwrap_or_default());
            for part in parts {
                push_json_escaped(out, id);
                out.push_str(part);
            }
        }
        if fields.is_some_and(|fs| fs.iter().any(|f| f == "photos"))
            && !self.fields.iter().any(|(k, _)| &**k == "photos")
        {
            out.push_str(",\"photos\":");
            out.push_str(&DEFAULT_PHOTO_JSON);
        }
        out.push('}');
    }

    /// [`Self::write_json`] as a string of its own.
    pub fn json_text(&self, rn: &str, fields: &[String]) -> String {
        let mut out = String::new();
        self.write_json(rn, Some(fields), &mut out);
        out
    }

    /// This person after an update of the fields in `mask`: each takes its value from
    /// `person` (the field is removed when `person` has none), the others stay as they are.
    /// `groups` replaces the memberships when given. Only the updated fields are enriched.
    pub(crate) fn updated(
        &self,
        etag: String,
        mask: &[String],
        person: &Value,
        groups: Option<Vec<String>>,
        enrich: fn(&str, &mut Value),
    ) -> Stored {
        let mut fields: Vec<(Arc<str>, Arc<str>)> = self
            .fields
            .iter()
            .filter(|(k, _)| !mask.iter().any(|m| m == &**k))
            .cloned()
            .collect();
        for f in mask {
            if matches!(
                f.as_str(),
                "resourceName" | "etag" | "metadata" | "memberships"
            ) {
                continue;
            }
            if let Some(v) = person.get(f.as_str()) {
                fields.push(field_text(f, v.clone(), enrich));
            }
        }
        // As a JSON object keeps them (`Stored::new`): by name.
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        Stored {
            etag: etag.into(),
            fields: fields.into(),
            groups: match groups {
                Some(g) => g.into_iter().map(Into::into).collect(),
                None => self.groups.clone(),
            },
        }
    }
}

/// Appends `s` as a JSON string.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    push_json_escaped(out, s);
    out.push('"');
}

/// Appends `s` escaped as the inside of a JSON string.
fn push_json_escaped(out: &mut String, s: &str) {
    if s.chars().any(|c| c == '"' || c == '\\' || c < ' ') {
        let quoted = Value::from(s).to_string();
        out.push_str(&quoted[1..quoted.len() - 1]);
    } else {
        out.push_str(s);
    }
}

/// [`default_photo`] as JSON text, written once.
static DEFAULT_PHOTO_JSON: LazyLock<String> = LazyLock::new(|| default_photo().to_string());

/// The letter avatar Google answers for a contact without a photo of its own.
pub(crate) fn default_photo() -> Value {
    json!([{"metadata": {"primary": true, "source": {"type": "CONTACT"}}, "url": "https://lh3.googleusercontent.com/cm/default-avatar", "default": true}])
}

/// The groups a person (as JSON) names in its memberships.
pub(crate) fn member_of(p: &Value) -> Vec<String> {
    p.get("memberships")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_person_reads_back_as_stored_with_its_own_id() {
        let p = json!({
            "resourceName": "people/c1",
            "etag": "%E1",
            "metadata": {"sources": [{"type": "CONTACT", "id": "c1", "etag": "#%E1"}], "objectType": "PERSON"},
            "names": [{"givenName": "Ann", "metadata": {"primary": true, "source": {"type": "CONTACT", "id": ID_PLACEHOLDER}}}],
            "memberships": [{"metadata": {"primary": true, "source": {"type": "CONTACT", "id": "c1"}}, "contactGroupMembership": {"contactGroupId": "g", "contactGroupResourceName": "contactGroups/g"}}],
        });
        let a = Stored::new("%E1".into(), p.clone(), |_, _| {});
        let b = Stored::new("%E1".into(), p, |_, _| {});
        assert!(
            Arc::ptr_eq(&a.fields[0].1, &b.fields[0].1),
            "texts are shared"
        );
        let v = a.value("people/c7");
        assert_eq!(v["resourceName"], "people/c7");
        assert_eq!(v["names"][0]["metadata"]["source"]["id"], "c7");
        assert_eq!(v["metadata"]["sources"][0]["id"], "c7");
        assert_eq!(
            v["memberships"][0]["contactGroupMembership"]["contactGroupResourceName"],
            "contactGroups/g"
        );
        let m: Value = serde_json::from_str(&a.json_text("people/c7", &["photos".into()])).unwrap();
        assert_eq!(m["photos"][0]["default"], true);
        assert!(m.get("names").is_none() && m.get("memberships").is_none());
        assert_eq!(m["etag"], "%E1");
    }

    #[test]
    fn an_update_changes_only_the_fields_it_names() {
        let enrich: fn(&str, &mut Value) = |_, v| {
            if let Some(a) = v.as_array_mut() {
                for e in a {
                    e["metadata"] = json!({"source": {"id": ID_PLACEHOLDER}});
                }
            }
        };
        let p = json!({
            "names": [{"givenName": "Ann"}],
            "emailAddresses": [{"value": "ann@example.com"}],
            "phoneNumbers": [{"value": "+1 555"}],
            "memberships": [{"contactGroupMembership": {"contactGroupResourceName": "contactGroups/g"}}],
        });
        let a = Stored::new("e\"1".into(), p, enrich);
        let edit = json!({"names": [{"givenName": "Bea"}], "urls": [{"value": "https://x"}]});
        let mask: Vec<String> = ["names", "urls", "phoneNumbers"].map(String::from).to_vec();
        let b = a.updated("e2".into(), &mask, &edit, None, enrich);
        let v = b.value("people/c9");
        assert_eq!(v["names"][0]["givenName"], "Bea");
        assert_eq!(v["names"][0]["metadata"]["source"]["id"], "c9");
        assert_eq!(v["urls"][0]["value"], "https://x");
        assert!(v.get("phoneNumbers").is_none(), "named and absent: removed");
        assert_eq!(v["emailAddresses"], a.value("people/c9")["emailAddresses"]);
        assert_eq!(v["etag"], "e2");
        assert_eq!(
            v["memberships"][0]["contactGroupMembership"]["contactGroupResourceName"],
            "contactGroups/g"
        );
        let names: Vec<&str> = b.fields.iter().map(|(k, _)| &**k).collect();
        assert_eq!(names, ["emailAddresses", "names", "urls"], "kept by name");
        assert!(
            Arc::ptr_eq(&a.fields[0].1, &b.fields[0].1),
            "untouched: shared"
        );
        let c = b.updated(
            "e3".into(),
            &[],
            &json!({}),
            Some(vec!["contactGroups/h".into()]),
            enrich,
        );
        assert_eq!(c.groups().collect::<Vec<_>>(), ["contactGroups/h"]);
        // An etag that must be escaped is written as valid JSON, in both places it appears.
        let v = a.value("people/c9");
        assert_eq!(v["etag"], "e\"1");
        assert_eq!(v["metadata"]["sources"][0]["etag"], "#e\"1");
    }
}
