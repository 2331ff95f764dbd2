//! The SQLite backend: one file in WAL mode, one writer connection, several readers.

use std::{path::Path, str::FromStr, sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;
use sqlx::{
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous},
    Row, Sqlite, SqlitePool, Transaction,
};

use super::{Change, NewNotification, PageCursor, StatusFilter, Store, StoreError};
use crate::events::{names, payload, Event, Notification, Room, RoomKey};

/// SQLite store. Writes go through a pool of one connection, because SQLite admits one
/// writer at a time anyway and a queue in the pool beats retrying on `SQLITE_BUSY`.
pub struct SqliteStore {
    writer: SqlitePool,
    readers: SqlitePool,
}

const COLUMNS: &str = "id, user_id, title, message, kind, data, status, created_at, read_at";

impl SqliteStore {
    /// Opens (creating when missing) the database file and applies migrations.
    pub async fn open(url: &str) -> Result<Self, sqlx::Error> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL makes every commit durable across power loss, not only across a crash.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        if let Some(parent) = Path::new(options.get_filename()).parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(sqlx::Error::Io)?;
            }
        }
        let writer = SqlitePoolOptions::new().max_connections(1).connect_with(options.clone()).await?;
        sqlx::migrate!("./migrations/sqlite").run(&writer).await?;
        let readers =
            SqlitePoolOptions::new().max_connections(4).connect_with(options.read_only(true)).await?;
        Ok(SqliteStore { writer, readers })
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_notifications(
        &self,
        tenant: &str,
        users: &[String],
        content: &NewNotification,
    ) -> Result<Change<Vec<Notification>>, StoreError> {
        let mut tx = self.writer.begin().await?;
        let mut change = Change { value: Vec::with_capacity(users.len()), events: Vec::new() };
        let data = content.data.as_ref().map(Value::to_string);
        for user in users {
            let notification = Notification {
                id: uuid::Uuid::now_v7().to_string(),
                user_id: user.clone(),
                title: content.title.clone(),
                message: content.message.clone(),
                kind: content.kind.clone(),
                data: content.data.clone(),
                status: "unread".into(),
                created_at: now_ms_precision(),
                read_at: None,
            };
            sqlx::query(
                "INSERT INTO notifications (id, tenant, user_id, title, message, kind, data, status, created_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, 'unread', ?)",
            )
            .bind(&notification.id)
            .bind(tenant)
            .bind(user)
            .bind(&notification.title)
            .bind(&notification.message)
            .bind(&notification.kind)
            .bind(&data)
            .bind(notification.created_at.timestamp_millis())
            .execute(&mut *tx)
            .await?;
            let room = Room::User { tenant: tenant.into(), user: user.clone() };
            let new = payload::notification_new(&notification);
            change.events.push(append(&mut tx, &room, names::NOTIFICATION_NEW, new).await?);
            change.events.push(append_unread_count(&mut tx, tenant, user).await?);
            change.value.push(notification);
        }
        tx.commit().await?;
        Ok(change)
    }

    async fn list_notifications(
        &self,
        tenant: &str,
        user: &str,
        status: StatusFilter,
        limit: u32,
        after: Option<&PageCursor>,
    ) -> Result<Vec<Notification>, StoreError> {
        let status_clause = match status {
            StatusFilter::Unread => " AND status = 'unread'",
            StatusFilter::Read => " AND status = 'read'",
            StatusFilter::All => "",
        };
        let after_clause =
            if after.is_some() { " AND (created_at < ? OR (created_at = ? AND id < ?))" } else { "" };
        let sql = format!(
            "SELECT {COLUMNS} FROM notifications WHERE tenant = ? AND user_id = ?{status_clause}{after_clause}
             ORDER BY created_at DESC, id DESC LIMIT ?"
        );
        let mut query = sqlx::query(&sql).bind(tenant).bind(user);
        if let Some(cursor) = after {
            query = query.bind(cursor.created_at_ms).bind(cursor.created_at_ms).bind(&cursor.id);
        }
        let rows = query.bind(i64::from(limit)).fetch_all(&self.readers).await?;
        rows.iter().map(notification_from_row).collect()
    }

    async fn unread_count(&self, tenant: &str, user: &str) -> Result<i64, StoreError> {
        let count = sqlx::query_scalar(
            "SELECT COUNT(*) FROM notifications WHERE tenant = ? AND user_id = ? AND status = 'unread'",
        )
        .bind(tenant)
        .bind(user)
        .fetch_one(&self.readers)
        .await?;
        Ok(count)
    }

    async fn mark_read(
        &self,
        tenant: &str,
        user: &str,
        id: &str,
    ) -> Result<Change<Notification>, StoreError> {
        let mut tx = self.writer.begin().await?;
        let updated = sqlx::query(
            "UPDATE notifications SET status = 'read', read_at = ?
             WHERE id = ? AND tenant = ? AND user_id = ? AND status = 'unread'",
        )
        .bind(Utc::now().timestamp_millis())
        .bind(id)
        .bind(tenant)
        .bind(user)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM notifications WHERE id = ? AND tenant = ? AND user_id = ?"
        ))
        .bind(id)
        .bind(tenant)
        .bind(user)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound)?;
        let notification = notification_from_row(&row)?;
        let mut events = Vec::new();
        if updated > 0 {
            let room = Room::User { tenant: tenant.into(), user: user.into() };
            let read = payload::notification_read(id);
            events.push(append(&mut tx, &room, names::NOTIFICATION_READ, read).await?);
            events.push(append_unread_count(&mut tx, tenant, user).await?);
        }
        tx.commit().await?;
        Ok(Change { value: notification, events })
    }

    async fn mark_all_read(&self, tenant: &str, user: &str) -> Result<Change<u64>, StoreError> {
        let mut tx = self.writer.begin().await?;
        let ids: Vec<String> = sqlx::query_scalar(
            "UPDATE notifications SET status = 'read', read_at = ?
             WHERE tenant = ? AND user_id = ? AND status = 'unread' RETURNING id",
        )
        .bind(Utc::now().timestamp_millis())
        .bind(tenant)
        .bind(user)
        .fetch_all(&mut *tx)
        .await?;
        let mut events = Vec::with_capacity(ids.len() + 1);
        if !ids.is_empty() {
            let room = Room::User { tenant: tenant.into(), user: user.into() };
            for id in &ids {
                let read = payload::notification_read(id);
                events.push(append(&mut tx, &room, names::NOTIFICATION_READ, read).await?);
            }
            events.push(append_unread_count(&mut tx, tenant, user).await?);
        }
        tx.commit().await?;
        Ok(Change { value: ids.len() as u64, events })
    }

    async fn delete_notification(
        &self,
        tenant: &str,
        user: &str,
        id: &str,
    ) -> Result<Change<()>, StoreError> {
        let mut tx = self.writer.begin().await?;
        let deleted = sqlx::query("DELETE FROM notifications WHERE id = ? AND tenant = ? AND user_id = ?")
            .bind(id)
            .bind(tenant)
            .bind(user)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(StoreError::NotFound);
        }
        let room = Room::User { tenant: tenant.into(), user: user.into() };
        let gone = payload::notification_deleted(id);
        let events = vec![
            append(&mut tx, &room, names::NOTIFICATION_DELETED, gone).await?,
            append_unread_count(&mut tx, tenant, user).await?,
        ];
        tx.commit().await?;
        Ok(Change { value: (), events })
    }

    async fn append_event(&self, room: &Room, name: &str, payload: Value) -> Result<Arc<Event>, StoreError> {
        let mut tx = self.writer.begin().await?;
        let event = append(&mut tx, room, name, payload).await?;
        tx.commit().await?;
        Ok(event)
    }

    async fn heads(&self, rooms: &[RoomKey]) -> Result<Vec<i64>, StoreError> {
        let mut heads = Vec::with_capacity(rooms.len());
        for room in rooms {
            let head: Option<i64> = sqlx::query_scalar("SELECT seq FROM room_heads WHERE room = ?")
                .bind(room.as_str())
                .fetch_optional(&self.readers)
                .await?;
            heads.push(head.unwrap_or(0));
        }
        Ok(heads)
    }

    async fn events_after(
        &self,
        room: &RoomKey,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Arc<Event>>, StoreError> {
        let rows =
            sqlx::query("SELECT seq, name, data FROM events WHERE room = ? AND seq > ? ORDER BY seq LIMIT ?")
                .bind(room.as_str())
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&self.readers)
                .await?;
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            events.push(Arc::new(Event {
                room: room.clone(),
                seq: Some(row.try_get("seq")?),
                name: row.try_get("name")?,
                data: row.try_get("data")?,
            }));
        }
        Ok(events)
    }

    async fn prune_events(
        &self,
        keep_per_room: u32,
        older_than_ms: i64,
        batch: u32,
    ) -> Result<u64, StoreError> {
        // Each call is one short transaction on the writer, so writes queue behind at most
        // one batch rather than behind the whole prune.
        let deleted = sqlx::query(
            "DELETE FROM events WHERE (room, seq) IN (
                 SELECT e.room, e.seq FROM events e JOIN room_heads h ON h.room = e.room
                 WHERE e.seq <= h.seq - ? OR e.created_at < ?
                 LIMIT ?)",
        )
        .bind(i64::from(keep_per_room))
        .bind(older_than_ms)
        .bind(i64::from(batch))
        .execute(&self.writer)
        .await?
        .rows_affected();
        Ok(deleted)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.readers).await?;
        Ok(())
    }

    async fn close(&self) {
        self.writer.close().await;
        self.readers.close().await;
    }
}

/// Appends an event to a room's log inside `tx`. The position comes from bumping the room's
/// head row in the same transaction, so a larger position never commits before a smaller one.
async fn append(
    tx: &mut Transaction<'_, Sqlite>,
    room: &Room,
    name: &str,
    payload: Value,
) -> Result<Arc<Event>, StoreError> {
    let key = room.key();
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO room_heads (room, seq) VALUES (?, 1)
         ON CONFLICT (room) DO UPDATE SET seq = seq + 1 RETURNING seq",
    )
    .bind(key.as_str())
    .fetch_one(&mut **tx)
    .await?;
    let event = Event::new(key, Some(seq), name, payload);
    sqlx::query("INSERT INTO events (room, seq, name, data, created_at) VALUES (?, ?, ?, ?, ?)")
        .bind(event.room.as_str())
        .bind(seq)
        .bind(&event.name)
        .bind(&event.data)
        .bind(Utc::now().timestamp_millis())
        .execute(&mut **tx)
        .await?;
    Ok(event)
}

/// Appends the user's unread count, counted inside `tx` from the rows themselves, so the
/// count cannot drift from the notifications it describes.
async fn append_unread_count(
    tx: &mut Transaction<'_, Sqlite>,
    tenant: &str,
    user: &str,
) -> Result<Arc<Event>, StoreError> {
    let count: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM notifications WHERE tenant = ? AND user_id = ? AND status = 'unread'",
    )
    .bind(tenant)
    .bind(user)
    .fetch_one(&mut **tx)
    .await?;
    let room = Room::User { tenant: tenant.into(), user: user.into() };
    append(tx, &room, names::UNREAD_COUNT, payload::unread_count(count)).await
}

fn notification_from_row(row: &SqliteRow) -> Result<Notification, StoreError> {
    let data: Option<String> = row.try_get("data")?;
    let data = match data {
        Some(text) => Some(serde_json::from_str(&text).map_err(|e| sqlx::Error::Decode(Box::new(e)))?),
        None => None,
    };
    let read_at: Option<i64> = row.try_get("read_at")?;
    Ok(Notification {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        title: row.try_get("title")?,
        message: row.try_get("message")?,
        kind: row.try_get("kind")?,
        data,
        status: row.try_get("status")?,
        created_at: from_ms(row.try_get("created_at")?),
        read_at: read_at.map(from_ms),
    })
}

fn from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// Returns the current time cut to milliseconds, the precision the database keeps, so the
/// value returned by create equals the value read back later.
fn now_ms_precision() -> DateTime<Utc> {
    from_ms(Utc::now().timestamp_millis())
}
