//! Served with a callers file: the actor is the caller, x-actor only a
//! note, a batch is refused whole, a watch carries only the caller's
//! purposes, and a requester cannot approve its own disclosure. Also what
//! the server does without a callers file.

use std::{path::PathBuf, time::Duration};

use consentd::grpc::pb::{self, disclosure_service_client::DisclosureServiceClient};
use sha2::{Digest as _, Sha256};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt as _;

use crate::{
    cli::spawn_serve_with,
    disclosure::put_request,
    helpers::{TestApp, fresh_database, record_request, registration, spawn_app_with},
};

/// Each caller's bearer token; the file holds only their hashes.
pub const TOKENS: &[(&str, &str)] = &[
    ("marketing-mailer", "mailer-secret-token"),
    ("shipping", "shipping-secret-token"),
    ("support", "support-secret-token"),
    ("legal-officer-li", "li-secret-token"),
    ("legal-officer-wang", "wang-secret-token"),
    ("dpo", "dpo-secret-token"),
    ("crm", "crm-secret-token"),
];

/// What each caller may do, without credentials (added per caller below).
const PERMISSIONS: &str = r#"
[[callers]]
id = "marketing-mailer"
rpcs = ["consent.v1.ConsentService/Check", "consent.v1.ConsentService/BatchCheck",
        "consent.v1.ConsentService/BulkCheck", "consent.v1.ConsentService/WatchChanges",
        "consent.v1.ConsentService/CreateUnsubscribeLinks"]
purposes = ["promotional_mail"]

[[callers]]
id = "shipping"
rpcs = ["consent.v1.DisclosureService/RequestDisclosure"]
purposes = ["order_delivery"]
recipients = ["express-courier"]

[[callers]]
id = "support"
rpcs = ["consent.v1.ConsentService/*", "consent.v1.ConcernService/FileConcern"]
purposes = ["customer_support", "partner_offers"]

[[callers]]
id = "legal-officer-li"
rpcs = ["consent.v1.DisclosureService/*"]
legal_bases = ["LEGAL_PROCESS"]
recipients = ["public-security"]

[[callers]]
id = "legal-officer-wang"
rpcs = ["consent.v1.DisclosureService/ApproveDisclosure", "consent.v1.DisclosureService/GetDisclosure"]
legal_bases = ["LEGAL_PROCESS"]
recipients = ["public-security"]

[[callers]]
id = "dpo"
rpcs = ["consent.v1.SubjectRightsService/*", "consent.v1.ConcernService/*"]

[[callers]]
id = "crm"
rpcs = ["consent.v1.ConsentService/RecordConsent", "consent.v1.DisclosureService/PutPersonalData",
        "consent.v1.DisclosureService/RequestDisclosure"]
purposes = ["promotional_mail", "partner_offers", "order_delivery"]
"#;

pub fn token(caller: &str) -> &'static str {
    TOKENS.iter().find(|(id, _)| *id == caller).unwrap().1
}

/// The test callers file: [`PERMISSIONS`] with each caller's token hash.
pub fn callers_toml() -> String {
    with_token_hashes(PERMISSIONS, token)
}

/// A callers file: `permissions` with a `token_sha256` line after each
/// caller's id, the hash of `token_of(id)`.
pub fn with_token_hashes(permissions: &str, token_of: impl Fn(&str) -> &'static str) -> String {
    let mut out = String::new();
    for line in permissions.lines() {
        out.push_str(line);
        out.push('\n');
        if let Some(id) = line.strip_prefix("id = ") {
            let hash: [u8; 32] = Sha256::digest(token_of(id.trim_matches('"'))).into();
            let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
            out.push_str(&format!("token_sha256 = \"{hex}\"\n"));
        }
    }
    out
}

pub fn callers_file() -> PathBuf {
    static FILE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let path =
            std::env::temp_dir().join(format!("consentd-test-callers-{}", std::process::id()));
        std::fs::write(&path, callers_toml()).unwrap();
        path
    })
    .clone()
}

pub async fn spawn_app_with_callers() -> TestApp {
    spawn_app_with(|args| args.callers = Some(callers_file())).await
}

/// A request from `caller`, with its bearer token.
pub fn as_caller<T>(caller: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    let value = format!("Bearer {}", token(caller));
    request
        .metadata_mut()
        .insert("authorization", value.parse().unwrap());
    request
}

/// Like [`as_caller`], with an x-actor note.
fn on_behalf_of<T>(caller: &str, note: &str, message: T) -> Request<T> {
    let mut request = as_caller(caller, message);
    request
        .metadata_mut()
        .insert("x-actor", note.parse().unwrap());
    request
}

/// Asserts PERMISSION_DENIED with a consentd ErrorInfo; returns its reason
/// and metadata.
pub fn refusal(status: &Status) -> (String, Vec<(String, String)>) {
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let details = status.get_error_details();
    let info = details.error_info().expect("a google.rpc.ErrorInfo detail");
    assert_eq!(info.domain, "consentd");
    let mut metadata: Vec<_> = info.metadata.clone().into_iter().collect();
    metadata.sort();
    (info.reason.clone(), metadata)
}

fn legal_request() -> pb::RequestDisclosureRequest {
    pb::RequestDisclosureRequest {
        subject_id: "C-1042".into(),
        recipient_id: "public-security".into(),
        fields: vec!["name".into()],
        legal_basis: pb::LegalBasis::LegalProcess.into(),
        reference: "case 2026-117".into(),
        justification: "court order".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn the_requester_cannot_approve_its_own_disclosure_under_any_x_actor() {
    let app = spawn_app_with_callers().await;
    let mut disclosures = DisclosureServiceClient::new(app.channel.clone());
    app.client
        .clone()
        .register_subject(as_caller("support", registration("C-1042")))
        .await
        .unwrap();
    let name = put_request("C-1042", "name", "Li Lei", &["order_delivery"]);
    disclosures
        .put_personal_data(as_caller("crm", name))
        .await
        .unwrap();
    let requested = disclosures
        .request_disclosure(on_behalf_of(
            "legal-officer-li",
            "agent Wu",
            legal_request(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(requested.status(), pb::DisclosureStatus::PendingApproval);

    for note in [
        None,
        Some("agent Wu"),
        Some("legal-officer-wang"),
        Some("someone else"),
    ] {
        let approve = pb::ApproveDisclosureRequest {
            disclosure_id: requested.disclosure_id.clone(),
        };
        let request = match note {
            Some(note) => on_behalf_of("legal-officer-li", note, approve),
            None => as_caller("legal-officer-li", approve),
        };
        let status = disclosures.approve_disclosure(request).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "x-actor {note:?}: {status:?}"
        );
    }

    let approved = disclosures
        .approve_disclosure(on_behalf_of(
            "legal-officer-wang",
            "legal-officer-li",
            pb::ApproveDisclosureRequest {
                disclosure_id: requested.disclosure_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(approved.status(), pb::DisclosureStatus::PendingApproval);
    let disclosure = disclosures
        .get_disclosure(as_caller(
            "legal-officer-wang",
            pb::GetDisclosureRequest {
                disclosure_id: requested.disclosure_id,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .disclosure
        .unwrap();
    assert_eq!(
        disclosure.requested_by,
        "legal-officer-li (on behalf of agent Wu)"
    );
    assert_eq!(
        disclosure.approved_by,
        "legal-officer-wang (on behalf of legal-officer-li)"
    );
}

#[tokio::test]
async fn the_actor_is_the_caller_and_x_actor_only_a_note() {
    let app = spawn_app_with_callers().await;
    let mut client = app.client.clone();
    client
        .register_subject(as_caller("support", registration("C-7")))
        .await
        .unwrap();
    let choice = || record_request("C-7", "partner_offers", "", pb::Choice::Grant);
    let plain = client
        .record_consent(as_caller("support", choice()))
        .await
        .unwrap()
        .into_inner()
        .record
        .unwrap();
    assert_eq!(plain.actor, "support");
    let noted = client
        .record_consent(on_behalf_of("support", "marketing-mailer", choice()))
        .await
        .unwrap()
        .into_inner()
        .record
        .unwrap();
    assert_eq!(noted.actor, "support (on behalf of marketing-mailer)");
}

#[tokio::test]
async fn a_batch_with_one_item_outside_the_callers_purposes_is_refused_whole() {
    let app = spawn_app_with_callers().await;
    let item = |purpose: &str| pb::BatchCheckItem {
        correlation_id: purpose.into(),
        subject_id: "C-1042".into(),
        purpose: purpose.into(),
        field: "email".into(),
    };
    let batch = pb::BatchCheckRequest {
        items: vec![item("promotional_mail"), item("customer_support")],
        consistency: None,
    };
    let status = app
        .client
        .clone()
        .batch_check(as_caller("marketing-mailer", batch))
        .await
        .unwrap_err();
    assert_eq!(
        refusal(&status),
        (
            "PURPOSE_NOT_PERMITTED".to_string(),
            vec![("purpose".to_string(), "customer_support".to_string())]
        )
    );
    let allowed = pb::BatchCheckRequest {
        items: vec![item("promotional_mail")],
        consistency: None,
    };
    let results = app
        .client
        .clone()
        .batch_check(as_caller("marketing-mailer", allowed))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 1);
}

#[tokio::test]
async fn a_watch_sends_the_caller_only_records_of_its_purposes() {
    let app = spawn_app_with_callers().await;
    app.client
        .clone()
        .register_subject(as_caller("support", registration("C-9")))
        .await
        .unwrap();
    let mut mailer = app.client.clone();
    let explicit = pb::WatchChangesRequest {
        after: 0,
        purposes: vec!["partner_offers".into()],
    };
    let status = mailer
        .watch_changes(as_caller("marketing-mailer", explicit))
        .await
        .unwrap_err();
    assert_eq!(refusal(&status).0, "PURPOSE_NOT_PERMITTED");

    let mut stream = mailer
        .watch_changes(as_caller(
            "marketing-mailer",
            pb::WatchChangesRequest::default(),
        ))
        .await
        .unwrap()
        .into_inner();
    // Another purpose's record first: the mailer's first message must skip it.
    let mut crm = app.client.clone();
    for (purpose, choice) in [
        ("partner_offers", pb::Choice::Grant),
        ("promotional_mail", pb::Choice::Refuse),
    ] {
        crm.record_consent(as_caller("crm", record_request("C-9", purpose, "", choice)))
            .await
            .unwrap();
    }
    let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the mailer's own purpose arrives")
        .unwrap()
        .unwrap()
        .into_record()
        .unwrap();
    assert_eq!(first.purpose, "promotional_mail");
    assert_eq!(first.actor, "crm");
}

#[tokio::test]
async fn without_callers_serve_refuses_a_non_loopback_address_and_says_why() {
    let db = fresh_database().await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_consentd"))
        .args(["serve", "--database-url", &db.db_url])
        .args(["--grpc-addr", "0.0.0.0:0", "--http-addr", "127.0.0.1:0"])
        .arg("--policy")
        .arg(crate::helpers::policy_path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("serve started on 0.0.0.0 without callers");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("refusing to serve --grpc-addr 0.0.0.0:0 without authentication"),
        "{stderr}"
    );
    assert!(
        stderr.contains("--callers") && stderr.contains("--insecure-no-auth"),
        "{stderr}"
    );
}

#[tokio::test]
async fn without_callers_on_loopback_serve_warns_loudly_at_start() {
    let db = fresh_database().await;
    let mut served = spawn_serve_with(&["--database-url", &db.db_url], &[]);
    served.child.kill().unwrap();
    served.child.wait().unwrap();
    let warned = served
        .started
        .iter()
        .any(|line| line.contains("WARN") && line.contains("NO AUTHENTICATION"));
    assert!(warned, "{}", served.started.join("\n"));
}
