//! The one error type of the service. `grpc::status` maps each variant to a
//! `tonic::Status`; nothing else decides what a caller sees.

use crate::domain::FieldViolation;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// INVALID_ARGUMENT with one `google.rpc.BadRequest` field violation per
    /// problem. Nothing was written.
    #[error("invalid request: {}", summarize(.0))]
    InvalidArgument(Vec<FieldViolation>),

    /// NOT_FOUND with `google.rpc.ResourceInfo`. `name` is what the caller
    /// sent, so it is returned to them but never logged.
    #[error("{resource_type} not found")]
    NotFound {
        resource_type: &'static str,
        name: String,
    },

    /// FAILED_PRECONDITION with `google.rpc.PreconditionFailure`: the
    /// request is well formed but the resource is not in a state that
    /// allows it (approving a disclosure that is not pending).
    #[error("{description}")]
    FailedPrecondition {
        violation_type: &'static str,
        subject: String,
        description: String,
    },

    /// PERMISSION_DENIED: this actor may not do this (approving their own
    /// disclosure request).
    #[error("{0}")]
    PermissionDenied(String),

    /// UNAUTHENTICATED: a callers file is in force and the call carries no
    /// credential of a caller in it. Says what is missing, never who exists.
    #[error("{0}")]
    Unauthenticated(&'static str),

    /// PERMISSION_DENIED with `google.rpc.ErrorInfo`: the caller's entry in
    /// the callers file does not allow the method `rpc`, or something the
    /// call names. The reason says which rule; the metadata which value.
    #[error("{refusal}")]
    Refused {
        refusal: crate::policy::Refusal,
        rpc: String,
    },

    /// RESOURCE_EXHAUSTED, as gRPC answers any message over the receiver's
    /// limit: the request message is `length` bytes (at least), and its
    /// method takes at most `cap`. Nothing was decoded.
    #[error("request message larger than max ({length} vs. {cap} bytes)")]
    MessageTooLarge { length: usize, cap: usize },

    /// UNAVAILABLE: the server is shutting down, and ends a stream that
    /// would otherwise hold its drain open. Reconnecting, to this server
    /// once it is back or to another, and sending again what was not
    /// answered succeeds.
    #[error("the server is shutting down")]
    ShuttingDown,

    /// ALREADY_EXISTS: the `request_id` was first used for a different
    /// request. Retrying cannot help; the caller must pick a new id.
    #[error("request_id was already used for a different request")]
    RequestIdReused,

    /// RESOURCE_EXHAUSTED with `google.rpc.ErrorInfo` reason
    /// `TOO_MANY_WATCH_STREAMS`: the server already serves as many change
    /// streams as `--max-watch-streams` allows. A retry later can succeed.
    #[error("too many change streams are open (at most {limit})")]
    TooManyStreams { limit: usize },

    /// RESOURCE_EXHAUSTED with `google.rpc.ErrorInfo` reason `FEED_LAGGED`
    /// and metadata `cursor`: a change stream fell so far behind that the
    /// server would have to buffer without bound. Everything up to `cursor`
    /// was sent (or filtered out); a new stream with `after = cursor`
    /// resumes without loss.
    #[error("the change stream fell too far behind; resume after {cursor}")]
    FeedLagged { cursor: i64 },

    /// RESOURCE_EXHAUSTED: the server is serving as many calls as it may
    /// (`--max-concurrent-calls`); this one was shed, not queued.
    #[error("too many calls in flight")]
    Overloaded,

    /// RESOURCE_EXHAUSTED with `google.rpc.RetryInfo`: the caller is over
    /// its rate (`--rate-limit-per-caller`); it may retry after the delay.
    #[error("rate limit exceeded")]
    RateLimited { retry_after: std::time::Duration },

    /// DEADLINE_EXCEEDED: the call's deadline (the client's, or
    /// `--default-deadline-ms`) passed; its database query was cancelled.
    #[error("deadline exceeded")]
    DeadlineExceeded,

    /// UNAVAILABLE: the database pool gave no connection in time, or could
    /// not open one.
    #[error("no database connection available")]
    Pool(#[from] deadpool_postgres::PoolError),

    /// UNAVAILABLE when the connection was lost or refused, the server is
    /// shutting down or starting up, or it cancelled the statement at
    /// `--db-statement-timeout-ms` ([`Error::is_unavailable`]): a retry can
    /// succeed. INTERNAL otherwise.
    #[error("database error")]
    Database(#[from] tokio_postgres::Error),

    /// INTERNAL: anything else. Logged with its cause chain, and answered
    /// with a generic message.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl Error {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Error::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    pub fn subject_not_found(name: &impl ToString) -> Self {
        Error::NotFound {
            resource_type: "consent.v1.Subject",
            name: name.to_string(),
        }
    }
}

impl Error {
    /// Which of the server's limits refused the call, for the
    /// `consentd_calls_limited_total` counter; `None` for any other error.
    pub fn limit_reason(&self) -> Option<&'static str> {
        match self {
            Error::Overloaded => Some("overloaded"),
            Error::RateLimited { .. } => Some("rate_limited"),
            Error::DeadlineExceeded => Some("deadline_exceeded"),
            Error::MessageTooLarge { .. } => Some("message_too_large"),
            Error::TooManyStreams { .. } => Some("too_many_streams"),
            _ => None,
        }
    }

    /// Whether the database could not be reached, so that the same call can
    /// succeed once it answers again. A write that failed this way may
    /// still have committed; a retry with the same `request_id` finds it.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Pool(_) => true,
            Error::Database(e) => database_unavailable(e),
            // A driver error wrapped with context on its way up is still
            // an outage.
            Error::Internal(e) => e.chain().any(|cause| {
                cause.is::<deadpool_postgres::PoolError>()
                    || cause
                        .downcast_ref::<tokio_postgres::Error>()
                        .is_some_and(database_unavailable)
            }),
            _ => false,
        }
    }

    /// Logs what an operator needs to see: the internal failures, with
    /// their cause (never a value). Errors the caller made are answered,
    /// not logged. Every adapter calls this, so gRPC and HTTP log alike.
    pub fn log(&self) {
        if matches!(
            self,
            Error::Pool(_) | Error::Database(_) | Error::Internal(_)
        ) {
            crate::telemetry::span_ids::stamp(&tracing::Span::current());
        }
        match self {
            Error::Pool(e) => tracing::error!(error = %e, "no database connection"),
            // Only the SQLSTATE and the primary message: a DETAIL line can
            // quote stored values, which must never reach a log (R8).
            Error::Database(e) => match e.as_db_error() {
                Some(db) => tracing::error!(
                    code = db.code().code(),
                    message = db.message(),
                    "database error"
                ),
                None => {
                    use std::error::Error as _;
                    tracing::error!(error = %e, source = ?e.source().map(ToString::to_string), "database error")
                }
            },
            Error::Internal(e) => tracing::error!(error = format!("{e:#}"), "internal error"),
            Error::InvalidArgument(_)
            | Error::NotFound { .. }
            | Error::FailedPrecondition { .. }
            | Error::PermissionDenied(_)
            | Error::TooManyStreams { .. }
            | Error::FeedLagged { .. }
            | Error::Unauthenticated(_)
            | Error::Refused { .. }
            | Error::ShuttingDown
            | Error::MessageTooLarge { .. }
            | Error::RequestIdReused
            | Error::RateLimited { .. }
            | Error::DeadlineExceeded => {}
            // Once per shed call would flood the log just when it is busiest.
            Error::Overloaded => tracing::debug!("call shed: too many in flight"),
        }
    }
}

/// An error that says nothing about the request, only that the database
/// could not do it now: a lost connection, or a statement cancelled.
fn database_unavailable(e: &tokio_postgres::Error) -> bool {
    connection_failed(e) || statement_cancelled(e)
}

/// The server cancelled the statement (57014): it ran past
/// `statement_timeout`, or an operator cancelled it. Its transaction rolled
/// back, so a retry writes at most once. UNAVAILABLE rather than
/// DEADLINE_EXCEEDED: the caller's own deadline did not pass, and clients
/// retry UNAVAILABLE, with backoff, where a slow database can recover;
/// DEADLINE_EXCEEDED stays the answer to the caller's own deadline.
fn statement_cancelled(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
}

/// A lost or refused connection, or a server that is shutting down, crashed
/// or is still recovering, as opposed to a failing statement.
fn connection_failed(e: &tokio_postgres::Error) -> bool {
    use std::error::Error as _;
    if e.is_closed() || e.source().is_some_and(|s| s.is::<std::io::Error>()) {
        return true;
    }
    e.code().is_some_and(|code| {
        let code = code.code();
        // 08: connection exception; 57P01-57P03: admin shutdown, crash
        // shutdown, cannot connect now; 53300: too many connections.
        code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
    })
}

fn summarize(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<crate::domain::Violations> for Error {
    fn from(violations: crate::domain::Violations) -> Self {
        Error::InvalidArgument(violations.into_vec())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
