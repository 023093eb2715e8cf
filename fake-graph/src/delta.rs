//! Delta queries on a folder's contacts (`GET …/contactFolders/{f}/contacts/delta`, also
//! spelled `delta()`): the first round lists every contact of the folder; a deltaLink replay
//! lists what the folder's change log holds after the token's sequence number (upserts whole,
//! removals as `@removed` `deleted`, or `changed` when moved out). A round's item ids are fixed
//! when it starts and kept server-side (its pages' `$skiptoken`s name it), items are written
//! as they are when each page is read. Pages hold `odata.maxpagesize` items (capped by
//! `Options::delta_page_cap`; 10 without a `Prefer`). Tokens expire with
//! `Mailbox::expire_delta_tokens`, the `ExpireDelta` fault, or more than
//! `Options::delta_token_cache` changes: 410 Gone, with the error code alternating in case
//! (`SyncStateNotFound`, `resyncRequired`, `syncStateNotFound`, `ResyncRequired`).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::contacts::{Ctx, contact_select, render_contact};
use crate::http::{Fail, Req, Resp};
use crate::mailbox::{Change, Mailbox};
use crate::odata::Expand;
use crate::util;

/// A delta token: the folder, the `$select` of the first request, and the folder's sequence
/// number when it was issued.
#[derive(Debug, Clone)]
pub(crate) struct Token {
    folder: String,
    select: Option<Vec<String>>,
    seq: u64,
    epoch: u64,
}

/// One delta round being paged through.
#[derive(Debug, Clone)]
pub(crate) struct Round {
    folder: String,
    select: Option<Vec<String>>,
    ids: Vec<String>,
    end_seq: u64,
    epoch: u64,
}

const CODES: [&str; 4] = [
    "SyncStateNotFound",
    "resyncRequired",
    "syncStateNotFound",
    "ResyncRequired",
];

fn gone(ctx: &Ctx) -> Fail {
    let n = ctx
        .st
        .resets
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Fail::new(
        410,
        CODES[(n % 4) as usize],
        "The sync state generation is not found or has expired. Restart the synchronization with an initial delta request.",
        false,
    )
}

/// Answers a delta request for `folder`; `expire` is a pending `ExpireDelta` fault (taken by
/// the caller only for a deltaLink replay).
pub(crate) fn handle(
    ctx: &Ctx,
    mb: &mut Mailbox,
    folder: &str,
    req: &Req,
    expire: bool,
) -> Result<Resp, Fail> {
    let skip = req.q("$skiptoken");
    let dtok = req.q("$deltatoken");
    if (skip.is_some() || dtok.is_some()) && req.query.len() != 1 {
        return Err(Fail::bad(
            "BadRequest",
            "A nextLink or deltaLink must be replayed as given: no query option may be added to it.",
        ));
    }
    if !mb.folders.contains_key(folder) {
        return Err(Fail::item_not_found());
    }
    let (round_id, offset) = match (skip, dtok) {
        (Some(s), _) => resume(ctx, mb, folder, s)?,
        (None, Some(t)) => (replay(ctx, mb, folder, t, expire)?, 0),
        (None, None) => (first(ctx, mb, folder, req)?, 0),
    };
    Ok(page(ctx, mb, req, &round_id, offset))
}

/// A nextLink's round and offset.
fn resume(ctx: &Ctx, mb: &Mailbox, folder: &str, skiptoken: &str) -> Result<(String, usize), Fail> {
    let (rid, offset) = parse_skiptoken(skiptoken)?;
    let Some(round) = mb.rounds.get(&rid) else {
        return Err(gone(ctx));
    };
    if round.folder != folder {
        return Err(Fail::bad(
            "BadRequest",
            "The $skiptoken belongs to another folder's delta.",
        ));
    }
    if round.epoch != mb.epoch {
        return Err(gone(ctx));
    }
    Ok((rid, offset))
}

/// Starts the round of a deltaLink replay: what the folder's log holds after the token.
fn replay(
    ctx: &Ctx,
    mb: &mut Mailbox,
    folder: &str,
    t: &str,
    expire: bool,
) -> Result<String, Fail> {
    let f = &mb.folders[folder];
    let Some(tok) = mb.tokens.get(t) else {
        return Err(Fail::bad(
            "BadRequest",
            format!("'{t}' is not a $deltatoken this fake gave."),
        ));
    };
    if tok.folder != folder {
        return Err(Fail::bad(
            "BadRequest",
            "The $deltatoken belongs to another folder's delta.",
        ));
    }
    let changes = f.seq.saturating_sub(tok.seq);
    if expire || tok.epoch != mb.epoch || changes > ctx.opts.delta_token_cache as u64 {
        return Err(gone(ctx));
    }
    let mut log: Vec<(&u64, &String)> = f
        .log
        .iter()
        .filter(|(_, (seq, _))| *seq > tok.seq)
        .map(|(id, (seq, _))| (seq, id))
        .collect();
    log.sort();
    let round = Round {
        folder: folder.to_string(),
        select: tok.select.clone(),
        ids: log.into_iter().map(|(_, id)| id.clone()).collect(),
        end_seq: f.seq,
        epoch: mb.epoch,
    };
    Ok(start(mb, round))
}

/// Starts a first round: every contact of the folder.
fn first(ctx: &Ctx, mb: &mut Mailbox, folder: &str, req: &Req) -> Result<String, Fail> {
    if let Some((k, _)) = req.query.iter().find(|(k, _)| k != "$select") {
        return Err(Fail::bad(
            "BadRequest",
            format!(
                "Query option '{k}' is not supported on contact delta: only $select is (on the first request)."
            ),
        ));
    }
    let select = match req.q("$select") {
        Some(s) => Some(contact_select(ctx, s)?),
        None => None,
    };
    let f = &mb.folders[folder];
    let round = Round {
        folder: folder.to_string(),
        select,
        ids: f.items.values().cloned().collect(),
        end_seq: f.seq,
        epoch: mb.epoch,
    };
    Ok(start(mb, round))
}

fn start(mb: &mut Mailbox, round: Round) -> String {
    let id = util::b64url(&util::random_bytes(12));
    mb.keep_round(id.clone(), round);
    id
}

fn parse_skiptoken(s: &str) -> Result<(String, usize), Fail> {
    let bad = || {
        Fail::bad(
            "BadRequest",
            format!("'{s}' is not a $skiptoken this fake gave."),
        )
    };
    let text = URL_SAFE_NO_PAD.decode(s).map_err(|_| bad())?;
    let text = String::from_utf8(text).map_err(|_| bad())?;
    let (rid, off) = text.split_once('.').ok_or_else(bad)?;
    Ok((rid.to_string(), off.parse().map_err(|_| bad())?))
}

/// One page of a round, with its nextLink, or its deltaLink (and a new token) when last.
fn page(ctx: &Ctx, mb: &mut Mailbox, req: &Req, round_id: &str, offset: usize) -> Resp {
    let cap = ctx.opts.delta_page_cap.max(1);
    let size = req.max_page_size().unwrap_or(10).clamp(1, cap);
    let round = mb.rounds.get(round_id).expect("round").clone();
    let none = Expand::default();
    let value: Vec<Value> = round
        .ids
        .iter()
        .skip(offset)
        .take(size)
        .map(|id| match mb.contacts.get(id) {
            Some(c) if c.folder == round.folder => {
                render_contact(ctx, c, round.select.as_deref(), &none)
            }
            other => {
                let moved = other.is_some()
                    || mb
                        .folders
                        .get(&round.folder)
                        .and_then(|f| f.log.get(id))
                        .map(|l| l.1)
                        == Some(Change::MovedOut);
                let reason = if moved { "changed" } else { "deleted" };
                json!({"id": id, "@removed": {"reason": reason}})
            }
        })
        .collect();
    let base = format!("{}/v1.0{}", ctx.st.url(), req.raw_path);
    let mut out = json!({"@odata.context": format!("{}/v1.0/$metadata#Collection(contact)", ctx.st.url()), "value": value});
    if offset + size < round.ids.len() {
        let t = util::b64url(format!("{round_id}.{}", offset + size).as_bytes());
        out["@odata.nextLink"] = json!(format!(
            "{base}?{}",
            util::encode_query(&[("$skiptoken".into(), t)])
        ));
    } else {
        let t = util::b64url(&util::random_bytes(24));
        mb.tokens.insert(
            t.clone(),
            Token {
                folder: round.folder.clone(),
                select: round.select.clone(),
                seq: round.end_seq,
                epoch: round.epoch,
            },
        );
        out["@odata.deltaLink"] = json!(format!(
            "{base}?{}",
            util::encode_query(&[("$deltatoken".into(), t)])
        ));
    }
    let mut resp = Resp::json(200, out);
    if req.max_page_size().is_some() {
        resp = resp.with_header("Preference-Applied", format!("odata.maxpagesize={size}"));
    }
    resp
}
