//! ConcernService: filed, acknowledged, resolved, overdue, with history.

use consentd::grpc::pb::{
    self, ConcernCategory, ConcernOutcome, ConcernStatus,
    concern_service_client::ConcernServiceClient,
};
use tonic::Code;

use crate::helpers::{TestApp, as_actor, spawn_app, violated_fields};

pub fn client(app: &TestApp) -> ConcernServiceClient<tonic::transport::Channel> {
    ConcernServiceClient::new(app.channel.clone())
}

pub fn concern_request(description: &str) -> pb::FileConcernRequest {
    pb::FileConcernRequest {
        subject_id: "C-1042".into(),
        contact: "reader@example.com".into(),
        category: ConcernCategory::UnwantedMail.into(),
        description: description.into(),
        links: vec![],
        request_id: String::new(),
    }
}

pub async fn file(app: &TestApp, description: &str) -> pb::Concern {
    client(app)
        .file_concern(as_actor("web-form", concern_request(description)))
        .await
        .unwrap()
        .into_inner()
        .concern
        .unwrap()
}

async fn event_count(app: &TestApp) -> i64 {
    app.count("concern_events").await
}

#[tokio::test]
async fn a_concern_is_filed_acknowledged_and_resolved_with_its_history() {
    let app = spawn_app().await;
    let filed = file(&app, "I unsubscribed and still get letters").await;
    assert_eq!(filed.status(), ConcernStatus::Filed);
    assert!(!filed.overdue);
    let ack_by =
        filed.acknowledge_by.as_ref().unwrap().seconds - filed.filed_at.as_ref().unwrap().seconds;
    assert_eq!(ack_by, 2 * 24 * 3600, "the policy's 2 days");

    let acknowledged = client(&app)
        .acknowledge_concern(as_actor(
            "agent-7",
            pb::AcknowledgeConcernRequest {
                concern_id: filed.concern_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .concern
        .unwrap();
    assert_eq!(acknowledged.status(), ConcernStatus::Acknowledged);

    let resolved = client(&app)
        .resolve_concern(as_actor(
            "agent-8",
            pb::ResolveConcernRequest {
                concern_id: filed.concern_id.clone(),
                outcome: ConcernOutcome::Fixed.into(),
                resolution: "The old mailing list was still in use; it is retired.".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .concern
        .unwrap();
    assert_eq!(resolved.status(), ConcernStatus::Resolved);
    assert_eq!(resolved.outcome(), ConcernOutcome::Fixed);

    let got = client(&app)
        .get_concern(pb::GetConcernRequest {
            concern_id: filed.concern_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .concern
        .unwrap();
    let history: Vec<_> = got
        .events
        .iter()
        .map(|e| (e.status(), e.actor.as_str()))
        .collect();
    assert_eq!(
        history,
        [
            (ConcernStatus::Filed, "web-form"),
            (ConcernStatus::Acknowledged, "agent-7"),
            (ConcernStatus::Resolved, "agent-8")
        ]
    );
    assert_eq!(
        got.events[2].resolution,
        "The old mailing list was still in use; it is retired."
    );
    assert_eq!(got.contact, "reader@example.com");

    // Nothing is overwritten: history rows cannot change.
    let error = app
        .db
        .batch_execute("UPDATE concern_events SET actor = 'x'")
        .await
        .unwrap_err();
    assert!(
        error
            .as_db_error()
            .unwrap()
            .message()
            .contains("append-only")
    );

    // A resolved concern stays resolved.
    let status = client(&app)
        .resolve_concern(pb::ResolveConcernRequest {
            concern_id: filed.concern_id.clone(),
            outcome: ConcernOutcome::NoViolation.into(),
            resolution: "again".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let status = client(&app)
        .acknowledge_concern(pb::AcknowledgeConcernRequest {
            concern_id: filed.concern_id,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(event_count(&app).await, 3);
}

#[tokio::test]
async fn a_rejection_without_reasons_is_refused_and_with_reasons_accepted() {
    let app = spawn_app().await;
    let filed = file(&app, "You shared my address").await;
    let before = event_count(&app).await;
    for resolution in ["", "   "] {
        let status = client(&app)
            .resolve_concern(pb::ResolveConcernRequest {
                concern_id: filed.concern_id.clone(),
                outcome: ConcernOutcome::Rejected.into(),
                resolution: resolution.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), ["resolution"]);
    }
    assert_eq!(event_count(&app).await, before, "nothing written");

    let resolved = client(&app)
        .resolve_concern(pb::ResolveConcernRequest {
            concern_id: filed.concern_id,
            outcome: ConcernOutcome::Rejected.into(),
            resolution: "The address went to the courier for order 7781, as the statement allows."
                .into(),
        })
        .await
        .unwrap()
        .into_inner()
        .concern
        .unwrap();
    assert_eq!(resolved.outcome(), ConcernOutcome::Rejected);
}

#[tokio::test]
async fn overdue_concerns_are_listed_as_overdue() {
    let app = spawn_app().await;
    let late = file(&app, "late").await;
    let fresh = file(&app, "fresh").await;
    let acknowledged_late = file(&app, "acknowledged, not resolved for weeks").await;
    client(&app)
        .acknowledge_concern(pb::AcknowledgeConcernRequest {
            concern_id: acknowledged_late.concern_id.clone(),
        })
        .await
        .unwrap();
    // Filing times are the one thing a test may move: three days ago, and
    // twenty days ago for the acknowledged one.
    app.db
        .execute("UPDATE concerns SET filed_at = now() - interval '3 days' WHERE concern_id = $1::text::uuid", &[&late.concern_id])
        .await
        .unwrap();
    app.db
        .execute(
            "UPDATE concerns SET filed_at = now() - interval '20 days' WHERE concern_id = $1::text::uuid",
            &[&acknowledged_late.concern_id],
        )
        .await
        .unwrap();

    let overdue = client(&app)
        .list_concerns(pb::ListConcernsRequest {
            overdue_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .concerns;
    let ids: Vec<_> = overdue.iter().map(|c| c.concern_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            acknowledged_late.concern_id.as_str(),
            late.concern_id.as_str()
        ],
        "oldest first"
    );
    assert!(overdue.iter().all(|c| c.overdue));
    assert!(overdue[0].age_seconds >= 20 * 24 * 3600);

    let all = client(&app)
        .list_concerns(pb::ListConcernsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .concerns;
    assert_eq!(all.len(), 3);
    assert!(
        !all.iter()
            .find(|c| c.concern_id == fresh.concern_id)
            .unwrap()
            .overdue
    );

    let filed_only = client(&app)
        .list_concerns(pb::ListConcernsRequest {
            status: ConcernStatus::Filed.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .concerns;
    assert_eq!(filed_only.len(), 2);
}

#[tokio::test]
async fn concerns_page_oldest_first_and_tokens_belong_to_their_filter() {
    let app = spawn_app().await;
    let mut filed = Vec::new();
    for i in 0..5 {
        filed.push(file(&app, &format!("concern {i}")).await.concern_id);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client(&app)
            .list_concerns(pb::ListConcernsRequest {
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.concerns.into_iter().map(|c| c.concern_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, filed);

    let first = client(&app)
        .list_concerns(pb::ListConcernsRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let status = client(&app)
        .list_concerns(pb::ListConcernsRequest {
            page_size: 2,
            overdue_only: true,
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["page_token"]);
}

#[tokio::test]
async fn a_retried_filing_returns_the_first_concern() {
    let app = spawn_app().await;
    let mut request = concern_request("retry me");
    request.request_id = "concern-req-1".into();
    let first = client(&app)
        .file_concern(request.clone())
        .await
        .unwrap()
        .into_inner();
    let again = client(&app)
        .file_concern(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.concern_id, again.concern_id);
    assert_eq!(app.count("concerns").await, 1);
    let events = event_count(&app).await;
    request.description = "something else".into();
    let status = client(&app).file_concern(request).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    // The conflicting reuse wrote nothing either.
    assert_eq!(app.count("concerns").await, 1);
    assert_eq!(event_count(&app).await, events);
}

#[tokio::test]
async fn bad_concern_requests_are_refused_field_by_field_and_write_nothing() {
    let app = spawn_app().await;
    let with = |change: &dyn Fn(&mut pb::FileConcernRequest)| {
        let mut request = concern_request("ok");
        change(&mut request);
        request
    };
    let cases: Vec<(pb::FileConcernRequest, Vec<&str>)> = vec![
        (with(&|r| r.contact = String::new()), vec!["contact"]),
        (with(&|r| r.contact = "c".repeat(257)), vec!["contact"]),
        (with(&|r| r.description = " ".into()), vec!["description"]),
        (
            with(&|r| r.description = "d".repeat(10_001)),
            vec!["description"],
        ),
        (with(&|r| r.category = 0), vec!["category"]),
        (with(&|r| r.category = 42), vec!["category"]),
        (
            with(&|r| r.subject_id = " padded".into()),
            vec!["subject_id"],
        ),
        (
            with(&|r| r.links = vec!["not-a-uuid".into()]),
            vec!["links[0]"],
        ),
        (
            with(&|r| r.links = vec![uuid::Uuid::nil().to_string(); 51]),
            vec!["links"],
        ),
        (
            with(&|r| r.request_id = "r".repeat(129)),
            vec!["request_id"],
        ),
    ];
    for (request, expected) in cases {
        let status = client(&app).file_concern(request).await.unwrap_err();
        assert_eq!(violated_fields(&status), expected);
    }
    for concern_id in ["", "nope"] {
        let status = client(&app)
            .acknowledge_concern(pb::AcknowledgeConcernRequest {
                concern_id: concern_id.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), ["concern_id"]);
    }
    let status = client(&app)
        .resolve_concern(pb::ResolveConcernRequest {
            concern_id: uuid::Uuid::nil().to_string(),
            outcome: 0,
            resolution: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["outcome"]);
    let status = client(&app)
        .get_concern(pb::GetConcernRequest {
            concern_id: uuid::Uuid::nil().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = client(&app)
        .list_concerns(pb::ListConcernsRequest {
            status: 9,
            page_size: -1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["status", "page_size"]);
    assert_eq!(app.count("concerns").await, 0);
    assert_eq!(event_count(&app).await, 0);
}
