//! The policy file as written, before validation: what serde reads. Ids
//! keep their spans so that every problem can name its line.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::policy::Basis;

/// The whole file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub(super) version: Spanned<String>,
    #[serde(default)]
    pub(super) fields: Vec<RawField>,
    #[serde(default)]
    pub(super) purposes: Vec<RawPurpose>,
    pub(super) concerns: Option<Spanned<RawConcerns>>,
    #[serde(default)]
    pub(super) recipients: Vec<RawRecipient>,
    #[serde(default)]
    pub(super) disclosure_rules: Vec<RawRule>,
}

/// `[concerns]`: deadlines, in days from filing.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConcerns {
    pub(super) acknowledge_within_days: u32,
    pub(super) resolve_within_days: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRecipient {
    pub(super) id: Spanned<String>,
    #[serde(default)]
    pub(super) name: String,
    pub(super) category: Spanned<String>,
    #[serde(default)]
    pub(super) contact: String,
    #[serde(default)]
    pub(super) purposes: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    pub(super) category: Spanned<String>,
    pub(super) purpose: Spanned<String>,
    pub(super) fields: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawField {
    pub(super) id: Spanned<String>,
    #[serde(default)]
    pub(super) description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPurpose {
    pub(super) id: Spanned<String>,
    pub(super) basis: Basis,
    #[serde(default)]
    pub(super) description: String,
    pub(super) fields: Vec<Spanned<String>>,
    pub(super) refusal_instructions: Option<Spanned<String>>,
    pub(super) description_zh: Option<String>,
    pub(super) refusal_instructions_zh: Option<String>,
    #[serde(default)]
    pub(super) max_age_days: Option<Spanned<BTreeMap<String, u32>>>,
    #[serde(default)]
    pub(super) require_fresh: Option<Spanned<bool>>,
}
