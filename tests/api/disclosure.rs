//! DisclosureService end to end: the statement's stories (courier, partner,
//! legal process, emergency, accounting), the encryption at rest, key
//! rotation, and bad input that writes nothing.

use consentd::{
    domain::{FieldName, SealedValue, SubjectId},
    grpc::pb::{
        self, Choice, Decision, DisclosureStatus, LegalBasis, Reason,
        disclosure_service_client::DisclosureServiceClient,
    },
    keys::KeyFile as _,
    service::vault::DataKeys,
};
use tonic::{Code, transport::Channel};

use crate::helpers::{TestApp, as_actor, record_request, spawn_app, violated_fields};

const ADDRESS: &str = "Room 1701, 88 Nanjing West Road, Shanghai";
const NAME: &str = "Wang Xiaoming";
const PHONE: &str = "+86 138 0013 8000";
const EMAIL: &str = "xiaoming@example.cn";

pub fn client(app: &TestApp) -> DisclosureServiceClient<Channel> {
    DisclosureServiceClient::new(app.channel.clone())
}

async fn put(app: &TestApp, subject: &str, field: &str, value: &str, purposes: &[&str]) {
    client(app)
        .put_personal_data(put_request(subject, field, value, purposes))
        .await
        .expect("put_personal_data");
}

pub fn put_request(
    subject: &str,
    field: &str,
    value: &str,
    purposes: &[&str],
) -> pb::PutPersonalDataRequest {
    pb::PutPersonalDataRequest {
        subject_id: subject.into(),
        field: field.into(),
        value: value.into(),
        collected_for: purposes.iter().map(|p| p.to_string()).collect(),
        channel: pb::Channel::Web.into(),
        notice_version: "2026-11".into(),
        request_id: String::new(),
    }
}

/// A registered subject with name, address, phone and email on file.
pub async fn customer(app: &TestApp, subject: &str) {
    app.register(subject).await;
    put(
        app,
        subject,
        "name",
        NAME,
        &["order_delivery", "partner_offers"],
    )
    .await;
    put(app, subject, "postal_address", ADDRESS, &["order_delivery"]).await;
    put(app, subject, "phone", PHONE, &["order_delivery"]).await;
    put(app, subject, "email", EMAIL, &["partner_offers"]).await;
}

pub fn courier_request(subject: &str, fields: &[&str]) -> pb::RequestDisclosureRequest {
    pb::RequestDisclosureRequest {
        subject_id: subject.into(),
        recipient_id: "express-courier".into(),
        purpose: "order_delivery".into(),
        fields: fields.iter().map(|f| f.to_string()).collect(),
        reference: "order-7781".into(),
        ..Default::default()
    }
}

pub fn legal_request(subject: &str, basis: LegalBasis) -> pb::RequestDisclosureRequest {
    pb::RequestDisclosureRequest {
        subject_id: subject.into(),
        recipient_id: "public-security".into(),
        fields: vec!["name".into(), "phone".into()],
        legal_basis: basis.into(),
        reference: "case 2026-0042".into(),
        justification: "Notice of assistance in an investigation".into(),
        ..Default::default()
    }
}

fn released(fields: &[pb::ReleasedField]) -> Vec<(&str, &str)> {
    fields
        .iter()
        .map(|r| (r.field.as_str(), r.value.as_str()))
        .collect()
}

/// Rows in every table the DisclosureService writes.
pub async fn vault_counts(app: &TestApp) -> [i64; 5] {
    [
        app.count("personal_data").await,
        app.count("collection_records").await,
        app.count("disclosures").await,
        app.count("disclosure_events").await,
        app.count("idempotency_keys").await,
    ]
}

#[tokio::test]
async fn a_courier_gets_exactly_name_and_address_for_an_order_and_never_the_phone() {
    let app = spawn_app().await;
    customer(&app, "C-1042").await;

    let answer = client(&app)
        .request_disclosure(as_actor(
            "shipping",
            courier_request("C-1042", &["name", "postal_address"]),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.status(), DisclosureStatus::Released);
    assert_eq!(
        released(&answer.released),
        [("name", NAME), ("postal_address", ADDRESS)]
    );
    assert!(answer.released.iter().all(|r| !r.needs_verification));
    assert!(!answer.disclosure_id.is_empty());

    // Asking for the phone too gets it withheld, whatever the caller says.
    let insisting = client(&app)
        .request_disclosure(courier_request(
            "C-1042",
            &["name", "postal_address", "phone"],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(insisting.status(), DisclosureStatus::Partial);
    assert_eq!(
        released(&insisting.released),
        [("name", NAME), ("postal_address", ADDRESS)]
    );
    assert_eq!(insisting.withheld.len(), 1);
    assert_eq!(insisting.withheld[0].field, "phone");
    assert_eq!(insisting.withheld[0].reason(), Reason::FieldNotPermitted);

    // Each release is in the history, with its fields but never a value.
    let stored = client(&app)
        .get_disclosure(pb::GetDisclosureRequest {
            disclosure_id: answer.disclosure_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .disclosure
        .unwrap();
    assert_eq!(stored.recipient_id, "express-courier");
    assert_eq!(stored.purpose, "order_delivery");
    assert_eq!(stored.reference, "order-7781");
    assert_eq!(stored.requested_by, "shipping");
    assert_eq!(stored.fields, ["name", "postal_address"]);
    assert!(stored.released_at.is_some());
    assert_eq!(app.count("disclosures").await, 2);
}

#[tokio::test]
async fn a_stored_withheld_reason_it_cannot_read_fails_the_call_instead_of_being_guessed() {
    let app = spawn_app().await;
    customer(&app, "C-1042").await;
    let answer = client(&app)
        .request_disclosure(courier_request(
            "C-1042",
            &["name", "postal_address", "phone"],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.withheld[0].reason(), Reason::FieldNotPermitted);
    let get = pb::GetDisclosureRequest {
        disclosure_id: answer.disclosure_id.clone(),
    };
    let stored = client(&app)
        .get_disclosure(get.clone())
        .await
        .unwrap()
        .into_inner()
        .disclosure
        .unwrap();
    assert_eq!(stored.withheld[0].reason(), Reason::FieldNotPermitted);

    // A text no release of this version writes, as a damaged row would hold.
    app.db
        .batch_execute(
            "ALTER TABLE disclosures DISABLE TRIGGER disclosures_append_only;
             UPDATE disclosures SET withheld = ARRAY['phone:made_up'];",
        )
        .await
        .unwrap();
    let status = client(&app).get_disclosure(get).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
}

#[tokio::test]
async fn a_field_with_no_stored_value_is_withheld_as_not_collected() {
    let app = spawn_app().await;
    app.register("C-2").await;
    put(&app, "C-2", "name", NAME, &["order_delivery"]).await;
    let answer = client(&app)
        .request_disclosure(courier_request("C-2", &["name", "postal_address"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.status(), DisclosureStatus::Partial);
    assert_eq!(released(&answer.released), [("name", NAME)]);
    assert_eq!(answer.withheld[0].field, "postal_address");
    assert_eq!(answer.withheld[0].reason(), Reason::NotCollected);
}

#[tokio::test]
async fn a_partner_without_permission_is_denied_and_with_a_permission_naming_it_is_served() {
    let app = spawn_app().await;
    customer(&app, "C-7").await;
    let ask = || pb::RequestDisclosureRequest {
        subject_id: "C-7".into(),
        recipient_id: "travel-partner".into(),
        purpose: "partner_offers".into(),
        fields: vec!["name".into(), "email".into()],
        ..Default::default()
    };

    let denied = client(&app)
        .request_disclosure(ask())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(denied.status(), DisclosureStatus::Denied);
    assert!(denied.released.is_empty());
    assert!(denied.disclosure_id.is_empty());
    assert!(
        denied
            .withheld
            .iter()
            .all(|w| w.reason() == Reason::NoConsent)
    );
    assert_eq!(
        app.count("disclosures").await,
        0,
        "a denial releases nothing"
    );

    // A general grant of partner offers names no recipient: still denied.
    app.record("C-7", "partner_offers", "", Choice::Grant).await;
    let general = client(&app)
        .request_disclosure(ask())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(general.status(), DisclosureStatus::Denied);

    // The separate consent (PIPL Art. 23) names the partner.
    let mut permission = record_request("C-7", "partner_offers", "", Choice::Grant);
    permission.recipient = "travel-partner".into();
    let record = app
        .client
        .clone()
        .record_consent(permission)
        .await
        .unwrap()
        .into_inner()
        .record
        .unwrap();
    assert_eq!(record.recipient, "travel-partner");

    let served = client(&app)
        .request_disclosure(ask())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(served.status(), DisclosureStatus::Released);
    assert_eq!(
        released(&served.released),
        [("name", NAME), ("email", EMAIL)]
    );

    // A recipient-named permission does not change what Check answers.
    let check = app.check("C-7", "partner_offers", "email").await;
    assert_eq!(
        (check.decision(), check.reason()),
        (Decision::Allow, Reason::ConsentGranted)
    );

    // A later general refusal withdraws the partner's permission too.
    app.record("C-7", "partner_offers", "", Choice::Refuse)
        .await;
    let withdrawn = client(&app)
        .request_disclosure(ask())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(withdrawn.status(), DisclosureStatus::Denied);
    assert_eq!(withdrawn.withheld[0].reason(), Reason::ConsentRefused);
}

#[tokio::test]
async fn a_permission_naming_an_unknown_or_unrelated_recipient_is_refused() {
    let app = spawn_app().await;
    app.register("C-8").await;
    let before = app.counts().await;
    for recipient in ["nobody", "express-courier", "Bad Id"] {
        let mut permission = record_request("C-8", "partner_offers", "", Choice::Grant);
        permission.recipient = recipient.into();
        let status = app
            .client
            .clone()
            .record_consent(permission)
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), ["recipient"], "{recipient}");
    }
    assert_eq!(app.counts().await, before);
}

#[tokio::test]
async fn a_legal_process_request_waits_for_a_second_person() {
    let app = spawn_app().await;
    customer(&app, "C-9").await;

    let pending = client(&app)
        .request_disclosure(as_actor(
            "officer-li",
            legal_request("C-9", LegalBasis::LegalProcess),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pending.status(), DisclosureStatus::PendingApproval);
    assert!(
        pending.released.is_empty(),
        "nothing goes out before approval"
    );
    let id = pending.disclosure_id.clone();

    // The requester cannot approve their own request.
    let own = client(&app)
        .approve_disclosure(as_actor(
            "officer-li",
            pb::ApproveDisclosureRequest {
                disclosure_id: id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(own.code(), Code::PermissionDenied);
    assert_eq!(app.count("disclosure_events").await, 0);

    let approved = client(&app)
        .approve_disclosure(as_actor(
            "legal-zhang",
            pb::ApproveDisclosureRequest {
                disclosure_id: id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(approved.disclosure_id, id);
    assert_eq!(approved.status(), DisclosureStatus::Released);
    assert_eq!(
        released(&approved.released),
        [("name", NAME), ("phone", PHONE)]
    );

    // Approving twice is refused: it is no longer pending.
    let again = client(&app)
        .approve_disclosure(as_actor(
            "legal-wu",
            pb::ApproveDisclosureRequest {
                disclosure_id: id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);

    let stored = client(&app)
        .get_disclosure(pb::GetDisclosureRequest { disclosure_id: id })
        .await
        .unwrap()
        .into_inner()
        .disclosure
        .unwrap();
    assert_eq!(stored.status(), DisclosureStatus::Released);
    assert_eq!(stored.legal_basis(), LegalBasis::LegalProcess);
    assert_eq!(stored.purpose, "");
    assert_eq!(stored.requested_by, "officer-li");
    assert_eq!(stored.approved_by, "legal-zhang");
}

#[tokio::test]
async fn an_emergency_is_released_at_once_and_shows_up_as_due_for_review() {
    let app = spawn_app().await;
    customer(&app, "C-11").await;

    let answer = client(&app)
        .request_disclosure(as_actor(
            "duty-officer",
            legal_request("C-11", LegalBasis::EmergencySafety),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.status(), DisclosureStatus::Released);
    assert_eq!(
        released(&answer.released),
        [("name", NAME), ("phone", PHONE)]
    );
    let stored = client(&app)
        .get_disclosure(pb::GetDisclosureRequest {
            disclosure_id: answer.disclosure_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .disclosure
        .unwrap();
    let due = stored.review_due.unwrap().seconds - stored.requested_at.unwrap().seconds;
    assert!((72 * 3600 - 5..=72 * 3600 + 5).contains(&due), "{due}");

    let overdue = || async {
        client(&app)
            .list_disclosures(pb::ListDisclosuresRequest {
                overdue_review_only: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .disclosures
            .into_iter()
            .map(|d| d.disclosure_id)
            .collect::<Vec<_>>()
    };
    assert!(overdue().await.is_empty(), "not due for 72 hours");

    // An emergency release from four days ago, never reviewed. The history
    // is append-only, so it is written as it would have been then.
    app.db
        .execute(
            "INSERT INTO disclosures (subject_id, disclosure_id, recipient_id, legal_basis,
                 reference, justification, fields, withheld, status, review_due,
                 requested_by, requested_at)
             VALUES ('C-11', '01900000-0000-7000-8000-000000000001', 'public-security',
                 'emergency_safety', 'case 1', 'fire', ARRAY['phone'], ARRAY[]::text[],
                 'released', now() - interval '1 day', 'duty-officer', now() - interval '4 days')",
            &[],
        )
        .await
        .unwrap();
    let old = "01900000-0000-7000-8000-000000000001".to_string();
    assert_eq!(overdue().await, std::slice::from_ref(&old));

    let own = client(&app)
        .review_disclosure(as_actor(
            "duty-officer",
            pb::ReviewDisclosureRequest {
                disclosure_id: old.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(own.code(), Code::PermissionDenied);

    let reviewed = client(&app)
        .review_disclosure(as_actor(
            "dpo",
            pb::ReviewDisclosureRequest {
                disclosure_id: old.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .disclosure
        .unwrap();
    assert_eq!(reviewed.reviewed_by, "dpo");
    assert!(overdue().await.is_empty());

    // A courier release has no review to close.
    let courier = client(&app)
        .request_disclosure(courier_request("C-11", &["name"]))
        .await
        .unwrap()
        .into_inner();
    let none = client(&app)
        .review_disclosure(as_actor(
            "dpo",
            pb::ReviewDisclosureRequest {
                disclosure_id: courier.disclosure_id,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn the_subjects_accounting_lists_each_disclosure_in_pages_without_values() {
    let app = spawn_app().await;
    customer(&app, "C-20").await;
    customer(&app, "C-21").await;
    let mut ids = Vec::new();
    for request in [
        courier_request("C-20", &["name", "postal_address"]),
        legal_request("C-20", LegalBasis::EmergencySafety),
        legal_request("C-20", LegalBasis::LegalProcess),
    ] {
        ids.push(
            client(&app)
                .request_disclosure(request)
                .await
                .unwrap()
                .into_inner()
                .disclosure_id,
        );
    }
    client(&app)
        .request_disclosure(courier_request("C-21", &["name"]))
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client(&app)
            .list_disclosures(pb::ListDisclosuresRequest {
                subject_id: "C-20".into(),
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.disclosures.len() <= 2);
        seen.extend(page.disclosures);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let listed: Vec<_> = seen.iter().map(|d| d.disclosure_id.clone()).collect();
    assert_eq!(listed, ids);
    assert!(seen.iter().all(|d| d.subject_id == "C-20"));
    let recipients: Vec<_> = seen.iter().map(|d| d.recipient_id.as_str()).collect();
    assert_eq!(
        recipients,
        ["express-courier", "public-security", "public-security"]
    );
    assert_eq!(seen[2].status(), DisclosureStatus::PendingApproval);
    let everything = format!("{seen:?}");
    for value in [NAME, ADDRESS, PHONE, EMAIL] {
        assert!(
            !everything.contains(value),
            "the accounting holds no values"
        );
    }

    // A token works only for the listing it was issued for.
    let first = client(&app)
        .list_disclosures(pb::ListDisclosuresRequest {
            subject_id: "C-20".into(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let stolen = client(&app)
        .list_disclosures(pb::ListDisclosuresRequest {
            subject_id: "C-21".into(),
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&stolen), ["page_token"]);
}

#[tokio::test]
async fn no_stored_value_appears_in_plaintext_in_any_table() {
    let app = spawn_app().await;
    customer(&app, "C-30").await;
    client(&app)
        .request_disclosure(courier_request("C-30", &["name", "postal_address"]))
        .await
        .unwrap();

    let tables: Vec<String> = app
        .db
        .query(
            "SELECT table_name::text FROM information_schema.tables
              WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(tables.contains(&"personal_data".to_string()));
    let mut dump = String::new();
    for table in &tables {
        for row in app
            .db
            .query(&format!("SELECT t::text FROM {table} t"), &[])
            .await
            .unwrap()
        {
            dump.push_str(row.get::<_, &str>(0));
            dump.push('\n');
        }
    }
    assert_eq!(app.count("personal_data").await, 4);
    for value in [NAME, ADDRESS, PHONE, EMAIL] {
        // bytea columns print as hex, so look for the hex form too.
        let hex: String = value.bytes().map(|b| format!("{b:02x}")).collect();
        assert!(!dump.contains(value), "`{value}` is stored in plaintext");
        assert!(
            !dump.contains(&hex),
            "`{value}` is stored unencrypted as bytes"
        );
        // Not even a fragment of it.
        assert!(!dump.contains(&value[..8]), "a part of `{value}` is stored");
    }
}

#[tokio::test]
async fn a_value_copied_to_another_row_is_refused_instead_of_released() {
    let app = spawn_app().await;
    customer(&app, "C-40").await;
    // Someone with database access moves the address into the name row.
    app.db
        .execute(
            "UPDATE personal_data AS n SET key_id = a.key_id, nonce = a.nonce, ciphertext = a.ciphertext
               FROM personal_data a
              WHERE n.subject_id = 'C-40' AND n.field = 'name'
                AND a.subject_id = 'C-40' AND a.field = 'postal_address'",
            &[],
        )
        .await
        .unwrap();
    let before = app.count("disclosures").await;
    let status = client(&app)
        .request_disclosure(courier_request("C-40", &["name"]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert!(!status.message().contains("Nanjing"), "{status:?}");
    assert_eq!(
        app.count("disclosures").await,
        before,
        "nothing released, nothing recorded"
    );
}

/// Each stored field of `subject` with its `verified_at` in microseconds
/// since the epoch (PostgreSQL's precision), by field.
async fn verified_at_micros(app: &TestApp, subject: &str) -> Vec<(String, Option<i64>)> {
    app.db
        .query(
            "SELECT field, (extract(epoch FROM verified_at) * 1000000)::bigint
               FROM personal_data WHERE subject_id = $1 ORDER BY field",
            &[&subject],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn check_flags_stale_data_and_verification_makes_it_fresh_again() {
    let app = spawn_app().await;
    customer(&app, "C-50").await;
    let fresh = app.check("C-50", "order_delivery", "postal_address").await;
    assert_eq!(fresh.decision(), Decision::Allow);
    assert!(!fresh.needs_verification);

    // Collected 400 days ago and never verified; the policy allows 365.
    app.db
        .execute(
            "UPDATE personal_data SET collected_at = now() - interval '400 days'
              WHERE subject_id = 'C-50'",
            &[],
        )
        .await
        .unwrap();
    // Changed behind the server's back: ask for an answer that fresh.
    let fresh_now = app.position_now().await;
    let stale = app
        .check_with("C-50", "order_delivery", "postal_address", fresh_now)
        .await;
    assert_eq!(
        (stale.decision(), stale.reason(), stale.needs_verification),
        (Decision::Allow, Reason::Contract, true)
    );
    // Fields without a maximum age are never stale.
    assert!(
        !app.check("C-50", "order_delivery", "name")
            .await
            .needs_verification
    );
    let courier = client(&app)
        .request_disclosure(courier_request("C-50", &["postal_address"]))
        .await
        .unwrap()
        .into_inner();
    assert!(courier.released[0].needs_verification);

    let answer = client(&app)
        .verify_personal_data(pb::VerifyPersonalDataRequest {
            subject_id: "C-50".into(),
            field: "postal_address".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let at = answer.verified_at.expect("the verification time");
    assert_eq!(
        verified_at_micros(&app, "C-50").await,
        [
            ("email".to_string(), None),
            ("name".to_string(), None),
            ("phone".to_string(), None),
            (
                "postal_address".to_string(),
                Some(at.seconds * 1_000_000 + i64::from(at.nanos) / 1000)
            ),
        ],
        "exactly that field is verified, at the time answered"
    );
    let verified = app.check("C-50", "order_delivery", "postal_address").await;
    assert_eq!(
        (
            verified.decision(),
            verified.reason(),
            verified.needs_verification
        ),
        (Decision::Allow, Reason::Contract, false)
    );
    let courier = client(&app)
        .request_disclosure(courier_request("C-50", &["postal_address"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(released(&courier.released), [("postal_address", ADDRESS)]);
    assert!(!courier.released[0].needs_verification);

    // A field that is not stored cannot be verified, and nothing is written.
    app.register("C-51").await;
    put(&app, "C-51", "name", NAME, &["order_delivery"]).await;
    let (before, rows) = (
        vault_counts(&app).await,
        verified_at_micros(&app, "C-51").await,
    );
    let missing = client(&app)
        .verify_personal_data(pb::VerifyPersonalDataRequest {
            subject_id: "C-51".into(),
            field: "email".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    assert_eq!(vault_counts(&app).await, before);
    assert_eq!(verified_at_micros(&app, "C-51").await, rows);
    assert_eq!(rows, [("name".to_string(), None)]);
    let unknown = client(&app)
        .verify_personal_data(pb::VerifyPersonalDataRequest {
            subject_id: "C-nobody".into(),
            field: "email".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

#[tokio::test]
async fn stale_data_is_denied_where_the_purpose_requires_fresh_data() {
    let app = spawn_app().await;
    customer(&app, "C-55").await;
    let mut permission = record_request("C-55", "partner_offers", "", Choice::Grant);
    permission.recipient = "travel-partner".into();
    app.client.clone().record_consent(permission).await.unwrap();
    app.record("C-55", "partner_offers", "", Choice::Grant)
        .await;

    // partner_offers allows email verified within 730 days, and requires it.
    app.db
        .execute(
            "UPDATE personal_data SET collected_at = now() - interval '800 days'
              WHERE subject_id = 'C-55'",
            &[],
        )
        .await
        .unwrap();
    let fresh_now = app.position_now().await;
    let check = app
        .check_with("C-55", "partner_offers", "email", fresh_now)
        .await;
    assert_eq!(
        (check.decision(), check.reason(), check.needs_verification),
        (Decision::Deny, Reason::StaleData, true)
    );
    let answer = client(&app)
        .request_disclosure(pb::RequestDisclosureRequest {
            subject_id: "C-55".into(),
            recipient_id: "travel-partner".into(),
            purpose: "partner_offers".into(),
            fields: vec!["name".into(), "email".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.status(), DisclosureStatus::Partial);
    assert_eq!(released(&answer.released), [("name", NAME)]);
    assert_eq!(answer.withheld[0].reason(), Reason::StaleData);
}

#[tokio::test]
async fn a_retried_disclosure_request_is_answered_once_and_recorded_once() {
    let app = spawn_app().await;
    customer(&app, "C-56").await;
    let mut request = courier_request("C-56", &["name", "postal_address", "phone"]);
    request.request_id = "ship-7781-1".into();
    let first = client(&app)
        .request_disclosure(request.clone())
        .await
        .unwrap()
        .into_inner();
    let retry = client(&app)
        .request_disclosure(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retry, first);
    assert_eq!(app.count("disclosures").await, 1);

    request.fields.pop();
    let reused = client(&app).request_disclosure(request).await.unwrap_err();
    assert_eq!(reused.code(), Code::AlreadyExists);
    assert_eq!(app.count("disclosures").await, 1);
}

#[tokio::test]
async fn a_new_value_replaces_the_old_but_every_collection_is_kept() {
    let app = spawn_app().await;
    app.register("C-60").await;
    put(
        &app,
        "C-60",
        "postal_address",
        "Old Street 1",
        &["order_delivery"],
    )
    .await;
    put(&app, "C-60", "postal_address", ADDRESS, &["order_delivery"]).await;
    let mut retry = put_request("C-60", "name", NAME, &["order_delivery"]);
    retry.request_id = "put-1".into();
    let first = client(&app)
        .put_personal_data(retry.clone())
        .await
        .unwrap()
        .into_inner();
    let second = client(&app)
        .put_personal_data(retry)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.collection_id, second.collection_id);

    assert_eq!(app.count("personal_data").await, 2);
    assert_eq!(app.count("collection_records").await, 3);
    let answer = client(&app)
        .request_disclosure(courier_request("C-60", &["postal_address"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(released(&answer.released), [("postal_address", ADDRESS)]);
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_writes_nothing() {
    let app = spawn_app().await;
    customer(&app, "C-70").await;
    let before = (vault_counts(&app).await, app.counts().await);

    let disclose = |request: pb::RequestDisclosureRequest| {
        let mut c = client(&app);
        async move { c.request_disclosure(request).await.unwrap_err() }
    };
    let mut unknown_recipient = courier_request("C-70", &["name"]);
    unknown_recipient.recipient_id = "sf-express".into();
    assert_eq!(
        violated_fields(&disclose(unknown_recipient).await),
        ["recipient_id"]
    );
    assert_eq!(
        violated_fields(&disclose(courier_request("C-70", &["name", "fax"])).await),
        ["fields[1]"]
    );
    let mut no_order = courier_request("C-70", &["name"]);
    no_order.reference.clear();
    assert_eq!(violated_fields(&disclose(no_order).await), ["reference"]);
    let mut bare = legal_request("C-70", LegalBasis::LegalProcess);
    bare.reference.clear();
    bare.justification.clear();
    assert_eq!(
        violated_fields(&disclose(bare).await),
        ["reference", "justification"]
    );
    let mut both = legal_request("C-70", LegalBasis::LegalProcess);
    both.purpose = "order_delivery".into();
    assert_eq!(violated_fields(&disclose(both).await), ["purpose"]);
    let mut neither = courier_request("C-70", &[]);
    neither.purpose.clear();
    // No ground and no field: both are named at once.
    assert_eq!(
        violated_fields(&disclose(neither).await),
        ["purpose", "fields"]
    );

    let mut c = client(&app);
    let bad_put = c
        .put_personal_data(put_request("C-70", "fax", "", &["promo", "order_delivery"]))
        .await
        .unwrap_err();
    // The policy's checks run on what parsed: every offending field at once.
    assert_eq!(
        violated_fields(&bad_put),
        ["value", "field", "collected_for[0]", "collected_for[1]"]
    );
    let wrong_purpose = c
        .put_personal_data(put_request("C-70", "phone", PHONE, &["partner_offers"]))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&wrong_purpose), ["collected_for[0]"]);
    let undeclared = c
        .put_personal_data(put_request("C-70", "fax", PHONE, &[]))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&undeclared), ["field", "collected_for"]);
    // The value never comes back in an error.
    assert!(!format!("{undeclared:?}").contains(PHONE));
    let unregistered = c
        .put_personal_data(put_request("C-nobody", "phone", PHONE, &["order_delivery"]))
        .await
        .unwrap_err();
    assert_eq!(unregistered.code(), Code::NotFound);

    assert_eq!((vault_counts(&app).await, app.counts().await), before);
}

#[tokio::test]
async fn list_recipients_names_each_recipient_and_its_contact() {
    let app = spawn_app().await;
    let list = client(&app)
        .list_recipients(pb::ListRecipientsRequest {})
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = list
        .recipients
        .iter()
        .map(|r| (r.recipient_id.as_str(), r.category()))
        .collect();
    assert_eq!(
        ids,
        [
            ("express-courier", pb::RecipientCategory::Courier),
            ("public-security", pb::RecipientCategory::Authority),
            ("travel-partner", pb::RecipientCategory::Partner),
        ]
    );
    assert!(
        list.recipients
            .iter()
            .all(|r| !r.name.is_empty() && !r.contact.is_empty())
    );
    assert_eq!(list.recipients[2].purposes, ["partner_offers"]);
}

#[tokio::test]
async fn keys_rotate_re_encrypts_every_value_under_the_new_first_key() {
    let app = spawn_app().await;
    customer(&app, "C-80").await;
    customer(&app, "C-81").await;

    let old = std::fs::read_to_string(crate::helpers::test_data_keys_file()).unwrap();
    let new_key = "d2=bmV3LXZhdWx0LWtleS0wMTIzNDU2Nzg5YWJjZGVmISE=\n";
    let dir = std::env::temp_dir().join(format!("consentd-rotate-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let both = dir.join("both.keys");
    std::fs::write(&both, format!("{new_key}{old}")).unwrap();
    let only_new = dir.join("new.keys");
    std::fs::write(&only_new, new_key).unwrap();

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_consentd"))
        .args(["keys", "rotate", "--batch-size", "3", "--data-keys-file"])
        .arg(&both)
        .args(["--database-url", app.db_url()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("re-encrypted 8 value(s) under key `d2`"),
        "{stdout}"
    );

    // Every row now opens with the new key alone, to the value first
    // stored; the old key can go.
    let original = |field: &str| match field {
        "name" => NAME,
        "postal_address" => ADDRESS,
        "phone" => PHONE,
        "email" => EMAIL,
        other => panic!("unexpected field {other}"),
    };
    let keys = DataKeys::load(&only_new).unwrap();
    let rows = app
        .db
        .query(
            "SELECT subject_id, field, key_id, nonce, ciphertext FROM personal_data",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 8);
    for row in rows {
        let sealed = SealedValue {
            key_id: row.get(2),
            nonce: row.get(3),
            ciphertext: row.get(4),
        };
        assert_eq!(sealed.key_id, "d2");
        let subject = SubjectId::parse(row.get::<_, String>(0)).unwrap();
        let field = FieldName::parse(row.get::<_, String>(1)).unwrap();
        let value = keys.open(&subject, &field, &sealed).unwrap();
        assert_eq!(
            value.as_str(),
            original(field.as_str()),
            "{subject}/{field}"
        );
    }

    // The running server still has only the old key configured: it refuses
    // to release what it cannot open, rather than release something wrong.
    let status = client(&app)
        .request_disclosure(courier_request("C-80", &["name"]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal);

    // Running it again finds nothing left to do.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_consentd"))
        .args(["keys", "rotate", "--data-keys-file"])
        .arg(&both)
        .args(["--database-url", app.db_url()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("re-encrypted 0 value(s)"));
    let _ = std::fs::remove_dir_all(dir);
}
