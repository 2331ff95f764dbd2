//! The state SSE and WebSocket connections share: identity, room memberships, position and
//! presence of one open connection, and the replay that joins stored events to live ones.
//!
//! Replay never loses an event at the seam: a room is subscribed first, so live events queue
//! in its channel, and only then is the store read after the connection's position. Live
//! events the replay already sent are dropped by position.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc,
    },
    time::Duration,
};

use serde_json::{json, Value};

use crate::{
    app::AppState,
    auth::Identity,
    events::{names, owner_tag, payload, with_timestamp, Cursor, CursorError, Event, Room},
    hub::{next_event, Hub, Lagged, PresenceGuard, Subscription, TooMany, CATCH_UP},
    metrics::{bump, Metrics},
    store::{Store, StoreError},
    validate,
};

/// Events read from the store per query while replaying.
const REPLAY_BATCH: u32 = 500;
/// Maximum wait for the broker to subscribe a new room before replay reads the store.
const BROKER_READY_WAIT: Duration = Duration::from_secs(2);

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

/// The reason a connection could not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0}")]
    Cursor(#[from] CursorError),
    #[error("lastEventId is ahead of the server: {0}")]
    FutureCursor(String),
    #[error("this user already has {} open connections, the maximum", .0 .0)]
    TooMany(TooMany),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The reason a connection must end while reading events.
#[derive(Debug)]
pub enum Interrupted {
    /// The connection fell too far behind live events.
    Lagged,
    /// The store failed during replay; the client should resume later.
    Store(StoreError),
}

/// One open connection.
pub struct Session {
    pub identity: Identity,
    pub connection_id: String,
    pub transport: Transport,
    hub: Arc<Hub>,
    store: Arc<dyn Store>,
    /// Index 0 is the user room and index 1 the tenant room; named rooms follow.
    subscriptions: Vec<Subscription>,
    next_poll: usize,
    /// Positions in every room, including named rooms from a resumed id not joined yet.
    cursor: Cursor,
    /// The positions the connection started from in each room, for a `resume` that
    /// restarts it before anything was delivered.
    start: Cursor,
    /// The user tag every event id ends with.
    owner: String,
    /// Rooms still to replay from the store, with the head each had when it was queued.
    replay_rooms: VecDeque<(Room, i64)>,
    replay_buffer: VecDeque<Delivery>,
    /// Set once an event with an id was delivered; a `resume` is too late after that.
    delivered: bool,
    max_rooms: usize,
    /// Set once a join over the room limit was logged, so a client retrying in a loop
    /// produces one log line.
    room_limit_logged: bool,
    pub metrics: Arc<Metrics>,
    _presence: PresenceGuard,
}

impl Session {
    /// Opens a connection: counts it as present, joins the user's and tenant's rooms, and
    /// queues a replay from `resume` (an event id) or, without one, from the current heads.
    pub async fn open(
        state: &AppState,
        identity: Identity,
        transport: Transport,
        resume: Option<&str>,
    ) -> Result<Self, OpenError> {
        let tenant = identity.tenant_key().to_string();
        let owner = owner_tag(&tenant, &identity.user_id);
        let given = resume.map(|text| Cursor::decode(text, &owner)).transpose()?;
        let presence = state
            .presence
            .connect(&tenant, &identity.user_id, state.config.max_connections_per_user)
            .map_err(OpenError::TooMany)?;

        let rooms = [
            Room::User { tenant: tenant.clone(), user: identity.user_id.clone() },
            Room::Tenant { tenant: tenant.clone() },
        ];
        let heads = state.store.heads(&rooms.iter().map(Room::key).collect::<Vec<_>>()).await?;
        let mut cursor = given.unwrap_or_default();
        for (room, &head) in rooms.iter().zip(&heads) {
            match cursor.position(room) {
                Some(position) if position > head => {
                    return Err(OpenError::FutureCursor(format!(
                        "position {position} but the last event is {head}"
                    )));
                }
                Some(_) => {}
                None => cursor.set(room, head),
            }
        }

        let mut session = Session {
            connection_id: state.next_connection_id(),
            identity,
            transport,
            hub: Arc::clone(&state.hub),
            store: Arc::clone(&state.store),
            subscriptions: Vec::with_capacity(2),
            next_poll: 0,
            start: cursor.clone(),
            cursor,
            owner,
            replay_rooms: VecDeque::new(),
            replay_buffer: VecDeque::new(),
            delivered: false,
            room_limit_logged: false,
            max_rooms: state.config.max_rooms_per_connection,
            metrics: Arc::clone(&state.metrics),
            _presence: presence,
        };
        for (room, head) in rooms.into_iter().zip(heads) {
            let mut subscription = session.hub.subscribe(room.clone());
            subscription.wait_ready(BROKER_READY_WAIT).await;
            session.subscriptions.push(subscription);
            session.replay_rooms.push_back((room, head));
        }
        session.gauge().fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            user.id = %session.identity.user_id,
            conn.id = %session.connection_id,
            transport = transport.as_str(),
            resumed = resume.is_some(),
            "connection opened"
        );
        Ok(session)
    }

    /// Returns the payload of the `authenticated` event. `lastEventId` is the position the
    /// connection starts from, which a client may resume from even before any event arrives.
    pub fn authenticated_payload(&self) -> Value {
        with_timestamp(json!({
            "success": true,
            "userId": self.identity.user_id,
            "email": self.identity.email,
            "tenantId": self.identity.tenant,
            "connectionId": self.connection_id,
            "transport": self.transport.as_str(),
            "lastEventId": self.event_id(),
        }))
    }

    /// Returns the connection's current position as an event id.
    pub fn event_id(&self) -> String {
        self.cursor.encode(&self.owner)
    }

    /// Joins a named room that the token grants, replaying it from the position a resumed
    /// id gave, or from now. The user's own `user:` and `tenant:` rooms are joined already,
    /// so naming them again succeeds without change.
    pub async fn join(&mut self, name: &str) -> Result<(), Rejection> {
        let Some(room) = self.authorize_join(name)? else {
            return Ok(());
        };

        let head = match self.store.heads(&[room.key()]).await {
            Ok(heads) => heads[0],
            Err(error) => {
                tracing::warn!(%error, conn.id = %self.connection_id, "failed to read room head");
                return Err(Rejection {
                    code: "unavailable",
                    message: "the store is unavailable; retry".into(),
                });
            }
        };
        match self.cursor.position(&room) {
            Some(position) if position > head => {
                self.cursor.set(&room, head);
                return Err(Rejection {
                    code: "invalid_last_event_id",
                    message: format!("the resumed position in room `{name}` is ahead of the server"),
                });
            }
            Some(_) => {}
            None => self.cursor.set(&room, head),
        }
        if let Some(position) = self.cursor.position(&room) {
            self.start.set(&room, position);
        }

        let mut subscription = self.hub.subscribe(room.clone());
        subscription.wait_ready(BROKER_READY_WAIT).await;
        self.subscriptions.push(subscription);
        self.replay_rooms.push_back((room, head));
        Ok(())
    }

    /// Checks that this connection may join `name`. Returns the room to join, or `None` when
    /// the connection is in it already.
    fn authorize_join(&mut self, name: &str) -> Result<Option<Room>, Rejection> {
        if let Err(problem) = validate::identifier(name) {
            return Err(Rejection { code: "invalid_room", message: format!("room name {problem}") });
        }
        if self.is_own_builtin_room(name) || self.named_room_index(name).is_some() {
            return Ok(None);
        }
        if name.starts_with("user:") || name.starts_with("tenant:") {
            let message = format!("room `{name}` belongs to another user or tenant");
            return Err(Rejection { code: "room_forbidden", message });
        }
        if !self.identity.rooms.iter().any(|granted| granted == name) {
            let message = format!("room `{name}` is not granted by this token's rooms claim");
            return Err(Rejection { code: "room_forbidden", message });
        }
        if self.subscriptions.len() - 2 >= self.max_rooms {
            if !self.room_limit_logged {
                self.room_limit_logged = true;
                tracing::info!(user.id = %self.identity.user_id, conn.id = %self.connection_id, limit = self.max_rooms, "room limit reached");
            }
            let message = format!("a connection may join at most {} rooms", self.max_rooms);
            return Err(Rejection { code: "room_limit", message });
        }
        Ok(Some(Room::Named { tenant: self.identity.tenant_key().into(), name: name.into() }))
    }

    /// Leaves a named room and drops its position. Returns false when the connection was
    /// not in it.
    pub fn leave(&mut self, name: &str) -> bool {
        match self.named_room_index(name) {
            Some(index) => {
                let subscription = self.subscriptions.remove(index);
                self.cursor.forget(&subscription.room);
                self.start.forget(&subscription.room);
                self.replay_rooms.retain(|(room, _)| *room != subscription.room);
                self.next_poll = 0;
                true
            }
            None => false,
        }
    }

    /// Restarts the connection from an event id, as if it had connected with it. Only
    /// possible before the first event was delivered, because a client cannot tell which
    /// of its later events this connection already sent.
    pub async fn resume(&mut self, text: &str) -> Result<(), Rejection> {
        let invalid = |message: String| Rejection { code: "invalid_last_event_id", message };
        if self.delivered {
            return Err(Rejection {
                code: "resume_too_late",
                message: "events were delivered already; reconnect with lastEventId instead".into(),
            });
        }
        let given = Cursor::decode(text, &self.owner).map_err(|e| invalid(e.to_string()))?;
        let rooms: Vec<Room> = self.subscriptions.iter().map(|s| s.room.clone()).collect();
        let heads =
            self.store.heads(&rooms.iter().map(Room::key).collect::<Vec<_>>()).await.map_err(|error| {
                tracing::warn!(%error, conn.id = %self.connection_id, "failed to read room heads");
                Rejection { code: "unavailable", message: "the store is unavailable; retry".into() }
            })?;
        for (room, &head) in rooms.iter().zip(&heads) {
            if given.position(room).is_some_and(|position| position > head) {
                return Err(invalid("lastEventId is ahead of the server".into()));
            }
        }
        // Nothing was delivered, so restarting from the start positions loses nothing that
        // the cleared buffer held.
        self.cursor = self.start.clone();
        self.replay_buffer.clear();
        self.replay_rooms.clear();
        for (room, head) in rooms.into_iter().zip(heads) {
            if let Some(position) = given.position(&room) {
                self.cursor.set(&room, position);
            }
            self.replay_rooms.push_back((room, head));
        }
        Ok(())
    }

    /// Waits for the next event for this connection: first the stored events after the
    /// connection's position, then live events. Events the connection already has (by
    /// position) are dropped, so replay and live never deliver one event twice.
    pub async fn next(&mut self) -> Result<Delivery, Interrupted> {
        loop {
            if let Some(delivery) = self.replay_buffer.pop_front() {
                self.delivered |= delivery.id.is_some();
                return Ok(delivery);
            }
            if !self.replay_rooms.is_empty() {
                self.fill_replay().await.map_err(Interrupted::Store)?;
                continue;
            }
            let (index, event) = next_event(&mut self.subscriptions, &mut self.next_poll)
                .await
                .map_err(|Lagged| Interrupted::Lagged)?;
            let room = &self.subscriptions[index].room;
            if event.name == CATCH_UP {
                let position = self.cursor.position(room).unwrap_or(0);
                self.replay_rooms.push_back((room.clone(), position));
                continue;
            }
            let Some(seq) = event.seq else {
                if self.is_own_presence(&event) {
                    continue;
                }
                bump(&self.metrics.deliveries);
                return Ok(Delivery { event, id: None });
            };
            // Positions in a room have no holes, so a jump means earlier events are still on
            // their way: publishers of concurrent commits, or nodes, may hand them over out of
            // order. They are all committed already, so the store fills the gap, this event
            // included, and the late live copies are dropped as duplicates.
            if self.cursor.position(room).is_some_and(|position| seq > position + 1) {
                bump(&self.metrics.gaps);
                self.replay_rooms.push_back((room.clone(), seq));
                continue;
            }
            if self.cursor.advance(room, seq) {
                bump(&self.metrics.deliveries);
                self.delivered = true;
                return Ok(Delivery { event, id: Some(self.event_id()) });
            }
        }
    }

    /// Reads the next batch of stored events for the first room still replaying.
    async fn fill_replay(&mut self) -> Result<(), StoreError> {
        let Some((room, head)) = self.replay_rooms.front().cloned() else {
            return Ok(());
        };
        let position = self.cursor.position(&room).unwrap_or(0);
        let events = self.store.events_after(&room.key(), position, REPLAY_BATCH).await?;
        let first = events.first().and_then(|e| e.seq);
        let pruned = match first {
            Some(first) => first > position + 1,
            None => position < head,
        };
        if pruned {
            // Events after the client's position are gone: it must refetch state over REST.
            // What is still retained follows, so room events that REST cannot refetch arrive.
            bump(&self.metrics.resyncs);
            let resync = json!({ "reason": "events_pruned", "room": label(&room) });
            let resync = Event::new(room.key(), None, names::RESYNC, resync);
            self.replay_buffer.push_back(Delivery { event: resync, id: None });
            let skip_to = first.map_or(head, |first| first - 1);
            self.cursor.set(&room, skip_to.max(position));
        }
        if events.len() < REPLAY_BATCH as usize {
            self.replay_rooms.pop_front();
        }
        for event in events {
            let seq = event.seq.unwrap_or_default();
            if self.cursor.advance(&room, seq) {
                bump(&self.metrics.replayed);
                self.replay_buffer.push_back(Delivery { event, id: Some(self.event_id()) });
            }
        }
        Ok(())
    }

    /// Returns how long until the token expires, counting the configured leeway.
    pub fn time_to_expiry(&self, leeway: Duration) -> Duration {
        let now = chrono::Utc::now().timestamp();
        let left = self.identity.expires_at + leeway.as_secs() as i64 - now;
        Duration::from_secs(left.max(0) as u64)
    }

    /// Returns true for `user:online` or `user:offline` about this connection's own user,
    /// which carries no news for the user. Presence events are rare, so parsing them costs little.
    fn is_own_presence(&self, event: &Event) -> bool {
        if event.name != names::USER_ONLINE && event.name != names::USER_OFFLINE {
            return false;
        }
        let user = serde_json::from_str::<Value>(&event.data)
            .ok()
            .and_then(|v| v["userId"].as_str().map(String::from));
        user.as_deref() == Some(self.identity.user_id.as_str())
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

/// Names a room in a `resync` payload the way clients know it.
fn label(room: &Room) -> String {
    match room {
        Room::User { user, .. } => format!("user:{user}"),
        Room::Tenant { tenant, .. } => format!("tenant:{tenant}"),
        Room::Named { name, .. } => name.clone(),
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

#[cfg(test)]
mod tests {
    use clap::Parser;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::{auth::Verifier, broker::MemoryBroker, config::Config, store::NewNotification};

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        config: Config,
    }

    async fn state(dir: &tempfile::TempDir) -> AppState {
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let config = Flags::parse_from(["x", "--database-url", &url]).config.resolve().unwrap();
        let store = crate::store::open(&url).await.unwrap();
        let hub = Hub::new(16);
        let broker = Arc::new(MemoryBroker::new(Arc::clone(&hub)));
        let presence = crate::hub::Presence::new(Arc::clone(&hub), true);
        let verifier = Verifier::from_config(&config).unwrap();
        let node_id = "test".to_string();
        let shutdown = CancellationToken::new();
        AppState::new(crate::app::Parts { config, verifier, store, broker, hub, presence, node_id, shutdown })
    }

    fn alice() -> Identity {
        Identity {
            user_id: "alice".into(),
            tenant: None,
            email: None,
            role: None,
            rooms: vec![],
            expires_at: i64::MAX / 2,
            is_publisher: false,
        }
    }

    #[tokio::test]
    async fn live_gap_filled_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(&dir).await;
        let mut session = Session::open(&state, alice(), Transport::Sse, None).await.unwrap();
        // Finish the initial replay, so what follows arrives on the live path.
        let idle = tokio::time::timeout(Duration::from_millis(100), session.next()).await;
        assert!(idle.is_err(), "nothing to deliver yet");

        // Two commits (user positions 1 to 4) handed to the hub newest first, as two
        // publishing tasks racing each other may do.
        let content =
            NewNotification { title: "t".into(), message: "m".into(), kind: "k".into(), data: None };
        let users = ["alice".to_string()];
        let first = state.store.create_notifications("", &users, &content).await.unwrap();
        let second = state.store.create_notifications("", &users, &content).await.unwrap();
        for event in second.events.iter().chain(&first.events) {
            state.hub.dispatch(Arc::clone(event));
        }

        let mut seqs = Vec::new();
        while seqs.len() < 4 {
            let delivery =
                tokio::time::timeout(Duration::from_secs(5), session.next()).await.unwrap().unwrap();
            if let Some(seq) = delivery.event.seq {
                seqs.push(seq);
            }
        }
        assert_eq!(seqs, vec![1, 2, 3, 4]);
        assert!(state.metrics.gaps.load(Ordering::Relaxed) >= 1, "the gap was noticed");
    }
}
