//! A decision read through to the database: everything `decide` needs of a
//! set of subjects, in one statement and so one round trip and one snapshot.

use std::collections::{HashMap, HashSet};

use super::{
    Store,
    rows::{field_data_from, state_choice_from, stored},
};
use crate::{
    domain::{FieldData, SubjectId, SubjectState},
    error::Result,
};

/// The inputs of a decision for some subjects, as of one snapshot.
#[derive(Debug, Default)]
pub struct DecisionInputs {
    /// Registered subjects and their current choices.
    pub states: HashMap<SubjectId, SubjectState>,
    /// Their stored fields' collections and ages (R3), never the values.
    pub data: HashMap<SubjectId, Vec<FieldData>>,
    /// Which of the asked suppression-list hashes are on the list.
    pub erased: HashSet<Vec<u8>>,
}

/// Three reads as one: the rows of each are told apart by `kind`, and each
/// fills only its own columns (the others NULL), so one decoder per kind
/// reads them where the other store reads put them.
const INPUTS: &str = "
SELECT 1 AS kind, s.subject_id, c.purpose, c.field, c.choice, c.record_id, c.sequence,
       c.recorded_at, NULL::text, NULL::text[], NULL::timestamptz, NULL::timestamptz,
       NULL::bytea
  FROM subjects s LEFT JOIN consent_state c ON c.subject_id = s.subject_id
 WHERE s.subject_id = ANY($1)
UNION ALL
SELECT 2, p.subject_id, NULL, NULL, NULL, NULL, NULL, NULL,
       p.field, p.collected_for, p.collected_at, p.verified_at, NULL
  FROM personal_data p
 WHERE p.subject_id = ANY($1)
UNION ALL
SELECT 3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, e.subject_hash
  FROM erased_subjects e
 WHERE e.subject_hash = ANY($2)";

impl Store {
    /// What a decision needs of `ids`, and which of `hashes` (their
    /// suppression-list hashes) were erased, in one prepared statement.
    #[tracing::instrument(name = "store.decision_inputs", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "decision_inputs", count = ids.len()))]
    pub async fn decision_inputs(
        &self,
        ids: &[&SubjectId],
        hashes: &[Vec<u8>],
    ) -> Result<DecisionInputs> {
        let client = self.client().await?;
        let ids: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
        let rows = client
            .query(&client.prepare_cached(INPUTS).await?, &[&ids, &hashes])
            .await?;
        let mut inputs = DecisionInputs::default();
        for row in rows {
            match row.get::<_, i32>(0) {
                1 => {
                    let subject = stored(SubjectId::parse(row.get::<_, String>(1)), "subject_id")?;
                    let state = inputs.states.entry(subject).or_default();
                    state.choices.extend(state_choice_from(&row, 2)?);
                }
                2 => {
                    let subject = stored(SubjectId::parse(row.get::<_, String>(1)), "subject_id")?;
                    let data = field_data_from(&row, 8)?;
                    inputs.data.entry(subject).or_default().push(data);
                }
                _ => {
                    inputs.erased.insert(row.get(12));
                }
            }
        }
        Ok(inputs)
    }
}
