//! The fake's own tests: through its public API and raw HTTP/1.1 over a TcpStream (the fake
//! has no HTTP client dependency). Few and meaningful: body checking, MailboxConcurrency,
//! batch chains, delta rounds and expiry, the token endpoint.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use fake_graph::{FakeGraph, Fault, FaultKind, Options};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// (status, headers lower-cased, body) of one request.
fn http(
    url: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let addr = url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).expect("connect");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = vec![];
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let hdrs: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if hdrs
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v == "chunked")
    {
        let (mut out, mut rest) = (vec![], &body[..]);
        loop {
            let nl = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let n = usize::from_str_radix(String::from_utf8_lossy(&rest[..nl]).trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&rest[nl + 2..nl + 2 + n]);
            rest = &rest[nl + 4 + n..];
        }
        body = out;
    }
    (status, hdrs, body)
}

/// A client of one fake with a bearer token.
struct Client {
    url: String,
    token: String,
}

impl Client {
    fn new(fake: &FakeGraph) -> Client {
        let form = format!(
            "grant_type=client_credentials&client_id={}&client_secret={}&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default",
            fake.client_id(),
            fake.client_secret()
        );
        let path = format!("/{}/oauth2/v2.0/token", fake.tenant());
        let (st, _, body) = http(
            &fake.url,
            "POST",
            &path,
            &[("Content-Type", "application/x-www-form-urlencoded")],
            form.as_bytes(),
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(st, 200, "{v}");
        Client {
            url: fake.url.clone(),
            token: v["access_token"].as_str().unwrap().to_string(),
        }
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        body: Option<Value>,
    ) -> (u16, Vec<(String, String)>, Value) {
        let auth = format!("Bearer {}", self.token);
        let mut h = vec![("Authorization", auth.as_str())];
        h.extend_from_slice(extra);
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        if !bytes.is_empty() {
            h.push(("Content-Type", "application/json"));
        }
        let path = if path.starts_with("http") {
            path.trim_start_matches(&self.url).to_string()
        } else {
            format!("/v1.0{path}")
        };
        let path = path
            .replace(' ', "%20")
            .replace('{', "%7B")
            .replace('}', "%7D");
        let (st, hdrs, body) = http(&self.url, method, &path, &h, &bytes);
        (
            st,
            hdrs,
            serde_json::from_slice(&body).unwrap_or(Value::Null),
        )
    }
}

#[test]
fn an_unknown_or_read_only_body_property_is_refused_and_recorded() {
    let fake = FakeGraph::start(Options::default());
    fake.add_user("ann@example.com");
    let c = Client::new(&fake);
    let (st, _, body) = c.call(
        "POST",
        "/users/ann@example.com/contacts",
        &[],
        Some(json!({"givenName": "Bo", "nickname": "x"})),
    );
    assert_eq!(st, 400);
    assert_eq!(body["error"]["code"], "ErrorInvalidProperty");
    let (st, _, _) = c.call(
        "POST",
        "/users/ann@example.com/contacts",
        &[],
        Some(json!({"givenName": "Bo", "changeKey": "x"})),
    );
    assert_eq!(st, 400);
    let v = fake.violations();
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(
        v[0].starts_with("contacts.create for ann@example.com") && v[0].contains("nickname"),
        "{v:?}"
    );
    // A good one is stored and echoed with what Graph adds.
    let (st, _, body) = c.call("POST", "/users/ANN@example.com/contacts", &[], Some(json!({"givenName": "Bo", "surname": "Li", "emailAddresses": [{"address": "bo@x.org"}]})));
    assert_eq!(st, 201, "{body}");
    assert_eq!(body["displayName"], "Bo Li");
    assert_eq!(
        body["@odata.etag"],
        format!("W/\"{}\"", body["changeKey"].as_str().unwrap())
    );
    assert_eq!(body["homeAddress"], json!({}));
    assert_eq!(fake.violations().len(), 2);
}

#[test]
fn over_the_mailbox_concurrency_limit_is_429_and_a_violation() {
    let fake = FakeGraph::start(Options {
        latency: Duration::from_millis(400),
        ..Options::default()
    });
    fake.add_user("ann@example.com");
    let c = Client::new(&fake);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..5)
            .map(|i| {
                let c = &c;
                s.spawn(move || {
                    std::thread::sleep(Duration::from_millis(20 * i));
                    c.call("GET", "/users/ann@example.com/contactFolders", &[], None)
                        .0
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(fake.max_in_flight(), 4);
    let v = fake.violations();
    assert!(v.len() == 1 && v[0].contains("MailboxConcurrency"), "{v:?}");
    assert_eq!(fake.counts()["folders.list"], 5);
}

#[test]
fn a_chain_answers_424_after_a_failed_item() {
    let fake = FakeGraph::start(Options::default());
    fake.add_user("ann@example.com");
    let folder = fake.with_mailbox("ann@example.com", |m| m.add_folder("Team"));
    fake.inject(Fault {
        op: "contacts.create".into(),
        user: None,
        kind: FaultKind::FailItem(1),
        times: 1,
    });
    let c = Client::new(&fake);
    let url = format!("/users/ann@example.com/contactFolders/{folder}/contacts");
    let item = |id: &str, dep: Option<&str>| {
        let mut v = json!({"id": id, "method": "POST", "url": url, "headers": {"Content-Type": "application/json"}, "body": {"givenName": id}});
        if let Some(d) = dep {
            v["dependsOn"] = json!([d]);
        }
        v
    };
    let body = json!({"requests": [item("a", None), item("b", Some("a")), item("c", Some("b"))]});
    let (st, _, out) = c.call("POST", "/$batch", &[], Some(body));
    assert_eq!(st, 200, "{out}");
    let r = out["responses"].as_array().unwrap();
    let ids: Vec<&str> = r.iter().map(|x| x["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["c", "b", "a"]);
    let status: Vec<u64> = r.iter().map(|x| x["status"].as_u64().unwrap()).collect();
    assert_eq!(status, [424, 400, 201]);
    assert_eq!(
        fake.with_mailbox("ann@example.com", |m| m.contacts(&folder).len()),
        1
    );
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    let counts = fake.counts();
    assert_eq!(
        (
            counts["batch"],
            counts["batch.items"],
            counts["contacts.create"]
        ),
        (1, 3, 3)
    );
    // Mixing chained and parallel items is a client bug.
    let mixed = json!({"requests": [item("a", None), item("b", None), item("c", Some("b"))]});
    assert_eq!(c.call("POST", "/$batch", &[], Some(mixed)).0, 400);
    assert_eq!(fake.violations().len(), 1);
}

/// Follows a delta round from `first` to its deltaLink: (items, deltaLink).
fn delta_round(c: &Client, first: &str) -> (Vec<Value>, String) {
    let (mut items, mut link) = (vec![], first.to_string());
    loop {
        let (st, _, page) = c.call("GET", &link, &[("Prefer", "odata.maxpagesize=2")], None);
        assert_eq!(st, 200, "{page}");
        items.extend(page["value"].as_array().unwrap().iter().cloned());
        assert!(page.get("@odata.nextLink").is_none() || page.get("@odata.deltaLink").is_none());
        match (
            page["@odata.nextLink"].as_str(),
            page["@odata.deltaLink"].as_str(),
        ) {
            (Some(n), None) => link = n.to_string(),
            (None, Some(d)) => return (items, d.to_string()),
            _ => panic!("a page without a link: {page}"),
        }
    }
}

#[test]
fn a_delta_replay_returns_edits_and_removals_then_expires_with_410() {
    let fake = FakeGraph::start(Options::default());
    fake.add_user("ann@example.com");
    let (folder, ids) = fake.with_mailbox("ann@example.com", |m| {
        let f = m.add_folder("Team");
        let ids: Vec<String> = (0..3)
            .map(|i| m.add_contact(&f, json!({"givenName": format!("P{i}")})))
            .collect();
        (f, ids)
    });
    let c = Client::new(&fake);
    let first = format!(
        "/users/ann@example.com/contactFolders/{folder}/contacts/delta?$select=givenName,changeKey"
    );
    let (items, delta) = delta_round(&c, &first);
    assert_eq!(items.len(), 3);
    assert!(items.iter().all(|i| i["changeKey"].is_string()
        && i["@odata.etag"].is_string()
        && i.get("surname").is_none()));
    // The user edits one and deletes one; an extended-property-only PATCH is not tracked.
    fake.with_mailbox("ann@example.com", |m| {
        m.edit(&ids[0], |c| c["givenName"] = json!("Edited"));
        m.delete(&ids[1]);
    });
    let ext = json!({"singleValueExtendedProperties": [{"id": "String {66f5a359-4659-4830-9070-00047ec6ac6e} Name gs", "value": "v"}]});
    let (st, _, _) = c.call(
        "PATCH",
        &format!("/users/ann@example.com/contacts/{}", ids[2]),
        &[],
        Some(ext),
    );
    assert_eq!(st, 200);
    let (items, delta2) = delta_round(&c, &delta);
    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!(items[0]["givenName"], "Edited");
    assert_eq!(
        items[1],
        json!({"id": ids[1], "@removed": {"reason": "deleted"}})
    );
    // An extra query option on a replayed link is a client bug.
    assert_eq!(c.call("GET", &format!("{delta2}&$top=5"), &[], None).0, 400);
    assert_eq!(fake.violations().len(), 1);
    // Expired tokens: 410, codes alternating in case, not violations.
    fake.with_mailbox("ann@example.com", |m| m.expire_delta_tokens());
    let (st, _, body) = c.call("GET", &delta2, &[], None);
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (410, Some("SyncStateNotFound"))
    );
    let (st, _, body) = c.call("GET", &delta2, &[], None);
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (410, Some("resyncRequired"))
    );
    assert_eq!(fake.violations().len(), 1);
}

#[test]
fn a_certificate_assertion_gets_a_token_and_errors_look_like_entra_id() {
    let fake = FakeGraph::start(Options {
        token_lifetime: Duration::from_secs(1),
        ..Options::default()
    });
    fake.add_user("ann@example.com");
    let (cert_pem, key_pem) = fake.make_certificate();
    let b64: String = cert_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let der = STANDARD.decode(b64).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::PS256);
    header.x5t_s256 = Some(URL_SAFE_NO_PAD.encode(Sha256::digest(&der)));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({"aud": fake.token_url(), "iss": fake.client_id(), "sub": fake.client_id(), "jti": "1", "nbf": now, "exp": now + 600});
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(key_pem.as_bytes()).unwrap();
    let jwt = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    let form = format!(
        "grant_type=client_credentials&client_id={}&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={jwt}",
        fake.client_id()
    );
    let path = format!("/{}/oauth2/v2.0/token", fake.tenant());
    let ct = [("Content-Type", "application/x-www-form-urlencoded")];
    let (st, _, body) = http(&fake.url, "POST", &path, &ct, form.as_bytes());
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["token_type"], "Bearer");
    // A wrong secret.
    let bad = format!(
        "grant_type=client_credentials&client_id={}&client_secret=nope&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default",
        fake.client_id()
    );
    let (st, _, body) = http(&fake.url, "POST", &path, &ct, bad.as_bytes());
    let e: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (st, e["error"].as_str(), e["error_codes"][0].as_u64()),
        (401, Some("invalid_client"), Some(7000215))
    );
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    // The token expires: 401 InvalidAuthenticationToken, not a violation; no token at all is one.
    let c = Client {
        url: fake.url.clone(),
        token: v["access_token"].as_str().unwrap().into(),
    };
    std::thread::sleep(Duration::from_millis(1100));
    let (st, _, body) = c.call("GET", "/users/ann@example.com", &[], None);
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (401, Some("InvalidAuthenticationToken"))
    );
    assert!(fake.violations().is_empty());
    let (st, _, _) = http(&fake.url, "GET", "/v1.0/users/ann@example.com", &[], b"");
    assert_eq!(st, 401);
    assert_eq!(fake.violations().len(), 1);
}
