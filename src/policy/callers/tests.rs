//! Tests of the permission rules and the credential lookups.

use super::*;
use crate::domain::{Actor, CallerId};

fn purpose(code: &str) -> PurposeCode {
    PurposeCode::parse(code).unwrap()
}

fn recipient(id: &str) -> RecipientId {
    RecipientId::parse(id).unwrap()
}

fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A shipping system: one exact method, one service-wide wildcard, and a
/// purpose, a recipient and a legal basis of its own.
fn shipping() -> Caller {
    Caller {
        id: CallerId::parse("shipping").unwrap(),
        credential: Credential::CertSubject("CN=shipping".into()),
        rpcs: vec![
            "consent.v1.DisclosureService/RequestDisclosure".into(),
            "consent.v1.ConcernService/*".into(),
        ],
        purposes: vec![purpose("order_delivery")],
        recipients: vec![recipient("express-courier")],
        legal_bases: vec![LegalBasis::EmergencySafety],
    }
}

fn token_caller(id: &str, token: &str) -> Caller {
    Caller {
        id: CallerId::parse(id).unwrap(),
        credential: Credential::TokenSha256(sha256(token)),
        rpcs: vec!["consent.v1.ConsentService/Check".into()],
        purposes: vec![],
        recipients: vec![],
        legal_bases: vec![],
    }
}

#[test]
fn authorize_allows_exactly_what_the_entry_lists_and_names_the_first_rule_that_refuses() {
    let delivery = [purpose("order_delivery")];
    let mail = [purpose("promotional_mail")];
    let both = [purpose("order_delivery"), purpose("promotional_mail")];
    let courier = [recipient("express-courier")];
    let partner = [recipient("travel-partner")];
    let emergency = [LegalBasis::EmergencySafety];
    let process = [LegalBasis::LegalProcess];
    let disclose = "consent.v1.DisclosureService/RequestDisclosure";
    let access = |rpc, purposes, recipients, legal_bases| Access {
        rpc,
        purposes,
        recipients,
        legal_bases,
    };
    let cases: &[(&str, Access<'_>, Result<(), Refusal>)] = &[
        (
            "exact rpc, nothing else touched",
            access(disclose, &[], &[], &[]),
            Ok(()),
        ),
        (
            "exact rpc with its purpose, recipient and legal basis",
            access(disclose, &delivery, &courier, &emergency),
            Ok(()),
        ),
        (
            "wildcard service",
            access("consent.v1.ConcernService/FileConcern", &[], &[], &[]),
            Ok(()),
        ),
        (
            "another method of an exact rpc's service",
            access(
                "consent.v1.DisclosureService/ApproveDisclosure",
                &[],
                &[],
                &[],
            ),
            Err(Refusal::Rpc),
        ),
        (
            "another service",
            access("consent.v1.ConsentService/Check", &delivery, &[], &[]),
            Err(Refusal::Rpc),
        ),
        (
            "a purpose it does not hold",
            access(disclose, &mail, &courier, &[]),
            Err(Refusal::Purpose(purpose("promotional_mail"))),
        ),
        (
            "one purpose of two it does not hold",
            access(disclose, &both, &courier, &[]),
            Err(Refusal::Purpose(purpose("promotional_mail"))),
        ),
        (
            "a recipient it does not hold",
            access(disclose, &delivery, &partner, &[]),
            Err(Refusal::Recipient(recipient("travel-partner"))),
        ),
        (
            "a legal basis it does not hold",
            access(disclose, &delivery, &courier, &process),
            Err(Refusal::LegalBasis(LegalBasis::LegalProcess)),
        ),
        (
            "rpc is checked before purposes",
            access("consent.v1.ConsentService/Check", &mail, &partner, &process),
            Err(Refusal::Rpc),
        ),
        (
            "purposes are checked before recipients",
            access(disclose, &mail, &partner, &process),
            Err(Refusal::Purpose(purpose("promotional_mail"))),
        ),
        (
            "recipients are checked before legal bases",
            access(disclose, &delivery, &partner, &process),
            Err(Refusal::Recipient(recipient("travel-partner"))),
        ),
    ];
    let caller = shipping();
    for (name, access, expected) in cases {
        assert_eq!(&authorize(&caller, access), expected, "{name}");
    }
}

#[test]
fn a_service_wildcard_matches_every_method_of_that_service_and_nothing_else() {
    let wildcard = "consent.v1.ConcernService/*";
    let cases = [
        ("consent.v1.ConcernService/FileConcern", true),
        ("consent.v1.ConcernService/ListConcerns", true),
        ("consent.v1.ConcernService/", false),
        ("consent.v1.ConcernServiceX/FileConcern", false),
        ("consent.v1.Concern/FileConcern", false),
        ("consent.v2.ConcernService/FileConcern", false),
        ("consent.v1.ConcernService/Nested/Method", false),
        ("consent.v1.ConsentService/Check", false),
    ];
    for (rpc, expected) in cases {
        assert_eq!(rpc_matches(wildcard, rpc), expected, "{wildcard} vs {rpc}");
    }
    let exact = "consent.v1.ConsentService/Check";
    assert!(rpc_matches(exact, exact));
    assert!(!rpc_matches(exact, "consent.v1.ConsentService/CheckAll"));
    assert!(!rpc_matches(exact, "consent.v1.ConsentService/Chec"));
    assert!(!rpc_matches(exact, "consent.v1.ConsentService/*"));
}

#[test]
fn each_refusal_names_its_rule_in_a_stable_reason() {
    let cases = [
        (Refusal::Rpc, "RPC_NOT_PERMITTED"),
        (
            Refusal::Purpose(purpose("promotional_mail")),
            "PURPOSE_NOT_PERMITTED",
        ),
        (
            Refusal::Recipient(recipient("travel-partner")),
            "RECIPIENT_NOT_PERMITTED",
        ),
        (
            Refusal::LegalBasis(LegalBasis::LegalProcess),
            "LEGAL_BASIS_NOT_PERMITTED",
        ),
    ];
    for (refusal, reason) in cases {
        assert_eq!(refusal.reason(), reason, "{refusal:?}");
    }
}

#[test]
fn a_bearer_token_finds_only_the_caller_holding_its_hash() {
    let callers = Callers {
        callers: vec![
            shipping(),
            token_caller("marketing-mailer", "mailer-secret"),
            token_caller("support", "support-secret"),
        ],
    };
    let id = |token: &str| callers.by_token(token).map(|c| c.id.to_string());
    assert_eq!(id("mailer-secret").as_deref(), Some("marketing-mailer"));
    assert_eq!(id("support-secret").as_deref(), Some("support"));
    assert_eq!(id("mailer-secret "), None);
    assert_eq!(id(""), None);
    // The hex of a hash is not a token, nor is a certificate subject.
    assert_eq!(id("CN=shipping"), None);
    let hash: String = sha256("mailer-secret")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(id(&hash), None);
}

#[test]
fn a_certificate_subject_finds_only_the_caller_with_that_exact_subject() {
    let callers = Callers {
        callers: vec![token_caller("marketing-mailer", "CN=shipping"), shipping()],
    };
    let id = |subject: &str| callers.by_cert_subject(subject).map(|c| c.id.to_string());
    assert_eq!(id("CN=shipping").as_deref(), Some("shipping"));
    assert_eq!(id("CN=Shipping"), None);
    assert_eq!(id("CN=shipping,O=x"), None);
    assert_eq!(id(""), None);
}

#[test]
fn the_actor_of_a_caller_is_its_id() {
    let id = CallerId::parse("legal-officer-li").unwrap();
    assert_eq!(Actor::from(&id).as_str(), "legal-officer-li");
}
