//! The OpenAPI document and the offline docs page.

use serde_json::Value;

use crate::support::*;

const COMMITTED: &str = "openapi/openapi.json";

#[tokio::test]
async fn committed_openapi_matches_the_code() {
    let current = nexus_notify::api::docs::openapi_json();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(COMMITTED);
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &current).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == current,
        "{COMMITTED} is stale: run `UPDATE_OPENAPI=1 cargo test --test api docs::` and commit the result"
    );

    let app = spawn_app().await;
    let served: Value = app.http.get(app.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    let committed: Value = serde_json::from_str(&committed).unwrap();
    assert_eq!(served, committed);
    assert!(served["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in ["/v1/notifications", "/v1/events", "/v1/ws", "/v1/broadcast", "/v1/presence/{userId}"] {
        assert!(served["paths"].get(path).is_some(), "{path} documented");
    }
}

#[tokio::test]
async fn docs_page_works_offline_in_both_languages() {
    let app = spawn_app().await;
    for (query, marker) in [("", "API reference"), ("?lang=es", "referencia de la API")] {
        let page =
            app.http.get(app.url(&format!("/docs{query}"))).send().await.unwrap().text().await.unwrap();
        assert!(page.contains(marker), "page text for `{query}`");
        assert!(!page.contains("https://"), "the page loads nothing from the network");
        assert!(page.contains("/docs/swagger-ui-bundle.js"));
    }
    for asset in ["swagger-ui-bundle.js", "swagger-ui.css"] {
        let response = app.http.get(app.url(&format!("/docs/{asset}"))).send().await.unwrap();
        assert_eq!(response.status(), 200, "{asset}");
        assert!(response.bytes().await.unwrap().len() > 10_000, "{asset} is the real file");
    }
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let app = spawn_app().await;
    assert_eq!(app.http.get(app.url("/healthz")).send().await.unwrap().status(), 200);
    let ready: Value = app.http.get(app.url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["status"], "ready");
    let _sse = SseClient::connect(&app, &user_token("alice")).await;
    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("notify_connections{transport=\"sse\"} 1"), "{metrics}");
}
