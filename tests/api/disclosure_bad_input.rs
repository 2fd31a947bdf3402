//! DisclosureService bad input: every RPC that takes input answers
//! INVALID_ARGUMENT with a BadRequest naming every offending field at once,
//! the policy's problems with what did parse included, and writes nothing.
//! (ListRecipients takes no input, so it has none to refuse.)

use consentd::grpc::pb::{self, LegalBasis};
use tonic::Request;

use crate::{
    disclosure::{client, courier_request, customer, legal_request, put_request, vault_counts},
    helpers::{TestApp, as_actor, spawn_app, violated_fields},
};

/// An `x-actor` one character longer than an actor may be.
fn bad_actor<T>(message: T) -> Request<T> {
    as_actor(&"a".repeat(129), message)
}

async fn rows(app: &TestApp) -> ([i64; 5], [i64; 4]) {
    (vault_counts(app).await, app.counts().await)
}

async fn put_fails(app: &TestApp, request: Request<pb::PutPersonalDataRequest>) -> Vec<String> {
    let status = client(app).put_personal_data(request).await.unwrap_err();
    violated_fields(&status)
}

async fn disclose_fails(
    app: &TestApp,
    request: Request<pb::RequestDisclosureRequest>,
) -> Vec<String> {
    let status = client(app).request_disclosure(request).await.unwrap_err();
    violated_fields(&status)
}

#[tokio::test]
async fn storing_and_verifying_data_name_every_offending_field_at_once_and_write_nothing() {
    let app = spawn_app().await;
    customer(&app, "C-70").await;
    let before = rows(&app).await;

    let everything_wrong = pb::PutPersonalDataRequest {
        subject_id: String::new(),
        field: "Fax!".into(),
        value: String::new(),
        collected_for: vec!["Promo!".into(), "partner_offers".into()],
        channel: 0,
        notice_version: String::new(),
        request_id: "r".repeat(129),
    };
    assert_eq!(
        put_fails(&app, bad_actor(everything_wrong)).await,
        [
            "x-actor",
            "subject_id",
            "field",
            "value",
            "collected_for[0]",
            "channel",
            "notice_version",
            "request_id"
        ]
    );
    // A parse problem does not hide the policy's: an undeclared field and
    // no purpose are named beside the empty subject.
    let undeclared = put_request("", "fax", "x", &[]);
    assert_eq!(
        put_fails(&app, Request::new(undeclared)).await,
        ["subject_id", "field", "collected_for"]
    );
    // Purposes keep the caller's indices around one that did not parse.
    let mut purposes = put_request(
        "C-70",
        "phone",
        "+86 138 0013 8000",
        &["Bad!", "partner_offers", "order_delivery", "order_delivery"],
    );
    purposes.channel = 99;
    assert_eq!(
        put_fails(&app, Request::new(purposes)).await,
        [
            "collected_for[0]",
            "channel",
            "collected_for[1]",
            "collected_for[3]"
        ]
    );

    let status = client(&app)
        .verify_personal_data(pb::VerifyPersonalDataRequest {
            subject_id: String::new(),
            field: "fax".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["subject_id", "field"]);

    assert_eq!(rows(&app).await, before);
}

#[tokio::test]
async fn disclosure_requests_name_every_offending_field_at_once_and_write_nothing() {
    let app = spawn_app().await;
    customer(&app, "C-71").await;
    let before = rows(&app).await;

    let everything_wrong = pb::RequestDisclosureRequest {
        subject_id: String::new(),
        recipient_id: "sf-express".into(),
        purpose: "order_delivery".into(),
        fields: vec!["name".into(), "Fax!".into(), "fax".into(), "name".into()],
        request_id: "r".repeat(129),
        ..Default::default()
    };
    assert_eq!(
        disclose_fails(&app, bad_actor(everything_wrong)).await,
        [
            "x-actor",
            "subject_id",
            "fields[1]",
            "request_id",
            "recipient_id",
            "fields[2]",
            "fields[3]"
        ]
    );
    // The courier rule (R6) still asks for the order beside a parse problem.
    let mut no_order = courier_request("", &["name"]);
    no_order.reference.clear();
    assert_eq!(
        disclose_fails(&app, Request::new(no_order)).await,
        ["subject_id", "reference"]
    );
    // A reference too long to parse is named once, not again as missing.
    let mut legal = legal_request("C-71", LegalBasis::LegalProcess);
    legal.reference = "r".repeat(257);
    legal.justification.clear();
    assert_eq!(
        disclose_fails(&app, Request::new(legal)).await,
        ["reference", "justification"]
    );
    let mut unknown_basis = courier_request("", &["name"]);
    unknown_basis.purpose.clear();
    unknown_basis.legal_basis = 42;
    assert_eq!(
        disclose_fails(&app, Request::new(unknown_basis)).await,
        ["subject_id", "legal_basis"]
    );
    // Without a ground or a recipient that parsed, the fields are still judged.
    let mut bad_purpose = courier_request("C-71", &["fax"]);
    bad_purpose.purpose = "Not A Purpose!".into();
    bad_purpose.recipient_id = "Not A Recipient!".into();
    assert_eq!(
        disclose_fails(&app, Request::new(bad_purpose)).await,
        ["recipient_id", "purpose", "fields[0]"]
    );

    assert_eq!(rows(&app).await, before);
}

#[tokio::test]
async fn follow_ups_and_reads_of_disclosures_name_every_offending_field_and_write_nothing() {
    let app = spawn_app().await;
    customer(&app, "C-72").await;
    let pending = client(&app)
        .request_disclosure(as_actor(
            "officer-li",
            legal_request("C-72", LegalBasis::LegalProcess),
        ))
        .await
        .unwrap()
        .into_inner();
    let emergency = client(&app)
        .request_disclosure(as_actor(
            "officer-li",
            legal_request("C-72", LegalBasis::EmergencySafety),
        ))
        .await
        .unwrap()
        .into_inner();
    let before = rows(&app).await;

    for (id, expected) in [
        ("nope", vec!["x-actor", "disclosure_id"]),
        // A real disclosure: only the caller's name stops the call.
        (pending.disclosure_id.as_str(), vec!["x-actor"]),
    ] {
        let status = client(&app)
            .approve_disclosure(bad_actor(pb::ApproveDisclosureRequest {
                disclosure_id: id.into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), expected);
    }
    for (id, expected) in [
        ("", vec!["x-actor", "disclosure_id"]),
        (emergency.disclosure_id.as_str(), vec!["x-actor"]),
    ] {
        let status = client(&app)
            .review_disclosure(bad_actor(pb::ReviewDisclosureRequest {
                disclosure_id: id.into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), expected);
    }
    let status = client(&app)
        .get_disclosure(pb::GetDisclosureRequest {
            disclosure_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["disclosure_id"]);
    let status = client(&app)
        .list_disclosures(pb::ListDisclosuresRequest {
            subject_id: String::new(),
            overdue_review_only: false,
            page_size: -1,
            page_token: "garbage!".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&status),
        ["subject_id", "page_size", "page_token"]
    );

    assert_eq!(rows(&app).await, before);
}
