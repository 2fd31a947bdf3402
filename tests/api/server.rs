//! The server around the service: health, reflection, HTTP probes and
//! graceful shutdown.

use std::time::{Duration, Instant};

use consentd::{grpc::pb, store};
use tokio_stream::StreamExt as _;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

use crate::{
    cli::{spawn_serve_with, terminate_and_wait},
    helpers::{fresh_database, http_get, record_request, spawn_app, spawn_app_with},
};

#[tokio::test]
async fn health_reports_serving_for_the_server_and_the_consent_service() {
    let app = spawn_app().await;
    let mut health = HealthClient::new(app.channel.clone());
    for service in ["", "consent.v1.ConsentService", "consent.v1.ConcernService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }
}

#[tokio::test]
async fn reflection_lists_every_service_and_describes_the_contract() {
    let app = spawn_app().await;
    let mut reflection = ServerReflectionClient::new(app.channel.clone());
    let requests = tokio_stream::iter([
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "consent.v1.ConsentService".into(),
            )),
        },
    ]);
    let mut responses = reflection
        .server_reflection_info(requests)
        .await
        .unwrap()
        .into_inner();

    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let mut names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "consent.v1.ConcernService",
            "consent.v1.ConsentService",
            "consent.v1.DisclosureService",
            "consent.v1.SubjectRightsService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection"
        ]
    );

    let Some(MessageResponse::FileDescriptorResponse(files)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected file descriptors");
    };
    use prost::Message as _;
    let file = prost_types::FileDescriptorProto::decode(files.file_descriptor_proto[0].as_slice())
        .unwrap();
    assert_eq!(file.package(), "consent.v1");
    let methods: Vec<_> = file.service[0]
        .method
        .iter()
        .map(|m| m.name().to_string())
        .collect();
    assert_eq!(
        methods,
        [
            "RegisterSubject",
            "RecordConsent",
            "Check",
            "BatchCheck",
            "BulkCheck",
            "GetConsentState",
            "ListConsentHistory",
            "WatchChanges",
            "CreateUnsubscribeLinks",
            "CreatePreferenceLinks"
        ]
    );
}

#[tokio::test]
async fn http_probes_answer() {
    let app = spawn_app().await;
    for (path, body) in [("/healthz", "ok\n"), ("/readyz", "ready\n")] {
        let (status, text) = http_get(app.admin_addr, path).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(text, body, "{path}");
    }
}

#[tokio::test]
async fn probes_and_metrics_are_served_only_on_the_admin_listener() {
    let app = spawn_app().await;
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(http_get(app.admin_addr, path).await.0, 200, "admin {path}");
        assert_eq!(http_get(app.http_addr, path).await.0, 404, "public {path}");
    }
    // The unsubscribe pages are public only: a bad token answers there, not on admin.
    assert_eq!(http_get(app.http_addr, "/u/nonsense").await.0, 400);
    assert_eq!(http_get(app.admin_addr, "/u/nonsense").await.0, 404);
}

#[tokio::test]
async fn shutdown_reports_not_serving_first_and_lets_calls_finish() {
    let mut app = spawn_app_with(|args| args.drain_seconds = 1).await;
    app.register("C-1").await;
    let mut health = HealthClient::new(app.channel.clone());
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "consent.v1.ConsentService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.next().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );

    app.stop_token().cancel();
    let next = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.status(), ServingStatus::NotServing);

    // During the drain window calls are still answered.
    let answer = app.check("C-1", "promotional_mail", "email").await;
    assert_eq!(answer.decision(), pb::Decision::Allow);

    // A watch stream never ends by itself; a client closes it.
    drop(watch);
    tokio::time::timeout(Duration::from_secs(5), app.shutdown())
        .await
        .unwrap()
        .unwrap();
    let refused = tokio::net::TcpStream::connect(app.grpc_addr).await;
    assert!(refused.is_err(), "the listener is closed after shutdown");
}

/// Waits until a statement in this database waits for a lock.
async fn wait_until_blocked(db: &tokio_postgres::Client) {
    for _ in 0..100 {
        let waiting: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE NOT granted
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the call never reached the database lock");
}

/// A refusal for C-1, held up by a lock the test holds on the history.
fn blocked_refusal(
    client: &pb::consent_service_client::ConsentServiceClient<tonic::transport::Channel>,
) -> tokio::task::JoinHandle<Result<tonic::Response<pb::RecordConsentResponse>, tonic::Status>> {
    let mut client = client.clone();
    tokio::spawn(async move {
        client
            .record_consent(record_request(
                "C-1",
                "promotional_mail",
                "",
                pb::Choice::Refuse,
            ))
            .await
    })
}

/// A real process, so that a server which exits without waiting for its
/// calls cuts them, as it would in production.
#[tokio::test]
async fn a_call_in_flight_when_the_listeners_close_still_finishes() {
    let db = fresh_database().await;
    let served = spawn_serve_with(&["--database-url", &db.db_url], &[]);
    let client = pb::consent_service_client::ConsentServiceClient::connect(format!(
        "http://{}",
        served.grpc_addr
    ))
    .await
    .unwrap();
    client
        .clone()
        .register_subject(crate::helpers::registration("C-1"))
        .await
        .unwrap();
    let locker = store::admin_connect(&db.db_url).await.unwrap();
    locker
        .batch_execute("BEGIN; LOCK TABLE consent_records IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let call = blocked_refusal(&client);
    wait_until_blocked(&locker).await;

    let mut child = served.child;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let closed = async {
        while tokio::net::TcpStream::connect(&served.grpc_addr)
            .await
            .is_ok()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("the listener closes while the call is in flight");
    assert!(!call.is_finished(), "the call is still waiting");
    assert!(
        child.try_wait().unwrap().is_none(),
        "serve waits for the call"
    );

    locker.batch_execute("COMMIT").await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .unwrap()
        .unwrap()
        .expect("the in-flight call is answered");
    assert_eq!(
        answer.into_inner().record.unwrap().choice(),
        pb::Choice::Refuse
    );
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "serve exited with {status}");
    let written: i64 = locker
        .query_one("SELECT count(*) FROM consent_records", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(written, 1);
}

/// `--shutdown-timeout-seconds`: a real server with a call stuck past the
/// timeout exits within about the timeout, and the call is cut.
#[tokio::test]
async fn a_call_still_running_at_the_shutdown_timeout_is_cut() {
    let db = fresh_database().await;
    let served = spawn_serve_with(
        &[
            "--database-url",
            &db.db_url,
            "--shutdown-timeout-seconds",
            "1",
        ],
        &[],
    );
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", served.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let client = pb::consent_service_client::ConsentServiceClient::new(channel);
    client
        .clone()
        .register_subject(crate::helpers::registration("C-1"))
        .await
        .unwrap();
    let locker = store::admin_connect(&db.db_url).await.unwrap();
    locker
        .batch_execute("BEGIN; LOCK TABLE consent_records IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let call = blocked_refusal(&client);
    wait_until_blocked(&locker).await;

    let started = Instant::now();
    let lines = terminate_and_wait(served.child, &served.logs).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "exited {took:?} after SIGTERM, with a 1 s timeout"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("after the shutdown timeout")),
        "{}",
        lines.join("\n")
    );
    let cut = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .unwrap()
        .unwrap();
    assert!(cut.is_err(), "the stuck call got no answer: {cut:?}");
    locker.batch_execute("COMMIT").await.unwrap();
    let written: i64 = locker
        .query_one("SELECT count(*) FROM consent_records", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(written, 0, "the cut call wrote nothing");
}

/// A load balancer keeps a health Watch open on every server. At SIGTERM it
/// must learn NOT_SERVING, and its open stream must not hold the drained
/// server up until the 30 s shutdown timeout.
#[tokio::test]
async fn an_open_health_watch_sees_not_serving_and_does_not_hold_up_shutdown() {
    let db = fresh_database().await;
    let served = spawn_serve_with(&["--database-url", &db.db_url, "--drain-seconds", "1"], &[]);
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", served.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest { service: "".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.next().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );
    let watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(item) = watch.next().await {
            seen.push(item.map(|r| r.status()).map_err(|s| s.code()));
        }
        seen
    });

    let started = Instant::now();
    let lines = terminate_and_wait(served.child, &served.logs).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "exited {took:?} after SIGTERM, with a 1 s drain:\n{}",
        lines.join("\n")
    );
    let seen = tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .expect("the watch ended")
        .unwrap();
    assert_eq!(
        seen,
        [Ok(ServingStatus::NotServing), Err(tonic::Code::Unavailable)]
    );
}
