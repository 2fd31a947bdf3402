//! The right of access: everything held about one person, in one answer.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::{
    domain::{
        ConsentRecord, Disclosure, FieldName, PersonalValue, StoredChoice, Subject, SubjectId,
    },
    error::{Error, Result},
    ledger::ChainHead,
    policy::concern::ConcernDeadlines,
    service::{concern::ConcernView, vault::DataKeys},
    store::{AccessEvent, CollectionRecord, DisclosureFilter, Store},
};

/// One personal-data value, decrypted, with its collection facts.
#[derive(Debug, Clone)]
pub struct ExportedField {
    pub field: FieldName,
    pub value: PersonalValue,
    pub collected_for: Vec<String>,
    pub collected_at: DateTime<Utc>,
    pub verified_at: Option<DateTime<Utc>>,
}

/// Everything stored about one subject.
#[derive(Debug, Clone)]
pub struct SubjectExport {
    pub subject: Subject,
    pub personal_data: Vec<ExportedField>,
    pub collections: Vec<CollectionRecord>,
    pub consent_history: Vec<ConsentRecord>,
    pub current_choices: Vec<StoredChoice>,
    pub disclosures: Vec<Disclosure>,
    /// With their deadlines and whether they are overdue at `exported_at`.
    pub concerns: Vec<ConcernView>,
    /// Each download of the data from the person's own page.
    pub access_events: Vec<AccessEvent>,
    pub exported_at: DateTime<Utc>,
    /// The end of the subject's history chain; None before its first record.
    pub chain_head: Option<ChainHead>,
}

#[derive(Clone)]
pub struct Exporter {
    store: Store,
    keys: Arc<DataKeys>,
    /// The policy's concern deadlines, for each concern's view.
    deadlines: ConcernDeadlines,
}

impl Exporter {
    pub fn new(store: Store, keys: Arc<DataKeys>, deadlines: ConcernDeadlines) -> Self {
        Self {
            store,
            keys,
            deadlines,
        }
    }

    /// Reads every table in `store::EXPORTED_TABLES` for the subject.
    pub async fn export(&self, subject_id: &SubjectId) -> Result<SubjectExport> {
        let subject = self
            .store
            .subject(subject_id)
            .await?
            .ok_or_else(|| Error::subject_not_found(subject_id))?;
        let mut personal_data = Vec::new();
        for stored in self.store.stored_fields(subject_id).await? {
            let value = self
                .keys
                .open(subject_id, &stored.field, &stored.sealed)
                .map_err(Error::Internal)?;
            personal_data.push(ExportedField {
                field: stored.field,
                value,
                collected_for: stored.collected_for,
                collected_at: stored.collected_at,
                verified_at: stored.verified_at,
            });
        }
        let mut consent_history = Vec::new();
        let mut after = 0;
        loop {
            let page = self.store.consent_history(subject_id, after, 1000).await?;
            consent_history.extend(page.records);
            match page.next_after {
                Some(next) => after = next,
                None => break,
            }
        }
        let current_choices = self
            .store
            .current_state_for(&[subject_id])
            .await?
            .remove(subject_id)
            .map(|state| state.choices)
            .unwrap_or_default();
        let filter = DisclosureFilter {
            subject_id: Some(subject_id.clone()),
            overdue_at: None,
        };
        let mut disclosures = Vec::new();
        let mut after = None;
        loop {
            let page = self.store.list_disclosures(&filter, after, 1000).await?;
            disclosures.extend(page.disclosures);
            match page.next_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let exported_at = Utc::now();
        let concerns = self
            .store
            .concerns_of(subject_id)
            .await?
            .into_iter()
            .map(|concern| ConcernView::new(concern, self.deadlines, exported_at))
            .collect();
        Ok(SubjectExport {
            subject,
            personal_data,
            collections: self.store.collection_records(subject_id).await?,
            consent_history,
            current_choices,
            disclosures,
            concerns,
            access_events: self.store.access_events_of(subject_id).await?,
            exported_at,
            chain_head: self.store.chain_head_of(subject_id).await?,
        })
    }
}
