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

/// The components the state is built from; see [`crate::Server::build`].
pub struct Parts {
    pub config: Config,
    pub verifier: Verifier,
    pub store: Arc<dyn Store>,
    pub broker: Arc<dyn Broker>,
    pub hub: Arc<Hub>,
    pub presence: Arc<Presence>,
    /// This process's random id, shared with the broker, so connection ids stay unique
    /// across the nodes of a cluster.
    pub node_id: String,
    /// Cancelled when the server starts shutting down; every stream watches it.
    pub shutdown: CancellationToken,
}

/// Shared server state; cloning copies a pointer. Fields of [`Parts`] are reached through
/// `Deref`, as in `state.config`.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    parts: Parts,
    pub heartbeat: Heartbeat,
    pub metrics: Arc<Metrics>,
    next_connection: AtomicU64,
}

impl AppState {
    pub fn new(parts: Parts) -> Self {
        let heartbeat = Heartbeat::start(parts.config.heartbeat_interval, parts.shutdown.clone());
        AppState(Arc::new(Inner {
            parts,
            heartbeat,
            metrics: Arc::default(),
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

impl std::ops::Deref for Inner {
    type Target = Parts;

    fn deref(&self) -> &Parts {
        &self.parts
    }
}
