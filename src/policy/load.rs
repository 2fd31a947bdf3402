//! Loading and validating the policy file (`deploy/policy.toml`).
//!
//! Every problem is reported with the file name and the line it is on, and
//! all problems are reported at once, so whoever edits the file can fix it in
//! one pass. A server never starts on a file with a problem.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    hash::Hash,
    ops::Range,
    path::{Path, PathBuf},
};

use toml::Spanned;

use super::{
    Basis, Category, DisclosureRule, FieldDef, Policy, Purpose, Recipient,
    concern::ConcernDeadlines,
};
use crate::domain::{FieldName, PurposeCode, RecipientId};
use raw::{RawConcerns, RawField, RawPolicy, RawPurpose, RawRecipient, RawRule};

mod raw;

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
        write_problems(f, "policy", &self.path, &self.problems)
    }
}

/// `KIND file PATH has N problems:`, then one `PATH:LINE: message` each, the
/// shape editors and `grep -n` users jump from.
pub(super) fn write_problems(
    f: &mut fmt::Formatter<'_>,
    kind: &str,
    path: &Path,
    problems: &[Problem],
) -> fmt::Result {
    let n = problems.len();
    writeln!(
        f,
        "{kind} file {} has {n} problem{}:",
        path.display(),
        if n == 1 { "" } else { "s" }
    )?;
    for problem in problems {
        match problem.line {
            Some(line) => writeln!(f, "  {}:{line}: {}", path.display(), problem.message)?,
            None => writeln!(f, "  {}: {}", path.display(), problem.message)?,
        }
    }
    Ok(())
}

impl RawPolicy {
    /// Checks the file section by section, each against the sections it
    /// refers to, and builds the policy only when nothing was found.
    fn validate(self, lines: &LineIndex) -> Result<Policy, Vec<Problem>> {
        let mut problems = Problems {
            lines,
            found: Vec::new(),
        };
        check_version(&self.version, &mut problems);
        let fields = check_fields(self.fields, &mut problems);
        let purposes = check_purposes(self.purposes, &fields, &mut problems);
        let recipients = check_recipients(self.recipients, &purposes, &mut problems);
        let disclosure_rules = check_courier_rules(self.disclosure_rules, &purposes, &mut problems);
        let concern_deadlines = check_concerns(self.concerns.as_ref(), &mut problems);

        let mut found = problems.found;
        if found.is_empty() {
            Ok(Policy {
                version: self.version.into_inner(),
                concern_deadlines,
                fields,
                purposes,
                recipients,
                disclosure_rules,
            })
        } else {
            found.sort_by_key(|p| p.line);
            Err(found)
        }
    }
}

/// The problems found so far, each on the line of the text it is about.
pub(super) struct Problems<'a> {
    pub(super) lines: &'a LineIndex,
    pub(super) found: Vec<Problem>,
}

impl Problems<'_> {
    pub(super) fn at(&mut self, span: Range<usize>, message: String) {
        self.found.push(Problem {
            line: Some(self.lines.line_of(span.start)),
            message,
        });
    }

    /// Notes where `id` is declared. A second declaration of the same id
    /// is a problem that names the first one's line, and `true`.
    pub(super) fn is_duplicate<K: Hash + Eq + fmt::Display>(
        &mut self,
        declared: &mut HashMap<K, usize>,
        id: K,
        span: Range<usize>,
        kind: &str,
    ) -> bool {
        let line = self.lines.line_of(span.start);
        let message = format!("duplicate {kind} id `{id}`");
        match declared.insert(id, line) {
            None => false,
            Some(first) => {
                self.at(span, format!("{message} (first declared on line {first})"));
                true
            }
        }
    }
}

fn check_version(version: &Spanned<String>, problems: &mut Problems) {
    if version.get_ref().trim().is_empty() {
        problems.at(version.span(), "`version` must not be empty".into());
    }
}

/// `[[fields]]`: valid, distinct ids.
fn check_fields(raw: Vec<RawField>, problems: &mut Problems) -> BTreeMap<FieldName, FieldDef> {
    let mut fields = BTreeMap::new();
    let mut declared = HashMap::new();
    for raw in raw {
        let name = match FieldName::parse(raw.id.get_ref().clone()) {
            Ok(name) => name,
            Err(why) => {
                problems.at(
                    raw.id.span(),
                    format!("field id `{}` {why}", raw.id.get_ref()),
                );
                continue;
            }
        };
        if problems.is_duplicate(&mut declared, name.clone(), raw.id.span(), "field") {
            continue;
        }
        let description = raw.description;
        fields.insert(name.clone(), FieldDef { name, description });
    }
    fields
}

/// `[[purposes]]`: valid, distinct ids, each checked by [`check_purpose`].
fn check_purposes(
    raw: Vec<RawPurpose>,
    fields: &BTreeMap<FieldName, FieldDef>,
    problems: &mut Problems,
) -> BTreeMap<PurposeCode, Purpose> {
    let mut purposes = BTreeMap::new();
    let mut declared = HashMap::new();
    for raw in raw {
        let code = match PurposeCode::parse(raw.id.get_ref().clone()) {
            Ok(code) => code,
            Err(why) => {
                problems.at(
                    raw.id.span(),
                    format!("purpose id `{}` {why}", raw.id.get_ref()),
                );
                continue;
            }
        };
        if problems.is_duplicate(&mut declared, code.clone(), raw.id.span(), "purpose") {
            continue;
        }
        purposes.insert(code.clone(), check_purpose(code, raw, fields, problems));
    }
    purposes
}

/// One purpose: its fields are declared (R2), an opt-out says how to refuse
/// it (R4), and its freshness limits name its own fields (R3).
fn check_purpose(
    code: PurposeCode,
    raw: RawPurpose,
    fields: &BTreeMap<FieldName, FieldDef>,
    problems: &mut Problems,
) -> Purpose {
    if raw.fields.is_empty() {
        problems.at(raw.id.span(), format!("purpose `{code}` lists no fields"));
    }
    let mut purpose_fields = Vec::new();
    for field in &raw.fields {
        match FieldName::parse(field.get_ref().clone()) {
            Ok(name) if fields.contains_key(&name) => {
                if purpose_fields.contains(&name) {
                    problems.at(
                        field.span(),
                        format!("purpose `{code}` lists field `{name}` twice"),
                    );
                } else {
                    purpose_fields.push(name);
                }
            }
            _ => problems.at(
                field.span(),
                format!(
                    "purpose `{code}` lists field `{}`, which is not declared under [[fields]]",
                    field.get_ref()
                ),
            ),
        }
    }
    let instructions = non_blank(raw.refusal_instructions.map(Spanned::into_inner));
    if raw.basis == Basis::OptOut && instructions.is_none() {
        problems.at(
            raw.id.span(),
            format!(
                "purpose `{code}` has basis opt_out but no refusal_instructions: \
                 a secondary use must tell people how to refuse it"
            ),
        );
    }
    let max_age_days = check_max_age(&code, raw.max_age_days.as_ref(), &purpose_fields, problems);
    let require_fresh = raw.require_fresh.as_ref().is_some_and(|r| *r.get_ref());
    if let Some(flag) = &raw.require_fresh
        && require_fresh
        && max_age_days.is_empty()
    {
        problems.at(
            flag.span(),
            format!(
                "purpose `{code}` sets require_fresh but no max_age_days: nothing could ever be stale"
            ),
        );
    }
    Purpose {
        code,
        basis: raw.basis,
        description: raw.description,
        fields: purpose_fields,
        refusal_instructions: instructions,
        description_zh: raw.description_zh.filter(|s| !s.trim().is_empty()),
        refusal_instructions_zh: non_blank(raw.refusal_instructions_zh),
        max_age_days,
        require_fresh,
    }
}

/// The text trimmed, or `None` when there is none.
fn non_blank(text: Option<String>) -> Option<String> {
    text.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// `max_age_days` of one purpose: at least a day, for its own fields.
fn check_max_age(
    code: &PurposeCode,
    ages: Option<&Spanned<BTreeMap<String, u32>>>,
    purpose_fields: &[FieldName],
    problems: &mut Problems,
) -> BTreeMap<FieldName, u32> {
    let mut max_age_days = BTreeMap::new();
    let Some(ages) = ages else {
        return max_age_days;
    };
    for (field, days) in ages.get_ref() {
        match FieldName::parse(field.clone()) {
            Ok(name) if purpose_fields.contains(&name) => {
                if *days == 0 {
                    problems.at(
                        ages.span(),
                        format!("purpose `{code}`: max_age_days for `{name}` must be at least 1"),
                    );
                }
                max_age_days.insert(name, *days);
            }
            _ => problems.at(
                ages.span(),
                format!(
                    "purpose `{code}` sets max_age_days for `{field}`, which is not one of its fields"
                ),
            ),
        }
    }
    max_age_days
}

/// `[[recipients]]`: valid, distinct ids, each named with a contact (PIPL
/// Art. 23), of a known category, receiving data for declared purposes.
fn check_recipients(
    raw: Vec<RawRecipient>,
    purposes: &BTreeMap<PurposeCode, Purpose>,
    problems: &mut Problems,
) -> BTreeMap<RecipientId, Recipient> {
    let mut recipients = BTreeMap::new();
    let mut declared = HashMap::new();
    for raw in raw {
        let id = match RecipientId::parse(raw.id.get_ref().clone()) {
            Ok(id) => id,
            Err(why) => {
                problems.at(
                    raw.id.span(),
                    format!("recipient id `{}` {why}", raw.id.get_ref()),
                );
                continue;
            }
        };
        if problems.is_duplicate(&mut declared, id.clone(), raw.id.span(), "recipient") {
            continue;
        }
        if raw.name.trim().is_empty() {
            problems.at(raw.id.span(), format!("recipient `{id}` has no name"));
        }
        if raw.contact.trim().is_empty() {
            problems.at(raw.id.span(), format!("recipient `{id}` has no contact"));
        }
        let Some(category) = check_category(&raw.category, &format!("recipient `{id}`"), problems)
        else {
            continue;
        };
        let mut recipient_purposes = Vec::new();
        for purpose in &raw.purposes {
            match PurposeCode::parse(purpose.get_ref().clone()) {
                Ok(code) if purposes.contains_key(&code) => recipient_purposes.push(code),
                _ => problems.at(
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
                category,
                contact: raw.contact.trim().to_string(),
                purposes: recipient_purposes,
            },
        );
    }
    recipients
}

/// A category name, parsed here rather than by serde so that an unknown one
/// is reported with its line like every other problem.
fn check_category(
    text: &Spanned<String>,
    owner: &str,
    problems: &mut Problems,
) -> Option<Category> {
    let category = Category::from_stored(text.get_ref());
    if category.is_none() {
        let known: Vec<_> = Category::ALL.iter().map(|c| c.as_str()).collect();
        problems.at(
            text.span(),
            format!(
                "{owner} has unknown category `{}` (known: {})",
                text.get_ref(),
                known.join(", ")
            ),
        );
    }
    category
}

/// `[[disclosure_rules]]`, the courier rule (R6): one rule per category and
/// contract purpose, releasing only fields that purpose uses.
fn check_courier_rules(
    raw: Vec<RawRule>,
    purposes: &BTreeMap<PurposeCode, Purpose>,
    problems: &mut Problems,
) -> Vec<DisclosureRule> {
    let mut rules: Vec<DisclosureRule> = Vec::new();
    for raw in raw {
        let Some(category) = check_category(&raw.category, "disclosure rule", problems) else {
            continue;
        };
        let Some(purpose) = rule_purpose(&raw.purpose, purposes, problems) else {
            continue;
        };
        if rules
            .iter()
            .any(|r| r.category == category && r.purpose == purpose.code)
        {
            problems.at(
                raw.category.span(),
                format!(
                    "duplicate disclosure rule for category `{}` and purpose `{}`",
                    category.as_str(),
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
                _ => problems.at(
                    field.span(),
                    format!(
                        "disclosure rule lists field `{}`, which purpose `{}` does not use (or lists twice)",
                        field.get_ref(),
                        purpose.code
                    ),
                ),
            }
        }
        rules.push(DisclosureRule {
            category,
            purpose: purpose.code.clone(),
            fields: rule_fields,
        });
    }
    rules
}

/// The purpose of a disclosure rule: declared, and a contract purpose, since
/// only those may release data without the person's permission.
fn rule_purpose<'p>(
    text: &Spanned<String>,
    purposes: &'p BTreeMap<PurposeCode, Purpose>,
    problems: &mut Problems,
) -> Option<&'p Purpose> {
    let code = match PurposeCode::parse(text.get_ref().clone()) {
        Ok(code) => code,
        Err(why) => {
            problems.at(
                text.span(),
                format!("disclosure rule purpose `{}` {why}", text.get_ref()),
            );
            return None;
        }
    };
    let problem = match purposes.get(&code) {
        Some(p) if p.basis == Basis::Contract => return Some(p),
        Some(_) => format!(
            "disclosure rule names purpose `{code}`, but only a contract purpose \
             may release data without the person's permission"
        ),
        None => format!(
            "disclosure rule names purpose `{code}`, which is not declared under [[purposes]]"
        ),
    };
    problems.at(text.span(), problem);
    None
}

/// `[concerns]`: deadlines of at least a day, acknowledging before resolving.
fn check_concerns(raw: Option<&Spanned<RawConcerns>>, problems: &mut Problems) -> ConcernDeadlines {
    let Some(raw) = raw else {
        return ConcernDeadlines::default();
    };
    let (ack, resolve) = (
        raw.get_ref().acknowledge_within_days,
        raw.get_ref().resolve_within_days,
    );
    // With acknowledging at least a day, resolving no sooner is too.
    if ack == 0 || ack > resolve {
        problems.at(
            raw.span(),
            format!(
                "[concerns] deadlines must be at least 1 day, and acknowledging ({ack}) \
                 cannot take longer than resolving ({resolve})"
            ),
        );
    }
    ConcernDeadlines {
        acknowledge: chrono::Duration::days(ack.into()),
        resolve: chrono::Duration::days(resolve.into()),
    }
}

/// Maps byte offsets to 1-based line numbers.
pub(super) struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub(super) fn new(text: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self { starts }
    }

    pub(super) fn line_of(&self, offset: usize) -> usize {
        self.starts.partition_point(|&start| start <= offset)
    }
}

#[cfg(test)]
mod tests;
