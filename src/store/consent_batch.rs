//! Group commit for consent records: many callers' records in one
//! transaction and one WAL flush. Each record gets the answer it would
//! have had on its own: an unknown subject or a reused request id writes
//! nothing and is answered from what the statement found, and a statement
//! that fails outright is rolled back to the record's own savepoint, so it
//! fails alone.

use std::sync::Arc;

use std::{future::Future, pin::Pin, task::Poll};

use deadpool_postgres::Transaction;
use tokio_postgres::{Row, Statement, types::ToSql};
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

/// One record's whole write in one statement: claims the request id (its
/// result, the record id, is known before the insert, so no second
/// statement settles it), locks the subject's row, and inserts the record
/// unless the claim found the key taken. The claim runs first: the insert's
/// gate on it does not depend on the subject's row, so it is evaluated
/// once, before the row is locked, keeping the order of the single-record
/// path (claim, then lock). A key is claimed only for a registered subject,
/// so that a record that cannot be written writes nothing, and the
/// statement never fails for a caller's mistake: the batch's statements can
/// all be sent at once. Always one row: the record's columns, or nulls when
/// nothing was inserted (see `Store::settle_unwritten`).
fn append_sql() -> String {
    let returned = RECORD_COLUMNS
        .split(',')
        .map(|c| format!("ins.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "WITH claim AS (
            INSERT INTO idempotency_keys (request_id, digest, subject_key, result_ref)
            SELECT $10, $12::bytea, subject_key, $2::uuid::text
              FROM subjects WHERE subject_id = $1 AND $10::text IS NOT NULL
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
         SELECT {returned} FROM (VALUES (1)) AS one LEFT JOIN ins ON true"
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

/// What one record's statement gave.
enum Sent {
    /// Its row: the record, or nulls when nothing was inserted.
    Row(Row),
    /// It failed, and was rolled back to its savepoint.
    Failed(Error),
    /// Not sent: its digest could not be keyed.
    Refused(Error),
}

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
        let keyed: Vec<Result<Option<Vec<u8>>>> = batch
            .iter()
            .map(|new| match &new.request_id {
                Some(_) => {
                    idempotency::keyed(self.request_key.as_ref(), &consent_digest(new)).map(Some)
                }
                None => Ok(None),
            })
            .collect();
        let record_ids: Vec<Uuid> = batch.iter().map(|_| Uuid::now_v7()).collect();
        let mut sent: Vec<Option<Sent>> = batch.iter().map(|_| None).collect();
        let mut todo: Vec<usize> = Vec::with_capacity(batch.len());
        for (i, key) in keyed.iter().enumerate() {
            match key {
                Ok(_) => todo.push(i),
                Err(e) => sent[i] = Some(Sent::Refused(Error::Internal(anyhow::anyhow!("{e}")))),
            }
        }
        let mut first = true;
        while !todo.is_empty() {
            let params: Vec<Params> = todo
                .iter()
                .map(|&i| {
                    Params::of(
                        &batch[i],
                        &record_ids[i],
                        keyed[i].as_ref().ok().and_then(Option::as_ref),
                    )
                })
                .collect();
            let answers = pipeline(&tx, &statement, &params, first).await;
            first = false;
            // Statements after a failed one failed only because it did: they
            // go again, after this one is rolled back to its savepoint.
            let mut rest = Vec::new();
            for (at, (&i, answer)) in todo.iter().zip(answers).enumerate() {
                match answer {
                    Ok(row) => sent[i] = Some(Sent::Row(row)),
                    Err(e) => {
                        let e = Error::from(e);
                        if e.is_unavailable() {
                            return Err(e);
                        }
                        tx.batch_execute("ROLLBACK TO SAVEPOINT record").await?;
                        sent[i] = Some(Sent::Failed(e));
                        rest = todo[at + 1..].to_vec();
                        break;
                    }
                }
            }
            todo = rest;
        }
        let mut results = Vec::with_capacity(batch.len());
        for ((new, key), sent) in batch.iter().zip(&keyed).zip(sent) {
            results.push(match sent {
                Some(Sent::Row(row)) => {
                    let key = key.as_ref().ok().and_then(Option::as_ref);
                    self.settle_unwritten(&tx, new, key, row).await?
                }
                Some(Sent::Failed(e) | Sent::Refused(e)) => Err(e),
                None => Err(Error::Internal(anyhow::anyhow!(
                    "a record of the batch was not sent"
                ))),
            });
        }
        tx.commit().await?;
        super::feed::wake_streams(&client).await;
        Ok(results)
    }

    /// The answer for a record whose statement ran: the inserted record,
    /// or, when nothing was inserted, what the single-record path answers.
    /// The key was taken (by an earlier call, a concurrent one the claim
    /// waited for, or an earlier record of this batch): its result, or
    /// REQUEST_ID_REUSED for other content, as the claim decides first.
    /// Otherwise the subject is not registered. The outer error ends the
    /// batch.
    async fn settle_unwritten(
        &self,
        tx: &Transaction<'_>,
        new: &NewConsentRecord,
        keyed: Option<&Vec<u8>>,
        row: Row,
    ) -> Result<Result<ConsentRecord>> {
        if row.get::<_, Option<Uuid>>("record_id").is_some() {
            return Ok(record_from_row(&row));
        }
        let missing = || Ok(Err(Error::subject_not_found(&new.subject_id)));
        let (Some(request_id), Some(keyed)) = (&new.request_id, keyed) else {
            return missing();
        };
        let result = match idempotency::replay(tx, request_id, keyed).await {
            Ok(Some(result)) => result,
            Ok(None) => return missing(),
            Err(Error::RequestIdReused) => return Ok(Err(Error::RequestIdReused)),
            Err(e) => return Err(e),
        };
        // A row that no longer decodes is this caller's error, not the
        // batch's.
        Ok(super::consent::replayed_record(tx, &result).await)
    }
}

/// One record's statement parameters, borrowed from the record.
struct Params<'a> {
    text: [&'a str; 8],
    field: &'a str,
    record_id: &'a Uuid,
    request_id: Option<&'a str>,
    keyed: Option<&'a Vec<u8>>,
}

impl<'a> Params<'a> {
    fn of(new: &'a NewConsentRecord, record_id: &'a Uuid, keyed: Option<&'a Vec<u8>>) -> Self {
        Self {
            text: [
                new.subject_id.as_str(),
                new.purpose.as_str(),
                new.choice.as_str(),
                new.channel.as_str(),
                new.notice_version.as_str(),
                new.evidence.as_str(),
                new.actor.as_str(),
                new.recipient.as_ref().map_or("", |r| r.as_str()),
            ],
            field: new.field.as_ref().map_or("", |f| f.as_str()),
            record_id,
            request_id: new.request_id.as_ref().map(|r| r.as_str()),
            keyed,
        }
    }

    fn as_sql(&self) -> [&(dyn ToSql + Sync); 12] {
        let [
            subject,
            purpose,
            choice,
            channel,
            notice,
            evidence,
            actor,
            recipient,
        ] = &self.text;
        [
            subject,
            self.record_id,
            purpose,
            &self.field,
            choice,
            channel,
            notice,
            evidence,
            actor,
            &self.request_id,
            recipient,
            &self.keyed,
        ]
    }
}

/// Sends every record's savepoint and statement at once, then reads the
/// answers: one round trip for the whole batch rather than one per record.
/// PostgreSQL runs them in order; after the first that fails, the rest
/// fail too (the transaction is aborted until it is rolled back to the
/// savepoint), and the caller sends them again.
async fn pipeline(
    tx: &Transaction<'_>,
    statement: &Statement,
    records: &[Params<'_>],
    first: bool,
) -> Vec<Result<Row, tokio_postgres::Error>> {
    let params: Vec<_> = records.iter().map(Params::as_sql).collect();
    let mut calls: Vec<Call<'_, Result<Row, tokio_postgres::Error>>> =
        Vec::with_capacity(records.len());
    for (i, params) in params.iter().enumerate() {
        let savepoint = if first && i == 0 {
            SAVEPOINT_FIRST
        } else {
            SAVEPOINT_NEXT
        };
        calls.push(Box::pin(async move {
            // Both are sent on the first poll, before either is awaited.
            let (opened, written) =
                tokio::join!(tx.batch_execute(savepoint), tx.query_one(statement, params));
            opened.and(written)
        }));
    }
    join_in_order(calls).await
}

/// One pipelined call of a batch.
type Call<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Awaits `futures` together, each first polled in order (which is what
/// sends its statement), and returns their outputs in order.
async fn join_in_order<T>(mut futures: Vec<Call<'_, T>>) -> Vec<T> {
    let mut outputs: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}
