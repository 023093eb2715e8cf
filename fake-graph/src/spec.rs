//! The contract for mailbox calls: the vendored OpenAPI subset
//! (`specs/graph-contacts-subset.yaml`), loaded with serde_norway when the fake starts.
//!
//! It indexes every path template (a `{name}` segment matches any one segment; `delta()` also
//! matches the `delta` spelling), each verb's declared query parameters (`$ref`s to
//! `#/components/parameters` resolved) and request body (a JSON schema, or binary), and checks
//! request bodies against the schemas with `$ref` and `allOf` resolved: unknown properties,
//! read-only properties, navigation properties, wrong JSON types, string patterns (date-times).
//! The spec marks nothing `readOnly`, so the read-only list is explicit here ([`READ_ONLY`]).

use regex::Regex;
use serde_json::{Map, Value};
use std::collections::{BTreeSet, HashMap};
use std::sync::{LazyLock, Mutex};

use crate::http::Fail;

/// Properties a client must not send in a POST or PATCH body (Graph sets them).
pub const READ_ONLY: &[&str] = &[
    "id",
    "changeKey",
    "createdDateTime",
    "lastModifiedDateTime",
    "parentFolderId",
    "@odata.etag",
];

/// What a request body of an operation is.
#[derive(Debug, Clone, PartialEq)]
pub enum BodyKind {
    /// No body.
    None,
    /// JSON checked against this schema (`microsoft.graph.contact`).
    Json(String),
    /// Bytes (a photo).
    Binary,
}

/// One verb of one path of the spec.
#[derive(Debug)]
pub struct Operation {
    /// The spec's `operationId`.
    pub id: String,
    /// Upper-case HTTP method.
    pub method: String,
    /// The path template, e.g. `/users/{user-id}/contacts/{contact-id}`.
    pub template: String,
    segs: Vec<String>,
    /// Declared query parameters: name and schema.
    pub query: Vec<(String, Value)>,
    pub body: BodyKind,
}

/// What a request path and method found in the spec.
pub enum Found<'a> {
    /// The operation, with the path parameters by name.
    Op(&'a Operation, HashMap<String, String>),
    /// The path exists, not with this method.
    WrongMethod,
    /// No such path.
    NoPath,
}

/// The loaded spec.
pub struct Spec {
    doc: Value,
    /// Every operation, in the spec's order.
    pub ops: Vec<Operation>,
}

/// Extended property ids: `String {GUID} Name X`, `Integer {GUID} Id 0x1234`, `String 0x4001`.
pub(crate) static EXT_ID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^(String|Integer|Boolean|SystemTime|Binary|Double|Float|Long|Short|Currency|CLSID|ApplicationTime|Object)\s+(\{[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\}\s+(Name\s+\S.*|Id\s+0x[0-9a-f]{1,8})|0x[0-9a-f]{1,4})$")
        .unwrap()
});

static PATTERNS: LazyLock<Mutex<HashMap<String, Regex>>> = LazyLock::new(Default::default);

fn matches_pattern(pattern: &str, s: &str) -> bool {
    let mut cache = PATTERNS.lock().unwrap_or_else(|e| e.into_inner());
    let re = cache
        .entry(pattern.to_string())
        .or_insert_with(|| Regex::new(pattern).expect("pattern in the spec"));
    re.is_match(s)
}

impl Spec {
    /// Parses the YAML text and indexes its operations.
    pub fn load(text: &str) -> Spec {
        let doc: Value = serde_norway::from_str(text).expect("the OpenAPI subset is YAML");
        let mut spec = Spec { doc, ops: vec![] };
        let mut ops = vec![];
        let paths = spec.doc["paths"].as_object().cloned().unwrap_or_default();
        for (template, item) in &paths {
            for method in ["get", "post", "put", "patch", "delete"] {
                if let Some(op) = item.get(method) {
                    ops.push(spec.operation(template, method, op));
                }
            }
        }
        spec.ops = ops;
        spec
    }

    fn operation(&self, template: &str, method: &str, op: &Value) -> Operation {
        let mut query = vec![];
        for p in op["parameters"].as_array().into_iter().flatten() {
            let p = self.resolve(p);
            if p["in"] == "query" {
                let name = p["name"].as_str().unwrap_or_default().to_string();
                query.push((name, p["schema"].clone()));
            }
        }
        let content = &op["requestBody"]["content"];
        let body = if let Some(j) = content.get("application/json") {
            let r = j["schema"]["$ref"].as_str().unwrap_or_default();
            BodyKind::Json(r.trim_start_matches("#/components/schemas/").to_string())
        } else if content.get("application/octet-stream").is_some() {
            BodyKind::Binary
        } else {
            BodyKind::None
        };
        Operation {
            id: op["operationId"].as_str().unwrap_or_default().to_string(),
            method: method.to_ascii_uppercase(),
            template: template.to_string(),
            segs: template
                .split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            query,
            body,
        }
    }

    /// Follows a `$ref` (`#/components/...`) to what it names; anything else is itself.
    pub fn resolve<'a>(&'a self, v: &'a Value) -> &'a Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let mut at = &self.doc;
                for part in r.trim_start_matches("#/").split('/') {
                    at = &at[part];
                }
                self.resolve(at)
            }
            None => v,
        }
    }

    /// The distinct path templates of the spec.
    #[cfg(test)]
    pub fn templates(&self) -> BTreeSet<&str> {
        self.ops.iter().map(|o| o.template.as_str()).collect()
    }

    /// The operation for a method and decoded path segments (after `/v1.0`). When several
    /// templates match, the one with the most literal segments wins (`/contacts/delta` over
    /// `/contacts/{contact-id}`).
    pub fn find(&self, method: &str, segs: &[String]) -> Found<'_> {
        let mut best: Option<(&Operation, usize, HashMap<String, String>)> = None;
        let mut path_exists = false;
        for op in &self.ops {
            let Some((lits, params)) = match_segs(&op.segs, segs) else {
                continue;
            };
            path_exists = true;
            if op.method != method {
                continue;
            }
            if best.as_ref().is_none_or(|(_, l, _)| lits > *l) {
                best = Some((op, lits, params));
            }
        }
        match best {
            Some((op, _, params)) => Found::Op(op, params),
            None if path_exists => Found::WrongMethod,
            None => Found::NoPath,
        }
    }

    /// Checks query options against the operation's declared parameters: each declared, none
    /// repeated, integers and booleans well-formed.
    pub fn check_query(&self, op: &Operation, query: &[(String, String)]) -> Result<(), String> {
        let mut seen = BTreeSet::new();
        for (k, v) in query {
            let Some((_, schema)) = op.query.iter().find(|(n, _)| n == k) else {
                return Err(format!(
                    "Query option '{k}' is not allowed. To allow it, set the 'AllowedQueryOptions' property on EnableQueryAttribute or QueryValidationSettings. ({} {} declares {:?})",
                    op.method,
                    op.template,
                    op.query.iter().map(|(n, _)| n).collect::<Vec<_>>()
                ));
            };
            if !seen.insert(k) {
                return Err(format!(
                    "Query option '{k}' was specified more than once, but it must be specified at most once."
                ));
            }
            match schema["type"].as_str() {
                Some("integer") if v.parse::<u64>().is_err() => {
                    return Err(format!(
                        "Invalid value '{v}' for query option '{k}': a non-negative integer is expected."
                    ));
                }
                Some("boolean") if v != "true" && v != "false" => {
                    return Err(format!(
                        "Invalid value '{v}' for query option '{k}': true or false is expected."
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Every property of a schema (`microsoft.graph.contact`), those of its `allOf` parents
    /// included.
    pub fn properties(&self, schema: &str) -> Map<String, Value> {
        let s = self.doc["components"]["schemas"][schema].clone();
        self.props_of(&s)
    }

    fn props_of(&self, schema: &Value) -> Map<String, Value> {
        let schema = self.resolve(schema);
        let mut out = Map::new();
        for part in schema["allOf"].as_array().into_iter().flatten() {
            out.extend(self.props_of(part));
        }
        if let Some(p) = schema["properties"].as_object() {
            out.extend(p.clone());
        }
        out
    }

    /// Whether a property of a schema is a navigation property (not settable in a body, not
    /// selectable): marked `x-ms-navigationProperty`, or `photo` (a navigation property in the
    /// CSDL that the OpenAPI slice writes as a plain `$ref`).
    pub fn is_navigation(name: &str, desc: &Value) -> bool {
        name == "photo" || desc["x-ms-navigationProperty"] == true
    }

    /// Checks a POST or PATCH body for an entity schema: a JSON object whose properties are
    /// declared, not read-only, not navigation properties (except
    /// `singleValueExtendedProperties`, whose ids must be well-formed), with the right types.
    pub fn check_entity(&self, schema: &str, v: &Value) -> Result<(), Fail> {
        let ty = schema.trim_start_matches("microsoft.graph.");
        let Some(o) = v.as_object() else {
            return Err(Fail::bad(
                "BadRequest",
                "The request body must be a JSON object.",
            ));
        };
        let props = self.properties(schema);
        for (k, val) in o {
            if k == "@odata.type" {
                if val != &Value::String(format!("#{schema}")) {
                    return Err(Fail::bad(
                        "BadRequest",
                        format!("@odata.type {val} is not #{schema}"),
                    ));
                }
                continue;
            }
            if READ_ONLY.contains(&k.as_str()) {
                return Err(Fail::bad(
                    "ErrorInvalidProperty",
                    format!("The property '{k}' is read-only and can't be set ({ty})."),
                ));
            }
            let Some(desc) = props.get(k) else {
                return Err(Fail::bad(
                    "ErrorInvalidProperty",
                    format!(
                        "The property '{k}' does not exist on type '{schema}'. Make sure to only use property names that are defined by the type."
                    ),
                ));
            };
            if k == "singleValueExtendedProperties" {
                self.check_extended(val)?;
                continue;
            }
            if Spec::is_navigation(k, desc) {
                return Err(Fail::bad(
                    "ErrorInvalidProperty",
                    format!(
                        "The navigation property '{k}' can't be set in a {ty} body (the fake refuses it)."
                    ),
                ));
            }
            self.check_value(desc, val, k)?;
        }
        Ok(())
    }

    fn check_extended(&self, v: &Value) -> Result<(), Fail> {
        let Some(items) = v.as_array() else {
            return Err(type_error(
                "singleValueExtendedProperties",
                "a collection",
                v,
            ));
        };
        for (i, item) in items.iter().enumerate() {
            let at = format!("singleValueExtendedProperties[{i}]");
            let Some(o) = item.as_object() else {
                return Err(type_error(&at, "an object", item));
            };
            if let Some(k) = o.keys().find(|k| *k != "id" && *k != "value") {
                return Err(Fail::bad(
                    "ErrorInvalidProperty",
                    format!(
                        "The property '{k}' does not exist on type 'microsoft.graph.singleValueLegacyExtendedProperty'."
                    ),
                ));
            }
            let id = o.get("id").and_then(Value::as_str).unwrap_or_default();
            if !EXT_ID.is_match(id) {
                return Err(Fail::bad(
                    "ErrorInvalidProperty",
                    format!(
                        "{at}: the extended property id {id:?} is not valid (expected e.g. 'String {{GUID}} Name X')."
                    ),
                ));
            }
            if !o.get("value").is_some_and(Value::is_string) {
                return Err(type_error(&format!("{at}.value"), "a string", &o["value"]));
            }
        }
        Ok(())
    }

    /// Checks a value against a schema, recursively; unknown nested properties are refused.
    pub fn check_value(&self, schema: &Value, v: &Value, at: &str) -> Result<(), Fail> {
        if schema.get("$ref").is_some() {
            // A complex property (physicalAddress …) may be null: the CSDL does not forbid it.
            return match v {
                Value::Null => Ok(()),
                _ => self.check_value(self.resolve(schema), v, at),
            };
        }
        let nullable = schema["nullable"] == true;
        if v.is_null() {
            return match nullable {
                true => Ok(()),
                false => Err(Fail::bad(
                    "BadRequest",
                    format!(
                        "A null value was found for the property named '{at}', which does not allow null values."
                    ),
                )),
            };
        }
        let is_object = schema.get("allOf").is_some()
            || schema.get("properties").is_some()
            || schema["type"] == "object";
        if is_object {
            let Some(o) = v.as_object() else {
                return Err(type_error(at, "an object", v));
            };
            let props = self.props_of(schema);
            if props.is_empty()
                && let Some(ap) = schema.get("additionalProperties")
            {
                for (k, val) in o {
                    self.check_value(ap, val, &format!("{at}.{k}"))?;
                }
                return Ok(());
            }
            for (k, val) in o {
                let Some(d) = props.get(k) else {
                    return Err(Fail::bad(
                        "ErrorInvalidProperty",
                        format!("The property '{k}' does not exist on the type of '{at}'."),
                    ));
                };
                self.check_value(d, val, &format!("{at}.{k}"))?;
            }
            return Ok(());
        }
        match schema["type"].as_str() {
            Some("array") => {
                let Some(a) = v.as_array() else {
                    return Err(type_error(at, "a collection", v));
                };
                for (i, item) in a.iter().enumerate() {
                    self.check_value(&schema["items"], item, &format!("{at}[{i}]"))?;
                }
                Ok(())
            }
            Some("string") => {
                let Some(s) = v.as_str() else {
                    return Err(type_error(at, "a string", v));
                };
                if let Some(p) = schema["pattern"].as_str()
                    && !matches_pattern(p, s)
                {
                    return Err(Fail::bad(
                        "BadRequest",
                        format!(
                            "Cannot convert the literal '{s}' to the expected type of '{at}' (pattern {p})."
                        ),
                    ));
                }
                Ok(())
            }
            Some("integer") if !v.is_i64() => Err(type_error(at, "an integer", v)),
            Some("number") if !v.is_number() => Err(type_error(at, "a number", v)),
            Some("boolean") if !v.is_boolean() => Err(type_error(at, "a boolean", v)),
            _ => Ok(()),
        }
    }
}

fn type_error(at: &str, expected: &str, v: &Value) -> Fail {
    Fail::bad(
        "BadRequest",
        format!("Invalid JSON. The value {v} of '{at}' is not {expected}."),
    )
}

/// Matches template segments against request segments: (number of literal segments, path
/// parameters by name).
fn match_segs(template: &[String], segs: &[String]) -> Option<(usize, HashMap<String, String>)> {
    if template.len() != segs.len() {
        return None;
    }
    let mut lits = 0;
    let mut params = HashMap::new();
    for (t, s) in template.iter().zip(segs) {
        if let Some(name) = t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
            params.insert(name.to_string(), s.clone());
        } else if t == s || (t == "delta()" && s == "delta") {
            lits += 1;
        } else {
            return None;
        }
    }
    Some((lits, params))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_path_of_the_yaml() {
        let text = include_str!("../specs/graph-contacts-subset.yaml");
        let spec = Spec::load(text);
        // Every path key of the YAML, read as plain text.
        let in_text: BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("  '/"))
            .map(|l| &l[..l.len() - 2])
            .collect();
        let loaded: BTreeSet<&str> = spec.templates().iter().map(|t| &t[1..]).collect();
        assert_eq!(in_text.len(), 14, "{in_text:?}");
        assert_eq!(in_text, loaded);
        let segs = |p: &str| -> Vec<String> {
            p.split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        };
        for (m, p, id) in [
            (
                "GET",
                "/users/u/contactFolders/f/contacts/delta",
                "user.contactFolder.contact_delta",
            ),
            (
                "GET",
                "/users/u/contactFolders/f/contacts/delta()",
                "user.contactFolder.contact_delta",
            ),
            (
                "GET",
                "/users/u/contactFolders/f/contacts/c",
                "user.contactFolder_GetContact",
            ),
            (
                "PUT",
                "/users/u/contacts/c/photo/$value",
                "user.contact_SetPhotoContent",
            ),
            (
                "POST",
                "/users/u/contactFolders/f/permanentDelete",
                "user.contactFolder_permanentDelete",
            ),
        ] {
            match spec.find(m, &segs(p)) {
                Found::Op(op, _) => assert_eq!(op.id, id, "{p}"),
                _ => panic!("{m} {p} not found"),
            }
        }
        assert!(matches!(
            spec.find("DELETE", &segs("/users/u/contacts/c/photo/$value")),
            Found::WrongMethod
        ));
        let contact = spec.properties("microsoft.graph.contact");
        assert!(contact.contains_key("changeKey") && contact.contains_key("yomiSurname"));
        assert!(spec.check_entity("microsoft.graph.contact", &serde_json::json!({"givenName": "A", "birthday": "1990-01-02T00:00:00Z", "homeAddress": {"city": "X"}})).is_ok());
        assert!(
            spec.check_entity(
                "microsoft.graph.contact",
                &serde_json::json!({"birthday": "1990-01-02"})
            )
            .is_err()
        );
        assert!(
            spec.check_entity(
                "microsoft.graph.contact",
                &serde_json::json!({"homeAddress": {"town": "X"}})
            )
            .is_err()
        );
        assert!(
            spec.check_entity(
                "microsoft.graph.contact",
                &serde_json::json!({"businessPhones": [1]})
            )
            .is_err()
        );
    }
}
