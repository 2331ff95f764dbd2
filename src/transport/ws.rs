//! WebSocket: the JSON frame format, client messages, and the loop of one socket.

use std::time::Duration;

use axum::{
    extract::{
        ws::{rejection::WebSocketUpgradeRejection, CloseFrame, Message, WebSocket},
        State, WebSocketUpgrade,
    },
    http::HeaderMap,
    response::Response,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    session::{Rejection, Session, Transport},
    stream_identity,
};
use crate::{
    app::AppState,
    auth::{AuthError, Identity},
    events::{names, payload},
    hub::Lagged,
    problem::{ApiError, Query},
    service,
    store::StoreError,
};

/// Close codes this server sends, beside the standard ones.
pub mod close {
    /// The token expired or was never given; reconnect with a fresh one.
    pub const UNAUTHORIZED: u16 = 4001;
    /// The connection fell behind; reconnect and resume from the last event id.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// The server is restarting (RFC 6455 registry); reconnect after a pause.
    pub const SERVICE_RESTART: u16 = 1012;
}

/// Read buffer per socket, in bytes. tungstenite's default of 128 KiB per idle connection
/// costs more than everything else a connection holds; client messages are small.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// Query parameters of `GET /v1/ws`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WsQuery {
    /// The token. May be left out and sent as the first message instead, which keeps it
    /// out of URLs.
    pub access_token: Option<String>,
}

/// A message from the client: `{"event": "...", "data": {...}, "ack": 7}`.
#[derive(Debug, Deserialize)]
struct ClientMessage {
    event: String,
    #[serde(default)]
    data: Value,
    ack: Option<u64>,
}

/// Opens a WebSocket carrying the caller's events.
#[utoipa::path(
    get,
    path = "/v1/ws",
    tag = "streaming",
    params(WsQuery),
    responses(
        (status = 101, description = "Switched to WebSocket; `authenticated` comes first, or after an `authenticate` message"),
        (status = 400, description = "Not a WebSocket upgrade request", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 401, description = "A token was given and is invalid", body = crate::problem::Problem, content_type = "application/problem+json"),
    ),
    security((), ("bearer" = []), ("access_token" = [])),
)]
pub async fn handler(
    State(state): State<AppState>,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let identity = stream_identity(&state, &headers, query.access_token.as_deref())?;
    let upgrade = upgrade.map_err(|e| ApiError::BadRequest {
        detail: format!("expected a WebSocket upgrade request: {e}"),
        field: None,
    })?;
    let limit = state.config.max_ws_message_bytes;
    Ok(upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| serve(state, socket, identity)))
}

/// Formats one event as a WebSocket text frame.
fn event_frame(name: &str, id: Option<&str>, data: &str) -> Message {
    let name = Value::from(name);
    let text = match id {
        Some(id) => format!(r#"{{"event":{name},"id":{},"data":{data}}}"#, Value::from(id)),
        None => format!(r#"{{"event":{name},"data":{data}}}"#),
    };
    Message::text(text)
}

/// Formats a reply to a client message, echoing its `ack`.
fn reply_frame(name: &str, ack: Option<u64>, data: Value) -> Message {
    let mut reply = json!({ "event": name, "data": data });
    if let Some(ack) = ack {
        reply["ack"] = ack.into();
    }
    Message::text(reply.to_string())
}

fn error_frame(ack: Option<u64>, code: &str, message: &str) -> Message {
    reply_frame(names::ERROR, ack, payload::error(code, message))
}

fn close_frame(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame { code, reason: reason.into() }))
}

async fn serve(state: AppState, mut socket: WebSocket, identity: Option<Identity>) {
    let identity = match identity {
        Some(identity) => identity,
        None => match await_authenticate(&state, &mut socket).await {
            Some(identity) => identity,
            None => return,
        },
    };
    let mut session = Session::open(&state, identity, Transport::WebSocket);
    let hello = session.authenticated_payload().to_string();
    if socket.send(event_frame(names::AUTHENTICATED, None, &hello)).await.is_ok() {
        run(&state, &mut socket, &mut session).await;
    }
}

/// Waits for `{"event":"authenticate","data":{"token":"…"}}` within the configured time.
/// On failure the client gets an `error` event and close code 4001.
async fn await_authenticate(state: &AppState, socket: &mut WebSocket) -> Option<Identity> {
    let outcome = tokio::select! {
        _ = state.shutdown.cancelled() => return None,
        outcome = tokio::time::timeout(state.config.auth_timeout, socket.recv()) => outcome,
    };
    let (code, message) = match outcome {
        Err(_) => ("auth_timeout", "no authenticate message in time".to_string()),
        Ok(Some(Ok(Message::Text(text)))) => match parse_authenticate(state, &text) {
            Ok(identity) => return Some(identity),
            Err(rejection) => (rejection.code, rejection.message),
        },
        Ok(Some(Ok(_))) => ("unauthorized", "the first message must be `authenticate`".to_string()),
        Ok(_) => return None,
    };
    let _ = socket.send(error_frame(None, code, &message)).await;
    let _ = socket.send(close_frame(close::UNAUTHORIZED, "unauthorized")).await;
    None
}

fn parse_authenticate(state: &AppState, text: &str) -> Result<Identity, Rejection> {
    let unauthorized = |message: String| Rejection { code: "unauthorized", message };
    let message: ClientMessage =
        serde_json::from_str(text).map_err(|e| unauthorized(format!("invalid message: {e}")))?;
    if message.event != "authenticate" {
        return Err(unauthorized("the first message must be `authenticate`".into()));
    }
    let token = message.data.get("token").and_then(Value::as_str).unwrap_or_default();
    if token.is_empty() {
        return Err(unauthorized("`data.token` is missing".into()));
    }
    state.verifier.verify(token).map_err(|e| match e {
        AuthError::Expired => Rejection { code: "token_expired", message: e.to_string() },
        e => unauthorized(e.to_string()),
    })
}

/// The reason a socket loop ended, for the log.
enum End {
    Closed(&'static str),
    Sent(u16, &'static str),
}

/// Runs the loop of an authenticated socket. Every branch that can end the socket watches the
/// shutdown token, because axum does not wait for WebSocket tasks on shutdown.
async fn run(state: &AppState, socket: &mut WebSocket, session: &mut Session) {
    let mut heartbeat = state.heartbeat.clone();
    let leeway = state.config.jwt_leeway;
    let expiry = tokio::time::sleep(session.time_to_expiry(leeway));
    tokio::pin!(expiry);
    // Set when a ping is sent and cleared by any frame from the peer. If it is still set at
    // the next tick, the peer has been silent for a whole interval.
    let mut awaiting_pong = false;

    let end = loop {
        let outgoing = tokio::select! {
            biased;
            _ = state.shutdown.cancelled() => {
                break End::Sent(close::SERVICE_RESTART, "server restarting");
            }
            _ = &mut expiry => {
                let _ = socket.send(error_frame(None, "token_expired", "the token has expired; reconnect with a fresh one")).await;
                break End::Sent(close::UNAUTHORIZED, "token expired");
            }
            received = socket.recv() => {
                awaiting_pong = false;
                match received {
                    Some(Ok(Message::Text(text))) => {
                        let reply = handle_message(state, session, &text).await;
                        if let Some(Renewed(expires_in)) = reply.renewed {
                            expiry.as_mut().reset(tokio::time::Instant::now() + expires_in);
                        }
                        reply.frame
                    }
                    Some(Ok(Message::Binary(_))) => Some(error_frame(None, "invalid_message", "binary frames are not accepted; send JSON text")),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => None,
                    Some(Ok(Message::Close(_))) | None => break End::Closed("client closed"),
                    Some(Err(_)) => break End::Closed("protocol error"),
                }
            }
            delivery = session.next() => match delivery {
                Ok(d) => Some(event_frame(&d.event.name, d.id.as_deref(), &d.event.data)),
                Err(Lagged) => {
                    let _ = socket.send(error_frame(None, "slow_consumer", "the connection fell behind; reconnect with lastEventId to resume")).await;
                    break End::Sent(close::SLOW_CONSUMER, "slow consumer");
                }
            },
            _ = heartbeat.tick() => {
                if awaiting_pong {
                    break End::Closed("peer stopped answering pings");
                }
                awaiting_pong = true;
                Some(Message::Ping(Default::default()))
            }
        };
        if let Some(frame) = outgoing {
            if socket.send(frame).await.is_err() {
                break End::Closed("write failed");
            }
        }
    };

    match end {
        End::Sent(code, reason) => {
            let _ = socket.send(close_frame(code, reason)).await;
            tracing::debug!(conn.id = %session.connection_id, code, reason, "closed WebSocket");
        }
        End::Closed(reason) => tracing::debug!(conn.id = %session.connection_id, reason, "WebSocket ended"),
    }
}

/// A successful `authenticate` on an open socket: the new time to expiry.
struct Renewed(Duration);

struct Reply {
    frame: Option<Message>,
    renewed: Option<Renewed>,
}

impl From<Option<Message>> for Reply {
    fn from(frame: Option<Message>) -> Self {
        Reply { frame, renewed: None }
    }
}

/// Handles one client message and returns what to send back. Replies are only sent to
/// messages that carry an `ack`; errors are always sent.
async fn handle_message(state: &AppState, session: &mut Session, text: &str) -> Reply {
    let message: ClientMessage = match serde_json::from_str(text) {
        Ok(message) => message,
        Err(e) => return Some(error_frame(None, "invalid_message", &format!("invalid message: {e}"))).into(),
    };
    let ack = message.ack;
    let field = |name: &str| message.data.get(name).and_then(Value::as_str).filter(|v| !v.is_empty());
    let answer = |data: Value| ack.map(|_| reply_frame(&message.event, ack, data));

    match message.event.as_str() {
        "authenticate" => match parse_authenticate(state, text) {
            Ok(fresh)
                if fresh.user_id == session.identity.user_id && fresh.tenant == session.identity.tenant =>
            {
                session.identity = fresh;
                let renewed = Renewed(session.time_to_expiry(state.config.jwt_leeway));
                Reply { frame: answer(json!({ "success": true })), renewed: Some(renewed) }
            }
            Ok(_) => Some(error_frame(
                ack,
                "forbidden",
                "the token belongs to another user; open a new connection for it",
            ))
            .into(),
            Err(rejection) => Some(error_frame(ack, rejection.code, &rejection.message)).into(),
        },
        names::MARK_READ => {
            let Some(id) = field("notificationId") else {
                return Some(error_frame(ack, "invalid_message", "`data.notificationId` is missing")).into();
            };
            let tenant = session.identity.tenant_key().to_string();
            match service::mark_read(state, &tenant, &session.identity.user_id, id).await {
                Ok(_) => answer(json!({ "notificationId": id, "success": true })).into(),
                Err(StoreError::NotFound) => {
                    Some(error_frame(ack, "not_found", "notification not found")).into()
                }
                Err(error) => {
                    tracing::error!(%error, conn.id = %session.connection_id, "mark_read failed");
                    Some(error_frame(ack, "internal", "internal error; the server log has the cause")).into()
                }
            }
        }
        "room:join" | "room:leave" => {
            let Some(room) = field("room") else {
                return Some(error_frame(ack, "invalid_message", "`data.room` is missing")).into();
            };
            let room = room.to_string();
            if message.event == "room:join" {
                match session.join(state, &room) {
                    Ok(()) => answer(json!({ "room": room, "success": true })).into(),
                    Err(rejection) => Some(error_frame(ack, rejection.code, &rejection.message)).into(),
                }
            } else {
                let left = session.leave(&room);
                answer(json!({ "room": room, "success": left })).into()
            }
        }
        "ping" => Some(reply_frame("pong", ack, json!({}))).into(),
        other => {
            let message = format!("unknown event `{}`", other.chars().take(64).collect::<String>());
            Some(error_frame(ack, "unknown_event", &message)).into()
        }
    }
}
