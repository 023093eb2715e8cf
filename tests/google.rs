//! The Google backend end to end: the `groupsync` binary against the fake People/Directory/token
//! server (`fake-google`), which checks every request against Google's discovery documents and
//! the People API's rules. Every test ends by asserting the fake saw no violation.

mod common;

use fake_google::{FakeGoogle, Fault, FaultKind, Options};
use serde_json::{Value, json};
use std::fs;
use std::path::Path;

const TAG: &str = "gSync424242";

struct Rig {
    fake: FakeGoogle,
    dir: tempfile::TempDir,
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn person(i: usize) -> Value {
    json!({
        "names": [{"givenName": format!("Given{i}"), "familyName": format!("Family{i}")}],
        "emailAddresses": [{"value": format!("p{i}@partner.example"), "type": "work"}],
        "phoneNumbers": [{"value": format!("+1 555 01{i:02}"), "type": "mobile"}],
        "organizations": [{"name": "Partner Inc", "title": "Buyer", "current": true}],
        "addresses": [{"streetAddress": format!("{i} Main St"), "city": "Springfield", "type": "work"}],
        "birthdays": [{"date": {"year": 1980, "month": 1 + (i % 12) as i64, "day": 1 + (i % 28) as i64}}],
        "urls": [{"value": "https://partner.example", "type": "work"}],
        "biographies": [{"value": format!("Note {i}, with a comma; and a semicolon\nand a line"), "contentType": "TEXT_PLAIN"}],
        "events": [{"date": {"month": 6, "day": 1}, "type": "anniversary"}],
        "relations": [{"person": "Someone", "type": "spouse"}],
        "nicknames": [{"value": format!("n{i}")}],
        "userDefined": [{"key": "desk", "value": format!("{i}F")}],
        "clientData": [{"key": "CtsContactHash", "value": "abc"}],
    })
}

impl Rig {
    /// alice (source, group "Sales" with `n` contacts), bob, carol, dave; a job to bob and carol.
    fn new(n: usize) -> Rig {
        let fake = FakeGoogle::start(Options::default());
        for u in ["alice", "bob", "carol", "dave"] {
            fake.add_user(&format!("{u}@example.com"), false);
        }
        fake.with_book("alice@example.com", |b| {
            let g = b.add_group("Sales");
            for i in 0..n {
                let mut p = person(i);
                p["memberships"] = json!([
                    {"contactGroupMembership": {"contactGroupResourceName": g}},
                    {"contactGroupMembership": {"contactGroupResourceName": "contactGroups/myContacts"}}
                ]);
                b.add_contact(p);
            }
            // Not in the group: never copied.
            b.add_contact(person(999));
        });
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.json");
        fs::write(&key, fake.key_json()).unwrap();
        set_mode(&key, 0o600);
        let rig = Rig { fake, dir };
        rig.write_config("");
        fs::create_dir_all(rig.path().join("jobs")).unwrap();
        rig.write_job(&["bob@example.com", "carol@example.com"]);
        rig
    }

    /// Every call of the fake takes `ms` milliseconds (its other options at their defaults).
    fn set_latency(&self, ms: u64) {
        self.fake.set_options(Options {
            latency: std::time::Duration::from_millis(ms),
            ..Options::default()
        });
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write_config(&self, extra: &str) {
        fs::write(
            self.path().join("groupsync.toml"),
            format!(
                "state = \"state.db\"\njobs_dir = \"jobs\"\n\n[backend]\nkind = \"google\"\nkey_file = \"key.json\"\nadmin = \"admin@example.com\"\npeople_url = \"{u}\"\ndirectory_url = \"{u}\"\nconcurrency = 4\n{extra}",
                u = self.fake.url
            ),
        )
        .unwrap();
    }

    fn write_job(&self, dests: &[&str]) {
        common::write_job_file(
            self.path(),
            "sales",
            (TAG, "alice@example.com", "Sales"),
            dests,
        );
    }

    fn cmd(&self) -> assert_cmd::Command {
        common::groupsync_in(self.path())
    }

    fn run(&self) -> (i32, String, String) {
        common::run_job(self.path(), "sales")
    }

    fn run_ok(&self) -> String {
        let (code, out, err) = self.run();
        assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
        self.assert_no_violations();
        out
    }

    fn assert_no_violations(&self) {
        let v = self.fake.violations();
        assert!(
            v.is_empty(),
            "the fake saw requests Google would refuse: {v:#?}"
        );
    }

    /// The contacts in a user's group.
    fn group(&self, user: &str, name: &str) -> Vec<Value> {
        self.fake.with_book(user, |b| match b.group_by_name(name) {
            Some(g) => b.members(&g),
            None => vec![],
        })
    }

    fn has_group(&self, user: &str, name: &str) -> bool {
        self.fake
            .with_book(user, |b| b.group_by_name(name).is_some())
    }

    /// (source resourceName) of the tagged copies in a user's group, sorted.
    fn copies(&self, user: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .group(user, "Sales")
            .iter()
            .filter_map(machine_tag)
            .map(|(t, s)| {
                assert_eq!(t, TAG);
                s
            })
            .collect();
        v.sort();
        v
    }

    /// The job's change log, its last `n` lines (after the header).
    fn last_changes(&self, n: usize) -> String {
        let out = self
            .cmd()
            .args(["log", "sales", "--limit", &n.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    fn source_ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .group("alice@example.com", "Sales")
            .iter()
            .map(|p| p["resourceName"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    }
}

fn machine_tag(p: &Value) -> Option<(String, String)> {
    p["clientData"]
        .as_array()?
        .iter()
        .find(|c| c["key"] == "gSync")
        .and_then(|c| c["value"].as_str())
        .and_then(|v| v.split_once(':'))
        .map(|(t, s)| (t.to_string(), s.to_string()))
}

fn writable(p: &Value) -> Value {
    // The fields a copy must carry exactly as the source has them (output-only parts removed).
    let mut out = serde_json::Map::new();
    for f in [
        "names",
        "emailAddresses",
        "phoneNumbers",
        "organizations",
        "addresses",
        "birthdays",
        "urls",
        "biographies",
        "events",
        "relations",
        "nicknames",
    ] {
        let items: Vec<Value> = p[f]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|mut e| {
                let o = e.as_object_mut().unwrap();
                for k in [
                    "metadata",
                    "formattedType",
                    "displayName",
                    "displayNameLastFirst",
                    "canonicalForm",
                ] {
                    o.remove(k);
                }
                e
            })
            .collect();
        out.insert(f.into(), Value::Array(items));
    }
    Value::Object(out)
}

fn by_source(r: &Rig, user: &str) -> std::collections::BTreeMap<String, Value> {
    r.group(user, "Sales")
        .into_iter()
        .filter_map(|p| machine_tag(&p).map(|(_, s)| (s, p)))
        .collect()
}

#[test]
fn every_semantic_on_the_fake() {
    let r = Rig::new(12);
    let src = r.source_ids();
    // 1-2: the first run creates the group and a copy of each source contact, with the tag.
    r.run_ok();
    for u in ["bob@example.com", "carol@example.com"] {
        assert!(r.has_group(u, "Sales"));
        assert_eq!(r.copies(u), src, "{u}");
    }
    // Faithful: every writable field equals the source's; visible tag; own clientData not copied.
    let source: std::collections::BTreeMap<String, Value> = r
        .group("alice@example.com", "Sales")
        .into_iter()
        .map(|p| (p["resourceName"].as_str().unwrap().to_string(), p))
        .collect();
    for (sid, copy) in by_source(&r, "bob@example.com") {
        assert_eq!(writable(&copy), writable(&source[&sid]), "copy of {sid}");
        let ud = copy["userDefined"].as_array().unwrap();
        assert!(
            ud.iter().any(|e| e["key"] == "gSync" && e["value"] == TAG),
            "{copy}"
        );
        assert!(ud.iter().any(|e| e["key"] == "desk"), "{copy}");
        assert!(
            !copy["clientData"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["key"] == "CtsContactHash")
        );
    }
    // A rerun changes nothing and writes nothing.
    r.fake.reset_counts();
    r.run_ok();
    let c = r.fake.counts();
    for w in [
        "batchCreateContacts",
        "batchUpdateContacts",
        "batchDeleteContacts",
        "contactGroups.create",
    ] {
        assert!(
            !c.keys().any(|k| k.ends_with(w)),
            "a no-change rerun called {w}: {c:?}"
        );
    }

    let bob = "bob@example.com";
    let copies = by_source(&r, bob);
    let (s0, s1, s2) = (&src[0], &src[1], &src[2]);
    let group_rn = r.fake.with_book(bob, |b| b.group_by_name("Sales").unwrap());
    // 4: a user's edit to a copy is overwritten; 7: a deleted copy comes back; the visible tag a
    // user removed is put back; 5: a user's own contact in the group is kept untouched.
    let own = r.fake.with_book(bob, |b| {
        let c0 = copies[s0]["resourceName"].as_str().unwrap().to_string();
        b.edit(&c0, |p| {
            p["phoneNumbers"] = json!([{"value": "+1 999", "type": "home"}])
        });
        let c1 = copies[s1]["resourceName"].as_str().unwrap().to_string();
        b.delete(&c1);
        let c2 = copies[s2]["resourceName"].as_str().unwrap().to_string();
        b.edit(&c2, |p| {
            p["userDefined"] = json!([{"key": "desk", "value": "2F"}])
        });
        b.add_contact(json!({
            "names": [{"givenName": "Own"}],
            "memberships": [{"contactGroupMembership": {"contactGroupResourceName": group_rn}}]
        }))
    });
    let own_before = r
        .fake
        .with_book(bob, |b| b.contact(&own).expect("own contact"));
    r.run_ok();
    let after = by_source(&r, bob);
    assert_eq!(r.copies(bob), src);
    assert_eq!(writable(&after[s0]), writable(&source[s0]));
    assert!(
        after[s2]["userDefined"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["key"] == "gSync")
    );
    assert_eq!(
        r.fake
            .with_book(bob, |b| b.contact(&own).expect("own contact")),
        own_before
    );

    // 6: source changes propagate (add, edit, remove).
    let sales = r
        .fake
        .with_book("alice@example.com", |b| b.group_by_name("Sales").unwrap());
    r.fake.with_book("alice@example.com", |b| {
        b.edit(s0, |p| {
            p["names"] = json!([{"givenName": "Renamed", "familyName": "Person"}])
        });
        b.delete(s1);
        let mut p = person(50);
        p["memberships"] = json!([{"contactGroupMembership": {"contactGroupResourceName": sales}}]);
        b.add_contact(p);
    });
    r.run_ok();
    let src2 = r.source_ids();
    assert_eq!(r.copies(bob), src2);
    assert_eq!(r.copies("carol@example.com"), src2);
    assert_eq!(
        by_source(&r, bob)[s0]["names"][0]["givenName"],
        json!("Renamed")
    );

    // 8: removing bob deletes the group and the copies; bob's own contact stays, in My Contacts.
    r.write_job(&["carol@example.com"]);
    r.run_ok();
    assert!(!r.has_group(bob, "Sales"));
    r.fake.with_book(bob, |b| {
        assert!(
            !b.all_contacts().any(|p| machine_tag(&p).is_some()),
            "copies left"
        );
        let p = &b.contact(&own).expect("own contact");
        assert!(
            p["memberships"]
                .to_string()
                .contains("contactGroups/myContacts"),
            "{p}"
        );
    });
    assert_eq!(r.copies("carol@example.com"), src2);
    // The removal read bob's contacts for their tags only (Google's deletes take no etag: each
    // copy is read whole just before its delete, for the trash); what it deleted is in the
    // trash, named, one entry per copy.
    let out = r
        .cmd()
        .args(["restore", "--json", "--dest", bob])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let trash: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = trash
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == "destination-removed")
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), src2.len(), "{trash}");
    assert!(names.iter().all(|n| !n.is_empty()), "{trash}");
    assert!(names.iter().any(|n| n.contains("Renamed")), "{trash}");
    // 9: adding a destination syncs it.
    r.write_job(&["carol@example.com", "dave@example.com"]);
    r.run_ok();
    assert_eq!(r.copies("dave@example.com"), src2);
    r.assert_no_violations();
}

#[test]
fn first_sync_uses_batches_and_a_few_calls_per_destination() {
    let r = Rig::new(450);
    r.fake.reset_counts();
    r.run_ok();
    let c = r.fake.counts();
    let get = |k: &str| c.get(k).copied().unwrap_or(0);
    // 450 contacts to 2 destinations: 3 batch creates each (200 + 200 + 50).
    assert_eq!(get("people.people.batchCreateContacts"), 6, "{c:?}");
    assert_eq!(get("people.contactGroups.create"), 2, "{c:?}");
    // One page of connections for the source, and one per destination for its sync token
    // (the group is new: nothing in it to read).
    assert_eq!(get("people.people.connections.list"), 3, "{c:?}");
    // Per destination: users.get, contactGroups.list, contactGroups.create, 3 batch creates.
    assert_eq!(get("people.contactGroups.list"), 3, "{c:?}");
    assert_eq!(get("directory.users.get"), 3, "{c:?}");
    assert_eq!(r.copies("bob@example.com").len(), 450);
}

/// On an edit day the group is the one the sync token was taken for, unless the delta names a
/// copy leaving it: a group the user renamed keeps its copies (as on a no-change day) and gets
/// the edit, and no second group is made; a group deleted is found out by its copies leaving it,
/// and made again.
#[test]
fn the_delta_vouches_for_the_group_unless_a_copy_left_it() {
    let r = Rig::new(4);
    r.run_ok();
    r.run_ok();
    let src = r.source_ids();
    let bob = "bob@example.com";
    let g = r.fake.with_book(bob, |b| b.group_by_name("Sales").unwrap());
    r.fake.with_book(bob, |b| {
        b.groups.get_mut(&g).unwrap().name = "Suppliers".into()
    });
    r.fake.with_book("alice@example.com", |b| {
        b.edit(&src[0], |p| {
            p["nicknames"] = json!([{"value": "renamed day"}])
        })
    });
    r.fake.reset_counts();
    r.run_ok();
    let c = r.fake.counts();
    let get = |k: &str| c.get(k).copied().unwrap_or(0);
    assert_eq!(
        get("people.contactGroups.list"),
        1,
        "the source only: {c:?}"
    );
    assert_eq!(get("people.contactGroups.create"), 0, "{c:?}");
    assert_eq!(get("people.people.batchUpdateContacts"), 2, "{c:?}");
    let renamed = r.group(bob, "Suppliers");
    assert_eq!(renamed.iter().filter_map(machine_tag).count(), src.len());
    assert!(
        renamed
            .iter()
            .any(|p| p["nicknames"].to_string().contains("renamed day"))
    );
    assert!(!r.has_group(bob, "Sales"));
    assert!(r.fake.violations().is_empty(), "{:?}", r.fake.violations());
    // The group deleted: every copy leaves it, the delta says so, and the group is made again.
    r.fake.with_book(bob, |b| b.delete_group(&g, false));
    r.fake.with_book("alice@example.com", |b| {
        b.edit(&src[1], |p| {
            p["nicknames"] = json!([{"value": "deleted day"}])
        })
    });
    r.run_ok();
    assert_eq!(r.copies(bob), src);
    assert!(r.has_group(bob, "Sales"));
    assert!(r.fake.violations().is_empty(), "{:?}", r.fake.violations());
}

/// Reruns cost one sync-token read per destination unless something in its group changed; a
/// change in the group, to a copy, or an expired token brings the full read back.
#[test]
fn reruns_read_only_what_changed() {
    let r = Rig::new(5);
    r.run_ok();
    let src = r.source_ids();
    let bob = "bob@example.com";
    let carol = "carol@example.com";
    let counts = |r: &Rig| {
        let c = r.fake.counts();
        move |k: &str| c.get(k).copied().unwrap_or(0)
    };
    // No change: per destination one connections.list with its sync token, nothing else.
    r.fake.reset_counts();
    r.run_ok();
    let get = counts(&r);
    assert_eq!(get("people.people.connections.list"), 1 + 2);
    assert_eq!(
        get("people.contactGroups.list"),
        1,
        "only the source's groups"
    );
    assert_eq!(get("people.people.batchUpdateContacts"), 0);
    assert_eq!(get("people.people.batchCreateContacts"), 0);

    // bob edits a contact of his own outside the group, carol adds one to My Contacts:
    // nothing that concerns the job, still one read each.
    let own = r.fake.with_book(bob, |b| {
        b.add_contact(json!({"names": [{"givenName": "Own"}]}))
    });
    r.fake.with_book(bob, |b| {
        b.edit(&own, |p| p["nicknames"] = json!([{"value": "x"}]))
    });
    r.fake.with_book(carol, |b| {
        b.add_contact(json!({"names": [{"givenName": "Carol's"}]}))
    });
    r.fake.reset_counts();
    r.run_ok();
    let get = counts(&r);
    assert_eq!(get("people.contactGroups.list"), 1);
    assert_eq!(get("people.people.connections.list"), 3);

    // bob edits a copy and deletes another: his group is read again and repaired; carol's is not.
    let copies = r.group(bob, "Sales");
    let (edited, deleted) = (
        copies[0]["resourceName"].as_str().unwrap().to_string(),
        copies[1]["resourceName"].as_str().unwrap().to_string(),
    );
    r.fake.with_book(bob, |b| {
        b.edit(&edited, |p| p["nicknames"] = json!([{"value": "mine now"}]));
        b.delete(&deleted);
    });
    r.fake.reset_counts();
    r.run_ok();
    let get = counts(&r);
    assert_eq!(get("people.contactGroups.list"), 2, "the source and bob");
    // bob's sync-token read carried the edited copy and the deleted one's marker: his group
    // is not read whole.
    assert_eq!(get("people.people.connections.list"), 1 + 2);
    assert_eq!(get("people.people.getBatchGet"), 0);
    assert_eq!(get("people.people.batchUpdateContacts"), 1);
    assert_eq!(get("people.people.batchCreateContacts"), 1);
    assert_eq!(r.copies(bob), src);
    assert!(
        !r.group(bob, "Sales")
            .iter()
            .any(|p| p["nicknames"].to_string().contains("mine now"))
    );
    // The run's own writes do not count as changes next time.
    r.fake.reset_counts();
    r.run_ok();
    assert_eq!(counts(&r)("people.contactGroups.list"), 1);

    // bob adds a contact of his own to the group: read again (it is kept, not touched).
    let g = r.fake.with_book(bob, |b| b.group_by_name("Sales").unwrap());
    r.fake.with_book(bob, |b| {
        b.add_contact(json!({"names": [{"givenName": "Mine"}], "memberships": [{"contactGroupMembership": {"contactGroupResourceName": g}}]}))
    });
    r.fake.reset_counts();
    r.run_ok();
    let get = counts(&r);
    // No copy left the group, so the delta vouches for it: bob's group is not looked up.
    assert_eq!(get("people.contactGroups.list"), 1, "the source only");
    assert_eq!(r.group(bob, "Sales").len(), src.len() + 1);

    // carol's sync token expires (Google: 7 days after the full sync): one refused read, then
    // the full read, and nothing to write.
    r.fake.with_book(carol, |b| b.expire_sync_tokens());
    r.fake.reset_counts();
    r.run_ok();
    let get = counts(&r);
    assert_eq!(get("people.contactGroups.list"), 2, "the source and carol");
    assert_eq!(get("people.people.connections.list"), 1 + 2 + 1);
    assert_eq!(
        get("people.people.batchUpdateContacts") + get("people.people.batchCreateContacts"),
        0
    );
    r.fake.reset_counts();
    r.run_ok();
    assert_eq!(counts(&r)("people.contactGroups.list"), 1);

    // bob deletes the whole group: his copies lose it, so the group is made again.
    r.fake.with_book(bob, |b| b.delete_group(&g, false));
    r.run_ok();
    assert_eq!(r.copies(bob), src);
    assert_eq!(r.copies(carol), src);

    r.run_ok();

    // A source edit reaches everyone, without reading their groups whole: per destination the
    // sync-token read and one batch update. The copies are known from the ledger, what the last
    // run read of the source tells which fields the update changes, and the group is the one the
    // token was taken for (the delta named no copy leaving it).
    r.fake.with_book("alice@example.com", |b| {
        b.edit(&src[0], |p| p["nicknames"] = json!([{"value": "new"}]))
    });
    r.fake.reset_counts();
    r.run_ok();
    let get = counts(&r);
    assert_eq!(get("people.people.connections.list"), 1 + 2);
    assert_eq!(get("people.contactGroups.list"), 1, "the source only");
    assert_eq!(get("people.people.getBatchGet"), 0);
    assert_eq!(get("people.people.batchUpdateContacts"), 2);
    assert_eq!(
        get("people.people.batchCreateContacts") + get("people.people.batchDeleteContacts"),
        0
    );
    for u in [bob, carol] {
        let copies = by_source(&r, u);
        let p = &copies[&src[0]];
        assert_eq!(p["nicknames"][0]["value"], json!("new"), "{u}");
    }
    let log = r.last_changes(2);
    assert_eq!(
        log.lines().filter(|l| l.contains("\tupdate\t")).count(),
        2,
        "{log}"
    );
    assert!(
        log.lines()
            .skip(1)
            .all(|l| l.contains("\tX-GOOGLE-NICKNAMES\t")),
        "the update names the field that changed: {log}"
    );

    // bob misses a run in which the source changes, and it changes again: his copy was
    // written from a source the last run did not see, so it is read by id (one batch get)
    // before it is updated; carol's is not.
    r.fake.set_suspended(bob, true);
    r.fake.with_book("alice@example.com", |b| {
        b.edit(&src[0], |p| p["nicknames"] = json!([{"value": "newer"}]))
    });
    r.run_ok();
    r.fake.set_suspended(bob, false);
    r.fake.with_book("alice@example.com", |b| {
        b.edit(&src[0], |p| p["occupations"] = json!([{"value": "Buyer"}]))
    });
    r.fake.reset_counts();
    r.run_ok();
    let get = counts(&r);
    assert_eq!(get("people.people.connections.list"), 1 + 2);
    assert_eq!(get("people.people.getBatchGet"), 1);
    assert_eq!(get("people.people.batchUpdateContacts"), 2);
    for u in [bob, carol] {
        let copies = by_source(&r, u);
        let p = &copies[&src[0]];
        assert_eq!(p["nicknames"][0]["value"], json!("newer"), "{u}");
        assert_eq!(p["occupations"][0]["value"], json!("Buyer"), "{u}");
    }
    let log = r.last_changes(2);
    assert!(
        log.lines()
            .any(|l| l.contains("\tbob@example.com\tupdate\t")
                && l.contains("X-GOOGLE-NICKNAMES,X-GOOGLE-OCCUPATIONS")),
        "{log}"
    );
    r.assert_no_violations();
}

/// Destinations from the Directory: a Google group (nested groups included), an org unit, a
/// domain; exclusions apply to them; many users are read with users.list, not one call each; a
/// set that shrinks past the deletion limit stops the job (exit 3) unless --force.
#[test]
fn dynamic_destinations_and_the_shrink_stop() {
    let r = Rig::new(2);
    let users: Vec<String> = (0..14).map(|i| format!("u{i:02}@example.com")).collect();
    for u in &users {
        r.fake.add_user(u, false);
    }
    r.fake
        .set_group("team@example.com", &["u00@example.com", "sub@example.com"]);
    r.fake
        .set_group("sub@example.com", &["u01@example.com", "u02@example.com"]);
    for u in &users[3..14] {
        r.fake.set_org_unit(u, "/Sales/East");
    }
    r.fake.set_suspended("u13@example.com", true);
    fs::write(
        r.path().join("jobs/sales.toml"),
        "tag = \"gSync424242\"\nsource = \"alice@example.com\"\ngroup = \"Sales\"\ndestinations = [\"group:team@example.com\", \"ou:/Sales\"]\nexclude = [\"u12@example.com\"]\n",
    )
    .unwrap();
    r.fake.reset_counts();
    let out = r.run_ok();
    let c = r.fake.counts();
    // u00-u11 synced (u12 excluded, u13 suspended and skipped with a note).
    for u in &users[..12] {
        assert_eq!(r.copies(u).len(), 2, "{u}: {out}");
    }
    assert!(r.copies("u12@example.com").is_empty());
    assert!(r.copies("u13@example.com").is_empty());
    assert!(out.contains("suspended"), "{out}");
    // The group's members come from one members.list, the org unit's 11 users from one
    // users.list (not read again one by one); only the group's 3 users and the source are
    // looked up with users.get.
    assert_eq!(c["directory.members.list"], 1, "{c:?}");
    assert_eq!(c["directory.users.list"], 1, "{c:?}");
    assert_eq!(
        c.get("directory.users.get").copied().unwrap_or(0),
        4,
        "{c:?}"
    );

    // The org unit empties (a Directory mistake): 10 of 12 destinations would go, over the
    // job's limit (max_delete = 5).
    let job = fs::read_to_string(r.path().join("jobs/sales.toml")).unwrap();
    fs::write(
        r.path().join("jobs/sales.toml"),
        format!("{job}[limits]\nmax_delete = 5\n"),
    )
    .unwrap();
    for u in &users[2..14] {
        r.fake.set_org_unit(u, "/Elsewhere");
    }
    r.fake.set_group("sub@example.com", &["u01@example.com"]);
    let (code, out, err) = r.run();
    assert_eq!(code, 3, "{out}{err}");
    assert!(format!("{out}{err}").contains("shrank"), "{out}{err}");
    assert_eq!(r.copies("u05@example.com").len(), 2, "nothing removed");
    // --force removes them: their copies and groups go.
    let out = r.cmd().args(["run", "sales", "--force"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(r.copies("u05@example.com").is_empty());
    assert!(!r.has_group("u05@example.com", "Sales"));
    assert_eq!(r.copies("u00@example.com").len(), 2);
    assert_eq!(r.copies("u01@example.com").len(), 2);

    // A group that does not exist is an error naming it, never an empty set.
    fs::write(
        r.path().join("jobs/sales.toml"),
        "tag = \"gSync424242\"\nsource = \"alice@example.com\"\ngroup = \"Sales\"\ndestinations = [\"group:nosuch@example.com\"]\n",
    )
    .unwrap();
    let (code, out, err) = r.run();
    assert_ne!(code, 0);
    assert!(
        format!("{out}{err}").contains("group:nosuch@example.com"),
        "{out}{err}"
    );
    assert_eq!(r.copies("u00@example.com").len(), 2, "nothing removed");
    r.assert_no_violations();
}

#[test]
fn unknown_suspended_and_renamed_users() {
    let r = Rig::new(3);
    r.write_job(&["bob@example.com", "nobody@example.com", "carol@example.com"]);
    // A user the job file names who is not in the directory: the job is refused before it
    // writes anything (exit 2).
    let (code, out, err) = r.run();
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        format!("{out}{err}").contains("nobody@example.com (no such user)"),
        "{out}{err}"
    );
    assert!(r.copies("bob@example.com").is_empty());
    r.write_job(&["bob@example.com", "carol@example.com"]);
    r.run_ok();
    assert_eq!(r.copies("bob@example.com").len(), 3);
    // A suspended user is skipped with a note, not failed, and keeps their copies.
    r.write_job(&["bob@example.com", "carol@example.com"]);
    r.fake.set_suspended("carol@example.com", true);
    let (code, out, err) = r.run();
    assert_eq!(code, 0, "{out}{err}");
    assert!(format!("{out}{err}").contains("suspended"), "{out}{err}");
    r.fake.set_suspended("carol@example.com", false);
    // An email rename: the job still names the old address (now an alias); the same user, the
    // same copies, nothing recreated.
    r.fake.rename_user("bob@example.com", "robert@example.com");
    r.fake.reset_counts();
    r.run_ok();
    let c = r.fake.counts();
    assert!(
        !c.contains_key("people.people.batchCreateContacts"),
        "{c:?}"
    );
    assert_eq!(r.copies("robert@example.com").len(), 3);
    r.assert_no_violations();
}

#[test]
fn secondary_domains_are_allowed_and_others_refused() {
    let r = Rig::new(2);
    r.fake.add_domain("example.org", true);
    r.fake.add_user("erin@example.org", false);
    r.fake.add_domain("unverified.net", false);
    r.fake.add_user("frank@unverified.net", false);
    r.write_job(&["erin@example.org", "frank@unverified.net"]);
    let (code, out, err) = r.run();
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(r.copies("erin@example.org").len(), 2);
    assert!(
        format!("{out}{err}").contains("outside the allowed domains"),
        "{out}{err}"
    );
    // An explicit allow-list wins.
    r.write_config("allowed_domains = [\"unverified.net\", \"example.com\", \"example.org\"]\n");
    r.write_job(&["frank@unverified.net"]);
    r.run_ok();
    assert_eq!(r.copies("frank@unverified.net").len(), 2);
}

#[test]
fn delegation_errors_say_how_to_fix_them() {
    let r = Rig::new(2);
    r.fake
        .set_granted_scopes(&["https://www.googleapis.com/auth/contacts"]);
    let (code, out, err) = r.run();
    assert_ne!(code, 0);
    let all = format!("{out}{err}");
    assert!(all.contains(r.fake.client_id()), "{all}");
    assert!(all.contains("admin.directory.user.readonly"), "{all}");
    assert!(
        !all.contains("PRIVATE KEY") && !all.contains("ya29."),
        "{all}"
    );
}

/// A user removed from the job while suspended cannot be cleaned up yet: a note, not a failure,
/// and the cleanup happens once the user is active again.
#[test]
fn a_removed_suspended_user_is_cleaned_up_later() {
    let r = Rig::new(3);
    r.run_ok();
    r.write_job(&["bob@example.com"]);
    r.fake.set_suspended("carol@example.com", true);
    let (code, out, err) = r.run();
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        format!("{out}{err}").contains("carol@example.com is suspended"),
        "{out}{err}"
    );
    assert_eq!(r.copies("carol@example.com").len(), 3, "nothing done yet");
    r.fake.set_suspended("carol@example.com", false);
    r.run_ok();
    assert!(r.copies("carol@example.com").is_empty());
    assert!(!r.has_group("carol@example.com", "Sales"));
    r.assert_no_violations();
}

/// `groupsync check` tells what works and what does not, with the fix, and changes nothing.
#[test]
fn check_reports_the_setup_users_and_groups() {
    let r = Rig::new(2);
    r.fake.set_group("team@example.com", &["dave@example.com"]);
    fs::write(
        r.path().join("jobs/sales.toml"),
        "tag = \"gSync424242\"\nsource = \"alice@example.com\"\ngroup = \"Sales\"\ndestinations = [\"bob@example.com\", \"carol@example.com\", \"group:team@example.com\"]\n",
    )
    .unwrap();
    let check = || {
        let o = r.cmd().arg("check").output().unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    r.fake.reset_counts();
    let (code, out) = check();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ok\tgoogle: service account may act as admin admin@example.com"),
        "{out}"
    );
    assert!(out.contains("allowed domains: example.com"), "{out}");
    assert!(out.contains("group:team@example.com: 1 users"), "{out}");
    assert!(out.contains("ok\tjob sales (3 destinations)"), "{out}");
    let c = r.fake.counts();
    assert!(
        !c.keys()
            .any(|k| k.contains("batch") || k.contains("create") || k.contains("modify")),
        "check wrote something: {c:?}"
    );

    // Problems, each with its fix: an unknown user, a suspended one, a missing source group.
    r.fake.set_suspended("carol@example.com", true);
    fs::write(
        r.path().join("jobs/sales.toml"),
        "tag = \"gSync424242\"\nsource = \"alice@example.com\"\ngroup = \"Sale\"\ndestinations = [\"bob@example.com\", \"carol@example.com\", \"nobody@example.com\"]\n",
    )
    .unwrap();
    let (code, out) = check();
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("invalid destination user: nobody@example.com"),
        "{out}"
    );
    assert!(
        out.contains("note\t") && out.contains("carol@example.com is suspended"),
        "{out}"
    );
    assert!(out.contains("source group \"Sale\" not found"), "{out}");
    r.fake.set_suspended("carol@example.com", false);

    // The contacts scope not delegated: every user fails, naming the client id and the scopes.
    r.write_job(&["bob@example.com"]);
    r.fake.set_granted_scopes(&[
        "https://www.googleapis.com/auth/admin.directory.user.readonly",
        "https://www.googleapis.com/auth/admin.directory.group.member.readonly",
        "https://www.googleapis.com/auth/admin.directory.domain.readonly",
    ]);
    let (code, out) = check();
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("bob@example.com"), "{out}");
    assert!(out.contains(r.fake.client_id()), "{out}");
    assert!(
        out.contains("https://www.googleapis.com/auth/contacts"),
        "{out}"
    );

    // No Directory scopes: the set-up line says so, and how to fix it.
    r.fake
        .set_granted_scopes(&["https://www.googleapis.com/auth/contacts"]);
    let (code, out) = check();
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("error\tgoogle: admin admin@example.com"),
        "{out}"
    );
    assert!(out.contains(r.fake.client_id()), "{out}");
    assert!(
        !out.contains("PRIVATE KEY") && !out.contains("ya29."),
        "{out}"
    );
    r.assert_no_violations();
}

#[test]
fn a_readable_key_file_is_refused() {
    let r = Rig::new(1);
    set_mode(&r.path().join("key.json"), 0o644);
    let out = r.cmd().args(["run", "sales"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn stale_etags_and_lost_answers_never_duplicate() {
    let r = Rig::new(5);
    r.run_ok();
    let src = r.source_ids();
    // The answer to a batch create is lost after the contacts were made: the client reads back
    // by tag, and no duplicate appears.
    r.write_job(&["bob@example.com", "carol@example.com", "dave@example.com"]);
    r.fake.inject(Fault {
        method: "people.people.batchCreateContacts".into(),
        user: Some("dave@example.com".into()),
        kind: FaultKind::ApplyThenFail,
        times: 1,
    });
    r.run_ok();
    assert_eq!(r.copies("dave@example.com"), src);
    // A user edits a copy between the engine's read and its update (a stale etag): the update
    // is refused for that contact, the engine reads again, and the copy ends right.
    r.fake.with_book("alice@example.com", |b| {
        for s in &src {
            b.edit(s, |p| p["nicknames"] = json!([{"value": "changed"}]));
        }
    });
    r.fake.inject(Fault {
        method: "people.people.batchUpdateContacts".into(),
        user: Some("bob@example.com".into()),
        kind: FaultKind::EditFirst,
        times: 1,
    });
    // The stale etag is a conflict: read again, plan again, write again, in the same run.
    r.fake.reset_counts();
    r.run_ok();
    assert!(r.fake.counts()["people.people.batchUpdateContacts"] >= 4);
    // An item the API refuses fails that destination only; the next run converges.
    r.fake.with_book("alice@example.com", |b| {
        for s in &src {
            b.edit(s, |p| p["nicknames"] = json!([{"value": "changed again"}]));
        }
    });
    r.fake.inject(Fault {
        method: "people.people.batchUpdateContacts".into(),
        user: Some("carol@example.com".into()),
        kind: FaultKind::FailItem(0),
        times: 1,
    });
    let (code, _, _) = r.run();
    assert_eq!(code, 1);
    r.run_ok();
    for u in ["bob@example.com", "carol@example.com", "dave@example.com"] {
        assert_eq!(r.copies(u), src);
        for (_, p) in by_source(&r, u) {
            assert_eq!(p["nicknames"][0]["value"], json!("changed again"), "{u}");
        }
    }
}

#[test]
fn rate_limits_and_server_errors_are_retried() {
    let r = Rig::new(3);
    r.fake.inject(Fault {
        method: "people.people.connections.list".into(),
        user: None,
        kind: FaultKind::TooMany { retry_after: 1 },
        times: 2,
    });
    r.fake.inject(Fault {
        method: "people.people.batchCreateContacts".into(),
        user: None,
        kind: FaultKind::Status(503),
        times: 1,
    });
    r.fake.reset_counts();
    r.run_ok();
    // The faults were really hit: two refused source reads tried again (3), one create answered
    // 503 read back by tag (1 more read) before it was sent again, and a sync-token read for
    // each of the two destinations.
    let c = r.fake.counts();
    assert_eq!(c["people.people.connections.list"], 6, "{c:?}");
    assert_eq!(c["people.people.batchCreateContacts"], 3, "{c:?}");
    assert_eq!(r.copies("bob@example.com").len(), 3);
    assert_eq!(r.copies("carol@example.com").len(), 3);
}

/// Google's per-user quota (429 RESOURCE_EXHAUSTED, no Retry-After) and hung calls: reads are
/// tried again, a create whose answer never came is read back by tag, never sent twice.
#[test]
fn quota_and_hung_calls_are_survived() {
    let r = Rig::new(450);
    r.fake.set_options(Options {
        per_user_per_minute: Some(3),
        quota_window: std::time::Duration::from_secs(2),
        ..Options::default()
    });
    r.run_ok();
    let src = r.source_ids();
    assert!(
        r.fake.counts().get("quota-refused").copied().unwrap_or(0) > 0,
        "the quota was never hit: {:?}",
        r.fake.counts()
    );
    assert_eq!(r.copies("bob@example.com"), src);
    assert_eq!(r.copies("carol@example.com"), src);

    // A 1-second timeout; a read that hangs is tried again, a create that hangs after it was
    // made is found by its tag.
    r.fake.set_options(Options::default());
    r.write_config("request_timeout = 1\n");
    r.write_job(&["bob@example.com", "carol@example.com", "dave@example.com"]);
    r.fake.inject(Fault {
        method: "people.contactGroups.list".into(),
        user: Some("dave@example.com".into()),
        kind: FaultKind::Hang {
            secs: 3,
            apply: false,
        },
        times: 1,
    });
    r.fake.inject(Fault {
        method: "people.people.batchCreateContacts".into(),
        user: Some("dave@example.com".into()),
        kind: FaultKind::Hang {
            secs: 3,
            apply: true,
        },
        times: 1,
    });
    r.fake.reset_counts();
    r.run_ok();
    let c = r.fake.counts();
    assert_eq!(c["people.contactGroups.list"], 1 + 2, "{c:?}");
    assert_eq!(
        r.copies("dave@example.com"),
        src,
        "no duplicate, none missing"
    );
}

/// The first destinations get their access tokens while the source is read, not after: with
/// a real token endpoint, that is a round trip off the run's critical path.
#[test]
fn destination_tokens_are_taken_while_the_source_is_read() {
    let r = Rig::new(5);
    r.set_latency(30);
    r.fake.reset_counts();
    r.run_ok();
    let source_read = r
        .fake
        .timeline()
        .into_iter()
        .find(|c| c.user == "alice@example.com" && c.method == "people.people.connections.list")
        .expect("the source was read")
        .answered;
    let grants = r.fake.token_grants();
    for u in ["bob@example.com", "carol@example.com"] {
        let (_, granted) = grants
            .iter()
            .find(|(who, _)| who == u)
            .unwrap_or_else(|| panic!("no token for {u}: {grants:?}"));
        assert!(
            *granted < source_read,
            "{u}'s token was taken {:?} after the source's contacts were answered",
            granted.duration_since(source_read)
        );
    }
    assert_eq!(
        grants
            .iter()
            .filter(|(who, _)| who == "bob@example.com")
            .count(),
        1,
        "one token per user and scope: {grants:?}"
    );
}

/// The source user is looked up, and takes its token, while the destinations are looked up:
/// its first People API call comes two calls after the admin's token (the users, then the
/// domains), not three (a lookup of its own after the destinations'), and its token is granted
/// before any destination's (those started ahead wait for it, as the source is read first).
#[test]
fn the_source_gets_ready_while_the_destinations_are_looked_up() {
    let latency = std::time::Duration::from_millis(80);
    let r = Rig::new(5);
    r.set_latency(latency.as_millis() as u64);
    r.fake.reset_counts();
    r.run_ok();
    let grants = r.fake.token_grants();
    let granted = |u: &str| {
        grants
            .iter()
            .find(|(who, _)| who == u)
            .map(|(_, at)| *at)
            .unwrap_or_else(|| panic!("no token for {u}: {grants:?}"))
    };
    let timeline = r.fake.timeline();
    let first_read = timeline
        .iter()
        .find(|c| c.user == "alice@example.com")
        .expect("the source was read");
    let after = first_read
        .arrived
        .saturating_duration_since(granted("admin@example.com"));
    assert!(
        after < latency * 5 / 2,
        "the source's first read ({}) came {after:?} after the admin's token, at {latency:?} a call",
        first_read.method
    );
    for u in ["bob@example.com", "carol@example.com"] {
        assert!(
            granted("alice@example.com") < granted(u),
            "{u}'s token was granted before the source's: {grants:?}"
        );
    }
}

/// A source user that does not exist, or is suspended, stops the job before any destination
/// is read or written (the source is looked up while the destinations are): the error names
/// the source, and no destination gets a group or a call.
#[test]
fn an_unknown_or_suspended_source_stops_the_job_before_any_destination() {
    for (source, why) in [
        ("nobody@example.com", "not found"),
        ("alice@example.com", "suspended"),
    ] {
        let r = Rig::new(3);
        fs::write(
            r.path().join("jobs/sales.toml"),
            format!(
                "tag = \"{TAG}\"\nsource = \"{source}\"\ngroup = \"Sales\"\ndestinations = [\"bob@example.com\", \"carol@example.com\"]\n"
            ),
        )
        .unwrap();
        r.fake
            .set_suspended("alice@example.com", why == "suspended");
        r.fake.reset_counts();
        let (code, out, err) = r.run();
        assert_ne!(code, 0, "stdout: {out}\nstderr: {err}");
        assert!(
            err.contains(source) && err.contains(why),
            "the error should name {source} and say it is {why}: {err}"
        );
        for u in ["bob@example.com", "carol@example.com"] {
            assert!(!r.has_group(u, "Sales"), "{u} got a group");
        }
        let touched: Vec<_> = r
            .fake
            .timeline()
            .into_iter()
            .filter(|c| c.user != source)
            .collect();
        assert!(touched.is_empty(), "destinations were called: {touched:#?}");
        r.assert_no_violations();
    }
}

/// At debug level each call is logged with its user, status, time to the answer, time to read
/// the body and the body's size; never its token.
#[test]
fn calls_are_logged_with_their_times_at_debug_level() {
    let r = Rig::new(3);
    r.set_latency(20);
    let out = r
        .cmd()
        .args(["--log-json", "run", "sales"])
        .env("GROUPSYNC_LOG", "debug")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    let calls: Vec<Value> = err
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["answer_ms"].is_number())
        .collect();
    let list = calls
        .iter()
        .find(|v| {
            v["fields"]["message"] == "people.connections.list"
                && v["fields"]["user"] == "alice@example.com"
        })
        .unwrap_or_else(|| panic!("no debug line for the source read in:\n{err}"));
    assert_eq!(list["fields"]["status"], 200);
    assert!(
        list["fields"]["answer_ms"].as_f64().unwrap() >= 20.0,
        "{list}"
    );
    assert!(list["fields"]["body_ms"].as_f64().unwrap() >= 0.0, "{list}");
    assert!(list["fields"]["bytes"].as_u64().unwrap() > 1000, "{list}");
    assert!(
        calls
            .iter()
            .any(|v| v["fields"]["message"] == "people.batchCreateContacts"),
        "{err}"
    );
    assert!(!err.contains("ya29."), "a token in the log");
}

/// A `groupsync run` killed (SIGKILL) mid-way, several times — once right after a batch create
/// was applied but before its answer came back — then one run to completion: exactly one copy
/// per source contact everywhere, nothing the fake would refuse.
#[test]
fn killed_runs_converge_without_duplicates() {
    let r = Rig::new(450);
    let src = r.source_ids();
    r.set_latency(10);
    let spawn = || common::spawn_run(r.path(), "sales");
    // Killed while bob's first batch create hangs after it was applied.
    r.fake.inject(Fault {
        method: "people.people.batchCreateContacts".into(),
        user: Some("bob@example.com".into()),
        kind: FaultKind::Hang {
            secs: 3,
            apply: true,
        },
        times: 1,
    });
    r.fake.reset_counts();
    let mut child = spawn();
    let start = std::time::Instant::now();
    while r
        .fake
        .counts()
        .get("people.people.batchCreateContacts")
        .copied()
        .unwrap_or(0)
        < 1
        && start.elapsed() < std::time::Duration::from_secs(20)
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !r.group("bob@example.com", "Sales").is_empty(),
        "the hung create was applied"
    );
    // More kills at varied points, with source edits in between.
    common::killed_runs(r.path(), "sales", &[120, 260, 40, 500, 180], |round| {
        r.fake.with_book("alice@example.com", |b| {
            for s in src.iter().skip(round).step_by(7) {
                b.edit(s, |p| {
                    p["nicknames"] = json!([{"value": format!("round {round}")}])
                });
            }
        });
    });
    r.fake.set_options(Options::default());
    r.run_ok();
    for u in ["bob@example.com", "carol@example.com"] {
        assert_eq!(r.copies(u), src, "{u}: one copy per source contact");
        for (s, p) in by_source(&r, u) {
            let want = r.fake.with_book("alice@example.com", |b| {
                b.contact(&s).expect("source contact")["nicknames"].clone()
            });
            assert_eq!(p["nicknames"], want, "{u} {s}");
        }
    }
    r.assert_no_violations();
}

/// A PNG-looking photo (the fake checks the format as Google does).
fn png(n: u8) -> Vec<u8> {
    let mut b = b"\x89PNG\r\n\x1a\n".to_vec();
    b.extend(std::iter::repeat_n(n, 64));
    b
}

/// The bytes of the photo a user's contact has, if it has one of its own.
fn photo_of(r: &Rig, user: &str, p: &Value) -> Option<Vec<u8>> {
    let url = p["photos"][0]["url"].as_str()?;
    let pid = url.rsplit('/').next()?.to_string();
    r.fake.with_book(user, |b| b.photo_bytes.get(&pid).cloned())
}

/// Photos are copied (one updateContactPhoto each, the People API has no batch for them),
/// follow the source, come back when a user removes them, and go when the source's goes.
#[test]
fn photos_follow_the_source() {
    let r = Rig::new(3);
    let src = r.source_ids();
    r.fake.set_photo("alice@example.com", &src[0], &png(1));
    r.fake.reset_counts();
    r.run_ok();
    let c = r.fake.counts();
    assert_eq!(c["people.people.updateContactPhoto"], 2, "{c:?}");
    assert!(c["photo.get"] >= 1, "{c:?}");
    for u in ["bob@example.com", "carol@example.com"] {
        let copies = by_source(&r, u);
        assert_eq!(photo_of(&r, u, &copies[&src[0]]), Some(png(1)), "{u}");
        assert_eq!(photo_of(&r, u, &copies[&src[1]]), None, "{u}");
    }
    // Nothing changed: no photo call, nothing written.
    r.fake.reset_counts();
    r.run_ok();
    let c = r.fake.counts();
    assert!(
        !c.keys().any(|k| k.contains("Photo") || k.contains("batch")),
        "{c:?}"
    );

    // A new source photo reaches the copies; a copy whose photo bob removed gets it back.
    r.fake.set_photo("alice@example.com", &src[0], &png(2));
    r.run_ok();
    let bob = "bob@example.com";
    let copy = by_source(&r, bob)[&src[0]]["resourceName"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        photo_of(&r, bob, &by_source(&r, bob)[&src[0]]),
        Some(png(2))
    );
    r.fake.with_book(bob, |b| {
        b.edit(&copy, |p| {
            p.as_object_mut().unwrap().remove("photos");
        })
    });
    r.run_ok();
    assert_eq!(
        photo_of(&r, bob, &by_source(&r, bob)[&src[0]]),
        Some(png(2))
    );
    // The source photo goes: so do the copies'.
    r.fake.with_book("alice@example.com", |b| {
        b.edit(&src[0], |p| {
            p.as_object_mut().unwrap().remove("photos");
        })
    });
    r.fake.reset_counts();
    r.run_ok();
    assert_eq!(r.fake.counts()["people.people.deleteContactPhoto"], 2);
    for u in [bob, "carol@example.com"] {
        assert_eq!(photo_of(&r, u, &by_source(&r, u)[&src[0]]), None, "{u}");
        assert_eq!(r.copies(u), src);
    }
    r.assert_no_violations();
}

/// The fake is only worth something if it refuses what Google refuses.
#[test]
fn the_fake_refuses_what_google_refuses() {
    let fake = FakeGoogle::start(Options {
        latency: std::time::Duration::from_millis(200),
        ..Options::default()
    });
    fake.add_user("bob@example.com", false);
    let token = fake.issue_token("bob@example.com");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = reqwest::Client::new();
    let send = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut r = http
            .request(method, format!("{}{path}", fake.url))
            .bearer_auth(&token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        async move {
            let resp = r.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap())
        }
    };
    let cases: Vec<(reqwest::Method, &str, Option<Value>, &str)> = vec![
        (
            reqwest::Method::GET,
            "/v1/people/me/connections?pageSize=10",
            None,
            "personFields",
        ),
        (
            reqwest::Method::GET,
            "/v1/people/me/connections?personFields=names&bogus=1",
            None,
            "bogus",
        ),
        (
            reqwest::Method::GET,
            "/v1/people/me/connections?personFields=nmes",
            None,
            "nmes",
        ),
        (
            reqwest::Method::GET,
            "/v1/people/me/connections?personFields=names&sortOrder=RANDOM",
            None,
            "RANDOM",
        ),
        (
            reqwest::Method::GET,
            "/v1/people/me/connections?personFields=names&pageSize=5000",
            None,
            "pageSize",
        ),
        (
            reqwest::Method::GET,
            "/v1/people/me/friends",
            None,
            "no such method",
        ),
        (
            reqwest::Method::POST,
            "/v1/people:batchCreateContacts",
            Some(
                json!({"contacts": [{"contactPerson": {"names": [{"givenName": "A"}], "colour": "red"}}], "readMask": "metadata"}),
            ),
            "colour",
        ),
        (
            reqwest::Method::POST,
            "/v1/people:batchCreateContacts",
            Some(
                json!({"contacts": [{"contactPerson": {"phoneNumbers": [{"value": "1", "canonicalForm": "1"}]}}], "readMask": "metadata"}),
            ),
            "output only",
        ),
        (
            reqwest::Method::POST,
            "/v1/people:batchCreateContacts",
            Some(
                json!({"contacts": (0..201).map(|_| json!({"contactPerson": {}})).collect::<Vec<_>>(), "readMask": "metadata"}),
            ),
            "1 to 200",
        ),
        (
            reqwest::Method::POST,
            "/v1/people:batchCreateContacts",
            Some(
                json!({"contacts": [{"contactPerson": {"names": [{"givenName": "A"}, {"givenName": "B"}]}}], "readMask": "metadata"}),
            ),
            "at most one",
        ),
        (
            reqwest::Method::POST,
            "/v1/people:batchUpdateContacts",
            Some(
                json!({"contacts": {"people/c1": {}}, "updateMask": "photos", "readMask": "metadata"}),
            ),
            "photos",
        ),
        (
            reqwest::Method::POST,
            "/v1/people:batchDeleteContacts",
            Some(
                json!({"resourceNames": (0..501).map(|i| format!("people/c{i}")).collect::<Vec<_>>()}),
            ),
            "1 to 500",
        ),
    ];
    rt.block_on(async {
        for (m, path, body, needle) in cases {
            let before = fake.violations().len();
            let (status, text) = send(m.clone(), path, body).await;
            assert!(
                status == 400 || status == 404,
                "{m} {path}: {status} {text}"
            );
            let v = fake.violations();
            assert_eq!(v.len(), before + 1, "{m} {path} was not recorded: {v:?}");
            assert!(
                v.last().unwrap().contains(needle),
                "{m} {path}: {:?}",
                v.last()
            );
        }
        // A duplicate group name is a 409 (not a client bug the fake records).
        let create = json!({"contactGroup": {"name": "Sales"}});
        assert_eq!(
            send(
                reqwest::Method::POST,
                "/v1/contactGroups",
                Some(create.clone())
            )
            .await
            .0,
            200
        );
        assert_eq!(
            send(reqwest::Method::POST, "/v1/contactGroups", Some(create))
                .await
                .0,
            409
        );
        // Two mutations for one user at once are caught.
        let before = fake.violations().len();
        let a = send(
            reqwest::Method::POST,
            "/v1/contactGroups",
            Some(json!({"contactGroup": {"name": "A"}})),
        );
        let b = send(
            reqwest::Method::POST,
            "/v1/contactGroups",
            Some(json!({"contactGroup": {"name": "B"}})),
        );
        let _ = tokio::join!(a, b);
        let v = fake.violations();
        assert_eq!(v.len(), before + 1, "{v:?}");
        assert!(v.last().unwrap().contains("sequentially"), "{v:?}");
    });
}

/// A destination leaving the job is read for its tags only: its copies go, another job's copy
/// in the same group stays (and so does the group), and the user's own contact moves to My
/// Contacts untouched otherwise.
#[test]
fn a_removal_leaves_another_jobs_copies_alone() {
    let r = Rig::new(3);
    r.run_ok();
    let bob = "bob@example.com";
    let group_rn = r.fake.with_book(bob, |b| b.group_by_name("Sales").unwrap());
    let member = json!([{"contactGroupMembership": {"contactGroupResourceName": group_rn}}]);
    let (other, own) = r.fake.with_book(bob, |b| {
        let other = b.add_contact(json!({
            "names": [{"givenName": "Other"}],
            "clientData": [{"key": "gSync", "value": "gSync999:people/elsewhere"}],
            "memberships": member,
        }));
        let own = b.add_contact(json!({
            "names": [{"givenName": "Own"}],
            "memberships": member,
        }));
        (other, own)
    });
    let other_before = r.fake.with_book(bob, |b| b.contact(&other).unwrap());
    r.write_job(&["carol@example.com"]);
    r.run_ok();
    let left: Vec<String> = r
        .group(bob, "Sales")
        .iter()
        .map(|p| p["resourceName"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, vec![other.clone()], "only the other job's copy stays");
    r.fake.with_book(bob, |b| {
        assert_eq!(b.contact(&other).unwrap(), other_before);
        assert!(
            b.contact(&own).unwrap()["memberships"]
                .to_string()
                .contains("contactGroups/myContacts")
        );
        assert!(
            !b.all_contacts()
                .any(|p| machine_tag(&p).is_some_and(|(t, _)| t == TAG)),
            "copies left"
        );
    });
}

/// At most `concurrency` destinations are at the provider at once (have a call in flight), and
/// their state is complete all the same: a rerun finds every destination as it was left. A
/// destination records its state after its last call, off its place, and one whose change-token
/// read has made its last call steps aside while it reads the answer; a destination that then
/// has to write (the source changed) or to read its group (one of its copies was edited) takes
/// a place again first.
#[test]
fn destinations_at_the_provider_never_exceed_the_concurrency() {
    let r = Rig::new(5);
    let users: Vec<String> = (0..8).map(|i| format!("user{i}@example.com")).collect();
    for u in &users {
        r.fake.add_user(u, false);
    }
    let names: Vec<&str> = users.iter().map(String::as_str).collect();
    r.write_job(&names);
    let config = fs::read_to_string(r.path().join("groupsync.toml")).unwrap();
    fs::write(
        r.path().join("groupsync.toml"),
        config.replace("concurrency = 4", "concurrency = 2"),
    )
    .unwrap();
    r.set_latency(5);
    // The most destinations with a call in flight at one moment (a destination may have two:
    // a page asked for ahead).
    let most_at_once = |r: &Rig| {
        let calls: Vec<fake_google::TimedCall> = r
            .fake
            .timeline()
            .into_iter()
            .filter(|c| users.contains(&c.user))
            .collect();
        let seen: std::collections::BTreeSet<&str> =
            calls.iter().map(|c| c.user.as_str()).collect();
        assert_eq!(seen.len(), 8, "{seen:?}");
        calls
            .iter()
            .map(|at| {
                calls
                    .iter()
                    .filter(|c| c.arrived <= at.arrived && at.arrived < c.answered)
                    .map(|c| c.user.as_str())
                    .collect::<std::collections::BTreeSet<_>>()
                    .len()
            })
            .max()
            .unwrap()
    };
    r.fake.reset_counts();
    r.run_ok();
    assert_eq!(most_at_once(&r), 2, "first run");
    r.fake.reset_counts();
    r.run_ok();
    assert!(most_at_once(&r) <= 2, "rerun");
    // A source contact edited: every destination writes after its read. A copy edited at three
    // destinations: their reads find a change and read the group alongside.
    let edited = r.source_ids()[0].clone();
    r.fake.with_book("alice@example.com", |b| {
        b.edit(&edited, |p| p["names"][0]["familyName"] = json!("Edited"))
    });
    for u in &users[..3] {
        let copy = r
            .group(u, "Sales")
            .into_iter()
            .find(|p| machine_tag(p).is_some_and(|(_, s)| s != edited))
            .unwrap();
        r.fake.with_book(u, |b| {
            b.edit(copy["resourceName"].as_str().unwrap(), |p| {
                p["phoneNumbers"] = json!([{"value": "+1 000", "type": "home"}])
            })
        });
    }
    r.fake.reset_counts();
    r.run_ok();
    assert!(most_at_once(&r) <= 2, "edited rerun");
    for u in &users {
        let copy = r
            .group(u, "Sales")
            .into_iter()
            .find(|p| machine_tag(p).is_some_and(|(_, s)| s == edited))
            .unwrap();
        assert_eq!(copy["names"][0]["familyName"], "Edited", "{u}");
        assert!(
            !r.group(u, "Sales")
                .iter()
                .any(|p| p["phoneNumbers"][0]["value"] == "+1 000"),
            "{u}"
        );
    }
    // Every destination's ledger and change token were recorded: nothing is written again.
    r.fake.reset_counts();
    r.run_ok();
    let c = r.fake.counts();
    assert!(
        !c.keys()
            .any(|k| k.contains("batch") || k.contains("create")),
        "{c:?}"
    );
    for u in &users {
        assert_eq!(r.copies(u), r.source_ids(), "{u}");
    }
}

/// The backend contract (`common::contract`), on the fake: every step's requests follow
/// Google's rules.
#[test]
fn google_keeps_the_contract() {
    use groupsync::backend::Backend;
    use groupsync::backend::google::{GoogleBackend, GoogleConfig, person};
    let r = Rig::new(0);
    let mut cfg =
        GoogleConfig::with_defaults(r.path().join("key.json"), "admin@example.com".into());
    cfg.people_url = r.fake.url.clone();
    cfg.directory_url = r.fake.url.clone();
    let b = GoogleBackend::new(cfg).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let user = rt
        .block_on(b.resolve_user("bob@example.com"))
        .unwrap()
        .expect("bob is in the directory");
    let sample = |i: usize| person::to_card(&person(i), None);
    let subject = common::contract::Subject {
        user,
        default_group: "My Contacts",
        sample: &sample,
    };
    rt.block_on(common::contract::check(&b, &subject));
    r.assert_no_violations();
}
