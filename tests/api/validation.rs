//! Bad input: every malformed request gets a 4xx problem+json naming the field, and
//! nothing is written.

use serde_json::{json, Value};

use crate::support::*;

fn valid() -> Value {
    json!({ "userId": "alice", "title": "t", "message": "m", "type": "info" })
}

fn with(field: &str, value: Value) -> Value {
    let mut body = valid();
    body[field] = value;
    body
}

fn without(field: &str) -> Value {
    let mut body = valid();
    body.as_object_mut().unwrap().remove(field);
    body
}

#[tokio::test]
async fn create_rejects_each_bad_field() {
    let app = spawn_app().await;
    let publisher = publisher_token();
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        ("missing title", without("title"), 422, "title"),
        ("missing message", without("message"), 422, "message"),
        ("missing type", without("type"), 422, "type"),
        ("empty title", with("title", json!("  ")), 422, "title"),
        ("title too long", with("title", json!("x".repeat(201))), 422, "title"),
        ("title not a string", with("title", json!(5)), 422, "title"),
        ("no recipient", without("userId"), 422, "userId"),
        ("empty userId", with("userId", json!("")), 422, "userId"),
        ("control character in userId", with("userId", json!("al\u{7}ice")), 422, "userId"),
        ("both recipient fields", with("userIds", json!(["bob"])), 422, "userIds"),
        (
            "empty userIds",
            {
                let mut b = without("userId");
                b["userIds"] = json!([]);
                b
            },
            422,
            "userIds",
        ),
        (
            "bad entry in userIds",
            {
                let mut b = without("userId");
                b["userIds"] = json!(["a", "b", "c\nd"]);
                b
            },
            422,
            "userIds[2]",
        ),
        (
            "number in userIds",
            {
                let mut b = without("userId");
                b["userIds"] = json!(["a", 7]);
                b
            },
            422,
            "userIds[1]",
        ),
        ("data not an object", with("data", json!([1, 2])), 422, "data"),
        ("unknown field", with("titel", json!("typo")), 422, "titel"),
        ("tenant with control character", with("tenantId", json!("a\rb")), 422, "tenantId"),
        ("NUL in title", with("title", json!("a\u{0}b")), 422, "title"),
    ];
    for (label, body, status, field) in cases {
        let response = app.create(&publisher, body).await;
        assert_eq!(response.status(), status, "{label}");
        assert_problem(response, status, Some(field)).await;
    }
    let page: Value = app.get("/v1/notifications", &user_token("alice")).await.json().await.unwrap();
    assert_eq!(page["items"], json!([]), "no bad request wrote anything");
}

#[tokio::test]
async fn create_rejects_unparseable_bodies() {
    let app = spawn_app().await;
    let publisher = publisher_token();
    let post = |body: &'static str, content_type: &'static str| {
        app.http
            .post(app.url("/v1/notifications"))
            .bearer_auth(&publisher)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    assert_problem(post("{\"userId\": ", "application/json").await.unwrap(), 400, None).await;
    assert_problem(post("", "application/json").await.unwrap(), 400, None).await;
    assert_problem(post("[]", "application/json").await.unwrap(), 400, None).await;
    assert_problem(post("{}", "text/plain").await.unwrap(), 415, None).await;
    assert_problem(
        post(r#"{"userId":"a","title":"t","message":"m","type":"x"} xx"#, "application/json").await.unwrap(),
        400,
        None,
    )
    .await;
    assert_problem(post(r#"["a",null,null,"t","m","x",null]"#, "application/json").await.unwrap(), 400, None)
        .await;
    assert_problem(post("null", "application/json").await.unwrap(), 400, None).await;
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let body = format!(r#"{{"userId":"a","title":"t","message":"m","type":"x","data":{{"d":{deep}}}}}"#);
    let response = app
        .http
        .post(app.url("/v1/notifications"))
        .bearer_auth(&publisher)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let problem = assert_problem(response, 400, None).await;
    assert!(problem["detail"].as_str().unwrap().contains("nested"), "{problem}");
}

#[tokio::test]
async fn oversized_body_gets_413() {
    let app = spawn_app_with(&["--max-body-bytes", "1024"]).await;
    let body = with("message", json!("x".repeat(2000)));
    assert_problem(app.create(&publisher_token(), body).await, 413, None).await;
}

#[tokio::test]
async fn bad_query_and_path_values() {
    let app = spawn_app().await;
    let alice = user_token("alice");
    for (path, field) in [
        ("/v1/notifications?limit=0", "limit"),
        ("/v1/notifications?limit=abc", "limit"),
        ("/v1/notifications?limit=101", "limit"),
        ("/v1/notifications?status=maybe", "status"),
        ("/v1/notifications?cursor=garbage!", "cursor"),
        ("/v1/notifications?colour=red", "colour"),
    ] {
        assert_problem(app.get(path, &alice).await, 400, Some(field)).await;
    }
    assert_problem(app.post("/v1/notifications/ab%0Acd/read", &alice).await, 400, Some("id")).await;
    assert_problem(app.post("/v1/notifications/%FF/read", &alice).await, 400, None).await;
    let publisher = publisher_token();
    assert_problem(app.get("/v1/presence/bo%0Db", &publisher).await, 400, Some("userId")).await;
}

#[tokio::test]
async fn room_events_reject_bad_input() {
    let app = spawn_app().await;
    let publisher = publisher_token();
    let cases: Vec<(&str, Value, &str)> = vec![
        ("/v1/rooms/lobby/events", json!({ "event": "notification:new", "data": {} }), "event"),
        ("/v1/rooms/lobby/events", json!({ "event": "bad name", "data": {} }), "event"),
        ("/v1/rooms/lobby/events", json!({ "event": "x", "data": "text" }), "data"),
        ("/v1/rooms/lobby/events", json!({ "data": {} }), "event"),
        ("/v1/broadcast", json!({ "event": "data:updated", "data": { "data": {} } }), "data.type"),
        ("/v1/broadcast", json!({ "event": "data:updated", "data": { "type": "invoice" } }), "data.data"),
    ];
    for (path, body, field) in cases {
        let response = app.http.post(app.url(path)).bearer_auth(&publisher).json(&body).send().await.unwrap();
        assert_problem(response, 422, Some(field)).await;
    }
    let body = json!({ "event": "x", "data": {} });
    let response = app
        .http
        .post(app.url("/v1/rooms/lo%0Abby/events"))
        .bearer_auth(&publisher)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_problem(response, 400, Some("room")).await;
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let app = spawn_app().await;
    assert_problem(app.http.get(app.url("/v1/nothing")).send().await.unwrap(), 404, None).await;
    assert_problem(app.http.put(app.url("/v1/notifications")).send().await.unwrap(), 405, None).await;
    let plain_get = app.http.get(app.url("/v1/ws")).bearer_auth(user_token("alice")).send().await.unwrap();
    assert_problem(plain_get, 400, None).await;
}
