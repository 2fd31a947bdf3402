//! The tamper-evident history's SQL: reading every chain for `verify`, the
//! chain heads, and writing signed checkpoints. The chain itself is written
//! by triggers (V6), so no append function here changes.

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use tokio_postgres::{IsolationLevel, Row};

use super::Store;
use crate::{
    domain::SubjectId,
    error::Result,
    ledger::{
        ChainHead, ConsentRecordLink, Content, DisclosureEventLink, DisclosureLink, Link,
        checkpoint::Checkpoint, verify::Ledger,
    },
};

/// Checkpoint writers of several replicas take turns on this lock; one that
/// finds it taken skips its turn.
const CHECKPOINT_LOCK: i64 = 0x6c65_6467_6572; // "ledger"

/// The chain columns every history table has, after `subject_key`.
fn link(row: &Row, content: Content) -> Link {
    Link {
        subject_key: row.get("subject_key"),
        // Read leniently: verify must name a tampered row, not fail on it.
        position: row.get::<_, Option<i64>>("chain_seq").unwrap_or(0),
        text_digest: row
            .get::<_, Option<Vec<u8>>>("text_digest")
            .unwrap_or_default(),
        text_erased: row.get("text_erased"),
        hash: row.get::<_, Option<Vec<u8>>>("hash").unwrap_or_default(),
        content,
    }
}

fn head(row: &Row) -> ChainHead {
    ChainHead {
        subject_key: row.get("subject_key"),
        length: row.get("length"),
        head: row.get("head"),
    }
}

impl Store {
    /// Everything `verify` reads, from one snapshot, so that appends going on
    /// meanwhile cannot make a chain and its head disagree.
    #[tracing::instrument(name = "store.ledger", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "ledger"))]
    pub async fn ledger(&self) -> Result<Ledger> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let links = links(&tx).await?;
        let heads = tx
            .query(
                &tx.prepare_cached("SELECT subject_key, length, head FROM ledger_heads")
                    .await?,
                &[],
            )
            .await?
            .iter()
            .map(head)
            .collect();
        let checkpoints = tx
            .query(
                &tx.prepare_cached("SELECT checkpoint_id, made_at, chains, records, heads_digest, key_id, public_key,
                        signature
                   FROM ledger_checkpoints ORDER BY checkpoint_id").await?,
                &[],
            )
            .await?
            .iter()
            .map(|row| Checkpoint {
                checkpoint_id: row.get("checkpoint_id"),
                made_at: row.get("made_at"),
                chains: row.get("chains"),
                records: row.get("records"),
                heads_digest: row.get("heads_digest"),
                key_id: row.get("key_id"),
                public_key: row.get("public_key"),
                signature: row.get("signature"),
            })
            .collect();
        let checkpoint_heads = tx
            .query(
                &tx.prepare_cached(
                    "SELECT checkpoint_id, subject_key, length, head FROM ledger_checkpoint_heads",
                )
                .await?,
                &[],
            )
            .await?
            .iter()
            .map(|row| (row.get("checkpoint_id"), head(row)))
            .collect();
        tx.commit().await?;
        Ok(Ledger {
            links,
            heads,
            checkpoints,
            checkpoint_heads,
        })
    }

    /// The head of one subject's chain; None before its first record.
    #[tracing::instrument(name = "store.chain_head_of", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "chain_head_of"))]
    pub async fn chain_head_of(&self, subject_id: &SubjectId) -> Result<Option<ChainHead>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &client
                    .prepare_cached(
                        "SELECT h.subject_key, h.length, h.head
                   FROM ledger_heads h JOIN subjects s USING (subject_key)
                  WHERE s.subject_id = $1",
                    )
                    .await?,
                &[&subject_id.as_str()],
            )
            .await?;
        Ok(row.as_ref().map(head))
    }

    /// Writes a checkpoint of every chain head that changed since the last
    /// one, signed by `sign`. None when nothing changed, or when another
    /// server is writing one right now.
    #[tracing::instrument(name = "store.write_checkpoint", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "write_checkpoint"))]
    pub async fn write_checkpoint(
        &self,
        sign: impl FnOnce(&mut Checkpoint),
    ) -> Result<Option<Checkpoint>> {
        let mut client = self.client().await?;
        // Taken before the transaction starts, so that its snapshot already
        // sees the checkpoint the previous holder committed.
        let locked: bool = client
            .query_one(
                &client
                    .prepare_cached("SELECT pg_try_advisory_lock($1)")
                    .await?,
                &[&CHECKPOINT_LOCK],
            )
            .await?
            .get(0);
        if !locked {
            return Ok(None);
        }
        let written = async {
            // One snapshot for the whole checkpoint: every head it signs was
            // committed together with its chain.
            let tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .start()
                .await?;
            let id: i64 = tx
                .query_one(
                    &tx.prepare_cached("SELECT nextval(pg_get_serial_sequence('ledger_checkpoints', 'checkpoint_id'))").await?,
                    &[],
                )
                .await?
                .get(0);
            let changed = tx
                .execute(
                    &tx.prepare_cached("INSERT INTO ledger_checkpoint_heads (checkpoint_id, subject_key, length, head)
                     SELECT $1, h.subject_key, h.length, h.head
                       FROM ledger_heads h LEFT JOIN ledger_checkpointed c USING (subject_key)
                      WHERE (c.length, c.head) IS DISTINCT FROM (h.length, h.head)").await?,
                    &[&id],
                )
                .await?;
            if changed == 0 {
                return Ok(None);
            }
            tx.execute(
                &tx.prepare_cached("INSERT INTO ledger_checkpointed (subject_key, length, head)
                 SELECT subject_key, length, head FROM ledger_checkpoint_heads WHERE checkpoint_id = $1
                 ON CONFLICT (subject_key) DO UPDATE SET length = EXCLUDED.length, head = EXCLUDED.head").await?,
                &[&id],
            )
            .await?;
            // The same digest as ledger::checkpoint::heads_digest.
            let row = tx
                .query_one(
                    &tx.prepare_cached("SELECT count(*), coalesce(sum(length), 0)::bigint,
                            sha256(coalesce(string_agg(uuid_send(subject_key) || int8send(length) || head,
                                                       ''::bytea ORDER BY subject_key), ''::bytea))
                       FROM ledger_checkpointed").await?,
                    &[],
                )
                .await?;
            let made_at = DateTime::<Utc>::from_timestamp_micros(Utc::now().timestamp_micros())
                .expect("now is a valid time");
            let mut checkpoint = Checkpoint {
                checkpoint_id: id,
                made_at,
                chains: row.get(0),
                records: row.get(1),
                heads_digest: row.get(2),
                key_id: String::new(),
                public_key: Vec::new(),
                signature: Vec::new(),
            };
            sign(&mut checkpoint);
            tx.execute(
                &tx.prepare_cached("INSERT INTO ledger_checkpoints (checkpoint_id, made_at, chains, records,
                     heads_digest, key_id, public_key, signature)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)").await?,
                &[
                    &checkpoint.checkpoint_id,
                    &checkpoint.made_at,
                    &checkpoint.chains,
                    &checkpoint.records,
                    &checkpoint.heads_digest,
                    &checkpoint.key_id,
                    &checkpoint.public_key,
                    &checkpoint.signature,
                ],
            )
            .await?;
            tx.commit().await?;
            Result::Ok(Some(checkpoint))
        }
        .await;
        client
            .execute(
                &client
                    .prepare_cached("SELECT pg_advisory_unlock($1)")
                    .await?,
                &[&CHECKPOINT_LOCK],
            )
            .await?;
        written
    }
}

/// Every chained row of every subject, in no particular order.
async fn links(tx: &Transaction<'_>) -> Result<Vec<Link>> {
    let mut links = Vec::new();
    for row in tx
        .query(
            &tx.prepare_cached(
                "SELECT s.subject_key, r.chain_seq, r.text_digest, r.hash, r.record_id, r.sequence,
                    r.purpose, r.field, r.recipient, r.choice, r.channel, r.notice_version,
                    r.actor, r.request_id, r.recorded_at, r.evidence, r.ledger_version,
                    r.text_erased
               FROM consent_records r LEFT JOIN subjects s USING (subject_id)",
            )
            .await?,
            &[],
        )
        .await?
    {
        let content = Content::ConsentRecord(ConsentRecordLink {
            record_id: row.get("record_id"),
            sequence: row.get("sequence"),
            purpose: row.get("purpose"),
            field: row.get("field"),
            recipient: row.get("recipient"),
            choice: row.get("choice"),
            channel: row.get("channel"),
            notice_version: row.get("notice_version"),
            actor: row.get("actor"),
            request_id: row.get("request_id"),
            recorded_at: row.get("recorded_at"),
            evidence: row.get("evidence"),
            ledger_version: row.get("ledger_version"),
        });
        links.push(link(&row, content));
    }
    for row in tx
        .query(
            &tx.prepare_cached(
                "SELECT s.subject_key, d.chain_seq, d.text_digest, d.hash, d.disclosure_id,
                    d.recipient_id, d.purpose, d.legal_basis, d.fields, d.withheld, d.status,
                    d.review_due, d.requested_by, d.request_id, d.requested_at, d.reference,
                    d.justification, d.ledger_version, d.text_erased
               FROM disclosures d LEFT JOIN subjects s USING (subject_id)",
            )
            .await?,
            &[],
        )
        .await?
    {
        let content = Content::Disclosure(DisclosureLink {
            disclosure_id: row.get("disclosure_id"),
            recipient_id: row.get("recipient_id"),
            purpose: row.get("purpose"),
            legal_basis: row.get("legal_basis"),
            fields: row.get("fields"),
            withheld: row.get("withheld"),
            status: row.get("status"),
            review_due: row.get("review_due"),
            requested_by: row.get("requested_by"),
            request_id: row.get("request_id"),
            requested_at: row.get("requested_at"),
            reference: row.get("reference"),
            justification: row.get("justification"),
            ledger_version: row.get("ledger_version"),
        });
        links.push(link(&row, content));
    }
    for row in tx
        .query(
            &tx.prepare_cached(
                "SELECT s.subject_key, e.chain_seq, e.text_digest, e.hash, e.disclosure_id,
                    e.kind, e.actor, e.at, e.note, e.text_erased
               FROM disclosure_events e LEFT JOIN subjects s USING (subject_id)",
            )
            .await?,
            &[],
        )
        .await?
    {
        let content = Content::DisclosureEvent(DisclosureEventLink {
            disclosure_id: row.get("disclosure_id"),
            kind: row.get("kind"),
            actor: row.get("actor"),
            at: row.get("at"),
            note: row.get("note"),
        });
        links.push(link(&row, content));
    }
    Ok(links)
}
