//! Streaming transports: SSE and WebSocket framing and their per-connection loops.

pub mod session;
pub mod sse;
pub mod ws;

use axum::http::HeaderMap;

use crate::{
    app::AppState,
    auth::{bearer_from_headers, AuthError, Identity},
    problem::ApiError,
};
use session::OpenError;

/// Verifies the token of a streaming request: the `Authorization` header when present,
/// else the `access_token` query parameter. Returns `None` when neither is given.
pub fn stream_identity(
    state: &AppState,
    headers: &HeaderMap,
    access_token: Option<&str>,
) -> Result<Option<Identity>, AuthError> {
    let token = match bearer_from_headers(headers)? {
        Some(token) => Some(token),
        None => access_token.filter(|t| !t.is_empty()),
    };
    token.map(|t| state.verifier.verify(t)).transpose()
}

/// Maps a failure to open a connection to the HTTP error returned at the handshake.
pub fn open_error(error: OpenError) -> ApiError {
    match error {
        OpenError::Cursor(_) | OpenError::FutureCursor(_) => {
            ApiError::InvalidLastEventId(format!("`lastEventId` is invalid: {error}"))
        }
        OpenError::TooMany(_) => ApiError::TooManyRequests(error.to_string()),
        OpenError::Store(e) => ApiError::Unavailable(format!("store: {e}")),
    }
}
