//! Certificates made at run time for the TLS tests: a CA, server
//! certificates for 127.0.0.1/localhost, and client certificates, written
//! as PEM files the way an operator would provide them.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio_rustls::{
    TlsConnector,
    client::TlsStream,
    rustls::{
        ClientConfig, RootCertStore,
        crypto::ring,
        pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _},
    },
};

use crate::cli::{TempDir, tempdir};

/// A certificate and its key, as PEM text.
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// A CA that signs server and client certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert_pem = params.self_signed(&key).unwrap().pem();
        Self {
            issuer: Issuer::new(params, key),
            cert_pem,
        }
    }

    /// A server certificate for 127.0.0.1 and localhost, named `common_name`.
    pub fn server(&self, common_name: &str) -> Pem {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate whose subject is `CN=<common_name>`.
    pub fn client(&self, common_name: &str) -> Pem {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Pem {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// The test PKI: one CA, the server's files, and the two callers' certificates.
pub struct Pki {
    pub ca: Ca,
    pub dir: TempDir,
    pub shipping: Pem,
    pub mailer: Pem,
}

impl Pki {
    pub fn new() -> Self {
        let ca = Ca::new("consentd test CA");
        let dir = tempdir();
        std::fs::write(dir.join("ca.crt"), &ca.cert_pem).unwrap();
        let pki = Self {
            shipping: ca.client("shipping"),
            mailer: ca.client("marketing-mailer"),
            ca,
            dir,
        };
        pki.install_server_cert(&pki.ca.server("consentd-1"));
        pki
    }

    pub fn cert_file(&self) -> PathBuf {
        self.dir.join("tls.crt")
    }

    pub fn key_file(&self) -> PathBuf {
        self.dir.join("tls.key")
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Writes `pem` as the server's certificate and key, each padded to a
    /// fixed size: PEM readers skip text outside the armour, and a renewal
    /// of the same size lets a test tell a SIGHUP reload from a change poll.
    pub fn install_server_cert(&self, pem: &Pem) {
        let padded = |text: &str| format!("{text}{}", "\n".repeat(4096 - text.len()));
        // Written beside and renamed, as a renewal tool would.
        for (text, file) in [(&pem.cert, self.cert_file()), (&pem.key, self.key_file())] {
            let temporary = file.with_extension("new");
            std::fs::write(&temporary, padded(text)).unwrap();
            std::fs::rename(&temporary, &file).unwrap();
        }
    }
}

/// A TLS client trusting `ca_pem`, presenting `identity` when given.
pub fn client_config(ca_pem: &str, identity: Option<&Pem>, alpn: &[u8]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(pem) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(pem.cert.as_bytes())
                    .collect::<Result<_, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(pem.key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

/// Opens a TLS connection to `addr` as `localhost`; the handshake's outcome.
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<tokio::net::TcpStream>> {
    let socket = tokio::net::TcpStream::connect(addr).await?;
    TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), socket)
        .await
}

/// The subject of the certificate a new connection to `addr` is served,
/// offering `alpn` (`h2` for gRPC, `http/1.1` for the public listener).
pub async fn served_subject(addr: SocketAddr, ca_pem: &str, alpn: &[u8]) -> String {
    let stream = tls_connect(addr, client_config(ca_pem, None, alpn))
        .await
        .unwrap();
    let certs = stream.get_ref().1.peer_certificates().unwrap();
    consentd::grpc::cert_subject(certs[0].as_ref()).unwrap()
}
