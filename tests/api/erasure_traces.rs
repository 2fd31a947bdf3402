//! Erasure that leaves nothing pointing back to the person: not in any row
//! of a full dump, while the history stays verifiable, and as often as the
//! same id comes and goes.

use consentd::grpc::pb::{
    self, Choice, ConcernOutcome, Decision, LegalBasis, Reason,
    concern_service_client::ConcernServiceClient,
    disclosure_service_client::DisclosureServiceClient,
    subject_rights_service_client::SubjectRightsServiceClient,
};

use crate::helpers::{TestApp, as_actor, record_request, registration, spawn_app};

async fn erase(app: &TestApp, subject: &str) -> pb::EraseSubjectResponse {
    SubjectRightsServiceClient::new(app.channel.clone())
        .erase_subject(as_actor(
            "privacy-officer",
            pb::EraseSubjectRequest {
                subject_id: subject.into(),
                request_id: String::new(),
            },
        ))
        .await
        .expect("erase_subject")
        .into_inner()
}

#[tokio::test]
async fn erase_register_again_and_erase_again_works_and_keeps_the_opt_out() {
    let app = spawn_app().await;
    let id = "C-comes-and-goes";
    app.register(id).await;
    app.record(id, "promotional_mail", "", Choice::Refuse).await;
    let opted_out = |check: pb::CheckResponse| {
        assert_eq!(
            (check.decision(), check.reason()),
            (Decision::Deny, Reason::OptedOut)
        );
    };

    let first = erase(&app, id).await;
    app.register(id).await;
    opted_out(app.check(id, "promotional_mail", "email").await);

    let second = erase(&app, id).await;
    assert_ne!(first.pseudonym, second.pseudonym);
    app.register(id).await;
    opted_out(app.check(id, "promotional_mail", "email").await);

    // A third time, for good measure: the suppression list follows the id.
    let third = erase(&app, id).await;
    assert_ne!(third.pseudonym, second.pseudonym);
    app.register(id).await;
    opted_out(app.check(id, "promotional_mail", "email").await);
}

/// `pg_dump` of the test's database, as text.
fn pg_dump(app: &TestApp) -> String {
    let bindir = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
        .expect("pg_config runs");
    let bindir = String::from_utf8(bindir.stdout).unwrap();
    let out = std::process::Command::new(std::path::Path::new(bindir.trim()).join("pg_dump"))
        .arg("--dbname")
        .arg(app.db_url())
        .output()
        .expect("pg_dump runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn an_erased_person_leaves_nothing_in_a_full_pg_dump_and_the_history_verifies() {
    let app = spawn_app().await;
    let u = &uuid::Uuid::new_v4().simple().to_string()[..10];
    let id = format!("C-dump-{u}");
    let req = |name: &str| format!("req-{name}-{u}");
    let text = |name: &str| format!("{name}-text-{u}");
    let values = [
        ("name", format!("Zhang Dump {u}")),
        ("phone", format!("+86 138 {u}")),
        ("postal_address", format!("{u} Fuxing Road")),
    ];

    // Registered, with a request id.
    let mut register = registration(&id);
    register.request_id = req("register");
    app.client.clone().register_subject(register).await.unwrap();
    // Consents with evidence and request ids, one naming a recipient.
    let mut refuse = record_request(&id, "promotional_mail", "", Choice::Refuse);
    refuse.evidence = text("evidence");
    refuse.request_id = req("refuse");
    app.client.clone().record_consent(refuse).await.unwrap();
    let mut grant = record_request(&id, "partner_offers", "", Choice::Grant);
    grant.evidence = text("partner-evidence");
    grant.request_id = req("grant");
    app.client.clone().record_consent(grant).await.unwrap();
    // Personal data, each with a request id.
    let mut vault = DisclosureServiceClient::new(app.channel.clone());
    for (field, value) in &values {
        vault
            .put_personal_data(pb::PutPersonalDataRequest {
                subject_id: id.clone(),
                field: (*field).into(),
                value: value.clone(),
                collected_for: vec!["order_delivery".into()],
                channel: pb::Channel::Web.into(),
                notice_version: "2026-11".into(),
                request_id: req(&format!("put-{field}")),
            })
            .await
            .unwrap();
    }
    // A courier disclosure, and one on a legal basis with its justification,
    // approved by a second person.
    vault
        .request_disclosure(as_actor(
            "shipping",
            pb::RequestDisclosureRequest {
                subject_id: id.clone(),
                recipient_id: "express-courier".into(),
                purpose: "order_delivery".into(),
                fields: vec!["name".into(), "postal_address".into()],
                reference: text("order-reference"),
                request_id: req("courier"),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let legal = vault
        .request_disclosure(as_actor(
            "officer-li",
            pb::RequestDisclosureRequest {
                subject_id: id.clone(),
                recipient_id: "public-security".into(),
                fields: vec!["name".into(), "phone".into()],
                legal_basis: LegalBasis::LegalProcess.into(),
                reference: text("case-reference"),
                justification: text("justification"),
                request_id: req("legal"),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    vault
        .approve_disclosure(as_actor(
            "legal-zhang",
            pb::ApproveDisclosureRequest {
                disclosure_id: legal.disclosure_id,
            },
        ))
        .await
        .unwrap();
    // A concern with its contact and description, answered with a resolution.
    let mut concerns = ConcernServiceClient::new(app.channel.clone());
    let concern = concerns
        .file_concern(as_actor(
            "support",
            pb::FileConcernRequest {
                subject_id: id.clone(),
                contact: format!("contact-{u}@example.com"),
                category: pb::ConcernCategory::Misuse.into(),
                description: text("description"),
                request_id: req("concern"),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .concern
        .unwrap();
    concerns
        .resolve_concern(as_actor(
            "dpo",
            pb::ResolveConcernRequest {
                concern_id: concern.concern_id,
                outcome: ConcernOutcome::Fixed.into(),
                resolution: text("resolution"),
            },
        ))
        .await
        .unwrap();

    let mut needles = vec![
        id.clone(),
        format!("contact-{u}"),
        u.to_string(),
        req("register"),
        req("concern"),
    ];
    needles.extend(values.iter().map(|(_, v)| v.clone()));
    for name in [
        "evidence",
        "partner-evidence",
        "order-reference",
        "case-reference",
    ] {
        needles.push(text(name));
    }
    needles.extend(["justification", "description", "resolution"].map(text));
    needles.extend(["refuse", "grant", "courier", "legal"].map(req));
    needles.extend(values.iter().map(|(f, _)| req(&format!("put-{f}"))));
    // The dump sees all of it before the erasure (values are sealed, so
    // they are looked for after only).
    let before = pg_dump(&app);
    for needle in needles
        .iter()
        .filter(|n| !values.iter().any(|(_, v)| v == *n))
    {
        assert!(
            before.contains(needle.as_str()),
            "{needle} is in the dump before"
        );
    }

    erase(&app, &id).await;

    let after = pg_dump(&app);
    let left: Vec<&String> = needles
        .iter()
        .filter(|n| after.contains(n.as_str()))
        .collect();
    assert!(left.is_empty(), "the dump still holds {left:?}");
    // What the law needs kept is still there, under the pseudonym.
    assert!(app.count("consent_records").await >= 2);
    assert!(app.count("disclosures").await >= 2);

    let verified = std::process::Command::new(env!("CARGO_BIN_EXE_consentd"))
        .args(["verify", "--database-url", app.db_url()])
        .output()
        .unwrap();
    assert!(
        verified.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
}

/// The stored digest of a request is keyed: the same retry, checked under
/// another subject-ref key, matches nothing. (A plain hash of the external
/// id and a few guessable fields would match under any key.)
#[tokio::test]
async fn a_retry_is_recognised_only_under_the_key_that_stored_its_digest() {
    let app = spawn_app().await;
    let mut register = registration("C-keyed-digest");
    register.request_id = "req-keyed-digest".into();
    app.client
        .clone()
        .register_subject(register.clone())
        .await
        .unwrap();
    // Under the same key, the retry replays.
    app.client
        .clone()
        .register_subject(register.clone())
        .await
        .expect("a retry replays");

    // A second server on the same database, with another key.
    let dir = crate::cli::tempdir();
    let key_file = dir.join("other.key");
    std::fs::write(&key_file, "b3RoZXIta2V5LW90aGVyLWtleS1vdGhlci1rZXktMDA=\n").unwrap();
    let mut args = crate::helpers::serve_args(consentd::settings::DatabaseArgs {
        database_url: Some(app.db_url().to_string()),
        pg_data_dir: None,
        local_server_url: app.db_url().to_string(),
        max_connections: 2,
        db_connect_timeout_ms: 2000,
        db_pool_wait_timeout_ms: 5000,
    })
    .await;
    args.subject_ref_key_file = Some(key_file);
    let policy = std::sync::Arc::new(consentd::policy::Policy::load(&args.policy).unwrap());
    let database = consentd::store::Database::open(&args.database)
        .await
        .unwrap();
    let other = consentd::startup::Application::with_database(&args, database, policy)
        .await
        .unwrap();
    let addr = other.grpc_addr();
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(other.run_until_stopped(stop.clone().cancelled_owned()));
    let mut client =
        pb::consent_service_client::ConsentServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
    let status = client.register_subject(register).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::AlreadyExists, "{status:?}");
    stop.cancel();
    server.await.unwrap().unwrap();
}
