//! Encryption of personal data values at rest (R8).
//!
//! AES-256-GCM with a random 96-bit nonce per value. The associated data is
//! the subject and the field, so a ciphertext moved to another row (another
//! person, another field) fails to decrypt instead of being released as
//! someone else's data. Each sealed value names its key, so keys rotate:
//! the first key seals, every listed key opens, and `consentd keys rotate`
//! re-seals old rows under the first key.

use std::collections::HashMap;

use aes_gcm::{
    Aes256Gcm, KeyInit as _, Nonce,
    aead::{Aead as _, Payload},
};
use anyhow::{Context as _, anyhow, bail};

use crate::{
    domain::{FieldName, PersonalValue, SealedValue, SubjectId},
    keys::{self, KeyFile, KeyRing},
};

const NONCE_BYTES: usize = 12;

/// The data keys. The first seals; all open.
#[derive(Clone)]
pub struct DataKeys {
    ring: KeyRing,
    ciphers: HashMap<String, Aes256Gcm>,
}

impl std::fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The ring's Debug shows key ids only; the ciphers hold key material.
        f.debug_tuple("DataKeys").field(&self.ring).finish()
    }
}

impl KeyFile for DataKeys {
    const WHAT: &'static str = "data keys (personal data at rest)";
    const STATE_FILE: &'static str = "data.keys";

    /// AES-256 keys must be exactly 32 bytes.
    fn parse(text: &str, origin: &str) -> anyhow::Result<Self> {
        Self::new(KeyRing::parse(text, origin)?, origin)
    }

    fn new_file() -> String {
        keys::new_ring_file("data keys")
    }
}

impl DataKeys {
    fn new(ring: KeyRing, origin: &str) -> anyhow::Result<Self> {
        let mut ciphers = HashMap::new();
        for (kid, key) in ring.iter() {
            if key.expose().len() != 32 {
                bail!(
                    "{origin}: data key `{kid}` must be exactly 32 bytes (got {})",
                    key.expose().len()
                );
            }
            let cipher = Aes256Gcm::new_from_slice(key.expose()).map_err(|e| anyhow!("{e}"))?;
            ciphers.insert(kid.to_string(), cipher);
        }
        Ok(Self { ring, ciphers })
    }

    /// The id of the key that seals new values.
    pub fn current(&self) -> &str {
        self.ring.current()
    }

    pub fn seal(
        &self,
        subject: &SubjectId,
        field: &FieldName,
        value: &PersonalValue,
    ) -> anyhow::Result<SealedValue> {
        let cipher = &self.ciphers[self.current()];
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::fill(&mut nonce).map_err(|e| anyhow!("no random nonce: {e}"))?;
        let aad = associated_data(subject, field);
        let ciphertext = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: value.as_str().as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| anyhow!("encryption failed"))?;
        Ok(SealedValue {
            key_id: self.current().to_string(),
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    /// Opens a value sealed for exactly this subject and field. The error
    /// names the key and the row's coordinates, never the value.
    pub fn open(
        &self,
        subject: &SubjectId,
        field: &FieldName,
        sealed: &SealedValue,
    ) -> anyhow::Result<PersonalValue> {
        let cipher = self.ciphers.get(&sealed.key_id).with_context(|| {
            format!(
                "field `{field}` is sealed with key `{}`, which is not configured",
                sealed.key_id
            )
        })?;
        if sealed.nonce.len() != NONCE_BYTES {
            bail!("field `{field}` has a malformed nonce");
        }
        let aad = associated_data(subject, field);
        let plain = cipher
            .decrypt(
                Nonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| {
                anyhow!(
                    "field `{field}` does not open with key `{}` (altered, or moved from another row)",
                    sealed.key_id
                )
            })?;
        let text = String::from_utf8(plain).map_err(|_| anyhow!("field `{field}` is not UTF-8"))?;
        PersonalValue::parse(text).map_err(|_| anyhow!("field `{field}` holds an invalid value"))
    }
}

/// Re-seals every value not sealed with the current key, `batch` rows per
/// transaction, and returns how many were re-sealed. Servers keep running:
/// they open values under any listed key, and a row changed by
/// PutPersonalData meanwhile is left alone (it is already under the current
/// key). `progress` gets the running total after each batch.
pub async fn rotate(
    store: &crate::store::Store,
    keys: &DataKeys,
    batch: usize,
    mut progress: impl FnMut(u64),
) -> crate::error::Result<u64> {
    let mut total = 0;
    loop {
        let rows = store
            .sealed_under_other_keys(keys.current(), batch as i64)
            .await?;
        if rows.is_empty() {
            return Ok(total);
        }
        let resealed = rows
            .into_iter()
            .map(|row| {
                let value = keys.open(&row.subject_id, &row.field, &row.sealed)?;
                let sealed = keys.seal(&row.subject_id, &row.field, &value)?;
                Ok((row, sealed))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        total += store.reseal(&resealed).await?;
        progress(total);
    }
}

/// Length-prefixed, so ("ab", "c") and ("a", "bc") bind differently.
fn associated_data(subject: &SubjectId, field: &FieldName) -> Vec<u8> {
    let mut aad = b"consentd.v1".to_vec();
    for part in [subject.as_str(), field.as_str()] {
        aad.extend_from_slice(&(part.len() as u64).to_le_bytes());
        aad.extend_from_slice(part.as_bytes());
    }
    aad
}

#[cfg(test)]
mod tests {
    use base64::{Engine as _, engine::general_purpose::STANDARD};

    use super::*;

    fn key_line(kid: &str, byte: u8) -> String {
        format!("{kid}={}\n", STANDARD.encode([byte; 32]))
    }

    fn ids(subject: &str, field: &str) -> (SubjectId, FieldName) {
        (
            SubjectId::parse(subject).unwrap(),
            FieldName::parse(field).unwrap(),
        )
    }

    #[test]
    fn a_sealed_value_opens_to_itself_and_does_not_contain_it() {
        let keys = DataKeys::parse(&key_line("k1", 7), "test").unwrap();
        let (s, f) = ids("C-1", "postal_address");
        let value = PersonalValue::parse("1 Nanjing Road, Shanghai").unwrap();
        let sealed = keys.seal(&s, &f, &value).unwrap();
        assert_eq!(sealed.key_id, "k1");
        assert!(!sealed.ciphertext.windows(7).any(|w| w == b"Nanjing"));
        assert_eq!(keys.open(&s, &f, &sealed).unwrap(), value);
    }

    #[test]
    fn a_value_moved_to_another_subject_or_field_does_not_open() {
        let keys = DataKeys::parse(&key_line("k1", 7), "test").unwrap();
        let (s, f) = ids("C-1", "phone");
        let sealed = keys
            .seal(&s, &f, &PersonalValue::parse("555").unwrap())
            .unwrap();
        let (other_subject, other_field) = ids("C-2", "email");
        assert!(keys.open(&other_subject, &f, &sealed).is_err());
        assert!(keys.open(&s, &other_field, &sealed).is_err());
        let error = keys
            .open(&other_subject, &f, &sealed)
            .unwrap_err()
            .to_string();
        assert!(!error.contains("555"), "{error}");
    }

    #[test]
    fn after_rotation_old_values_still_open_and_new_ones_use_the_first_key() {
        let old = DataKeys::parse(&key_line("k1", 7), "test").unwrap();
        let (s, f) = ids("C-1", "name");
        let value = PersonalValue::parse("Li Lei").unwrap();
        let sealed = old.seal(&s, &f, &value).unwrap();
        let rotated = DataKeys::parse(
            &format!("{}{}", key_line("k2", 9), key_line("k1", 7)),
            "test",
        )
        .unwrap();
        assert_eq!(rotated.open(&s, &f, &sealed).unwrap(), value);
        assert_eq!(rotated.seal(&s, &f, &value).unwrap().key_id, "k2");
        let retired = DataKeys::parse(&key_line("k2", 9), "test").unwrap();
        assert!(retired.open(&s, &f, &sealed).is_err());
    }

    #[test]
    fn data_keys_must_be_exactly_32_bytes() {
        let long = format!("k1={}\n", STANDARD.encode([1u8; 48]));
        let error = DataKeys::parse(&long, "keys.txt").unwrap_err().to_string();
        assert!(error.contains("exactly 32 bytes"), "{error}");
        assert!(DataKeys::parse("k1=short\n", "keys.txt").is_err());
    }
}
