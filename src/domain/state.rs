//! What is stored about a subject's choices, as the rules read it.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Choice, FieldName, PurposeCode, RecipientId};

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
    /// Set on a permission that names one recipient (R5).
    pub recipient: Option<RecipientId>,
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
    /// Permissions naming a recipient are left out: they decide only
    /// disclosures to that recipient.
    pub fn latest_covering(
        &self,
        purpose: &PurposeCode,
        field: &FieldName,
    ) -> Option<&StoredChoice> {
        self.latest_for(purpose, field, None)
    }

    /// The newest choice covering the field that is either general or names
    /// `recipient`: a general refusal after a recipient's permission
    /// withdraws it, and a permission after a general refusal restores it
    /// for that recipient only.
    pub fn latest_for_recipient(
        &self,
        purpose: &PurposeCode,
        field: &FieldName,
        recipient: &RecipientId,
    ) -> Option<&StoredChoice> {
        self.latest_for(purpose, field, Some(recipient))
    }

    fn latest_for(
        &self,
        purpose: &PurposeCode,
        field: &FieldName,
        recipient: Option<&RecipientId>,
    ) -> Option<&StoredChoice> {
        self.choices
            .iter()
            .filter(|c| &c.purpose == purpose && c.field.as_ref().is_none_or(|f| f == field))
            .filter(|c| c.recipient.is_none() || c.recipient.as_ref() == recipient)
            .max_by_key(|c| c.sequence)
    }
}
