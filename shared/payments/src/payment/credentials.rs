//! The provider's API key: fetched from where it is kept (AWS Secrets Manager when deployed),
//! cached, and fetched again when the provider refuses it, so that a rotated key is picked up
//! by the next call instead of the next cold start.
//!
//! Secrets Manager rather than an SSM SecureString: it is made for credentials (rotation
//! schedules, a resource policy, versions a rotation can stage), and a function reads it once
//! per cold start plus once per refresh, so its price per call does not matter.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use lambda_support::clock::Clock;

/// The key could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("provider API key unavailable: {0}")]
pub struct ApiKeyError(pub String);

/// A future returning the key.
pub type ApiKeyFuture<'a> = Pin<Box<dyn Future<Output = Result<String, ApiKeyError>> + Send + 'a>>;

/// Where the key is kept.
pub trait KeySource: Send + Sync + 'static {
    /// Reads the current key.
    fn fetch(&self) -> ApiKeyFuture<'_>;
}

/// A key given directly (tests, a local provider).
#[derive(Debug, Clone)]
pub struct FixedKey(pub String);

impl KeySource for FixedKey {
    fn fetch(&self) -> ApiKeyFuture<'_> {
        let key = self.0.clone();
        Box::pin(async move { Ok(key) })
    }
}

/// A key in AWS Secrets Manager: the secret's string value is the key.
#[derive(Debug, Clone)]
pub struct SecretsManagerKey {
    client: aws_sdk_secretsmanager::Client,
    secret_id: String,
}

impl SecretsManagerKey {
    /// The secret `secret_id` (name or ARN).
    pub fn new(client: aws_sdk_secretsmanager::Client, secret_id: impl Into<String>) -> Self {
        Self { client, secret_id: secret_id.into() }
    }
}

impl KeySource for SecretsManagerKey {
    fn fetch(&self) -> ApiKeyFuture<'_> {
        Box::pin(async move {
            let out = self
                .client
                .get_secret_value()
                .secret_id(&self.secret_id)
                .send()
                .await
                .map_err(|e| ApiKeyError(lambda_support::aws::errors::classify(&e).description))?;
            let key = out.secret_string().map(str::trim).unwrap_or_default();
            if key.is_empty() {
                return Err(ApiKeyError(format!("secret {} holds no string value", self.secret_id)));
            }
            Ok(key.to_owned())
        })
    }
}

/// How long a key is trusted, and how often it may be fetched again after a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyCachePolicy {
    /// A cached key older than this is fetched again before use.
    pub max_age: Duration,
    /// After a refusal, no second fetch sooner than this: a wrong key in the store must not turn
    /// every call into a Secrets Manager request.
    pub min_refresh_interval: Duration,
}

impl Default for KeyCachePolicy {
    fn default() -> Self {
        Self { max_age: Duration::from_secs(900), min_refresh_interval: Duration::from_secs(10) }
    }
}

/// What a refresh after a refusal found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refreshed {
    /// Another key: retry with it.
    New(String),
    /// The store holds the key the provider refused: the key is wrong, not stale.
    StoreHoldsTheRefusedKey,
}

/// Where the functions read the key from, and how long they keep it (`PROVIDER_API_KEY_SECRET`,
/// `PROVIDER_KEY_MAX_AGE_SECONDS`, `PROVIDER_KEY_MIN_REFRESH_SECONDS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderKeyConfig {
    /// The Secrets Manager secret (name or ARN); `None`: no key is sent (a local provider).
    pub secret_id: Option<String>,
    /// Caching.
    pub policy: KeyCachePolicy,
}

impl ProviderKeyConfig {
    /// Reads the variables above.
    pub fn from_env<F: Fn(&str) -> Option<String>>(
        env: &lambda_support::env::Env<F>,
    ) -> Result<Self, lambda_support::env::ConfigError> {
        let defaults = KeyCachePolicy::default();
        Ok(Self {
            secret_id: Some(env.string_or("PROVIDER_API_KEY_SECRET", "")).filter(|s| !s.is_empty()),
            policy: KeyCachePolicy {
                max_age: env.secs_or("PROVIDER_KEY_MAX_AGE_SECONDS", defaults.max_age.as_secs())?,
                min_refresh_interval: env
                    .secs_or("PROVIDER_KEY_MIN_REFRESH_SECONDS", defaults.min_refresh_interval.as_secs())?,
            },
        })
    }

    /// The key from Secrets Manager, when a secret is configured.
    pub fn api_key(&self, sdk: &aws_config::SdkConfig) -> Option<Arc<ApiKey>> {
        let secret = self.secret_id.as_ref()?;
        let source = SecretsManagerKey::new(aws_sdk_secretsmanager::Client::new(sdk), secret);
        Some(Arc::new(ApiKey::new(source, self.policy, Arc::new(lambda_support::clock::SystemClock))))
    }
}

struct Cached {
    key: String,
    fetched_at_ms: i64,
}

/// The key as the gateway uses it: cached per instance, bounded in age, refreshed on refusal.
pub struct ApiKey {
    source: Box<dyn KeySource>,
    policy: KeyCachePolicy,
    cached: Mutex<Option<Cached>>,
    clock: Arc<dyn Clock>,
}

impl ApiKey {
    /// A key read from `source`.
    pub fn new(source: impl KeySource, policy: KeyCachePolicy, clock: Arc<dyn Clock>) -> Self {
        Self { source: Box::new(source), policy, cached: Mutex::new(None), clock }
    }

    /// The key to send: the cached one while it is young enough, else fetched.
    pub async fn current(&self) -> Result<String, ApiKeyError> {
        let mut cached = self.cached.lock().await;
        let now = self.clock.now_ms();
        match cached.as_ref() {
            Some(c) if now - c.fetched_at_ms < as_ms(self.policy.max_age) => Ok(c.key.clone()),
            _ => self.fetch_into(&mut cached, now).await,
        }
    }

    /// The provider refused `refused`: is there another key to try? The cache may already hold
    /// another one (another call refreshed it); a key fetched less than the refresh interval ago
    /// is the store's current value; otherwise the store is asked again.
    pub async fn refresh_after_refusal(&self, refused: &str) -> Result<Refreshed, ApiKeyError> {
        let mut cached = self.cached.lock().await;
        let now = self.clock.now_ms();
        if let Some(c) = cached.as_ref() {
            if c.key != refused {
                return Ok(Refreshed::New(c.key.clone()));
            }
            if now - c.fetched_at_ms < as_ms(self.policy.min_refresh_interval) {
                return Ok(Refreshed::StoreHoldsTheRefusedKey);
            }
        }
        let key = self.fetch_into(&mut cached, now).await?;
        Ok(if key == refused { Refreshed::StoreHoldsTheRefusedKey } else { Refreshed::New(key) })
    }

    async fn fetch_into(&self, cached: &mut Option<Cached>, now: i64) -> Result<String, ApiKeyError> {
        let key = self.source.fetch().await?;
        *cached = Some(Cached { key: key.clone(), fetched_at_ms: now });
        Ok(key)
    }
}

fn as_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambda_support::clock::ManualClock;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Returns the keys in order (the last one forever), counting fetches.
    struct Rotating {
        keys: Vec<&'static str>,
        fetches: Arc<AtomicUsize>,
    }

    impl KeySource for Rotating {
        fn fetch(&self) -> ApiKeyFuture<'_> {
            let n = self.fetches.fetch_add(1, Ordering::SeqCst);
            let key = self.keys[n.min(self.keys.len() - 1)].to_owned();
            Box::pin(async move { Ok(key) })
        }
    }

    fn api_key(keys: Vec<&'static str>, clock: &ManualClock) -> (ApiKey, Arc<AtomicUsize>) {
        let fetches = Arc::new(AtomicUsize::new(0));
        let source = Rotating { keys, fetches: fetches.clone() };
        (ApiKey::new(source, KeyCachePolicy::default(), Arc::new(clock.clone())), fetches)
    }

    #[tokio::test]
    async fn the_key_is_fetched_once_and_again_only_when_old() {
        let clock = ManualClock::at(1_000_000);
        let (key, fetches) = api_key(vec!["k1", "k2"], &clock);
        assert_eq!(key.current().await.unwrap(), "k1");
        assert_eq!(key.current().await.unwrap(), "k1");
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        clock.advance_ms(900_000);
        assert_eq!(key.current().await.unwrap(), "k2", "15 minutes on, the key is read again");
    }

    #[tokio::test]
    async fn a_refused_key_is_refreshed_at_most_once_per_interval() {
        let clock = ManualClock::at(1_000_000);
        let (key, fetches) = api_key(vec!["old", "old", "new"], &clock);
        let wrong = Refreshed::StoreHoldsTheRefusedKey;
        assert_eq!(key.current().await.unwrap(), "old");
        assert_eq!(key.refresh_after_refusal("old").await.unwrap(), wrong, "fetched just now: the store's value");
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        clock.advance_ms(10_000);
        assert_eq!(key.refresh_after_refusal("old").await.unwrap(), wrong, "asked again: still the refused key");
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
        clock.advance_ms(10_000);
        assert_eq!(key.refresh_after_refusal("old").await.unwrap(), Refreshed::New("new".into()), "rotated");
        assert_eq!(key.refresh_after_refusal("old").await.unwrap(), Refreshed::New("new".into()), "already refreshed");
        assert_eq!(fetches.load(Ordering::SeqCst), 3);
    }
}
