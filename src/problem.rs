//! The HTTP error type: every failure returned to a client, rendered as RFC 9457
//! problem+json.

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Serialize;

use crate::{auth::AuthError, store::StoreError};

/// An error returned for an HTTP request. Internal causes are logged once and never shown.
#[derive(Debug)]
pub enum ApiError {
    /// 400: the request cannot be parsed (malformed JSON, bad query or path).
    BadRequest { detail: String, field: Option<String> },
    /// 400: the event id to resume from is malformed, ahead of the server or another user's.
    InvalidLastEventId(String),
    /// 422: the request parsed but a field has an invalid value.
    InvalidField { detail: String, field: String },
    /// 401: the token is missing or not accepted.
    Unauthorized(AuthError),
    /// 403: the token is valid but may not do this.
    Forbidden(String),
    /// 404: no such resource for this caller.
    NotFound(String),
    /// 405: the path exists without this method.
    MethodNotAllowed,
    /// 413: the body exceeds the configured limit, in bytes.
    PayloadTooLarge(usize),
    /// 415: the body is not `application/json`.
    UnsupportedMediaType,
    /// 429: a per-user limit is reached; the detail names it.
    TooManyRequests(String),
    /// 503: a dependency is down; the detail names it.
    Unavailable(String),
    /// 500: a failure the caller cannot fix. The cause is logged, not returned.
    Internal(String),
}

/// The problem+json body (RFC 9457) with two extension members: `code` for programs and
/// `field` naming the input at fault.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// Always `about:blank`: `code` carries the problem kind.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The HTTP status phrase.
    pub title: String,
    pub status: u16,
    /// A description of the failure that names the field or value at fault.
    pub detail: String,
    /// A stable machine-readable code such as `invalid_field` or `token_expired`.
    pub code: &'static str,
    /// The request field at fault, as a JSON path (`userIds[2]`) or parameter name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    /// Builds a 422 for one field.
    pub fn invalid(field: impl Into<String>, problem: impl std::fmt::Display) -> Self {
        let field = field.into();
        ApiError::InvalidField { detail: format!("`{field}` {problem}"), field }
    }

    fn parts(&self) -> (StatusCode, &'static str, String, Option<String>) {
        match self {
            ApiError::BadRequest { detail, field } => {
                (StatusCode::BAD_REQUEST, "bad_request", detail.clone(), field.clone())
            }
            ApiError::InvalidLastEventId(detail) => {
                (StatusCode::BAD_REQUEST, "invalid_last_event_id", detail.clone(), Some("lastEventId".into()))
            }
            ApiError::InvalidField { detail, field } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", detail.clone(), Some(field.clone()))
            }
            ApiError::Unauthorized(e) => {
                let code = if *e == AuthError::Expired { "token_expired" } else { "unauthorized" };
                (StatusCode::UNAUTHORIZED, code, e.to_string(), None)
            }
            ApiError::Forbidden(d) => (StatusCode::FORBIDDEN, "forbidden", d.clone(), None),
            ApiError::NotFound(d) => (StatusCode::NOT_FOUND, "not_found", d.clone(), None),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this path does not accept this method".into(),
                None,
            ),
            ApiError::PayloadTooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request body exceeds the limit of {limit} bytes"),
                None,
            ),
            ApiError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "request body must be JSON with `Content-Type: application/json`".into(),
                None,
            ),
            ApiError::TooManyRequests(d) => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_connections", d.clone(), None)
            }
            ApiError::Unavailable(d) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", d.clone(), None),
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error; the server log has the cause".into(),
                None,
            ),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError::Unauthorized(e)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::NotFound("notification not found".into()),
            StoreError::Database(e) => ApiError::Internal(format!("database: {e}")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, detail, field) = self.parts();
        match &self {
            ApiError::Internal(cause) => tracing::error!(%cause, "request failed"),
            // The store and the broker log their own outages once; every request during one
            // would flood the log at a higher level.
            ApiError::Unavailable(cause) => tracing::debug!(%cause, "dependency unavailable"),
            _ => tracing::debug!(status = status.as_u16(), code, %detail, "request rejected"),
        }
        let body = Problem {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail,
            code,
            field,
        };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// `axum::extract::Query` whose rejection is a problem+json 400.
pub struct Query<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Query(value)),
            Err(rejection) => Err(ApiError::BadRequest { detail: rejection.body_text(), field: None }),
        }
    }
}

/// `axum::extract::Path` whose rejection (such as invalid UTF-8 after percent-decoding) is a
/// problem+json 400.
pub struct Path<T>(pub T);

impl<T: serde::de::DeserializeOwned + Send, S: Send + Sync> axum::extract::FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(rejection) => Err(ApiError::BadRequest { detail: rejection.body_text(), field: None }),
        }
    }
}
