//! Erasure: values deleted, history kept under a pseudonym, a suppression
//! list so that refusals outlive it.

use chrono::{DateTime, Utc};

use super::{Store, rows::stored};
use crate::{
    domain::{Actor, SubjectId},
    error::{Error, Result},
};

/// What an erasure did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erased {
    pub pseudonym: SubjectId,
    pub erased_at: DateTime<Utc>,
    /// True when the id was erased before and nothing changed now.
    pub already: bool,
}

impl Store {
    /// Erases `subject_id` in one transaction: personal data values and the
    /// concern contact are deleted; every row keyed by the subject is renamed
    /// to `pseudonym` by one cascading update; the keyed `hash` goes on the
    /// suppression list.
    #[tracing::instrument(name = "store.erase_subject", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "erase_subject"))]
    pub async fn erase_subject(
        &self,
        subject_id: &SubjectId,
        hash: &[u8],
        pseudonym: &SubjectId,
        actor: &Actor,
    ) -> Result<Erased> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let exists = tx
            .query_opt(
                "SELECT 1 FROM subjects WHERE subject_id = $1 FOR UPDATE",
                &[&subject_id.as_str()],
            )
            .await?
            .is_some();
        if !exists {
            let earlier = tx
                .query_opt(
                    "SELECT pseudonym, erased_at FROM erased_subjects WHERE subject_hash = $1",
                    &[&hash],
                )
                .await?;
            return match earlier {
                Some(row) => Ok(Erased {
                    pseudonym: stored(SubjectId::parse(row.get::<_, String>(0)), "pseudonym")?,
                    erased_at: row.get(1),
                    already: true,
                }),
                None => Err(Error::subject_not_found(subject_id)),
            };
        }
        // The append-only tables accept a change of subject_id, and nothing
        // else, while this setting is on (see V5).
        tx.batch_execute("SET LOCAL consentd.erasure = 'on'")
            .await?;
        // The feed's event, naming this life's records (read before the
        // rename below, so a re-registered person's earlier ones are not
        // named again). The lock above gave this transaction its id before
        // the sequence is drawn, as the feed's gap rules need.
        tx.execute(
            "INSERT INTO erasure_events (pseudonym, record_sequences, record_purposes)
             SELECT $2, coalesce(array_agg(sequence ORDER BY sequence), '{}'),
                        coalesce(array_agg(purpose ORDER BY sequence), '{}')
               FROM consent_records WHERE subject_id = $1",
            &[&subject_id.as_str(), &pseudonym.as_str()],
        )
        .await?;
        tx.execute(
            "DELETE FROM personal_data WHERE subject_id = $1",
            &[&subject_id.as_str()],
        )
        .await?;
        tx.execute(
            "UPDATE concerns SET subject_id = $2, contact = '(erased)' WHERE subject_id = $1",
            &[&subject_id.as_str(), &pseudonym.as_str()],
        )
        .await?;
        tx.execute(
            "UPDATE subjects SET subject_id = $2 WHERE subject_id = $1",
            &[&subject_id.as_str(), &pseudonym.as_str()],
        )
        .await?;
        let row = tx
            .query_one(
                "INSERT INTO erased_subjects (subject_hash, pseudonym, erased_by) VALUES ($1, $2, $3)
                 ON CONFLICT (subject_hash) DO UPDATE SET erased_at = now(), erased_by = EXCLUDED.erased_by
                 RETURNING erased_at",
                &[&hash, &pseudonym.as_str(), &actor.as_str()],
            )
            .await?;
        tx.batch_execute(super::feed::NOTIFY).await?;
        tx.commit().await?;
        Ok(Erased {
            pseudonym: pseudonym.clone(),
            erased_at: row.get(0),
            already: false,
        })
    }

    /// Which of these suppression-list hashes are on the list.
    #[tracing::instrument(name = "store.erased_among", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "erased_among"))]
    pub async fn erased_among(&self, hashes: &[Vec<u8>]) -> Result<Vec<Vec<u8>>> {
        if hashes.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        Ok(client
            .query(
                "SELECT subject_hash FROM erased_subjects WHERE subject_hash = ANY($1)",
                &[&hashes],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect())
    }
}

/// Applies the refusals an erased id had to its new registration, inside
/// the registering transaction. Returns how many were carried over.
pub(super) async fn carry_refusals(
    tx: &deadpool_postgres::Transaction<'_>,
    subject_id: &SubjectId,
    hash: &[u8],
) -> Result<u64> {
    let Some(row) = tx
        .query_opt(
            "SELECT pseudonym FROM erased_subjects WHERE subject_hash = $1",
            &[&hash],
        )
        .await?
    else {
        return Ok(0);
    };
    let pseudonym: String = row.get(0);
    let carried = tx
        .execute(
            "WITH carried AS (
                INSERT INTO consent_records (subject_id, record_id, purpose, field, choice, channel,
                                             notice_version, evidence, actor)
                SELECT $1, gen_random_uuid(), s.purpose, s.field, 'refuse', 'api', r.notice_version,
                       'refusal kept from before erasure', 'erasure-suppression'
                  FROM consent_state s
                  JOIN consent_records r ON r.subject_id = s.subject_id AND r.sequence = s.sequence
                 WHERE s.subject_id = $2 AND s.choice = 'refuse'
                 ORDER BY s.sequence
                RETURNING subject_id, purpose, field, record_id, sequence, recorded_at
             )
             INSERT INTO consent_state (subject_id, purpose, field, choice, record_id, sequence, recorded_at)
             SELECT subject_id, purpose, field, 'refuse', record_id, sequence, recorded_at FROM carried",
            &[&subject_id.as_str(), &pseudonym],
        )
        .await?;
    if carried > 0 {
        tx.batch_execute(super::feed::NOTIFY).await?;
    }
    Ok(carried)
}
