//! Who may call what: the callers file and the pure rule that says whether
//! one caller may make one call. The grpc layer authenticates a call and
//! asks [`authorize`]; nothing here knows about transports.

use std::fmt;

use sha2::{Digest as _, Sha256};

use crate::domain::{Caller, Credential, LegalBasis, PurposeCode, RecipientId};

mod load;

pub use load::{CallersError, Known};

/// Every caller of the callers file, each with a distinct id and credential.
#[derive(Debug, Clone)]
pub struct Callers {
    callers: Vec<Caller>,
}

impl Callers {
    /// The caller whose token hashes to a `token_sha256` of the file.
    ///
    /// Every caller's hash is compared in full, whatever matched before, so
    /// the time taken says nothing about how close a guess came or which
    /// caller it hit.
    pub fn by_token(&self, bearer_token: &str) -> Option<&Caller> {
        let presented: [u8; 32] = Sha256::digest(bearer_token.as_bytes()).into();
        let mut found = 0usize;
        let mut any = 0usize;
        for (index, caller) in self.callers.iter().enumerate() {
            let Credential::TokenSha256(stored) = &caller.credential else {
                continue;
            };
            let difference = stored
                .iter()
                .zip(presented.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            // All ones when equal, all zeros otherwise, with no branch.
            let mask = usize::from(std::hint::black_box(difference) == 0).wrapping_neg();
            found = (found & !mask) | (index & mask);
            any |= mask;
        }
        (any != 0).then(|| &self.callers[found])
    }

    /// The caller whose `cert_subject` is the client certificate's subject
    /// (`CN=shipping`). A subject is no secret, so a plain comparison does.
    pub fn by_cert_subject(&self, subject: &str) -> Option<&Caller> {
        self.callers
            .iter()
            .find(|caller| matches!(&caller.credential, Credential::CertSubject(s) if s == subject))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Caller> {
        self.callers.iter()
    }
}

/// What one call touches; `rpc` is the full method path without the leading '/'.
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    pub rpc: &'a str,
    pub purposes: &'a [PurposeCode],
    pub recipients: &'a [RecipientId],
    pub legal_bases: &'a [LegalBasis],
}

/// Which rule refused a call: the first of rpc, purposes, recipients, legal
/// bases that the caller's entry does not allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Rpc,
    Purpose(PurposeCode),
    Recipient(RecipientId),
    LegalBasis(LegalBasis),
}

impl Refusal {
    /// The `google.rpc.ErrorInfo` reason, stable for clients to match on.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Rpc => "RPC_NOT_PERMITTED",
            Refusal::Purpose(_) => "PURPOSE_NOT_PERMITTED",
            Refusal::Recipient(_) => "RECIPIENT_NOT_PERMITTED",
            Refusal::LegalBasis(_) => "LEGAL_BASIS_NOT_PERMITTED",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Rpc => f.write_str("this caller may not call this method"),
            Refusal::Purpose(p) => write!(f, "this caller may not use purpose `{p}`"),
            Refusal::Recipient(r) => write!(f, "this caller may not disclose to `{r}`"),
            Refusal::LegalBasis(b) => write!(
                f,
                "this caller may not invoke legal basis {}",
                legal_basis_name(*b)
            ),
        }
    }
}

/// Whether `caller` may make the call `access` describes. Everything the
/// call touches must be listed for the caller: one purpose, recipient or
/// legal basis outside its entry refuses the whole call.
pub fn authorize(caller: &Caller, access: &Access<'_>) -> Result<(), Refusal> {
    if !caller
        .rpcs
        .iter()
        .any(|pattern| rpc_matches(pattern, access.rpc))
    {
        return Err(Refusal::Rpc);
    }
    if let Some(p) = first_missing(access.purposes, &caller.purposes) {
        return Err(Refusal::Purpose(p.clone()));
    }
    if let Some(r) = first_missing(access.recipients, &caller.recipients) {
        return Err(Refusal::Recipient(r.clone()));
    }
    if let Some(b) = first_missing(access.legal_bases, &caller.legal_bases) {
        return Err(Refusal::LegalBasis(*b));
    }
    Ok(())
}

/// `Service/Method` matches itself; `Service/*` matches every method of
/// that service and nothing else.
fn rpc_matches(pattern: &str, rpc: &str) -> bool {
    match pattern.strip_suffix("/*") {
        Some(service) => rpc
            .strip_prefix(service)
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|method| !method.is_empty() && !method.contains('/')),
        None => pattern == rpc,
    }
}

fn first_missing<'a, T: PartialEq>(asked: &'a [T], allowed: &[T]) -> Option<&'a T> {
    asked.iter().find(|item| !allowed.contains(item))
}

/// A legal basis as the callers file and the proto spell it
/// (`LEGAL_PROCESS`), not as the database stores it.
pub fn legal_basis_name(basis: LegalBasis) -> &'static str {
    match basis {
        LegalBasis::LegalProcess => "LEGAL_PROCESS",
        LegalBasis::ProtectRightsProperty => "PROTECT_RIGHTS_PROPERTY",
        LegalBasis::EmergencySafety => "EMERGENCY_SAFETY",
    }
}

#[cfg(test)]
mod tests;
