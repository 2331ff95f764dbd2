//! The state every handler and connection shares. Nothing here is process-wide, so one test
//! process can run several servers.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use tokio_util::sync::CancellationToken;

use crate::{
    auth::Verifier,
    broker::Broker,
    config::Config,
    hub::{Heartbeat, Hub, Presence},
    metrics::Metrics,
    store::Store,
};

/// What the state is built from; see [`crate::Server::build`].
pub struct Parts {
    pub config: Config,
    pub verifier: Verifier,
    pub store: Arc<dyn Store>,
    pub broker: Arc<dyn Broker>,
    pub hub: Arc<Hub>,
    pub presence: Arc<Presence>,
    /// This process's random id, shared with the broker.
    pub node_id: String,
    pub shutdown: CancellationToken,
}

/// Shared server state; cloning copies a pointer.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub verifier: Verifier,
    pub store: Arc<dyn Store>,
    pub broker: Arc<dyn Broker>,
    pub hub: Arc<Hub>,
    pub presence: Arc<Presence>,
    pub heartbeat: Heartbeat,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the server starts shutting down; every stream watches it.
    pub shutdown: CancellationToken,
    /// Random per process, so connection ids stay unique across the nodes of a cluster.
    pub node_id: String,
    next_connection: AtomicU64,
}

impl AppState {
    pub fn new(parts: Parts) -> Self {
        let heartbeat = Heartbeat::start(parts.config.heartbeat_interval, parts.shutdown.clone());
        AppState(Arc::new(Inner {
            config: parts.config,
            verifier: parts.verifier,
            store: parts.store,
            broker: parts.broker,
            hub: parts.hub,
            presence: parts.presence,
            heartbeat,
            metrics: Arc::default(),
            shutdown: parts.shutdown,
            node_id: parts.node_id,
            next_connection: AtomicU64::new(1),
        }))
    }

    /// Returns a new connection id, e.g. `3fa2c01b-17`: this process's random id, then a
    /// counter.
    pub fn next_connection_id(&self) -> String {
        format!("{}-{}", self.node_id, self.0.next_connection.fetch_add(1, Ordering::Relaxed))
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}
