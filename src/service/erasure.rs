//! Erasure (PIPL Art. 47) that still honours opt-outs.

use crate::{
    domain::{Actor, SubjectId},
    error::Result,
    store::{Erased, Store},
    telemetry::SubjectRefs,
};

#[derive(Clone)]
pub struct Eraser {
    store: Store,
    /// The keyed hash and pseudonym of an id come from the same key as the
    /// trace pseudonyms, derived apart (see `SubjectRefs`).
    refs: SubjectRefs,
}

impl Eraser {
    pub fn new(store: Store, refs: SubjectRefs) -> Self {
        Self { store, refs }
    }

    pub async fn erase(&self, subject_id: &SubjectId, actor: &Actor) -> Result<Erased> {
        let erased = self
            .store
            .erase_subject(
                subject_id,
                &self.refs.erasure_hash(subject_id),
                &self.refs.erased_pseudonym(subject_id),
                actor,
            )
            .await?;
        if !erased.already {
            tracing::info!(pseudonym = %erased.pseudonym, "subject erased");
        }
        Ok(erased)
    }
}
