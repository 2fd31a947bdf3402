//! `consentd callers check` and `consentd callers token`: the operator's
//! side of the callers file.

use std::path::Path;

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use crate::{
    domain::Credential,
    policy::{Callers, Known, Policy, callers::legal_basis_name},
};

/// Validates a callers file against the methods served (`main` passes them
/// in, so commands stay free of gRPC) and, when given, a policy; then says
/// who may call what.
pub fn check_callers(file: &Path, policy: Option<&Path>, methods: &[String]) -> anyhow::Result<()> {
    let policy = policy.map(Policy::load).transpose()?;
    let known = Known {
        policy: policy.as_ref(),
        rpcs: Some(methods),
    };
    let callers = Callers::load_with(file, known)?;
    println!(
        "{}: OK, {} caller(s)",
        file.display(),
        callers.iter().count()
    );
    let list = |items: Vec<String>| {
        if items.is_empty() {
            "-".to_string()
        } else {
            items.join(", ")
        }
    };
    for caller in callers.iter() {
        let credential = match &caller.credential {
            Credential::TokenSha256(_) => "bearer token".to_string(),
            Credential::CertSubject(subject) => format!("certificate {subject}"),
        };
        println!("  caller {} ({credential})", caller.id);
        println!("    rpcs: {}", list(caller.rpcs.clone()));
        println!(
            "    purposes: {}",
            list(caller.purposes.iter().map(ToString::to_string).collect())
        );
        println!(
            "    recipients: {}",
            list(caller.recipients.iter().map(ToString::to_string).collect())
        );
        println!(
            "    legal bases: {}",
            list(
                caller
                    .legal_bases
                    .iter()
                    .map(|b| legal_basis_name(*b).to_string())
                    .collect()
            )
        );
    }
    if policy.is_none() {
        println!("purposes and recipients were not checked against a policy: pass --policy");
    }
    Ok(())
}

/// Prints a new bearer token and the line that lets it in. Only the hash
/// goes in the file, so the token is shown here once and nowhere else.
pub fn new_token() -> anyhow::Result<()> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    let hash: String = Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    println!("# The bearer token, for the caller alone (shown only now):");
    println!("{token}");
    println!("# The line for its [[callers]] entry:");
    println!("token_sha256 = \"{hash}\"");
    Ok(())
}
