//! The `consistency` of a check request, from its proto form.

use super::pb;
use crate::domain::{Consistency, ConsistencyToken, Violations};

/// Unset, and `minimize_latency` in either form, are the default. A token
/// that does not parse is a violation named `consistency.at_least_as_fresh`.
pub(super) fn parse_consistency(
    v: &mut Violations,
    raw: Option<pb::Consistency>,
) -> Option<Consistency> {
    use pb::consistency::Requirement;
    match raw.and_then(|c| c.requirement) {
        None | Some(Requirement::MinimizeLatency(_)) => Some(Consistency::MinimizeLatency),
        Some(Requirement::FullyConsistent(true)) => Some(Consistency::FullyConsistent),
        Some(Requirement::FullyConsistent(false)) => {
            v.push(
                "consistency.fully_consistent",
                "must be true when set; leave `consistency` unset for the default",
            );
            None
        }
        Some(Requirement::AtLeastAsFresh(token)) => v
            .check(
                "consistency.at_least_as_fresh",
                ConsistencyToken::parse(&token),
            )
            .map(Consistency::AtLeastAsFresh),
    }
}
