//! The vault: sealed personal data values and the collection records that
//! say what each was collected for (R2, R3). Values arrive and leave sealed:
//! this module never sees a plaintext value.

use std::collections::HashMap;

use anyhow::anyhow;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    Store,
    idempotency::{self, Claim, RequestDigest},
    rows::{field_data_from, stored},
};
use crate::{
    domain::{ConsistencyToken, FieldData, FieldName, NewPersonalData, SealedValue, SubjectId},
    error::{Error, Result},
};

/// A sealed value with the row it belongs to, for key rotation.
#[derive(Debug, Clone)]
pub struct SealedRow {
    pub subject_id: SubjectId,
    pub field: FieldName,
    pub sealed: SealedValue,
}

impl Store {
    /// Stores a new sealed value for a field (replacing the old one, whose
    /// verification no longer applies) and appends its collection record,
    /// in one transaction. Returns the collection record's id and the stored
    /// value's feed position (on a retry, the first call's id and the
    /// value's position now).
    #[tracing::instrument(name = "store.put_personal_data", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "put_personal_data"))]
    pub async fn put_personal_data(
        &self,
        new: &NewPersonalData,
        sealed: &SealedValue,
    ) -> Result<(Uuid, ConsistencyToken)> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let collected_for: Vec<&str> = new.collected_for.iter().map(|p| p.as_str()).collect();
        if let Some(request_id) = &new.request_id {
            // The value is left out of the digest: a hash of a phone number
            // is as good as the number to anyone who can enumerate numbers.
            let mut parts = vec![
                new.subject_id.as_str(),
                new.field.as_str(),
                new.channel.as_str(),
                new.notice_version.as_str(),
                new.actor.as_str(),
            ];
            parts.extend(&collected_for);
            let digest = RequestDigest::of("PutPersonalData", &parts);
            if let Claim::Replay(id) = idempotency::claim(
                &tx,
                self.request_key.as_ref(),
                request_id,
                &digest,
                Some(&new.subject_id),
            )
            .await?
            {
                let id = id
                    .parse()
                    .map_err(|e| Error::Internal(anyhow!("idempotency key holds a bad id: {e}")))?;
                let now = tx
                    .query_opt(
                        &tx.prepare_cached(
                            "SELECT sequence FROM personal_data WHERE subject_id = $1 AND field = $2",
                        )
                        .await?,
                        &[&new.subject_id.as_str(), &new.field.as_str()],
                    )
                    .await?;
                // No row: erasure took it (and the key with it, so this is
                // a race with the erasure); nothing of it is left to wait for.
                return Ok((id, ConsistencyToken::at(now.map_or(0, |r| r.get(0)))));
            }
        }
        let locked = tx
            .query_opt(
                &tx.prepare_cached(
                    "SELECT 1 FROM subjects WHERE subject_id = $1 FOR NO KEY UPDATE",
                )
                .await?,
                &[&new.subject_id.as_str()],
            )
            .await?;
        if locked.is_none() {
            return Err(Error::subject_not_found(&new.subject_id));
        }
        let collection_id = Uuid::now_v7();
        let row = tx
            .query_one(
                &tx.prepare_cached("INSERT INTO collection_records (subject_id, collection_id, field, collected_for,
                     channel, notice_version, actor, request_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 RETURNING collected_at").await?,
                &[
                    &new.subject_id.as_str(),
                    &collection_id,
                    &new.field.as_str(),
                    &collected_for,
                    &new.channel.as_str(),
                    &new.notice_version.as_str(),
                    &new.actor.as_str(),
                    &new.request_id.as_ref().map(|r| r.as_str()),
                ],
            )
            .await?;
        let collected_at: DateTime<Utc> = row.get(0);
        // The sequence is drawn by a trigger (V11) on insert and update alike.
        let row = tx
            .query_one(
                &tx.prepare_cached(
                    "INSERT INTO personal_data (subject_id, field, key_id, nonce, ciphertext,
                 collected_for, collected_at, verified_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)
             ON CONFLICT (subject_id, field) DO UPDATE
                SET key_id = EXCLUDED.key_id, nonce = EXCLUDED.nonce,
                    ciphertext = EXCLUDED.ciphertext, collected_for = EXCLUDED.collected_for,
                    collected_at = EXCLUDED.collected_at, verified_at = NULL
             RETURNING sequence",
                )
                .await?,
                &[
                    &new.subject_id.as_str(),
                    &new.field.as_str(),
                    &sealed.key_id,
                    &sealed.nonce,
                    &sealed.ciphertext,
                    &collected_for,
                    &collected_at,
                ],
            )
            .await?;
        if let Some(request_id) = &new.request_id {
            idempotency::settle(&tx, request_id, &collection_id.to_string()).await?;
        }
        tx.commit().await?;
        // The field's new age is on the feed: the servers' memory follows it.
        super::feed::wake_streams(&client).await;
        Ok((collection_id, ConsistencyToken::at(row.get(0))))
    }

    /// Notes that the field's value was confirmed now (R3), with the row's
    /// new feed position. `None` when no value is stored.
    #[tracing::instrument(name = "store.verify_personal_data", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "verify_personal_data"))]
    pub async fn verify_personal_data(
        &self,
        subject_id: &SubjectId,
        field: &FieldName,
    ) -> Result<Option<(DateTime<Utc>, ConsistencyToken)>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &client
                    .prepare_cached(
                        "UPDATE personal_data SET verified_at = clock_timestamp()
                  WHERE subject_id = $1 AND field = $2
                  RETURNING verified_at, sequence",
                    )
                    .await?,
                &[&subject_id.as_str(), &field.as_str()],
            )
            .await?;
        // The field's new age is on the feed: the servers' memory follows it.
        super::feed::wake_streams(&client).await;
        Ok(row.map(|r| (r.get(0), ConsistencyToken::at(r.get(1)))))
    }

    /// What is stored for each given subject, without the values.
    #[tracing::instrument(name = "store.field_data_for", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "field_data_for", subjects = ids.len()))]
    pub async fn field_data_for(
        &self,
        ids: &[&SubjectId],
    ) -> Result<HashMap<SubjectId, Vec<FieldData>>> {
        let client = self.client().await?;
        let ids: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT subject_id, field, collected_for, collected_at, verified_at
                   FROM personal_data WHERE subject_id = ANY($1)
                  ORDER BY subject_id, field",
                    )
                    .await?,
                &[&ids],
            )
            .await?;
        let mut out: HashMap<SubjectId, Vec<FieldData>> = HashMap::new();
        for row in rows {
            let subject = stored(SubjectId::parse(row.get::<_, String>(0)), "subject_id")?;
            out.entry(subject)
                .or_default()
                .push(field_data_from(&row, 1)?);
        }
        Ok(out)
    }

    /// The sealed values of some fields of one subject; absent fields are
    /// left out.
    #[tracing::instrument(name = "store.sealed_values", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "sealed_values"))]
    pub async fn sealed_values(
        &self,
        subject_id: &SubjectId,
        fields: &[FieldName],
    ) -> Result<HashMap<FieldName, SealedValue>> {
        let client = self.client().await?;
        let names: Vec<&str> = fields.iter().map(|f| f.as_str()).collect();
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT field, key_id, nonce, ciphertext FROM personal_data
                  WHERE subject_id = $1 AND field = ANY($2)",
                    )
                    .await?,
                &[&subject_id.as_str(), &names],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    stored(FieldName::parse(row.get::<_, String>(0)), "field")?,
                    SealedValue {
                        key_id: row.get(1),
                        nonce: row.get(2),
                        ciphertext: row.get(3),
                    },
                ))
            })
            .collect()
    }

    /// Up to `limit` values sealed with a key other than `current`.
    #[tracing::instrument(name = "store.sealed_under_other_keys", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "sealed_under_other_keys", limit))]
    pub async fn sealed_under_other_keys(
        &self,
        current: &str,
        limit: i64,
    ) -> Result<Vec<SealedRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT subject_id, field, key_id, nonce, ciphertext FROM personal_data
                  WHERE key_id <> $1 ORDER BY subject_id, field LIMIT $2",
                    )
                    .await?,
                &[&current, &limit],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(SealedRow {
                    subject_id: stored(SubjectId::parse(row.get::<_, String>(0)), "subject_id")?,
                    field: stored(FieldName::parse(row.get::<_, String>(1)), "field")?,
                    sealed: SealedValue {
                        key_id: row.get(2),
                        nonce: row.get(3),
                        ciphertext: row.get(4),
                    },
                })
            })
            .collect()
    }

    /// Replaces sealed values in one transaction, each only if the row
    /// still holds the value that was read (a concurrent PutPersonalData
    /// wins). Returns how many rows were replaced.
    #[tracing::instrument(name = "store.reseal", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "reseal", rows = rows.len()))]
    pub async fn reseal(&self, rows: &[(SealedRow, SealedValue)]) -> Result<u64> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let mut replaced = 0;
        for (old, new) in rows {
            replaced += tx
                .execute(
                    &tx.prepare_cached(
                        "UPDATE personal_data SET key_id = $3, nonce = $4, ciphertext = $5
                      WHERE subject_id = $1 AND field = $2 AND key_id = $6 AND nonce = $7",
                    )
                    .await?,
                    &[
                        &old.subject_id.as_str(),
                        &old.field.as_str(),
                        &new.key_id,
                        &new.nonce,
                        &new.ciphertext,
                        &old.sealed.key_id,
                        &old.sealed.nonce,
                    ],
                )
                .await?;
        }
        tx.commit().await?;
        Ok(replaced)
    }
}
