//! `consentd callers check` and `consentd callers token`, run as the real
//! binary.

use sha2::{Digest as _, Sha256};

use super::{run, tempdir};
use crate::helpers::policy_path;

fn example_path() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/callers.example.toml").to_string()
}

#[test]
fn callers_check_accepts_the_example_file_and_says_who_may_call_what() {
    let policy = policy_path();
    let (ok, stdout, stderr) = run(&[
        "callers",
        "check",
        &example_path(),
        "--policy",
        policy.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("OK, 6 caller(s)"), "{stdout}");
    assert!(
        stdout.contains("caller shipping (certificate CN=shipping)"),
        "{stdout}"
    );
    assert!(stdout.contains("purposes: promotional_mail"), "{stdout}");
    assert!(!stdout.contains("not checked against a policy"), "{stdout}");
}

#[test]
fn callers_check_names_file_line_and_problem_for_every_mistake() {
    let dir = tempdir();
    let path = dir.join("callers.toml").to_string_lossy().into_owned();
    std::fs::write(
        &path,
        r#"[[callers]]
id = "mailer"
token_sha256 = "abc"
rpcs = ["consent.v1.ConsentService/Chek"]
purposes = ["telemarketing"]
"#,
    )
    .unwrap();
    let policy = policy_path();
    let (ok, stdout, stderr) = run(&[
        "callers",
        "check",
        &path,
        "--policy",
        policy.to_str().unwrap(),
    ]);
    assert!(!ok, "{stdout}");
    for expected in [
        format!("callers file {path} has 3 problems"),
        format!("{path}:3: caller `mailer`: token_sha256 must be 64 hex digits"),
        format!(
            "{path}:4: caller `mailer`: rpc `consent.v1.ConsentService/Chek` matches no method"
        ),
        format!("{path}:5: caller `mailer`: purpose `telemarketing` is not declared"),
    ] {
        assert!(stderr.contains(&expected), "{expected}\n{stderr}");
    }

    // Without --policy the purpose is not judged, but the rest still is.
    let (ok, _, stderr) = run(&["callers", "check", &path]);
    assert!(!ok);
    assert!(stderr.contains("has 2 problems"), "{stderr}");
}

#[test]
fn callers_token_prints_a_new_token_and_the_line_that_lets_exactly_it_in() {
    let token_and_line = || {
        let (ok, stdout, stderr) = run(&["callers", "token"]);
        assert!(ok, "{stderr}");
        let lines: Vec<&str> = stdout.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines.len(), 2, "{stdout}");
        (lines[0].to_string(), lines[1].to_string())
    };
    let (token, line) = token_and_line();
    assert!(token.len() >= 43, "32 random bytes: {token}");
    let hash: String = Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(line, format!("token_sha256 = \"{hash}\""));
    assert_ne!(token_and_line().0, token, "each run makes a new token");

    // The printed line, pasted into a file, admits that token.
    let dir = tempdir();
    let path = dir.join("callers.toml");
    std::fs::write(
        &path,
        format!(
            "[[callers]]\nid = \"mailer\"\n{line}\nrpcs = [\"consent.v1.ConsentService/Check\"]\n"
        ),
    )
    .unwrap();
    let callers = consentd::policy::Callers::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        callers.by_token(&token).map(|c| c.id.as_str()),
        Some("mailer")
    );
}
