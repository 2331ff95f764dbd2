//! Cases for notifications: create, list, mark read, delete, and the events each appends.

use std::sync::Arc;

use nexus_notify::{
    events::{names, Notification},
    store::{NewNotification, PageCursor, StatusFilter, Store, StoreError},
};
use serde_json::json;

use crate::harness::{
    content, describe, event_names, head, in_room, payload, positions, stored_events, user_room, users,
};

/// Asserts that two notifications agree on every field.
fn assert_same_notification(actual: &Notification, expected: &Notification) {
    assert_eq!(actual.id, expected.id, "id");
    assert_eq!(actual.user_id, expected.user_id, "user_id of {}", expected.id);
    assert_eq!(actual.title, expected.title, "title of {}", expected.id);
    assert_eq!(actual.message, expected.message, "message of {}", expected.id);
    assert_eq!(actual.kind, expected.kind, "kind of {}", expected.id);
    assert_eq!(actual.data, expected.data, "data of {}", expected.id);
    assert_eq!(actual.status, expected.status, "status of {}", expected.id);
    assert_eq!(actual.created_at, expected.created_at, "created_at of {}", expected.id);
    assert_eq!(actual.read_at, expected.read_at, "read_at of {}", expected.id);
}

fn ids(notifications: &[Notification]) -> Vec<String> {
    notifications.iter().map(|n| n.id.clone()).collect()
}

async fn create_one(store: &Arc<dyn Store>, tenant: &str, user: &str, title: &str) -> Notification {
    let change = store.create_notifications(tenant, &users(&[user]), &content(title)).await.unwrap();
    change.value.into_iter().next().expect("one notification per user")
}

async fn list(store: &Arc<dyn Store>, tenant: &str, user: &str, status: StatusFilter) -> Vec<Notification> {
    store.list_notifications(tenant, user, status, 100, None).await.unwrap()
}

pub async fn create_for_one_user(store: Arc<dyn Store>) {
    let data = json!({
        "invoice": { "id": 42, "total": 19.5, "lines": [1, "two", null, { "deep": true }] },
        "note": "ñ 日本 \"quoted\" \\ back\nslash",
    });
    let first_content = NewNotification {
        title: "Invoice paid".into(),
        message: "Invoice 42 was paid".into(),
        kind: "invoice.paid".into(),
        data: Some(data.clone()),
    };
    let first = store.create_notifications("acme", &users(&["alice"]), &first_content).await.unwrap();

    assert_eq!(first.value.len(), 1);
    let created = &first.value[0];
    assert_eq!(created.user_id, "alice");
    assert_eq!(created.title, "Invoice paid");
    assert_eq!(created.message, "Invoice 42 was paid");
    assert_eq!(created.kind, "invoice.paid");
    assert_eq!(created.data.as_ref(), Some(&data));
    assert_eq!(created.status, "unread");
    assert_eq!(created.read_at, None);

    let room = user_room("acme", "alice");
    assert!(first.events.iter().all(|event| event.room == room), "every event goes to alice's room");
    assert_eq!(event_names(&first.events), [names::NOTIFICATION_NEW, names::UNREAD_COUNT]);
    assert_eq!(positions(&first.events), [1, 2]);
    let new = payload(&first.events[0]);
    assert_eq!(new["notification"]["id"], created.id.as_str());
    assert_eq!(new["notification"]["data"], data);
    assert_eq!(new["notification"]["status"], "unread");
    assert_eq!(payload(&first.events[1])["unreadCount"], 1);
    assert_eq!(describe(&stored_events(&store, &room).await), describe(&first.events));

    let listed = list(&store, "acme", "alice", StatusFilter::All).await;
    assert_eq!(listed.len(), 1);
    assert_same_notification(&listed[0], created);
    assert_eq!(store.unread_count("acme", "alice").await.unwrap(), 1);

    let second = store.create_notifications("acme", &users(&["alice"]), &content("Second")).await.unwrap();
    assert_eq!(second.value[0].data, None);
    assert_eq!(positions(&second.events), [3, 4]);
    assert_eq!(payload(&second.events[0])["notification"]["data"], json!(null));
    assert_eq!(payload(&second.events[1])["unreadCount"], 2);
    assert_eq!(store.unread_count("acme", "alice").await.unwrap(), 2);
    assert_eq!(head(&store, &room).await, 4);

    let listed = list(&store, "acme", "alice", StatusFilter::All).await;
    assert_eq!(ids(&listed), [second.value[0].id.clone(), created.id.clone()], "newest first");
    assert_same_notification(&listed[0], &second.value[0]);
}

pub async fn create_for_several_users(store: Arc<dyn Store>) {
    let recipients = users(&["carol", "alice", "bob"]);
    let first = store.create_notifications("", &recipients, &content("Hello")).await.unwrap();

    let owners: Vec<&str> = first.value.iter().map(|n| n.user_id.as_str()).collect();
    assert_eq!(owners, ["carol", "alice", "bob"], "notifications come back in the caller's order");
    let mut distinct = ids(&first.value);
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "every notification has its own id");
    assert_eq!(first.events.len(), 6);

    for notification in &first.value {
        let user = notification.user_id.as_str();
        let room = user_room("", user);
        let events = in_room(&first.events, &room);
        assert_eq!(event_names(&events), [names::NOTIFICATION_NEW, names::UNREAD_COUNT], "{user}");
        assert_eq!(positions(&events), [1, 2], "{user}");
        assert_eq!(payload(&events[0])["notification"]["id"], notification.id.as_str(), "{user}");
        assert_eq!(payload(&events[1])["unreadCount"], 1, "{user}");
        assert_eq!(describe(&stored_events(&store, &room).await), describe(&events), "{user}");
        assert_eq!(store.unread_count("", user).await.unwrap(), 1, "{user}");
    }

    let reversed = users(&["bob", "alice", "carol"]);
    let second = store.create_notifications("", &reversed, &content("Again")).await.unwrap();
    let owners: Vec<&str> = second.value.iter().map(|n| n.user_id.as_str()).collect();
    assert_eq!(owners, ["bob", "alice", "carol"]);
    for user in ["alice", "bob", "carol"] {
        let events = in_room(&second.events, &user_room("", user));
        assert_eq!(positions(&events), [3, 4], "{user}");
        assert_eq!(payload(&events[1])["unreadCount"], 2, "{user}");
        assert_eq!(store.unread_count("", user).await.unwrap(), 2, "{user}");
    }
}

pub async fn create_for_repeated_user(store: Arc<dyn Store>) {
    let recipients = users(&["dave", "erin", "dave"]);
    let change = store.create_notifications("", &recipients, &content("Twice")).await.unwrap();

    let owners: Vec<&str> = change.value.iter().map(|n| n.user_id.as_str()).collect();
    assert_eq!(owners, ["dave", "erin", "dave"]);
    assert_ne!(change.value[0].id, change.value[2].id);

    let dave = in_room(&change.events, &user_room("", "dave"));
    assert_eq!(positions(&dave), [1, 2, 3, 4]);
    let counts: Vec<_> = dave.iter().skip(1).step_by(2).map(|e| payload(e)["unreadCount"].clone()).collect();
    assert_eq!(counts, [json!(1), json!(2)]);
    assert_eq!(store.unread_count("", "dave").await.unwrap(), 2);
    assert_eq!(store.unread_count("", "erin").await.unwrap(), 1);
}

pub async fn list_pages_newest_first(store: Arc<dyn Store>) {
    // Two notifications per call for alice, so some share a millisecond and the id decides.
    let mut created = Vec::new();
    for round in 0..4 {
        let recipients = users(&["alice", "bob", "alice"]);
        let change = store.create_notifications("", &recipients, &content(&format!("Round {round}"))).await;
        created.extend(change.unwrap().value.into_iter().filter(|n| n.user_id == "alice"));
    }
    let mut expected = created.clone();
    expected.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    let expected_ids = ids(&expected);

    let everything = list(&store, "", "alice", StatusFilter::All).await;
    assert_eq!(ids(&everything), expected_ids);
    for (listed, wanted) in everything.iter().zip(&expected) {
        assert_same_notification(listed, wanted);
    }

    let mut paged = Vec::new();
    let mut page_sizes = Vec::new();
    let mut cursor: Option<PageCursor> = None;
    for _ in 0..10 {
        let page =
            store.list_notifications("", "alice", StatusFilter::All, 3, cursor.as_ref()).await.unwrap();
        page_sizes.push(page.len());
        let Some(last) = page.last() else { break };
        let next = PageCursor { created_at_ms: last.created_at.timestamp_millis(), id: last.id.clone() };
        // Pass the cursor through its text form, as the REST API does.
        cursor = Some(PageCursor::decode(&next.encode()).expect("cursor decodes"));
        paged.extend(ids(&page));
    }
    assert_eq!(paged, expected_ids, "pages join up to the full list");
    assert_eq!(page_sizes, [3, 3, 2, 0]);
}

pub async fn list_filters_by_status(store: Arc<dyn Store>) {
    let mut created = Vec::new();
    for index in 0..5 {
        created.push(create_one(&store, "", "alice", &format!("Number {index}")).await);
    }
    create_one(&store, "", "bob", "Not alice's").await;
    for index in [1, 3] {
        store.mark_read("", "alice", &created[index].id).await.unwrap();
    }

    let newest_first = |indexes: &[usize]| -> Vec<String> {
        indexes.iter().rev().map(|&index| created[index].id.clone()).collect()
    };
    let unread = list(&store, "", "alice", StatusFilter::Unread).await;
    assert_eq!(ids(&unread), newest_first(&[0, 2, 4]));
    assert!(unread.iter().all(|n| n.status == "unread" && n.read_at.is_none()));

    let read = list(&store, "", "alice", StatusFilter::Read).await;
    assert_eq!(ids(&read), newest_first(&[1, 3]));
    assert!(read.iter().all(|n| n.status == "read" && n.read_at.is_some()));

    let all = list(&store, "", "alice", StatusFilter::All).await;
    assert_eq!(ids(&all), newest_first(&[0, 1, 2, 3, 4]));

    let first_page = store.list_notifications("", "alice", StatusFilter::Unread, 2, None).await.unwrap();
    assert_eq!(ids(&first_page), newest_first(&[2, 4]));
    let last = &first_page[1];
    let cursor = PageCursor { created_at_ms: last.created_at.timestamp_millis(), id: last.id.clone() };
    let rest = store.list_notifications("", "alice", StatusFilter::Unread, 2, Some(&cursor)).await.unwrap();
    assert_eq!(ids(&rest), newest_first(&[0]));

    assert_eq!(store.unread_count("", "alice").await.unwrap(), 3);
    assert!(list(&store, "", "nobody", StatusFilter::All).await.is_empty());
}

pub async fn mark_read_is_idempotent(store: Arc<dyn Store>) {
    let target = create_one(&store, "", "alice", "Read me").await;
    create_one(&store, "", "alice", "Stay unread").await;
    let room = user_room("", "alice");

    let first = store.mark_read("", "alice", &target.id).await.unwrap();
    assert_eq!(first.value.id, target.id);
    assert_eq!(first.value.status, "read");
    assert_eq!(first.value.title, "Read me");
    assert_eq!(first.value.created_at, target.created_at);
    assert!(first.value.read_at.is_some(), "read_at is set");
    assert_eq!(event_names(&first.events), [names::NOTIFICATION_READ, names::UNREAD_COUNT]);
    assert_eq!(positions(&first.events), [5, 6]);
    let read = payload(&first.events[0]);
    assert_eq!(read["notificationId"], target.id.as_str());
    assert_eq!(read["success"], true);
    assert_eq!(payload(&first.events[1])["unreadCount"], 1);

    let second = store.mark_read("", "alice", &target.id).await.unwrap();
    assert!(second.events.is_empty(), "a second mark_read appends nothing");
    assert_same_notification(&second.value, &first.value);
    assert_eq!(head(&store, &room).await, 6);
    assert_eq!(store.unread_count("", "alice").await.unwrap(), 1);

    let listed = list(&store, "", "alice", StatusFilter::Read).await;
    assert_eq!(listed.len(), 1);
    assert_same_notification(&listed[0], &first.value);
}

pub async fn mark_read_rejects_other_owners(store: Arc<dyn Store>) {
    let target = create_one(&store, "acme", "alice", "Private").await;
    let attempts = [
        ("acme", "alice", "no-such-id"),
        ("acme", "bob", target.id.as_str()),
        ("", "alice", target.id.as_str()),
        ("globex", "alice", target.id.as_str()),
    ];
    for (tenant, user, id) in attempts {
        let result = store.mark_read(tenant, user, id).await;
        assert!(matches!(result, Err(StoreError::NotFound)), "{tenant}/{user}/{id}: {result:?}");
    }

    assert_eq!(store.unread_count("acme", "alice").await.unwrap(), 1);
    assert_eq!(head(&store, &user_room("acme", "alice")).await, 2);
    assert_eq!(head(&store, &user_room("acme", "bob")).await, 0);
    assert_eq!(head(&store, &user_room("", "alice")).await, 0);
}

pub async fn mark_all_read_counts_and_appends(store: Arc<dyn Store>) {
    let mut created = Vec::new();
    for index in 0..3 {
        created.push(create_one(&store, "", "alice", &format!("Number {index}")).await);
    }
    create_one(&store, "", "bob", "Bob's").await;
    store.mark_read("", "alice", &created[1].id).await.unwrap();
    let room = user_room("", "alice");
    assert_eq!(head(&store, &room).await, 8);

    let change = store.mark_all_read("", "alice").await.unwrap();
    assert_eq!(change.value, 2);
    assert_eq!(
        event_names(&change.events),
        [names::NOTIFICATION_READ, names::NOTIFICATION_READ, names::UNREAD_COUNT]
    );
    assert_eq!(positions(&change.events), [9, 10, 11]);
    let mut read_ids: Vec<String> = change.events[..2]
        .iter()
        .map(|event| payload(event)["notificationId"].as_str().unwrap().to_string())
        .collect();
    read_ids.sort();
    let mut expected = vec![created[0].id.clone(), created[2].id.clone()];
    expected.sort();
    assert_eq!(read_ids, expected, "one read event per notification that changed");
    assert_eq!(payload(&change.events[2])["unreadCount"], 0);
    assert_eq!(describe(&stored_events(&store, &room).await[8..]), describe(&change.events));

    assert!(list(&store, "", "alice", StatusFilter::Unread).await.is_empty());
    assert!(list(&store, "", "alice", StatusFilter::All).await.iter().all(|n| n.read_at.is_some()));
    assert_eq!(store.unread_count("", "bob").await.unwrap(), 1, "other users keep their unread");

    let again = store.mark_all_read("", "alice").await.unwrap();
    assert_eq!(again.value, 0);
    assert!(again.events.is_empty());
    assert_eq!(head(&store, &room).await, 11);

    let nobody = store.mark_all_read("", "nobody").await.unwrap();
    assert_eq!(nobody.value, 0);
    assert!(nobody.events.is_empty());
    assert_eq!(head(&store, &user_room("", "nobody")).await, 0);
}

pub async fn delete_appends_events(store: Arc<dyn Store>) {
    let unread = create_one(&store, "", "alice", "Unread").await;
    let read = create_one(&store, "", "alice", "Read").await;
    store.mark_read("", "alice", &read.id).await.unwrap();
    let room = user_room("", "alice");

    let change = store.delete_notification("", "alice", &unread.id).await.unwrap();
    assert_eq!(event_names(&change.events), [names::NOTIFICATION_DELETED, names::UNREAD_COUNT]);
    assert_eq!(positions(&change.events), [7, 8]);
    assert_eq!(payload(&change.events[0])["notificationId"], unread.id.as_str());
    assert_eq!(payload(&change.events[1])["unreadCount"], 0);
    assert_eq!(ids(&list(&store, "", "alice", StatusFilter::All).await), [read.id.as_str()]);

    let change = store.delete_notification("", "alice", &read.id).await.unwrap();
    assert_eq!(positions(&change.events), [9, 10]);
    assert_eq!(payload(&change.events[1])["unreadCount"], 0);
    assert!(list(&store, "", "alice", StatusFilter::All).await.is_empty());

    let again = store.delete_notification("", "alice", &read.id).await;
    assert!(matches!(again, Err(StoreError::NotFound)), "deleting twice: {again:?}");
    let mark = store.mark_read("", "alice", &unread.id).await;
    assert!(matches!(mark, Err(StoreError::NotFound)), "marking a deleted one: {mark:?}");
    assert_eq!(head(&store, &room).await, 10);
}

pub async fn delete_rejects_other_owners(store: Arc<dyn Store>) {
    let target = create_one(&store, "acme", "alice", "Private").await;
    let attempts = [
        ("acme", "alice", "no-such-id"),
        ("acme", "bob", target.id.as_str()),
        ("", "alice", target.id.as_str()),
        ("globex", "alice", target.id.as_str()),
    ];
    for (tenant, user, id) in attempts {
        let result = store.delete_notification(tenant, user, id).await;
        assert!(matches!(result, Err(StoreError::NotFound)), "{tenant}/{user}/{id}: {result:?}");
    }

    assert_eq!(ids(&list(&store, "acme", "alice", StatusFilter::All).await), [target.id.as_str()]);
    assert_eq!(head(&store, &user_room("acme", "alice")).await, 2);
    assert_eq!(head(&store, &user_room("acme", "bob")).await, 0);
    assert_eq!(head(&store, &user_room("globex", "alice")).await, 0);
}

pub async fn tenants_are_isolated(store: Arc<dyn Store>) {
    let tenantless = create_one(&store, "", "alice", "No tenant").await;
    let acme_first = create_one(&store, "acme", "alice", "Acme one").await;
    let acme_second = create_one(&store, "acme", "alice", "Acme two").await;

    assert_eq!(ids(&list(&store, "", "alice", StatusFilter::All).await), [tenantless.id.as_str()]);
    assert_eq!(
        ids(&list(&store, "acme", "alice", StatusFilter::All).await),
        [acme_second.id.clone(), acme_first.id.clone()]
    );
    assert!(list(&store, "globex", "alice", StatusFilter::All).await.is_empty());
    assert_eq!(store.unread_count("", "alice").await.unwrap(), 1);
    assert_eq!(store.unread_count("acme", "alice").await.unwrap(), 2);
    assert_eq!(head(&store, &user_room("", "alice")).await, 2, "each tenant has its own room");
    assert_eq!(head(&store, &user_room("acme", "alice")).await, 4);

    let change = store.mark_all_read("acme", "alice").await.unwrap();
    assert_eq!(change.value, 2);
    assert!(change.events.iter().all(|event| event.room == user_room("acme", "alice")));
    assert_eq!(store.unread_count("", "alice").await.unwrap(), 1, "the tenantless user is untouched");
    assert_eq!(head(&store, &user_room("", "alice")).await, 2);
}
