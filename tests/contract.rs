//! The backend contract (`common::contract`) on the providers that need no server: the in-memory
//! store and a vdir tree. CardDAV runs it against Radicale and Xandikos (`tests/carddav.rs`),
//! Google against the fake (`tests/google.rs`).

mod common;

use groupsync::backend::User;
use groupsync::backend::memory::{DEFAULT_GROUP, MemoryBackend};
use groupsync::backend::vdir::VdirBackend;
use groupsync::card;

fn sample(i: usize) -> calcard::vcard::VCard {
    card::parse(&common::card(
        &format!("uid-{i}"),
        &format!("Person {i}"),
        &format!("p{i}@example.com"),
    ))
    .unwrap()
}

fn user() -> User {
    User {
        id: "u".into(),
        name: "u".into(),
    }
}

#[tokio::test]
async fn the_memory_store_keeps_the_contract() {
    let b = MemoryBackend::new();
    b.add_user("u");
    let s = common::contract::Subject {
        user: user(),
        default_group: DEFAULT_GROUP,
        sample: &sample,
    };
    common::contract::check(&b, &s).await;
}

#[tokio::test]
async fn a_vdir_tree_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("u").join("My Contacts")).unwrap();
    let b = VdirBackend::new(dir.path());
    let s = common::contract::Subject {
        user: user(),
        default_group: "My Contacts",
        sample: &sample,
    };
    common::contract::check(&b, &s).await;
}
