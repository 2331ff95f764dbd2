//! Cases for the per-room event log: positions, heads, reads after a position, pruning.

use std::{sync::Arc, time::Duration};

use nexus_notify::{
    events::{names, Room},
    store::{StatusFilter, Store},
};
use serde_json::json;

use crate::harness::{
    content, describe, event_names, head, named_room, payload, positions, stored_events, user_room, users,
};

/// Appends `count` `data:updated` events to `room`, numbered from 1 in their payload.
async fn append_many(store: &Arc<dyn Store>, room: &Room, count: usize) {
    for number in 1..=count {
        let data = json!({ "type": "test", "data": { "number": number } });
        store.append_event(room, names::DATA_UPDATED, data).await.unwrap();
    }
}

pub async fn append_event_positions_per_room(store: Arc<dyn Store>) {
    let orders = named_room("acme", "orders");
    let tenant = Room::Tenant { tenant: "acme".into() };
    let other_orders = named_room("globex", "orders");

    let mut appended = Vec::new();
    for number in 1..=3 {
        let data = json!({ "type": "order", "data": { "number": number } });
        let event = store.append_event(&orders, names::DATA_UPDATED, data).await.unwrap();
        assert_eq!(event.room, orders.key());
        assert_eq!(event.seq, Some(number));
        assert_eq!(event.name, names::DATA_UPDATED);
        let stored = payload(&event);
        assert_eq!(stored["type"], "order");
        assert_eq!(stored["data"]["number"], number);
        assert!(stored["timestamp"].is_string(), "the payload carries a timestamp: {stored}");
        appended.push(event);
    }

    let first = store.append_event(&tenant, names::DATA_UPDATED, json!({ "type": "t" })).await.unwrap();
    let second = store.append_event(&tenant, names::DATA_UPDATED, json!({ "type": "t" })).await.unwrap();
    assert_eq!((first.seq, second.seq), (Some(1), Some(2)), "each room counts from 1");
    let other = store.append_event(&other_orders, names::DATA_UPDATED, json!({})).await.unwrap();
    assert_eq!(other.seq, Some(1), "a room of the same name in another tenant counts on its own");

    assert_eq!(describe(&stored_events(&store, &orders.key()).await), describe(&appended));
    let next = store.append_event(&orders, "custom:event", json!({ "x": 1 })).await.unwrap();
    assert_eq!(next.seq, Some(4));
    assert_eq!(next.name, "custom:event");
}

pub async fn heads_of_known_and_unknown_rooms(store: Arc<dyn Store>) {
    let orders = named_room("acme", "orders");
    let tenant = Room::Tenant { tenant: "acme".into() };
    append_many(&store, &orders, 3).await;
    append_many(&store, &tenant, 1).await;
    store.create_notifications("acme", &users(&["alice"]), &content("Hello")).await.unwrap();

    let rooms = [
        orders.key(),
        named_room("acme", "unknown").key(),
        tenant.key(),
        user_room("acme", "alice"),
        orders.key(),
    ];
    assert_eq!(store.heads(&rooms).await.unwrap(), [3, 0, 1, 2, 3], "heads in the order asked");
    assert!(store.heads(&[]).await.unwrap().is_empty());
}

pub async fn events_after_respects_limits(store: Arc<dyn Store>) {
    let orders = named_room("", "orders");
    let neighbour = named_room("", "orders-2");
    append_many(&store, &orders, 5).await;
    append_many(&store, &neighbour, 2).await;
    let key = orders.key();

    let cases: [(i64, u32, &[i64]); 8] = [
        (0, 2, &[1, 2]),
        (2, 2, &[3, 4]),
        (4, 10, &[5]),
        (0, 100, &[1, 2, 3, 4, 5]),
        (5, 10, &[]),
        (100, 10, &[]),
        (0, 0, &[]),
        (-3, 1, &[1]),
    ];
    for (after, limit, expected) in cases {
        let events = store.events_after(&key, after, limit).await.unwrap();
        assert_eq!(positions(&events), expected, "after {after}, limit {limit}");
        assert!(events.iter().all(|event| event.room == key), "after {after}, limit {limit}");
    }

    let events = store.events_after(&key, 0, 100).await.unwrap();
    let numbers: Vec<_> = events.iter().map(|event| payload(event)["data"]["number"].clone()).collect();
    assert_eq!(numbers, [json!(1), json!(2), json!(3), json!(4), json!(5)]);
    assert!(event_names(&events).iter().all(|name| *name == names::DATA_UPDATED));

    let unknown = named_room("", "unknown").key();
    assert!(store.events_after(&unknown, 0, 10).await.unwrap().is_empty());
}

pub async fn prune_by_count(store: Arc<dyn Store>) {
    let orders = named_room("", "orders");
    let tenant = Room::Tenant { tenant: String::new() };
    append_many(&store, &orders, 10).await;
    append_many(&store, &tenant, 3).await;

    let deleted = store.prune_events(4, i64::MIN, 1_000).await.unwrap();
    assert_eq!(deleted, 6);
    assert_eq!(positions(&stored_events(&store, &orders.key()).await), [7, 8, 9, 10]);
    assert_eq!(positions(&stored_events(&store, &tenant.key()).await), [1, 2, 3], "under the limit");
    assert_eq!(head(&store, &orders.key()).await, 10, "pruning keeps the head");

    assert_eq!(store.prune_events(4, i64::MIN, 1_000).await.unwrap(), 0);
    let next = store.append_event(&orders, names::DATA_UPDATED, json!({})).await.unwrap();
    assert_eq!(next.seq, Some(11), "positions are never handed out twice");
}

pub async fn prune_by_age(store: Arc<dyn Store>) {
    let orders = named_room("", "orders");
    let tenant = Room::Tenant { tenant: String::new() };
    append_many(&store, &orders, 3).await;
    append_many(&store, &tenant, 1).await;
    // The sleeps put the cutoff strictly between the two groups, in whole milliseconds.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let cutoff = chrono::Utc::now().timestamp_millis();
    tokio::time::sleep(Duration::from_millis(5)).await;
    append_many(&store, &orders, 2).await;

    let deleted = store.prune_events(1_000, cutoff, 1_000).await.unwrap();
    assert_eq!(deleted, 4);
    assert_eq!(positions(&stored_events(&store, &orders.key()).await), [4, 5]);
    assert!(stored_events(&store, &tenant.key()).await.is_empty());
    assert_eq!(store.heads(&[orders.key(), tenant.key()]).await.unwrap(), [5, 1]);
    assert_eq!(store.prune_events(1_000, cutoff, 1_000).await.unwrap(), 0);
}

pub async fn prune_respects_batch(store: Arc<dyn Store>) {
    let orders = named_room("", "orders");
    append_many(&store, &orders, 10).await;

    let mut deleted_per_call = Vec::new();
    for _ in 0..10 {
        let deleted = store.prune_events(0, i64::MIN, 3).await.unwrap();
        deleted_per_call.push(deleted);
        if deleted < 3 {
            break;
        }
    }
    assert_eq!(deleted_per_call, [3, 3, 3, 1]);
    assert!(stored_events(&store, &orders.key()).await.is_empty());
    assert_eq!(head(&store, &orders.key()).await, 10);
}

pub async fn prune_keeps_notifications_and_heads(store: Arc<dyn Store>) {
    let recipients = users(&["alice"]);
    let first = store.create_notifications("", &recipients, &content("One")).await.unwrap();
    store.create_notifications("", &recipients, &content("Two")).await.unwrap();
    store.mark_read("", "alice", &first.value[0].id).await.unwrap();
    let room = user_room("", "alice");

    assert_eq!(store.prune_events(0, i64::MAX, 1_000).await.unwrap(), 6);
    assert!(stored_events(&store, &room).await.is_empty());
    assert_eq!(store.list_notifications("", "alice", StatusFilter::All, 100, None).await.unwrap().len(), 2);
    assert_eq!(store.unread_count("", "alice").await.unwrap(), 1);
    assert_eq!(head(&store, &room).await, 6);

    let third = store.create_notifications("", &recipients, &content("Three")).await.unwrap();
    assert_eq!(positions(&third.events), [7, 8], "positions continue after pruning");
    assert_eq!(payload(&third.events[1])["unreadCount"], 2);
}

pub async fn ping_and_close(store: Arc<dyn Store>) {
    store.ping().await.expect("ping an open store");
    store.close().await;
    assert!(store.ping().await.is_err(), "ping after close fails");
    let append = store.append_event(&named_room("", "orders"), names::DATA_UPDATED, json!({})).await;
    assert!(append.is_err(), "append after close fails");
}
