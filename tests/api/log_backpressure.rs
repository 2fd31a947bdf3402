//! A `consentd serve` whose log reader stalls keeps answering: log lines
//! wait in a bounded buffer, and past it are dropped and counted on
//! /metrics, never waited for.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    process::{Command, Stdio},
    time::Duration,
};

use consentd::grpc::pb::consent_service_client::ConsentServiceClient;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tokio::task::JoinSet;

use crate::helpers::{
    check_request, fresh_database, http_get, policy_path, registration, test_state_dir, wait_ready,
};

/// Each call logs one access line of some 150 bytes: 12,000 of them are
/// more than the pipe (64 KiB) and the server's log buffer (1 MiB) hold.
const CALLS: usize = 12_000;
const IN_FLIGHT: usize = 32;

/// Kills the server if the test fails before stopping it: a server whose
/// log nobody reads would otherwise outlive the test.
/// Disarmed once the server has been waited for.
struct KillOnDrop(Option<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

#[tokio::test]
async fn a_stalled_log_reader_costs_dropped_lines_not_stalled_calls() {
    let db = fresh_database().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_consentd"))
        .env("CONSENTD_STATE_DIR", test_state_dir())
        // Successful checks log at debug: this server logs every one.
        .env("RUST_LOG", "info,consentd::grpc::observe=debug")
        .args(["serve", "--database-url", &db.db_url])
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args(["--admin-addr", "127.0.0.1:0"])
        .args(["--rate-limit-per-caller", "1000000"])
        .args(["--rate-limit-burst", "1000000"])
        .arg("--policy")
        .arg(policy_path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut killer = KillOnDrop(Some(child.id()));
    // Read until it serves, then nothing more until the end.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let (grpc_addr, admin_addr) = loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "serve exited");
        if let Some((_, rest)) = line.split_once("serving gRPC on ") {
            let words: Vec<&str> = rest.split_whitespace().collect();
            break (words[0].to_string(), words[8].to_string());
        }
    };
    let admin: std::net::SocketAddr = admin_addr.parse().unwrap();
    wait_ready(admin).await;

    let mut client = ConsentServiceClient::connect(format!("http://{grpc_addr}"))
        .await
        .unwrap();
    client.register_subject(registration("C-1")).await.unwrap();
    let mut callers = JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let mut client = client.clone();
        callers.spawn(async move {
            for _ in 0..CALLS / IN_FLIGHT {
                client
                    .check(check_request("C-1", "promotional_mail", "email"))
                    .await
                    .unwrap();
            }
        });
    }
    tokio::time::timeout(Duration::from_secs(120), callers.join_all())
        .await
        .expect("every call is answered while nobody reads the log");
    drop(client);

    let (_, body) = http_get(admin, "/metrics").await;
    let dropped: usize = body
        .lines()
        .find_map(|l| l.strip_prefix("consentd_log_lines_dropped_total "))
        .unwrap_or_else(|| panic!("no dropped-lines counter in:\n{body}"))
        .parse()
        .unwrap();
    assert!(dropped > 0, "the buffer filled, so lines were dropped");

    // Read again: the server then writes out what waited, and stops.
    let reader = std::thread::spawn(move || {
        let mut rest = String::new();
        stderr.read_to_string(&mut rest).unwrap();
        rest
    });
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    killer.0 = None;
    let rest = reader.join().unwrap();
    assert!(status.success(), "serve exited with {status}");
    let logged = rest.lines().filter(|l| l.contains("rpc finished")).count();
    assert_eq!(
        logged + dropped,
        CALLS + 1, // and the registration
        "every call's line was either written whole or counted as dropped"
    );
}
