//! Signed checkpoints of the chain heads: what is signed, and the digest
//! over every head.

use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest as _, Sha256};

use super::{ChainHead, Encoder, Hash};

/// A checkpoint as stored.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub checkpoint_id: i64,
    pub made_at: DateTime<Utc>,
    /// How many chains, and how many links in all, the heads cover.
    pub chains: i64,
    pub records: i64,
    pub heads_digest: Vec<u8>,
    pub key_id: String,
    pub public_key: Vec<u8>,
    pub signature: Vec<u8>,
}

/// SHA-256 over every head, ordered by subject key: 16 key bytes, the
/// length as 8 big-endian bytes, the head. The database computes the same
/// when it writes a checkpoint (store::ledger).
pub fn heads_digest<'a>(heads: impl IntoIterator<Item = &'a ChainHead>) -> Hash {
    let mut hash = Sha256::new();
    for head in heads {
        hash.update(head.subject_key.as_bytes());
        hash.update(head.length.to_be_bytes());
        hash.update(&head.head);
    }
    hash.finalize().into()
}

/// What the signature covers.
fn message(checkpoint: &Checkpoint) -> Vec<u8> {
    Encoder::default()
        .text("consentd checkpoint v1")
        .int(checkpoint.checkpoint_id)
        .time(Some(checkpoint.made_at))
        .int(checkpoint.chains)
        .int(checkpoint.records)
        .bytes(Some(&checkpoint.heads_digest))
        .finish()
}

/// The id a public key is known by: the first 8 bytes of its SHA-256, in hex.
pub fn key_id(public_key: &VerifyingKey) -> String {
    crate::keys::hex(&Sha256::digest(public_key.as_bytes())[..8])
}

/// Fills in the key id, public key and signature.
pub fn sign(checkpoint: &mut Checkpoint, key: &SigningKey) {
    let public = key.verifying_key();
    checkpoint.key_id = key_id(&public);
    checkpoint.public_key = public.as_bytes().to_vec();
    checkpoint.signature = key.sign(&message(checkpoint)).to_bytes().to_vec();
}

/// Whether the signature is the stored key's over the stored content, and
/// the key id names that key.
pub fn signature_holds(checkpoint: &Checkpoint) -> bool {
    let Ok(public) = <[u8; 32]>::try_from(checkpoint.public_key.as_slice())
        .map_err(|_| ())
        .and_then(|bytes| VerifyingKey::from_bytes(&bytes).map_err(|_| ()))
    else {
        return false;
    };
    let Ok(signature) = Signature::from_slice(&checkpoint.signature) else {
        return false;
    };
    key_id(&public) == checkpoint.key_id && public.verify(&message(checkpoint), &signature).is_ok()
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn signed() -> Checkpoint {
        let mut checkpoint = Checkpoint {
            checkpoint_id: 3,
            made_at: DateTime::from_timestamp_micros(1_700_000_000_000_001).unwrap(),
            chains: 2,
            records: 5,
            heads_digest: vec![7; 32],
            key_id: String::new(),
            public_key: Vec::new(),
            signature: Vec::new(),
        };
        sign(&mut checkpoint, &SigningKey::from_bytes(&[9; 32]));
        checkpoint
    }

    #[test]
    fn a_signed_checkpoint_verifies_and_any_change_to_it_does_not() {
        assert!(signature_holds(&signed()));
        let changes: Vec<fn(&mut Checkpoint)> = vec![
            |c| c.checkpoint_id += 1,
            |c| c.made_at += chrono::Duration::microseconds(1),
            |c| c.chains += 1,
            |c| c.records += 1,
            |c| c.heads_digest[0] ^= 1,
            |c| c.signature[0] ^= 1,
            |c| c.key_id = "0000000000000000".into(),
        ];
        for change in changes {
            let mut checkpoint = signed();
            change(&mut checkpoint);
            assert!(!signature_holds(&checkpoint), "{checkpoint:?}");
        }
    }

    #[test]
    fn a_checkpoint_resigned_with_another_key_keeps_no_old_key_id() {
        let mut checkpoint = signed();
        let original = checkpoint.key_id.clone();
        sign(&mut checkpoint, &SigningKey::from_bytes(&[1; 32]));
        assert!(signature_holds(&checkpoint));
        assert_ne!(checkpoint.key_id, original);
    }

    #[test]
    fn the_heads_digest_covers_key_length_and_hash_in_order() {
        let a = ChainHead {
            subject_key: Uuid::nil(),
            length: 1,
            head: vec![1; 32],
        };
        let b = ChainHead {
            subject_key: Uuid::max(),
            length: 2,
            head: vec![2; 32],
        };
        let digest = heads_digest([&a, &b]);
        assert_ne!(digest, heads_digest([&b, &a]));
        assert_ne!(digest, heads_digest([&a]));
        let longer = ChainHead {
            length: 3,
            ..b.clone()
        };
        assert_ne!(digest, heads_digest([&a, &longer]));
    }
}
