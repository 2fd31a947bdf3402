//! Who may act on a disclosure someone else requested: an approver, a
//! reviewer or a reader must hold its recipient and its legal basis, as a
//! request of it would need, or it is refused before it learns anything;
//! a list shows a caller only those disclosures.

use std::path::PathBuf;

use consentd::grpc::pb::{self, disclosure_service_client::DisclosureServiceClient};
use tonic::Request;

use crate::{
    callers::{refusal, with_token_hashes},
    disclosure::put_request,
    helpers::{TestApp, registration, spawn_app_with},
};

const PERMISSIONS: &str = r#"
[[callers]]
id = "crm"
rpcs = ["consent.v1.ConsentService/RegisterSubject", "consent.v1.DisclosureService/PutPersonalData"]
purposes = ["order_delivery"]

[[callers]]
id = "requester"
rpcs = ["consent.v1.DisclosureService/RequestDisclosure"]
legal_bases = ["LEGAL_PROCESS", "EMERGENCY_SAFETY"]
recipients = ["public-security"]

[[callers]]
id = "approver"
rpcs = ["consent.v1.DisclosureService/ApproveDisclosure",
        "consent.v1.DisclosureService/ReviewDisclosure",
        "consent.v1.DisclosureService/GetDisclosure",
        "consent.v1.DisclosureService/ListDisclosures"]
legal_bases = ["LEGAL_PROCESS", "EMERGENCY_SAFETY"]
recipients = ["public-security"]

[[callers]]
id = "other-basis"
rpcs = ["consent.v1.DisclosureService/ApproveDisclosure",
        "consent.v1.DisclosureService/ReviewDisclosure",
        "consent.v1.DisclosureService/GetDisclosure",
        "consent.v1.DisclosureService/ListDisclosures"]
legal_bases = ["PROTECT_RIGHTS_PROPERTY"]
recipients = ["public-security"]

[[callers]]
id = "other-recipient"
rpcs = ["consent.v1.DisclosureService/ApproveDisclosure",
        "consent.v1.DisclosureService/ReviewDisclosure",
        "consent.v1.DisclosureService/GetDisclosure",
        "consent.v1.DisclosureService/ListDisclosures"]
legal_bases = ["LEGAL_PROCESS", "EMERGENCY_SAFETY"]
recipients = ["express-courier"]
"#;

fn token(caller: &str) -> &'static str {
    match caller {
        "crm" => "dc-crm-token",
        "requester" => "dc-requester-token",
        "approver" => "dc-approver-token",
        "other-basis" => "dc-other-basis-token",
        "other-recipient" => "dc-other-recipient-token",
        other => panic!("no such caller: {other}"),
    }
}

fn as_caller<T>(caller: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    let value = format!("Bearer {}", token(caller)).parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

fn callers_file() -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "consentd-test-disclosure-callers-{}",
        std::process::id()
    ));
    std::fs::write(&path, with_token_hashes(PERMISSIONS, token)).unwrap();
    path
}

fn legal_request(basis: pb::LegalBasis) -> pb::RequestDisclosureRequest {
    pb::RequestDisclosureRequest {
        subject_id: "C-1042".into(),
        recipient_id: "public-security".into(),
        fields: vec!["name".into()],
        legal_basis: basis.into(),
        reference: "case 2026-117".into(),
        justification: "court order".into(),
        ..Default::default()
    }
}

/// The refusal reason each caller that may not touch the disclosure gets.
const OUTSIDERS: [(&str, &str); 2] = [
    ("other-basis", "LEGAL_BASIS_NOT_PERMITTED"),
    ("other-recipient", "RECIPIENT_NOT_PERMITTED"),
];

async fn get(app: &TestApp, caller: &str, id: &str) -> Result<pb::Disclosure, tonic::Status> {
    let request = pb::GetDisclosureRequest {
        disclosure_id: id.into(),
    };
    (DisclosureServiceClient::new(app.channel.clone()))
        .get_disclosure(as_caller(caller, request))
        .await
        .map(|r| r.into_inner().disclosure.unwrap())
}

/// A server with these callers, and C-1042 registered with a stored name.
async fn with_a_stored_name() -> TestApp {
    let app = spawn_app_with(|args| args.callers = Some(callers_file())).await;
    (app.client.clone())
        .register_subject(as_caller("crm", registration("C-1042")))
        .await
        .unwrap();
    let name = put_request("C-1042", "name", "Li Lei", &["order_delivery"]);
    (DisclosureServiceClient::new(app.channel.clone()))
        .put_personal_data(as_caller("crm", name))
        .await
        .unwrap();
    app
}

#[tokio::test]
async fn only_a_caller_holding_the_recipient_and_legal_basis_may_approve_review_or_read() {
    let app = with_a_stored_name().await;
    let mut disclosures = DisclosureServiceClient::new(app.channel.clone());

    // Legal process: pending until a second person approves.
    let pending = disclosures
        .request_disclosure(as_caller(
            "requester",
            legal_request(pb::LegalBasis::LegalProcess),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pending.status(), pb::DisclosureStatus::PendingApproval);
    let id = pending.disclosure_id;
    let events = app.count("disclosure_events").await;
    for (caller, reason) in OUTSIDERS {
        let approve = pb::ApproveDisclosureRequest {
            disclosure_id: id.clone(),
        };
        let status = (disclosures
            .approve_disclosure(as_caller(caller, approve))
            .await)
            .expect_err("an outsider's approval is refused");
        assert_eq!(refusal(&status).0, reason, "{caller} approving");
        let status = get(&app, caller, &id).await.expect_err("and its read");
        assert_eq!(refusal(&status).0, reason, "{caller} reading");
    }
    assert_eq!(
        app.count("disclosure_events").await,
        events,
        "nothing written"
    );
    let still = get(&app, "approver", &id).await.unwrap();
    assert_eq!(still.status(), pb::DisclosureStatus::PendingApproval);
    let approve = pb::ApproveDisclosureRequest {
        disclosure_id: id.clone(),
    };
    let approved = (disclosures
        .approve_disclosure(as_caller("approver", approve))
        .await)
        .unwrap()
        .into_inner();
    assert_eq!(approved.status(), pb::DisclosureStatus::Released);

    // An emergency: released at once, reviewed afterwards.
    let emergency = disclosures
        .request_disclosure(as_caller(
            "requester",
            legal_request(pb::LegalBasis::EmergencySafety),
        ))
        .await
        .unwrap()
        .into_inner();
    let id = emergency.disclosure_id;
    let events = app.count("disclosure_events").await;
    for (caller, reason) in OUTSIDERS {
        let review = pb::ReviewDisclosureRequest {
            disclosure_id: id.clone(),
        };
        let status = (disclosures
            .review_disclosure(as_caller(caller, review))
            .await)
            .expect_err("an outsider's review is refused");
        assert_eq!(refusal(&status).0, reason, "{caller} reviewing");
    }
    assert_eq!(
        app.count("disclosure_events").await,
        events,
        "nothing written"
    );
    let review = pb::ReviewDisclosureRequest {
        disclosure_id: id.clone(),
    };
    (disclosures
        .review_disclosure(as_caller("approver", review))
        .await)
        .unwrap();
    let reviewed = get(&app, "approver", &id).await.unwrap();
    assert!(!reviewed.reviewed_by.is_empty(), "{reviewed:?}");
}

/// The disclosures of C-1042 that `caller` is shown, by status, reading
/// every page.
async fn listed(app: &TestApp, caller: &str) -> Vec<pb::DisclosureStatus> {
    let mut client = DisclosureServiceClient::new(app.channel.clone());
    let (mut seen, mut token) = (Vec::new(), String::new());
    loop {
        let request = pb::ListDisclosuresRequest {
            subject_id: "C-1042".into(),
            page_size: 1,
            page_token: token,
            ..Default::default()
        };
        let page = (client.list_disclosures(as_caller(caller, request)).await)
            .unwrap()
            .into_inner();
        seen.extend(page.disclosures.iter().map(|d| d.status()));
        if page.next_page_token.is_empty() {
            return seen;
        }
        token = page.next_page_token;
    }
}

#[tokio::test]
async fn a_list_shows_a_caller_only_the_disclosures_it_may_read() {
    let app = with_a_stored_name().await;
    let mut disclosures = DisclosureServiceClient::new(app.channel.clone());
    for basis in [
        pb::LegalBasis::LegalProcess,
        pb::LegalBasis::EmergencySafety,
    ] {
        disclosures
            .request_disclosure(as_caller("requester", legal_request(basis)))
            .await
            .unwrap();
    }
    assert_eq!(
        listed(&app, "approver").await,
        [
            pb::DisclosureStatus::PendingApproval,
            pb::DisclosureStatus::Released
        ],
        "both, to its recipient on its bases, over two pages"
    );
    for (caller, _) in OUTSIDERS {
        assert_eq!(listed(&app, caller).await, [], "{caller}");
    }
}
