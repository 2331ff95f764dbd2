//! Resume: replay after the last event id on both transports, with nothing lost or doubled.

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn sse_resumes_after_last_event_id() {
    let app = spawn_app().await;
    let publisher = publisher_token();
    let alice = user_token("alice");
    let mut sse = SseClient::connect(&app, &alice).await;
    app.notify(&publisher, "alice", "one").await;
    sse.next_named("notification:new").await;
    let last = sse.next_named("notification:unread_count").await.id.unwrap();
    drop(sse);

    app.notify(&publisher, "alice", "two").await;
    app.notify(&publisher, "alice", "three").await;

    let mut sse = SseClient::resume(&app, &alice, &last).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let event = sse.next().await;
        seen.push((event.name.clone(), user_seq(event.id.as_deref().unwrap())));
    }
    let expected = [
        ("notification:new".to_string(), 3),
        ("notification:unread_count".to_string(), 4),
        ("notification:new".to_string(), 5),
        ("notification:unread_count".to_string(), 6),
    ];
    assert_eq!(seen, expected, "the missed events, in order, each once");

    app.notify(&publisher, "alice", "four").await;
    let live = sse.next().await;
    assert_eq!(live.data["notification"]["title"], "four", "live events follow the replay");
    assert_eq!(user_seq(live.id.as_deref().unwrap()), 7);
}

#[tokio::test]
async fn header_wins_over_query_id() {
    let app = spawn_app().await;
    let publisher = publisher_token();
    let alice = user_token("alice");
    let mut sse = SseClient::connect(&app, &alice).await;
    let start = sse.hello.data["lastEventId"].as_str().unwrap().to_string();
    app.notify(&publisher, "alice", "one").await;
    let later = sse.next_named("notification:unread_count").await.id.unwrap();
    drop(sse);
    app.notify(&publisher, "alice", "two").await;

    // The page set lastEventId once; the browser's header carries the newer position.
    let response = app
        .http
        .get(app.url(&format!("/v1/events?lastEventId={start}")))
        .bearer_auth(&alice)
        .header("last-event-id", &later)
        .send()
        .await
        .unwrap();
    let mut sse = SseClient::from_response(response).await;
    assert_eq!(sse.next_named("notification:new").await.data["notification"]["title"], "two");

    let mut by_query =
        SseClient::connect_query(&app, &format!("access_token={alice}&lastEventId={start}")).await;
    assert_eq!(by_query.next_named("notification:new").await.data["notification"]["title"], "one");
}

#[tokio::test]
async fn start_id_resumes_before_any_event() {
    let app = spawn_app().await;
    let publisher = publisher_token();
    let alice = user_token("alice");

    // SSE: the id-only frame after `authenticated` moves the browser's lastEventId.
    let response = app.http.get(app.url("/v1/events")).bearer_auth(&alice).send().await.unwrap();
    let mut raw = String::new();
    let mut body = response.bytes_stream();
    use futures_util::StreamExt;
    while !raw.contains("\nid: ") {
        let chunk = tokio::time::timeout(WAIT, body.next()).await.unwrap().unwrap().unwrap();
        raw.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let checkpoint = raw.split("\nid: ").nth(1).unwrap().lines().next().unwrap().to_string();
    drop(body);

    let ws = WsClient::connect(&app, &alice).await;
    let ws_start = ws.hello.data["lastEventId"].as_str().unwrap().to_string();
    drop(ws);
    assert_eq!(checkpoint, ws_start, "both transports start from the same position");

    app.notify(&publisher, "alice", "missed").await;
    let mut sse = SseClient::resume(&app, &alice, &checkpoint).await;
    assert_eq!(sse.next_named("notification:new").await.data["notification"]["title"], "missed");
    let mut ws = WsClient::resume(&app, &alice, &ws_start).await;
    assert_eq!(ws.next_named("notification:new").await.data["notification"]["title"], "missed");
}

#[tokio::test]
async fn ws_resumes_by_query_message_and_authenticate() {
    let app = spawn_app().await;
    let publisher = publisher_token();
    let alice = user_token("alice");
    let ws = WsClient::connect(&app, &alice).await;
    let start = ws.hello.data["lastEventId"].as_str().unwrap().to_string();
    drop(ws);
    app.notify(&publisher, "alice", "missed").await;

    let mut by_query = WsClient::resume(&app, &alice, &start).await;
    assert_eq!(by_query.next_named("notification:new").await.data["notification"]["title"], "missed");

    let (mut socket, _) = tokio_tungstenite::connect_async(app.ws_url("")).await.unwrap();
    let authenticate = json!({ "event": "authenticate", "data": { "token": alice, "lastEventId": start } });
    futures_util::SinkExt::send(
        &mut socket,
        tokio_tungstenite::tungstenite::Message::text(authenticate.to_string()),
    )
    .await
    .unwrap();
    let mut by_authenticate = WsClient::after_hello(socket).await;
    assert_eq!(by_authenticate.next_named("notification:new").await.data["notification"]["title"], "missed");

    let mut by_message = WsClient::connect(&app, &alice).await;
    by_message.send(json!({ "event": "resume", "data": { "lastEventId": start }, "ack": 1 })).await;
    assert_eq!(by_message.next_ack(1).await.data["success"], true);
    let replayed = by_message.next_named("notification:new").await;
    assert_eq!(replayed.data["notification"]["title"], "missed");

    by_message.send(json!({ "event": "resume", "data": { "lastEventId": start }, "ack": 2 })).await;
    let late = by_message.next_ack(2).await;
    assert_eq!(late.data["code"], "resume_too_late", "resume after deliveries would repeat events");
}

#[tokio::test]
async fn bad_ids_are_bad_requests() {
    let app = spawn_app().await;
    let alice = user_token("alice");
    let ws = WsClient::connect(&app, &alice).await;
    let good = ws.hello.data["lastEventId"].as_str().unwrap().to_string();
    drop(ws);
    let tag = good.split('~').nth(1).unwrap();
    let bob_id = WsClient::connect(&app, &user_token("bob")).await.hello.data["lastEventId"]
        .as_str()
        .unwrap()
        .to_string();

    for (label, id) in [
        ("future", format!("u:99.t:0~{tag}")),
        ("other user", bob_id.clone()),
        ("malformed", "garbage".to_string()),
        ("negative", format!("u:-1~{tag}")),
    ] {
        let response = app
            .http
            .get(app.url("/v1/events"))
            .bearer_auth(&alice)
            .header("last-event-id", &id)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "SSE {label}");
        let problem = assert_problem(response, 400, Some("lastEventId")).await;
        assert_eq!(problem["code"], "invalid_last_event_id", "SSE {label}");

        let url = app.ws_url(&format!("?access_token={alice}&lastEventId={id}"));
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 400, "WS {label}")
            }
            other => panic!("WS {label}: expected 400, got {other:?}"),
        }
    }

    let mut ws = WsClient::connect(&app, &alice).await;
    ws.send(json!({ "event": "resume", "data": { "lastEventId": bob_id }, "ack": 1 })).await;
    assert_eq!(ws.next_ack(1).await.data["code"], "invalid_last_event_id");
    ws.send(json!({ "event": "ping", "ack": 2 })).await;
    assert_eq!(ws.next_ack(2).await.name, "pong", "a bad resume leaves the socket working");

    // A lastEventId that is not a string is rejected, not ignored.
    let (mut socket, _) = tokio_tungstenite::connect_async(app.ws_url("")).await.unwrap();
    let authenticate = json!({ "event": "authenticate", "data": { "token": alice, "lastEventId": 5 } });
    futures_util::SinkExt::send(
        &mut socket,
        tokio_tungstenite::tungstenite::Message::text(authenticate.to_string()),
    )
    .await
    .unwrap();
    let frame = futures_util::StreamExt::next(&mut socket).await.unwrap().unwrap();
    let error: serde_json::Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
    assert_eq!(error["data"]["code"], "invalid_last_event_id");
}

#[tokio::test]
async fn one_id_resumes_user_tenant_and_rooms() {
    let app = spawn_app().await;
    let publisher = Claims::publisher().tenant("acme").token();
    let alice = Claims::user("alice").tenant("acme").rooms(&["orders"]).token();
    let mut sse = SseClient::connect_query(&app, &format!("access_token={alice}&rooms=orders")).await;
    let order = |n: i64| json!({ "event": "data:updated", "data": { "type": "order", "data": { "n": n } } });
    let post = |path: &'static str, body: serde_json::Value| {
        app.http.post(app.url(path)).bearer_auth(&publisher).json(&body).send()
    };
    assert_eq!(post("/v1/rooms/orders/events", order(1)).await.unwrap().status(), 201);
    let last = sse.next_named("data:updated").await.id.unwrap();
    drop(sse);

    assert_eq!(post("/v1/rooms/orders/events", order(2)).await.unwrap().status(), 201);
    assert_eq!(
        post("/v1/broadcast", json!({ "event": "maintenance", "data": { "m": 1 } })).await.unwrap().status(),
        201
    );
    app.notify(&publisher, "alice", "note").await;

    let response = app
        .http
        .get(app.url("/v1/events?rooms=orders"))
        .bearer_auth(&alice)
        .header("last-event-id", &last)
        .send()
        .await
        .unwrap();
    let mut sse = SseClient::from_response(response).await;
    let mut names = Vec::new();
    while names.len() < 3 {
        let event = sse.next().await;
        match event.name.as_str() {
            "notification:unread_count" => {}
            "data:updated" => {
                assert_eq!(event.data["data"]["n"], 2, "only the room event after the id");
                names.push(event.name);
            }
            _ => names.push(event.name),
        }
    }
    names.sort();
    assert_eq!(names, ["data:updated", "maintenance", "notification:new"]);
}

#[tokio::test]
async fn ws_room_joined_later_resumes_from_the_id() {
    let app = spawn_app().await;
    let publisher = publisher_token();
    let alice = Claims::user("alice").rooms(&["orders"]).token();
    let order = |n: i64| json!({ "event": "data:updated", "data": { "type": "order", "data": { "n": n } } });
    let post = |body: serde_json::Value| {
        app.http.post(app.url("/v1/rooms/orders/events")).bearer_auth(&publisher).json(&body).send()
    };

    let mut ws = WsClient::connect(&app, &alice).await;
    ws.send(json!({ "event": "room:join", "data": { "room": "orders" }, "ack": 1 })).await;
    ws.next_ack(1).await;
    assert_eq!(post(order(1)).await.unwrap().status(), 201);
    let last = ws.next_named("data:updated").await.id.unwrap();
    assert!(last.contains("r-orders:1"), "the id carries the room position: {last}");
    drop(ws);
    assert_eq!(post(order(2)).await.unwrap().status(), 201);
    assert_eq!(post(order(3)).await.unwrap().status(), 201);

    // The room is joined only after the socket resumed; its position waits in the cursor.
    let mut ws = WsClient::resume(&app, &alice, &last).await;
    ws.send(json!({ "event": "room:join", "data": { "room": "orders" }, "ack": 2 })).await;
    ws.next_ack(2).await;
    let first = ws.next_named("data:updated").await;
    let second = ws.next_named("data:updated").await;
    let replayed = [first.data["data"]["n"].as_i64(), second.data["data"]["n"].as_i64()];
    assert_eq!(replayed, [Some(2), Some(3)], "the missed room events, once, in order");

    // Leaving drops the position, so rejoining starts from now.
    ws.send(json!({ "event": "room:leave", "data": { "room": "orders" }, "ack": 3 })).await;
    ws.next_ack(3).await;
    ws.send(json!({ "event": "room:join", "data": { "room": "orders" }, "ack": 4 })).await;
    ws.next_ack(4).await;
    assert_eq!(post(order(4)).await.unwrap().status(), 201);
    assert_eq!(ws.next_named("data:updated").await.data["data"]["n"], 4);
}
