//! `deploy/callers.example.toml`: it loads against the served methods and
//! the shipped policy, grants the statement's callers what their jobs need,
//! and the Kubernetes manifests mount it from the Secret.

use consentd::{
    domain::{LegalBasis, PurposeCode, RecipientId},
    policy::{Access, Callers, Known, Policy, authorize},
};

use super::{deploy, secrets::secret_key_of, yaml};

fn example() -> Callers {
    let policy = Policy::load(&deploy().join("policy.toml")).unwrap_or_else(|e| panic!("{e}"));
    let methods = consentd::grpc::served_rpcs();
    let known = Known {
        policy: Some(&policy),
        rpcs: Some(&methods),
    };
    Callers::load_with(&deploy().join("callers.example.toml"), known)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Whether caller `id` may call `rpc` touching the given ids.
fn may(
    callers: &Callers,
    id: &str,
    rpc: &str,
    purposes: &[&str],
    recipients: &[&str],
    legal_bases: &[LegalBasis],
) -> bool {
    let caller = callers
        .iter()
        .find(|c| c.id.as_str() == id)
        .unwrap_or_else(|| panic!("no caller `{id}`"));
    let purposes: Vec<_> = purposes
        .iter()
        .map(|p| PurposeCode::parse(*p).unwrap())
        .collect();
    let recipients: Vec<_> = recipients
        .iter()
        .map(|r| RecipientId::parse(*r).unwrap())
        .collect();
    let access = Access {
        rpc,
        purposes: &purposes,
        recipients: &recipients,
        legal_bases,
    };
    authorize(caller, &access).is_ok()
}

#[test]
fn the_example_callers_file_grants_each_of_the_statements_callers_its_job_and_no_more() {
    let callers = example();
    let consent = |m: &str| format!("consent.v1.ConsentService/{m}");
    let disclosure = |m: &str| format!("consent.v1.DisclosureService/{m}");
    let mailer = "marketing-mailer";
    for method in [
        "Check",
        "BatchCheck",
        "BulkCheck",
        "WatchChanges",
        "CreateUnsubscribeLinks",
        "CreatePreferenceLinks",
    ] {
        assert!(
            may(
                &callers,
                mailer,
                &consent(method),
                &["promotional_mail"],
                &[],
                &[]
            ),
            "{method}"
        );
    }
    assert!(!may(
        &callers,
        mailer,
        &consent("Check"),
        &["partner_offers"],
        &[],
        &[]
    ));
    assert!(!may(
        &callers,
        mailer,
        &consent("RecordConsent"),
        &[],
        &[],
        &[]
    ));

    let courier = ["express-courier"];
    assert!(may(
        &callers,
        "shipping",
        &disclosure("RequestDisclosure"),
        &["order_delivery"],
        &courier,
        &[]
    ));
    assert!(!may(
        &callers,
        "shipping",
        &disclosure("RequestDisclosure"),
        &["order_delivery"],
        &["travel-partner"],
        &[]
    ));
    assert!(!may(&callers, "shipping", &consent("Check"), &[], &[], &[]));
    assert!(
        callers
            .by_cert_subject("CN=shipping")
            .is_some_and(|c| c.id.as_str() == "shipping"),
        "shipping authenticates with its certificate"
    );

    for method in [
        "RegisterSubject",
        "RecordConsent",
        "GetConsentState",
        "ListConsentHistory",
        "Check",
    ] {
        assert!(
            may(
                &callers,
                "support",
                &consent(method),
                &["customer_support"],
                &[],
                &[]
            ),
            "{method}"
        );
    }
    assert!(!may(
        &callers,
        "support",
        "consent.v1.SubjectRightsService/ExportSubject",
        &[],
        &[],
        &[]
    ));

    // Two different callers can request and approve a disclosure to the
    // authority, so neither approves alone.
    let authority = ["public-security"];
    let legal = [LegalBasis::LegalProcess];
    let approvers: Vec<_> = callers
        .iter()
        .filter(|c| {
            may(
                &callers,
                c.id.as_str(),
                &disclosure("ApproveDisclosure"),
                &[],
                &authority,
                &legal,
            )
        })
        .map(|c| c.id.to_string())
        .collect();
    assert!(approvers.len() >= 2, "{approvers:?}");
    assert!(may(
        &callers,
        "legal-officer-li",
        &disclosure("RequestDisclosure"),
        &[],
        &authority,
        &[LegalBasis::EmergencySafety]
    ));
    assert!(!may(
        &callers,
        "legal-officer-li",
        &disclosure("RequestDisclosure"),
        &[],
        &["travel-partner"],
        &[LegalBasis::EmergencySafety]
    ));

    let dpo = "data-protection-officer";
    for rpc in [
        "consent.v1.ConcernService/ResolveConcern",
        "consent.v1.SubjectRightsService/ExportSubject",
        "consent.v1.SubjectRightsService/EraseSubject",
    ] {
        assert!(may(&callers, dpo, rpc, &[], &[], &[]), "{rpc}");
    }
    assert!(!may(&callers, dpo, &consent("Check"), &[], &[], &[]));
}

/// Each `# Example token: T` comment documents the token of the entry
/// that follows it, so a reader can try the example as written.
#[test]
fn every_example_token_in_the_comments_opens_the_entry_below_it() {
    let callers = example();
    let text = std::fs::read_to_string(deploy().join("callers.example.toml")).unwrap();
    let mut pending = None;
    let mut checked = 0;
    for line in text.lines() {
        if let Some(token) = line.strip_prefix("# Example token: ") {
            pending = Some(token.trim().to_string());
        } else if let Some(id) = line.strip_prefix("id = ") {
            let id = id.trim_matches('"');
            if let Some(token) = pending.take() {
                let found = callers.by_token(&token).map(|c| c.id.to_string());
                assert_eq!(found.as_deref(), Some(id), "token {token}");
                checked += 1;
            }
        }
    }
    let with_tokens = callers
        .iter()
        .filter(|c| matches!(c.credential, consentd::domain::Credential::TokenSha256(_)))
        .count();
    assert_eq!(
        checked, with_tokens,
        "every token caller documents its example token"
    );
}

#[test]
fn the_kubernetes_deployment_mounts_the_callers_file_from_the_secret_and_sets_consentd_callers() {
    let deployment = yaml("k8s/deployment.yaml");
    let secret = yaml("k8s/secret.example.yaml");
    let key = secret_key_of(&deployment, &secret, "CONSENTD_CALLERS");
    // The example Secret carries exactly the example file the repository checks.
    let shipped = std::fs::read_to_string(deploy().join("callers.example.toml")).unwrap();
    assert_eq!(
        secret["stringData"][&key].as_str().map(str::trim_end),
        Some(shipped.trim_end()),
        "secret.example.yaml's `{key}` drifted from callers.example.toml"
    );
}
