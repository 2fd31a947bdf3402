//! The server around the service: health, reflection, HTTP probes and
//! graceful shutdown.

use std::time::Duration;

use consentd::grpc::pb;
use tokio_stream::StreamExt as _;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

use crate::helpers::{http_get, spawn_app, spawn_app_with};

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
            "GetConsentState",
            "ListConsentHistory",
            "WatchChanges",
            "CreateUnsubscribeLinks"
        ]
    );
}

#[tokio::test]
async fn http_probes_answer() {
    let app = spawn_app().await;
    for (path, body) in [("/healthz", "ok\n"), ("/readyz", "ready\n")] {
        let (status, text) = http_get(app.http_addr, path).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(text, body, "{path}");
    }
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
