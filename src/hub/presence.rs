//! Local presence: how many connections each user has on this node. A cluster broker
//! mirrors the changes into shared state and announces them cluster-wide instead.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
};

use tokio::sync::mpsc;

use super::Hub;
use crate::events::{names, payload, Event, Room};

/// Connection counts per tenant and user. A user is online while the count is above zero.
pub struct Presence {
    tenants: Mutex<HashMap<String, TenantPresence>>,
    hub: Arc<Hub>,
    /// Whether `user:online` and `user:offline` go to the user's tenant room.
    announce: bool,
    /// Set by a cluster broker: changes go there, and it announces cluster-wide transitions.
    mirror: OnceLock<mpsc::UnboundedSender<PresenceChange>>,
}

/// One connection more (`delta` 1) or fewer (`delta` -1) for a user on this node.
#[derive(Debug, Clone)]
pub struct PresenceChange {
    pub tenant: String,
    pub user: String,
    pub delta: i64,
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
        Arc::new(Presence { tenants: Mutex::new(HashMap::new()), hub, announce, mirror: OnceLock::new() })
    }

    /// Sends every later change to `mirror` instead of announcing local transitions.
    pub fn set_mirror(&self, mirror: mpsc::UnboundedSender<PresenceChange>) -> bool {
        self.mirror.set(mirror).is_ok()
    }

    /// Returns whether this node announces presence changes at all.
    pub fn announces(&self) -> bool {
        self.announce
    }

    /// Returns every user with connections here, with their counts.
    pub fn snapshot(&self) -> Vec<(String, String, usize)> {
        let tenants = self.tenants.lock().expect("presence lock poisoned");
        tenants
            .iter()
            .flat_map(|(tenant, t)| {
                t.users.iter().map(move |(user, c)| (tenant.clone(), user.clone(), c.connections))
            })
            .collect()
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
        self.changed(tenant, user, 1, first);
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
        self.changed(tenant, user, -1, last);
    }

    /// Mirrors a change to the cluster broker, or announces a local transition without one.
    fn changed(&self, tenant: &str, user: &str, delta: i64, transition: bool) {
        match self.mirror.get() {
            Some(mirror) => {
                let _ = mirror.send(PresenceChange { tenant: tenant.into(), user: user.into(), delta });
            }
            None if transition => {
                let name = if delta > 0 { names::USER_ONLINE } else { names::USER_OFFLINE };
                self.announce_change(tenant, user, name);
            }
            None => {}
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
