//! The real binary: demo output, the `token` command, start-up checks and log hygiene.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::json;

use crate::support::*;

const BINARY: &str = env!("CARGO_BIN_EXE_nexus-notify");

/// A server process this test started; it is killed by PID when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn command(dir: &std::path::Path) -> Command {
    let mut command = Command::new(BINARY);
    command.current_dir(dir).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    command
}

/// Reads stdout lines until `prefix` appears, and returns the rest of that line.
fn wait_for_line(lines: &mut impl Iterator<Item = std::io::Result<String>>, prefix: &str) -> String {
    for line in lines {
        let line = line.expect("stdout readable");
        if let Some(rest) = line.trim_start().strip_prefix(prefix) {
            return rest.to_string();
        }
    }
    panic!("the server never printed a line starting with `{prefix}`");
}

#[tokio::test]
async fn demo_prints_working_commands() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = command(dir.path())
        .args(["--bind", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _process = Process(child);
    let mut lines = BufReader::new(stdout).lines();
    let user = wait_for_line(&mut lines, "USER_TOKEN=");
    let publisher = wait_for_line(&mut lines, "PUBLISHER_TOKEN=");
    let listen = wait_for_line(&mut lines, "curl -N ");
    let create = wait_for_line(&mut lines, "curl -X POST ");

    let url = listen.trim_matches('"');
    assert!(url.contains(&user));
    let http = reqwest::Client::new();
    let stream = http.get(url).send().await.unwrap();
    let mut sse = SseClient::from_response(stream).await;
    assert_eq!(sse.hello.data["userId"], "demo-user");

    // Run the printed create command through a shell, exactly as a reader would paste it.
    if which_curl() {
        // NOTE: this runs only the create command; the listen command is run by reqwest above,
        // because curl -N never ends by itself.
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("curl -sS -X POST {create} > /dev/null"))
            .status()
            .unwrap();
        assert!(status.success(), "printed curl command failed");
    } else {
        println!("skipped: install curl to run the printed command itself; posting with reqwest instead");
        let base = url.split("/v1/").next().unwrap();
        let body = json!({ "userId": "demo-user", "title": "Hello", "message": "m", "type": "info" });
        let response = http
            .post(format!("{base}/v1/notifications"))
            .bearer_auth(&publisher)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    let event = sse.next_named("notification:new").await;
    assert_eq!(event.data["notification"]["title"], "Hello");
    assert!(dir.path().join("data").is_dir(), "the SQLite file goes under ./data");
}

fn which_curl() -> bool {
    Command::new("curl").arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success())
}

#[test]
fn refuses_public_bind_without_key() {
    let dir = tempfile::tempdir().unwrap();
    let output = command(dir.path()).args(["--bind", "0.0.0.0:0"]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("NOTIFY_JWT_SECRET"), "error names the setting: {stderr}");
}

#[test]
fn rejects_invalid_settings_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for (args, setting) in [
        (vec!["--jwt-secret", "short"], "NOTIFY_JWT_SECRET"),
        (vec!["--cors-origins", "*"], "NOTIFY_CORS_ORIGINS"),
        (vec!["--database-url", "mysql://x"], "NOTIFY_DATABASE_URL"),
    ] {
        let output = command(dir.path()).args(&args).args(["--bind", "127.0.0.1:0"]).output().unwrap();
        assert!(!output.status.success(), "{args:?} must fail");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(setting), "{args:?}: error names {setting}: {stderr}");
    }
}

#[tokio::test]
async fn token_command_mints_accepted_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let output = command(dir.path())
        .env("NOTIFY_JWT_SECRET", SECRET)
        .args(["token", "--sub", "carol", "--role", "service", "--tenant", "acme", "--ttl", "10m"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let token = String::from_utf8(output.stdout).unwrap().trim().to_string();

    let app = spawn_app().await;
    let response =
        app.create(&token, json!({ "userId": "dave", "title": "t", "message": "m", "type": "x" })).await;
    assert_eq!(response.status(), 201, "minted publisher token is accepted");

    let without_secret = command(dir.path()).args(["token", "--sub", "x"]).output().unwrap();
    assert!(!without_secret.status.success());
    for bad in [vec!["--sub", ""], vec!["--sub", "x", "--rooms", ""], vec!["--sub", "x", "--ttl", "0s"]] {
        let output =
            command(dir.path()).env("NOTIFY_JWT_SECRET", SECRET).arg("token").args(&bad).output().unwrap();
        assert!(!output.status.success(), "token {bad:?} must fail");
    }
}

#[tokio::test]
async fn query_tokens_never_reach_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = command(dir.path())
        .env("NOTIFY_JWT_SECRET", SECRET)
        .env("RUST_LOG", "trace")
        .args(["--bind", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let process = Process(child);
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let address = loop {
        let line = lines_rx.recv_timeout(WAIT).expect("server logs its address");
        if let Some(at) = line.find("address=") {
            break line[at + "address=".len()..]
                .split_whitespace()
                .next()
                .unwrap()
                .trim_matches('"')
                .to_string();
        }
    };
    let address = strip_ansi(&address);

    let token = user_token("alice");
    let bad_token = format!("{token}tampered");
    let http = reqwest::Client::new();
    let stream = http.get(format!("http://{address}/v1/events?access_token={token}")).send().await.unwrap();
    let sse = SseClient::from_response(stream).await;
    let rejected =
        http.get(format!("http://{address}/v1/events?access_token={bad_token}")).send().await.unwrap();
    assert_eq!(rejected.status(), 401);
    let (ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{address}/v1/ws?access_token={token}")).await.unwrap();
    drop(ws);
    drop(sse);
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(process);

    let mut captured = String::new();
    while let Ok(line) = lines_rx.recv_timeout(Duration::from_millis(500)) {
        captured.push_str(&line);
        captured.push('\n');
    }
    assert!(captured.contains("/v1/events"), "trace logs saw the requests:\n{captured}");
    let signature = token.rsplit('.').next().unwrap();
    assert!(!captured.contains(signature), "a token reached the logs:\n{captured}");
    assert!(!captured.contains("access_token="), "a query string reached the logs:\n{captured}");
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
