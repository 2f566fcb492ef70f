//! The local environment the tests and the main job run in: LocalStack on the host
//! ([`localstack`]), the SAM template's non-compute resources deployed into it ([`stack`]), and a
//! stand-in for the SQS event source mapping that drives functions running under
//! `cargo lambda watch` ([`event_source`]).

pub mod apigw;
pub mod aws_faults;
pub mod aws_proxy;
pub mod caller;
pub mod emf_log;
pub mod event_source;
pub mod front;
pub mod functions;
pub mod iam;
pub mod load;
pub mod localstack;
pub mod metering;
pub mod operator;
pub mod pipeline;
pub mod reconcile;
pub mod stack;
pub mod workload;

use std::path::PathBuf;

/// The repository root (this crate lives in `infra/localenv`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root exists")
}

/// The project cache outside git (LocalStack, tool venvs): `$PAYMENTS_CACHE_DIR`, else `.cache`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("PAYMENTS_CACHE_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".cache"))
}
