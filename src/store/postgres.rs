//! The PostgreSQL backend: one connection pool shared by every node that runs the server.
//!
//! It behaves like the SQLite backend, call for call. PostgreSQL runs transactions
//! concurrently where SQLite queues them behind its single writer, so the row lock on a
//! room's head is what orders the writes to a room here.

use std::{collections::HashMap, str::FromStr, sync::Arc};

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;
use sqlx::{
    postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow},
    Postgres, QueryBuilder, Row, Transaction,
};

use super::{Change, NewNotification, PageCursor, StatusFilter, Store, StoreError};
use crate::events::{names, payload, Event, Notification, Room, RoomKey};

/// PostgreSQL store.
pub struct PostgresStore {
    pool: PgPool,
}

/// Maximum wait for a connection, at start-up and from the pool.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

const COLUMNS: &str = "id, user_id, title, message, kind, data, status, created_at, read_at";

const COUNT_UNREAD: &str =
    "SELECT COUNT(*) FROM notifications WHERE tenant = $1 AND user_id = $2 AND status = 'unread'";

impl PostgresStore {
    /// Connects to the database that `url` names and applies migrations.
    pub async fn open(url: &str) -> Result<Self, sqlx::Error> {
        // The ordering of positions and unread counts relies on READ COMMITTED, where each
        // statement reads a snapshot taken when it starts, with every commit made before.
        // It is PostgreSQL's default, but a server or role may set another one. The backslash
        // keeps the space inside the value of the startup `options` string.
        let options =
            PgConnectOptions::from_str(url)?.options([("default_transaction_isolation", r"read\ committed")]);
        // One direct connection first, so a refused or misnamed server fails at start-up with
        // its own error instead of the pool's generic timeout.
        let probe = tokio::time::timeout(
            CONNECT_TIMEOUT,
            <sqlx::PgConnection as sqlx::Connection>::connect_with(&options),
        )
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)??;
        sqlx::Connection::close(probe).await?;
        let pool = PgPoolOptions::new().acquire_timeout(CONNECT_TIMEOUT).connect_with(options).await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(PostgresStore { pool })
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn create_notifications(
        &self,
        tenant: &str,
        users: &[String],
        content: &NewNotification,
    ) -> Result<Change<Vec<Notification>>, StoreError> {
        // Writing the users in sorted order makes every transaction lock the room heads in
        // the same order, so two creates for [a, b] and [b, a] wait for each other instead of
        // deadlocking. The notifications still come back in the caller's order.
        let mut write_order: Vec<usize> = (0..users.len()).collect();
        write_order.sort_by_key(|&index| &users[index]);

        let mut tx = self.pool.begin().await?;
        let mut created: Vec<Option<Notification>> = vec![None; users.len()];
        let mut events = Vec::with_capacity(users.len() * 2);
        let data = content.data.as_ref().map(Value::to_string);
        for index in write_order {
            let user = &users[index];
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
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'unread', $8)",
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
            events.push(append(&mut tx, &room, names::NOTIFICATION_NEW, new).await?);
            events.push(append_unread_count(&mut tx, tenant, user).await?);
            created[index] = Some(notification);
        }
        tx.commit().await?;

        let value = created.into_iter().map(|slot| slot.expect("write_order lists every index")).collect();
        Ok(Change { value, events })
    }

    async fn list_notifications(
        &self,
        tenant: &str,
        user: &str,
        status: StatusFilter,
        limit: u32,
        after: Option<&PageCursor>,
    ) -> Result<Vec<Notification>, StoreError> {
        let mut query = QueryBuilder::<Postgres>::new(format!("SELECT {COLUMNS} FROM notifications"));
        query.push(" WHERE tenant = ").push_bind(tenant);
        query.push(" AND user_id = ").push_bind(user);
        query.push(match status {
            StatusFilter::Unread => " AND status = 'unread'",
            StatusFilter::Read => " AND status = 'read'",
            StatusFilter::All => "",
        });
        if let Some(cursor) = after {
            query.push(" AND (created_at < ").push_bind(cursor.created_at_ms);
            query.push(" OR (created_at = ").push_bind(cursor.created_at_ms);
            query.push(" AND id < ").push_bind(&cursor.id).push("))");
        }
        query.push(" ORDER BY created_at DESC, id DESC LIMIT ").push_bind(i64::from(limit));
        let rows = query.build().fetch_all(&self.pool).await?;
        rows.iter().map(notification_from_row).collect()
    }

    async fn unread_count(&self, tenant: &str, user: &str) -> Result<i64, StoreError> {
        let count = sqlx::query_scalar(COUNT_UNREAD).bind(tenant).bind(user).fetch_one(&self.pool).await?;
        Ok(count)
    }

    async fn mark_read(
        &self,
        tenant: &str,
        user: &str,
        id: &str,
    ) -> Result<Change<Notification>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // A concurrent call for the same id waits for this row lock, then finds the row read
        // and updates nothing, so only one of them appends events.
        let updated = sqlx::query(
            "UPDATE notifications SET status = 'read', read_at = $1
             WHERE id = $2 AND tenant = $3 AND user_id = $4 AND status = 'unread'",
        )
        .bind(Utc::now().timestamp_millis())
        .bind(id)
        .bind(tenant)
        .bind(user)
        .execute(&mut *tx)
        .await?
        .rows_affected();

        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM notifications WHERE id = $1 AND tenant = $2 AND user_id = $3"
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
        let mut tx = self.pool.begin().await?;
        let ids: Vec<String> = sqlx::query_scalar(
            "UPDATE notifications SET status = 'read', read_at = $1
             WHERE tenant = $2 AND user_id = $3 AND status = 'unread' RETURNING id",
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
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query("DELETE FROM notifications WHERE id = $1 AND tenant = $2 AND user_id = $3")
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
        let mut tx = self.pool.begin().await?;
        let event = append(&mut tx, room, name, payload).await?;
        tx.commit().await?;
        Ok(event)
    }

    async fn heads(&self, rooms: &[RoomKey]) -> Result<Vec<i64>, StoreError> {
        let keys: Vec<&str> = rooms.iter().map(RoomKey::as_str).collect();
        let rows = sqlx::query("SELECT room, seq FROM room_heads WHERE room = ANY($1)")
            .bind(&keys)
            .fetch_all(&self.pool)
            .await?;
        let mut known = HashMap::with_capacity(rows.len());
        for row in rows {
            known.insert(row.try_get::<String, _>("room")?, row.try_get::<i64, _>("seq")?);
        }
        Ok(keys.iter().map(|key| known.get(*key).copied().unwrap_or(0)).collect())
    }

    async fn events_after(
        &self,
        room: &RoomKey,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Arc<Event>>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, name, data FROM events WHERE room = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(room.as_str())
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
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
        // DELETE has no LIMIT in PostgreSQL, so the subquery picks the batch. Each call is
        // its own short statement, and it deletes only events, never room heads.
        let deleted = sqlx::query(
            "DELETE FROM events WHERE (room, seq) IN (
                 SELECT e.room, e.seq FROM events e JOIN room_heads h ON h.room = e.room
                 WHERE e.seq <= h.seq - $1 OR e.created_at < $2
                 LIMIT $3)",
        )
        .bind(i64::from(keep_per_room))
        .bind(older_than_ms)
        .bind(i64::from(batch))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(deleted)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

/// Appends an event to a room's log inside `tx`.
///
/// The position comes from bumping the room's head row, which locks that row until `tx`
/// commits or rolls back. Another writer to the room waits for the lock and then reads the
/// committed head, so a larger position never becomes visible before a smaller one, and a
/// rolled-back position is handed out again instead of leaving a hole.
async fn append(
    tx: &mut Transaction<'_, Postgres>,
    room: &Room,
    name: &str,
    payload: Value,
) -> Result<Arc<Event>, StoreError> {
    let key = room.key();
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO room_heads (room, seq) VALUES ($1, 1)
         ON CONFLICT (room) DO UPDATE SET seq = room_heads.seq + 1 RETURNING seq",
    )
    .bind(key.as_str())
    .fetch_one(&mut **tx)
    .await?;
    let event = Event::new(key, Some(seq), name, payload);
    sqlx::query("INSERT INTO events (room, seq, name, data, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(event.room.as_str())
        .bind(seq)
        .bind(&event.name)
        .bind(&event.data)
        .bind(Utc::now().timestamp_millis())
        .execute(&mut **tx)
        .await?;
    Ok(event)
}

/// Appends the user's unread count, counted inside `tx` from the rows themselves.
///
/// Callers have already appended to the user's room in `tx`, so this transaction holds the
/// room's head lock. Every other change to the user's notifications that committed earlier
/// is therefore visible to the count, and every later one is counted by its own event.
async fn append_unread_count(
    tx: &mut Transaction<'_, Postgres>,
    tenant: &str,
    user: &str,
) -> Result<Arc<Event>, StoreError> {
    let count: i64 = sqlx::query_scalar(COUNT_UNREAD).bind(tenant).bind(user).fetch_one(&mut **tx).await?;
    let room = Room::User { tenant: tenant.into(), user: user.into() };
    append(tx, &room, names::UNREAD_COUNT, payload::unread_count(count)).await
}

fn notification_from_row(row: &PgRow) -> Result<Notification, StoreError> {
    let data = match row.try_get::<Option<String>, _>("data")? {
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

/// Returns the current time cut to the milliseconds that the database keeps, so the time
/// that create returns equals the time read back later.
fn now_ms_precision() -> DateTime<Utc> {
    from_ms(Utc::now().timestamp_millis())
}
