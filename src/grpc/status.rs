//! The one mapping from [`Error`] to [`tonic::Status`].

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, PreconditionViolation, StatusExt as _};

use crate::{
    error::Error,
    policy::{Refusal, callers::legal_basis_name},
};

/// Clients (and gRPC retry policies) retry UNAVAILABLE; writes carry a
/// `request_id`, so a retry never writes twice.
const UNAVAILABLE: &str = "the database is unavailable; retry later";

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        error.log();
        let unavailable = error.is_unavailable();
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
            Error::Unauthenticated(message) => Status::unauthenticated(message),
            Error::Refused { refusal, rpc } => {
                let message = refusal.to_string();
                let (key, value) = match &refusal {
                    Refusal::Rpc => ("rpc", rpc.clone()),
                    Refusal::Purpose(purpose) => ("purpose", purpose.to_string()),
                    Refusal::Recipient(recipient) => ("recipient", recipient.to_string()),
                    Refusal::LegalBasis(basis) => ("legal_basis", legal_basis_name(*basis).into()),
                };
                let details = ErrorDetails::with_error_info(
                    refusal.reason(),
                    "consentd",
                    HashMap::from([(key.to_string(), value)]),
                );
                Status::with_error_details(Code::PermissionDenied, message, details)
            }
            Error::ShuttingDown => Status::unavailable(
                "the server is shutting down; reconnect and send again what was not answered",
            ),
            Error::RequestIdReused => Status::already_exists(
                "request_id was already used for a different request; use a new request_id",
            ),
            Error::Pool(_) => Status::unavailable(UNAVAILABLE),
            Error::Database(_) if unavailable => Status::unavailable(UNAVAILABLE),
            Error::Database(_) | Error::Internal(_) => Status::internal("internal error"),
        }
    }
}

fn error_message(violations: &[crate::domain::FieldViolation]) -> String {
    let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
    format!("invalid request: check {}", fields.join(", "))
}
