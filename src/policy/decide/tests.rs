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
        collected_for: vec![p("delivery"), p("strict")],
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
