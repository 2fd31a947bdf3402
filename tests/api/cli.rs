//! The `consentd` binary as a user runs it.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use consentd::{
    grpc::pb::{self, consent_service_client::ConsentServiceClient},
    store::embedded::{Durability, EmbeddedPostgres},
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::helpers::{fresh_database, policy_path, test_state_dir};

mod callers;

mod readme_settings {
    include!("readme_settings.rs");
}

const BIN: &str = env!("CARGO_BIN_EXE_consentd");

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_policy(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("policy.toml");
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

const BROKEN_POLICY: &str = r#"version = "x"

[[fields]]
id = "email"

[[purposes]]
id = "newsletter"
basis = "opt_out"
fields = ["email", "fax"]
"#;

#[test]
fn policy_check_accepts_the_shipped_policy() {
    let (ok, stdout, _) = run(&["policy", "check", policy_path().to_str().unwrap()]);
    assert!(ok);
    assert!(
        stdout.contains("OK, policy version 2026-11-24.2"),
        "{stdout}"
    );
    assert!(
        stdout.contains("purpose promotional_mail (OptOut): name, email, postal_address"),
        "{stdout}"
    );
}

#[test]
fn policy_check_names_file_line_and_problem_for_every_mistake() {
    let dir = tempdir();
    let path = write_policy(&dir, BROKEN_POLICY);
    let (ok, _, stderr) = run(&["policy", "check", &path]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!(
            "{path}:7: purpose `newsletter` has basis opt_out but no refusal_instructions"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{path}:9: purpose `newsletter` lists field `fax`, which is not declared"
        )),
        "{stderr}"
    );
}

#[tokio::test]
async fn serve_refuses_to_start_on_a_broken_policy() {
    let dir = tempdir();
    let path = write_policy(&dir, BROKEN_POLICY);
    let db = fresh_database().await;
    let (ok, _, stderr) = run(&[
        "serve",
        "--policy",
        &path,
        "--database-url",
        &db.db_url,
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
    ]);
    assert!(!ok);
    assert!(stderr.contains(&format!("{path}:9:")), "{stderr}");
}

#[test]
fn help_documents_every_setting_and_its_environment_variable() {
    let (ok, stdout, _) = run(&["serve", "--help"]);
    assert!(ok);
    for needle in [
        "--database-url",
        "CONSENTD_DATABASE_URL",
        "--grpc-addr",
        "CONSENTD_GRPC_ADDR",
        "127.0.0.1:50051",
        "--http-addr",
        "CONSENTD_HTTP_ADDR",
        "127.0.0.1:8080",
        "--policy",
        "CONSENTD_POLICY",
        "deploy/policy.toml",
    ] {
        assert!(
            stdout.contains(needle),
            "serve --help lacks {needle}:\n{stdout}"
        );
    }
    let (ok, stdout, _) = run(&["--help"]);
    assert!(ok);
    for command in ["serve", "migrate", "policy"] {
        assert!(stdout.contains(command), "{stdout}");
    }

    // Both ways: every README row is a serve flag with that variable, shown
    // by --help, and every serve flag is a README row with its variable.
    let readme = readme_settings::rows(include_str!("../../README.md"));
    let flags = serve_flags();
    let (_, help, _) = run(&["serve", "--help"]);
    for row in &readme {
        assert_eq!(
            flags.get(&row.flag),
            Some(&Some(row.variable.clone())),
            "README row {} is a serve flag with {}",
            row.flag,
            row.variable
        );
        let is_flag_line = |l: &str| {
            let l = l.trim_start();
            l.starts_with("--") || (l.starts_with('-') && l.contains(", --"))
        };
        let line = help
            .lines()
            .position(|l| l.split_whitespace().next() == Some(row.flag.as_str()))
            .unwrap_or_else(|| panic!("serve --help lacks {}", row.flag));
        // The flag's entry runs to the next flag.
        let entry: String = help
            .lines()
            .skip(line + 1)
            .take_while(|l| !is_flag_line(l))
            .collect();
        assert!(
            entry.contains(&format!("[env: {}", row.variable)),
            "serve --help shows {} with {}:\n{entry}",
            row.flag,
            row.variable
        );
    }
    for (flag, variable) in &flags {
        let row = readme.iter().find(|row| &row.flag == flag);
        assert!(row.is_some(), "{flag} is in the README settings table");
        assert_eq!(
            variable.as_deref(),
            Some(row.unwrap().variable.as_str()),
            "{flag} has the README's variable"
        );
    }
}

/// `consentd serve`'s long flags (global ones included) and their variables.
fn serve_flags() -> std::collections::BTreeMap<String, Option<String>> {
    use clap::CommandFactory as _;
    let mut command = consentd::settings::Cli::command();
    command.build();
    command
        .find_subcommand("serve")
        .unwrap()
        .get_arguments()
        .filter_map(|arg| {
            let long = arg.get_long()?;
            let variable = arg.get_env().map(|v| v.to_string_lossy().into_owned());
            Some((format!("--{long}"), variable))
        })
        .filter(|(flag, _)| flag != "--help")
        .collect()
}

#[tokio::test]
async fn migrate_brings_an_empty_database_up_to_date_and_is_repeatable() {
    let db = fresh_database().await; // already migrated from the template
    let admin = consentd::store::admin_connect(&db.admin_url).await.unwrap();
    let empty = format!("{}_empty", db.db_name);
    admin
        .batch_execute(&format!("CREATE DATABASE {empty}"))
        .await
        .unwrap();
    let url = consentd::store::with_database(&db.admin_url, &empty).unwrap();
    let (ok, stdout, stderr) = run(&["migrate", "--database-url", &url]);
    assert!(ok, "{stderr}");
    let migrations =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/src/store/migrations"))
            .unwrap()
            .count();
    assert!(
        stdout.contains(&format!("applied {migrations} migration(s)")),
        "{stdout}"
    );
    let (ok, stdout, _) = run(&["migrate", "--database-url", &url]);
    assert!(ok);
    assert!(stdout.contains("applied 0 migration(s)"), "{stdout}");
    admin
        .batch_execute(&format!("DROP DATABASE {empty} WITH (FORCE)"))
        .await
        .unwrap();
}

/// Starts `consentd serve` and waits for the line naming the bound gRPC address.
/// A `consentd serve` process: the child, its gRPC and HTTP addresses, and
/// its log lines.
pub struct Served {
    pub child: Child,
    pub grpc_addr: String,
    pub http_addr: String,
    /// Probes and /metrics.
    pub admin_addr: String,
    pub logs: mpsc::Receiver<String>,
    /// The lines logged before the one saying it serves.
    pub started: Vec<String>,
}

pub fn spawn_serve(args: &[&str]) -> (Child, String, mpsc::Receiver<String>) {
    let served = spawn_serve_with(args, &[]);
    (served.child, served.grpc_addr, served.logs)
}

/// Starts `consentd serve` with extra environment variables, on free ports
/// unless `args` name them.
pub fn spawn_serve_with(args: &[&str], envs: &[(&str, &str)]) -> Served {
    let mut child = Command::new(BIN)
        .env("CONSENTD_STATE_DIR", test_state_dir())
        // Info unless the test asks for another level.
        .env("RUST_LOG", "info")
        .envs(envs.iter().copied())
        .arg("serve")
        .args(args)
        .args(
            ["--grpc-addr", "--http-addr", "--admin-addr"]
                .into_iter()
                .filter(|flag| !args.contains(flag))
                .flat_map(|flag| [flag, "127.0.0.1:0"]),
        )
        .arg("--policy")
        .arg(policy_path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Both streams, so that a test scanning the output sees all of it.
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let out_tx = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = out_tx.send(line);
        }
    });
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    loop {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(90)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve never said it was serving:\n{}", seen.join("\n"));
        };
        if let Some((_, rest)) = line.split_once("serving gRPC on ") {
            // In JSON logs the message ends in a quote, then other fields.
            let message = rest.split('"').next().unwrap_or(rest);
            let words: Vec<&str> = message.split_whitespace().collect();
            wait_ready_blocking(words[8]);
            return Served {
                child,
                grpc_addr: words[0].to_string(),
                http_addr: words[4].to_string(),
                admin_addr: words[8].to_string(),
                logs: rx,
                started: seen,
            };
        }
        seen.push(line);
    }
}

/// Waits (up to 30 s) until `/readyz` on `admin` answers 200: the server
/// has loaded its decision state. Returns either way; a test that expects
/// the server not to become ready asserts that itself.
fn wait_ready_blocking(admin: &str) {
    use std::io::{Read as _, Write as _};
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if let Ok(mut conn) = std::net::TcpStream::connect(admin) {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let request =
                format!("GET /readyz HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
            let mut answer = String::new();
            if conn.write_all(request.as_bytes()).is_ok()
                && conn.read_to_string(&mut answer).is_ok()
                && answer.starts_with("HTTP/1.1 200")
            {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Async, so that this test's runtime keeps running the client side of any
/// open connection while the server drains it.
pub async fn terminate_and_wait(mut child: Child, logs: &mpsc::Receiver<String>) -> Vec<String> {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    // The reader thread may still be forwarding the last lines: read until
    // it sees the end of the pipe.
    let mut lines = Vec::new();
    while let Ok(line) = logs.recv_timeout(Duration::from_secs(5)) {
        lines.push(line);
    }
    assert!(
        status.success(),
        "serve exited with {status}:\n{}",
        lines.join("\n")
    );
    lines
}

async fn register_and_check(addr: &str) -> pb::CheckResponse {
    let mut client = ConsentServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    client
        .register_subject(crate::helpers::registration("C-1042"))
        .await
        .unwrap();
    client
        .check(pb::CheckRequest {
            subject_id: "C-1042".into(),
            purpose: "promotional_mail".into(),
            field: "email".into(),
            consistency: None,
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn serve_runs_against_a_database_url_and_stops_cleanly_on_sigterm() {
    let db = fresh_database().await;
    let (child, addr, logs) = spawn_serve(&["--database-url", &db.db_url]);
    let answer = register_and_check(&addr).await;
    assert_eq!(answer.decision(), pb::Decision::Allow);
    let lines = terminate_and_wait(child, &logs).await;
    assert!(
        lines.iter().any(|l| l.contains("consentd stopped")),
        "{}",
        lines.join("\n")
    );
}

/// The embedded default: nothing answers at the local server URL, so serve
/// starts its own cluster, creates and migrates the database, serves, and
/// stops the cluster at shutdown.
#[tokio::test]
async fn serve_starts_a_private_cluster_when_no_postgres_answers() {
    let dir = tempdir();
    let data_dir = dir.join("pgdata");
    let (child, addr, logs) = spawn_serve(&[
        "--local-server-url",
        "postgres://postgres@127.0.0.1:1/postgres",
        "--pg-data-dir",
        data_dir.to_str().unwrap(),
    ]);
    let answer = register_and_check(&addr).await;
    assert_eq!(answer.decision(), pb::Decision::Allow);
    assert!(data_dir.join("PG_VERSION").exists());
    assert!(
        data_dir.join("postmaster.pid").exists(),
        "the cluster runs while serving"
    );
    terminate_and_wait(child, &logs).await;
    assert!(
        !data_dir.join("postmaster.pid").exists(),
        "the cluster stopped with the server"
    );
}

#[tokio::test]
async fn the_private_cluster_starts_again_on_an_existing_data_directory() {
    let dir = tempdir();
    let data_dir = dir.join("pgdata");
    let first = EmbeddedPostgres::start(&data_dir, Durability::Ephemeral)
        .await
        .unwrap();
    let client = consentd::store::admin_connect(&first.admin_url())
        .await
        .unwrap();
    client
        .batch_execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)")
        .await
        .unwrap();
    drop(client);
    first.stop();

    let second = EmbeddedPostgres::start(&data_dir, Durability::Ephemeral)
        .await
        .unwrap();
    let client = consentd::store::admin_connect(&second.admin_url())
        .await
        .unwrap();
    let kept: i32 = client
        .query_one("SELECT x FROM kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 7);
}

/// A directory under the system temp dir that the `postgres` user can enter
/// (when tests run as root the private cluster runs as that user). Removed
/// when dropped.
pub struct TempDir(std::path::PathBuf);

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn tempdir() -> TempDir {
    let dir = std::env::temp_dir().join(format!("consentd-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

/// CONSENTD_* variables configure a real `consentd serve`: the database,
/// the public URL of links, and the log format.
#[tokio::test]
async fn environment_variables_configure_a_real_server() {
    let db = fresh_database().await;
    let served = spawn_serve_with(
        &[],
        &[
            ("CONSENTD_DATABASE_URL", db.db_url.as_str()),
            ("CONSENTD_PUBLIC_URL", "https://mail.example.org"),
            ("CONSENTD_LOG_FORMAT", "json"),
        ],
    );
    register_and_check(&served.grpc_addr).await;
    let mut client = ConsentServiceClient::connect(format!("http://{}", served.grpc_addr))
        .await
        .unwrap();
    let link = client
        .create_unsubscribe_links(pb::CreateUnsubscribeLinksRequest {
            purpose: "promotional_mail".into(),
            field: String::new(),
            campaign: "c".into(),
            subject_ids: vec!["C-1042".into()],
        })
        .await
        .unwrap()
        .into_inner()
        .links
        .remove(0);
    assert!(
        link.url.starts_with("https://mail.example.org/u/"),
        "{}",
        link.url
    );
    let rows: i64 = consentd::store::admin_connect(&db.db_url)
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM subjects WHERE subject_id = 'C-1042'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1, "the server used CONSENTD_DATABASE_URL");
    let lines = terminate_and_wait(served.child, &served.logs).await;
    assert!(
        lines
            .iter()
            .any(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "JSON log lines:\n{}",
        lines.join("\n")
    );
}
