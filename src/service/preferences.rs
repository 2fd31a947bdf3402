//! The person's own page, behind the HTML: the signed link that opens it,
//! what it shows, the choices it records, the concerns it files and the
//! data download it gives. The token format is in `token`.

mod token;

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};

pub use self::token::{Claims, Use};
use crate::{
    domain::{
        Actor, Channel, Choice, ConcernCategory, ConsentRecord, ConsistencyToken, Evidence,
        FieldName, ListLimit, NewConcern, NewConsentRecord, NoticeVersion, PurposeCode,
        RecipientId, SubjectId, Text, Violations,
    },
    error::{Error, Result},
    policy::{
        Basis, Category, Policy,
        preferences::{GPC_EVIDENCE, gpc_refusals, permitted, standing},
    },
    service::{
        concern::{ConcernService, ConcernView},
        export::{Exporter, SubjectExport},
        unsubscribe::{MAX_CAMPAIGN_CHARS, UnsubscribeKeys},
    },
    state::{DecisionState, Settle},
    store::{MAX_CONTACT_CHARS, MAX_TEXT_CHARS, Store},
};

/// How long a download confirmation stays valid after it is shown.
pub const DOWNLOAD_MINUTES: i64 = 15;
/// The most subjects per CreatePreferenceLinks call.
pub const MAX_LINKS: usize = 1000;
/// CreatePreferenceLinks' `subject_ids`.
pub const LINK_SUBJECTS: ListLimit = ListLimit {
    field: "subject_ids",
    noun: "subject ids",
    min: 1,
    max: MAX_LINKS,
};
/// Who the page's records and concerns name as their actor.
const ACTOR: &str = "preference-page";

/// One subject's link, as CreatePreferenceLinks answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub subject_id: SubjectId,
    pub url: String,
    pub expires_at: DateTime<Utc>,
}

/// What a valid preference link is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreferenceLink {
    pub subject_id: SubjectId,
    pub campaign: Option<String>,
    pub expires_at: DateTime<Utc>,
}

/// Why a link or a download token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("the link is malformed")]
    Malformed,
    #[error("the link was not issued by this service or has been altered")]
    Forged,
    #[error("the link has expired")]
    Expired,
}

/// Why a download was refused.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Service(#[from] crate::error::Error),
}

/// One purpose of the policy as the page shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PurposeView {
    pub code: PurposeCode,
    pub description: String,
    pub basis: Basis,
    /// What Check would answer for the purpose now (purpose-wide).
    pub allowed: bool,
    /// The latest purpose-wide record came from the GPC signal.
    pub from_gpc: bool,
    /// False for contract purposes ("needed to deliver your orders").
    pub changeable: bool,
}

/// A partner recipient, and whether the person has permitted it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecipientView {
    pub id: RecipientId,
    pub name: String,
    pub contact: String,
    pub permitted: bool,
}

/// One disclosure about the person: field names only, never values.
#[derive(Debug, Clone, PartialEq)]
pub struct DisclosureLine {
    pub at: DateTime<Utc>,
    pub recipient_name: String,
    pub fields: Vec<FieldName>,
    pub basis: String,
}

/// Everything the page shows.
#[derive(Debug, Clone, PartialEq)]
pub struct PreferencePage {
    pub policy_version: String,
    pub purposes: Vec<PurposeView>,
    pub recipients: Vec<RecipientView>,
    pub disclosures: Vec<DisclosureLine>,
    pub concerns: Vec<ConcernView>,
}

/// One choice the page's form submits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Purpose(PurposeCode, Choice),
    Recipient(RecipientId, Choice),
}

/// The clock, injectable so tests can step past a token's lifetime.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

#[derive(Clone)]
pub struct Preferences {
    store: Store,
    policy: Arc<Policy>,
    keys: Arc<UnsubscribeKeys>,
    exporter: Exporter,
    concerns: ConcernService,
    base_url: String,
    link_days: u32,
    clock: Clock,
    settle: Settle,
}

impl Preferences {
    pub fn new(
        store: Store,
        policy: Arc<Policy>,
        keys: Arc<UnsubscribeKeys>,
        exporter: Exporter,
        base_url: &str,
        link_days: u32,
    ) -> Self {
        Self {
            concerns: ConcernService::new(store.clone(), policy.clone()),
            store,
            policy,
            keys,
            exporter,
            base_url: base_url.trim_end_matches('/').to_string(),
            link_days,
            clock: Arc::new(Utc::now),
            settle: Settle::default(),
        }
    }

    /// Each change waits until `state` has applied it, so a check on this
    /// server sees it at once.
    pub fn settling(mut self, state: DecisionState) -> Self {
        self.settle = Settle::on(state);
        self
    }

    /// Appends unless it is already the current choice; whether it was.
    async fn append_unless_current(&self, new: &NewConsentRecord) -> Result<bool> {
        let (record, created) = self.store.append_unless_current(new).await?;
        self.settle
            .after(ConsistencyToken::at(record.sequence))
            .await;
        Ok(created)
    }

    /// Replaces the clock, so tests can step past a token's lifetime.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }

    /// One link per subject, in order, to `/p/{token}` on the public URL.
    /// Every id must name a registered subject. Writes nothing.
    pub async fn create_links(
        &self,
        subject_ids: &[SubjectId],
        campaign: Option<String>,
    ) -> Result<Vec<Link>> {
        let mut violations = Violations::new();
        check_link_count(&mut violations, subject_ids.len());
        if let Some(c) = &campaign
            && c.chars().count() > MAX_CAMPAIGN_CHARS
        {
            violations.push(
                "campaign",
                format!("must be at most {MAX_CAMPAIGN_CHARS} characters"),
            );
        }
        if !violations.is_empty() {
            return Err(violations.into());
        }
        let ids: Vec<&SubjectId> = subject_ids.iter().collect();
        let known = self.store.subject_keys(&ids).await?;
        for (i, id) in subject_ids.iter().enumerate() {
            if !known.contains_key(id) {
                violations.push(format!("subject_ids[{i}]"), "is not a registered subject");
            }
        }
        if !violations.is_empty() {
            return Err(violations.into());
        }
        let expires_at = self.now() + TimeDelta::days(i64::from(self.link_days));
        Ok(subject_ids
            .iter()
            .map(|subject_id| {
                let token = Claims {
                    purpose: Use::Page,
                    subject_id: subject_id.clone(),
                    campaign: campaign.clone(),
                    expires_at,
                }
                .seal(&self.keys);
                Link {
                    subject_id: subject_id.clone(),
                    url: format!("{}/p/{token}", self.base_url),
                    expires_at,
                }
            })
            .collect())
    }

    pub fn open(&self, token: &str) -> Result<PreferenceLink, LinkError> {
        let claims = Claims::open(token, &self.keys, Use::Page, self.now())?;
        Ok(PreferenceLink {
            subject_id: claims.subject_id,
            campaign: claims.campaign,
            expires_at: claims.expires_at,
        })
    }

    /// The subject's whole history, oldest first: the page reads few
    /// records, and every view of it is a pure function of them.
    async fn history(&self, subject_id: &SubjectId) -> Result<Vec<ConsentRecord>> {
        if self.store.subject(subject_id).await?.is_none() {
            return Err(Error::subject_not_found(subject_id));
        }
        let mut records = Vec::new();
        let mut after = 0;
        loop {
            let page = self.store.consent_history(subject_id, after, 1000).await?;
            records.extend(page.records);
            match page.next_after {
                Some(next) => after = next,
                None => return Ok(records),
            }
        }
    }

    pub async fn page(&self, link: &PreferenceLink) -> Result<PreferencePage> {
        let history = self.history(&link.subject_id).await?;
        let purposes = (self.policy.purposes())
            .map(|p| {
                let standing = standing(p, &history);
                PurposeView {
                    code: p.code.clone(),
                    description: p.description.clone(),
                    basis: p.basis,
                    allowed: standing.allowed,
                    from_gpc: standing.from_gpc,
                    changeable: p.basis != Basis::Contract,
                }
            })
            .collect();
        let recipients = (self.policy.recipients())
            .filter(|r| r.category == Category::Partner)
            .map(|r| RecipientView {
                id: r.id.clone(),
                name: r.name.clone(),
                contact: r.contact.clone(),
                permitted: permitted(r, &history),
            })
            .collect();
        let export = self.exporter.export(&link.subject_id).await?;
        let disclosures = (export.disclosures.into_iter())
            .filter_map(|d| {
                let at = d.released_at?;
                let recipient_name = (self.policy.recipient(&d.recipient_id))
                    .map_or_else(|| d.recipient_id.to_string(), |r| r.name.clone());
                let basis = match (&d.purpose, d.legal_basis) {
                    (Some(purpose), _) => format!("purpose: {purpose}"),
                    (None, Some(legal)) => format!("legal basis: {}", legal.as_str()),
                    (None, None) => String::new(),
                };
                Some(DisclosureLine {
                    at,
                    recipient_name,
                    fields: d.fields,
                    basis,
                })
            })
            .collect();
        Ok(PreferencePage {
            policy_version: self.policy.version().to_string(),
            purposes,
            recipients,
            disclosures,
            concerns: export.concerns,
        })
    }

    fn record(
        &self,
        link: &PreferenceLink,
        purpose: &PurposeCode,
        choice: Choice,
        evidence: Evidence,
        recipient: Option<RecipientId>,
    ) -> Result<NewConsentRecord> {
        let notice_version = NoticeVersion::parse(self.policy.version())
            .map_err(|e| Error::Internal(anyhow::anyhow!("policy version: {e}")))?;
        Ok(NewConsentRecord {
            subject_id: link.subject_id.clone(),
            purpose: purpose.clone(),
            field: None,
            choice,
            channel: Channel::Web,
            notice_version,
            evidence,
            actor: Actor::parse(ACTOR).expect("a valid actor"),
            request_id: None,
            recipient,
        })
    }

    /// Sec-GPC: on the FIRST visit (no GPC record yet) records REFUSE with
    /// evidence "GPC" for every opt-out purpose that has no explicit
    /// purpose-wide choice; returns how many were recorded.
    pub async fn honour_gpc(&self, link: &PreferenceLink) -> Result<usize> {
        let history = self.history(&link.subject_id).await?;
        let mut written = 0;
        for purpose in gpc_refusals(&self.policy, &history) {
            let evidence = Evidence::parse(GPC_EVIDENCE).expect("a valid evidence");
            let new = self.record(link, &purpose, Choice::Refuse, evidence, None)?;
            written += usize::from(self.append_unless_current(&new).await?);
        }
        Ok(written)
    }

    fn evidence(link: &PreferenceLink) -> Result<Evidence> {
        let text = match &link.campaign {
            Some(campaign) => format!("preference page, campaign: {campaign}"),
            None => "preference page".into(),
        };
        Evidence::parse(text)
            .map_err(|e| Error::Internal(anyhow::anyhow!("campaign too long for evidence: {e}")))
    }

    /// One GRANT/REFUSE per CHANGED purpose or recipient permission:
    /// channel web, the campaign as evidence, the policy version as notice
    /// version. Unchanged → nothing written, so a second POST of the same
    /// form adds nothing. Returns records written and the last one's feed
    /// position.
    pub async fn change(&self, link: &PreferenceLink, changes: &[Change]) -> Result<Saved> {
        let mut violations = Violations::new();
        for (i, change) in changes.iter().enumerate() {
            match change {
                Change::Purpose(code, _) => match self.policy.purpose(code) {
                    None => violations.push(
                        format!("changes[{i}]"),
                        format!("`{code}` is not a purpose of the policy"),
                    ),
                    Some(p) if p.basis == Basis::Contract => violations.push(
                        format!("changes[{i}]"),
                        format!("`{code}` is needed to deliver orders and cannot be changed"),
                    ),
                    Some(_) => {}
                },
                Change::Recipient(id, _) => {
                    if !self
                        .policy
                        .recipient(id)
                        .is_some_and(|r| r.category == Category::Partner)
                    {
                        violations.push(
                            format!("changes[{i}]"),
                            format!("`{id}` is not a partner of the policy"),
                        );
                    }
                }
            }
        }
        if !violations.is_empty() {
            return Err(violations.into());
        }
        let history = self.history(&link.subject_id).await?;
        let evidence = Self::evidence(link)?;
        let mut saved = Saved::default();
        for change in changes {
            match change {
                Change::Purpose(code, choice) => {
                    let purpose = self.policy.purpose(code).expect("checked above");
                    if standing(purpose, &history).allowed == (*choice == Choice::Grant) {
                        continue;
                    }
                    let new = self.record(link, code, *choice, evidence.clone(), None)?;
                    let (record, created) = self.store.append_unless_current(&new).await?;
                    if created {
                        saved.add(&record);
                    }
                }
                Change::Recipient(id, choice) => {
                    let recipient = self.policy.recipient(id).expect("checked above");
                    if permitted(recipient, &history) == (*choice == Choice::Grant) {
                        continue;
                    }
                    for purpose in &recipient.purposes {
                        let new = self.record(
                            link,
                            purpose,
                            *choice,
                            evidence.clone(),
                            Some(id.clone()),
                        )?;
                        saved.add(&self.store.append_consent_record(&new).await?);
                    }
                }
            }
        }
        if let Some(token) = saved.token {
            self.settle.after(token).await;
        }
        Ok(saved)
    }

    pub async fn file_concern(
        &self,
        link: &PreferenceLink,
        category: ConcernCategory,
        description: String,
        contact_preference: String,
    ) -> Result<ConcernView> {
        let mut v = Violations::new();
        let contact = v.check(
            "contact",
            Text::parse(contact_preference, MAX_CONTACT_CHARS),
        );
        let description = v.check("description", Text::parse(description, MAX_TEXT_CHARS));
        let (Some(contact), Some(description)) = (contact, description) else {
            return Err(v.into());
        };
        self.concerns
            .file(&NewConcern {
                subject_id: Some(link.subject_id.clone()),
                contact,
                category,
                description,
                links: Vec::new(),
                actor: Actor::parse(ACTOR).expect("a valid actor"),
                request_id: None,
            })
            .await
    }

    /// A second, short-lived token (15 minutes) bound to the link, shown
    /// after a POST. It never outlives the link.
    pub fn download_token(&self, link: &PreferenceLink) -> String {
        let expires_at = (self.now() + TimeDelta::minutes(DOWNLOAD_MINUTES)).min(link.expires_at);
        Claims {
            purpose: Use::Download,
            subject_id: link.subject_id.clone(),
            campaign: link.campaign.clone(),
            expires_at,
        }
        .seal(&self.keys)
    }

    /// The same content as ExportSubject; records an access event that
    /// ExportSubject lists. The event is recorded first, so the download
    /// lists itself.
    pub async fn download(&self, download_token: &str) -> Result<SubjectExport, DownloadError> {
        let claims = Claims::open(download_token, &self.keys, Use::Download, self.now())?;
        if self.store.subject(&claims.subject_id).await?.is_none() {
            return Err(Error::subject_not_found(&claims.subject_id).into());
        }
        let campaign = claims.campaign.as_deref().unwrap_or("");
        (self.store)
            .record_access(&claims.subject_id, Channel::Web, campaign)
            .await?;
        Ok(self.exporter.export(&claims.subject_id).await?)
    }
}

/// Notes a subject count out of range; the ids are checked on creation.
pub fn check_link_count(violations: &mut Violations, subjects: usize) {
    LINK_SUBJECTS.check(violations, subjects);
}
/// What saving the preference form wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Saved {
    /// Records written: none when the form changed nothing.
    pub written: usize,
    /// The feed position of the last of them.
    pub token: Option<ConsistencyToken>,
}

impl Saved {
    fn add(&mut self, record: &ConsentRecord) {
        self.written += 1;
        let at = ConsistencyToken::at(record.sequence);
        self.token = Some(self.token.map_or(at, |t| t.max(at)));
    }
}
