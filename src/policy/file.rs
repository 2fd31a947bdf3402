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

use super::concern::ConcernDeadlines;
use crate::domain::{FieldName, PurposeCode, RecipientId};

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

/// What kind of third party a recipient is. The rules differ by kind: a
/// courier may get delivery data (R6), an authority only on a legal basis
/// (R7), and everyone else needs the person's permission (R5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Courier,
    Processor,
    Partner,
    Authority,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Courier => "courier",
            Category::Processor => "processor",
            Category::Partner => "partner",
            Category::Authority => "authority",
        }
    }
}

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
    version: String,
    concern_deadlines: ConcernDeadlines,
    fields: BTreeMap<FieldName, FieldDef>,
    purposes: BTreeMap<PurposeCode, Purpose>,
    recipients: BTreeMap<RecipientId, Recipient>,
    disclosure_rules: Vec<DisclosureRule>,
}

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
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Policy, PolicyError> {
        Policy::parse(Path::new("policy.toml"), text)
    }

    fn problems(text: &str) -> Vec<(Option<usize>, String)> {
        parse(text)
            .expect_err("the policy should be refused")
            .problems
            .into_iter()
            .map(|p| (p.line, p.message))
            .collect()
    }

    const GOOD: &str = r#"version = "1"

[[fields]]
id = "name"

[[fields]]
id = "email"

[[purposes]]
id = "promotional_mail"
basis = "opt_out"
fields = ["name", "email"]
refusal_instructions = "Click unsubscribe."
"#;

    #[test]
    fn the_shipped_policy_file_is_valid_and_declares_the_statement_purposes() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/policy.toml");
        let policy = Policy::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let basis = |code: &str| {
            policy
                .purpose(&PurposeCode::parse(code).unwrap())
                .map(|p| p.basis)
        };
        assert_eq!(basis("order_delivery"), Some(Basis::Contract));
        assert_eq!(basis("customer_support"), Some(Basis::Contract));
        assert_eq!(basis("promotional_mail"), Some(Basis::OptOut));
        assert_eq!(basis("partner_offers"), Some(Basis::Consent));
        let fields: Vec<_> = policy.fields().map(|f| f.name.to_string()).collect();
        assert_eq!(fields, ["email", "name", "phone", "postal_address"]);
        let recipients: Vec<_> = policy
            .recipients()
            .map(|r| (r.id.to_string(), r.category))
            .collect();
        assert_eq!(
            recipients,
            [
                ("express-courier".to_string(), Category::Courier),
                ("public-security".to_string(), Category::Authority),
                ("travel-partner".to_string(), Category::Partner),
            ]
        );
        let delivery = PurposeCode::parse("order_delivery").unwrap();
        let rule = policy
            .disclosure_rule(Category::Courier, &delivery)
            .expect("the courier rule");
        let fields: Vec<_> = rule.fields.iter().map(|f| f.as_str()).collect();
        assert_eq!(fields, ["name", "postal_address"]);
        let purpose = policy.purpose(&delivery).unwrap();
        assert_eq!(
            purpose
                .max_age_days
                .get(&FieldName::parse("postal_address").unwrap()),
            Some(&365)
        );
    }

    const RECIPIENTS: &str = r#"
[[recipients]]
id = "courier-a"
name = "A"
category = "courier"
contact = "a@example.com"

[[disclosure_rules]]
category = "courier"
purpose = "delivery"
fields = ["name"]
"#;

    fn with_delivery() -> String {
        format!(
            "{GOOD}\n[[purposes]]\nid = \"delivery\"\nbasis = \"contract\"\nfields = [\"name\"]\n{RECIPIENTS}"
        )
    }

    #[test]
    fn recipients_and_a_courier_rule_load() {
        let policy = parse(&with_delivery()).unwrap_or_else(|e| panic!("{e}"));
        let courier = policy
            .recipient(&RecipientId::parse("courier-a").unwrap())
            .unwrap();
        assert_eq!(
            (courier.name.as_str(), courier.category),
            ("A", Category::Courier)
        );
    }

    #[test]
    fn bad_recipients_are_refused_with_their_lines() {
        let text = with_delivery();
        let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;

        let unknown = text.replace(
            "category = \"courier\"\ncontact",
            "category = \"carrier\"\ncontact",
        );
        let found = problems(&unknown);
        let line = unknown.lines().position(|l| l.contains("carrier")).unwrap() + 1;
        assert_eq!(found[0].0, Some(line));
        assert!(
            found[0].1.contains("unknown category `carrier`"),
            "{}",
            found[0].1
        );

        let duplicate = format!(
            "{text}\n[[recipients]]\nid = \"courier-a\"\nname = \"B\"\ncategory = \"partner\"\ncontact = \"b\"\n"
        );
        let found = problems(&duplicate);
        let first = line_of("id = \"courier-a\"");
        assert_eq!(found.len(), 1);
        assert!(
            found[0].1.contains(&format!(
                "duplicate recipient id `courier-a` (first declared on line {first})"
            )),
            "{}",
            found[0].1
        );

        let nameless = text.replace("name = \"A\"\n", "");
        let found = problems(&nameless);
        assert_eq!(found[0].0, Some(first));
        assert!(found[0].1.contains("recipient `courier-a` has no name"));

        let bad_rule = text.replace(
            "purpose = \"delivery\"\nfields = [\"name\"]",
            "purpose = \"delivery\"\nfields = [\"email\"]",
        );
        let found = problems(&bad_rule);
        assert!(
            found[0].1.contains("disclosure rule lists field `email`"),
            "{}",
            found[0].1
        );
    }

    #[test]
    fn require_fresh_without_a_maximum_age_is_refused() {
        let text = GOOD.replace(
            "refusal_instructions = \"Click unsubscribe.\"\n",
            "refusal_instructions = \"Click unsubscribe.\"\nrequire_fresh = true\n",
        );
        let found = problems(&text);
        assert_eq!(found[0].0, Some(14));
        assert!(
            found[0].1.contains("require_fresh but no max_age_days"),
            "{}",
            found[0].1
        );
        let text = GOOD.replace(
            "refusal_instructions = \"Click unsubscribe.\"\n",
            "refusal_instructions = \"Click unsubscribe.\"\nmax_age_days = { phone = 3 }\n",
        );
        assert!(problems(&text)[0].1.contains("max_age_days for `phone`"));
    }

    #[test]
    fn a_valid_policy_loads() {
        let policy = parse(GOOD).unwrap();
        assert_eq!(policy.version(), "1");
        let purpose = policy
            .purpose(&PurposeCode::parse("promotional_mail").unwrap())
            .unwrap();
        assert_eq!(
            purpose.refusal_instructions.as_deref(),
            Some("Click unsubscribe.")
        );
    }

    #[test]
    fn an_opt_out_purpose_without_instructions_is_refused_with_its_line() {
        let text = GOOD.replace("refusal_instructions = \"Click unsubscribe.\"\n", "");
        assert_eq!(
            problems(&text),
            [(
                Some(10),
                "purpose `promotional_mail` has basis opt_out but no refusal_instructions: \
                 a secondary use must tell people how to refuse it"
                    .to_string()
            )]
        );
    }

    #[test]
    fn a_purpose_listing_an_undeclared_field_is_refused_with_its_line() {
        let text = GOOD.replace("[\"name\", \"email\"]", "[\"name\", \"fax\"]");
        let found = problems(&text);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, Some(12));
        assert!(
            found[0].1.contains("`fax`, which is not declared"),
            "{}",
            found[0].1
        );
    }

    #[test]
    fn duplicate_ids_are_refused_naming_both_lines() {
        let text = format!("{GOOD}\n[[fields]]\nid = \"name\"\n");
        let found = problems(&text);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, Some(16));
        assert!(
            found[0]
                .1
                .contains("duplicate field id `name` (first declared on line 4)")
        );

        let text = format!(
            "{GOOD}\n[[purposes]]\nid = \"promotional_mail\"\nbasis = \"contract\"\nfields = [\"name\"]\n"
        );
        let found = problems(&text);
        assert_eq!(found[0].0, Some(16));
        assert!(
            found[0]
                .1
                .contains("duplicate purpose id `promotional_mail` (first declared on line 10)")
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = GOOD
            .replace("refusal_instructions = \"Click unsubscribe.\"\n", "")
            .replace("\"email\"]", "\"fax\"]");
        assert_eq!(problems(&text).len(), 2);
    }

    #[test]
    fn syntax_errors_and_unknown_keys_name_their_line() {
        let found = problems("version = \"1\"\n[[purposes]\n");
        assert_eq!(found[0].0, Some(2));
        let found =
            problems(&GOOD.replace("basis = \"opt_out\"", "basis = \"opt_out\"\nbasis_typo = 1"));
        assert_eq!(found[0].0, Some(12));
        assert!(found[0].1.contains("basis_typo"), "{}", found[0].1);
        let found = problems(&GOOD.replace("\"opt_out\"", "\"optout\""));
        assert_eq!(found[0].0, Some(11));
    }

    #[test]
    fn the_error_message_names_file_and_line() {
        let text = GOOD.replace("[\"name\", \"email\"]", "[\"name\", \"fax\"]");
        let message = parse(&text).unwrap_err().to_string();
        assert!(
            message.contains("policy.toml:12: purpose `promotional_mail` lists field `fax`"),
            "{message}"
        );
    }

    #[test]
    fn concern_deadlines_come_from_the_policy_and_are_checked() {
        let policy = parse(&format!(
            "{GOOD}\n[concerns]\nacknowledge_within_days = 3\nresolve_within_days = 10\n"
        ))
        .unwrap();
        assert_eq!(
            policy.concern_deadlines().acknowledge,
            chrono::Duration::days(3)
        );
        assert_eq!(
            policy.concern_deadlines().resolve,
            chrono::Duration::days(10)
        );
        assert_eq!(
            parse(GOOD).unwrap().concern_deadlines(),
            ConcernDeadlines::default()
        );
        let found = problems(&format!(
            "{GOOD}\n[concerns]\nacknowledge_within_days = 20\nresolve_within_days = 10\n"
        ));
        assert_eq!(found[0].0, Some(15));
        assert!(
            found[0].1.contains("cannot take longer than resolving"),
            "{}",
            found[0].1
        );
    }

    #[test]
    fn a_missing_file_is_a_clear_error() {
        let message = Policy::load(Path::new("/nonexistent/policy.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("/nonexistent/policy.toml: cannot read the file"),
            "{message}"
        );
    }
}
