//! DynamoDB items and the conditional writes every DynamoDB adapter makes: a refused condition is
//! an answer (with the item it found, when the write asked for it), not a failure, and every
//! adapter reads it the same way, through [`refused`].

use std::collections::HashMap;

use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

/// An item as the DynamoDB API takes and returns it.
pub type Item = HashMap<String, AttributeValue>;

/// A string attribute (`S`).
pub fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

/// A number attribute (`N`): DynamoDB carries numbers as decimal text.
pub fn n(value: i64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// A DynamoDB write that carries a condition. A refused condition is an answer, not a failure:
/// every adapter reads it the same way, through [`refused`].
pub trait ConditionalWrite: ProvideErrorMetadata + std::error::Error + 'static {
    /// `Some` when the condition failed, holding the stored item when the write asked for it
    /// (ALL_OLD) and one existed.
    fn refused_item(&self) -> Option<Option<&Item>>;
}

impl ConditionalWrite for UpdateItemError {
    fn refused_item(&self) -> Option<Option<&Item>> {
        match self {
            Self::ConditionalCheckFailedException(failed) => Some(failed.item()),
            _ => None,
        }
    }
}

impl ConditionalWrite for PutItemError {
    fn refused_item(&self) -> Option<Option<&Item>> {
        match self {
            Self::ConditionalCheckFailedException(failed) => Some(failed.item()),
            _ => None,
        }
    }
}

/// `Some` when a conditional write's condition refused it (with the item it found, if returned);
/// `None` for any other error, which the caller classifies.
pub fn refused<E: ConditionalWrite>(err: &SdkError<E, HttpResponse>) -> Option<Option<&Item>> {
    match err {
        SdkError::ServiceError(e) => e.err().refused_item(),
        _ => None,
    }
}
