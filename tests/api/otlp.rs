//! An OTLP/gRPC trace collector run in-process, and a scan for values that
//! must never leave the service.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use prost::Message as _;
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};

/// Collects every export, raw, as the collector received it.
#[derive(Clone, Default)]
pub struct Collector {
    pub exports: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.exports.lock().await.push(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

pub async fn start_collector() -> (Collector, String) {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = TraceServiceServer::new(collector.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (collector, format!("http://{addr}"))
}

impl Collector {
    /// Every export as the bytes that crossed the wire.
    pub async fn raw(&self) -> Vec<u8> {
        self.exports
            .lock()
            .await
            .iter()
            .flat_map(|e| e.encode_to_vec())
            .collect()
    }
}

/// Panics naming each of `needles` that occurs anywhere in `haystack`.
pub fn assert_absent(haystack: &[u8], needles: &[&str], place: &str) {
    let found: Vec<&str> = needles
        .iter()
        .copied()
        .filter(|n| haystack.windows(n.len()).any(|w| w == n.as_bytes()))
        .collect();
    assert!(found.is_empty(), "{found:?} found in {place}");
}
