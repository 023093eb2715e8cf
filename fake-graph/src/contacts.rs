//! The HTTP handlers for contacts and their photos (`contacts.*`, `photo.*`): listing with
//! `$top`/`$skip` paging (default page 10, at most 1000), `$select`, `$expand`, `$filter`,
//! `$orderby`; create, read, PATCH (with `If-Match`), DELETE, permanentDelete; photo `$value`
//! GET and PUT. Also how a contact is written out: every regular property of the schema (a
//! default of null, `[]` or `{}` when not stored) or just the selected ones, with `id` and
//! `@odata.etag` always, and extended properties and the photo only when expanded.
//! Bodies arrive already checked against the schema (see `routes.rs`); the rules here are
//! Exchange's own (entry limits, preconditions, where an item lives).

use serde_json::{Map, Value, json};
use std::collections::HashMap;

use crate::http::{Body, Fail, Req, Resp};
use crate::mailbox::{Contact, Mailbox, ext_pairs};
use crate::odata::{self, Cond, Expand, Filter};
use crate::spec::Spec;
use crate::{Options, State, util};

/// What a request handler needs besides the mailbox.
pub(crate) struct Ctx<'a> {
    pub st: &'a State,
    pub opts: &'a Options,
}

/// The contact schema as the handlers use it, derived from the spec at start.
pub(crate) struct Schema {
    /// Selectable properties (not navigation properties), in the spec's order.
    pub fields: Vec<String>,
    /// Property → the value a read gives when nothing is stored.
    pub defaults: Map<String, Value>,
}

impl Schema {
    pub fn new(spec: &Spec) -> Schema {
        let mut fields = vec![];
        let mut defaults = Map::new();
        for (k, d) in spec.properties("microsoft.graph.contact") {
            if Spec::is_navigation(&k, &d) {
                continue;
            }
            let default = if d["type"] == "array" {
                json!([])
            } else if d.get("$ref").is_some() {
                json!({})
            } else {
                Value::Null
            };
            defaults.insert(k.clone(), default);
            fields.push(k);
        }
        Schema { fields, defaults }
    }
}

/// The most entries Exchange keeps in these contact collections.
const MAX_ENTRIES: &[(&str, usize)] = &[
    ("emailAddresses", 3),
    ("businessPhones", 2),
    ("homePhones", 2),
];

/// Parses a contact `$select`.
pub(crate) fn contact_select(ctx: &Ctx, s: &str) -> Result<Vec<String>, Fail> {
    odata::parse_select(s, &ctx.st.schema.fields, "microsoft.graph.contact")
}

/// A contact as Graph writes it.
pub(crate) fn render_contact(
    ctx: &Ctx,
    c: &Contact,
    select: Option<&[String]>,
    expand: &Expand,
) -> Value {
    let schema = &ctx.st.schema;
    let mut o = Map::new();
    o.insert("@odata.etag".into(), json!(c.etag()));
    o.insert("id".into(), json!(c.id));
    let names = select.unwrap_or(&schema.fields);
    for n in names {
        let v = match n.as_str() {
            "id" => continue,
            "changeKey" => json!(c.change_key),
            "createdDateTime" => json!(c.created),
            "lastModifiedDateTime" => json!(c.modified),
            "parentFolderId" => json!(c.folder),
            _ => c
                .props
                .get(n)
                .cloned()
                .unwrap_or_else(|| schema.defaults.get(n).cloned().unwrap_or(Value::Null)),
        };
        o.insert(n.clone(), v);
    }
    if let Some(ext) = expand_ext(&c.ext, expand) {
        o.insert("singleValueExtendedProperties".into(), ext);
    }
    if expand.photo
        && let Some(p) = &c.photo
    {
        o.insert(
            "photo".into(),
            json!({"id": format!("{}X{}", p.width, p.height), "height": p.height, "width": p.width}),
        );
    }
    Value::Object(o)
}

/// The expanded extended properties the `$expand` filter names, if any match.
pub(crate) fn expand_ext(ext: &[(String, String)], expand: &Expand) -> Option<Value> {
    let ids = expand.ext.as_ref()?;
    let v: Vec<Value> = ext
        .iter()
        .filter(|(i, _)| ids.iter().any(|w| w.eq_ignore_ascii_case(i)))
        .map(|(i, v)| json!({"id": i, "value": v}))
        .collect();
    (!v.is_empty()).then(|| json!(v))
}

/// `$top` (0..=max, else `default`) and `$skip`.
pub(crate) fn top_skip(req: &Req, default: usize, max: usize) -> Result<(usize, usize), Fail> {
    let top = match req.q("$top") {
        None => default,
        Some(t) => match t.parse::<usize>() {
            Ok(n) if n <= max => n,
            _ => {
                return Err(Fail::bad(
                    "ErrorInvalidUrlQuery",
                    format!("The value of $top must be at most {max}; got {t}."),
                ));
            }
        },
    };
    let skip = req.q("$skip").and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((top, skip))
}

/// A page of a collection with an absolute `@odata.nextLink` (carrying `$skip`) when more
/// follow; `total` is written as `@odata.count` when `$count=true`.
pub(crate) fn page(
    ctx: &Ctx,
    req: &Req,
    value: Vec<Value>,
    skip: usize,
    top: usize,
    total: usize,
) -> Resp {
    let mut out = json!({"@odata.context": format!("{}/v1.0/$metadata#{}", ctx.st.url(), req.segs.last().cloned().unwrap_or_default()), "value": value});
    if req.q("$count") == Some("true") {
        out["@odata.count"] = json!(total);
    }
    if top > 0 && skip + top < total {
        let mut q: Vec<(String, String)> = req
            .query
            .iter()
            .filter(|(k, _)| k != "$skip")
            .cloned()
            .collect();
        q.push(("$skip".into(), (skip + top).to_string()));
        out["@odata.nextLink"] = json!(format!(
            "{}/v1.0{}?{}",
            ctx.st.url(),
            req.raw_path,
            util::encode_query(&q)
        ));
    }
    Resp::json(200, out)
}

/// Answers a contact or photo call. `folder` is the path's folder id (`None` for
/// `/users/{u}/contacts…`), `contact` the path's contact id.
pub(crate) fn handle(
    ctx: &Ctx,
    mb: &mut Mailbox,
    op: &str,
    params: &HashMap<String, String>,
    req: &Req,
    body: Option<Value>,
) -> Result<Resp, Fail> {
    let folder = params.get("contactFolder-id").map(String::as_str);
    let contact = params
        .get("contact-id")
        .map(String::as_str)
        .unwrap_or_default();
    match op {
        "contacts.list" => list(ctx, mb, folder, req),
        "contacts.create" => create(ctx, mb, folder, body.unwrap_or_default()),
        "contacts.get" => {
            let c = mb
                .contact_in(contact, folder)
                .ok_or_else(Fail::item_not_found)?;
            let select = req
                .q("$select")
                .map(|s| contact_select(ctx, s))
                .transpose()?;
            let expand = req
                .q("$expand")
                .map(|e| odata::parse_expand(e, true))
                .transpose()?
                .unwrap_or_default();
            Ok(Resp::json(
                200,
                render_contact(ctx, c, select.as_deref(), &expand),
            ))
        }
        "contacts.update" => update(ctx, mb, folder, contact, req, body.unwrap_or_default()),
        "contacts.delete" | "contacts.permanentDelete" => {
            let c = mb
                .contact_in(contact, folder)
                .ok_or_else(Fail::item_not_found)?;
            if_match(req, c)?;
            mb.remove_contact(contact);
            Ok(Resp::empty(204))
        }
        "photo.get" => {
            let c = mb
                .contact_in(contact, folder)
                .ok_or_else(Fail::item_not_found)?;
            match &c.photo {
                Some(p) => Ok(Resp {
                    status: 200,
                    headers: vec![],
                    body: Body::Bytes(p.content_type.clone(), p.bytes.clone()),
                }),
                None => Err(Fail::new(
                    404,
                    "ErrorItemNotFound",
                    "The photo wasn't found.",
                    false,
                )),
            }
        }
        "photo.put" => put_photo(mb, folder, contact, req),
        _ => Err(Fail::bad(
            "BadRequest",
            format!("{op} is not a contact call"),
        )),
    }
}

fn if_match(req: &Req, c: &Contact) -> Result<(), Fail> {
    match req.header("if-match") {
        Some(m) if m != "*" && m != c.etag() => Err(Fail::new(
            412,
            "ErrorIrresolvableConflict",
            "The send or update operation could not be performed because the change key passed in the request does not match the current change key for the item.",
            false,
        )),
        _ => Ok(()),
    }
}

/// The folder a collection call is on: the path's (any folder, live or deleted), or the root.
fn folder_of<'a>(
    mb: &'a Mailbox,
    folder: Option<&str>,
) -> Result<&'a crate::mailbox::Folder, Fail> {
    let id = folder
        .map(str::to_string)
        .unwrap_or_else(|| mb.default_folder());
    mb.folders.get(&id).ok_or_else(Fail::item_not_found)
}

/// Whether a contact passes a `$filter`.
fn passes(c: &Contact, f: &Filter) -> bool {
    match f {
        Filter::Eq(p, v) => c
            .props
            .get(p)
            .and_then(Value::as_str)
            .is_some_and(|s| s.eq_ignore_ascii_case(v)),
        Filter::Any(coll, conds) if coll == "singleValueExtendedProperties" => {
            c.ext.iter().any(|(id, v)| {
                conds
                    .iter()
                    .all(|k| k.holds("id", id) && k.holds("value", v))
            })
        }
        Filter::Any(_, conds) => c
            .props
            .get("emailAddresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|e| {
                let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                conds
                    .iter()
                    .all(|k| k.holds("address", &s("address")) && k.holds("name", &s("name")))
            }),
    }
}

fn contact_filter(ctx: &Ctx, s: &str) -> Result<Filter, Fail> {
    let f = odata::parse_filter(s)?;
    let sub_ok = |conds: &[Cond], subs: &[&str]| {
        conds.iter().all(|c| match c {
            Cond::Eq(p, _) | Cond::StartsWith(p, _) => subs.contains(&p.as_str()),
        })
    };
    let ok = match &f {
        Filter::Eq(p, _) => ctx.st.schema.defaults.get(p).is_some_and(Value::is_null),
        Filter::Any(c, conds) if c == "singleValueExtendedProperties" => {
            sub_ok(conds, &["id", "value"])
                && conds
                    .iter()
                    .any(|c| matches!(c, Cond::Eq(p, _) if p == "id"))
        }
        Filter::Any(c, conds) => c == "emailAddresses" && sub_ok(conds, &["address", "name"]),
    };
    if !ok {
        return Err(Fail::bad(
            "ErrorInvalidUrlQueryFilter",
            format!(
                "The query filter {s:?} is not supported (an extended property filter must name ep/id with eq; other filters: a string property eq '…', emailAddresses/any(a: a/address eq '…'))."
            ),
        ));
    }
    Ok(f)
}

fn list(ctx: &Ctx, mb: &Mailbox, folder: Option<&str>, req: &Req) -> Result<Resp, Fail> {
    if req.q("$search").is_some() {
        return Err(Fail::bad(
            "BadRequest",
            "$search is not implemented by the fake.",
        ));
    }
    let f = folder_of(mb, folder)?;
    let (top, skip) = top_skip(req, 10, 1000)?;
    let select = req
        .q("$select")
        .map(|s| contact_select(ctx, s))
        .transpose()?;
    let expand = req
        .q("$expand")
        .map(|e| odata::parse_expand(e, true))
        .transpose()?
        .unwrap_or_default();
    let filter = req
        .q("$filter")
        .map(|s| contact_filter(ctx, s))
        .transpose()?;
    let order = req
        .q("$orderby")
        .map(|s| odata::parse_orderby(s, &ctx.st.schema.fields))
        .transpose()?;
    let mut items: Vec<&Contact> = f
        .items
        .values()
        .filter_map(|id| mb.contacts.get(id))
        .filter(|c| filter.as_ref().is_none_or(|flt| passes(c, flt)))
        .collect();
    if let Some((prop, desc)) = order {
        items.sort_by_key(|c| c.props.get(&prop).map(Value::to_string).unwrap_or_default());
        if desc {
            items.reverse();
        }
    }
    let total = items.len();
    let value = items
        .into_iter()
        .skip(skip)
        .take(top)
        .map(|c| render_contact(ctx, c, select.as_deref(), &expand))
        .collect();
    Ok(page(ctx, req, value, skip, top, total))
}

/// Splits a contact body into regular properties and extended properties, enforcing
/// Exchange's entry limits.
/// Regular properties and extended properties of a body.
type Split = (Map<String, Value>, Vec<(String, String)>);

fn split_body(body: Value) -> Result<Split, Fail> {
    let mut props = body.as_object().cloned().unwrap_or_default();
    for (k, max) in MAX_ENTRIES {
        if let Some(n) = props.get(*k).and_then(Value::as_array).map(Vec::len)
            && n > *max
        {
            return Err(Fail::bad(
                "ErrorInvalidProperty",
                format!("The contact has {n} {k}; Exchange keeps at most {max}."),
            ));
        }
    }
    let ext = ext_pairs(props.get("singleValueExtendedProperties"));
    props.remove("singleValueExtendedProperties");
    props.remove("@odata.type");
    Ok((props, ext))
}

fn create(ctx: &Ctx, mb: &mut Mailbox, folder: Option<&str>, body: Value) -> Result<Resp, Fail> {
    let fid = folder_of(mb, folder)?.id.clone();
    let (props, ext) = split_body(body)?;
    let id = mb.create_contact(&fid, props, ext);
    let c = mb.contact_in(&id, None).expect("created");
    Ok(Resp::json(
        201,
        render_contact(ctx, c, None, &Expand::default()),
    ))
}

fn update(
    ctx: &Ctx,
    mb: &mut Mailbox,
    folder: Option<&str>,
    id: &str,
    req: &Req,
    body: Value,
) -> Result<Resp, Fail> {
    let c = mb.contact_in(id, folder).ok_or_else(Fail::item_not_found)?;
    if_match(req, c)?;
    let (props, ext) = split_body(body)?;
    mb.update_contact(id, props, ext);
    let c = mb.contact_in(id, None).expect("updated");
    Ok(Resp::json(
        200,
        render_contact(ctx, c, None, &Expand::default()),
    ))
}

/// Largest photo Exchange takes in one PUT.
const MAX_PHOTO: usize = 4 * 1024 * 1024;

fn put_photo(mb: &mut Mailbox, folder: Option<&str>, id: &str, req: &Req) -> Result<Resp, Fail> {
    let ct = req
        .header("content-type")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let ct = ct.split(';').next().unwrap_or_default().trim().to_string();
    if ct != "image/jpeg" && ct != "image/png" {
        return Err(Fail::bad(
            "ErrorInvalidRequest",
            format!("A photo must be sent as image/jpeg or image/png, not {ct:?}."),
        ));
    }
    if req.body.is_empty() {
        return Err(Fail::bad("ErrorInvalidRequest", "The photo is empty."));
    }
    if req.body.len() > MAX_PHOTO {
        return Err(Fail::new(
            413,
            "ErrorRequestEntityTooLarge",
            format!(
                "The photo is {} bytes; at most 4 MB is accepted.",
                req.body.len()
            ),
            true,
        ));
    }
    mb.contact_in(id, folder).ok_or_else(Fail::item_not_found)?;
    mb.put_photo(id, &req.body, &ct);
    Ok(Resp::empty(200))
}
