//! Following the feed on a hot standby (`--read-database-url`) while the
//! primary keeps the facts a standby lacks.
//!
//! A standby's snapshot lists no transaction in flight on the primary, so
//! it cannot say whether a gap in the sequence may still fill. The primary
//! is asked instead: once the transactions in flight there have finished,
//! and the standby has replayed the primary's WAL up to where they had, a
//! read of the standby sees every commit that can fill a gap seen before.
//! NOTIFY reaches only the primary's listeners, and a wake-up may come
//! before the standby has replayed the write, so after each one the reader
//! waits (briefly) for the standby to reach the primary's WAL first.

use std::{sync::Mutex, time::Duration};

use tokio_util::sync::CancellationToken;

use super::{Shared, reader::wait_finished};
use crate::{
    domain::FeedEvent,
    error::Result,
    store::{Lsn, Store},
};

/// How often to ask whether the standby has replayed far enough, at most;
/// the first asks come sooner, for a write replays within milliseconds.
const REPLAY_POLL: Duration = Duration::from_millis(10);
/// The longest a wake-up waits for the standby before reading anyway: a
/// standby further behind is read as it is, and the next wake-up or poll
/// finds the rest.
const WAKE_WAIT: Duration = Duration::from_secs(1);

/// The primary a standby-reading feed asks, and how far the standby had
/// replayed when the reader last published.
pub(crate) struct Standby {
    primary: Store,
    /// Every published event is visible on the standby once it has
    /// replayed this far. A standby that restarts after a crash serves from
    /// its last consistent point, which may be behind what it showed, so
    /// reads of the settled history wait for it.
    published_at: Mutex<Option<Lsn>>,
}

impl Standby {
    pub(crate) fn new(primary: Store) -> Self {
        Self {
            primary,
            published_at: Mutex::new(None),
        }
    }

    /// Notes that what the reader publishes next was read on a standby that
    /// had replayed to `lsn`. Called before the head moves past it.
    pub(super) fn published(&self, lsn: Option<Lsn>) {
        let mut at = self.published_at.lock().expect("lsn lock");
        *at = (*at).max(lsn);
    }

    /// Returns once every sequence below what `standby` showed before the
    /// call is settled there: the primary's transactions in flight now have
    /// finished and the standby has replayed past their end. Waits as long
    /// as that takes (or until `stop`, after which nothing is published).
    pub(super) async fn settle(&self, standby: &Store, stop: &CancellationToken) -> Result<()> {
        let in_flight = self.primary.in_progress().await?;
        wait_finished(&self.primary, &in_flight, stop).await?;
        let lsn = self.primary.flushed_lsn().await?;
        replayed(standby, lsn, None, stop).await?;
        self.published(Some(lsn));
        Ok(())
    }

    /// After a wake-up: waits, at most [`WAKE_WAIT`], until `standby` has
    /// replayed what the primary has flushed, so the write that woke us is
    /// read now, not at the next poll. Failing to is no error.
    pub(super) async fn catch_up(&self, standby: &Store, stop: &CancellationToken) {
        let caught_up = async {
            let lsn = self.primary.flushed_lsn().await?;
            replayed(standby, lsn, Some(WAKE_WAIT), stop).await
        };
        match caught_up.await {
            Ok(true) => {}
            Ok(false) => tracing::debug!("the standby is behind the primary; reading it as it is"),
            Err(e) => tracing::debug!(error = %e, "could not compare the standby with the primary"),
        }
    }
}

impl Shared {
    /// Settled events with `after < sequence <= upto`, read where the feed
    /// reads; on a standby, once it has replayed as far as what was
    /// published (or until `stop`, with nothing).
    pub(super) async fn read_settled(
        &self,
        after: i64,
        upto: i64,
        limit: i64,
    ) -> Result<Vec<FeedEvent>> {
        let Some(lsn) = self
            .standby
            .as_ref()
            .and_then(|s| *s.published_at.lock().expect("lsn lock"))
        else {
            return self.store.read_settled_feed(after, upto, limit).await;
        };
        let mut wait = Duration::from_millis(1);
        loop {
            if let Some(events) = (self.store)
                .read_settled_feed_replayed(after, upto, limit, lsn)
                .await?
            {
                return Ok(events);
            }
            tokio::select! {
                () = self.stop.cancelled() => return Ok(Vec::new()),
                () = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(REPLAY_POLL);
        }
    }
}

/// Waits until `standby` has replayed to `lsn`, for at most `limit` (none:
/// as long as it takes); returns whether it did. At `stop`, returns false.
async fn replayed(
    standby: &Store,
    lsn: Lsn,
    limit: Option<Duration>,
    stop: &CancellationToken,
) -> Result<bool> {
    let deadline = limit.map(|limit| tokio::time::Instant::now() + limit);
    let mut wait = Duration::from_millis(1);
    while !standby.replayed(lsn).await? {
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) || stop.is_cancelled() {
            return Ok(false);
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(false),
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(REPLAY_POLL);
    }
    Ok(true)
}
