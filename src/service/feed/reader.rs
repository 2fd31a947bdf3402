//! The one reader per server: it follows the feed tables with the gap rules
//! and publishes every settled event to the hub.

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Frontier, Shared};
use crate::{error::Result, store::Store};

/// How many events one read fetches.
const READ_LIMIT: i64 = 500;
/// How often to look again at in-flight transactions that block a gap.
const GAP_POLL: Duration = Duration::from_millis(20);
/// How long to wait before reading again after a failed read.
const RETRY: Duration = Duration::from_secs(1);

/// Follows the feed until `stop`. A failed read is logged and retried:
/// subscribers wait (and may time out on their side) but are never handed
/// an event out of order.
pub(super) async fn run(
    shared: Arc<Shared>,
    mut wake: watch::Receiver<u64>,
    poll: Duration,
    stop: CancellationToken,
) {
    let mut frontier = loop {
        match start(&shared, &stop).await {
            Ok(frontier) => break frontier,
            Err(e) => failed(e, &stop).await,
        }
        if stop.is_cancelled() {
            return;
        }
    };
    if stop.is_cancelled() {
        return;
    }
    shared.head.send_replace(Some(frontier.cursor));
    tracing::debug!(head = frontier.cursor, "change feed reader started");
    while !stop.is_cancelled() {
        match step(&shared, &mut frontier, &stop).await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => {
                failed(e, &stop).await;
                continue;
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = next_wake(&mut wake, poll) => {}
        }
        if let Some(standby) = &shared.standby {
            standby.catch_up(&shared.store, &stop).await;
        }
    }
}

/// Logs a failed read, then pauses (or returns at `stop`).
async fn failed(error: crate::error::Error, stop: &CancellationToken) {
    tracing::warn!(error = %error, "change feed read failed; retrying");
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(RETRY) => {}
    }
}

/// Where the reader starts: the highest visible sequence, once every
/// transaction that could still commit below it has finished. Subscribers
/// that start further back read the settled history from the tables.
async fn start(shared: &Shared, stop: &CancellationToken) -> Result<Frontier> {
    let (head, in_progress) = shared.store.feed_head().await?;
    settle(shared, &in_progress, stop).await?;
    Ok(Frontier::new(head))
}

/// Returns once every sequence below the highest a read saw is settled: the
/// transactions in flight in its snapshot (`in_progress`) have finished, or
/// on a standby, what the primary says instead.
async fn settle(shared: &Shared, in_progress: &[String], stop: &CancellationToken) -> Result<()> {
    match &shared.standby {
        None => wait_finished(&shared.store, in_progress, stop).await,
        Some(standby) => standby.settle(&shared.store, stop).await,
    }
}

/// One read, publishing what the gap rules let through. Returns whether to
/// read again at once (a full read, or a gap just settled).
async fn step(shared: &Shared, frontier: &mut Frontier, stop: &CancellationToken) -> Result<bool> {
    let read = shared.store.read_feed(frontier.cursor, READ_LIMIT).await?;
    let sequences: Vec<i64> = read.events.iter().map(|e| e.sequence()).collect();
    let sendable = frontier.sendable(&sequences);
    if sendable > 0 {
        let events: Vec<_> = read.events.into_iter().take(sendable).collect();
        for event in &events {
            frontier.sent(event.sequence());
        }
        if let Some(crate::domain::FeedEvent::Record(last)) = events.last() {
            let age = (chrono::Utc::now() - last.recorded_at)
                .num_milliseconds()
                .max(0);
            metrics::gauge!(crate::metrics::FEED_LAG).set(age as f64 / 1000.0);
        }
        if let Some(standby) = &shared.standby {
            standby.published(read.replayed);
        }
        shared.publish(events);
    }
    if sendable < sequences.len() {
        // Blocked at a gap: wait for the snapshot's in-flight transactions,
        // then everything below what we saw is settled.
        settle(shared, &read.in_progress, stop).await?;
        frontier.settle_below(*sequences.last().expect("non-empty"));
        return Ok(true);
    }
    Ok(sequences.len() as i64 == READ_LIMIT)
}

/// Returns once every one of `xids` has committed or rolled back (or at
/// `stop`, after which nothing is published).
pub(super) async fn wait_finished(
    store: &Store,
    xids: &[String],
    stop: &CancellationToken,
) -> Result<()> {
    if xids.is_empty() {
        return Ok(());
    }
    while !store.transactions_finished(xids).await? {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(GAP_POLL) => {}
        }
    }
    Ok(())
}

/// Waits for a wake-up or for `poll`, whichever comes first. Once the
/// listener has ended, `changed()` fails at once for ever, so only the poll
/// interval is left: waiting on it keeps the reader from re-reading in a
/// busy loop.
async fn next_wake(wake: &mut watch::Receiver<u64>, poll: Duration) {
    tokio::select! {
        changed = wake.changed() => {
            if changed.is_err() {
                tokio::time::sleep(poll).await;
            }
        }
        () = tokio::time::sleep(poll) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_a_listener_the_reader_waits_the_poll_interval_between_reads() {
        let (sender, mut wake) = watch::channel(0u64);
        drop(sender);
        let poll = Duration::from_millis(300);
        let started = std::time::Instant::now();
        next_wake(&mut wake, poll).await;
        assert!(
            started.elapsed() >= poll,
            "woke after {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_notification_wakes_the_reader_before_the_poll_interval() {
        let (sender, mut wake) = watch::channel(0u64);
        let poll = Duration::from_millis(300);
        let started = std::time::Instant::now();
        sender.send_modify(|n| *n += 1);
        next_wake(&mut wake, poll).await;
        assert!(
            started.elapsed() < poll,
            "woke after {:?}",
            started.elapsed()
        );
    }
}
