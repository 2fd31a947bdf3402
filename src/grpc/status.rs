//! The one mapping from [`Error`] to [`tonic::Status`].

use std::error::Error as _;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, PreconditionViolation, StatusExt as _};

use crate::error::Error;

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::InvalidArgument(violations) => {
                let message = error_message(&violations);
                let details = ErrorDetails::with_bad_request(
                    violations
                        .into_iter()
                        .map(|v| FieldViolation::new(v.field, v.description))
                        .collect::<Vec<_>>(),
                );
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            Error::NotFound {
                resource_type,
                name,
            } => Status::with_error_details(
                Code::NotFound,
                format!("{resource_type} `{name}` not found"),
                ErrorDetails::with_resource_info(resource_type, name, "", "not found"),
            ),
            Error::FailedPrecondition {
                violation_type,
                subject,
                description,
            } => Status::with_error_details(
                Code::FailedPrecondition,
                description.clone(),
                ErrorDetails::with_precondition_failure(vec![PreconditionViolation::new(
                    violation_type,
                    subject,
                    description,
                )]),
            ),
            Error::PermissionDenied(message) => Status::permission_denied(message),
            Error::RequestIdReused => Status::already_exists(
                "request_id was already used for a different request; use a new request_id",
            ),
            Error::Pool(e) => {
                tracing::error!(error = %e, "no database connection");
                Status::unavailable("the database is unavailable; retry later")
            }
            Error::Database(e) => {
                // Only the SQLSTATE and the primary message: a DETAIL line can
                // quote stored values, which must never reach a log (R8).
                match e.as_db_error() {
                    Some(db) => tracing::error!(
                        code = db.code().code(),
                        message = db.message(),
                        "database error"
                    ),
                    None => {
                        tracing::error!(error = %e, source = ?e.source().map(ToString::to_string), "database error")
                    }
                }
                Status::internal("internal error")
            }
            Error::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "internal error");
                Status::internal("internal error")
            }
        }
    }
}

fn error_message(violations: &[crate::domain::FieldViolation]) -> String {
    let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
    format!("invalid request: check {}", fields.join(", "))
}

/// Logs an error exactly as an RPC failing with it would (internal causes
/// in full, never values), for callers outside gRPC such as the HTTP side.
pub fn log_error(error: Error) {
    let _ = Status::from(error);
}
