//! Multi-node tests: three real server processes on different ports share one PostgreSQL
//! database and one Redis, and must behave as one server.
//!
//! They run when `NOTIFY_TEST_POSTGRES_URL` and `NOTIFY_TEST_REDIS_URL` are set, and print one
//! skip line otherwise.

#[allow(dead_code)]
#[path = "../api/support.rs"]
mod support;

use std::time::Duration;

use serde_json::{json, Value};
use sqlx::{Connection, Executor, PgConnection};
use support::*;

/// Shared services for one test: a fresh database and a key prefix of its own.
struct Cluster {
    admin_url: String,
    database: String,
    database_url: String,
    redis_url: String,
    prefix: String,
    dir: tempfile::TempDir,
}

/// Prints the skip notice once per run of this suite. It goes straight to stdout, because the
/// test harness captures `println!` output of passing tests.
fn print_skip_notice() {
    static NOTICE: std::sync::Once = std::sync::Once::new();
    NOTICE.call_once(|| {
        let line =
            "skipped: set NOTIFY_TEST_POSTGRES_URL and NOTIFY_TEST_REDIS_URL to run the multi-node suite\n";
        let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), line.as_bytes());
    });
}

impl Cluster {
    /// Creates the database, or returns `None` (after the skip notice) without the services.
    async fn create(test: &str) -> Option<Self> {
        let _ = test;
        let (Ok(admin_url), Ok(redis_url)) =
            (std::env::var("NOTIFY_TEST_POSTGRES_URL"), std::env::var("NOTIFY_TEST_REDIS_URL"))
        else {
            print_skip_notice();
            return None;
        };
        let suffix = format!("{:08x}", rand::random::<u32>());
        let database = format!("nn_cluster_{suffix}");
        let mut admin = PgConnection::connect(&admin_url).await.expect("PostgreSQL reachable");
        admin.execute(format!("CREATE DATABASE {database}").as_str()).await.unwrap();
        let database_url = match admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{database}"),
            None => panic!("NOTIFY_TEST_POSTGRES_URL must end with /DATABASE"),
        };
        Some(Cluster {
            admin_url,
            database,
            database_url,
            redis_url,
            prefix: format!("nntest-{suffix}"),
            dir: tempfile::tempdir().unwrap(),
        })
    }

    /// Starts one node; `redis_url` overrides the shared Redis.
    fn node(&self, redis_url: Option<&str>) -> ServerProcess {
        let redis = redis_url.unwrap_or(&self.redis_url);
        ServerProcess::start(
            self.dir.path(),
            &[
                "--database-url",
                &self.database_url,
                "--broker-url",
                redis,
                "--redis-prefix",
                &self.prefix,
                "--node-ttl",
                "2s",
            ],
        )
    }

    async fn drop_database(self) {
        drop(self);
    }
}

impl Drop for Cluster {
    /// Drops the test database, also when the test panicked. It runs on a thread of its own,
    /// because a test's runtime cannot block on async work inside `drop`.
    fn drop(&mut self) {
        let (admin_url, database) = (self.admin_url.clone(), self.database.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                for _ in 0..3 {
                    if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                        let sql = format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)");
                        if admin.execute(sql.as_str()).await.is_ok() {
                            return true;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                false
            })
        })
        .join()
        .unwrap_or(false);
        if !dropped {
            eprintln!("warning: failed to drop test database {}", self.database);
        }
    }
}

async fn user_presence(app: &TestApp, user: &str) -> Value {
    app.get(&format!("/v1/presence/{user}"), &publisher_token()).await.json().await.unwrap()
}

#[tokio::test]
async fn nodes_behave_as_one_server() {
    let Some(cluster) = Cluster::create("nodes_behave_as_one_server").await else { return };
    let nodes = [cluster.node(None), cluster.node(None), cluster.node(None)];
    let apps: Vec<TestApp> = nodes.iter().map(ServerProcess::app).collect();
    let alice = user_token("alice");
    let publisher = publisher_token();

    let mut sse = SseClient::connect(&apps[0], &alice).await;
    let mut ws = WsClient::connect(&apps[1], &alice).await;
    let created = apps[2].notify(&publisher, "alice", "from node 3").await;
    for event in [sse.next_named("notification:new").await, ws.next_named("notification:new").await] {
        assert_eq!(event.data["notification"]["id"], created["id"]);
    }
    assert_eq!(sse.next_named("notification:unread_count").await.data["unreadCount"], 1);

    // Mark read through node 2; the SSE stream on node 1 receives the read and the new count.
    let path = format!("/v1/notifications/{}/read", created["id"].as_str().unwrap());
    assert_eq!(apps[1].post(&path, &alice).await.status(), 200);
    assert_eq!(sse.next_named("notification:read").await.data["notificationId"], created["id"]);
    assert_eq!(sse.next_named("notification:unread_count").await.data["unreadCount"], 0);

    // Presence through any node counts the connections on all of them.
    let _bob = WsClient::connect(&apps[2], &user_token("bob")).await;
    for app in &apps {
        assert_eq!(
            user_presence(app, "alice").await,
            json!({ "userId": "alice", "online": true, "connections": 2 })
        );
        let summary: Value = app.get("/v1/presence", &publisher).await.json().await.unwrap();
        assert_eq!(summary, json!({ "connectedUsers": 2, "connections": 3 }));
    }
    drop((sse, ws));
    drop(nodes);
    cluster.drop_database().await;
}

#[tokio::test]
async fn resume_on_another_node() {
    let Some(cluster) = Cluster::create("resume_on_another_node").await else { return };
    let nodes = [cluster.node(None), cluster.node(None), cluster.node(None)];
    let apps: Vec<TestApp> = nodes.iter().map(ServerProcess::app).collect();
    let alice = user_token("alice");
    let publisher = publisher_token();

    let mut sse = SseClient::connect(&apps[0], &alice).await;
    apps[1].notify(&publisher, "alice", "seen").await;
    let last = sse.next_named("notification:unread_count").await.id.unwrap();
    drop(sse);
    // Published on two nodes at once while the client is away.
    let (a, b) = tokio::join!(
        async {
            for n in 0..10 {
                apps[1].notify(&publisher, "alice", &format!("b{n}")).await;
            }
        },
        async {
            for n in 0..10 {
                apps[2].notify(&publisher, "alice", &format!("c{n}")).await;
            }
        },
    );
    let _ = (a, b);

    let mut ws = WsClient::resume(&apps[2], &alice, &last).await;
    let mut seen = Vec::new();
    while seen.len() < 40 {
        if let Some(id) = ws.next().await.id {
            seen.push(user_seq(&id));
        }
    }
    assert_eq!(seen, (3..=42).collect::<Vec<_>>(), "everything missed, once, in order");
    drop(nodes);
    cluster.drop_database().await;
}

#[tokio::test]
async fn killed_node_leaves_presence() {
    let Some(cluster) = Cluster::create("killed_node_leaves_presence").await else { return };
    let doomed = cluster.node(None);
    let survivor = cluster.node(None);
    let (doomed_app, survivor_app) = (doomed.app(), survivor.app());
    let alice = user_token("alice");
    let _on_doomed = WsClient::connect(&doomed_app, &alice).await;
    let _on_survivor = WsClient::connect(&survivor_app, &alice).await;
    assert_eq!(user_presence(&survivor_app, "alice").await["connections"], 2);

    let killed_at = std::time::Instant::now();
    drop(doomed); // SIGKILL: no goodbye.
    wait_until("the dead node to leave presence", || async {
        user_presence(&survivor_app, "alice").await["connections"] == 1
    })
    .await;
    // The stated bound: the node TTL (2 s here) plus one heartbeat of the survivor.
    assert!(killed_at.elapsed() < Duration::from_secs(5), "took {:?}", killed_at.elapsed());
    drop(survivor);
    cluster.drop_database().await;
}

/// A Redis server this test starts on a free port, so it can kill and restart it.
struct OwnRedis {
    child: std::process::Child,
    port: u16,
}

impl OwnRedis {
    fn start(port: u16) -> Option<Self> {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let deadline = std::time::Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(OwnRedis { child, port })
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn redis_restart_loses_nothing() {
    let Some(cluster) = Cluster::create("redis_restart_loses_nothing").await else { return };
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let Some(redis) = OwnRedis::start(port) else {
        let line = "skipped: install redis-server to run the Redis restart test\n";
        let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), line.as_bytes());
        cluster.drop_database().await;
        return;
    };
    let url = redis.url();
    let nodes = [cluster.node(Some(&url)), cluster.node(Some(&url))];
    let apps: Vec<TestApp> = nodes.iter().map(ServerProcess::app).collect();
    let alice = user_token("alice");
    let publisher = publisher_token();
    let mut sse = SseClient::connect(&apps[0], &alice).await;
    let mut ws = WsClient::connect(&apps[1], &alice).await;

    const PER_PHASE: usize = 10;
    let publish = |phase: &'static str| {
        let (apps, publisher) = (&apps, &publisher);
        async move {
            for n in 0..PER_PHASE {
                apps[n % 2].notify(publisher, "alice", &format!("{phase}{n}")).await;
            }
        }
    };
    publish("before").await;
    let ready = |app: &TestApp| {
        let request = app.http.get(app.url("/readyz"));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(ready(&apps[0]).await, 200);

    drop(redis); // Redis dies mid-stream.
    let outage = std::time::Instant::now();
    publish("during").await;
    // Requests do not wait for Redis: the events are committed and queued for it.
    assert!(outage.elapsed() < Duration::from_secs(5), "10 creates took {:?}", outage.elapsed());
    wait_until("/readyz to report the outage", || async { ready(&apps[0]).await == 503 }).await;
    let redis = OwnRedis::start(port).expect("redis-server restarts");
    wait_until("/readyz to recover", || async { ready(&apps[0]).await == 200 }).await;
    publish("after").await;

    let last = (PER_PHASE * 3 * 2) as i64;
    let mut sse_seen = Vec::new();
    while sse_seen.last().copied().unwrap_or(0) < last {
        // SSE clients report the last id for events without one, so count by name.
        let event = sse.next().await;
        if event.name.starts_with("notification:") {
            sse_seen.push(user_seq(&event.id.unwrap()));
        }
    }
    let mut ws_seen = Vec::new();
    while ws_seen.last().copied().unwrap_or(0) < last {
        if let Some(id) = ws.next().await.id {
            ws_seen.push(user_seq(&id));
        }
    }
    let expected: Vec<i64> = (1..=last).collect();
    assert_eq!(sse_seen, expected, "SSE on node 1: every event once, in order");
    assert_eq!(ws_seen, expected, "WebSocket on node 2: every event once, in order");
    drop(redis);
    drop(nodes);
    cluster.drop_database().await;
}

/// Measures creates per second and delivery latency (request start to arrival) through one
/// node to connections on the others. Run by hand: `cargo test --release --test cluster --
/// --ignored --nocapture`; the numbers go to docs/deployment.md.
#[tokio::test]
#[ignore = "a measurement, not a check; run by hand"]
async fn measure_cross_node_delivery() {
    const COUNT: usize = 2_000;
    const WORKERS: usize = 8;
    let Some(cluster) = Cluster::create("measure_cross_node_delivery").await else { return };
    let nodes = [cluster.node(None), cluster.node(None), cluster.node(None)];
    let apps: Vec<TestApp> = nodes.iter().map(ServerProcess::app).collect();
    let publisher = publisher_token();
    let alice = user_token("alice");
    let mut sse = SseClient::connect(&apps[0], &alice).await;
    let mut ws = WsClient::connect(&apps[1], &alice).await;

    let started = std::time::Instant::now();
    let sent = std::sync::Mutex::new(std::collections::HashMap::new());
    let publish = futures_util::future::join_all((0..WORKERS).map(|worker| {
        let (apps, publisher, sent) = (&apps, &publisher, &sent);
        async move {
            for n in 0..COUNT / WORKERS {
                let title = format!("{worker}-{n}");
                sent.lock().unwrap().insert(title.clone(), std::time::Instant::now());
                apps[2].notify(publisher, "alice", &title).await;
            }
        }
    }));
    let receive_sse = async {
        let mut latencies = Vec::with_capacity(COUNT);
        while latencies.len() < COUNT {
            let event = sse.next_named("notification:new").await;
            let title = event.data["notification"]["title"].as_str().unwrap().to_string();
            latencies.push(sent.lock().unwrap()[&title].elapsed());
        }
        latencies
    };
    let receive_ws = async {
        let mut latencies = Vec::with_capacity(COUNT);
        while latencies.len() < COUNT {
            let event = ws.next_named("notification:new").await;
            let title = event.data["notification"]["title"].as_str().unwrap().to_string();
            latencies.push(sent.lock().unwrap()[&title].elapsed());
        }
        latencies
    };
    let (_, mut sse_latencies, mut ws_latencies) = tokio::join!(publish, receive_sse, receive_ws);
    let elapsed = started.elapsed();
    let quantile = |values: &mut Vec<Duration>, q: f64| {
        values.sort();
        values[((values.len() as f64 * q) as usize).min(values.len() - 1)]
    };
    println!(
        "{COUNT} notifications, {WORKERS} concurrent publishers, via node 3: {:.0}/s; \
         SSE on node 1 p50 {:?} p99 {:?}; WebSocket on node 2 p50 {:?} p99 {:?}",
        COUNT as f64 / elapsed.as_secs_f64(),
        quantile(&mut sse_latencies, 0.5),
        quantile(&mut sse_latencies, 0.99),
        quantile(&mut ws_latencies, 0.5),
        quantile(&mut ws_latencies, 0.99),
    );
    drop(nodes);
    cluster.drop_database().await;
}
