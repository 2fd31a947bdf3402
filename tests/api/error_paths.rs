//! Error paths of a real `consentd serve` process put no personal data in
//! its logs or its exported spans (R8): a disclosure that fails, bad
//! unsubscribe links, and database errors whose DETAIL quotes the row.

use consentd::{
    grpc::pb::{
        self, consent_service_client::ConsentServiceClient,
        disclosure_service_client::DisclosureServiceClient,
    },
    store,
};
use tonic::{Code, transport::Channel};

use crate::{
    cli::{spawn_serve_with, tempdir, terminate_and_wait},
    helpers::{fresh_database, http_request},
    otlp::{assert_absent, start_collector},
    unsubscribe::path_of,
};

const SUBJECT: &str = "C-5150-err-path";
const NAME: &str = "Liu Yang Errpath";
const ADDRESS: &str = "12 Errpath Lane, Hangzhou";
const PHONE: &str = "+86 571 8888 0420";
const EMAIL: &str = "liu.errpath@example.cn";

fn put(field: &str, value: &str) -> pb::PutPersonalDataRequest {
    pb::PutPersonalDataRequest {
        subject_id: SUBJECT.into(),
        field: field.into(),
        value: value.into(),
        collected_for: vec!["order_delivery".into()],
        channel: pb::Channel::Web.into(),
        notice_version: "2026-11".into(),
        request_id: String::new(),
    }
}

#[tokio::test]
async fn error_paths_put_no_subject_id_or_value_in_logs_or_spans() {
    let (collector, endpoint) = start_collector().await;
    let db = fresh_database().await;
    let dir = tempdir();
    let key_file = dir.join("subject-ref.key");
    std::fs::write(&key_file, "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n").unwrap();
    let served = spawn_serve_with(
        &[
            "--database-url",
            &db.db_url,
            "--subject-ref-key-file",
            key_file.to_str().unwrap(),
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let channel = Channel::from_shared(format!("http://{}", served.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut consent = ConsentServiceClient::new(channel.clone());
    let mut vault = DisclosureServiceClient::new(channel);
    let sql = store::admin_connect(&db.db_url).await.unwrap();
    consent
        .register_subject(crate::helpers::registration(SUBJECT))
        .await
        .unwrap();
    vault.put_personal_data(put("name", NAME)).await.unwrap();
    vault
        .put_personal_data(put("postal_address", ADDRESS))
        .await
        .unwrap();

    // A disclosure that fails: a stored value no longer opens.
    sql.batch_execute(
        "UPDATE personal_data SET ciphertext = ciphertext || '\\x00'::bytea
          WHERE field = 'postal_address'",
    )
    .await
    .unwrap();
    let failed = vault
        .request_disclosure(pb::RequestDisclosureRequest {
            subject_id: SUBJECT.into(),
            recipient_id: "express-courier".into(),
            purpose: "order_delivery".into(),
            fields: vec!["name".into(), "postal_address".into()],
            reference: "order-5150".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(failed.code(), Code::Internal, "{failed:?}");

    // Bad unsubscribe links: an altered token, and a body that is not the
    // one-click form but carries an address.
    let link = consent
        .create_unsubscribe_links(pb::CreateUnsubscribeLinksRequest {
            purpose: "promotional_mail".into(),
            subject_ids: vec![SUBJECT.into()],
            campaign: "spring".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .links
        .remove(0);
    let path = path_of(&link.url);
    let mut altered = path.clone().into_bytes();
    let last = altered.len() - 1;
    altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    let http = served.http_addr.parse().unwrap();
    for method in ["GET", "POST"] {
        let response =
            http_request(http, method, &altered, &[], "List-Unsubscribe=One-Click").await;
        assert_eq!(response.status, 400, "{method} {response:?}");
    }
    let body = format!("email={EMAIL}&name={NAME}");
    let response = http_request(http, "POST", &path, &[], &body).await;
    assert_eq!(response.status, 400, "{response:?}");

    // Database errors. A check constraint's DETAIL quotes the failing row,
    // subject id included.
    sql.batch_execute(
        "ALTER TABLE collection_records ADD CONSTRAINT refuse_all CHECK (false) NOT VALID",
    )
    .await
    .unwrap();
    let refused = vault
        .put_personal_data(put("phone", PHONE))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Internal, "{refused:?}");
    // A table that is gone.
    sql.batch_execute("ALTER TABLE consent_records RENAME TO consent_records_away")
        .await
        .unwrap();
    let gone = consent
        .record_consent(pb::RecordConsentRequest {
            subject_id: SUBJECT.into(),
            purpose: "promotional_mail".into(),
            choice: pb::Choice::Refuse.into(),
            channel: pb::Channel::Support.into(),
            notice_version: "2026-11".into(),
            evidence: format!("call from {PHONE}"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::Internal, "{gone:?}");
    drop((consent, vault));

    let logs = terminate_and_wait(served.child, &served.logs).await;
    let logs = logs.join("\n");
    for event in [
        "internal error",
        "database error",
        "unsubscribe link refused",
    ] {
        assert!(logs.contains(event), "no {event:?} in the logs:\n{logs}");
    }
    let sent = [SUBJECT, NAME, ADDRESS, PHONE, EMAIL, "Errpath", "8888 0420"];
    assert_absent(logs.as_bytes(), &sent, "the logs");
    let raw = collector.raw().await;
    assert!(!raw.is_empty(), "spans were exported");
    assert_absent(&raw, &sent, "the exported spans");
}
