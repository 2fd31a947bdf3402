//! The policy as the rules see it: purposes, fields, recipients and the
//! courier rule, with lookups. Built only by the loader (`load.rs`), which
//! has checked every cross-reference, so a lookup never meets a dangling id.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::concern::ConcernDeadlines;
use crate::domain::{FieldName, PurposeCode, RecipientId, stored_enum};

/// The legal basis of a purpose, which decides how choices are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// Needed to serve the person (delivery, support): no choice is asked.
    Contract,
    /// Opt-in: denied until the person grants it.
    Consent,
    /// Secondary use: allowed until the person refuses it (R4).
    OptOut,
}

/// One kind of personal data the company holds.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldDef {
    pub name: FieldName,
    pub description: String,
}

/// One reason the company uses personal data.
#[derive(Debug, Clone, PartialEq)]
pub struct Purpose {
    pub code: PurposeCode,
    pub basis: Basis,
    pub description: String,
    /// The only fields this purpose may use, in file order.
    pub fields: Vec<FieldName>,
    /// How to refuse; required for `opt_out` purposes (R4).
    pub refusal_instructions: Option<String>,
    /// Chinese versions for the unsubscribe page; English is the fallback.
    pub description_zh: Option<String>,
    pub refusal_instructions_zh: Option<String>,
    /// R3: the oldest a field's last verification may be for this purpose.
    /// Fields not listed have no limit.
    pub max_age_days: BTreeMap<FieldName, u32>,
    /// Turns data older than `max_age_days` from a warning
    /// (`needs_verification`) into a DENY with `REASON_STALE_DATA`.
    pub require_fresh: bool,
}

impl Purpose {
    pub fn permits(&self, field: &FieldName) -> bool {
        self.fields.contains(field)
    }
}

stored_enum!(
    /// What kind of third party a recipient is. The rules differ by kind: a
    /// courier may get delivery data (R6), an authority only on a legal basis
    /// (R7), and everyone else needs the person's permission (R5).
    Category {
        Courier => "courier",
        Processor => "processor",
        Partner => "partner",
        Authority => "authority",
    }
);

/// A third party the policy names. PIPL Art. 23 requires the notice to name
/// each recipient and how to reach it, so `name` and `contact` are required.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipient {
    pub id: RecipientId,
    pub name: String,
    pub category: Category,
    pub contact: String,
    /// The purposes this recipient receives data for, in file order.
    pub purposes: Vec<PurposeCode>,
}

/// R6: what recipients of one category may receive for one contract
/// purpose without the person's permission, when the request names the
/// transaction (`reference`, e.g. the order).
#[derive(Debug, Clone, PartialEq)]
pub struct DisclosureRule {
    pub category: Category,
    pub purpose: PurposeCode,
    pub fields: Vec<FieldName>,
}

/// A loaded, validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub(super) version: String,
    pub(super) concern_deadlines: ConcernDeadlines,
    pub(super) fields: BTreeMap<FieldName, FieldDef>,
    pub(super) purposes: BTreeMap<PurposeCode, Purpose>,
    pub(super) recipients: BTreeMap<RecipientId, Recipient>,
    pub(super) disclosure_rules: Vec<DisclosureRule>,
}

impl Policy {
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn concern_deadlines(&self) -> ConcernDeadlines {
        self.concern_deadlines
    }

    pub fn purpose(&self, code: &PurposeCode) -> Option<&Purpose> {
        self.purposes.get(code)
    }

    pub fn purposes(&self) -> impl Iterator<Item = &Purpose> {
        self.purposes.values()
    }

    pub fn declares_field(&self, field: &FieldName) -> bool {
        self.fields.contains_key(field)
    }

    pub fn fields(&self) -> impl Iterator<Item = &FieldDef> {
        self.fields.values()
    }

    pub fn recipient(&self, id: &RecipientId) -> Option<&Recipient> {
        self.recipients.get(id)
    }

    pub fn recipients(&self) -> impl Iterator<Item = &Recipient> {
        self.recipients.values()
    }

    /// The R6 rule for recipients of `category` and `purpose`, if any.
    pub fn disclosure_rule(
        &self,
        category: Category,
        purpose: &PurposeCode,
    ) -> Option<&DisclosureRule> {
        self.disclosure_rules
            .iter()
            .find(|r| r.category == category && &r.purpose == purpose)
    }
}
