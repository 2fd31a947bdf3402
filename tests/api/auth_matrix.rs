//! The authorization matrix: every RPC of every consent.v1 service, read
//! from the descriptors so a new RPC can't be left out, called as each
//! caller of the test callers file, anonymously and with a wrong token.
//! Each cell is checked against what the file says, read here on its own.

use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor,
    Value,
};
use tonic::{Code, Request, Status, codegen::http::uri::PathAndQuery, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest,
};

use crate::callers::{TOKENS, callers_toml, refusal, spawn_app_with_callers};

/// A purpose, recipient and so on that the request of each RPC names,
/// valid for the policy so that a refusal is the only thing that can stop it.
fn string_value(method: &str, field: &str) -> Option<&'static str> {
    let disclosure = method == "RequestDisclosure";
    Some(match field {
        "subject_id" => "C-1042",
        "purpose" if disclosure => "order_delivery",
        "purpose" | "purposes" | "collected_for" => "promotional_mail",
        "field" => "email",
        "fields" => "name",
        "recipient_id" => "express-courier",
        "reference" => "order 7781",
        "notice_version" => "2026-11",
        "evidence" | "description" | "resolution" => "test",
        "contact" => "person@example.com",
        "value" => "person@example.com",
        "subject_ids" => "C-1042",
        "concern_id" | "disclosure_id" => "0190f5d4-7a3e-7cc0-8000-000000000001",
        _ => return None,
    })
}

/// A valid request of `message`'s type for `method`.
fn request(method: &str, message: &MessageDescriptor) -> DynamicMessage {
    let mut request = DynamicMessage::new(message.clone());
    for field in message.fields() {
        if let Some(value) = field_value(method, &field) {
            request.set_field(&field, value);
        }
    }
    request
}

fn field_value(method: &str, field: &FieldDescriptor) -> Option<Value> {
    let one = match field.kind() {
        Kind::String => Value::String(string_value(method, field.name())?.into()),
        // The first value after *_UNSPECIFIED.
        Kind::Enum(_) if field.name() != "legal_basis" => Value::EnumNumber(1),
        Kind::Message(item) if field.is_list() => Value::Message(request(method, &item)),
        _ => return None,
    };
    Some(if field.is_list() {
        Value::List(vec![one])
    } else {
        one
    })
}

/// What the request names, as the file's lists name it.
fn touched(method: &str, message: &MessageDescriptor) -> (Vec<&'static str>, Vec<&'static str>) {
    let mut purposes = Vec::new();
    let mut recipients = Vec::new();
    for field in message.fields() {
        match field.name() {
            "purpose" | "purposes" | "collected_for" => {
                purposes.extend(string_value(method, field.name()))
            }
            "recipient_id" => recipients.extend(string_value(method, "recipient_id")),
            "items" => purposes.extend(string_value(method, "purpose")),
            _ => {}
        }
    }
    (purposes, recipients)
}

/// The expected refusal reason of a cell, or `None` when it is allowed:
/// the rpc first, then purposes, then recipients.
fn expected(entry: &toml::Value, method: &MethodDescriptor) -> Option<&'static str> {
    let list = |key: &str| -> Vec<String> {
        entry
            .get(key)
            .and_then(|v| v.as_array())
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    let service = method.parent_service().full_name().to_string();
    let rpc = format!("{service}/{}", method.name());
    if !list("rpcs")
        .iter()
        .any(|p| *p == rpc || *p == format!("{service}/*"))
    {
        return Some("RPC_NOT_PERMITTED");
    }
    let (purposes, recipients) = touched(method.name(), &method.input());
    if purposes
        .iter()
        .any(|p| !list("purposes").iter().any(|q| q == p))
    {
        return Some("PURPOSE_NOT_PERMITTED");
    }
    if recipients
        .iter()
        .any(|r| !list("recipients").iter().any(|q| q == r))
    {
        return Some("RECIPIENT_NOT_PERMITTED");
    }
    None
}

/// Calls `method` with `token` (if any) and returns the status it ends with.
async fn call(channel: &Channel, method: &MethodDescriptor, token: Option<&str>) -> Status {
    let mut request = Request::new(request(method.name(), &method.input()));
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().unwrap();
        request.metadata_mut().insert("authorization", value);
    }
    let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
    let path = PathAndQuery::try_from(path).unwrap();
    let codec = tonic_prost::ProstCodec::<DynamicMessage, ()>::default();
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let result = if method.is_client_streaming() {
        // One request, then the client's side closes: the status the
        // response stream ends with is the answer (a refusal of what the
        // request names comes there, after the stream has opened).
        let (metadata, extensions, message) = request.into_parts();
        let request = Request::from_parts(metadata, extensions, tokio_stream::once(message));
        match grpc.streaming(request, path, codec).await {
            Ok(response) => {
                let mut answers = response.into_inner();
                loop {
                    match answers.message().await {
                        Ok(Some(_)) => {}
                        Ok(None) => break Ok(()),
                        Err(status) => break Err(status),
                    }
                }
            }
            Err(status) => Err(status),
        }
    } else if method.is_server_streaming() {
        grpc.server_streaming(request, path, codec)
            .await
            .map(|_| ())
    } else {
        grpc.unary(request, path, codec).await.map(|_| ())
    };
    result.err().unwrap_or_else(|| Status::ok(""))
}

#[tokio::test]
async fn every_rpc_answers_each_caller_as_the_callers_file_says() {
    let app = spawn_app_with_callers().await;
    let file: toml::Value = toml::from_str(&callers_toml()).unwrap();
    let entries = file["callers"].as_array().unwrap();
    let pool = DescriptorPool::decode(consentd::grpc::pb::FILE_DESCRIPTOR_SET).unwrap();
    let methods: Vec<MethodDescriptor> = pool
        .services()
        .filter(|s| s.package_name() == "consent.v1")
        .flat_map(|s| s.methods().collect::<Vec<_>>())
        .collect();
    assert_eq!(pool.services().count(), 4, "every consent.v1 service");
    assert!(methods.len() >= 23, "every RPC: {}", methods.len());

    let mut failures = Vec::new();
    let mut seen_reasons = std::collections::BTreeSet::new();
    for method in &methods {
        let rpc = format!("{}/{}", method.parent_service().name(), method.name());
        for unknown in [None, Some("not-a-caller-token")] {
            let status = call(&app.channel, method, unknown).await;
            if status.code() != Code::Unauthenticated {
                failures.push(format!("{rpc} with token {unknown:?}: {status:?}"));
            }
        }
        for entry in entries {
            let id = entry["id"].as_str().unwrap();
            let token = TOKENS.iter().find(|(c, _)| *c == id).unwrap().1;
            let status = call(&app.channel, method, Some(token)).await;
            match expected(entry, method) {
                None if matches!(
                    status.code(),
                    Code::PermissionDenied | Code::Unauthenticated
                ) =>
                {
                    failures.push(format!("{rpc} as {id}: allowed, got {status:?}"))
                }
                None => {}
                Some(reason) if status.code() != Code::PermissionDenied => {
                    failures.push(format!("{rpc} as {id}: {reason} expected, got {status:?}"))
                }
                Some(reason) => {
                    let (got, _) = refusal(&status);
                    seen_reasons.insert(got.clone());
                    if got != reason {
                        failures.push(format!("{rpc} as {id}: {reason} expected, got {got}"));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The file is built so that the matrix exercises every kind of refusal
    // a request of it can meet.
    assert_eq!(
        seen_reasons.into_iter().collect::<Vec<_>>(),
        [
            "PURPOSE_NOT_PERMITTED",
            "RECIPIENT_NOT_PERMITTED",
            "RPC_NOT_PERMITTED"
        ]
    );
}

#[tokio::test]
async fn health_is_open_to_all_and_reflection_needs_a_caller() {
    let app = spawn_app_with_callers().await;
    let health = HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await;
    assert!(health.is_ok(), "{health:?}");

    let list = || {
        tokio_stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }])
    };
    let mut reflection = ServerReflectionClient::new(app.channel.clone());
    let anonymous = reflection.server_reflection_info(list()).await.unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    let mut request = Request::new(list());
    let value = format!("Bearer {}", crate::callers::token("dpo"))
        .parse()
        .unwrap();
    request.metadata_mut().insert("authorization", value);
    let answered = reflection.server_reflection_info(request).await;
    assert!(answered.is_ok(), "{answered:?}");
}
