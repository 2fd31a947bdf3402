//! Identifier and text newtypes. Their fields are private: the only way to
//! get one is `parse`, which enforces the limits the proto documents.

use std::fmt;

/// Checks that `value` is 1..=`max` characters of printable text with no
/// surrounding white space. External ids are compared exactly, so a stray
/// space or a control character would silently name a different subject.
fn printable(value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    let chars = value.chars().count();
    if chars > max {
        return Err(format!("must be at most {max} characters (got {chars})"));
    }
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    if value.trim() != value {
        return Err("must not start or end with white space".into());
    }
    Ok(())
}

/// Checks a policy code: a lower-case ASCII letter, then up to 63 lower-case
/// letters, digits, `_` or `-`. Codes are written by hand in the policy file
/// and typed by callers, so they are kept to one unambiguous spelling.
pub(super) fn code(value: &str) -> Result<(), String> {
    let mut chars = value.chars();
    let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if value.is_empty() {
        Err("must not be empty".into())
    } else if value.len() > 64 {
        Err(format!(
            "must be at most 64 characters (got {})",
            value.len()
        ))
    } else if !starts_with_letter || !rest_ok {
        Err("must start with a lower-case letter and use only a-z, 0-9, '_' and '-'".into())
    } else {
        Ok(())
    }
}

macro_rules! text_newtype {
    ($(#[$doc:meta])* $name:ident, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub fn parse(value: impl Into<String>) -> Result<Self, String> {
                let value = value.into();
                let check: fn(&str) -> Result<(), String> = $check;
                check(&value)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

pub(super) use text_newtype;

text_newtype!(
    /// A subject's external id, as the calling system knows it (`C-1042`).
    SubjectId,
    |v| printable(v, 128)
);
text_newtype!(
    /// A purpose code declared in the policy (`promotional_mail`).
    PurposeCode,
    code
);
text_newtype!(
    /// A field code declared in the policy (`postal_address`).
    FieldName,
    code
);
text_newtype!(
    /// An AIP-155 idempotency key chosen by the caller.
    RequestId,
    |v| printable(v, 128)
);
text_newtype!(
    /// The privacy notice version a person was shown (`2026-01`).
    NoticeVersion,
    |v| printable(v, 64)
);
text_newtype!(
    /// Who made a call: the authenticated caller's id, with an optional
    /// "on behalf of" note (`support (on behalf of agent-7)`). Served without
    /// callers, it is whatever the caller puts in `x-actor`, so it is held to
    /// the same rules as an external id.
    Actor,
    |v| printable(v, 128)
);

text_newtype!(
    /// A recipient id declared in the policy (`express-courier`).
    RecipientId,
    code
);
text_newtype!(
    /// What a disclosure is about, as the requester names it: an order
    /// number, a case or notice number.
    Reference,
    |v| printable(v, 256)
);
text_newtype!(
    /// Why a disclosure on a legal basis is needed, for the approver and the
    /// record. Must not contain personal data beyond what the case needs.
    Justification,
    |v| printable(v, 2000)
);

impl From<&super::CallerId> for Actor {
    /// An authenticated caller is the actor of what it does; its id is a
    /// policy code, so it always meets an actor's rules.
    fn from(id: &super::CallerId) -> Self {
        Self(id.as_str().to_owned())
    }
}

/// Opens the "on behalf of" note. Caller ids are codes, which hold no space
/// or parenthesis, so the note can never be mistaken for part of the id.
const ON_BEHALF_OF: &str = " (on behalf of ";

impl Actor {
    /// The actor of a call that names none.
    pub fn anonymous() -> Self {
        Self("anonymous".into())
    }

    /// An authenticated caller, noting whom it acts for when it says so (a
    /// support agent's name). The note is recorded, never believed.
    pub fn acting(caller: &super::CallerId, on_behalf_of: Option<&str>) -> Result<Self, String> {
        match on_behalf_of {
            None => Ok(caller.into()),
            Some(note) => {
                printable(note, 40)?;
                Self::parse(format!("{caller}{ON_BEHALF_OF}{note})"))
            }
        }
    }

    /// Who answers for the call: the actor without its note. Rules that
    /// need two different people (a second approver) compare this, so a
    /// note can't make one caller into two.
    pub fn principal(&self) -> &str {
        match self.0.split_once(ON_BEHALF_OF) {
            Some((principal, _)) => principal,
            None => &self.0,
        }
    }
}

/// Free text that points an auditor to the source of a choice. It may be
/// empty, so it does not share `printable`'s non-empty rule.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Evidence(String);

impl Evidence {
    pub const MAX_CHARS: usize = 1024;

    pub fn parse(value: impl Into<String>) -> Result<Self, String> {
        let value = value.into();
        let chars = value.chars().count();
        if chars > Self::MAX_CHARS {
            return Err(format!(
                "must be at most {} characters (got {chars})",
                Self::MAX_CHARS
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

/// A personal data value. It is the one thing R8 protects, so its `Debug`
/// prints nothing of it, and it is never put in a log, a span or an error.
#[derive(Clone, PartialEq, Eq)]
pub struct PersonalValue(String);

impl PersonalValue {
    pub const MAX_CHARS: usize = 4096;

    pub fn parse(value: impl Into<String>) -> Result<Self, String> {
        let value = value.into();
        let chars = value.chars().count();
        if value.trim().is_empty() {
            return Err("must not be empty".into());
        }
        if chars > Self::MAX_CHARS {
            return Err(format!(
                "must be at most {} characters (got {chars})",
                Self::MAX_CHARS
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

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Debug for PersonalValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PersonalValue(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_on_behalf_of_note_is_recorded_but_not_part_of_the_principal() {
        let support = super::super::CallerId::parse("support").unwrap();
        let noted = Actor::acting(&support, Some("agent Wu")).unwrap();
        assert_eq!(noted.as_str(), "support (on behalf of agent Wu)");
        assert_eq!(noted.principal(), "support");
        let plain = Actor::acting(&support, None).unwrap();
        assert_eq!(plain.as_str(), "support");
        assert_eq!(plain.principal(), noted.principal());
        assert!(Actor::acting(&support, Some("line\nbreak")).is_err());
    }

    #[test]
    fn subject_id_accepts_typical_external_ids() {
        for id in ["C-1042", "org:ACME/42", "顾客-7781", "a"] {
            assert!(SubjectId::parse(id).is_ok(), "{id}");
        }
    }

    #[test]
    fn subject_id_rejects_empty_long_padded_and_control_input() {
        assert!(SubjectId::parse("").is_err());
        assert!(SubjectId::parse("x".repeat(129)).is_err());
        assert!(SubjectId::parse("x".repeat(128)).is_ok());
        assert!(SubjectId::parse(" C-1").is_err());
        assert!(SubjectId::parse("C-1\n").is_err());
        assert!(SubjectId::parse("C\u{0}1").is_err());
    }

    #[test]
    fn purpose_codes_are_lower_case_identifiers() {
        assert!(PurposeCode::parse("promotional_mail").is_ok());
        assert!(PurposeCode::parse("express-courier").is_ok());
        assert!(PurposeCode::parse("Promotional").is_err());
        assert!(PurposeCode::parse("1st").is_err());
        assert!(PurposeCode::parse("a b").is_err());
        assert!(PurposeCode::parse("").is_err());
        assert!(PurposeCode::parse("a".repeat(65)).is_err());
    }

    #[test]
    fn evidence_may_be_empty_but_not_huge() {
        assert!(Evidence::parse("").is_ok());
        assert!(Evidence::parse("form 12\ncall 9").is_ok());
        assert!(Evidence::parse("x".repeat(1025)).is_err());
        assert!(Evidence::parse("bell\u{7}").is_err());
    }

    #[test]
    fn a_personal_value_never_shows_in_debug_output() {
        let value = PersonalValue::parse("1 Secret Road").unwrap();
        assert!(!format!("{value:?}").contains("Secret"));
        assert!(PersonalValue::parse("  ").is_err());
        assert!(PersonalValue::parse("line 1\nline 2").is_ok());
    }

    proptest! {
        #[test]
        fn a_parsed_subject_id_round_trips(id in "[A-Za-z0-9:/_-]{1,128}") {
            let parsed = SubjectId::parse(id.clone()).unwrap();
            prop_assert_eq!(parsed.as_str(), id.as_str());
        }

        #[test]
        fn strings_with_control_characters_never_parse(prefix in "[a-z]{0,5}", c in proptest::char::range('\u{0}', '\u{1f}')) {
            let id = format!("{prefix}{c}x");
            prop_assert!(SubjectId::parse(id).is_err());
        }
    }
}
