//! Everything held about one subject, for the right of access (GDPR Art. 15,
//! PIPL Art. 45).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    Store,
    rows::{stored, stored_enum},
};
use crate::{
    domain::{Actor, Channel, Concern, FieldName, SealedValue, SubjectId},
    error::Result,
};

/// Every table with a `subject_id` column, and so every table the export
/// must read. A test compares this list with the live schema: a new table
/// holding subject data fails it until the export covers that table too.
pub const EXPORTED_TABLES: &[&str] = &[
    "subjects",
    "consent_records",
    "consent_state",
    "personal_data",
    "collection_records",
    "disclosures",
    "disclosure_events",
    "concerns",
    "access_events",
];

/// One stored personal-data value, still sealed.
#[derive(Debug, Clone)]
pub struct StoredField {
    pub field: FieldName,
    pub sealed: SealedValue,
    pub collected_for: Vec<String>,
    pub collected_at: DateTime<Utc>,
    pub verified_at: Option<DateTime<Utc>>,
}

/// One collection record (R2): what was collected, why, how, when.
#[derive(Debug, Clone)]
pub struct CollectionRecord {
    pub collection_id: Uuid,
    pub field: FieldName,
    pub collected_for: Vec<String>,
    pub channel: Channel,
    pub notice_version: String,
    pub actor: Actor,
    pub collected_at: DateTime<Utc>,
}

impl Store {
    #[tracing::instrument(name = "store.stored_fields", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "stored_fields"))]
    pub async fn stored_fields(&self, subject_id: &SubjectId) -> Result<Vec<StoredField>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client.prepare_cached("SELECT field, key_id, nonce, ciphertext, collected_for, collected_at, verified_at
                   FROM personal_data WHERE subject_id = $1 ORDER BY field").await?,
                &[&subject_id.as_str()],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(StoredField {
                    field: stored(FieldName::parse(row.get::<_, String>(0)), "field")?,
                    sealed: SealedValue {
                        key_id: row.get(1),
                        nonce: row.get(2),
                        ciphertext: row.get(3),
                    },
                    collected_for: row.get(4),
                    collected_at: row.get(5),
                    verified_at: row.get(6),
                })
            })
            .collect()
    }

    #[tracing::instrument(name = "store.collection_records", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "collection_records"))]
    pub async fn collection_records(
        &self,
        subject_id: &SubjectId,
    ) -> Result<Vec<CollectionRecord>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client.prepare_cached("SELECT collection_id, field, collected_for, channel, notice_version, actor, collected_at
                   FROM collection_records WHERE subject_id = $1 ORDER BY collected_at, collection_id").await?,
                &[&subject_id.as_str()],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(CollectionRecord {
                    collection_id: row.get(0),
                    field: stored(FieldName::parse(row.get::<_, String>(1)), "field")?,
                    collected_for: row.get(2),
                    channel: stored_enum(Channel::from_stored(row.get(3)), "channel")?,
                    notice_version: row.get(4),
                    actor: stored(Actor::parse(row.get::<_, String>(5)), "actor")?,
                    collected_at: row.get(6),
                })
            })
            .collect()
    }

    /// The concerns naming this subject, with their histories.
    #[tracing::instrument(name = "store.concerns_of", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "concerns_of"))]
    pub async fn concerns_of(&self, subject_id: &SubjectId) -> Result<Vec<Concern>> {
        let ids: Vec<Uuid> = {
            let client = self.client().await?;
            client
                .query(
                    &client.prepare_cached("SELECT concern_id FROM concerns WHERE subject_id = $1 ORDER BY filed_at, concern_id").await?,
                    &[&subject_id.as_str()],
                )
                .await?
                .iter()
                .map(|row| row.get(0))
                .collect()
        };
        let mut concerns = Vec::with_capacity(ids.len());
        for id in ids {
            concerns.extend(self.concern(id).await?);
        }
        Ok(concerns)
    }
}
