//! `grpc.health.v1`, with Watch streams that end at shutdown.
//!
//! tonic-health's Watch stream never ends by itself, and a graceful
//! shutdown waits for every open stream: one load balancer watching the
//! health would keep a draining server alive until the shutdown timeout.
//! So each Watch here ends, with UNAVAILABLE, once the server stops taking
//! calls, after it has delivered NOT_SERVING.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use tokio_stream::Stream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::{Request, Response, Status};
use tonic_health::{
    ServingStatus,
    pb::{
        HealthCheckRequest, HealthCheckResponse,
        health_server::{Health, HealthServer},
    },
    server::{HealthReporter, HealthService},
};

use super::{ConcernGrpc, ConsentGrpc, DisclosureGrpc, SubjectRightsGrpc, pb};
use crate::service::readiness::Ready;

/// The health service for `reporter`, whose Watch streams end when `stop`
/// is cancelled.
pub fn health_server(
    reporter: HealthReporter,
    stop: CancellationToken,
) -> HealthServer<impl Health> {
    HealthServer::new(EndingHealth {
        inner: HealthService::from_health_reporter(reporter),
        stop,
    })
}

/// Sets the health of the server as a whole ("") and of every service.
pub async fn report_health(health: &tonic_health::server::HealthReporter, status: ServingStatus) {
    use tonic::server::NamedService;
    for service in [
        "",
        pb::consent_service_server::ConsentServiceServer::<ConsentGrpc>::NAME,
        pb::concern_service_server::ConcernServiceServer::<ConcernGrpc>::NAME,
        pb::disclosure_service_server::DisclosureServiceServer::<DisclosureGrpc>::NAME,
        pb::subject_rights_service_server::SubjectRightsServiceServer::<SubjectRightsGrpc>::NAME,
    ] {
        health.set_service_status(service, status).await;
    }
}

/// Reports each change of readiness to gRPC health (SERVING or
/// NOT_SERVING), and ends once it has reported the shutdown. After start it
/// is health's only writer, so a probe's answer can never land after the
/// shutdown's NOT_SERVING. Only changes are sent: a Watch stream relays
/// every report, repeats included.
pub async fn follow_readiness(
    health: tonic_health::server::HealthReporter,
    mut readiness: tokio::sync::watch::Receiver<Ready>,
) {
    let mut reported = ServingStatus::Serving;
    loop {
        let ready = *readiness.borrow_and_update();
        let status = if ready.is_ready() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if status != reported {
            report_health(&health, status).await;
            reported = status;
        }
        if ready == Ready::ShuttingDown || readiness.changed().await.is_err() {
            return;
        }
    }
}

struct EndingHealth {
    inner: HealthService,
    /// Cancelled when the server stops taking calls.
    stop: CancellationToken,
}

#[tonic::async_trait]
impl Health for EndingHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = UntilStopped<<HealthService as Health>::WatchStream>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let stream = self.inner.watch(request).await?.into_inner();
        Ok(Response::new(UntilStopped::new(stream, self.stop.clone())))
    }
}

/// A stream that ends with UNAVAILABLE once `stop` is cancelled. What the
/// inner stream has ready is sent first, so a status change made before
/// the stop (NOT_SERVING) still reaches the client.
pub struct UntilStopped<S> {
    inner: S,
    stop: Pin<Box<WaitForCancellationFutureOwned>>,
    ended: bool,
}

impl<S> UntilStopped<S> {
    pub fn new(inner: S, stop: CancellationToken) -> Self {
        Self {
            inner,
            stop: Box::pin(stop.cancelled_owned()),
            ended: false,
        }
    }
}

impl<S, T> Stream for UntilStopped<S>
where
    S: Stream<Item = Result<T, Status>> + Unpin,
{
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if let Poll::Ready(item) = Pin::new(&mut self.inner).poll_next(cx) {
            self.ended = item.is_none();
            return Poll::Ready(item);
        }
        match self.stop.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.ended = true;
                Poll::Ready(Some(Err(Status::unavailable(
                    "the server is shutting down; watch another one",
                ))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt as _;

    use super::*;

    #[tokio::test]
    async fn a_stream_sends_what_is_ready_then_ends_with_unavailable_at_stop() {
        let stop = CancellationToken::new();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<u8, Status>>(4);
        let mut stream = UntilStopped::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            stop.clone(),
        );
        tx.send(Ok(1)).await.unwrap();
        stop.cancel();
        let mut next = async || {
            tokio::time::timeout(std::time::Duration::from_secs(1), stream.next())
                .await
                .expect("the stream answers within a second")
        };
        assert_eq!(next().await.unwrap().unwrap(), 1);
        let end = next().await.unwrap().unwrap_err();
        assert_eq!(end.code(), tonic::Code::Unavailable);
        assert!(next().await.is_none());
        drop(tx);
    }
}
