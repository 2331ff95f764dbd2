//! nexus-notify: a real-time notification server.
//!
//! Publishers create notifications over REST; each is committed to the store, then pushed to
//! every open SSE and WebSocket connection of its user.
//!
//! Layout, with arrows pointing only downwards:
//! - [`api`]: REST handlers, docs and the router;
//! - [`transport`]: SSE and WebSocket framing and connection loops;
//! - [`service`]: operations shared by both (commit, then publish);
//! - [`hub`]: the channel registry, presence and the shared heartbeat;
//! - [`store`] and [`broker`]: storage and cross-node fan-out, each a trait with backends;
//! - [`auth`], [`events`], [`config`], [`validate`]: tokens, wire events, settings, checks.

pub mod api;
pub mod app;
pub mod auth;
pub mod broker;
pub mod config;
pub mod events;
pub mod hub;
pub mod metrics;
pub mod problem;
pub mod service;
pub mod store;
pub mod transport;
pub mod validate;

use std::{
    future::{Future, IntoFuture},
    sync::Arc,
};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use axum::serve::ListenerExt;

use crate::{
    app::{AppState, Parts},
    auth::Verifier,
    broker::RedisSettings,
    config::Config,
    hub::{Hub, Presence},
    store::{spawn_pruner, Retention},
};

/// A server ready to serve: its state is built and its store is open.
pub struct Server {
    state: AppState,
}

impl Server {
    /// Opens the store, builds the verifier and the hub. Errors name the setting at fault.
    pub async fn build(config: Config) -> Result<Self, String> {
        if !config.has_signing_key() && !config.bind.ip().is_loopback() {
            return Err(format!(
                "refusing to listen on {} with an ephemeral signing key: set NOTIFY_JWT_SECRET or \
                 NOTIFY_JWT_PUBLIC_KEY_FILE, or bind to 127.0.0.1",
                config.bind
            ));
        }
        let verifier = Verifier::from_config(&config)?;
        let store = store::open(config.database_url()).await?;
        let hub = Hub::new(config.connection_queue);
        let presence = Presence::new(Arc::clone(&hub), config.presence_events);
        let node_id = format!("{:08x}", rand::random::<u32>());
        let shutdown = CancellationToken::new();
        let settings = RedisSettings {
            prefix: config.redis_prefix.clone(),
            node: node_id.clone(),
            node_ttl: config.node_ttl,
            shutdown: shutdown.clone(),
        };
        let broker =
            broker::open(config.broker_url.as_deref(), settings, Arc::clone(&hub), Arc::clone(&presence))
                .await?;
        let state =
            AppState::new(Parts { config, verifier, store, broker, hub, presence, node_id, shutdown });
        Ok(Server { state })
    }

    /// Returns the shared state, for minting demo tokens before serving.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then drains: streams get a reconnect hint and end,
    /// in-flight requests finish, and the store closes. Waits at most the configured
    /// shutdown timeout for that.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let state = self.state;
        let drain = state.config.shutdown_timeout;
        let token = state.shutdown.clone();
        let router = api::router(state.clone());
        tracing::info!(address = %listener.local_addr()?, "listening");
        let retention = Retention {
            per_room: state.config.retention_count,
            max_age: state.config.retention_age,
            interval: state.config.prune_interval,
        };
        let pruner =
            spawn_pruner(Arc::clone(&state.store), retention, Arc::clone(&state.metrics), token.clone());
        let peer_timeout = state.config.peer_timeout;
        let listener = listener.tap_io(move |tcp| tune_socket(tcp, peer_timeout));

        let stop = token.clone();
        let server = axum::serve(listener, router.into_make_service()).with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down");
            stop.cancel();
        });
        let mut server = std::pin::pin!(server.into_future());
        tokio::select! {
            result = &mut server => result?,
            _ = async { token.cancelled().await; tokio::time::sleep(drain).await } => {
                tracing::warn!(seconds = drain.as_secs(), "drain deadline passed; closing open connections");
            }
        }
        token.cancel();
        let _ = pruner.await;
        state.broker.close().await;
        state.store.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Sets the options every accepted connection gets. `TCP_USER_TIMEOUT` makes the kernel drop
/// a peer that leaves sent data unacknowledged (or its receive window shut) for longer than
/// the peer timeout, which catches stalled readers the application cannot see while hyper
/// buffers their bytes. Keepalive probes find peers that vanished while idle.
fn tune_socket(tcp: &mut tokio::net::TcpStream, peer_timeout: std::time::Duration) {
    let _ = tcp.set_nodelay(true);
    let socket = socket2::SockRef::from(&*tcp);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(peer_timeout)
        .with_interval(peer_timeout / 3 + std::time::Duration::from_secs(1));
    let _ = socket.set_tcp_keepalive(&keepalive);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = socket.set_tcp_user_timeout(Some(peer_timeout));
}
