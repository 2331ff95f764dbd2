//! Runs a case on a fresh store of each backend, and helpers shared by the cases.

use std::{future::Future, io::Write, sync::Arc, sync::Once};

use nexus_notify::{
    events::{Event, Room, RoomKey},
    store::{self, NewNotification, Store},
};
use serde_json::Value;
use sqlx::{Connection, PgConnection};

/// Names the PostgreSQL server to test against. The suite creates its databases there.
const POSTGRES_URL_VARIABLE: &str = "NOTIFY_TEST_POSTGRES_URL";

/// Runs `case` on a new SQLite file in a temporary folder.
pub async fn run_on_sqlite<C, F>(case: C)
where
    C: FnOnce(Arc<dyn Store>) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let dir = tempfile::tempdir().expect("create a temporary folder");
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let store = store::open(&url).await.expect("open the SQLite store");
    let outcome = run_case(&store, case).await;
    store.close().await;
    finish(outcome);
}

/// Runs `case` on a new PostgreSQL database, or returns at once when no server is configured.
/// The database is dropped afterwards, also when the case fails.
pub async fn run_on_postgres<C, F>(case: C)
where
    C: FnOnce(Arc<dyn Store>) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let Some(server_url) = std::env::var(POSTGRES_URL_VARIABLE).ok().filter(|url| !url.is_empty()) else {
        print_skip_notice();
        return;
    };
    let database = TestDatabase::create(&server_url).await;
    let store = match store::open(&database.url).await {
        Ok(store) => store,
        Err(error) => {
            database.drop_database().await;
            panic!("opening the PostgreSQL store on database {} failed: {error}", database.name);
        }
    };
    let outcome = run_case(&store, case).await;
    store.close().await;
    database.drop_database().await;
    finish(outcome);
}

/// Runs the case in its own task, so a failed assertion comes back as an error and the
/// caller can still clean up before reporting it.
async fn run_case<C, F>(store: &Arc<dyn Store>, case: C) -> Result<(), tokio::task::JoinError>
where
    C: FnOnce(Arc<dyn Store>) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(case(Arc::clone(store))).await
}

fn finish(outcome: Result<(), tokio::task::JoinError>) {
    match outcome {
        Ok(()) => {}
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => panic!("the test task did not finish: {error}"),
    }
}

/// Prints the skip notice once per test binary run. It goes straight to stdout, because the
/// test harness captures `println!` output of passing tests.
fn print_skip_notice() {
    static NOTICE: Once = Once::new();
    NOTICE.call_once(|| {
        let line = format!("skipped: set {POSTGRES_URL_VARIABLE} to run the PostgreSQL store suite\n");
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
    });
}

/// A database created for one test on the configured server.
struct TestDatabase {
    server_url: String,
    name: String,
    /// The server URL with its path pointing at this database.
    url: String,
}

impl TestDatabase {
    async fn create(server_url: &str) -> Self {
        let name = format!("nn_{:016x}", rand::random::<u64>());
        let mut connection = PgConnection::connect(server_url)
            .await
            .unwrap_or_else(|e| panic!("connecting to {POSTGRES_URL_VARIABLE} failed: {e}"));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut connection)
            .await
            .unwrap_or_else(|e| panic!("creating database {name} failed: {e}"));
        let _ = connection.close().await;

        let mut url = reqwest::Url::parse(server_url)
            .unwrap_or_else(|e| panic!("{POSTGRES_URL_VARIABLE} is not a valid URL: {e}"));
        url.set_path(&format!("/{name}"));
        TestDatabase { server_url: server_url.to_string(), name, url: url.to_string() }
    }

    /// Drops the database, closing any connection still open to it. A failure only prints a
    /// warning, because the test itself has already passed or failed.
    async fn drop_database(&self) {
        let dropped = async {
            let mut connection = PgConnection::connect(&self.server_url).await?;
            sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
                .execute(&mut connection)
                .await?;
            connection.close().await
        };
        if let Err(error) = dropped.await {
            eprintln!("warning: dropping test database {} failed, drop it by hand: {error}", self.name);
        }
    }
}

/// Content for a notification without `data`.
pub fn content(title: &str) -> NewNotification {
    NewNotification {
        title: title.to_string(),
        message: format!("{title}, message"),
        kind: "test.kind".to_string(),
        data: None,
    }
}

/// Turns user names into the slice type that `create_notifications` takes.
pub fn users(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| name.to_string()).collect()
}

pub fn user_room(tenant: &str, user: &str) -> RoomKey {
    Room::User { tenant: tenant.to_string(), user: user.to_string() }.key()
}

pub fn named_room(tenant: &str, name: &str) -> Room {
    Room::Named { tenant: tenant.to_string(), name: name.to_string() }
}

/// Parses an event's JSON payload.
pub fn payload(event: &Event) -> Value {
    serde_json::from_str(&event.data).expect("event data is JSON")
}

pub fn positions(events: &[Arc<Event>]) -> Vec<i64> {
    events.iter().map(|event| event.seq.expect("stored events have a position")).collect()
}

pub fn event_names(events: &[Arc<Event>]) -> Vec<&str> {
    events.iter().map(|event| event.name.as_str()).collect()
}

/// Describes events by every field, for comparing what a call returned with what is stored.
pub fn describe(events: &[Arc<Event>]) -> Vec<(String, Option<i64>, String, String)> {
    events.iter().map(|e| (e.room.to_string(), e.seq, e.name.clone(), e.data.clone())).collect()
}

/// Filters `events` down to those of `room`, keeping their order.
pub fn in_room(events: &[Arc<Event>], room: &RoomKey) -> Vec<Arc<Event>> {
    events.iter().filter(|event| &event.room == room).cloned().collect()
}

/// Returns the retained events of a room, up to 10,000, which is more than any case stores.
pub async fn stored_events(store: &Arc<dyn Store>, room: &RoomKey) -> Vec<Arc<Event>> {
    store.events_after(room, 0, 10_000).await.expect("events_after")
}

pub async fn head(store: &Arc<dyn Store>, room: &RoomKey) -> i64 {
    store.heads(std::slice::from_ref(room)).await.expect("heads")[0]
}
