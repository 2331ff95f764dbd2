//! Cases with concurrent writers: no deadlock, no hole, no repeat, and positions that become
//! visible only in order.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use nexus_notify::{events::names, store::Store};
use serde_json::json;
use tokio::task::JoinSet;

use crate::harness::{
    content, event_names, head, in_room, named_room, payload, positions, stored_events, user_room, users,
};

pub async fn concurrent_creates_in_opposite_orders(store: Arc<dyn Store>) {
    const CREATES: usize = 20;
    let mut tasks = JoinSet::new();
    for index in 0..CREATES {
        let store = Arc::clone(&store);
        let recipients = if index % 2 == 0 { users(&["alice", "bob"]) } else { users(&["bob", "alice"]) };
        tasks.spawn(async move {
            let change =
                store.create_notifications("", &recipients, &content(&format!("Create {index}"))).await;
            (recipients, change)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let (recipients, change) = joined.expect("create task ran");
        let change = change.unwrap_or_else(|e| panic!("create for {recipients:?} failed: {e}"));
        let owners: Vec<&String> = change.value.iter().map(|n| &n.user_id).collect();
        assert_eq!(owners, recipients.iter().collect::<Vec<_>>(), "caller's order");
        for user in ["alice", "bob"] {
            let mine = positions(&in_room(&change.events, &user_room("", user)));
            assert_eq!(mine.len(), 2, "{user}: {mine:?}");
            assert_eq!(mine[1], mine[0] + 1, "{user}: the count follows its notification");
        }
    }

    let expected_positions: Vec<i64> = (1..=2 * CREATES as i64).collect();
    let expected_counts: Vec<_> = (1..=CREATES).map(|count| json!(count)).collect();
    for user in ["alice", "bob"] {
        let room = user_room("", user);
        let events = stored_events(&store, &room).await;
        assert_eq!(positions(&events), expected_positions, "{user}: no hole and no repeat");
        assert_eq!(head(&store, &room).await, 2 * CREATES as i64, "{user}");
        let new_count = event_names(&events).iter().filter(|name| **name == names::NOTIFICATION_NEW).count();
        assert_eq!(new_count, CREATES, "{user}");
        // Each count was taken while its transaction held the room's head lock, so in
        // position order they must read 1, 2, 3 and so on.
        let counts: Vec<_> = events
            .iter()
            .filter(|event| event.name == names::UNREAD_COUNT)
            .map(|event| payload(event)["unreadCount"].clone())
            .collect();
        assert_eq!(counts, expected_counts, "{user}");
        assert_eq!(store.unread_count("", user).await.unwrap(), CREATES as i64, "{user}");
    }
}

pub async fn positions_become_visible_in_order(store: Arc<dyn Store>) {
    const WRITERS: usize = 4;
    const APPENDS_PER_WRITER: usize = 25;
    const MAX_READS: usize = 10_000;
    let room = named_room("", "feed");
    let key = room.key();

    let finished = Arc::new(AtomicUsize::new(0));
    let mut writers = JoinSet::new();
    for writer in 0..WRITERS {
        let (store, room, finished) = (Arc::clone(&store), room.clone(), Arc::clone(&finished));
        writers.spawn(async move {
            for number in 0..APPENDS_PER_WRITER {
                let data = json!({ "type": "feed", "data": { "writer": writer, "number": number } });
                store.append_event(&room, names::DATA_UPDATED, data).await.expect("append");
            }
            finished.fetch_add(1, Ordering::SeqCst);
        });
    }

    // A reader that reads the head and then the log while the writers run must never see a
    // hole, nor fewer events than the head it read before.
    let mut reads = 0;
    let mut last_seen = 0;
    while reads < MAX_READS && finished.load(Ordering::SeqCst) < WRITERS {
        reads += 1;
        let head_before = head(&store, &key).await;
        let seen = positions(&stored_events(&store, &key).await);
        let contiguous: Vec<i64> = (1..=seen.len() as i64).collect();
        assert_eq!(seen, contiguous, "read {reads} saw a hole");
        assert!(seen.len() as i64 >= head_before, "read {reads}: head {head_before}, saw {}", seen.len());
        assert!(seen.len() >= last_seen, "read {reads} saw fewer events than read {}", reads - 1);
        last_seen = seen.len();
        tokio::task::yield_now().await;
    }
    while let Some(joined) = writers.join_next().await {
        joined.expect("writer task ran");
    }

    let total = (WRITERS * APPENDS_PER_WRITER) as i64;
    assert_eq!(positions(&stored_events(&store, &key).await), (1..=total).collect::<Vec<_>>());
    assert_eq!(head(&store, &key).await, total);
}
