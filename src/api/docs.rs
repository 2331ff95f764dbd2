//! The OpenAPI document and the `/docs` page that renders it offline, in English or Spanish.

use std::sync::{Arc, OnceLock};

use axum::{
    http::header,
    response::{Html, IntoResponse, Response},
};
use serde::Deserialize;
use utoipa::{
    openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
    Modify, OpenApi,
};

use super::{health, notifications, presence, rooms};
use crate::{
    events::Notification,
    problem::{ApiError, Path, Problem, Query},
    store::StatusFilter,
    transport,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "nexus-notify",
        description = "Real-time notifications: publish over REST, receive over Server-Sent Events or WebSocket.\n\n\
Streams carry `authenticated`, `error`, `notification:new`, `notification:read`, `notification:deleted`, \
`notification:unread_count`, `data:updated`, `user:online`, `user:offline` and publisher-named events. \
SSE frames are `id:`/`event:`/`data:` lines; WebSocket text frames are `{\"event\",\"id\",\"data\"}`.",
        license(name = "MIT OR Apache-2.0"),
    ),
    paths(
        notifications::create,
        notifications::list,
        notifications::unread_count,
        notifications::mark_read,
        notifications::mark_all_read,
        notifications::delete,
        rooms::publish_to_room,
        rooms::broadcast,
        presence::summary,
        presence::user,
        health::healthz,
        health::readyz,
        health::metrics,
        transport::sse::handler,
        transport::ws::handler,
    ),
    components(schemas(Notification, Problem, StatusFilter)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "notifications", description = "Store, list and mark notifications"),
        (name = "rooms", description = "Publisher events to rooms and tenants"),
        (name = "presence", description = "Who is connected"),
        (name = "streaming", description = "SSE and WebSocket connections"),
        (name = "operations", description = "Health, readiness and metrics"),
    ),
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build(),
            ),
        );
        components.add_security_scheme(
            "access_token",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::new("access_token"))),
        );
    }
}

/// Returns the OpenAPI document as pretty JSON, the form committed under `openapi/`.
pub fn openapi_json() -> String {
    ApiDoc::openapi().to_pretty_json().expect("the OpenAPI document serializes") + "\n"
}

/// Serve the OpenAPI document.
pub async fn openapi() -> Response {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    let body = DOCUMENT.get_or_init(openapi_json).clone();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[derive(Deserialize)]
pub struct DocsQuery {
    lang: Option<String>,
}

/// Serve the API browser page; `?lang=es` for Spanish, English otherwise.
pub async fn page(Query(query): Query<DocsQuery>) -> Html<String> {
    let spanish = query.lang.as_deref() == Some("es");
    let (lang, title, intro, switch) = if spanish {
        (
            "es",
            "nexus-notify: referencia de la API",
            "Publica notificaciones por REST y recíbelas por SSE (<code>GET /v1/events</code>) o WebSocket \
             (<code>GET /v1/ws</code>). Pulsa <b>Authorize</b> y pega un token JWT para probar las llamadas. \
             Las descripciones de cada operación están en inglés.",
            r#"<a href="/docs?lang=en">English</a> · <b>Español</b>"#,
        )
    } else {
        (
            "en",
            "nexus-notify: API reference",
            "Publish notifications over REST and receive them over SSE (<code>GET /v1/events</code>) or \
             WebSocket (<code>GET /v1/ws</code>). Press <b>Authorize</b> and paste a JWT to try the calls.",
            r#"<b>English</b> · <a href="/docs?lang=es">Español</a>"#,
        )
    };
    Html(format!(
        r##"<!doctype html>
<html lang="{lang}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="/docs/swagger-ui.css">
<style>header{{font-family:sans-serif;padding:1rem 2rem;border-bottom:1px solid #ddd}}nav{{float:right}}</style>
</head>
<body>
<header><nav>{switch}</nav><h1>{title}</h1><p>{intro}</p></header>
<div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script>
// validatorUrl: null keeps Swagger UI from sending the document to its online validator.
window.ui = SwaggerUIBundle({{ url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true, validatorUrl: null }});
</script>
</body>
</html>
"##
    ))
}

/// Serve a Swagger UI asset embedded in the binary at build time.
pub async fn asset(Path(file): Path<String>) -> Response {
    static CONFIG: OnceLock<Arc<utoipa_swagger_ui::Config<'static>>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| Arc::new(utoipa_swagger_ui::Config::from("/openapi.json"))).clone();
    if !matches!(
        file.as_str(),
        "swagger-ui.css" | "swagger-ui-bundle.js" | "favicon-32x32.png" | "favicon-16x16.png"
    ) {
        return ApiError::NotFound(format!("no docs asset `{file}`")).into_response();
    }
    match utoipa_swagger_ui::serve(&file, config) {
        Ok(Some(asset)) => {
            ([(header::CONTENT_TYPE, asset.content_type)], asset.bytes.into_owned()).into_response()
        }
        _ => ApiError::NotFound(format!("no docs asset `{file}`")).into_response(),
    }
}
