//! AIP-155 idempotency keys, claimed inside the caller's transaction so that
//! a key and the write it guards commit or vanish together.
//!
//! What is stored of a request's content is keyed (HMAC under the
//! subject-ref key): a plain hash of an external id and a few guessable
//! fields could be matched by anyone holding a copy of the table. Each key
//! also names its subject (by its internal key), so that erasure deletes it.

use deadpool_postgres::Transaction;
use sha2::{Digest as _, Sha256};

use crate::{
    domain::{RequestId, SubjectId},
    error::{Error, Result},
    keys::SubjectKey,
};

/// The domain tag idempotency digests are keyed under.
const DIGEST_DOMAIN: &str = "request-digest";

/// SHA-256 over an operation name and the request's content. Each part is
/// length-prefixed so that ("ab", "c") and ("a", "bc") differ. It is keyed
/// before it is stored (see [`claim`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestDigest(Vec<u8>);

impl RequestDigest {
    pub fn of(operation: &str, parts: &[&str]) -> Self {
        let mut hash = Sha256::new();
        for part in std::iter::once(&operation).chain(parts) {
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part.as_bytes());
        }
        Self(hash.finalize().to_vec())
    }
}

/// What claiming a key found.
pub(crate) enum Claim {
    /// The key is new and now held by this transaction.
    Fresh,
    /// The key was used before for the same content; here is its result.
    Replay(String),
}

/// Claims `request_id` for a request with `digest`, made about `subject`.
/// A concurrent first call with the same key makes this wait until that
/// call commits or rolls back, so two retries never both write.
pub(crate) async fn claim(
    tx: &Transaction<'_>,
    key: Option<&SubjectKey>,
    request_id: &RequestId,
    digest: &RequestDigest,
    subject: Option<&SubjectId>,
) -> Result<Claim> {
    let keyed = keyed(key, digest)?;
    let inserted = tx
        .execute(
            &tx.prepare_cached(
                "INSERT INTO idempotency_keys (request_id, digest, subject_key)
             VALUES ($1, $2, (SELECT subject_key FROM subjects WHERE subject_id = $3))
             ON CONFLICT (request_id) DO NOTHING",
            )
            .await?,
            &[
                &request_id.as_str(),
                &keyed,
                &subject.map(SubjectId::as_str),
            ],
        )
        .await?;
    if inserted == 1 {
        return Ok(Claim::Fresh);
    }
    let result = replay(tx, request_id, &keyed).await?;
    // The claim's conflict saw the key: it is there.
    result
        .map(Claim::Replay)
        .ok_or_else(|| Error::Internal(anyhow::anyhow!("a claimed idempotency key vanished")))
}

/// The digest as stored: keyed, so the table alone says nothing of the
/// content. Writes with a request id need the store's key.
pub(crate) fn keyed(key: Option<&SubjectKey>, digest: &RequestDigest) -> Result<Vec<u8>> {
    let key = key.ok_or_else(|| {
        Error::Internal(anyhow::anyhow!(
            "this store has no key for idempotency digests (Store::with_request_key)"
        ))
    })?;
    Ok(key.derive_bytes(DIGEST_DOMAIN, &digest.0))
}

/// The result of the first call with `request_id`, a key someone else
/// holds, or `None` when no committed call holds it: refused when that
/// call had other content. Run as a statement of its own after the claim
/// found the key taken, so that it sees a key a concurrent call committed
/// while the claim waited for it.
pub(crate) async fn replay(
    client: &impl deadpool_postgres::GenericClient,
    request_id: &RequestId,
    keyed: &[u8],
) -> Result<Option<String>> {
    let Some(row) = client
        .query_opt(
            &client
                .prepare_cached(
                    "SELECT digest, result_ref FROM idempotency_keys WHERE request_id = $1",
                )
                .await?,
            &[&request_id.as_str()],
        )
        .await?
    else {
        return Ok(None);
    };
    let stored: Vec<u8> = row.get(0);
    if stored != keyed {
        return Err(Error::RequestIdReused);
    }
    Ok(Some(row.get(1)))
}

/// Names the subject of a key claimed before its subject existed (a
/// registration), so that erasure finds it.
pub(crate) async fn name_subject(
    tx: &Transaction<'_>,
    request_id: &RequestId,
    subject: &SubjectId,
) -> Result<()> {
    tx.execute(
        &tx.prepare_cached(
            "UPDATE idempotency_keys
            SET subject_key = (SELECT subject_key FROM subjects WHERE subject_id = $2)
          WHERE request_id = $1 AND subject_key IS NULL",
        )
        .await?,
        &[&request_id.as_str(), &subject.as_str()],
    )
    .await?;
    Ok(())
}

/// Notes what the first call produced, for later replays.
pub(crate) async fn settle(
    tx: &Transaction<'_>,
    request_id: &RequestId,
    result: &str,
) -> Result<()> {
    tx.execute(
        &tx.prepare_cached("UPDATE idempotency_keys SET result_ref = $2 WHERE request_id = $1")
            .await?,
        &[&request_id.as_str(), &result],
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_separate_parts_unambiguously() {
        assert_ne!(
            RequestDigest::of("op", &["ab", "c"]),
            RequestDigest::of("op", &["a", "bc"])
        );
        assert_ne!(
            RequestDigest::of("op1", &["a"]),
            RequestDigest::of("op2", &["a"])
        );
        assert_eq!(
            RequestDigest::of("op", &["a"]),
            RequestDigest::of("op", &["a"])
        );
    }
}
