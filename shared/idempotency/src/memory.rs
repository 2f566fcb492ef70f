//! An in-memory store for fast unit tests of the code above the store. It applies the rules of
//! [`super::protocol`] directly, so it behaves like the DynamoDB adapter by construction. Never a
//! substitute for the LocalStack tests of that adapter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::key::{Operation, RecordKey};
use crate::protocol::{
    ClaimDecision, ClaimRequest, IdempotencyRecord, SettleRequest, claimed_record, decide_claim,
    may_reschedule_recovery, may_settle, settled_record,
};
use crate::store::{ClaimOutcome, IdempotencyStore, Lease, Settlement, StoreError, refused_outcome};

/// Records in a map behind a mutex; clones share the map.
#[derive(Debug, Clone, Default)]
pub struct InMemoryStore {
    records: Arc<Mutex<HashMap<String, IdempotencyRecord>>>,
}

impl InMemoryStore {
    /// An empty store; its clones share its records (several "instances" over one table).
    pub fn new() -> Self {
        Self::default()
    }

    /// Every record stored (tests assert on what was written).
    pub fn snapshot(&self) -> Vec<IdempotencyRecord> {
        self.lock().values().cloned().collect()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, HashMap<String, IdempotencyRecord>> {
        // A panic while holding the lock cannot leave a half-written record (every write is one
        // insert), so a poisoned lock is safe to keep using.
        self.records.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl IdempotencyStore for InMemoryStore {
    async fn claim(&self, request: &ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        let pk = request.key.partition_key();
        let mut records = self.lock();
        let stored = records.get(&pk);
        match decide_claim(stored, &request.payload_hash, request.now_ms) {
            ClaimDecision::Refuse(refusal) => refused_outcome(stored.expect("refusals need a record"), refusal),
            decision => {
                let record = claimed_record(stored, decision, request);
                let lease = Lease {
                    key: request.key.clone(),
                    owner: request.owner.clone(),
                    lease_until_ms: record.lease_until_ms,
                    attempt: record.attempts,
                    resumed: decision == ClaimDecision::TakeOver,
                };
                records.insert(pk, record);
                Ok(ClaimOutcome::Claimed(lease))
            }
        }
    }

    async fn settle(&self, request: &SettleRequest) -> Result<Settlement, StoreError> {
        let pk = request.key.partition_key();
        let mut records = self.lock();
        let stored = records.get(&pk);
        if !may_settle(stored, &request.owner) {
            return Ok(Settlement::NotOwner { current: stored.cloned().map(Box::new) });
        }
        let stored = stored.expect("may_settle needs a record");
        let next = settled_record(stored, &request.settle, request.now_ms, request.expires_at_s);
        records.insert(pk, next);
        Ok(Settlement::Recorded)
    }

    async fn get(&self, key: &RecordKey) -> Result<Option<IdempotencyRecord>, StoreError> {
        Ok(self.lock().get(&key.partition_key()).cloned())
    }

    async fn due_for_recovery(
        &self,
        operation: &Operation,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<RecordKey>, StoreError> {
        let prefix = format!("{}#", operation.as_str());
        let records = self.lock();
        let mut due: Vec<(i64, &String)> = records
            .iter()
            .filter(|(pk, _)| pk.starts_with(&prefix))
            .filter_map(|(pk, r)| r.recovery_due_ms.filter(|due| *due <= now_ms).map(|due| (due, pk)))
            .collect();
        due.sort();
        due.into_iter()
            .take(limit)
            .map(|(_, pk)| {
                RecordKey::from_partition_key(pk)
                    .map_err(|e| StoreError::Malformed { key: pk.clone(), reason: e.to_string() })
            })
            .collect()
    }

    async fn reschedule_recovery(
        &self,
        key: &RecordKey,
        seen_updated_at_ms: i64,
        due_ms: Option<i64>,
    ) -> Result<bool, StoreError> {
        let mut records = self.lock();
        let stored = records.get_mut(&key.partition_key());
        if !may_reschedule_recovery(stored.as_deref(), seen_updated_at_ms) {
            return Ok(false);
        }
        if let Some(record) = stored {
            record.recovery_due_ms = due_ms;
        }
        Ok(true)
    }
}
