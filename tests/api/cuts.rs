//! Connections cut mid-call: TCP proxies on loopback sit between the
//! clients and the server, and between the server and its database, and
//! drop connections after a random number of bytes (a seeded generator, so
//! the cut points are the same from run to run). Clients retry each write
//! with the same request_id until it is acknowledged: no retried write may
//! be lost, and none may be written twice.

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use consentd::grpc::pb::{Choice, consent_service_client::ConsentServiceClient};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tonic::{Request, transport::Channel};

use crate::helpers::{fresh_database, record_request, spawn_app_on};

const WRITERS: usize = 8;
const WRITES_EACH: usize = 30;

/// splitmix64: small, seeded and good enough to pick cut points.
struct Rng(u64);

impl Rng {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % bound
    }
}

/// A loopback proxy to `upstream`. Once armed, each connection is dropped
/// after a random number of bytes (1..=`max_bytes`, both ways counted), so
/// cuts land anywhere: in a handshake, a request, a commit or an answer.
struct CuttingProxy {
    addr: SocketAddr,
    armed: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
}

impl CuttingProxy {
    async fn start(upstream: SocketAddr, seed: u64, max_bytes: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (armed, cuts) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        let (armed_flag, cut_count) = (armed.clone(), cuts.clone());
        tokio::spawn(async move {
            let mut rng = Rng(seed);
            while let Ok((downstream, _)) = listener.accept().await {
                let budget = 1 + rng.below(max_bytes);
                tokio::spawn(pipe(
                    downstream,
                    upstream,
                    budget,
                    armed_flag.clone(),
                    cut_count.clone(),
                ));
            }
        });
        Self { addr, armed, cuts }
    }

    fn arm(&self, on: bool) {
        self.armed.store(on, Ordering::SeqCst);
    }

    fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }
}

/// Copies both ways; bytes count against `budget` only while armed, and
/// when it runs out both sockets are dropped mid-message.
async fn pipe(
    mut downstream: TcpStream,
    upstream: SocketAddr,
    mut budget: u64,
    armed: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
) {
    let Ok(mut upstream) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut down_buf, mut up_buf) = ([0u8; 4096], [0u8; 4096]);
    loop {
        let (read, from_down) = tokio::select! {
            read = downstream.read(&mut down_buf) => (read, true),
            read = upstream.read(&mut up_buf) => (read, false),
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let (bytes, to) = if from_down {
            (&down_buf[..n], &mut upstream)
        } else {
            (&up_buf[..n], &mut downstream)
        };
        if armed.load(Ordering::SeqCst) {
            if budget <= n as u64 {
                let _ = to.write_all(&bytes[..budget as usize]).await;
                cuts.fetch_add(1, Ordering::SeqCst);
                return;
            }
            budget -= n as u64;
        }
        if to.write_all(bytes).await.is_err() {
            return;
        }
    }
}

/// What the writers saw.
#[derive(Default)]
struct Outcome {
    acknowledged: Vec<String>,
    /// Failed attempts by status code, to show where the cuts landed.
    failures: BTreeMap<String, usize>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_retried_across_cut_connections_are_never_lost_or_duplicated() {
    let fresh = fresh_database().await;
    let target: tokio_postgres::Config = fresh.db_url.parse().unwrap();
    let (tokio_postgres::config::Host::Tcp(host), Some(&port)) =
        (&target.get_hosts()[0], target.get_ports().first())
    else {
        panic!(
            "the test database is not reached over TCP: {}",
            fresh.db_url
        );
    };
    let db_upstream = tokio::net::lookup_host((host.as_str(), port))
        .await
        .unwrap()
        .next()
        .unwrap();
    let db_proxy = CuttingProxy::start(db_upstream, 13, 16_000).await;
    let proxied_url =
        fresh
            .db_url
            .replacen(&format!("{host}:{port}"), &db_proxy.addr.to_string(), 1);
    assert_ne!(proxied_url, fresh.db_url);
    let app = spawn_app_on(fresh, |args| {
        args.database.database_url = Some(proxied_url);
    })
    .await;
    let grpc_proxy = CuttingProxy::start(app.grpc_addr, 42, 6_000).await;
    for w in 0..WRITERS {
        app.register(&format!("C-cut-{w}")).await;
    }

    db_proxy.arm(true);
    grpc_proxy.arm(true);
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let give_up = Instant::now() + Duration::from_secs(25);
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let channel = Channel::from_shared(format!("http://{}", grpc_proxy.addr))
                .unwrap()
                .connect_lazy();
            let mut client = ConsentServiceClient::new(channel);
            let outcome = outcome.clone();
            tokio::spawn(async move {
                for i in 0..WRITES_EACH {
                    let request_id = format!("cut-{w}-{i}");
                    let choice = [Choice::Grant, Choice::Refuse][i % 2];
                    while Instant::now() < give_up {
                        let mut message =
                            record_request(&format!("C-cut-{w}"), "promotional_mail", "", choice);
                        message.request_id = request_id.clone();
                        let mut request = Request::new(message);
                        request.set_timeout(Duration::from_secs(5));
                        match client.record_consent(request).await {
                            Ok(_) => {
                                outcome.lock().unwrap().acknowledged.push(request_id);
                                break;
                            }
                            Err(status) => {
                                let code = format!("{:?}", status.code());
                                *outcome.lock().unwrap().failures.entry(code).or_default() += 1;
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    db_proxy.arm(false);
    grpc_proxy.arm(false);
    let outcome = Arc::into_inner(outcome).unwrap().into_inner().unwrap();

    assert!(
        db_proxy.cuts() > 0 && grpc_proxy.cuts() > 0,
        "the proxies cut nothing: {} database, {} gRPC",
        db_proxy.cuts(),
        grpc_proxy.cuts()
    );
    assert_eq!(
        outcome.acknowledged.len(),
        WRITERS * WRITES_EACH,
        "not every write was acknowledged before giving up; failures: {:?}",
        outcome.failures
    );

    // Exactly one record per request_id, and every acknowledged one is there.
    let per_request: Vec<(String, i64)> = app
        .db
        .query(
            "SELECT request_id, count(*) FROM consent_records
              WHERE request_id LIKE 'cut-%' GROUP BY request_id",
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
    let lost: Vec<_> = outcome
        .acknowledged
        .iter()
        .filter(|id| !stored.contains(id.as_str()))
        .collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    assert_eq!(stored.len(), WRITERS * WRITES_EACH);
    eprintln!(
        "cuts: {} database, {} gRPC; failed attempts: {:?}",
        db_proxy.cuts(),
        grpc_proxy.cuts(),
        outcome.failures
    );
}
