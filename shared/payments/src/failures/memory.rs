//! An in-memory failure store for unit tests of the functions above it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::record::{
    FailureRecord, FailureState, FailureStore, FailureStoreError, Recorded, Redrive, payment_partition,
};
use lambda_idempotency::{IdempotencyKey, Scope};

/// Records in a map; clones share it.
#[derive(Debug, Clone, Default)]
pub struct InMemoryFailureStore {
    records: Arc<Mutex<BTreeMap<(String, String), FailureRecord>>>,
}

impl InMemoryFailureStore {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<(String, String), FailureRecord>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl FailureStore for InMemoryFailureStore {
    async fn record(&self, record: &FailureRecord) -> Result<Recorded, FailureStoreError> {
        let key = (record.partition.clone(), record.message_id.clone());
        let mut records = self.lock();
        if records.contains_key(&key) {
            return Ok(Recorded::AlreadyRecorded);
        }
        records.insert(key, record.clone());
        Ok(Recorded::New)
    }

    async fn for_payment(&self, scope: &Scope, key: &IdempotencyKey) -> Result<Vec<FailureRecord>, FailureStoreError> {
        let partition = payment_partition(scope, key);
        Ok(self.lock().values().filter(|r| r.partition == partition).cloned().collect())
    }

    async fn get(&self, partition: &str, message_id: &str) -> Result<Option<FailureRecord>, FailureStoreError> {
        Ok(self.lock().get(&(partition.to_owned(), message_id.to_owned())).cloned())
    }

    async fn list(&self, open_only: bool) -> Result<Vec<FailureRecord>, FailureStoreError> {
        Ok(self.lock().values().filter(|r| !open_only || r.state == FailureState::Open).cloned().collect())
    }

    async fn note_redrive(
        &self,
        partition: &str,
        message_id: &str,
        redrive: &Redrive,
    ) -> Result<bool, FailureStoreError> {
        let mut records = self.lock();
        match records.get_mut(&(partition.to_owned(), message_id.to_owned())) {
            Some(record) if record.state == FailureState::Open => {
                record.redriven = Some(redrive.clone());
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn close(
        &self,
        partition: &str,
        message_id: &str,
        note: &str,
        now_ms: i64,
    ) -> Result<bool, FailureStoreError> {
        let mut records = self.lock();
        match records.get_mut(&(partition.to_owned(), message_id.to_owned())) {
            Some(record) if record.state == FailureState::Open => {
                record.state = FailureState::Closed { at_ms: now_ms, note: note.to_owned() };
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}
