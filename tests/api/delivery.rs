//! Live delivery: who gets which event, on which transport, how many times.

use std::collections::HashSet;

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn both_transports_receive_and_others_do_not() {
    let app = spawn_app().await;
    let publisher = publisher_token();
    let alice = Claims::user("alice").tenant("acme").token();
    let bob = Claims::user("bob").tenant("acme").token();
    let other_alice = Claims::user("alice").tenant("globex").token();
    let publisher_acme = Claims::publisher().tenant("acme").token();
    let publisher_globex = Claims::publisher().tenant("globex").token();

    let mut alice_sse = SseClient::connect(&app, &alice).await;
    let mut alice_ws = WsClient::connect(&app, &alice).await;
    let mut bob_sse = SseClient::connect(&app, &bob).await;
    let mut other_sse = SseClient::connect(&app, &other_alice).await;
    assert_eq!(alice_sse.hello.data["transport"], "sse");
    assert_eq!(alice_ws.hello.data["transport"], "websocket");
    assert_eq!(alice_sse.hello.data["userId"], "alice");
    assert_ne!(alice_sse.hello.data["connectionId"], alice_ws.hello.data["connectionId"]);

    let created = app.notify(&publisher_acme, "alice", "for alice").await;

    for event in
        [alice_sse.next_named("notification:new").await, alice_ws.next_named("notification:new").await]
    {
        assert_eq!(event.data["notification"]["id"], created["id"]);
        assert_eq!(event.data["notification"]["title"], "for alice");
        assert_eq!(event.data["notification"]["status"], "unread");
        assert!(event.data["timestamp"].as_str().is_some());
        assert!(event.id.is_some(), "notification events carry a resumable id");
    }
    assert_eq!(alice_sse.next_named("notification:unread_count").await.data["unreadCount"], 1);
    assert_eq!(alice_ws.next_named("notification:unread_count").await.data["unreadCount"], 1);

    // A marker sent afterwards to bob and to globex's alice must be the first notification
    // they see: anything of acme's alice would have arrived before it.
    app.notify(&publisher_acme, "bob", "marker for bob").await;
    app.notify(&publisher_globex, "alice", "marker for globex").await;
    let _ = publisher;
    assert_eq!(bob_sse.next_named("notification:new").await.data["notification"]["title"], "marker for bob");
    assert_eq!(
        other_sse.next_named("notification:new").await.data["notification"]["title"],
        "marker for globex"
    );
}

#[tokio::test]
async fn ws_mark_read_updates_count_on_sse() {
    let app = spawn_app().await;
    let publisher = publisher_token();
    let alice = user_token("alice");
    let mut sse = SseClient::connect(&app, &alice).await;
    let mut ws = WsClient::connect(&app, &alice).await;

    let first = app.notify(&publisher, "alice", "one").await;
    app.notify(&publisher, "alice", "two").await;
    assert_eq!(sse.next_named("notification:unread_count").await.data["unreadCount"], 1);
    assert_eq!(sse.next_named("notification:unread_count").await.data["unreadCount"], 2);

    ws.send(
        json!({ "event": "notification:mark_read", "data": { "notificationId": first["id"] }, "ack": 7 }),
    )
    .await;
    let reply = ws.next_ack(7).await;
    assert_eq!(reply.name, "notification:mark_read");
    assert_eq!(reply.data["success"], true);

    // Ids with control characters are rejected before they reach the store.
    ws.send(json!({ "event": "notification:mark_read", "data": { "notificationId": "a\u{0}b" }, "ack": 8 }))
        .await;
    assert_eq!(ws.next_ack(8).await.data["code"], "invalid_message");

    let read = sse.next_named("notification:read").await;
    assert_eq!(read.data["notificationId"], first["id"]);
    assert_eq!(read.data["success"], true);
    assert_eq!(sse.next_named("notification:unread_count").await.data["unreadCount"], 1);

    let count: serde_json::Value =
        app.get("/v1/notifications/unread-count", &alice).await.json().await.unwrap();
    assert_eq!(count["unreadCount"], 1);
}

#[tokio::test]
async fn concurrent_creates_arrive_once_each() {
    const COUNT: usize = 500;
    let app = spawn_app().await;
    let publisher = publisher_token();
    let alice = user_token("alice");
    let mut sse = SseClient::connect(&app, &alice).await;
    let mut ws = WsClient::connect(&app, &alice).await;

    let creates =
        (0..COUNT).map(|i| {
            let (app, publisher) = (&app, &publisher);
            async move {
                app.notify(publisher, "alice", &format!("n{i}")).await["id"].as_str().unwrap().to_string()
            }
        });
    let (ids, sse_titles, ws_titles) = tokio::join!(
        futures_util::future::join_all(creates),
        async {
            let mut seen = Vec::new();
            while seen.len() < COUNT {
                seen.push(sse.next_named("notification:new").await);
            }
            seen
        },
        async {
            let mut seen = Vec::new();
            while seen.len() < COUNT {
                seen.push(ws.next_named("notification:new").await);
            }
            seen
        },
    );

    let expected: HashSet<String> = ids.into_iter().collect();
    assert_eq!(expected.len(), COUNT);
    for (transport, events) in [("sse", sse_titles), ("ws", ws_titles)] {
        let got: Vec<String> =
            events.iter().map(|e| e.data["notification"]["id"].as_str().unwrap().to_string()).collect();
        let unique: HashSet<String> = got.iter().cloned().collect();
        assert_eq!(got.len(), COUNT, "{transport}: count");
        assert_eq!(unique, expected, "{transport}: each notification exactly once");
    }
    let count: serde_json::Value =
        app.get("/v1/notifications/unread-count", &alice).await.json().await.unwrap();
    assert_eq!(count["unreadCount"], COUNT);
}

#[tokio::test]
async fn sse_framing_survives_awkward_text() {
    let app = spawn_app().await;
    let alice = user_token("alice");
    let mut sse = SseClient::connect(&app, &alice).await;
    let title = "line one\nline two\r\nline three\rend";
    let message = "quotes \" and ' and \\ backslash, ñandú, 日本語, emoji 🎉, data: not a field\n\nid: 99";
    let data = json!({ "nested": "a\nb\r\nc", "unicode": "Ωμέγα", "quote": "\"" });
    let body = json!({ "userId": "alice", "title": title, "message": message, "type": "info", "data": data });
    let response = app.create(&publisher_token(), body).await;
    assert_eq!(response.status(), 201);

    let event = sse.next_named("notification:new").await;
    let notification = &event.data["notification"];
    assert_eq!(notification["title"], title);
    assert_eq!(notification["message"], message);
    assert_eq!(notification["data"], data);
}

#[tokio::test]
async fn sse_stream_headers_and_retry() {
    let app = spawn_app().await;
    let response = app.http.get(app.url("/v1/events")).bearer_auth(user_token("alice")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-accel-buffering"], "no");
    let mut body = response.bytes_stream();
    use futures_util::StreamExt;
    let first = tokio::time::timeout(WAIT, body.next()).await.unwrap().unwrap().unwrap();
    assert!(std::str::from_utf8(&first).unwrap().starts_with("retry: "), "stream starts with a retry hint");
}

#[tokio::test]
async fn heartbeats_reach_idle_streams() {
    let app = spawn_app_with(&["--heartbeat-interval", "1s"]).await;
    let response = app.http.get(app.url("/v1/events")).bearer_auth(user_token("alice")).send().await.unwrap();
    let mut body = response.bytes_stream();
    use futures_util::StreamExt;
    let mut text = String::new();
    while !text.contains("\n: keep-alive\n") && !text.starts_with(": keep-alive\n") {
        let chunk =
            tokio::time::timeout(WAIT, body.next()).await.expect("heartbeat in time").unwrap().unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test]
async fn delete_and_read_all_push_to_every_device() {
    let app = spawn_app().await;
    let publisher = publisher_token();
    let alice = user_token("alice");
    let mut phone = WsClient::connect(&app, &alice).await;
    let mut laptop = SseClient::connect(&app, &alice).await;
    let first = app.notify(&publisher, "alice", "one").await;
    app.notify(&publisher, "alice", "two").await;

    let path = format!("/v1/notifications/{}", first["id"].as_str().unwrap());
    let response = app.http.delete(app.url(&path)).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(response.status(), 204);
    let updated: serde_json::Value =
        app.post("/v1/notifications/read-all", &alice).await.json().await.unwrap();
    assert_eq!(updated["updated"], 1);

    assert_eq!(phone.next_named("notification:deleted").await.data["notificationId"], first["id"]);
    assert_eq!(phone.next_named("notification:read").await.data["success"], true);
    // The laptop receives every change in order, each followed by the count it caused.
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("notification:unread_count 0") {
        let event = laptop.next().await;
        match event.name.as_str() {
            "notification:unread_count" => seen.push(format!("{} {}", event.name, event.data["unreadCount"])),
            "notification:new" | "notification:read" | "notification:deleted" => seen.push(event.name),
            _ => {}
        }
    }
    let expected = [
        "notification:new",
        "notification:unread_count 1",
        "notification:new",
        "notification:unread_count 2",
        "notification:deleted",
        "notification:unread_count 1",
        "notification:read",
        "notification:unread_count 0",
    ];
    assert_eq!(seen, expected);
}
