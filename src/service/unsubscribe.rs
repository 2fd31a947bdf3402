//! One-click unsubscribe (RFC 8058): signed links, and the refusal they record.
//!
//! A token names the subject by its random surrogate key, never by its
//! external id, and is signed with HMAC-SHA256 under a key id so keys can
//! rotate: new links are signed with the first key, and links signed with
//! any listed key still work.

use std::{collections::HashMap, path::Path, sync::Arc};

use anyhow::{Context as _, bail};
use base64::{
    Engine as _,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use uuid::Uuid;

use crate::{
    domain::{
        Actor, Channel, Choice, Evidence, FieldName, NewConsentRecord, NoticeVersion, PurposeCode,
        SubjectId, Violations,
    },
    error::{Error, Result},
    policy::{Basis, Policy, Purpose},
    store::Store,
};

type HmacSha256 = Hmac<Sha256>;

const TOKEN_VERSION: u8 = 1;
/// The longest campaign name a token carries.
pub const MAX_CAMPAIGN_CHARS: usize = 128;

/// The signing keys. The first signs; all verify.
#[derive(Clone)]
pub struct UnsubscribeKeys {
    signing: String,
    keys: HashMap<String, Vec<u8>>,
}

impl std::fmt::Debug for UnsubscribeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("UnsubscribeKeys")
            .field("signing", &self.signing)
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl UnsubscribeKeys {
    /// Parses `kid=base64key` lines (see [`parse_key_lines`]). The first key
    /// signs new links.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Self> {
        let (signing, keys) = parse_key_lines(text, origin)?;
        Ok(Self { signing, keys })
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// A random key that lives as long as the process: links stop working
    /// at restart, so it is only for trying things out.
    pub fn ephemeral() -> Self {
        let mut key = vec![0u8; 32];
        getrandom::fill(&mut key).expect("the OS random source works");
        Self {
            signing: "ephemeral".into(),
            keys: HashMap::from([("ephemeral".to_string(), key)]),
        }
    }

    fn mac(&self, kid: &str) -> Option<HmacSha256> {
        let key = self.keys.get(kid)?;
        Some(HmacSha256::new_from_slice(key).expect("HMAC takes any key length"))
    }
}

/// Parses a key file: `kid=base64key` lines, `#` starts a comment, keys of
/// at least 32 bytes. Returns the first key id (the one that signs or
/// encrypts new data) and every key by id. Shared by the unsubscribe signing
/// keys and the vault's data keys, so both files read the same way.
pub(crate) fn parse_key_lines(
    text: &str,
    origin: &str,
) -> anyhow::Result<(String, HashMap<String, Vec<u8>>)> {
    let mut signing = None;
    let mut keys = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = format!("{origin}:{}", index + 1);
        let Some((kid, key)) = line.split_once('=') else {
            bail!("{at}: expected `key-id=base64-key`");
        };
        let kid = kid.trim();
        if kid.is_empty()
            || kid.len() > 32
            || !kid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            bail!("{at}: the key id must be 1-32 characters of A-Z, a-z, 0-9, '-' and '_'");
        }
        let key = STANDARD
            .decode(key.trim())
            .with_context(|| format!("{at}: the key is not valid base64"))?;
        if key.len() < 32 {
            bail!(
                "{at}: the key must be at least 32 bytes (got {})",
                key.len()
            );
        }
        if keys.insert(kid.to_string(), key).is_some() {
            bail!("{at}: duplicate key id `{kid}`");
        }
        signing.get_or_insert_with(|| kid.to_string());
    }
    let signing = signing.with_context(|| format!("{origin}: no keys"))?;
    Ok((signing, keys))
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
        let kid = keys.signing.as_str();
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
            assert!(UnsubscribeClaims::verify(token, &keys).is_err(), "{token}");
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

        /// The token holds neither the external id nor anything derived
        /// from it: only the random surrogate key.
        #[test]
        fn the_token_does_not_contain_the_external_id(id in "[A-Z]-[0-9]{4,8}") {
            let token = claims().sign(&keys(K1));
            let bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
            prop_assert!(!bytes.windows(id.len()).any(|w| w == id.as_bytes()));
            prop_assert!(!token.contains(&id));
        }
    }
}

/// Creating links and acting on them.
#[derive(Clone)]
pub struct Unsubscribes {
    store: Store,
    policy: Arc<Policy>,
    keys: Arc<UnsubscribeKeys>,
    /// Where the HTTP side is reached from outside, without a trailing `/`.
    base_url: String,
}

/// What CreateUnsubscribeLinks asks for, validated.
#[derive(Debug, Clone)]
pub struct LinkRequest {
    pub purpose: PurposeCode,
    pub field: Option<FieldName>,
    pub campaign: String,
    pub subject_ids: Vec<SubjectId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub subject_id: SubjectId,
    pub url: String,
    pub token: String,
}

/// What a valid link is about, for the page that explains it.
#[derive(Debug, Clone)]
pub struct LinkTarget {
    pub claims: UnsubscribeClaims,
    pub subject_id: SubjectId,
    pub purpose: Purpose,
}

/// Why a link could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("the link names a purpose the policy no longer has")]
    UnknownPurpose,
    #[error("the link's subject is no longer registered")]
    UnknownSubject,
    #[error(transparent)]
    Service(#[from] Error),
}

/// The most subjects per CreateUnsubscribeLinks call.
pub const MAX_LINKS: usize = 1000;

impl Unsubscribes {
    pub fn new(
        store: Store,
        policy: Arc<Policy>,
        keys: Arc<UnsubscribeKeys>,
        base_url: &str,
    ) -> Self {
        Self {
            store,
            policy,
            keys,
            base_url: base_url.trim_end_matches('/').to_string(),
        }
    }

    /// Notes what the policy refuses in a link request, for whichever of
    /// its purpose and field parsed, and a subject count out of range.
    pub fn check_links(
        &self,
        violations: &mut Violations,
        purpose: Option<&PurposeCode>,
        field: Option<&FieldName>,
        subjects: usize,
    ) {
        match purpose.map(|code| (code, self.policy.purpose(code))) {
            None => {}
            Some((code, None)) => violations.push(
                "purpose",
                format!("`{code}` is not a purpose of the policy"),
            ),
            Some((_, Some(p))) if p.basis == Basis::Contract => violations.push(
                "purpose",
                format!(
                    "`{}` has basis contract: there is nothing to unsubscribe from",
                    p.code
                ),
            ),
            Some((_, Some(p))) => {
                if let Some(field) = field
                    && !p.permits(field)
                {
                    violations.push(
                        "field",
                        format!("`{field}` is not used by purpose `{}`", p.code),
                    );
                }
            }
        }
        if subjects == 0 || subjects > MAX_LINKS {
            violations.push(
                "subject_ids",
                format!("must hold 1 to {MAX_LINKS} subject ids (got {subjects})"),
            );
        }
    }

    pub async fn create_links(&self, request: &LinkRequest) -> Result<(Vec<Link>, String)> {
        let mut violations = Violations::new();
        self.check_links(
            &mut violations,
            Some(&request.purpose),
            request.field.as_ref(),
            request.subject_ids.len(),
        );
        if !violations.is_empty() {
            return Err(violations.into());
        }
        let ids: Vec<&SubjectId> = request.subject_ids.iter().collect();
        let keys = self.store.subject_keys(&ids).await?;
        let mut links = Vec::with_capacity(ids.len());
        for (i, subject_id) in request.subject_ids.iter().enumerate() {
            let Some(subject_key) = keys.get(subject_id) else {
                violations.push(format!("subject_ids[{i}]"), "is not a registered subject");
                continue;
            };
            let token = UnsubscribeClaims {
                subject_key: *subject_key,
                purpose: request.purpose.clone(),
                field: request.field.clone(),
                campaign: request.campaign.clone(),
            }
            .sign(&self.keys);
            links.push(Link {
                subject_id: subject_id.clone(),
                url: format!("{}/u/{token}", self.base_url),
                token,
            });
        }
        if !violations.is_empty() {
            return Err(violations.into());
        }
        let instructions = (self.policy.purpose(&request.purpose))
            .and_then(|p| p.refusal_instructions.clone())
            .unwrap_or_default();
        Ok((links, instructions))
    }

    /// Checks a token and finds what it is about. Changes nothing.
    pub async fn inspect(&self, token: &str) -> Result<LinkTarget, LinkError> {
        let claims = UnsubscribeClaims::verify(token, &self.keys)?;
        let purpose = self
            .policy
            .purpose(&claims.purpose)
            .cloned()
            .ok_or(LinkError::UnknownPurpose)?;
        let subject_id = self
            .store
            .subject_by_key(claims.subject_key)
            .await?
            .ok_or(LinkError::UnknownSubject)?;
        Ok(LinkTarget {
            claims,
            subject_id,
            purpose,
        })
    }

    /// Records the refusal a link stands for. A repeat adds nothing.
    /// Returns the target and whether a new record was written.
    pub async fn unsubscribe(&self, token: &str) -> Result<(LinkTarget, bool), LinkError> {
        let target = self.inspect(token).await?;
        let evidence = Evidence::parse(format!(
            "unsubscribe link, campaign: {}",
            target.claims.campaign
        ))
        .map_err(|e| Error::Internal(anyhow::anyhow!("campaign too long for evidence: {e}")))?;
        let notice_version = NoticeVersion::parse(self.policy.version()).map_err(|e| {
            Error::Internal(anyhow::anyhow!(
                "policy version is not a notice version: {e}"
            ))
        })?;
        let (_, created) = self
            .store
            .append_unless_current(&NewConsentRecord {
                subject_id: target.subject_id.clone(),
                purpose: target.claims.purpose.clone(),
                field: target.claims.field.clone(),
                choice: Choice::Refuse,
                channel: Channel::EmailLink,
                notice_version,
                evidence,
                actor: Actor::parse("unsubscribe-link").expect("a valid actor"),
                request_id: None,
                recipient: None,
            })
            .await?;
        if created {
            metrics::counter!(crate::metrics::UNSUBSCRIBES, "purpose" => target.claims.purpose.to_string())
                .increment(1);
        }
        Ok((target, created))
    }
}
