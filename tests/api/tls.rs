//! TLS on the gRPC and public HTTP listeners, mTLS, and new certificates
//! without a restart. The certificates are made at run time (`pki.rs`).

use std::time::{Duration, Instant};

use consentd::grpc::pb::{
    self, consent_service_client::ConsentServiceClient,
    disclosure_service_client::DisclosureServiceClient,
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{
    cli::{spawn_serve_with, terminate_and_wait},
    disclosure::{courier_request, put_request},
    helpers::{TestApp, fresh_database, policy_path, registration, spawn_app_with},
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

/// Shipping and the mailer authenticate by certificate; `crm` by token
/// (over its own certificate, which names no caller) to set up the data.
const CERT_CALLERS: &str = r#"
[[callers]]
id = "shipping"
cert_subject = "CN=shipping"
rpcs = ["consent.v1.DisclosureService/RequestDisclosure"]
purposes = ["order_delivery"]
recipients = ["express-courier"]

[[callers]]
id = "marketing-mailer"
cert_subject = "CN=marketing-mailer"
rpcs = ["consent.v1.ConsentService/Check", "consent.v1.ConsentService/BatchCheck",
        "consent.v1.ConsentService/WatchChanges", "consent.v1.ConsentService/CreateUnsubscribeLinks"]
purposes = ["promotional_mail"]

[[callers]]
id = "crm"
token_sha256 = "TOKEN_SHA256"
rpcs = ["consent.v1.ConsentService/RegisterSubject", "consent.v1.DisclosureService/PutPersonalData"]
purposes = ["order_delivery", "partner_offers"]
"#;

/// A server under mTLS with [`CERT_CALLERS`], and C-1042 registered with
/// the name and address a courier may receive.
async fn mtls_app_with_callers(pki: &Pki) -> TestApp {
    use sha2::{Digest as _, Sha256};
    let hash: [u8; 32] = Sha256::digest("crm-token").into();
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    let file = pki.dir.join("callers.toml");
    std::fs::write(&file, CERT_CALLERS.replace("TOKEN_SHA256", &hex)).unwrap();
    let app = spawn_app_with(|args| {
        args.tls_cert = Some(pki.cert_file());
        args.tls_key = Some(pki.key_file());
        args.tls_client_ca = Some(pki.ca_file());
        args.callers = Some(file);
    })
    .await;

    let channel = channel_as(&app, pki, &pki.ca.client("crm-host")).await;
    ConsentServiceClient::new(channel.clone())
        .register_subject(as_crm(registration("C-1042")))
        .await
        .unwrap();
    let mut disclosures = DisclosureServiceClient::new(channel);
    for (field, value) in [("name", "Wang Xiaoming"), ("postal_address", "1 Long Road")] {
        let put = put_request("C-1042", field, value, &["order_delivery"]);
        disclosures.put_personal_data(as_crm(put)).await.unwrap();
    }
    app
}

fn as_crm<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", "Bearer crm-token".parse().unwrap());
    request
}

/// A gRPC channel that presents `identity` as its client certificate.
async fn channel_as(app: &TestApp, pki: &Pki, identity: &Pem) -> Channel {
    Channel::from_shared(format!("https://{}", app.grpc_addr))
        .unwrap()
        .tls_config(client_tls(&pki.ca.cert_pem, Some(identity)))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_shipping_certificate_can_request_a_courier_disclosure() {
    let pki = Pki::new();
    let app = mtls_app_with_callers(&pki).await;
    let channel = channel_as(&app, &pki, &pki.shipping).await;
    let answer = DisclosureServiceClient::new(channel)
        .request_disclosure(courier_request("C-1042", &["name", "postal_address"]))
        .await
        .expect("shipping, authenticated by its certificate, may ask")
        .into_inner();
    assert_eq!(answer.status(), pb::DisclosureStatus::Released);
    let requested_by: String = app
        .db
        .query_one("SELECT requested_by FROM disclosures", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        requested_by, "shipping",
        "the certificate's caller is the actor"
    );
}

#[tokio::test]
async fn the_mailer_certificate_cannot_request_a_courier_disclosure() {
    let pki = Pki::new();
    let app = mtls_app_with_callers(&pki).await;
    let channel = channel_as(&app, &pki, &pki.mailer).await;
    let status = DisclosureServiceClient::new(channel)
        .request_disclosure(courier_request("C-1042", &["name", "postal_address"]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(app.count("disclosures").await, 0);
}
