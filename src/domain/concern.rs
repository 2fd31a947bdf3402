//! Concerns (R9): complaints about how data was handled, and their history.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Actor, RequestId, SubjectId};

stored_enum!(
    /// What a concern is about.
    ConcernCategory {
        Misuse => "misuse",
        UnwantedMail => "unwanted_mail",
        WrongData => "wrong_data",
        Disclosure => "disclosure",
        Other => "other",
    }
);
stored_enum!(
    /// Where a concern stands.
    ConcernStatus { Filed => "filed", Acknowledged => "acknowledged", Resolved => "resolved" }
);
stored_enum!(
    /// How a concern ended.
    ConcernOutcome { Fixed => "fixed", NoViolation => "no_violation", Rejected => "rejected" }
);

/// Non-empty free text of bounded length (a description, a resolution, a
/// contact), with no control characters but newlines and tabs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text(String);

impl Text {
    pub fn parse(value: impl Into<String>, max_chars: usize) -> Result<Self, String> {
        let value = value.into();
        let chars = value.chars().count();
        if value.trim().is_empty() {
            return Err("must not be empty".into());
        }
        if chars > max_chars {
            return Err(format!(
                "must be at most {max_chars} characters (got {chars})"
            ));
        }
        if value
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
        {
            return Err("must not contain control characters other than newline and tab".into());
        }
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What was done about a concern. Any text may stand in it, but it must say
/// something: a rejection must give its reasons (PIPL Art. 50), and every
/// other outcome must say what was done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution(String);

impl Resolution {
    /// `outcome` is `None` when the caller's outcome did not parse; the text
    /// is still checked, so one answer names both problems.
    pub fn parse(
        value: String,
        outcome: Option<ConcernOutcome>,
        max_chars: usize,
    ) -> Result<Self, String> {
        if value.chars().count() > max_chars {
            return Err(format!("must be at most {max_chars} characters"));
        }
        if value.trim().is_empty() {
            return Err(match outcome {
                Some(ConcernOutcome::Rejected) => {
                    "a rejection must give its reasons (PIPL Art. 50)".into()
                }
                _ => "must say what was done".into(),
            });
        }
        Ok(Self(value))
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// A concern as a person files it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewConcern {
    pub subject_id: Option<SubjectId>,
    pub contact: Text,
    pub category: ConcernCategory,
    pub description: Text,
    /// Consent records or disclosures it points at.
    pub links: Vec<Uuid>,
    pub actor: Actor,
    pub request_id: Option<RequestId>,
}

/// One status change.
#[derive(Debug, Clone, PartialEq)]
pub struct ConcernEvent {
    pub status: ConcernStatus,
    pub outcome: Option<ConcernOutcome>,
    /// Empty unless resolved.
    pub resolution: String,
    pub actor: Actor,
    pub at: DateTime<Utc>,
}

/// A stored concern and its history, oldest event first.
#[derive(Debug, Clone, PartialEq)]
pub struct Concern {
    pub concern_id: Uuid,
    pub filed_at: DateTime<Utc>,
    pub content: NewConcern,
    pub events: Vec<ConcernEvent>,
}

impl Concern {
    /// The status of the latest event.
    pub fn status(&self) -> ConcernStatus {
        self.events
            .last()
            .map_or(ConcernStatus::Filed, |e| e.status)
    }

    pub fn outcome(&self) -> Option<ConcernOutcome> {
        self.events.last().and_then(|e| e.outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resolution_must_say_something_and_a_rejection_must_give_reasons() {
        let rejected = Some(ConcernOutcome::Rejected);
        assert!(
            Resolution::parse(" \n".into(), rejected, 10)
                .unwrap_err()
                .contains("PIPL Art. 50")
        );
        for outcome in [None, Some(ConcernOutcome::Fixed)] {
            assert_eq!(
                Resolution::parse(String::new(), outcome, 10),
                Err("must say what was done".into())
            );
        }
        assert!(Resolution::parse("x".repeat(11), rejected, 10).is_err());
        assert_eq!(
            Resolution::parse("x".repeat(10), rejected, 10).map(Resolution::into_string),
            Ok("x".repeat(10))
        );
    }
}
