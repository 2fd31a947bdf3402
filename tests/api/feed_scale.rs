//! WatchChanges at scale: one database reader for any number of streams, a
//! cap on streams, and a stream that cannot keep up told where to resume.

use std::{collections::BTreeSet, time::Duration};

use consentd::grpc::pb::{self, Choice, consent_service_client::ConsentServiceClient};
use tokio_stream::StreamExt as _;
use tonic::{Code, Streaming, transport::Channel};
use tonic_types::StatusExt as _;

use crate::helpers::{TestApp, record_request, spawn_app, spawn_app_with};

const SOON: Duration = Duration::from_secs(30);

async fn watch(
    client: &mut ConsentServiceClient<Channel>,
    after: i64,
) -> Result<Streaming<pb::WatchChangesResponse>, tonic::Status> {
    client
        .watch_changes(pb::WatchChangesRequest {
            after,
            purposes: vec![],
        })
        .await
        .map(|r| r.into_inner())
}

/// The next change's sequence, or a panic after `SOON`.
async fn next_sequence(stream: &mut Streaming<pb::WatchChangesResponse>) -> i64 {
    tokio::time::timeout(SOON, stream.next())
        .await
        .expect("a change within the time limit")
        .expect("the stream is open")
        .expect("no error")
        .sequence()
        .expect("a change")
}

/// Connections the server holds on the test's database (the test's own
/// excluded).
async fn server_connections(app: &TestApp) -> i64 {
    app.db
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Index and sequential scans of the feed's table so far. Statistics reach
/// other sessions up to a second late, so callers wait before reading.
async fn feed_scans(app: &TestApp) -> i64 {
    app.db
        .batch_execute("SELECT pg_stat_clear_snapshot()")
        .await
        .unwrap();
    app.db
        .query_one(
            "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0)
               FROM pg_stat_user_tables WHERE relname = 'consent_records'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Inserts `count` records in one statement, spread over a thousand new
/// subjects (each subject's history chain takes its appends in turn), and
/// returns the last sequence. Raw SQL, so that many records cost the test
/// one round trip.
async fn insert_many(app: &TestApp, count: i64) -> i64 {
    app.db
        .batch_execute(
            "INSERT INTO subjects (subject_id, kind, notice_version, channel)
             SELECT 'S-' || i, 'individual', 'v', 'api' FROM generate_series(0, 999) AS i
             ON CONFLICT DO NOTHING",
        )
        .await
        .unwrap();
    app.db
        .query_one(
            "WITH written AS (
               INSERT INTO consent_records (subject_id, record_id, purpose, field, choice, channel,
                                            notice_version, evidence, actor)
               SELECT 'S-' || (i % 1000), gen_random_uuid(), 'promotional_mail', '', 'refuse',
                      'api', 'v', '', 'sql'
                 FROM generate_series(1, $1::bigint) AS i
               RETURNING sequence)
             SELECT max(sequence) FROM written",
            &[&count],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn two_thousand_streams_each_get_a_record_from_one_database_reader() {
    const STREAMS: usize = 2000;
    // Well under any per-connection stream limit.
    const PER_CONNECTION: usize = 100;
    let app = spawn_app_with(|args| args.database.max_connections = 8).await;
    app.register("C-1").await;
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..STREAMS / PER_CONNECTION {
        let channel = Channel::from_shared(format!("http://{}", app.grpc_addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        for _ in 0..PER_CONNECTION {
            let mut client = ConsentServiceClient::new(channel.clone());
            opening.spawn(async move { watch(&mut client, 0).await.unwrap() });
        }
    }
    let streams = opening.join_all().await;
    assert_eq!(streams.len(), STREAMS);
    // With every stream open and idle, only the one reader polls the table:
    // 2,000 pollers would scan it thousands of times in these seconds. First
    // the streams finish catching up (one read each, a few at a time; slow
    // on a busy machine): wait until two checks in a row, 1.5 s apart, see
    // no more than the reader's own polls (statistics reach other sessions
    // up to a second late).
    let mut last = feed_scans(&app).await;
    let mut quiet = 0;
    for _ in 0..80 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let now = feed_scans(&app).await;
        quiet = if now - last <= 5 { quiet + 1 } else { 0 };
        if quiet == 2 {
            break;
        }
        last = now;
    }
    let scans_before = feed_scans(&app).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_scans = feed_scans(&app).await - scans_before;
    assert!(
        idle_scans <= 20,
        "{idle_scans} scans of the feed in 3 s of quiet"
    );

    let written = app
        .record("C-1", "promotional_mail", "", Choice::Refuse)
        .await;
    let mut reading = tokio::task::JoinSet::new();
    for mut stream in streams {
        reading.spawn(async move { next_sequence(&mut stream).await });
    }
    let received = reading.join_all().await;
    assert_eq!(received.len(), STREAMS);
    assert!(
        received.iter().all(|s| *s == written.sequence),
        "every stream gets the record"
    );
    let in_use = server_connections(&app).await;
    assert!(
        in_use <= 8 + 1,
        "{in_use} connections: more than the pool and the LISTEN connection"
    );
}

#[tokio::test]
async fn a_stream_that_stops_reading_is_told_it_lagged_with_the_cursor_to_resume_from() {
    let app = spawn_app().await;
    app.register("C-1").await;
    let mut client = app.client.clone();
    let mut slow = watch(&mut client, 0).await.unwrap();

    // Far more than the ring (8,192) and the connection's flow-control
    // window (some 13,000 of these records) hold together.
    const WRITTEN: i64 = 40_000;
    let last = insert_many(&app, WRITTEN).await;
    let first = last - WRITTEN + 1;
    // Once a fresh stream gets the last record, the reader has published
    // them all, and the idle stream has fallen behind.
    let mut probe = watch(&mut client, last - 1).await.unwrap();
    assert_eq!(next_sequence(&mut probe).await, last);

    let mut received = Vec::new();
    let status = loop {
        match tokio::time::timeout(SOON, slow.next())
            .await
            .expect("an answer")
        {
            Some(Ok(change)) => received.push(change.sequence().unwrap()),
            Some(Err(status)) => break status,
            None => panic!("the stream ended without saying why"),
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let info = status.get_details_error_info().expect("an ErrorInfo");
    assert_eq!(info.reason, "FEED_LAGGED");
    let cursor: i64 = info.metadata["cursor"].parse().unwrap();
    assert!(
        received.len() < WRITTEN as usize,
        "it was not buffered without bound"
    );
    assert_eq!(
        received,
        (first..first + received.len() as i64).collect::<Vec<_>>(),
        "in order, nothing skipped before the error"
    );
    assert_eq!(cursor, received.last().copied().unwrap_or(first - 1));
    assert!(status.message().contains(&cursor.to_string()));

    // Resuming from the cursor continues exactly where it stopped.
    let mut resumed = watch(&mut client, cursor).await.unwrap();
    assert_eq!(next_sequence(&mut resumed).await, cursor + 1);
}

#[tokio::test]
async fn streams_past_the_cap_are_refused_until_one_closes() {
    let app = spawn_app_with(|args| args.max_watch_streams = 3).await;
    let mut client = app.client.clone();
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(watch(&mut client, 0).await.unwrap());
    }
    let status = watch(&mut client, 0).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let info = status.get_details_error_info().expect("an ErrorInfo");
    assert_eq!(info.reason, "TOO_MANY_WATCH_STREAMS");
    assert_eq!(info.metadata["limit"], "3");

    drop(open.pop());
    // The server learns of the cancelled stream asynchronously.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match watch(&mut client, 0).await {
            Ok(_) => break,
            Err(status) if tokio::time::Instant::now() < deadline => {
                assert_eq!(status.code(), Code::ResourceExhausted);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("still refused after a stream closed: {status:?}"),
        }
    }
}

#[tokio::test]
async fn a_subscriber_far_behind_catches_up_and_joins_the_live_feed_exactly_once() {
    let app = spawn_app().await;
    for s in 0..4 {
        app.register(&format!("C-{s}")).await;
    }
    // Many pages of history behind the reader's head: once a fresh stream
    // gets the last of them, the reader has passed them all.
    let last = insert_many(&app, 3000).await;
    let mut probe = watch(&mut app.client.clone(), last - 1).await.unwrap();
    assert_eq!(next_sequence(&mut probe).await, last);
    // Writers keep going while the subscriber catches up and joins.
    let writers: Vec<_> = (0..80)
        .map(|i| {
            let mut client = app.client.clone();
            let request = record_request(
                &format!("C-{}", i % 4),
                "promotional_mail",
                "",
                Choice::Grant,
            );
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(5 * i)).await;
                client.record_consent(request).await.unwrap();
            })
        })
        .collect();
    let mut client = app.client.clone();
    let mut stream = watch(&mut client, 0).await.unwrap();
    for writer in writers {
        writer.await.unwrap();
    }
    let end = app
        .record("C-0", "promotional_mail", "", Choice::Refuse)
        .await;

    let mut received = Vec::new();
    loop {
        let sequence = next_sequence(&mut stream).await;
        received.push(sequence);
        if sequence >= end.sequence {
            break;
        }
    }
    let stored: Vec<i64> = app
        .db
        .query(
            "SELECT sequence FROM consent_records ORDER BY sequence",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(received, stored, "every record once, in order");
    assert_eq!(
        received.iter().collect::<BTreeSet<_>>().len(),
        received.len()
    );
}
