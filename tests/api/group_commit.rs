//! RecordConsent's group commit: concurrent callers' records share one
//! transaction, each caller still gets exactly the answer a write of its
//! own would have had, and a batch that does not commit answers every
//! caller in it with an error.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use consentd::grpc::pb::{self, consent_service_client::ConsentServiceClient};
use tonic::{Code, transport::Channel};

use crate::{
    cli::{spawn_serve_with, terminate_and_wait},
    helpers::{fresh_database, http_get, record_request, registration, spawn_app},
    ledger::{verify, verify_url},
};

const PURPOSE: &str = "promotional_mail";

fn request(subject: &str, request_id: &str, evidence: &str) -> pb::RecordConsentRequest {
    pb::RecordConsentRequest {
        request_id: request_id.into(),
        evidence: evidence.into(),
        ..record_request(subject, PURPOSE, "", pb::Choice::Refuse)
    }
}

/// 64 callers at once: retries sharing request ids, request ids reused
/// with another body, unknown subjects. Each request id yields one record
/// and one answer, the losers of a reuse and the unknown subjects get
/// their errors, nothing else is written, and the ledger still verifies.
#[tokio::test]
async fn concurrent_retries_conflicts_and_unknown_subjects_each_get_their_own_answer() {
    let app = spawn_app().await;
    for i in 0..20 {
        app.register(&format!("GC-{i:02}")).await;
    }
    // (group, request): 16 groups of three identical retries, 4 groups of
    // two copies of one body and one of another, 4 unknown subjects.
    let mut calls: Vec<(String, pb::RecordConsentRequest)> = Vec::new();
    for i in 0..16 {
        for _ in 0..3 {
            let id = format!("retry-{i}");
            calls.push((id.clone(), request(&format!("GC-{i:02}"), &id, "form-17")));
        }
    }
    for i in 16..20 {
        let id = format!("reuse-{i}");
        let subject = format!("GC-{i:02}");
        calls.push((id.clone(), request(&subject, &id, "body-a")));
        calls.push((id.clone(), request(&subject, &id, "body-a")));
        calls.push((id.clone(), request(&subject, &id, "body-b")));
    }
    for i in 0..4 {
        let id = format!("unknown-{i}");
        calls.push((id.clone(), request(&format!("GC-NOPE-{i}"), &id, "form-17")));
    }
    assert_eq!(calls.len(), 64);
    let handles: Vec<_> = calls
        .iter()
        .map(|(_, req)| {
            let mut client = app.client.clone();
            let req = req.clone();
            tokio::spawn(async move { client.record_consent(req).await.map(|r| r.into_inner()) })
        })
        .collect();
    let mut answers = Vec::new();
    for handle in handles {
        answers.push(handle.await.unwrap());
    }

    // Per request id: the record ids answered, and the bodies refused.
    let mut ok: HashMap<&str, Vec<(String, String)>> = HashMap::new();
    let mut reused: HashMap<&str, Vec<String>> = HashMap::new();
    for ((id, req), answer) in calls.iter().zip(&answers) {
        match answer {
            Ok(r) => {
                let record = r.record.as_ref().expect("a record");
                assert_eq!(record.request_id, *id);
                ok.entry(id)
                    .or_default()
                    .push((record.record_id.clone(), req.evidence.clone()));
            }
            Err(status) if id.starts_with("unknown-") => {
                assert_eq!(status.code(), Code::NotFound, "{id}: {status:?}");
            }
            Err(status) => {
                assert_eq!(status.code(), Code::AlreadyExists, "{id}: {status:?}");
                reused.entry(id).or_default().push(req.evidence.clone());
            }
        }
    }
    for i in 0..16 {
        let answered = &ok[format!("retry-{i}").as_str()];
        assert_eq!(answered.len(), 3, "every retry of retry-{i} succeeds");
        assert!(
            answered.iter().all(|(r, _)| *r == answered[0].0),
            "retry-{i}: one record id for every retry: {answered:?}"
        );
    }
    let mut stored_evidence = HashMap::new();
    for i in 16..20 {
        let id = format!("reuse-{i}");
        // One body won: all its copies got one record, every copy of the
        // other was refused.
        let answered = ok.get(id.as_str()).cloned().unwrap_or_default();
        let refused = reused.get(id.as_str()).cloned().unwrap_or_default();
        assert!(!answered.is_empty(), "{id}: some body is recorded");
        let winner = &answered[0].1;
        assert!(
            answered
                .iter()
                .all(|(r, e)| *r == answered[0].0 && e == winner)
        );
        assert!(refused.iter().all(|e| e != winner), "{id}: {refused:?}");
        assert_eq!(answered.len() + refused.len(), 3);
        stored_evidence.insert(answered[0].0.clone(), winner.clone());
    }
    assert!(ok.keys().all(|id| !id.starts_with("unknown-")));

    // Exactly one record and one key per request id that succeeded.
    assert_eq!(app.count("consent_records").await, 20);
    assert_eq!(app.count("idempotency_keys").await, 20);
    let rows = app
        .db
        .query(
            "SELECT request_id, record_id::text, evidence FROM consent_records",
            &[],
        )
        .await
        .unwrap();
    for row in rows {
        let (id, record_id, evidence): (String, String, String) =
            (row.get(0), row.get(1), row.get(2));
        assert_eq!(ok[id.as_str()][0].0, record_id, "{id}");
        if let Some(winner) = stored_evidence.get(&record_id) {
            assert_eq!(
                *winner, evidence,
                "{id}: the stored body is the one answered"
            );
        }
    }
    let keys: i64 = app
        .db
        .query_one(
            "SELECT count(*) FROM idempotency_keys WHERE request_id LIKE 'unknown-%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(keys, 0, "a refused record leaves no key behind");
    let (verified, out, err) = verify(&app).await;
    assert!(verified, "verify failed:\n{out}\n{err}");
}

type Call = tokio::task::JoinHandle<Result<pb::RecordConsentResponse, tonic::Status>>;

/// A `consentd serve` process of its own (so its /metrics counts only its
/// own queue), its client, and its database.
struct Writer {
    served: crate::cli::Served,
    client: ConsentServiceClient<Channel>,
    admin: SocketAddr,
    database: crate::helpers::FreshDatabase,
}

impl Writer {
    async fn start(subjects: &[String]) -> Self {
        let database = fresh_database().await;
        let served = spawn_serve_with(&["--database-url", &database.db_url], &[]);
        let mut client = ConsentServiceClient::connect(format!("http://{}", served.grpc_addr))
            .await
            .unwrap();
        for subject in subjects {
            client
                .register_subject(registration(subject))
                .await
                .unwrap();
        }
        let admin = served.admin_addr.parse().unwrap();
        Self {
            served,
            client,
            admin,
            database,
        }
    }

    async fn db(&self) -> tokio_postgres::Client {
        consentd::store::admin_connect(&self.database.db_url)
            .await
            .unwrap()
    }

    /// Records queued and not yet taken into a batch, from /metrics.
    async fn queued(&self) -> f64 {
        let (_, body) = http_get(self.admin, "/metrics").await;
        body.lines()
            .find_map(|l| l.strip_prefix("consentd_record_queue "))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    fn record(&self, req: pb::RecordConsentRequest) -> Call {
        let mut client = self.client.clone();
        tokio::spawn(async move { client.record_consent(req).await.map(|r| r.into_inner()) })
    }

    /// Occupies every batch writer with a record for a `LOCK-n` subject
    /// whose row `locks` holds, one writer at a time (each is seen waiting
    /// on its lock before the next record goes), then sends one more
    /// record, which must queue. Returns the calls the writers took, and
    /// the one that queued.
    async fn occupy_writers(
        &self,
        locks: &tokio_postgres::Transaction<'_>,
        db: &tokio_postgres::Client,
    ) -> (Vec<Call>, Call) {
        let writers = consentd::service::record_writer::LIMITS.writers;
        let mut taken = Vec::new();
        for n in 1..=writers + 1 {
            let subject = format!("LOCK-{n}");
            locks
                .execute(
                    "SELECT 1 FROM subjects WHERE subject_id = $1 FOR UPDATE",
                    &[&subject],
                )
                .await
                .unwrap();
            let call = self.record(record_request(&subject, PURPOSE, "", pb::Choice::Refuse));
            if n > writers {
                // Every writer waits on a lock: this one can only queue.
                until(|| async move {
                    (self.queued().await >= 1.0 && lock_waiters(db).await.len() == writers)
                        .then_some(())
                })
                .await;
                return (taken, call);
            }
            until(|| async move { (lock_waiters(db).await.len() == n).then_some(()) }).await;
            taken.push(call);
        }
        unreachable!("the loop returns once every writer is busy")
    }
}

/// Backends of this database waiting for a lock.
async fn lock_waiters(db: &tokio_postgres::Client) -> Vec<i32> {
    db.query(
        "SELECT pid FROM pg_stat_activity
          WHERE datname = current_database() AND wait_event_type = 'Lock'",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Polls `condition` until it answers; a hang guard, not a timing.
async fn until<T, F: Future<Output = Option<T>>>(condition: impl Fn() -> F) -> T {
    for _ in 0..3000 {
        if let Some(answer) = condition().await {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the condition never held");
}

fn lock_subjects() -> Vec<String> {
    (1..=4).map(|n| format!("LOCK-{n}")).collect()
}

/// Records that queued while the writers were busy go in as one batch:
/// while that batch waits on a lock at its last record, none of its
/// callers has been answered, and once it commits, their idempotency keys
/// all carry one transaction's start time (`now()`, which is fixed per
/// transaction; separate transactions start at different microseconds).
#[tokio::test]
async fn records_that_queue_together_commit_in_one_transaction() {
    let batch: Vec<String> = (0..20).map(|i| format!("B-{i:02}")).collect();
    let writer =
        Writer::start(&[lock_subjects(), batch.clone(), vec!["Z-LAST".into()]].concat()).await;
    let db = writer.db().await;
    let (mut locks, mut last) = (writer.db().await, writer.db().await);
    let (lock_tx, last_tx) = (
        locks.transaction().await.unwrap(),
        last.transaction().await.unwrap(),
    );
    last_tx
        .execute(
            "SELECT 1 FROM subjects WHERE subject_id = 'Z-LAST' FOR UPDATE",
            &[],
        )
        .await
        .unwrap();
    let (taken, queued) = writer.occupy_writers(&lock_tx, &db).await;
    let calls: Vec<_> = batch
        .iter()
        .chain(["Z-LAST".to_string()].iter())
        .map(|s| writer.record(request(s, &format!("batch-{s}"), "form-17")))
        .collect();
    let w = &writer;
    until(|| async move { (w.queued().await >= 22.0).then_some(()) }).await;
    lock_tx.commit().await.unwrap();
    for call in taken {
        call.await.unwrap().expect("recorded");
    }
    // The batch of the 21 queued records (Z-LAST last) waits on Z-LAST.
    let db = &db;
    until(|| async move { (lock_waiters(db).await.len() == 1).then_some(()) }).await;
    assert!(
        calls.iter().all(|c| !c.is_finished()),
        "no caller is answered before its batch commits"
    );
    last_tx.commit().await.unwrap();
    for call in calls.into_iter().chain([queued]) {
        call.await.unwrap().expect("recorded");
    }
    let row = db
        .query_one(
            "SELECT count(*), count(DISTINCT created_at) FROM idempotency_keys
              WHERE request_id LIKE 'batch-B-%'",
            &[],
        )
        .await
        .unwrap();
    let (keys, transactions): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(keys, 20);
    assert_eq!(
        transactions, 1,
        "the 20 queued records share one transaction"
    );
    terminate_and_wait(writer.served.child, &writer.served.logs).await;
}

/// A batch whose connection dies before it commits: every caller in it
/// gets UNAVAILABLE, including the one whose record was already inserted,
/// and nothing of the batch is written. The writer goes on with a new
/// connection.
#[tokio::test]
async fn callers_of_a_batch_that_never_commits_get_an_error_not_a_success() {
    let writer =
        Writer::start(&[lock_subjects(), vec!["A-FIRST".into(), "Z-LAST".into()]].concat()).await;
    let db = writer.db().await;
    let mut locks = writer.db().await;
    let mut last = writer.db().await;
    let lock_tx = locks.transaction().await.unwrap();
    let last_tx = last.transaction().await.unwrap();
    last_tx
        .execute(
            "SELECT 1 FROM subjects WHERE subject_id = 'Z-LAST' FOR UPDATE",
            &[],
        )
        .await
        .unwrap();
    let (taken, queued) = writer.occupy_writers(&lock_tx, &db).await;
    let queued_subject = format!("LOCK-{}", taken.len() + 1);
    // Queued together with the writers' next record, so one batch, in
    // the order of subjects: A-FIRST and LOCK-n are written, then the
    // batch waits on Z-LAST's lock.
    let first = writer.record(request("A-FIRST", "first", "form-17"));
    let last = writer.record(request("Z-LAST", "last", "form-17"));
    let w = &writer;
    until(|| async move { (w.queued().await >= 3.0).then_some(()) }).await;
    lock_tx.commit().await.unwrap();
    for call in taken {
        call.await.unwrap().expect("recorded");
    }
    let db = &db;
    let waiting = until(|| async move {
        let pids = lock_waiters(db).await;
        (pids.len() == 1).then(|| pids[0])
    })
    .await;
    db.execute("SELECT pg_terminate_backend($1)", &[&waiting])
        .await
        .unwrap();
    for call in [first, queued, last] {
        let status = call.await.unwrap().expect_err("its batch never committed");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    last_tx.rollback().await.unwrap();
    let written: i64 = db
        .query_one(
            "SELECT count(*) FROM consent_records WHERE subject_id IN ('A-FIRST', 'Z-LAST', $1)",
            &[&queued_subject],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(written, 0, "nothing of the failed batch stands");
    let keys: i64 = db
        .query_one("SELECT count(*) FROM idempotency_keys", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(keys, 0);
    // A retry with the same request id is written, on a fresh connection.
    let retried = writer
        .record(request("A-FIRST", "first", "form-17"))
        .await
        .unwrap()
        .expect("the retry is recorded");
    assert_eq!(retried.record.unwrap().request_id, "first");
    terminate_and_wait(writer.served.child, &writer.served.logs).await;
}

/// A record the database refuses outright (here a constraint added for
/// the test, standing for any failure of one record's insert) fails the
/// batch's one statement: the batch is written again record by record, so
/// that record's caller alone gets the error, its batch mates are written,
/// and nothing of the refused record stays behind.
#[tokio::test]
async fn a_record_the_database_refuses_fails_alone_and_its_batch_mates_are_written() {
    let subjects: Vec<String> = (0..10).map(|i| format!("P-{i:02}")).collect();
    let writer = Writer::start(&[lock_subjects(), subjects.clone()].concat()).await;
    let db = writer.db().await;
    db.batch_execute(
        "ALTER TABLE consent_records ADD CONSTRAINT no_poison CHECK (evidence <> 'poison') NOT VALID",
    )
    .await
    .unwrap();
    let mut locks = writer.db().await;
    let lock_tx = locks.transaction().await.unwrap();
    let (taken, queued) = writer.occupy_writers(&lock_tx, &db).await;
    let calls: Vec<(String, Call)> = subjects
        .iter()
        .map(|s| {
            let evidence = if s == "P-05" { "poison" } else { "form-17" };
            let call = writer.record(request(s, &format!("fails-alone-{s}"), evidence));
            (s.clone(), call)
        })
        .collect();
    // Every record queues behind the busy writers, so they share a batch.
    let w = &writer;
    until(|| async move { (w.queued().await >= 11.0).then_some(()) }).await;
    lock_tx.commit().await.unwrap();
    for call in taken.into_iter().chain([queued]) {
        call.await.unwrap().expect("recorded");
    }
    for (subject, call) in calls {
        let answer = call.await.unwrap();
        if subject == "P-05" {
            let status = answer.expect_err("the refused record fails");
            assert_eq!(status.code(), Code::Internal, "{status:?}");
        } else {
            let record = answer.expect("its batch mates are written").record.unwrap();
            assert_eq!(record.subject_id, subject);
        }
    }
    let row = db
        .query_one(
            "SELECT (SELECT count(*) FROM consent_records WHERE subject_id LIKE 'P-%'),
                    (SELECT count(*) FROM consent_records WHERE subject_id = 'P-05'),
                    (SELECT count(*) FROM idempotency_keys WHERE request_id LIKE 'fails-alone-%'),
                    (SELECT count(*) FROM idempotency_keys WHERE request_id = 'fails-alone-P-05')",
            &[],
        )
        .await
        .unwrap();
    let counts: [i64; 4] = [row.get(0), row.get(1), row.get(2), row.get(3)];
    assert_eq!(
        counts,
        [9, 0, 9, 0],
        "records, refused records, keys, refused keys"
    );
    let (verified, out, err) = verify_url(&writer.database.db_url).await;
    assert!(verified, "verify failed:\n{out}\n{err}");
    terminate_and_wait(writer.served.child, &writer.served.logs).await;
}
