//! Between each function and LocalStack: a listener of its own (the function's
//! `AWS_ENDPOINT_URL`) that relays every AWS call unchanged and records what it was — service,
//! operation, resource ARN and, for DynamoDB, the item's partition key — under the function's
//! name. LocalStack enforces no IAM; a run's record is what [`crate::iam`] checks against the role
//! the template gives each function.
//!
//! The event source mappings' stand-ins poll through the same listener as their function: on
//! AWS the mapping receives and deletes messages with the function's own role.
//!
//! The same listeners inject the run's AWS faults, when it asks for them ([`crate::aws_faults`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::aws_faults::{Fault, FaultPlan, Faults, error_answer};
use crate::front::{Dropped, relay, serve};

/// One AWS call, as an IAM policy judges it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AwsCall {
    /// The IAM action (`dynamodb:PutItem`; batch operations as the action IAM checks for them,
    /// `sqs:DeleteMessageBatch` as `sqs:DeleteMessage`).
    pub action: String,
    /// The resource's ARN (a table, an index, a queue, a secret).
    pub resource: String,
    /// For DynamoDB item operations and queries, the partition key as `dynamodb:LeadingKeys`
    /// sees it, with all but its first `#`-separated segment elided (`process#…`): the roles
    /// restrict writes by that prefix, and one entry per prefix keeps the record small.
    pub leading_key: Option<String>,
}

/// The calls of every function, counted.
#[derive(Debug, Clone, Default)]
pub struct CallLog {
    calls: Arc<Mutex<BTreeMap<(String, AwsCall), u64>>>,
}

impl CallLog {
    fn add(&self, function: &str, call: AwsCall) {
        let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        *calls.entry((function.to_owned(), call)).or_default() += 1;
    }

    /// Every distinct call by function, with how often it was made.
    pub fn snapshot(&self) -> BTreeMap<(String, AwsCall), u64> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// One line per distinct call: function, action, resource, key prefix, count (tab-separated).
    pub fn table(&self) -> String {
        let mut out = String::from("function\taction\tresource\tkey\tcalls\n");
        for ((function, call), n) in self.snapshot() {
            let key = call.leading_key.as_deref().unwrap_or("-");
            out.push_str(&format!("{function}\t{}\t{}\t{key}\t{n}\n", call.action, call.resource));
        }
        out
    }
}

/// The listeners; stop when dropped.
pub struct AwsGateway {
    endpoints: BTreeMap<String, SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
    log: CallLog,
    faults: Option<Arc<Faults>>,
}

impl AwsGateway {
    /// One listener per function in `functions`, relaying to `upstream` (LocalStack's endpoint,
    /// `http://127.0.0.1:4566`) in `region` and `account`, with `faults` injected when given.
    pub async fn start(
        upstream: &str,
        functions: &[&str],
        region: &str,
        account: &str,
        faults: Option<FaultPlan>,
    ) -> std::io::Result<Self> {
        let log = CallLog::default();
        let faults = faults.map(|plan| Arc::new(Faults::new(plan)));
        let (mut endpoints, mut tasks) = (BTreeMap::new(), Vec::new());
        for function in functions {
            let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
            endpoints.insert((*function).to_owned(), listener.local_addr()?);
            let relayed = Arc::new(Relayed {
                function: (*function).to_owned(),
                upstream: upstream.to_owned(),
                arns: Arns { region: region.to_owned(), account: account.to_owned() },
                log: log.clone(),
                http: reqwest::Client::new(),
                faults: faults.clone(),
            });
            tasks.push(serve(listener, move |request| relay_and_record(relayed.clone(), request)));
        }
        Ok(Self { endpoints, tasks, log, faults })
    }

    /// The faults injected so far, by (operation, kind); empty when the run injects none.
    pub fn faults(&self) -> BTreeMap<(String, Fault), u64> {
        self.faults.as_ref().map(|f| f.tally()).unwrap_or_default()
    }

    /// The endpoint a function's AWS clients use (`AWS_ENDPOINT_URL`).
    pub fn endpoint(&self, function: &str) -> String {
        format!("http://{}", self.endpoints[function])
    }

    /// What has been recorded so far.
    pub fn calls(&self) -> &CallLog {
        &self.log
    }
}

impl Drop for AwsGateway {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

struct Relayed {
    function: String,
    upstream: String,
    arns: Arns,
    log: CallLog,
    http: reqwest::Client,
    faults: Option<Arc<Faults>>,
}

async fn relay_and_record(
    relayed: Arc<Relayed>,
    request: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<http_body_util::Full<Bytes>>, Dropped> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map_err(|_| Dropped)?.to_bytes();
    let target = parts.headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let request = relayed.arns.describe(target, &body);
    let fault = match (&relayed.faults, &request) {
        (Some(faults), Some(request)) => faults.draw(&request.operation),
        _ => None,
    };
    for call in request.into_iter().flat_map(|r| r.calls) {
        relayed.log.add(&relayed.function, call);
    }
    let Some(fault) = fault else { return relay(&relayed.http, &relayed.upstream, &parts, body).await.ok_or(Dropped) };
    if let Some((status, body)) = error_answer(fault) {
        return Ok(hyper::Response::builder()
            .status(status)
            .header("content-type", "application/x-amz-json-1.0")
            .body(http_body_util::Full::new(Bytes::from_static(body.as_bytes())))
            .expect("a static answer"));
    }
    if fault == Fault::DroppedBefore {
        return Err(Dropped);
    }
    let answer = relay(&relayed.http, &relayed.upstream, &parts, body).await.ok_or(Dropped)?;
    match fault {
        Fault::Slow => {
            tokio::time::sleep(relayed.faults.as_ref().map(|f| f.slow()).unwrap_or_default()).await;
            Ok(answer)
        }
        _ => Err(Dropped),
    }
}

/// How ARNs are spelled where the calls go.
struct Arns {
    region: String,
    account: String,
}

impl Arns {
    /// What a JSON-protocol request (`X-Amz-Target: Service_Version.Operation`) asks; `None`
    /// for anything else.
    fn describe(&self, target: &str, body: &[u8]) -> Option<Request> {
        let (service, operation) = target.split_once('.')?;
        let input: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let text = |name: &str| input.get(name).and_then(Value::as_str);
        let (region, account) = (&self.region, &self.account);
        let table_arn = |table: &str| format!("arn:aws:dynamodb:{region}:{account}:table/{table}");
        let (prefix, calls) = if service.starts_with("DynamoDB") {
            let calls = match operation {
                "BatchExecuteStatement" => partiql_calls(&input, &table_arn),
                "BatchGetItem" => batch_read_calls(&input, &table_arn),
                _ => {
                    let table = text("TableName")?;
                    let index = text("IndexName").map(|index| format!("/index/{index}")).unwrap_or_default();
                    let action = format!("dynamodb:{operation}");
                    vec![AwsCall {
                        action,
                        resource: format!("{}{index}", table_arn(table)),
                        leading_key: leading_key(&input),
                    }]
                }
            };
            ("dynamodb", calls)
        } else if service == "AmazonSQS" {
            let name = text("QueueUrl").and_then(|url| url.rsplit('/').next()).or_else(|| text("QueueName"))?;
            let resource = format!("arn:aws:sqs:{region}:{account}:{name}");
            ("sqs", vec![AwsCall { action: format!("sqs:{}", iam_operation(operation)), resource, leading_key: None }])
        } else if service == "secretsmanager" {
            let id = text("SecretId")?;
            let resource = if id.starts_with("arn:") {
                id.to_owned()
            } else {
                format!("arn:aws:secretsmanager:{region}:{account}:secret:{id}")
            };
            let action = format!("secretsmanager:{operation}");
            ("secretsmanager", vec![AwsCall { action, resource, leading_key: None }])
        } else {
            return None;
        };
        // Faults are drawn by operation as IAM names it (a message batch as its single kind).
        Some(Request { operation: format!("{prefix}:{}", iam_operation(operation)), calls })
    }
}

/// One request as the relay sees it: its operation (what faults are drawn for), and the calls
/// IAM checks it as (one for most operations; one per statement or key for a batch).
struct Request {
    operation: String,
    calls: Vec<AwsCall>,
}

/// A PartiQL batch: one `dynamodb:PartiQL{Insert,Update,Delete,Select}` call per statement, on
/// the table it names, with the partition key bound to its `pk`.
fn partiql_calls(input: &Value, table_arn: &dyn Fn(&str) -> String) -> Vec<AwsCall> {
    let statements = input.get("Statements").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    statements
        .iter()
        .filter_map(|statement| {
            let text = statement.get("Statement")?.as_str()?;
            let verb = text.split_whitespace().next()?.to_ascii_lowercase();
            let action = format!("dynamodb:PartiQL{}{}", verb[..1].to_ascii_uppercase(), &verb[1..]);
            let table = text.split('"').nth(1)?;
            let parameters = statement.get("Parameters").and_then(Value::as_array);
            let key = partiql_key_index(text).and_then(|i| parameters?.get(i)?.get("S")?.as_str().map(key_prefix));
            Some(AwsCall { action, resource: table_arn(table), leading_key: key })
        })
        .collect()
}

/// Which `?` of a statement binds its partition key: `'pk': ?` in an INSERT's value,
/// `pk = ?` in a WHERE.
fn partiql_key_index(statement: &str) -> Option<usize> {
    let at = ["'pk': ?", "pk = ?"]
        .iter()
        .filter_map(|pattern| statement.find(pattern).map(|i| i + pattern.len() - 1))
        .min()?;
    Some(statement[..at].matches('?').count())
}

/// A batched read: one `dynamodb:BatchGetItem` call per key, on its table.
fn batch_read_calls(input: &Value, table_arn: &dyn Fn(&str) -> String) -> Vec<AwsCall> {
    let Some(tables) = input.get("RequestItems").and_then(Value::as_object) else { return Vec::new() };
    tables
        .iter()
        .flat_map(|(table, wanted)| {
            let keys = wanted.get("Keys").and_then(Value::as_array).cloned().unwrap_or_default();
            keys.into_iter().map(move |key| AwsCall {
                action: "dynamodb:BatchGetItem".into(),
                resource: table_arn(table),
                leading_key: key.get("pk").and_then(|pk| pk.get("S")).and_then(Value::as_str).map(key_prefix),
            })
        })
        .collect()
}

/// The operation's name as IAM checks it: a batch operation needs the single one's permission.
fn iam_operation(operation: &str) -> &str {
    match operation {
        "DeleteMessageBatch" => "DeleteMessage",
        "SendMessageBatch" => "SendMessage",
        "ChangeMessageVisibilityBatch" => "ChangeMessageVisibility",
        other => other,
    }
}

/// The partition key value an item operation or a query names: `Key`'s or `Item`'s first string
/// attribute (`pk` in this project's tables), or the value a key condition binds with `=`.
fn leading_key(input: &Value) -> Option<String> {
    let from_item = |name: &str| {
        let item = input.get(name)?.as_object()?;
        let pk = item.get("pk").or_else(|| item.values().next())?;
        pk.get("S").and_then(Value::as_str).map(str::to_owned)
    };
    let key = from_item("Key").or_else(|| from_item("Item")).or_else(|| {
        let condition = input.get("KeyConditionExpression")?.as_str()?;
        let first = condition.split(" AND ").next()?;
        let (_, placeholder) = first.split_once('=')?;
        let value = input.get("ExpressionAttributeValues")?.get(placeholder.trim())?;
        value.get("S").and_then(Value::as_str).map(str::to_owned)
    })?;
    Some(key_prefix(&key))
}

/// A partition key as the record keeps it: its first `#`-separated segment.
fn key_prefix(key: &str) -> String {
    match key.split_once('#') {
        Some((prefix, _)) => format!("{prefix}#…"),
        None => key.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn arns() -> Arns {
        Arns { region: "us-east-1".into(), account: "000000000000".into() }
    }

    #[test]
    fn dynamodb_calls_name_their_table_and_leading_key() {
        let put = json!({"TableName": "t", "Item": {"pk": {"S": "breaker#payment-provider"}, "v": {"N": "1"}}});
        let call = only_call(arns().describe("DynamoDB_20120810.PutItem", put.to_string().as_bytes()));
        assert_eq!(call.action, "dynamodb:PutItem");
        assert_eq!(call.resource, "arn:aws:dynamodb:us-east-1:000000000000:table/t");
        assert_eq!(call.leading_key.as_deref(), Some("breaker#…"));
        let query = json!({"TableName": "t", "IndexName": "recovery", "KeyConditionExpression": "#shard = :shard AND #due <= :now_ms",
                           "ExpressionAttributeValues": {":shard": {"S": "intake#03"}, ":now_ms": {"N": "5"}}});
        let call = only_call(arns().describe("DynamoDB_20120810.Query", query.to_string().as_bytes()));
        assert_eq!(call.resource, "arn:aws:dynamodb:us-east-1:000000000000:table/t/index/recovery");
        assert_eq!(call.leading_key.as_deref(), Some("intake#…"));
    }

    #[test]
    fn sqs_and_secrets_manager_calls_name_their_resource() {
        let delete =
            json!({"QueueUrl": "http://127.0.0.1:4566/queue/us-east-1/000000000000/s-payments", "Entries": []});
        let call = only_call(arns().describe("AmazonSQS.DeleteMessageBatch", delete.to_string().as_bytes()));
        assert_eq!(
            (call.action.as_str(), call.resource.as_str()),
            ("sqs:DeleteMessage", "arn:aws:sqs:us-east-1:000000000000:s-payments")
        );
        let secret = json!({"SecretId": "arn:aws:secretsmanager:us-east-1:000000000000:secret:k-AbCdEf"});
        let call = only_call(arns().describe("secretsmanager.GetSecretValue", secret.to_string().as_bytes()));
        assert_eq!(call.resource, "arn:aws:secretsmanager:us-east-1:000000000000:secret:k-AbCdEf");
        assert!(arns().describe("", b"Action=ListQueues").is_none());
    }

    fn only_call(request: Option<Request>) -> AwsCall {
        let mut calls = request.expect("a described request").calls;
        assert_eq!(calls.len(), 1, "{calls:?}");
        calls.remove(0)
    }

    #[test]
    fn a_batch_is_checked_as_its_statements_and_keys() {
        let batch = json!({"Statements": [
            {"Statement": "INSERT INTO \"t\" VALUE {'attempts': ?, 'pk': ?}", "Parameters": [{"N": "1"}, {"S": "process#acme#k1"}]},
            {"Statement": "UPDATE \"t\" SET \"status\" = ? REMOVE x WHERE pk = ? AND \"owner\" = ?",
             "Parameters": [{"S": "COMPLETED"}, {"S": "process#acme#k2"}, {"S": "o"}]}]});
        let request = arns().describe("DynamoDB_20120810.BatchExecuteStatement", batch.to_string().as_bytes()).unwrap();
        assert_eq!(request.operation, "dynamodb:BatchExecuteStatement");
        let described: Vec<_> =
            request.calls.iter().map(|c| (c.action.as_str(), c.resource.as_str(), c.leading_key.as_deref())).collect();
        let table = "arn:aws:dynamodb:us-east-1:000000000000:table/t";
        assert_eq!(
            described,
            [
                ("dynamodb:PartiQLInsert", table, Some("process#…")),
                ("dynamodb:PartiQLUpdate", table, Some("process#…"))
            ]
        );
        let read = json!({"RequestItems": {"t": {"Keys": [{"pk": {"S": "process#a#1"}}, {"pk": {"S": "breaker#p"}}], "ConsistentRead": true}}});
        let request = arns().describe("DynamoDB_20120810.BatchGetItem", read.to_string().as_bytes()).unwrap();
        let keys: Vec<_> = request.calls.iter().map(|c| c.leading_key.clone().unwrap_or_default()).collect();
        assert_eq!(keys, ["process#…", "breaker#…"]);
    }
}
