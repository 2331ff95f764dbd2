//! The Redis broker: pub/sub channels per room for fan-out, and hashes per node for
//! cluster-wide presence.
//!
//! A node subscribes only to the channels of rooms it has connections for, so a publish costs
//! nothing on nodes without subscribers. Events are delivered locally at once and published
//! for the other nodes, which skip messages they sent themselves. When Redis goes away,
//! local delivery goes on. After the subscription comes back, every local connection
//! catches its rooms up from the store, because pub/sub kept nothing from the outage.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::{aio::ConnectionManager, AsyncCommands, Script};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Broker, BrokerError};
use crate::{
    events::{payload, Event, Room, RoomKey},
    hub::{Counts, Hub, Presence, PresenceChange, RoomChange},
};

/// Maximum wait for one Redis command before the broker counts as down.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Events that may wait for Redis; past this, events are dropped and a catch-up requested.
const OUTBOX_CAPACITY: usize = 10_000;
/// Events sent to Redis in one pipeline at most.
const PUBLISH_BATCH: usize = 256;
/// Reconnect delays grow from the first to the last value.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// Settings of the Redis broker.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// Prefix of every key and channel, so several deployments can share one Redis.
    pub prefix: String,
    /// This node's random id.
    pub node: String,
    /// How long a node's presence outlives its last heartbeat. A node that dies without
    /// saying goodbye drops out of presence within this time plus a third of it.
    pub node_ttl: Duration,
    pub shutdown: CancellationToken,
}

/// An event as it travels between nodes.
#[derive(Serialize, Deserialize)]
struct Wire {
    /// The publishing node, so it can skip its own messages.
    origin: String,
    room: String,
    seq: Option<i64>,
    name: String,
    data: String,
}

pub struct RedisBroker {
    settings: RedisSettings,
    connection: ConnectionManager,
    hub: Arc<Hub>,
    /// False while the subscriber connection is down.
    subscribed: Arc<AtomicBool>,
    /// Committed events waiting for the publisher task.
    outbox: mpsc::Sender<Arc<Event>>,
    /// Set when events never reached Redis, so the next batch that does requests a catch-up
    /// on every node.
    missed: AtomicBool,
    /// Set when this node's connection hash may be wrong (at start, after a failed update),
    /// so the next heartbeat rewrites it from local counts.
    presence_dirty: AtomicBool,
    /// Adds `ARGV[3]` to this node's count for field `ARGV[2]`, renews the hash's expiry to
    /// `ARGV[5]` ms, then returns the user's total over live nodes. One script, so two nodes
    /// never both see the same transition.
    presence_script: Script,
}

impl RedisBroker {
    /// Connects, then starts the subscriber, presence and heartbeat tasks.
    pub async fn connect(
        url: &str,
        settings: RedisSettings,
        hub: Arc<Hub>,
        presence: Arc<Presence>,
    ) -> Result<Arc<Self>, String> {
        let client = redis::Client::open(url).map_err(|e| format!("NOTIFY_BROKER_URL: {e}"))?;
        let connection = tokio::time::timeout(COMMAND_TIMEOUT * 5, ConnectionManager::new(client.clone()))
            .await
            .map_err(|_| "NOTIFY_BROKER_URL: timed out connecting to Redis".to_string())?
            .map_err(|e| format!("NOTIFY_BROKER_URL: cannot connect to Redis: {e}"))?;
        let (outbox, outbox_rx) = mpsc::channel(OUTBOX_CAPACITY);
        let broker = Arc::new(RedisBroker {
            settings,
            connection,
            hub: Arc::clone(&hub),
            subscribed: Arc::new(AtomicBool::new(false)),
            outbox,
            missed: AtomicBool::new(false),
            presence_dirty: AtomicBool::new(true),
            presence_script: Script::new(PRESENCE_SCRIPT),
        });

        tokio::spawn(publisher(Arc::clone(&broker), outbox_rx));
        let (rooms_tx, rooms_rx) = mpsc::unbounded_channel();
        hub.set_watcher(rooms_tx);
        tokio::spawn(subscriber(client, Arc::clone(&broker), rooms_rx));

        let (changes_tx, changes_rx) = mpsc::unbounded_channel();
        presence.set_mirror(changes_tx);
        tokio::spawn(presence_writer(Arc::clone(&broker), Arc::clone(&presence), changes_rx));
        tokio::spawn(heartbeat(Arc::clone(&broker), presence));
        Ok(broker)
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.settings.prefix)
    }

    fn channel(&self, room: &RoomKey) -> String {
        self.key(&format!("room:{room}"))
    }

    /// Runs one Redis command with the command timeout.
    async fn run<T: redis::FromRedisValue>(&self, command: redis::Cmd) -> Result<T, BrokerError> {
        let mut connection = self.connection.clone();
        match tokio::time::timeout(COMMAND_TIMEOUT, command.query_async(&mut connection)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(BrokerError::Unavailable(e.to_string())),
            Err(_) => Err(BrokerError::Unavailable("Redis command timed out".into())),
        }
    }

    /// Fails at once while the subscriber has found Redis down, rather than after a timeout.
    fn check_subscribed(&self) -> Result<(), BrokerError> {
        if self.subscribed.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(BrokerError::Unavailable("Redis is unreachable; reconnecting".into()))
        }
    }

    /// Returns the nodes whose heartbeat key still exists.
    async fn live_nodes(&self) -> Result<Vec<String>, BrokerError> {
        let nodes: Vec<String> = self.run(redis::cmd("SMEMBERS").arg(self.key("nodes")).clone()).await?;
        let mut live = Vec::with_capacity(nodes.len());
        for node in nodes {
            let alive: bool =
                self.run(redis::cmd("EXISTS").arg(self.key(&format!("node:{node}"))).clone()).await?;
            if alive {
                live.push(node);
            }
        }
        Ok(live)
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, events: &[Arc<Event>]) -> Result<(), BrokerError> {
        for event in events {
            self.hub.dispatch(Arc::clone(event));
        }
        // The request does not wait for Redis: the events are committed and delivered here,
        // and the publisher task sends them on in order.
        for event in events {
            if self.outbox.try_send(Arc::clone(event)).is_err() {
                // A full queue means Redis has been slow or down for a while. Dropping is safe,
                // because the next batch that gets through requests a catch-up on every node.
                self.missed.store(true, Ordering::Relaxed);
                return Err(BrokerError::Unavailable("the queue to Redis is full".into()));
            }
        }
        Ok(())
    }

    async fn ready(&self) -> Result<(), BrokerError> {
        self.check_subscribed()?;
        let _: String = self.run(redis::cmd("PING")).await?;
        Ok(())
    }

    async fn presence_counts(&self, tenant: Option<&str>) -> Result<Option<Counts>, BrokerError> {
        self.check_subscribed()?;
        let prefix = tenant.map(|t| user_field(t, ""));
        let mut users = std::collections::HashSet::new();
        let mut connections = 0usize;
        for node in self.live_nodes().await? {
            let counts: Vec<(String, i64)> =
                self.run(redis::cmd("HGETALL").arg(self.key(&format!("conns:{node}"))).clone()).await?;
            for (field, count) in counts {
                if count > 0 && prefix.as_ref().is_none_or(|p| field.starts_with(p.as_str())) {
                    connections += count as usize;
                    users.insert(field);
                }
            }
        }
        Ok(Some(Counts { users: users.len(), connections }))
    }

    async fn presence_of(&self, tenant: &str, user: &str) -> Result<Option<usize>, BrokerError> {
        self.check_subscribed()?;
        let field = user_field(tenant, user);
        let mut total = 0i64;
        for node in self.live_nodes().await? {
            let count: Option<i64> = self
                .run(redis::cmd("HGET").arg(self.key(&format!("conns:{node}"))).arg(&field).clone())
                .await?;
            total += count.unwrap_or(0).max(0);
        }
        Ok(Some(total as usize))
    }

    async fn close(&self) {
        let node = &self.settings.node;
        let mut command = redis::pipe();
        command.del(self.key(&format!("node:{node}"))).ignore();
        command.del(self.key(&format!("conns:{node}"))).ignore();
        command.srem(self.key("nodes"), node).ignore();
        let mut connection = self.connection.clone();
        let _ = tokio::time::timeout(COMMAND_TIMEOUT, command.query_async::<()>(&mut connection)).await;
    }
}

/// Returns the field of a user in the per-node connection hashes. It is the user's room key, which
/// percent-encodes both parts, so a tenant prefix cannot match another tenant.
/// With an empty `user` it is the prefix every user of the tenant shares.
fn user_field(tenant: &str, user: &str) -> String {
    Room::User { tenant: tenant.into(), user: user.into() }.key().to_string()
}

const PRESENCE_SCRIPT: &str = r"
local prefix, node, field, delta = ARGV[1], ARGV[4], ARGV[2], tonumber(ARGV[3])
local mine = redis.call('HINCRBY', prefix .. ':conns:' .. node, field, delta)
if mine <= 0 then redis.call('HDEL', prefix .. ':conns:' .. node, field) end
redis.call('PEXPIRE', prefix .. ':conns:' .. node, ARGV[5])
local total = 0
for _, n in ipairs(redis.call('SMEMBERS', prefix .. ':nodes')) do
  if redis.call('EXISTS', prefix .. ':node:' .. n) == 1 then
    total = total + tonumber(redis.call('HGET', prefix .. ':conns:' .. n, field) or '0')
  end
end
return total
";

/// Sends queued events to Redis in order, in batches. A batch that fails is dropped and the
/// next one that gets through requests a catch-up from the store on every node.
async fn publisher(broker: Arc<RedisBroker>, mut outbox: mpsc::Receiver<Arc<Event>>) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    let mut down = false;
    while outbox.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        let mut pipe = redis::pipe();
        for event in batch.drain(..) {
            let wire = Wire {
                origin: broker.settings.node.clone(),
                room: event.room.to_string(),
                seq: event.seq,
                name: event.name.clone(),
                data: event.data.clone(),
            };
            let text = serde_json::to_string(&wire).expect("wire event serializes");
            pipe.publish(broker.channel(&event.room), text).ignore();
        }
        let catch_up = broker.missed.load(Ordering::Relaxed);
        if catch_up {
            pipe.publish(broker.key("catch-up"), &broker.settings.node).ignore();
        }
        let mut connection = broker.connection.clone();
        match tokio::time::timeout(COMMAND_TIMEOUT, pipe.query_async::<()>(&mut connection)).await {
            Ok(Ok(())) => {
                if catch_up {
                    broker.missed.store(false, Ordering::Relaxed);
                }
                if down {
                    tracing::info!("publishing to Redis works again; other nodes are catching up");
                    down = false;
                }
            }
            outcome => {
                broker.missed.store(true, Ordering::Relaxed);
                if !down {
                    let reason = match outcome {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".into(),
                    };
                    tracing::warn!(%reason, "publishing to Redis failed; other nodes catch up once it is back");
                    down = true;
                }
            }
        }
    }
}

/// Keeps the pub/sub connection: subscribes to the rooms the hub reports, hands remote
/// events to the hub, and reconnects with backoff, asking every connection to catch up after.
async fn subscriber(
    client: redis::Client,
    broker: Arc<RedisBroker>,
    mut rooms: mpsc::UnboundedReceiver<RoomChange>,
) {
    let shutdown = broker.settings.shutdown.clone();
    let mut delay = BACKOFF.0;
    let mut was_down = false;
    // Rooms whose `ready` flag waits for the next successful subscription.
    let mut pending: Vec<tokio::sync::watch::Sender<bool>> = Vec::new();
    loop {
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return,
            connected = tokio::time::timeout(COMMAND_TIMEOUT * 2, client.get_async_pubsub()) => connected,
        };
        let subscribed = match connected {
            Ok(Ok(pubsub)) => {
                let (mut sink, stream) = pubsub.split();
                let mut channels: Vec<String> =
                    broker.hub.room_keys().iter().map(|k| broker.channel(k)).collect();
                channels.push(broker.key("catch-up"));
                // A server that accepts connections but fails commands counts as down too.
                sink.subscribe(&channels).await.ok().map(|()| (sink, stream, channels.len() - 1))
            }
            _ => None,
        };
        let Some((mut sink, mut stream, room_count)) = subscribed else {
            if !was_down {
                tracing::warn!("broker connection lost; serving local connections and retrying");
                was_down = true;
            }
            broker.subscribed.store(false, Ordering::Relaxed);
            // Room changes keep arriving while down. Their rooms are in the hub, so the next
            // subscription covers them and releases their ready flags.
            while let Ok(change) = rooms.try_recv() {
                if let RoomChange::Added(_, ready) = change {
                    pending.push(ready);
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(BACKOFF.1);
            continue;
        };
        for ready in pending.drain(..) {
            let _ = ready.send(true);
        }
        broker.subscribed.store(true, Ordering::Relaxed);
        delay = BACKOFF.0;
        if was_down {
            tracing::info!(
                rooms = room_count,
                "broker reconnected; catching local connections up from the store"
            );
            broker.hub.catch_up_all();
        }

        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                change = rooms.recv() => match change {
                    Some(RoomChange::Added(key, ready)) => {
                        if sink.subscribe(broker.channel(&key)).await.is_err() {
                            pending.push(ready);
                            break;
                        }
                        let _ = ready.send(true);
                    }
                    Some(RoomChange::Removed(key)) => {
                        if sink.unsubscribe(broker.channel(&key)).await.is_err() {
                            break;
                        }
                    }
                    None => return,
                },
                message = stream.next() => {
                    let Some(message) = message else { break };
                    receive(&broker, message);
                }
            }
        }
        tracing::warn!("broker connection lost; serving local connections and retrying");
        was_down = true;
        broker.subscribed.store(false, Ordering::Relaxed);
    }
}

/// Hands one pub/sub message to the hub.
fn receive(broker: &RedisBroker, message: redis::Msg) {
    if message.get_channel_name() == broker.key("catch-up") {
        let origin: String = message.get_payload().unwrap_or_default();
        if origin != broker.settings.node {
            broker.hub.catch_up_all();
        }
        return;
    }
    let Ok(text) = message.get_payload::<String>() else { return };
    let Ok(wire) = serde_json::from_str::<Wire>(&text) else {
        tracing::warn!(channel = message.get_channel_name(), "ignoring a malformed broker message");
        return;
    };
    if wire.origin == broker.settings.node {
        return;
    }
    let event =
        Event { room: RoomKey::from_stored(&wire.room), seq: wire.seq, name: wire.name, data: wire.data };
    broker.hub.dispatch(Arc::new(event));
}

/// Applies local presence changes to this node's hash and announces cluster-wide
/// transitions: a user's first connection anywhere, and the last one.
async fn presence_writer(
    broker: Arc<RedisBroker>,
    presence: Arc<Presence>,
    mut changes: mpsc::UnboundedReceiver<PresenceChange>,
) {
    while let Some(change) = changes.recv().await {
        let field = user_field(&change.tenant, &change.user);
        let mut invocation = broker.presence_script.prepare_invoke();
        invocation
            .arg(&broker.settings.prefix)
            .arg(&field)
            .arg(change.delta)
            .arg(&broker.settings.node)
            .arg(broker.settings.node_ttl.as_millis() as u64);
        let mut connection = broker.connection.clone();
        let total = match tokio::time::timeout(
            COMMAND_TIMEOUT,
            invocation.invoke_async::<i64>(&mut connection),
        )
        .await
        {
            Ok(Ok(total)) => total,
            // The heartbeat rewrites this node's hash from local counts once Redis is back.
            _ => {
                broker.presence_dirty.store(true, Ordering::Relaxed);
                continue;
            }
        };
        let online = change.delta > 0 && total == 1;
        let offline = change.delta < 0 && total == 0;
        if presence.announces() && (online || offline) {
            let name =
                if online { crate::events::names::USER_ONLINE } else { crate::events::names::USER_OFFLINE };
            let room = Room::Tenant { tenant: change.tenant.clone() }.key();
            let event = Event::new(room, None, name, payload::presence(&change.user));
            let _ = broker.publish(&[event]).await;
        }
    }
}

/// Refreshes this node's liveness key, rewrites its connection hash from local counts (which
/// repairs changes lost during an outage), and removes nodes whose key expired.
async fn heartbeat(broker: Arc<RedisBroker>, presence: Arc<Presence>) {
    let settings = broker.settings.clone();
    let mut timer = tokio::time::interval(settings.node_ttl / 3);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = settings.shutdown.cancelled() => return,
            _ = timer.tick() => {}
        }
        let node = &settings.node;
        let conns = broker.key(&format!("conns:{node}"));
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("SET")
            .arg(broker.key(&format!("node:{node}")))
            .arg(1)
            .arg("PX")
            .arg(settings.node_ttl.as_millis() as u64)
            .ignore();
        pipe.sadd(broker.key("nodes"), node).ignore();
        // Both expire unless some node keeps refreshing them, so a cluster killed whole
        // leaves nothing behind in Redis.
        let ttl_ms = settings.node_ttl.as_millis() as u64;
        pipe.cmd("PEXPIRE").arg(broker.key("nodes")).arg(ttl_ms * 2).ignore();
        let rewrite = broker.presence_dirty.swap(false, Ordering::Relaxed);
        if rewrite {
            pipe.del(&conns).ignore();
            let snapshot = presence.snapshot();
            if !snapshot.is_empty() {
                let fields: Vec<(String, usize)> =
                    snapshot.iter().map(|(tenant, user, count)| (user_field(tenant, user), *count)).collect();
                pipe.hset_multiple(&conns, &fields).ignore();
            }
        }
        pipe.cmd("PEXPIRE").arg(&conns).arg(ttl_ms).ignore();
        let mut connection = broker.connection.clone();
        let written = tokio::time::timeout(COMMAND_TIMEOUT, pipe.query_async::<()>(&mut connection)).await;
        if !matches!(written, Ok(Ok(()))) {
            broker.presence_dirty.store(true, Ordering::Relaxed);
            continue;
        }
        forget_dead_nodes(&broker).await;
    }
}

async fn forget_dead_nodes(broker: &RedisBroker) {
    let Ok(nodes) = broker.run::<Vec<String>>(redis::cmd("SMEMBERS").arg(broker.key("nodes")).clone()).await
    else {
        return;
    };
    let live = broker.live_nodes().await.unwrap_or_default();
    for node in nodes.iter().filter(|n| !live.contains(n)) {
        let mut connection = broker.connection.clone();
        let _: Result<(), _> = connection.del(broker.key(&format!("conns:{node}"))).await;
        let _: Result<(), _> = connection.srem(broker.key("nodes"), node).await;
        tracing::info!(node = %node, "forgot a node whose heartbeat expired");
    }
}
