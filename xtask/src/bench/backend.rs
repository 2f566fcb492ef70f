//! Where the benchmark's processors keep their records: LocalStack (the project's fidelity
//! backend, one request at a time through its gateway), or DynamoDB Local on its own port behind
//! a proxy that adds an in-region round trip to each request and serves them concurrently, as
//! DynamoDB does. The provider simulator sits behind the same kind of proxy there.

use std::process::Stdio;
use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType,
};
use localenv::cache_dir;
use localenv::front::{FrontDoor, Policy};
use localenv::localstack::OwnedLocalStack;
use tokio::process::{Child, Command};

/// One backend, up: the environment the processes run in, and what keeps it running.
pub struct Backend {
    /// How the tables print.
    pub name: String,
    /// The variables every variant runs with.
    pub env: Vec<(String, String)>,
    _running: Running,
}

enum Running {
    LocalStack(Option<OwnedLocalStack>),
    DynamoDbLocal { _java: Box<Child>, _proxies: [FrontDoor; 2] },
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Running::LocalStack(localstack) = &mut self._running
            && let Some(localstack) = localstack.take()
        {
            localstack.stop();
        }
    }
}

/// The AWS variables of this shell (LocalStack's endpoint and test credentials, as `./dev` sets).
fn aws_env() -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> =
        ["AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"]
            .iter()
            .filter_map(|var| std::env::var(var).ok().map(|v| ((*var).to_owned(), v)))
            .collect();
    // botocore reads the region from AWS_DEFAULT_REGION.
    if let Ok(region) = std::env::var("AWS_REGION") {
        env.push(("AWS_DEFAULT_REGION".into(), region));
    }
    env
}

/// The variables naming the tables, the provider and the (never used) dead-letter queue.
fn processor_env(idempotency: &str, failures: &str, provider_url: &str, dlq_url: &str) -> Vec<(String, String)> {
    [
        ("IDEMPOTENCY_TABLE", idempotency),
        ("FAILURES_TABLE", failures),
        ("PROVIDER_BASE_URL", provider_url),
        ("PROVIDER_ALLOW_HTTP", "true"),
        ("DEAD_LETTER_QUEUE_URL", dlq_url),
        ("METRICS_NAMESPACE", "PaymentsBench"),
        // As the template sets it for the functions.
        ("MIMALLOC_ARENA_EAGER_COMMIT", "0"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

impl Backend {
    /// LocalStack (started unless one answers) with a freshly deployed stack.
    pub async fn localstack(provider_url: &str) -> Result<Self, String> {
        let localstack = OwnedLocalStack::acquire().map_err(|e| e.to_string())?;
        let sdk = lambda_support::aws::load_config().await;
        let stack = localenv::stack::deploy(&sdk, &localenv::stack::unique_name("bench"), &[])
            .await
            .map_err(|e| e.to_string())?;
        let mut env = processor_env(stack.idempotency_table(), stack.failures_table(), provider_url, stack.dlq_url());
        env.extend(aws_env());
        Ok(Self { name: "LocalStack".into(), env, _running: Running::LocalStack(Some(localstack)) })
    }

    /// DynamoDB Local (the jar LocalStack's set-up installed) on a port of its own, and the
    /// provider at `provider_url`, each behind a proxy adding `latency` to every request.
    pub async fn dynamodb_local(provider_url: &str, latency: Duration) -> Result<Self, String> {
        let port = free_port().await?;
        let java = start_dynamodb_local(port).await?;
        let dynamodb_url = format!("http://127.0.0.1:{port}");
        let proxy = |upstream: String| FrontDoor::with_policy(0, upstream, Policy::Latency(latency));
        let dynamodb = proxy(dynamodb_url.clone()).await.map_err(|e| e.to_string())?;
        let provider = proxy(provider_url.to_owned()).await.map_err(|e| e.to_string())?;
        let mut env = processor_env(
            "bench-idempotency",
            "bench-failures",
            &provider.url(),
            "http://127.0.0.1:9/000000000000/unused",
        );
        env.extend([
            ("AWS_ENDPOINT_URL".to_owned(), dynamodb.url()),
            ("AWS_ACCESS_KEY_ID".to_owned(), "bench".to_owned()),
            ("AWS_SECRET_ACCESS_KEY".to_owned(), "bench".to_owned()),
            ("AWS_REGION".to_owned(), "us-east-1".to_owned()),
            ("AWS_DEFAULT_REGION".to_owned(), "us-east-1".to_owned()),
        ]);
        create_tables(&dynamodb_url).await?;
        Ok(Self {
            name: format!("DynamoDB Local + {} ms per request", latency.as_millis()),
            env,
            _running: Running::DynamoDbLocal { _java: Box::new(java), _proxies: [dynamodb, provider] },
        })
    }
}

async fn free_port() -> Result<u16, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    listener.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// Starts DynamoDB Local in memory on `port` and waits until it accepts connections.
async fn start_dynamodb_local(port: u16) -> Result<Child, String> {
    let dir = cache_dir().join("localstack/fsroot/var/lib/localstack/lib/dynamodb-local/2");
    if !dir.join("DynamoDBLocal.jar").exists() {
        return Err(format!("no DynamoDB Local in {} (run ./dev localstack setup)", dir.display()));
    }
    let java = Command::new("java")
        .current_dir(&dir)
        .arg(format!("-Djava.library.path={}", dir.join("DynamoDBLocal_lib").display()))
        .args(["-jar", "DynamoDBLocal.jar", "-inMemory", "-sharedDb", "-port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("java: {e}"))?;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(java);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("DynamoDB Local did not start within 10 s".into())
}

/// The template's two tables (key schema and the recovery index; TTL and encryption are not
/// DynamoDB Local's business).
async fn create_tables(endpoint: &str) -> Result<(), String> {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new("bench", "bench", None, None, "bench"))
        .load()
        .await;
    let client = aws_sdk_dynamodb::Client::new(&sdk);
    let recovery = GlobalSecondaryIndex::builder()
        .index_name("recovery")
        .key_schema(key("recovery_shard", KeyType::Hash)?)
        .key_schema(key("recovery_due", KeyType::Range)?)
        .projection(Projection::builder().projection_type(ProjectionType::KeysOnly).build())
        .build()
        .map_err(|e| e.to_string())?;
    let idempotency = [("pk", ScalarAttributeType::S, Some(KeyType::Hash))];
    let index = [("recovery_shard", ScalarAttributeType::S, None), ("recovery_due", ScalarAttributeType::N, None)];
    create_table(&client, "bench-idempotency", &[&idempotency[..], &index[..]].concat(), Some(recovery)).await?;
    let failures =
        [("pk", ScalarAttributeType::S, Some(KeyType::Hash)), ("sk", ScalarAttributeType::S, Some(KeyType::Range))];
    create_table(&client, "bench-failures", &failures, None).await
}

/// An on-demand table with `attributes` (those with a key type form its key) and `index`.
async fn create_table(
    client: &aws_sdk_dynamodb::Client,
    name: &str,
    attributes: &[(&str, ScalarAttributeType, Option<KeyType>)],
    index: Option<GlobalSecondaryIndex>,
) -> Result<(), String> {
    let mut create = client.create_table().table_name(name).billing_mode(BillingMode::PayPerRequest);
    for (attribute, kind, key_type) in attributes {
        let definition = AttributeDefinition::builder().attribute_name(*attribute).attribute_type(kind.clone()).build();
        create = create.attribute_definitions(definition.map_err(|e| e.to_string())?);
        if let Some(key_type) = key_type {
            create = create.key_schema(key(attribute, key_type.clone())?);
        }
    }
    create
        .set_global_secondary_indexes(index.map(|i| vec![i]))
        .send()
        .await
        .map_err(|e| format!("create {name}: {e:?}"))?;
    Ok(())
}

fn key(name: &str, kind: KeyType) -> Result<KeySchemaElement, String> {
    KeySchemaElement::builder().attribute_name(name).key_type(kind).build().map_err(|e| e.to_string())
}
