//! How many elements a repeated request field may hold.
//!
//! One [`ListLimit`] serves both places that enforce it: the gRPC codec,
//! which counts the elements in the raw bytes before anything is decoded,
//! and the conversion of a decoded request. Both answer with the same single
//! violation, so a caller cannot tell (and need not care) which one caught
//! an over-long list.

use super::{FieldViolation, Violations};

/// The bounds of one repeated field, named as the caller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListLimit {
    /// The field's name in the request (`items`, `subject_ids`).
    pub field: &'static str,
    /// What one element is, in the plural (`items`, `subject ids`).
    pub noun: &'static str,
    /// Fewer is a violation. 0 leaves an empty list to the other checks,
    /// which say why it must not be empty in their own words.
    pub min: usize,
    pub max: usize,
}

impl ListLimit {
    /// The violation of a list of `len` elements, if it is out of bounds.
    pub fn violation(&self, len: usize) -> Option<FieldViolation> {
        if (self.min..=self.max).contains(&len) {
            return None;
        }
        let bounds = if self.min == 0 {
            format!("at most {}", self.max)
        } else {
            format!("{} to {}", self.min, self.max)
        };
        Some(FieldViolation::new(
            self.field,
            format!("must hold {bounds} {} (got {len})", self.noun),
        ))
    }

    /// Notes a length out of bounds, and says whether the elements are
    /// worth looking at: over the maximum they are not, so a hostile list
    /// costs one violation rather than one per element.
    pub fn check(&self, violations: &mut Violations, len: usize) -> bool {
        if let Some(violation) = self.violation(len) {
            violations.push(violation.field, violation.description);
        }
        len <= self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ITEMS: ListLimit = ListLimit {
        field: "items",
        noun: "items",
        min: 1,
        max: 3,
    };
    const LINKS: ListLimit = ListLimit {
        field: "links",
        noun: "links",
        min: 0,
        max: 2,
    };

    #[test]
    fn lengths_within_the_bounds_pass() {
        for len in 1..=3 {
            assert_eq!(ITEMS.violation(len), None);
        }
        for len in 0..=2 {
            assert_eq!(LINKS.violation(len), None);
        }
    }

    #[test]
    fn lengths_outside_the_bounds_name_the_field_the_bounds_and_the_length() {
        assert_eq!(
            ITEMS.violation(0),
            Some(FieldViolation::new(
                "items",
                "must hold 1 to 3 items (got 0)"
            ))
        );
        assert_eq!(
            ITEMS.violation(4),
            Some(FieldViolation::new(
                "items",
                "must hold 1 to 3 items (got 4)"
            ))
        );
        assert_eq!(
            LINKS.violation(3),
            Some(FieldViolation::new(
                "links",
                "must hold at most 2 links (got 3)"
            ))
        );
    }

    #[test]
    fn check_pushes_one_violation_and_says_whether_to_look_at_the_elements() {
        let mut v = Violations::new();
        assert!(ITEMS.check(&mut v, 2));
        assert!(v.is_empty());
        // Too few: still worth parsing what is there.
        assert!(ITEMS.check(&mut v, 0));
        assert!(!ITEMS.check(&mut v, 4));
        assert_eq!(v.into_vec().len(), 2);
    }
}
