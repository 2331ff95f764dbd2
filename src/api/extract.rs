//! Extractors for REST handlers. Each owns its rejection, so every bad request becomes a
//! problem+json that names what is wrong.

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request},
    http::{header, request::Parts, StatusCode},
};
use serde::de::DeserializeOwned;

use crate::{
    app::AppState,
    auth::{bearer_from_headers, AuthError, Identity},
    problem::ApiError,
};

/// The caller, verified from the `Authorization` header. REST never reads tokens from the
/// query string, so they stay out of URLs that proxies log.
pub struct User(pub Identity);

/// The verified caller's id, left in the request extensions for extractors that run later
/// and log.
#[derive(Clone)]
struct CallerId(String);

/// A caller whose `role` is one of the configured publisher roles.
pub struct Publisher(pub Identity);

impl FromRequestParts<AppState> for User {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer_from_headers(&parts.headers)?.ok_or(AuthError::Missing)?;
        let identity = state.verifier.verify(token)?;
        parts.extensions.insert(CallerId(identity.user_id.clone()));
        Ok(User(identity))
    }
}

impl FromRequestParts<AppState> for Publisher {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let User(identity) = User::from_request_parts(parts, state).await?;
        if !identity.is_publisher {
            return Err(ApiError::Forbidden(format!(
                "this endpoint needs a publisher role from NOTIFY_PUBLISHER_ROLES ({}); this token has {}",
                state.config.publisher_roles.join(", "),
                identity.role.as_deref().map_or("no role".to_string(), |r| format!("role `{r}`")),
            )));
        }
        Ok(Publisher(identity))
    }
}

/// A JSON body. Syntax errors get a 400 with the line and column, and a value of the wrong
/// type or a missing field gets a 422 with the field's path.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let caller = request.extensions().get::<CallerId>().cloned();
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                let user = caller.as_ref().map_or("", |c| c.0.as_str());
                tracing::info!(user.id = %user, limit = state.config.max_body_bytes, "request body over the limit");
                ApiError::PayloadTooLarge(state.config.max_body_bytes)
            } else {
                ApiError::BadRequest { detail: format!("failed to read body: {rejection}"), field: None }
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses a JSON object and turns serde's error into a problem that names the field.
/// Anything but one object (an array, a scalar, trailing bytes) is a 400.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bad = |detail: String| ApiError::BadRequest { detail, field: None };
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => return Err(bad("request body is empty; expected a JSON object".into())),
        Some(b'{') => {}
        Some(_) => return Err(bad("request body must be a JSON object".into())),
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let message = inner.to_string();
        if inner.classify() != serde_json::error::Category::Data {
            if message.starts_with("recursion limit exceeded") {
                return bad("JSON is nested more than 128 levels deep".into());
            }
            return bad(format!("malformed JSON: {message}"));
        }
        let message = message.split(" at line").next().unwrap_or(&message).to_string();
        // Unknown fields are reported at their own path already.
        let field = match missing_field(&message) {
            Some(name) if path == "." => name.to_string(),
            Some(name) => format!("{path}.{name}"),
            None => path,
        };
        ApiError::InvalidField { detail: format!("`{field}`: {message}"), field }
    })?;
    deserializer.end().map_err(|e| bad(format!("malformed JSON: unexpected data after the object: {e}")))?;
    Ok(value)
}

/// Returns `name` from serde's "missing field `name`" message. serde reports a missing field
/// at the path of the object that lacks it, so the caller appends the name.
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        title: String,
        items: Vec<u32>,
    }

    fn field_of(json: &str) -> Option<String> {
        match parse_json::<Body>(json.as_bytes()) {
            Err(ApiError::InvalidField { field, .. }) => Some(field),
            _ => None,
        }
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(field_of(r#"{"items":[]}"#).as_deref(), Some("title"));
        assert_eq!(field_of(r#"{"title":1,"items":[]}"#).as_deref(), Some("title"));
        assert_eq!(field_of(r#"{"title":"t","items":[1,"x"]}"#).as_deref(), Some("items[1]"));
        assert_eq!(field_of(r#"{"title":"t","items":[],"extra":1}"#).as_deref(), Some("extra"));
    }

    #[test]
    fn syntax_errors_are_bad_requests() {
        assert!(matches!(parse_json::<Body>(b"{"), Err(ApiError::BadRequest { .. })));
        assert!(matches!(parse_json::<Body>(b""), Err(ApiError::BadRequest { .. })));
        assert!(matches!(parse_json::<Body>(br#"["t", []]"#), Err(ApiError::BadRequest { .. })));
        assert!(matches!(
            parse_json::<Body>(br#"{"title":"t","items":[]} x"#),
            Err(ApiError::BadRequest { .. })
        ));
    }
}
