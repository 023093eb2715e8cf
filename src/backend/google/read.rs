//! Reading a user's contacts: the connections listing (1,000 a page, filtered on group
//! membership), a group read whole or for its tags, a sync token's delta, and batch gets by id.
//! The next page or batch is asked for before the current one is read (`ask_ahead`).
//!
//! It must not write anything to Google; what it remembers is what a later write needs (a
//! copy's missing visible tag, the photo a copy has now).

use reqwest::Method;
use serde_json::Value;

use super::calls::{Ask, api};
use super::http::{self, ApiError};
use super::{CONTACT_SOURCES, GoogleBackend, Repair, person};
use crate::backend::{
    BackendError, Contact, Delta, Depth, GroupRead, GroupRef, Known, KnownAsWritten, KnownCopies,
    Read, Result, User,
};

/// A read asked for ahead: its request is sent, its answer is taken later (`answer`).
pub(super) type Ahead<F> = std::pin::Pin<Box<futures::future::MaybeDone<F>>>;

/// Starts `read` and lets the connection task send its request before the caller goes on. The
/// next page or batch of a read is asked for this way before the current one is read, so
/// reading it costs no time on the user's critical path.
pub(super) async fn ask_ahead<F: std::future::Future>(read: F) -> Ahead<F> {
    let mut asked = Box::pin(futures::future::maybe_done(read));
    let _ = futures::poll!(asked.as_mut());
    // Yielding once lets the connection task send the request.
    tokio::task::yield_now().await;
    asked
}

/// The answer of a read asked for ahead.
pub(super) async fn answer<F: std::future::Future>(asked: &mut Ahead<F>) -> F::Output {
    asked.as_mut().await;
    asked
        .as_mut()
        .take_output()
        .expect("an answer is taken once")
}

/// The `nextPageToken` of a listing's page, found in its last few KiB without parsing the
/// contacts before it: Google writes a response's fields in their declared order, the page token
/// after the contacts, followed only by counts and the sync token. `None` when it is not there
/// (the last page, or another layout). A guess the caller checks against the parsed page: a
/// contact's own text cannot hold this key, but a wrong guess would only cost a read.
pub(super) fn next_page_token_at_end(text: &str) -> Option<String> {
    let value = key_at_end(text, "nextPageToken")?;
    let mut de = serde_json::Deserializer::from_str(value);
    let token = <String as serde::Deserialize>::deserialize(&mut de).ok()?;
    (!token.is_empty()).then_some(token)
}

/// The text after `"key":` in the last 4 KiB of a listing's page, where Google writes the
/// fields that follow the contacts. Found only as a key: in a contact's string values, quotes are
/// escaped.
pub(super) fn key_at_end<'t>(text: &'t str, key: &str) -> Option<&'t str> {
    const TAIL: usize = 4096;
    let mut from = text.len().saturating_sub(TAIL);
    while !text.is_char_boundary(from) {
        from += 1;
    }
    let tail = &text[from..];
    let quoted = format!("\"{key}\"");
    let at = tail.rfind(&quoted)?;
    tail[at + quoted.len()..].trim_start().strip_prefix(':')
}

/// What a listing does after handing a contact over (see `list_connections_synced`).
pub(super) enum Then {
    Next,
    Stop,
    /// Yields to the runtime before the next contact, so that what the caller started on this
    /// one (a request) gets going.
    Yield,
}

/// The People fields read for every contact: the copied ones plus what tells copies apart.
pub(super) fn read_fields() -> String {
    let mut f: Vec<&str> = person::COPIED_FIELDS.to_vec();
    f.extend(["clientData", "memberships", "metadata", "photos"]);
    f.join(",")
}

/// Reads.
impl GoogleBackend {
    /// The two ways Google reads a group: its tags only (for a probe), or whole (with the known
    /// copies handed by id and etag, and a sync token when asked for).
    pub(super) async fn read_members(
        &self,
        user: &User,
        group: Option<&GroupRef>,
        how: GroupRead<'_>,
        sink: &mut (dyn FnMut(Read) + Send),
    ) -> Result<Option<String>> {
        match (how.depth, group) {
            (Depth::TagsOnly, Some(g)) => self.read_tags(user, g, sink).await.map(|_| None),
            _ => {
                let known = how.known.unwrap_or(&|_, _| false);
                let token = self.read_whole_group(user, group, known, sink).await?;
                Ok(token.filter(|_| how.token))
            }
        }
    }

    /// Every contact of a user (connections.list, 1,000 a page), handed to `each`.
    pub(super) async fn list_connections(
        &self,
        user: &User,
        fields: &str,
        each: &mut (dyn FnMut(Value) + Send),
    ) -> Result<()> {
        let mut bad = false;
        self.list_connections_synced(user, fields, None, false, None, &mut |_, whole| {
            match whole.raw().map(|raw| serde_json::from_str(raw.get())) {
                Some(Ok(p)) => each(p),
                _ => bad = true,
            }
            if bad { Then::Stop } else { Then::Next }
        })
        .await
        .map_err(|e| api(e, &format!("contacts of {}", user.name)))?;
        if bad {
            return Err(BackendError::Invalid(format!(
                "contacts of {}: the People API answered a contact that is not JSON",
                user.name
            )));
        }
        Ok(())
    }

    /// connections.list with sync tokens: `since` lists only what changed after that token,
    /// `request_token` asks for the next token (it comes with the last page). Each contact is
    /// handed to `each` as its head (name, etag, groups) and a way to its raw JSON, split out of
    /// the page only when a caller needs a contact whole (a page where every contact is known by
    /// its head is scanned once); `each` returns `Then::Stop` to stop reading early (no token is
    /// returned then). `last_call` is called once the last page's text is in, before it is
    /// parsed, when its end says it is the last (a sync token and no page token).
    pub(super) async fn list_connections_synced(
        &self,
        user: &User,
        fields: &str,
        since: Option<&str>,
        request_token: bool,
        last_call: Option<&(dyn Fn() + Sync)>,
        each: &mut (dyn FnMut(person::Head<'_>, person::Whole<'_, '_>) -> Then + Send),
    ) -> std::result::Result<Option<String>, ApiError> {
        let email = self.email(user);
        // Every parameter but the page and sync tokens must be the same on the call that took
        // the token and the calls that use it.
        let fetch = |page: Option<String>| {
            let q = connections_query(fields, since, request_token, page);
            let call = self.people_call(
                &email,
                Ask::new(
                    "people.connections.list",
                    Method::GET,
                    "people/me/connections",
                )
                .query(q),
            );
            async move { self.client.send_large(&call).await }
        };
        let mut next = ask_ahead(fetch(None)).await;
        loop {
            let text = answer(&mut next).await?;
            // The next page is asked for before this one is read: with the token found at the
            // page's end, before it is parsed; checked against the page once parsed.
            let guess = next_page_token_at_end(&text);
            if let Some(t) = &guess {
                next = ask_ahead(fetch(Some(t.clone()))).await;
            }
            // Only the last page holds a sync token (People v1): no call follows this one.
            let last =
                request_token && guess.is_none() && key_at_end(&text, "nextSyncToken").is_some();
            if last && let Some(told) = last_call {
                told();
                // What the caller let go (its place, to a destination waiting for it) gets
                // going before this page is parsed: woken from here, it would wait in this
                // worker's next-task slot until the page is done.
                tokio::task::yield_now().await;
            }
            let v: person::HeadsPage<'_> = serde_json::from_str(&text)
                .map_err(|_| http::bad_body("people.connections.list"))?;
            let more = v.next_page_token.clone().filter(|t| !t.is_empty());
            if more != guess
                && let Some(t) = &more
            {
                if last {
                    // A page token after all: not a page the API writes.
                    return Err(http::bad_body("people.connections.list"));
                }
                next = ask_ahead(fetch(Some(t.clone()))).await;
            }
            let mut raws = person::PageRaw::new(&text);
            let len = v.connections.len();
            for (i, head) in v.connections.into_iter().enumerate() {
                match each(head, person::Whole::new(&mut raws, i, len)) {
                    Then::Next => {}
                    Then::Stop => return Ok(None),
                    Then::Yield => tokio::task::yield_now().await,
                }
            }
            if more.is_none() {
                return Ok(v.next_sync_token);
            }
        }
    }

    /// Forgets the repairs noted at the user's last read: a new read notes them again.
    pub(super) fn forget_repairs(&self, user: &User) {
        crate::mutex::lock(&self.repairs).retain(|(u, _), _| u != &user.id);
    }

    /// Parses a contact listed by `list_connections_synced` whole and hands it to `sink`; the
    /// error names the contact.
    pub(super) fn read_whole(
        &self,
        user: &User,
        head: &person::Head<'_>,
        whole: person::Whole<'_, '_>,
        sink: &mut (dyn FnMut(Contact) + Send),
    ) -> std::result::Result<(), String> {
        let raw = whole
            .raw()
            .ok_or_else(|| format!("{}: the page is not a list of contacts", head.resource_name))?;
        let p =
            person::Doc::parse(raw.get()).map_err(|e| format!("{}: {e}", head.resource_name))?;
        sink(self.contact_of(user, &p));
        Ok(())
    }

    pub(super) fn contact_of(&self, user: &User, p: &person::Doc<'_>) -> Contact {
        let id = p.str("resourceName").into_owned();
        let etag = p.str("etag").into_owned();
        let info = p.tag_info();
        let repair = (self.cfg.visible_tag
            && info
                .machine
                .as_ref()
                .is_some_and(|(t, _)| info.visible.as_ref() != Some(t)))
        .then_some("visible-tag");
        if repair.is_some() {
            let user_defined = p.user_entries_but_tag();
            crate::mutex::lock(&self.repairs)
                .insert((user.id.clone(), id.clone()), Repair { user_defined });
        }
        let card = person::doc_to_card(p, &info, repair);
        if info.machine.is_some() {
            let mut now = crate::mutex::lock(&self.photo_now);
            match person::photo_of_card(&card) {
                Some(url) => now.insert((user.id.clone(), id.clone()), url),
                None => now.remove(&(user.id.clone(), id.clone())),
            };
        }
        Contact {
            card: Ok(card),
            id,
            etag,
        }
    }

    /// The group's contacts read whole, those `known` as written handed by id and etag, with a
    /// sync token valid from the read's start (a listing always asks for one).
    pub(super) async fn read_whole_group(
        &self,
        user: &User,
        group: Option<&GroupRef>,
        known: &KnownAsWritten<'_>,
        sink: &mut (dyn FnMut(Read) + Send),
    ) -> Result<Option<String>> {
        self.forget_repairs(user);
        let fields = read_fields();
        let mut bad = None;
        let token = self
            .list_connections_synced(user, &fields, None, true, None, &mut |head, whole| {
                if let Some(g) = group
                    && head.member_of(&g.id)
                {
                    // A copy as the engine wrote it: no need to read it whole.
                    if known(&head.resource_name, &head.etag) {
                        sink(Read::Known {
                            id: head.resource_name.into_owned(),
                            etag: head.etag.into_owned(),
                        });
                        return Then::Next;
                    }
                    if let Err(why) =
                        self.read_whole(user, &head, whole, &mut |c| sink(Read::Contact(c)))
                    {
                        bad = Some(why);
                        return Then::Stop;
                    }
                }
                Then::Next
            })
            .await
            .map_err(|e| api(e, &format!("contacts of {}", user.name)))?;
        if let Some(why) = bad {
            return Err(BackendError::Invalid(format!(
                "contacts of {}: unreadable contact {why}",
                user.name
            )));
        }
        Ok(token)
    }

    /// The group's contacts read for their tags only (clientData), a few dozen bytes each
    /// instead of the whole contact.
    pub(super) async fn read_tags(
        &self,
        user: &User,
        group: &GroupRef,
        sink: &mut (dyn FnMut(Read) + Send),
    ) -> Result<()> {
        let mut bad = None;
        self.list_connections_synced(
            user,
            "clientData,memberships,metadata",
            None,
            false,
            None,
            &mut |head, whole| {
                if !head.member_of(&group.id) {
                    return Then::Next;
                }
                let p = whole
                    .raw()
                    .and_then(|raw| person::Doc::parse(raw.get()).ok());
                match p {
                    Some(p) => {
                        sink(Read::Contact(Contact {
                            id: head.resource_name.into_owned(),
                            etag: head.etag.into_owned(),
                            card: Ok(person::doc_to_card(&p, &p.tag_info(), None)),
                        }));
                        Then::Next
                    }
                    None => {
                        bad = Some(head.resource_name.into_owned());
                        Then::Stop
                    }
                }
            },
        )
        .await
        .map_err(|e| api(e, &format!("contacts of {}", user.name)))?;
        match bad {
            Some(id) => Err(BackendError::Invalid(format!(
                "contacts of {}: unreadable contact {id}",
                user.name
            ))),
            None => Ok(()),
        }
    }

    pub(super) async fn read_delta(
        &self,
        user: &User,
        token: &str,
        group_id: &str,
        known: &dyn KnownCopies,
        sink: &mut (dyn FnMut(Contact) + Send),
        gone: &mut (dyn FnMut(String) + Send),
    ) -> Result<Delta> {
        self.forget_repairs(user);
        let fields = read_fields();
        let mut bad = None;
        // After the first change is handed over, the caller gets to act on it (it reads the
        // group alongside the rest): the listing yields once.
        let mut handed = false;
        let mut handed_over = move || {
            if std::mem::replace(&mut handed, true) {
                Then::Next
            } else {
                Then::Yield
            }
        };
        let r = self
            .list_connections_synced(
                user,
                &fields,
                Some(token),
                true,
                Some(&|| known.last_call()),
                &mut |head, whole| {
                    if whole.index() == 0 {
                        known.page(whole.page_len());
                    }
                    if head.deleted() {
                        if known.known(&head.resource_name, "") != Known::No {
                            gone(head.resource_name.into_owned());
                            return handed_over();
                        }
                        return Then::Next;
                    }
                    let k = known.known(&head.resource_name, &head.etag);
                    if !head.member_of(group_id) {
                        if k != Known::No {
                            gone(head.resource_name.into_owned());
                            return handed_over();
                        }
                        return Then::Next;
                    }
                    if k == Known::AsWritten {
                        return Then::Next;
                    }
                    match self.read_whole(user, &head, whole, sink) {
                        Ok(()) => handed_over(),
                        Err(why) => {
                            bad = Some(why);
                            Then::Stop
                        }
                    }
                },
            )
            .await;
        if let Some(why) = bad {
            return Err(BackendError::Invalid(format!(
                "changes in the contacts of {}: unreadable contact {why}",
                user.name
            )));
        }
        match r {
            Ok(Some(token)) => Ok(Delta::Read { token }),
            // The last page came without a token: read the group whole.
            Ok(None) => Ok(Delta::Expired),
            Err(e) if e.status == 410 || e.has_reason("EXPIRED_SYNC_TOKEN") => Ok(Delta::Expired),
            Err(e) => Err(api(e, &format!("changes in the contacts of {}", user.name))),
        }
    }

    pub(super) async fn fetch_by_ids(
        &self,
        user: &User,
        _group: &GroupRef,
        ids: &[String],
        sink: &mut (dyn FnMut(Contact) + Send),
    ) -> Result<()> {
        let email = self.email(user);
        let call_for = |chunk: &[String]| {
            let mut q: Vec<(&str, String)> = chunk
                .iter()
                .map(|id| ("resourceNames", id.clone()))
                .collect();
            q.push(("personFields", read_fields()));
            q.push(("sources", CONTACT_SOURCES.into()));
            self.people_call(
                &email,
                Ask::new("people.getBatchGet", Method::GET, "people:batchGet").query(q),
            )
        };
        let fail = |e| api(e, &format!("contacts of {}", user.name));
        let fetch = |chunk: &[String]| {
            let call = call_for(chunk);
            async move { self.client.send_text(&call).await }
        };
        let mut chunks = ids.chunks(200);
        let Some(first) = chunks.next() else {
            return Ok(());
        };
        let mut next = ask_ahead(fetch(first)).await;
        loop {
            let text = answer(&mut next).await.map_err(fail)?;
            // The next batch is asked for before this one is read, as the pages of a listing
            // are. Reads only: no two mutations for one user are ever in flight.
            let more = chunks.next();
            if let Some(c) = more {
                next = ask_ahead(fetch(c)).await;
            }
            // Parsed one person at a time: a tree of the whole answer (200 persons) would be
            // held at every destination being removed at once.
            let answer: person::BatchGetAnswer<'_> = serde_json::from_str(&text)
                .map_err(|_| fail(http::bad_body("people.getBatchGet")))?;
            for raw in answer.responses.into_iter().filter_map(|r| r.person) {
                let p = person::Doc::parse(raw.get())
                    .map_err(|_| fail(http::bad_body("people.getBatchGet")))?;
                if p.has("resourceName") {
                    sink(self.contact_of(user, &p));
                }
            }
            if more.is_none() {
                break;
            }
        }
        Ok(())
    }
}

/// A connections.list query: 1,000 a page, the fields asked for, the sync token to list from
/// and whether to ask for the next one, and the page.
fn connections_query(
    fields: &str,
    since: Option<&str>,
    request_token: bool,
    page: Option<String>,
) -> Vec<(&'static str, String)> {
    let mut q = vec![
        ("pageSize", "1000".to_string()),
        ("personFields", fields.to_string()),
        ("sources", CONTACT_SOURCES.to_string()),
    ];
    if request_token {
        q.push(("requestSyncToken", "true".to_string()));
    }
    if let Some(t) = since {
        q.push(("syncToken", t.to_string()));
    }
    if let Some(p) = page {
        q.push(("pageToken", p));
    }
    q
}

#[cfg(test)]
mod tests {
    use super::{key_at_end, next_page_token_at_end};
    use serde_json::json;

    /// A page as Google writes it: the contacts, then the page token, the counts and the sync
    /// token.
    fn page(values: &[String], page_token: Option<&str>, sync_token: Option<&str>) -> String {
        let people: Vec<serde_json::Value> = values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                json!({"resourceName": format!("people/c{i}"), "etag": "e",
                    "userDefined": [{"key": v, "value": v}], "biographies": [{"value": v}]})
            })
            .collect();
        let mut text = format!(
            "{{\"connections\":{}",
            serde_json::to_string(&people).unwrap()
        );
        if let Some(t) = page_token {
            text.push_str(&format!(",\"nextPageToken\": {}", json!(t)));
        }
        text.push_str(",\"totalPeople\":7,\"totalItems\":7");
        if let Some(t) = sync_token {
            text.push_str(&format!(",\"nextSyncToken\":{}", json!(t)));
        }
        text.push('}');
        text
    }

    proptest::proptest! {
        /// The token found at a page's end is the page's own, whatever its contacts hold (the
        /// keys' own names, quotes, a colon), and found whenever Google's layout puts it there;
        /// so is the sync token.
        #[test]
        fn the_page_token_found_at_the_end_is_the_pages(
            values in proptest::collection::vec(
                "nextPageToken|\"nextPageToken\": \"x\"|\"nextSyncToken\":\"y\"|\\PC{0,12}", 0..40),
            page_token in proptest::option::of("[a-zA-Z0-9:_\"\\\\-]{1,40}"),
            sync_token in proptest::option::of("[a-zA-Z0-9]{1,200}"),
        ) {
            let text = page(&values, page_token.as_deref(), sync_token.as_deref());
            let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
            proptest::prop_assert_eq!(parsed["nextPageToken"].as_str(), page_token.as_deref());
            proptest::prop_assert_eq!(next_page_token_at_end(&text), page_token);
            // The last page of a sync listing is known by its sync token, before it is parsed.
            proptest::prop_assert_eq!(
                key_at_end(&text, "nextSyncToken").is_some(),
                parsed["nextSyncToken"].is_string()
            );
        }
    }

    /// A page whose token is not near its end (another layout) gives no guess: the page is
    /// parsed first.
    #[test]
    fn a_page_token_before_the_contacts_is_not_guessed() {
        let filler = "x".repeat(5000);
        let text = format!(
            "{{\"nextPageToken\":\"p2\",\"connections\":[{{\"resourceName\":\"people/c1\",\"biographies\":[{{\"value\":\"{filler}\"}}]}}]}}"
        );
        assert_eq!(next_page_token_at_end(&text), None);
    }
}
