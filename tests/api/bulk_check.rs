//! BulkCheck over a real socket: answers in order that agree with
//! BatchCheck, the 10,000-id limit, bad input, flow control with a client
//! that does not read, permissions, shutdown, and its spans.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use consentd::grpc::pb::{
    self, Choice, Decision, Reason, consent_service_client::ConsentServiceClient,
    subject_rights_service_client::SubjectRightsServiceClient,
};
use opentelemetry_proto::tonic::{common::v1::any_value::Value, trace::v1::Span};
use tokio_stream::StreamExt as _;
use tonic::{Code, Status, Streaming, transport::Endpoint};
use tonic_types::StatusExt as _;

use crate::{
    callers::{as_caller, refusal, spawn_app_with_callers},
    cli::{spawn_serve_with, terminate_and_wait},
    disclosure::customer,
    helpers::{
        TestApp, as_actor, fresh_database, registration, spawn_app, spawn_app_with, violated_fields,
    },
    otlp::{assert_absent, start_collector},
};

fn bulk(purpose: &str, field: &str, ids: &[&str]) -> pb::BulkCheckRequest {
    pb::BulkCheckRequest {
        purpose: purpose.into(),
        field: field.into(),
        subject_ids: ids.iter().map(|id| id.to_string()).collect(),
        consistency: None,
    }
}

/// Sends `requests`, closes the client's side, and collects every answer
/// and the status the stream ended with (`None`: it ended OK).
async fn run(
    app: &TestApp,
    requests: Vec<pb::BulkCheckRequest>,
) -> (Vec<pb::BulkCheckResponse>, Option<Status>) {
    let answers = app
        .client
        .clone()
        .bulk_check(tokio_stream::iter(requests))
        .await
        .expect("the stream opens")
        .into_inner();
    drain(answers).await
}

async fn drain(
    mut answers: Streaming<pb::BulkCheckResponse>,
) -> (Vec<pb::BulkCheckResponse>, Option<Status>) {
    let mut got = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(60), answers.message())
            .await
            .expect("the stream answers or ends within 60 s");
        match next {
            Ok(Some(answer)) => got.push(answer),
            Ok(None) => return (got, None),
            Err(status) => {
                // Nothing follows the status that ended it.
                assert!(matches!(answers.message().await, Ok(None)));
                return (got, Some(status));
            }
        }
    }
}

/// `(decision, reason, needs_verification)` per id of an answer.
fn per_id(answer: &pb::BulkCheckResponse) -> Vec<(Decision, Reason, bool)> {
    assert_eq!(answer.decisions.len(), answer.reasons.len());
    (0..answer.decisions.len())
        .map(|i| {
            (
                Decision::try_from(answer.decisions[i]).unwrap(),
                Reason::try_from(answer.reasons[i]).unwrap(),
                answer.needs_verification.contains(&(i as u32)),
            )
        })
        .collect()
}

/// What BatchCheck answers for the same ids, purpose and field.
async fn batch_answers(app: &TestApp, r: &pb::BulkCheckRequest) -> Vec<(Decision, Reason, bool)> {
    let items = (r.subject_ids.iter().enumerate())
        .map(|(i, id)| pb::BatchCheckItem {
            correlation_id: i.to_string(),
            subject_id: id.clone(),
            purpose: r.purpose.clone(),
            field: r.field.clone(),
        })
        .collect();
    let response = app
        .client
        .clone()
        .batch_check(pb::BatchCheckRequest {
            items,
            consistency: None,
        })
        .await
        .unwrap()
        .into_inner();
    (response.results.iter())
        .map(|r| (r.decision(), r.reason(), r.needs_verification))
        .collect()
}

async fn erase(app: &TestApp, subject: &str) {
    SubjectRightsServiceClient::new(app.channel.clone())
        .erase_subject(as_actor(
            "privacy-officer",
            pb::EraseSubjectRequest {
                subject_id: subject.into(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn each_answer_matches_batch_check_for_the_same_ids_in_the_same_order() {
    let app = spawn_app().await;
    app.register("C-granted").await;
    app.record("C-granted", "promotional_mail", "", Choice::Grant)
        .await;
    app.register("C-refused").await;
    app.record("C-refused", "promotional_mail", "", Choice::Refuse)
        .await;
    app.register("C-silent").await;
    app.register("C-erased").await;
    erase(&app, "C-erased").await;
    // Stored data: the email collected for partner offers only (R2), and
    // C-stale's values older than every maximum age (R3).
    for subject in ["C-fresh", "C-stale"] {
        customer(&app, subject).await;
        app.record(subject, "partner_offers", "", Choice::Grant)
            .await;
    }
    app.db
        .execute(
            "UPDATE personal_data SET collected_at = now() - interval '800 days'
              WHERE subject_id = 'C-stale'",
            &[],
        )
        .await
        .unwrap();
    // Changed behind the server's back: ask for answers at least that fresh.
    let fresh = app.position_now().await;

    let requests: Vec<pb::BulkCheckRequest> = vec![
        bulk(
            "promotional_mail",
            "email",
            &[
                "C-granted",
                "C-refused",
                "C-unknown",
                "C-erased",
                "C-silent",
                "C-refused",
                "C-granted",
                "C-fresh",
            ],
        ),
        bulk(
            "order_delivery",
            "postal_address",
            &["C-fresh", "C-stale", "C-unknown", "C-silent", "C-erased"],
        ),
        bulk(
            "partner_offers",
            "email",
            &["C-stale", "C-fresh", "C-silent", "C-refused"],
        ),
        bulk("promotional_mail", "phone", &["C-granted", "C-unknown"]),
    ];
    let requests: Vec<pb::BulkCheckRequest> = requests
        .into_iter()
        .map(|r| pb::BulkCheckRequest {
            consistency: fresh.clone(),
            ..r
        })
        .collect();
    let (answers, end) = run(&app, requests.clone()).await;
    assert!(end.is_none(), "{end:?}");
    assert_eq!(answers.len(), requests.len());

    use {Decision::*, Reason::*};
    assert_eq!(
        per_id(&answers[0]),
        [
            (Allow, NotOptedOut, false),
            (Deny, OptedOut, false),
            (Deny, SubjectUnknown, false),
            (Deny, SubjectErased, false),
            (Allow, NotOptedOut, false),
            (Deny, OptedOut, false),
            (Allow, NotOptedOut, false),
            (Deny, NotCollectedForPurpose, false),
        ]
    );
    // Stale and allowed, and stale where the purpose requires fresh data.
    assert_eq!(answers[1].needs_verification, [1]);
    assert_eq!(per_id(&answers[2])[0], (Deny, StaleData, true));
    for (request, answer) in requests.iter().zip(&answers) {
        assert_eq!(
            per_id(answer),
            batch_answers(&app, request).await,
            "{request:?}"
        );
        assert_eq!(answer.policy_version, "2026-11-24.2");
    }
}

#[tokio::test]
async fn ten_thousand_ids_are_answered_and_ten_thousand_and_one_end_the_stream() {
    let app = spawn_app().await;
    app.register("C-1").await;
    let full = vec!["C-1"; 10_000];
    let mut over = full.clone();
    over.push("C-1");
    let requests = vec![
        bulk("promotional_mail", "email", &full),
        bulk("promotional_mail", "email", &over),
        // Never decided: the stream ended at the request before.
        bulk("promotional_mail", "email", &["C-1"]),
    ];
    let (answers, end) = run(&app, requests).await;

    assert_eq!(answers.len(), 1, "only the request before the bad one");
    assert_eq!(answers[0].decisions.len(), 10_000);
    assert!(
        (answers[0].decisions.iter()).all(|d| *d == i32::from(Decision::Allow)),
        "the answer sent before the bad request stands"
    );
    let end = end.expect("the stream ends with the bad request's status");
    assert_eq!(violated_fields(&end), ["subject_ids"]);
    let details = end.get_error_details();
    assert_eq!(
        details.bad_request().unwrap().field_violations[0].description,
        "must hold 1 to 10000 subject ids (got 10001)"
    );
}

#[tokio::test]
async fn bad_purpose_field_and_ids_are_named_once_per_request_and_at_most_a_hundred_ids_by_name() {
    let app = spawn_app().await;
    let before = app.counts().await;
    let ten_thousand_bad = vec![" padded"; 10_000];
    let (answers, end) = run(&app, vec![bulk("promo", "e mail", &ten_thousand_bad)]).await;
    assert!(answers.is_empty());
    let end = end.unwrap();
    let fields = violated_fields(&end);
    // The field fails to parse; the purpose parses but is not declared; the
    // first hundred ids are named and the rest counted in one more: 103,
    // of which every answer lists its first hundred and counts the rest.
    let mut expected = vec!["field".to_string(), "purpose".to_string()];
    expected.extend((0..98).map(|i| format!("subject_ids[{i}]")));
    assert_eq!(fields, expected);
    let details = end.get_error_details();
    let info = details
        .error_info()
        .expect("the violations left out are counted");
    assert_eq!(info.reason, "TOO_MANY_VIOLATIONS");
    assert_eq!(info.metadata["violations"], "103");

    let (_, end) = run(&app, vec![bulk("promotional_mail", "email", &[])]).await;
    assert_eq!(violated_fields(&end.unwrap()), ["subject_ids"]);
    assert_eq!(app.counts().await, before, "a check writes nothing");
}

/// Polls `count` until it has not moved for 2 s, and returns it. Gives up
/// (fails) after 60 s of movement.
async fn steady(count: &AtomicUsize) -> usize {
    let mut last = count.load(Ordering::SeqCst);
    let mut unchanged_polls = 0;
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = count.load(Ordering::SeqCst);
        if now == last {
            unchanged_polls += 1;
            if unchanged_polls == 20 {
                return now;
            }
        } else {
            (last, unchanged_polls) = (now, 0);
        }
    }
    panic!("the client kept sending for 60 s: {last} requests taken");
}

#[tokio::test]
async fn a_client_that_reads_no_answers_stalls_its_own_sends_and_gets_every_answer_once_it_reads() {
    const REQUESTS: usize = 150;
    const IDS: usize = 1000;
    let app = spawn_app().await;
    // Long ids make a request (about 130 kB) large next to the server's
    // 1 MiB receive window, and this client's 64 KiB windows hold about 30
    // answers (about 2 kB each): with flow control end to end, fewer than
    // 50 requests can be in flight at once.
    let id = format!("C-{}", "x".repeat(126));
    app.register(&id).await;
    let channel = Endpoint::from_shared(format!("http://{}", app.grpc_addr))
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let request = bulk("promotional_mail", "email", &vec![id.as_str(); IDS]);
    // How many requests the transport has taken from this client.
    let taken = Arc::new(AtomicUsize::new(0));
    let requests = {
        let taken = taken.clone();
        tokio_stream::iter(0..REQUESTS).map(move |_| {
            taken.fetch_add(1, Ordering::SeqCst);
            request.clone()
        })
    };
    let mut answers = ConsentServiceClient::new(channel)
        .bulk_check(requests)
        .await
        .unwrap()
        .into_inner();

    // Reading nothing: the server stops reading, so the sends stall.
    let stalled_at = steady(&taken).await;
    assert!(
        stalled_at < REQUESTS / 2,
        "the server took {stalled_at} of {REQUESTS} requests from a client that read nothing"
    );

    // Reading: every answer comes, in order, and then the stream ends OK.
    let mut answered = 0;
    while let Some(answer) = tokio::time::timeout(Duration::from_secs(60), answers.message())
        .await
        .expect("an answer within 60 s")
        .unwrap()
    {
        assert_eq!(answer.decisions.len(), IDS);
        answered += 1;
    }
    assert_eq!(answered, REQUESTS);
    assert_eq!(taken.load(Ordering::SeqCst), REQUESTS);
}

#[tokio::test]
async fn bulk_check_needs_its_method_in_the_callers_entry_and_a_purpose_outside_it_ends_the_stream()
{
    let app = spawn_app_with_callers().await;
    let mut client = app.client.clone();
    let promo = || bulk("promotional_mail", "email", &["C-1"]);

    // Shipping's entry does not list BulkCheck: refused before any request.
    let status = client
        .bulk_check(as_caller("shipping", tokio_stream::iter(vec![promo()])))
        .await
        .unwrap_err();
    assert_eq!(refusal(&status).0, "RPC_NOT_PERMITTED");

    // The mailer may call it, for its own purpose only.
    let requests = vec![
        promo(),
        bulk("customer_support", "email", &["C-1"]),
        promo(),
    ];
    let answers = client
        .bulk_check(as_caller("marketing-mailer", tokio_stream::iter(requests)))
        .await
        .unwrap()
        .into_inner();
    let (answers, end) = drain(answers).await;
    assert_eq!(answers.len(), 1);
    assert_eq!(
        refusal(&end.unwrap()),
        (
            "PURPOSE_NOT_PERMITTED".to_string(),
            vec![("purpose".to_string(), "customer_support".to_string())]
        )
    );
}

#[tokio::test]
async fn an_open_stream_ends_unavailable_at_shutdown_and_does_not_hold_it_up() {
    // A drain held open by the stream would last the whole minute.
    let mut app = spawn_app_with(|args| args.shutdown_timeout_seconds = 60).await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut answers = app
        .client
        .clone()
        .bulk_check(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(bulk("promotional_mail", "email", &["C-1"]))
        .await
        .unwrap();
    let first = answers.message().await.unwrap().unwrap();
    assert_eq!(first.reasons, [i32::from(Reason::SubjectUnknown)]);

    // The client keeps its side open and sends nothing more.
    tokio::time::timeout(Duration::from_secs(30), app.shutdown())
        .await
        .expect("shutdown within 30 s")
        .unwrap();
    let (rest, end) = drain(answers).await;
    assert!(rest.is_empty());
    let end = end.expect("the stream ends with a status");
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    assert!(end.message().contains("shutting down"), "{end:?}");
    drop(tx);
}

#[tokio::test]
async fn a_stream_is_one_server_span_with_its_final_status_and_a_child_span_per_request_without_ids()
 {
    const TRACE_ID: &str = "5cf92f3577b34da6a3ce929d0e0e4737";
    const CALLER_SPAN: &str = "01f067aa0ba902b8";
    const KNOWN: &str = "C-bulk-secret-1";
    const UNKNOWN: &str = "C-bulk-secret-2";
    let (collector, endpoint) = start_collector().await;
    let db = fresh_database().await;
    let served = spawn_serve_with(
        &["--database-url", &db.db_url],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let mut client = ConsentServiceClient::connect(format!("http://{}", served.grpc_addr))
        .await
        .unwrap();
    client.register_subject(registration(KNOWN)).await.unwrap();
    let requests = vec![
        bulk("promotional_mail", "email", &[KNOWN, UNKNOWN, KNOWN]),
        bulk("order_delivery", "name", &[KNOWN]),
        bulk("nope", "email", &[KNOWN]),
    ];
    let mut request = tonic::Request::new(tokio_stream::iter(requests));
    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    let (answers, end) = drain(client.bulk_check(request).await.unwrap().into_inner()).await;
    assert_eq!(
        (answers.len(), end.unwrap().code()),
        (2, Code::InvalidArgument)
    );
    drop(client);
    // SIGTERM flushes what is still buffered.
    let logs = terminate_and_wait(served.child, &served.logs).await;

    let raw = collector.raw().await;
    assert_absent(&raw, &[KNOWN, UNKNOWN, "bulk-secret"], "the spans");
    assert_absent(logs.join("\n").as_bytes(), &[KNOWN, UNKNOWN], "the logs");
    let spans: Vec<Span> = (collector.exports.lock().await.iter())
        .flat_map(|e| &e.resource_spans)
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| ss.spans.clone())
        .collect();
    let attribute = |span: &Span, key: &str| {
        (span.attributes.iter())
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone())
            .and_then(|v| v.value)
    };
    let streams: Vec<&Span> = (spans.iter())
        .filter(|s| s.name == "consent.v1.ConsentService/BulkCheck")
        .collect();
    assert_eq!(streams.len(), 1, "one server span for the stream");
    let stream = streams[0];
    assert_eq!(
        attribute(stream, "rpc.grpc.status_code"),
        Some(Value::IntValue(Code::InvalidArgument as i64)),
        "the status the stream ended with"
    );
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert_eq!(hex(&stream.trace_id), TRACE_ID);
    assert_eq!(hex(&stream.parent_span_id), CALLER_SPAN);

    let mut per_request: Vec<&Span> = (spans.iter())
        .filter(|s| s.name == "bulk_check.request" && s.parent_span_id == stream.span_id)
        .collect();
    per_request.sort_by_key(|s| s.start_time_unix_nano);
    let summary: Vec<_> = (per_request.iter())
        .map(|s| {
            (
                attribute(s, "consent.purpose"),
                attribute(s, "consent.bulk.size"),
                attribute(s, "consent.bulk.allowed"),
            )
        })
        .collect();
    let text = |s: &str| Some(Value::StringValue(s.into()));
    assert_eq!(
        summary,
        [
            (
                text("promotional_mail"),
                Some(Value::IntValue(3)),
                Some(Value::IntValue(2))
            ),
            (
                text("order_delivery"),
                Some(Value::IntValue(1)),
                Some(Value::IntValue(1))
            ),
            // Refused before it was decided: only its size is known.
            (None, Some(Value::IntValue(1)), None),
        ]
    );
    assert!(
        (logs.iter()).any(|l| l.contains("rpc finished")
            && l.contains("BulkCheck")
            && l.contains("InvalidArgument")),
        "one access log line for the stream, with its status:\n{}",
        logs.join("\n")
    );
}
