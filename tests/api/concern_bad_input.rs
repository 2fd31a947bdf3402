//! ConcernService bad input: every RPC answers INVALID_ARGUMENT with a
//! BadRequest naming every offending field at once, and writes nothing.

use consentd::grpc::pb::{self, ConcernOutcome};
use tonic::Request;

use crate::{
    concern::{client, concern_request, file},
    helpers::{TestApp, as_actor, spawn_app, violated_fields},
};

/// An `x-actor` one character longer than an actor may be.
fn bad_actor<T>(message: T) -> Request<T> {
    as_actor(&"a".repeat(129), message)
}

async fn concern_rows(app: &TestApp) -> ([i64; 2], [i64; 4]) {
    (
        [
            app.count("concerns").await,
            app.count("concern_events").await,
        ],
        app.counts().await,
    )
}

#[tokio::test]
async fn every_concern_rpc_names_every_offending_field_at_once_and_writes_nothing() {
    let app = spawn_app().await;
    let filed = file(&app, "You mailed me after I refused").await;
    let before = concern_rows(&app).await;

    let filing = pb::FileConcernRequest {
        subject_id: " C-1042".into(),
        contact: String::new(),
        category: 42,
        description: " ".into(),
        links: vec![filed.concern_id.clone(), "not-a-uuid".into()],
        request_id: "r".repeat(129),
    };
    let status = client(&app)
        .file_concern(bad_actor(filing))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&status),
        [
            "x-actor",
            "subject_id",
            "contact",
            "category",
            "description",
            "links[1]",
            "request_id"
        ]
    );
    let mut too_many = concern_request("ok");
    too_many.links = vec![filed.concern_id.clone(); 51];
    too_many.category = 0;
    let status = client(&app).file_concern(too_many).await.unwrap_err();
    // An over-long list is refused while still bytes, before the rest of
    // the request is looked at: its one violation is the whole answer.
    assert_eq!(violated_fields(&status), ["links"]);

    let status = client(&app)
        .acknowledge_concern(bad_actor(pb::AcknowledgeConcernRequest {
            concern_id: "nope".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["x-actor", "concern_id"]);

    // A real concern: only the bad fields stop it from being resolved.
    let status = client(&app)
        .resolve_concern(bad_actor(pb::ResolveConcernRequest {
            concern_id: filed.concern_id.clone(),
            outcome: 0,
            resolution: "  ".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&status),
        ["x-actor", "outcome", "resolution"]
    );
    let status = client(&app)
        .resolve_concern(pb::ResolveConcernRequest {
            concern_id: String::new(),
            outcome: ConcernOutcome::Rejected.into(),
            resolution: "r".repeat(10_001),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["concern_id", "resolution"]);

    for concern_id in ["", "nope"] {
        let status = client(&app)
            .get_concern(pb::GetConcernRequest {
                concern_id: concern_id.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), ["concern_id"]);
    }

    let status = client(&app)
        .list_concerns(pb::ListConcernsRequest {
            status: 9,
            overdue_only: true,
            page_size: 1001,
            page_token: "garbage!".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&status),
        ["status", "page_size", "page_token"]
    );

    assert_eq!(concern_rows(&app).await, before);
}
