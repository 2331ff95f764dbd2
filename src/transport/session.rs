//! The state SSE and WebSocket connections share: identity, room memberships, position and
//! presence of one open connection.

use std::{
    sync::{atomic::AtomicI64, atomic::Ordering, Arc},
    time::Duration,
};

use serde_json::{json, Value};

use crate::{
    app::AppState,
    auth::Identity,
    events::{payload, Cursor, Event, Room},
    hub::{next_event, Lagged, PresenceGuard, Subscription},
    metrics::{bump, Metrics},
    validate,
};

/// The transport a connection uses, as reported in `authenticated`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Sse,
    WebSocket,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::WebSocket => "websocket",
        }
    }
}

/// An event ready to write, with the connection's cursor as its id when it is resumable.
pub struct Delivery {
    pub event: Arc<Event>,
    pub id: Option<String>,
}

/// A request a client may not make on this connection, sent back as an `error` event.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejection {
    pub code: &'static str,
    pub message: String,
}

impl Rejection {
    pub fn payload(&self) -> Value {
        payload::error(self.code, &self.message)
    }
}

/// One open connection.
pub struct Session {
    pub identity: Identity,
    pub connection_id: String,
    pub transport: Transport,
    /// Index 0 is the user room and index 1 the tenant room; named rooms follow.
    subscriptions: Vec<Subscription>,
    next_poll: usize,
    cursor: Cursor,
    max_rooms: usize,
    pub metrics: Arc<Metrics>,
    _presence: PresenceGuard,
}

impl Session {
    /// Opens a connection: joins the user's room and tenant room and counts it as present.
    pub fn open(state: &AppState, identity: Identity, transport: Transport) -> Self {
        let tenant = identity.tenant_key().to_string();
        let user_room = Room::User { tenant: tenant.clone(), user: identity.user_id.clone() };
        let subscriptions = vec![
            state.hub.subscribe(user_room),
            state.hub.subscribe(Room::Tenant { tenant: tenant.clone() }),
        ];
        let presence = state.presence.connect(&tenant, &identity.user_id);
        let session = Session {
            connection_id: state.next_connection_id(),
            identity,
            transport,
            subscriptions,
            next_poll: 0,
            cursor: Cursor::default(),
            max_rooms: state.config.max_rooms_per_connection,
            metrics: Arc::clone(&state.metrics),
            _presence: presence,
        };
        session.gauge().fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            user.id = %session.identity.user_id,
            conn.id = %session.connection_id,
            transport = transport.as_str(),
            "connection opened"
        );
        session
    }

    /// Returns the payload of the `authenticated` event.
    pub fn authenticated_payload(&self) -> Value {
        json!({
            "success": true,
            "userId": self.identity.user_id,
            "email": self.identity.email,
            "tenantId": self.identity.tenant,
            "connectionId": self.connection_id,
            "transport": self.transport.as_str(),
        })
    }

    /// Joins a named room that the token grants. The user's own `user:` and `tenant:` rooms
    /// are joined already, so naming them again succeeds without change.
    pub fn join(&mut self, state: &AppState, name: &str) -> Result<(), Rejection> {
        if let Err(problem) = validate::identifier(name) {
            return Err(Rejection { code: "invalid_room", message: format!("room name {problem}") });
        }
        if self.is_own_builtin_room(name) || self.named_room_index(name).is_some() {
            return Ok(());
        }
        if name.starts_with("user:") || name.starts_with("tenant:") {
            return Err(Rejection {
                code: "room_forbidden",
                message: format!("room `{name}` belongs to another user or tenant"),
            });
        }
        if !self.identity.rooms.iter().any(|granted| granted == name) {
            return Err(Rejection {
                code: "room_forbidden",
                message: format!("room `{name}` is not granted by this token's rooms claim"),
            });
        }
        if self.subscriptions.len() - 2 >= self.max_rooms {
            return Err(Rejection {
                code: "room_limit",
                message: format!("a connection may join at most {} rooms", self.max_rooms),
            });
        }
        let room = Room::Named { tenant: self.identity.tenant_key().into(), name: name.into() };
        self.subscriptions.push(state.hub.subscribe(room));
        Ok(())
    }

    /// Leaves a named room. Returns false when the connection was not in it.
    pub fn leave(&mut self, name: &str) -> bool {
        match self.named_room_index(name) {
            Some(index) => {
                self.subscriptions.remove(index);
                self.next_poll = 0;
                true
            }
            None => false,
        }
    }

    /// Waits for the next event for this connection. Events it already has (by position)
    /// are dropped, so overlapping sources never deliver one event twice.
    pub async fn next(&mut self) -> Result<Delivery, Lagged> {
        loop {
            let (index, event) = next_event(&mut self.subscriptions, &mut self.next_poll).await?;
            let Some(seq) = event.seq else {
                bump(&self.metrics.deliveries);
                return Ok(Delivery { event, id: None });
            };
            if self.cursor.advance(&self.subscriptions[index].room, seq) {
                bump(&self.metrics.deliveries);
                return Ok(Delivery { event, id: Some(self.cursor.to_string()) });
            }
        }
    }

    /// Returns how long until the token expires, counting the configured leeway.
    pub fn time_to_expiry(&self, leeway: Duration) -> Duration {
        let now = chrono::Utc::now().timestamp();
        let left = self.identity.expires_at + leeway.as_secs() as i64 - now;
        Duration::from_secs(left.max(0) as u64)
    }

    fn gauge(&self) -> &AtomicI64 {
        match self.transport {
            Transport::Sse => &self.metrics.sse_connections,
            Transport::WebSocket => &self.metrics.ws_connections,
        }
    }

    fn is_own_builtin_room(&self, name: &str) -> bool {
        name.strip_prefix("user:") == Some(self.identity.user_id.as_str())
            || (self.identity.tenant.is_some()
                && name.strip_prefix("tenant:") == self.identity.tenant.as_deref())
    }

    fn named_room_index(&self, name: &str) -> Option<usize> {
        self.subscriptions.iter().position(|s| matches!(&s.room, Room::Named { name: n, .. } if n == name))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.gauge().fetch_sub(1, Ordering::Relaxed);
        tracing::debug!(
            user.id = %self.identity.user_id,
            conn.id = %self.connection_id,
            transport = self.transport.as_str(),
            "connection closed"
        );
    }
}
