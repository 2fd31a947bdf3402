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
