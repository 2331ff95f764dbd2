//! WebSocket: the upgrade, authentication, and the loop of one socket.

mod frames;
mod messages;

pub use frames::close;

use std::time::Duration;

use axum::{
    extract::{
        ws::{rejection::WebSocketUpgradeRejection, Message, WebSocket},
        State, WebSocketUpgrade,
    },
    http::{header, HeaderMap},
    response::Response,
};
use serde::Deserialize;
use tokio::time::{timeout, Instant};

use super::{
    open_error,
    session::{Interrupted, OpenError, Session, Transport},
    stream_identity,
};
use crate::{
    app::AppState,
    events::names,
    metrics::bump,
    problem::{ApiError, Query},
};

/// Read buffer per socket, in bytes. tungstenite's default of 128 KiB per idle connection
/// costs more than everything else a connection holds, and client messages are small.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// Query parameters of `GET /v1/ws`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WsQuery {
    /// The token. May be left out and sent as the first message instead, which keeps it
    /// out of URLs.
    pub access_token: Option<String>,
    /// Event id to resume after. A client that authenticates by message may put it in the
    /// `authenticate` message instead.
    #[serde(rename = "lastEventId")]
    #[param(rename = "lastEventId")]
    pub last_event_id: Option<String>,
}

/// Opens a WebSocket carrying the caller's events.
#[utoipa::path(
    get,
    path = "/v1/ws",
    tag = "streaming",
    params(WsQuery),
    responses(
        (status = 101, description = "Switched to WebSocket; `authenticated` comes first, or after an `authenticate` message"),
        (status = 400, description = "Not a WebSocket upgrade request, or an invalid `lastEventId`", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 401, description = "A token was given and is invalid", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The `Origin` header names an origin outside NOTIFY_CORS_ORIGINS", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 429, description = "The user has the maximum number of connections", body = crate::problem::Problem, content_type = "application/problem+json"),
    ),
    security((), ("bearer" = []), ("access_token" = [])),
)]
pub async fn handler(
    State(state): State<AppState>,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // Browsers send `Origin` with every WebSocket upgrade and apply no CORS to it, so the
    // allowed origins are checked here; other clients send none.
    if let Some(origin) = headers.get(header::ORIGIN) {
        let allowed = origin.to_str().is_ok_and(|o| state.config.cors_origins.iter().any(|a| a == o));
        if !allowed {
            return Err(ApiError::Forbidden("this Origin is not in NOTIFY_CORS_ORIGINS".into()));
        }
    }
    let identity = stream_identity(&state, &headers, query.access_token.as_deref())?;
    let upgrade = upgrade.map_err(|e| ApiError::BadRequest {
        detail: format!("expected a WebSocket upgrade request: {e}"),
        field: None,
    })?;
    // With the token in the request, the session opens before the upgrade, so a bad
    // `lastEventId` or a full connection quota is an HTTP error the client can read.
    let session = match identity {
        Some(identity) => {
            let resume = query.last_event_id.as_deref().filter(|id| !id.is_empty());
            Some(Session::open(&state, identity, Transport::WebSocket, resume).await.map_err(open_error)?)
        }
        None => None,
    };
    let limit = state.config.max_ws_message_bytes;
    Ok(upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| serve(state, socket, session, query.last_event_id)))
}

async fn serve(
    state: AppState,
    mut socket: WebSocket,
    session: Option<Session>,
    last_event_id: Option<String>,
) {
    let mut session = match session {
        Some(session) => session,
        None => match open_after_authenticate(&state, &mut socket, last_event_id).await {
            Some(session) => session,
            None => return,
        },
    };
    let hello = session.authenticated_payload().to_string();
    if socket.send(frames::event(names::AUTHENTICATED, None, &hello)).await.is_ok() {
        run(&state, &mut socket, &mut session).await;
    }
}

/// Waits for the `authenticate` message within the configured time, then opens the
/// session. On failure the client gets an `error` event and a close frame.
async fn open_after_authenticate(
    state: &AppState,
    socket: &mut WebSocket,
    query_id: Option<String>,
) -> Option<Session> {
    let outcome = tokio::select! {
        _ = state.shutdown.cancelled() => return None,
        outcome = timeout(state.config.auth_timeout, socket.recv()) => outcome,
    };
    let (authenticate, code, message) = match outcome {
        Err(_) => (None, "auth_timeout", "no authenticate message in time".to_string()),
        Ok(Some(Ok(Message::Text(text)))) => match messages::parse_authenticate(state, &text) {
            Ok(authenticate) => (Some(authenticate), "", String::new()),
            Err(rejection) => (None, rejection.code, rejection.message),
        },
        Ok(Some(Ok(_))) => (None, "unauthorized", "the first message must be `authenticate`".to_string()),
        Ok(_) => return None,
    };
    let Some(authenticate) = authenticate else {
        let _ = socket.send(frames::error(None, code, &message)).await;
        let _ = socket.send(frames::close(close::UNAUTHORIZED, "unauthorized")).await;
        return None;
    };
    let resume = authenticate.last_event_id.or(query_id.filter(|id| !id.is_empty()));
    match Session::open(state, authenticate.identity, Transport::WebSocket, resume.as_deref()).await {
        Ok(session) => Some(session),
        Err(error) => {
            let code = match error {
                OpenError::Cursor(_) | OpenError::FutureCursor(_) => "invalid_last_event_id",
                OpenError::TooMany(_) => "too_many_connections",
                OpenError::Store(_) => "unavailable",
            };
            let _ = socket.send(frames::error(None, code, &error.to_string())).await;
            let _ = socket.send(frames::close(close::POLICY, "rejected")).await;
            None
        }
    }
}

/// The reason a socket loop ended.
enum End {
    /// The peer is gone or failed; nothing more can be sent.
    Gone(&'static str),
    /// The server ends the socket with this close code and reason.
    Close(u16, &'static str),
}

/// Runs the loop of an authenticated socket. Every branch that can end the socket watches
/// the shutdown token, because axum does not wait for WebSocket tasks on shutdown.
async fn run(state: &AppState, socket: &mut WebSocket, session: &mut Session) {
    let mut heartbeat = state.heartbeat.clone();
    let peer_timeout = state.config.peer_timeout;
    let expiry = tokio::time::sleep(session.time_to_expiry(state.config.jwt_leeway));
    tokio::pin!(expiry);
    // Any frame from the peer, pongs included, proves it alive.
    let mut last_heard = Instant::now();

    let end = loop {
        let outgoing = tokio::select! {
            biased;
            _ = state.shutdown.cancelled() => {
                bump(&session.metrics.disconnects_shutdown);
                break End::Close(close::SERVICE_RESTART, "server restarting");
            }
            _ = &mut expiry => {
                bump(&session.metrics.disconnects_expired);
                let _ = send(socket, frames::error(None, "token_expired", "the token has expired; reconnect with a fresh one"), peer_timeout).await;
                break End::Close(close::UNAUTHORIZED, "token expired");
            }
            received = socket.recv() => {
                last_heard = Instant::now();
                match received {
                    Some(Ok(Message::Text(text))) => {
                        let outcome = messages::handle(state, session, &text).await;
                        if let Some(expires_in) = outcome.renewed {
                            expiry.as_mut().reset(Instant::now() + expires_in);
                        }
                        outcome.frame
                    }
                    Some(Ok(Message::Binary(_))) => Some(frames::error(None, "invalid_message", "binary frames are not accepted; send JSON text")),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => None,
                    Some(Ok(Message::Close(_))) | None => break End::Gone("client closed"),
                    Some(Err(error)) => break read_failed(state, session, socket, error, peer_timeout).await,
                }
            }
            delivery = session.next() => match delivery {
                Ok(d) => Some(frames::event(&d.event.name, d.id.as_deref(), &d.event.data)),
                Err(Interrupted::Lagged) => {
                    bump(&session.metrics.disconnects_slow);
                    tracing::info!(user.id = %session.identity.user_id, conn.id = %session.connection_id, "closing WebSocket that fell behind");
                    let _ = send(socket, frames::error(None, "slow_consumer", "the connection fell behind; reconnect with lastEventId to resume"), peer_timeout).await;
                    break End::Close(close::SLOW_CONSUMER, "slow consumer");
                }
                Err(Interrupted::Store(error)) => {
                    tracing::warn!(%error, conn.id = %session.connection_id, "replay failed; closing WebSocket");
                    let _ = send(socket, frames::error(None, "unavailable", "the store is unavailable; reconnect with lastEventId to resume"), peer_timeout).await;
                    break End::Close(close::SERVICE_RESTART, "store unavailable");
                }
            },
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > peer_timeout {
                    bump(&session.metrics.disconnects_dead_peer);
                    break End::Gone("peer stopped answering pings");
                }
                Some(Message::Ping(Default::default()))
            }
        };
        if let Some(frame) = outgoing {
            if let Err(reason) = send(socket, frame, peer_timeout).await {
                if reason == "write timed out" {
                    bump(&session.metrics.disconnects_slow);
                }
                break End::Gone(reason);
            }
        }
    };

    match end {
        End::Close(code, reason) => {
            let _ = send(socket, frames::close(code, reason), peer_timeout).await;
            tracing::debug!(conn.id = %session.connection_id, code, reason, "closed WebSocket");
        }
        End::Gone(reason) => tracing::debug!(conn.id = %session.connection_id, reason, "WebSocket ended"),
    }
}

/// Sends one frame, giving up after `limit`: a peer that does not read for that long is
/// treated as gone, so a stalled socket never blocks its task forever.
async fn send(socket: &mut WebSocket, frame: Message, limit: Duration) -> Result<(), &'static str> {
    match timeout(limit, socket.send(frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err("write failed"),
        Err(_) => Err("write timed out"),
    }
}

/// Ends the loop after a read error; an oversized message gets an `error` event and 1009.
async fn read_failed(
    state: &AppState,
    session: &Session,
    socket: &mut WebSocket,
    error: axum::Error,
    limit: Duration,
) -> End {
    let text = error.to_string();
    // tungstenite reports size limits only through its error text ("Space limit exceeded:
    // Message too long", tungstenite 0.29), and axum does not re-export its error type.
    if text.contains("Space limit exceeded") {
        tracing::info!(user.id = %session.identity.user_id, conn.id = %session.connection_id, limit = state.config.max_ws_message_bytes, "closing WebSocket after an oversized message");
        let message = format!("messages may be at most {} bytes", state.config.max_ws_message_bytes);
        let _ = send(socket, frames::error(None, "message_too_large", &message), limit).await;
        return End::Close(close::TOO_BIG, "message too big");
    }
    tracing::debug!(conn.id = %session.connection_id, %error, "WebSocket read failed");
    End::Gone("protocol error")
}
