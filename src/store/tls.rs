//! TLS to PostgreSQL, as libpq's `sslmode` asks.
//!
//! tokio-postgres parses `disable`, `prefer` and `require` only, and refuses
//! `sslrootcert`. So this module takes `sslmode=verify-ca|verify-full` and
//! `sslrootcert` out of the connection string, hands tokio-postgres
//! `require` in their place, and chooses the certificate check itself:
//!
//! | sslmode | encrypted | server certificate checked |
//! |---|---|---|
//! | `disable` | never | - |
//! | `prefer` (the default) | when the server offers it | no (with `sslrootcert`: against it) |
//! | `require` | always | no (with `sslrootcert`: against it, as libpq does) |
//! | `verify-ca` | always | against `sslrootcert` |
//! | `verify-full` | always | against `sslrootcert`, and the host name |

use std::{path::Path, str::FromStr as _, sync::Arc};

use anyhow::Context as _;
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::rustls::{
    self, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{CryptoProvider, ring},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject as _},
};

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Encryption only: libpq's `prefer` and `require` without a root cert.
    None,
    /// Signed by `sslrootcert`, for any host name.
    Ca,
    /// Signed by `sslrootcert`, and naming the host connected to.
    Full,
}

/// A connection string's settings and the TLS connector it asks for.
pub fn connect_config(url: &str) -> anyhow::Result<(tokio_postgres::Config, MakeRustlsConnect)> {
    let (rest, mode, root_cert) = take_tls_params(url);
    let config = tokio_postgres::Config::from_str(&rest).context("invalid database URL")?;
    let check = match mode.as_deref() {
        Some("verify-full") => Check::Full,
        Some("verify-ca") => Check::Ca,
        _ if root_cert.is_some() => Check::Ca,
        _ => Check::None,
    };
    let root_cert = match (check, root_cert) {
        (Check::None, _) => None,
        (_, Some(path)) => Some(path),
        (_, None) => anyhow::bail!(
            "sslmode={} needs sslrootcert=FILE in the database URL: the CA to check the server's certificate against",
            mode.as_deref().unwrap_or("require")
        ),
    };
    Ok((
        config,
        MakeRustlsConnect::new(client_config(check, root_cert.as_deref())?),
    ))
}

/// Takes `sslmode=verify-*` and `sslrootcert` out of a URL or key=value
/// connection string; returns the rest, the mode, and the root cert path.
fn take_tls_params(url: &str) -> (String, Option<String>, Option<String>) {
    let (mut mode, mut root_cert) = (None, None);
    let mut keep = |key: &str, value: &str| match key {
        "sslmode" if value.starts_with("verify-") => {
            mode = Some(value.to_string());
            false
        }
        "sslmode" => {
            mode = Some(value.to_string());
            true
        }
        "sslrootcert" => {
            root_cert = Some(value.to_string());
            false
        }
        _ => true,
    };
    let verified = |pair: &str| pair.starts_with("sslmode=verify-");
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_string(),
            Some((base, query)) => {
                let any_verify = query.split('&').any(verified);
                let mut kept: Vec<&str> = query
                    .split('&')
                    .filter(|pair| {
                        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                        keep(key, value)
                    })
                    .collect();
                if any_verify {
                    kept.push("sslmode=require");
                }
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let any_verify = url.split_whitespace().any(verified);
        let mut kept: Vec<&str> = url
            .split_whitespace()
            .filter(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                keep(key.trim(), value.trim_matches('\''))
            })
            .collect();
        if any_verify {
            kept.push("sslmode=require");
        }
        kept.join(" ")
    };
    (rest, mode, root_cert)
}

fn client_config(check: Check, root_cert: Option<&str>) -> anyhow::Result<ClientConfig> {
    let provider = Arc::new(ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let verifier: Arc<dyn ServerCertVerifier> = match (check, root_cert) {
        (Check::None, _) | (_, None) => Arc::new(EncryptOnly(provider)),
        (check, Some(path)) => {
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots(path)?), provider)
                    .build()
                    .context("cannot check database certificates")?;
            match check {
                Check::Full => webpki,
                _ => Arc::new(AnyName(webpki)),
            }
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

fn roots(path: &str) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(Path::new(path))
        .with_context(|| format!("cannot read sslrootcert {path}"))?;
    for cert in certs {
        roots
            .add(cert.with_context(|| format!("bad PEM in sslrootcert {path}"))?)
            .with_context(|| format!("bad certificate in sslrootcert {path}"))?;
    }
    anyhow::ensure!(!roots.is_empty(), "sslrootcert {path} holds no certificate");
    Ok(roots)
}

/// libpq's `require`: the channel is encrypted, whoever the server is.
/// Signatures are still checked, so the handshake itself is sound.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// libpq's `verify-ca`: the chain must lead to the root cert; the name in
/// the certificate is not compared with the host.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_modes_and_the_root_cert_are_taken_out_of_the_url() {
        let (rest, mode, root) = take_tls_params(
            "postgres://u@db:5432/c?sslmode=verify-full&sslrootcert=/ca.crt&application_name=x",
        );
        assert_eq!(
            rest,
            "postgres://u@db:5432/c?application_name=x&sslmode=require"
        );
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/ca.crt"));

        let (rest, mode, root) = take_tls_params("host=db sslmode=require user=u");
        assert_eq!(rest, "host=db sslmode=require user=u");
        assert_eq!(mode.as_deref(), Some("require"));
        assert_eq!(root, None);

        let (rest, _, root) =
            take_tls_params("host=db sslmode=verify-ca sslrootcert=/ca.crt user=u");
        assert_eq!(rest, "host=db user=u sslmode=require");
        assert_eq!(root.as_deref(), Some("/ca.crt"));
    }

    #[test]
    fn a_verify_mode_without_a_root_cert_is_refused() {
        let Err(error) = connect_config("postgres://u@db/c?sslmode=verify-full") else {
            panic!("verify-full without sslrootcert was accepted");
        };
        assert!(error.to_string().contains("sslrootcert"), "{error}");
        assert!(connect_config("postgres://u@db/c?sslmode=require").is_ok());
        assert!(connect_config("postgres://u@db/c").is_ok());
    }
}
