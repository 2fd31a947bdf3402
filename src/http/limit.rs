//! The per-address rate limit on the link pages (`/u/…`, `/p/…`): the
//! tokens in their URLs are credentials, and the pages write, so one
//! address may not try them faster than a person clicks. Past the limit:
//! 429 with Retry-After. Keyed by the peer address `serve` puts in each
//! request; behind a proxy that is the proxy's.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse as _, Response},
};

use crate::policy::rate::{Buckets, Rate, address_key};

/// Every address's bucket for the link pages.
#[derive(Clone)]
pub struct AddressLimit(Arc<Buckets<IpAddr>>);

impl AddressLimit {
    pub fn per_minute(requests: u32) -> Self {
        Self(Arc::new(Buckets::new(Rate::per_minute(requests))))
    }
}

/// Middleware: counts the request against its address, or answers 429.
pub async fn limit_by_address(
    State(limit): State<AddressLimit>,
    request: Request,
    next: Next,
) -> Response {
    let peer =
        (request.extensions().get::<ConnectInfo<SocketAddr>>()).map(|c| address_key(c.0.ip()));
    if let Some(peer) = peer
        && let Err(retry_after) = limit.0.take(peer, Instant::now())
    {
        return too_many(retry_after);
    }
    next.run(request).await
}

fn too_many(retry_after: Duration) -> Response {
    // Whole seconds, rounded up: Retry-After has no finer unit, and a
    // client that comes back a little early is refused again.
    let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let mut response = (
        StatusCode::TOO_MANY_REQUESTS,
        "too many requests from this address; try again later\n",
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
