//! REST behaviour of notifications: listing, paging, marking, deleting, ownership.

use serde_json::{json, Value};

use crate::support::*;

#[tokio::test]
async fn list_pages_newest_first() {
    let app = spawn_app().await;
    let publisher = publisher_token();
    let alice = user_token("alice");
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(
            app.notify(&publisher, "alice", &format!("n{i}")).await["id"].as_str().unwrap().to_string(),
        );
    }
    created.reverse();

    let mut seen = Vec::new();
    let mut path = "/v1/notifications?limit=2".to_string();
    loop {
        let page: Value = app.get(&path, &alice).await.json().await.unwrap();
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|n| n["id"].as_str().unwrap().to_string()));
        match page["nextCursor"].as_str() {
            Some(cursor) => path = format!("/v1/notifications?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, created, "every notification once, newest first");
}

#[tokio::test]
async fn list_filters_by_status() {
    let app = spawn_app().await;
    let publisher = publisher_token();
    let alice = user_token("alice");
    let first = app.notify(&publisher, "alice", "first").await;
    app.notify(&publisher, "alice", "second").await;
    let response =
        app.post(&format!("/v1/notifications/{}/read", first["id"].as_str().unwrap()), &alice).await;
    assert_eq!(response.status(), 200);
    let read: Value = response.json().await.unwrap();
    assert_eq!(read["status"], "read");
    assert!(read["readAt"].as_str().is_some());

    let titles = |page: Value| -> Vec<String> {
        page["items"].as_array().unwrap().iter().map(|n| n["title"].as_str().unwrap().to_string()).collect()
    };
    let unread = app.get("/v1/notifications?status=unread", &alice).await.json().await.unwrap();
    assert_eq!(titles(unread), vec!["second"]);
    let read = app.get("/v1/notifications?status=read", &alice).await.json().await.unwrap();
    assert_eq!(titles(read), vec!["first"]);
    let all = app.get("/v1/notifications?status=all", &alice).await.json().await.unwrap();
    assert_eq!(titles(all), vec!["second", "first"]);
}

#[tokio::test]
async fn mark_read_is_idempotent() {
    let app = spawn_app().await;
    let alice = user_token("alice");
    let created = app.notify(&publisher_token(), "alice", "n").await;
    let path = format!("/v1/notifications/{}/read", created["id"].as_str().unwrap());
    let first: Value = app.post(&path, &alice).await.json().await.unwrap();
    let again = app.post(&path, &alice).await;
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(first["readAt"], again["readAt"], "a second mark keeps the first read time");
    let count: Value = app.get("/v1/notifications/unread-count", &alice).await.json().await.unwrap();
    assert_eq!(count["unreadCount"], 0);
}

#[tokio::test]
async fn other_users_notifications_are_not_found() {
    let app = spawn_app().await;
    let publisher = publisher_token();
    let created = app.notify(&publisher, "alice", "private").await;
    let id = created["id"].as_str().unwrap();
    let bob = user_token("bob");
    let same_sub_other_tenant = Claims::user("alice").tenant("globex").token();

    for token in [&bob, &same_sub_other_tenant] {
        assert_problem(app.post(&format!("/v1/notifications/{id}/read"), token).await, 404, None).await;
        let delete = app
            .http
            .delete(app.url(&format!("/v1/notifications/{id}")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_problem(delete, 404, None).await;
        let page: Value = app.get("/v1/notifications", token).await.json().await.unwrap();
        assert_eq!(page["items"], json!([]));
    }
    let unknown = app.post("/v1/notifications/01900000-0000-7000-8000-000000000000/read", &bob).await;
    assert_problem(unknown, 404, None).await;

    // Alice's notification is untouched.
    let alice = user_token("alice");
    let count: Value = app.get("/v1/notifications/unread-count", &alice).await.json().await.unwrap();
    assert_eq!(count["unreadCount"], 1);
}

#[tokio::test]
async fn create_for_many_users_at_once() {
    let app = spawn_app().await;
    let body = json!({ "userIds": ["a", "b", "a", "c"], "title": "t", "message": "m", "type": "info", "data": { "k": 1 } });
    let response = app.create(&publisher_token(), body).await;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    let users: Vec<&str> =
        created["notifications"].as_array().unwrap().iter().map(|n| n["userId"].as_str().unwrap()).collect();
    assert_eq!(users, vec!["a", "b", "c"], "repeated recipients get one notification");
    for user in ["a", "b", "c"] {
        let page: Value = app.get("/v1/notifications", &user_token(user)).await.json().await.unwrap();
        assert_eq!(page["items"][0]["data"], json!({ "k": 1 }));
    }
}

#[tokio::test]
async fn created_notifications_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("keep.db").display());
    let app = spawn_app_with(&["--database-url", &url]).await;
    let created = app.notify(&publisher_token(), "alice", "kept").await;
    app.stop().await;

    let app = spawn_app_with(&["--database-url", &url]).await;
    let page: Value = app.get("/v1/notifications", &user_token("alice")).await.json().await.unwrap();
    assert_eq!(page["items"][0]["id"], created["id"]);
}
