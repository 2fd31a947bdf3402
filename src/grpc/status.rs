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

/// The most bytes of field names and descriptions one answer lists, before
/// [`MAX_VIOLATIONS`] if the descriptions are long. The details travel in
/// a header, base64 adds a third, and HTTP/2 clients refuse header blocks
/// over 16 KiB: past that a caller would get a broken stream, not an
/// answer.
const MAX_VIOLATION_BYTES: usize = 6 * 1024;

/// How many of `violations` an answer lists: the first ones, within both
/// caps, and always the first.
fn listed(violations: &[crate::domain::FieldViolation]) -> usize {
    let mut bytes = 0;
    let within = violations
        .iter()
        .take(MAX_VIOLATIONS)
        .take_while(|v| {
            bytes += v.field.len() + v.description.len();
            bytes <= MAX_VIOLATION_BYTES
        })
        .count();
    within.max(1).min(violations.len())
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        error.log();
        if let Some(reason) = error.limit_reason() {
            metrics::counter!(crate::metrics::CALLS_LIMITED, "reason" => reason).increment(1);
        }
        let unavailable = error.is_unavailable();
        match error {
            Error::InvalidArgument(mut violations) => {
                let total = violations.len();
                violations.truncate(listed(&violations));
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
                            ("listed".to_string(), (total - more).to_string()),
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
            Error::ShuttingDown => Status::unavailable(
                "the server is shutting down; reconnect and send again what was not answered",
            ),
            Error::RequestIdReused => Status::already_exists(
                "request_id was already used for a different request; use a new request_id",
            ),
            Error::TooManyStreams { limit } => Status::with_error_details(
                Code::ResourceExhausted,
                error.to_string(),
                ErrorDetails::with_error_info(
                    "TOO_MANY_WATCH_STREAMS",
                    "consentd",
                    HashMap::from([("limit".to_string(), limit.to_string())]),
                ),
            ),
            Error::FeedLagged { cursor } => Status::with_error_details(
                Code::ResourceExhausted,
                error.to_string(),
                ErrorDetails::with_error_info(
                    "FEED_LAGGED",
                    "consentd",
                    HashMap::from([("cursor".to_string(), cursor.to_string())]),
                ),
            ),
            Error::Overloaded => Status::resource_exhausted(
                "the server is serving as many calls as it may; retry later",
            ),
            Error::RateLimited { retry_after } => Status::with_error_details(
                Code::ResourceExhausted,
                format!(
                    "this caller is over its rate limit; retry in {} ms",
                    retry_after.as_millis().max(1)
                ),
                ErrorDetails::with_retry_info(Some(retry_after)),
            ),
            Error::DeadlineExceeded => Status::deadline_exceeded("the call's deadline passed"),
            Error::Pool(_) => Status::unavailable(UNAVAILABLE),
            Error::Database(_) | Error::Internal(_) if unavailable => {
                Status::unavailable(UNAVAILABLE)
            }
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
    fn long_descriptions_are_listed_only_as_far_as_the_byte_cap() {
        let long = "d".repeat(1000);
        let violations = (0..20)
            .map(|i| Violation::new(format!("items[{i}].purpose"), long.clone()))
            .collect();
        let status = Status::from(Error::InvalidArgument(violations));
        let details = status.get_error_details();
        assert_eq!(details.bad_request().unwrap().field_violations.len(), 6);
        assert_eq!(details.error_info().unwrap().metadata["listed"], "6");
        assert!(status.message().ends_with("and 14 more"));
        // One violation is always listed, however long.
        let one = vec![Violation::new("value", "d".repeat(10_000))];
        let status = Status::from(Error::InvalidArgument(one));
        let listed = status
            .get_error_details()
            .bad_request()
            .unwrap()
            .field_violations
            .len();
        assert_eq!(listed, 1);
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
