//! REST handlers for notifications: create, list, count, mark read, delete.

use std::collections::{HashMap, HashSet};

use axum::{extract::State, http::StatusCode, Json};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::extract::{JsonBody, Publisher, User};
use crate::{
    app::AppState,
    auth::Identity,
    events::Notification,
    problem::{ApiError, Path, Problem, Query},
    service,
    store::{NewNotification, PageCursor, StatusFilter},
    validate,
};

/// Most recipients one create request may name.
pub const MAX_RECIPIENTS: usize = 1_000;
const MAX_TITLE_CHARS: usize = 200;
const MAX_MESSAGE_CHARS: usize = 4_000;
const MAX_TYPE_CHARS: usize = 64;
const DEFAULT_PAGE: u32 = 20;
const MAX_PAGE: u32 = 100;

/// Body of `POST /v1/notifications`. Give exactly one of `userId` and `userIds`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateNotifications {
    /// One recipient's `sub`.
    pub user_id: Option<String>,
    /// Several recipients' `sub`s, at most 1000; repeats are ignored.
    pub user_ids: Option<Vec<String>>,
    /// Tenant of the recipients. Only for publisher tokens without `tenant_id`; a token
    /// with one publishes inside its own tenant.
    pub tenant_id: Option<String>,
    /// At most 200 characters.
    pub title: String,
    /// At most 4000 characters.
    pub message: String,
    /// Category, at most 64 characters, e.g. `invoice.paid`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A JSON object passed to clients unchanged.
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
}

/// Notifications that were created, one per recipient.
#[derive(Debug, Serialize, ToSchema)]
pub struct Created {
    pub notifications: Vec<Notification>,
}

/// A page of notifications, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Page {
    pub items: Vec<Notification>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UnreadCount {
    pub unread_count: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReadAll {
    /// How many notifications changed from unread to read.
    pub updated: u64,
}

/// Query of `GET /v1/notifications`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ListQuery {
    /// `unread`, `read` or `all` (default).
    status: Option<StatusFilter>,
    /// Page size, 1 to 100, default 20.
    limit: Option<u32>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
}

/// Resolves the tenant a publisher acts in. A token's own tenant wins; naming another one
/// is forbidden rather than silently ignored.
pub fn publisher_tenant(publisher: &Identity, requested: Option<&str>) -> Result<String, ApiError> {
    match (&publisher.tenant, requested) {
        (Some(own), Some(asked)) if own != asked => {
            Err(ApiError::Forbidden(format!("this token publishes only in its own tenant, not in `{asked}`")))
        }
        (Some(own), _) => Ok(own.clone()),
        (None, Some(asked)) => {
            validate::identifier(asked).map_err(|p| ApiError::invalid("tenantId", p))?;
            Ok(asked.to_string())
        }
        (None, None) => Ok(String::new()),
    }
}

fn recipients(body: &CreateNotifications) -> Result<Vec<String>, ApiError> {
    let (list, field) = match (&body.user_id, &body.user_ids) {
        (Some(_), Some(_)) => return Err(ApiError::invalid("userIds", "cannot be combined with `userId`")),
        (None, None) => return Err(ApiError::invalid("userId", "is required (or give `userIds`)")),
        (Some(one), None) => (std::slice::from_ref(one), "userId"),
        (None, Some(many)) => (many.as_slice(), "userIds"),
    };
    if list.is_empty() {
        return Err(ApiError::invalid("userIds", "must not be empty"));
    }
    if list.len() > MAX_RECIPIENTS {
        return Err(ApiError::invalid("userIds", format!("must have at most {MAX_RECIPIENTS} entries")));
    }
    let mut seen = HashSet::new();
    let mut users = Vec::with_capacity(list.len());
    for (i, user) in list.iter().enumerate() {
        validate::identifier(user).map_err(|problem| {
            let name = if field == "userId" { field.to_string() } else { format!("userIds[{i}]") };
            ApiError::invalid(name, problem)
        })?;
        if seen.insert(user.as_str()) {
            users.push(user.clone());
        }
    }
    Ok(users)
}

fn content(body: CreateNotifications) -> Result<NewNotification, ApiError> {
    validate::text(&body.title, MAX_TITLE_CHARS).map_err(|p| ApiError::invalid("title", p))?;
    validate::text(&body.message, MAX_MESSAGE_CHARS).map_err(|p| ApiError::invalid("message", p))?;
    validate::text(&body.kind, MAX_TYPE_CHARS).map_err(|p| ApiError::invalid("type", p))?;
    if body.kind.chars().any(char::is_control) {
        return Err(ApiError::invalid("type", "must not contain control characters"));
    }
    let data = match body.data {
        None | Some(Value::Null) => None,
        Some(object @ Value::Object(_)) => Some(object),
        Some(_) => return Err(ApiError::invalid("data", "must be a JSON object")),
    };
    Ok(NewNotification { title: body.title, message: body.message, kind: body.kind, data })
}

/// Create notifications for one or more users.
///
/// Returns 201 only after the notifications are committed; each recipient's connections then
/// get `notification:new` and `notification:unread_count`.
#[utoipa::path(
    post,
    path = "/v1/notifications",
    tag = "notifications",
    request_body = CreateNotifications,
    responses(
        (status = 201, description = "Stored and pushed", body = Created),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not a publisher, or another tenant", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over the limit", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is missing or invalid; `field` names it", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn create(
    State(state): State<AppState>,
    Publisher(publisher): Publisher,
    JsonBody(body): JsonBody<CreateNotifications>,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    let tenant = publisher_tenant(&publisher, body.tenant_id.as_deref())?;
    let users = recipients(&body)?;
    let content = content(body)?;
    let notifications = service::create_notifications(&state, &tenant, &users, &content).await?;
    Ok((StatusCode::CREATED, Json(Created { notifications })))
}

/// List the caller's notifications, newest first.
#[utoipa::path(
    get,
    path = "/v1/notifications",
    tag = "notifications",
    params(ListQuery),
    responses(
        (status = 200, description = "One page", body = Page),
        (status = 400, description = "Invalid query parameter; `field` names it", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn list(
    State(state): State<AppState>,
    User(user): User,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Page>, ApiError> {
    let bad = |field: &str, detail: String| ApiError::BadRequest { detail, field: Some(field.into()) };
    if let Some(unknown) = query.keys().find(|k| !["status", "limit", "cursor"].contains(&k.as_str())) {
        return Err(bad(unknown, format!("unknown query parameter `{unknown}`")));
    }
    let status = match query.get("status").map(String::as_str) {
        None | Some("all") => StatusFilter::All,
        Some("unread") => StatusFilter::Unread,
        Some("read") => StatusFilter::Read,
        Some(other) => {
            return Err(bad("status", format!("`status` must be unread, read or all, not `{other}`")))
        }
    };
    let limit = match query.get("limit") {
        None => DEFAULT_PAGE,
        Some(text) => match text.parse::<u32>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => return Err(bad("limit", format!("`limit` must be an integer from 1 to {MAX_PAGE}"))),
        },
    };
    let after = match query.get("cursor") {
        None => None,
        Some(text) => Some(
            PageCursor::decode(text)
                .ok_or_else(|| bad("cursor", "`cursor` is not a cursor this server issued".into()))?,
        ),
    };
    let tenant = user.tenant_key();
    let mut items =
        state.store.list_notifications(tenant, &user.user_id, status, limit + 1, after.as_ref()).await?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items
            .last()
            .map(|n| PageCursor { created_at_ms: n.created_at.timestamp_millis(), id: n.id.clone() }.encode())
    } else {
        None
    };
    Ok(Json(Page { items, next_cursor }))
}

/// Count the caller's unread notifications.
#[utoipa::path(
    get,
    path = "/v1/notifications/unread-count",
    tag = "notifications",
    responses(
        (status = 200, description = "The count", body = UnreadCount),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn unread_count(
    State(state): State<AppState>,
    User(user): User,
) -> Result<Json<UnreadCount>, ApiError> {
    let unread_count = state.store.unread_count(user.tenant_key(), &user.user_id).await?;
    Ok(Json(UnreadCount { unread_count }))
}

/// Checks a notification id from the path. Ids are server-made UUIDs, so anything else
/// cannot exist; control characters are rejected before they reach a log line.
fn notification_id(id: &str) -> Result<&str, ApiError> {
    validate::identifier(id).map_err(|p| ApiError::BadRequest {
        detail: format!("path parameter `id` {p}"),
        field: Some("id".into()),
    })?;
    Ok(id)
}

/// Mark one of the caller's notifications read.
///
/// Idempotent. The first call pushes `notification:read` and the new unread count to every
/// connection of the caller.
#[utoipa::path(
    post,
    path = "/v1/notifications/{id}/read",
    tag = "notifications",
    params(("id" = String, Path, description = "Notification id")),
    responses(
        (status = 200, description = "The notification, now read", body = Notification),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such notification for this caller", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn mark_read(
    State(state): State<AppState>,
    User(user): User,
    Path(id): Path<String>,
) -> Result<Json<Notification>, ApiError> {
    let id = notification_id(&id)?;
    let notification = service::mark_read(&state, user.tenant_key(), &user.user_id, id).await?;
    Ok(Json(notification))
}

/// Mark all of the caller's notifications read.
#[utoipa::path(
    post,
    path = "/v1/notifications/read-all",
    tag = "notifications",
    responses(
        (status = 200, description = "How many changed", body = ReadAll),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn mark_all_read(
    State(state): State<AppState>,
    User(user): User,
) -> Result<Json<ReadAll>, ApiError> {
    let updated = service::mark_all_read(&state, user.tenant_key(), &user.user_id).await?;
    Ok(Json(ReadAll { updated }))
}

/// Delete one of the caller's notifications.
///
/// Pushes `notification:deleted` and the new unread count to every connection of the caller.
#[utoipa::path(
    delete,
    path = "/v1/notifications/{id}",
    tag = "notifications",
    params(("id" = String, Path, description = "Notification id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such notification for this caller", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn delete(
    State(state): State<AppState>,
    User(user): User,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = notification_id(&id)?;
    service::delete_notification(&state, user.tenant_key(), &user.user_id, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
