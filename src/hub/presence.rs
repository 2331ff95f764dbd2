//! Local presence: how many connections each user has on this node.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use super::Hub;
use crate::events::{names, payload, Event, Room};

/// Connection counts per tenant and user. A user is online while the count is above zero.
pub struct Presence {
    tenants: Mutex<HashMap<String, TenantPresence>>,
    hub: Arc<Hub>,
    /// Whether `user:online` and `user:offline` go to the user's tenant room.
    announce: bool,
}

#[derive(Default)]
struct TenantPresence {
    users: HashMap<String, UserCount>,
    connections: usize,
}

#[derive(Default)]
struct UserCount {
    connections: usize,
    /// Set when a connection over the limit was rejected and logged, so a client that
    /// retries in a loop is logged once until the user drops below the limit.
    limit_logged: bool,
}

/// Counts of connected users and their connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub users: usize,
    pub connections: usize,
}

impl Presence {
    pub fn new(hub: Arc<Hub>, announce: bool) -> Arc<Self> {
        Arc::new(Presence { tenants: Mutex::new(HashMap::new()), hub, announce })
    }

    /// Counts a new connection unless the user already has `limit`. The guard uncounts it
    /// when dropped.
    pub fn connect(
        self: &Arc<Self>,
        tenant: &str,
        user: &str,
        limit: usize,
    ) -> Result<PresenceGuard, TooMany> {
        let first = {
            let mut tenants = self.tenants.lock().expect("presence lock poisoned");
            let entry = tenants.entry(tenant.to_string()).or_default();
            let count = entry.users.entry(user.to_string()).or_default();
            if count.connections >= limit {
                if !count.limit_logged {
                    count.limit_logged = true;
                    tracing::warn!(user.id = %user, tenant.id = %tenant, limit, "connection limit reached; rejecting more");
                }
                return Err(TooMany(limit));
            }
            count.connections += 1;
            entry.connections += 1;
            count.connections == 1
        };
        if first {
            self.announce_change(tenant, user, names::USER_ONLINE);
        }
        Ok(PresenceGuard { presence: Arc::clone(self), tenant: tenant.into(), user: user.into() })
    }

    /// Returns the counts for one tenant, or for all tenants when `tenant` is `None`.
    pub fn counts(&self, tenant: Option<&str>) -> Counts {
        let tenants = self.tenants.lock().expect("presence lock poisoned");
        let sum = |t: &TenantPresence| Counts { users: t.users.len(), connections: t.connections };
        match tenant {
            Some(tenant) => tenants.get(tenant).map(sum).unwrap_or_default(),
            None => tenants.values().map(sum).fold(Counts::default(), |a, b| Counts {
                users: a.users + b.users,
                connections: a.connections + b.connections,
            }),
        }
    }

    /// Returns how many connections one user has.
    pub fn user_connections(&self, tenant: &str, user: &str) -> usize {
        let tenants = self.tenants.lock().expect("presence lock poisoned");
        tenants.get(tenant).and_then(|t| t.users.get(user)).map_or(0, |c| c.connections)
    }

    fn disconnect(&self, tenant: &str, user: &str) {
        let last = {
            let mut tenants = self.tenants.lock().expect("presence lock poisoned");
            let Some(entry) = tenants.get_mut(tenant) else { return };
            entry.connections -= 1;
            let last = match entry.users.get_mut(user) {
                Some(count) if count.connections > 1 => {
                    count.connections -= 1;
                    count.limit_logged = false;
                    false
                }
                Some(_) => {
                    entry.users.remove(user);
                    true
                }
                None => false,
            };
            if entry.connections == 0 {
                tenants.remove(tenant);
            }
            last
        };
        if last {
            self.announce_change(tenant, user, names::USER_OFFLINE);
        }
    }

    fn announce_change(&self, tenant: &str, user: &str, name: &str) {
        if self.announce {
            let room = Room::Tenant { tenant: tenant.into() }.key();
            // Presence changes are not stored: they describe now, and a resuming client
            // asks `/v1/presence` instead of replaying them.
            self.hub.dispatch(Event::new(room, None, name, payload::presence(user)));
        }
    }
}

/// A user already has the maximum number of connections.
#[derive(Debug, PartialEq, Eq)]
pub struct TooMany(pub usize);

/// Keeps one connection counted; dropping it uncounts the connection.
pub struct PresenceGuard {
    presence: Arc<Presence>,
    tenant: String,
    user: String,
}

impl Drop for PresenceGuard {
    fn drop(&mut self) {
        self.presence.disconnect(&self.tenant, &self.user);
    }
}
