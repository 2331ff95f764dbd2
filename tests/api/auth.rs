//! Token checks on REST and on both streams, and publisher roles.

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::support::*;

/// Every kind of token that must be rejected, with a label for failure messages.
fn bad_tokens() -> Vec<(&'static str, String)> {
    let good = Claims::user("alice");
    let header_none = base64_url(r#"{"alg":"none","typ":"JWT"}"#);
    let claims_json = base64_url(&good.json().to_string());
    vec![
        ("malformed", "not-a-jwt".to_string()),
        ("expired", good.clone().ttl(-3600).token()),
        ("wrong key", sign(&good.json(), "another-secret-that-is-also-32-bytes-long!!")),
        ("alg none", format!("{header_none}.{claims_json}.")),
        ("no sub", sign(&json!({ "exp": chrono::Utc::now().timestamp() + 60 }), SECRET)),
        ("no exp", sign(&json!({ "sub": "alice" }), SECRET)),
        (
            "control character in sub",
            sign(&json!({ "sub": "al\nice", "exp": chrono::Utc::now().timestamp() + 60 }), SECRET),
        ),
        (
            "nbf of the wrong type",
            sign(&json!({ "sub": "alice", "nbf": "x", "exp": chrono::Utc::now().timestamp() + 60 }), SECRET),
        ),
    ]
}

fn base64_url(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

#[tokio::test]
async fn rest_rejects_missing_and_bad_tokens() {
    let app = spawn_app().await;
    let missing = app.http.get(app.url("/v1/notifications")).send().await.unwrap();
    assert_eq!(missing.headers()["www-authenticate"], "Bearer");
    assert_problem(missing, 401, None).await;
    let wrong_scheme =
        app.http.get(app.url("/v1/notifications")).header("authorization", "Basic abc").send().await.unwrap();
    assert_problem(wrong_scheme, 401, None).await;
    for (label, token) in bad_tokens() {
        let response = app.get("/v1/notifications", &token).await;
        assert_eq!(response.status(), 401, "{label}");
        let body = assert_problem(response, 401, None).await;
        if label == "expired" {
            assert_eq!(body["code"], "token_expired");
        }
    }
}

#[tokio::test]
async fn integer_sub_and_tenant_are_accepted() {
    let app = spawn_app().await;
    let now = chrono::Utc::now().timestamp();
    let token = sign(&json!({ "sub": 42, "tenant_id": 7, "exp": now + 60 }), SECRET);
    let response = app.get("/v1/notifications/unread-count", &token).await;
    assert_eq!(response.status(), 200);
    let sse = SseClient::connect(&app, &token).await;
    assert_eq!(sse.hello.data["userId"], "42");
    assert_eq!(sse.hello.data["tenantId"], "7");
}

#[tokio::test]
async fn rejections_name_the_cause() {
    let app = spawn_app().await;
    let now = chrono::Utc::now().timestamp();
    let detail = |response: reqwest::Response| async move {
        let body: serde_json::Value = response.json().await.unwrap();
        body["detail"].as_str().unwrap().to_string()
    };
    let no_sub = sign(&json!({ "exp": now + 60 }), SECRET);
    assert!(detail(app.get("/v1/notifications", &no_sub).await).await.contains("sub"));
    let no_exp = sign(&json!({ "sub": "a" }), SECRET);
    assert!(detail(app.get("/v1/notifications", &no_exp).await).await.contains("exp"));
    let header_none = base64_url(r#"{"alg":"none","typ":"JWT"}"#);
    let none = format!("{header_none}.{}.", base64_url(&json!({ "sub": "a", "exp": now + 60 }).to_string()));
    assert!(detail(app.get("/v1/notifications", &none).await).await.contains("none"));
}

#[tokio::test]
async fn ws_checks_the_origin() {
    let app = spawn_app().await;
    let token = user_token("alice");
    let request = |origin: &str| {
        let mut request = tungstenite::client::IntoClientRequest::into_client_request(
            app.ws_url(&format!("?access_token={token}")),
        )
        .unwrap();
        request.headers_mut().insert("origin", origin.parse().unwrap());
        request
    };
    match tokio_tungstenite::connect_async(request("http://evil.example")).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
    assert!(tokio_tungstenite::connect_async(request("http://localhost:5173")).await.is_ok());
}

#[tokio::test]
async fn rest_ignores_query_tokens() {
    let app = spawn_app().await;
    let url = app.url(&format!("/v1/notifications?access_token={}", user_token("alice")));
    let response = app.http.get(url).send().await.unwrap();
    assert_eq!(response.status(), 401, "REST reads tokens from the header only");
}

#[tokio::test]
async fn sse_rejects_missing_and_bad_tokens() {
    let app = spawn_app().await;
    let missing = app.http.get(app.url("/v1/events")).send().await.unwrap();
    assert_problem(missing, 401, None).await;
    for (label, token) in bad_tokens() {
        let by_query =
            app.http.get(app.url(&format!("/v1/events?access_token={token}"))).send().await.unwrap();
        assert_eq!(by_query.status(), 401, "{label} in query");
        let by_header = app.http.get(app.url("/v1/events")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(by_header.status(), 401, "{label} in header");
    }
}

#[tokio::test]
async fn ws_rejects_bad_tokens_at_handshake() {
    let app = spawn_app().await;
    for (label, token) in bad_tokens() {
        let result = tokio_tungstenite::connect_async(app.ws_url(&format!("?access_token={token}"))).await;
        match result {
            Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401, "{label}"),
            other => panic!("{label}: expected a 401 handshake, got {other:?}"),
        }
        let mut request =
            tungstenite::client::IntoClientRequest::into_client_request(app.ws_url("")).unwrap();
        request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        match tokio_tungstenite::connect_async(request).await {
            Err(tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 401, "{label} in header")
            }
            other => panic!("{label} in header: expected a 401 handshake, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn ws_authenticate_message_accepts_and_rejects() {
    let app = spawn_app().await;
    let client = WsClient::connect_then_authenticate(&app, &user_token("alice")).await;
    assert_eq!(client.hello.data["userId"], "alice");

    for (label, token) in bad_tokens() {
        let (mut socket, _) = tokio_tungstenite::connect_async(app.ws_url("")).await.unwrap();
        let message = json!({ "event": "authenticate", "data": { "token": token } });
        socket.send(Message::text(message.to_string())).await.unwrap();
        let mut client = WsClientRaw(socket);
        let error = client.next_text().await;
        assert_eq!(error["event"], "error", "{label}");
        let code = error["data"]["code"].as_str().unwrap();
        assert!(code == "unauthorized" || code == "token_expired", "{label}: code {code}");
        assert_eq!(client.close_code().await, Some(4001), "{label}");
    }
}

#[tokio::test]
async fn ws_without_authenticate_times_out() {
    let app = spawn_app_with(&["--auth-timeout", "1s"]).await;
    let (socket, _) = tokio_tungstenite::connect_async(app.ws_url("")).await.unwrap();
    let mut client = WsClientRaw(socket);
    let error = client.next_text().await;
    assert_eq!(error["data"]["code"], "auth_timeout");
    assert_eq!(client.close_code().await, Some(4001));
}

#[tokio::test]
async fn user_tokens_cannot_publish() {
    let app = spawn_app().await;
    let alice = user_token("alice");
    let body = json!({ "userId": "bob", "title": "t", "message": "m", "type": "info" });
    let response = app.create(&alice, body).await;
    assert_problem(response, 403, None).await;
    let event = json!({ "event": "data:updated", "data": { "type": "x", "data": {} } });
    for path in ["/v1/rooms/lobby/events", "/v1/broadcast"] {
        let response = app.http.post(app.url(path)).bearer_auth(&alice).json(&event).send().await.unwrap();
        assert_problem(response, 403, None).await;
    }
    for path in ["/v1/presence", "/v1/presence/bob"] {
        assert_problem(app.get(path, &alice).await, 403, None).await;
    }
}

#[tokio::test]
async fn tenant_publisher_stays_in_its_tenant() {
    let app = spawn_app().await;
    let publisher = Claims::publisher().tenant("acme").token();
    let body = json!({ "userId": "bob", "tenantId": "globex", "title": "t", "message": "m", "type": "info" });
    assert_problem(app.create(&publisher, body).await, 403, None).await;
    let event = json!({ "event": "x", "data": {} });
    let response = app
        .http
        .post(app.url("/v1/rooms/tenant:globex/events"))
        .bearer_auth(&publisher)
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_problem(response, 403, None).await;
}

#[tokio::test]
async fn cors_allows_configured_origins_only() {
    let app = spawn_app().await;
    let preflight = app
        .http
        .request(reqwest::Method::OPTIONS, app.url("/v1/notifications"))
        .header("origin", "http://localhost:5173")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.headers()["access-control-allow-origin"], "http://localhost:5173");
    assert_eq!(preflight.headers()["access-control-allow-credentials"], "true");

    let denied = app
        .http
        .get(app.url("/v1/notifications"))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert!(denied.headers().get("access-control-allow-origin").is_none());

    // A 401 must carry CORS headers, or the browser hides the reason from the page.
    let unauthorized = app
        .http
        .get(app.url("/v1/notifications"))
        .header("origin", "http://localhost:3000")
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    assert_eq!(unauthorized.headers()["access-control-allow-origin"], "http://localhost:3000");
}

#[tokio::test]
async fn token_expiry_closes_both_streams() {
    let app = spawn_app_with(&["--jwt-leeway", "0s"]).await;
    let short = Claims::user("alice").ttl(2).token();
    let mut sse = SseClient::connect(&app, &short).await;
    let mut ws = WsClient::connect(&app, &short).await;

    let error = sse.next_named("error").await;
    assert_eq!(error.data["code"], "token_expired");
    assert!(sse.next_or_end().await.is_none(), "SSE stream ends after token_expired");

    let error = ws.next_named("error").await;
    assert_eq!(error.data["code"], "token_expired");
    assert!(matches!(ws.next_frame().await, WsFrame::Closed(Some(4001))));
}

#[tokio::test]
async fn ws_reauthenticate_extends_and_rejects_other_users() {
    let app = spawn_app_with(&["--jwt-leeway", "0s"]).await;
    let mut ws = WsClient::connect(&app, &Claims::user("alice").ttl(2).token()).await;

    ws.send(json!({ "event": "authenticate", "data": { "token": user_token("mallory") }, "ack": 1 })).await;
    let rejected = ws.next_ack(1).await;
    assert_eq!((rejected.name.as_str(), rejected.ack), ("error", Some(1)));
    assert_eq!(rejected.data["code"], "forbidden");

    ws.send(json!({ "event": "authenticate", "data": { "token": Claims::user("alice").ttl(3600).token() }, "ack": 2 })).await;
    let renewed = ws.next_ack(2).await;
    assert_eq!((renewed.name.as_str(), renewed.ack), ("authenticate", Some(2)));

    // Past the first token's expiry, the socket still works.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    ws.send(json!({ "event": "ping", "ack": 3 })).await;
    let pong = ws.next_ack(3).await;
    assert_eq!((pong.name.as_str(), pong.ack), ("pong", Some(3)));
}

/// A socket read frame by frame, for handshakes that never reach `authenticated`.
struct WsClientRaw(
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
);

impl WsClientRaw {
    async fn next_text(&mut self) -> serde_json::Value {
        use futures_util::StreamExt;
        loop {
            match tokio::time::timeout(WAIT, self.0.next()).await.expect("frame in time") {
                Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).unwrap(),
                Some(Ok(_)) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    async fn close_code(&mut self) -> Option<u16> {
        use futures_util::StreamExt;
        loop {
            match tokio::time::timeout(WAIT, self.0.next()).await.expect("close in time") {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    }
}

fn key_path(name: &str) -> String {
    format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn public_keys_verify_rs256_and_es256() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let claims = Claims::user("alice").json();
    for (public, private, algorithm) in [
        ("rsa-public.pem", "rsa-private.pem", Algorithm::RS256),
        ("ec-public.pem", "ec-private.pem", Algorithm::ES256),
    ] {
        let app = spawn_app_with(&["--jwt-public-key-file", &key_path(public)]).await;
        let pem = std::fs::read(key_path(private)).unwrap();
        let key = match algorithm {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
            _ => EncodingKey::from_ec_pem(&pem).unwrap(),
        };
        let token = jsonwebtoken::encode(&Header::new(algorithm), &claims, &key).unwrap();
        assert_eq!(app.get("/v1/notifications", &token).await.status(), 200, "{algorithm:?} accepted");
        // An HS256 token signed with the public key as a secret is the classic confusion attack.
        let public_pem = std::fs::read_to_string(key_path(public)).unwrap();
        let confused = sign(&claims, &public_pem);
        assert_eq!(
            app.get("/v1/notifications", &confused).await.status(),
            401,
            "{algorithm:?}: HS256 rejected"
        );
    }
}

#[tokio::test]
async fn issuer_audience_and_not_before_are_checked() {
    let app =
        spawn_app_with(&["--jwt-issuer", "erp", "--jwt-audience", "notify", "--jwt-leeway", "5s"]).await;
    let base = Claims::user("alice").json();
    let with = |extra: serde_json::Value| {
        let mut claims = base.clone();
        claims.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        sign(&claims, SECRET)
    };
    let now = chrono::Utc::now().timestamp();
    let cases = [
        ("right issuer and audience", with(json!({ "iss": "erp", "aud": "notify" })), 200),
        ("wrong issuer", with(json!({ "iss": "other", "aud": "notify" })), 401),
        ("wrong audience", with(json!({ "iss": "erp", "aud": "other" })), 401),
        ("no issuer", with(json!({ "aud": "notify" })), 401),
        ("nbf in the future", with(json!({ "iss": "erp", "aud": "notify", "nbf": now + 600 })), 401),
        ("nbf inside the leeway", with(json!({ "iss": "erp", "aud": "notify", "nbf": now + 2 })), 200),
        ("exp inside the leeway", with(json!({ "iss": "erp", "aud": "notify", "exp": now - 2 })), 200),
    ];
    for (label, token, status) in cases {
        assert_eq!(app.get("/v1/notifications", &token).await.status(), status, "{label}");
    }
}
