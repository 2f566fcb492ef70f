//! Counts the requests an AWS SDK client sends, by operation, and the items they write or read:
//! the evidence behind "a first-time claim + complete costs 2 DynamoDB requests and a duplicate
//! 1", and behind what batching changes (the requests) and does not (the items, which DynamoDB
//! bills as request units).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::operation::batch_execute_statement::BatchExecuteStatementInput;
use aws_sdk_dynamodb::operation::batch_get_item::BatchGetItemInput;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeSerializationInterceptorContextRef, BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};

/// An interceptor that counts every request put on the wire (retries included), by operation.
#[derive(Debug, Clone, Default)]
pub struct RequestCounter {
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
    items: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl RequestCounter {
    /// A counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests so far, by operation name (e.g. `UpdateItem`).
    pub fn by_operation(&self) -> BTreeMap<String, u64> {
        self.counts.lock().expect("counter lock").clone()
    }

    /// Items so far, by operation: one per single-item request, one per statement of a PartiQL
    /// batch and per key of a `BatchGetItem` (each operation counted once, not per retry).
    pub fn items_by_operation(&self) -> BTreeMap<String, u64> {
        self.items.lock().expect("counter lock").clone()
    }

    /// All requests so far.
    pub fn total(&self) -> u64 {
        self.by_operation().values().sum()
    }

    /// Back to zero.
    pub fn reset(&self) {
        self.counts.lock().expect("counter lock").clear();
        self.items.lock().expect("counter lock").clear();
    }
}

impl Intercept for RequestCounter {
    fn name(&self) -> &'static str {
        "RequestCounter"
    }

    fn read_before_execution(
        &self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let input = context.input();
        let items = if let Some(batch) = input.downcast_ref::<BatchExecuteStatementInput>() {
            batch.statements().len()
        } else if let Some(read) = input.downcast_ref::<BatchGetItemInput>() {
            read.request_items().map_or(0, |tables| tables.values().map(|t| t.keys().len()).sum())
        } else {
            1
        };
        // The operation's name is not in the bag yet: it is counted when the operation ends.
        cfg.interceptor_state().store_put(ItemCount(items as u64));
        Ok(())
    }

    fn read_after_execution(
        &self,
        _context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let items = cfg.load::<ItemCount>().map_or(0, |count| count.0);
        *self.items.lock().expect("counter lock").entry(operation_name(cfg)).or_default() += items;
        Ok(())
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        *self.counts.lock().expect("counter lock").entry(operation_name(cfg)).or_default() += 1;
        Ok(())
    }
}

/// The items one operation carries, from its input to the end of its execution.
#[derive(Debug, Clone, Copy)]
struct ItemCount(u64);

impl Storable for ItemCount {
    type Storer = StoreReplace<Self>;
}

fn operation_name(cfg: &ConfigBag) -> String {
    cfg.load::<aws_smithy_runtime_api::client::orchestrator::Metadata>()
        .map(|m| m.name().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}
