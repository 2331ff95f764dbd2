//! The real binary under signals and load: SIGKILL, SIGTERM, and memory while a reader stalls.

use std::time::Duration;

use crate::support::*;

#[tokio::test]
async fn acknowledged_notifications_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("notify.db").display());
    let publisher = publisher_token();
    let alice = user_token("alice");

    let server = ServerProcess::start(dir.path(), &["--database-url", &database]);
    let app = server.app();
    let mut sse = SseClient::connect(&app, &alice).await;
    app.notify(&publisher, "alice", "seen").await;
    let last = sse.next_named("notification:unread_count").await.id.unwrap();
    drop(sse);
    let mut acknowledged = Vec::new();
    for n in 0..20 {
        acknowledged.push(app.notify(&publisher, "alice", &format!("missed {n}")).await["id"].clone());
    }
    drop(server); // SIGKILL: no shutdown, no flush beyond what each commit did.

    let server = ServerProcess::start(dir.path(), &["--database-url", &database]);
    let app = server.app();
    let mut sse = SseClient::resume(&app, &alice, &last).await;
    let mut replayed = Vec::new();
    while replayed.len() < acknowledged.len() {
        replayed.push(sse.next_named("notification:new").await.data["notification"]["id"].clone());
    }
    assert_eq!(replayed, acknowledged, "every acknowledged notification, in order");
    let count: serde_json::Value =
        app.get("/v1/notifications/unread-count", &alice).await.json().await.unwrap();
    assert_eq!(count["unreadCount"], 21);
}

#[tokio::test]
async fn sigterm_drains_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path(), &["--shutdown-timeout", "5s"]);
    let app = server.app();
    let alice = user_token("alice");
    let response = app.http.get(app.url("/v1/events")).bearer_auth(&alice).send().await.unwrap();
    let mut sse_bytes = response.bytes_stream();
    let mut ws = WsClient::connect(&app, &alice).await;

    server.terminate();
    let mut text = String::new();
    use futures_util::StreamExt;
    while let Some(chunk) = tokio::time::timeout(WAIT, sse_bytes.next()).await.expect("SSE ends in time") {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert!(text.ends_with("retry: 5000\n\n"), "SSE ends with a retry hint: {text:?}");
    assert!(matches!(ws.next_frame().await, WsFrame::Closed(Some(1012))));
    let status = server.wait_exit(Duration::from_secs(8));
    assert!(status.success(), "clean exit: {status:?}");
    let logs = server.drain_logs();
    assert!(logs.contains("stopped"), "logs the stop:\n{logs}");
}

#[tokio::test]
async fn memory_stays_bounded_while_a_reader_stalls() {
    const COUNT: usize = 600;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &["--connection-queue", "32"]);
    let app = server.app();
    let publisher = publisher_token();
    let alice = user_token("alice");
    let body = |n: usize| serde_json::json!({ "userId": "alice", "title": format!("n{n}"), "message": "m", "type": "x", "data": { "blob": "x".repeat(60_000) } });
    // Warm up allocator and page cache before the baseline.
    for n in 0..50 {
        assert_eq!(app.create(&publisher, body(n)).await.status(), 201);
    }

    let stalled = open_stalled_sse(&app, &alice).await;
    let baseline = server.rss_kib();

    for n in 0..COUNT {
        assert_eq!(app.create(&publisher, body(n)).await.status(), 201);
    }
    let grown_mib = server.rss_kib().saturating_sub(baseline) / 1024;
    let published_mib = COUNT * 60_000 / (1024 * 1024);
    println!("published {published_mib} MiB behind a stalled reader; RSS grew {grown_mib} MiB");
    // The channel keeps at most 32 events (about 2 MiB here); the rest is allocator and
    // SQLite cache slack. Unbounded buffering would grow by the whole 34 MiB.
    assert!(grown_mib < 16, "RSS grew {grown_mib} MiB while {published_mib} MiB went past a stalled reader");
    drop(stalled);
}

#[tokio::test]
async fn limits_are_logged_once_with_the_user() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &["--max-body-bytes", "1024", "--max-rooms-per-connection", "1", "--max-connections-per-user", "1"],
    );
    let app = server.app();

    let big = serde_json::json!({ "userId": "a", "title": "t", "message": "x".repeat(2_000), "type": "x" });
    assert_eq!(app.create(&publisher_token(), big).await.status(), 413);

    let carol = Claims::user("carol").rooms(&["a", "b", "c"]).token();
    let mut ws = WsClient::connect(&app, &carol).await;
    for (ack, room) in [(1, "a"), (2, "b"), (3, "c")] {
        ws.send(serde_json::json!({ "event": "room:join", "data": { "room": room }, "ack": ack })).await;
        ws.next_ack(ack).await;
    }
    for _ in 0..3 {
        let response = app.http.get(app.url("/v1/events")).bearer_auth(&carol).send().await.unwrap();
        assert_eq!(response.status(), 429);
    }

    let logs = server.drain_logs();
    let count = |needle: &str| logs.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(count("request body over the limit"), 1, "{logs}");
    assert!(
        logs.lines().any(|l| l.contains("request body over the limit") && l.contains("user.id=backend")),
        "{logs}"
    );
    assert_eq!(count("room limit reached"), 1, "two refused joins, one line:\n{logs}");
    assert_eq!(count("connection limit reached"), 1, "three refused connections, one line:\n{logs}");
    assert!(
        logs.lines().any(|l| l.contains("connection limit reached") && l.contains("user.id=carol")),
        "{logs}"
    );
}
