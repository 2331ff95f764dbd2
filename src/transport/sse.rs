//! Server-Sent Events: the frame format and the loop that feeds one `text/event-stream`.

use std::{convert::Infallible, pin::Pin};

use axum::{
    body::Body,
    extract::State,
    http::{header, HeaderMap, HeaderValue},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use futures_util::stream;
use serde::Deserialize;
use tokio::time::Sleep;

use super::{
    open_error,
    session::{Interrupted, Session, Transport},
    stream_identity,
};
use crate::{
    app::AppState,
    auth::AuthError,
    events::names,
    hub::Heartbeat,
    metrics::bump,
    problem::{ApiError, Query},
};

/// Reconnect delay suggested to clients at the start of a stream, in milliseconds.
pub const RETRY_MS: u64 = 2_000;
/// Reconnect delay suggested when the server shuts down, in milliseconds. It spreads the
/// reconnects of many clients over the time another node needs to take them.
pub const SHUTDOWN_RETRY_MS: u64 = 5_000;

/// Query parameters of `GET /v1/events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SseQuery {
    /// The token, for clients such as `EventSource` that cannot set headers.
    pub access_token: Option<String>,
    /// Comma-separated rooms to join, each granted by the token's `rooms` claim.
    pub rooms: Option<String>,
    /// Event id to resume after, for a first connection; browsers send the `Last-Event-ID`
    /// header on reconnect, which takes precedence.
    #[serde(rename = "lastEventId")]
    #[param(rename = "lastEventId")]
    pub last_event_id: Option<String>,
}

/// Writes one event in SSE framing. `data` may hold newlines; each line becomes its own
/// `data:` field, which clients join back with `\n`. Line breaks in `id` and `event` would
/// split the frame, so they are removed.
pub fn frame(id: Option<&str>, name: &str, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + name.len() + 32);
    if let Some(id) = id {
        out.push_str("id: ");
        push_single_line(&mut out, id);
        out.push('\n');
    }
    out.push_str("event: ");
    push_single_line(&mut out, name);
    out.push('\n');
    for line in data.split("\r\n").flat_map(|l| l.split(['\r', '\n'])) {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

fn push_single_line(out: &mut String, text: &str) {
    out.extend(text.chars().filter(|c| !matches!(c, '\r' | '\n' | '\0')));
}

/// Opens an SSE stream of the caller's events.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "streaming",
    params(
        SseQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Event id to resume after; sent by browsers on reconnect"),
    ),
    responses(
        (status = 200, description = "An endless `text/event-stream`; `authenticated` comes first, then stored events after the resumed id, then live ones", content_type = "text/event-stream", body = String),
        (status = 400, description = "`lastEventId` is malformed, of another user, or ahead of the server", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 429, description = "The user has the maximum number of connections", body = crate::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ("access_token" = [])),
)]
pub async fn handler(
    State(state): State<AppState>,
    Query(query): Query<SseQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let identity = stream_identity(&state, &headers, query.access_token.as_deref())?
        .ok_or(ApiError::Unauthorized(AuthError::Missing))?;
    let header_id = headers.get("last-event-id").map(|v| {
        v.to_str()
            .map_err(|_| ApiError::InvalidLastEventId("`Last-Event-ID` header must be visible ASCII".into()))
    });
    let resume = match header_id.transpose()? {
        Some(id) if !id.is_empty() => Some(id.to_string()),
        _ => query.last_event_id.filter(|id| !id.is_empty()),
    };
    let mut session =
        Session::open(&state, identity, Transport::Sse, resume.as_deref()).await.map_err(open_error)?;

    let mut opening = vec![
        Bytes::from(format!("retry: {RETRY_MS}\n\n")),
        frame(None, names::AUTHENTICATED, &session.authenticated_payload().to_string()),
    ];
    let requested = query.rooms.as_deref().unwrap_or("");
    for room in requested.split(',').map(str::trim).filter(|r| !r.is_empty()) {
        if let Err(rejection) = session.join(room).await {
            opening.push(frame(None, names::ERROR, &rejection.payload().to_string()));
        }
    }
    // A frame with an id and no data sets `EventSource.lastEventId` without dispatching an
    // event, so a client that reconnects before any event arrives still resumes from here.
    opening.push(Bytes::from(format!("id: {}\n\n", session.event_id())));

    let expiry = Box::pin(tokio::time::sleep(session.time_to_expiry(state.config.jwt_leeway)));
    let feed = Feed {
        session,
        heartbeat: state.heartbeat.clone(),
        shutdown: state.shutdown.clone(),
        expiry,
        pending: opening.into(),
        finished: false,
    };
    let body = Body::from_stream(stream::unfold(feed, |mut feed| async move {
        let chunk = feed.next_chunk().await?;
        Some((Ok::<Bytes, Infallible>(chunk), feed))
    }));

    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// The state of one SSE stream between chunks.
struct Feed {
    session: Session,
    heartbeat: Heartbeat,
    shutdown: tokio_util::sync::CancellationToken,
    expiry: Pin<Box<Sleep>>,
    pending: std::collections::VecDeque<Bytes>,
    finished: bool,
}

impl Feed {
    /// Returns the next bytes to write, or `None` to end the stream.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(chunk) = self.pending.pop_front() {
            return Some(chunk);
        }
        if self.finished {
            return None;
        }
        self.finished = true;
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => {
                bump(&self.session.metrics.disconnects_shutdown);
                // The retry hint makes browsers wait before reconnecting, and ending the
                // stream makes them reconnect to this node's successor.
                Some(Bytes::from(format!("retry: {SHUTDOWN_RETRY_MS}\n\n")))
            }
            _ = &mut self.expiry => {
                bump(&self.session.metrics.disconnects_expired);
                let error = crate::events::payload::error("token_expired", "the token has expired; reconnect with a fresh one");
                Some(frame(None, names::ERROR, &error.to_string()))
            }
            delivery = self.session.next() => match delivery {
                Ok(delivery) => {
                    self.finished = false;
                    Some(frame(delivery.id.as_deref(), &delivery.event.name, &delivery.event.data))
                }
                Err(Interrupted::Lagged) => {
                    bump(&self.session.metrics.disconnects_slow);
                    tracing::info!(user.id = %self.session.identity.user_id, conn.id = %self.session.connection_id, "closing SSE stream that fell behind");
                    let error = crate::events::payload::error("slow_consumer", "the connection fell behind; reconnect with Last-Event-ID to resume");
                    Some(frame(None, names::ERROR, &error.to_string()))
                }
                Err(Interrupted::Store(error)) => {
                    tracing::warn!(%error, conn.id = %self.session.connection_id, "replay failed; ending SSE stream");
                    let error = crate::events::payload::error("unavailable", "the store is unavailable; reconnect with Last-Event-ID to resume");
                    Some(frame(None, names::ERROR, &error.to_string()))
                }
            },
            _ = self.heartbeat.tick() => {
                self.finished = false;
                Some(Bytes::from_static(b": keep-alive\n\n"))
            }
        }
    }
}
