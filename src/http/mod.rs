//! The HTTP side, served beside gRPC by `consentd serve`, on two listeners:
//! the public one serves only what letters link to, the one-click
//! unsubscribe pages and the person's preference page (no login: the signed
//! token in the URL is the only credential); the admin one, loopback by
//! default, serves the probes and /metrics, which say too much about the
//! service to face the internet.

mod limit;
mod one_click;
mod pages;
mod preference_page;
mod preference_text;
mod preferences;
mod serve;

pub use limit::AddressLimit;
pub use preferences::PreferencePages;
pub use serve::{HttpLimits, serve};

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::from_fn_with_state,
    response::{IntoResponse, Response},
    routing::get,
};

use crate::{
    domain::ConsistencyToken,
    policy::concern::ConcernDeadlines,
    service::{
        readiness::{Readiness, Ready},
        unsubscribe::{LinkError, Unsubscribes},
    },
    store::Store,
};
use pages::Lang;

#[derive(Clone)]
pub struct HttpState {
    pub store: Store,
    pub unsubscribes: Unsubscribes,
    /// For the overdue-concerns gauge.
    pub concern_deadlines: ConcernDeadlines,
    pub preferences: PreferencePages,
    /// What `/readyz` reports, as gRPC health does.
    pub readiness: Readiness,
    /// How often one address may open the link pages.
    pub link_limit: AddressLimit,
}

/// What `--http-addr` serves: the unsubscribe pages, and nothing else.
pub fn public_router(state: HttpState) -> Router {
    let per_address = from_fn_with_state(state.link_limit.clone(), limit::limit_by_address);
    Router::new()
        .route(
            "/u/{token}",
            get(show_unsubscribe)
                .post(unsubscribe)
                .layer(DefaultBodyLimit::max(one_click::MAX_BODY_BYTES))
                .layer(per_address.clone()),
        )
        .route("/p/style.css", get(preferences::stylesheet))
        .route(
            "/p/{token}",
            get(preferences::show)
                .post(preferences::post)
                .layer(DefaultBodyLimit::max(preferences::MAX_BODY_BYTES))
                .layer(per_address),
        )
        .with_state(state)
}

/// What `--admin-addr` serves: probes and metrics.
pub fn admin_router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Ready when the decision state is loaded, the database answered the last
/// probe and the server is not shutting down. The background prober asks the database, not this
/// handler, so probes cost the database nothing however often they come.
async fn ready(State(state): State<HttpState>) -> (StatusCode, &'static str) {
    match state.readiness.current() {
        Ready::Yes => (StatusCode::OK, "ready\n"),
        Ready::Loading => (
            StatusCode::SERVICE_UNAVAILABLE,
            "loading the decision state\n",
        ),
        Ready::DatabaseUnreachable => (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n"),
        Ready::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
    }
}

/// Prometheus text exposition.
async fn metrics(State(state): State<HttpState>) -> Response {
    // Read at scrape time: overdue-ness changes with the clock, not with calls.
    match state
        .store
        .count_overdue_concerns(
            state.concern_deadlines.acknowledge,
            state.concern_deadlines.resolve,
        )
        .await
    {
        Ok(overdue) => metrics::gauge!(crate::metrics::CONCERNS_OVERDUE).set(overdue as f64),
        Err(e) => e.log(),
    }
    match state.store.count_open_reviews().await {
        Ok((open, overdue)) => {
            metrics::gauge!(crate::metrics::REVIEWS_OPEN).set(open as f64);
            metrics::gauge!(crate::metrics::REVIEWS_OVERDUE).set(overdue as f64);
        }
        Err(e) => e.log(),
    }
    let mut response = crate::metrics::render(&state.store).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// GET never changes anything: mail scanners follow links. It explains what
/// will stop and offers a button that POSTs.
async fn show_unsubscribe(
    State(state): State<HttpState>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    let lang = Lang::from_headers(&headers);
    match state.unsubscribes.inspect(&token).await {
        Ok(target) => html(StatusCode::OK, lang, pages::confirm_page(lang, &target)),
        Err(e) => link_error(lang, e),
    }
}

/// RFC 8058 one-click: the body is `List-Unsubscribe=One-Click`, as
/// multipart or urlencoded form data. Records the refusal at once and
/// answers 200, without redirecting.
async fn unsubscribe(
    State(state): State<HttpState>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let lang = Lang::from_headers(&headers);
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if !one_click::is_one_click(content_type, &body) {
        return html(StatusCode::BAD_REQUEST, lang, pages::bad_body_page(lang));
    }
    match state.unsubscribes.unsubscribe(&token).await {
        Ok(done) => {
            let purpose = &done.target.claims.purpose;
            tracing::info!(%purpose, created = done.created, "unsubscribe link followed");
            let mut response = html(StatusCode::OK, lang, pages::done_page(lang, &done.target));
            with_consistency_token(&mut response, done.token);
            response
        }
        Err(e) => link_error(lang, e),
    }
}

/// The response header carrying the feed position of what a POST wrote: a
/// mailer may pass it to Check's `consistency` (gRPC) to be answered from
/// state that includes the refusal.
pub const CONSISTENCY_TOKEN: &str = "consistency-token";

fn with_consistency_token(response: &mut Response, token: ConsistencyToken) {
    let value = HeaderValue::from_str(&token.encode()).expect("base64url is a valid header value");
    response.headers_mut().insert(CONSISTENCY_TOKEN, value);
}

fn link_error(lang: Lang, error: LinkError) -> Response {
    match error {
        LinkError::Service(e) => {
            e.log();
            html(
                StatusCode::INTERNAL_SERVER_ERROR,
                lang,
                pages::failure_page(lang),
            )
        }
        other => {
            tracing::info!(reason = %other, "unsubscribe link refused");
            html(StatusCode::BAD_REQUEST, lang, pages::invalid_page(lang))
        }
    }
}

fn html(status: StatusCode, lang: Lang, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_LANGUAGE,
        HeaderValue::from_static(lang.code()),
    );
    // The token in the URL is a credential: keep it out of caches, referrers
    // and search engines.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert("x-robots-tag", HeaderValue::from_static("noindex"));
    headers.insert(header::VARY, HeaderValue::from_static("Accept-Language"));
    response
}
