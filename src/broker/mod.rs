//! Fan-out between the nodes of a cluster, behind one trait.
//!
//! A broker carries committed events to every node whose hub has subscribers for their room.
//! Only the in-process broker exists so far, for a single node.

mod memory;

pub use memory::MemoryBroker;

use std::sync::Arc;

use async_trait::async_trait;

use crate::events::Event;

/// Failures of the broker connection.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Delivers committed events, in order, to the local subscribers of their rooms on
    /// every node. An event published here is never delivered twice to one connection,
    /// because connections drop positions they already have.
    async fn publish(&self, events: &[Arc<Event>]) -> Result<(), BrokerError>;

    /// Checks that the broker is reachable, for `/readyz`.
    async fn ready(&self) -> Result<(), BrokerError>;
}
