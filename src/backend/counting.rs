//! A backend wrapper that counts calls by method (and contacts read), for benchmarks and for
//! tests that bound the number of provider calls. It changes nothing it passes on. The trait has
//! no default methods, so every method is forwarded here or this does not compile. A group read
//! counts as `scan_group`; batch writes count their contacts.

use calcard::vcard::VCard;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{
    Backend, Capabilities, Contact, Delta, GroupRead, GroupRef, KnownCopies, Read, Result, User,
    Written,
};
use crate::card::FieldSelection;

/// Call counts of a `Counting` backend.
#[derive(Debug, Default)]
pub struct Calls {
    pub resolve_user: AtomicU64,
    pub find_group: AtomicU64,
    pub create_group: AtomicU64,
    pub delete_group: AtomicU64,
    pub scan_group: AtomicU64,
    pub read_changes: AtomicU64,
    pub contacts_read: AtomicU64,
    pub fetch_contacts: AtomicU64,
    pub create_contact: AtomicU64,
    pub update_contact: AtomicU64,
    pub delete_contact: AtomicU64,
    pub move_to_default: AtomicU64,
}

/// A plain copy of the counts.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct CallCounts {
    pub resolve_user: u64,
    pub find_group: u64,
    pub create_group: u64,
    pub delete_group: u64,
    pub scan_group: u64,
    pub read_changes: u64,
    pub contacts_read: u64,
    pub fetch_contacts: u64,
    pub create_contact: u64,
    pub update_contact: u64,
    pub delete_contact: u64,
    pub move_to_default: u64,
}

impl CallCounts {
    /// (method, count) pairs, for the state database and metrics.
    pub fn by_method(&self) -> [(&'static str, u64); 12] {
        [
            ("resolve_user", self.resolve_user),
            ("find_group", self.find_group),
            ("create_group", self.create_group),
            ("delete_group", self.delete_group),
            ("scan_group", self.scan_group),
            ("read_changes", self.read_changes),
            ("contacts_read", self.contacts_read),
            ("fetch_contacts", self.fetch_contacts),
            ("create_contact", self.create_contact),
            ("update_contact", self.update_contact),
            ("delete_contact", self.delete_contact),
            ("move_to_default", self.move_to_default),
        ]
    }

    /// Counts since `earlier`.
    pub fn since(&self, earlier: &CallCounts) -> CallCounts {
        let (a, b) = (self.by_method(), earlier.by_method());
        let d = |i: usize| a[i].1.saturating_sub(b[i].1);
        CallCounts {
            resolve_user: d(0),
            find_group: d(1),
            create_group: d(2),
            delete_group: d(3),
            scan_group: d(4),
            read_changes: d(5),
            contacts_read: d(6),
            fetch_contacts: d(7),
            create_contact: d(8),
            update_contact: d(9),
            delete_contact: d(10),
            move_to_default: d(11),
        }
    }

    /// Calls that change something at the provider.
    pub fn writes(&self) -> u64 {
        self.create_group
            + self.delete_group
            + self.create_contact
            + self.update_contact
            + self.delete_contact
            + self.move_to_default
    }

    /// Calls that only read.
    pub fn reads(&self) -> u64 {
        self.resolve_user
            + self.find_group
            + self.scan_group
            + self.read_changes
            + self.fetch_contacts
    }
}

/// Wraps a backend and counts its calls.
#[derive(Debug)]
pub struct Counting<B> {
    pub inner: B,
    pub calls: Calls,
}

impl<B> Counting<B> {
    pub fn new(inner: B) -> Self {
        Counting {
            inner,
            calls: Calls::default(),
        }
    }

    pub fn counts(&self) -> CallCounts {
        let c = &self.calls;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CallCounts {
            resolve_user: g(&c.resolve_user),
            find_group: g(&c.find_group),
            create_group: g(&c.create_group),
            delete_group: g(&c.delete_group),
            scan_group: g(&c.scan_group),
            read_changes: g(&c.read_changes),
            contacts_read: g(&c.contacts_read),
            fetch_contacts: g(&c.fetch_contacts),
            create_contact: g(&c.create_contact),
            update_contact: g(&c.update_contact),
            delete_contact: g(&c.delete_contact),
            move_to_default: g(&c.move_to_default),
        }
    }
}

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

impl<B: Backend> Backend for Counting<B> {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn cannot_hold(&self, card: &VCard) -> Vec<String> {
        self.inner.cannot_hold(card)
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn call_counts(&self) -> Option<CallCounts> {
        Some(self.counts())
    }

    async fn resolve_user(&self, name: &str) -> Result<Option<User>> {
        bump(&self.calls.resolve_user);
        self.inner.resolve_user(name).await
    }

    async fn prepare_users(&self, names: &[String]) {
        self.inner.prepare_users(names).await
    }

    async fn prepare_access(&self, user: &User) {
        self.inner.prepare_access(user).await
    }

    async fn expand_set(&self, set: &str) -> Result<Vec<String>> {
        bump(&self.calls.resolve_user);
        self.inner.expand_set(set).await
    }

    async fn check_setup(&self) -> Vec<std::result::Result<String, String>> {
        self.inner.check_setup().await
    }

    async fn check_access(&self, user: &User) -> Result<()> {
        self.inner.check_access(user).await
    }

    fn check_group_name(&self, name: &str) -> std::result::Result<(), String> {
        self.inner.check_group_name(name)
    }

    async fn find_group(
        &self,
        user: &User,
        name: &str,
        known: Option<&str>,
    ) -> Result<Option<GroupRef>> {
        bump(&self.calls.find_group);
        self.inner.find_group(user, name, known).await
    }

    async fn create_group(&self, user: &User, name: &str) -> Result<GroupRef> {
        bump(&self.calls.create_group);
        self.inner.create_group(user, name).await
    }

    async fn delete_group(&self, user: &User, group: &GroupRef) -> Result<()> {
        bump(&self.calls.delete_group);
        self.inner.delete_group(user, group).await
    }

    async fn read_group(
        &self,
        user: &User,
        group: Option<&GroupRef>,
        how: GroupRead<'_>,
        sink: &mut (dyn FnMut(Read) + Send),
    ) -> Result<Option<String>> {
        bump(&self.calls.scan_group);
        let counter = &self.calls.contacts_read;
        self.inner
            .read_group(user, group, how, &mut |r| {
                if matches!(r, Read::Contact(_)) {
                    bump(counter);
                }
                sink(r)
            })
            .await
    }

    async fn fetch_contacts(
        &self,
        user: &User,
        group: &GroupRef,
        ids: &[String],
        sink: &mut (dyn FnMut(Contact) + Send),
    ) -> Result<()> {
        bump(&self.calls.fetch_contacts);
        self.inner.fetch_contacts(user, group, ids, sink).await
    }

    async fn read_changes(
        &self,
        user: &User,
        token: &str,
        group_id: &str,
        known: &dyn KnownCopies,
        sink: &mut (dyn FnMut(Contact) + Send),
        gone: &mut (dyn FnMut(String) + Send),
    ) -> Result<Delta> {
        bump(&self.calls.read_changes);
        let counter = &self.calls.contacts_read;
        let mut counted = |c| {
            bump(counter);
            sink(c)
        };
        self.inner
            .read_changes(user, token, group_id, known, &mut counted, gone)
            .await
    }

    async fn create_contacts(
        &self,
        user: &User,
        group: &GroupRef,
        cards: &[&VCard],
    ) -> Vec<Result<Written>> {
        add(&self.calls.create_contact, cards.len());
        self.inner.create_contacts(user, group, cards).await
    }

    async fn update_contacts(
        &self,
        user: &User,
        group: &GroupRef,
        items: &[(&str, &str, &VCard)],
        fields: &FieldSelection,
    ) -> Vec<Result<String>> {
        add(&self.calls.update_contact, items.len());
        self.inner.update_contacts(user, group, items, fields).await
    }

    async fn delete_contacts(
        &self,
        user: &User,
        group: &GroupRef,
        items: &[(&str, &str)],
    ) -> Vec<Result<()>> {
        add(&self.calls.delete_contact, items.len());
        self.inner.delete_contacts(user, group, items).await
    }

    async fn move_contacts_to_default(
        &self,
        user: &User,
        group: &GroupRef,
        items: &[(&str, &str)],
    ) -> Vec<Result<()>> {
        add(&self.calls.move_to_default, items.len());
        self.inner
            .move_contacts_to_default(user, group, items)
            .await
    }
}

fn add(a: &AtomicU64, n: usize) {
    a.fetch_add(n as u64, Ordering::Relaxed);
}
