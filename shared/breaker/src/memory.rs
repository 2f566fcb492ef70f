//! Breaker items in memory, for unit tests of the code above the store. The version check is the
//! same as the DynamoDB adapter's condition, so it behaves alike by construction.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::protocol::BreakerState;
use super::store::{BreakerStore, BreakerStoreError, Written};

/// Items in a map behind a mutex; clones share the map (several "instances" over one store).
#[derive(Debug, Clone, Default)]
pub struct InMemoryBreakerStore {
    items: Arc<Mutex<HashMap<String, BreakerState>>>,
}

impl BreakerStore for InMemoryBreakerStore {
    async fn read(&self, name: &str) -> Result<BreakerState, BreakerStoreError> {
        Ok(self.items.lock().unwrap_or_else(|p| p.into_inner()).get(name).cloned().unwrap_or_default())
    }

    async fn write(&self, name: &str, next: &BreakerState) -> Result<Written, BreakerStoreError> {
        let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        let current = items.get(name).cloned().unwrap_or_default();
        if current.version + 1 != next.version {
            return Ok(Written::Conflict(current));
        }
        items.insert(name.to_owned(), next.clone());
        Ok(Written::Stored)
    }
}
