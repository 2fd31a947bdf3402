//! Loading the decision state (see `crate::state`): the settled history up
//! to a feed position, in pages. Each page is its own statement; anything
//! that changes after the position carries a larger sequence and reaches
//! the state through the feed instead.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Store, rows::stored_enum};
use crate::{domain::Choice, error::Result};

/// One current choice of a loaded subject.
#[derive(Debug)]
pub struct LoadedChoice {
    /// The subject's registration sequence.
    pub subject: i64,
    pub purpose: String,
    /// `None`: every field of the purpose.
    pub field: Option<String>,
    pub choice: Choice,
    pub record_id: Uuid,
}

/// One stored field of a loaded subject: its collection and age, never its
/// value.
#[derive(Debug)]
pub struct LoadedField {
    /// The subject's registration sequence.
    pub subject: i64,
    pub field: String,
    pub collected_for: Vec<String>,
    pub checked_at: DateTime<Utc>,
}

/// How much a load up to a position will hold, so it allocates once.
#[derive(Debug, Clone, Copy, Default)]
pub struct StateSize {
    pub subjects: usize,
    pub id_bytes: usize,
    pub choices: usize,
}

impl Store {
    #[tracing::instrument(name = "store.state_size", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "state_size"))]
    pub async fn state_size(&self, upto: i64) -> Result<StateSize> {
        let client = self.client().await?;
        let row = client
            .query_one(
                &client
                    .prepare_cached(
                        "SELECT (SELECT count(*) FROM subjects WHERE sequence <= $1),
                        (SELECT coalesce(sum(octet_length(subject_id) + 1), 0)::bigint
                           FROM subjects WHERE sequence <= $1),
                        (SELECT count(*) FROM consent_state WHERE sequence <= $1)",
                    )
                    .await?,
                &[&upto],
            )
            .await?;
        let size = |i| usize::try_from(row.get::<_, i64>(i)).unwrap_or(0);
        Ok(StateSize {
            subjects: size(0),
            id_bytes: size(1),
            choices: size(2),
        })
    }

    /// Up to `limit` registrations with `after < sequence <= upto`, in
    /// order, leaving out the renamed rows of erased subjects.
    #[tracing::instrument(name = "store.state_subjects", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "state_subjects"))]
    pub async fn state_subjects(
        &self,
        after: i64,
        upto: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String)>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT sequence, subject_id FROM subjects s
                  WHERE sequence > $1 AND sequence <= $2
                    AND NOT EXISTS (SELECT 1 FROM erasure_events e
                                     WHERE e.pseudonym = s.subject_id)
                    AND NOT EXISTS (SELECT 1 FROM erased_subjects x
                                     WHERE x.pseudonym = s.subject_id)
                  ORDER BY sequence LIMIT $3",
                    )
                    .await?,
                &[&after, &upto, &limit],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The current choices (no recipient: those decide no Check) of the
    /// subjects registered at `first..=last`, each subject's oldest first.
    #[tracing::instrument(name = "store.state_choices", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "state_choices"))]
    pub async fn state_choices(
        &self,
        first: i64,
        last: i64,
        upto: i64,
    ) -> Result<Vec<LoadedChoice>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT s.sequence, c.purpose, c.field, c.choice, c.record_id
                   FROM subjects s JOIN consent_state c USING (subject_id)
                  WHERE s.sequence >= $1 AND s.sequence <= $2 AND c.sequence <= $3
                  ORDER BY s.sequence, c.sequence",
                    )
                    .await?,
                &[&first, &last, &upto],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let field: String = r.get(2);
                Ok(LoadedChoice {
                    subject: r.get(0),
                    purpose: r.get(1),
                    field: (!field.is_empty()).then_some(field),
                    choice: stored_enum(Choice::from_stored(r.get(3)), "choice")?,
                    record_id: r.get(4),
                })
            })
            .collect()
    }

    /// The stored fields' collections and ages of the subjects registered
    /// at `first..=last`.
    #[tracing::instrument(name = "store.state_fields", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "state_fields"))]
    pub async fn state_fields(&self, first: i64, last: i64, upto: i64) -> Result<Vec<LoadedField>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT s.sequence, p.field, p.collected_for,
                        greatest(p.collected_at, coalesce(p.verified_at, p.collected_at))
                   FROM subjects s JOIN personal_data p USING (subject_id)
                  WHERE s.sequence >= $1 AND s.sequence <= $2 AND p.sequence <= $3",
                    )
                    .await?,
                &[&first, &last, &upto],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| LoadedField {
                subject: r.get(0),
                field: r.get(1),
                collected_for: r.get(2),
                checked_at: r.get(3),
            })
            .collect())
    }

    /// Up to `limit` suppression-list hashes after `after`, in order.
    #[tracing::instrument(name = "store.erased_hashes", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "erased_hashes"))]
    pub async fn erased_hashes(&self, after: &[u8], limit: i64) -> Result<Vec<Vec<u8>>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT subject_hash FROM erased_subjects
                  WHERE subject_hash > $1 ORDER BY subject_hash LIMIT $2",
                    )
                    .await?,
                &[&after, &limit],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}
