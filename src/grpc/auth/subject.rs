//! The subject of an X.509 certificate, as a callers file names it
//! (`CN=shipping`). Only the few DER structures on the way to the subject
//! are read; the TLS layer has already verified the certificate.

/// The certificate's subject in RFC 4514 order (most specific first, so
/// `CN=shipping,O=Example`), or `None` when the DER is not a certificate.
pub fn cert_subject(der: &[u8]) -> Option<String> {
    let (certificate, _) = element(der, SEQUENCE)?;
    let (mut tbs, _) = element(certificate, SEQUENCE)?;
    // The version is optional and explicitly tagged [0].
    if tbs.first() == Some(&0xA0) {
        tbs = element(tbs, 0xA0)?.1;
    }
    let rest = element(tbs, INTEGER)?.1; // serial number
    let rest = element(rest, SEQUENCE)?.1; // signature algorithm
    let rest = element(rest, SEQUENCE)?.1; // issuer
    let rest = element(rest, SEQUENCE)?.1; // validity
    let (mut name, _) = element(rest, SEQUENCE)?;
    let mut rdns = Vec::new();
    while !name.is_empty() {
        let (mut set, rest) = element(name, SET)?;
        name = rest;
        let mut attributes = Vec::new();
        while !set.is_empty() {
            let (attribute, rest) = element(set, SEQUENCE)?;
            set = rest;
            let (oid, value) = element(attribute, OID)?;
            let (tag, text, _) = tlv(value)?;
            if !matches!(tag, 0x0C | 0x13 | 0x16 | 0x14) {
                return None;
            }
            let text = std::str::from_utf8(text).ok()?;
            attributes.push(format!("{}={}", attribute_name(oid), escape(text)));
        }
        rdns.push(attributes.join("+"));
    }
    rdns.reverse();
    Some(rdns.join(","))
}

const INTEGER: u8 = 0x02;
const OID: u8 = 0x06;
const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;

/// The content of the element with `tag` at the start of `input`, and what
/// follows it.
fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (found, content, rest) = tlv(input)?;
    (found == tag).then_some((content, rest))
}

/// One DER tag-length-value: single-byte tags, definite lengths.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, input) = input.split_first()?;
    let (&first, mut input) = input.split_first()?;
    let length = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7F);
        if count == 0 || count > 4 || input.len() < count {
            return None;
        }
        let (bytes, rest) = input.split_at(count);
        input = rest;
        bytes.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b))
    };
    (input.len() >= length).then(|| (tag, &input[..length], &input[length..]))
}

fn attribute_name(oid: &[u8]) -> String {
    match oid {
        [0x55, 0x04, 0x03] => "CN".into(),
        [0x55, 0x04, 0x06] => "C".into(),
        [0x55, 0x04, 0x07] => "L".into(),
        [0x55, 0x04, 0x08] => "ST".into(),
        [0x55, 0x04, 0x0A] => "O".into(),
        [0x55, 0x04, 0x0B] => "OU".into(),
        _ => dotted(oid),
    }
}

/// An OID the table above does not name, in dotted decimal.
fn dotted(oid: &[u8]) -> String {
    let mut arcs = Vec::new();
    let mut arc = 0u64;
    for &byte in oid {
        arc = (arc << 7) | u64::from(byte & 0x7F);
        if byte & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (arc / 40).min(2);
                arcs.push(first);
                arcs.push(arc - first * 40);
            } else {
                arcs.push(arc);
            }
            arc = 0;
        }
    }
    arcs.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// RFC 4514 escaping, so a value holding `,` can't pose as two attributes.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.chars().enumerate() {
        let edge =
            (i == 0 && matches!(c, ' ' | '#')) || (i + 1 == value.chars().count() && c == ' ');
        if edge || matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    fn der(pem_body: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(pem_body.split_whitespace().collect::<String>())
            .unwrap()
    }

    #[test]
    fn the_subject_of_an_openssl_certificate_reads_as_the_callers_file_writes_it() {
        assert_eq!(cert_subject(&der(SHIPPING)).as_deref(), Some("CN=shipping"));
        assert_eq!(
            cert_subject(&der(ORGANIZATION)).as_deref(),
            Some("CN=support\\, tier 2,OU=care,O=Example Shop,C=CN")
        );
    }

    #[test]
    fn what_is_not_a_certificate_has_no_subject() {
        let shipping = der(SHIPPING);
        assert_eq!(cert_subject(&shipping[..shipping.len() / 2]), None);
        assert_eq!(cert_subject(b"CN=shipping"), None);
        assert_eq!(cert_subject(&[]), None);
    }

    /// `openssl req -x509 -newkey ec -subj "/CN=shipping"`.
    const SHIPPING: &str = "
        MIIBejCCASGgAwIBAgIUHW41v92IPq896CxFu4fcTG9C0icwCgYIKoZIzj0EAwIw
        EzERMA8GA1UEAwwIc2hpcHBpbmcwHhcNMjYxMTI1MTAzMDA3WhcNMzYxMTIyMTAz
        MDA3WjATMREwDwYDVQQDDAhzaGlwcGluZzBZMBMGByqGSM49AgEGCCqGSM49AwEH
        A0IABOagWH4LmSAj8duv9fyo70VWOpkxm/Ld99Ux5cbGWrc1wcY6kR4dJQEK+KkV
        jyy3N5wYt+RIWsiMjX14+vn3U5GjUzBRMB0GA1UdDgQWBBQuVnN0vvEXK89YxiHS
        d+I4lpHKYzAfBgNVHSMEGDAWgBQuVnN0vvEXK89YxiHSd+I4lpHKYzAPBgNVHRMB
        Af8EBTADAQH/MAoGCCqGSM49BAMCA0cAMEQCIBlOJEk9GK1mtrBCDRuU+zfYcQIM
        5gKCpK8fGcnYkfrdAiBppJh+E1pBxSRGW/tKz8QwHi0w+T9YsvioAtCn9YXkiA==";

    /// `-subj "/C=CN/O=Example Shop/OU=care/CN=support, tier 2"`.
    const ORGANIZATION: &str = "
        MIIB7zCCAZWgAwIBAgIUXeDv2Pnh7g78n4HwUei5IzWNj/YwCgYIKoZIzj0EAwIw
        TTELMAkGA1UEBhMCQ04xFTATBgNVBAoMDEV4YW1wbGUgU2hvcDENMAsGA1UECwwE
        Y2FyZTEYMBYGA1UEAwwPc3VwcG9ydCwgdGllciAyMB4XDTI2MTEyNTEwMzAwN1oX
        DTM2MTEyMjEwMzAwN1owTTELMAkGA1UEBhMCQ04xFTATBgNVBAoMDEV4YW1wbGUg
        U2hvcDENMAsGA1UECwwEY2FyZTEYMBYGA1UEAwwPc3VwcG9ydCwgdGllciAyMFkw
        EwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEP8pI/KlURZr6PkUtC+CeSKc4Ve5zX1US
        KBokYYJQeOYFQnhOoKq2Lgmzr5H3jn00OwoQ+Cufmcg5SWfFI1BMJqNTMFEwHQYD
        VR0OBBYEFOTG3O3BQ+S76MLJn+lmSKoWZlgxMB8GA1UdIwQYMBaAFOTG3O3BQ+S7
        6MLJn+lmSKoWZlgxMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIg
        aXOVHRg7GpzIaaQKEOlI/58mit9kyH+xhCBKLR/yIjMCIQDEKlXGnsPa3bcfO9dA
        Wm+LtZbeUHndT5Pgi7+kP/VHfA==";
}
