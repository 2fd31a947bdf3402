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

/// The most field violations one answer lists. The rest are counted, in
/// the message and in a `google.rpc.ErrorInfo` (`TOO_MANY_VIOLATIONS`,
/// metadata `violations` and `listed`): a caller fixes the first hundred
/// before it needs the next, and an answer stays small whatever was sent.
pub const MAX_VIOLATIONS: usize = 100;

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        error.log();
        let unavailable = error.is_unavailable();
        match error {
            Error::InvalidArgument(mut violations) => {
                let total = violations.len();
                violations.truncate(MAX_VIOLATIONS);
                let more = total - violations.len();
                let mut message = error_message(&violations);
                let mut details = ErrorDetails::with_bad_request(
                    violations
                        .into_iter()
                        .map(|v| FieldViolation::new(v.field, v.description))
                        .collect::<Vec<_>>(),
                );
                if more > 0 {
                    message.push_str(&format!(" and {more} more"));
                    details.set_error_info(
                        "TOO_MANY_VIOLATIONS",
                        "consentd",
                        HashMap::from([
                            ("violations".to_string(), total.to_string()),
                            ("listed".to_string(), MAX_VIOLATIONS.to_string()),
                        ]),
                    );
                }
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
            Error::MessageTooLarge { .. } => Status::resource_exhausted(error.to_string()),
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

#[cfg(test)]
mod tests {
    use tonic_types::StatusExt as _;

    use super::*;
    use crate::domain::FieldViolation as Violation;

    fn invalid(count: usize) -> Status {
        Status::from(Error::InvalidArgument(
            (0..count)
                .map(|i| Violation::new(format!("items[{i}].subject_id"), "must not be empty"))
                .collect(),
        ))
    }

    #[test]
    fn up_to_a_hundred_violations_are_all_listed_and_nothing_is_counted() {
        let status = invalid(MAX_VIOLATIONS);
        let details = status.get_error_details();
        assert_eq!(details.bad_request().unwrap().field_violations.len(), 100);
        assert!(details.error_info().is_none());
        assert!(!status.message().contains("more"), "{}", status.message());
    }

    #[test]
    fn past_a_hundred_the_first_hundred_are_listed_and_the_rest_counted() {
        let status = invalid(500);
        let details = status.get_error_details();
        let listed = &details.bad_request().unwrap().field_violations;
        assert_eq!(listed.len(), 100);
        assert_eq!(listed[99].field, "items[99].subject_id");
        let info = details.error_info().unwrap();
        assert_eq!(info.reason, "TOO_MANY_VIOLATIONS");
        assert_eq!(info.metadata["violations"], "500");
        assert_eq!(info.metadata["listed"], "100");
        assert!(
            status
                .message()
                .ends_with("items[99].subject_id and 400 more"),
            "{}",
            status.message()
        );
    }
}
