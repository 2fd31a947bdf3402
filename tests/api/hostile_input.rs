//! Hostile input costs bounded memory: an over-long list is refused while
//! still bytes, a message over its method's cap before it is buffered, and
//! an answer lists at most 100 violations.

use std::time::Duration;

use consentd::grpc::{
    pb::{self, concern_service_client::ConcernServiceClient},
    request_cap,
};
use prost::{
    Message,
    bytes::{Buf as _, BufMut as _, Bytes},
};
use tonic::{
    Code, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::Channel,
};
use tonic_types::StatusExt as _;

use crate::{
    cli::{spawn_serve_with, terminate_and_wait},
    helpers::{fresh_database, spawn_app, spawn_app_with, violated_fields},
};

const MIB: usize = 1024 * 1024;
/// `--max-message-bytes` as serve takes it by default (4 MiB).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * MIB;
const CONCURRENT: usize = 16;

/// The largest message `build(n)` makes within `cap` bytes, with `n` as
/// large as that allows: the cheapest elements, as many as fit.
fn fill<M: Message>(cap: usize, build: impl Fn(usize) -> M) -> M {
    // An empty element costs 2 bytes: its tag and a zero length.
    let mut n = cap / 2;
    loop {
        let message = build(n);
        let len = message.encoded_len();
        if len <= cap {
            assert!(cap - len < 2, "{len} of {cap}");
            return message;
        }
        n -= (len - cap).div_ceil(2);
    }
}

/// A maximal hostile request of `rpc`, encoded: its size cap filled with
/// empty list elements (or `elements` of them, when given). With the list
/// field it must be refused on.
fn hostile(rpc: &str, elements: Option<usize>) -> (Bytes, &'static str) {
    let cap = request_cap(&format!("/{rpc}"), DEFAULT_MAX_MESSAGE_BYTES);
    let empty = |n| vec![String::new(); n];
    fn encode<M: Message>(
        cap: usize,
        elements: Option<usize>,
        build: impl Fn(usize) -> M,
    ) -> Bytes {
        match elements {
            Some(n) => build(n),
            None => fill(cap, build),
        }
        .encode_to_vec()
        .into()
    }
    match rpc {
        "consent.v1.ConsentService/BatchCheck" => (
            encode(cap, elements, |n| pb::BatchCheckRequest {
                items: vec![pb::BatchCheckItem::default(); n],
                consistency: None,
            }),
            "items",
        ),
        "consent.v1.ConsentService/BulkCheck" => (
            encode(cap, elements, |n| pb::BulkCheckRequest {
                purpose: String::new(),
                field: String::new(),
                subject_ids: empty(n),
                consistency: None,
            }),
            "subject_ids",
        ),
        "consent.v1.ConsentService/WatchChanges" => (
            encode(cap, elements, |n| pb::WatchChangesRequest {
                after: 0,
                purposes: empty(n),
            }),
            "purposes",
        ),
        "consent.v1.ConsentService/CreateUnsubscribeLinks" => (
            encode(cap, elements, |n| pb::CreateUnsubscribeLinksRequest {
                purpose: "promotional_mail".into(),
                subject_ids: empty(n),
                ..Default::default()
            }),
            "subject_ids",
        ),
        "consent.v1.ConsentService/CreatePreferenceLinks" => (
            encode(cap, elements, |n| pb::CreatePreferenceLinksRequest {
                subject_ids: empty(n),
                campaign: String::new(),
            }),
            "subject_ids",
        ),
        "consent.v1.ConcernService/FileConcern" => (
            encode(cap, elements, |n| pb::FileConcernRequest {
                links: empty(n),
                ..crate::concern::concern_request("hostile")
            }),
            "links",
        ),
        "consent.v1.DisclosureService/PutPersonalData" => (
            encode(cap, elements, |n| pb::PutPersonalDataRequest {
                subject_id: "C-1".into(),
                field: "email".into(),
                value: "a@example.com".into(),
                collected_for: empty(n),
                ..Default::default()
            }),
            "collected_for",
        ),
        "consent.v1.DisclosureService/RequestDisclosure" => (
            encode(cap, elements, |n| pb::RequestDisclosureRequest {
                subject_id: "C-1".into(),
                recipient_id: "express-courier".into(),
                fields: empty(n),
                ..Default::default()
            }),
            "fields",
        ),
        other => panic!("{other} carries a list this test does not send: add it"),
    }
}

/// Sends already encoded request bytes, so that a burst arrives at once
/// rather than at the pace the client encodes two million elements.
#[derive(Clone)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Sends `body` as the request of `rpc` and returns the refusal.
async fn send(channel: Channel, rpc: &'static str, body: Bytes) -> Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = format!("/{rpc}").parse().unwrap();
    if rpc.ends_with("/BulkCheck") {
        // A stream of one hostile message; the refusal ends the stream.
        let request = tonic::Request::new(tokio_stream::once(body));
        return match grpc.streaming(request, path, RawCodec).await {
            Err(status) => status,
            Ok(answers) => {
                (answers.into_inner().message().await).expect_err("a hostile request is refused")
            }
        };
    }
    let result = if rpc.ends_with("/WatchChanges") {
        grpc.server_streaming(tonic::Request::new(body), path, RawCodec)
            .await
            .map(drop)
    } else {
        grpc.unary(tonic::Request::new(body), path, RawCodec)
            .await
            .map(drop)
    };
    result.expect_err("a hostile request is refused")
}

/// A line of /proc/<pid>/status, in bytes.
fn proc_status(pid: u32, key: &str) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with(key))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"));
    let kib: usize = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib * 1024
}

/// Rows in every table of the database, by name.
async fn table_counts(db: &tokio_postgres::Client) -> Vec<(String, i64)> {
    let tables = db
        .query(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let mut counts = Vec::new();
    for table in tables {
        let name: String = table.get(0);
        let count: i64 = db
            .query_one(&format!("SELECT count(*) FROM \"{name}\""), &[])
            .await
            .unwrap()
            .get(0);
        counts.push((name, count));
    }
    counts
}

/// The attack, on every list at once: 16 concurrent maximal
/// requests of each list-carrying RPC against a real `consentd serve`.
/// Its peak RSS (VmHWM, reset first) may grow by less than 64 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_maximal_requests_of_every_list_rpc_at_once_grow_the_server_by_under_64_mib() {
    let db = fresh_database().await;
    let served = spawn_serve_with(&["--database-url", &db.db_url], &[]);
    let pid = served.child.id();
    let admin = consentd::store::admin_connect(&db.db_url).await.unwrap();
    let rows_before = table_counts(&admin).await;

    let rpcs: Vec<&'static str> = consentd::grpc::list_rpcs().collect();
    assert_eq!(rpcs.len(), 8, "{rpcs:?}");
    let mut requests = Vec::new();
    for rpc in rpcs {
        // A connection per RPC, as separate hostile clients would have.
        let channel = Channel::from_shared(format!("http://{}", served.grpc_addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        // A small over-long list first, so that the burst measures the
        // burst, not the connection's and the first call's set-up.
        // (Over every limit: 1,000 is the largest but BulkCheck's 10,000.)
        let over = if rpc.ends_with("/BulkCheck") {
            10_001
        } else {
            1001
        };
        let (small, field) = hostile(rpc, Some(over));
        let status = send(channel.clone(), rpc, small).await;
        assert_eq!(violated_fields(&status), [field], "{rpc}");
        let (body, field) = hostile(rpc, None);
        requests.push((rpc, channel, body, field));
    }

    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset the peak RSS");
    let before = proc_status(pid, "VmRSS:");
    let mut calls = Vec::new();
    for (rpc, channel, body, field) in &requests {
        for _ in 0..CONCURRENT {
            let call = send(channel.clone(), rpc, body.clone());
            calls.push((*rpc, *field, tokio::spawn(call)));
        }
    }
    for (rpc, field, call) in calls {
        let status = tokio::time::timeout(Duration::from_secs(60), call)
            .await
            .unwrap_or_else(|_| panic!("{rpc} did not answer"))
            .unwrap();
        assert_eq!(status.code(), Code::InvalidArgument, "{rpc}: {status:?}");
        let details = status.get_error_details();
        let violations = &details
            .bad_request()
            .unwrap_or_else(|| panic!("{rpc}: no BadRequest in {status:?}"))
            .field_violations;
        assert_eq!(violations.len(), 1, "{rpc}");
        assert_eq!(violations[0].field, field, "{rpc}");
    }
    let peak = proc_status(pid, "VmHWM:");
    let growth = peak.saturating_sub(before);
    eprintln!(
        "{} maximal hostile requests at once: RSS {:.1} MiB before, peak {:.1} MiB, growth {:.1} MiB",
        requests.len() * CONCURRENT,
        before as f64 / MIB as f64,
        peak as f64 / MIB as f64,
        growth as f64 / MIB as f64
    );
    assert!(
        growth < 64 * MIB,
        "peak RSS grew by {:.1} MiB",
        growth as f64 / MIB as f64
    );
    assert_eq!(
        table_counts(&admin).await,
        rows_before,
        "nothing was written"
    );
    terminate_and_wait(served.child, &served.logs).await;
}

#[tokio::test]
async fn a_list_over_its_limit_is_answered_with_one_violation_and_writes_nothing() {
    let app = spawn_app().await;
    let before = app.counts().await;
    // Every item is bad too: none of them is looked at.
    let status = app
        .client
        .clone()
        .batch_check(pb::BatchCheckRequest {
            items: vec![pb::BatchCheckItem::default(); 5000],
            consistency: None,
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["items"]);
    let details = status.get_error_details();
    assert_eq!(
        details.bad_request().unwrap().field_violations[0].description,
        "must hold 1 to 1000 items (got 5000)"
    );
    // Refused while still bytes: the rest of the request is not looked at
    // either, so its bad category goes unmentioned.
    let mut concern = crate::concern::concern_request("too many links");
    concern.links = vec!["not-a-uuid".into(); 60];
    concern.category = 0;
    let status = ConcernServiceClient::new(app.channel.clone())
        .file_concern(concern)
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["links"]);
    assert_eq!(app.counts().await, before);
    assert_eq!(app.count("concerns").await, 0);
}

#[tokio::test]
async fn five_hundred_bad_items_answer_the_first_hundred_violations_and_count_the_rest() {
    let app = spawn_app().await;
    let before = app.counts().await;
    let bad = pb::BatchCheckItem {
        subject_id: String::new(),
        purpose: "promotional_mail".into(),
        field: "email".into(),
        correlation_id: String::new(),
    };
    let status = app
        .client
        .clone()
        .batch_check(pb::BatchCheckRequest {
            items: vec![bad; 500],
            consistency: None,
        })
        .await
        .unwrap_err();
    let fields = violated_fields(&status);
    let expected: Vec<String> = (0..100).map(|i| format!("items[{i}].subject_id")).collect();
    assert_eq!(fields, expected);
    let info = status
        .get_error_details()
        .error_info()
        .cloned()
        .expect("an ErrorInfo counting the rest");
    assert_eq!(info.reason, "TOO_MANY_VIOLATIONS");
    assert_eq!(info.metadata["violations"], "500");
    assert!(
        status.message().ends_with("and 400 more"),
        "{}",
        status.message()
    );
    assert_eq!(app.counts().await, before);
}

/// The largest BatchCheck that can be valid is served; one twice its size,
/// still well under --max-message-bytes, is refused for its size alone.
#[tokio::test]
async fn a_batch_check_twice_the_largest_valid_one_is_resource_exhausted() {
    let app = spawn_app().await;
    let before = app.counts().await;
    // 128 characters of 4 bytes each: the longest ids there are.
    let id = "\u{1F600}".repeat(128);
    let largest = pb::BatchCheckRequest {
        items: vec![
            pb::BatchCheckItem {
                correlation_id: id.clone(),
                subject_id: id,
                purpose: "promotional_mail".into(),
                field: "email".into(),
            };
            1000
        ],
        consistency: None,
    };
    let size = largest.encoded_len();
    let answer = app.client.clone().batch_check(largest).await.unwrap();
    assert_eq!(answer.into_inner().results.len(), 1000);

    let twice = fill(2 * size, |n| pb::BatchCheckRequest {
        items: vec![pb::BatchCheckItem::default(); n],
        consistency: None,
    });
    assert!(twice.encoded_len() < DEFAULT_MAX_MESSAGE_BYTES);
    let status = app.client.clone().batch_check(twice).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("larger than max"),
        "{}",
        status.message()
    );
    assert_eq!(app.counts().await, before);
}

#[tokio::test]
async fn max_message_bytes_caps_every_method() {
    let app = spawn_app_with(|args| args.max_message_bytes = 64 * 1024).await;
    let before = app.counts().await;
    let mut client = app.client.clone();

    let mut request = crate::helpers::registration("C-1");
    request.subject_id = "x".repeat(64 * 1024);
    let status = client.register_subject(request).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // Under the cap, the same mistake is an ordinary bad field.
    let mut request = crate::helpers::registration("C-1");
    request.subject_id = "x".repeat(60 * 1024);
    let status = client.register_subject(request).await.unwrap_err();
    assert_eq!(violated_fields(&status), ["subject_id"]);

    // A list method's own cap is lowered to the flag's.
    let status = client
        .batch_check(fill(64 * 1024 + 2, |n| pb::BatchCheckRequest {
            items: vec![pb::BatchCheckItem::default(); n],
            consistency: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(app.counts().await, before);
}

/// Violations quote what was wrong and list what the policy knows: even
/// the longest of them, as many as an answer lists, arrive as an answer
/// and not as a broken stream (gRPC details travel in a header, and HTTP/2
/// clients cap headers at 16 KiB).
#[tokio::test]
async fn the_longest_violations_still_arrive_as_invalid_argument() {
    let app = spawn_app().await;
    let worst = pb::BatchCheckItem {
        correlation_id: "\u{1F600}".repeat(129),
        subject_id: "\u{1F600}".repeat(129),
        purpose: "p".repeat(64),
        field: "f".repeat(64),
    };
    let status = app
        .client
        .clone()
        .batch_check(pb::BatchCheckRequest {
            items: vec![worst; 1000],
            consistency: None,
        })
        .await
        .unwrap_err();
    let listed = violated_fields(&status).len();
    let info = status.get_error_details().error_info().cloned().unwrap();
    let total: usize = info.metadata["violations"].parse().unwrap();
    assert!(listed >= 10 && listed < total, "{listed} of {total}");
    assert!(
        status
            .message()
            .ends_with(&format!("and {} more", total - listed)),
        "{}",
        status.message()
    );
}
