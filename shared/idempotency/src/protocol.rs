//! The idempotency protocol as pure functions over a stored record and the time.
//!
//! This module is the single source of truth for which claims, completions and releases are
//! allowed. The in-memory store and the model checker call these functions; the DynamoDB store
//! mirrors them in its condition expressions, and a LocalStack test checks that mirror against
//! these functions on generated cases.

use crate::hash::PayloadHash;
use crate::key::RecordKey;

/// Where a record is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordStatus {
    /// Claimed by a worker (or released by one after a retryable failure, with no owner).
    InProgress,
    /// The operation succeeded; the result is stored.
    Completed,
    /// The operation failed permanently; the reason is stored.
    Failed,
}

impl RecordStatus {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InProgress => "IN_PROGRESS",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "IN_PROGRESS" => Some(Self::InProgress),
            "COMPLETED" => Some(Self::Completed),
            "FAILED" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// A random token naming one claim. Settling a record requires it, so a worker whose lease was
/// taken over cannot touch the new owner's record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OwnerToken(String);

impl OwnerToken {
    /// A fresh random token (UUID v4).
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    /// Rebuilds a token read back from a store (or named by a model).
    pub fn from_stored(token: String) -> Self {
        Self(token)
    }

    /// The token text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A permanent failure as stored: a stable machine-readable code and a reason for humans.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct StoredFailure {
    /// Stable code, e.g. `card_declined`, `invalid_message`.
    pub code: String,
    /// What happened, for people (stored as `error_reason`).
    pub detail: String,
}

/// One idempotency record, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyRecord {
    /// The DynamoDB partition key (`{operation}#{scope}#{key}`).
    pub partition_key: String,
    /// Where the record is in its life.
    pub status: RecordStatus,
    /// Fingerprint of the payload of the first request.
    pub payload_hash: PayloadHash,
    /// The current claim's token; `None` once released.
    pub owner: Option<OwnerToken>,
    /// End of the current claim's lease (epoch ms); 0 once released.
    pub lease_until_ms: i64,
    /// The stored result (JSON text) once completed.
    pub result: Option<String>,
    /// The stored failure once failed permanently.
    pub failure: Option<StoredFailure>,
    /// The reason of the latest retryable failure, kept for operators and the DLQ consumer.
    pub last_error: Option<String>,
    /// Attempts that count against the retry budget: claims so far (first claim = 1), less the
    /// ones given back by a refunded release (an attempt the circuit breaker blamed on a provider
    /// outage rather than on this payment).
    pub attempts: u32,
    /// First claim (epoch ms).
    pub created_at_ms: i64,
    /// Last change (epoch ms).
    pub updated_at_ms: i64,
    /// TTL (epoch seconds): past it the record counts as absent, whether or not DynamoDB has
    /// deleted it yet (TTL deletion can lag by up to 48 hours).
    pub expires_at_s: i64,
    /// From when (epoch ms) this record, if still IN_PROGRESS with its lease over, counts as
    /// abandoned and a completer may finish it. Set by a claim that asks for [`Recovery`];
    /// cleared by completion, permanent failure and by a completer that dismissed it.
    pub recovery_due_ms: Option<i64>,
    /// The operation's input (JSON text), kept so that a completer can redo the operation when
    /// its claimer never finished it (the intake keeps the message it was about to enqueue).
    pub input: Option<String>,
}

impl IdempotencyRecord {
    /// Abandoned: IN_PROGRESS, its lease over, and its recovery due. Mirrors the completer's
    /// query (`recovery_due <= :now`) plus the checks it makes on the record it reads back.
    pub fn is_due_for_recovery(&self, now_ms: i64) -> bool {
        self.status == RecordStatus::InProgress
            && self.lease_is_over(now_ms)
            && !self.is_expired(now_ms)
            && self.recovery_due_ms.is_some_and(|due| due <= now_ms)
    }

    /// Past its TTL: counts as absent. Mirrors `expires_at < :now_s` in the store's conditions.
    pub fn is_expired(&self, now_ms: i64) -> bool {
        self.expires_at_s < now_s(now_ms)
    }

    /// An IN_PROGRESS record whose lease is over: another worker may take it over. Mirrors
    /// `lease_until_ms < :now_ms`.
    pub fn lease_is_over(&self, now_ms: i64) -> bool {
        self.lease_until_ms < now_ms
    }
}

/// Whole seconds of an epoch-millisecond time, as the TTL attribute is kept.
pub fn now_s(now_ms: i64) -> i64 {
    now_ms.div_euclid(1000)
}

/// Everything a claim writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRequest {
    /// Which record.
    pub key: RecordKey,
    /// Fingerprint of this request's payload.
    pub payload_hash: PayloadHash,
    /// The new claim's token.
    pub owner: OwnerToken,
    /// The time of the claim (epoch ms).
    pub now_ms: i64,
    /// End of the lease asked for (epoch ms).
    pub lease_until_ms: i64,
    /// TTL of the record (epoch s).
    pub expires_at_s: i64,
    /// What a completer needs if this claim's work is never finished; `None` keeps what the
    /// record had.
    pub recovery: Option<Recovery>,
}

/// A settlement as sent to the store: the owner's lease ends in `settle`, if it still owns the
/// record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettleRequest {
    /// Which record.
    pub key: RecordKey,
    /// The claim that settles it.
    pub owner: OwnerToken,
    /// Completed, failed, or released.
    pub settle: Settle,
    /// The time of the settlement (epoch ms).
    pub now_ms: i64,
    /// TTL of a settled record (epoch s).
    pub expires_at_s: i64,
}

/// What lets a completer finish an operation whose claimer never settled it: a time from which
/// the claim counts as abandoned, and the input to redo the operation from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Recovery {
    /// From when (epoch ms) the record, still IN_PROGRESS with its lease over, is abandoned.
    pub due_ms: i64,
    /// The operation's input (JSON text), if the record must carry it; `None` keeps any stored.
    pub input: Option<String>,
}

/// What a claim may do, given what is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimDecision {
    /// No live record: write a fresh one (attempt 1).
    Create,
    /// An IN_PROGRESS record whose lease is over, for the same payload: take it over, keeping its
    /// history (attempts + 1, first-claim time, last error).
    TakeOver,
    /// A live record stands in the way.
    Refuse(Refusal),
}

/// Why a claim was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The key was used before with a different payload (checked before anything else, so a
    /// different request never receives another request's stored result).
    PayloadMismatch,
    /// Already completed: the stored result answers.
    Completed,
    /// Already failed permanently: the stored failure answers.
    Failed,
    /// Another worker holds a live lease.
    InProgress {
        /// When that lease ends (epoch ms).
        lease_until_ms: i64,
    },
}

/// The claim rule: absent, past TTL, or IN_PROGRESS with the lease over (same payload).
pub fn decide_claim(stored: Option<&IdempotencyRecord>, payload_hash: &PayloadHash, now_ms: i64) -> ClaimDecision {
    let Some(record) = stored else { return ClaimDecision::Create };
    if record.is_expired(now_ms) {
        return ClaimDecision::Create;
    }
    if record.payload_hash != *payload_hash {
        return ClaimDecision::Refuse(Refusal::PayloadMismatch);
    }
    match record.status {
        RecordStatus::Completed => ClaimDecision::Refuse(Refusal::Completed),
        RecordStatus::Failed => ClaimDecision::Refuse(Refusal::Failed),
        RecordStatus::InProgress if record.lease_is_over(now_ms) => ClaimDecision::TakeOver,
        RecordStatus::InProgress => {
            ClaimDecision::Refuse(Refusal::InProgress { lease_until_ms: record.lease_until_ms })
        }
    }
}

/// The record a successful claim leaves behind.
pub fn claimed_record(
    previous: Option<&IdempotencyRecord>,
    decision: ClaimDecision,
    req: &ClaimRequest,
) -> IdempotencyRecord {
    let kept = match decision {
        ClaimDecision::TakeOver => previous,
        ClaimDecision::Create | ClaimDecision::Refuse(_) => None,
    };
    IdempotencyRecord {
        partition_key: req.key.partition_key(),
        status: RecordStatus::InProgress,
        payload_hash: req.payload_hash.clone(),
        owner: Some(req.owner.clone()),
        lease_until_ms: req.lease_until_ms,
        result: None,
        failure: None,
        last_error: kept.and_then(|r| r.last_error.clone()),
        attempts: kept.map_or(0, |r| r.attempts) + 1,
        created_at_ms: kept.map_or(req.now_ms, |r| r.created_at_ms),
        updated_at_ms: req.now_ms,
        expires_at_s: req.expires_at_s,
        recovery_due_ms: req.recovery.as_ref().map(|r| r.due_ms).or_else(|| kept.and_then(|r| r.recovery_due_ms)),
        input: req.recovery.as_ref().and_then(|r| r.input.clone()).or_else(|| kept.and_then(|r| r.input.clone())),
    }
}

/// The settle rule (complete, fail permanently, release): only the current owner of an
/// IN_PROGRESS record. A worker whose lease lapsed but was not taken over may still settle: the
/// work it did is the work that counts. Mirrors `#owner = :owner AND #status = :in_progress`.
pub fn may_settle(stored: Option<&IdempotencyRecord>, owner: &OwnerToken) -> bool {
    matches!(stored, Some(r) if r.status == RecordStatus::InProgress && r.owner.as_ref() == Some(owner))
}

/// Whether `stored` is what `request`'s claim wrote: after an answer lost in transit, the SDK's
/// retry of a claim that had committed fails its own condition (the record is now IN_PROGRESS
/// under a live lease), and this tells the caller that the claim is its own, not another
/// worker's. Owner tokens are random per claim, so no other claim can match.
pub fn is_own_claim(stored: Option<&IdempotencyRecord>, request: &ClaimRequest) -> bool {
    matches!(stored, Some(r) if r.status == RecordStatus::InProgress
        && r.owner.as_ref() == Some(&request.owner)
        && r.lease_until_ms == request.lease_until_ms)
}

/// Whether `stored` is what `request`'s settlement wrote, when its retry after a lost answer is
/// refused. A completion or permanent failure keeps the owner's token beside the stored result,
/// so it is recognised exactly. A release drops the token: any released record (IN_PROGRESS, no
/// owner) with this reason counts, and whether the release was this worker's or a later one's,
/// the record is free for the next claim either way.
pub fn is_own_settlement(stored: Option<&IdempotencyRecord>, request: &SettleRequest) -> bool {
    let Some(r) = stored else { return false };
    let owned = r.owner.as_ref() == Some(&request.owner);
    match &request.settle {
        Settle::Complete { result } => {
            owned && r.status == RecordStatus::Completed && r.result.as_ref() == Some(result)
        }
        Settle::Fail(failure) => owned && r.status == RecordStatus::Failed && r.failure.as_ref() == Some(failure),
        Settle::Release { reason, .. } => {
            r.status == RecordStatus::InProgress && r.owner.is_none() && r.last_error.as_ref() == Some(reason)
        }
    }
}

/// How an owner settles its claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Success, with the result to replay to duplicates (JSON text).
    Complete {
        /// JSON text of the result.
        result: String,
    },
    /// Permanent failure, stored and replayed to duplicates.
    Fail(StoredFailure),
    /// Retryable failure: give the record up so the next delivery can claim it at once.
    Release {
        /// Why, kept as `last_error`.
        reason: String,
        /// Give the attempt back (`attempts − 1`): the failure was the provider's outage, not
        /// this payment's, and must not spend its retry budget.
        refund: bool,
    },
}

/// The rescheduling rule: a completer moves a record's recovery (later, after it re-enqueued the
/// work; or away, when someone else owns the record's fate) only if the record has not changed
/// since it was read (`updated_at` as the version), so a newer claim's recovery is never lost.
/// Mirrors `updated_at = :seen AND #status = :in_progress`.
pub fn may_reschedule_recovery(stored: Option<&IdempotencyRecord>, seen_updated_at_ms: i64) -> bool {
    matches!(stored, Some(r) if r.status == RecordStatus::InProgress && r.updated_at_ms == seen_updated_at_ms)
}

/// The record a permitted settlement leaves behind.
pub fn settled_record(
    current: &IdempotencyRecord,
    settle: &Settle,
    now_ms: i64,
    expires_at_s: i64,
) -> IdempotencyRecord {
    let mut next = current.clone();
    next.updated_at_ms = now_ms;
    match settle {
        Settle::Complete { result } => {
            next.status = RecordStatus::Completed;
            next.result = Some(result.clone());
            next.expires_at_s = expires_at_s;
            next.recovery_due_ms = None;
        }
        Settle::Fail(failure) => {
            next.status = RecordStatus::Failed;
            next.failure = Some(failure.clone());
            next.last_error = Some(failure.detail.clone());
            next.expires_at_s = expires_at_s;
            next.recovery_due_ms = None;
        }
        Settle::Release { reason, refund } => {
            next.owner = None;
            next.lease_until_ms = 0;
            next.last_error = Some(reason.clone());
            if *refund {
                next.attempts = next.attempts.saturating_sub(1);
            }
        }
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{IdempotencyKey, Operation, Scope};

    fn key() -> RecordKey {
        RecordKey::new(
            Operation::new("process").unwrap(),
            Scope::new("acme").unwrap(),
            IdempotencyKey::new("k").unwrap(),
        )
    }

    fn request(hash: &str, now_ms: i64) -> ClaimRequest {
        ClaimRequest {
            key: key(),
            payload_hash: PayloadHash::from_stored(hash.into()),
            owner: OwnerToken::random(),
            now_ms,
            lease_until_ms: now_ms + 30_000,
            expires_at_s: now_s(now_ms) + 3600,
            recovery: None,
        }
    }

    fn fresh(hash: &str, now_ms: i64) -> IdempotencyRecord {
        let req = request(hash, now_ms);
        claimed_record(None, ClaimDecision::Create, &req)
    }

    #[test]
    fn absent_or_expired_records_are_created_afresh() {
        let h = PayloadHash::from_stored("h".into());
        assert_eq!(decide_claim(None, &h, 0), ClaimDecision::Create);
        let old = fresh("other", 0);
        let after_ttl = (old.expires_at_s + 1) * 1000;
        assert_eq!(decide_claim(Some(&old), &h, after_ttl), ClaimDecision::Create);
        // At the TTL second itself the record still lives.
        assert_eq!(
            decide_claim(Some(&old), &h, old.expires_at_s * 1000),
            ClaimDecision::Refuse(Refusal::PayloadMismatch)
        );
    }

    #[test]
    fn a_live_lease_refuses_and_an_expired_one_is_taken_over() {
        let rec = fresh("h", 1_000);
        let h = PayloadHash::from_stored("h".into());
        assert_eq!(
            decide_claim(Some(&rec), &h, rec.lease_until_ms),
            ClaimDecision::Refuse(Refusal::InProgress { lease_until_ms: rec.lease_until_ms })
        );
        assert_eq!(decide_claim(Some(&rec), &h, rec.lease_until_ms + 1), ClaimDecision::TakeOver);
    }

    #[test]
    fn payload_mismatch_wins_over_a_stored_result() {
        let rec = fresh("h", 0);
        let done = settled_record(&rec, &Settle::Complete { result: "{}".into() }, 1, 99);
        let other = PayloadHash::from_stored("x".into());
        assert_eq!(decide_claim(Some(&done), &other, 2), ClaimDecision::Refuse(Refusal::PayloadMismatch));
        let same = PayloadHash::from_stored("h".into());
        assert_eq!(decide_claim(Some(&done), &same, 2), ClaimDecision::Refuse(Refusal::Completed));
    }

    #[test]
    fn take_over_keeps_history_and_counts_the_attempt() {
        let first = fresh("h", 1_000);
        let released = settled_record(&first, &Settle::Release { reason: "503".into(), refund: false }, 2_000, 0);
        assert!(!may_settle(Some(&released), first.owner.as_ref().unwrap()), "release drops the owner");
        let req = request("h", 3_000);
        let decision = decide_claim(Some(&released), &req.payload_hash, req.now_ms);
        assert_eq!(decision, ClaimDecision::TakeOver);
        let second = claimed_record(Some(&released), decision, &req);
        assert_eq!(second.attempts, 2);
        assert_eq!(second.created_at_ms, 1_000);
        assert_eq!(second.last_error.as_deref(), Some("503"));
        assert!(may_settle(Some(&second), &req.owner));
        assert!(!may_settle(Some(&second), first.owner.as_ref().unwrap()));
        let refunded = settled_record(&second, &Settle::Release { reason: "open".into(), refund: true }, 4_000, 0);
        assert_eq!(refunded.attempts, 1, "a refunded release gives the attempt back");
    }

    #[test]
    fn settled_records_accept_no_further_settlement() {
        let rec = fresh("h", 0);
        let owner = rec.owner.clone().unwrap();
        let failed = settled_record(
            &rec,
            &Settle::Fail(StoredFailure { code: "card_declined".into(), detail: "declined".into() }),
            1,
            50,
        );
        assert_eq!(failed.status, RecordStatus::Failed);
        assert!(!may_settle(Some(&failed), &owner));
        assert!(!may_settle(None, &owner));
    }

    #[test]
    fn a_write_whose_answer_was_lost_is_recognised_as_its_own_and_only_its_own() {
        let claim = request("h", 1_000);
        let mine = claimed_record(None, ClaimDecision::Create, &claim);
        assert!(is_own_claim(Some(&mine), &claim));
        let other = request("h", 1_000);
        assert!(!is_own_claim(Some(&mine), &other), "another claim's token");
        assert!(!is_own_claim(None, &claim));
        let settle = |settle: Settle| SettleRequest {
            key: key(),
            owner: claim.owner.clone(),
            settle,
            now_ms: 2_000,
            expires_at_s: 99,
        };
        for how in [
            Settle::Complete { result: "{\"charge\":1}".into() },
            Settle::Fail(StoredFailure { code: "card_declined".into(), detail: "declined".into() }),
            Settle::Release { reason: "provider_503".into(), refund: false },
        ] {
            let request = settle(how.clone());
            let after = settled_record(&mine, &how, request.now_ms, request.expires_at_s);
            assert!(is_own_settlement(Some(&after), &request), "{how:?}");
            assert!(!is_own_settlement(Some(&mine), &request), "{how:?}: not written yet");
        }
        let completed = settled_record(&mine, &Settle::Complete { result: "a".into() }, 2_000, 99);
        assert!(!is_own_settlement(Some(&completed), &settle(Settle::Complete { result: "b".into() })));
        let theirs = SettleRequest { owner: other.owner.clone(), ..settle(Settle::Complete { result: "a".into() }) };
        assert!(!is_own_settlement(Some(&completed), &theirs), "another owner's completion");
    }

    #[test]
    fn recovery_is_due_only_for_abandoned_claims_and_ends_with_settlement() {
        let mut req = request("h", 1_000);
        req.recovery = Some(Recovery { due_ms: 40_000, input: Some("{\"m\":1}".into()) });
        let claimed = claimed_record(None, ClaimDecision::Create, &req);
        assert!(!claimed.is_due_for_recovery(39_999), "not due yet");
        assert!(claimed.is_due_for_recovery(40_000), "lease over (31 s) and due");
        let live = IdempotencyRecord { lease_until_ms: 50_000, ..claimed.clone() };
        assert!(!live.is_due_for_recovery(45_000), "a live lease is nobody's to recover");
        // A take-over without recovery keeps the stored input and due time.
        let released = settled_record(&claimed, &Settle::Release { reason: "x".into(), refund: false }, 2_000, 0);
        let retry = request("h", 3_000);
        let again = claimed_record(Some(&released), ClaimDecision::TakeOver, &retry);
        assert_eq!((again.recovery_due_ms, again.input.as_deref()), (Some(40_000), Some("{\"m\":1}")));
        let done = settled_record(&again, &Settle::Complete { result: "{}".into() }, 4_000, 99);
        assert!(!done.is_due_for_recovery(100_000) && done.recovery_due_ms.is_none());
        assert_eq!(done.input.as_deref(), Some("{\"m\":1}"), "the input outlives completion");
        assert!(may_reschedule_recovery(Some(&again), again.updated_at_ms));
        assert!(!may_reschedule_recovery(Some(&again), again.updated_at_ms - 1), "changed since read");
        assert!(!may_reschedule_recovery(Some(&done), done.updated_at_ms), "settled records are not watched");
    }
}
