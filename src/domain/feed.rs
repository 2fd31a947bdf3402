//! What the change feed carries: every consent record and every erasure, in
//! one sequence order.

use chrono::{DateTime, Utc};

use super::{ConsentRecord, PurposeCode, SubjectId};

/// One change, at its place in the feed.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedEvent {
    Record(ConsentRecord),
    Erasure(ErasureEvent),
}

impl FeedEvent {
    /// Its position: a reader that resumes after it gets what follows.
    pub fn sequence(&self) -> i64 {
        match self {
            FeedEvent::Record(record) => record.sequence,
            FeedEvent::Erasure(erasure) => erasure.sequence,
        }
    }
}

/// A subject was erased. It names the person only by the pseudonym their
/// history now carries and by the sequences of their consent records, never
/// by the external id.
#[derive(Debug, Clone, PartialEq)]
pub struct ErasureEvent {
    pub sequence: i64,
    pub pseudonym: SubjectId,
    pub erased_at: DateTime<Utc>,
    /// The erased person's records (sequence and purpose), ascending.
    pub records: Vec<(i64, PurposeCode)>,
}
