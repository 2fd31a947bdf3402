//! AIP-158 page tokens: opaque to callers, and bound to the query they were
//! issued for (the subject, the filter), so a token cannot page through
//! another subject's history or another filter's results.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest as _, Sha256};

fn binding(scope: &str) -> String {
    Sha256::digest(scope.as_bytes())[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A token for "continue after `position`" within `scope`.
pub fn encode(position: &str, scope: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("v1.{}.{position}", binding(scope)))
}

/// The position a token continues after, if it was issued for `scope`.
pub fn decode(token: &str, scope: &str) -> Result<String, String> {
    let invalid = || "is not a token this service issued".to_string();
    let text = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let text = String::from_utf8(text).map_err(|_| invalid())?;
    let mut parts = text.splitn(3, '.');
    let (Some("v1"), Some(bound), Some(position)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    if bound != binding(scope) {
        return Err("was issued for a different request (another subject or filter)".into());
    }
    Ok(position.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_are_bound_to_their_scope() {
        let token = encode("42", "C-1");
        assert_eq!(decode(&token, "C-1"), Ok("42".to_string()));
        assert!(
            decode(&token, "C-2")
                .unwrap_err()
                .contains("different request")
        );
        assert!(decode("garbage!", "C-1").is_err());
        assert!(decode(&URL_SAFE_NO_PAD.encode("v2.x.y"), "C-1").is_err());
        assert_eq!(decode(&encode("a.b|c", "s"), "s"), Ok("a.b|c".to_string()));
    }
}
