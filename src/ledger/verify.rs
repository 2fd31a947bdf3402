//! `consentd verify`'s judgement: walks every chain from its genesis, then
//! replays every checkpoint against the chains, and names the first link
//! that does not hold.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::{
    ChainHead, Hash, Link,
    checkpoint::{Checkpoint, heads_digest, signature_holds},
    genesis, link,
};

/// What an intact history holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intact {
    pub records: usize,
    pub checkpoints: usize,
}

/// The first link that does not hold: the row (or checkpoint) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("broken link at {at}: {why}")]
pub struct Broken {
    pub at: String,
    pub why: String,
}

fn broken(at: impl Into<String>, why: impl Into<String>) -> Broken {
    Broken {
        at: at.into(),
        why: why.into(),
    }
}

/// One walked chain: each link's recomputed hash and its name.
type Walked = Vec<(Hash, String)>;

/// Everything `verify` reads, as stored.
pub struct Ledger {
    pub links: Vec<Link>,
    /// The heads the database keeps for each chain (`ledger_heads`).
    pub heads: Vec<ChainHead>,
    pub checkpoints: Vec<Checkpoint>,
    /// The heads each checkpoint signed that changed since the one before.
    pub checkpoint_heads: Vec<(i64, ChainHead)>,
}

pub fn verify(mut ledger: Ledger) -> Result<Intact, Broken> {
    let records = ledger.links.len();
    ledger.links.sort_by_key(|l| (l.subject_key, l.position));
    let chains = walk_chains(ledger.links)?;
    compare_heads(&chains, &ledger.heads)?;
    let checkpoints = ledger.checkpoints.len();
    replay_checkpoints(&chains, ledger.checkpoints, ledger.checkpoint_heads)?;
    Ok(Intact {
        records,
        checkpoints,
    })
}

/// Recomputes every hash from the genesis of its chain. `links` are sorted
/// by chain and position.
fn walk_chains(links: Vec<Link>) -> Result<BTreeMap<Uuid, Walked>, Broken> {
    let mut chains: BTreeMap<Uuid, Walked> = BTreeMap::new();
    for link_row in links {
        let name = link_row.content.describe();
        let Some(key) = link_row.subject_key else {
            return Err(broken(name, "no subject owns it"));
        };
        let chain = chains.entry(key).or_default();
        let expected = chain.len() as i64 + 1;
        if link_row.position > expected {
            return Err(broken(
                name,
                format!(
                    "the link before it is missing: position {expected} of its chain is gone \
                     (this row says {})",
                    link_row.position
                ),
            ));
        }
        if link_row.position < expected {
            let other = chain
                .get((link_row.position - 1).max(0) as usize)
                .map_or("nothing", |(_, n)| n.as_str());
            return Err(broken(
                name,
                format!(
                    "position {} of its chain is taken twice (also by {other}): a row was \
                     inserted",
                    link_row.position
                ),
            ));
        }
        if link_row.text_erased {
            // Erasure blanked the text and kept its digest: there is nothing
            // left to compare, but nothing may be left either.
            if !link_row.content.text_is_blank() {
                return Err(broken(
                    name,
                    "it is marked erased, but its free text is not blank",
                ));
            }
        } else if link_row.content.text_digest()[..] != link_row.text_digest[..] {
            return Err(broken(
                name,
                "its free text was changed: it no longer matches its digest",
            ));
        }
        let previous = chain.last().map_or_else(|| genesis(key), |(h, _)| *h);
        let hash = link(
            &previous,
            &link_row
                .content
                .encode(link_row.position, &link_row.text_digest),
        );
        if hash[..] != link_row.hash[..] {
            return Err(broken(
                name,
                "its hash does not match its content and the link before it: the row was \
                 changed, moved or inserted",
            ));
        }
        chain.push((hash, name));
    }
    Ok(chains)
}

/// The last link's name, for messages about a chain's end.
fn last_name(chain: Option<&Walked>, key: Uuid) -> String {
    chain.and_then(|c| c.last()).map_or_else(
        || format!("the chain of subject key {key}"),
        |(_, n)| n.clone(),
    )
}

/// The database's own record of each chain's end must match the walk: a
/// removed tail shows here even without a checkpoint.
fn compare_heads(chains: &BTreeMap<Uuid, Walked>, heads: &[ChainHead]) -> Result<(), Broken> {
    let mut seen = std::collections::HashSet::new();
    for head in heads {
        seen.insert(head.subject_key);
        let chain = chains.get(&head.subject_key);
        let length = chain.map_or(0, Vec::len) as i64;
        let at = last_name(chain, head.subject_key);
        if head.length > length {
            return Err(broken(
                at,
                format!(
                    "it is link {length} of its chain, but the chain's head says {} links: \
                     links at the end were removed",
                    head.length
                ),
            ));
        }
        if head.length < length {
            return Err(broken(
                at,
                format!(
                    "the chain's head says {} links, but {length} are there: links were added \
                     past its head",
                    head.length
                ),
            ));
        }
        let last = chain
            .and_then(|c| c.last())
            .map_or_else(|| genesis(head.subject_key), |(h, _)| *h);
        if last[..] != head.head[..] {
            return Err(broken(
                at,
                "it does not match the hash its chain's head holds",
            ));
        }
    }
    if let Some((_, chain)) = chains.iter().find(|(key, _)| !seen.contains(*key)) {
        return Err(broken(chain[0].1.clone(), "its chain has no head"));
    }
    Ok(())
}

/// Replays the checkpoints in order: each signed head must still be in its
/// chain at the same position with the same hash, and the heads must add up
/// to the signed digest.
fn replay_checkpoints(
    chains: &BTreeMap<Uuid, Walked>,
    mut checkpoints: Vec<Checkpoint>,
    checkpoint_heads: Vec<(i64, ChainHead)>,
) -> Result<(), Broken> {
    checkpoints.sort_by_key(|c| c.checkpoint_id);
    let mut deltas: BTreeMap<i64, Vec<ChainHead>> = BTreeMap::new();
    for (id, head) in checkpoint_heads {
        deltas.entry(id).or_default().push(head);
    }
    if let Some(id) = deltas.keys().find(|id| {
        checkpoints
            .binary_search_by_key(*id, |c| c.checkpoint_id)
            .is_err()
    }) {
        return Err(broken(
            format!("checkpoint {id}"),
            "heads are stored for it, but the checkpoint itself is gone",
        ));
    }
    let mut state: BTreeMap<Uuid, ChainHead> = BTreeMap::new();
    for checkpoint in checkpoints {
        let at = format!(
            "checkpoint {} of {}",
            checkpoint.checkpoint_id, checkpoint.made_at
        );
        for head in deltas.remove(&checkpoint.checkpoint_id).unwrap_or_default() {
            let chain = chains.get(&head.subject_key);
            let length = chain.map_or(0, Vec::len) as i64;
            if head.length > length || head.length < 1 {
                return Err(broken(
                    last_name(chain, head.subject_key),
                    format!(
                        "it is link {length} of its chain, but {at} signed {} links: links at \
                         the end were removed",
                        head.length
                    ),
                ));
            }
            let (hash, name) = &chain.expect("length is at least 1")[head.length as usize - 1];
            if hash[..] != head.head[..] {
                return Err(broken(
                    name.clone(),
                    format!(
                        "it no longer matches the head {at} signed: the history up to it was \
                         rewritten"
                    ),
                ));
            }
            state.insert(head.subject_key, head);
        }
        let records: i64 = state.values().map(|h| h.length).sum();
        if heads_digest(state.values())[..] != checkpoint.heads_digest[..]
            || state.len() as i64 != checkpoint.chains
            || records != checkpoint.records
        {
            return Err(broken(
                at,
                "its stored heads do not add up to what it signed: a head was removed or changed",
            ));
        }
        if !signature_holds(&checkpoint) {
            return Err(broken(at, "its signature does not verify"));
        }
    }
    Ok(())
}
