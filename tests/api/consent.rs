//! ConsentService end to end: the README story, every rule through the real
//! server, idempotency, bad input and concurrency.

use consentd::grpc::pb::{self, Choice, Decision, Reason};
use tonic::Code;

use crate::helpers::{as_actor, record_request, spawn_app, violated_fields};

#[tokio::test]
async fn a_registered_subject_gets_promotional_mail_until_they_refuse() {
    let app = spawn_app().await;
    app.register("C-1042").await;

    let before = app.check("C-1042", "promotional_mail", "email").await;
    assert_eq!(before.decision(), Decision::Allow);
    assert_eq!(before.reason(), Reason::NotOptedOut);
    assert_eq!(before.policy_version, "2026-11-24.2");

    let refusal = app
        .record("C-1042", "promotional_mail", "", Choice::Refuse)
        .await;
    let after = app.check("C-1042", "promotional_mail", "email").await;
    assert_eq!(after.decision(), Decision::Deny);
    assert_eq!(after.reason(), Reason::OptedOut);
    assert_eq!(after.record_id, refusal.record_id);

    // Contract purposes are not affected by the refusal.
    let delivery = app
        .check("C-1042", "order_delivery", "postal_address")
        .await;
    assert_eq!(
        (delivery.decision(), delivery.reason()),
        (Decision::Allow, Reason::Contract)
    );
}

#[tokio::test]
async fn an_unknown_subject_is_denied_never_allowed() {
    let app = spawn_app().await;
    for purpose in ["promotional_mail", "order_delivery", "partner_offers"] {
        let answer = app.check("C-typo", purpose, "name").await;
        assert_eq!(
            (answer.decision(), answer.reason()),
            (Decision::Deny, Reason::SubjectUnknown),
            "{purpose}"
        );
    }
}

#[tokio::test]
async fn partner_offers_need_an_explicit_grant_and_a_refusal_withdraws_it() {
    let app = spawn_app().await;
    app.register("C-7").await;
    let none = app.check("C-7", "partner_offers", "email").await;
    assert_eq!(
        (none.decision(), none.reason()),
        (Decision::Deny, Reason::NoConsent)
    );

    let grant = app.record("C-7", "partner_offers", "", Choice::Grant).await;
    let granted = app.check("C-7", "partner_offers", "email").await;
    assert_eq!(
        (granted.decision(), granted.reason()),
        (Decision::Allow, Reason::ConsentGranted)
    );
    assert_eq!(granted.record_id, grant.record_id);

    // A field-specific refusal after the purpose-wide grant wins for that field only.
    app.record("C-7", "partner_offers", "email", Choice::Refuse)
        .await;
    let email = app.check("C-7", "partner_offers", "email").await;
    assert_eq!(
        (email.decision(), email.reason()),
        (Decision::Deny, Reason::ConsentRefused)
    );
    let name = app.check("C-7", "partner_offers", "name").await;
    assert_eq!(
        (name.decision(), name.reason()),
        (Decision::Allow, Reason::ConsentGranted)
    );
}

#[tokio::test]
async fn a_field_the_purpose_does_not_use_is_denied() {
    let app = spawn_app().await;
    app.register("C-8").await;
    let answer = app.check("C-8", "promotional_mail", "phone").await;
    assert_eq!(
        (answer.decision(), answer.reason()),
        (Decision::Deny, Reason::FieldNotPermitted)
    );
}

#[tokio::test]
async fn undeclared_purposes_and_fields_are_invalid_arguments_not_decisions() {
    let app = spawn_app().await;
    app.register("C-9").await;
    let status = app
        .client
        .clone()
        .check(pb::CheckRequest {
            subject_id: "C-9".into(),
            purpose: "promo_mail".into(),
            field: "email".into(),
            consistency: None,
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["purpose"]);
    assert!(status.message().contains("purpose"), "{}", status.message());

    let status = app
        .client
        .clone()
        .check(pb::CheckRequest {
            subject_id: "C-9".into(),
            purpose: "promotional_mail".into(),
            field: "fax".into(),
            consistency: None,
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["field"]);
}

#[tokio::test]
async fn a_retry_with_the_same_request_id_returns_the_original_record_and_writes_nothing() {
    let app = spawn_app().await;
    app.register("C-1").await;
    let mut request = record_request("C-1", "promotional_mail", "", Choice::Refuse);
    request.request_id = "req-1".into();

    let first = app
        .client
        .clone()
        .record_consent(request.clone())
        .await
        .unwrap()
        .into_inner()
        .record
        .unwrap();
    let counts = app.counts().await;
    let second = app
        .client
        .clone()
        .record_consent(request.clone())
        .await
        .unwrap()
        .into_inner()
        .record
        .unwrap();
    assert_eq!(first, second);
    assert_eq!(second.request_id, "req-1");
    assert_eq!(app.counts().await, counts);

    request.choice = Choice::Grant.into();
    let status = app
        .client
        .clone()
        .record_consent(request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(app.counts().await, counts);
}

#[tokio::test]
async fn concurrent_retries_with_one_request_id_write_one_record() {
    let app = spawn_app().await;
    app.register("C-2").await;
    let mut request = record_request("C-2", "promotional_mail", "", Choice::Refuse);
    request.request_id = "req-concurrent".into();
    let calls = (0..16).map(|_| {
        let mut client = app.client.clone();
        let request = request.clone();
        tokio::spawn(async move {
            client
                .record_consent(request)
                .await
                .map(|r| r.into_inner().record.unwrap())
        })
    });
    let records: Vec<_> = futures_results(calls).await;
    assert!(
        records.windows(2).all(|w| w[0] == w[1]),
        "every retry sees the same record"
    );
    assert_eq!(app.count("consent_records").await, 1);
}

async fn futures_results<T: std::fmt::Debug>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<Result<T, tonic::Status>>>,
) -> Vec<T> {
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap().unwrap());
    }
    out
}

#[tokio::test]
async fn register_subject_is_an_idempotent_upsert() {
    let app = spawn_app().await;
    let mut request = pb::RegisterSubjectRequest {
        subject_id: "ACME-1".into(),
        kind: pb::SubjectKind::Organization.into(),
        notice_version: "2026-01".into(),
        channel: pb::Channel::Api.into(),
        request_id: String::new(),
    };
    let first = app
        .client
        .clone()
        .register_subject(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(first.created);
    let again = app
        .client
        .clone()
        .register_subject(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(!again.created);
    assert_eq!(
        again.subject, first.subject,
        "an unchanged registration changes nothing"
    );

    request.notice_version = "2026-11".into();
    let updated = app
        .client
        .clone()
        .register_subject(request)
        .await
        .unwrap()
        .into_inner();
    assert!(!updated.created);
    let subject = updated.subject.unwrap();
    assert_eq!(subject.notice_version, "2026-11");
    assert_eq!(subject.kind(), pb::SubjectKind::Organization);
    assert_eq!(app.count("subjects").await, 1);
}

#[tokio::test]
async fn recording_for_an_unregistered_subject_is_not_found_and_writes_nothing() {
    let app = spawn_app().await;
    let mut request = record_request("C-ghost", "promotional_mail", "", Choice::Refuse);
    request.request_id = "req-ghost".into();
    let status = app
        .client
        .clone()
        .record_consent(request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(app.counts().await, [0, 0, 0, 0]);
}

#[tokio::test]
async fn the_actor_comes_from_x_actor_metadata_and_defaults_to_anonymous() {
    let app = spawn_app().await;
    app.register("C-3").await;
    let request = record_request("C-3", "promotional_mail", "", Choice::Refuse);
    let record = app
        .client
        .clone()
        .record_consent(as_actor("agent-42", request.clone()))
        .await
        .unwrap()
        .into_inner()
        .record
        .unwrap();
    assert_eq!(record.actor, "agent-42");
    let record = app
        .record("C-3", "promotional_mail", "", Choice::Grant)
        .await;
    assert_eq!(record.actor, "anonymous");

    let status = app
        .client
        .clone()
        .record_consent(as_actor(" padded", request))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["x-actor"]);
}

#[tokio::test]
async fn batch_check_answers_in_order_with_correlation_ids() {
    let app = spawn_app().await;
    app.register("C-1").await;
    app.register("C-2").await;
    app.record("C-2", "promotional_mail", "", Choice::Refuse)
        .await;
    let item = |id: &str, subject: &str, purpose: &str, field: &str| pb::BatchCheckItem {
        correlation_id: id.into(),
        subject_id: subject.into(),
        purpose: purpose.into(),
        field: field.into(),
    };
    let response = app
        .client
        .clone()
        .batch_check(pb::BatchCheckRequest {
            items: vec![
                item("a", "C-1", "promotional_mail", "email"),
                item("b", "C-2", "promotional_mail", "email"),
                item("c", "C-404", "promotional_mail", "email"),
                item("d", "C-2", "order_delivery", "name"),
            ],
            consistency: None,
        })
        .await
        .unwrap()
        .into_inner();
    let got: Vec<_> = response
        .results
        .iter()
        .map(|r| (r.correlation_id.as_str(), r.decision(), r.reason()))
        .collect();
    assert_eq!(
        got,
        [
            ("a", Decision::Allow, Reason::NotOptedOut),
            ("b", Decision::Deny, Reason::OptedOut),
            ("c", Decision::Deny, Reason::SubjectUnknown),
            ("d", Decision::Allow, Reason::Contract),
        ]
    );
    assert_eq!(response.policy_version, "2026-11-24.2");
}

#[tokio::test]
async fn batch_check_takes_one_to_a_thousand_items() {
    let app = spawn_app().await;
    app.register("C-1").await;
    let item = pb::BatchCheckItem {
        correlation_id: "x".into(),
        subject_id: "C-1".into(),
        purpose: "promotional_mail".into(),
        field: "email".into(),
    };
    let full = app
        .client
        .clone()
        .batch_check(pb::BatchCheckRequest {
            items: vec![item.clone(); 1000],
            consistency: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(full.results.len(), 1000);

    for items in [vec![item.clone(); 1001], vec![]] {
        let status = app
            .client
            .clone()
            .batch_check(pb::BatchCheckRequest {
                items,
                consistency: None,
            })
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), ["items"]);
    }

    let mut bad = vec![item.clone(); 3];
    bad[1].purpose = "nope".into();
    bad[2].subject_id = String::new();
    let status = app
        .client
        .clone()
        .batch_check(pb::BatchCheckRequest {
            items: bad,
            consistency: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&status),
        ["items[1].purpose", "items[2].subject_id"]
    );

    let mut undeclared = vec![item; 3];
    undeclared[1].purpose = "nope".into();
    let status = app
        .client
        .clone()
        .batch_check(pb::BatchCheckRequest {
            items: undeclared,
            consistency: None,
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["items[1].purpose"]);
}

#[tokio::test]
async fn consent_state_shows_current_choices_and_every_decision() {
    let app = spawn_app().await;
    app.register("C-5").await;
    app.record("C-5", "promotional_mail", "", Choice::Grant)
        .await;
    let refusal = app
        .record("C-5", "promotional_mail", "", Choice::Refuse)
        .await;
    let grant = app
        .record("C-5", "partner_offers", "email", Choice::Grant)
        .await;

    let state = app
        .client
        .clone()
        .get_consent_state(pb::GetConsentStateRequest {
            subject_id: "C-5".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.subject.unwrap().subject_id, "C-5");
    let choices: Vec<_> = state
        .choices
        .iter()
        .map(|c| {
            (
                c.purpose.as_str(),
                c.field.as_str(),
                c.choice(),
                c.record_id.as_str(),
            )
        })
        .collect();
    assert_eq!(
        choices,
        [
            (
                "partner_offers",
                "email",
                Choice::Grant,
                grant.record_id.as_str()
            ),
            (
                "promotional_mail",
                "",
                Choice::Refuse,
                refusal.record_id.as_str()
            ),
        ]
    );
    let decision = |purpose: &str, field: &str| {
        state
            .decisions
            .iter()
            .find(|d| d.purpose == purpose && d.field == field)
            .map(|d| (d.decision(), d.reason()))
    };
    assert_eq!(
        decision("promotional_mail", "email"),
        Some((Decision::Deny, Reason::OptedOut))
    );
    assert_eq!(
        decision("partner_offers", "email"),
        Some((Decision::Allow, Reason::ConsentGranted))
    );
    assert_eq!(
        decision("partner_offers", "name"),
        Some((Decision::Deny, Reason::NoConsent))
    );
    assert_eq!(
        decision("order_delivery", "phone"),
        Some((Decision::Allow, Reason::Contract))
    );
    assert_eq!(
        decision("order_delivery", "email"),
        None,
        "only fields the purpose uses"
    );
    assert_eq!(state.decisions.len(), 3 + 3 + 3 + 2);

    let status = app
        .client
        .clone()
        .get_consent_state(pb::GetConsentStateRequest {
            subject_id: "C-404".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn history_lists_every_record_oldest_first_in_pages() {
    let app = spawn_app().await;
    app.register("C-6").await;
    app.register("C-other").await;
    let mut written = Vec::new();
    for i in 0..7 {
        let choice = if i % 2 == 0 {
            Choice::Refuse
        } else {
            Choice::Grant
        };
        written.push(app.record("C-6", "promotional_mail", "", choice).await);
        app.record("C-other", "promotional_mail", "", choice).await;
    }

    let mut read = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = app
            .client
            .clone()
            .list_consent_history(pb::ListConsentHistoryRequest {
                subject_id: "C-6".into(),
                page_size: 3,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        read.extend(page.records);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(read, written);
    assert!(read.windows(2).all(|w| w[0].sequence < w[1].sequence));

    // A token belongs to its subject.
    let first = app
        .client
        .clone()
        .list_consent_history(pb::ListConsentHistoryRequest {
            subject_id: "C-6".into(),
            page_size: 3,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let status = app
        .client
        .clone()
        .list_consent_history(pb::ListConsentHistoryRequest {
            subject_id: "C-other".into(),
            page_size: 3,
            page_token: first.next_page_token,
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["page_token"]);
}

#[tokio::test]
async fn the_database_itself_refuses_to_change_or_delete_history() {
    let app = spawn_app().await;
    app.register("C-1").await;
    app.record("C-1", "promotional_mail", "", Choice::Refuse)
        .await;
    for statement in [
        "UPDATE consent_records SET choice = 'grant'",
        "DELETE FROM consent_records",
        "TRUNCATE consent_records CASCADE",
    ] {
        let error = app.db.batch_execute(statement).await.unwrap_err();
        let message = error
            .as_db_error()
            .map(|e| e.message().to_string())
            .unwrap_or_default();
        assert!(message.contains("append-only"), "{statement}: {message}");
    }
    assert_eq!(app.count("consent_records").await, 1);
}

/// Every RPC, fed bad input, answers INVALID_ARGUMENT with field violations
/// and writes nothing.
#[tokio::test]
async fn bad_input_on_every_rpc_is_refused_field_by_field_and_writes_nothing() {
    let app = spawn_app().await;
    app.register("C-1").await;
    let before = app.counts().await;
    let mut client = app.client.clone();
    let long = "x".repeat(129);

    let register = |subject_id: &str, kind: i32, channel: i32, notice: &str, request_id: &str| {
        pb::RegisterSubjectRequest {
            subject_id: subject_id.into(),
            kind,
            notice_version: notice.into(),
            channel,
            request_id: request_id.into(),
        }
    };
    let individual = pb::SubjectKind::Individual as i32;
    let web = pb::Channel::Web as i32;
    let cases: Vec<(pb::RegisterSubjectRequest, Vec<&str>)> = vec![
        (register("", individual, web, "v1", ""), vec!["subject_id"]),
        (
            register(&long, individual, web, "v1", ""),
            vec!["subject_id"],
        ),
        (register("C-2", 0, web, "v1", ""), vec!["kind"]),
        (register("C-2", 99, web, "v1", ""), vec!["kind"]),
        (register("C-2", individual, 0, "v1", ""), vec!["channel"]),
        (
            register("C-2", individual, web, "", ""),
            vec!["notice_version"],
        ),
        (
            register("C-2", individual, web, "v1", &long),
            vec!["request_id"],
        ),
        (
            register("", 0, 42, "", ""),
            vec!["subject_id", "kind", "notice_version", "channel"],
        ),
    ];
    for (request, expected) in cases {
        let status = client.register_subject(request.clone()).await.unwrap_err();
        assert_eq!(violated_fields(&status), expected, "{request:?}");
    }

    let base = record_request("C-1", "promotional_mail", "", Choice::Refuse);
    let with = |change: &dyn Fn(&mut pb::RecordConsentRequest)| {
        let mut request = base.clone();
        change(&mut request);
        request
    };
    let cases: Vec<(pb::RecordConsentRequest, Vec<&str>)> = vec![
        (with(&|r| r.subject_id = String::new()), vec!["subject_id"]),
        (with(&|r| r.subject_id = long.clone()), vec!["subject_id"]),
        (with(&|r| r.purpose = String::new()), vec!["purpose"]),
        (
            with(&|r| r.purpose = "no_such_purpose".into()),
            vec!["purpose"],
        ),
        (with(&|r| r.field = "fax".into()), vec!["field"]),
        (with(&|r| r.field = "phone".into()), vec!["field"]),
        (with(&|r| r.choice = 0), vec!["choice"]),
        (with(&|r| r.choice = 7), vec!["choice"]),
        (with(&|r| r.channel = 0), vec!["channel"]),
        (
            with(&|r| r.notice_version = String::new()),
            vec!["notice_version"],
        ),
        (with(&|r| r.evidence = "e".repeat(1025)), vec!["evidence"]),
        (with(&|r| r.request_id = long.clone()), vec!["request_id"]),
    ];
    for (request, expected) in cases {
        let status = client.record_consent(request.clone()).await.unwrap_err();
        assert_eq!(violated_fields(&status), expected, "{request:?}");
    }

    let check = |subject_id: &str, purpose: &str, field: &str| pb::CheckRequest {
        subject_id: subject_id.into(),
        purpose: purpose.into(),
        field: field.into(),
        consistency: None,
    };
    for (request, expected) in [
        (check("", "promotional_mail", "email"), vec!["subject_id"]),
        (
            check(&long, "promotional_mail", "email"),
            vec!["subject_id"],
        ),
        (check("C-1", "", "email"), vec!["purpose"]),
        (check("C-1", "promotional_mail", ""), vec!["field"]),
        (check("", "", ""), vec!["subject_id", "purpose", "field"]),
    ] {
        let status = client.check(request.clone()).await.unwrap_err();
        assert_eq!(violated_fields(&status), expected, "{request:?}");
    }

    let status = client
        .get_consent_state(pb::GetConsentStateRequest {
            subject_id: long.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["subject_id"]);

    for (request, expected) in [
        (
            pb::ListConsentHistoryRequest {
                subject_id: String::new(),
                page_size: 0,
                page_token: String::new(),
            },
            "subject_id",
        ),
        (
            pb::ListConsentHistoryRequest {
                subject_id: "C-1".into(),
                page_size: -1,
                page_token: String::new(),
            },
            "page_size",
        ),
        (
            pb::ListConsentHistoryRequest {
                subject_id: "C-1".into(),
                page_size: 1001,
                page_token: String::new(),
            },
            "page_size",
        ),
        (
            pb::ListConsentHistoryRequest {
                subject_id: "C-1".into(),
                page_size: 10,
                page_token: "not-a-token".into(),
            },
            "page_token",
        ),
    ] {
        let status = client
            .list_consent_history(request.clone())
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), [expected], "{request:?}");
    }

    assert_eq!(app.counts().await, before, "refused calls wrote nothing");
}

/// Concurrent grants and refusals for one subject: the current state must
/// be exactly the latest record of the history for each purpose and field.
#[tokio::test]
async fn concurrent_grants_and_refusals_leave_history_and_state_in_agreement() {
    let app = spawn_app().await;
    app.register("C-busy").await;
    let calls: Vec<_> = (0..64)
        .map(|i| {
            let mut client = app.client.clone();
            let choice = if i % 3 == 0 {
                Choice::Grant
            } else {
                Choice::Refuse
            };
            let field = ["", "email", "name"][i % 3];
            let request = record_request("C-busy", "promotional_mail", field, choice);
            tokio::spawn(async move {
                client
                    .record_consent(request)
                    .await
                    .map(|r| r.into_inner().record.unwrap())
            })
        })
        .collect();
    let records = futures_results(calls.into_iter()).await;
    assert_eq!(app.count("consent_records").await, 64);

    let latest_in_history = app
        .db
        .query(
            "SELECT DISTINCT ON (field) field, record_id::text, choice FROM consent_records
              WHERE subject_id = 'C-busy' ORDER BY field, sequence DESC",
            &[],
        )
        .await
        .unwrap();
    let state = app
        .db
        .query("SELECT field, record_id::text, choice FROM consent_state WHERE subject_id = 'C-busy' ORDER BY field", &[])
        .await
        .unwrap();
    let rows = |rows: &[tokio_postgres::Row]| -> Vec<(String, String, String)> {
        rows.iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    };
    assert_eq!(rows(&state), rows(&latest_in_history));
    assert_eq!(state.len(), 3);

    // And Check agrees with the newest record covering the field.
    let newest = records
        .iter()
        .filter(|r| r.field.is_empty() || r.field == "email")
        .max_by_key(|r| r.sequence)
        .unwrap();
    let answer = app.check("C-busy", "promotional_mail", "email").await;
    assert_eq!(answer.record_id, newest.record_id);
}
