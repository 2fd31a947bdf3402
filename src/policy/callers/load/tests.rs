//! Tests of the callers file loader.

use proptest::prelude::*;
use sha2::{Digest as _, Sha256};

use super::*;

fn hex_sha256(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn parse_with(text: &str, known: Known<'_>) -> Result<Callers, CallersError> {
    Callers::parse(Path::new("callers.toml"), text, known)
}

/// Each problem as (line, message), in line order.
fn problems_with(text: &str, known: Known<'_>) -> Vec<(Option<usize>, String)> {
    parse_with(text, known)
        .expect_err("the file should be refused")
        .problems
        .into_iter()
        .map(|p| (p.line, p.message))
        .collect()
}

fn problems(text: &str) -> Vec<(Option<usize>, String)> {
    problems_with(text, Known::default())
}

fn good() -> String {
    format!(
        r#"[[callers]]
id = "marketing-mailer"
token_sha256 = "{}"
rpcs = ["consent.v1.ConsentService/Check", "consent.v1.ConsentService/WatchChanges"]
purposes = ["promotional_mail"]

[[callers]]
id = "legal-officer-li"
token_sha256 = "{}"
rpcs = ["consent.v1.DisclosureService/*"]
recipients = ["public-security"]
legal_bases = ["LEGAL_PROCESS", "EMERGENCY_SAFETY"]

[[callers]]
id = "shipping"
cert_subject = "CN=shipping"
rpcs = ["consent.v1.DisclosureService/RequestDisclosure"]
purposes = ["order_delivery"]
recipients = ["express-courier"]
"#,
        hex_sha256("mailer-token"),
        hex_sha256("li-token").to_uppercase()
    )
}

#[test]
fn a_valid_file_loads_every_caller_with_its_credential_and_permissions() {
    let callers = parse_with(&good(), Known::default()).unwrap_or_else(|e| panic!("{e}"));
    let ids: Vec<_> = callers.iter().map(|c| c.id.to_string()).collect();
    assert_eq!(ids, ["marketing-mailer", "legal-officer-li", "shipping"]);

    let mailer = callers.by_token("mailer-token").unwrap();
    assert_eq!(mailer.id.as_str(), "marketing-mailer");
    assert_eq!(mailer.rpcs.len(), 2);
    assert_eq!(
        mailer.purposes,
        [PurposeCode::parse("promotional_mail").unwrap()]
    );
    assert!(mailer.recipients.is_empty() && mailer.legal_bases.is_empty());

    // Upper-case hex names the same hash.
    let li = callers.by_token("li-token").unwrap();
    assert_eq!(
        li.legal_bases,
        [LegalBasis::LegalProcess, LegalBasis::EmergencySafety]
    );
    assert_eq!(
        li.recipients,
        [RecipientId::parse("public-security").unwrap()]
    );

    let shipping = callers.by_cert_subject("CN=shipping").unwrap();
    assert_eq!(shipping.id.as_str(), "shipping");
    assert_eq!(
        shipping.credential,
        Credential::CertSubject("CN=shipping".into())
    );
}

#[test]
fn every_problem_of_a_file_is_reported_at_once_with_its_line() {
    let token = hex_sha256("t");
    let text = format!(
        r#"[[callers]]
id = "a"
token_sha256 = "{token}"
rpcs = ["consent.v1.ConsentService/Check"]

[[callers]]
id = "a"
token_sha256 = "{other}"
rpcs = ["consent.v1.ConsentService/Check"]

[[callers]]
id = "b"
token_sha256 = "{token}"
rpcs = ["consent.v1.ConsentService/Check"]

[[callers]]
id = "c"
token_sha256 = "not-hex"
rpcs = ["consent.v1.ConsentService/Check"]

[[callers]]
id = "d"
token_sha256 = "{other}"
cert_subject = "CN=d"
rpcs = ["consent.v1.ConsentService/Check"]

[[callers]]
id = "e"
rpcs = ["consent.v1.ConsentService/Check"]

[[callers]]
id = "f"
cert_subject = "CN=f"
rpcs = ["/consent.v1.ConsentService/Check", "consent.v1.ConsentService/*", "Check", "consent.v1.ConsentService/*"]
legal_bases = ["legal_process", "EMERGENCY_SAFETY"]
purposes = ["Promotional Mail"]

[[callers]]
id = "g"
cert_subject = "CN=f"

[[callers]]
id = "Not A Code"
cert_subject = "CN=x"
rpcs = ["consent.v1.ConsentService/Check"]
"#,
        other = hex_sha256("other")
    );
    let found = problems(&text);
    let expected: &[(usize, &str)] = &[
        (7, "duplicate caller id `a` (first declared on line 2)"),
        (
            13,
            "caller `b` has the same token_sha256 as caller `a` (line 2)",
        ),
        (18, "caller `c`: token_sha256 must be 64 hex digits"),
        (
            22,
            "caller `d` must have exactly one of token_sha256 and cert_subject",
        ),
        (
            28,
            "caller `e` must have exactly one of token_sha256 and cert_subject",
        ),
        (
            34,
            "caller `f`: rpc `/consent.v1.ConsentService/Check` must be `package.Service/Method` or `package.Service/*` (without the leading '/')",
        ),
        (34, "caller `f`: rpc `Check` must be"),
        (34, "caller `f` lists `consent.v1.ConsentService/*` twice"),
        (
            35,
            "caller `f`: unknown legal basis `legal_process` (known: LEGAL_PROCESS, PROTECT_RIGHTS_PROPERTY, EMERGENCY_SAFETY)",
        ),
        (
            36,
            "caller `f`: purpose `Promotional Mail` must start with a lower-case letter",
        ),
        (39, "caller `g` lists no rpcs"),
        (
            40,
            "caller `g` has the same cert_subject as caller `f` (line 32)",
        ),
        (
            43,
            "caller id `Not A Code` must start with a lower-case letter",
        ),
    ];
    assert_eq!(found.len(), expected.len(), "{found:#?}");
    for ((line, message), (want_line, want)) in found.iter().zip(expected) {
        assert_eq!(*line, Some(*want_line), "{message}");
        assert!(
            message.starts_with(want),
            "{message:?} should start with {want:?}"
        );
    }
}

#[test]
fn unknown_keys_are_refused_with_their_line() {
    let text = format!(
        "[[callers]]\nid = \"a\"\ntoken_sha256 = \"{}\"\nrpcs = [\"x.S/M\"]\nrpc = [\"x.S/N\"]\n",
        hex_sha256("t")
    );
    let found = problems(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, Some(5));
    assert!(found[0].1.contains("unknown field `rpc`"), "{found:?}");

    let found = problems("[[caller]]\nid = \"a\"\n");
    assert_eq!(found[0].0, Some(1));
    assert!(found[0].1.contains("unknown field `caller`"), "{found:?}");
}

#[test]
fn a_file_that_names_no_caller_is_refused() {
    assert_eq!(
        problems("# nobody yet\n"),
        [(
            None,
            "the file names no [[callers]]: nobody could call".to_string()
        )]
    );
}

#[test]
fn purposes_recipients_and_rpcs_are_checked_against_what_the_server_knows() {
    let policy = Policy::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/policy.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let methods = [
        "consent.v1.ConsentService/Check".to_string(),
        "consent.v1.ConsentService/WatchChanges".to_string(),
        "consent.v1.DisclosureService/RequestDisclosure".to_string(),
    ];
    let known = Known {
        policy: Some(&policy),
        rpcs: Some(&methods),
    };
    // What the policy declares and the server serves, wildcard included.
    parse_with(&good(), known).unwrap_or_else(|e| panic!("{e}"));

    let text = r#"[[callers]]
id = "a"
cert_subject = "CN=a"
rpcs = ["consent.v1.ConsentService/Chek", "consent.v1.ConcernService/*", "consent.v1.ConsentService/Check"]
purposes = ["promotional_mail", "telemarketing"]
recipients = ["express-courier", "data-broker"]
"#;
    let found = problems_with(text, known);
    let expected = [
        (
            Some(4),
            "caller `a`: rpc `consent.v1.ConsentService/Chek` matches no method this server serves",
        ),
        (
            Some(4),
            "caller `a`: rpc `consent.v1.ConcernService/*` matches no method this server serves",
        ),
        (
            Some(5),
            "caller `a`: purpose `telemarketing` is not declared under [[purposes]] of the policy",
        ),
        (
            Some(6),
            "caller `a`: recipient `data-broker` is not declared under [[recipients]] of the policy",
        ),
    ];
    let expected: Vec<_> = expected.iter().map(|(l, m)| (*l, m.to_string())).collect();
    assert_eq!(found, expected);
    // Checked on its own, the same file has nothing wrong.
    parse_with(text, Known::default()).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn the_error_names_the_file_and_line_of_each_problem() {
    let error = parse_with(
        "[[callers]]\nid = \"a\"\nrpcs = [\"x.S/M\"]\n",
        Known::default(),
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "callers file callers.toml has 1 problem:\n  callers.toml:2: caller `a` must have \
         exactly one of token_sha256 and cert_subject\n"
    );
}

/// One `[[callers]]` entry with each key present or not and values good or
/// bad, so random files get past the TOML parser into the checks.
fn caller_entry() -> impl Strategy<Value = String> {
    use proptest::option::{of, weighted};
    (
        weighted(0.9, "id = \"([a-z][a-z-]{0,5}|[a-zA-Z -]{0,6})\"\n"),
        of("token_sha256 = \"([0-9a-fA-FZ]{64}|[0-9a-fé]{0,65})\"\n"),
        of("cert_subject = \"[A-Z=, é\t]{0,8}\"\n"),
        of(prop_oneof![
            "rpcs = \\[\"[a-zA-Z./*é]{0,16}\"\\]\n",
            Just("rpcs = [\"consent.v1.DisclosureService/*\"]\n".to_string()),
        ]),
        of("purposes = \\[\"[a-z_ ]{0,8}\", \"[a-z_]{0,4}\"\\]\n"),
        of("recipients = \\[\"[a-z-]{0,8}\"\\]\n"),
        of("legal_bases = \\[\"[A-Z_]{0,24}\"\\]\n"),
        weighted(0.1, "[ -~\n]{0,12}"),
    )
        .prop_map(|(a, b, c, d, e, f, g, junk)| {
            let lines = [a, b, c, d, e, f, g, junk];
            format!(
                "[[callers]]\n{}",
                lines.into_iter().flatten().collect::<String>()
            )
        })
}

proptest! {
    #[test]
    fn a_token_hash_reads_back_from_hex_in_either_case(hash in any::<[u8; 32]>(), upper in any::<bool>()) {
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        let hex = if upper { hex.to_uppercase() } else { hex };
        prop_assert_eq!(parse_sha256_hex(&hex), Some(hash));
    }

    #[test]
    fn sixty_four_characters_are_a_token_hash_only_when_all_are_hex(text in "[0-9a-fA-Fg-zé+ ]{64}") {
        let all_hex = text.chars().all(|c| c.is_ascii_hexdigit());
        prop_assert_eq!(parse_sha256_hex(&text).is_some(), all_hex && text.len() == 64);
    }

    #[test]
    fn the_loader_never_panics_on_arbitrary_text(text in "\\PC{0,200}") {
        let _ = parse_with(&text, Known::default());
    }

    #[test]
    fn the_loader_never_panics_on_files_made_of_callers_pieces(
        pieces in proptest::collection::vec(caller_entry(), 0..6),
    ) {
        let text = pieces.concat();
        if let Err(error) = parse_with(&text, Known::default()) {
            // Every line it names is a line of the file.
            let lines = text.lines().count().max(1);
            for problem in error.problems {
                prop_assert!(problem.line.is_none_or(|l| l >= 1 && l <= lines + 1));
            }
        }
    }
}
