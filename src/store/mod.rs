//! Storage of notifications and of the per-room event log, behind one trait.
//!
//! Every method that changes notifications appends the events it causes in the same
//! transaction and returns them, so the caller publishes exactly what was committed.

mod postgres;
mod retention;
mod sqlite;

pub use postgres::PostgresStore;
pub use retention::{prune_once, spawn_pruner, Retention};
pub use sqlite::SqliteStore;

use std::sync::Arc;

use async_trait::async_trait;
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use serde_json::Value;

use crate::events::{Event, Notification, Room, RoomKey};

/// Failures that callers branch on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row does not exist or belongs to another user.
    #[error("not found")]
    NotFound,
    /// The database failed or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// The content of a notification to create, already validated.
#[derive(Clone, Debug)]
pub struct NewNotification {
    pub title: String,
    pub message: String,
    pub kind: String,
    pub data: Option<Value>,
}

/// The status filter of a list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StatusFilter {
    Unread,
    Read,
    All,
}

/// A position in a user's list, newest first: the last row of the previous page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageCursor {
    pub created_at_ms: i64,
    pub id: String,
}

impl PageCursor {
    /// Encodes the cursor as an opaque URL-safe string.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}:{}", self.created_at_ms, self.id))
    }

    /// Decodes a cursor produced by [`PageCursor::encode`].
    pub fn decode(text: &str) -> Option<Self> {
        let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(text).ok()?).ok()?;
        let (ms, id) = raw.split_once(':')?;
        Some(PageCursor { created_at_ms: ms.parse().ok()?, id: id.to_string() })
    }
}

/// The result of a committed change to notifications.
#[derive(Debug, Default)]
pub struct Change<T> {
    pub value: T,
    /// Events appended in the same transaction, in commit order, ready to publish.
    pub events: Vec<Arc<Event>>,
}

/// The storage interface every backend implements.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates one notification per user, all in one transaction, with a `notification:new`
    /// and a `notification:unread_count` event for each user.
    async fn create_notifications(
        &self,
        tenant: &str,
        users: &[String],
        content: &NewNotification,
    ) -> Result<Change<Vec<Notification>>, StoreError>;

    /// Lists a user's notifications, newest first, at most `limit` of them after `after`.
    async fn list_notifications(
        &self,
        tenant: &str,
        user: &str,
        status: StatusFilter,
        limit: u32,
        after: Option<&PageCursor>,
    ) -> Result<Vec<Notification>, StoreError>;

    /// Counts a user's unread notifications.
    async fn unread_count(&self, tenant: &str, user: &str) -> Result<i64, StoreError>;

    /// Marks one notification read. Marking a read notification again changes nothing and
    /// appends no event.
    async fn mark_read(&self, tenant: &str, user: &str, id: &str)
        -> Result<Change<Notification>, StoreError>;

    /// Marks every unread notification of a user read; the value is how many changed.
    async fn mark_all_read(&self, tenant: &str, user: &str) -> Result<Change<u64>, StoreError>;

    /// Deletes one notification of a user.
    async fn delete_notification(&self, tenant: &str, user: &str, id: &str)
        -> Result<Change<()>, StoreError>;

    /// Appends an event to a room's log and returns it with its position.
    async fn append_event(&self, room: &Room, name: &str, payload: Value) -> Result<Arc<Event>, StoreError>;

    /// Returns the last position handed out in each room, 0 for rooms without events, in
    /// the order of `rooms`.
    async fn heads(&self, rooms: &[RoomKey]) -> Result<Vec<i64>, StoreError>;

    /// Returns up to `limit` retained events of `room` after position `after`, in order.
    /// The first one is not `after + 1` when older events were pruned.
    async fn events_after(
        &self,
        room: &RoomKey,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Arc<Event>>, StoreError>;

    /// Deletes up to `batch` events that fall outside the retention: beyond the newest
    /// `keep_per_room` of their room, or created before `older_than_ms`. Returns how many
    /// were deleted; callers repeat until it returns less than `batch`.
    async fn prune_events(
        &self,
        keep_per_room: u32,
        older_than_ms: i64,
        batch: u32,
    ) -> Result<u64, StoreError>;

    /// Checks that the database responds.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Closes connections after in-flight work; later calls fail.
    async fn close(&self);
}

/// Opens the store that a database URL names. This is the one place a backend is chosen.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, String> {
    if url.starts_with("sqlite:") {
        let store = SqliteStore::open(url).await.map_err(|e| format!("NOTIFY_DATABASE_URL: {e}"))?;
        Ok(Arc::new(store))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let store = PostgresStore::open(url).await.map_err(|e| format!("NOTIFY_DATABASE_URL: {e}"))?;
        Ok(Arc::new(store))
    } else {
        Err("NOTIFY_DATABASE_URL: expected a sqlite:// or postgres:// URL".into())
    }
}
