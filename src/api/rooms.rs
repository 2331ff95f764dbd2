//! REST handlers for publisher events to a room or to a whole tenant.

use axum::{extract::State, http::StatusCode, Json};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{
    extract::{JsonBody, Publisher},
    notifications::publisher_tenant,
};
use crate::{
    app::AppState,
    events::{names, Room},
    problem::{ApiError, Path, Problem},
    service, validate,
};

/// Body of a room or broadcast event.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublishEvent {
    /// Event name, e.g. `data:updated`: 1 to 64 of `A-Z a-z 0-9 : . _ -`. Names the server
    /// sends itself (`notification:*`, `authenticated`, `error`, `user:*`, `resync`) are
    /// rejected.
    pub event: String,
    /// A JSON object sent as the payload; the server adds `timestamp`. For `data:updated`
    /// it must hold `type` (a string) and `data`.
    #[schema(value_type = Object)]
    pub data: Value,
    /// Tenant to publish in. Only for publisher tokens without `tenant_id`.
    pub tenant_id: Option<String>,
}

/// The room, event name and log position of a published event.
#[derive(Debug, Serialize, ToSchema)]
pub struct Published {
    /// The room as the request named it; `tenant:<id>` for a broadcast.
    pub room: String,
    pub event: String,
    /// The event's position in the room's log.
    pub position: i64,
}

fn check_event(body: &PublishEvent) -> Result<(), ApiError> {
    validate::event_name(&body.event).map_err(|p| ApiError::invalid("event", p))?;
    let Value::Object(map) = &body.data else {
        return Err(ApiError::invalid("data", "must be a JSON object"));
    };
    if body.event == names::DATA_UPDATED {
        if map.get("type").and_then(|t| t.as_str()).is_none_or(str::is_empty) {
            return Err(ApiError::invalid(
                "data.type",
                "is required for `data:updated` and must be a non-empty string",
            ));
        }
        if !map.contains_key("data") {
            return Err(ApiError::invalid("data.data", "is required for `data:updated`"));
        }
    }
    Ok(())
}

/// Maps a room name from the path to a room. `user:<id>` and `tenant:<id>` name the rooms
/// every connection joins by itself; any other name is a room granted by tokens.
fn room_from_path(name: &str, tenant: &str) -> Result<Room, ApiError> {
    validate::identifier(name).map_err(|p| ApiError::BadRequest {
        detail: format!("path parameter `room` {p}"),
        field: Some("room".into()),
    })?;
    if let Some(user) = name.strip_prefix("user:") {
        validate::identifier(user).map_err(|p| ApiError::invalid("room", format!("user id {p}")))?;
        return Ok(Room::User { tenant: tenant.into(), user: user.into() });
    }
    if let Some(named) = name.strip_prefix("tenant:") {
        if named != tenant {
            return Err(ApiError::Forbidden(format!(
                "room `{name}` is outside the tenant this request publishes in"
            )));
        }
        return Ok(Room::Tenant { tenant: tenant.into() });
    }
    Ok(Room::Named { tenant: tenant.into(), name: name.into() })
}

/// Send an event to every connection in a room.
///
/// The room is `user:<id>` for one user's connections, `tenant:<id>` for a tenant, or a room
/// that tokens grant through their `rooms` claim. The event is stored for resume first.
#[utoipa::path(
    post,
    path = "/v1/rooms/{room}/events",
    tag = "rooms",
    params(("room" = String, Path, description = "Room name")),
    request_body = PublishEvent,
    responses(
        (status = 201, description = "Stored and pushed", body = Published),
        (status = 400, description = "Malformed JSON or room name", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not a publisher, or another tenant", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is missing or invalid; `field` names it", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn publish_to_room(
    State(state): State<AppState>,
    Publisher(publisher): Publisher,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<PublishEvent>,
) -> Result<(StatusCode, Json<Published>), ApiError> {
    let tenant = publisher_tenant(&publisher, body.tenant_id.as_deref())?;
    let room = room_from_path(&name, &tenant)?;
    check_event(&body)?;
    let event = service::publish_to_room(&state, &room, &body.event, body.data).await?;
    let position = event.seq.unwrap_or_default();
    Ok((StatusCode::CREATED, Json(Published { room: name, event: body.event, position })))
}

/// Send an event to every connection of a tenant.
///
/// Tenantless users form one tenant of their own, which a publisher without `tenant_id`
/// reaches by leaving `tenantId` out.
#[utoipa::path(
    post,
    path = "/v1/broadcast",
    tag = "rooms",
    request_body = PublishEvent,
    responses(
        (status = 201, description = "Stored and pushed", body = Published),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not a publisher, or another tenant", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is missing or invalid; `field` names it", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn broadcast(
    State(state): State<AppState>,
    Publisher(publisher): Publisher,
    JsonBody(body): JsonBody<PublishEvent>,
) -> Result<(StatusCode, Json<Published>), ApiError> {
    let tenant = publisher_tenant(&publisher, body.tenant_id.as_deref())?;
    check_event(&body)?;
    let label = format!("tenant:{tenant}");
    let room = Room::Tenant { tenant };
    let event = service::publish_to_room(&state, &room, &body.event, body.data).await?;
    let position = event.seq.unwrap_or_default();
    Ok((StatusCode::CREATED, Json(Published { room: label, event: body.event, position })))
}
