//! Reading the change feed (consent records and erasure events) in sequence
//! order, and the LISTEN connection that wakes the feed when changes commit.

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_postgres::{AsyncMessage, types::PgLsn};
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_util::sync::CancellationToken;

use super::{
    Store,
    rows::{RECORD_COLUMNS, field_data_from, record_from_row, stored},
};
use crate::{
    domain::{ErasureEvent, FeedEvent, PurposeCode, Registration, StoredField, SubjectId},
    error::Result,
};

/// The channel writers notify; see the V2 migration.
pub(crate) const NOTIFY: &str = "NOTIFY consent_changes";

/// Wakes every replica's change streams once a write has committed. Sent
/// on its own, after the write's transaction: a NOTIFY inside it takes
/// PostgreSQL's global notification lock at commit, so every writer's commit
/// (and its WAL flush) would wait for the one before. A NOTIFY alone writes
/// no WAL and holds that lock only for a moment. The write stands whether or
/// not this is heard: the streams' poll is the safety net.
pub(super) async fn wake_streams(client: &tokio_postgres::Client) {
    if let Err(e) = client.batch_execute(NOTIFY).await {
        tracing::debug!(error = %e, "could not wake the change streams; they will poll");
    }
}

/// Events after a cursor, read in one snapshot, with the transactions that
/// were still in flight in that snapshot.
#[derive(Debug)]
pub struct FeedRead {
    /// Visible events with `sequence > after`, ascending.
    pub events: Vec<FeedEvent>,
    /// Ids of the transactions in progress when the snapshot was taken. Any
    /// of them may yet commit an event whose sequence falls in a gap. Always
    /// empty on a standby, which does not know them: see `replica`.
    pub in_progress: Vec<String>,
    /// On a standby, how far it had replayed when the snapshot was taken (at
    /// or past the snapshot's point): a later read on a standby that has
    /// replayed this far sees at least these events. `None` on a primary.
    pub replayed: Option<PgLsn>,
}

/// The transactions that may still commit a sequence number below what the
/// current snapshot shows, as `xid8` text; the snapshot is fixed when this
/// is the first statement of a transaction.
///
/// The snapshot's own list (`pg_snapshot_xip`) is not enough: it names only
/// transactions below its `xmax`, which is one past the newest transaction
/// to have *finished*, not the newest to have started. A writer that took
/// its id after the last one to finish, drew a number, and is still open is
/// in neither list, yet a later number drawn by an older transaction can
/// already be visible. (The feed once skipped such a registration for good.)
/// So every transaction that holds an id in this database now, read from
/// the backends after the snapshot was taken, is added; their 32-bit ids are
/// widened against the snapshot's `xmax`, which they are near.
///
/// Transaction ids are cluster-wide, so the snapshot also lists other
/// databases' transactions, which can never fill a gap here: a long one
/// elsewhere on the same server must not stall this feed. Only those known
/// to be elsewhere are left out; one whose database is not visible to this
/// role is kept, which can only delay.
macro_rules! in_flight {
    () => {
        "array(
   SELECT x::text FROM pg_snapshot_xip(pg_current_snapshot()) AS x
    WHERE x::xid NOT IN (
      SELECT backend_xid FROM pg_stat_activity
       WHERE backend_xid IS NOT NULL
         AND datname IS DISTINCT FROM current_database())
   UNION
   SELECT (s.xmax + (a.backend_xid::text::bigint - s.xmax % 4294967296 + 6442450944)
                    % 4294967296 - 2147483648)::text
     FROM pg_stat_activity AS a,
          (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xmax) AS s
    WHERE a.backend_xid IS NOT NULL
      AND a.datname = current_database())"
    };
}
pub(super) use in_flight;

/// [`in_flight`], and a standby's replay position.
const IN_PROGRESS: &str = concat!("SELECT ", in_flight!(), ", pg_last_wal_replay_lsn()");

impl Store {
    /// Up to `limit` events after sequence `after`, and the snapshot's
    /// in-flight transactions, both from one REPEATABLE READ snapshot.
    #[tracing::instrument(name = "store.read_feed", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "read_feed", limit))]
    pub async fn read_feed(&self, after: i64, limit: i64) -> Result<FeedRead> {
        let mut client = self.client().await?;
        let (tx, in_progress, replayed) = snapshot(&mut client).await?;
        let events = events_between(&tx, after, i64::MAX, limit).await?;
        tx.commit().await?;
        Ok(FeedRead {
            events,
            in_progress,
            replayed,
        })
    }

    /// Up to `limit` events with `after < sequence <= upto`, for a range the
    /// feed has already settled (no transaction can add to it any more), so
    /// no snapshot bookkeeping is needed.
    #[tracing::instrument(name = "store.read_settled_feed", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "read_settled_feed", limit))]
    pub async fn read_settled_feed(
        &self,
        after: i64,
        upto: i64,
        limit: i64,
    ) -> Result<Vec<FeedEvent>> {
        let client = self.pool.get().await?;
        events_between(&client, after, upto, limit).await
    }

    /// Like [`Store::read_settled_feed`], on a standby that must first have
    /// replayed up to `lsn`, where the range was seen settled: `None` when
    /// it has not (yet, or again: a standby restarted after a crash serves
    /// from its last consistent point, which can be behind what it showed
    /// before). Asked on the connection that reads, which cannot outlive a
    /// restart, so the answer holds for the read.
    #[tracing::instrument(name = "store.read_settled_feed_replayed", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "read_settled_feed", limit))]
    pub async fn read_settled_feed_replayed(
        &self,
        after: i64,
        upto: i64,
        limit: i64,
        lsn: PgLsn,
    ) -> Result<Option<Vec<FeedEvent>>> {
        let client = self.pool.get().await?;
        if !super::replica::replayed_on(&client, lsn).await? {
            return Ok(None);
        }
        events_between(&client, after, upto, limit).await.map(Some)
    }

    /// The highest visible sequence and the transactions in flight, from one
    /// snapshot: once those have finished, every sequence up to it is
    /// settled, so a feed may start there.
    #[tracing::instrument(name = "store.feed_head", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "feed_head"))]
    pub async fn feed_head(&self) -> Result<(i64, Vec<String>)> {
        let mut client = self.pool.get().await?;
        let (tx, in_progress, _) = snapshot(&mut client).await?;
        let head: i64 = tx
            .query_one(
                &tx.prepare_cached(
                    "SELECT greatest(
                   (SELECT coalesce(max(sequence), 0) FROM consent_records),
                   (SELECT coalesce(max(sequence), 0) FROM erasure_events),
                   (SELECT coalesce(max(sequence), 0) FROM subjects),
                   (SELECT coalesce(max(sequence), 0) FROM personal_data))",
                )
                .await?,
                &[],
            )
            .await?
            .get(0);
        tx.commit().await?;
        Ok((head, in_progress))
    }

    /// Whether every one of these transactions has committed or rolled back.
    #[tracing::instrument(name = "store.transactions_finished", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "transactions_finished", count = xids.len()))]
    pub async fn transactions_finished(&self, xids: &[String]) -> Result<bool> {
        let client = self.client().await?;
        // pg_xact_status is NULL for transactions too old to be tracked,
        // which are long finished.
        let finished: Option<bool> = client
            .query_one(
                &client
                    .prepare_cached(
                        "SELECT bool_and(pg_xact_status(x::xid8) IS DISTINCT FROM 'in progress')
                   FROM unnest($1::text[]) AS x",
                    )
                    .await?,
                &[&xids],
            )
            .await?
            .get(0);
        Ok(finished.unwrap_or(true))
    }

    /// Keeps one connection LISTENing on the change channel and bumps the
    /// returned counter on every notification, until `stop` is cancelled.
    /// It reconnects after failures; streams also poll, so a gap in the
    /// LISTEN connection delays changes but never loses them.
    pub fn spawn_change_listener(&self, stop: CancellationToken) -> watch::Receiver<u64> {
        let (tx, rx) = watch::channel(0u64);
        let (config, tls) = (self.config.clone(), self.tls.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                if let Err(e) = listen(&config, tls.clone(), &tx, &stop).await {
                    tracing::warn!(error = %e, "change-feed LISTEN connection failed; reconnecting");
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
        rx
    }
}

/// A read-only REPEATABLE READ transaction, the transactions in flight in
/// its snapshot and a standby's replay position: its first statement, which
/// fixes the snapshot for the rest.
async fn snapshot(
    client: &mut deadpool_postgres::Object,
) -> Result<(
    deadpool_postgres::Transaction<'_>,
    Vec<String>,
    Option<PgLsn>,
)> {
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let row = tx
        .query_one(&tx.prepare_cached(IN_PROGRESS).await?, &[])
        .await?;
    Ok((tx, row.get(0), row.get(1)))
}

/// Up to `limit` events with `after < sequence <= upto`, ascending. The
/// tables share one sequence; the first `limit` of their union are among the
/// first `limit` of each.
async fn events_between(
    client: &impl deadpool_postgres::GenericClient,
    after: i64,
    upto: i64,
    limit: i64,
) -> Result<Vec<FeedEvent>> {
    let range: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&after, &upto, &limit];
    let records = client
        .query(
            &client
                .prepare_cached(&format!(
                    "SELECT {RECORD_COLUMNS} FROM consent_records
                  WHERE sequence > $1 AND sequence <= $2 ORDER BY sequence LIMIT $3"
                ))
                .await?,
            &range,
        )
        .await?;
    let erasures = client
        .query(
            &client
                .prepare_cached(
                    "SELECT sequence, pseudonym, erased_at, record_sequences, record_purposes,
                    registration_sequence
               FROM erasure_events
              WHERE sequence > $1 AND sequence <= $2 ORDER BY sequence LIMIT $3",
                )
                .await?,
            &range,
        )
        .await?;
    // A registration already erased shows its pseudonym; its erasure event
    // follows it in the feed and ends it again, so it is sent as it reads.
    let registrations = client
        .query(
            &client
                .prepare_cached(
                    "SELECT sequence, subject_id FROM subjects
              WHERE sequence > $1 AND sequence <= $2 ORDER BY sequence LIMIT $3",
                )
                .await?,
            &range,
        )
        .await?;
    let fields = client
        .query(
            &client
                .prepare_cached(
                    "SELECT sequence, subject_id, field, collected_for, collected_at, verified_at
               FROM personal_data
              WHERE sequence > $1 AND sequence <= $2 ORDER BY sequence LIMIT $3",
                )
                .await?,
            &range,
        )
        .await?;
    let mut events = records
        .iter()
        .map(|row| record_from_row(row).map(FeedEvent::Record))
        .chain(
            erasures
                .iter()
                .map(|row| erasure_from_row(row).map(FeedEvent::Erasure)),
        )
        .chain(registrations.iter().map(|row| {
            Ok(FeedEvent::Registered(Registration {
                sequence: row.get(0),
                subject_id: stored(SubjectId::parse(row.get::<_, String>(1)), "subject_id")?,
            }))
        }))
        .chain(fields.iter().map(|row| {
            Ok(FeedEvent::FieldStored(StoredField {
                sequence: row.get(0),
                subject_id: stored(SubjectId::parse(row.get::<_, String>(1)), "subject_id")?,
                data: field_data_from(row, 2)?,
            }))
        }))
        .collect::<Result<Vec<_>>>()?;
    events.sort_unstable_by_key(FeedEvent::sequence);
    events.truncate(usize::try_from(limit).unwrap_or(0));
    Ok(events)
}

fn erasure_from_row(row: &tokio_postgres::Row) -> Result<ErasureEvent> {
    let sequences: Vec<i64> = row.get("record_sequences");
    let purposes: Vec<String> = row.get("record_purposes");
    Ok(ErasureEvent {
        sequence: row.get("sequence"),
        pseudonym: stored(
            SubjectId::parse(row.get::<_, String>("pseudonym")),
            "pseudonym",
        )?,
        erased_at: row.get("erased_at"),
        registration_sequence: row.get("registration_sequence"),
        records: sequences
            .into_iter()
            .zip(purposes)
            .map(|(sequence, purpose)| {
                Ok((sequence, stored(PurposeCode::parse(purpose), "purpose")?))
            })
            .collect::<Result<_>>()?,
    })
}

async fn listen(
    config: &tokio_postgres::Config,
    tls: MakeRustlsConnect,
    wake: &watch::Sender<u64>,
    stop: &CancellationToken,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(tls).await?;
    let (notified_tx, mut notified) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(_)) => {
                    let _ = notified_tx.send(());
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    client.batch_execute("LISTEN consent_changes").await?;
    // Wake everyone once: changes may have committed while we reconnected.
    wake.send_modify(|n| *n += 1);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            got = notified.recv() => match got {
                Some(()) => wake.send_modify(|n| *n += 1),
                None => break,
            },
        }
    }
    drop(client);
    match driver.await {
        Ok(result) => result,
        Err(_) => Ok(()),
    }
}
