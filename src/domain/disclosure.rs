//! Personal data and disclosures as the domain sees them. Values appear only
//! as [`PersonalValue`], whose `Debug` hides them.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    Actor, Channel, FieldName, Justification, NoticeVersion, PersonalValue, PurposeCode, Reason,
    RecipientId, Reference, RequestId, SubjectId,
};

stored_enum!(
    /// R7: the three cases in which data goes out without permission.
    LegalBasis {
        LegalProcess => "legal_process",
        ProtectRightsProperty => "protect_rights_property",
        EmergencySafety => "emergency_safety",
    }
);

impl LegalBasis {
    /// (1) and (2) need a second person's approval; (3) cannot wait.
    pub fn needs_approval(self) -> bool {
        !matches!(self, LegalBasis::EmergencySafety)
    }
}

stored_enum!(
    /// Where a disclosure stands.
    DisclosureStatus {
        Released => "released",
        Partial => "partial",
        Denied => "denied",
        PendingApproval => "pending_approval",
    }
);

/// A value as a caller submits it (PutPersonalData), with what R2 asks to
/// record about its collection.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPersonalData {
    pub subject_id: SubjectId,
    pub field: FieldName,
    pub value: PersonalValue,
    /// The purposes stated when it was collected.
    pub collected_for: Vec<PurposeCode>,
    pub channel: Channel,
    pub notice_version: NoticeVersion,
    pub actor: Actor,
    pub request_id: Option<RequestId>,
}

/// What the rules need to know about one stored field: never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldData {
    pub field: FieldName,
    /// The purposes of the latest collection (R2).
    pub collected_for: Vec<PurposeCode>,
    pub collected_at: DateTime<Utc>,
    pub verified_at: Option<DateTime<Utc>>,
}

impl FieldData {
    /// When the value was last known to be right: its verification, or its
    /// collection when it was never verified (the person had just given it).
    pub fn checked_at(&self) -> DateTime<Utc> {
        self.verified_at
            .map_or(self.collected_at, |v| v.max(self.collected_at))
    }
}

/// One field released to a recipient.
#[derive(Debug, Clone, PartialEq)]
pub struct ReleasedField {
    pub field: FieldName,
    pub value: PersonalValue,
    pub needs_verification: bool,
}

/// One field not released, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Withheld {
    pub field: FieldName,
    pub reason: Reason,
}

/// One entry of the disclosure history, with the events that followed it
/// (approval, review) folded in. It never holds values.
#[derive(Debug, Clone, PartialEq)]
pub struct Disclosure {
    pub disclosure_id: Uuid,
    pub subject_id: SubjectId,
    pub recipient_id: RecipientId,
    /// Set for a purpose request; `None` for a legal-basis request.
    pub purpose: Option<PurposeCode>,
    pub legal_basis: Option<LegalBasis>,
    pub reference: Option<Reference>,
    pub justification: Option<Justification>,
    /// Released fields, or for a pending request the fields it would release.
    pub fields: Vec<FieldName>,
    pub withheld: Vec<Withheld>,
    pub status: DisclosureStatus,
    pub requested_by: Actor,
    pub requested_at: DateTime<Utc>,
    pub approved_by: Option<Actor>,
    pub released_at: Option<DateTime<Utc>>,
    /// For an emergency release: when its review is due.
    pub review_due: Option<DateTime<Utc>>,
    pub reviewed_by: Option<Actor>,
    pub reviewed_at: Option<DateTime<Utc>>,
}

/// A value as stored: AEAD ciphertext, the nonce, and the id of the key that
/// sealed it. Opaque to everything but `service::vault`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedValue {
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}
