//! Bulk refusals: one transaction per batch, loaded through COPY.

use std::pin::pin;

use tokio_postgres::{binary_copy::BinaryCopyInWriter, types::Type};

use super::Store;
use crate::{
    domain::{Actor, ConsistencyToken, Evidence, FieldName, NoticeVersion, PurposeCode, SubjectId},
    error::Result,
};

/// What every imported refusal records.
#[derive(Debug, Clone)]
pub struct RefusalImport {
    pub purpose: PurposeCode,
    pub field: Option<FieldName>,
    pub notice_version: NoticeVersion,
    pub evidence: Evidence,
    pub actor: Actor,
}

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Subjects that were not registered and now are (with no personal data).
    pub registered: u64,
    /// New REFUSE records.
    pub refused: u64,
}

impl Store {
    /// Registers unknown subjects and appends a REFUSE for each subject whose
    /// current choice for the purpose and field is not already a refusal, in
    /// one transaction. Running the same batch twice adds nothing the second
    /// time, so an interrupted import can simply be run again.
    #[tracing::instrument(name = "store.import_refusals", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "import_refusals", rows = subjects.len()))]
    pub async fn import_refusals(
        &self,
        spec: &RefusalImport,
        subjects: &[SubjectId],
    ) -> Result<BatchOutcome> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // A transaction id before any sequence number: see the change feed.
        // The temporary table lives as long as the pooled connection and is
        // emptied at each commit, so batches do not churn the catalog.
        tx.batch_execute(
            "SELECT pg_current_xact_id();
             CREATE TEMP TABLE IF NOT EXISTS import_batch (position bigint, subject_id text)
                 ON COMMIT DELETE ROWS;",
        )
        .await?;
        let sink = tx
            .copy_in("COPY import_batch (position, subject_id) FROM STDIN (FORMAT binary)")
            .await?;
        let mut writer = pin!(BinaryCopyInWriter::new(sink, &[Type::INT8, Type::TEXT]));
        for (position, subject) in subjects.iter().enumerate() {
            writer
                .as_mut()
                .write(&[&(position as i64), &subject.as_str()])
                .await?;
        }
        writer.finish().await?;

        let registered = tx
            .execute(
                &tx.prepare_cached(
                    "INSERT INTO subjects (subject_id, kind, notice_version, channel)
                 SELECT DISTINCT subject_id, 'individual', $1, 'import' FROM import_batch
                 ON CONFLICT (subject_id) DO NOTHING",
                )
                .await?,
                &[&spec.notice_version.as_str()],
            )
            .await?;
        // No per-subject row lock here (unlike RecordConsent): locking a
        // whole batch of rows costs more than the rest of the import, and
        // the state trigger (V9) already keeps the newest record when an API
        // write for the same subject races this batch.
        let field = spec.field.as_ref().map_or("", |f| f.as_str());
        let refused = tx
            .execute(
                &tx.prepare_cached("WITH todo AS (
                    SELECT DISTINCT ON (b.subject_id) b.subject_id, b.position
                      FROM import_batch b
                      LEFT JOIN consent_state s
                        ON s.subject_id = b.subject_id AND s.purpose = $1 AND s.field = $2
                     WHERE s.choice IS DISTINCT FROM 'refuse'
                     ORDER BY b.subject_id, b.position
                 )
                 INSERT INTO consent_records (subject_id, record_id, purpose, field, choice, channel,
                                              notice_version, evidence, actor)
                 SELECT subject_id, gen_random_uuid(), $1, $2, 'refuse', 'import', $3, $4, $5
                   FROM todo ORDER BY position").await?,
                &[
                    &spec.purpose.as_str(),
                    &field,
                    &spec.notice_version.as_str(),
                    &spec.evidence.as_str(),
                    &spec.actor.as_str(),
                ],
            )
            .await?;
        tx.commit().await?;
        if refused > 0 {
            super::feed::wake_streams(&client).await;
        }
        Ok(BatchOutcome {
            registered,
            refused,
        })
    }
}

impl Store {
    /// The feed position of the last refusal an import of `spec` wrote after
    /// feed position `since` (read before it started), or `since` when it
    /// wrote none. Read after the import, from its records' fixed values,
    /// through the sequence index: only what was written since is scanned.
    #[tracing::instrument(name = "store.import_position", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "import_position"))]
    pub async fn import_position(
        &self,
        spec: &RefusalImport,
        since: i64,
    ) -> Result<ConsistencyToken> {
        let client = self.client().await?;
        let field = spec.field.as_ref().map_or("", |f| f.as_str());
        let last: Option<i64> = client
            .query_one(
                &client
                    .prepare_cached(
                        "SELECT max(sequence) FROM consent_records
                      WHERE sequence > $1 AND channel = 'import' AND choice = 'refuse'
                        AND purpose = $2 AND field = $3 AND evidence = $4 AND actor = $5",
                    )
                    .await?,
                &[
                    &since,
                    &spec.purpose.as_str(),
                    &field,
                    &spec.evidence.as_str(),
                    &spec.actor.as_str(),
                ],
            )
            .await?
            .get(0);
        Ok(ConsistencyToken::at(last.unwrap_or(since)))
    }
}
