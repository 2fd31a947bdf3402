//! Traces and logs of a real `consentd serve` process: it exports over
//! OTLP/gRPC to a collector this test runs in-process. Its metrics are in
//! metrics.rs.

use consentd::{
    domain::SubjectId,
    grpc::pb::{
        self, consent_service_client::ConsentServiceClient,
        disclosure_service_client::DisclosureServiceClient,
    },
    telemetry::SubjectRefs,
};
use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::Span,
};
use tonic::{Request, metadata::MetadataValue};

use crate::{
    cli::{spawn_serve_with, tempdir, terminate_and_wait},
    helpers::fresh_database,
    otlp::{assert_absent, start_collector},
};

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn text(span: &Span, key: &str) -> String {
    match attribute(span, key) {
        Some(Value::StringValue(s)) => s.clone(),
        other => panic!("{} has {key} = {other:?}", span.name),
    }
}

fn int(span: &Span, key: &str) -> i64 {
    match attribute(span, key) {
        Some(Value::IntValue(i)) => *i,
        other => panic!("{} has {key} = {other:?}", span.name),
    }
}

fn event_text(attributes: &[KeyValue], key: &str) -> String {
    match attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
    {
        Some(AnyValue {
            value: Some(Value::StringValue(s)),
        }) => s.clone(),
        other => panic!("{key} = {other:?}"),
    }
}

fn with_traceparent<T>(message: T, traceparent: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("traceparent", MetadataValue::try_from(traceparent).unwrap());
    request
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const SUBJECT: &str = "C-7781-secret";
const NAME: &str = "Wang Xiaoming-unique";
const ADDRESS: &str = "88 Huaihai Road, Shanghai-unique";
const PHONE: &str = "+86 21 5555 0199";

#[tokio::test]
async fn spans_continue_the_callers_trace_with_decision_attributes_and_no_personal_data() {
    let (collector, endpoint) = start_collector().await;
    let db = fresh_database().await;
    let dir = tempdir();
    let key_file = dir.join("subject-ref.key");
    std::fs::write(
        &key_file,
        "# test key\nMDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n",
    )
    .unwrap();
    let served = spawn_serve_with(
        &[
            "--database-url",
            &db.db_url,
            "--subject-ref-key-file",
            key_file.to_str().unwrap(),
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SERVICE_NAME", "consentd-under-test"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let mut client = ConsentServiceClient::connect(format!("http://{}", served.grpc_addr))
        .await
        .unwrap();
    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");

    client
        .register_subject(with_traceparent(
            crate::helpers::registration(SUBJECT),
            &traceparent,
        ))
        .await
        .unwrap();
    client
        .record_consent(with_traceparent(
            pb::RecordConsentRequest {
                subject_id: SUBJECT.into(),
                purpose: "promotional_mail".into(),
                choice: pb::Choice::Refuse.into(),
                channel: pb::Channel::Support.into(),
                notice_version: "2026-11".into(),
                evidence: "call 8812".into(),
                ..Default::default()
            },
            &traceparent,
        ))
        .await
        .unwrap();
    // Read through to the database, so the call has store spans to inspect
    // (a default check answers from memory and has none).
    let check = pb::CheckRequest {
        subject_id: SUBJECT.into(),
        purpose: "promotional_mail".into(),
        field: "email".into(),
        consistency: crate::helpers::fully_consistent(),
    };
    client
        .check(with_traceparent(check.clone(), &traceparent))
        .await
        .unwrap();
    client
        .batch_check(with_traceparent(
            pb::BatchCheckRequest {
                items: vec![pb::BatchCheckItem {
                    correlation_id: "x".into(),
                    subject_id: SUBJECT.into(),
                    purpose: "order_delivery".into(),
                    field: "name".into(),
                }],
                consistency: None,
            },
            &traceparent,
        ))
        .await
        .unwrap();
    // Personal data, and a courier disclosure that releases part of it.
    let mut disclosures = DisclosureServiceClient::connect(format!("http://{}", served.grpc_addr))
        .await
        .unwrap();
    for (field, value) in [
        ("name", NAME),
        ("postal_address", ADDRESS),
        ("phone", PHONE),
    ] {
        disclosures
            .put_personal_data(with_traceparent(
                pb::PutPersonalDataRequest {
                    subject_id: SUBJECT.into(),
                    field: field.into(),
                    value: value.into(),
                    collected_for: vec!["order_delivery".into()],
                    channel: pb::Channel::Web.into(),
                    notice_version: "2026-11".into(),
                    request_id: String::new(),
                },
                &traceparent,
            ))
            .await
            .unwrap();
    }
    let released = disclosures
        .request_disclosure(with_traceparent(
            pb::RequestDisclosureRequest {
                subject_id: SUBJECT.into(),
                recipient_id: "express-courier".into(),
                purpose: "order_delivery".into(),
                fields: vec!["name".into(), "postal_address".into(), "phone".into()],
                reference: "order-7781".into(),
                ..Default::default()
            },
            &traceparent,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        released.released.len(),
        2,
        "the test really moved values through the server"
    );
    drop(disclosures);
    let bad = pb::CheckRequest {
        subject_id: SUBJECT.into(),
        purpose: "nope".into(),
        field: "email".into(),
        consistency: None,
    };
    client
        .check(with_traceparent(bad, &traceparent))
        .await
        .unwrap_err();
    drop(client);
    // SIGTERM flushes what is still buffered.
    let logs = terminate_and_wait(served.child, &served.logs).await;

    let exports = collector.exports.lock().await.clone();
    let raw = collector.raw().await;
    assert!(!raw.is_empty(), "something was exported");
    assert_absent(&raw, &[SUBJECT], "the spans: the external id never leaves");
    assert_absent(&raw, &["7781"], "the spans: not even a part of it");
    // Every value the test sent, and distinctive parts of each.
    let sent = [
        SUBJECT,
        NAME,
        ADDRESS,
        PHONE,
        "order-7781",
        "call 8812",
        "Xiaoming",
        "Huaihai",
        "5555 0199",
    ];
    assert_absent(&raw, &sent, "the exported spans");
    assert!(logs.iter().any(|l| l.contains("rpc finished")), "{logs:?}");
    assert_absent(logs.join("\n").as_bytes(), &sent, "the logs");

    let resource_names: Vec<String> = exports
        .iter()
        .flat_map(|e| &e.resource_spans)
        .filter_map(|rs| rs.resource.as_ref())
        .flat_map(|r| &r.attributes)
        .filter(|kv| kv.key == "service.name")
        .filter_map(
            |kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => Some(s.clone()),
                _ => None,
            },
        )
        .collect();
    assert!(
        resource_names.iter().all(|n| n == "consentd-under-test") && !resource_names.is_empty()
    );

    let spans: Vec<Span> = exports
        .into_iter()
        .flat_map(|e| e.resource_spans)
        .flat_map(|rs| rs.scope_spans)
        .flat_map(|ss| ss.spans)
        .collect();
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let rpc_spans: Vec<&Span> = spans
        .iter()
        .filter(|s| attribute(s, "rpc.system").is_some())
        .collect();
    assert_eq!(
        rpc_spans.len(),
        9,
        "{:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    for span in &rpc_spans {
        assert_eq!(
            hex(&span.trace_id),
            TRACE_ID,
            "{} continues the caller's trace",
            span.name
        );
        assert_eq!(hex(&span.parent_span_id), CALLER_SPAN, "{}", span.name);
        assert_eq!(span.kind, 2, "server kind");
        assert_eq!(text(span, "rpc.system"), "grpc");
        assert!(
            span.name
                .starts_with(&format!("{}/", text(span, "rpc.service"))),
            "{}",
            span.name
        );
    }

    let expected_ref = SubjectRefs::load(&key_file)
        .unwrap()
        .of(&SubjectId::parse(SUBJECT).unwrap());
    let checks: Vec<&&Span> = rpc_spans
        .iter()
        .filter(|s| text(s, "rpc.method") == "Check")
        .collect();
    let ok = checks
        .iter()
        .find(|s| int(s, "rpc.grpc.status_code") == 0)
        .expect("the good Check");
    assert_eq!(ok.name, "consent.v1.ConsentService/Check");
    assert_eq!(text(ok, "consent.purpose"), "promotional_mail");
    assert_eq!(text(ok, "consent.field"), "email");
    assert_eq!(text(ok, "consent.decision"), "deny");
    assert_eq!(text(ok, "consent.reason"), "opted_out");
    assert_eq!(text(ok, "consent.policy_version"), "2026-11-24.2");
    assert_eq!(text(ok, "consent.subject_ref"), expected_ref);
    let bad = checks
        .iter()
        .find(|s| int(s, "rpc.grpc.status_code") == 3)
        .expect("the bad Check");
    assert!(attribute(bad, "consent.decision").is_none());

    // Store calls are child spans of the RPC, with no SQL parameters. A
    // check read through to the database is one statement, one round trip.
    let children: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id == ok.span_id)
        .collect();
    let store: Vec<&&Span> = children
        .iter()
        .filter(|s| s.name.starts_with("store."))
        .collect();
    assert_eq!(
        store.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["store.decision_inputs"]
    );
    let store = store[0];
    assert_eq!(text(store, "db.system"), "postgresql");
    assert_eq!(text(store, "db.operation.name"), "decision_inputs");
    assert_eq!(store.kind, 3, "client kind");

    let disclosure = rpc_spans
        .iter()
        .find(|s| text(s, "rpc.method") == "RequestDisclosure")
        .unwrap();
    assert_eq!(
        disclosure.name,
        "consent.v1.DisclosureService/RequestDisclosure"
    );
    assert_eq!(
        text(disclosure, "rpc.service"),
        "consent.v1.DisclosureService"
    );
    assert_eq!(text(disclosure, "disclosure.recipient"), "express-courier");
    assert_eq!(text(disclosure, "disclosure.basis"), "purpose");
    assert_eq!(text(disclosure, "disclosure.status"), "partial");
    assert_eq!(text(disclosure, "consent.purpose"), "order_delivery");
    assert_eq!(int(disclosure, "disclosure.fields_released"), 2);
    assert_eq!(int(disclosure, "disclosure.fields_withheld"), 1);
    assert_eq!(text(disclosure, "consent.subject_ref"), expected_ref);

    let batch = rpc_spans
        .iter()
        .find(|s| text(s, "rpc.method") == "BatchCheck")
        .unwrap();
    let event = batch
        .events
        .iter()
        .find(|e| e.name == "consent.decision")
        .expect("a decision event");
    assert_eq!(event_text(&event.attributes, "consent.decision"), "allow");
    assert_eq!(event_text(&event.attributes, "consent.reason"), "contract");
    assert_eq!(
        event_text(&event.attributes, "consent.subject_ref"),
        expected_ref
    );
}

/// Runs one Check with a `traceparent` against a server logging in `format`
/// and returns the server's log lines. A successful Check logs at debug.
async fn logs_of_one_check(format: &str) -> Vec<String> {
    let db = fresh_database().await;
    let served = spawn_serve_with(
        &["--database-url", &db.db_url, "--log-format", format],
        &[("RUST_LOG", "info,consentd::grpc::observe=debug")],
    );
    let mut client = ConsentServiceClient::connect(format!("http://{}", served.grpc_addr))
        .await
        .unwrap();
    let check = pb::CheckRequest {
        subject_id: SUBJECT.into(),
        purpose: "promotional_mail".into(),
        field: "email".into(),
        consistency: None,
    };
    client
        .check(with_traceparent(
            check,
            &format!("00-{TRACE_ID}-{CALLER_SPAN}-01"),
        ))
        .await
        .unwrap();
    drop(client);
    terminate_and_wait(served.child, &served.logs).await
}

#[tokio::test]
async fn json_logs_carry_trace_and_span_ids_and_no_subject() {
    let lines = logs_of_one_check("json").await;
    let rpc = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "rpc finished")
        .unwrap_or_else(|| panic!("no JSON access log line in:\n{}", lines.join("\n")));
    assert_eq!(rpc["span"]["trace_id"], TRACE_ID);
    assert_eq!(rpc["span"]["span_id"].as_str().map(str::len), Some(16));
    assert_eq!(rpc["fields"]["method"], "Check");
    assert!(
        lines.iter().all(|l| !l.contains(SUBJECT)),
        "no external id in any log line"
    );
}

#[tokio::test]
async fn text_logs_carry_trace_and_span_ids_and_no_subject() {
    let lines = logs_of_one_check("text").await;
    let rpc = lines
        .iter()
        .find(|l| l.contains("rpc finished"))
        .expect("an access log line");
    assert!(rpc.contains(&format!("trace_id={TRACE_ID}")), "{rpc}");
    assert!(rpc.contains("span_id="), "{rpc}");
    assert!(
        lines.iter().all(|l| !l.contains(SUBJECT)),
        "no external id in any log line"
    );
}

#[tokio::test]
async fn at_info_a_successful_check_logs_nothing_and_failures_and_writes_log_a_line() {
    let db = fresh_database().await;
    let served = spawn_serve_with(&["--database-url", &db.db_url], &[]);
    let mut client = ConsentServiceClient::connect(format!("http://{}", served.grpc_addr))
        .await
        .unwrap();
    client
        .register_subject(crate::helpers::registration(SUBJECT))
        .await
        .unwrap();
    let check = |purpose: &str| pb::CheckRequest {
        subject_id: SUBJECT.into(),
        purpose: purpose.into(),
        field: "email".into(),
        consistency: None,
    };
    client.check(check("promotional_mail")).await.unwrap();
    client
        .batch_check(pb::BatchCheckRequest {
            items: vec![pb::BatchCheckItem {
                subject_id: SUBJECT.into(),
                purpose: "promotional_mail".into(),
                field: "email".into(),
                correlation_id: String::new(),
            }],
            consistency: None,
        })
        .await
        .unwrap();
    client.check(check("nope")).await.unwrap_err();
    drop(client);
    let lines = terminate_and_wait(served.child, &served.logs).await;

    let access: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("rpc finished"))
        .collect();
    let with = |method: &str, status: &str| {
        access
            .iter()
            .filter(|l| l.contains(&format!("method=\"{method}\"")))
            .filter(|l| l.contains(&format!("status=\"{status}\"")))
            .count()
    };
    assert_eq!(with("RegisterSubject", "OK"), 1, "{access:#?}");
    assert_eq!(with("Check", "InvalidArgument"), 1, "{access:#?}");
    assert_eq!(
        access.len(),
        2,
        "no line for the successful reads: {access:#?}"
    );
}

/// At the default level a decision read's span writes its ids only when a
/// line is logged inside it (src/telemetry/span_ids.rs). A successful
/// Check logs nothing; a refused one logs its access line, and a Check
/// whose database read fails logs the error and its access line, each with
/// the span's method, the caller's trace id and the span's own id.
#[tokio::test]
async fn at_the_default_level_only_a_failed_check_logs_and_its_lines_carry_the_ids() {
    let trace = |n: u128| format!("{:032x}", 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4700u128 + n);
    let check = |purpose: &str, consistency| pb::CheckRequest {
        subject_id: SUBJECT.into(),
        purpose: purpose.into(),
        field: "email".into(),
        consistency,
    };
    let db = fresh_database().await;
    let locker = consentd::store::admin_connect(&db.db_url).await.unwrap();
    for format in ["text", "json"] {
        let served = spawn_serve_with(
            &[
                "--database-url",
                &db.db_url,
                "--log-format",
                format,
                "--db-statement-timeout-ms",
                "300",
            ],
            &[],
        );
        let mut client = ConsentServiceClient::connect(format!("http://{}", served.grpc_addr))
            .await
            .unwrap();
        let traced =
            |message, n| with_traceparent(message, &format!("00-{}-{CALLER_SPAN}-01", trace(n)));
        client
            .check(traced(check("promotional_mail", None), 1))
            .await
            .expect("the Check succeeds");
        let refused = client
            .check(traced(check("no_such_purpose", None), 2))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        // The database read behind a fully consistent Check waits on a lock
        // past the statement timeout.
        locker
            .batch_execute("BEGIN; LOCK TABLE consent_state IN ACCESS EXCLUSIVE MODE")
            .await
            .unwrap();
        let failed = client
            .check(traced(
                check("promotional_mail", crate::helpers::fully_consistent()),
                3,
            ))
            .await
            .unwrap_err();
        locker.batch_execute("COMMIT").await.unwrap();
        assert_eq!(failed.code(), tonic::Code::Unavailable, "{failed:?}");
        drop(client);
        let lines = terminate_and_wait(served.child, &served.logs).await;
        let with = |n| -> Vec<&String> { lines.iter().filter(|l| l.contains(&trace(n))).collect() };

        assert!(with(1).is_empty(), "{format}: {:?}", with(1));
        let [access] = with(2)[..] else {
            panic!("{format}: {:?}", with(2))
        };
        assert!(access.contains("rpc finished") && access.contains("InvalidArgument"));
        let [error, access] = with(3)[..] else {
            panic!("{format}: {:?}", with(3))
        };
        assert!(error.contains("database error"), "{format}: {error}");
        assert!(access.contains("rpc finished") && access.contains("Unavailable"));
        for line in with(2).into_iter().chain(with(3)) {
            let span_id = match format {
                "text" => line.split("span_id=").nth(1).map(|s| &s[..16]),
                _ => serde_json::from_str::<serde_json::Value>(line).unwrap()["span"]["span_id"]
                    .as_str()
                    .map(|_| "present"),
            };
            assert!(span_id.is_some_and(|s| s != "0000000000000000"), "{line}");
            assert!(
                line.contains(r#"rpc.method="Check""#) || line.contains(r#""rpc.method":"Check""#),
                "{line}"
            );
        }
    }
}
