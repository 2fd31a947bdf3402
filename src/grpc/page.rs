//! AIP-158 page tokens: opaque to callers, bound to the query they were
//! issued for (a subject, a filter), so that a token cannot page through
//! another subject's records.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest as _, Sha256};

pub struct PageToken;

impl PageToken {
    fn binding(scope: &str) -> String {
        Sha256::digest(scope.as_bytes())[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// A token for "continue after `cursor`" in the query named `scope`.
    /// The cursor comes last, so it may contain anything.
    pub fn encode(cursor: &str, scope: &str) -> String {
        URL_SAFE_NO_PAD.encode(format!("v1.{}.{cursor}", Self::binding(scope)))
    }

    /// The cursor of a token issued for `scope`; the error is the violation
    /// description for `page_token`.
    pub fn decode(token: &str, scope: &str) -> Result<String, String> {
        let invalid = || "is not a token this service issued".to_string();
        let text = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        let text = String::from_utf8(text).map_err(|_| invalid())?;
        let mut parts = text.splitn(3, '.');
        let (Some("v1"), Some(binding), Some(cursor)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        if binding != Self::binding(scope) {
            return Err("was issued for another query".into());
        }
        Ok(cursor.to_string())
    }

    /// Parses a page size: 0 means `default`, else 1..=`max`.
    pub fn page_size(raw: i32, default: usize, max: usize) -> Result<usize, String> {
        match usize::try_from(raw) {
            Ok(0) => Ok(default),
            Ok(n) if n <= max => Ok(n),
            _ => Err(format!("must be between 0 and {max} (got {raw})")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_are_bound_to_their_scope() {
        let token = PageToken::encode("42", "C-1");
        assert_eq!(PageToken::decode(&token, "C-1"), Ok("42".to_string()));
        assert!(
            PageToken::decode(&token, "C-2")
                .unwrap_err()
                .contains("another query")
        );
        assert!(PageToken::decode("garbage!", "C-1").is_err());
        assert!(PageToken::decode(&URL_SAFE_NO_PAD.encode("v1.x"), "C-1").is_err());
    }

    #[test]
    fn page_sizes_default_and_stay_in_range() {
        assert_eq!(PageToken::page_size(0, 100, 1000), Ok(100));
        assert_eq!(PageToken::page_size(7, 100, 1000), Ok(7));
        assert!(PageToken::page_size(-1, 100, 1000).is_err());
        assert!(PageToken::page_size(1001, 100, 1000).is_err());
    }
}
