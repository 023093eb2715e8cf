//! The HTTP handlers for contact folders (`folders.*`): listing the live top-level folders
//! (the root Contacts folder is their parent and is not listed; default page 10, at most
//! 1000) with `$filter=displayName eq '…'`, `$select`, `$expand` of extended properties;
//! create (409 `ErrorFolderExists` on a live same-named folder, case-insensitive), read,
//! rename, DELETE (to Deleted Items; 500 `ErrorMoveCopyFailed` when a folder of that name is
//! already there; the root cannot be deleted) and permanentDelete.

use serde_json::{Map, Value, json};
use std::collections::HashMap;

use crate::contacts::{Ctx, expand_ext, page, top_skip};
use crate::http::{Fail, Req, Resp};
use crate::mailbox::{Folder, FolderError, Mailbox, ext_pairs};
use crate::odata::{self, Expand, Filter};

const FOLDER_FIELDS: &[&str] = &["id", "displayName", "parentFolderId"];

fn folder_json(f: &Folder, select: Option<&[String]>, expand: &Expand) -> Value {
    let mut o = Map::new();
    o.insert("id".into(), json!(f.id));
    for (k, v) in [
        ("displayName", json!(f.name)),
        ("parentFolderId", json!(f.parent)),
    ] {
        if select.is_none_or(|s| s.iter().any(|n| n == k)) {
            o.insert(k.into(), v);
        }
    }
    if let Some(ext) = expand_ext(&f.ext, expand) {
        o.insert("singleValueExtendedProperties".into(), ext);
    }
    Value::Object(o)
}

fn select_expand(req: &Req) -> Result<(Option<Vec<String>>, Expand), Fail> {
    let fields: Vec<String> = FOLDER_FIELDS.iter().map(|s| s.to_string()).collect();
    let select = req
        .q("$select")
        .map(|s| odata::parse_select(s, &fields, "microsoft.graph.contactFolder"))
        .transpose()?;
    let expand = req
        .q("$expand")
        .map(|e| odata::parse_expand(e, false))
        .transpose()?
        .unwrap_or_default();
    Ok((select, expand))
}

fn folder_error(e: FolderError) -> Fail {
    match e {
        FolderError::NotFound => Fail::item_not_found(),
        FolderError::Distinguished => Fail::new(
            403,
            "ErrorDeleteDistinguishedFolder",
            "Distinguished folders cannot be deleted.",
            true,
        ),
        FolderError::Exists => Fail::new(
            409,
            "ErrorFolderExists",
            "A folder with the specified name already exists.",
            false,
        ),
        FolderError::MoveFailed => Fail::new(
            500,
            "ErrorMoveCopyFailed",
            "The move or copy operation failed: a folder with the same name already exists in Deleted Items.",
            false,
        ),
    }
}

/// Answers a folder call.
pub(crate) fn handle(
    ctx: &Ctx,
    mb: &mut Mailbox,
    op: &str,
    params: &HashMap<String, String>,
    req: &Req,
    body: Option<Value>,
) -> Result<Resp, Fail> {
    let id = params.get("contactFolder-id").cloned().unwrap_or_default();
    match op {
        "folders.list" => list(ctx, mb, req),
        "folders.create" => {
            let body = body.unwrap_or_default();
            let name = body["displayName"].as_str().unwrap_or_default();
            if name.trim().is_empty() {
                return Err(Fail::bad(
                    "ErrorInvalidRequest",
                    "A folder needs a displayName.",
                ));
            }
            let ext = ext_pairs(body.get("singleValueExtendedProperties"));
            let id = mb.create_folder(name, ext).map_err(folder_error)?;
            let f = &mb.folders[&id];
            Ok(Resp::json(201, folder_json(f, None, &Expand::default())))
        }
        "folders.get" => {
            let (select, expand) = select_expand(req)?;
            let f = mb.folders.get(&id).ok_or_else(Fail::item_not_found)?;
            Ok(Resp::json(200, folder_json(f, select.as_deref(), &expand)))
        }
        "folders.update" => {
            let body = body.unwrap_or_default();
            let name = body.get("displayName").and_then(Value::as_str);
            let ext = ext_pairs(body.get("singleValueExtendedProperties"));
            mb.update_folder(&id, name, ext).map_err(folder_error)?;
            Ok(Resp::json(
                200,
                folder_json(&mb.folders[&id], None, &Expand::default()),
            ))
        }
        "folders.delete" => {
            mb.delete_folder(&id).map_err(folder_error)?;
            Ok(Resp::empty(204))
        }
        "folders.permanentDelete" => {
            mb.purge_folder(&id).map_err(folder_error)?;
            Ok(Resp::empty(204))
        }
        _ => Err(Fail::bad(
            "BadRequest",
            format!("{op} is not a folder call"),
        )),
    }
}

fn list(ctx: &Ctx, mb: &Mailbox, req: &Req) -> Result<Resp, Fail> {
    let (top, skip) = top_skip(req, 10, 1000)?;
    let (select, expand) = select_expand(req)?;
    let name = match req.q("$filter").map(odata::parse_filter).transpose()? {
        None => None,
        Some(Filter::Eq(p, v)) if p == "displayName" => Some(v),
        Some(_) => {
            return Err(Fail::bad(
                "ErrorInvalidUrlQueryFilter",
                format!(
                    "The fake filters contact folders only by displayName eq '…', not {:?}.",
                    req.q("$filter")
                ),
            ));
        }
    };
    if let Some(o) = req.q("$orderby") {
        odata::parse_orderby(o, &["displayName".to_string()])?;
    }
    let mut folders: Vec<&Folder> = mb
        .live_folders()
        .into_iter()
        .filter(|f| name.as_ref().is_none_or(|n| f.name.eq_ignore_ascii_case(n)))
        .collect();
    if let Some(o) = req.q("$orderby") {
        folders.sort_by_key(|f| f.name.to_lowercase());
        if o.ends_with("desc") {
            folders.reverse();
        }
    }
    let total = folders.len();
    let value = folders
        .into_iter()
        .skip(skip)
        .take(top)
        .map(|f| folder_json(f, select.as_deref(), &expand))
        .collect();
    Ok(page(ctx, req, value, skip, top, total))
}
