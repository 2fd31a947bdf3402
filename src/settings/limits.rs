//! The limits `consentd serve` holds every caller to. Each is on by default,
//! at a value no honest caller meets and that a hostile one cannot live on;
//! a benchmark raises them by flag.

use std::time::Duration;

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Unary gRPC calls served at once by this process. One more is answered
    /// RESOURCE_EXHAUSTED at once rather than queued: a queue only grows
    /// under overload. Change streams and health do not count.
    #[arg(long, env = "CONSENTD_MAX_CONCURRENT_CALLS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_concurrent_calls: u32,

    /// gRPC calls per second each caller may make (keyed by its id in the
    /// callers file, else by its address). Past it: RESOURCE_EXHAUSTED with
    /// a google.rpc.RetryInfo saying when to retry.
    #[arg(long, env = "CONSENTD_RATE_LIMIT_PER_CALLER", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub rate_limit_per_caller: u32,

    /// gRPC calls a caller may make at once above --rate-limit-per-caller
    /// before it is held to that rate.
    #[arg(long, env = "CONSENTD_RATE_LIMIT_BURST", default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub rate_limit_burst: u32,

    /// The deadline of a unary gRPC call that sets none, and the longest
    /// one a client may set (`grpc-timeout`). Past it: DEADLINE_EXCEEDED,
    /// and its database query is cancelled.
    #[arg(long, env = "CONSENTD_DEFAULT_DEADLINE_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub default_deadline_ms: u64,

    /// How often the server pings an idle HTTP/2 (gRPC) connection, to find
    /// peers that vanished without closing it.
    #[arg(long, env = "CONSENTD_HTTP2_KEEPALIVE_INTERVAL_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub http2_keepalive_interval_seconds: u64,

    /// How long a keepalive ping may go unanswered before the connection is
    /// closed.
    #[arg(long, env = "CONSENTD_HTTP2_KEEPALIVE_TIMEOUT_SECONDS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub http2_keepalive_timeout_seconds: u64,

    /// Streams (calls) one HTTP/2 connection may have open at once; a client
    /// waits for a free one. Unbounded, one connection could hold any number.
    #[arg(long, env = "CONSENTD_MAX_CONCURRENT_STREAMS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_concurrent_streams: u32,

    /// How long an HTTP client (public and admin listeners) gets to send a
    /// request's headers, and how long an idle keep-alive connection stays
    /// open; past it the connection is closed.
    #[arg(long, env = "CONSENTD_HTTP_HEADER_TIMEOUT_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub http_header_timeout_seconds: u64,

    /// The largest HTTP request body accepted; a larger one is answered 413.
    /// Routes with a smaller limit of their own keep it.
    #[arg(long, env = "CONSENTD_HTTP_MAX_BODY_BYTES", default_value_t = 65_536, value_parser = clap::value_parser!(u64).range(1..=16_777_216))]
    pub http_max_body_bytes: u64,

    /// Requests per minute one address may make to the link pages (`/u/…`
    /// and `/p/…`), in bursts of as many; past it: 429 with Retry-After.
    #[arg(long, env = "CONSENTD_UNSUBSCRIBE_RATE_LIMIT_PER_ADDRESS", default_value_t = 120, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub unsubscribe_rate_limit_per_address: u32,
}

impl LimitArgs {
    pub fn default_deadline(&self) -> Duration {
        Duration::from_millis(self.default_deadline_ms)
    }

    pub fn http2_keepalive_interval(&self) -> Duration {
        Duration::from_secs(self.http2_keepalive_interval_seconds)
    }

    pub fn http2_keepalive_timeout(&self) -> Duration {
        Duration::from_secs(self.http2_keepalive_timeout_seconds)
    }

    pub fn http_header_timeout(&self) -> Duration {
        Duration::from_secs(self.http_header_timeout_seconds)
    }

    /// Each limit by flag, as text, for `ServeArgs::settings`.
    pub fn settings(&self) -> Vec<(&'static str, Option<String>)> {
        let text = |value: &dyn ToString| Some(value.to_string());
        vec![
            ("--max-concurrent-calls", text(&self.max_concurrent_calls)),
            ("--rate-limit-per-caller", text(&self.rate_limit_per_caller)),
            ("--rate-limit-burst", text(&self.rate_limit_burst)),
            ("--default-deadline-ms", text(&self.default_deadline_ms)),
            (
                "--http2-keepalive-interval-seconds",
                text(&self.http2_keepalive_interval_seconds),
            ),
            (
                "--http2-keepalive-timeout-seconds",
                text(&self.http2_keepalive_timeout_seconds),
            ),
            (
                "--max-concurrent-streams",
                text(&self.max_concurrent_streams),
            ),
            (
                "--http-header-timeout-seconds",
                text(&self.http_header_timeout_seconds),
            ),
            ("--http-max-body-bytes", text(&self.http_max_body_bytes)),
            (
                "--unsubscribe-rate-limit-per-address",
                text(&self.unsubscribe_rate_limit_per_address),
            ),
        ]
    }
}
