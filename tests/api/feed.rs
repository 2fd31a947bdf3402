//! WatchChanges: every record exactly once, in sequence order, live.

use std::{collections::BTreeSet, time::Duration};

use consentd::grpc::pb::{self, Choice};
use tokio_stream::StreamExt as _;
use tonic::Streaming;

use crate::helpers::{TestApp, record_request, spawn_app, violated_fields};

async fn watch(
    app: &TestApp,
    after: i64,
    purposes: &[&str],
) -> Streaming<pb::WatchChangesResponse> {
    app.client
        .clone()
        .watch_changes(pb::WatchChangesRequest {
            after,
            purposes: purposes.iter().map(|p| p.to_string()).collect(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// The next record, or a panic after `wait`.
async fn next(
    stream: &mut Streaming<pb::WatchChangesResponse>,
    wait: Duration,
) -> pb::ConsentRecord {
    tokio::time::timeout(wait, stream.next())
        .await
        .expect("a change within the time limit")
        .expect("the stream is open")
        .expect("no error")
        .record
        .expect("a record")
}

/// Asserts that nothing arrives for `wait`.
async fn nothing_for(stream: &mut Streaming<pb::WatchChangesResponse>, wait: Duration) {
    if let Ok(Some(item)) = tokio::time::timeout(wait, stream.next()).await {
        panic!("expected nothing yet, got {item:?}");
    }
}

const SOON: Duration = Duration::from_secs(5);

/// A record inserted by hand in a transaction the test controls.
const RAW_INSERT: &str =
    "INSERT INTO consent_records (subject_id, record_id, purpose, field, choice, channel,
        notice_version, evidence, actor)
     VALUES ('C-1', gen_random_uuid(), 'promotional_mail', '', 'refuse', 'api', 'v', '', 'sql')
     RETURNING sequence";

#[tokio::test]
async fn a_subscriber_gets_the_history_then_follows_new_records_live() {
    let app = spawn_app().await;
    app.register("C-1").await;
    let early: Vec<_> = [Choice::Refuse, Choice::Grant]
        .into_iter()
        .map(|c| record_request("C-1", "promotional_mail", "", c))
        .collect();
    let mut written = Vec::new();
    for request in early {
        written.push(
            app.client
                .clone()
                .record_consent(request)
                .await
                .unwrap()
                .into_inner()
                .record
                .unwrap(),
        );
    }
    let mut stream = watch(&app, 0, &[]).await;
    assert_eq!(next(&mut stream, SOON).await, written[0]);
    assert_eq!(next(&mut stream, SOON).await, written[1]);

    let live = app.record("C-1", "partner_offers", "", Choice::Grant).await;
    assert_eq!(next(&mut stream, SOON).await, live);
}

#[tokio::test]
async fn reconnecting_with_the_last_cursor_resumes_exactly_once() {
    let app = spawn_app().await;
    app.register("C-1").await;
    let mut written = Vec::new();
    for i in 0..5 {
        let choice = if i % 2 == 0 {
            Choice::Refuse
        } else {
            Choice::Grant
        };
        written.push(app.record("C-1", "promotional_mail", "", choice).await);
    }
    let mut first = watch(&app, 0, &[]).await;
    let a = next(&mut first, SOON).await;
    let b = next(&mut first, SOON).await;
    drop(first);

    let mut again = watch(&app, b.sequence, &[]).await;
    let mut rest = Vec::new();
    for _ in 0..3 {
        rest.push(next(&mut again, SOON).await);
    }
    nothing_for(&mut again, Duration::from_millis(300)).await;
    let mut all = vec![a, b];
    all.extend(rest);
    assert_eq!(all, written);
}

#[tokio::test]
async fn purpose_filters_send_only_those_purposes() {
    let app = spawn_app().await;
    app.register("C-1").await;
    app.record("C-1", "partner_offers", "", Choice::Grant).await;
    let wanted = app
        .record("C-1", "promotional_mail", "", Choice::Refuse)
        .await;
    let mut stream = watch(&app, 0, &["promotional_mail"]).await;
    assert_eq!(next(&mut stream, SOON).await, wanted);
    nothing_for(&mut stream, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn concurrent_writes_reach_a_subscriber_exactly_once_in_sequence_order() {
    let app = spawn_app().await;
    for s in 0..8 {
        app.register(&format!("C-{s}")).await;
    }
    let mut stream = watch(&app, 0, &[]).await;
    let writers: Vec<_> = (0..96)
        .map(|i| {
            let mut client = app.client.clone();
            let choice = if i % 2 == 0 {
                Choice::Refuse
            } else {
                Choice::Grant
            };
            let request = record_request(&format!("C-{}", i % 8), "promotional_mail", "", choice);
            tokio::spawn(async move {
                client
                    .record_consent(request)
                    .await
                    .unwrap()
                    .into_inner()
                    .record
                    .unwrap()
            })
        })
        .collect();
    let mut written = BTreeSet::new();
    for writer in writers {
        written.insert(writer.await.unwrap().sequence);
    }
    let mut received = Vec::new();
    for _ in 0..96 {
        received.push(next(&mut stream, SOON).await.sequence);
    }
    nothing_for(&mut stream, Duration::from_millis(300)).await;
    assert!(
        received.windows(2).all(|w| w[0] < w[1]),
        "ascending, no duplicates: {received:?}"
    );
    assert_eq!(received.into_iter().collect::<BTreeSet<_>>(), written);
}

#[tokio::test]
async fn a_gap_left_by_a_rolled_back_transaction_does_not_stall_the_feed() {
    let app = spawn_app().await;
    app.register("C-1").await;
    let before = app
        .record("C-1", "promotional_mail", "", Choice::Grant)
        .await;
    let mut stream = watch(&app, 0, &[]).await;
    assert_eq!(next(&mut stream, SOON).await, before);

    let mut db = app.connect_db().await;
    let tx = db.transaction().await.unwrap();
    let lost: i64 = tx.query_one(RAW_INSERT, &[]).await.unwrap().get(0);
    tx.rollback().await.unwrap();

    let after = app
        .record("C-1", "promotional_mail", "", Choice::Refuse)
        .await;
    assert!(
        after.sequence > lost && lost > before.sequence,
        "there is a gap at {lost}"
    );
    assert_eq!(next(&mut stream, SOON).await, after);
}

#[tokio::test]
async fn a_transaction_that_commits_late_is_not_skipped() {
    let app = spawn_app().await;
    app.register("C-1").await;
    let mut stream = watch(&app, 0, &[]).await;
    let mut resumer_cursor = 0;

    // A slow writer takes a sequence number and holds its transaction open.
    let mut db = app.connect_db().await;
    let slow = db.transaction().await.unwrap();
    let slow_sequence: i64 = slow.query_one(RAW_INSERT, &[]).await.unwrap().get(0);

    // A fast writer commits a later sequence first. It writes for another
    // subject: appends for one subject take turns on its history chain's head
    // (the ledger), so only appends for different subjects can commit out of
    // sequence order.
    app.register("C-2").await;
    let fast = app
        .record("C-2", "promotional_mail", "", Choice::Grant)
        .await;
    assert!(fast.sequence > slow_sequence);
    nothing_for(&mut stream, Duration::from_millis(500)).await;

    // Meanwhile a reconnecting subscriber must not be handed the later one either.
    let mut resumed = watch(&app, resumer_cursor, &[]).await;
    nothing_for(&mut resumed, Duration::from_millis(300)).await;

    slow.commit().await.unwrap();
    let first = next(&mut stream, SOON).await;
    let second = next(&mut stream, SOON).await;
    assert_eq!(
        (first.sequence, second.sequence),
        (slow_sequence, fast.sequence)
    );
    assert_eq!(second, fast);

    resumer_cursor = next(&mut resumed, SOON).await.sequence;
    assert_eq!(resumer_cursor, slow_sequence);
    assert_eq!(next(&mut resumed, SOON).await.sequence, fast.sequence);
}

#[tokio::test]
async fn bad_watch_requests_are_refused_field_by_field() {
    let app = spawn_app().await;
    let status = app
        .client
        .clone()
        .watch_changes(pb::WatchChangesRequest {
            after: -1,
            purposes: vec!["promotional_mail".into(), "nope".into(), "Bad Code".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["purposes[2]"]);
    let status = app
        .client
        .clone()
        .watch_changes(pb::WatchChangesRequest {
            after: -1,
            purposes: vec!["nope".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["after", "purposes[0]"]);
}

#[tokio::test]
async fn open_streams_end_when_the_server_shuts_down() {
    let mut app = spawn_app().await;
    let mut stream = watch(&app, 0, &[]).await;
    nothing_for(&mut stream, Duration::from_millis(100)).await;
    tokio::time::timeout(Duration::from_secs(5), app.shutdown())
        .await
        .expect("shutdown does not wait for streams")
        .unwrap();
    let end = tokio::time::timeout(SOON, stream.next()).await.unwrap();
    assert!(!matches!(end, Some(Ok(_))), "no more records: {end:?}");
}
