//! WatchChanges: every record exactly once, in sequence order, live.

use std::{collections::BTreeSet, time::Duration};

use consentd::{
    domain::ConsistencyToken,
    grpc::pb::{self, Choice},
    store::{self, embedded::Durability},
};
use tokio_stream::StreamExt as _;
use tonic::Streaming;

use crate::{
    cluster::PrivateCluster,
    helpers::{
        TestApp, at_least_as_fresh, fresh_database, record_request, spawn_app, spawn_app_on,
        spawn_app_with, violated_fields,
    },
};

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
        .into_record()
        .expect("a record")
}

/// Writes a record after the ones under test. The feed is in sequence
/// order, so whatever it would wrongly send about those (a duplicate, a
/// filtered-out purpose) arrives before the sentinel, not after a timeout.
async fn sentinel(app: &TestApp, purpose: &str) -> pb::ConsentRecord {
    app.register("C-sentinel").await;
    app.record("C-sentinel", purpose, "", Choice::Refuse).await
}

/// Everything the stream sends before `sentinel`.
async fn until(
    stream: &mut Streaming<pb::WatchChangesResponse>,
    sentinel: &pb::ConsentRecord,
) -> Vec<pb::ConsentRecord> {
    let mut before = Vec::new();
    loop {
        let record = next(stream, SOON).await;
        if record == *sentinel {
            return before;
        }
        assert!(
            record.sequence < sentinel.sequence,
            "passed the sentinel without sending it: {record:?}"
        );
        before.push(record);
    }
}

const SOON: Duration = Duration::from_secs(5);
/// Well under the minute-long poll of the live test, and far above what a
/// wake-up takes on a loaded machine.
const WOKEN: Duration = Duration::from_secs(10);

/// A record inserted by hand in a transaction the test controls.
const RAW_INSERT: &str =
    "INSERT INTO consent_records (subject_id, record_id, purpose, field, choice, channel,
        notice_version, evidence, actor)
     VALUES ('C-1', gen_random_uuid(), 'promotional_mail', '', 'refuse', 'api', 'v', '', 'sql')
     RETURNING sequence";

/// Returns once a change stream polls in-flight transactions (it stands at a
/// gap it may not pass), or after a few seconds: this only gives a stream
/// that wrongly skips the gap the time to do it, the caller's assertions on
/// order decide.
async fn until_a_stream_waits_at_the_gap(app: &TestApp) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        let polling: i64 = app
            .db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND pid <> pg_backend_pid()
                    AND query LIKE '%pg_xact_status%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if polling > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_subscriber_gets_the_history_then_follows_new_records_live() {
    // Polling only every minute: a record that arrives well within that was
    // delivered because its NOTIFY woke the stream.
    let app = spawn_app_with(|args| args.feed_poll_interval_ms = 60_000).await;
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

    // Several rounds, so that a record which happens to commit before the
    // stream's next read cannot pass for a wake-up every time.
    for choice in [Choice::Grant, Choice::Refuse, Choice::Grant] {
        let live = app.record("C-1", "partner_offers", "", choice).await;
        assert_eq!(next(&mut stream, WOKEN).await, live);
    }
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
    let end = sentinel(&app, "promotional_mail").await;
    let rest = until(&mut again, &end).await;
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
    // One filtered-out record live, after the stream started.
    app.record("C-1", "partner_offers", "", Choice::Refuse)
        .await;
    let end = sentinel(&app, "promotional_mail").await;
    assert_eq!(until(&mut stream, &end).await, [wanted]);
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
    let end = sentinel(&app, "promotional_mail").await;
    let received: Vec<i64> = until(&mut stream, &end)
        .await
        .into_iter()
        .map(|r| r.sequence)
        .collect();
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
async fn a_long_transaction_in_another_database_does_not_stall_the_feed() {
    let app = spawn_app().await;
    app.register("C-1").await;
    let mut stream = watch(&app, 0, &[]).await;

    // Transaction ids are cluster-wide: this one shows in every snapshot,
    // but it can never fill a gap in this database's feed.
    let elsewhere = fresh_database().await;
    let mut other = store::admin_connect(&elsewhere.db_url).await.unwrap();
    let held = other.transaction().await.unwrap();
    held.query_one("SELECT pg_current_xact_id()", &[])
        .await
        .unwrap();

    let mut db = app.connect_db().await;
    let tx = db.transaction().await.unwrap();
    let lost: i64 = tx.query_one(RAW_INSERT, &[]).await.unwrap().get(0);
    tx.rollback().await.unwrap();
    let after = app
        .record("C-1", "promotional_mail", "", Choice::Refuse)
        .await;
    assert!(after.sequence > lost, "there is a gap at {lost}");
    assert_eq!(next(&mut stream, SOON).await, after);
    held.rollback().await.unwrap();
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
    // Meanwhile a reconnecting subscriber must not be handed the later one either.
    let mut resumed = watch(&app, resumer_cursor, &[]).await;
    // Commit only once a stream waits at the gap, so that one that skipped
    // it would have sent `fast` first: the order asserted below.
    until_a_stream_waits_at_the_gap(&app).await;

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

/// A record inserted by hand for subject `$1`, in a transaction that took
/// its id first (as every server write path does before it draws a number).
const RAW_INSERT_FOR: &str =
    "INSERT INTO consent_records (subject_id, record_id, purpose, field, choice, channel,
        notice_version, evidence, actor)
     VALUES ($1, gen_random_uuid(), 'promotional_mail', '', 'refuse', 'api', 'v', '', 'sql')
     RETURNING sequence";

/// A snapshot lists as in flight only transactions older than the newest
/// one to have finished (its `xmax`). Here the late writer takes its id
/// after the early one, draws the lower number, and stays open while the
/// early one commits the higher number: the late writer is in no snapshot's
/// list, so a feed that trusted the list skipped its record for good, on
/// WatchChanges and in every server's memory. On a private cluster, so that
/// no other test's commit moves `xmax` past the late writer meanwhile.
#[tokio::test]
async fn a_late_commit_newer_than_every_finished_transaction_is_not_skipped() {
    let cluster = PrivateCluster::start(Durability::Durable).await;
    let app = spawn_app_on(cluster.database("feed_xmax").await, |_| {}).await;
    app.register("C-late").await;
    app.register("C-early").await;
    let mut stream = watch(&app, 0, &[]).await;

    let mut early_db = app.connect_db().await;
    let mut late_db = app.connect_db().await;
    let early = early_db.transaction().await.unwrap();
    let late = late_db.transaction().await.unwrap();
    let xid = |row: tokio_postgres::Row| row.get::<_, String>(0).parse::<u64>().unwrap();
    let early_xid = xid(early
        .query_one("SELECT pg_current_xact_id()::text", &[])
        .await
        .unwrap());
    let late_xid = xid(late
        .query_one("SELECT pg_current_xact_id()::text", &[])
        .await
        .unwrap());
    assert!(late_xid > early_xid);
    let late_sequence: i64 = (late.query_one(RAW_INSERT_FOR, &[&"C-late"]).await)
        .unwrap()
        .get(0);
    let early_sequence: i64 = (early.query_one(RAW_INSERT_FOR, &[&"C-early"]).await)
        .unwrap()
        .get(0);
    assert!(early_sequence > late_sequence);
    early.commit().await.unwrap();
    let listed: i64 = (app.db)
        .query_one(
            "SELECT count(*) FROM pg_snapshot_xip(pg_current_snapshot()) AS x WHERE x::text = $1",
            &[&late_xid.to_string()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        listed, 0,
        "the late writer must be missing from snapshots for this test to test anything"
    );
    // No NOTIFY here: it would take a transaction id, and its commit would
    // move `xmax` past the late writer. The feed's poll finds the record,
    // and a feed that skips the gap has the time to do it.
    until_a_stream_waits_at_the_gap(&app).await;

    late.commit().await.unwrap();
    app.db
        .batch_execute("NOTIFY consent_changes")
        .await
        .unwrap();
    let first = next(&mut stream, SOON).await;
    let second = next(&mut stream, SOON).await;
    assert_eq!(
        (first.sequence, second.sequence),
        (late_sequence, early_sequence)
    );
    // The server's memory follows the same feed: at the early record's
    // position it has the late refusal too.
    let token = ConsistencyToken::at(early_sequence).encode();
    let answer = (app)
        .check_with(
            "C-late",
            "promotional_mail",
            "email",
            at_least_as_fresh(&token),
        )
        .await;
    assert_eq!(answer.reason(), pb::Reason::OptedOut);
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
    // Parse errors first, then what the policy refuses among the rest.
    assert_eq!(
        violated_fields(&status),
        ["purposes[2]", "after", "purposes[1]"]
    );
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
    tokio::time::timeout(Duration::from_secs(5), app.shutdown())
        .await
        .expect("shutdown does not wait for streams")
        .unwrap();
    let end = tokio::time::timeout(SOON, stream.next()).await.unwrap();
    assert!(!matches!(end, Some(Ok(_))), "no more records: {end:?}");
}
