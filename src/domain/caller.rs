//! Who may call: one entry of the callers file, as the permission rules read
//! it. Plain data; loading the file and the rules live in `policy::callers`.

use std::fmt;

use super::{
    LegalBasis, PurposeCode, RecipientId,
    ids::{code, text_newtype},
};

text_newtype!(
    /// A caller's id in the callers file (`marketing-mailer`). It is recorded
    /// as the actor of everything the caller does, so it keeps to the one
    /// unambiguous spelling of a policy code.
    CallerId,
    code
);

/// How a caller proves who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// The SHA-256 of its bearer token. The token itself is never stored, so
    /// the callers file is no secret worth stealing.
    TokenSha256([u8; 32]),
    /// The subject of its mTLS client certificate (`CN=shipping`).
    CertSubject(String),
}

/// One system or person that may call, and everything it may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub id: CallerId,
    pub credential: Credential,
    /// Full method paths (`consent.v1.ConsentService/Check`) or a
    /// service-wide wildcard (`consent.v1.DisclosureService/*`).
    pub rpcs: Vec<String>,
    pub purposes: Vec<PurposeCode>,
    pub recipients: Vec<RecipientId>,
    pub legal_bases: Vec<LegalBasis>,
}
