//! `decide`: may field F of subject S be used for purpose P?

use uuid::Uuid;

use chrono::{DateTime, TimeDelta, Utc};

use super::{Basis, Policy, Purpose};
use crate::domain::{Choice, FieldData, FieldName, PurposeCode, SubjectState};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    Deny,
}

impl Outcome {
    /// A stable lower-case name for metrics and span attributes.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
        }
    }
}

/// Why a decision came out as it did. One variant per `consent.v1.Reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    SubjectUnknown,
    SubjectErased,
    FieldNotPermitted,
    Contract,
    ConsentGranted,
    NoConsent,
    ConsentRefused,
    OptedOut,
    NotOptedOut,
    /// DENY: the data is older than the purpose allows and the purpose
    /// requires fresh data (R3).
    StaleData,
    /// Withheld: no value is stored, or it was not collected for this
    /// purpose (R2).
    NotCollected,
}

impl Reason {
    /// A stable lower-case name for logs and span attributes.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::SubjectUnknown => "subject_unknown",
            Reason::SubjectErased => "subject_erased",
            Reason::FieldNotPermitted => "field_not_permitted",
            Reason::Contract => "contract",
            Reason::ConsentGranted => "consent_granted",
            Reason::NoConsent => "no_consent",
            Reason::ConsentRefused => "consent_refused",
            Reason::OptedOut => "opted_out",
            Reason::NotOptedOut => "not_opted_out",
            Reason::StaleData => "stale_data",
            Reason::NotCollected => "not_collected",
        }
    }

    pub const ALL: &'static [Reason] = &[
        Reason::SubjectUnknown,
        Reason::FieldNotPermitted,
        Reason::Contract,
        Reason::ConsentGranted,
        Reason::NoConsent,
        Reason::ConsentRefused,
        Reason::OptedOut,
        Reason::NotOptedOut,
        Reason::StaleData,
        Reason::NotCollected,
    ];

    /// The inverse of [`Reason::as_str`], for reasons read back from storage.
    pub fn from_stored(text: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| r.as_str() == text)
    }
}

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

    let Some(state) = subject else {
        return deny(Reason::SubjectUnknown, None);
    };
    if state.erased {
        return deny(Reason::SubjectErased, None);
    }
    let Some(purpose_def) = policy.purpose(purpose).filter(|p| p.permits(field)) else {
        return deny(Reason::FieldNotPermitted, None);
    };
    let latest = state.latest_covering(purpose, field);
    let latest_choice = latest.map(|c| (c.choice, c.record_id));
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

/// [`decide`], then R3 on the stored field's age: an allowed use of stale
/// data carries `needs_verification`, or is a DENY with `StaleData` when the
/// purpose sets `require_fresh`. `data` is `None` when no value is stored;
/// a Check then says nothing about freshness. Assumes, like [`decide`], a
/// query that passed [`Policy::check_query`].
pub fn decide_with_data(
    policy: &Policy,
    subject: Option<&SubjectState>,
    purpose: &PurposeCode,
    field: &FieldName,
    data: Option<&FieldData>,
    now: DateTime<Utc>,
) -> Decision {
    let decision = decide(policy, subject, purpose, field);
    // An allowed decision means the purpose is declared.
    let Some(purpose_def) = policy.purpose(purpose) else {
        return decision;
    };
    if decision.outcome == Outcome::Deny || !data.is_some_and(|d| is_stale(purpose_def, d, now)) {
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

/// R3: is `data` older than `purpose` allows for its field?
pub fn is_stale(purpose: &Purpose, data: &FieldData, now: DateTime<Utc>) -> bool {
    purpose
        .max_age_days
        .get(&data.field)
        .is_some_and(|days| data.checked_at() + TimeDelta::days(i64::from(*days)) < now)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use proptest::prelude::*;

    use super::*;
    use crate::domain::StoredChoice;

    const POLICY: &str = r#"
version = "test-1"
[[fields]]
id = "name"
[[fields]]
id = "email"
[[fields]]
id = "phone"
[[purposes]]
id = "delivery"
basis = "contract"
fields = ["name", "phone"]
[[purposes]]
id = "partners"
basis = "consent"
fields = ["name", "email"]
[[purposes]]
id = "promo"
basis = "opt_out"
fields = ["name", "email"]
refusal_instructions = "Unsubscribe."
"#;

    fn policy() -> Policy {
        Policy::parse(Path::new("test.toml"), POLICY).unwrap()
    }

    fn p(code: &str) -> PurposeCode {
        PurposeCode::parse(code).unwrap()
    }

    fn f(code: &str) -> FieldName {
        FieldName::parse(code).unwrap()
    }

    /// A choice; `field` "" covers the whole purpose.
    fn choice(purpose: &str, field: &str, choice: Choice, sequence: i64) -> StoredChoice {
        StoredChoice {
            purpose: p(purpose),
            field: (!field.is_empty()).then(|| f(field)),
            choice,
            record_id: Uuid::from_u128(sequence as u128),
            sequence,
            recorded_at: chrono::DateTime::UNIX_EPOCH,
            recipient: None,
        }
    }

    fn state(choices: Vec<StoredChoice>) -> SubjectState {
        SubjectState {
            choices,
            ..Default::default()
        }
    }

    fn check(
        state: Option<&SubjectState>,
        purpose: &str,
        field: &str,
    ) -> (Outcome, Reason, Option<u128>) {
        let d = decide(&policy(), state, &p(purpose), &f(field));
        (d.outcome, d.reason, d.record_id.map(|id| id.as_u128()))
    }

    use Choice::{Grant, Refuse};
    use Outcome::{Allow, Deny};

    /// The violation field names of `check_query`.
    fn violated(purpose: &str, field: &str) -> Vec<String> {
        policy()
            .check_query(&p(purpose), &f(field))
            .into_vec()
            .into_iter()
            .map(|v| v.field)
            .collect()
    }

    #[test]
    fn undeclared_purpose_or_field_is_a_caller_error_not_a_decision() {
        assert_eq!(violated("nope", "name"), ["purpose"]);
        assert_eq!(violated("promo", "fax"), ["field"]);
        // Every offending field at once, not the first only.
        assert_eq!(violated("nope", "fax"), ["purpose", "field"]);
        assert!(violated("promo", "name").is_empty());
        // The message lists what the policy does declare.
        let message = &policy().check_query(&p("nope"), &f("name")).into_vec()[0].description;
        assert_eq!(
            message,
            "`nope` is not a purpose of policy test-1 (known: delivery, partners, promo)"
        );
        let message = &policy().check_query(&p("promo"), &f("fax")).into_vec()[0].description;
        assert_eq!(
            message,
            "`fax` is not a field of policy test-1 (known: email, name, phone)"
        );
    }

    #[test]
    fn an_unchecked_undeclared_purpose_or_field_is_denied_never_allowed() {
        let known = state(vec![choice("partners", "", Grant, 1)]);
        for (purpose, field) in [("nope", "name"), ("promo", "fax"), ("nope", "fax")] {
            assert_eq!(
                check(Some(&known), purpose, field),
                (Deny, Reason::FieldNotPermitted, None),
                "{purpose}/{field}"
            );
        }
    }

    #[test]
    fn an_erased_subject_is_denied_for_every_basis_whatever_it_chose() {
        let erased = SubjectState {
            choices: vec![choice("partners", "", Grant, 1)],
            erased: true,
        };
        for purpose in ["delivery", "partners", "promo"] {
            assert_eq!(
                check(Some(&erased), purpose, "name"),
                (Deny, Reason::SubjectErased, None)
            );
        }
    }

    #[test]
    fn unknown_subject_is_denied_for_every_basis() {
        for purpose in ["delivery", "partners", "promo"] {
            assert_eq!(
                check(None, purpose, "name"),
                (Deny, Reason::SubjectUnknown, None)
            );
        }
    }

    #[test]
    fn a_field_the_purpose_does_not_list_is_denied_whatever_was_granted() {
        let granted = state(vec![choice("partners", "", Grant, 1)]);
        assert_eq!(
            check(Some(&granted), "partners", "phone"),
            (Deny, Reason::FieldNotPermitted, None)
        );
        assert_eq!(
            check(Some(&granted), "delivery", "email"),
            (Deny, Reason::FieldNotPermitted, None)
        );
        assert_eq!(
            check(Some(&granted), "promo", "phone"),
            (Deny, Reason::FieldNotPermitted, None)
        );
    }

    #[test]
    fn contract_purposes_are_allowed_even_after_a_refusal() {
        let refused = state(vec![choice("delivery", "", Refuse, 1)]);
        assert_eq!(
            check(Some(&refused), "delivery", "name"),
            (Allow, Reason::Contract, None)
        );
        assert_eq!(
            check(Some(&state(vec![])), "delivery", "phone"),
            (Allow, Reason::Contract, None)
        );
    }

    /// Every branch of the consent and opt-out table: no record, a
    /// purpose-wide record, a field record, and both in either order.
    #[test]
    fn opt_in_and_opt_out_follow_the_latest_covering_record() {
        type Row = (
            &'static str,
            Vec<StoredChoice>,
            Outcome,
            Reason,
            Option<u128>,
        );
        let rows: Vec<Row> = vec![
            (
                "partners: nothing recorded",
                vec![],
                Deny,
                Reason::NoConsent,
                None,
            ),
            (
                "partners: purpose granted",
                vec![choice("partners", "", Grant, 1)],
                Allow,
                Reason::ConsentGranted,
                Some(1),
            ),
            (
                "partners: purpose refused",
                vec![choice("partners", "", Refuse, 1)],
                Deny,
                Reason::ConsentRefused,
                Some(1),
            ),
            (
                "partners: field granted",
                vec![choice("partners", "email", Grant, 1)],
                Allow,
                Reason::ConsentGranted,
                Some(1),
            ),
            (
                "partners: field refused",
                vec![choice("partners", "email", Refuse, 1)],
                Deny,
                Reason::ConsentRefused,
                Some(1),
            ),
            (
                "partners: purpose granted, then field refused",
                vec![
                    choice("partners", "", Grant, 1),
                    choice("partners", "email", Refuse, 2),
                ],
                Deny,
                Reason::ConsentRefused,
                Some(2),
            ),
            (
                "partners: field refused, then purpose granted",
                vec![
                    choice("partners", "email", Refuse, 1),
                    choice("partners", "", Grant, 2),
                ],
                Allow,
                Reason::ConsentGranted,
                Some(2),
            ),
            (
                "partners: another field granted",
                vec![choice("partners", "name", Grant, 1)],
                Deny,
                Reason::NoConsent,
                None,
            ),
            (
                "partners: another purpose granted",
                vec![choice("promo", "", Grant, 1)],
                Deny,
                Reason::NoConsent,
                None,
            ),
            (
                "promo: nothing recorded",
                vec![],
                Allow,
                Reason::NotOptedOut,
                None,
            ),
            (
                "promo: purpose refused",
                vec![choice("promo", "", Refuse, 1)],
                Deny,
                Reason::OptedOut,
                Some(1),
            ),
            (
                "promo: purpose granted",
                vec![choice("promo", "", Grant, 1)],
                Allow,
                Reason::NotOptedOut,
                Some(1),
            ),
            (
                "promo: field refused",
                vec![choice("promo", "email", Refuse, 1)],
                Deny,
                Reason::OptedOut,
                Some(1),
            ),
            (
                "promo: purpose refused, then field granted",
                vec![
                    choice("promo", "", Refuse, 1),
                    choice("promo", "email", Grant, 2),
                ],
                Allow,
                Reason::NotOptedOut,
                Some(2),
            ),
            (
                "promo: field granted, then purpose refused",
                vec![
                    choice("promo", "email", Grant, 1),
                    choice("promo", "", Refuse, 2),
                ],
                Deny,
                Reason::OptedOut,
                Some(2),
            ),
            (
                "promo: another field refused",
                vec![choice("promo", "name", Refuse, 1)],
                Allow,
                Reason::NotOptedOut,
                None,
            ),
            (
                "promo: another purpose refused",
                vec![choice("partners", "", Refuse, 1)],
                Allow,
                Reason::NotOptedOut,
                None,
            ),
        ];
        for (name, choices, outcome, reason, record) in rows {
            let purpose = name.split(':').next().unwrap();
            let s = state(choices);
            assert_eq!(
                check(Some(&s), purpose, "email"),
                (outcome, reason, record),
                "{name}"
            );
        }
    }

    const FRESH_POLICY: &str = r#"
version = "test-1"
[[fields]]
id = "name"
[[fields]]
id = "postal_address"
[[purposes]]
id = "delivery"
basis = "contract"
fields = ["name", "postal_address"]
max_age_days = { postal_address = 365 }
[[purposes]]
id = "strict"
basis = "contract"
fields = ["name", "postal_address"]
max_age_days = { postal_address = 30 }
require_fresh = true
"#;

    fn data(field: &str, collected_days_ago: i64, verified_days_ago: Option<i64>) -> FieldData {
        let now = now();
        FieldData {
            field: f(field),
            collected_for: vec![p("delivery")],
            collected_at: now - TimeDelta::days(collected_days_ago),
            verified_at: verified_days_ago.map(|d| now - TimeDelta::days(d)),
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::UNIX_EPOCH + TimeDelta::days(20_000)
    }

    #[test]
    fn checks_flag_stale_data_and_deny_it_where_the_purpose_requires_fresh_data() {
        let policy = Policy::parse(Path::new("fresh.toml"), FRESH_POLICY).unwrap();
        let known = state(vec![]);
        type Row = (
            &'static str,
            &'static str,
            Option<FieldData>,
            Outcome,
            Reason,
            bool,
        );
        let rows: Vec<Row> = vec![
            (
                "delivery",
                "postal_address",
                None,
                Allow,
                Reason::Contract,
                false,
            ),
            (
                "delivery",
                "postal_address",
                Some(data("postal_address", 10, None)),
                Allow,
                Reason::Contract,
                false,
            ),
            (
                "delivery",
                "postal_address",
                Some(data("postal_address", 400, None)),
                Allow,
                Reason::Contract,
                true,
            ),
            (
                "delivery",
                "postal_address",
                Some(data("postal_address", 400, Some(3))),
                Allow,
                Reason::Contract,
                false,
            ),
            (
                "delivery",
                "postal_address",
                Some(data("postal_address", 400, Some(366))),
                Allow,
                Reason::Contract,
                true,
            ),
            (
                "delivery",
                "name",
                Some(data("name", 4000, None)),
                Allow,
                Reason::Contract,
                false,
            ),
            (
                "strict",
                "postal_address",
                Some(data("postal_address", 31, None)),
                Deny,
                Reason::StaleData,
                true,
            ),
            (
                "strict",
                "postal_address",
                Some(data("postal_address", 29, None)),
                Allow,
                Reason::Contract,
                false,
            ),
        ];
        for (purpose, field, stored, outcome, reason, needs) in rows {
            let d = decide_with_data(
                &policy,
                Some(&known),
                &p(purpose),
                &f(field),
                stored.as_ref(),
                now(),
            );
            assert_eq!(
                (d.outcome, d.reason, d.needs_verification),
                (outcome, reason, needs),
                "{purpose}/{field}/{stored:?}"
            );
        }
    }

    #[test]
    fn reasons_round_trip_through_their_stored_text() {
        for reason in Reason::ALL {
            assert_eq!(Reason::from_stored(reason.as_str()), Some(*reason));
        }
    }

    fn any_choice() -> impl Strategy<Value = StoredChoice> {
        (
            prop_oneof![Just("delivery"), Just("partners"), Just("promo")],
            prop_oneof![Just(""), Just("name"), Just("email"), Just("phone")],
            prop_oneof![Just(Grant), Just(Refuse)],
            0i64..1000,
        )
            .prop_map(|(purpose, field, c, seq)| choice(purpose, field, c, seq))
    }

    proptest! {
        /// R4: once a refusal is the latest covering record, opt-out never allows.
        #[test]
        fn after_a_refusal_opt_out_never_allows(mut earlier in proptest::collection::vec(any_choice(), 0..12), whole in any::<bool>()) {
            let field = if whole { "" } else { "email" };
            earlier.push(choice("promo", field, Refuse, 5000));
            let s = state(earlier);
            let d = decide(&policy(), Some(&s), &p("promo"), &f("email"));
            prop_assert_eq!(d.outcome, Outcome::Deny);
            prop_assert_eq!(d.reason, Reason::OptedOut);
        }

        /// Opt-in: without a grant that is the latest covering record, never allowed.
        #[test]
        fn consent_allows_only_on_a_latest_grant(choices in proptest::collection::vec(any_choice(), 0..12)) {
            let s = state(choices.clone());
            let d = decide(&policy(), Some(&s), &p("partners"), &f("email"));
            let latest = choices
                .iter()
                .filter(|c| c.purpose.as_str() == "partners" && c.field.as_ref().is_none_or(|x| x.as_str() == "email"))
                .max_by_key(|c| c.sequence);
            prop_assert_eq!(d.outcome == Outcome::Allow, latest.is_some_and(|c| c.choice == Grant));
        }

        /// Order of the stored choices never matters, only their sequence.
        #[test]
        fn decisions_do_not_depend_on_the_order_choices_are_listed(choices in proptest::collection::vec(any_choice(), 0..12)) {
            let mut unique = choices;
            unique.sort_by_key(|c| c.sequence);
            unique.dedup_by_key(|c| c.sequence);
            let forward = state(unique.clone());
            unique.reverse();
            let backward = state(unique);
            for purpose in ["delivery", "partners", "promo"] {
                for field in ["name", "email", "phone"] {
                    prop_assert_eq!(
                        decide(&policy(), Some(&forward), &p(purpose), &f(field)),
                        decide(&policy(), Some(&backward), &p(purpose), &f(field))
                    );
                }
            }
        }
    }
}
