//! The database side of an outage: PostgreSQL really stopped, a statement
//! past the statement timeout, a pool with no free connection. Calls are
//! answered UNAVAILABLE (which clients retry) and write nothing; gRPC health
//! and /readyz say NOT_SERVING while the database cannot be reached and
//! SERVING once it can, without restarting consentd; and a shutdown's
//! NOT_SERVING is final.

use std::time::{Duration, Instant};

use consentd::{
    grpc::pb::{self, Choice, consent_service_client::ConsentServiceClient},
    store::{self, ConnectionSettings, Store, embedded::Durability},
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tokio_stream::StreamExt as _;
use tonic::{Code, Request, Status, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, HealthCheckResponse, health_check_response::ServingStatus,
    health_client::HealthClient,
};

use crate::{
    cluster::PrivateCluster,
    helpers::{
        TestApp, fresh_database, fully_consistent, http_get, record_request, registration,
        spawn_app_on, spawn_app_with,
    },
};

/// Far above every bound under test: a call that hangs fails the test.
const LIVENESS: Duration = Duration::from_secs(10);

fn bounded<T>(message: T) -> Request<T> {
    within(LIVENESS, message)
}

fn within<T>(limit: Duration, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(limit);
    request
}

/// One call of each kind: a write, a read, and a check, each with `limit`
/// as its deadline.
async fn calls_within(
    limit: Duration,
    client: &ConsentServiceClient<Channel>,
    subject: &str,
) -> Vec<(&'static str, Status)> {
    let mut failures = Vec::new();
    let mut client = client.clone();
    let newcomer = format!("C-new-{}", uuid::Uuid::new_v4().simple());
    if let Err(s) = client
        .register_subject(within(limit, registration(&newcomer)))
        .await
    {
        failures.push(("RegisterSubject", s));
    }
    let refusal = record_request(subject, "promotional_mail", "email", Choice::Refuse);
    if let Err(s) = client.record_consent(within(limit, refusal)).await {
        failures.push(("RecordConsent", s));
    }
    let state = pb::GetConsentStateRequest {
        subject_id: subject.into(),
    };
    if let Err(s) = client.get_consent_state(within(limit, state)).await {
        failures.push(("GetConsentState", s));
    }
    // A check that must read the database; by default a check answers from
    // memory (see `a_default_check_answers_from_memory_while_the_database_is_down`).
    let check = pb::CheckRequest {
        subject_id: subject.into(),
        purpose: "promotional_mail".into(),
        field: "email".into(),
        consistency: fully_consistent(),
    };
    if let Err(s) = client.check(within(limit, check)).await {
        failures.push(("Check", s));
    }
    failures
}

async fn calls(
    client: &ConsentServiceClient<Channel>,
    subject: &str,
) -> Vec<(&'static str, Status)> {
    calls_within(LIVENESS, client, subject).await
}

/// Polls `probe` every 50 ms until it holds; false after `LIVENESS`.
async fn eventually(mut probe: impl AsyncFnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < LIVENESS {
        if probe().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn next_status(
    watch: &mut tonic::Streaming<HealthCheckResponse>,
) -> Result<ServingStatus, Code> {
    tokio::time::timeout(LIVENESS, watch.next())
        .await
        .expect("the health watch moved within 10 s")
        .expect("the health watch is open")
        .map(|r| r.status())
        .map_err(|s| s.code())
}

async fn watch_health(app: &TestApp) -> tonic::Streaming<HealthCheckResponse> {
    let mut watch = HealthClient::new(app.channel.clone())
        .watch(HealthCheckRequest {
            service: "consent.v1.ConsentService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_status(&mut watch).await, Ok(ServingStatus::Serving));
    watch
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_database_is_answered_unavailable_and_health_follows_it_down_and_up() {
    // Durable: an immediate stop of a cluster without synchronous commit
    // would lose the registration below.
    let cluster = PrivateCluster::start(Durability::Durable).await;
    let app = spawn_app_on(cluster.database("outage").await, |_| {}).await;
    app.register("C-1").await;
    let mut watch = watch_health(&app).await;
    assert_eq!(http_get(app.admin_addr, "/readyz").await.0, 200);

    // SIGQUIT is `pg_ctl stop -m immediate`: every session ends at once
    // and the port closes, so pooled connections die and new ones are
    // refused.
    let postmaster = cluster.pg.postmaster_pid().expect("PostgreSQL runs");
    kill(Pid::from_raw(postmaster as i32), Signal::SIGQUIT).unwrap();

    assert_eq!(next_status(&mut watch).await, Ok(ServingStatus::NotServing));
    assert!(
        eventually(async || http_get(app.admin_addr, "/readyz").await.0 == 503).await,
        "/readyz says 503 while the database is down"
    );
    let failures = calls(&app.client, "C-1").await;
    let codes: Vec<(&str, Code)> = failures.iter().map(|(rpc, s)| (*rpc, s.code())).collect();
    assert_eq!(
        codes,
        [
            ("RegisterSubject", Code::Unavailable),
            ("RecordConsent", Code::Unavailable),
            ("GetConsentState", Code::Unavailable),
            ("Check", Code::Unavailable),
        ],
        "{failures:?}"
    );
    // A default check answers from memory, database or not: C-1 is known.
    let remembered = app.check("C-1", "promotional_mail", "email").await;
    assert_eq!(
        (remembered.decision(), remembered.reason()),
        (pb::Decision::Allow, pb::Reason::NotOptedOut)
    );

    cluster.pg.restart().await.unwrap();
    assert_eq!(next_status(&mut watch).await, Ok(ServingStatus::Serving));
    assert!(
        eventually(async || http_get(app.admin_addr, "/readyz").await.0 == 200).await,
        "/readyz says 200 once the database answers"
    );
    let mut last = Vec::new();
    let recovered = eventually(async || {
        last = calls(&app.client, "C-1").await;
        last.is_empty()
    })
    .await;
    assert!(
        recovered,
        "every call succeeds again, with the same consentd: {last:?}"
    );
    let answer = app.check("C-1", "promotional_mail", "email").await;
    assert_eq!(
        (answer.decision(), answer.reason()),
        (pb::Decision::Deny, pb::Reason::OptedOut),
        "the refusal recorded after the outage holds"
    );
}

#[tokio::test]
async fn a_statement_past_the_statement_timeout_is_answered_unavailable_and_writes_nothing() {
    let app = spawn_app_with(|args| args.db_statement_timeout_ms = 300).await;
    app.register("C-1").await;
    let before = app.counts().await;
    let locker = app.connect_db().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE consent_records IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();

    let refusal = record_request("C-1", "promotional_mail", "email", Choice::Refuse);
    let answer = app.client.clone().record_consent(bounded(refusal)).await;

    locker.batch_execute("COMMIT").await.unwrap();
    let status = answer.expect_err("the statement was cancelled");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        app.counts().await,
        before,
        "the cancelled call wrote nothing"
    );
}

#[tokio::test]
async fn a_call_that_waits_past_the_pool_wait_timeout_is_answered_unavailable() {
    let app = spawn_app_with(|args| {
        args.database.max_connections = 1;
        args.database.db_pool_wait_timeout_ms = 200;
        args.db_statement_timeout_ms = 60_000;
        // The change feed's reader reads through the same pool. Woken only
        // by writes (none below until the end), it must not be the one
        // holding the pool's only connection, blocked on the lock.
        args.feed_poll_interval_ms = 3_600_000;
    })
    .await;
    app.register("C-1").await;
    // Once a stream has this record, the reader has read past it and idles.
    let mut stream = app
        .client
        .clone()
        .watch_changes(bounded(pb::WatchChangesRequest {
            after: 0,
            purposes: vec![],
        }))
        .await
        .unwrap()
        .into_inner();
    let grant = record_request("C-1", "promotional_mail", "email", Choice::Grant);
    app.client
        .clone()
        .record_consent(bounded(grant))
        .await
        .unwrap();
    let first = tokio::time::timeout(LIVENESS, stream.next()).await;
    assert!(matches!(first, Ok(Some(Ok(_)))), "{first:?}");
    drop(stream);
    let locker = app.connect_db().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE consent_records IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    // Holds the pool's only connection while it waits for the lock.
    let holder = {
        let mut client = app.client.clone();
        let refusal = record_request("C-1", "promotional_mail", "email", Choice::Refuse);
        tokio::spawn(async move { client.record_consent(bounded(refusal)).await })
    };
    assert!(
        eventually(async || {
            let waiting: i64 = locker
                .query_one(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted
                      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            waiting > 0
        })
        .await,
        "the first call never reached the lock"
    );

    // Well past the 200 ms wait, well short of the 5 s default: a bound
    // that is not the flag's shows up as the client giving up.
    let failures = calls_within(Duration::from_secs(3), &app.client, "C-1").await;
    locker.batch_execute("COMMIT").await.unwrap();
    let codes: Vec<Code> = failures.iter().map(|(_, s)| s.code()).collect();
    assert_eq!(codes, [Code::Unavailable; 4], "{failures:?}");
    holder
        .await
        .unwrap()
        .expect("the call holding the connection finishes once the lock goes");
}

/// The prober keeps running while the server drains; what it finds must
/// not undo the shutdown's NOT_SERVING, on gRPC health or on /readyz.
#[tokio::test]
async fn a_draining_server_stays_not_serving_while_its_database_answers() {
    let mut app = spawn_app_with(|args| args.drain_seconds = 3).await;
    let mut watch = watch_health(&app).await;

    app.stop_token().cancel();
    assert_eq!(next_status(&mut watch).await, Ok(ServingStatus::NotServing));
    // Through most of the drain, over two probe intervals.
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        let (status, body) = http_get(app.admin_addr, "/readyz").await;
        assert_eq!((status, body.as_str()), (503, "shutting down\n"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rest = tokio::spawn(async move {
        let mut rest = Vec::new();
        while let Some(item) = watch.next().await {
            rest.push(item.map(|r| r.status()).map_err(|s| s.code()));
        }
        rest
    });
    app.shutdown().await.unwrap();
    let rest = tokio::time::timeout(LIVENESS, rest)
        .await
        .expect("the watch ends with the server")
        .unwrap();
    assert_eq!(rest, [Err(Code::Unavailable)], "nothing said SERVING again");
}

/// `serve` migrates the default database through its own pool, whose
/// connections carry the statement timeout; a migration (or the wait for
/// another replica's) must not be cut by it.
#[tokio::test]
async fn migrations_wait_past_the_statement_timeout() {
    const MIGRATION_LOCK: i64 = 0x636f_6e73_656e_7464;
    let db = fresh_database().await;
    let store = Store::connect_with(
        &db.db_url,
        &ConnectionSettings {
            statement_timeout: Some(Duration::from_millis(100)),
            ..ConnectionSettings::new(2)
        },
    )
    .unwrap();
    // Another replica migrating, as far as this one can tell.
    let other = store::admin_connect(&db.db_url).await.unwrap();
    other
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .unwrap();
    let migrate = tokio::spawn(async move { store.migrate().await });
    assert!(
        eventually(async || {
            let waiting: i64 = other
                .query_one(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            waiting > 0
        })
        .await,
        "the migration never waited for the lock"
    );
    // Five statement timeouts' worth of waiting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!migrate.is_finished(), "{:?}", migrate.await);

    other
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .unwrap();
    let applied = tokio::time::timeout(LIVENESS, migrate)
        .await
        .expect("the migration finishes once the lock is free")
        .unwrap()
        .expect("the migration succeeds");
    assert_eq!(applied, 0, "the template database is up to date");
}
