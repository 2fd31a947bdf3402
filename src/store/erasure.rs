//! Erasure: values deleted, history kept under a pseudonym, a suppression
//! list so that refusals outlive it.

use chrono::{DateTime, Utc};

use super::{Store, rows::stored};
use crate::{
    domain::{Actor, ConsistencyToken, SubjectId},
    error::{Error, Result},
};

/// What an erasure did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erased {
    pub pseudonym: SubjectId,
    pub erased_at: DateTime<Utc>,
    /// True when the id was erased before and nothing changed now.
    pub already: bool,
    /// The feed position of the erasure event (of the earlier one, when
    /// `already`).
    pub token: ConsistencyToken,
}

impl Store {
    /// Erases `subject_id` in one transaction, through the owner's
    /// `consentd_erase_subject` (V9): the only way the serving role can
    /// change the history. Personal data values and the concern contact are
    /// deleted; every row keyed by the subject is renamed to `pseudonym`;
    /// the keyed `hash` goes on the suppression list.
    #[tracing::instrument(name = "store.erase_subject", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "erase_subject"))]
    pub async fn erase_subject(
        &self,
        subject_id: &SubjectId,
        hash: &[u8],
        pseudonym: &SubjectId,
        actor: &Actor,
    ) -> Result<Erased> {
        let client = self.client().await?;
        let erased_at: Option<DateTime<Utc>> = client
            .query_one(
                &client
                    .prepare_cached("SELECT consentd_erase_subject($1, $2, $3, $4)")
                    .await?,
                &[
                    &subject_id.as_str(),
                    &hash,
                    &pseudonym.as_str(),
                    &actor.as_str(),
                ],
            )
            .await?
            .get(0);
        if let Some(erased_at) = erased_at {
            // Wakes the change streams now rather than at their next poll;
            // after the commit, so it holds no lock of the erasure's.
            super::feed::wake_streams(&client).await;
            return Ok(Erased {
                pseudonym: pseudonym.clone(),
                erased_at,
                already: false,
                token: erasure_position(&client, pseudonym.as_str()).await?,
            });
        }
        let earlier = client
            .query_opt(
                &client
                    .prepare_cached(
                        "SELECT pseudonym, erased_at FROM erased_subjects WHERE subject_hash = $1",
                    )
                    .await?,
                &[&hash],
            )
            .await?;
        match earlier {
            Some(row) => {
                let pseudonym: String = row.get(0);
                Ok(Erased {
                    token: erasure_position(&client, &pseudonym).await?,
                    pseudonym: stored(SubjectId::parse(pseudonym), "pseudonym")?,
                    erased_at: row.get(1),
                    already: true,
                })
            }
            None => Err(Error::subject_not_found(subject_id)),
        }
    }
}

/// The feed position of the erasure that drew `pseudonym` (each erasure
/// draws a fresh one). Read after the erasing statement committed: that
/// statement's own snapshot cannot see the event its function wrote. An
/// erasure from before erasure events existed (V8) has none; position 0 is
/// then the truth: nothing to wait for.
async fn erasure_position(
    client: &deadpool_postgres::Client,
    pseudonym: &str,
) -> Result<ConsistencyToken> {
    let row = client
        .query_one(
            &client
                .prepare_cached(
                    "SELECT coalesce(max(sequence), 0) FROM erasure_events WHERE pseudonym = $1",
                )
                .await?,
            &[&pseudonym],
        )
        .await?;
    Ok(ConsistencyToken::at(row.get(0)))
}

/// The feed position a registration answers with: the subject row's, or
/// the last refusal an earlier erasure carried over to it in the same
/// transaction (`carry_refusals`), so that a Check passing the token sees
/// those refusals too. The same on every repeat of the registration.
pub(super) async fn registration_position(
    tx: &deadpool_postgres::Transaction<'_>,
    subject_id: &SubjectId,
) -> Result<ConsistencyToken> {
    let row = tx
        .query_one(
            &tx.prepare_cached(
                "SELECT greatest(s.sequence,
                        (SELECT max(c.sequence) FROM consent_records c
                          WHERE c.subject_id = s.subject_id AND c.sequence > s.sequence
                            AND c.actor = 'erasure-suppression'))
                   FROM subjects s WHERE s.subject_id = $1",
            )
            .await?,
            &[&subject_id.as_str()],
        )
        .await?;
    Ok(ConsistencyToken::at(row.get(0)))
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
            &tx.prepare_cached("SELECT pseudonym FROM erased_subjects WHERE subject_hash = $1")
                .await?,
            &[&hash],
        )
        .await?
    else {
        return Ok(0);
    };
    let pseudonym: String = row.get(0);
    let carried = tx
        .execute(
            &tx.prepare_cached("INSERT INTO consent_records (subject_id, record_id, purpose, field, choice, channel,
                                          notice_version, evidence, actor)
             SELECT $1, gen_random_uuid(), s.purpose, s.field, 'refuse', 'api', r.notice_version,
                    'refusal kept from before erasure', 'erasure-suppression'
               FROM consent_state s
               JOIN consent_records r ON r.subject_id = s.subject_id AND r.sequence = s.sequence
              WHERE s.subject_id = $2 AND s.choice = 'refuse'
              ORDER BY s.sequence").await?,
            &[&subject_id.as_str(), &pseudonym],
        )
        .await?;
    if carried > 0 {
        tx.batch_execute(super::feed::NOTIFY).await?;
    }
    Ok(carried)
}
