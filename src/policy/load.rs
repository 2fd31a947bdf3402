//! Loading and validating the policy file (`deploy/policy.toml`).
//!
//! Every problem is reported with the file name and the line it is on, and
//! all problems are reported at once, so whoever edits the file can fix it in
//! one pass. A server never starts on a file with a problem.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use toml::Spanned;

use super::{
    Basis, Category, DisclosureRule, FieldDef, Policy, Purpose, Recipient,
    concern::ConcernDeadlines,
};
use crate::domain::{FieldName, PurposeCode, RecipientId};

impl Policy {
    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            path: path.to_path_buf(),
            problems: vec![Problem {
                line: None,
                message: format!("cannot read the file: {e}"),
            }],
        })?;
        Self::parse(path, &text)
    }

    /// Validates policy text; `path` only names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, PolicyError> {
        let lines = LineIndex::new(text);
        let fail = |problems| PolicyError {
            path: path.to_path_buf(),
            problems,
        };
        let raw: RawPolicy = toml::from_str(text).map_err(|e| {
            fail(vec![Problem {
                line: e.span().map(|span| lines.line_of(span.start)),
                message: e.message().to_string(),
            }])
        })?;
        raw.validate(&lines).map_err(fail)
    }
}

/// Why a policy file was refused: every problem found, with its line.
#[derive(Debug, thiserror::Error)]
pub struct PolicyError {
    pub path: PathBuf,
    pub problems: Vec<Problem>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, when the problem is tied to one.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "policy file {} has {n} problem{}:",
            self.path.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for problem in &self.problems {
            match problem.line {
                Some(line) => writeln!(f, "  {}:{line}: {}", self.path.display(), problem.message)?,
                None => writeln!(f, "  {}: {}", self.path.display(), problem.message)?,
            }
        }
        Ok(())
    }
}

/// The file as written, before validation. Ids keep their spans so that
/// problems can name a line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: Spanned<String>,
    #[serde(default)]
    fields: Vec<RawField>,
    #[serde(default)]
    purposes: Vec<RawPurpose>,
    concerns: Option<Spanned<RawConcerns>>,
    #[serde(default)]
    recipients: Vec<RawRecipient>,
    #[serde(default)]
    disclosure_rules: Vec<RawRule>,
}

/// `[concerns]`: deadlines, in days from filing.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConcerns {
    acknowledge_within_days: u32,
    resolve_within_days: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecipient {
    id: Spanned<String>,
    #[serde(default)]
    name: String,
    category: Spanned<String>,
    #[serde(default)]
    contact: String,
    #[serde(default)]
    purposes: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    category: Spanned<String>,
    purpose: Spanned<String>,
    fields: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    id: Spanned<String>,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPurpose {
    id: Spanned<String>,
    basis: Basis,
    #[serde(default)]
    description: String,
    fields: Vec<Spanned<String>>,
    refusal_instructions: Option<Spanned<String>>,
    description_zh: Option<String>,
    refusal_instructions_zh: Option<String>,
    #[serde(default)]
    max_age_days: Option<Spanned<BTreeMap<String, u32>>>,
    #[serde(default)]
    require_fresh: Option<Spanned<bool>>,
}

/// The category names the file may use, parsed by hand (not by serde) so
/// that an unknown one is reported with its line like every other problem.
fn category(text: &str) -> Option<Category> {
    match text {
        "courier" => Some(Category::Courier),
        "processor" => Some(Category::Processor),
        "partner" => Some(Category::Partner),
        "authority" => Some(Category::Authority),
        _ => None,
    }
}

impl RawPolicy {
    fn validate(self, lines: &LineIndex) -> Result<Policy, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut problem = |span: std::ops::Range<usize>, message: String| {
            problems.push(Problem {
                line: Some(lines.line_of(span.start)),
                message,
            })
        };

        if self.version.get_ref().trim().is_empty() {
            problem(self.version.span(), "`version` must not be empty".into());
        }

        let mut fields = BTreeMap::new();
        let mut field_lines = HashMap::new();
        for raw in self.fields {
            let line = lines.line_of(raw.id.span().start);
            match FieldName::parse(raw.id.get_ref().clone()) {
                Err(why) => problem(
                    raw.id.span(),
                    format!("field id `{}` {why}", raw.id.get_ref()),
                ),
                Ok(name) => {
                    if let Some(first) = field_lines.insert(name.clone(), line) {
                        problem(
                            raw.id.span(),
                            format!("duplicate field id `{name}` (first declared on line {first})"),
                        );
                        continue;
                    }
                    fields.insert(
                        name.clone(),
                        FieldDef {
                            name,
                            description: raw.description,
                        },
                    );
                }
            }
        }

        let mut purposes = BTreeMap::new();
        let mut purpose_lines = HashMap::new();
        for raw in self.purposes {
            let id = raw.id.get_ref().clone();
            let code = match PurposeCode::parse(id.clone()) {
                Ok(code) => code,
                Err(why) => {
                    problem(raw.id.span(), format!("purpose id `{id}` {why}"));
                    continue;
                }
            };
            let line = lines.line_of(raw.id.span().start);
            if let Some(first) = purpose_lines.insert(code.clone(), line) {
                problem(
                    raw.id.span(),
                    format!("duplicate purpose id `{code}` (first declared on line {first})"),
                );
                continue;
            }
            if raw.fields.is_empty() {
                problem(raw.id.span(), format!("purpose `{code}` lists no fields"));
            }
            let mut purpose_fields = Vec::new();
            for field in &raw.fields {
                match FieldName::parse(field.get_ref().clone()) {
                    Ok(name) if fields.contains_key(&name) => {
                        if purpose_fields.contains(&name) {
                            problem(
                                field.span(),
                                format!("purpose `{code}` lists field `{name}` twice"),
                            );
                        } else {
                            purpose_fields.push(name);
                        }
                    }
                    _ => problem(
                        field.span(),
                        format!(
                            "purpose `{code}` lists field `{}`, which is not declared under [[fields]]",
                            field.get_ref()
                        ),
                    ),
                }
            }
            let instructions = raw
                .refusal_instructions
                .as_ref()
                .map(|s| s.get_ref().trim().to_string())
                .filter(|s| !s.is_empty());
            if raw.basis == Basis::OptOut && instructions.is_none() {
                problem(
                    raw.id.span(),
                    format!(
                        "purpose `{code}` has basis opt_out but no refusal_instructions: \
                         a secondary use must tell people how to refuse it"
                    ),
                );
            }
            let mut max_age_days = BTreeMap::new();
            if let Some(ages) = &raw.max_age_days {
                for (field, days) in ages.get_ref() {
                    match FieldName::parse(field.clone()) {
                        Ok(name) if purpose_fields.contains(&name) => {
                            if *days == 0 {
                                problem(
                                    ages.span(),
                                    format!(
                                        "purpose `{code}`: max_age_days for `{name}` must be at least 1"
                                    ),
                                );
                            }
                            max_age_days.insert(name, *days);
                        }
                        _ => problem(
                            ages.span(),
                            format!(
                                "purpose `{code}` sets max_age_days for `{field}`, which is not one of its fields"
                            ),
                        ),
                    }
                }
            }
            let require_fresh = raw.require_fresh.as_ref().is_some_and(|r| *r.get_ref());
            if let Some(flag) = &raw.require_fresh
                && *flag.get_ref()
                && max_age_days.is_empty()
            {
                problem(
                    flag.span(),
                    format!(
                        "purpose `{code}` sets require_fresh but no max_age_days: nothing could ever be stale"
                    ),
                );
            }
            purposes.insert(
                code.clone(),
                Purpose {
                    code,
                    basis: raw.basis,
                    description: raw.description,
                    fields: purpose_fields,
                    refusal_instructions: instructions,
                    description_zh: raw.description_zh.filter(|s| !s.trim().is_empty()),
                    refusal_instructions_zh: raw
                        .refusal_instructions_zh
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty()),
                    max_age_days,
                    require_fresh,
                },
            );
        }

        let mut recipients = BTreeMap::new();
        let mut recipient_lines = HashMap::new();
        for raw in self.recipients {
            let id_text = raw.id.get_ref().clone();
            let id = match RecipientId::parse(id_text.clone()) {
                Ok(id) => id,
                Err(why) => {
                    problem(raw.id.span(), format!("recipient id `{id_text}` {why}"));
                    continue;
                }
            };
            let line = lines.line_of(raw.id.span().start);
            if let Some(first) = recipient_lines.insert(id.clone(), line) {
                problem(
                    raw.id.span(),
                    format!("duplicate recipient id `{id}` (first declared on line {first})"),
                );
                continue;
            }
            // PIPL Art. 23: the notice must name the recipient and its contact.
            if raw.name.trim().is_empty() {
                problem(raw.id.span(), format!("recipient `{id}` has no name"));
            }
            if raw.contact.trim().is_empty() {
                problem(raw.id.span(), format!("recipient `{id}` has no contact"));
            }
            let Some(kind) = category(raw.category.get_ref()) else {
                problem(
                    raw.category.span(),
                    format!(
                        "recipient `{id}` has unknown category `{}` (known: courier, processor, partner, authority)",
                        raw.category.get_ref()
                    ),
                );
                continue;
            };
            let mut recipient_purposes = Vec::new();
            for purpose in &raw.purposes {
                match PurposeCode::parse(purpose.get_ref().clone()) {
                    Ok(code) if purposes.contains_key(&code) => recipient_purposes.push(code),
                    _ => problem(
                        purpose.span(),
                        format!(
                            "recipient `{id}` lists purpose `{}`, which is not declared under [[purposes]]",
                            purpose.get_ref()
                        ),
                    ),
                }
            }
            recipients.insert(
                id.clone(),
                Recipient {
                    id,
                    name: raw.name.trim().to_string(),
                    category: kind,
                    contact: raw.contact.trim().to_string(),
                    purposes: recipient_purposes,
                },
            );
        }

        let mut disclosure_rules: Vec<DisclosureRule> = Vec::new();
        for raw in self.disclosure_rules {
            let Some(kind) = category(raw.category.get_ref()) else {
                problem(
                    raw.category.span(),
                    format!(
                        "disclosure rule has unknown category `{}` (known: courier, processor, partner, authority)",
                        raw.category.get_ref()
                    ),
                );
                continue;
            };
            let purpose = match PurposeCode::parse(raw.purpose.get_ref().clone()) {
                Ok(code) => match purposes.get(&code) {
                    Some(p) if p.basis == Basis::Contract => p,
                    Some(_) => {
                        problem(
                            raw.purpose.span(),
                            format!(
                                "disclosure rule names purpose `{code}`, but only a contract purpose \
                                 may release data without the person's permission"
                            ),
                        );
                        continue;
                    }
                    None => {
                        problem(
                            raw.purpose.span(),
                            format!(
                                "disclosure rule names purpose `{code}`, which is not declared under [[purposes]]"
                            ),
                        );
                        continue;
                    }
                },
                Err(why) => {
                    problem(
                        raw.purpose.span(),
                        format!("disclosure rule purpose `{}` {why}", raw.purpose.get_ref()),
                    );
                    continue;
                }
            };
            if disclosure_rules
                .iter()
                .any(|r| r.category == kind && r.purpose == purpose.code)
            {
                problem(
                    raw.category.span(),
                    format!(
                        "duplicate disclosure rule for category `{}` and purpose `{}`",
                        kind.as_str(),
                        purpose.code
                    ),
                );
                continue;
            }
            let mut rule_fields = Vec::new();
            for field in &raw.fields {
                match FieldName::parse(field.get_ref().clone()) {
                    Ok(name) if purpose.permits(&name) && !rule_fields.contains(&name) => {
                        rule_fields.push(name)
                    }
                    _ => problem(
                        field.span(),
                        format!(
                            "disclosure rule lists field `{}`, which purpose `{}` does not use (or lists twice)",
                            field.get_ref(),
                            purpose.code
                        ),
                    ),
                }
            }
            disclosure_rules.push(DisclosureRule {
                category: kind,
                purpose: purpose.code.clone(),
                fields: rule_fields,
            });
        }

        let mut concern_deadlines = ConcernDeadlines::default();
        if let Some(raw) = &self.concerns {
            let (ack, resolve) = (
                raw.get_ref().acknowledge_within_days,
                raw.get_ref().resolve_within_days,
            );
            if ack == 0 || resolve == 0 || ack > resolve {
                problem(
                    raw.span(),
                    format!(
                        "[concerns] deadlines must be at least 1 day, and acknowledging ({ack}) \
                         cannot take longer than resolving ({resolve})"
                    ),
                );
            }
            concern_deadlines = ConcernDeadlines {
                acknowledge: chrono::Duration::days(ack.into()),
                resolve: chrono::Duration::days(resolve.into()),
            };
        }

        if problems.is_empty() {
            Ok(Policy {
                version: self.version.into_inner(),
                concern_deadlines,
                fields,
                purposes,
                recipients,
                disclosure_rules,
            })
        } else {
            problems.sort_by_key(|p| p.line);
            Err(problems)
        }
    }
}

/// Maps byte offsets to 1-based line numbers.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self { starts }
    }

    fn line_of(&self, offset: usize) -> usize {
        self.starts.partition_point(|&start| start <= offset)
    }
}

#[cfg(test)]
mod tests;
