//! The BulkCheck client, written against the proto's descriptors rather
//! than generated code, so that this bench compiles before the RPC exists
//! and measures it as soon as it does: `consent.v1.ConsentService/BulkCheck`,
//! a bidirectional stream of requests with `purpose`, `field` and
//! `subject_ids`, each answered in order by one response whose `decisions`
//! hold one entry per id.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use consentd::grpc::pb::FILE_DESCRIPTOR_SET;
use prost::{Message as _, bytes::Bytes};
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, Value};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http::uri::PathAndQuery,
    transport::Channel,
};

use crate::{
    calls::{FIELD, PURPOSE, subject},
    load::Summary,
};

const PATH: &str = "/consent.v1.ConsentService/BulkCheck";

/// The RPC as the proto describes it.
#[derive(Clone)]
pub struct BulkCheck {
    request: MessageDescriptor,
    response: MessageDescriptor,
}

impl BulkCheck {
    /// `Ok(None)` when the proto has no BulkCheck yet.
    pub fn find() -> anyhow::Result<Option<Self>> {
        let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET)?;
        let service = pool
            .get_service_by_name("consent.v1.ConsentService")
            .context("no ConsentService in the descriptors")?;
        let Some(method) = service.methods().find(|m| m.name() == "BulkCheck") else {
            return Ok(None);
        };
        ensure!(
            method.is_client_streaming() && method.is_server_streaming(),
            "BulkCheck is not a bidirectional stream"
        );
        for field in ["purpose", "field", "subject_ids"] {
            ensure!(
                method.input().get_field_by_name(field).is_some(),
                "BulkCheckRequest has no `{field}`"
            );
        }
        ensure!(
            method.output().get_field_by_name("decisions").is_some(),
            "BulkCheckResponse has no `decisions`"
        );
        Ok(Some(Self {
            request: method.input(),
            response: method.output(),
        }))
    }

    /// One encoded request for `ids` consecutive subjects from `first`.
    pub fn request(&self, first: u64, ids: u64, subjects: u64) -> Bytes {
        let mut message = DynamicMessage::new(self.request.clone());
        message.set_field_by_name("purpose", Value::String(PURPOSE.into()));
        message.set_field_by_name("field", Value::String(FIELD.into()));
        let ids = (0..ids)
            .map(|i| Value::String(subject((first + i) % subjects)))
            .collect();
        message.set_field_by_name("subject_ids", Value::List(ids));
        message.encode_to_vec().into()
    }

    /// One stream on `channel` for `measure` after `warm_up`, keeping
    /// `depth` requests unanswered at a time, cycling through `requests`
    /// (each of `ids` ids). Latency is from sending a request to its answer.
    pub async fn stream(
        self,
        channel: Channel,
        requests: Arc<Vec<Bytes>>,
        ids: u64,
        depth: usize,
        warm_up: Duration,
        measure: Duration,
    ) -> anyhow::Result<Summary> {
        let from = Instant::now() + warm_up;
        let until = from + measure;
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(depth);
        let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        let permits = Arc::new(tokio::sync::Semaphore::new(depth));

        let sender = {
            let permits = permits.clone();
            tokio::spawn(async move {
                for k in 0.. {
                    let permit = permits.acquire().await.expect("never closed");
                    if Instant::now() >= until {
                        break;
                    }
                    permit.forget();
                    let _ = sent_tx.send(Instant::now());
                    if tx.send(requests[k % requests.len()].clone()).await.is_err() {
                        break;
                    }
                }
            })
        };

        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await?;
        let codec = RawCodec {
            response: self.response.clone(),
        };
        let mut answers = grpc
            .streaming(
                tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
                PathAndQuery::from_static(PATH),
                codec,
            )
            .await?
            .into_inner();
        let mut summary = Summary::default();
        while let Some(answer) = answers.message().await? {
            let Some(sent) = sent_rx.recv().await else {
                bail!("an answer to a request never sent");
            };
            let now = Instant::now();
            let decisions = answer
                .get_field_by_name("decisions")
                .and_then(|v| v.as_list().map(<[Value]>::len))
                .unwrap_or(0) as u64;
            let outcome = if decisions == ids {
                Ok(ids)
            } else {
                Err(anyhow::anyhow!("{decisions} decisions for {ids} ids"))
            };
            if sent >= from && now <= until {
                summary.record(now - sent, outcome);
            }
            permits.add_permits(1);
            if now >= until && sent_rx.is_empty() && sender.is_finished() {
                break;
            }
        }
        sender.abort();
        Ok(summary)
    }
}

/// Sends pre-encoded requests as they are, so the client spends its share
/// of the two cores on the wire, not on re-encoding ids, and decodes each
/// answer against the proto's descriptor.
struct RawCodec {
    response: MessageDescriptor,
}

struct RawEncoder;
struct DynamicDecoder(MessageDescriptor);

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = DynamicMessage;
    type Encoder = RawEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        DynamicDecoder(self.response.clone())
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        use prost::bytes::BufMut as _;
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Status> {
        DynamicMessage::decode(self.0.clone(), src)
            .map(Some)
            .map_err(|e| Status::internal(format!("cannot decode a BulkCheck answer: {e}")))
    }
}
