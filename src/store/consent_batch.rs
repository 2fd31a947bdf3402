//! Group commit for consent records: many callers' records in one
//! transaction, one round trip and one WAL flush. Each record gets the
//! answer it would have had on its own: `consentd_record_consents` (V13)
//! answers an unknown subject or a reused request id per record, and a
//! batch that fails outright for another reason is written again record by
//! record, so that a record that cannot be written fails alone.

use std::sync::Arc;

use tokio_postgres::Row;
use uuid::Uuid;

use super::{Store, consent::consent_digest, idempotency, rows::record_from_row};
use crate::{
    domain::{ConsentRecord, NewConsentRecord},
    error::{Error, Result},
};

/// The whole batch in one statement (V13): the records as parallel arrays,
/// one row back per record.
const RECORD_BATCH: &str = "SELECT * FROM consentd_record_consents(
    $1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
    $8::text[], $9::text[], $10::text[], $11::text[], $12::bytea[])";

/// A failure of the whole batch, shared by every caller in it. It keeps
/// the driver's error as its source, so each caller's error is classified
/// (`Error::is_unavailable`) as a single write's would be.
#[derive(Debug, Clone)]
struct BatchFailed(Arc<Error>);

impl std::fmt::Display for BatchFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the batch of consent records did not commit")
    }
}

impl std::error::Error for BatchFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

impl Store {
    /// Appends each of `batch` as [`Store::append_consent_record`] would,
    /// all in one transaction. Records are written in the order given; the
    /// caller sorts them (see `service::record_writer`) so that two batches
    /// lock subjects in one order and cannot deadlock.
    #[tracing::instrument(name = "store.append_consent_batch", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "append_consent_batch", records = batch.len()))]
    pub async fn append_consent_batch(
        &self,
        batch: &[NewConsentRecord],
    ) -> Vec<Result<ConsentRecord>> {
        match self.write_batch(batch).await {
            Ok(results) => results,
            // The database is gone or the statement was cancelled: nothing
            // of the batch stands, and writing it again one by one would
            // meet the same.
            Err(e) if e.is_unavailable() => {
                let shared = BatchFailed(Arc::new(e));
                batch
                    .iter()
                    .map(|_| Err(Error::Internal(anyhow::Error::new(shared.clone()))))
                    .collect()
            }
            // Something in one record failed the whole statement (and
            // rolled it all back): each record goes again in a transaction
            // of its own, so only the failing one fails.
            Err(e) => {
                tracing::warn!(error = %e, records = batch.len(), "a batch of consent records failed; writing them one by one");
                let mut results = Vec::with_capacity(batch.len());
                for new in batch {
                    results.push(self.append_consent_record(new).await);
                }
                results
            }
        }
    }

    async fn write_batch(&self, batch: &[NewConsentRecord]) -> Result<Vec<Result<ConsentRecord>>> {
        // A record whose digest cannot be keyed is answered without being
        // sent (this store has no key; every record with a request id
        // meets the same).
        let mut results: Vec<Option<Result<ConsentRecord>>> = batch.iter().map(|_| None).collect();
        let mut sent: Vec<(usize, Option<Vec<u8>>)> = Vec::with_capacity(batch.len());
        for (i, new) in batch.iter().enumerate() {
            match &new.request_id {
                None => sent.push((i, None)),
                Some(_) => {
                    match idempotency::keyed(self.request_key.as_ref(), &consent_digest(new)) {
                        Ok(keyed) => sent.push((i, Some(keyed))),
                        Err(e) => results[i] = Some(Err(e)),
                    }
                }
            }
        }
        if !sent.is_empty() {
            let records: Vec<&NewConsentRecord> = sent.iter().map(|&(i, _)| &batch[i]).collect();
            let digests = sent.iter().map(|(_, d)| d.as_deref()).collect();
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let rows = tx
                .query(
                    &tx.prepare_cached(RECORD_BATCH).await?,
                    &Columns::of(&records, digests).params(),
                )
                .await?;
            if rows.len() != records.len() {
                return Err(Error::Internal(anyhow::anyhow!(
                    "{} answers for a batch of {} consent records",
                    rows.len(),
                    records.len()
                )));
            }
            for row in rows {
                let item = usize::try_from(row.get::<_, i64>("item") - 1)
                    .ok()
                    .and_then(|at| sent.get(at))
                    .ok_or_else(|| anyhow::anyhow!("an answer for no record of the batch"))?;
                results[item.0] = Some(answer(&batch[item.0], &row));
            }
            tx.commit().await?;
            super::feed::wake_streams(&client).await;
        }
        Ok(results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(Error::Internal(anyhow::anyhow!(
                        "a record of the batch was not answered"
                    )))
                })
            })
            .collect())
    }
}

/// One record's answer from its row: its record (written now, or by the
/// first call with its request id), or the error it would have had alone.
fn answer(new: &NewConsentRecord, row: &Row) -> Result<ConsentRecord> {
    match row.get::<_, &str>("outcome") {
        "created" => record_from_row(row),
        "replayed" if row.get::<_, Option<Uuid>>("record_id").is_some() => record_from_row(row),
        "replayed" => Err(Error::Internal(anyhow::anyhow!(
            "an idempotency key names no consent record"
        ))),
        "reused" => Err(Error::RequestIdReused),
        "not_found" => Err(Error::subject_not_found(&new.subject_id)),
        other => Err(Error::Internal(anyhow::anyhow!(
            "unknown outcome `{other}` for a consent record"
        ))),
    }
}

/// The batch as the statement takes it: one array per column.
struct Columns<'a> {
    subjects: Vec<&'a str>,
    record_ids: Vec<Uuid>,
    purposes: Vec<&'a str>,
    fields: Vec<&'a str>,
    choices: Vec<&'a str>,
    channels: Vec<&'a str>,
    notices: Vec<&'a str>,
    evidence: Vec<&'a str>,
    actors: Vec<&'a str>,
    request_ids: Vec<Option<&'a str>>,
    recipients: Vec<&'a str>,
    digests: Vec<Option<&'a [u8]>>,
}

impl<'a> Columns<'a> {
    fn of(records: &[&'a NewConsentRecord], digests: Vec<Option<&'a [u8]>>) -> Self {
        let column =
            |f: fn(&'a NewConsentRecord) -> &'a str| records.iter().map(|r| f(r)).collect();
        Self {
            subjects: column(|r| r.subject_id.as_str()),
            record_ids: records.iter().map(|_| Uuid::now_v7()).collect(),
            purposes: column(|r| r.purpose.as_str()),
            fields: column(|r| r.field.as_ref().map_or("", |f| f.as_str())),
            choices: column(|r| r.choice.as_str()),
            channels: column(|r| r.channel.as_str()),
            notices: column(|r| r.notice_version.as_str()),
            evidence: column(|r| r.evidence.as_str()),
            actors: column(|r| r.actor.as_str()),
            request_ids: records
                .iter()
                .map(|r| r.request_id.as_ref().map(|id| id.as_str()))
                .collect(),
            recipients: column(|r| r.recipient.as_ref().map_or("", |id| id.as_str())),
            digests,
        }
    }

    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 12] {
        [
            &self.subjects,
            &self.record_ids,
            &self.purposes,
            &self.fields,
            &self.choices,
            &self.channels,
            &self.notices,
            &self.evidence,
            &self.actors,
            &self.request_ids,
            &self.recipients,
            &self.digests,
        ]
    }
}
