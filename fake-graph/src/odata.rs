//! The OData query options the fake understands on mailbox collections, parsed into small
//! values: `$select` (checked against the schema's properties), `$expand`
//! (`singleValueExtendedProperties($filter=id eq '…' or id eq '…')`, `photo`), `$filter`
//! (`prop eq '…'`, and `collection/any(x: x/id eq '…' and x/value eq '…')` with `startswith`
//! inside) and `$orderby`. String literals use OData quoting (`''` for an apostrophe).
//! Anything else is refused with Exchange's error codes; the caller records the violation.

use crate::http::Fail;

/// Splits `s` at `sep` (matched case-insensitively) where it is outside quotes and brackets.
pub(crate) fn split_outside_quotes<'a>(s: &'a str, sep: &str) -> Vec<&'a str> {
    let lower = s.to_ascii_lowercase();
    let sep = sep.to_ascii_lowercase();
    let (mut out, mut start, mut depth, mut quoted) = (vec![], 0, 0i32, false);
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' => quoted = !quoted,
            b'(' if !quoted => depth += 1,
            b')' if !quoted => depth -= 1,
            _ if !quoted && depth == 0 && lower.as_bytes()[i..].starts_with(sep.as_bytes()) => {
                out.push(&s[start..i]);
                i += sep.len();
                start = i;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(&s[start..]);
    out
}

/// The text of an OData string literal `'it''s'` (the whole of `s`).
pub(crate) fn string_literal(s: &str) -> Option<String> {
    let inner = s.strip_prefix('\'')?.strip_suffix('\'')?;
    // Every quote inside must be doubled.
    let mut out = String::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' && chars.next() != Some('\'') {
            return None;
        }
        out.push(c);
    }
    Some(out)
}

/// `$select`: property names, each one of `allowed`.
pub(crate) fn parse_select(s: &str, allowed: &[String], ty: &str) -> Result<Vec<String>, Fail> {
    let names: Vec<String> = s.split(',').map(|n| n.trim().to_string()).collect();
    for n in &names {
        if !allowed.contains(n) {
            return Err(Fail::bad(
                "RequestBroker--ParseUri",
                format!("Could not find a property named '{n}' on type '{ty}'."),
            ));
        }
    }
    Ok(names)
}

/// What `$expand` asked for.
#[derive(Debug, Default, Clone)]
pub(crate) struct Expand {
    /// Extended property ids (`singleValueExtendedProperties($filter=id eq …)`), if expanded.
    pub ext: Option<Vec<String>>,
    /// `photo` (contacts only).
    pub photo: bool,
}

fn bad_expand(s: &str) -> Fail {
    Fail::bad(
        "RequestBroker--ParseUri",
        format!(
            "$expand {s:?} is not supported (the fake knows singleValueExtendedProperties($filter=id eq '…' [or id eq '…']) and, on contacts, photo)."
        ),
    )
}

/// Parses `$expand`.
pub(crate) fn parse_expand(s: &str, allow_photo: bool) -> Result<Expand, Fail> {
    let mut e = Expand::default();
    for item in split_outside_quotes(s, ",") {
        let item = item.trim();
        if item == "photo" && allow_photo {
            e.photo = true;
            continue;
        }
        let inner = item
            .strip_prefix("singleValueExtendedProperties(")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|r| r.trim().strip_prefix("$filter="))
            .ok_or_else(|| bad_expand(s))?;
        let mut ids = vec![];
        for term in split_outside_quotes(inner, " or ") {
            let lit = term
                .trim()
                .strip_prefix("id eq ")
                .and_then(|l| string_literal(l.trim()))
                .ok_or_else(|| bad_expand(s))?;
            ids.push(lit);
        }
        e.ext = Some(ids);
    }
    Ok(e)
}

/// One condition inside `any(x: …)`.
#[derive(Debug, Clone)]
pub(crate) enum Cond {
    /// `x/prop eq 'v'` (case-insensitive).
    Eq(String, String),
    /// `startswith(x/prop,'v')` (case-insensitive).
    StartsWith(String, String),
}

/// A `$filter`.
#[derive(Debug, Clone)]
pub(crate) enum Filter {
    /// `prop eq 'v'` (case-insensitive).
    Eq(String, String),
    /// `collection/any(x: cond and cond …)`.
    Any(String, Vec<Cond>),
}

impl Cond {
    /// Whether a value of the sub-property `prop` satisfies this condition (or the condition is
    /// on another sub-property).
    pub fn holds(&self, prop: &str, value: &str) -> bool {
        match self {
            Cond::Eq(p, v) => p != prop || value.eq_ignore_ascii_case(v),
            Cond::StartsWith(p, v) => {
                p != prop || value.to_lowercase().starts_with(&v.to_lowercase())
            }
        }
    }
}

fn bad_filter(s: &str, why: &str) -> Fail {
    Fail::bad(
        "ErrorInvalidUrlQueryFilter",
        format!("The query filter {s:?} is invalid: {why}"),
    )
}

/// Parses `$filter`.
pub(crate) fn parse_filter(s: &str) -> Result<Filter, Fail> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    if let Some(i) = lower.find("/any(") {
        let coll = t[..i].trim().to_string();
        let inner = t[i + 5..]
            .strip_suffix(')')
            .ok_or_else(|| bad_filter(s, "unbalanced any("))?;
        let (var, body) = inner
            .split_once(':')
            .ok_or_else(|| bad_filter(s, "any() needs a lambda variable"))?;
        let prefix = format!("{}/", var.trim());
        let mut conds = vec![];
        for c in split_outside_quotes(body, " and ") {
            conds.push(parse_cond(s, c.trim(), &prefix)?);
        }
        return Ok(Filter::Any(coll, conds));
    }
    let parts = split_outside_quotes(t, " eq ");
    if let [prop, lit] = parts.as_slice() {
        let v =
            string_literal(lit.trim()).ok_or_else(|| bad_filter(s, "expected a string literal"))?;
        return Ok(Filter::Eq(prop.trim().to_string(), v));
    }
    Err(bad_filter(
        s,
        "the fake knows only `prop eq '…'` and `collection/any(…)`",
    ))
}

fn parse_cond(s: &str, c: &str, prefix: &str) -> Result<Cond, Fail> {
    let sub = |p: &str| -> Result<String, Fail> {
        p.trim()
            .strip_prefix(prefix)
            .map(str::to_string)
            .ok_or_else(|| bad_filter(s, "a condition must use the lambda variable"))
    };
    if c.to_ascii_lowercase().starts_with("startswith(") && c.ends_with(')') {
        let args = split_outside_quotes(&c[11..c.len() - 1], ",");
        if let [p, lit] = args.as_slice() {
            let v = string_literal(lit.trim())
                .ok_or_else(|| bad_filter(s, "expected a string literal"))?;
            return Ok(Cond::StartsWith(sub(p)?, v));
        }
        return Err(bad_filter(s, "startswith takes two arguments"));
    }
    let parts = split_outside_quotes(c, " eq ");
    if let [p, lit] = parts.as_slice() {
        let v =
            string_literal(lit.trim()).ok_or_else(|| bad_filter(s, "expected a string literal"))?;
        return Ok(Cond::Eq(sub(p)?, v));
    }
    Err(bad_filter(s, "unknown condition"))
}

/// `$orderby`: a property and whether descending.
pub(crate) fn parse_orderby(s: &str, allowed: &[String]) -> Result<(String, bool), Fail> {
    let mut words = s.split_whitespace();
    let prop = words.next().unwrap_or_default().to_string();
    let desc = match words.next() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(_) => return Err(Fail::bad("BadRequest", format!("Invalid $orderby {s:?}"))),
    };
    if !allowed.contains(&prop) || words.next().is_some() {
        return Err(Fail::bad(
            "BadRequest",
            format!("$orderby {s:?} is not supported."),
        ));
    }
    Ok((prop, desc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_filters_clients_send() {
        assert_eq!(string_literal("'O''Brien'").as_deref(), Some("O'Brien"));
        assert!(string_literal("'O'Brien'").is_none());
        let f = parse_filter("singleValueExtendedProperties/Any(ep: ep/id eq 'String {00020329-0000-0000-C000-000000000046} Name x' and startswith(ep/value,'ab'))").unwrap();
        match f {
            Filter::Any(c, conds) => {
                assert_eq!(c, "singleValueExtendedProperties");
                assert!(matches!(&conds[0], Cond::Eq(p, _) if p == "id"));
                assert!(matches!(&conds[1], Cond::StartsWith(p, v) if p == "value" && v == "ab"));
            }
            _ => panic!(),
        }
        assert!(
            matches!(parse_filter("displayName eq 'It''s and eq'").unwrap(), Filter::Eq(p, v) if p == "displayName" && v == "It's and eq")
        );
        let e = parse_expand(
            "singleValueExtendedProperties($filter=id eq 'A' or id eq 'B'),photo",
            true,
        )
        .unwrap();
        assert_eq!(e.ext.unwrap(), vec!["A", "B"]);
        assert!(e.photo);
    }
}
