//! The tamper-evident history at work: the server's checkpoint writer, and
//! the walk behind `consentd verify`.

use std::{sync::Arc, time::Duration};

use ed25519_dalek::SigningKey;
use tokio_util::sync::CancellationToken;

use crate::{
    error::Result,
    ledger::{
        checkpoint::{self, Checkpoint},
        verify::{self, Broken, Intact},
    },
    store::Store,
};

/// Writes signed checkpoints of the chain heads.
#[derive(Clone)]
pub struct Checkpointer {
    store: Store,
    key: Arc<SigningKey>,
    interval: Duration,
}

impl Checkpointer {
    pub fn new(store: Store, key: SigningKey, interval: Duration) -> Self {
        Self {
            store,
            key: Arc::new(key),
            interval,
        }
    }

    /// The id of the key checkpoints are signed with.
    pub fn key_id(&self) -> String {
        checkpoint::key_id(&self.key.verifying_key())
    }

    /// One checkpoint now; None when no head changed since the last one.
    pub async fn checkpoint(&self) -> Result<Option<Checkpoint>> {
        let written = self
            .store
            .write_checkpoint(|c| checkpoint::sign(c, &self.key))
            .await?;
        if let Some(c) = &written {
            tracing::info!(
                checkpoint_id = c.checkpoint_id,
                chains = c.chains,
                records = c.records,
                key_id = %c.key_id,
                "ledger checkpoint written"
            );
        }
        Ok(written)
    }

    /// Writes a checkpoint every interval until `stop`. A failed one is
    /// logged and tried again at the next tick: the heads it would have
    /// signed are still there.
    pub async fn run(self, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await; // the first tick is immediate
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if let Err(e) = self.checkpoint().await {
                tracing::warn!(error = %e, "ledger checkpoint failed; trying again at the next tick");
            }
        }
    }
}

/// Walks every chain and every checkpoint.
pub async fn verify(store: &Store) -> Result<std::result::Result<Intact, Broken>> {
    Ok(verify::verify(store.ledger().await?))
}
