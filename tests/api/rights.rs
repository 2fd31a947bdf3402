//! The right of access: ExportSubject and `consentd export-subject`.

use std::collections::BTreeSet;

use consentd::{
    grpc::pb::{
        self, Choice, concern_service_client::ConcernServiceClient,
        disclosure_service_client::DisclosureServiceClient,
        subject_rights_service_client::SubjectRightsServiceClient,
    },
    store::EXPORTED_TABLES,
};
use tonic::Code;

use crate::helpers::{
    TestApp, as_actor, policy_path, spawn_app, test_data_keys_file, violated_fields,
};

const VALUES: [(&str, &str); 3] = [
    ("name", "Han Meimei"),
    ("postal_address", "1 Nanjing Road, Shanghai"),
    ("phone", "+86 21 5555 0100"),
];

/// A subject with something in every table that holds subject data, plus a
/// second subject whose data must not leak into the first one's export.
async fn a_subject_with_everything(app: &TestApp) {
    for subject in ["C-1", "C-2"] {
        app.register(subject).await;
    }
    app.record("C-1", "promotional_mail", "", Choice::Refuse)
        .await;
    app.record("C-1", "partner_offers", "email", Choice::Grant)
        .await;
    app.record("C-2", "promotional_mail", "", Choice::Refuse)
        .await;
    let mut vault = DisclosureServiceClient::new(app.channel.clone());
    for (subject, (field, value)) in VALUES
        .iter()
        .map(|v| ("C-1", *v))
        .chain([("C-2", ("name", "Other Person"))])
    {
        vault
            .put_personal_data(pb::PutPersonalDataRequest {
                subject_id: subject.into(),
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
        .verify_personal_data(pb::VerifyPersonalDataRequest {
            subject_id: "C-1".into(),
            field: "postal_address".into(),
        })
        .await
        .unwrap();
    vault
        .request_disclosure(pb::RequestDisclosureRequest {
            subject_id: "C-1".into(),
            recipient_id: "express-courier".into(),
            purpose: "order_delivery".into(),
            fields: vec!["name".into(), "postal_address".into()],
            reference: "order-7781".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let emergency = vault
        .request_disclosure(as_actor(
            "duty-officer",
            pb::RequestDisclosureRequest {
                subject_id: "C-1".into(),
                recipient_id: "public-security".into(),
                fields: vec!["phone".into()],
                legal_basis: pb::LegalBasis::EmergencySafety.into(),
                reference: "case 1".into(),
                justification: "a person is in danger".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    vault
        .review_disclosure(as_actor(
            "reviewer",
            pb::ReviewDisclosureRequest {
                disclosure_id: emergency.disclosure_id,
            },
        ))
        .await
        .unwrap();
    ConcernServiceClient::new(app.channel.clone())
        .file_concern(pb::FileConcernRequest {
            subject_id: "C-1".into(),
            contact: "han@example.com".into(),
            category: pb::ConcernCategory::Disclosure.into(),
            description: "Who got my address?".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let prefs = crate::preferences::service(app).await;
    let link = crate::preferences::opened_link(app, &prefs, "C-1").await;
    prefs.download(&prefs.download_token(&link)).await.unwrap();
}

async fn export(app: &TestApp, subject: &str) -> Result<pb::ExportSubjectResponse, tonic::Status> {
    SubjectRightsServiceClient::new(app.channel.clone())
        .export_subject(pb::ExportSubjectRequest {
            subject_id: subject.into(),
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn a_full_export_matches_what_was_stored() {
    let app = spawn_app().await;
    a_subject_with_everything(&app).await;
    let e = export(&app, "C-1").await.unwrap();

    assert_eq!(e.subject.as_ref().unwrap().subject_id, "C-1");
    let mut values: Vec<_> = e
        .personal_data
        .iter()
        .map(|d| (d.field.as_str(), d.value.as_str()))
        .collect();
    values.sort();
    let mut expected = VALUES.to_vec();
    expected.sort();
    assert_eq!(values, expected, "decrypted values");
    let verified: Vec<_> = e
        .personal_data
        .iter()
        .filter(|d| d.verified_at.is_some())
        .map(|d| d.field.as_str())
        .collect();
    assert_eq!(verified, ["postal_address"]);
    assert!(
        e.personal_data
            .iter()
            .all(|d| d.collected_for == ["order_delivery"])
    );
    assert_eq!(e.collections.len(), 3);

    let history: Vec<_> = e
        .consent_history
        .iter()
        .map(|r| (r.purpose.as_str(), r.field.as_str(), r.choice()))
        .collect();
    assert_eq!(
        history,
        [
            ("promotional_mail", "", Choice::Refuse),
            ("partner_offers", "email", Choice::Grant)
        ]
    );
    assert_eq!(e.current_choices.len(), 2);

    let recipients: Vec<_> = e
        .disclosures
        .iter()
        .map(|d| d.recipient_id.as_str())
        .collect();
    assert_eq!(recipients, ["express-courier", "public-security"]);
    assert_eq!(e.disclosures[1].reviewed_by, "reviewer");
    assert_eq!(e.concerns.len(), 1);
    assert_eq!(e.concerns[0].events.len(), 1);

    let everything = format!("{e:?}");
    assert!(
        !everything.contains("Other Person") && !everything.contains("C-2"),
        "only this subject"
    );
}

/// Every table with a `subject_id` column must be read by the export, and
/// every row the subject has there must show up in it. Adding a table that
/// holds subject data without exporting it fails here.
#[tokio::test]
async fn every_table_holding_subject_data_is_in_the_export() {
    let app = spawn_app().await;
    a_subject_with_everything(&app).await;
    let tables: BTreeSet<String> = app
        .db
        .query(
            "SELECT table_name::text FROM information_schema.columns
              WHERE table_schema = 'public' AND column_name = 'subject_id'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let exported: BTreeSet<String> = EXPORTED_TABLES.iter().map(|t| t.to_string()).collect();
    assert_eq!(
        tables, exported,
        "a table holds subject data that the export does not read (or the reverse)"
    );

    let e = export(&app, "C-1").await.unwrap();
    let disclosure_events = e
        .disclosures
        .iter()
        .filter(|d| !d.approved_by.is_empty())
        .count()
        + e.disclosures
            .iter()
            .filter(|d| !d.reviewed_by.is_empty())
            .count();
    for table in EXPORTED_TABLES {
        let stored: i64 = app
            .db
            .query_one(
                &format!("SELECT count(*) FROM {table} WHERE subject_id = 'C-1'"),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        let shown = match *table {
            "subjects" => usize::from(e.subject.is_some()),
            "consent_records" => e.consent_history.len(),
            "consent_state" => e.current_choices.len(),
            "personal_data" => e.personal_data.len(),
            "collection_records" => e.collections.len(),
            "disclosures" => e.disclosures.len(),
            "disclosure_events" => disclosure_events,
            "concerns" => e.concerns.len(),
            "access_events" => e.access_events.len(),
            other => panic!("the test does not know how the export shows {other}"),
        };
        assert!(stored > 0, "the setup leaves rows in {table}");
        assert_eq!(shown as i64, stored, "{table}");
    }
}

#[tokio::test]
async fn export_subject_writes_the_same_as_json() {
    let app = spawn_app().await;
    a_subject_with_everything(&app).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_consentd"))
        .args(["export-subject", "C-1", "--database-url", app.db_url()])
        .arg("--data-keys-file")
        .arg(test_data_keys_file())
        .arg("--policy")
        .arg(policy_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let answer = export(&app, "C-1").await.unwrap();
    assert_eq!(
        without_clock_readings(json.clone()),
        without_clock_readings(proto_json(&answer)),
        "the command writes what ExportSubject answers"
    );
    assert_eq!(json["subject"]["subjectId"], "C-1");
    let values: BTreeSet<&str> = json["personalData"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["value"].as_str().unwrap())
        .collect();
    assert_eq!(values, VALUES.iter().map(|(_, v)| *v).collect());
    assert_eq!(json["consentHistory"].as_array().unwrap().len(), 2);
    assert_eq!(json["consentHistory"][0]["choice"], "CHOICE_REFUSE");
    assert_eq!(json["disclosures"].as_array().unwrap().len(), 2);
    assert_eq!(json["concerns"][0]["contact"], "han@example.com");

    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_consentd"))
        .args(["export-subject", "C-404", "--database-url", app.db_url()])
        .arg("--data-keys-file")
        .arg(test_data_keys_file())
        .arg("--policy")
        .arg(policy_path())
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no subject is registered under that id")
    );
}

/// The canonical proto-JSON form of an answer, read back through the
/// service's own descriptor set.
fn proto_json(answer: &pb::ExportSubjectResponse) -> serde_json::Value {
    use prost::Message as _;
    let pool = prost_reflect::DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
    let descriptor = pool
        .get_message_by_name("consent.v1.ExportSubjectResponse")
        .unwrap();
    let message =
        prost_reflect::DynamicMessage::decode(descriptor, answer.encode_to_vec().as_slice())
            .unwrap();
    serde_json::to_value(&message).unwrap()
}

/// Leaves out what depends on the moment of the export (its time, the
/// concerns' ages), so two exports of the same data compare equal.
fn without_clock_readings(mut json: serde_json::Value) -> serde_json::Value {
    let export = json.as_object_mut().unwrap();
    assert!(export.remove("exportedAt").is_some());
    for concern in export["concerns"].as_array_mut().unwrap() {
        concern.as_object_mut().unwrap().remove("ageSeconds");
    }
    json
}

#[tokio::test]
async fn exporting_an_unknown_or_malformed_subject_is_refused() {
    let app = spawn_app().await;
    assert_eq!(
        export(&app, "C-404").await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        violated_fields(&export(&app, "").await.unwrap_err()),
        ["subject_id"]
    );
}
