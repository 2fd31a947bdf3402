//! What is stored about a subject's choices, as the rules read it.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Choice, FieldName, PurposeCode};

/// The latest choice for one purpose (`field == None`) or one field of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredChoice {
    pub purpose: PurposeCode,
    pub field: Option<FieldName>,
    pub choice: Choice,
    pub record_id: Uuid,
    /// Orders choices: the larger sequence was recorded later.
    pub sequence: i64,
    pub recorded_at: DateTime<Utc>,
}

/// What is known about a registered subject when deciding. An unregistered
/// subject is `None` at the call site, never an empty state, so "unknown"
/// cannot be mistaken for "has not refused".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectState {
    /// Current choices; may hold other purposes' choices too.
    pub choices: Vec<StoredChoice>,
}

impl SubjectState {
    /// The newer of the purpose-wide choice and the choice for this field.
    pub fn latest_covering(
        &self,
        purpose: &PurposeCode,
        field: &FieldName,
    ) -> Option<&StoredChoice> {
        self.choices
            .iter()
            .filter(|c| &c.purpose == purpose && c.field.as_ref().is_none_or(|f| f == field))
            .max_by_key(|c| c.sequence)
    }
}
