//! What the person's page shows of their choices, read from their history:
//! where each purpose stands, whether each partner is permitted, and which
//! refusals the Global Privacy Control signal stands for.

use super::{Basis, Policy, Purpose, Recipient};
use crate::domain::{Channel, Choice, ConsentRecord, PurposeCode};

/// The evidence of a refusal recorded for the `Sec-GPC: 1` signal.
pub const GPC_EVIDENCE: &str = "GPC";

/// Where one purpose stands for the person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// What Check answers for the purpose when no field choice differs.
    pub allowed: bool,
    /// The latest purpose-wide record came from the GPC signal.
    pub from_gpc: bool,
    /// The person has made a purpose-wide choice (the signal's included).
    pub chosen: bool,
}

fn from_gpc(record: &ConsentRecord) -> bool {
    record.content.channel == Channel::Web && record.content.evidence.as_str() == GPC_EVIDENCE
}

/// The latest purpose-wide record of `purpose` that names no recipient:
/// the one Check reads when no field has a choice of its own.
fn latest_purpose_wide<'h>(
    purpose: &PurposeCode,
    history: &'h [ConsentRecord],
) -> Option<&'h ConsentRecord> {
    history
        .iter()
        .filter(|r| {
            let c = &r.content;
            &c.purpose == purpose && c.field.is_none() && c.recipient.is_none()
        })
        .max_by_key(|r| r.sequence)
}

/// Reads like [`decide`](super::decide) for the purpose as a whole.
pub fn standing(purpose: &Purpose, history: &[ConsentRecord]) -> Standing {
    let latest = latest_purpose_wide(&purpose.code, history);
    let choice = latest.map(|r| r.content.choice);
    let allowed = match purpose.basis {
        Basis::Contract => true,
        Basis::Consent => choice == Some(Choice::Grant),
        Basis::OptOut => choice != Some(Choice::Refuse),
    };
    Standing {
        allowed,
        from_gpc: latest.is_some_and(from_gpc),
        chosen: latest.is_some(),
    }
}

/// Whether the person has permitted `recipient` (R5) for every purpose it
/// receives data for: the newest permission naming it is a grant, and no
/// general refusal came after (as disclosures read it).
pub fn permitted(recipient: &Recipient, history: &[ConsentRecord]) -> bool {
    !recipient.purposes.is_empty()
        && recipient.purposes.iter().all(|purpose| {
            history
                .iter()
                .filter(|r| {
                    let c = &r.content;
                    &c.purpose == purpose
                        && c.field.is_none()
                        && match &c.recipient {
                            Some(named) => named == &recipient.id,
                            None => c.choice == Choice::Refuse,
                        }
                })
                .max_by_key(|r| r.sequence)
                .is_some_and(|r| r.content.choice == Choice::Grant && r.content.recipient.is_some())
        })
}

/// The opt-out purposes the GPC signal refuses on this visit: none once
/// the signal was recorded before (it is honoured on the first visit only,
/// so a later explicit grant stays), and none the person has chosen for.
pub fn gpc_refusals(policy: &Policy, history: &[ConsentRecord]) -> Vec<PurposeCode> {
    if history.iter().any(from_gpc) {
        return Vec::new();
    }
    policy
        .purposes()
        .filter(|p| p.basis == Basis::OptOut && !standing(p, history).chosen)
        .map(|p| p.code.clone())
        .collect()
}
