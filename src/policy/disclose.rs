//! `decide_disclosure`: what may go to a recipient, and why the rest may not.
//!
//! Pure like [`decide`](super::decide): the caller reads the subject's
//! choices and the metadata of its stored fields (never the values) and
//! passes the clock in, so every rule is tested here without a database.

use chrono::{DateTime, TimeDelta, Utc};

use super::{
    Category, Policy,
    decide::{collected_for_purpose, is_stale},
};
use crate::domain::{
    Choice, DisclosureStatus, FieldData, FieldName, Justification, LegalBasis, PurposeCode, Reason,
    RecipientId, Reference, SubjectState,
};

/// How long after an emergency release its review is due (R7 (3)).
pub const EMERGENCY_REVIEW_HOURS: i64 = 72;

/// Why data would go out: a purpose of the policy, or a legal basis (R7),
/// which then is the purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ground {
    Purpose(PurposeCode),
    Legal(LegalBasis),
}

/// A disclosure request, parsed but not yet checked against the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisclosureRequest {
    pub recipient: RecipientId,
    pub ground: Ground,
    pub fields: Vec<FieldName>,
    pub reference: Option<Reference>,
    pub justification: Option<Justification>,
}

/// What is known about the subject when deciding.
#[derive(Debug, Clone, Copy)]
pub struct DisclosureFacts<'a> {
    /// `None` when no subject is registered under the id.
    pub subject: Option<&'a SubjectState>,
    /// The stored fields of the subject, without their values.
    pub data: &'a [FieldData],
    pub now: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldOutcome {
    Release { needs_verification: bool },
    Withhold(Reason),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisclosureDecision {
    pub status: DisclosureStatus,
    /// One outcome per requested field, in request order.
    pub fields: Vec<(FieldName, FieldOutcome)>,
    /// Set for an emergency release: when a person must review it.
    pub review_due: Option<DateTime<Utc>>,
}

impl DisclosureDecision {
    pub fn released(&self) -> impl Iterator<Item = (&FieldName, bool)> {
        self.fields.iter().filter_map(|(f, o)| match o {
            FieldOutcome::Release { needs_verification } => Some((f, *needs_verification)),
            FieldOutcome::Withhold(_) => None,
        })
    }
}

/// Decides one disclosure request.
///
/// Assumes the request passed [`Policy::check_disclosure`]. One that did
/// not is denied whole (`FieldNotPermitted` for every field), so nothing
/// goes out on a request the policy cannot decide.
pub fn decide_disclosure(
    policy: &Policy,
    facts: DisclosureFacts<'_>,
    request: &DisclosureRequest,
) -> DisclosureDecision {
    let recipient = policy.recipient(&request.recipient);
    let purpose = match &request.ground {
        Ground::Purpose(code) => policy.purpose(code),
        Ground::Legal(_) => None,
    };
    let Some(recipient) = recipient.filter(|_| policy.check_disclosure(request).is_empty()) else {
        return DisclosureDecision {
            status: DisclosureStatus::Denied,
            fields: request
                .fields
                .iter()
                .map(|f| (f.clone(), FieldOutcome::Withhold(Reason::FieldNotPermitted)))
                .collect(),
            review_due: None,
        };
    };
    let courier_rule = purpose.and_then(|p| policy.disclosure_rule(recipient.category, &p.code));

    let stored = |field: &FieldName| facts.data.iter().find(|d| &d.field == field);
    let outcomes: Vec<(FieldName, FieldOutcome)> = request
        .fields
        .iter()
        .map(|field| {
            let outcome = match (facts.subject, purpose) {
                (None, _) => FieldOutcome::Withhold(Reason::SubjectUnknown),
                // R7: the law is the purpose; only what is stored can go.
                (Some(_), None) => match stored(field) {
                    None => FieldOutcome::Withhold(Reason::NotCollected),
                    Some(_) => FieldOutcome::Release {
                        needs_verification: false,
                    },
                },
                (Some(state), Some(purpose)) => {
                    let permitted = if !purpose.permits(field) {
                        Err(Reason::FieldNotPermitted)
                    } else if let Some(rule) = courier_rule {
                        // R6: exactly the rule's fields, whatever was asked.
                        if rule.fields.contains(field) {
                            Ok(())
                        } else {
                            Err(Reason::FieldNotPermitted)
                        }
                    } else if !recipient.purposes.contains(&purpose.code)
                        || recipient.category == Category::Courier
                    {
                        Err(Reason::FieldNotPermitted)
                    } else {
                        // R5: only a permission that names this recipient.
                        match state.permission_for_recipient(&purpose.code, field, &recipient.id) {
                            Some(c) if c.choice == Choice::Grant => Ok(()),
                            Some(_) => Err(Reason::ConsentRefused),
                            None => Err(Reason::NoConsent),
                        }
                    };
                    match (permitted, stored(field)) {
                        (Err(reason), _) => FieldOutcome::Withhold(reason),
                        (Ok(()), None) => FieldOutcome::Withhold(Reason::NotCollected),
                        // R2: not collected for this purpose, not usable for it.
                        (Ok(()), Some(data)) if !collected_for_purpose(data, &purpose.code) => {
                            FieldOutcome::Withhold(Reason::NotCollected)
                        }
                        (Ok(()), Some(data)) => {
                            let stale = is_stale(purpose, data, facts.now);
                            if stale && purpose.require_fresh {
                                FieldOutcome::Withhold(Reason::StaleData)
                            } else {
                                FieldOutcome::Release {
                                    needs_verification: stale,
                                }
                            }
                        }
                    }
                }
            };
            (field.clone(), outcome)
        })
        .collect();

    let released = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, FieldOutcome::Release { .. }))
        .count();
    let legal = match &request.ground {
        Ground::Legal(basis) => Some(*basis),
        Ground::Purpose(_) => None,
    };
    let status = match (released, legal) {
        (0, _) => DisclosureStatus::Denied,
        (_, Some(basis)) if basis.needs_approval() => DisclosureStatus::PendingApproval,
        (n, _) if n == outcomes.len() => DisclosureStatus::Released,
        _ => DisclosureStatus::Partial,
    };
    let review_due = (legal == Some(LegalBasis::EmergencySafety) && released > 0)
        .then(|| facts.now + TimeDelta::hours(EMERGENCY_REVIEW_HOURS));
    DisclosureDecision {
        status,
        fields: outcomes,
        review_due,
    }
}

#[cfg(test)]
mod tests;
