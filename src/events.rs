//! Wire events: names, payloads, the rooms they travel in, and the resumable event id.
//!
//! Every event is serialized once, when it is published; connections share the same
//! `Arc<Event>` and only add their own id around the ready JSON.

use std::{collections::BTreeMap, fmt, fmt::Write as _, sync::Arc};

use chrono::{DateTime, SecondsFormat, Utc};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Serialize;
use serde_json::{json, Value};

/// Event names kept from the NestJS gateway, so frontends keep their handlers.
pub mod names {
    pub const AUTHENTICATED: &str = "authenticated";
    pub const ERROR: &str = "error";
    pub const NOTIFICATION_NEW: &str = "notification:new";
    pub const NOTIFICATION_READ: &str = "notification:read";
    pub const NOTIFICATION_DELETED: &str = "notification:deleted";
    pub const UNREAD_COUNT: &str = "notification:unread_count";
    pub const MARK_READ: &str = "notification:mark_read";
    pub const DATA_UPDATED: &str = "data:updated";
    pub const USER_ONLINE: &str = "user:online";
    pub const USER_OFFLINE: &str = "user:offline";
    pub const RESYNC: &str = "resync";

    /// Names a publisher may not use for room or broadcast events, because clients give them
    /// a fixed meaning.
    pub const RESERVED: [&str; 10] = [
        AUTHENTICATED,
        ERROR,
        NOTIFICATION_NEW,
        NOTIFICATION_READ,
        NOTIFICATION_DELETED,
        UNREAD_COUNT,
        MARK_READ,
        USER_ONLINE,
        USER_OFFLINE,
        RESYNC,
    ];
}

/// Characters percent-encoded inside room keys and event ids: everything but `A-Z a-z 0-9 - _`.
const KEY_SET: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_');

/// A fan-out target. Tenants never share a room: the tenant is part of every key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Room {
    /// Every connection of one user (`user:<id>`).
    User { tenant: String, user: String },
    /// Every connection of one tenant (`tenant:<id>`); tenantless users share the empty tenant.
    Tenant { tenant: String },
    /// A named room that tokens are granted through their `rooms` claim.
    Named { tenant: String, name: String },
}

impl Room {
    /// Returns the key that names this room in the registry and the store. Parts are
    /// percent-encoded, so `:` separates them unambiguously.
    pub fn key(&self) -> RoomKey {
        let enc = |s: &str| utf8_percent_encode(s, KEY_SET).to_string();
        let key = match self {
            Room::User { tenant, user } => format!("user:{}:{}", enc(tenant), enc(user)),
            Room::Tenant { tenant } => format!("tenant:{}", enc(tenant)),
            Room::Named { tenant, name } => format!("room:{}:{}", enc(tenant), enc(name)),
        };
        RoomKey(key.into())
    }
}

/// The string form of a [`Room`]; cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomKey(Arc<str>);

impl RoomKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Rebuilds a key read back from the store.
    pub fn from_stored(key: &str) -> Self {
        RoomKey(key.into())
    }
}

impl fmt::Display for RoomKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One event as it travels from a publisher to every connection in its room.
#[derive(Debug)]
pub struct Event {
    pub room: RoomKey,
    /// Position in the room's log. `None` for events that are not stored and cannot be
    /// resumed (presence changes).
    pub seq: Option<i64>,
    pub name: String,
    /// The payload as one line of JSON, including its `timestamp`.
    pub data: String,
}

impl Event {
    /// Builds an event from a payload object and stamps it with the current time.
    pub fn new(room: RoomKey, seq: Option<i64>, name: &str, payload: Value) -> Arc<Self> {
        Arc::new(Event { room, seq, name: name.to_string(), data: with_timestamp(payload).to_string() })
    }
}

/// A connection's position in each of its rooms, sent to clients as the event id.
///
/// One id must resume every room a connection follows, so the id lists them all, then a tag
/// of the user it belongs to. For example, `u:12.t:3.r-orders:5~1a2b3c4d` means user event 12,
/// tenant event 3 and event 5 of room `orders`, for the user whose tag is `1a2b3c4d`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    positions: BTreeMap<Label, i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Label {
    User,
    Tenant,
    Named(String),
}

impl Label {
    fn of(room: &Room) -> Self {
        match room {
            Room::User { .. } => Label::User,
            Room::Tenant { .. } => Label::Tenant,
            Room::Named { name, .. } => Label::Named(name.clone()),
        }
    }
}

/// The reason a client's event id was rejected.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    #[error("invalid event id: {0}")]
    Malformed(String),
    #[error("the event id belongs to another user")]
    OtherUser,
}

impl Cursor {
    /// Records that the event `seq` of `room` was delivered. Returns false when the
    /// connection already has it, so the caller drops the duplicate.
    pub fn advance(&mut self, room: &Room, seq: i64) -> bool {
        match self.positions.get_mut(&Label::of(room)) {
            Some(last) if *last >= seq => false,
            Some(last) => {
                *last = seq;
                true
            }
            None => {
                self.positions.insert(Label::of(room), seq);
                true
            }
        }
    }

    /// Returns the last position delivered in `room`, if any.
    pub fn position(&self, room: &Room) -> Option<i64> {
        self.positions.get(&Label::of(room)).copied()
    }

    /// Sets the position in `room`, also backwards.
    pub fn set(&mut self, room: &Room, seq: i64) {
        self.positions.insert(Label::of(room), seq);
    }

    /// Drops the position in `room`, for a room the connection left.
    pub fn forget(&mut self, room: &Room) {
        self.positions.remove(&Label::of(room));
    }

    /// Formats the cursor as an event id for the user whose tag is `owner`.
    pub fn encode(&self, owner: &str) -> String {
        let mut out = String::with_capacity(24 + owner.len());
        for (i, (label, seq)) in self.positions.iter().enumerate() {
            if i > 0 {
                out.push('.');
            }
            let _ = match label {
                Label::User => write!(out, "u:{seq}"),
                Label::Tenant => write!(out, "t:{seq}"),
                Label::Named(name) => write!(out, "r-{}:{seq}", utf8_percent_encode(name, KEY_SET)),
            };
        }
        out.push('~');
        out.push_str(owner);
        out
    }

    /// Parses an id produced by [`Cursor::encode`] and checks that it belongs to `owner`.
    pub fn decode(text: &str, owner: &str) -> Result<Self, CursorError> {
        let malformed = |why: String| CursorError::Malformed(why);
        let (body, tag) = text.rsplit_once('~').ok_or_else(|| malformed("missing user tag".into()))?;
        if tag != owner {
            return Err(CursorError::OtherUser);
        }
        let mut cursor = Cursor::default();
        for part in body.split('.') {
            let (label, seq) = part.rsplit_once(':').ok_or_else(|| malformed(format!("part `{part}`")))?;
            let seq: i64 = seq.parse().map_err(|_| malformed(format!("position in part `{part}`")))?;
            if seq < 0 {
                return Err(malformed(format!("negative position in part `{part}`")));
            }
            let label = match label {
                "u" => Label::User,
                "t" => Label::Tenant,
                named => {
                    let encoded = named
                        .strip_prefix("r-")
                        .ok_or_else(|| malformed(format!("room label in part `{part}`")))?;
                    let name = percent_decode_str(encoded)
                        .decode_utf8()
                        .map_err(|_| malformed(format!("room name in part `{part}`")))?;
                    Label::Named(name.into_owned())
                }
            };
            if cursor.positions.insert(label, seq).is_some() {
                return Err(malformed(format!("room repeated in part `{part}`")));
            }
        }
        Ok(cursor)
    }
}

/// Returns the tag that binds event ids to one user: FNV-1a (32 bits) of tenant and user, in
/// hex. It catches ids sent to the wrong user by mistake; it is not a secret, because an id
/// only ever replays the caller's own rooms.
pub fn owner_tag(tenant: &str, user: &str) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in tenant.bytes().chain([0u8]).chain(user.bytes()) {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    format!("{hash:08x}")
}

/// A stored notification as clients see it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// Server-assigned UUID.
    pub id: String,
    /// The recipient's `sub`.
    pub user_id: String,
    pub title: String,
    pub message: String,
    /// Free-form category chosen by the publisher, e.g. `invoice.paid`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Publisher data passed through unchanged; `null` when none was given.
    pub data: Option<Value>,
    /// `unread` or `read`.
    pub status: String,
    #[schema(value_type = String, format = DateTime)]
    #[serde(serialize_with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(serialize_with = "rfc3339_opt")]
    pub read_at: Option<DateTime<Utc>>,
}

/// Formats a time the way every payload carries it: RFC 3339, UTC, milliseconds.
pub fn format_time(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn rfc3339<S: serde::Serializer>(time: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_time(time))
}

fn rfc3339_opt<S: serde::Serializer>(time: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match time {
        Some(t) => s.serialize_str(&format_time(t)),
        None => s.serialize_none(),
    }
}

/// Sets `timestamp` to now. A publisher's own `timestamp` is replaced, so every payload
/// carries the server's RFC 3339 time.
pub fn with_timestamp(mut payload: Value) -> Value {
    if let Value::Object(map) = &mut payload {
        map.insert("timestamp".into(), Value::String(format_time(&Utc::now())));
    }
    payload
}

/// Payload builders, one per event name.
pub mod payload {
    use super::*;

    pub fn notification_new(n: &Notification) -> Value {
        json!({ "notification": n })
    }

    pub fn notification_read(id: &str) -> Value {
        json!({ "notificationId": id, "success": true })
    }

    pub fn notification_deleted(id: &str) -> Value {
        json!({ "notificationId": id })
    }

    pub fn unread_count(count: i64) -> Value {
        json!({ "unreadCount": count })
    }

    pub fn presence(user: &str) -> Value {
        json!({ "userId": user })
    }

    pub fn error(code: &str, message: &str) -> Value {
        with_timestamp(json!({ "code": code, "message": message }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_through_text() {
        let tenant = "acme".to_string();
        let mut cursor = Cursor::default();
        assert!(cursor.advance(&Room::User { tenant: tenant.clone(), user: "u1".into() }, 12));
        assert!(cursor.advance(&Room::Tenant { tenant: tenant.clone() }, 3));
        let odd = Room::Named { tenant, name: "orders.eu:1 ñ~".into() };
        assert!(cursor.advance(&odd, 5));

        let owner = owner_tag("acme", "u1");
        let text = cursor.encode(&owner);
        assert!(text.bytes().all(|b| b.is_ascii_graphic()), "id `{text}` must be header-safe");
        assert_eq!(Cursor::decode(&text, &owner).unwrap(), cursor);
    }

    #[test]
    fn cursor_drops_old_positions() {
        let room = Room::User { tenant: String::new(), user: "u".into() };
        let mut cursor = Cursor::default();
        assert!(cursor.advance(&room, 2));
        assert!(!cursor.advance(&room, 2));
        assert!(!cursor.advance(&room, 1));
        assert!(cursor.advance(&room, 3));
    }

    #[test]
    fn cursor_rejects_bad_text() {
        let owner = owner_tag("", "u");
        for bad in ["", "u", "u:x", "u:-1", "q:1", "u:1.u:2", "r-%ff:1"] {
            let text = format!("{bad}~{owner}");
            assert!(matches!(Cursor::decode(&text, &owner), Err(CursorError::Malformed(_))), "`{text}`");
        }
        assert!(matches!(Cursor::decode("u:1", &owner), Err(CursorError::Malformed(_))));
        let other = owner_tag("", "v");
        assert_eq!(Cursor::decode(&format!("u:1~{other}"), &owner), Err(CursorError::OtherUser));
    }

    #[test]
    fn owner_tags_differ_by_tenant_and_user() {
        assert_ne!(owner_tag("a", "bc"), owner_tag("ab", "c"));
        assert_ne!(owner_tag("", "alice"), owner_tag("acme", "alice"));
        assert_eq!(owner_tag("acme", "alice").len(), 8);
    }

    #[test]
    fn room_keys_keep_tenants_apart() {
        let a = Room::User { tenant: "a:b".into(), user: "c".into() }.key();
        let b = Room::User { tenant: "a".into(), user: "b:c".into() }.key();
        assert_ne!(a, b);
    }
}
