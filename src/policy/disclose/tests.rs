use std::path::Path;

use uuid::Uuid;

use super::*;
use crate::domain::StoredChoice;

const POLICY: &str = r#"
version = "test-1"
[[fields]]
id = "name"
[[fields]]
id = "postal_address"
[[fields]]
id = "phone"
[[fields]]
id = "email"
[[purposes]]
id = "order_delivery"
basis = "contract"
fields = ["name", "postal_address", "phone"]
max_age_days = { postal_address = 365 }
[[purposes]]
id = "partner_offers"
basis = "consent"
fields = ["name", "email"]
[[purposes]]
id = "fresh_offers"
basis = "consent"
fields = ["name", "email"]
max_age_days = { email = 30 }
require_fresh = true
[[recipients]]
id = "express-courier"
name = "Express"
category = "courier"
contact = "c@example.com"
purposes = ["order_delivery"]
[[recipients]]
id = "travel-partner"
name = "Travel"
category = "partner"
contact = "t@example.com"
purposes = ["partner_offers", "fresh_offers"]
[[recipients]]
id = "other-partner"
name = "Other"
category = "partner"
contact = "o@example.com"
purposes = ["partner_offers"]
[[recipients]]
id = "public-security"
name = "Police"
category = "authority"
contact = "110"
[[disclosure_rules]]
category = "courier"
purpose = "order_delivery"
fields = ["name", "postal_address"]
"#;

fn policy() -> Policy {
    Policy::parse(Path::new("test.toml"), POLICY).unwrap_or_else(|e| panic!("{e}"))
}

fn f(code: &str) -> FieldName {
    FieldName::parse(code).unwrap()
}

fn p(code: &str) -> PurposeCode {
    PurposeCode::parse(code).unwrap()
}

fn now() -> DateTime<Utc> {
    DateTime::UNIX_EPOCH + TimeDelta::days(20_000)
}

/// Every field stored, collected for every purpose, `age` days ago.
fn all_data(age: i64) -> Vec<FieldData> {
    ["name", "postal_address", "phone", "email"]
        .into_iter()
        .map(|field| FieldData {
            field: f(field),
            collected_for: vec![p("order_delivery"), p("partner_offers"), p("fresh_offers")],
            collected_at: now() - TimeDelta::days(age),
            verified_at: None,
        })
        .collect()
}

/// A choice for a whole purpose; `recipient` "" is a general one.
fn choice(purpose: &str, recipient: &str, choice: Choice, sequence: i64) -> StoredChoice {
    StoredChoice {
        purpose: p(purpose),
        field: None,
        choice,
        record_id: Uuid::from_u128(sequence as u128),
        sequence,
        recorded_at: DateTime::UNIX_EPOCH,
        recipient: (!recipient.is_empty()).then(|| RecipientId::parse(recipient).unwrap()),
    }
}

fn request(recipient: &str, ground: Ground, fields: &[&str], reference: &str) -> DisclosureRequest {
    DisclosureRequest {
        recipient: RecipientId::parse(recipient).unwrap(),
        ground,
        fields: fields.iter().map(|x| f(x)).collect(),
        reference: (!reference.is_empty()).then(|| Reference::parse(reference).unwrap()),
        justification: (!reference.is_empty())
            .then(|| Justification::parse("court order").unwrap()),
    }
}

fn purpose(code: &str) -> Ground {
    Ground::Purpose(p(code))
}

const RELEASE: FieldOutcome = FieldOutcome::Release {
    needs_verification: false,
};
const STALE: FieldOutcome = FieldOutcome::Release {
    needs_verification: true,
};
fn withhold(reason: Reason) -> FieldOutcome {
    FieldOutcome::Withhold(reason)
}

use Choice::{Grant, Refuse};
use DisclosureStatus::{Denied, Partial, PendingApproval, Released};

/// One row per rule: the request, what is stored, and the expected
/// status and per-field outcomes.
#[test]
fn each_disclosure_rule_decides_as_the_statement_says() {
    type Row = (
        &'static str,
        DisclosureRequest,
        Vec<StoredChoice>,
        Vec<FieldData>,
        DisclosureStatus,
        Vec<FieldOutcome>,
    );
    let rows: Vec<Row> = vec![
        (
            "R6: a courier gets name and address for an order",
            request(
                "express-courier",
                purpose("order_delivery"),
                &["name", "postal_address"],
                "order-7781",
            ),
            vec![],
            all_data(1),
            Released,
            vec![RELEASE, RELEASE],
        ),
        (
            "R6: a courier asking for the phone gets it withheld, even on a contract purpose",
            request(
                "express-courier",
                purpose("order_delivery"),
                &["name", "postal_address", "phone"],
                "order-7781",
            ),
            vec![],
            all_data(1),
            Partial,
            vec![RELEASE, RELEASE, withhold(Reason::FieldNotPermitted)],
        ),
        (
            "R6: a courier gets nothing for a purpose that is not delivery",
            request(
                "express-courier",
                purpose("partner_offers"),
                &["name"],
                "order-7781",
            ),
            vec![choice("partner_offers", "express-courier", Grant, 1)],
            all_data(1),
            Denied,
            vec![withhold(Reason::FieldNotPermitted)],
        ),
        (
            "R3: an old address goes out flagged for verification",
            request(
                "express-courier",
                purpose("order_delivery"),
                &["postal_address"],
                "order-7781",
            ),
            vec![],
            all_data(400),
            Released,
            vec![STALE],
        ),
        (
            "R2: nothing stored is withheld as not collected",
            request(
                "express-courier",
                purpose("order_delivery"),
                &["name", "postal_address"],
                "order-7781",
            ),
            vec![],
            all_data(1)
                .into_iter()
                .filter(|d| d.field.as_str() == "name")
                .collect(),
            Partial,
            vec![RELEASE, withhold(Reason::NotCollected)],
        ),
        (
            "R2: data collected for another purpose is withheld as not collected",
            request(
                "express-courier",
                purpose("order_delivery"),
                &["name"],
                "order-7781",
            ),
            vec![],
            vec![FieldData {
                field: f("name"),
                collected_for: vec![p("partner_offers")],
                collected_at: now(),
                verified_at: None,
            }],
            Denied,
            vec![withhold(Reason::NotCollected)],
        ),
        (
            "R5: a partner without permission is denied",
            request(
                "travel-partner",
                purpose("partner_offers"),
                &["name", "email"],
                "",
            ),
            vec![],
            all_data(1),
            Denied,
            vec![withhold(Reason::NoConsent), withhold(Reason::NoConsent)],
        ),
        (
            "R5: a general grant that names no recipient is not enough",
            request("travel-partner", purpose("partner_offers"), &["email"], ""),
            vec![choice("partner_offers", "", Grant, 1)],
            all_data(1),
            Denied,
            vec![withhold(Reason::NoConsent)],
        ),
        (
            "R5: a permission naming the partner serves it",
            request(
                "travel-partner",
                purpose("partner_offers"),
                &["name", "email"],
                "",
            ),
            vec![choice("partner_offers", "travel-partner", Grant, 1)],
            all_data(1),
            Released,
            vec![RELEASE, RELEASE],
        ),
        (
            "R5: a permission naming another partner does not serve this one",
            request("other-partner", purpose("partner_offers"), &["email"], ""),
            vec![choice("partner_offers", "travel-partner", Grant, 1)],
            all_data(1),
            Denied,
            vec![withhold(Reason::NoConsent)],
        ),
        (
            "R5: a later general refusal withdraws the partner's permission",
            request("travel-partner", purpose("partner_offers"), &["email"], ""),
            vec![
                choice("partner_offers", "travel-partner", Grant, 1),
                choice("partner_offers", "", Refuse, 2),
            ],
            all_data(1),
            Denied,
            vec![withhold(Reason::ConsentRefused)],
        ),
        (
            "R5: a later general grant neither gives nor withdraws the partner's permission",
            request("travel-partner", purpose("partner_offers"), &["email"], ""),
            vec![
                choice("partner_offers", "travel-partner", Grant, 1),
                choice("partner_offers", "", Grant, 2),
            ],
            all_data(1),
            Released,
            vec![RELEASE],
        ),
        (
            "R5: a general grant after a general refusal does not restore the partner's permission",
            request("travel-partner", purpose("partner_offers"), &["email"], ""),
            vec![
                choice("partner_offers", "travel-partner", Grant, 1),
                choice("partner_offers", "", Refuse, 2),
                choice("partner_offers", "", Grant, 3),
            ],
            all_data(1),
            Denied,
            vec![withhold(Reason::ConsentRefused)],
        ),
        (
            "R5: a permission given again after a refusal serves the partner again",
            request("travel-partner", purpose("partner_offers"), &["email"], ""),
            vec![
                choice("partner_offers", "", Refuse, 1),
                choice("partner_offers", "travel-partner", Grant, 2),
            ],
            all_data(1),
            Released,
            vec![RELEASE],
        ),
        (
            "R5: a field the purpose does not use is not permitted",
            request("travel-partner", purpose("partner_offers"), &["phone"], ""),
            vec![choice("partner_offers", "travel-partner", Grant, 1)],
            all_data(1),
            Denied,
            vec![withhold(Reason::FieldNotPermitted)],
        ),
        (
            "R3: require_fresh turns stale data into a denial",
            request(
                "travel-partner",
                purpose("fresh_offers"),
                &["name", "email"],
                "",
            ),
            vec![choice("fresh_offers", "travel-partner", Grant, 1)],
            all_data(31),
            Partial,
            vec![RELEASE, withhold(Reason::StaleData)],
        ),
        (
            "R5: an authority gets nothing on a purpose",
            request(
                "public-security",
                purpose("order_delivery"),
                &["name"],
                "case-1",
            ),
            vec![],
            all_data(1),
            Denied,
            vec![withhold(Reason::FieldNotPermitted)],
        ),
        (
            "R7: legal process waits for approval",
            request(
                "public-security",
                Ground::Legal(LegalBasis::LegalProcess),
                &["name", "phone"],
                "case-1",
            ),
            vec![],
            all_data(1),
            PendingApproval,
            vec![RELEASE, RELEASE],
        ),
        (
            "R7: protecting rights or property waits for approval",
            request(
                "public-security",
                Ground::Legal(LegalBasis::ProtectRightsProperty),
                &["name"],
                "case-1",
            ),
            vec![],
            all_data(1),
            PendingApproval,
            vec![RELEASE],
        ),
        (
            "R7: an emergency is released at once",
            request(
                "public-security",
                Ground::Legal(LegalBasis::EmergencySafety),
                &["name", "phone"],
                "case-1",
            ),
            vec![],
            all_data(1),
            Released,
            vec![RELEASE, RELEASE],
        ),
        (
            "R7: a legal basis releases only what is stored",
            request(
                "public-security",
                Ground::Legal(LegalBasis::LegalProcess),
                &["email"],
                "case-1",
            ),
            vec![],
            vec![],
            Denied,
            vec![withhold(Reason::NotCollected)],
        ),
    ];
    for (name, req, choices, data, status, outcomes) in rows {
        let state = SubjectState {
            choices,
            ..Default::default()
        };
        let facts = DisclosureFacts {
            subject: Some(&state),
            data: &data,
            now: now(),
        };
        let decision = decide_disclosure(&policy(), facts, &req);
        assert_eq!(decision.status, status, "{name}");
        let got: Vec<_> = decision.fields.iter().map(|(_, o)| *o).collect();
        assert_eq!(got, outcomes, "{name}");
    }
}

#[test]
fn only_an_emergency_release_is_due_for_review_after_72_hours() {
    let state = SubjectState::default();
    let data = all_data(1);
    let facts = DisclosureFacts {
        subject: Some(&state),
        data: &data,
        now: now(),
    };
    for (basis, due) in [
        (
            LegalBasis::EmergencySafety,
            Some(now() + TimeDelta::hours(72)),
        ),
        (LegalBasis::LegalProcess, None),
        (LegalBasis::ProtectRightsProperty, None),
    ] {
        let req = request("public-security", Ground::Legal(basis), &["name"], "case-1");
        assert_eq!(
            decide_disclosure(&policy(), facts, &req).review_due,
            due,
            "{basis:?}"
        );
    }
}

#[test]
fn an_unknown_subject_gets_nothing_released() {
    let facts = DisclosureFacts {
        subject: None,
        data: &[],
        now: now(),
    };
    let req = request(
        "public-security",
        Ground::Legal(LegalBasis::EmergencySafety),
        &["name"],
        "case-1",
    );
    let decision = decide_disclosure(&policy(), facts, &req);
    assert_eq!(decision.status, Denied);
    assert_eq!(decision.fields[0].1, withhold(Reason::SubjectUnknown));
    assert_eq!(decision.review_due, None);
}

#[test]
fn requests_the_policy_cannot_decide_name_every_bad_field() {
    let state = SubjectState::default();
    let facts = DisclosureFacts {
        subject: Some(&state),
        data: &[],
        now: now(),
    };
    let violated = |req: DisclosureRequest| -> Vec<String> {
        let violations = policy().check_disclosure(&req);
        // Nothing goes out on a request the policy cannot decide.
        let decision = decide_disclosure(&policy(), facts, &req);
        assert_eq!(decision.status, Denied);
        assert!(
            decision
                .fields
                .iter()
                .all(|(_, o)| *o == withhold(Reason::FieldNotPermitted))
        );
        violations.into_vec().into_iter().map(|v| v.field).collect()
    };
    assert_eq!(
        violated(request(
            "nobody",
            purpose("order_delivery"),
            &["name"],
            "o-1"
        )),
        ["recipient_id"]
    );
    assert_eq!(
        violated(request(
            "express-courier",
            purpose("order_delivery"),
            &["name", "fax", "name"],
            "o-1"
        )),
        ["fields[1]", "fields[2]"]
    );
    assert_eq!(
        violated(request("express-courier", purpose("nope"), &[], "o-1")),
        ["fields", "purpose"]
    );
    assert_eq!(
        violated(request(
            "express-courier",
            purpose("order_delivery"),
            &["name"],
            ""
        )),
        ["reference"]
    );
    assert_eq!(
        violated(request(
            "public-security",
            Ground::Legal(LegalBasis::LegalProcess),
            &["name"],
            ""
        )),
        ["reference", "justification"]
    );
}
