//! The gRPC limits, over real sockets: calls over the concurrency limit are
//! shed, callers over their rate are refused with a retry hint, and a call
//! past its deadline is answered DEADLINE_EXCEEDED with its query cancelled
//! in PostgreSQL. Calls are held in flight by a table lock the test takes.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use consentd::grpc::pb::{self, consent_service_client::ConsentServiceClient};
use tonic::{Code, Request, Status, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_types::StatusExt as _;

use crate::{
    callers::{as_caller, callers_file},
    helpers::{TestApp, registration, spawn_app_with},
    raw_h2::{self, RawConnection},
};

/// Polls until `count` backends wait on a lock, for at most 10 s.
async fn until_waiting(app: &TestApp, count: i64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if app.waiting_on_locks().await == count {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// A connection of the test's own holding `subjects` locked, so that every
/// write of a subject waits; released when the transaction ends.
async fn lock_subjects(app: &TestApp) -> tokio_postgres::Client {
    let holder = app.connect_db().await;
    holder
        .batch_execute("BEGIN; LOCK TABLE subjects IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    holder
}

fn check(subject: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        subject_id: subject.into(),
        purpose: "promotional_mail".into(),
        field: "email".into(),
        consistency: None,
    }
}

#[tokio::test]
async fn a_call_over_the_concurrency_limit_is_shed_at_once_and_health_still_answers() {
    let app = spawn_app_with(|args| args.limits.max_concurrent_calls = 2).await;
    let holder = lock_subjects(&app).await;
    let held: Vec<_> = ["C-1", "C-2"]
        .into_iter()
        .map(|id| {
            let mut client = app.client.clone();
            tokio::spawn(async move { client.register_subject(registration(id)).await })
        })
        .collect();
    assert!(until_waiting(&app, 2).await, "both calls reach the lock");

    let shed = app
        .client
        .clone()
        .register_subject(registration("C-3"))
        .await
        .unwrap_err();
    assert_eq!(shed.code(), Code::ResourceExhausted, "{shed:?}");
    let health = HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);

    holder.batch_execute("COMMIT").await.unwrap();
    for call in held {
        call.await.unwrap().expect("a held call completes");
    }
    app.register("C-4").await;
    let stored: i64 = app
        .db
        .query_one(
            "SELECT count(*) FROM subjects WHERE subject_id = 'C-3'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 0, "a shed call writes nothing");
}

/// Calls until one is refused, at most `most`; the refusal, if any.
async fn call_until_refused(
    client: &mut ConsentServiceClient<Channel>,
    request: impl Fn() -> Request<pb::CheckRequest>,
    most: usize,
) -> (usize, Option<Status>) {
    for admitted in 0..most {
        if let Err(status) = client.check(request()).await {
            return (admitted, Some(status));
        }
    }
    (most, None)
}

#[tokio::test]
async fn a_caller_over_its_rate_is_told_when_to_retry_and_another_caller_is_not_held_back() {
    let app = spawn_app_with(|args| {
        args.callers = Some(callers_file());
        args.limits.rate_limit_per_caller = 1;
        args.limits.rate_limit_burst = 3;
    })
    .await;
    let mailer = || as_caller("marketing-mailer", check("C-1"));
    let (admitted, refused) = call_until_refused(&mut app.client.clone(), mailer, 20).await;
    let refused = refused.expect("the mailer is refused once over its rate");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        admitted >= 3,
        "its burst of 3 was admitted first ({admitted})"
    );
    let retry = refused.get_error_details();
    let delay = retry
        .retry_info()
        .and_then(|info| info.retry_delay)
        .expect("a google.rpc.RetryInfo with a delay");
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(1),
        "{delay:?}"
    );

    // Counted by caller, not by connection.
    let fresh = Channel::from_shared(format!("http://{}", app.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let again = ConsentServiceClient::new(fresh)
        .check(mailer())
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::ResourceExhausted, "{again:?}");

    let support = || {
        as_caller(
            "support",
            pb::CheckRequest {
                purpose: "customer_support".into(),
                ..check("C-1")
            },
        )
    };
    for _ in 0..3 {
        app.client
            .clone()
            .check(support())
            .await
            .expect("support is unaffected");
    }
}

#[tokio::test]
async fn anonymous_callers_are_counted_by_their_address() {
    let app = spawn_app_with(|args| {
        args.limits.rate_limit_per_caller = 1;
        args.limits.rate_limit_burst = 3;
    })
    .await;
    let connect_from = |local: IpAddr| {
        let endpoint = Channel::from_shared(format!("http://{}", app.grpc_addr)).unwrap();
        async move {
            let channel = endpoint.local_address(Some(local)).connect().await.unwrap();
            ConsentServiceClient::new(channel)
        }
    };
    let one = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
    let (_, refused) = call_until_refused(
        &mut connect_from(one).await,
        || Request::new(check("C-1")),
        20,
    )
    .await;
    let refused = refused.expect("127.0.0.1 is refused once over its rate");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");

    let again = connect_from(one)
        .await
        .check(check("C-1"))
        .await
        .unwrap_err();
    assert_eq!(
        again.code(),
        Code::ResourceExhausted,
        "a new connection from it too"
    );
    let mut other = connect_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))).await;
    for _ in 0..3 {
        other
            .check(check("C-1"))
            .await
            .expect("127.0.0.2 has its own bucket");
    }
}

const REGISTER: &str = "/consent.v1.ConsentService/RegisterSubject";

#[tokio::test]
async fn a_call_past_the_clients_deadline_is_deadline_exceeded_and_its_query_is_cancelled() {
    let app = spawn_app_with(|_| {}).await;
    let holder = lock_subjects(&app).await;
    let addr = app.grpc_addr;
    let call = tokio::spawn(async move {
        raw_h2::unary(
            addr,
            REGISTER,
            &registration("C-1"),
            &[("grpc-timeout", "3S")],
        )
        .await
    });
    assert!(
        until_waiting(&app, 1).await,
        "the call's INSERT waits on the lock"
    );

    let (code, message) = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("answered within 10 s")
        .unwrap();
    assert_eq!(Code::from_i32(code), Code::DeadlineExceeded, "{message}");
    // Still holding the lock: only a cancel can have ended the wait.
    assert!(
        until_waiting(&app, 0).await,
        "the server's query no longer waits on the lock"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        app.count("subjects").await,
        0,
        "the cancelled INSERT never ran"
    );
}

#[tokio::test]
async fn a_call_without_a_deadline_gets_the_servers_default() {
    let app = spawn_app_with(|args| args.limits.default_deadline_ms = 1000).await;
    let holder = lock_subjects(&app).await;
    let request = registration("C-1");
    let call = raw_h2::unary(app.grpc_addr, REGISTER, &request, &[]);
    let (code, message) = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("answered within 10 s");
    assert_eq!(Code::from_i32(code), Code::DeadlineExceeded, "{message}");
    assert!(until_waiting(&app, 0).await, "its query was cancelled");
    holder.batch_execute("COMMIT").await.unwrap();
    app.register("C-2").await;
}

#[tokio::test]
async fn a_connection_opening_more_streams_than_allowed_has_the_extra_one_refused() {
    let app = spawn_app_with(|args| args.limits.max_concurrent_streams = 2).await;
    let mut h2 = RawConnection::open(app.grpc_addr).await;
    let advertised = loop {
        let frame = h2.read().await;
        if frame.kind == raw_h2::SETTINGS && frame.flags & 0x1 == 0 {
            h2.send(raw_h2::SETTINGS, 0x1, 0, &[]).await;
            break raw_h2::settings(&frame);
        }
    };
    assert!(
        advertised.contains(&(raw_h2::SETTINGS_MAX_CONCURRENT_STREAMS, 2)),
        "{advertised:?}"
    );
    // Three calls whose bodies never come: the first two stay open.
    for stream in [1, 3, 5] {
        h2.open_stream(stream, "/consent.v1.ConsentService/Check")
            .await;
    }
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let frame = h2.read().await;
            assert_ne!(frame.kind, raw_h2::GOAWAY, "the connection itself is kept");
            if frame.kind == raw_h2::RST_STREAM {
                break frame;
            }
        }
    })
    .await
    .expect("the extra stream is reset");
    assert_eq!(refused.stream, 5);
    assert_eq!(
        u32::from_be_bytes(refused.payload[..4].try_into().unwrap()),
        raw_h2::REFUSED_STREAM
    );
}

/// Reads frames for `watch`, acknowledging the server's SETTINGS and, if
/// `answer_pings`, its PINGs. Returns the pings seen, and whether the
/// server closed the connection.
async fn follow_pings(h2: &mut RawConnection, answer_pings: bool, watch: Duration) -> (u32, bool) {
    let mut pings = 0;
    let closed = tokio::time::timeout(watch, async {
        while let Some(frame) = h2.read_or_closed().await {
            let ack = frame.flags & 0x1 != 0;
            if frame.kind == raw_h2::SETTINGS && !ack {
                h2.send(raw_h2::SETTINGS, 0x1, 0, &[]).await;
            }
            if frame.kind == raw_h2::PING && !ack {
                pings += 1;
                if answer_pings {
                    h2.send(raw_h2::PING, 0x1, 0, &frame.payload).await;
                }
            }
        }
    })
    .await
    .is_ok();
    (pings, closed)
}

#[tokio::test]
async fn an_idle_connection_is_pinged_and_one_that_never_answers_is_closed() {
    let app = spawn_app_with(|args| {
        args.limits.http2_keepalive_interval_seconds = 1;
        args.limits.http2_keepalive_timeout_seconds = 1;
    })
    .await;
    // A peer that answers stays connected, pinged again and again.
    let mut alive = RawConnection::open(app.grpc_addr).await;
    let (pings, closed) = follow_pings(&mut alive, true, Duration::from_secs(5)).await;
    assert!(!closed, "a connection that answers its pings is kept");
    assert!(
        pings >= 2,
        "an idle connection is pinged every second ({pings} pings in 5 s)"
    );
    // A peer that is gone (it never answers) is dropped.
    let mut silent = RawConnection::open(app.grpc_addr).await;
    let (pings, closed) = follow_pings(&mut silent, false, Duration::from_secs(10)).await;
    assert!(pings >= 1, "the silent connection was pinged");
    assert!(closed, "a connection that never answers its ping is closed");
}
