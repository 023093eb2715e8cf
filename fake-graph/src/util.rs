//! Small helpers the other modules share: random GUIDs, Exchange-like opaque ids and change
//! keys, UTC timestamps written without a date library, and URL percent-coding. It owns no
//! state and decides nothing about the API's rules.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::RngCore;
use std::time::{SystemTime, UNIX_EPOCH};

/// `n` random bytes.
pub(crate) fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut b);
    b
}

/// A random version-4 GUID, lower-case, as Entra ID writes object ids.
pub(crate) fn guid() -> String {
    let mut b = random_bytes(16);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// base64url without padding.
pub(crate) fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// An opaque Exchange-style item or folder id: `AAMkA` + base64url text + `=`, about 150
/// characters for items (`long`) and 120 for folders. `n` makes it unique.
pub(crate) fn exchange_id(mailbox: &[u8], n: u64, long: bool) -> String {
    let mut b = mailbox.to_vec();
    b.extend_from_slice(&[0, 0x46, 0, 0, 0, 0]);
    b.extend_from_slice(&random_bytes(if long { 46 } else { 30 }));
    b.extend_from_slice(&n.to_be_bytes());
    format!("AAMkA{}AAA=", b64url(&b))
}

/// A new change key, standard base64 like Exchange's (`EQAAABYAAAA…`; it may hold `+`, `/`).
pub(crate) fn change_key() -> String {
    format!("EQAAABYAAAA{}", STANDARD.encode(random_bytes(21)))
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// (year, month, day, hour, minute, second) of a Unix time, UTC.
fn civil(secs: u64) -> (i64, u32, u32, u64, u64, u64) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, rem / 60 % 60, rem % 60)
}

/// `2025-01-02T03:04:05Z`, as Exchange writes item times.
pub(crate) fn iso(secs: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// Now as `2025-01-02T03:04:05Z`.
pub(crate) fn iso_now() -> String {
    iso(unix_now())
}

/// Now as `2025-01-02 03:04:05Z`, as Entra ID writes `timestamp` in token errors.
pub(crate) fn aad_now() -> String {
    iso_now().replace('T', " ")
}

/// Decodes `%XX` escapes (not `+`: this is for path segments).
pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Encodes query pairs as Graph writes them in links: `$`, `'`, `(`, `)`, `,`, `/`, `:`, `@`
/// stay as they are, a space is `%20`.
pub(crate) fn encode_query(pairs: &[(String, String)]) -> String {
    fn enc(s: &str) -> String {
        let mut o = String::new();
        for c in s.bytes() {
            if c.is_ascii_alphanumeric() || b"$'(),/:@-._~*!".contains(&c) {
                o.push(c as char);
            } else {
                o.push_str(&format!("%{c:02X}"));
            }
        }
        o
    }
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// (width, height) of a PNG or JPEG image, when its header says.
pub(crate) fn image_size(b: &[u8]) -> Option<(u32, u32)> {
    if b.len() >= 24 && b.starts_with(b"\x89PNG\r\n\x1a\n") {
        let w = u32::from_be_bytes(b[16..20].try_into().ok()?);
        let h = u32::from_be_bytes(b[20..24].try_into().ok()?);
        return Some((w, h));
    }
    if !b.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let mut i = 2;
    while i + 9 < b.len() {
        if b[i] != 0xFF {
            return None;
        }
        let marker = b[i + 1];
        let len = usize::from(u16::from_be_bytes([b[i + 2], b[i + 3]]));
        if (0xC0..=0xCF).contains(&marker) && ![0xC4, 0xC8, 0xCC].contains(&marker) {
            let h = u16::from_be_bytes([b[i + 5], b[i + 6]]);
            let w = u16::from_be_bytes([b[i + 7], b[i + 8]]);
            return Some((u32::from(w), u32::from(h)));
        }
        i += 2 + len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_decoding() {
        assert_eq!(iso(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso(1_709_210_096), "2024-02-29T12:34:56Z");
        assert_eq!(percent_decode("a%40b%2"), "a@b%2");
        assert_eq!(guid().len(), 36);
    }
}
