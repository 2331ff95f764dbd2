//! Test harness: a real server on an ephemeral port with a fresh SQLite file, and real
//! HTTP, SSE and WebSocket clients that talk to it over loopback.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use eventsource_stream::Eventsource;
use futures_util::{SinkExt, Stream, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use nexus_notify::{config::Config, Server};
use serde_json::{json, Value};
use tokio::{net::TcpStream, sync::oneshot, task::JoinHandle};
use tokio_tungstenite::{tungstenite::Message, MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret-that-is-at-least-32-bytes-long";
/// Maximum wait for any single expected event. It is generous because CI machines are noisy,
/// and tests never sleep for it: they only fail after it.
pub const WAIT: Duration = Duration::from_secs(10);

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    config: Config,
}

/// A running server. Dropping it shuts the server down.
pub struct TestApp {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Starts a server with the default settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Starts a server with extra command-line flags, e.g. `["--heartbeat-interval", "1s"]`.
pub async fn spawn_app_with(extra: &[&str]) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("notify.db").display());
    let mut args = vec!["nexus-notify", "--jwt-secret", SECRET, "--bind", "127.0.0.1:0"];
    if !extra.contains(&"--database-url") {
        args.extend(["--database-url", &url]);
    }
    args.extend_from_slice(extra);
    let config = Flags::try_parse_from(args).expect("flags parse").config.resolve().expect("config valid");
    let server = Server::build(config).await.expect("server builds");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .serve(listener, async {
                let _ = stopped.await;
            })
            .await
            .expect("server runs");
    });
    TestApp { addr, http: reqwest::Client::new(), _dir: dir, stop: Some(stop), task: Some(task) }
}

impl TestApp {
    /// Returns a client view of a server running in another process.
    pub fn remote(addr: SocketAddr) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        TestApp { addr, http: reqwest::Client::new(), _dir: dir, stop: None, task: None }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/v1/ws{}", self.addr, query)
    }

    /// Creates notifications as a publisher and returns the response.
    pub async fn create(&self, publisher: &str, body: Value) -> reqwest::Response {
        self.http.post(self.url("/v1/notifications")).bearer_auth(publisher).json(&body).send().await.unwrap()
    }

    /// Creates one notification and returns it, failing the test unless the status is 201.
    pub async fn notify(&self, publisher: &str, user: &str, title: &str) -> Value {
        let body = json!({ "userId": user, "title": title, "message": "m", "type": "info" });
        let response = self.create(publisher, body).await;
        assert_eq!(response.status(), 201, "create failed: {}", response.text().await.unwrap());
        let created: Value = response.json().await.unwrap();
        created["notifications"][0].clone()
    }

    pub async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        self.http.get(self.url(path)).bearer_auth(token).send().await.unwrap()
    }

    pub async fn post(&self, path: &str, token: &str) -> reqwest::Response {
        self.http.post(self.url(path)).bearer_auth(token).send().await.unwrap()
    }

    /// Stops the server and waits until it has stopped.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task).await.expect("server stops in time").unwrap();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Claims for a test token; fields left `None` are not put in the token.
#[derive(Clone)]
pub struct Claims {
    pub sub: String,
    pub role: Option<String>,
    pub tenant: Option<String>,
    pub rooms: Vec<String>,
    /// Seconds from now until `exp`; negative for expired tokens.
    pub ttl: i64,
}

impl Claims {
    pub fn user(sub: &str) -> Self {
        Claims { sub: sub.into(), role: Some("user".into()), tenant: None, rooms: vec![], ttl: 3600 }
    }

    pub fn publisher() -> Self {
        Claims { role: Some("service".into()), ..Claims::user("backend") }
    }

    pub fn tenant(mut self, tenant: &str) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    pub fn rooms(mut self, rooms: &[&str]) -> Self {
        self.rooms = rooms.iter().map(|r| r.to_string()).collect();
        self
    }

    pub fn ttl(mut self, seconds: i64) -> Self {
        self.ttl = seconds;
        self
    }

    pub fn json(&self) -> Value {
        let now = chrono::Utc::now().timestamp();
        let mut claims = json!({ "sub": self.sub, "email": format!("{}@example.com", self.sub), "exp": now + self.ttl, "iat": now });
        if let Some(role) = &self.role {
            claims["role"] = json!(role);
        }
        if let Some(tenant) = &self.tenant {
            claims["tenant_id"] = json!(tenant);
        }
        if !self.rooms.is_empty() {
            claims["rooms"] = json!(self.rooms);
        }
        claims
    }

    /// Signs with the test secret.
    pub fn token(&self) -> String {
        sign(&self.json(), SECRET)
    }
}

pub fn sign(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes()))
        .unwrap()
}

pub fn user_token(sub: &str) -> String {
    Claims::user(sub).token()
}

pub fn publisher_token() -> String {
    Claims::publisher().token()
}

/// One event as a client decoded it, from either transport.
#[derive(Debug, Clone)]
pub struct Received {
    pub name: String,
    pub id: Option<String>,
    /// The payload: SSE `data`, or the `data` member of a WebSocket frame.
    pub data: Value,
    /// The `ack` a WebSocket reply echoes.
    pub ack: Option<u64>,
}

/// A real SSE client: reqwest for HTTP, eventsource-stream for the framing.
pub struct SseClient {
    events: std::pin::Pin<Box<dyn Stream<Item = Received> + Send>>,
    pub hello: Received,
}

impl SseClient {
    /// Connects with the token in the query and waits for `authenticated`.
    pub async fn connect(app: &TestApp, token: &str) -> Self {
        Self::connect_query(app, &format!("access_token={token}")).await
    }

    pub async fn connect_query(app: &TestApp, query: &str) -> Self {
        let response = app.http.get(app.url(&format!("/v1/events?{query}"))).send().await.unwrap();
        assert_eq!(response.status(), 200, "SSE connect failed: {}", response.text().await.unwrap());
        Self::from_response(response).await
    }

    pub async fn from_response(response: reqwest::Response) -> Self {
        let events = response.bytes_stream().eventsource().filter_map(|event| async move {
            let event = event.expect("valid SSE framing");
            if event.data.is_empty() {
                return None;
            }
            let data = serde_json::from_str(&event.data).expect("SSE data is JSON");
            let id = (!event.id.is_empty()).then_some(event.id);
            Some(Received { name: event.event, id, data, ack: None })
        });
        let mut events: std::pin::Pin<Box<dyn Stream<Item = Received> + Send>> = Box::pin(events);
        let hello = tokio::time::timeout(WAIT, events.next())
            .await
            .expect("authenticated in time")
            .expect("stream open");
        assert_eq!(hello.name, "authenticated", "first event must be authenticated");
        SseClient { events, hello }
    }

    /// Returns the next event, failing after [`WAIT`].
    pub async fn next(&mut self) -> Received {
        tokio::time::timeout(WAIT, self.events.next())
            .await
            .expect("event in time")
            .expect("stream still open")
    }

    /// Returns the next event named `name`, skipping others (presence, counts).
    pub async fn next_named(&mut self, name: &str) -> Received {
        loop {
            let event = self.next().await;
            if event.name == name {
                return event;
            }
        }
    }

    /// Returns `None` when the server ended the stream.
    pub async fn next_or_end(&mut self) -> Option<Received> {
        tokio::time::timeout(WAIT, self.events.next()).await.expect("event or end in time")
    }
}

/// A real WebSocket client (tokio-tungstenite).
pub struct WsClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub hello: Received,
}

impl WsClient {
    /// Connects with the token in the query and waits for `authenticated`.
    pub async fn connect(app: &TestApp, token: &str) -> Self {
        let (socket, _) = tokio_tungstenite::connect_async(app.ws_url(&format!("?access_token={token}")))
            .await
            .expect("WebSocket connects");
        Self::after_hello(socket).await
    }

    /// Connects without a token and authenticates with the first message.
    pub async fn connect_then_authenticate(app: &TestApp, token: &str) -> Self {
        let (mut socket, _) =
            tokio_tungstenite::connect_async(app.ws_url("")).await.expect("WebSocket connects");
        let message = json!({ "event": "authenticate", "data": { "token": token } });
        socket.send(Message::text(message.to_string())).await.unwrap();
        Self::after_hello(socket).await
    }

    pub async fn after_hello(socket: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Self {
        let hello = Received { name: String::new(), id: None, data: Value::Null, ack: None };
        let mut client = WsClient { socket, hello };
        client.hello = client.next().await;
        assert_eq!(client.hello.name, "authenticated", "first event must be authenticated");
        client
    }

    /// Returns the next event (text frame), failing after [`WAIT`].
    pub async fn next(&mut self) -> Received {
        match self.next_frame().await {
            WsFrame::Event(event) => event,
            WsFrame::Closed(code) => panic!("socket closed with {code:?} while an event was expected"),
        }
    }

    /// Returns the next text frame or the close code.
    pub async fn next_frame(&mut self) -> WsFrame {
        loop {
            let message = tokio::time::timeout(WAIT, self.socket.next()).await.expect("frame in time");
            match message {
                Some(Ok(Message::Text(text))) => {
                    let value: Value = serde_json::from_str(&text).expect("frame is JSON");
                    return WsFrame::Event(Received {
                        name: value["event"].as_str().expect("frame has event").to_string(),
                        id: value.get("id").and_then(Value::as_str).map(String::from),
                        data: value["data"].clone(),
                        ack: value.get("ack").and_then(Value::as_u64),
                    });
                }
                Some(Ok(Message::Close(frame))) => return WsFrame::Closed(frame.map(|f| u16::from(f.code))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return WsFrame::Closed(None),
            }
        }
    }

    pub async fn next_named(&mut self, name: &str) -> Received {
        loop {
            let event = self.next().await;
            if event.name == name {
                return event;
            }
        }
    }

    /// Returns the next frame that echoes `ack`, skipping pushed events.
    pub async fn next_ack(&mut self, ack: u64) -> Received {
        loop {
            let event = self.next().await;
            if event.ack == Some(ack) {
                return event;
            }
        }
    }

    /// Sends a client message.
    pub async fn send(&mut self, message: Value) {
        self.socket.send(Message::text(message.to_string())).await.unwrap();
    }
}

/// What a WebSocket client read: an event frame (whole frame in `data`) or a close.
#[derive(Debug)]
pub enum WsFrame {
    Event(Received),
    Closed(Option<u16>),
}

/// Checks a problem+json response: status, content type, and the `field` it names.
pub async fn assert_problem(response: reqwest::Response, status: u16, field: Option<&str>) -> Value {
    assert_eq!(response.status(), status, "status");
    let content_type = response.headers().get("content-type").unwrap().to_str().unwrap().to_string();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status);
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()), "detail present: {body}");
    if let Some(field) = field {
        assert_eq!(body["field"], field, "field named: {body}");
        assert!(body["detail"].as_str().unwrap().contains(field), "detail names the field: {body}");
    }
    body
}

impl SseClient {
    /// Connects with the token in the header and `Last-Event-ID`, as a browser reconnects.
    pub async fn resume(app: &TestApp, token: &str, last_event_id: &str) -> Self {
        let response = app
            .http
            .get(app.url("/v1/events"))
            .bearer_auth(token)
            .header("last-event-id", last_event_id)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "SSE resume failed: {}", response.text().await.unwrap());
        Self::from_response(response).await
    }
}

impl WsClient {
    /// Connects with the token and `lastEventId` in the query.
    pub async fn resume(app: &TestApp, token: &str, last_event_id: &str) -> Self {
        let url = app.ws_url(&format!("?access_token={token}&lastEventId={last_event_id}"));
        let (socket, _) = tokio_tungstenite::connect_async(url).await.expect("WebSocket connects");
        Self::after_hello(socket).await
    }
}

/// Returns the position of the user room (`u:N`) in an event id.
pub fn user_seq(id: &str) -> i64 {
    let body = id.split('~').next().unwrap();
    body.split('.').find_map(|part| part.strip_prefix("u:")).expect("id has a user position").parse().unwrap()
}

/// Reads one counter or gauge from `/metrics`; labels are part of `name`.
pub async fn metric(app: &TestApp, name: &str) -> f64 {
    let text = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("metric {name} missing:\n{text}"))
        .parse()
        .unwrap()
}

/// Polls `check` every 50 ms until it returns true, failing after [`WAIT`].
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Opens a TCP connection whose receive buffer is small, so a client that stops reading
/// stalls the server after a few kilobytes instead of after the kernel's megabytes.
pub async fn small_window_stream(app: &TestApp) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4 * 1024).unwrap();
    socket.connect(app.addr).await.unwrap()
}

impl WsClient {
    /// Connects over a small-window TCP stream; see [`small_window_stream`].
    pub async fn connect_small_window(app: &TestApp, token: &str) -> Self {
        let stream = small_window_stream(app).await;
        let url = app.ws_url(&format!("?access_token={token}"));
        let (socket, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)).await.unwrap();
        Self::after_hello(socket).await
    }
}

/// The real binary, started as a separate process on an ephemeral port. It is killed by
/// PID when dropped.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    /// Every stderr line so far arrives here.
    pub logs: std::sync::mpsc::Receiver<String>,
}

impl ServerProcess {
    /// Starts `nexus-notify` with the test secret, logging at `info`, in `dir`.
    pub fn start(dir: &std::path::Path, extra: &[&str]) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_nexus-notify"))
            .current_dir(dir)
            .env_clear()
            .env("NOTIFY_JWT_SECRET", SECRET)
            .env("RUST_LOG", "info")
            .args(["--bind", "127.0.0.1:0"])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("binary starts");
        let stderr = child.stderr.take().unwrap();
        let (lines_tx, logs) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        let addr = loop {
            let line = logs.recv_timeout(WAIT).expect("the server logs its address");
            if let Some(at) = line.find("address=") {
                break line[at + "address=".len()..].split_whitespace().next().unwrap().parse().unwrap();
            }
        };
        ServerProcess { child, addr, logs }
    }

    /// Returns a client view of this process, for the helpers that take a [`TestApp`].
    pub fn app(&self) -> TestApp {
        TestApp::remote(self.addr)
    }

    /// Returns the resident set size in KiB, from `/proc`.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS in /proc status");
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Sends SIGTERM by PID through `kill`.
    pub fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits up to `limit` for the process to exit and returns its status.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "process still running after {limit:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Collects the log lines printed so far.
    pub fn drain_logs(&self) -> String {
        let mut text = String::new();
        while let Ok(line) = self.logs.recv_timeout(Duration::from_millis(300)) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens an SSE stream over a small-window connection that sends its request and never reads
/// a byte, and waits until the server counts it. It is the only SSE connection of the test.
pub async fn open_stalled_sse(app: &TestApp, token: &str) -> TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stalled = small_window_stream(app).await;
    let request = format!("GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n");
    stalled.write_all(request.as_bytes()).await.unwrap();
    wait_until("the stalled stream to open", || async {
        metric(app, "notify_connections{transport=\"sse\"}").await == 1.0
    })
    .await;
    stalled
}
