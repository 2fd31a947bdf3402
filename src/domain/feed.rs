//! What the change feed carries: every consent record and every erasure, in
//! one sequence order, and for the decision state in memory also every
//! registration and every change to a stored field's collection or age.

use chrono::{DateTime, Utc};

use super::{ConsentRecord, FieldData, PurposeCode, SubjectId};

/// One change, at its place in the feed.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedEvent {
    Record(ConsentRecord),
    Erasure(ErasureEvent),
    /// Internal: never sent to a WatchChanges stream.
    Registered(Registration),
    /// Internal: never sent to a WatchChanges stream. Never the value.
    FieldStored(StoredField),
}

impl FeedEvent {
    /// Its position: a reader that resumes after it gets what follows.
    pub fn sequence(&self) -> i64 {
        match self {
            FeedEvent::Record(record) => record.sequence,
            FeedEvent::Erasure(erasure) => erasure.sequence,
            FeedEvent::Registered(registration) => registration.sequence,
            FeedEvent::FieldStored(stored) => stored.sequence,
        }
    }

    /// Whether WatchChanges streams are sent it: the registration and
    /// stored-field events exist for the servers' own memory.
    pub fn is_public(&self) -> bool {
        matches!(self, FeedEvent::Record(_) | FeedEvent::Erasure(_))
    }
}

/// A subject registered for the first time (or again after an erasure).
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    pub sequence: i64,
    pub subject_id: SubjectId,
}

/// A stored field of a subject was collected, verified or re-encrypted:
/// its collection purposes and age as they are now.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredField {
    pub sequence: i64,
    pub subject_id: SubjectId,
    pub data: FieldData,
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
    /// Internal: the sequence of the registration this erasure ended, by
    /// which a server's memory finds the person without the event naming
    /// them. `None` for erasures from before it was recorded.
    pub registration_sequence: Option<i64>,
}
