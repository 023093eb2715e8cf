//! WebDAV/CardDAV XML: the request bodies groupsync sends (PROPFIND, extended MKCOL,
//! addressbook-multiget) and a reader for the `207 Multi-Status` answers (RFC 4918, RFC 6352).
//! Hand-written on quick-xml's namespace-aware reader because only these few shapes are needed;
//! element names are matched by namespace and local name, never by prefix.

use quick_xml::NsReader;
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;

const DAV: &str = "DAV:";
const CARDDAV: &str = "urn:ietf:params:xml:ns:carddav";

/// PROPFIND body asking for what groupsync needs of collections and contacts.
pub const PROPFIND_COLLECTIONS: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<d:propfind xmlns:d="DAV:"><d:prop><d:resourcetype/><d:displayname/><d:getetag/></d:prop></d:propfind>"#;

/// PROPFIND body for etags only.
pub const PROPFIND_ETAGS: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<d:propfind xmlns:d="DAV:"><d:prop><d:getetag/><d:resourcetype/></d:prop></d:propfind>"#;

/// Escapes text for an XML element.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Extended MKCOL (RFC 5689) body for an address book with a display name.
pub fn mkcol_addressbook(displayname: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<d:mkcol xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:carddav"><d:set><d:prop><d:resourcetype><d:collection/><c:addressbook/></d:resourcetype><d:displayname>{}</d:displayname></d:prop></d:set></d:mkcol>"#,
        escape(displayname)
    )
}

/// addressbook-multiget REPORT body for these hrefs.
pub fn multiget(hrefs: &[String]) -> String {
    let mut s = String::from(
        r#"<?xml version="1.0" encoding="utf-8"?>
<c:addressbook-multiget xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:carddav"><d:prop><d:getetag/><c:address-data/></d:prop>"#,
    );
    for h in hrefs {
        s.push_str("<d:href>");
        s.push_str(&escape(h));
        s.push_str("</d:href>");
    }
    s.push_str("</c:addressbook-multiget>");
    s
}

/// One `<response>` of a multistatus, with the properties of its 200 propstat.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Response {
    pub href: String,
    /// The response-level status (a member that is gone answers with a bare 404).
    pub status: Option<u16>,
    pub etag: Option<String>,
    pub displayname: Option<String>,
    pub is_collection: bool,
    pub is_addressbook: bool,
    pub address_data: Option<String>,
}

fn status_code(s: &str) -> Option<u16> {
    s.split_whitespace().nth(1).and_then(|c| c.parse().ok())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tag {
    Response,
    Href,
    Propstat,
    Status,
    Getetag,
    Displayname,
    Resourcetype,
    AddressData,
    Other,
}

fn tag(ns: &ResolveResult<'_>, local: &str) -> Tag {
    let ns = match ns {
        ResolveResult::Bound(n) => n.as_ref(),
        _ => "",
    };
    match (ns, local) {
        (DAV, "response") => Tag::Response,
        (DAV, "href") => Tag::Href,
        (DAV, "propstat") => Tag::Propstat,
        (DAV, "status") => Tag::Status,
        (DAV, "getetag") => Tag::Getetag,
        (DAV, "displayname") => Tag::Displayname,
        (DAV, "resourcetype") => Tag::Resourcetype,
        (CARDDAV, "address-data") => Tag::AddressData,
        _ => Tag::Other,
    }
}

/// Parses a `207 Multi-Status` body.
pub fn parse_multistatus(body: &str) -> Result<Vec<Response>, String> {
    let mut reader = NsReader::from_str(body);
    let mut p = Parser::default();
    loop {
        let (ns, ev) = reader
            .read_resolved_event()
            .map_err(|e| format!("bad XML: {e}"))?;
        match ev {
            Event::Start(e) => p.start(tag(&ns, e.local_name().as_ref())),
            Event::Empty(e) if p.stack.last() == Some(&Tag::Resourcetype) => {
                p.resource_type(&ns, e.local_name().as_ref())
            }
            Event::Text(t) => p.text.push_str(&t.xml10_content()),
            Event::CData(t) => p.text.push_str(&t.into_inner()),
            Event::GeneralRef(r) => {
                if let Ok(Some(c)) = r.resolve_char_ref() {
                    p.text.push(c);
                } else {
                    p.text.push_str(match r.xml10_content().as_ref() {
                        "amp" => "&",
                        "lt" => "<",
                        "gt" => ">",
                        "quot" => "\"",
                        "apos" => "'",
                        _ => "",
                    });
                }
            }
            Event::End(_) => p.end(),
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(p.out)
}

/// A multistatus body as it is being read.
#[derive(Default)]
struct Parser {
    out: Vec<Response>,
    stack: Vec<Tag>,
    cur: Option<Response>,
    /// Properties of the propstat being read, and its status.
    ps: Response,
    ps_status: Option<u16>,
    text: String,
}

impl Parser {
    fn start(&mut self, t: Tag) {
        if t == Tag::Response {
            self.cur = Some(Response::default());
        }
        if t == Tag::Propstat {
            self.ps = Response::default();
            self.ps_status = None;
        }
        self.text.clear();
        self.stack.push(t);
    }

    /// An empty element inside `resourcetype`: a collection, an address book.
    fn resource_type(&mut self, ns: &ResolveResult<'_>, local: &str) {
        let ns = match ns {
            ResolveResult::Bound(n) => n.as_ref(),
            _ => "",
        };
        match (ns, local) {
            (DAV, "collection") => self.ps.is_collection = true,
            (CARDDAV, "addressbook") => self.ps.is_addressbook = true,
            _ => {}
        }
    }

    fn end(&mut self) {
        let t = self.stack.pop().unwrap_or(Tag::Other);
        let parent = self.stack.last().copied();
        let in_propstat = self.stack.contains(&Tag::Propstat);
        let text = std::mem::take(&mut self.text);
        match t {
            Tag::Href if parent == Some(Tag::Response) => {
                if let Some(r) = self.cur.as_mut() {
                    r.href = text.trim().to_string();
                }
            }
            Tag::Status if parent == Some(Tag::Propstat) => self.ps_status = status_code(&text),
            Tag::Status if parent == Some(Tag::Response) => {
                if let Some(r) = self.cur.as_mut() {
                    r.status = status_code(&text);
                }
            }
            Tag::Getetag if in_propstat => self.ps.etag = Some(text.trim().to_string()),
            Tag::Displayname if in_propstat => self.ps.displayname = Some(text),
            Tag::AddressData if in_propstat => self.ps.address_data = Some(text),
            Tag::Propstat => self.end_propstat(),
            Tag::Response => {
                if let Some(r) = self.cur.take() {
                    self.out.push(r);
                }
            }
            _ => {}
        }
    }

    /// A propstat's properties count only when its status is a success.
    fn end_propstat(&mut self) {
        let ps = &mut self.ps;
        if self.ps_status.is_none_or(|s| (200..300).contains(&s))
            && let Some(r) = self.cur.as_mut()
        {
            r.etag = r.etag.take().or(ps.etag.take());
            r.displayname = r.displayname.take().or(ps.displayname.take());
            r.address_data = r.address_data.take().or(ps.address_data.take());
            r.is_collection |= ps.is_collection;
            r.is_addressbook |= ps.is_addressbook;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_radicale_style_multistatus() {
        let body = r#"<?xml version='1.0' encoding='utf-8'?>
<multistatus xmlns="DAV:" xmlns:CR="urn:ietf:params:xml:ns:carddav"><response><href>/bob/</href><propstat><prop><resourcetype><principal /><collection /></resourcetype></prop><status>HTTP/1.1 200 OK</status></propstat></response>
<response><href>/bob/work/</href><propstat><prop><resourcetype><CR:addressbook /><collection /></resourcetype><displayname>Work &amp; Play</displayname><getetag>"abc"</getetag></prop><status>HTTP/1.1 200 OK</status></propstat><propstat><prop><CR:max-resource-size /></prop><status>HTTP/1.1 404 Not Found</status></propstat></response>
<response><href>/bob/work/missing.vcf</href><status>HTTP/1.1 404 Not Found</status></response>
<response><href>/bob/work/a.vcf</href><propstat><prop><getetag>"e1"</getetag><CR:address-data>BEGIN:VCARD
VERSION:3.0
FN:A &lt;b&gt;
END:VCARD
</CR:address-data></prop><status>HTTP/1.1 200 OK</status></propstat></response></multistatus>"#;
        let r = parse_multistatus(body).unwrap();
        assert_eq!(r.len(), 4);
        assert!(r[0].is_collection && !r[0].is_addressbook);
        assert_eq!(r[1].displayname.as_deref(), Some("Work & Play"));
        assert!(r[1].is_addressbook);
        assert_eq!(r[1].etag.as_deref(), Some("\"abc\""));
        assert_eq!(r[2].status, Some(404));
        assert!(r[3].address_data.as_deref().unwrap().contains("FN:A <b>"));
    }
}
