//! Erasure that keeps the proof and still honours opt-outs.

use consentd::grpc::pb::{
    self, Choice, Decision, Reason, disclosure_service_client::DisclosureServiceClient,
    subject_rights_service_client::SubjectRightsServiceClient,
};
use tonic::Code;

use crate::helpers::{TestApp, as_actor, spawn_app, violated_fields};

const ID: &str = "C-1042-erase-me";
const VALUES: [(&str, &str); 2] = [
    ("name", "Zhang Wei Unique"),
    ("postal_address", "9 Fuxing Road Unique"),
];

async fn erase(app: &TestApp, subject: &str) -> Result<pb::EraseSubjectResponse, tonic::Status> {
    SubjectRightsServiceClient::new(app.channel.clone())
        .erase_subject(as_actor(
            "privacy-officer",
            pb::EraseSubjectRequest {
                subject_id: subject.into(),
                request_id: String::new(),
            },
        ))
        .await
        .map(|r| r.into_inner())
}

/// A subject who refused promotions, granted partner offers, has personal
/// data, a disclosure and a concern.
async fn a_subject_with_history(app: &TestApp) {
    app.register(ID).await;
    app.record(ID, "promotional_mail", "", Choice::Refuse).await;
    app.record(ID, "partner_offers", "", Choice::Grant).await;
    let mut vault = DisclosureServiceClient::new(app.channel.clone());
    for (field, value) in VALUES {
        vault
            .put_personal_data(pb::PutPersonalDataRequest {
                subject_id: ID.into(),
                field: field.into(),
                value: value.into(),
                collected_for: vec!["order_delivery".into()],
                channel: pb::Channel::Web.into(),
                notice_version: "2026-11".into(),
                request_id: String::new(),
            })
            .await
            .unwrap();
    }
    vault
        .request_disclosure(pb::RequestDisclosureRequest {
            subject_id: ID.into(),
            recipient_id: "express-courier".into(),
            purpose: "order_delivery".into(),
            fields: vec!["name".into(), "postal_address".into()],
            reference: "order-7781".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    pb::concern_service_client::ConcernServiceClient::new(app.channel.clone())
        .file_concern(pb::FileConcernRequest {
            subject_id: ID.into(),
            contact: "zhang@example.com".into(),
            category: pb::ConcernCategory::Misuse.into(),
            description: "please erase me".into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Every row of every table in the schema, as text.
async fn every_row(app: &TestApp) -> String {
    let tables: Vec<String> = app
        .db
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut all = String::new();
    for table in tables {
        for row in app
            .db
            .query(&format!("SELECT t::text FROM {table} t"), &[])
            .await
            .unwrap()
        {
            all.push_str(row.get::<_, &str>(0));
            all.push('\n');
        }
    }
    all
}

#[tokio::test]
async fn after_erasure_no_value_or_id_is_left_but_the_proof_is() {
    let app = spawn_app().await;
    a_subject_with_history(&app).await;
    let before = every_row(&app).await;
    assert!(before.contains(ID), "the setup stores the id");
    let (records, disclosures) = (
        app.count("consent_records").await,
        app.count("disclosures").await,
    );

    let erased = erase(&app, ID).await.unwrap();
    assert!(!erased.already_erased);
    assert!(erased.pseudonym.starts_with("erased-"));

    let after = every_row(&app).await;
    assert!(
        !after.contains(ID),
        "the external id is gone from every table"
    );
    assert!(
        !after.contains("zhang@example.com"),
        "the concern contact is gone"
    );
    assert_eq!(app.count("personal_data").await, 0);
    // The values were encrypted anyway; the ciphertexts are gone too.
    for (_, value) in VALUES {
        assert!(!after.contains(value));
    }
    // The proof stays, under the pseudonym.
    assert_eq!(app.count("consent_records").await, records);
    assert_eq!(app.count("disclosures").await, disclosures);
    let kept: i64 = app
        .db
        .query_one(
            "SELECT count(*) FROM consent_records WHERE subject_id = $1",
            &[&erased.pseudonym],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, records);
    let recorded: String = app
        .db
        .query_one("SELECT erased_by FROM erased_subjects", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded, "privacy-officer", "the erasure is recorded");

    // The history itself is still append-only.
    let error = app
        .db
        .batch_execute("UPDATE consent_records SET subject_id = 'x'")
        .await
        .unwrap_err();
    assert!(
        error
            .as_db_error()
            .unwrap()
            .message()
            .contains("append-only")
    );
}

#[tokio::test]
async fn an_erased_subject_is_denied_for_every_purpose_until_it_registers_again() {
    let app = spawn_app().await;
    a_subject_with_history(&app).await;
    erase(&app, ID).await.unwrap();
    for (purpose, field) in [
        ("promotional_mail", "email"),
        ("order_delivery", "name"),
        ("partner_offers", "email"),
    ] {
        let answer = app.check(ID, purpose, field).await;
        assert_eq!(
            (answer.decision(), answer.reason()),
            (Decision::Deny, Reason::SubjectErased),
            "{purpose}"
        );
    }
    // An id that never existed is still just unknown.
    assert_eq!(
        app.check("C-never", "promotional_mail", "email")
            .await
            .reason(),
        Reason::SubjectUnknown
    );
}

#[tokio::test]
async fn a_refusal_outlives_erasure_when_the_same_id_registers_again() {
    let app = spawn_app().await;
    a_subject_with_history(&app).await;
    erase(&app, ID).await.unwrap();
    app.register(ID).await;

    let promo = app.check(ID, "promotional_mail", "email").await;
    assert_eq!(
        (promo.decision(), promo.reason()),
        (Decision::Deny, Reason::OptedOut)
    );
    // A grant is not carried over: the person must give it again.
    let partner = app.check(ID, "partner_offers", "email").await;
    assert_eq!(
        (partner.decision(), partner.reason()),
        (Decision::Deny, Reason::NoConsent)
    );
    let history = app
        .client
        .clone()
        .list_consent_history(pb::ListConsentHistoryRequest {
            subject_id: ID.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].evidence, "refusal kept from before erasure");
    assert_eq!(history[0].record_id, promo.record_id);
}

#[tokio::test]
async fn erasure_is_idempotent() {
    let app = spawn_app().await;
    a_subject_with_history(&app).await;
    let first = erase(&app, ID).await.unwrap();
    let rows = every_row(&app).await;
    let again = erase(&app, ID).await.unwrap();
    assert!(again.already_erased);
    assert_eq!(again.pseudonym, first.pseudonym);
    assert_eq!(
        every_row(&app).await,
        rows,
        "a second erasure changes nothing"
    );
}

#[tokio::test]
async fn erasing_an_unknown_or_malformed_subject_is_refused_and_writes_nothing() {
    let app = spawn_app().await;
    app.register("C-1").await;
    let rows = every_row(&app).await;
    assert_eq!(
        erase(&app, "C-404").await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        violated_fields(&erase(&app, "").await.unwrap_err()),
        ["subject_id"]
    );
    assert_eq!(every_row(&app).await, rows);
}
