//! In-process fan-out for a single node: publishing is handing events to the local hub.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Broker, BrokerError};
use crate::{events::Event, hub::Hub};

pub struct MemoryBroker {
    hub: Arc<Hub>,
}

impl MemoryBroker {
    pub fn new(hub: Arc<Hub>) -> Self {
        MemoryBroker { hub }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, events: &[Arc<Event>]) -> Result<(), BrokerError> {
        for event in events {
            self.hub.dispatch(Arc::clone(event));
        }
        Ok(())
    }

    async fn ready(&self) -> Result<(), BrokerError> {
        Ok(())
    }
}
