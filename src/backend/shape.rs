//! The shape every provider folder has, and the parts of `impl Backend` that several providers
//! write the same way, as macros used inside `impl Backend for …`:
//!
//! - `mod.rs`: the provider's struct, its constructor, and `impl Backend`, which only delegates;
//! - `read.rs`: `read_members` (a group, whole or tags only, with or without a change token),
//!   `fetch_by_ids`, and `read_delta` where the provider has change tokens;
//! - `write.rs`: the batch writes, or `create_one`, `update_one`, `delete_one`, `move_one` for a
//!   provider without batch endpoints;
//! - `groups.rs`: `group_named`, `make_group`, `remove_group`;
//! - the wire client (`http.rs`, `files.rs`), the mapping between the wire format and the
//!   engine's vCards (`xml.rs`, `person.rs`, `parts.rs`), and field names (`fields.rs`).
//!
//! These macros only forward; they must not hold behaviour of their own.

/// The trait methods every provider forwards to its rooms: groups to `groups.rs`
/// (`group_named`, `make_group`, `remove_group`), reads to `read.rs` (`read_members`,
/// `fetch_by_ids`). A provider whose groups users can rename under the job (Graph's folders)
/// says `delegate_to_rooms!(known_ids)`: its `group_named` takes the id the state remembers;
/// the others find groups by name only.
macro_rules! delegate_to_rooms {
    () => {
        async fn find_group(
            &self,
            user: &User,
            name: &str,
            _known: Option<&str>,
        ) -> Result<Option<GroupRef>> {
            self.group_named(user, name).await
        }

        delegate_to_rooms!(@rest);
    };
    (known_ids) => {
        async fn find_group(
            &self,
            user: &User,
            name: &str,
            known: Option<&str>,
        ) -> Result<Option<GroupRef>> {
            self.group_named(user, name, known).await
        }

        delegate_to_rooms!(@rest);
    };
    (@rest) => {
        async fn create_group(&self, user: &User, name: &str) -> Result<GroupRef> {
            self.make_group(user, name).await
        }

        async fn delete_group(&self, user: &User, group: &GroupRef) -> Result<()> {
            self.remove_group(user, group).await
        }

        async fn read_group(
            &self,
            user: &User,
            group: Option<&GroupRef>,
            how: $crate::backend::GroupRead<'_>,
            sink: &mut (dyn FnMut($crate::backend::Read) + Send),
        ) -> Result<Option<String>> {
            self.read_members(user, group, how, sink).await
        }

        async fn fetch_contacts(
            &self,
            user: &User,
            group: &GroupRef,
            ids: &[String],
            sink: &mut (dyn FnMut(Contact) + Send),
        ) -> Result<()> {
            self.fetch_by_ids(user, group, ids, sink).await
        }
    };
}

/// `read_changes` of a provider with change tokens: `read_delta` in its `read.rs`.
macro_rules! delegate_read_changes {
    () => {
        async fn read_changes(
            &self,
            user: &User,
            token: &str,
            group_id: &str,
            known: &dyn $crate::backend::KnownCopies,
            sink: &mut (dyn FnMut(Contact) + Send),
            gone: &mut (dyn FnMut(String) + Send),
        ) -> Result<$crate::backend::Delta> {
            self.read_delta(user, token, group_id, known, sink, gone)
                .await
        }
    };
}

/// `read_changes` of a provider without change tokens: every token has expired.
macro_rules! no_change_tokens {
    () => {
        async fn read_changes(
            &self,
            _user: &User,
            _token: &str,
            _group_id: &str,
            _known: &dyn $crate::backend::KnownCopies,
            _sink: &mut (dyn FnMut(Contact) + Send),
            _gone: &mut (dyn FnMut(String) + Send),
        ) -> Result<$crate::backend::Delta> {
            Ok($crate::backend::Delta::Expired)
        }
    };
}

/// A provider without a directory or per-user access: users are what the provider holds,
/// nothing to prepare or check ahead, no dynamic sets, no calls counted by the provider itself.
macro_rules! no_directory {
    () => {
        fn call_counts(&self) -> Option<$crate::backend::counting::CallCounts> {
            None
        }

        async fn prepare_users(&self, _names: &[String]) {}

        async fn prepare_access(&self, _user: &User) {}

        async fn expand_set(&self, set: &str) -> Result<Vec<String>> {
            Err($crate::backend::no_directory(self.kind(), set))
        }

        async fn check_setup(&self) -> Vec<std::result::Result<String, String>> {
            vec![]
        }

        async fn check_access(&self, _user: &User) -> Result<()> {
            Ok(())
        }
    };
}

/// The batch writes of a provider without batch endpoints: each contact by the provider's own
/// single-contact write (`create_one`, `update_one`, `delete_one`, `move_one`, inherent
/// methods), in order, stopping as `one_by_one` does. Used inside `impl Backend for …`.
macro_rules! one_by_one_writes {
    () => {
        async fn create_contacts(
            &self,
            user: &User,
            group: &GroupRef,
            cards: &[&VCard],
        ) -> Vec<Result<Written>> {
            $crate::backend::one_by_one(cards, |card| self.create_one(user, group, card)).await
        }

        async fn update_contacts(
            &self,
            user: &User,
            group: &GroupRef,
            items: &[(&str, &str, &VCard)],
            fields: &FieldSelection,
        ) -> Vec<Result<String>> {
            $crate::backend::one_by_one(items, |&(id, etag, card)| {
                self.update_one(user, group, id, etag, card, fields)
            })
            .await
        }

        async fn delete_contacts(
            &self,
            user: &User,
            group: &GroupRef,
            items: &[(&str, &str)],
        ) -> Vec<Result<()>> {
            $crate::backend::one_by_one(items, |&(id, etag)| self.delete_one(user, group, id, etag))
                .await
        }

        async fn move_contacts_to_default(
            &self,
            user: &User,
            group: &GroupRef,
            items: &[(&str, &str)],
        ) -> Vec<Result<()>> {
            $crate::backend::one_by_one(items, |&(id, etag)| self.move_one(user, group, id, etag))
                .await
        }
    };
}
