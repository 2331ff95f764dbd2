//! The `nexus-notify` command: `serve` (the default), `token` and `openapi`.

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use nexus_notify::{auth, config::Config, Server};
use tracing_subscriber::EnvFilter;

/// Real-time notification server: REST in, SSE and WebSocket out.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: Config,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default when no command is given).
    Serve,
    /// Print a token signed with NOTIFY_JWT_SECRET.
    Token {
        /// The user id (`sub` claim).
        #[arg(long)]
        sub: String,
        /// The `role` claim; use a publisher role (e.g. `service`) for publishing tokens.
        #[arg(long)]
        role: Option<String>,
        /// The `tenant_id` claim.
        #[arg(long)]
        tenant: Option<String>,
        /// The `email` claim.
        #[arg(long)]
        email: Option<String>,
        /// Comma-separated rooms for the `rooms` claim.
        #[arg(long, value_delimiter = ',')]
        rooms: Vec<String>,
        /// Lifetime, e.g. `1h` or `7d`.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// Print the OpenAPI document.
    Openapi,
}

/// How long the demo tokens printed at start-up stay valid.
const DEMO_TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match cli.config.resolve() {
        Ok(config) => config,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Openapi => {
            print!("{}", nexus_notify::api::docs::openapi_json());
            Ok(())
        }
        Command::Token { sub, role, tenant, email, rooms, ttl } => {
            mint(&config, &sub, role.as_deref(), tenant.as_deref(), email.as_deref(), rooms, ttl)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn mint(
    config: &Config,
    sub: &str,
    role: Option<&str>,
    tenant: Option<&str>,
    email: Option<&str>,
    rooms: Vec<String>,
    ttl: Duration,
) -> Result<(), String> {
    if config.jwt_secret.is_none() {
        return Err("set NOTIFY_JWT_SECRET (or JWT_SECRET): a token signed with an ephemeral key is useless to any other process".into());
    }
    nexus_notify::validate::identifier(sub).map_err(|p| format!("--sub {p}"))?;
    for room in &rooms {
        nexus_notify::validate::identifier(room).map_err(|p| format!("--rooms: each room {p}"))?;
    }
    if ttl.is_zero() {
        return Err("--ttl must be longer than zero".into());
    }
    let verifier = auth::Verifier::from_config(config)?;
    let claims = auth::claims_for(sub, role, tenant, email, rooms, ttl);
    println!("{}", verifier.mint(&claims)?);
    Ok(())
}

async fn serve(config: Config) -> Result<(), String> {
    init_tracing(config.log_json);
    tracing::debug!(?config, "configuration");
    let ephemeral = !config.has_signing_key();
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|e| format!("cannot listen on {} (NOTIFY_BIND): {e}", config.bind))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let server = Server::build(config).await?;
    if ephemeral {
        print_demo(&server, address)?;
    }
    server.serve(listener, shutdown_signal()).await.map_err(|e| format!("server failed: {e}"))
}

fn init_tracing(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Prints ready-to-use tokens and commands for a first try. They only work while this
/// process runs, because the key that signs them is made at start-up.
fn print_demo(server: &Server, address: std::net::SocketAddr) -> Result<(), String> {
    let verifier = &server.state().verifier;
    let user = verifier.mint(&auth::claims_for(
        "demo-user",
        Some("user"),
        None,
        Some("demo@example.com"),
        vec!["demo-room".into()],
        DEMO_TOKEN_TTL,
    ))?;
    let publisher = verifier.mint(&auth::claims_for(
        "demo-backend",
        Some("service"),
        None,
        None,
        vec![],
        DEMO_TOKEN_TTL,
    ))?;
    let base = format!("http://{address}");
    println!(
        "\nNo NOTIFY_JWT_SECRET set: signing with an ephemeral key. These tokens work until this process stops.\n\n\
USER_TOKEN={user}\n\
PUBLISHER_TOKEN={publisher}\n\n\
1. Listen as demo-user (in one terminal):\n\n  \
curl -N \"{base}/v1/events?access_token={user}\"\n\n\
2. Create a notification for demo-user (in another terminal):\n\n  \
curl -X POST {base}/v1/notifications -H \"Authorization: Bearer {publisher}\" -H \"Content-Type: application/json\" \
-d '{{\"userId\":\"demo-user\",\"title\":\"Hello\",\"message\":\"Your first notification\",\"type\":\"info\"}}'\n\n\
API reference: {base}/docs\n"
    );
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
