//! Request checking against Google's discovery documents: the method and path must be one the
//! document describes, every query parameter must be known (with a valid enum value, and present
//! when its description says "Required."), and every body field must be in the request schema,
//! with the right JSON type, recursively. Output-only fields are refused too: a client that sends
//! them back has not separated what it read from what it writes.

use regex::Regex;
use serde_json::Value;
use std::collections::HashMap;

/// One method of a discovery document.
#[derive(Debug)]
pub struct MethodSpec {
    pub id: String,
    pub http: String,
    path: Regex,
    path_params: Vec<String>,
    params: serde_json::Map<String, Value>,
    request: Option<String>,
}

/// A loaded discovery document.
#[derive(Debug)]
pub struct Spec {
    methods: Vec<MethodSpec>,
    schemas: serde_json::Map<String, Value>,
    global: serde_json::Map<String, Value>,
}

fn required(desc: &Value) -> bool {
    desc.get("required").and_then(Value::as_bool) == Some(true)
        || desc
            .get("description")
            .and_then(Value::as_str)
            .is_some_and(|d| {
                // Deprecated parameters keep their old "Required." wording ("Replaced by …").
                d.trim_start().starts_with("Required.")
                    && !d.contains("Replaced by")
                    && desc.get("deprecated").and_then(Value::as_bool) != Some(true)
            })
}

fn output_only(desc: &Value) -> bool {
    desc.get("readOnly").and_then(Value::as_bool) == Some(true)
        || desc
            .get("description")
            .and_then(Value::as_str)
            .is_some_and(|d| d.trim_start().starts_with("Output only."))
}

impl Spec {
    pub fn load(text: &str) -> Self {
        let doc: Value = serde_json::from_str(text).expect("discovery document is JSON");
        let mut methods = vec![];
        fn walk(res: &Value, out: &mut Vec<MethodSpec>) {
            let Some(res) = res.as_object() else { return };
            for r in res.values() {
                if let Some(ms) = r.get("methods").and_then(Value::as_object) {
                    for m in ms.values() {
                        let flat = m
                            .get("flatPath")
                            .or_else(|| m.get("path"))
                            .and_then(Value::as_str)
                            .unwrap_or("");
                        let mut names = vec![];
                        let mut re = String::from("^/");
                        let mut rest = flat;
                        while let Some(i) = rest.find('{') {
                            re.push_str(&regex::escape(&rest[..i]));
                            let j = rest[i..].find('}').map(|j| i + j).unwrap_or(rest.len());
                            names.push(rest[i + 1..j].trim_start_matches('+').to_string());
                            re.push_str("([^/:]+)");
                            rest = &rest[(j + 1).min(rest.len())..];
                        }
                        re.push_str(&regex::escape(rest));
                        re.push('$');
                        out.push(MethodSpec {
                            id: m["id"].as_str().unwrap_or("").to_string(),
                            http: m["httpMethod"].as_str().unwrap_or("").to_string(),
                            path: Regex::new(&re).expect("path regex"),
                            path_params: names,
                            params: m
                                .get("parameters")
                                .and_then(Value::as_object)
                                .cloned()
                                .unwrap_or_default(),
                            request: m
                                .get("request")
                                .and_then(|r| r.get("$ref"))
                                .and_then(Value::as_str)
                                .map(str::to_string),
                        });
                    }
                }
                if let Some(sub) = r.get("resources") {
                    walk(sub, out);
                }
            }
        }
        walk(&doc["resources"], &mut methods);
        Spec {
            methods,
            schemas: doc["schemas"].as_object().cloned().unwrap_or_default(),
            global: doc["parameters"].as_object().cloned().unwrap_or_default(),
        }
    }

    /// The method a request is for, with its path parameters.
    pub fn find(&self, http: &str, path: &str) -> Option<(&MethodSpec, HashMap<String, String>)> {
        for m in &self.methods {
            if m.http != http {
                continue;
            }
            if let Some(c) = m.path.captures(path) {
                let mut params = HashMap::new();
                for (i, n) in m.path_params.iter().enumerate() {
                    params.insert(n.clone(), c[i + 1].to_string());
                }
                return Some((m, params));
            }
        }
        None
    }

    /// Checks the query parameters of a request.
    pub fn check_query(&self, m: &MethodSpec, query: &[(String, String)]) -> Result<(), String> {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (k, v) in query {
            let desc = m
                .params
                .get(k)
                .filter(|d| d.get("location").and_then(Value::as_str) == Some("query"))
                .or_else(|| self.global.get(k))
                .ok_or_else(|| format!("Invalid JSON payload received. Unknown name \"{k}\": Cannot bind query parameter. Field '{k}' could not be found in request message. ({})", m.id))?;
            *seen.entry(k).or_default() += 1;
            if seen[k.as_str()] > 1 && desc.get("repeated").and_then(Value::as_bool) != Some(true) {
                return Err(format!(
                    "query parameter {k} given more than once ({})",
                    m.id
                ));
            }
            check_scalar(desc, &Value::String(v.clone()), k, true)?;
        }
        for (k, d) in &m.params {
            // `requestMask.includeField` is the deprecated alternative to `personFields`
            // (both say "Required."); one of the two is enough.
            if d.get("location").and_then(Value::as_str) == Some("query")
                && required(d)
                && !k.starts_with("requestMask.")
                && !seen.contains_key(k.as_str())
            {
                return Err(format!(
                    "required query parameter {k} is missing ({})",
                    m.id
                ));
            }
        }
        Ok(())
    }

    /// Checks a request body against the method's request schema.
    pub fn check_body(&self, m: &MethodSpec, body: Option<&Value>) -> Result<(), String> {
        match (&m.request, body) {
            (None, None) => Ok(()),
            (None, Some(_)) => Err(format!("{} takes no request body", m.id)),
            (Some(r), None) => Err(format!("{} needs a {r} body", m.id)),
            (Some(r), Some(b)) => {
                self.check_value(&serde_json::json!({ "$ref": r }), b, &At::Root(r))?;
                // Required fields of the top-level request.
                if let Some(props) = self.schemas[r.as_str()]
                    .get("properties")
                    .and_then(Value::as_object)
                {
                    for (k, d) in props {
                        if required(d) && b.get(k).is_none() {
                            return Err(format!("{r}.{k} is required ({})", m.id));
                        }
                    }
                }
                Ok(())
            }
        }
    }

    fn check_value(&self, desc: &Value, v: &Value, at: &At<'_>) -> Result<(), String> {
        if let Some(r) = desc.get("$ref").and_then(Value::as_str) {
            let schema = self
                .schemas
                .get(r)
                .ok_or_else(|| format!("unknown schema {r}"))?;
            return self.check_value(schema, v, at);
        }
        match desc.get("type").and_then(Value::as_str).unwrap_or("any") {
            "object" => {
                let o = v
                    .as_object()
                    .ok_or_else(|| format!("{at}: expected an object, got {v}"))?;
                if let Some(props) = desc.get("properties").and_then(Value::as_object) {
                    for (k, val) in o {
                        let d = props.get(k).ok_or_else(|| {
                            format!("Invalid JSON payload received. Unknown name \"{k}\" at '{at}': Cannot find field.")
                        })?;
                        if output_only(d) {
                            return Err(format!("{at}.{k} is output only and must not be sent"));
                        }
                        self.check_value(d, val, &At::Field(at, k))?;
                    }
                } else if let Some(ap) = desc.get("additionalProperties") {
                    for (k, val) in o {
                        self.check_value(ap, val, &At::Key(at, k))?;
                    }
                }
                Ok(())
            }
            "array" => {
                let a = v
                    .as_array()
                    .ok_or_else(|| format!("{at}: expected a list, got {v}"))?;
                for (i, item) in a.iter().enumerate() {
                    self.check_value(&desc["items"], item, &At::Index(at, i))?;
                }
                Ok(())
            }
            "any" => Ok(()),
            _ => check_scalar(desc, v, at, false),
        }
    }
}

/// Where in a request body a value is (written out only when a check fails).
enum At<'a> {
    Root(&'a str),
    Field(&'a At<'a>, &'a str),
    Key(&'a At<'a>, &'a str),
    Index(&'a At<'a>, usize),
}

impl std::fmt::Display for At<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            At::Root(r) => write!(f, "{r}"),
            At::Field(p, k) => write!(f, "{p}.{k}"),
            At::Key(p, k) => write!(f, "{p}[{k}]"),
            At::Index(p, i) => write!(f, "{p}[{i}]"),
        }
    }
}

fn check_scalar(
    desc: &Value,
    v: &Value,
    at: &dyn std::fmt::Display,
    from_query: bool,
) -> Result<(), String> {
    let ty = desc.get("type").and_then(Value::as_str).unwrap_or("string");
    let ok = match (ty, v) {
        ("string", Value::String(_)) => true,
        ("integer" | "number", Value::Number(_)) => true,
        ("integer", Value::String(s)) if from_query || desc.get("format").is_some() => {
            s.parse::<i64>().is_ok()
        }
        ("boolean", Value::Bool(_)) => true,
        ("boolean", Value::String(s)) if from_query => s == "true" || s == "false",
        _ => false,
    };
    if !ok {
        return Err(format!("{at}: invalid value {v} for type {ty}"));
    }
    if let (Some(e), Value::String(s)) = (desc.get("enum").and_then(Value::as_array), v)
        && !e.iter().any(|x| x.as_str() == Some(s))
    {
        return Err(format!(
            "{at}: invalid value {s:?} (not one of the enum values)"
        ));
    }
    Ok(())
}
