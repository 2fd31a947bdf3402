use std::path::Path;

use super::*;
use crate::domain::{Justification, LegalBasis, RecipientId, Reference};

/// The shipped policy: a courier with its delivery rule, a partner and an
/// authority, which is every kind of request the checks tell apart.
fn policy() -> Policy {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/policy.toml");
    Policy::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// The violations a request should get: field name and message.
type Expected<'a> = Vec<(&'a str, &'a str)>;

fn pairs(violations: Violations) -> Vec<(String, String)> {
    violations
        .into_vec()
        .into_iter()
        .map(|v| (v.field, v.description))
        .collect()
}

fn owned(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(field, message)| (field.to_string(), message.to_string()))
        .collect()
}

#[test]
fn a_check_query_names_each_undeclared_part_with_what_is_declared() {
    let policy = policy();
    let v = policy.version();
    let purposes = format!(
        "`nope` is not a purpose of policy {v} (known: customer_support, order_delivery, \
         partner_offers, promotional_mail)"
    );
    let fields =
        format!("`fax` is not a field of policy {v} (known: email, name, phone, postal_address)");
    let rows: Vec<(&str, &str, Expected)> = vec![
        ("order_delivery", "name", vec![]),
        ("nope", "name", vec![("purpose", &purposes)]),
        ("order_delivery", "fax", vec![("field", &fields)]),
        (
            "nope",
            "fax",
            vec![("purpose", &purposes), ("field", &fields)],
        ),
    ];
    for (purpose, field, expected) in rows {
        let found = policy.check_query(
            &PurposeCode::parse(purpose).unwrap(),
            &FieldName::parse(field).unwrap(),
        );
        assert_eq!(pairs(found), owned(&expected), "{purpose}/{field}");
    }
}

/// `reference` and `justification` "" leave them out.
fn request(
    recipient: &str,
    ground: Ground,
    fields: &[&str],
    reference: &str,
    justification: &str,
) -> DisclosureRequest {
    DisclosureRequest {
        recipient: RecipientId::parse(recipient).unwrap(),
        ground,
        fields: fields
            .iter()
            .map(|f| FieldName::parse(*f).unwrap())
            .collect(),
        reference: (!reference.is_empty()).then(|| Reference::parse(reference).unwrap()),
        justification: (!justification.is_empty())
            .then(|| Justification::parse(justification).unwrap()),
    }
}

#[test]
fn a_disclosure_check_names_every_problem_of_the_request() {
    let policy = policy();
    let v = policy.version();
    let delivery = || Ground::Purpose(PurposeCode::parse("order_delivery").unwrap());
    let offers = || Ground::Purpose(PurposeCode::parse("partner_offers").unwrap());
    let legal = || Ground::Legal(LegalBasis::LegalProcess);
    let nobody = format!("`nobody` is not a recipient of policy {v}");
    let fax = format!("`fax` is not a field of policy {v}");
    let nope = format!("`nope` is not a purpose of policy {v}");
    let rows: Vec<(&str, DisclosureRequest, Expected)> = vec![
        (
            "a courier with the order",
            request("express-courier", delivery(), &["name"], "o-1", ""),
            vec![],
        ),
        (
            "a partner needs no reference",
            request("travel-partner", offers(), &["email"], "", ""),
            vec![],
        ),
        (
            "a legal basis with both",
            request(
                "public-security",
                legal(),
                &["name"],
                "case-1",
                "court order",
            ),
            vec![],
        ),
        (
            "an unknown recipient",
            request("nobody", offers(), &["email"], "", ""),
            vec![("recipient_id", &nobody)],
        ),
        (
            "no field, and an unknown purpose",
            request(
                "travel-partner",
                Ground::Purpose(PurposeCode::parse("nope").unwrap()),
                &[],
                "",
                "",
            ),
            vec![
                ("fields", "must name at least one field"),
                ("purpose", &nope),
            ],
        ),
        (
            "an unknown field and one listed twice",
            request(
                "travel-partner",
                offers(),
                &["email", "fax", "email"],
                "",
                "",
            ),
            vec![
                ("fields[1]", &fax),
                ("fields[2]", "`email` is listed twice"),
            ],
        ),
        (
            "a courier without the order",
            request("express-courier", delivery(), &["name"], "", ""),
            vec![(
                "reference",
                "a delivery disclosure needs the order reference",
            )],
        ),
        (
            "a legal basis without its reference",
            request("public-security", legal(), &["name"], "", "court order"),
            vec![(
                "reference",
                "a legal-basis request needs the notice or case number",
            )],
        ),
        (
            "a legal basis without its justification",
            request("public-security", legal(), &["name"], "case-1", ""),
            vec![(
                "justification",
                "a legal-basis request needs a justification",
            )],
        ),
    ];
    for (name, req, expected) in rows {
        assert_eq!(
            pairs(policy.check_disclosure(&req)),
            owned(&expected),
            "{name}"
        );
    }
}

/// R7 over every legal basis and every recipient category: only an authority
/// may receive data on a legal basis; anyone else is a caller bug named on
/// `recipient_id`, so nothing is decided, released or recorded.
#[test]
fn a_legal_basis_is_accepted_only_for_an_authority_under_every_basis() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/policy.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    // The shipped file has no processor; one is added so that every
    // category is covered.
    let text = format!(
        "{text}\n[[recipients]]\nid = \"mail-house\"\nname = \"Mail House\"\n\
         category = \"processor\"\ncontact = \"ops@mail-house.example\"\n\
         purposes = [\"promotional_mail\"]\n"
    );
    let policy = Policy::parse(&path, &text).unwrap_or_else(|e| panic!("{e}"));
    let by_category = |category: Category| {
        policy
            .recipients()
            .find(|r| r.category == category)
            .unwrap_or_else(|| panic!("no {} recipient", category.as_str()))
            .id
            .to_string()
    };
    for basis in LegalBasis::ALL {
        for category in Category::ALL {
            let recipient = by_category(*category);
            let found = pairs(policy.check_disclosure(&request(
                &recipient,
                Ground::Legal(*basis),
                &["name"],
                "case-1",
                "a person is in danger",
            )));
            let expected = if *category == Category::Authority {
                vec![]
            } else {
                owned(&[(
                    "recipient_id",
                    &format!(
                        "`{recipient}` is a {}: a legal basis releases data only to an authority",
                        category.as_str()
                    ),
                )])
            };
            assert_eq!(found, expected, "{basis:?} to a {}", category.as_str());
        }
    }
}
