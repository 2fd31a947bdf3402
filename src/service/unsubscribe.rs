//! One-click unsubscribe (RFC 8058): creating signed links, and recording
//! the refusal a followed link stands for. The token format is in `token`.

mod token;

use std::sync::Arc;

use uuid::Uuid;

pub use token::{MAX_CAMPAIGN_CHARS, TokenError, UnsubscribeClaims, UnsubscribeKeys};

use crate::{
    domain::{
        Actor, Channel, Choice, ConsistencyToken, Evidence, FieldName, ListLimit, NewConsentRecord,
        NoticeVersion, PurposeCode, SubjectId, Violations,
    },
    error::{Error, Result},
    policy::{Policy, Purpose},
    state::{DecisionState, Settle},
    store::Store,
};

/// Creating links and acting on them.
#[derive(Clone)]
pub struct Unsubscribes {
    store: Store,
    policy: Arc<Policy>,
    keys: Arc<UnsubscribeKeys>,
    /// Where the HTTP side is reached from outside, without a trailing `/`.
    base_url: String,
    settle: Settle,
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
/// CreateUnsubscribeLinks' `subject_ids`.
pub const LINK_SUBJECTS: ListLimit = ListLimit {
    field: "subject_ids",
    noun: "subject ids",
    min: 1,
    max: MAX_LINKS,
};

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
            settle: Settle::default(),
        }
    }

    /// Each refusal waits until `state` has applied it, so a check on this
    /// server sees it at once.
    pub fn settling(mut self, state: DecisionState) -> Self {
        self.settle = Settle::on(state);
        self
    }

    pub async fn create_links(&self, request: &LinkRequest) -> Result<(Vec<Link>, String)> {
        let mut violations = Violations::new();
        self.policy.check_unsubscribe_parts(
            &mut violations,
            Some(&request.purpose),
            request.field.as_ref(),
        );
        check_link_count(&mut violations, request.subject_ids.len());
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
            links.push(sign_link(
                &self.keys,
                &self.base_url,
                request,
                subject_id,
                *subject_key,
            ));
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
    /// Returns the target, whether a new record was written and the feed
    /// position of the refusal in force (the one a repeat found).
    pub async fn unsubscribe(&self, token: &str) -> Result<Unsubscribed, LinkError> {
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
        let (refusal, created) = self
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
        self.settle
            .after(ConsistencyToken::at(refusal.sequence))
            .await;
        if created {
            metrics::counter!(crate::metrics::UNSUBSCRIBES, "purpose" => target.claims.purpose.to_string())
                .increment(1);
        }
        Ok(Unsubscribed {
            target,
            created,
            token: ConsistencyToken::at(refusal.sequence),
        })
    }
}

/// What following an unsubscribe link did.
#[derive(Debug)]
pub struct Unsubscribed {
    pub target: LinkTarget,
    /// False on a repeat: the refusal was already in force.
    pub created: bool,
    /// The refusal's feed position.
    pub token: ConsistencyToken,
}

/// The link for one subject. The token names the subject only by its
/// surrogate key: the external id stays out of the URL.
fn sign_link(
    keys: &UnsubscribeKeys,
    base_url: &str,
    request: &LinkRequest,
    subject_id: &SubjectId,
    subject_key: Uuid,
) -> Link {
    let token = UnsubscribeClaims {
        subject_key,
        purpose: request.purpose.clone(),
        field: request.field.clone(),
        campaign: request.campaign.clone(),
    }
    .sign(keys);
    Link {
        subject_id: subject_id.clone(),
        url: format!("{base_url}/u/{token}"),
        token,
    }
}

/// Notes a subject count out of range; the ids are checked on creation.
pub fn check_link_count(violations: &mut Violations, subjects: usize) {
    LINK_SUBJECTS.check(violations, subjects);
}

#[cfg(test)]
mod tests {
    use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
    use proptest::prelude::*;

    use super::*;
    use crate::keys::KeyFile as _;

    proptest! {
        /// The link for a subject holds neither its external id nor
        /// anything of it: only the random surrogate key.
        #[test]
        fn the_token_does_not_contain_the_external_id(
            id in "[A-Z]-[0-9]{4,8}",
            subject_key in any::<u128>(),
        ) {
            let keys = UnsubscribeKeys::parse(
                "k1=MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
                "keys",
            )
            .unwrap();
            let subject_id = SubjectId::parse(id.clone()).unwrap();
            let request = LinkRequest {
                purpose: PurposeCode::parse("promotional_mail").unwrap(),
                field: Some(FieldName::parse("email").unwrap()),
                campaign: "spring-2026".into(),
                subject_ids: vec![subject_id.clone()],
            };
            let link = sign_link(
                &keys,
                "https://consent.example.com",
                &request,
                &subject_id,
                Uuid::from_u128(subject_key),
            );
            let claims = UnsubscribeClaims::verify(&link.token, &keys).unwrap();
            prop_assert_eq!(claims.subject_key, Uuid::from_u128(subject_key));
            let bytes = URL_SAFE_NO_PAD.decode(&link.token).unwrap();
            prop_assert!(!bytes.windows(id.len()).any(|w| w == id.as_bytes()));
            prop_assert!(!link.token.contains(&id));
            prop_assert!(!link.url.contains(&id));
        }
    }
}
