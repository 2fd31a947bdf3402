//! A rolling restart: two real `consentd serve` processes share one
//! database behind a client that balances round-robin over the servers
//! whose health says SERVING and retries UNAVAILABLE, as a gRPC client with
//! health checking and a retry policy does (or a Kubernetes Service with a
//! readiness probe). One server gets
//! SIGTERM under load and comes back; the drain (NOT_SERVING, drain,
//! GOAWAY, in-flight calls finish) means no call fails.

use std::{
    net::{Ipv4Addr, TcpListener},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use consentd::grpc::pb::{self, Choice, consent_service_client::ConsentServiceClient};
use tokio_util::sync::CancellationToken;
use tonic::{Code, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    cli::{Served, spawn_serve_with, terminate_and_wait},
    helpers::{fresh_database, record_request},
};

const CLIENTS: usize = 8;

fn free_addr() -> String {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    listener.local_addr().unwrap().to_string()
}

async fn serve(db_url: &str, grpc_addr: &str) -> Served {
    let args: Vec<String> = [
        "--database-url",
        db_url,
        "--grpc-addr",
        grpc_addr,
        "--drain-seconds",
        "1",
    ]
    .map(String::from)
    .to_vec();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        spawn_serve_with(&args, &[])
    })
    .await
    .unwrap()
}

/// A server as the balancer sees it.
#[derive(Clone)]
struct Backend {
    client: ConsentServiceClient<Channel>,
    /// What its health watch last said; false while it cannot be reached.
    serving: Arc<AtomicBool>,
}

impl Backend {
    /// Polls the server's health until `stop`, as a readiness probe does.
    fn new(addr: &str, stop: CancellationToken) -> Self {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let serving = Arc::new(AtomicBool::new(false));
        let mut health = HealthClient::new(channel.clone());
        let flag = serving.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let request = HealthCheckRequest { service: "".into() };
                let status = health.check(request).await.map(|r| r.into_inner().status);
                flag.store(
                    status.is_ok_and(|s| s == ServingStatus::Serving as i32),
                    Ordering::SeqCst,
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self {
            client: ConsentServiceClient::new(channel),
            serving,
        }
    }
}

/// One logical call, attempted round-robin across the serving backends
/// (all of them if none is) until it succeeds. UNAVAILABLE is retried on
/// the next one; any other error is a failed call. Returns the attempts.
async fn call(
    backends: &[Backend],
    next: &AtomicUsize,
    request: &pb::RecordConsentRequest,
) -> Result<usize, tonic::Status> {
    let give_up = Instant::now() + Duration::from_secs(20);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let serving: Vec<&Backend> = backends
            .iter()
            .filter(|b| b.serving.load(Ordering::SeqCst))
            .collect();
        let pool = if serving.is_empty() {
            backends.iter().collect()
        } else {
            serving
        };
        let mut client = pool[next.fetch_add(1, Ordering::Relaxed) % pool.len()]
            .client
            .clone();
        let check = pb::CheckRequest {
            subject_id: request.subject_id.clone(),
            purpose: request.purpose.clone(),
            field: "email".into(),
            consistency: None,
        };
        let result = match client.record_consent(request.clone()).await {
            Ok(_) => client.check(check).await.map(|_| ()),
            Err(status) => Err(status),
        };
        match result {
            Ok(()) => return Ok(attempts),
            Err(status) if status.code() == Code::Unavailable && Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => return Err(status),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_fails_no_call() {
    let db = fresh_database().await;
    let addrs = [free_addr(), free_addr()];
    let first = serve(&db.db_url, &addrs[0]).await;
    let second = serve(&db.db_url, &addrs[1]).await;
    let stop = CancellationToken::new();
    let backends: Vec<Backend> = addrs
        .iter()
        .map(|addr| Backend::new(addr, stop.clone()))
        .collect();
    let mut registrar = backends[0].client.clone();
    for c in 0..CLIENTS {
        registrar
            .register_subject(pb::RegisterSubjectRequest {
                subject_id: format!("C-roll-{c}"),
                kind: pb::SubjectKind::Individual.into(),
                notice_version: "2026-11".into(),
                channel: pb::Channel::Web.into(),
                request_id: String::new(),
            })
            .await
            .unwrap();
    }

    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Mutex::new(Vec::<(String, usize)>::new()));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (backends, next, stop) = (backends.clone(), next.clone(), stop.clone());
            let (done, failed) = (done.clone(), failed.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.is_cancelled() {
                    let mut request = record_request(
                        &format!("C-roll-{c}"),
                        "promotional_mail",
                        "",
                        if i % 2 == 0 {
                            Choice::Refuse
                        } else {
                            Choice::Grant
                        },
                    );
                    request.request_id = format!("roll-{c}-{i}");
                    match call(&backends, &next, &request).await {
                        Ok(attempts) => done.lock().unwrap().push((request.request_id, attempts)),
                        Err(status) => failed
                            .lock()
                            .unwrap()
                            .push(format!("{}: {status:?}", request.request_id)),
                    }
                    i += 1;
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before_restart = done.lock().unwrap().len();
    let log = terminate_and_wait(first.child, &first.logs).await;
    let while_down = done.lock().unwrap().len();
    assert!(
        log.iter().any(|l| l.contains("reporting NOT_SERVING")),
        "the server did not drain:\n{}",
        log.join("\n")
    );
    let restarted = serve(&db.db_url, &addrs[0]).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.cancel();
    for client in clients {
        client.await.unwrap();
    }

    let failed = failed.lock().unwrap().clone();
    assert!(failed.is_empty(), "calls failed: {failed:#?}");
    let done = done.lock().unwrap().clone();
    assert!(
        before_restart > 0 && while_down > before_restart && done.len() > while_down,
        "no load around the restart: {before_restart}, {while_down}, {}",
        done.len()
    );

    // Each call recorded exactly once, whichever server took it.
    let client = consentd::store::admin_connect(&db.db_url).await.unwrap();
    let stored: i64 = client
        .query_one(
            "SELECT count(DISTINCT request_id) FROM consent_records WHERE request_id LIKE 'roll-%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let records: i64 = client
        .query_one(
            "SELECT count(*) FROM consent_records WHERE request_id LIKE 'roll-%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!((stored, records), (done.len() as i64, done.len() as i64));

    let log = terminate_and_wait(restarted.child, &restarted.logs).await;
    assert!(
        log.iter().any(|l| l.contains("RecordConsent")),
        "the restarted server took no call"
    );
    terminate_and_wait(second.child, &second.logs).await;
}
