//! The fake's own request and response values, shared by top-level requests and `$batch`
//! items (so both go through one code path), and Graph's error shape
//! `{"error":{"code","message","innerError":{"request-id","date"}}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Instant;

use crate::util;

/// One Graph request: a top-level HTTP request under `/v1.0`, or one item of a `$batch`.
#[derive(Debug, Clone)]
pub(crate) struct Req {
    /// Upper-case HTTP method.
    pub method: String,
    /// The path after `/v1.0`, as the client wrote it (percent-escapes kept), for links.
    pub raw_path: String,
    /// The path's segments, percent-decoded.
    pub segs: Vec<String>,
    /// Query options, decoded, in order.
    pub query: Vec<(String, String)>,
    /// Headers with lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When it arrived (a batch item: when it started); latency counts from here.
    pub arrived: Instant,
    /// When the client's HTTP request arrived (a batch item: its envelope's).
    pub received: Instant,
    /// The client's address and port: one TCP connection (a batch item: its envelope's).
    pub peer: Option<SocketAddr>,
}

impl Req {
    /// Splits `path?query` (path after `/v1.0`).
    pub fn new(method: &str, target: &str, headers: Vec<(String, String)>, body: Vec<u8>) -> Req {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        Req {
            method: method.to_ascii_uppercase(),
            raw_path: path.to_string(),
            segs: path
                .split('/')
                .filter(|s| !s.is_empty())
                .map(util::percent_decode)
                .collect(),
            query: form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
            headers,
            body,
            arrived: Instant::now(),
            received: Instant::now(),
            peer: None,
        }
    }

    /// A header's value (the first, when repeated).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A query option's value.
    pub fn q(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `odata.maxpagesize` from the `Prefer` header(s), if given.
    pub fn max_page_size(&self) -> Option<usize> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("prefer"))
            .flat_map(|(_, v)| v.split(','))
            .find_map(|p| {
                let (k, v) = p.trim().split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("odata.maxpagesize")
                    .then(|| v.trim().trim_matches('"').parse().ok())?
            })
    }
}

/// A response body.
#[derive(Debug, Clone)]
pub(crate) enum Body {
    Empty,
    Json(Value),
    /// Content type and bytes (a photo).
    Bytes(String, Vec<u8>),
}

/// A response, before it becomes HTTP or a `$batch` item.
#[derive(Debug, Clone)]
pub(crate) struct Resp {
    pub status: u16,
    /// Header names as Graph writes them (`Retry-After`).
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

impl Resp {
    pub fn json(status: u16, v: Value) -> Resp {
        Resp {
            status,
            headers: vec![],
            body: Body::Json(v),
        }
    }

    pub fn empty(status: u16) -> Resp {
        Resp {
            status,
            headers: vec![],
            body: Body::Empty,
        }
    }

    pub fn with_header(mut self, k: &str, v: impl Into<String>) -> Resp {
        self.headers.push((k.to_string(), v.into()));
        self
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `Retry-After` in seconds, on a 429 or 503.
    pub fn retry_after(&self) -> Option<u64> {
        self.header("retry-after").and_then(|v| v.parse().ok())
    }

    /// The headers a client sees (content type included), for a `$batch` item.
    pub fn item_headers(&self) -> serde_json::Map<String, Value> {
        let mut h = serde_json::Map::new();
        match &self.body {
            Body::Json(_) => {
                h.insert(
                    "Content-Type".into(),
                    json!("application/json; odata.metadata=minimal; odata.streaming=true; IEEE754Compatible=false; charset=utf-8"),
                );
            }
            Body::Bytes(ct, _) => {
                h.insert("Content-Type".into(), json!(ct));
            }
            Body::Empty => {}
        }
        for (k, v) in &self.headers {
            h.insert(k.clone(), json!(v));
        }
        h
    }

    pub fn into_axum(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = match self.body {
            Body::Empty => status.into_response(),
            Body::Json(v) => (
                status,
                [("content-type", "application/json; odata.metadata=minimal; odata.streaming=true; IEEE754Compatible=false; charset=utf-8")],
                v.to_string(),
            )
                .into_response(),
            Body::Bytes(ct, b) => (status, [("content-type", ct)], b).into_response(),
        };
        for (k, v) in self.headers {
            if let (Ok(k), Ok(v)) = (
                axum::http::HeaderName::from_bytes(k.as_bytes()),
                axum::http::HeaderValue::from_str(&v),
            ) {
                resp.headers_mut().insert(k, v);
            }
        }
        resp.headers_mut()
            .insert("request-id", util::guid().parse().unwrap());
        resp
    }
}

/// Graph's error body with this status, code and message.
pub(crate) fn graph_error(status: u16, code: &str, message: &str) -> Resp {
    let date = util::iso_now();
    Resp::json(
        status,
        json!({"error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": date.trim_end_matches('Z'),
                "request-id": util::guid(),
                "client-request-id": util::guid(),
            }
        }}),
    )
}

/// A refused request: how Graph answers it, and whether it is a client bug (recorded in
/// `violations()`).
#[derive(Debug, Clone)]
pub(crate) struct Fail {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub violation: bool,
}

impl Fail {
    /// 400 with this code: a client bug.
    pub fn bad(code: &str, message: impl Into<String>) -> Fail {
        Fail::new(400, code, message, true)
    }

    /// Any status; `violation` says whether a correct client could have avoided it.
    pub fn new(status: u16, code: &str, message: impl Into<String>, violation: bool) -> Fail {
        Fail {
            status,
            code: code.into(),
            message: message.into(),
            violation,
        }
    }

    /// 404 ErrorItemNotFound (not a client bug: the item may have gone meanwhile).
    pub fn item_not_found() -> Fail {
        Fail::new(
            404,
            "ErrorItemNotFound",
            "The specified object was not found in the store.",
            false,
        )
    }

    pub fn resp(&self) -> Resp {
        graph_error(self.status, &self.code, &self.message)
    }
}
