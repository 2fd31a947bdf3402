//! `--read-database-url`: a second server whose change feed reads a real
//! hot standby (made with `pg_basebackup -R` from a cluster the test owns)
//! while the first server writes to the primary.

use std::{sync::Arc, time::Duration};

use consentd::{
    grpc::pb::{self, Choice},
    policy::Policy,
    settings::DatabaseArgs,
    startup::Application,
    store::{self, Database, embedded::Durability},
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tokio_stream::StreamExt as _;
use tonic::Streaming;

use crate::{
    cluster::{PrivateCluster, PrivateStandby},
    helpers::{FreshDatabase, TestApp, serve_args, spawn_app_on},
};

/// Only a hang guard: a feed that is correct delivers in milliseconds.
const GUARD: Duration = Duration::from_secs(30);

const RAW_INSERT: &str = "INSERT INTO consent_records (subject_id, record_id, purpose, field,
        choice, channel, notice_version, evidence, actor)
     VALUES ('C-1', gen_random_uuid(), 'promotional_mail', '', 'refuse', 'api', 'v', '', 'sql')
     RETURNING sequence";

/// A primary, a database on it, its standby, server A on the primary and
/// server B reading the standby. B polls only once an hour, so what it sees
/// it learnt from a wake-up.
pub struct Pair {
    pub a: TestApp,
    pub b: TestApp,
    pub standby: PrivateStandby,
    _cluster: PrivateCluster,
}

fn same(database: &FreshDatabase) -> FreshDatabase {
    FreshDatabase {
        admin_url: database.admin_url.clone(),
        db_name: database.db_name.clone(),
        db_url: database.db_url.clone(),
    }
}

pub async fn pair(name: &str) -> Pair {
    let cluster = PrivateCluster::start(Durability::Durable).await;
    let database = cluster.database(name).await;
    let standby = cluster.standby().await;
    let read_url = standby.url(name);
    let a = spawn_app_on(same(&database), |_| {}).await;
    let b = spawn_app_on(database, |args| {
        args.read_database_url = Some(read_url);
        args.feed_poll_interval_ms = 3_600_000;
    })
    .await;
    Pair {
        a,
        b,
        standby,
        _cluster: cluster,
    }
}

async fn watch(app: &TestApp, after: i64) -> Streaming<pb::WatchChangesResponse> {
    app.client
        .clone()
        .watch_changes(pb::WatchChangesRequest {
            after,
            purposes: vec![],
        })
        .await
        .unwrap()
        .into_inner()
}

async fn next(stream: &mut Streaming<pb::WatchChangesResponse>) -> pb::ConsentRecord {
    tokio::time::timeout(GUARD, stream.next())
        .await
        .expect("a change before the hang guard")
        .expect("the stream is open")
        .expect("no error")
        .into_record()
        .expect("a record")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consent_written_through_one_server_streams_from_a_server_reading_the_standby() {
    let pair = pair("standby_feed").await;
    let (a, b) = (&pair.a, &pair.b);
    let mut stream = watch(b, 0).await;
    a.register("C-1").await;
    let first = a
        .record("C-1", "promotional_mail", "", Choice::Refuse)
        .await;
    assert_eq!(next(&mut stream).await, first);
    // B's reader is now live, polls once an hour, and the standby hears no
    // NOTIFY: this one reaches B through the primary's wake-up, read once
    // the standby has replayed it.
    let second = a.record("C-1", "partner_offers", "", Choice::Refuse).await;
    assert_eq!(next(&mut stream).await, second);
}

/// A standby's snapshot lists no transaction in flight on the primary, so
/// it cannot tell a gap that may still fill from one that will not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_that_commits_late_on_the_primary_is_not_skipped_on_the_standby() {
    let pair = pair("standby_gap").await;
    let (a, b) = (&pair.a, &pair.b);
    a.register("C-1").await;
    a.register("C-2").await;
    let mut stream = watch(b, 0).await;
    let mut db = a.connect_db().await;
    let slow = db.transaction().await.unwrap();
    let slow_sequence: i64 = slow.query_one(RAW_INSERT, &[]).await.unwrap().get(0);
    let fast = a.record("C-2", "promotional_mail", "", Choice::Grant).await;
    assert!(fast.sequence > slow_sequence);
    // Once the standby shows `fast`, wake B again: it reads the standby
    // with the gap in view whatever the timing of the first wake-up.
    let on_standby = store::admin_connect(&pair.standby.url("standby_gap"))
        .await
        .unwrap();
    let replayed = async {
        while on_standby
            .query_opt(
                "SELECT 1 FROM consent_records WHERE sequence = $1",
                &[&fast.sequence],
            )
            .await
            .unwrap()
            .is_none()
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(GUARD, replayed).await.unwrap();
    a.db.batch_execute("NOTIFY consent_changes").await.unwrap();
    // A reader that wrongly passed the gap would send `fast` before this
    // commit; give it the time to, then commit.
    until_b_waits_at_the_gap(a).await;
    slow.commit().await.unwrap();
    let first = next(&mut stream).await;
    let second = next(&mut stream).await;
    assert_eq!(
        (first.sequence, second.sequence),
        (slow_sequence, fast.sequence)
    );
}

/// Returns once a reader polls the primary's in-flight transactions, or
/// after a few seconds; the assertions on order decide.
async fn until_b_waits_at_the_gap(a: &TestApp) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        let polling: i64 = (a.db)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_on_the_standby_carries_on_after_the_standby_is_killed() {
    let pair = pair("standby_crash").await;
    let (a, b, standby) = (&pair.a, &pair.b, &pair.standby);
    let mut stream = watch(b, 0).await;
    a.register("C-1").await;
    let first = a
        .record("C-1", "promotional_mail", "", Choice::Refuse)
        .await;
    assert_eq!(next(&mut stream).await, first);

    let pid = standby.pg.postmaster_pid().expect("the standby runs");
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    // Written while the standby is down: the wake-up finds no standby.
    let second = a.record("C-1", "partner_offers", "", Choice::Refuse).await;
    standby.pg.restart().await.unwrap();
    // After the restart, a wake-up (no poll comes) tells B of a third.
    let third = a.record("C-1", "promotional_mail", "", Choice::Grant).await;
    assert_eq!(next(&mut stream).await, second);
    assert_eq!(next(&mut stream).await, third);
    // A new stream reads the settled history from the restarted standby.
    let mut fresh = watch(b, 0).await;
    for expected in [&first, &second, &third] {
        assert_eq!(&next(&mut fresh).await, expected);
    }
}

/// Builds (but does not run) a server on `database` reading from `read_url`.
async fn build_with_read_url(database: &FreshDatabase, read_url: String) -> anyhow::Result<()> {
    let mut args = serve_args(DatabaseArgs {
        database_url: Some(database.db_url.clone()),
        pg_data_dir: None,
        local_server_url: database.admin_url.clone(),
        max_connections: 4,
        db_connect_timeout_ms: 2000,
        db_pool_wait_timeout_ms: 5000,
    })
    .await;
    args.read_database_url = Some(read_url);
    let policy = Arc::new(Policy::load(&args.policy).unwrap());
    let opened = Database::open_with(&args.database, &args.connection_settings()).await?;
    Application::with_database(&args, opened, policy)
        .await
        .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_url_that_is_not_a_standby_of_the_database_is_refused() {
    let cluster = PrivateCluster::start(Durability::Durable).await;
    let database = cluster.database("standby_refused").await;
    let standby = cluster.standby().await;

    let primary = build_with_read_url(&database, database.db_url.clone()).await;
    let refusal = format!("{:#}", primary.expect_err("the primary is no standby"));
    assert!(refusal.contains("it is not a standby"), "{refusal}");

    let other = build_with_read_url(&database, standby.url("postgres")).await;
    let refusal = format!("{:#}", other.expect_err("another database is refused"));
    assert!(refusal.contains("holds another database"), "{refusal}");

    build_with_read_url(&database, standby.url("standby_refused"))
        .await
        .expect("the standby of this database is accepted");
}
