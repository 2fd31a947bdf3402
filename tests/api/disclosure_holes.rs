//! The disclosure holes of issue 10 that the policy closes with or without
//! callers: a legal basis sent to a partner, a retry that outlives a
//! withdrawal, and an approval by the requester.

use consentd::grpc::pb::{self, Choice, DisclosureStatus, LegalBasis, Reason};
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::{
    disclosure::{client, customer, legal_request, vault_counts},
    helpers::{TestApp, as_actor, record_request, spawn_app, violated_fields},
};

fn offer_request(subject: &str, request_id: &str) -> pb::RequestDisclosureRequest {
    pb::RequestDisclosureRequest {
        subject_id: subject.into(),
        recipient_id: "travel-partner".into(),
        purpose: "partner_offers".into(),
        fields: vec!["name".into(), "email".into()],
        request_id: request_id.into(),
        ..Default::default()
    }
}

/// The person's permission for `travel-partner`: all of partner offers, or
/// one field of it.
async fn permit_partner(app: &TestApp, subject: &str, field: &str, choice: Choice) {
    let mut permission = record_request(subject, "partner_offers", field, choice);
    permission.recipient = "travel-partner".into();
    app.client
        .clone()
        .record_consent(permission)
        .await
        .expect("record_consent");
}

fn released_fields(answer: &pb::RequestDisclosureResponse) -> Vec<&str> {
    answer.released.iter().map(|r| r.field.as_str()).collect()
}

#[tokio::test]
async fn a_legal_basis_to_a_partner_or_a_courier_is_refused_and_releases_nothing() {
    let app = spawn_app().await;
    customer(&app, "C-1").await;
    let before = vault_counts(&app).await;
    for basis in [
        LegalBasis::EmergencySafety,
        LegalBasis::LegalProcess,
        LegalBasis::ProtectRightsProperty,
    ] {
        for recipient in ["travel-partner", "express-courier"] {
            let mut request = legal_request("C-1", basis);
            request.recipient_id = recipient.into();
            request.request_id = format!("{recipient}-{}", basis.as_str_name());
            let refused = client(&app).request_disclosure(request).await.unwrap_err();
            assert_eq!(
                violated_fields(&refused),
                ["recipient_id"],
                "{basis:?} to {recipient}"
            );
            let details = refused.get_error_details();
            let violation = &details.bad_request().unwrap().field_violations[0];
            assert!(
                violation
                    .description
                    .ends_with("releases data only to an authority"),
                "{violation:?}"
            );
        }
    }
    assert_eq!(
        vault_counts(&app).await,
        before,
        "no disclosure, event or idempotency key was written"
    );

    // The same emergency to the authority is released at once.
    let served = client(&app)
        .request_disclosure(legal_request("C-1", LegalBasis::EmergencySafety))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(served.status(), DisclosureStatus::Released);
}

#[tokio::test]
async fn a_retry_after_a_field_is_withdrawn_releases_only_what_the_rules_still_allow_and_records_it()
 {
    let app = spawn_app().await;
    customer(&app, "C-2").await;
    permit_partner(&app, "C-2", "", Choice::Grant).await;
    let first = client(&app)
        .request_disclosure(offer_request("C-2", "offer-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(released_fields(&first), ["name", "email"]);
    assert_eq!(app.count("disclosures").await, 1);

    // The person withdraws the email from that partner.
    permit_partner(&app, "C-2", "email", Choice::Refuse).await;
    let retry = client(&app)
        .request_disclosure(offer_request("C-2", "offer-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(released_fields(&retry), ["name"], "the email stays");
    assert_eq!(retry.status(), DisclosureStatus::Partial);
    assert_eq!(retry.withheld.len(), 1);
    assert_eq!(retry.withheld[0].field, "email");
    assert_eq!(retry.withheld[0].reason(), Reason::ConsentRefused);

    // What the retry released is a disclosure of its own in the history.
    assert_eq!(app.count("disclosures").await, 2);
    assert_ne!(retry.disclosure_id, first.disclosure_id);
    let recorded = client(&app)
        .get_disclosure(pb::GetDisclosureRequest {
            disclosure_id: retry.disclosure_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .disclosure
        .unwrap();
    assert_eq!(recorded.fields, ["name"]);
    assert_eq!(recorded.status(), DisclosureStatus::Partial);

    // Every further retry that releases something is recorded too.
    client(&app)
        .request_disclosure(offer_request("C-2", "offer-1"))
        .await
        .unwrap();
    assert_eq!(app.count("disclosures").await, 3);
}

#[tokio::test]
async fn a_retry_after_the_permission_is_withdrawn_releases_nothing() {
    let app = spawn_app().await;
    customer(&app, "C-3").await;
    permit_partner(&app, "C-3", "", Choice::Grant).await;
    let first = client(&app)
        .request_disclosure(offer_request("C-3", "offer-3"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(released_fields(&first), ["name", "email"]);

    permit_partner(&app, "C-3", "", Choice::Refuse).await;
    let retry = client(&app)
        .request_disclosure(offer_request("C-3", "offer-3"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retry.status(), DisclosureStatus::Denied);
    assert!(retry.released.is_empty(), "{:?}", released_fields(&retry));
    assert!(retry.disclosure_id.is_empty());
    assert!(
        retry
            .withheld
            .iter()
            .all(|w| w.reason() == Reason::ConsentRefused)
    );
    assert_eq!(
        app.count("disclosures").await,
        1,
        "a denial is not recorded"
    );
}

/// Without callers the approver is only what `x-actor` says; this is as far
/// as the rule can reach before authentication (h-enforce adds the caller
/// version). The requester's own name, and no name at all, never approve.
#[tokio::test]
async fn the_requester_cannot_approve_under_its_own_x_actor_or_none() {
    let app = spawn_app().await;
    customer(&app, "C-4").await;
    let named = client(&app)
        .request_disclosure(as_actor(
            "officer-li",
            legal_request("C-4", LegalBasis::LegalProcess),
        ))
        .await
        .unwrap()
        .into_inner();
    let mut unnamed_request = legal_request("C-4", LegalBasis::LegalProcess);
    unnamed_request.reference = "case 2026-0043".into();
    let unnamed = client(&app)
        .request_disclosure(unnamed_request)
        .await
        .unwrap()
        .into_inner();
    let approve = |id: &str| pb::ApproveDisclosureRequest {
        disclosure_id: id.into(),
    };

    let own = client(&app)
        .approve_disclosure(as_actor("officer-li", approve(&named.disclosure_id)))
        .await
        .unwrap_err();
    assert_eq!(own.code(), Code::PermissionDenied);
    let anonymous = client(&app)
        .approve_disclosure(approve(&unnamed.disclosure_id))
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::PermissionDenied);
    assert_eq!(app.count("disclosure_events").await, 0);
}
