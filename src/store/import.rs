//! Bulk refusals: one transaction and one statement per batch.

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
        // One statement per batch: the function (V12) registers, chains and
        // appends set-wise, so no record runs the per-row ledger trigger.
        // No per-subject row lock here (unlike RecordConsent): locking a
        // whole batch of subjects costs more than the rest of the import,
        // and consent_state keeps the newest record when an API write for
        // the same subject races this batch.
        let ids: Vec<&str> = subjects.iter().map(SubjectId::as_str).collect();
        let field = spec.field.as_ref().map_or("", |f| f.as_str());
        let row = tx
            .query_one(
                &tx.prepare_cached(
                    "SELECT registered, refused FROM consentd_import_refusals($1, $2, $3, $4, $5, $6)",
                )
                .await?,
                &[
                    &ids,
                    &spec.purpose.as_str(),
                    &field,
                    &spec.notice_version.as_str(),
                    &spec.evidence.as_str(),
                    &spec.actor.as_str(),
                ],
            )
            .await?;
        let (registered, refused): (i64, i64) = (row.get(0), row.get(1));
        let (registered, refused) = (registered as u64, refused as u64);
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
