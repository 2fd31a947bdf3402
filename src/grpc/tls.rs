//! What the TLS layer tells a handler about its caller.

use tonic::Request;
use x509_parser::prelude::{FromDer as _, X509Certificate};

/// The subject of the client certificate the connection was made with, as
/// `CN=shipping` (RDNs joined by ", " when there are several). `None` over
/// plaintext, or over TLS without `--tls-client-ca`, where no client
/// certificate is asked for. With `--tls-client-ca` the handshake has
/// already verified the certificate against that CA: an unverified one
/// never reaches a handler.
pub fn peer_subject<T>(request: &Request<T>) -> Option<String> {
    subject_of(request.peer_certs()?.first()?.as_ref())
}

/// The subject of a DER certificate, in the form callers files use.
fn subject_of(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(cert.subject().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate for `names`, signed by a CA of another name, so the
    /// subject cannot be mistaken for the issuer.
    fn cert_with(names: &[(rcgen::DnType, &str)]) -> Vec<u8> {
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "test CA");
        let ca = rcgen::Issuer::new(ca, rcgen::KeyPair::generate().unwrap());
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (kind, value) in names {
            params.distinguished_name.push(kind.clone(), *value);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.signed_by(&key, &ca).unwrap().der().to_vec()
    }

    #[test]
    fn a_client_certificate_subject_reads_as_the_callers_file_writes_it() {
        let der = cert_with(&[(rcgen::DnType::CommonName, "shipping")]);
        assert_eq!(subject_of(&der).as_deref(), Some("CN=shipping"));
        let der = cert_with(&[
            (rcgen::DnType::OrganizationName, "Example"),
            (rcgen::DnType::CommonName, "marketing-mailer"),
        ]);
        assert_eq!(
            subject_of(&der).as_deref(),
            Some("O=Example, CN=marketing-mailer")
        );
    }

    #[test]
    fn a_request_without_tls_has_no_peer_subject() {
        assert_eq!(peer_subject(&Request::new(())), None);
        assert_eq!(subject_of(b"not a certificate"), None);
    }
}
