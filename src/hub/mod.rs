//! The channel registry: one async-broadcast channel per room that has local connections.
//!
//! A room's entry appears with its first subscriber and goes away with its last, so memory
//! follows connected users, not users ever seen. Publishing never waits: each channel runs in
//! overflow mode, and a receiver that falls more than the channel's capacity behind gets
//! [`Lagged`] and must be closed by its connection (it resumes from its last event id).

mod heartbeat;
mod presence;

pub use heartbeat::Heartbeat;
pub use presence::{Counts, Presence, PresenceChange, PresenceGuard, TooMany};

use std::{
    collections::HashMap,
    future::poll_fn,
    pin::Pin,
    sync::{Arc, Mutex, OnceLock},
    task::Poll,
};

use async_broadcast::{InactiveReceiver, Receiver, RecvError, Sender, TrySendError};
use tokio::sync::{mpsc, watch};

use crate::events::{Event, Room, RoomKey};

/// Name of the internal event that makes connections catch a room up from the store. It
/// never reaches a client.
pub const CATCH_UP: &str = "__catch_up";

/// The registry of rooms with local subscribers.
pub struct Hub {
    rooms: Mutex<HashMap<RoomKey, Channel>>,
    /// Events one receiver may fall behind before it lags.
    capacity: usize,
    /// Told when a room gains its first or loses its last local subscriber, so a broker
    /// can subscribe this node to exactly the rooms it serves.
    watcher: OnceLock<mpsc::UnboundedSender<RoomChange>>,
}

struct Channel {
    sender: Sender<Arc<Event>>,
    /// Keeps the channel open between the last receiver leaving and the entry's removal.
    _keep_open: InactiveReceiver<Arc<Event>>,
    /// True once the broker delivers this room's remote events to this node.
    ready: watch::Receiver<bool>,
}

/// A change in the set of rooms this node has subscribers for.
pub enum RoomChange {
    /// The first local subscriber arrived; send `true` once remote events flow.
    Added(RoomKey, watch::Sender<bool>),
    /// The last local subscriber left.
    Removed(RoomKey),
}

/// A connection fell too far behind and missed events; it must close and resume.
#[derive(Debug, PartialEq, Eq)]
pub struct Lagged;

impl Hub {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Hub { rooms: Mutex::new(HashMap::new()), capacity, watcher: OnceLock::new() })
    }

    /// Reports room changes to `watcher` from now on; set it before the first subscriber.
    /// Returns false when a watcher was set before.
    pub fn set_watcher(&self, watcher: mpsc::UnboundedSender<RoomChange>) -> bool {
        self.watcher.set(watcher).is_ok()
    }

    /// Subscribes to a room, creating its channel when this is the first local subscriber.
    pub fn subscribe(self: &Arc<Self>, room: Room) -> Subscription {
        let key = room.key();
        let mut rooms = self.rooms.lock().expect("hub lock poisoned");
        let channel = rooms.entry(key.clone()).or_insert_with(|| {
            let (mut sender, receiver) = async_broadcast::broadcast(self.capacity);
            sender.set_overflow(true);
            sender.set_await_active(false);
            let (ready_tx, ready) = watch::channel(false);
            match self.watcher.get() {
                Some(watcher) => {
                    let _ = watcher.send(RoomChange::Added(key.clone(), ready_tx));
                }
                // Without a broker every event is local, so the room is ready at once.
                None => {
                    let _ = ready_tx.send(true);
                }
            }
            Channel { sender, _keep_open: receiver.deactivate(), ready }
        });
        let receiver = channel.sender.new_receiver();
        let ready = channel.ready.clone();
        Subscription { hub: Arc::clone(self), room, key, receiver: Some(receiver), ready }
    }

    /// Returns the keys of every room with local subscribers.
    pub fn room_keys(&self) -> Vec<RoomKey> {
        self.rooms.lock().expect("hub lock poisoned").keys().cloned().collect()
    }

    /// Tells every local connection to catch each of its rooms up from the store, after the
    /// broker may have missed events (a broker outage, say).
    pub fn catch_up_all(&self) {
        let rooms = self.rooms.lock().expect("hub lock poisoned");
        for (key, channel) in rooms.iter() {
            let marker =
                Arc::new(Event { room: key.clone(), seq: None, name: CATCH_UP.into(), data: "{}".into() });
            let _ = channel.sender.try_broadcast(marker);
        }
    }

    /// Hands an event to every local subscriber of its room. Returns how many receivers
    /// it reached; zero when the room has none here.
    pub fn dispatch(&self, event: Arc<Event>) -> usize {
        let rooms = self.rooms.lock().expect("hub lock poisoned");
        let Some(channel) = rooms.get(&event.room) else {
            return 0;
        };
        let reached = channel.sender.receiver_count();
        match channel.sender.try_broadcast(event) {
            // In overflow mode a full channel drops its oldest event; receivers that had not
            // read it see `Overflowed` and are closed by their connection.
            Ok(_) => reached,
            Err(TrySendError::Inactive(_) | TrySendError::Closed(_) | TrySendError::Full(_)) => 0,
        }
    }

    /// Returns the number of rooms with at least one local subscriber.
    pub fn room_count(&self) -> usize {
        self.rooms.lock().expect("hub lock poisoned").len()
    }

    fn release(&self, key: &RoomKey) {
        let mut rooms = self.rooms.lock().expect("hub lock poisoned");
        if rooms.get(key).is_some_and(|c| c.sender.receiver_count() == 0) {
            rooms.remove(key);
            if let Some(watcher) = self.watcher.get() {
                let _ = watcher.send(RoomChange::Removed(key.clone()));
            }
        }
    }
}

/// One connection's membership of one room. Dropping it leaves the room.
pub struct Subscription {
    hub: Arc<Hub>,
    pub room: Room,
    key: RoomKey,
    receiver: Option<Receiver<Arc<Event>>>,
    ready: watch::Receiver<bool>,
}

impl Subscription {
    pub fn key(&self) -> &RoomKey {
        &self.key
    }

    /// Waits until the broker delivers this room's remote events, at most `limit`. A
    /// connection reads the store only after this, so no remote event falls between the
    /// store read and the broker subscription. Past the limit (a broker outage) it goes on:
    /// the catch-up after the broker reconnects fills what was missed.
    pub async fn wait_ready(&mut self, limit: std::time::Duration) {
        let _ = tokio::time::timeout(limit, self.ready.wait_for(|ready| *ready)).await;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // The receiver must be gone before the count is read, or the room never empties.
        drop(self.receiver.take());
        self.hub.release(&self.key);
    }
}

/// Waits for the next event in any of `subscriptions` and returns it with the index of its
/// subscription. Starts polling at `*start` and moves it on, so a busy room cannot starve the
/// others. Never resolves when the list is empty.
pub async fn next_event(
    subscriptions: &mut [Subscription],
    start: &mut usize,
) -> Result<(usize, Arc<Event>), Lagged> {
    poll_fn(|cx| {
        let count = subscriptions.len();
        for step in 0..count {
            let index = (*start + step) % count;
            let Some(receiver) = subscriptions[index].receiver.as_mut() else {
                continue;
            };
            match Pin::new(receiver).poll_recv(cx) {
                Poll::Ready(Some(Ok(event))) => {
                    *start = (index + 1) % count;
                    return Poll::Ready(Ok((index, event)));
                }
                Poll::Ready(Some(Err(RecvError::Overflowed(_)))) => return Poll::Ready(Err(Lagged)),
                // A channel closes only when the hub drops it, which it does not while this
                // subscription lives; treat it as nothing to read.
                Poll::Ready(Some(Err(RecvError::Closed))) | Poll::Ready(None) => {}
                Poll::Pending => {}
            }
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user(name: &str) -> Room {
        Room::User { tenant: String::new(), user: name.into() }
    }

    #[tokio::test]
    async fn entries_follow_subscribers() {
        let hub = Hub::new(4);
        let first = hub.subscribe(user("a"));
        let second = hub.subscribe(user("a"));
        assert_eq!(hub.room_count(), 1);
        drop(first);
        assert_eq!(hub.room_count(), 1);
        drop(second);
        assert_eq!(hub.room_count(), 0);
    }

    #[tokio::test]
    async fn slow_receiver_lags_instead_of_blocking() {
        let hub = Hub::new(2);
        let mut subs = vec![hub.subscribe(user("a"))];
        for seq in 1..=3 {
            let event = Event::new(user("a").key(), Some(seq), "x", json!({}));
            assert_eq!(hub.dispatch(event), 1);
        }
        let mut start = 0;
        assert_eq!(next_event(&mut subs, &mut start).await.unwrap_err(), Lagged);
    }
}
