//! Erasure (PIPL Art. 47) that still honours opt-outs.

use crate::{
    domain::{Actor, SubjectId},
    error::Result,
    keys::{SubjectKey, hex},
    store::{Erased, Store},
};

/// What an erased id leaves behind: a keyed hash on the suppression list,
/// so its opt-outs hold if the id comes back, and a pseudonym its history
/// carries instead of the id. Both come from the subject-ref key that also
/// makes the trace refs, each under its own domain tag so none of them can
/// be matched with another.
#[derive(Clone, Debug)]
pub struct ErasureRefs {
    key: SubjectKey,
}

impl ErasureRefs {
    pub fn new(key: SubjectKey) -> Self {
        Self { key }
    }

    /// The suppression-list hash of an erased external id.
    pub fn hash(&self, subject: &SubjectId) -> Vec<u8> {
        self.key.derive("erasure:", subject)
    }

    /// The id an erased subject's history carries instead of its own.
    pub fn pseudonym(&self, subject: &SubjectId) -> SubjectId {
        SubjectId::parse(format!(
            "erased-{}",
            hex(&self.key.derive("pseudonym:", subject)[..12])
        ))
        .expect("a valid subject id")
    }
}

#[derive(Clone)]
pub struct Eraser {
    store: Store,
    refs: ErasureRefs,
}

impl Eraser {
    pub fn new(store: Store, refs: ErasureRefs) -> Self {
        Self { store, refs }
    }

    pub async fn erase(&self, subject_id: &SubjectId, actor: &Actor) -> Result<Erased> {
        let erased = self
            .store
            .erase_subject(
                subject_id,
                &self.refs.hash(subject_id),
                &self.refs.pseudonym(subject_id),
                actor,
            )
            .await?;
        if !erased.already {
            tracing::info!(pseudonym = %erased.pseudonym, "subject erased");
        }
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
    fn erasure_refs_are_stable_keyed_and_derived_apart_from_trace_refs() {
        let id = SubjectId::parse("C-1042").unwrap();
        let refs = ErasureRefs::new(key(7));
        assert_eq!(refs.hash(&id), refs.hash(&id));
        assert_ne!(refs.hash(&id), ErasureRefs::new(key(8)).hash(&id));
        assert_ne!(
            hex(&refs.hash(&id)[..8]),
            SubjectRefs::new(key(7)).of(&id),
            "derived apart"
        );
        assert!(refs.pseudonym(&id).as_str().starts_with("erased-"));
        assert!(!refs.pseudonym(&id).as_str().contains("1042"));
        assert_eq!(refs.pseudonym(&id), refs.pseudonym(&id));
        assert_ne!(
            &refs.pseudonym(&id).as_str()["erased-".len()..],
            &hex(&refs.hash(&id)[..12]),
            "derived apart"
        );
    }
}
