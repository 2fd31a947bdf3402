//! TLS on the gRPC and public HTTP listeners, mTLS, and new certificates
//! without a restart. The certificates are made at run time (`pki.rs`).

use std::time::{Duration, Instant};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{
    cli::{spawn_serve_with, terminate_and_wait},
    helpers::{TestApp, fresh_database, policy_path, spawn_app_with},
    pki::{Ca, Pem, Pki, client_config, served_subject, tls_connect},
};

async fn tls_app(pki: &Pki, mtls: bool) -> TestApp {
    spawn_app_with(|args| {
        args.tls_cert = Some(pki.cert_file());
        args.tls_key = Some(pki.key_file());
        args.tls_client_ca = mtls.then(|| pki.ca_file());
    })
    .await
}

/// TLS settings of a gRPC client that trusts `ca`, with `identity` if given.
fn client_tls(ca: &str, identity: Option<&Pem>) -> ClientTlsConfig {
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    match identity {
        Some(pem) => config.identity(Identity::from_pem(&pem.cert, &pem.key)),
        None => config,
    }
}

/// A health check over a new connection: the error text if anything failed.
async fn health_check(
    addr: std::net::SocketAddr,
    tls: Option<ClientTlsConfig>,
) -> Result<(), String> {
    let endpoint = match tls {
        Some(tls) => Channel::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap(),
        None => Channel::from_shared(format!("http://{addr}")).unwrap(),
    };
    let channel = endpoint
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(drop)
        .map_err(|e| format!("check: {e:?}"))
}

#[tokio::test]
async fn a_plaintext_client_fails_against_the_tls_port_and_a_tls_client_is_served() {
    let pki = Pki::new();
    let app = tls_app(&pki, false).await;
    let plaintext = health_check(app.grpc_addr, None).await;
    assert!(plaintext.is_err(), "plaintext gRPC was served");
    health_check(app.grpc_addr, Some(client_tls(&pki.ca.cert_pem, None)))
        .await
        .expect("a TLS client that trusts the CA is served");
}

#[tokio::test]
async fn the_public_http_listener_serves_tls_only() {
    let pki = Pki::new();
    let app = tls_app(&pki, false).await;
    let request = "GET /u/nonsense HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

    let mut plain = tokio::net::TcpStream::connect(app.http_addr).await.unwrap();
    plain.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plaintext HTTP was answered: {}",
        String::from_utf8_lossy(&answer)
    );

    let config = client_config(&pki.ca.cert_pem, None, b"http/1.1");
    let mut tls = tls_connect(app.http_addr, config).await.unwrap();
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    let _ = tls.read_to_string(&mut answer).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // Probes stay plaintext, on the loopback admin listener.
    assert_eq!(
        crate::helpers::http_get(app.admin_addr, "/healthz").await.0,
        200
    );
}

#[tokio::test]
async fn under_mtls_a_client_needs_a_certificate_the_client_ca_signed() {
    let pki = Pki::new();
    let app = tls_app(&pki, true).await;
    let ca = &pki.ca.cert_pem;

    let anonymous = health_check(app.grpc_addr, Some(client_tls(ca, None))).await;
    assert!(
        anonymous.is_err(),
        "a client without a certificate was served"
    );
    let stranger = Ca::new("another CA").client("shipping");
    let forged = health_check(app.grpc_addr, Some(client_tls(ca, Some(&stranger)))).await;
    assert!(forged.is_err(), "a certificate of another CA was accepted");

    for identity in [&pki.shipping, &pki.mailer] {
        health_check(app.grpc_addr, Some(client_tls(ca, Some(identity))))
            .await
            .expect("a CA-signed client certificate connects");
    }
}

/// Waits up to 10 s for new connections to be served `subject`.
async fn wait_for_subject(addr: std::net::SocketAddr, ca: &str, subject: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if served_subject(addr, ca, b"h2").await == subject {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

#[tokio::test]
async fn a_renewed_certificate_file_reaches_new_connections_without_a_restart() {
    let pki = Pki::new();
    let app = tls_app(&pki, false).await;
    let ca = &pki.ca.cert_pem;
    assert_eq!(
        served_subject(app.grpc_addr, ca, b"h2").await,
        "CN=consentd-1"
    );
    assert_eq!(
        served_subject(app.http_addr, ca, b"http/1.1").await,
        "CN=consentd-1"
    );

    pki.install_server_cert(&pki.ca.server("consentd-2"));
    assert!(
        wait_for_subject(app.grpc_addr, ca, "CN=consentd-2").await,
        "the renewed certificate was never served"
    );
    assert_eq!(
        served_subject(app.http_addr, ca, b"http/1.1").await,
        "CN=consentd-2"
    );
    health_check(app.grpc_addr, Some(client_tls(ca, None)))
        .await
        .expect("served after the reload");
}

#[tokio::test]
async fn sighup_reloads_the_certificate_files() {
    let pki = Pki::new();
    let db = fresh_database().await;
    let (cert, key) = (pki.cert_file(), pki.key_file());
    let served = spawn_serve_with(
        &[
            "--database-url",
            &db.db_url,
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    let addr = served.grpc_addr.parse().unwrap();
    let ca = &pki.ca.cert_pem;
    assert_eq!(served_subject(addr, ca, b"h2").await, "CN=consentd-1");

    // The same size and modification time: only the signal can tell.
    let stamps: Vec<_> = [&cert, &key]
        .map(|file| std::fs::metadata(file).unwrap().modified().unwrap())
        .to_vec();
    pki.install_server_cert(&pki.ca.server("consentd-2"));
    for (file, stamp) in [&cert, &key].into_iter().zip(stamps) {
        let file = std::fs::File::options().write(true).open(file).unwrap();
        file.set_modified(stamp).unwrap();
    }
    tokio::time::sleep(consentd::tls::POLL_INTERVAL * 2).await;
    assert_eq!(
        served_subject(addr, ca, b"h2").await,
        "CN=consentd-1",
        "reloaded without a signal or a visible change"
    );

    kill(Pid::from_raw(served.child.id() as i32), Signal::SIGHUP).unwrap();
    assert!(
        wait_for_subject(addr, ca, "CN=consentd-2").await,
        "SIGHUP did not reload the certificate"
    );
    let logs = terminate_and_wait(served.child, &served.logs).await;
    assert!(
        logs.iter().any(|l| l.contains("TLS files reloaded")),
        "{logs:?}"
    );
}

#[tokio::test]
async fn serve_refuses_a_certificate_without_its_key_and_says_why() {
    let pki = Pki::new();
    let db = fresh_database().await;
    let cert = pki.cert_file();
    let policy = policy_path();
    let base = [
        "serve",
        "--database-url",
        &db.db_url,
        "--policy",
        policy.to_str().unwrap(),
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
    ];
    let stderr = refused(&[&base[..], &["--tls-cert", cert.to_str().unwrap()]].concat()).await;
    assert!(
        stderr.contains("--tls-cert is set but --tls-key is not"),
        "{stderr}"
    );
    let stderr = refused(&[&base[..], &["--tls-key", cert.to_str().unwrap()]].concat()).await;
    assert!(
        stderr.contains("--tls-key is set but --tls-cert is not"),
        "{stderr}"
    );
}

/// Runs `consentd` and returns what it said, asserting that it failed; a
/// server that starts instead is killed after 30 s.
async fn refused(args: &[&str]) -> String {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_consentd"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("serve started instead of refusing")
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}
