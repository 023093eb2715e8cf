//! The backend contract: what every provider must do for the engine, checked the same way on
//! each (the in-memory store, vdir, CardDAV on Radicale and Xandikos, Google on the fake). A new
//! provider is done when it passes it. Each step panics with what the provider got wrong.

use calcard::vcard::VCard;
use groupsync::backend::{
    Backend, BackendError, BackendExt, GroupRead, GroupRef, Read, User, Written,
};
use groupsync::card::{self, FieldSelection};

/// What the contract runs against.
pub struct Subject<'a> {
    /// A user with no group named `GROUP` yet.
    pub user: User,
    /// The name of the user's default collection, where moved contacts go.
    pub default_group: &'a str,
    /// A contact in the provider's own form, with a display name that depends on `i`.
    pub sample: &'a dyn Fn(usize) -> VCard,
}

const GROUP: &str = "Contract Group";
const TAG: &str = "gSync31337";

/// A tagged copy of sample `i`, from source `s<i>`, that came through job gSync7.
fn copy_of(s: &Subject<'_>, i: usize) -> VCard {
    let source = (s.sample)(i);
    let mut via = source.clone();
    via.entries.push(calcard::vcard::VCardEntry {
        group: None,
        name: calcard::vcard::VCardProperty::Other(card::TAG_PROPERTY.into()),
        params: vec![],
        values: vec![calcard::vcard::VCardValue::Text("gSync7".into())],
    });
    let uid = format!("{TAG}-contract-{i}");
    card::make_copy(&via, &FieldSelection::All, TAG, &format!("s{i}"), &uid)
}

/// Every contact of a group, read whole (id → card), and those handed as known.
async fn read_all<B: Backend>(
    b: &B,
    user: &User,
    g: &GroupRef,
    how: GroupRead<'_>,
) -> (Vec<(String, String, VCard)>, Vec<(String, String)>) {
    let (mut read, mut known) = (vec![], vec![]);
    b.read_group(user, Some(g), how, &mut |r| match r {
        Read::Contact(c) => read.push((c.id, c.etag, c.card.expect("a readable card"))),
        Read::Known { id, etag } => known.push((id, etag)),
    })
    .await
    .expect("read_group");
    read.sort_by(|a, b| a.0.cmp(&b.0));
    (read, known)
}

fn ok<T: std::fmt::Debug>(step: &str, r: Vec<Result<T, BackendError>>, n: usize) -> Vec<T> {
    assert_eq!(r.len(), n, "{step}: one result per item: {r:?}");
    r.into_iter()
        .map(|x| x.unwrap_or_else(|e| panic!("{step}: {e}")))
        .collect()
}

/// Runs the whole contract.
pub async fn check<B: Backend>(b: &B, s: &Subject<'_>) {
    let caps = b.capabilities();
    assert!(caps.batch_size >= 1 && caps.delete_batch_size >= 1 && caps.page_size >= 1);
    let user = &s.user;
    // Groups: missing, made, found, not made twice.
    assert!(
        b.find_group(user, GROUP, None).await.unwrap().is_none(),
        "no group yet"
    );
    assert!(
        b.check_group_name(GROUP).is_ok(),
        "a plain name is accepted"
    );
    let g = b.create_group(user, GROUP).await.expect("create_group");
    let found = b
        .find_group(user, GROUP, None)
        .await
        .unwrap()
        .expect("find_group finds it");
    assert_eq!(found.id, g.id, "find_group finds the group made");
    for known in [Some(g.id.as_str()), Some("no-such-group-id")] {
        let found = b.find_group(user, GROUP, known).await.unwrap();
        assert_eq!(
            found.map(|f| f.id),
            Some(g.id.clone()),
            "find_group with a remembered id {known:?} finds the group"
        );
    }
    match b.create_group(user, GROUP).await {
        Err(BackendError::AlreadyExists { .. }) => {}
        Ok(again) => assert_eq!(
            again.id, g.id,
            "a second create_group makes no second group"
        ),
        Err(e) => panic!("a second create_group of one name: {e}"),
    }
    // Creates: two tagged copies and one of the user's own.
    let (c0, c1, own) = (copy_of(s, 0), copy_of(s, 1), (s.sample)(2));
    let written: Vec<Written> = ok(
        "create_contacts",
        b.create_contacts(user, &g, &[&c0, &c1, &own]).await,
        3,
    );
    let ids: Vec<&str> = written.iter().map(|w| w.id.as_str()).collect();
    // Reads: whole, tags only, known copies by etag, by id.
    let (read, _) = read_all(b, user, &g, GroupRead::WHOLE).await;
    assert_eq!(read.len(), 3, "read_group hands every contact: {read:?}");
    for (w, sent) in written.iter().zip([&c0, &c1, &own]) {
        let (_, etag, c) = read
            .iter()
            .find(|(id, ..)| *id == w.id)
            .expect("read by its id");
        assert_eq!(
            *etag, w.etag,
            "the etag a create returns is the one a read gives"
        );
        assert_eq!(
            card::display_name(c),
            card::display_name(sent),
            "the name survives"
        );
        assert_eq!(card::tag_of(c), card::tag_of(sent), "the tag survives");
        assert_eq!(
            card::source_of(c),
            card::source_of(sent),
            "the source id survives"
        );
        assert_eq!(
            card::came_through(c),
            card::came_through(sent),
            "the jobs it came through survive"
        );
    }
    let (tags, _) = read_all(b, user, &g, GroupRead::TAGS).await;
    let tagged: Vec<_> = tags
        .iter()
        .filter_map(|(id, _, c)| card::tag_of(c).map(|t| (id, t)))
        .collect();
    assert_eq!(
        tagged.len(),
        2,
        "a tags-only read tells the copies: {tags:?}"
    );
    let first = (written[0].id.clone(), written[0].etag.clone());
    let knows = |id: &str, etag: &str| id == first.0 && etag == first.1;
    let how = GroupRead {
        known: Some(&knows),
        ..GroupRead::WHOLE
    };
    let (rest, known) = read_all(b, user, &g, how).await;
    assert_eq!(
        rest.len() + known.len(),
        3,
        "a known copy is handed once, either way"
    );
    assert!(
        known.iter().all(|k| *k == first),
        "only a known copy is handed as known"
    );
    let mut fetched = vec![];
    let wanted = [ids[1].to_string(), "no-such-contact".to_string()];
    b.fetch_contacts(user, &g, &wanted, &mut |c| fetched.push(c.id))
        .await
        .expect("fetch_contacts");
    assert_eq!(
        fetched,
        [ids[1]],
        "fetch_contacts hands the ids asked for, leaves out the missing"
    );
    // Updates: with the etag read, and with a stale one.
    let mut edited = copy_of(s, 5);
    edited
        .entries
        .retain(|e| !e.name.as_str().eq_ignore_ascii_case("UID"));
    let new_etag = ok(
        "update_contacts",
        b.update_contacts(
            user,
            &g,
            &[(ids[0], &written[0].etag, &edited)],
            &FieldSelection::All,
        )
        .await,
        1,
    )
    .remove(0);
    assert_ne!(new_etag, written[0].etag, "an update changes the etag");
    let stale = b
        .update_contact(
            user,
            &g,
            (ids[0], &written[0].etag),
            &c0,
            &FieldSelection::All,
        )
        .await;
    assert!(
        matches!(stale, Err(BackendError::Conflict { .. })),
        "a stale etag is a Conflict: {stale:?}"
    );
    let (after, _) = read_all(b, user, &g, GroupRead::WHOLE).await;
    let now = &after.iter().find(|(id, ..)| id == ids[0]).unwrap().2;
    assert_eq!(
        card::display_name(now),
        card::display_name(&edited),
        "the update was made, once"
    );
    // Deletes: a stale etag refused (where deletes are conditional), then made.
    if caps.conditional_deletes {
        let stale = b.delete_contact(user, &g, ids[1], "stale-etag").await;
        assert!(
            matches!(stale, Err(BackendError::Conflict { .. })),
            "a stale delete is a Conflict: {stale:?}"
        );
    }
    b.delete_contact(user, &g, ids[1], &written[1].etag)
        .await
        .expect("delete");
    // A move to the default collection, of the user's own contact.
    ok(
        "move_contacts_to_default",
        b.move_contacts_to_default(user, &g, &[(ids[2], &written[2].etag)])
            .await,
        1,
    );
    let (left, _) = read_all(b, user, &g, GroupRead::WHOLE).await;
    assert_eq!(left.len(), 1, "the moved contact left the group: {left:?}");
    if let Some(d) = b.find_group(user, s.default_group, None).await.unwrap() {
        let (mine, _) = read_all(b, user, &d, GroupRead::WHOLE).await;
        assert!(
            mine.iter()
                .any(|(_, _, c)| card::display_name(c) == card::display_name(&own)),
            "the moved contact is in the default collection"
        );
    }
    // The group: not deleted while it holds a contact, deleted once empty.
    assert!(
        matches!(
            b.delete_group(user, &g).await,
            Err(BackendError::NotEmpty { .. })
        ),
        "a group with a contact in it is NotEmpty"
    );
    let (id, etag, _) = &left[0];
    b.delete_contact(user, &g, id, etag).await.expect("delete");
    b.delete_group(user, &g).await.expect("delete_group");
    assert!(
        b.find_group(user, GROUP, None).await.unwrap().is_none(),
        "the group is gone"
    );
}
