//! The one configuration struct, read from flags and `NOTIFY_*` environment variables.

use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

use clap::Args;

/// Server settings. Every flag also reads the environment variable named beside it.
#[derive(Args, Clone)]
pub struct Config {
    /// Address and port to listen on.
    #[arg(long, env = "NOTIFY_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,

    /// Store location: `sqlite://path` (created when missing) or `postgres://…`, which
    /// several nodes share. `DATABASE_URL` is read as a fallback. Default:
    /// `sqlite://data/nexus-notify.db`.
    #[arg(long, env = "NOTIFY_DATABASE_URL")]
    pub database_url: Option<String>,

    /// Broker for fan-out and presence between nodes: `redis://host:port` (or `rediss://`).
    /// Unset means in-process fan-out for a single node.
    #[arg(long, env = "NOTIFY_BROKER_URL")]
    pub broker_url: Option<String>,

    /// Prefix of every Redis key and channel, so several deployments can share one Redis.
    #[arg(long, env = "NOTIFY_REDIS_PREFIX", default_value = "notify")]
    pub redis_prefix: String,

    /// How long a node's presence outlives its last heartbeat in Redis: a node that dies
    /// without saying goodbye leaves presence within this time plus one heartbeat of another
    /// node (a third of it).
    #[arg(long, env = "NOTIFY_NODE_TTL", default_value = "15s", value_parser = parse_duration)]
    pub node_ttl: Duration,

    /// HS256 signing secret, at least 32 bytes. `JWT_SECRET` is read as a fallback. Without it
    /// and without a public key file, the server makes an ephemeral secret and only listens on
    /// loopback.
    #[arg(long, env = "NOTIFY_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// PEM public key file for RS256 or ES256 tokens, used instead of the HS256 secret.
    #[arg(long, env = "NOTIFY_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// Required `iss` claim, when set.
    #[arg(long, env = "NOTIFY_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim, when set.
    #[arg(long, env = "NOTIFY_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Clock leeway applied to both `exp` and `nbf`, e.g. `30s`.
    #[arg(long, env = "NOTIFY_JWT_LEEWAY", default_value = "30s", value_parser = parse_duration)]
    pub jwt_leeway: Duration,

    /// Comma-separated browser origins allowed by CORS and for WebSocket upgrades, with
    /// credentials. `CORS_ORIGIN` is read as a fallback. A `*` is rejected because
    /// credentials are allowed. Default: http://localhost:3000,http://localhost:5173.
    #[arg(long, env = "NOTIFY_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// Comma-separated `role` claim values allowed to publish.
    #[arg(long, env = "NOTIFY_PUBLISHER_ROLES", value_delimiter = ',', default_value = "service,admin")]
    pub publisher_roles: Vec<String>,

    /// Interval between SSE heartbeat comments and WebSocket pings.
    #[arg(long, env = "NOTIFY_HEARTBEAT_INTERVAL", default_value = "15s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,

    /// Maximum time a peer may stay silent (no pong, no frame) or leave sent data unacknowledged
    /// before its connection is dropped. Checked at each heartbeat, so a dead peer goes
    /// within this time plus one heartbeat interval.
    #[arg(long, env = "NOTIFY_PEER_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub peer_timeout: Duration,

    /// Time a WebSocket client has to send `authenticate` when it connected without a token.
    #[arg(long, env = "NOTIFY_AUTH_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub auth_timeout: Duration,

    /// Maximum wait, on shutdown, for connections and requests to finish before the store
    /// closes anyway.
    #[arg(long, env = "NOTIFY_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Events one connection may fall behind before it is closed and must resume.
    #[arg(long, env = "NOTIFY_CONNECTION_QUEUE", default_value_t = 256)]
    pub connection_queue: usize,

    /// Events kept per room for resume; older ones are pruned.
    #[arg(long, env = "NOTIFY_RETENTION_COUNT", default_value_t = 1000)]
    pub retention_count: u32,

    /// Age after which events are pruned, e.g. `7d`.
    #[arg(long, env = "NOTIFY_RETENTION_AGE", default_value = "7d", value_parser = parse_duration)]
    pub retention_age: Duration,

    /// Interval between runs of the background pruner.
    #[arg(long, env = "NOTIFY_PRUNE_INTERVAL", default_value = "1m", value_parser = parse_duration)]
    pub prune_interval: Duration,

    /// Maximum open streaming connections per user on this node; more are rejected with 429.
    #[arg(long, env = "NOTIFY_MAX_CONNECTIONS_PER_USER", default_value_t = 100)]
    pub max_connections_per_user: usize,

    /// Maximum REST request body, in bytes.
    #[arg(long, env = "NOTIFY_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,

    /// Maximum WebSocket message from a client, in bytes.
    #[arg(long, env = "NOTIFY_MAX_WS_MESSAGE_BYTES", default_value_t = 16 * 1024)]
    pub max_ws_message_bytes: usize,

    /// Maximum rooms one connection may join, besides its user and tenant rooms.
    #[arg(long, env = "NOTIFY_MAX_ROOMS_PER_CONNECTION", default_value_t = 32)]
    pub max_rooms_per_connection: usize,

    /// Send `user:online` and `user:offline` to the tenant when a user's first connection opens
    /// and the last one closes.
    #[arg(long, env = "NOTIFY_PRESENCE_EVENTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub presence_events: bool,

    /// Log as JSON lines instead of text.
    #[arg(long, env = "NOTIFY_LOG_JSON", default_value_t = false, action = clap::ArgAction::Set)]
    pub log_json: bool,
}

/// The SQLite file used when no database URL is configured.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/nexus-notify.db";
/// Origins allowed when none are configured: the usual React and Vite dev servers.
pub const DEFAULT_CORS_ORIGINS: [&str; 2] = ["http://localhost:3000", "http://localhost:5173"];
/// Shortest HS256 secret accepted, in bytes (RFC 7518 section 3.2 requires the hash size).
pub const MIN_SECRET_BYTES: usize = 32;

impl Config {
    /// Fills unset values from the fallback variables that the NestJS module used, then
    /// checks every value. Errors name the setting at fault.
    pub fn resolve(mut self) -> Result<Self, String> {
        // An empty variable, as env-file templates often leave, means unset.
        for value in [
            &mut self.database_url,
            &mut self.broker_url,
            &mut self.jwt_secret,
            &mut self.jwt_issuer,
            &mut self.jwt_audience,
        ] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                *value = None;
            }
        }
        if self.jwt_public_key_file.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            self.jwt_public_key_file = None;
        }
        if self.database_url.is_none() {
            self.database_url = std::env::var("DATABASE_URL").ok().filter(|v| !v.is_empty());
        }
        if self.jwt_secret.is_none() {
            self.jwt_secret = std::env::var("JWT_SECRET").ok().filter(|v| !v.is_empty());
        }
        if self.cors_origins.is_empty() {
            if let Ok(list) = std::env::var("CORS_ORIGIN") {
                self.cors_origins = split_list(&list);
            }
        }
        if self.cors_origins.is_empty() {
            self.cors_origins = DEFAULT_CORS_ORIGINS.map(String::from).to_vec();
        }
        self.cors_origins = self.cors_origins.iter().flat_map(|o| split_list(o)).collect();
        self.publisher_roles = self.publisher_roles.iter().flat_map(|r| split_list(r)).collect();
        self.validate()?;
        Ok(self)
    }

    fn validate(&self) -> Result<(), String> {
        if let Some(secret) = &self.jwt_secret {
            if secret.len() < MIN_SECRET_BYTES {
                return Err(format!(
                    "NOTIFY_JWT_SECRET is too short: {} bytes, expected at least {MIN_SECRET_BYTES}",
                    secret.len()
                ));
            }
        }
        for origin in &self.cors_origins {
            if origin == "*" {
                return Err(
                    "NOTIFY_CORS_ORIGINS must list exact origins: `*` cannot be combined with credentials"
                        .into(),
                );
            }
            if !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return Err(format!(
                    "NOTIFY_CORS_ORIGINS entry `{origin}` is invalid: expected scheme://host[:port]"
                ));
            }
        }
        if self.publisher_roles.is_empty() {
            return Err("NOTIFY_PUBLISHER_ROLES must name at least one role".into());
        }
        if self.heartbeat_interval < Duration::from_secs(1) {
            return Err("NOTIFY_HEARTBEAT_INTERVAL must be at least 1s".into());
        }
        if self.peer_timeout < self.heartbeat_interval {
            return Err("NOTIFY_PEER_TIMEOUT must be at least NOTIFY_HEARTBEAT_INTERVAL".into());
        }
        if self.retention_count == 0 {
            return Err("NOTIFY_RETENTION_COUNT must be at least 1".into());
        }
        if self.max_connections_per_user == 0 {
            return Err("NOTIFY_MAX_CONNECTIONS_PER_USER must be at least 1".into());
        }
        if self.connection_queue == 0 {
            return Err("NOTIFY_CONNECTION_QUEUE must be at least 1".into());
        }
        if self.max_body_bytes < 1024 {
            return Err("NOTIFY_MAX_BODY_BYTES must be at least 1024".into());
        }
        if self.max_ws_message_bytes < 256 {
            return Err("NOTIFY_MAX_WS_MESSAGE_BYTES must be at least 256".into());
        }
        if let Some(url) = &self.broker_url {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                // NOTE: only Redis is supported (NATS is not); rejecting other URLs beats
                // running as unconnected nodes.
                return Err(format!(
                    "NOTIFY_BROKER_URL `{}` is not supported: use redis://host:port, or leave it unset",
                    redact_url(url)
                ));
            }
        }
        if self.node_ttl < Duration::from_secs(1) {
            return Err("NOTIFY_NODE_TTL must be at least 1s".into());
        }
        if self.redis_prefix.is_empty() || self.redis_prefix.chars().any(|c| c.is_control() || c == ' ') {
            return Err("NOTIFY_REDIS_PREFIX must be a non-empty word without spaces".into());
        }
        Ok(())
    }

    /// Returns the database URL in effect.
    pub fn database_url(&self) -> &str {
        self.database_url.as_deref().unwrap_or(DEFAULT_DATABASE_URL)
    }

    /// Returns true when tokens are checked with a configured key rather than an ephemeral one.
    pub fn has_signing_key(&self) -> bool {
        self.jwt_secret.is_some() || self.jwt_public_key_file.is_some()
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("bind", &self.bind)
            .field("database_url", &self.database_url.as_deref().map(redact_url))
            .field("broker_url", &self.broker_url.as_deref().map(redact_url))
            .field("redis_prefix", &self.redis_prefix)
            .field("node_ttl", &self.node_ttl)
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| "<redacted>"))
            .field("jwt_public_key_file", &self.jwt_public_key_file)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .field("jwt_leeway", &self.jwt_leeway)
            .field("cors_origins", &self.cors_origins)
            .field("publisher_roles", &self.publisher_roles)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("peer_timeout", &self.peer_timeout)
            .field("auth_timeout", &self.auth_timeout)
            .field("retention_count", &self.retention_count)
            .field("retention_age", &self.retention_age)
            .field("prune_interval", &self.prune_interval)
            .field("max_connections_per_user", &self.max_connections_per_user)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("connection_queue", &self.connection_queue)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_ws_message_bytes", &self.max_ws_message_bytes)
            .field("max_rooms_per_connection", &self.max_rooms_per_connection)
            .field("presence_events", &self.presence_events)
            .finish()
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("invalid duration `{text}`: {e}"))
}

fn split_list(text: &str) -> Vec<String> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

/// Hides the password part of a `scheme://user:password@host` URL.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => {
                    format!("{}{}:<redacted>{}", &url[..scheme_end + 3], &userinfo[..colon], &url[at..])
                }
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
