//! Hostile bytes on the wire: a real `consentd serve` process gets, for
//! every method of every consent.v1 service, random bytes, truncations of
//! well-formed requests and mutated requests as the protobuf message (sent
//! raw, past any client-side encoding). Each one the handler's own
//! validation refuses (`grpc::validate`) must be answered INVALID_ARGUMENT,
//! never INTERNAL or a dropped connection; afterwards the process still
//! runs, logged no panic, health answers SERVING, and no table gained or
//! lost a row.

use std::{marker::PhantomData, time::Duration};

use consentd::{error::Error, grpc::validate};
use prost::{
    Message as _,
    bytes::{Buf as _, BufMut as _},
};
use tonic::{
    Code, Request,
    client::Grpc,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::Channel,
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    cli::spawn_serve_with,
    engine::{Rng, seed},
    helpers::fresh_database,
    messages::{Strings, message, metadata, methods, policy, x_actor},
    mutate,
};

/// Inputs sent to each method.
const PER_METHOD: usize = 60;

/// Sends a message's bytes as they are, and keeps the answer's.
#[derive(Clone, Default)]
struct Raw(PhantomData<()>);

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw::default()
    }

    fn decoder(&mut self) -> Raw {
        Raw::default()
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

/// Rows in every table of the database.
async fn row_counts(db: &tokio_postgres::Client) -> Vec<(String, i64)> {
    let tables = db
        .query(
            "SELECT format('%I.%I', table_schema, table_name) FROM information_schema.tables \
             WHERE table_type = 'BASE TABLE' \
               AND table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let mut counts = Vec::new();
    for row in tables {
        let table: String = row.get(0);
        let count: i64 = db
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        counts.push((table, count));
    }
    counts
}

/// The bad inputs for one method: random bytes, every kind of truncation
/// of a well-formed request, and mutations of one.
fn inputs(
    rng: &mut Rng,
    strings: &Strings,
    desc: &prost_reflect::MessageDescriptor,
) -> Vec<Vec<u8>> {
    (0..PER_METHOD)
        .map(|i| match i % 3 {
            0 => rng.some_bytes(64),
            1 => {
                let whole = message(rng, strings, desc, 0).encode_to_vec();
                let cut = rng.below(whole.len().max(1));
                whole[..cut].to_vec()
            }
            _ => {
                let mut bytes = message(rng, strings, desc, 0).encode_to_vec();
                mutate::bytes(rng, &mut bytes, &[]);
                bytes
            }
        })
        .collect()
}

#[tokio::test]
async fn random_and_truncated_protobuf_to_every_method_is_refused_and_writes_nothing() {
    let db = fresh_database().await;
    let mut served = spawn_serve_with(&["--database-url", &db.db_url], &[]);
    let admin = consentd::store::admin_connect(&db.db_url).await.unwrap();
    let before = row_counts(&admin).await;
    let channel = Channel::from_shared(format!("http://{}", served.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let policy = policy();
    let strings = Strings::new(&policy);
    let seed = seed();
    let mut rng = Rng::new(seed);

    let (mut sent, mut skipped) = (0, 0);
    let mut wrong = Vec::new();
    for (method, desc) in methods() {
        let path: tonic::codegen::http::uri::PathAndQuery = format!("/{method}").parse().unwrap();
        for bytes in inputs(&mut rng, &strings, &desc) {
            let x_actor = x_actor(&mut rng);
            // Only bad input: what validation accepts would go on to the
            // database, and reads or writes are not what this test is about.
            match validate(&policy, &method, metadata(&x_actor), &bytes) {
                Some(Err(Error::InvalidArgument(_))) => {}
                Some(Ok(())) => {
                    skipped += 1;
                    continue;
                }
                other => panic!("{method}: validate answered {other:?}"),
            }
            sent += 1;
            let mut request = Request::new(bytes.clone());
            *request.metadata_mut() = metadata(&x_actor);
            request.set_timeout(Duration::from_secs(10));
            let mut grpc = Grpc::new(channel.clone());
            grpc.ready().await.unwrap();
            let answer = if method.ends_with("/WatchChanges") {
                grpc.server_streaming(request, path.clone(), Raw::default())
                    .await
                    .map(drop)
            } else {
                grpc.unary(request, path.clone(), Raw::default())
                    .await
                    .map(drop)
            };
            // A message past its method's size cap is refused before it is
            // decoded, with the code gRPC gives an oversized message.
            let oversized = bytes.len()
                > consentd::grpc::request_cap(
                    path.as_str(),
                    crate::hostile_input::DEFAULT_MAX_MESSAGE_BYTES,
                );
            match answer {
                Err(status) if status.code() == Code::InvalidArgument && !oversized => {}
                Err(status) if status.code() == Code::ResourceExhausted && oversized => {}
                other => wrong.push(format!(
                    "{method} {bytes:02x?} (x-actor {x_actor:?}): {other:?}"
                )),
            }
        }
    }
    println!("wire fuzz: {sent} bad inputs sent, {skipped} valid ones skipped (seed {seed})");

    assert!(
        served.child.try_wait().unwrap().is_none(),
        "the server exited"
    );
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);
    assert_eq!(
        row_counts(&admin).await,
        before,
        "a bad input wrote something"
    );
    served.child.kill().unwrap();
    served.child.wait().unwrap();
    let logs: Vec<String> = served.logs.try_iter().collect();
    assert!(
        !logs.iter().any(|l| l.contains("panicked")),
        "the server panicked:\n{}",
        logs.join("\n")
    );
    assert!(
        wrong.is_empty(),
        "{} of {sent} bad inputs (seed {seed}) were not answered INVALID_ARGUMENT; the first:\n{}",
        wrong.len(),
        wrong[..wrong.len().min(5)].join("\n")
    );
    assert!(sent >= 20 * PER_METHOD, "only {sent} bad inputs were sent");
}
