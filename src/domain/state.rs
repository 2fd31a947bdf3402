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
    /// The subject was erased and has not registered again: it has no
    /// choices, and no purpose may use it.
    pub erased: bool,
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
        self.covering(purpose, field)
            .filter(|c| c.recipient.is_none())
            .max_by_key(|c| c.sequence)
    }

    /// The choice that decides a disclosure of the field to `recipient`
    /// (R5): the newest permission naming the recipient, unless a general
    /// refusal came after it. A general grant names no recipient, so it
    /// neither gives nor withdraws a recipient's permission.
    pub fn permission_for_recipient(
        &self,
        purpose: &PurposeCode,
        field: &FieldName,
        recipient: &RecipientId,
    ) -> Option<&StoredChoice> {
        self.covering(purpose, field)
            .filter(|c| match &c.recipient {
                Some(named) => named == recipient,
                None => c.choice == Choice::Refuse,
            })
            .max_by_key(|c| c.sequence)
    }

    fn covering<'s, 'q>(
        &'s self,
        purpose: &'q PurposeCode,
        field: &'q FieldName,
    ) -> impl Iterator<Item = &'s StoredChoice> + 'q
    where
        's: 'q,
    {
        self.choices
            .iter()
            .filter(move |c| &c.purpose == purpose && c.field.as_ref().is_none_or(|f| f == field))
    }
}
