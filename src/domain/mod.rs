//! Validated domain types. Everything here is plain data with no IO: a value
//! that exists has passed its `parse`, so the rest of the code never checks a
//! raw string again.

/// Declares a closed set of values that is stored as text: in the database,
/// where the migrations' CHECK constraints list the texts, or in the policy
/// file. Either way the text must not change once released.
///
/// The enum, `ALL`, `as_str` and `from_stored` all come from the one list of
/// variants, so `ALL` holds every variant by construction and a test that
/// iterates it covers the whole mapping.
macro_rules! stored_enum {
    (
        $(#[$doc:meta])* $name:ident {
            $($(#[$variant_doc:meta])* $variant:ident => $text:literal),+ $(,)?
        }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$variant_doc])* $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn from_stored(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }
    };
}

pub(crate) use stored_enum;

mod caller;
mod concern;
mod consistency;
mod disclosure;
mod feed;
mod ids;
mod list;
mod reason;
mod record;
mod state;

pub use caller::{Caller, CallerId, Credential};
pub use concern::{
    Concern, ConcernCategory, ConcernEvent, ConcernOutcome, ConcernStatus, NewConcern, Resolution,
    Text,
};
pub use consistency::{Consistency, ConsistencyToken};
pub use disclosure::{
    Disclosure, DisclosureStatus, FieldData, LegalBasis, NewPersonalData, ReleasedField,
    SealedValue, Withheld,
};
pub use feed::{ErasureEvent, FeedEvent, Registration, StoredField};
pub use ids::{
    Actor, Evidence, FieldName, Justification, NoticeVersion, PersonalValue, PurposeCode,
    RecipientId, Reference, RequestId, SubjectId,
};
pub use list::ListLimit;
pub use reason::Reason;
pub use record::{
    Channel, Choice, ConsentRecord, NewConsentRecord, Subject, SubjectKind, SubjectRegistration,
};
pub use state::{StoredChoice, SubjectState};

/// One problem with one input field, in the shape of a
/// `google.rpc.BadRequest.FieldViolation` but free of any transport type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// Collects every violation of a request, so a caller learns all of its
/// mistakes from one answer instead of one per retry.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps the value when it parsed, or notes the violation under `field`.
    pub fn check<T>(&mut self, field: impl Into<String>, parsed: Result<T, String>) -> Option<T> {
        match parsed {
            Ok(value) => Some(value),
            Err(description) => {
                self.0.push(FieldViolation::new(field, description));
                None
            }
        }
    }

    /// [`check`](Self::check) with the field's name made only for a
    /// violation, for a path where formatting it would cost more than the
    /// parsing.
    pub fn check_named<T>(
        &mut self,
        field: impl FnOnce() -> String,
        parsed: Result<T, String>,
    ) -> Option<T> {
        parsed.map_err(|e| self.push(field(), e)).ok()
    }

    pub fn push(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_vec(self) -> Vec<FieldViolation> {
        self.0
    }

    /// Adds the policy's violations of what parsed, except on a field
    /// already named: a part that did not parse reaches the policy as
    /// absent, and "missing" would only repeat the parse problem.
    pub fn merge(&mut self, policy: Violations) {
        for violation in policy.0 {
            if !self.0.iter().any(|v| v.field == violation.field) {
                self.0.push(violation);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Debug;

    use super::*;

    /// Every variant reads back from its text, and no two share a text.
    fn round_trips<T: Copy + PartialEq + Debug>(
        all: &[T],
        as_str: fn(T) -> &'static str,
        from_stored: fn(&str) -> Option<T>,
    ) {
        for value in all {
            assert_eq!(from_stored(as_str(*value)), Some(*value));
        }
        let mut texts: Vec<_> = all.iter().map(|v| as_str(*v)).collect();
        texts.sort_unstable();
        texts.dedup();
        assert_eq!(texts.len(), all.len(), "{all:?} share a stored text");
        assert_eq!(from_stored("no such value"), None);
    }

    #[test]
    fn disclosure_and_concern_enums_round_trip_through_their_stored_text() {
        round_trips(LegalBasis::ALL, LegalBasis::as_str, LegalBasis::from_stored);
        round_trips(
            DisclosureStatus::ALL,
            DisclosureStatus::as_str,
            DisclosureStatus::from_stored,
        );
        round_trips(
            ConcernCategory::ALL,
            ConcernCategory::as_str,
            ConcernCategory::from_stored,
        );
        round_trips(
            ConcernStatus::ALL,
            ConcernStatus::as_str,
            ConcernStatus::from_stored,
        );
        round_trips(
            ConcernOutcome::ALL,
            ConcernOutcome::as_str,
            ConcernOutcome::from_stored,
        );
    }

    /// The stored_enum! types declared outside `domain`, here so that every
    /// stored text mapping has its round trip in one place.
    #[test]
    fn policy_and_store_enums_round_trip_through_their_stored_text() {
        use crate::{
            policy::{Category, Outcome},
            store::DisclosureEvent,
        };
        round_trips(Category::ALL, Category::as_str, Category::from_stored);
        round_trips(Outcome::ALL, Outcome::as_str, Outcome::from_stored);
        round_trips(
            DisclosureEvent::ALL,
            DisclosureEvent::as_str,
            DisclosureEvent::from_stored,
        );
    }
}
