//! `CONSENTD_*` variables configure `consentd serve`, row by row of the
//! README's settings table, through `consentd check-config`: the same
//! parsed settings `serve` runs with, printed by the real binary.

use std::process::Command;

use crate::helpers::policy_path;

mod readme_settings {
    include!("readme_settings.rs");
}

const BIN: &str = env!("CARGO_BIN_EXE_consentd");

/// A value unlike the default for every documented setting. A new README
/// row without one here fails the test below.
fn sample(flag: &str) -> Option<String> {
    let value = match flag {
        "--database-url" => "postgres://consentd@db.internal:5433/consent",
        "--local-server-url" => "postgres://postgres@127.0.0.2:5433/postgres",
        "--pg-data-dir" => "/srv/consentd/pgdata",
        "--grpc-addr" => "127.0.0.1:50999",
        "--http-addr" => "127.0.0.1:8999",
        "--admin-addr" => "127.0.0.1:8998",
        "--policy" => return Some(policy_path().display().to_string()),
        "--migrate" => "true",
        "--max-connections" => "7",
        "--db-connect-timeout-ms" => "1500",
        "--db-pool-wait-timeout-ms" => "750",
        "--db-statement-timeout-ms" => "20000",
        "--serving-role" => "consent_app",
        "--serving-password-file" => "/run/secrets/serving-password",
        "--read-database-url" => "postgres://consentd@standby.internal:5433/consent",
        "--drain-seconds" => "5",
        "--public-url" => "https://consent.example.org",
        "--unsubscribe-keys-file" => "/run/secrets/unsubscribe.keys",
        "--subject-ref-key-file" => "/run/secrets/subject-ref.key",
        "--data-keys-file" => "/run/secrets/data.keys",
        "--shutdown-timeout-seconds" => "12",
        "--feed-poll-interval-ms" => "250",
        "--max-watch-streams" => "500",
        "--log-format" => "json",
        "--state-dir" => "/srv/consentd/state",
        "--allow-unsafe-durability" => "true",
        "--checkpoint-interval-seconds" => "15",
        "--tls-cert" => "/run/secrets/tls/tls.crt",
        "--tls-key" => "/run/secrets/tls/tls.key",
        "--tls-client-ca" => "/run/secrets/tls/ca.crt",
        "--callers" => "/run/secrets/callers.toml",
        "--insecure-no-auth" => "true",
        "--preference-link-days" => "45",
        "--max-message-bytes" => "1048576",
        "--max-concurrent-calls" => "64",
        "--rate-limit-per-caller" => "50",
        "--rate-limit-burst" => "75",
        "--default-deadline-ms" => "2500",
        "--http2-keepalive-interval-seconds" => "30",
        "--http2-keepalive-timeout-seconds" => "5",
        "--max-concurrent-streams" => "100",
        "--http-header-timeout-seconds" => "3",
        "--http-max-body-bytes" => "4096",
        "--unsubscribe-rate-limit-per-address" => "30",
        _ => return None,
    };
    Some(value.to_string())
}

/// `check-config` run with no flags and only the given environment.
fn check_config(env: &[(&str, &str)]) -> (bool, serde_json::Value, String) {
    let out = Command::new(BIN)
        .arg("check-config")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let settings = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("check-config printed no JSON ({e}): {stderr}"));
    (out.status.success(), settings, stderr)
}

#[test]
fn every_documented_variable_sets_its_setting_and_no_other() {
    let rows = readme_settings::rows(include_str!("../../README.md"));
    let (ok, defaults, stderr) = check_config(&[]);
    assert!(ok, "{stderr}");
    for row in &rows {
        let value = sample(&row.flag)
            .unwrap_or_else(|| panic!("no sample value for {}: add one above", row.flag));
        assert_ne!(
            defaults[&row.flag],
            serde_json::json!(value),
            "{}: the sample must differ from the default",
            row.flag
        );

        let (ok, settings, stderr) = check_config(&[(row.variable.as_str(), value.as_str())]);
        assert!(ok, "{}={value}: {stderr}", row.variable);
        assert_eq!(
            settings[&row.flag],
            serde_json::json!(value),
            "{} sets {}",
            row.variable,
            row.flag
        );
        for other in rows.iter().filter(|other| other.flag != row.flag) {
            assert_eq!(
                settings[&other.flag], defaults[&other.flag],
                "{} leaves {} alone",
                row.variable, other.flag
            );
        }
    }
}

#[test]
fn check_config_hides_passwords_and_refuses_a_bad_policy() {
    let (ok, settings, _) = check_config(&[(
        "CONSENTD_DATABASE_URL",
        "host=db.internal user=consentd password='s3cret pass'",
    )]);
    assert!(ok);
    let shown = settings["--database-url"].as_str().unwrap();
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("db.internal"), "{shown}");

    let (ok, _, stderr) = check_config(&[("CONSENTD_POLICY", "/nonexistent/policy.toml")]);
    assert!(!ok);
    assert!(stderr.contains("/nonexistent/policy.toml"), "{stderr}");
}
