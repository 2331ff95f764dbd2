//! Operations shared by the REST handlers and the WebSocket loop: commit, then publish.

use std::sync::Arc;

use serde_json::Value;

use crate::{
    app::AppState,
    events::{Event, Notification, Room},
    store::{NewNotification, StoreError},
};

/// Creates a notification for each user and pushes the new events to their connections.
pub async fn create_notifications(
    state: &AppState,
    tenant: &str,
    users: &[String],
    content: &NewNotification,
) -> Result<Vec<Notification>, StoreError> {
    let change = state.store.create_notifications(tenant, users, content).await?;
    publish(state, &change.events).await;
    Ok(change.value)
}

/// Marks one notification read and pushes `notification:read` and the new count.
pub async fn mark_read(
    state: &AppState,
    tenant: &str,
    user: &str,
    id: &str,
) -> Result<Notification, StoreError> {
    let change = state.store.mark_read(tenant, user, id).await?;
    publish(state, &change.events).await;
    Ok(change.value)
}

/// Marks all of a user's notifications read; returns how many changed.
pub async fn mark_all_read(state: &AppState, tenant: &str, user: &str) -> Result<u64, StoreError> {
    let change = state.store.mark_all_read(tenant, user).await?;
    publish(state, &change.events).await;
    Ok(change.value)
}

/// Deletes one notification and pushes `notification:deleted` and the new count.
pub async fn delete_notification(
    state: &AppState,
    tenant: &str,
    user: &str,
    id: &str,
) -> Result<(), StoreError> {
    let change = state.store.delete_notification(tenant, user, id).await?;
    publish(state, &change.events).await;
    Ok(())
}

/// Stores a publisher event in a room's log and pushes it to the room.
pub async fn publish_to_room(
    state: &AppState,
    room: &Room,
    name: &str,
    payload: Value,
) -> Result<Arc<Event>, StoreError> {
    let event = state.store.append_event(room, name, payload).await?;
    publish(state, std::slice::from_ref(&event)).await;
    Ok(event)
}

/// Hands committed events to the broker. A failure here loses no data: the events are in
/// the store, and clients that miss them catch up when they resume.
async fn publish(state: &AppState, events: &[Arc<Event>]) {
    if events.is_empty() {
        return;
    }
    state.metrics.published.fetch_add(events.len() as u64, std::sync::atomic::Ordering::Relaxed);
    // The broker logs the start of an outage once; this line is for tracing single calls.
    if let Err(error) = state.broker.publish(events).await {
        tracing::debug!(%error, count = events.len(), "failed to publish committed events");
    }
}
