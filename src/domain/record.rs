//! Subjects and consent records as the domain sees them.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    Actor, Evidence, FieldName, NoticeVersion, PurposeCode, RecipientId, RequestId, SubjectId,
};

stored_enum!(
    /// R1: "you" means a company or an individual.
    SubjectKind { Individual => "individual", Organization => "organization" }
);
stored_enum!(
    /// A person's choice for a purpose.
    Choice { Grant => "grant", Refuse => "refuse" }
);
stored_enum!(
    /// How a choice or registration reached us.
    Channel {
        Web => "web",
        EmailLink => "email_link",
        Support => "support",
        Api => "api",
        Import => "import",
    }
);

/// A registered subject.
#[derive(Debug, Clone, PartialEq)]
pub struct Subject {
    pub subject_id: SubjectId,
    pub kind: SubjectKind,
    pub notice_version: NoticeVersion,
    pub channel: Channel,
    pub registered_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A registration as a caller submits it.
#[derive(Debug, Clone, PartialEq)]
pub struct SubjectRegistration {
    pub subject_id: SubjectId,
    pub kind: SubjectKind,
    pub notice_version: NoticeVersion,
    pub channel: Channel,
    pub request_id: Option<RequestId>,
}

/// A choice as a caller submits it, before the store gives it an id,
/// a sequence and a time.
#[derive(Debug, Clone, PartialEq)]
pub struct NewConsentRecord {
    pub subject_id: SubjectId,
    pub purpose: PurposeCode,
    /// `None` covers every field of the purpose.
    pub field: Option<FieldName>,
    pub choice: Choice,
    pub channel: Channel,
    pub notice_version: NoticeVersion,
    pub evidence: Evidence,
    pub actor: Actor,
    pub request_id: Option<RequestId>,
    /// A permission that names one recipient (R5, PIPL Art. 23 "separate
    /// consent"). It only ever decides disclosures to that recipient, never
    /// a Check.
    pub recipient: Option<RecipientId>,
}

/// A stored consent record. Never changed once written.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsentRecord {
    pub record_id: Uuid,
    pub sequence: i64,
    pub recorded_at: DateTime<Utc>,
    pub content: NewConsentRecord,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_text_round_trips_for_every_variant() {
        for kind in SubjectKind::ALL {
            assert_eq!(SubjectKind::from_stored(kind.as_str()), Some(*kind));
        }
        for choice in Choice::ALL {
            assert_eq!(Choice::from_stored(choice.as_str()), Some(*choice));
        }
        for channel in Channel::ALL {
            assert_eq!(Channel::from_stored(channel.as_str()), Some(*channel));
        }
        assert_eq!(Choice::from_stored("maybe"), None);
    }
}
