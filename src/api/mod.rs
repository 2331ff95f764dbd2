//! The HTTP surface: REST handlers (a file per resource), docs, and the router that joins
//! them with the streaming endpoints.

pub mod docs;
pub mod extract;
pub mod health;
pub mod notifications;
pub mod presence;
pub mod rooms;

use std::time::Duration;

use axum::{
    extract::{DefaultBodyLimit, MatchedPath, Request},
    http::{header, HeaderName, HeaderValue, Method},
    routing::{get, post},
    Router,
};
use tower_http::{
    cors::{AllowOrigin, CorsLayer},
    trace::{DefaultOnFailure, TraceLayer},
};
use tracing::Level;

use crate::{app::AppState, problem::ApiError, transport};

/// Builds the router with every route, the body limit, request tracing and CORS.
pub fn router(state: AppState) -> Router {
    let routes = Router::new()
        .route("/v1/notifications", post(notifications::create).get(notifications::list))
        .route("/v1/notifications/unread-count", get(notifications::unread_count))
        .route("/v1/notifications/read-all", post(notifications::mark_all_read))
        .route("/v1/notifications/{id}/read", post(notifications::mark_read))
        .route("/v1/notifications/{id}", axum::routing::delete(notifications::delete))
        .route("/v1/rooms/{room}/events", post(rooms::publish_to_room))
        .route("/v1/broadcast", post(rooms::broadcast))
        .route("/v1/presence", get(presence::summary))
        .route("/v1/presence/{user_id}", get(presence::user))
        .route("/v1/events", get(transport::sse::handler))
        .route("/v1/ws", get(transport::ws::handler))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(docs::openapi))
        .route("/docs", get(docs::page))
        .route("/docs/", get(docs::page))
        .route("/docs/{file}", get(docs::asset))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed });

    let cors = cors_layer(&state.config.cors_origins);
    routes
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        // ApiError logs each failure once at the level it deserves, so the layer's own
        // failure line stays at debug: a readiness probe during an outage is not an error.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
        )
        .layer(cors)
        .with_state(state)
}

/// Names a request's span after its route. Only the path is recorded: query strings may
/// hold `access_token`, and no span or log line may see it.
fn request_span(request: &Request) -> tracing::Span {
    let route = request.extensions().get::<MatchedPath>().map(MatchedPath::as_str).unwrap_or("unmatched");
    tracing::debug_span!("http.request", method = %request.method(), route, path = %request.uri().path())
}

/// Allows exactly the configured origins, with credentials. Configuration rejects `*`, so a
/// wildcard is never combined with credentials.
fn cors_layer(origins: &[String]) -> CorsLayer {
    let origins: Vec<HeaderValue> = origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_credentials(true)
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("last-event-id"),
        ])
        .max_age(Duration::from_secs(3600))
}
