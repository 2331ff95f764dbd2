//! Messages from WebSocket clients: `{"event": "...", "data": {...}, "ack": 7}`.

use std::time::Duration;

use axum::extract::ws::Message;
use serde::Deserialize;
use serde_json::{json, Value};

use super::frames;
use crate::{
    app::AppState,
    auth::{AuthError, Identity},
    events::names,
    service,
    store::StoreError,
    transport::session::{Rejection, Session},
};

/// A message from the client.
#[derive(Debug, Deserialize)]
pub struct ClientMessage {
    pub event: String,
    #[serde(default)]
    pub data: Value,
    pub ack: Option<u64>,
}

/// A verified `authenticate` message: its identity and the event id to resume from.
pub struct Authenticate {
    pub identity: Identity,
    pub last_event_id: Option<String>,
}

/// Parses a client message, which must be one JSON object with a string `event`.
fn parse_message(text: &str) -> Result<ClientMessage, String> {
    if !text.trim_start().starts_with('{') {
        return Err("a message must be a JSON object such as {\"event\":\"ping\"}".into());
    }
    serde_json::from_str(text).map_err(|e| format!("invalid message: {e}"))
}

/// Parses and verifies `{"event":"authenticate","data":{"token":"…","lastEventId":"…"}}`.
pub fn parse_authenticate(state: &AppState, text: &str) -> Result<Authenticate, Rejection> {
    let unauthorized = |message: String| Rejection { code: "unauthorized", message };
    let message = parse_message(text).map_err(unauthorized)?;
    if message.event != "authenticate" {
        return Err(unauthorized("the first message must be `authenticate`".into()));
    }
    let token = message.data.get("token").and_then(Value::as_str).unwrap_or_default();
    if token.is_empty() {
        return Err(unauthorized("`data.token` is missing".into()));
    }
    let identity = state.verifier.verify(token).map_err(|e| match e {
        AuthError::Expired => Rejection { code: "token_expired", message: e.to_string() },
        e => unauthorized(e.to_string()),
    })?;
    let last_event_id = match message.data.get("lastEventId") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if id.is_empty() => None,
        Some(Value::String(id)) => Some(id.clone()),
        Some(_) => {
            let message = "`data.lastEventId` must be a string".to_string();
            return Err(Rejection { code: "invalid_last_event_id", message });
        }
    };
    Ok(Authenticate { identity, last_event_id })
}

/// The result of handling a message: a frame to send, and a new token lifetime when the
/// message renewed the token.
pub struct Outcome {
    pub frame: Option<Message>,
    pub renewed: Option<Duration>,
}

impl From<Option<Message>> for Outcome {
    fn from(frame: Option<Message>) -> Self {
        Outcome { frame, renewed: None }
    }
}

fn rejected(ack: Option<u64>, rejection: Rejection) -> Outcome {
    Some(frames::error(ack, rejection.code, &rejection.message)).into()
}

/// Handles one client message. Replies go only to messages that carry an `ack`; errors are
/// always sent.
pub async fn handle(state: &AppState, session: &mut Session, text: &str) -> Outcome {
    let message: ClientMessage = match serde_json::from_str(text) {
        Ok(message) => message,
        Err(e) => {
            return Some(frames::error(None, "invalid_message", &format!("invalid message: {e}"))).into()
        }
    };
    let ack = message.ack;
    let field = |name: &str| message.data.get(name).and_then(Value::as_str).filter(|v| !v.is_empty());
    let answer = |data: Value| ack.map(|_| frames::reply(&message.event, ack, data));
    let missing = |name: &str| -> Outcome {
        Some(frames::error(ack, "invalid_message", &format!("`data.{name}` is missing"))).into()
    };

    match message.event.as_str() {
        "authenticate" => match parse_authenticate(state, text) {
            Ok(fresh)
                if fresh.identity.user_id == session.identity.user_id
                    && fresh.identity.tenant == session.identity.tenant =>
            {
                session.identity = fresh.identity;
                let renewed = session.time_to_expiry(state.config.jwt_leeway);
                Outcome { frame: answer(json!({ "success": true })), renewed: Some(renewed) }
            }
            Ok(_) => {
                let message = "the token belongs to another user; open a new connection for it";
                Some(frames::error(ack, "forbidden", message)).into()
            }
            Err(rejection) => rejected(ack, rejection),
        },
        names::MARK_READ => {
            let Some(id) = field("notificationId") else { return missing("notificationId") };
            if let Err(problem) = crate::validate::identifier(id) {
                let message = format!("`data.notificationId` {problem}");
                return Some(frames::error(ack, "invalid_message", &message)).into();
            }
            let tenant = session.identity.tenant_key().to_string();
            match service::mark_read(state, &tenant, &session.identity.user_id, id).await {
                Ok(_) => answer(json!({ "notificationId": id, "success": true })).into(),
                Err(StoreError::NotFound) => {
                    Some(frames::error(ack, "not_found", "notification not found")).into()
                }
                Err(error) => {
                    tracing::error!(%error, conn.id = %session.connection_id, "mark_read failed");
                    Some(frames::error(ack, "internal", "internal error; the server log has the cause"))
                        .into()
                }
            }
        }
        "room:join" => {
            let Some(room) = field("room").map(String::from) else { return missing("room") };
            match session.join(&room).await {
                Ok(()) => answer(json!({ "room": room, "success": true })).into(),
                Err(rejection) => rejected(ack, rejection),
            }
        }
        "room:leave" => {
            let Some(room) = field("room").map(String::from) else { return missing("room") };
            let left = session.leave(&room);
            answer(json!({ "room": room, "success": left })).into()
        }
        "resume" => {
            let Some(id) = field("lastEventId").map(String::from) else { return missing("lastEventId") };
            match session.resume(&id).await {
                Ok(()) => answer(json!({ "success": true })).into(),
                Err(rejection) => rejected(ack, rejection),
            }
        }
        "ping" => Some(frames::reply("pong", ack, json!({}))).into(),
        other => {
            let message = format!("unknown event `{}`", other.chars().take(64).collect::<String>());
            Some(frames::error(ack, "unknown_event", &message)).into()
        }
    }
}
