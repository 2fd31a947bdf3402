//! The unsubscribe token format: what a link carries, how it is signed and
//! how it is checked.
//!
//! A token names the subject by its random surrogate key, never by its
//! external id, and is signed with HMAC-SHA256 under a key id so keys can
//! rotate: new links are signed with the first key, and links signed with
//! any listed key still work.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use uuid::Uuid;

use crate::{
    domain::{FieldName, PurposeCode},
    keys::{self, KeyFile, KeyRing},
};

type HmacSha256 = Hmac<Sha256>;

const TOKEN_VERSION: u8 = 1;
/// The longest campaign name a token carries.
pub const MAX_CAMPAIGN_CHARS: usize = 128;

/// The signing keys. The first signs; all verify.
#[derive(Clone, Debug)]
pub struct UnsubscribeKeys(KeyRing);

impl KeyFile for UnsubscribeKeys {
    const WHAT: &'static str = "unsubscribe link keys";
    const STATE_FILE: &'static str = "unsubscribe.keys";

    fn parse(text: &str, origin: &str) -> anyhow::Result<Self> {
        KeyRing::parse(text, origin).map(Self)
    }

    fn new_file() -> String {
        keys::new_ring_file("unsubscribe link keys")
    }
}

impl UnsubscribeKeys {
    /// The keys themselves, for the preference tokens, which derive their
    /// own keys from these.
    pub(crate) fn ring(&self) -> &KeyRing {
        &self.0
    }

    fn mac(&self, kid: &str) -> Option<HmacSha256> {
        let key = self.0.get(kid)?;
        Some(HmacSha256::new_from_slice(key.expose()).expect("HMAC takes any key length"))
    }
}

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubscribeClaims {
    pub subject_key: Uuid,
    pub purpose: PurposeCode,
    pub field: Option<FieldName>,
    pub campaign: String,
}

/// Why a token was refused. None of these reveal which check failed beyond
/// what the holder could work out alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the link is malformed")]
    Malformed,
    #[error("the link was signed with a key this service no longer has")]
    UnknownKey,
    #[error("the link's signature does not match")]
    BadSignature,
}

impl UnsubscribeClaims {
    pub fn sign(&self, keys: &UnsubscribeKeys) -> String {
        let kid = keys.0.current();
        let field = self.field.as_ref().map_or("", |f| f.as_str());
        let mut payload = vec![TOKEN_VERSION];
        push_short(&mut payload, kid.as_bytes());
        payload.extend_from_slice(self.subject_key.as_bytes());
        push_short(&mut payload, self.purpose.as_str().as_bytes());
        push_short(&mut payload, field.as_bytes());
        let campaign = self.campaign.as_bytes();
        payload.extend_from_slice(&(campaign.len() as u16).to_be_bytes());
        payload.extend_from_slice(campaign);
        let mut mac = keys.mac(kid).expect("the signing key is listed");
        mac.update(&payload);
        payload.extend_from_slice(&mac.finalize().into_bytes());
        URL_SAFE_NO_PAD.encode(payload)
    }

    pub fn verify(token: &str, keys: &UnsubscribeKeys) -> Result<Self, TokenError> {
        if token.len() > 1024 {
            return Err(TokenError::Malformed);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| TokenError::Malformed)?;
        if bytes.len() < 32 + 1 {
            return Err(TokenError::Malformed);
        }
        let (payload, signature) = bytes.split_at(bytes.len() - 32);
        let mut reader = Reader(payload);
        if reader.take(1)? != [TOKEN_VERSION] {
            return Err(TokenError::Malformed);
        }
        let kid = reader.short_str()?;
        let mut mac = keys.mac(kid).ok_or(TokenError::UnknownKey)?;
        mac.update(payload);
        mac.verify_slice(signature)
            .map_err(|_| TokenError::BadSignature)?;
        // Only signed content is parsed past this point.
        let subject_key = Uuid::from_slice(reader.take(16)?).map_err(|_| TokenError::Malformed)?;
        let purpose = PurposeCode::parse(reader.short_str()?).map_err(|_| TokenError::Malformed)?;
        let field = match reader.short_str()? {
            "" => None,
            f => Some(FieldName::parse(f).map_err(|_| TokenError::Malformed)?),
        };
        let len = u16::from_be_bytes(reader.take(2)?.try_into().expect("two bytes")) as usize;
        let campaign = std::str::from_utf8(reader.take(len)?)
            .map_err(|_| TokenError::Malformed)?
            .to_string();
        if !reader.0.is_empty() {
            return Err(TokenError::Malformed);
        }
        Ok(Self {
            subject_key,
            purpose,
            field,
            campaign,
        })
    }
}

fn push_short(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TokenError> {
        if self.0.len() < n {
            return Err(TokenError::Malformed);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn short_str(&mut self) -> Result<&'a str, TokenError> {
        let len = self.take(1)?[0] as usize;
        std::str::from_utf8(self.take(len)?).map_err(|_| TokenError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn keys(text: &str) -> UnsubscribeKeys {
        UnsubscribeKeys::parse(text, "keys").unwrap()
    }

    const K1: &str = "k1=MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    const K2: &str = "k2=ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

    fn claims() -> UnsubscribeClaims {
        UnsubscribeClaims {
            subject_key: Uuid::from_u128(0x1234),
            purpose: PurposeCode::parse("promotional_mail").unwrap(),
            field: Some(FieldName::parse("email").unwrap()),
            campaign: "spring-2026".into(),
        }
    }

    #[test]
    fn a_signed_token_verifies_to_the_same_claims() {
        let keys = keys(K1);
        let token = claims().sign(&keys);
        assert_eq!(UnsubscribeClaims::verify(&token, &keys), Ok(claims()));
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "URL-safe"
        );
    }

    #[test]
    fn tokens_signed_with_an_older_key_still_verify_after_rotation() {
        let token = claims().sign(&keys(K1));
        let rotated = keys(&format!("{K2}\n{K1}"));
        assert_eq!(UnsubscribeClaims::verify(&token, &rotated), Ok(claims()));
        assert_eq!(
            UnsubscribeClaims::verify(&token, &keys(K2)),
            Err(TokenError::UnknownKey)
        );
    }

    #[test]
    fn a_token_signed_with_another_key_of_the_same_id_is_refused() {
        let other = "k1=ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";
        let token = claims().sign(&keys(other));
        assert_eq!(
            UnsubscribeClaims::verify(&token, &keys(K1)),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn garbage_is_malformed() {
        let keys = keys(K1);
        for token in ["", "abc", "!!!!", &"A".repeat(2000)] {
            assert_eq!(
                UnsubscribeClaims::verify(token, &keys),
                Err(TokenError::Malformed),
                "{token}"
            );
        }
    }

    #[test]
    fn key_files_are_validated_with_their_line() {
        let err = UnsubscribeKeys::parse("# comment\nk1=c2hvcnQ=", "keys.txt").unwrap_err();
        assert_eq!(
            err.to_string(),
            "keys.txt:2: the key must be at least 32 bytes (got 5)"
        );
        assert!(UnsubscribeKeys::parse("", "keys.txt").is_err());
        assert!(
            UnsubscribeKeys::parse(&format!("{K1}\n{K1}"), "k")
                .unwrap_err()
                .to_string()
                .contains("duplicate")
        );
        assert!(
            !format!("{:?}", keys(K1)).contains("MDEy"),
            "Debug never prints keys"
        );
    }

    proptest! {
        /// Changing any byte of a token never yields a valid token for
        /// other claims: it is refused.
        #[test]
        fn altering_any_byte_is_detected(index in 0usize..400, bit in 0u8..8) {
            let keys = keys(K1);
            let token = claims().sign(&keys);
            let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
            let index = index % bytes.len();
            bytes[index] ^= 1 << bit;
            let altered = URL_SAFE_NO_PAD.encode(bytes);
            prop_assert!(UnsubscribeClaims::verify(&altered, &keys).is_err());
        }
    }
}
