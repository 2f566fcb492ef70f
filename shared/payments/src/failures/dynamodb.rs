//! The DynamoDB adapter of the failure store: partition key `pk` (the payment), sort key `sk`
//! (the message id); writes conditional on the record not existing yet.

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};

use super::record::{
    FailureKind, FailureRecord, FailureState, FailureStore, FailureStoreError, Recorded, Redrive, payment_partition,
};
use lambda_idempotency::{IdempotencyKey, Scope};
use lambda_support::aws::dynamodb::refused;
use lambda_support::aws::dynamodb::{Item, n, s};
use lambda_support::aws::errors::sort_error;

/// Failure records in one DynamoDB table.
#[derive(Debug, Clone)]
pub struct DynamoDbFailureStore {
    client: Client,
    table: String,
}

impl DynamoDbFailureStore {
    /// A store over `table`.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self { client, table: table.into() }
    }
}

fn error<E>(err: &SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>) -> FailureStoreError
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    sort_error(err, FailureStoreError::Transient, FailureStoreError::Permanent)
}

fn to_item(record: &FailureRecord) -> Item {
    let mut item = Item::new();
    item.insert("pk".into(), s(&record.partition));
    item.insert("sk".into(), s(&record.message_id));
    if let Some(scope) = &record.scope {
        item.insert("scope".into(), s(scope.as_str()));
    }
    if let Some(key) = &record.idempotency_key {
        item.insert("idempotency_key".into(), s(key.as_str()));
    }
    item.insert("body".into(), s(&record.body));
    if let Some(message) = &record.accepted_message {
        item.insert("accepted_message".into(), s(message));
    }
    item.insert("receive_count".into(), n(i64::from(record.receive_count)));
    if let Some(at) = record.first_attempt_at_ms {
        item.insert("first_attempt_at".into(), n(at));
    }
    if let Some(at) = record.last_attempt_at_ms {
        item.insert("last_attempt_at".into(), n(at));
    }
    if let Some(error) = &record.last_error {
        item.insert("last_error".into(), s(error));
    }
    item.insert("failure_class".into(), s(&record.failure_class));
    item.insert("source_queue".into(), s(&record.source_queue));
    item.insert("recorded_at".into(), n(record.recorded_at_ms));
    item.insert("kind".into(), s(record.kind.as_str()));
    match &record.state {
        FailureState::Open => {
            item.insert("state".into(), s("OPEN"));
        }
        FailureState::Closed { at_ms, note } => {
            item.insert("state".into(), s("CLOSED"));
            item.insert("closed_at".into(), n(*at_ms));
            item.insert("close_note".into(), s(note));
        }
    }
    if let Some(redrive) = &record.redriven {
        item.insert("redriven_at".into(), n(redrive.at_ms));
        item.insert("redriven_as".into(), s(&redrive.message_id));
    }
    item
}

fn from_item(item: &Item) -> Result<FailureRecord, FailureStoreError> {
    let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
    let number = |name: &str| item.get(name).and_then(|v| v.as_n().ok()).and_then(|v| v.parse::<i64>().ok());
    let partition = text("pk").unwrap_or_default();
    let message_id = text("sk").unwrap_or_default();
    let malformed = |reason: &str| FailureStoreError::Malformed {
        partition: partition.clone(),
        message_id: message_id.clone(),
        reason: reason.to_owned(),
    };
    let kind = text("kind").and_then(|k| FailureKind::parse(&k)).ok_or_else(|| malformed("unknown kind"))?;
    let state = match text("state").as_deref() {
        Some("OPEN") => FailureState::Open,
        Some("CLOSED") => FailureState::Closed {
            at_ms: number("closed_at").ok_or_else(|| malformed("closed without closed_at"))?,
            note: text("close_note").unwrap_or_default(),
        },
        _ => return Err(malformed("unknown state")),
    };
    Ok(FailureRecord {
        scope: text("scope").and_then(|v| Scope::new(&v).ok()),
        idempotency_key: text("idempotency_key").and_then(|v| IdempotencyKey::new(&v).ok()),
        body: text("body").ok_or_else(|| malformed("no body"))?,
        accepted_message: text("accepted_message"),
        receive_count: number("receive_count").and_then(|v| u32::try_from(v).ok()).unwrap_or(0),
        first_attempt_at_ms: number("first_attempt_at"),
        last_attempt_at_ms: number("last_attempt_at"),
        last_error: text("last_error"),
        failure_class: text("failure_class").unwrap_or_default(),
        source_queue: text("source_queue").unwrap_or_default(),
        recorded_at_ms: number("recorded_at").ok_or_else(|| malformed("no recorded_at"))?,
        kind,
        state,
        redriven: number("redriven_at")
            .map(|at_ms| Redrive { at_ms, message_id: text("redriven_as").unwrap_or_default() }),
        partition,
        message_id,
    })
}

/// The attribute naming the write that stored a record: a write whose answer was lost, retried
/// by the SDK, finds its own record and says so (`New`), where another writer's is a duplicate.
const WRITE_ID: &str = "write_id";

/// Whether the refused item shows `value` at `attribute`: what this write (or the transition
/// it asked for) left there.
fn shows(refused: Option<&Item>, attribute: &str, value: &str) -> bool {
    refused.and_then(|item| item.get(attribute)).and_then(|v| v.as_s().ok()).is_some_and(|v| v == value)
}

impl DynamoDbFailureStore {
    /// Whether `record`'s item is the one write `write_id` stored. A query of its one key rather
    /// than a `GetItem`: the writers' roles grant `Query` on this table already, and nothing more
    /// is needed for this rare read (the end-to-end permission check found it).
    async fn holds_write(&self, record: &FailureRecord, write_id: &str) -> bool {
        let read = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND sk = :sk")
            .expression_attribute_values(":pk", s(&record.partition))
            .expression_attribute_values(":sk", s(&record.message_id))
            .consistent_read(true)
            .send()
            .await;
        read.is_ok_and(|out| shows(out.items().first(), WRITE_ID, write_id))
    }

    /// Applies `set` (with `values`) to the record if it is still open; whether it was applied,
    /// or found already applied by this very write (`ours`) when its answer was lost.
    async fn update_open<const N: usize>(
        &self,
        partition: &str,
        message_id: &str,
        set: &str,
        values: [(&str, AttributeValue); N],
        ours: impl Fn(Option<&Item>) -> bool,
    ) -> Result<bool, FailureStoreError> {
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(partition))
            .key("sk", s(message_id))
            .update_expression(set)
            .condition_expression("#state = :open")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":open", s("OPEN"))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        for (name, value) in values {
            update = update.expression_attribute_values(name, value);
        }
        match update.send().await {
            Ok(_) => Ok(true),
            Err(e) => match refused(&e) {
                Some(found) => Ok(ours(found)),
                None => Err(error(&e)),
            },
        }
    }
}

impl FailureStore for DynamoDbFailureStore {
    async fn record(&self, record: &FailureRecord) -> Result<Recorded, FailureStoreError> {
        let write_id = uuid::Uuid::new_v4().to_string();
        let mut item = to_item(record);
        item.insert(WRITE_ID.into(), s(&write_id));
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(Recorded::New),
            Err(e) => match refused(&e) {
                Some(found) if shows(found, WRITE_ID, &write_id) => Ok(Recorded::New),
                Some(_) => Ok(Recorded::AlreadyRecorded),
                // Every answer lost? One strongly consistent read says whether it landed.
                None if self.holds_write(record, &write_id).await => Ok(Recorded::New),
                None => Err(error(&e)),
            },
        }
    }

    async fn for_payment(&self, scope: &Scope, key: &IdempotencyKey) -> Result<Vec<FailureRecord>, FailureStoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(payment_partition(scope, key)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| error(&e))?;
        out.items().iter().map(from_item).collect()
    }

    async fn get(&self, partition: &str, message_id: &str) -> Result<Option<FailureRecord>, FailureStoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(partition))
            .key("sk", s(message_id))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| error(&e))?;
        out.item().map(from_item).transpose()
    }

    async fn list(&self, open_only: bool) -> Result<Vec<FailureRecord>, FailureStoreError> {
        let mut records = Vec::new();
        let mut start = None;
        loop {
            let mut scan = self.client.scan().table_name(&self.table).set_exclusive_start_key(start.take());
            if open_only {
                scan = scan
                    .filter_expression("#state = :open")
                    .expression_attribute_names("#state", "state")
                    .expression_attribute_values(":open", s("OPEN"));
            }
            let out = scan.send().await.map_err(|e| error(&e))?;
            for item in out.items() {
                records.push(from_item(item)?);
            }
            match out.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => break,
            }
        }
        records.sort_by_key(|r| r.recorded_at_ms);
        Ok(records)
    }

    async fn note_redrive(
        &self,
        partition: &str,
        message_id: &str,
        redrive: &Redrive,
    ) -> Result<bool, FailureStoreError> {
        let values = [(":at", n(redrive.at_ms)), (":as", s(&redrive.message_id))];
        // Refused: ours (an answer lost after it was written) if it names this redrive.
        let ours = |found: Option<&Item>| shows(found, "redriven_as", &redrive.message_id);
        self.update_open(partition, message_id, "SET redriven_at = :at, redriven_as = :as", values, ours).await
    }

    async fn close(
        &self,
        partition: &str,
        message_id: &str,
        note: &str,
        now_ms: i64,
    ) -> Result<bool, FailureStoreError> {
        let set = "SET #state = :closed, closed_at = :now, close_note = :note";
        let values = [(":closed", s("CLOSED")), (":now", n(now_ms)), (":note", s(note))];
        // Refused: ours (an answer lost after it was written) if it shows this note and time.
        let ours = |found: Option<&Item>| {
            shows(found, "close_note", note)
                && found.and_then(|i| i.get("closed_at")).and_then(|v| v.as_n().ok()) == Some(&now_ms.to_string())
        };
        self.update_open(partition, message_id, set, values, ours).await
    }
}
