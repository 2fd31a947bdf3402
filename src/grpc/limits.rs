//! What every gRPC call is held to before a service sees it: a place among
//! the calls served at once (one more is shed, RESOURCE_EXHAUSTED, rather
//! than queued), and a deadline (DEADLINE_EXCEEDED, its database query
//! cancelled). The per-caller rate limit needs the authenticated caller, so
//! it is applied by the `Authenticator`, after this layer.
//!
//! tonic's own `Server::timeout` answers CANCELLED, which says the client
//! gave up; a deadline the server enforces is DEADLINE_EXCEEDED.

mod deadline;

use std::{
    collections::HashSet,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::sync::Semaphore;
use tonic::Status;
use tower_layer::Layer;
use tower_service::Service;

use crate::{error::Error, store::cancel_queries_on_drop};

/// Health answers probes, which must see an overloaded server as alive.
const HEALTH: &str = "/grpc.health.v1.Health/";

/// The layer, for `Server::layer`; each connection clones it.
#[derive(Clone)]
pub struct LimitLayer {
    /// Places for unary calls; shared by every connection.
    calls: Arc<Semaphore>,
    default_deadline: Duration,
    /// Paths of the streaming methods (WatchChanges, health Watch,
    /// reflection): they live as long as their client wants, so they get
    /// neither a place nor a deadline; `--max-watch-streams` caps them.
    streaming: Arc<HashSet<String>>,
}

impl LimitLayer {
    pub fn new(max_concurrent_calls: usize, default_deadline: Duration) -> Self {
        Self {
            calls: Arc::new(Semaphore::new(max_concurrent_calls)),
            default_deadline,
            streaming: Arc::new(streaming_paths()),
        }
    }
}

impl<S> Layer<S> for LimitLayer {
    type Service = Limited<S>;

    fn layer(&self, inner: S) -> Limited<S> {
        Limited {
            inner,
            limits: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Limited<S> {
    inner: S,
    limits: LimitLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> Service<http::Request<B>> for Limited<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<R>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The clone that was made ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = request.uri().path();
        if self.limits.streaming.contains(path) {
            return Box::pin(inner.call(request));
        }
        let permit = if path.starts_with(HEALTH) {
            None
        } else {
            match self.limits.calls.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => return Box::pin(std::future::ready(Ok(answer(Error::Overloaded)))),
            }
        };
        let deadline = deadline::deadline(request.headers(), self.limits.default_deadline);
        let call = cancel_queries_on_drop(inner.call(request));
        Box::pin(async move {
            let _permit = permit;
            match tokio::time::timeout(deadline, call).await {
                Ok(response) => response,
                Err(_) => Ok(answer(Error::DeadlineExceeded)),
            }
        })
    }
}

fn answer<R: Default>(error: Error) -> http::Response<R> {
    Status::from(error).into_http()
}

/// Every server-streaming or client-streaming method served, as an HTTP path.
fn streaming_paths() -> HashSet<String> {
    let sets = [
        super::pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    method_paths(&sets, |method| {
        method.is_server_streaming() || method.is_client_streaming()
    })
}

/// The HTTP paths of the methods in `sets` (encoded descriptor sets) that
/// `wanted` picks.
pub(super) fn method_paths(
    sets: &[&[u8]],
    wanted: impl Fn(&prost_reflect::MethodDescriptor) -> bool,
) -> HashSet<String> {
    let mut paths = HashSet::new();
    for set in sets {
        let pool = prost_reflect::DescriptorPool::decode(*set)
            .expect("an embedded descriptor set decodes");
        for service in pool.services() {
            for method in service.methods().filter(&wanted) {
                paths.insert(format!("/{}/{}", service.full_name(), method.name()));
            }
        }
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_long_lived_streams_are_known_by_path() {
        let paths = streaming_paths();
        for path in [
            "/consent.v1.ConsentService/WatchChanges",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            assert!(paths.contains(path), "{path} in {paths:?}");
        }
        assert!(!paths.contains("/consent.v1.ConsentService/Check"));
        assert!(!paths.contains("/grpc.health.v1.Health/Check"));
    }
}
