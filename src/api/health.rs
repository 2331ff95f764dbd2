//! Liveness, readiness and metrics endpoints for operators.

use axum::{extract::State, http::header, response::IntoResponse, Json};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{
    app::AppState,
    problem::{ApiError, Problem},
};

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `ready`.
    pub status: &'static str,
}

/// Report that the process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Report whether the store and the broker respond.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, body = Health),
        (status = 503, description = "The store or the broker is down; `detail` names the one that failed", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    if state.shutdown.is_cancelled() {
        return Err(ApiError::Unavailable("shutting down".into()));
    }
    state.store.ping().await.map_err(|e| ApiError::Unavailable(format!("store: {e}")))?;
    state.broker.ready().await.map_err(|e| ApiError::Unavailable(format!("broker: {e}")))?;
    Ok(Json(Health { status: "ready" }))
}

/// Export metrics in the Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String)),
)]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let text = state.metrics.render(state.hub.room_count());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text)
}
