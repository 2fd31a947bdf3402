//! The person's own page, behind the HTML: the signed link that opens it,
//! what it shows, the choices it records, the concerns it files and the
//! data download it gives. The token format is in `token`.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::{
    domain::{Choice, ConcernCategory, FieldName, PurposeCode, RecipientId, SubjectId},
    error::Result,
    policy::{Basis, Policy},
    service::{
        concern::{ConcernService, ConcernView},
        export::{Exporter, SubjectExport},
        unsubscribe::UnsubscribeKeys,
    },
    store::Store,
};

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
        }
    }

    /// Replaces the clock; for tests.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    pub fn open(&self, token: &str) -> Result<PreferenceLink, LinkError> {
        let _ = (token, &self.store, &self.policy, &self.keys, &self.exporter);
        let _ = (&self.concerns, &self.base_url, self.link_days, &self.clock);
        todo!()
    }

    pub async fn page(&self, link: &PreferenceLink) -> Result<PreferencePage> {
        let _ = link;
        todo!()
    }

    /// Sec-GPC: on the FIRST visit (no GPC record yet) records REFUSE with
    /// evidence "GPC" for every opt-out purpose that has no explicit
    /// purpose-wide choice; returns how many were recorded.
    pub async fn honour_gpc(&self, link: &PreferenceLink) -> Result<usize> {
        let _ = link;
        todo!()
    }

    /// One GRANT/REFUSE per CHANGED purpose or recipient permission:
    /// channel web, the campaign as evidence, the policy version as notice
    /// version. Unchanged → nothing written, so a second POST of the same
    /// form adds nothing. Returns records written.
    pub async fn change(&self, link: &PreferenceLink, changes: &[Change]) -> Result<usize> {
        let _ = (link, changes);
        todo!()
    }

    pub async fn file_concern(
        &self,
        link: &PreferenceLink,
        category: ConcernCategory,
        description: String,
        contact_preference: String,
    ) -> Result<ConcernView> {
        let _ = (link, category, description, contact_preference);
        todo!()
    }

    /// A second, short-lived token (15 minutes) bound to the link, shown
    /// after a POST.
    pub fn download_token(&self, link: &PreferenceLink) -> String {
        let _ = link;
        todo!()
    }

    /// The same content as ExportSubject; records an access event that
    /// ExportSubject lists.
    pub async fn download(&self, download_token: &str) -> Result<SubjectExport, DownloadError> {
        let _ = download_token;
        todo!()
    }
}
