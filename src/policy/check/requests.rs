//! The policy's checks on the parts of a request that parsed, one per kind
//! of request. They live here, not on the services, so that validating a
//! request needs nothing but the policy: the gRPC adapter runs them before
//! any IO, and the fuzz tests run them without a server.

use crate::{
    domain::{FieldName, PurposeCode, RecipientId, Violations},
    policy::{Basis, Policy},
};

impl Policy {
    /// [`check_query_parts`](Self::check_query_parts), with each violation
    /// renamed by `name("purpose")` to the request field it is about.
    pub fn check_query_named(
        &self,
        violations: &mut Violations,
        name: impl Fn(&str) -> String,
        purpose: Option<&PurposeCode>,
        field: Option<&FieldName>,
    ) {
        for v in self.check_query_parts(purpose, field).into_vec() {
            violations.push(name(&v.field), v.description);
        }
    }

    /// Notes what the policy refuses in a choice, for whichever parts parsed
    /// and are present: the purpose, the field it uses, the recipient.
    pub fn check_record_parts(
        &self,
        violations: &mut Violations,
        purpose: Option<&PurposeCode>,
        field: Option<&FieldName>,
        recipient: Option<&RecipientId>,
    ) {
        let declared = purpose.and_then(|p| self.purpose(p));
        if let Some(purpose) = purpose
            && declared.is_none()
        {
            violations.push("purpose", self.not_a_purpose(purpose));
        }
        if let Some(field) = field {
            if !self.declares_field(field) {
                violations.push("field", self.not_a_field(field));
            } else if let Some(purpose) = declared
                && !purpose.permits(field)
            {
                violations.push(
                    "field",
                    format!(
                        "`{field}` is not used by purpose `{}` (it uses: {})",
                        purpose.code,
                        join(&purpose.fields)
                    ),
                );
            }
        }
        let Some(recipient) = recipient else { return };
        match self.recipient(recipient) {
            None => violations.push(
                "recipient",
                format!(
                    "`{recipient}` is not a recipient of policy {}",
                    self.version()
                ),
            ),
            Some(r) => {
                if let Some(purpose) = declared
                    && !r.purposes.contains(&purpose.code)
                {
                    violations.push(
                        "recipient",
                        format!(
                            "recipient `{recipient}` does not receive data for purpose `{}`",
                            purpose.code
                        ),
                    );
                }
            }
        }
    }

    /// Notes what is refused in a WatchChanges: a negative position, and
    /// each purpose (given with its index) the policy does not declare.
    pub fn check_watch<'p>(
        &self,
        violations: &mut Violations,
        after: i64,
        purposes: impl IntoIterator<Item = (usize, &'p PurposeCode)>,
    ) {
        if after < 0 {
            violations.push("after", "must not be negative");
        }
        for (i, purpose) in purposes {
            if self.purpose(purpose).is_none() {
                violations.push(format!("purposes[{i}]"), self.not_a_purpose(purpose));
            }
        }
    }

    /// Notes what the policy refuses in an unsubscribe link request, for
    /// whichever of its purpose and field parsed: a purpose one can refuse,
    /// and a field it uses.
    pub fn check_unsubscribe_parts(
        &self,
        violations: &mut Violations,
        purpose: Option<&PurposeCode>,
        field: Option<&FieldName>,
    ) {
        match purpose.map(|code| (code, self.purpose(code))) {
            None => {}
            Some((code, None)) => violations.push(
                "purpose",
                format!("`{code}` is not a purpose of the policy"),
            ),
            Some((_, Some(p))) if p.basis == Basis::Contract => violations.push(
                "purpose",
                format!(
                    "`{}` has basis contract: there is nothing to unsubscribe from",
                    p.code
                ),
            ),
            Some((_, Some(p))) => {
                if let Some(field) = field
                    && !p.permits(field)
                {
                    violations.push(
                        "field",
                        format!("`{field}` is not used by purpose `{}`", p.code),
                    );
                }
            }
        }
    }

    /// The checks on a value to store (R2): a declared field, and at least
    /// one purpose, each declared, using the field and listed once. A part
    /// that did not parse is `None` and skipped, so that one answer names
    /// the parse problems and the policy problems together.
    pub fn check_collection(
        &self,
        field: Option<&FieldName>,
        collected_for: &[Option<PurposeCode>],
    ) -> Violations {
        let mut violations = field.map_or_else(Violations::new, |f| self.check_field(f));
        if collected_for.is_empty() {
            violations.push(
                "collected_for",
                "must name at least one purpose the value was collected for",
            );
        }
        for (i, code) in collected_for.iter().enumerate() {
            let Some(code) = code else { continue };
            let problem = match (self.purpose(code), field) {
                (None, _) => format!("`{code}` is not a purpose of policy {}", self.version()),
                (Some(p), Some(field)) if !p.permits(field) => {
                    format!("purpose `{code}` does not use field `{field}`")
                }
                _ if collected_for[..i].iter().any(|c| c.as_ref() == Some(code)) => {
                    format!("`{code}` is listed twice")
                }
                _ => continue,
            };
            violations.push(format!("collected_for[{i}]"), problem);
        }
        violations
    }

    /// The check on a field named on its own: it must be declared.
    pub fn check_field(&self, field: &FieldName) -> Violations {
        let mut violations = Violations::new();
        if !self.declares_field(field) {
            violations.push(
                "field",
                format!("`{field}` is not a field of policy {}", self.version()),
            );
        }
        violations
    }
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
