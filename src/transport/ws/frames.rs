//! WebSocket framing: events as JSON text frames, replies that echo `ack`, close codes.

use axum::extract::ws::{CloseFrame, Message};
use serde_json::{json, Value};

use crate::events::{names, payload, with_timestamp};

/// Close codes this server sends, beside the standard ones.
pub mod close {
    /// The token expired, was invalid or was never sent; reconnect with a fresh one.
    pub const UNAUTHORIZED: u16 = 4001;
    /// The connection fell behind; reconnect and resume from the last event id.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// A request broke a limit or named an invalid id (RFC 6455 policy violation).
    pub const POLICY: u16 = 1008;
    /// A message exceeded the configured size (RFC 6455).
    pub const TOO_BIG: u16 = 1009;
    /// The server is restarting (RFC 6455 registry); reconnect after a pause.
    pub const SERVICE_RESTART: u16 = 1012;
}

/// Formats one event as a text frame: `{"event":…,"id":…,"data":…}`. The payload is the
/// JSON serialized once at publish time, inserted unchanged.
pub fn event(name: &str, id: Option<&str>, data: &str) -> Message {
    let name = Value::from(name);
    let text = match id {
        Some(id) => format!(r#"{{"event":{name},"id":{},"data":{data}}}"#, Value::from(id)),
        None => format!(r#"{{"event":{name},"data":{data}}}"#),
    };
    Message::text(text)
}

/// Formats a reply to a client message, echoing its `ack`. The payload gets a `timestamp`
/// like every other.
pub fn reply(name: &str, ack: Option<u64>, data: Value) -> Message {
    let mut reply = json!({ "event": name, "data": with_timestamp(data) });
    if let Some(ack) = ack {
        reply["ack"] = ack.into();
    }
    Message::text(reply.to_string())
}

/// Formats an `error` event, echoing `ack` when the error replies to a message.
pub fn error(ack: Option<u64>, code: &str, message: &str) -> Message {
    reply(names::ERROR, ack, payload::error(code, message))
}

pub fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame { code, reason: reason.into() }))
}
