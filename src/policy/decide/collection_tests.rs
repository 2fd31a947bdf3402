//! R2 in Check: a stored value serves only the purposes it was collected for.

use std::path::Path;

use chrono::TimeDelta;

use super::*;
use crate::domain::{Choice::*, StoredChoice};

/// One purpose of each basis, all using `name`.
const POLICY: &str = r#"
version = "r2-1"
[[fields]]
id = "name"
[[purposes]]
id = "delivery"
basis = "contract"
fields = ["name"]
[[purposes]]
id = "partners"
basis = "consent"
fields = ["name"]
[[purposes]]
id = "promo"
basis = "opt_out"
fields = ["name"]
refusal_instructions = "Unsubscribe."
"#;

const PURPOSES: [&str; 3] = ["delivery", "partners", "promo"];

fn p(code: &str) -> PurposeCode {
    PurposeCode::parse(code).unwrap()
}

fn now() -> DateTime<Utc> {
    DateTime::UNIX_EPOCH + TimeDelta::days(20_000)
}

/// A subject whose only choice is `choice` on the whole of `purpose`.
fn chose(purpose: &str, choice: Option<Choice>) -> SubjectState {
    SubjectState {
        choices: choice
            .map(|choice| StoredChoice {
                purpose: p(purpose),
                field: None,
                choice,
                record_id: Uuid::from_u128(7),
                sequence: 7,
                recorded_at: DateTime::UNIX_EPOCH,
                recipient: None,
            })
            .into_iter()
            .collect(),
        erased: false,
    }
}

/// `name`, collected a day ago for `purposes`.
fn name_for(purposes: &[&str]) -> FieldData {
    FieldData {
        field: FieldName::parse("name").unwrap(),
        collected_for: purposes.iter().map(|c| p(c)).collect(),
        collected_at: now() - TimeDelta::days(1),
        verified_at: None,
    }
}

fn check(purpose: &str, state: &SubjectState, data: Option<&FieldData>) -> (Outcome, Reason) {
    let policy = Policy::parse(Path::new("r2.toml"), POLICY).unwrap();
    let name = FieldName::parse("name").unwrap();
    let d = decide_with_data(&policy, Some(state), &p(purpose), &name, data, now());
    (d.outcome, d.reason)
}

#[test]
fn a_value_collected_for_another_purpose_only_is_denied_as_not_collected_for_it() {
    use Outcome::*;
    type Row = (
        &'static str,
        Option<Choice>,
        Option<FieldData>,
        (Outcome, Reason),
    );
    let rows: Vec<Row> = vec![
        // Collected for another purpose: an allowed use becomes a DENY…
        (
            "delivery",
            None,
            Some(name_for(&["promo"])),
            (Deny, Reason::NotCollectedForPurpose),
        ),
        (
            "partners",
            Some(Grant),
            Some(name_for(&["delivery"])),
            (Deny, Reason::NotCollectedForPurpose),
        ),
        (
            "promo",
            None,
            Some(name_for(&["partners", "delivery"])),
            (Deny, Reason::NotCollectedForPurpose),
        ),
        (
            "promo",
            Some(Grant),
            Some(name_for(&["delivery"])),
            (Deny, Reason::NotCollectedForPurpose),
        ),
        // …while a denial keeps the consent reason that decided it.
        (
            "partners",
            None,
            Some(name_for(&["delivery"])),
            (Deny, Reason::NoConsent),
        ),
        (
            "partners",
            Some(Refuse),
            Some(name_for(&["delivery"])),
            (Deny, Reason::ConsentRefused),
        ),
        (
            "promo",
            Some(Refuse),
            Some(name_for(&["delivery"])),
            (Deny, Reason::OptedOut),
        ),
        // Collected for this purpose, alone or among others: consent decides.
        (
            "delivery",
            None,
            Some(name_for(&["delivery"])),
            (Allow, Reason::Contract),
        ),
        (
            "partners",
            Some(Grant),
            Some(name_for(&["delivery", "partners"])),
            (Allow, Reason::ConsentGranted),
        ),
        (
            "promo",
            None,
            Some(name_for(&["promo"])),
            (Allow, Reason::NotOptedOut),
        ),
        // Nothing stored: consent alone, as before R2 reached Check.
        ("delivery", None, None, (Allow, Reason::Contract)),
        (
            "partners",
            Some(Grant),
            None,
            (Allow, Reason::ConsentGranted),
        ),
        ("promo", None, None, (Allow, Reason::NotOptedOut)),
    ];
    for (purpose, choice, data, expected) in rows {
        let state = chose(purpose, choice);
        assert_eq!(
            check(purpose, &state, data.as_ref()),
            expected,
            "{purpose} {choice:?} {data:?}"
        );
    }
}

/// Every purpose, every choice, every collection: R2 turns exactly the
/// allowed uses of a value collected elsewhere into a DENY, and changes no
/// other answer.
#[test]
fn r2_changes_only_allowed_uses_of_values_collected_for_other_purposes() {
    let collections: [&[&str]; 5] = [
        &[],
        &["delivery"],
        &["partners"],
        &["promo"],
        &["delivery", "partners", "promo"],
    ];
    for purpose in PURPOSES {
        for choice in [None, Some(Grant), Some(Refuse)] {
            let state = chose(purpose, choice);
            let by_consent = check(purpose, &state, None);
            for collected in collections {
                let data = name_for(collected);
                let expected = if by_consent.0 == Outcome::Allow && !collected.contains(&purpose) {
                    (Outcome::Deny, Reason::NotCollectedForPurpose)
                } else {
                    by_consent
                };
                assert_eq!(
                    check(purpose, &state, Some(&data)),
                    expected,
                    "{purpose} {choice:?} collected for {collected:?}"
                );
            }
        }
    }
}

#[test]
fn a_value_collected_elsewhere_is_denied_before_its_age_is_considered() {
    let policy = Policy::parse(
        Path::new("r2.toml"),
        &format!("{POLICY}\n[[purposes]]\nid = \"strict\"\nbasis = \"contract\"\nfields = [\"name\"]\nmax_age_days = {{ name = 1 }}\nrequire_fresh = true\n"),
    )
    .unwrap();
    let old = FieldData {
        collected_at: now() - TimeDelta::days(400),
        ..name_for(&["delivery"])
    };
    let d = decide_with_data(
        &policy,
        Some(&chose("strict", None)),
        &p("strict"),
        &FieldName::parse("name").unwrap(),
        Some(&old),
        now(),
    );
    assert_eq!(
        (d.outcome, d.reason, d.needs_verification, d.record_id),
        (Outcome::Deny, Reason::NotCollectedForPurpose, false, None)
    );
}
