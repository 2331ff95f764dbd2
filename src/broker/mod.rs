//! Fan-out between the nodes of a cluster, behind one trait.
//!
//! A broker carries committed events to every node whose hub has subscribers for their room,
//! and keeps presence for the whole cluster. The in-process broker serves a single node;
//! the Redis broker joins several.

mod memory;
mod redis;

pub use memory::MemoryBroker;
pub use redis::{RedisBroker, RedisSettings};

use std::sync::Arc;

use async_trait::async_trait;

use crate::{
    events::Event,
    hub::{Counts, Hub, Presence},
};

/// Failures of the broker connection.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Delivers committed events, in order, to the local subscribers of their rooms on
    /// every node. Connections drop positions they already have, so an event that arrives
    /// twice is delivered once.
    async fn publish(&self, events: &[Arc<Event>]) -> Result<(), BrokerError>;

    /// Checks that the broker is reachable, for `/readyz`.
    async fn ready(&self) -> Result<(), BrokerError>;

    /// Returns cluster-wide counts for one tenant, or all tenants with `None`. `Ok(None)`
    /// means this broker keeps no cluster presence, so local counts are the whole truth.
    async fn presence_counts(&self, _tenant: Option<&str>) -> Result<Option<Counts>, BrokerError> {
        Ok(None)
    }

    /// Returns a user's cluster-wide connection count; `Ok(None)` as for
    /// [`Broker::presence_counts`].
    async fn presence_of(&self, _tenant: &str, _user: &str) -> Result<Option<usize>, BrokerError> {
        Ok(None)
    }

    /// Says goodbye on shutdown, so other nodes forget this node's connections at once.
    async fn close(&self) {}
}

/// Opens the broker that a URL names, or the in-process one without a URL. This is the one
/// place a broker is chosen.
pub async fn open(
    url: Option<&str>,
    settings: RedisSettings,
    hub: Arc<Hub>,
    presence: Arc<Presence>,
) -> Result<Arc<dyn Broker>, String> {
    match url {
        None => Ok(Arc::new(MemoryBroker::new(hub))),
        Some(url) if url.starts_with("redis://") || url.starts_with("rediss://") => {
            let broker = RedisBroker::connect(url, settings, hub, presence).await?;
            Ok(broker)
        }
        Some(_) => Err("NOTIFY_BROKER_URL: expected a redis:// or rediss:// URL".into()),
    }
}
