//! Serving a router with hyper directly, because `axum::serve` can set
//! neither a header-read timeout nor a cap on every body: a client that
//! sends half a request line and stalls is dropped after
//! `--http-header-timeout-seconds`, and a body over `--http-max-body-bytes`
//! is answered 413 (at once when its length is declared, else once read
//! past the cap). Each request carries its peer address as axum's
//! `ConnectInfo`, for the per-address limit.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use axum::{
    Router,
    extract::ConnectInfo,
    http::{Request, StatusCode, header},
    response::{IntoResponse as _, Response},
    serve::Listener,
};
use http_body_util::Limited;
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio_util::sync::CancellationToken;
use tower_service::Service as _;

/// What every HTTP connection is held to.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub header_timeout: Duration,
    pub max_body_bytes: usize,
}

/// Serves `router` on `listener` until `stop`, then lets open requests
/// finish (the caller bounds how long).
pub async fn serve<L>(mut listener: L, router: Router, limits: HttpLimits, stop: CancellationToken)
where
    L: Listener<Addr = SocketAddr>,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let graceful = GracefulShutdown::new();
    loop {
        let (io, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |request| {
            let mut router = router.clone();
            async move {
                let Some(request) = bounded(request, peer, limits.max_body_bytes) else {
                    return Ok::<_, Infallible>(too_large());
                };
                router.call(request).await
            }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(io), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                // A stalled or broken client; nothing the operator can act on.
                tracing::debug!(%peer, error = %e, "HTTP connection closed");
            }
        });
    }
    // Stop accepting before waiting for the open connections.
    drop(listener);
    graceful.shutdown().await;
}

/// The request with its peer address and its body capped, or `None` when
/// it declares a body over the cap.
fn bounded(
    request: Request<Incoming>,
    peer: SocketAddr,
    max_body_bytes: usize,
) -> Option<Request<Limited<Incoming>>> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max_body_bytes as u64) {
        return None;
    }
    let mut request = request.map(|body| Limited::new(body, max_body_bytes));
    request.extensions_mut().insert(ConnectInfo(peer));
    Some(request)
}

fn too_large() -> Response {
    let mut response = (StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n").into_response();
    // The unread body would otherwise be read and thrown away first.
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}
