//! `decide`: may field F of subject S be used for purpose P?

use uuid::Uuid;

use chrono::{DateTime, TimeDelta, Utc};

use super::{Basis, Policy, Purpose};
use crate::domain::{Choice, FieldData, FieldName, PurposeCode, Reason, SubjectState, stored_enum};

stored_enum!(
    /// The answer to a check; its text is a stable name for metrics and span
    /// attributes.
    Outcome {
        Allow => "allow",
        Deny => "deny",
    }
);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    pub reason: Reason,
    /// The consent record that decided it, when one did.
    pub record_id: Option<Uuid>,
    /// R3: allowed, but the stored value is older than the purpose allows;
    /// the caller should ask the person to confirm it.
    pub needs_verification: bool,
}

/// What a decision knows of the subject, however it was read (the
/// database's rows or the server's memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// No subject is registered under the id.
    Unknown,
    /// Erased, and not registered again.
    Erased,
    /// Registered, with the newest choice that covers the purpose and field
    /// and names no recipient (see [`SubjectState::latest_covering`]).
    Registered(Option<(Choice, Uuid)>),
}

impl Standing {
    pub fn of(subject: Option<&SubjectState>, purpose: &PurposeCode, field: &FieldName) -> Self {
        match subject {
            None => Standing::Unknown,
            Some(state) if state.erased => Standing::Erased,
            Some(state) => Standing::Registered(
                state
                    .latest_covering(purpose, field)
                    .map(|c| (c.choice, c.record_id)),
            ),
        }
    }
}

/// What a decision needs of a stored value (R2, R3): never the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataFacts {
    /// The latest collection named the purpose asked about.
    pub collected_for_purpose: bool,
    /// See [`FieldData::checked_at`].
    pub checked_at: DateTime<Utc>,
}

impl DataFacts {
    pub fn of(data: &FieldData, purpose: &PurposeCode) -> Self {
        DataFacts {
            collected_for_purpose: collected_for_purpose(data, purpose),
            checked_at: data.checked_at(),
        }
    }
}

/// Decides one check. `subject` is `None` when no subject is registered
/// under the id. Pure: the same arguments always give the same answer.
///
/// Assumes the query passed [`Policy::check_query`]. A purpose or field the
/// policy does not declare permits nothing, so such a query is denied as
/// `FieldNotPermitted` rather than failing.
pub fn decide(
    policy: &Policy,
    subject: Option<&SubjectState>,
    purpose: &PurposeCode,
    field: &FieldName,
) -> Decision {
    decide_standing(
        policy,
        Standing::of(subject, purpose, field),
        purpose,
        field,
    )
}

/// [`decide`] from what is known of the subject.
pub fn decide_standing(
    policy: &Policy,
    standing: Standing,
    purpose: &PurposeCode,
    field: &FieldName,
) -> Decision {
    let deny = |reason, record_id| Decision {
        outcome: Outcome::Deny,
        reason,
        record_id,
        needs_verification: false,
    };
    let allow = |reason, record_id| Decision {
        outcome: Outcome::Allow,
        reason,
        record_id,
        needs_verification: false,
    };

    let latest_choice = match standing {
        Standing::Unknown => return deny(Reason::SubjectUnknown, None),
        Standing::Erased => return deny(Reason::SubjectErased, None),
        Standing::Registered(latest) => latest,
    };
    let Some(purpose_def) = policy.purpose(purpose).filter(|p| p.permits(field)) else {
        return deny(Reason::FieldNotPermitted, None);
    };
    match (purpose_def.basis, latest_choice) {
        (Basis::Contract, _) => allow(Reason::Contract, None),
        (Basis::Consent, Some((Choice::Grant, id))) => allow(Reason::ConsentGranted, Some(id)),
        (Basis::Consent, Some((Choice::Refuse, id))) => deny(Reason::ConsentRefused, Some(id)),
        (Basis::Consent, None) => deny(Reason::NoConsent, None),
        (Basis::OptOut, Some((Choice::Refuse, id))) => deny(Reason::OptedOut, Some(id)),
        (Basis::OptOut, Some((Choice::Grant, id))) => allow(Reason::NotOptedOut, Some(id)),
        (Basis::OptOut, None) => allow(Reason::NotOptedOut, None),
    }
}

/// [`decide`], then the stored value's collection: R2, a value collected
/// for other purposes is a DENY with `NotCollectedForPurpose`; R3, an
/// allowed use of stale data carries `needs_verification`, or is a DENY with
/// `StaleData` when the purpose sets `require_fresh`. `data` is `None` when
/// no value is stored; consent alone then decides, and a Check says nothing
/// about freshness. Assumes, like [`decide`], a query that passed
/// [`Policy::check_query`].
pub fn decide_with_data(
    policy: &Policy,
    subject: Option<&SubjectState>,
    purpose: &PurposeCode,
    field: &FieldName,
    data: Option<&FieldData>,
    now: DateTime<Utc>,
) -> Decision {
    decide_known(
        policy,
        Standing::of(subject, purpose, field),
        purpose,
        field,
        data.map(|d| DataFacts::of(d, purpose)),
        now,
    )
}

/// [`decide_with_data`] from what is known of the subject and the value.
pub fn decide_known(
    policy: &Policy,
    standing: Standing,
    purpose: &PurposeCode,
    field: &FieldName,
    data: Option<DataFacts>,
    now: DateTime<Utc>,
) -> Decision {
    let decision = decide_standing(policy, standing, purpose, field);
    // An allowed decision means the purpose is declared.
    let (Outcome::Allow, Some(purpose_def), Some(data)) =
        (decision.outcome, policy.purpose(purpose), data)
    else {
        return decision;
    };
    if !data.collected_for_purpose {
        return Decision {
            outcome: Outcome::Deny,
            reason: Reason::NotCollectedForPurpose,
            record_id: None,
            needs_verification: false,
        };
    }
    if !stale_at(purpose_def, field, data.checked_at, now) {
        return decision;
    }
    if purpose_def.require_fresh {
        Decision {
            outcome: Outcome::Deny,
            reason: Reason::StaleData,
            record_id: None,
            needs_verification: true,
        }
    } else {
        Decision {
            needs_verification: true,
            ..decision
        }
    }
}

/// R2: a stored value may serve only the purposes it was collected for.
pub fn collected_for_purpose(data: &FieldData, purpose: &PurposeCode) -> bool {
    data.collected_for.contains(purpose)
}

/// R3: is `data` older than `purpose` allows for its field?
pub fn is_stale(purpose: &Purpose, data: &FieldData, now: DateTime<Utc>) -> bool {
    stale_at(purpose, &data.field, data.checked_at(), now)
}

fn stale_at(
    purpose: &Purpose,
    field: &FieldName,
    checked_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> bool {
    purpose
        .max_age_days
        .get(field)
        .is_some_and(|days| checked_at + TimeDelta::days(i64::from(*days)) < now)
}

#[cfg(test)]
mod collection_tests;
#[cfg(test)]
mod tests;
