//! The preference token format: what a link to the person's page (or a
//! download confirmation) carries, sealed so that it reveals nothing.
//!
//! The page must know the subject's external id without a database read,
//! and the token must never reveal it, so the claims are encrypted with
//! AES-256-GCM rather than only signed. The cipher key is derived with
//! HMAC-SHA256 from each unsubscribe link key under a tag of its own, so
//! these tokens rotate with those keys but can never pass as one of them.
//! The version and key id are authenticated as associated data: altering
//! any byte of a token fails its tag.

use aes_gcm::{
    Aes256Gcm, KeyInit as _, Nonce,
    aead::{Aead as _, Payload},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::LinkError;
use crate::{domain::SubjectId, service::unsubscribe::UnsubscribeKeys};

const TOKEN_VERSION: u8 = 2;
const DERIVATION_TAG: &[u8] = b"consentd preference token key v1";
const NONCE_BYTES: usize = 12;
const TAG_BYTES: usize = 16;
/// Longer than any token this module makes; refused before decoding.
const MAX_TOKEN_CHARS: usize = 1024;

/// Which use a token was issued for; one never passes as the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// The link in a letter: opens the page.
    Page = 0,
    /// The short-lived confirmation that releases the download.
    Download = 1,
}

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub purpose: Use,
    pub subject_id: SubjectId,
    pub campaign: Option<String>,
    pub expires_at: DateTime<Utc>,
}

fn cipher(keys: &UnsubscribeKeys, kid: &str) -> Option<Aes256Gcm> {
    let key = keys.ring().get(kid)?;
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key.expose()).expect("HMAC takes any key length");
    mac.update(DERIVATION_TAG);
    Some(Aes256Gcm::new_from_slice(&mac.finalize().into_bytes()).expect("a 32-byte key"))
}

fn header(kid: &str) -> Vec<u8> {
    let mut header = vec![TOKEN_VERSION, kid.len() as u8];
    header.extend_from_slice(kid.as_bytes());
    header
}

impl Claims {
    pub fn seal(&self, keys: &UnsubscribeKeys) -> String {
        let kid = keys.ring().current();
        let mut plain = vec![self.purpose as u8];
        plain.extend_from_slice(&self.expires_at.timestamp().to_be_bytes());
        push_long(&mut plain, self.subject_id.as_str().as_bytes());
        match &self.campaign {
            None => plain.push(0),
            Some(campaign) => {
                plain.push(1);
                push_long(&mut plain, campaign.as_bytes());
            }
        }
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::fill(&mut nonce).expect("the OS random source works");
        let mut token = header(kid);
        let sealed = cipher(keys, kid)
            .expect("the current key is listed")
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &token,
                },
            )
            .expect("AES-GCM seals any short message");
        token.extend_from_slice(&nonce);
        token.extend_from_slice(&sealed);
        URL_SAFE_NO_PAD.encode(token)
    }

    /// Opens a token issued for `purpose` that has not expired at `now`.
    pub fn open(
        token: &str,
        keys: &UnsubscribeKeys,
        purpose: Use,
        now: DateTime<Utc>,
    ) -> Result<Self, LinkError> {
        if token.len() > MAX_TOKEN_CHARS {
            return Err(LinkError::Malformed);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| LinkError::Malformed)?;
        let mut reader = Reader(&bytes);
        if reader.take(1)? != [TOKEN_VERSION] {
            return Err(LinkError::Malformed);
        }
        let kid_len = reader.take(1)?[0] as usize;
        let kid = std::str::from_utf8(reader.take(kid_len)?).map_err(|_| LinkError::Malformed)?;
        let aad = &bytes[..2 + kid_len];
        let nonce = reader.take(NONCE_BYTES)?;
        if reader.0.len() < TAG_BYTES {
            return Err(LinkError::Malformed);
        }
        // A key this service does not hold could only have come from
        // someone else: the same answer as a bad tag.
        let cipher = cipher(keys, kid).ok_or(LinkError::Forged)?;
        let plain = cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: reader.0, aad })
            .map_err(|_| LinkError::Forged)?;
        // Only authenticated content is parsed past this point.
        let mut reader = Reader(&plain);
        let issued_for = match reader.take(1)?[0] {
            0 => Use::Page,
            1 => Use::Download,
            _ => return Err(LinkError::Malformed),
        };
        if issued_for != purpose {
            return Err(LinkError::Forged);
        }
        let seconds = i64::from_be_bytes(reader.take(8)?.try_into().expect("eight bytes"));
        let expires_at = DateTime::from_timestamp(seconds, 0).ok_or(LinkError::Malformed)?;
        let subject_id =
            SubjectId::parse(reader.long_str()?.to_string()).map_err(|_| LinkError::Malformed)?;
        let campaign = match reader.take(1)?[0] {
            0 => None,
            1 => Some(reader.long_str()?.to_string()),
            _ => return Err(LinkError::Malformed),
        };
        if !reader.0.is_empty() {
            return Err(LinkError::Malformed);
        }
        if now >= expires_at {
            return Err(LinkError::Expired);
        }
        Ok(Self {
            purpose,
            subject_id,
            campaign,
            expires_at,
        })
    }
}

fn push_long(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], LinkError> {
        if self.0.len() < n {
            return Err(LinkError::Malformed);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn long_str(&mut self) -> Result<&'a str, LinkError> {
        let len = u16::from_be_bytes(self.take(2)?.try_into().expect("two bytes")) as usize;
        std::str::from_utf8(self.take(len)?).map_err(|_| LinkError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;
    use proptest::prelude::*;

    use super::*;
    use crate::{keys::KeyFile as _, service::unsubscribe::UnsubscribeClaims};

    const K1: &str = "k1=MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    const K2: &str = "k2=ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

    fn keys(text: &str) -> UnsubscribeKeys {
        UnsubscribeKeys::parse(text, "keys").unwrap()
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_780_000_000, 0).unwrap()
    }

    fn claims(id: &str) -> Claims {
        Claims {
            purpose: Use::Page,
            subject_id: SubjectId::parse(id).unwrap(),
            campaign: Some("spring-2026".into()),
            expires_at: now() + TimeDelta::days(30),
        }
    }

    #[test]
    fn a_sealed_token_opens_to_the_same_claims_and_is_url_safe() {
        let keys = keys(K1);
        let token = claims("C-1042").seal(&keys);
        assert_eq!(
            Claims::open(&token, &keys, Use::Page, now()),
            Ok(claims("C-1042"))
        );
        let without = Claims {
            campaign: None,
            ..claims("C-1042")
        };
        assert_eq!(
            Claims::open(&without.seal(&keys), &keys, Use::Page, now()),
            Ok(without)
        );
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }

    #[test]
    fn a_token_is_refused_as_expired_from_its_expiry_on() {
        let keys = keys(K1);
        let token = claims("C-1042").seal(&keys);
        let expiry = claims("C-1042").expires_at;
        let open = |at| Claims::open(&token, &keys, Use::Page, at);
        assert!(open(expiry - TimeDelta::seconds(1)).is_ok());
        assert_eq!(open(expiry), Err(LinkError::Expired));
        assert_eq!(open(expiry + TimeDelta::days(1)), Err(LinkError::Expired));
    }

    #[test]
    fn a_token_for_one_use_is_refused_for_the_other() {
        let keys = keys(K1);
        let page = claims("C-1").seal(&keys);
        assert_eq!(
            Claims::open(&page, &keys, Use::Download, now()),
            Err(LinkError::Forged)
        );
        let download = Claims {
            purpose: Use::Download,
            ..claims("C-1")
        }
        .seal(&keys);
        assert_eq!(
            Claims::open(&download, &keys, Use::Page, now()),
            Err(LinkError::Forged)
        );
    }

    #[test]
    fn tokens_from_other_keys_and_unsubscribe_tokens_are_refused() {
        let token = claims("C-1").seal(&keys(K1));
        let same_id_other_key = "k1=ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";
        assert_eq!(
            Claims::open(&token, &keys(same_id_other_key), Use::Page, now()),
            Err(LinkError::Forged)
        );
        assert_eq!(
            Claims::open(&token, &keys(K2), Use::Page, now()),
            Err(LinkError::Forged)
        );
        let rotated = keys(&format!("{K2}\n{K1}"));
        assert!(Claims::open(&token, &rotated, Use::Page, now()).is_ok());
        let unsubscribe = UnsubscribeClaims {
            subject_key: uuid::Uuid::from_u128(7),
            purpose: crate::domain::PurposeCode::parse("promotional_mail").unwrap(),
            field: None,
            campaign: "c".into(),
        }
        .sign(&keys(K1));
        assert_eq!(
            Claims::open(&unsubscribe, &keys(K1), Use::Page, now()),
            Err(LinkError::Malformed)
        );
    }

    #[test]
    fn garbage_is_malformed() {
        let keys = keys(K1);
        for token in ["", "abc", "!!!!", &"A".repeat(2000), "AgJrMQ"] {
            assert_eq!(
                Claims::open(token, &keys, Use::Page, now()),
                Err(LinkError::Malformed),
                "{token}"
            );
        }
    }

    proptest! {
        /// Flipping any bit of a token makes it refused.
        #[test]
        fn altering_any_bit_is_detected(index in 0usize..400, bit in 0u8..8) {
            let keys = keys(K1);
            let token = claims("C-1042").seal(&keys);
            let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
            let index = index % bytes.len();
            bytes[index] ^= 1 << bit;
            let altered = URL_SAFE_NO_PAD.encode(bytes);
            prop_assert!(Claims::open(&altered, &keys, Use::Page, now()).is_err());
        }

        /// The external id appears in the token neither as text nor as
        /// bytes, and neither does the campaign.
        #[test]
        fn the_token_never_contains_the_external_id(id in "[A-Z]-[0-9]{4,8}") {
            let keys = keys(K1);
            let token = claims(&id).seal(&keys);
            let bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
            prop_assert!(!bytes.windows(id.len()).any(|w| w == id.as_bytes()));
            prop_assert!(!bytes.windows(11).any(|w| w == b"spring-2026"));
            prop_assert!(!token.contains(&id));
            let opened = Claims::open(&token, &keys, Use::Page, now()).unwrap();
            prop_assert_eq!(opened.subject_id.as_str(), id.as_str());
        }
    }
}
