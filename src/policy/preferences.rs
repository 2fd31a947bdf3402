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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use uuid::Uuid;

    use super::*;
    use crate::domain::{
        Actor, Evidence, FieldName, NewConsentRecord, NoticeVersion, RecipientId, SubjectId,
    };

    const POLICY: &str = r#"
version = "test-1"
[[fields]]
id = "email"
[[purposes]]
id = "delivery"
basis = "contract"
fields = ["email"]
[[purposes]]
id = "offers"
basis = "consent"
fields = ["email"]
[[purposes]]
id = "promo"
basis = "opt_out"
fields = ["email"]
refusal_instructions = "Unsubscribe."
[[purposes]]
id = "news"
basis = "opt_out"
fields = ["email"]
refusal_instructions = "Unsubscribe."
[[recipients]]
id = "partner"
name = "Partner Ltd."
category = "partner"
contact = "dpo@partner.example"
purposes = ["offers"]
"#;

    fn policy() -> Policy {
        Policy::parse(Path::new("test.toml"), POLICY).unwrap()
    }

    /// A record in sequence order; `evidence` "GPC" on the web is the signal.
    fn record(
        sequence: i64,
        purpose: &str,
        field: &str,
        choice: Choice,
        recipient: Option<&str>,
        evidence: &str,
    ) -> ConsentRecord {
        ConsentRecord {
            record_id: Uuid::from_u128(sequence as u128),
            sequence,
            recorded_at: chrono::DateTime::UNIX_EPOCH,
            content: NewConsentRecord {
                subject_id: SubjectId::parse("C-1").unwrap(),
                purpose: PurposeCode::parse(purpose).unwrap(),
                field: (!field.is_empty()).then(|| FieldName::parse(field).unwrap()),
                choice,
                channel: Channel::Web,
                notice_version: NoticeVersion::parse("test-1").unwrap(),
                evidence: Evidence::parse(evidence).unwrap(),
                actor: Actor::parse("page").unwrap(),
                request_id: None,
                recipient: recipient.map(|r| RecipientId::parse(r).unwrap()),
            },
        }
    }

    fn standing_of(code: &str, history: &[ConsentRecord]) -> Standing {
        let policy = policy();
        standing(
            policy.purpose(&PurposeCode::parse(code).unwrap()).unwrap(),
            history,
        )
    }

    #[test]
    fn without_records_each_basis_reads_as_check_does() {
        assert!(standing_of("delivery", &[]).allowed);
        assert!(!standing_of("offers", &[]).allowed);
        assert!(standing_of("promo", &[]).allowed);
        assert!(!standing_of("promo", &[]).chosen);
    }

    #[test]
    fn the_latest_purpose_wide_record_decides_and_field_or_recipient_records_do_not() {
        let history = [
            record(1, "promo", "", Choice::Refuse, None, GPC_EVIDENCE),
            record(2, "promo", "email", Choice::Grant, None, ""),
            record(3, "offers", "", Choice::Grant, Some("partner"), ""),
        ];
        let promo = standing_of("promo", &history);
        assert!(!promo.allowed && promo.from_gpc && promo.chosen);
        assert!(!standing_of("offers", &history).allowed);
        let later = [
            history[0].clone(),
            record(4, "promo", "", Choice::Grant, None, "preference page"),
        ];
        let promo = standing_of("promo", &later);
        assert!(promo.allowed && !promo.from_gpc);
    }

    #[test]
    fn a_partner_is_permitted_by_a_grant_naming_it_until_a_later_general_refusal() {
        let policy = policy();
        let partner = policy
            .recipient(&RecipientId::parse("partner").unwrap())
            .unwrap();
        assert!(!permitted(partner, &[]));
        let grant = record(1, "offers", "", Choice::Grant, Some("partner"), "");
        assert!(permitted(partner, std::slice::from_ref(&grant)));
        let general_grant = record(1, "offers", "", Choice::Grant, None, "");
        assert!(
            !permitted(partner, &[general_grant]),
            "a general grant names no one"
        );
        let refusal = record(2, "offers", "", Choice::Refuse, None, "");
        assert!(!permitted(partner, &[grant.clone(), refusal.clone()]));
        let again = record(3, "offers", "", Choice::Grant, Some("partner"), "");
        assert!(permitted(partner, &[grant, refusal, again]));
    }

    #[test]
    fn gpc_refuses_unchosen_opt_out_purposes_once() {
        let policy = policy();
        let codes = |history: &[ConsentRecord]| -> Vec<String> {
            gpc_refusals(&policy, history)
                .iter()
                .map(|p| p.to_string())
                .collect()
        };
        assert_eq!(codes(&[]), ["news", "promo"]);
        let chosen = [record(1, "promo", "", Choice::Grant, None, "letter")];
        assert_eq!(codes(&chosen), ["news"]);
        let signalled = [record(1, "news", "", Choice::Refuse, None, GPC_EVIDENCE)];
        assert!(codes(&signalled).is_empty(), "only the first visit");
    }
}
