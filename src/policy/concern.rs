//! The rules of a concern's life: deadlines and allowed status changes.

use chrono::{DateTime, Duration, Utc};

use crate::domain::{ConcernOutcome, ConcernStatus};

/// How long the company gives itself, from filing, to acknowledge and to
/// resolve a concern (the policy's `[concerns]` section).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConcernDeadlines {
    pub acknowledge: Duration,
    pub resolve: Duration,
}

impl Default for ConcernDeadlines {
    fn default() -> Self {
        Self {
            acknowledge: Duration::days(2),
            resolve: Duration::days(15),
        }
    }
}

impl ConcernDeadlines {
    pub fn acknowledge_by(&self, filed_at: DateTime<Utc>) -> DateTime<Utc> {
        filed_at + self.acknowledge
    }

    pub fn resolve_by(&self, filed_at: DateTime<Utc>) -> DateTime<Utc> {
        filed_at + self.resolve
    }

    /// Past a deadline without the step it sets.
    pub fn is_overdue(
        &self,
        status: ConcernStatus,
        filed_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> bool {
        match status {
            ConcernStatus::Filed => {
                now > self.acknowledge_by(filed_at) || now > self.resolve_by(filed_at)
            }
            ConcernStatus::Acknowledged => now > self.resolve_by(filed_at),
            ConcernStatus::Resolved => false,
        }
    }
}

/// A requested status change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConcernChange {
    Acknowledge,
    Resolve {
        outcome: ConcernOutcome,
        resolution: String,
    },
}

/// The event a change appends: status, outcome, resolution text.
pub type ConcernStep = (ConcernStatus, Option<ConcernOutcome>, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConcernChangeError {
    #[error("the concern is already resolved")]
    AlreadyResolved,
}

/// What event `change` appends to a concern in status `current`; `None` when
/// it changes nothing (acknowledging twice).
pub fn next_step(
    current: ConcernStatus,
    change: &ConcernChange,
) -> Result<Option<ConcernStep>, ConcernChangeError> {
    match (current, change) {
        (ConcernStatus::Resolved, _) => Err(ConcernChangeError::AlreadyResolved),
        (ConcernStatus::Filed, ConcernChange::Acknowledge) => {
            Ok(Some((ConcernStatus::Acknowledged, None, String::new())))
        }
        (ConcernStatus::Acknowledged, ConcernChange::Acknowledge) => Ok(None),
        (
            _,
            ConcernChange::Resolve {
                outcome,
                resolution,
            },
        ) => Ok(Some((
            ConcernStatus::Resolved,
            Some(*outcome),
            resolution.clone(),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(hours: i64) -> DateTime<Utc> {
        DateTime::UNIX_EPOCH + Duration::hours(hours)
    }

    #[test]
    fn overdue_follows_both_deadlines_by_status() {
        let d = ConcernDeadlines::default();
        let filed = at(0);
        use ConcernStatus::*;
        let cases = [
            (Filed, 47, false),
            (Filed, 49, true),
            (Acknowledged, 49, false),
            (Acknowledged, 15 * 24 + 1, true),
            (Filed, 15 * 24 + 1, true),
            (Resolved, 1000, false),
        ];
        for (status, hours, overdue) in cases {
            assert_eq!(
                d.is_overdue(status, filed, at(hours)),
                overdue,
                "{status:?} after {hours}h"
            );
        }
    }

    #[test]
    fn status_changes_move_forward_only() {
        use ConcernStatus::*;
        let resolve = ConcernChange::Resolve {
            outcome: ConcernOutcome::Fixed,
            resolution: "done".into(),
        };
        assert_eq!(
            next_step(Filed, &ConcernChange::Acknowledge),
            Ok(Some((Acknowledged, None, String::new())))
        );
        assert_eq!(
            next_step(Acknowledged, &ConcernChange::Acknowledge),
            Ok(None)
        );
        assert_eq!(
            next_step(Filed, &resolve),
            Ok(Some((Resolved, Some(ConcernOutcome::Fixed), "done".into())))
        );
        assert_eq!(
            next_step(Acknowledged, &resolve).unwrap().unwrap().0,
            Resolved
        );
        assert_eq!(
            next_step(Resolved, &resolve),
            Err(ConcernChangeError::AlreadyResolved)
        );
        assert_eq!(
            next_step(Resolved, &ConcernChange::Acknowledge),
            Err(ConcernChangeError::AlreadyResolved)
        );
    }
}
