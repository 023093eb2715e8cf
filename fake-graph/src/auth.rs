//! The Microsoft identity platform's token endpoint, `POST /{tenant}/oauth2/v2.0/token`, for
//! the client-credentials grant: the client secret in the body or in HTTP Basic (RFC 6749
//! §2.3.1), or a JWT client assertion signed PS256 with a registered certificate named by its
//! `x5t#S256`. Errors have Entra ID's shape (`error`, `error_description` with the AADSTS code,
//! `error_codes`, `timestamp`, `trace_id`, `correlation_id`). It owns the app's registered
//! certificates, the app roles granted, and the access tokens issued (opaque strings, each
//! with the roles granted when it was issued and an expiry), and the bearer check of Graph
//! calls.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::http::{Fail, Req, Resp};
use crate::{FaultKind, State, lock, util};

/// The only scope an app-only Graph token may ask for.
pub const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

struct Issued {
    expires: Instant,
    roles: Vec<String>,
}

/// Registered certificates, granted roles, issued tokens.
pub(crate) struct AuthState {
    /// App roles granted to the app (consented application permissions).
    pub roles: Vec<String>,
    /// `x5t#S256` → public key PEM.
    certs: HashMap<String, String>,
    tokens: HashMap<String, Issued>,
}

impl AuthState {
    pub fn new() -> AuthState {
        AuthState {
            roles: [
                "Contacts.ReadWrite",
                "User.Read.All",
                "Domain.Read.All",
                "GroupMember.Read.All",
            ]
            .map(str::to_string)
            .to_vec(),
            certs: HashMap::new(),
            tokens: HashMap::new(),
        }
    }
}

/// Generates an RSA-2048 key and a self-signed certificate, registers the certificate for the
/// app: (certificate PEM, PKCS#8 private key PEM).
pub(crate) fn make_certificate(st: &State) -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
    let mut params = rcgen::CertificateParams::new(vec!["groupsync-test".to_string()])
        .expect("certificate parameters");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "groupsync test app");
    let cert = params.self_signed(&key).expect("self-signed certificate");
    let thumb = util::b64url(&Sha256::digest(cert.der()));
    lock(&st.auth).certs.insert(thumb, key.public_key_pem());
    (cert.pem(), key.serialize_pem())
}

/// An Entra ID token-endpoint error.
fn aad_error(status: u16, error: &str, code: u32, desc: &str) -> Resp {
    let (trace, corr, ts) = (util::guid(), util::guid(), util::aad_now());
    Resp::json(
        status,
        json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {desc} Trace ID: {trace} Correlation ID: {corr} Timestamp: {ts}"),
            "error_codes": [code],
            "timestamp": ts,
            "trace_id": trace,
            "correlation_id": corr,
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
        }),
    )
}

/// An error that is a client bug: recorded, then answered.
fn bug(st: &State, status: u16, error: &str, code: u32, desc: &str) -> Resp {
    st.violation(format!("token: AADSTS{code} {desc}"));
    aad_error(status, error, code, desc)
}

/// (client id, secret) from `Authorization: Basic`, each form-urlencoded inside.
fn basic(header: Option<&str>) -> Option<(String, String)> {
    let b64 = header?
        .strip_prefix("Basic ")
        .or_else(|| header?.strip_prefix("basic "))?;
    let text = String::from_utf8(STANDARD.decode(b64.trim()).ok()?).ok()?;
    let (id, secret) = text.split_once(':')?;
    let dec = |s: &str| {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    Some((dec(id)?, dec(secret)?))
}

/// Answers a token request for `tenant` (the path's), with the faults injected for `token`
/// (any user): `Status`, `TooMany`, `Hang`, `ApplyThenFail` (a token is granted, the answer
/// is a 504).
pub(crate) async fn token_call(st: &State, tenant: &str, req: &Req) -> Resp {
    let fault = st.limits.take("token", &[], |k| {
        !matches!(
            k,
            FaultKind::FailItem(_) | FaultKind::ItemTooMany { .. } | FaultKind::ExpireDelta
        )
    });
    let transient = |status: u16| {
        aad_error(
            status,
            "temporarily_unavailable",
            90033,
            "A transient error has occurred. Please try again.",
        )
    };
    match fault {
        Some(FaultKind::Status(s)) => transient(s),
        Some(FaultKind::TooMany { retry_after }) => {
            transient(429).with_header("Retry-After", retry_after.to_string())
        }
        Some(FaultKind::ApplyThenFail) => {
            token(st, tenant, req);
            transient(504)
        }
        Some(FaultKind::Hang { secs, apply }) => {
            let r = if apply {
                token(st, tenant, req)
            } else {
                transient(504)
            };
            tokio::time::sleep(Duration::from_secs(secs)).await;
            r
        }
        _ => token(st, tenant, req),
    }
}

/// Answers a token request for `tenant` (the path's).
fn token(st: &State, tenant: &str, req: &Req) -> Resp {
    match check_request(st, tenant, req) {
        Ok(()) => grant(st),
        Err(r) => r,
    }
}

/// Checks a token request; `Err` is the answer to a refused one.
fn check_request(st: &State, tenant: &str, req: &Req) -> Result<(), Resp> {
    if !tenant.eq_ignore_ascii_case(&st.tenant) {
        return Err(aad_error(
            400,
            "invalid_request",
            90002,
            &format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."
            ),
        ));
    }
    if !req
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"))
    {
        return Err(bug(
            st,
            400,
            "invalid_request",
            900144,
            "The request body must be application/x-www-form-urlencoded and contain the following parameter: 'grant_type'.",
        ));
    }
    let form: HashMap<String, String> = form_urlencoded::parse(&req.body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let get = |k: &str| form.get(k).map(String::as_str);
    if get("grant_type") != Some("client_credentials") {
        return Err(bug(
            st,
            400,
            "unsupported_grant_type",
            70003,
            &format!(
                "The app requested an unsupported grant type {:?}.",
                get("grant_type")
            ),
        ));
    }
    let basic = basic(req.header("authorization"));
    let client_id = client_id(st, get("client_id"), basic.as_ref())?;
    if get("scope") != Some(GRAPH_SCOPE) {
        return Err(bug(
            st,
            400,
            "invalid_scope",
            70011,
            &format!(
                "The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid. The scope {:?} is not valid (expected {GRAPH_SCOPE}).",
                get("scope")
            ),
        ));
    }
    if !client_id.eq_ignore_ascii_case(&st.client_id) {
        return Err(aad_error(
            400,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory '{}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.",
                st.tenant
            ),
        ));
    }
    let secret = basic
        .map(|b| b.1)
        .or_else(|| get("client_secret").map(str::to_string));
    credential(
        st,
        secret,
        get("client_assertion"),
        get("client_assertion_type"),
    )
}

/// The client id, from the body or HTTP Basic (the same when both).
fn client_id(
    st: &State,
    body: Option<&str>,
    basic: Option<&(String, String)>,
) -> Result<String, Resp> {
    match (body, basic.map(|b| b.0.as_str())) {
        (Some(a), Some(b)) if a != b => Err(bug(
            st,
            400,
            "invalid_request",
            900144,
            "client_id in the body and in the Authorization header differ.",
        )),
        (Some(a), _) | (None, Some(a)) => Ok(a.to_string()),
        (None, None) => Err(bug(
            st,
            400,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'client_id'.",
        )),
    }
}

/// Checks the one credential given: a secret or an assertion.
fn credential(
    st: &State,
    secret: Option<String>,
    assertion: Option<&str>,
    assertion_type: Option<&str>,
) -> Result<(), Resp> {
    match (secret, assertion) {
        (Some(_), Some(_)) => Err(bug(
            st,
            400,
            "invalid_request",
            900023,
            "Send either a client_secret or a client_assertion, not both.",
        )),
        (None, None) => Err(bug(
            st,
            400,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        )),
        (Some(s), None) if s != st.client_secret => Err(aad_error(
            401,
            "invalid_client",
            7000215,
            &format!(
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{}'.",
                st.client_id
            ),
        )),
        (Some(_), None) => Ok(()),
        (None, Some(_)) if assertion_type != Some(ASSERTION_TYPE) => Err(bug(
            st,
            400,
            "invalid_request",
            50027,
            &format!("client_assertion_type must be {ASSERTION_TYPE}."),
        )),
        (None, Some(a)) => check_assertion(st, a),
    }
}

fn grant(st: &State) -> Resp {
    let lifetime = st.options().token_lifetime;
    let token = format!("EwB{}", util::b64url(&util::random_bytes(96)));
    let now = Instant::now();
    let mut auth = lock(&st.auth);
    let roles = auth.roles.clone();
    auth.tokens
        .retain(|_, t| t.expires + Duration::from_secs(3600) > now);
    auth.tokens.insert(
        token.clone(),
        Issued {
            expires: now + lifetime,
            roles,
        },
    );
    drop(auth);
    st.count("token.granted");
    Resp::json(
        200,
        json!({
            "token_type": "Bearer",
            "expires_in": lifetime.as_secs(),
            "ext_expires_in": lifetime.as_secs(),
            "access_token": token,
        }),
    )
}

fn check_assertion(st: &State, a: &str) -> Result<(), Resp> {
    let sig_failed =
        |why: &str| format!("Client assertion failed signature validation. (Reason - {why})");
    let header = jsonwebtoken::decode_header(a).map_err(|e| {
        bug(
            st,
            400,
            "invalid_request",
            50027,
            &format!("JWT token is invalid or malformed: {e}."),
        )
    })?;
    if header.alg != Algorithm::PS256 {
        return Err(bug(
            st,
            401,
            "invalid_client",
            700027,
            &sig_failed(&format!(
                "the assertion is signed {:?}; PS256 is required.",
                header.alg
            )),
        ));
    }
    let Some(thumb) = header.x5t_s256 else {
        return Err(bug(
            st,
            401,
            "invalid_client",
            700027,
            &sig_failed("the assertion's header has no x5t#S256."),
        ));
    };
    let Some(pem) = lock(&st.auth).certs.get(&thumb).cloned() else {
        return Err(aad_error(
            401,
            "invalid_client",
            700027,
            &sig_failed(&format!(
                "The key was not found., Thumbprint of key used by client: '{thumb}', Please visit the Microsoft Entra admin center to verify that the certificate is registered for the application."
            )),
        ));
    };
    let key = DecodingKey::from_rsa_pem(pem.as_bytes()).expect("registered key");
    let mut v = Validation::new(Algorithm::PS256);
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.set_required_spec_claims::<&str>(&[]);
    let claims: Value = jsonwebtoken::decode::<Value>(a, &key, &v)
        .map_err(|e| {
            bug(
                st,
                401,
                "invalid_client",
                700027,
                &sig_failed(&format!("{e}")),
            )
        })?
        .claims;
    check_claims(st, &claims)
}

fn check_claims(st: &State, c: &Value) -> Result<(), Resp> {
    let token_url = st.token_url();
    if c["aud"].as_str() != Some(token_url.as_str()) {
        return Err(bug(
            st,
            401,
            "invalid_client",
            700212,
            &format!(
                "The assertion audience {} is not the token endpoint {token_url}.",
                c["aud"]
            ),
        ));
    }
    if c["iss"].as_str() != Some(st.client_id.as_str())
        || c["sub"].as_str() != Some(st.client_id.as_str())
    {
        return Err(bug(
            st,
            401,
            "invalid_client",
            700021,
            "Client assertion application identifier doesn't match 'client_id' parameter (iss and sub must be the client id).",
        ));
    }
    if c["jti"].as_str().is_none_or(str::is_empty) {
        return Err(bug(
            st,
            400,
            "invalid_request",
            50027,
            "JWT token is invalid or malformed: no jti claim.",
        ));
    }
    let (Some(nbf), Some(exp)) = (c["nbf"].as_u64(), c["exp"].as_u64()) else {
        return Err(bug(
            st,
            400,
            "invalid_request",
            50027,
            "JWT token is invalid or malformed: nbf and exp are required.",
        ));
    };
    let now = util::unix_now();
    if nbf > now || exp <= now || exp.saturating_sub(nbf) > 3600 {
        return Err(bug(
            st,
            401,
            "invalid_client",
            700024,
            &format!(
                "Client assertion is not within its valid time range. Current time: {}, assertion valid from {}, expiry time of assertion {}. Review the documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials .",
                util::iso(now),
                util::iso(nbf),
                util::iso(exp)
            ),
        ));
    }
    Ok(())
}

/// The roles of the bearer token of a Graph call, or how Graph refuses it (`violation` set
/// for a missing or unknown token, not for an expired one).
pub(crate) fn bearer(st: &State, req: &Req) -> Result<Vec<String>, Fail> {
    let unauthenticated =
        |msg: &str, violation: bool| Fail::new(401, "InvalidAuthenticationToken", msg, violation);
    let Some(h) = req.header("authorization") else {
        return Err(unauthenticated("Access token is empty.", true));
    };
    let Some(token) = h
        .strip_prefix("Bearer ")
        .or_else(|| h.strip_prefix("bearer "))
    else {
        return Err(unauthenticated(
            "The Authorization header is not a bearer token.",
            true,
        ));
    };
    let auth = lock(&st.auth);
    match auth.tokens.get(token.trim()) {
        None => Err(unauthenticated(
            "IDX14100: JWT is not well formed: the access token is not one this fake issued.",
            true,
        )),
        Some(t) if t.expires <= Instant::now() => Err(unauthenticated(
            "Lifetime validation failed, the token is expired.",
            false,
        )),
        Some(t) => Ok(t.roles.clone()),
    }
}
