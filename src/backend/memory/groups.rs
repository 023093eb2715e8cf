//! A user's groups in the store: found by name, made, and deleted only when empty.
//!
//! It must not touch a contact itself.

use std::sync::atomic::Ordering;

use super::{MemGroup, MemoryBackend, user_mut};
use crate::backend::{BackendError, GroupRef, Result, User};

/// Groups.
impl MemoryBackend {
    pub(super) fn with_group<T>(
        &self,
        user: &User,
        group: &GroupRef,
        f: impl FnOnce(&mut MemGroup) -> Result<T>,
    ) -> Result<T> {
        let mut users = self.users.lock().unwrap();
        let u = user_mut(&mut users, user)?;
        let g = u
            .groups
            .get_mut(&group.id)
            .ok_or_else(|| BackendError::NotFound {
                what: format!("group {:?} of {}", group.name, user.name),
            })?;
        f(g)
    }

    pub(super) async fn group_named(&self, user: &User, name: &str) -> Result<Option<GroupRef>> {
        self.check_read()?;
        if self.panic_user.lock().unwrap().as_deref() == Some(user.id.as_str()) {
            panic!("injected panic looking up a group of {}", user.name);
        }
        let mut users = self.users.lock().unwrap();
        let u = user_mut(&mut users, user)?;
        Ok(u.groups
            .iter()
            .find(|(_, g)| g.name == name)
            .map(|(id, g)| GroupRef {
                id: id.clone(),
                name: g.name.clone(),
                version: (!self.tokens_on.load(Ordering::Relaxed)).then(|| g.version()),
            }))
    }

    pub(super) async fn make_group(&self, user: &User, name: &str) -> Result<GroupRef> {
        self.check_write()?;
        let mut users = self.users.lock().unwrap();
        let u = user_mut(&mut users, user)?;
        if u.groups.values().any(|g| g.name == name) {
            return Err(BackendError::AlreadyExists {
                what: format!("group {name:?} of {}", user.name),
            });
        }
        let id = self.fresh("g");
        u.groups.insert(
            id.clone(),
            MemGroup {
                name: name.into(),
                ..Default::default()
            },
        );
        Ok(GroupRef {
            id,
            name: name.into(),
            version: None,
        })
    }

    pub(super) async fn remove_group(&self, user: &User, group: &GroupRef) -> Result<()> {
        self.check_write()?;
        let mut users = self.users.lock().unwrap();
        let u = user_mut(&mut users, user)?;
        match u.groups.get(&group.id) {
            None => Ok(()),
            Some(g) if !g.contacts.is_empty() => Err(BackendError::NotEmpty {
                what: format!("group {:?} of {}", group.name, user.name),
            }),
            Some(_) => {
                u.groups.remove(&group.id);
                Ok(())
            }
        }
    }
}
