//! The bench's gRPC client: the generated `consent.v1` and
//! `grpc.health.v1` clients over several HTTP/2 connections, and one
//! function per call the phases make. Each returns how many checks (or
//! writes) its call carried.

use anyhow::{Context as _, ensure};
use consentd::grpc::pb::{self, consent_service_client::ConsentServiceClient};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

pub const PURPOSE: &str = "promotional_mail";
pub const FIELD: &str = "email";
/// The channel and notice of the bench's registrations and choices.
const NOTICE: &str = "2026-11";

/// The external id of the bench's i-th subject.
pub fn subject(i: u64) -> String {
    format!("BENCH-{i:08}")
}

/// Separate HTTP/2 connections to one server: a tonic `Channel` made by
/// its own `connect` is one connection.
#[derive(Clone)]
pub struct Connections(Vec<Channel>);

impl Connections {
    pub async fn open(url: &str, count: usize) -> anyhow::Result<Self> {
        let mut channels = Vec::with_capacity(count);
        for _ in 0..count {
            let channel = Endpoint::from_shared(url.to_string())?
                .tcp_nodelay(true)
                .connect()
                .await
                .with_context(|| format!("cannot connect to {url}"))?;
            channels.push(channel);
        }
        Ok(Self(channels))
    }

    /// The connection for worker or call `i`, round robin.
    pub fn channel(&self, i: u64) -> Channel {
        self.0[i as usize % self.0.len()].clone()
    }

    pub fn consent(&self, i: u64) -> ConsentServiceClient<Channel> {
        ConsentServiceClient::new(self.channel(i))
    }
}

pub async fn health_check(channel: Channel) -> anyhow::Result<u64> {
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner();
    ensure!(answer.status == 1, "health says {}", answer.status);
    Ok(1)
}

pub async fn check(
    mut client: ConsentServiceClient<Channel>,
    subject_id: String,
) -> anyhow::Result<pb::CheckResponse> {
    let answer = client
        .check(pb::CheckRequest {
            subject_id,
            field: FIELD.into(),
            purpose: PURPOSE.into(),
            consistency: None,
        })
        .await?
        .into_inner();
    ensure!(answer.decision != 0, "Check answered no decision");
    Ok(answer)
}

/// One BatchCheck of `ids` consecutive subjects from `first`.
pub async fn batch_check(
    mut client: ConsentServiceClient<Channel>,
    first: u64,
    ids: u64,
    subjects: u64,
) -> anyhow::Result<u64> {
    let items = (0..ids)
        .map(|i| pb::BatchCheckItem {
            correlation_id: String::new(),
            subject_id: subject((first + i) % subjects),
            field: FIELD.into(),
            purpose: PURPOSE.into(),
        })
        .collect();
    let answer = client
        .batch_check(pb::BatchCheckRequest {
            items,
            consistency: None,
        })
        .await?
        .into_inner();
    ensure!(
        answer.results.len() as u64 == ids,
        "BatchCheck lost results"
    );
    Ok(ids)
}

pub async fn register(
    mut client: ConsentServiceClient<Channel>,
    subject_id: String,
) -> anyhow::Result<u64> {
    client
        .register_subject(pb::RegisterSubjectRequest {
            subject_id,
            kind: pb::SubjectKind::Individual.into(),
            notice_version: NOTICE.into(),
            channel: pb::Channel::Web.into(),
            request_id: String::new(),
        })
        .await?;
    Ok(1)
}

/// A choice about promotional mail, as a web form records it, with a
/// fresh idempotency key.
pub async fn record(
    mut client: ConsentServiceClient<Channel>,
    subject_id: String,
    choice: pb::Choice,
) -> anyhow::Result<u64> {
    client
        .record_consent(pb::RecordConsentRequest {
            subject_id,
            purpose: PURPOSE.into(),
            field: String::new(),
            choice: choice.into(),
            channel: pb::Channel::Web.into(),
            notice_version: NOTICE.into(),
            evidence: "serving bench".into(),
            request_id: uuid::Uuid::new_v4().to_string(),
            recipient: String::new(),
        })
        .await?;
    Ok(1)
}

/// Registers the subjects of `range` through the server, 64 at a time.
pub async fn register_range(
    connections: &Connections,
    range: std::ops::Range<u64>,
) -> anyhow::Result<()> {
    const AT_ONCE: u64 = 64;
    let mut workers = Vec::new();
    for worker in 0..AT_ONCE {
        let client = connections.consent(worker);
        let range = range.clone();
        workers.push(tokio::spawn(async move {
            for i in range.skip(worker as usize).step_by(AT_ONCE as usize) {
                register(client.clone(), subject(i)).await?;
            }
            anyhow::Ok(())
        }));
    }
    for worker in workers {
        worker.await??;
    }
    Ok(())
}
