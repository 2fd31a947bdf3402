//! Validating requests against the policy, apart from deciding them.
//!
//! A request that names something the policy does not declare is a caller
//! bug: it is answered INVALID_ARGUMENT with every offending field, before
//! any IO. The decisions ([`decide`](super::decide),
//! [`decide_disclosure`](super::decide_disclosure)) then assume the request
//! passed, so they cannot fail.

use super::{Category, DisclosureRequest, Ground, Policy};
use crate::domain::{FieldName, PurposeCode, RecipientId, Violations};

/// What parsed of a disclosure request; `None` did not.
#[derive(Debug, Clone, Copy)]
pub struct DisclosureParts<'a> {
    pub recipient: Option<&'a RecipientId>,
    pub ground: Option<&'a Ground>,
    pub fields: &'a [FieldName],
    pub has_reference: bool,
    pub has_justification: bool,
}

impl Policy {
    /// Whether a Check names a declared purpose and a declared field. Both
    /// are reported when both are wrong.
    pub fn check_query(&self, purpose: &PurposeCode, field: &FieldName) -> Violations {
        self.check_query_parts(Some(purpose), Some(field))
    }

    /// [`check_query`](Self::check_query) over what parsed of a request
    /// (`None` did not), so one answer names parse and policy errors together.
    pub fn check_query_parts(
        &self,
        purpose: Option<&PurposeCode>,
        field: Option<&FieldName>,
    ) -> Violations {
        let mut violations = Violations::new();
        if let Some(purpose) = purpose
            && self.purpose(purpose).is_none()
        {
            violations.push("purpose", self.not_a_purpose(purpose));
        }
        if let Some(field) = field
            && !self.declares_field(field)
        {
            violations.push("field", self.not_a_field(field));
        }
        violations
    }

    /// Whether a disclosure request can be decided: a declared recipient,
    /// declared fields each listed once, a declared purpose, the reference
    /// and justification that R6 and R7 require, and an authority as the
    /// recipient of a legal-basis request (R7).
    pub fn check_disclosure(&self, request: &DisclosureRequest) -> Violations {
        self.check_disclosure_parts(&DisclosureParts {
            recipient: Some(&request.recipient),
            ground: Some(&request.ground),
            fields: &request.fields,
            has_reference: request.reference.is_some(),
            has_justification: request.justification.is_some(),
        })
    }

    /// [`check_disclosure`](Self::check_disclosure) over what parsed of a
    /// request, so that one answer names the policy's problems beside the
    /// parse errors: a rule that needs a missing part is skipped.
    pub fn check_disclosure_parts(&self, request: &DisclosureParts<'_>) -> Violations {
        let mut violations = Violations::new();
        let version = self.version();
        let recipient = request.recipient.and_then(|id| {
            let recipient = self.recipient(id);
            if recipient.is_none() {
                violations.push(
                    "recipient_id",
                    format!("`{id}` is not a recipient of policy {version}"),
                );
            }
            recipient
        });
        if request.fields.is_empty() {
            violations.push("fields", "must name at least one field");
        }
        for (i, field) in request.fields.iter().enumerate() {
            if !self.declares_field(field) {
                violations.push(
                    format!("fields[{i}]"),
                    format!("`{field}` is not a field of policy {version}"),
                );
            } else if request.fields[..i].contains(field) {
                violations.push(format!("fields[{i}]"), format!("`{field}` is listed twice"));
            }
        }
        let purpose = match request.ground {
            None => None,
            Some(Ground::Purpose(code)) => {
                let purpose = self.purpose(code);
                if purpose.is_none() {
                    violations.push(
                        "purpose",
                        format!("`{code}` is not a purpose of policy {version}"),
                    );
                }
                purpose
            }
            Some(Ground::Legal(_)) => {
                // R7 names legal notices, rights and emergencies: grounds an
                // authority acts on. Sent to a partner or a courier, a legal
                // basis would be a way around the person's permission (R5).
                if let Some(r) = recipient.filter(|r| r.category != Category::Authority) {
                    violations.push(
                        "recipient_id",
                        format!(
                            "`{}` is a {}: a legal basis releases data only to an authority",
                            r.id,
                            r.category.as_str()
                        ),
                    );
                }
                // R7: a legal basis must say what it rests on and why.
                if !request.has_reference {
                    violations.push(
                        "reference",
                        "a legal-basis request needs the notice or case number",
                    );
                }
                if !request.has_justification {
                    violations.push(
                        "justification",
                        "a legal-basis request needs a justification",
                    );
                }
                None
            }
        };
        let courier_rule = match (recipient, purpose) {
            (Some(r), Some(p)) => self.disclosure_rule(r.category, &p.code),
            _ => None,
        };
        // R6: the courier exception is tied to one delivery; without the order
        // it is a request we cannot decide rather than a quiet denial.
        if courier_rule.is_some() && !request.has_reference {
            violations.push(
                "reference",
                "a delivery disclosure needs the order reference",
            );
        }
        violations
    }

    /// The message for a purpose the policy does not declare, listing those
    /// it does so that the caller can correct the request.
    pub fn not_a_purpose(&self, purpose: &PurposeCode) -> String {
        let known: Vec<_> = self.purposes().map(|p| p.code.to_string()).collect();
        format!(
            "`{purpose}` is not a purpose of policy {} (known: {})",
            self.version(),
            known.join(", ")
        )
    }

    /// The message for a field the policy does not declare, listing those it
    /// does.
    pub fn not_a_field(&self, field: &FieldName) -> String {
        let known: Vec<_> = self.fields().map(|f| f.name.to_string()).collect();
        format!(
            "`{field}` is not a field of policy {} (known: {})",
            self.version(),
            known.join(", ")
        )
    }
}

mod requests;
#[cfg(test)]
mod tests;
