//! REST handlers for presence: who is connected, counted from the connection registry.

use axum::{extract::State, Json};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{extract::Publisher, notifications::publisher_tenant};
use crate::{
    app::AppState,
    problem::{ApiError, Path, Problem, Query},
    validate,
};

/// Query of the presence endpoints.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct PresenceQuery {
    /// Tenant to count in, for publisher tokens without `tenant_id`. Left out, such a token
    /// counts every tenant in `GET /v1/presence` and the tenantless users for one user.
    pub tenant_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PresenceSummary {
    /// Users with at least one open connection.
    pub connected_users: usize,
    /// Open connections of those users.
    pub connections: usize,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserPresence {
    pub user_id: String,
    pub online: bool,
    pub connections: usize,
}

/// Count connected users and connections on every node.
#[utoipa::path(
    get,
    path = "/v1/presence",
    tag = "presence",
    params(PresenceQuery),
    responses(
        (status = 200, description = "Counts", body = PresenceSummary),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not a publisher, or another tenant", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The broker that keeps cluster presence is down", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn summary(
    State(state): State<AppState>,
    Publisher(publisher): Publisher,
    Query(query): Query<PresenceQuery>,
) -> Result<Json<PresenceSummary>, ApiError> {
    let tenant = if publisher.tenant.is_none() && query.tenant_id.is_none() {
        None
    } else {
        Some(publisher_tenant(&publisher, query.tenant_id.as_deref())?)
    };
    let counts = match state.broker.presence_counts(tenant.as_deref()).await {
        Ok(Some(cluster)) => cluster,
        Ok(None) => state.presence.counts(tenant.as_deref()),
        Err(e) => return Err(ApiError::Unavailable(format!("presence: {e}"))),
    };
    Ok(Json(PresenceSummary { connected_users: counts.users, connections: counts.connections }))
}

/// Tell whether one user is connected, and how many times.
#[utoipa::path(
    get,
    path = "/v1/presence/{userId}",
    tag = "presence",
    params(("userId" = String, Path, description = "The user's `sub`"), PresenceQuery),
    responses(
        (status = 200, description = "The user's presence", body = UserPresence),
        (status = 400, description = "Invalid user id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not a publisher, or another tenant", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The broker that keeps cluster presence is down", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn user(
    State(state): State<AppState>,
    Publisher(publisher): Publisher,
    Path(user_id): Path<String>,
    Query(query): Query<PresenceQuery>,
) -> Result<Json<UserPresence>, ApiError> {
    validate::identifier(&user_id).map_err(|p| ApiError::BadRequest {
        detail: format!("path parameter `userId` {p}"),
        field: Some("userId".into()),
    })?;
    let tenant = publisher_tenant(&publisher, query.tenant_id.as_deref())?;
    let connections = match state.broker.presence_of(&tenant, &user_id).await {
        Ok(Some(cluster)) => cluster,
        Ok(None) => state.presence.user_connections(&tenant, &user_id),
        Err(e) => return Err(ApiError::Unavailable(format!("presence: {e}"))),
    };
    Ok(Json(UserPresence { user_id, online: connections > 0, connections }))
}
