//! PostgreSQL is killed (`kill -9` of the postmaster) under write load and
//! started again: nothing acknowledged is lost, calls fail fast with
//! UNAVAILABLE meanwhile, retries never duplicate, and consentd recovers
//! by itself.

use std::{
    collections::{BTreeSet, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use consentd::{
    grpc::pb::{self, Choice, consent_service_client::ConsentServiceClient},
    store::{self, embedded::Durability},
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tokio::sync::Notify;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, transport::Channel};

use crate::{
    cluster::PrivateCluster,
    helpers::{http_get, record_request, spawn_app_on},
};

const WRITERS: usize = 32;

/// What the writers saw.
#[derive(Default)]
struct Ledger {
    acknowledged: Vec<String>,
    /// Every failed call: its code and how long it took to fail.
    failures: Vec<(Code, Duration)>,
}

/// Writes `request_id` until it is acknowledged, retrying with the same id
/// as a client with a retry policy would. Returns false if `give_up` passed.
async fn write_until_acknowledged(
    client: &mut ConsentServiceClient<Channel>,
    subject: &str,
    request_id: &str,
    ledger: &Mutex<Ledger>,
    give_up: Instant,
) -> bool {
    let choice = if request_id.ends_with(['0', '2', '4', '6', '8']) {
        Choice::Grant
    } else {
        Choice::Refuse
    };
    loop {
        let mut message = record_request(subject, "promotional_mail", "", choice);
        message.request_id = request_id.to_string();
        message.evidence = request_id.to_string();
        let mut request = Request::new(message);
        // Far above the fail-fast bound: a hang shows up as a slow failure.
        request.set_timeout(Duration::from_secs(10));
        let started = Instant::now();
        match client.record_consent(request).await {
            Ok(_) => {
                ledger.lock().unwrap().acknowledged.push(request_id.into());
                return true;
            }
            Err(status) => {
                let took = started.elapsed();
                ledger.lock().unwrap().failures.push((status.code(), took));
            }
        }
        if Instant::now() > give_up {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a WatchChanges subscriber received, and the codes it was refused with.
#[derive(Default)]
struct Watched {
    record_ids: Vec<String>,
    errors: Vec<Code>,
}

/// Follows the feed from the start; on an error, or when `cut` fires, it
/// reconnects with the last sequence it got as the cursor.
async fn subscribe(
    mut client: ConsentServiceClient<Channel>,
    watched: Arc<Mutex<Watched>>,
    cut: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut cursor = 0;
    while !stop.is_cancelled() {
        let request = pb::WatchChangesRequest {
            after: cursor,
            purposes: vec![],
        };
        let mut stream = match client.watch_changes(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                watched.lock().unwrap().errors.push(status.code());
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = cut.notified() => break,
                item = stream.next() => match item {
                    Some(Ok(change)) => {
                        let record = change.into_record().expect("a record");
                        cursor = record.sequence;
                        watched.lock().unwrap().record_ids.push(record.record_id);
                    }
                    Some(Err(status)) => {
                        watched.lock().unwrap().errors.push(status.code());
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        break;
                    }
                    None => break,
                },
            }
        }
    }
}

/// Polls `probe` every 50 ms until it returns true or `limit` has passed.
async fn within(limit: Duration, mut probe: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if probe().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_postgresql_under_load_loses_no_acknowledged_write_and_consentd_recovers_alone() {
    let cluster = PrivateCluster::start(Durability::Durable).await;
    let database = cluster.database("crash").await;
    let db_url = database.db_url.clone();
    let app = spawn_app_on(database, |args| {
        args.database.max_connections = 8;
        // Streams then learn of new records only through LISTEN/NOTIFY, so
        // a LISTEN connection that does not come back fails the test.
        args.feed_poll_interval_ms = 60_000;
    })
    .await;
    let subjects: Vec<String> = (0..WRITERS).map(|w| format!("C-crash-{w}")).collect();
    for subject in &subjects {
        app.register(subject).await;
    }

    let watched = Arc::new(Mutex::new(Watched::default()));
    let cut = Arc::new(Notify::new());
    let stop_watch = CancellationToken::new();
    let subscriber = tokio::spawn(subscribe(
        app.client.clone(),
        watched.clone(),
        cut.clone(),
        stop_watch.clone(),
    ));

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop_writing = CancellationToken::new();
    let give_up = Instant::now() + Duration::from_secs(40);
    let writers: Vec<_> = subjects
        .iter()
        .enumerate()
        .map(|(w, subject)| {
            let (mut client, subject) = (app.client.clone(), subject.clone());
            let (ledger, stop) = (ledger.clone(), stop_writing.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.is_cancelled() {
                    let request_id = format!("crash-{w}-{i}");
                    if !write_until_acknowledged(
                        &mut client,
                        &subject,
                        &request_id,
                        &ledger,
                        give_up,
                    )
                    .await
                    {
                        return;
                    }
                    i += 1;
                }
            })
        })
        .collect();

    // Load first, then the crash mid-load.
    let loaded = within(Duration::from_secs(20), async || {
        ledger.lock().unwrap().acknowledged.len() >= 100
    })
    .await;
    assert!(loaded.is_some(), "the writers never got going");
    let pid = cluster.pg.postmaster_pid().expect("the postmaster runs");
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let crashed_after = ledger.lock().unwrap().acknowledged.len();
    cut.notify_one();

    let not_ready = within(Duration::from_secs(3), async || {
        http_get(app.admin_addr, "/readyz").await.0 == 503
    })
    .await;
    assert!(
        not_ready.is_some(),
        "/readyz still says ready without a database"
    );
    // The outage lasts a while under load, so that many calls fail.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    cluster.pg.restart().await.unwrap();
    // From here on PostgreSQL answers; consentd has 5 s to notice alone.
    let recovered = within(Duration::from_secs(5), async || {
        let mut probe = record_request(&subjects[0], "promotional_mail", "", Choice::Refuse);
        probe.request_id = "crash-probe".into();
        app.client.clone().record_consent(probe).await.is_ok()
    })
    .await;
    assert!(recovered.is_some(), "writes did not recover within 5 s");
    let ready = within(Duration::from_secs(5), async || {
        http_get(app.admin_addr, "/readyz").await.0 == 200
    })
    .await;
    assert!(ready.is_some(), "/readyz did not recover within 5 s");

    // Writes after the recovery, which only NOTIFY can bring to the stream.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop_writing.cancel();
    for writer in writers {
        writer.await.unwrap();
    }
    let ledger = Arc::into_inner(ledger).unwrap().into_inner().unwrap();
    assert!(
        ledger.acknowledged.len() > crashed_after,
        "nothing was written after the restart"
    );

    // Zero lost, zero duplicated: every acknowledged request_id has exactly
    // one record, and no request_id has two.
    let db = store::admin_connect(&db_url).await.unwrap();
    let per_request: Vec<(String, i64)> = db
        .query(
            "SELECT request_id, count(*) FROM consent_records
              WHERE request_id LIKE 'crash-%' GROUP BY request_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let duplicated: Vec<_> = per_request.iter().filter(|(_, n)| *n > 1).collect();
    assert!(duplicated.is_empty(), "retries duplicated: {duplicated:?}");
    let stored: HashSet<&str> = per_request.iter().map(|(id, _)| id.as_str()).collect();
    let lost: Vec<_> = ledger
        .acknowledged
        .iter()
        .filter(|id| !stored.contains(id.as_str()))
        .collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");

    // Failing fast, and as UNAVAILABLE.
    assert!(
        ledger.failures.len() >= WRITERS,
        "too few calls fell into the outage: {}",
        ledger.failures.len()
    );
    let wrong: Vec<_> = ledger
        .failures
        .iter()
        .filter(|(code, _)| *code != Code::Unavailable)
        .collect();
    assert!(wrong.is_empty(), "failed with other codes: {wrong:?}");
    let mut latencies: Vec<Duration> = ledger.failures.iter().map(|(_, took)| *took).collect();
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99).div_ceil(100) - 1];
    assert!(
        p99 < Duration::from_secs(1),
        "failed calls took up to {p99:?} (p99) to fail"
    );

    // The subscriber, reconnecting with its cursor, got every record once.
    let all: BTreeSet<String> = db
        .query("SELECT record_id::text FROM consent_records", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let caught_up = within(Duration::from_secs(10), async || {
        watched.lock().unwrap().record_ids.len() >= all.len()
    })
    .await;
    stop_watch.cancel();
    subscriber.await.unwrap();
    let watched = Arc::into_inner(watched).unwrap().into_inner().unwrap();
    assert!(
        caught_up.is_some(),
        "the subscriber got {} of {} records",
        watched.record_ids.len(),
        all.len()
    );
    let received: BTreeSet<String> = watched.record_ids.iter().cloned().collect();
    assert_eq!(
        received.len(),
        watched.record_ids.len(),
        "a record came twice"
    );
    assert_eq!(received, all, "the feed's records differ from the table's");
    assert!(
        watched.errors.iter().all(|code| *code == Code::Unavailable),
        "the feed failed with other codes: {:?}",
        watched.errors
    );
}
