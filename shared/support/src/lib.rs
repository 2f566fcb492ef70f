//! What the Lambda libraries of this workspace share: time as epoch milliseconds and the
//! invocation's deadline ([`clock`]), configuration read once from the environment and refused
//! at cold start when it cannot work ([`env`](mod@env)), and, with feature `aws`, the one AWS SDK
//! configuration every client is built from and the classification of SDK errors ([`aws`]);
//! with `dynamodb`, items and refused conditions ([`aws::dynamodb`]).
//!
//! ```
//! use lambda_support::env::Env;
//!
//! let env = Env::from_lookup(|name| (name == "BATCH_SIZE").then(|| "10".to_owned()));
//! assert_eq!(env.parse_or("BATCH_SIZE", 1).unwrap(), 10_usize);
//! assert_eq!(env.parse_or("WINDOW_SECONDS", 0).unwrap(), 0_u64);
//! ```

#![deny(missing_docs)]

#[cfg(feature = "aws")]
pub mod aws;
pub mod clock;
pub mod env;
