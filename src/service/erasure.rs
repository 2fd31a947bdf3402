//! Erasure (PIPL Art. 47) that still honours opt-outs.

use crate::{
    domain::{Actor, SubjectId},
    error::Result,
    keys::{SubjectKey, hex},
    state::{DecisionState, Settle},
    store::{Erased, Store},
};

/// What an erased id leaves behind: a keyed hash on the suppression list,
/// so its opt-outs hold if the id comes back, and a pseudonym its history
/// carries instead of the id. The pseudonym is random, made afresh at each
/// erasure: nothing computes it from the id, so it points back to no one,
/// and an id erased, registered again and erased again gets a new one.
#[derive(Clone, Debug)]
pub struct ErasureRefs {
    key: SubjectKey,
}

impl ErasureRefs {
    pub fn new(key: SubjectKey) -> Self {
        Self { key }
    }

    /// The suppression-list hash of an erased external id (its format is
    /// older than the key's domain tags; see `SubjectKey::legacy_erasure_hash`).
    pub fn hash(&self, subject: &SubjectId) -> Vec<u8> {
        self.key.legacy_erasure_hash(subject)
    }

    /// A new id for an erased subject's history.
    pub fn pseudonym(&self) -> SubjectId {
        let mut random = [0u8; 12];
        getrandom::fill(&mut random).expect("the OS random source works");
        SubjectId::parse(format!("erased-{}", hex(&random))).expect("a valid subject id")
    }
}

#[derive(Clone)]
pub struct Eraser {
    store: Store,
    refs: ErasureRefs,
    settle: Settle,
}

impl Eraser {
    pub fn new(store: Store, refs: ErasureRefs) -> Self {
        Self {
            store,
            refs,
            settle: Settle::default(),
        }
    }

    /// Each erasure waits until `state` has applied it, so a check on this
    /// server sees it at once.
    pub fn settling(mut self, state: DecisionState) -> Self {
        self.settle = Settle::on(state);
        self
    }

    pub async fn erase(&self, subject_id: &SubjectId, actor: &Actor) -> Result<Erased> {
        let erased = self
            .store
            .erase_subject(
                subject_id,
                &self.refs.hash(subject_id),
                &self.refs.pseudonym(),
                actor,
            )
            .await?;
        if !erased.already {
            tracing::info!(pseudonym = %erased.pseudonym, "subject erased");
        }
        self.settle.after(erased.token).await;
        Ok(erased)
    }
}

#[cfg(test)]
mod tests {
    use base64::{Engine as _, engine::general_purpose::STANDARD};

    use super::*;
    use crate::{keys::KeyFile as _, telemetry::SubjectRefs};

    fn key(byte: u8) -> SubjectKey {
        SubjectKey::parse(&STANDARD.encode([byte; 32]), "test").unwrap()
    }

    #[test]
    fn erasure_hashes_are_stable_and_keyed_and_pseudonyms_are_fresh() {
        let id = SubjectId::parse("C-1042").unwrap();
        let refs = ErasureRefs::new(key(7));
        assert_eq!(refs.hash(&id), refs.hash(&id));
        assert_ne!(refs.hash(&id), ErasureRefs::new(key(8)).hash(&id));
        let (a, b) = (refs.pseudonym(), refs.pseudonym());
        assert!(a.as_str().starts_with("erased-"));
        assert_ne!(a, b, "a new pseudonym at each erasure");
    }

    /// Any caller may choose a subject id, so no trace ref, of any id, may
    /// reveal part of another derivation: once, the trace ref of
    /// `erasure:C-1042` was the start of C-1042's suppression-list hash.
    #[test]
    fn no_trace_ref_reveals_part_of_an_erasure_hash() {
        let refs = ErasureRefs::new(key(7));
        let traces = SubjectRefs::new(key(7));
        for id in ["C-1042", "org:ACME/42"] {
            let hash = hex(&refs.hash(&SubjectId::parse(id).unwrap()));
            for crafted in [
                id.to_string(),
                format!("erasure:{id}"),
                format!("pseudonym:{id}"),
            ] {
                let trace = traces.of(&SubjectId::parse(crafted.as_str()).unwrap());
                assert!(!hash.contains(&trace), "{crafted}");
            }
        }
    }
}
