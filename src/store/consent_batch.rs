//! Group commit for consent records: many callers' records in one
//! transaction and one WAL flush. Each record runs under its own savepoint,
//! so one that fails (an unknown subject, a reused request id) fails alone,
//! with the error it would have had on its own.

use std::sync::Arc;

use deadpool_postgres::Transaction;
use uuid::Uuid;

use super::{
    Store,
    consent::consent_digest,
    idempotency,
    rows::{RECORD_COLUMNS, record_from_row},
};
use crate::{
    domain::{ConsentRecord, NewConsentRecord},
    error::{Error, Result},
};

/// One record's whole write in one statement, so one round trip: claims
/// the request id (its result, the record id, is known before the insert,
/// so no second statement settles it), locks the subject's row, and
/// inserts the record unless the claim found the key taken. The claim runs
/// first: the insert's gate on it does not depend on the subject's row, so
/// it is evaluated once, before the row is locked, keeping the order of the
/// single-record path (claim, then lock). Always one row: the record's
/// columns (null when nothing was inserted) and whether the key was
/// claimed. The transaction has an id before the insert takes a sequence:
/// the batch's first statement asks for it (see `SAVEPOINT_FIRST`).
fn append_sql() -> String {
    let returned = RECORD_COLUMNS
        .split(',')
        .map(|c| format!("ins.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "WITH claim AS (
            INSERT INTO idempotency_keys (request_id, digest, subject_key, result_ref)
            SELECT $10, $12::bytea, (SELECT subject_key FROM subjects WHERE subject_id = $1), $2::uuid::text
             WHERE $10::text IS NOT NULL
            ON CONFLICT (request_id) DO NOTHING
            RETURNING true AS claimed),
         ins AS (
            INSERT INTO consent_records (subject_id, record_id, purpose, field, choice,
                 channel, notice_version, evidence, actor, request_id, recipient)
            SELECT s.subject_id, $2::uuid, $3, $4, $5, $6, $7, $8, $9, $10, $11
              FROM (SELECT subject_id FROM subjects WHERE subject_id = $1
                    FOR NO KEY UPDATE) AS s
             WHERE $10::text IS NULL OR EXISTS (SELECT 1 FROM claim)
            RETURNING {RECORD_COLUMNS})
         SELECT {returned}, EXISTS (SELECT 1 FROM claim) AS claimed
           FROM (VALUES (1)) AS one LEFT JOIN ins ON true"
    )
}

/// Before a batch's first record: pg_current_xact_id() gives the
/// transaction its id before any record takes a sequence number; the
/// change feed relies on that to tell a rolled-back gap from a transaction
/// still in flight.
const SAVEPOINT_FIRST: &str = "SELECT pg_current_xact_id(); SAVEPOINT record";
/// Before every later record: the previous record's savepoint is released
/// (it succeeded, or was rolled back to), so they never nest; nested
/// savepoints beyond 64 would overflow PostgreSQL's subtransaction cache
/// and slow every snapshot in the cluster.
const SAVEPOINT_NEXT: &str = "RELEASE SAVEPOINT record; SAVEPOINT record";

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
    /// all in one transaction. The outer error is the batch's (no record
    /// was written), the inner ones each record's own. Records are written
    /// in the order given; the caller sorts them (see
    /// `service::record_writer`) so that two batches lock subjects in one
    /// order and cannot deadlock.
    #[tracing::instrument(name = "store.append_consent_batch", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "append_consent_batch", records = batch.len()))]
    pub async fn append_consent_batch(
        &self,
        batch: &[NewConsentRecord],
    ) -> Vec<Result<ConsentRecord>> {
        match self.write_batch(batch).await {
            Ok(results) => results,
            Err(e) => {
                let shared = BatchFailed(Arc::new(e));
                batch
                    .iter()
                    .map(|_| Err(Error::Internal(anyhow::Error::new(shared.clone()))))
                    .collect()
            }
        }
    }

    async fn write_batch(&self, batch: &[NewConsentRecord]) -> Result<Vec<Result<ConsentRecord>>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let statement = tx.prepare_cached(&append_sql()).await?;
        let mut results = Vec::with_capacity(batch.len());
        for (i, new) in batch.iter().enumerate() {
            let savepoint = if i == 0 {
                SAVEPOINT_FIRST
            } else {
                SAVEPOINT_NEXT
            };
            results.push(self.write_one(&tx, &statement, savepoint, new).await?);
        }
        tx.commit().await?;
        super::feed::wake_streams(&client).await;
        Ok(results)
    }

    /// One record under the savepoint `savepoint` opens. The outer error
    /// ends the batch (the connection or the transaction is unusable); the
    /// inner one is this record's.
    async fn write_one(
        &self,
        tx: &Transaction<'_>,
        statement: &tokio_postgres::Statement,
        savepoint: &str,
        new: &NewConsentRecord,
    ) -> Result<Result<ConsentRecord>> {
        let keyed = match &new.request_id {
            Some(_) => match idempotency::keyed(self.request_key.as_ref(), &consent_digest(new)) {
                Ok(keyed) => Some(keyed),
                Err(e) => return Ok(Err(e)),
            },
            None => None,
        };
        let record_id = Uuid::now_v7();
        let field = new.field.as_ref().map_or("", |f| f.as_str());
        let request_id = new.request_id.as_ref().map(|r| r.as_str());
        let recipient = new.recipient.as_ref().map_or("", |r| r.as_str());
        // The savepoint and the statement go out together, pipelined: one
        // round trip.
        let (subject_id, purpose, choice, channel, notice, evidence, actor) = (
            new.subject_id.as_str(),
            new.purpose.as_str(),
            new.choice.as_str(),
            new.channel.as_str(),
            new.notice_version.as_str(),
            new.evidence.as_str(),
            new.actor.as_str(),
        );
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 12] = [
            &subject_id,
            &record_id,
            &purpose,
            &field,
            &choice,
            &channel,
            &notice,
            &evidence,
            &actor,
            &request_id,
            &recipient,
            &keyed,
        ];
        let (opened, written) = tokio::join!(
            tx.batch_execute(savepoint),
            tx.query_one(statement, &params),
        );
        let written = opened.and(written);
        let row = match written {
            Ok(row) => row,
            Err(e) => return self.undo(tx, e.into()).await,
        };
        if row.get::<_, Option<Uuid>>("record_id").is_some() {
            return Ok(record_from_row(&row));
        }
        let claimed: bool = row.get("claimed");
        let (Some(request_id), Some(keyed), false) = (&new.request_id, &keyed, claimed) else {
            // Claimed (or no key to claim) but nothing inserted: there is
            // no such subject. The claim goes with the savepoint.
            let missing = Error::subject_not_found(&new.subject_id);
            return self.undo(tx, missing).await;
        };
        // The key was taken: by an earlier call, by a concurrent one this
        // claim waited for, or by an earlier record of this very batch.
        let replayed = match idempotency::replay(tx, request_id, keyed).await {
            Ok(result) => result,
            Err(e) => return self.undo(tx, e).await,
        };
        let record_id: Uuid = match replayed.parse() {
            Ok(id) => id,
            Err(e) => {
                let bad = Error::Internal(anyhow::anyhow!(
                    "idempotency key holds a bad record id: {e}"
                ));
                return self.undo(tx, bad).await;
            }
        };
        let row = tx
            .query_one(
                &tx.prepare_cached(&format!(
                    "SELECT {RECORD_COLUMNS} FROM consent_records WHERE record_id = $1"
                ))
                .await?,
                &[&record_id],
            )
            .await?;
        Ok(record_from_row(&row))
    }

    /// Rolls this record back to its savepoint and answers it with `e`. A
    /// lost connection ends the whole batch instead: nothing of it stands.
    async fn undo(&self, tx: &Transaction<'_>, e: Error) -> Result<Result<ConsentRecord>> {
        if e.is_unavailable() {
            return Err(e);
        }
        tx.batch_execute("ROLLBACK TO SAVEPOINT record").await?;
        Ok(Err(e))
    }
}
