//! The README's promise, on every ConsentService and SubjectRightsService
//! RPC: bad input gets INVALID_ARGUMENT with a BadRequest that names every
//! offending field, those that do not parse and those the policy refuses,
//! in one answer, and nothing is written.

use consentd::grpc::pb::{self, Choice, subject_rights_service_client::SubjectRightsServiceClient};

use crate::helpers::{TestApp, record_request, spawn_app, violated_fields};

/// Rows in every table a ConsentService or SubjectRightsService call writes.
async fn rows(app: &TestApp) -> Vec<i64> {
    let mut rows = app.counts().await.to_vec();
    rows.push(app.count("erased_subjects").await);
    rows
}

#[tokio::test]
async fn a_check_with_an_empty_subject_and_an_undeclared_purpose_names_both() {
    let app = spawn_app().await;
    let status = app
        .client
        .clone()
        .check(pb::CheckRequest {
            subject_id: String::new(),
            purpose: "nope".into(),
            field: "email".into(),
            consistency: None,
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["subject_id", "purpose"]);
}

#[tokio::test]
async fn every_consent_rpc_names_every_offending_field_and_writes_nothing() {
    let app = spawn_app().await;
    app.register("C-1").await;
    let before = rows(&app).await;
    let mut client = app.client.clone();
    let long = "x".repeat(129);

    let status = client
        .watch_changes(pb::WatchChangesRequest {
            after: -1,
            purposes: vec!["nope".into(), "Bad Code".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&status),
        ["purposes[1]", "after", "purposes[0]"]
    );

    let status = client
        .create_unsubscribe_links(pb::CreateUnsubscribeLinksRequest {
            purpose: "nope".into(),
            field: "Bad Field".into(),
            campaign: "spring\u{7}".into(),
            subject_ids: vec![String::new()],
        })
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&status),
        ["field", "campaign", "subject_ids[0]", "purpose"]
    );
    let status = client
        .create_unsubscribe_links(pb::CreateUnsubscribeLinksRequest {
            purpose: "order_delivery".into(),
            campaign: "c".repeat(129),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&status),
        ["campaign", "purpose", "subject_ids"]
    );

    let status = client
        .register_subject(pb::RegisterSubjectRequest {
            subject_id: long.clone(),
            kind: 0,
            notice_version: String::new(),
            channel: 42,
            request_id: long.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&status),
        [
            "subject_id",
            "kind",
            "notice_version",
            "channel",
            "request_id"
        ]
    );

    let mut record = record_request("", "nope", "", Choice::Unspecified);
    record.recipient = "nobody".into();
    let status = client.record_consent(record).await.unwrap_err();
    assert_eq!(
        violated_fields(&status),
        ["subject_id", "choice", "purpose", "recipient"]
    );
    let mut record = record_request("C-1", "promotional_mail", "phone", Choice::Refuse);
    record.evidence = "e".repeat(1025);
    let status = client.record_consent(record).await.unwrap_err();
    assert_eq!(violated_fields(&status), ["evidence", "field"]);

    let status = client
        .check(pb::CheckRequest {
            subject_id: long.clone(),
            purpose: "promotional_mail".into(),
            field: "fax".into(),
            consistency: None,
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["subject_id", "field"]);

    let status = client
        .batch_check(pb::BatchCheckRequest {
            items: vec![
                pb::BatchCheckItem {
                    correlation_id: "c".repeat(129),
                    subject_id: String::new(),
                    purpose: "nope".into(),
                    field: "email".into(),
                },
                pb::BatchCheckItem {
                    correlation_id: "ok".into(),
                    subject_id: "C-1".into(),
                    purpose: "promotional_mail".into(),
                    field: "fax".into(),
                },
            ],
            consistency: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&status),
        [
            "items[0].correlation_id",
            "items[0].subject_id",
            "items[0].purpose",
            "items[1].field"
        ]
    );

    let status = client
        .get_consent_state(pb::GetConsentStateRequest {
            subject_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["subject_id"]);

    let status = client
        .list_consent_history(pb::ListConsentHistoryRequest {
            subject_id: String::new(),
            page_size: -1,
            page_token: "not-a-token".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["subject_id", "page_size"]);
    let status = client
        .list_consent_history(pb::ListConsentHistoryRequest {
            subject_id: "C-1".into(),
            page_size: 1001,
            page_token: "not-a-token".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["page_size", "page_token"]);

    assert_eq!(rows(&app).await, before, "refused calls wrote nothing");
}

#[tokio::test]
async fn every_subject_rights_rpc_names_every_offending_field_and_writes_nothing() {
    let app = spawn_app().await;
    app.register("C-1").await;
    let before = rows(&app).await;
    let mut client = SubjectRightsServiceClient::new(app.channel.clone());

    let status = client
        .export_subject(pb::ExportSubjectRequest {
            subject_id: "x".repeat(129),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["subject_id"]);

    let status = client
        .erase_subject(pb::EraseSubjectRequest {
            subject_id: String::new(),
            request_id: "r".repeat(129),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["subject_id", "request_id"]);

    assert_eq!(rows(&app).await, before, "refused calls wrote nothing");
}
