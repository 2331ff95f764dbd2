//! Rooms, tenant broadcasts and presence.

use serde_json::{json, Value};

use crate::support::*;

async fn publish(app: &TestApp, token: &str, path: &str, body: Value) -> reqwest::Response {
    app.http.post(app.url(path)).bearer_auth(token).json(&body).send().await.unwrap()
}

#[tokio::test]
async fn granted_rooms_receive_room_events() {
    let app = spawn_app().await;
    let publisher = publisher_token();
    let token = Claims::user("alice").rooms(&["orders", "sales"]).token();
    let mut sse = SseClient::connect_query(&app, &format!("access_token={token}&rooms=orders,secret")).await;
    let rejected = sse.next_named("error").await;
    assert_eq!(rejected.data["code"], "room_forbidden");

    let mut ws = WsClient::connect(&app, &token).await;
    ws.send(json!({ "event": "room:join", "data": { "room": "sales" }, "ack": 1 })).await;
    let joined = ws.next_ack(1).await;
    assert_eq!((joined.name.as_str(), joined.ack), ("room:join", Some(1)));
    ws.send(json!({ "event": "room:join", "data": { "room": "secret" }, "ack": 2 })).await;
    let rejected = ws.next_ack(2).await;
    assert_eq!((rejected.name.as_str(), rejected.data["code"].as_str()), ("error", Some("room_forbidden")));

    let body = json!({ "event": "data:updated", "data": { "type": "order", "data": { "id": 7 } } });
    let response = publish(&app, &publisher, "/v1/rooms/orders/events", body).await;
    assert_eq!(response.status(), 201);
    let event = sse.next_named("data:updated").await;
    assert_eq!(event.data["type"], "order");
    assert_eq!(event.data["data"]["id"], 7);
    assert!(event.data["timestamp"].as_str().is_some());
    assert!(event.id.as_deref().is_some_and(|id| id.contains("r-orders:1")), "id {:?}", event.id);

    let body = json!({ "event": "sales.closed", "data": { "total": 3 } });
    assert_eq!(publish(&app, &publisher, "/v1/rooms/sales/events", body).await.status(), 201);
    assert_eq!(ws.next_named("sales.closed").await.data["total"], 3);

    ws.send(json!({ "event": "room:leave", "data": { "room": "sales" }, "ack": 3 })).await;
    assert_eq!(ws.next_ack(3).await.data["success"], true);
}

#[tokio::test]
async fn user_room_reaches_one_user() {
    let app = spawn_app().await;
    let publisher = publisher_token();
    let mut alice = SseClient::connect(&app, &user_token("alice")).await;
    let mut bob = SseClient::connect(&app, &user_token("bob")).await;
    let body = json!({ "event": "data:updated", "data": { "type": "profile", "data": { "v": 1 } } });
    assert_eq!(publish(&app, &publisher, "/v1/rooms/user:alice/events", body).await.status(), 201);
    let marker = json!({ "event": "data:updated", "data": { "type": "marker", "data": {} } });
    assert_eq!(publish(&app, &publisher, "/v1/rooms/user:bob/events", marker).await.status(), 201);

    assert_eq!(alice.next_named("data:updated").await.data["type"], "profile");
    assert_eq!(bob.next_named("data:updated").await.data["type"], "marker");
}

#[tokio::test]
async fn broadcast_stays_inside_the_tenant() {
    let app = spawn_app().await;
    let mut acme_user = WsClient::connect(&app, &Claims::user("a").tenant("acme").token()).await;
    let mut globex_user = SseClient::connect(&app, &Claims::user("g").tenant("globex").token()).await;

    let acme = Claims::publisher().tenant("acme").token();
    let body = json!({ "event": "maintenance", "data": { "minutes": 5 } });
    let response = publish(&app, &acme, "/v1/broadcast", body).await;
    assert_eq!(response.status(), 201);
    let published: Value = response.json().await.unwrap();
    assert_eq!(published["room"], "tenant:acme");

    // A tenantless publisher names the tenant in the body.
    let marker = json!({ "event": "maintenance", "tenantId": "globex", "data": { "minutes": 9 } });
    assert_eq!(publish(&app, &publisher_token(), "/v1/broadcast", marker).await.status(), 201);

    assert_eq!(acme_user.next_named("maintenance").await.data["minutes"], 5);
    assert_eq!(globex_user.next_named("maintenance").await.data["minutes"], 9);
}

#[tokio::test]
async fn presence_counts_connections() {
    // A closed SSE client is noticed on the next write, so heartbeats must be frequent.
    let app = spawn_app_with(&["--heartbeat-interval", "1s"]).await;
    let publisher = publisher_token();
    let summary = |app: &TestApp| {
        let publisher = publisher.clone();
        let request = app.http.get(app.url("/v1/presence")).bearer_auth(publisher);
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    assert_eq!(summary(&app).await, json!({ "connectedUsers": 0, "connections": 0 }));

    let mut watcher = WsClient::connect(&app, &user_token("watcher")).await;
    let alice_one = SseClient::connect(&app, &user_token("alice")).await;
    let alice_two = WsClient::connect(&app, &user_token("alice")).await;
    // The watcher hears of alice once for her two connections, and never of itself.
    let online = watcher.next_named("user:online").await;
    assert_eq!(online.data["userId"], "alice");
    assert!(online.id.is_none(), "presence events carry no resumable id");

    assert_eq!(summary(&app).await, json!({ "connectedUsers": 2, "connections": 3 }));
    let alice: Value = app.get("/v1/presence/alice", &publisher).await.json().await.unwrap();
    assert_eq!(alice, json!({ "userId": "alice", "online": true, "connections": 2 }));

    drop(alice_one);
    drop(alice_two);
    let offline = watcher.next_named("user:offline").await;
    assert_eq!(offline.data["userId"], "alice");
    let alice: Value = app.get("/v1/presence/alice", &publisher).await.json().await.unwrap();
    assert_eq!(alice, json!({ "userId": "alice", "online": false, "connections": 0 }));
}
