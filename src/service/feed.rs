//! WatchChanges: every consent record, in sequence order, exactly once.
//!
//! Sequence numbers are taken before commit, so they can become visible out
//! of order, and a rolled-back transaction leaves a gap for ever. The feed
//! therefore never emits past a gap until the gap is settled: either its
//! record becomes visible, or every transaction that could hold it has
//! finished. A transaction that could hold a gap below the highest visible
//! sequence must have been in flight in the snapshot that showed the gap
//! (writers take a transaction id before their sequence number), so waiting
//! for that snapshot's in-flight transactions is enough.

use std::{collections::HashSet, time::Duration};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    domain::{ConsentRecord, PurposeCode},
    error::Result,
    store::Store,
};

/// How many records one read fetches.
const READ_LIMIT: i64 = 500;
/// How often to look again at in-flight transactions that block a gap.
const GAP_POLL: Duration = Duration::from_millis(20);

/// Where a stream stands: the last sequence sent, and how far gaps are
/// known to be permanent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frontier {
    pub cursor: i64,
    /// Every sequence at or below this that is not visible never will be.
    pub settled_upto: i64,
}

impl Frontier {
    pub fn new(after: i64) -> Self {
        Self {
            cursor: after,
            settled_upto: after,
        }
    }

    /// How many of `sequences` (ascending, all above the cursor, read in one
    /// snapshot) can be sent now without passing an unsettled gap.
    pub fn sendable(&self, sequences: &[i64]) -> usize {
        let mut cursor = self.cursor;
        let mut count = 0;
        for &sequence in sequences {
            if sequence != cursor + 1 && sequence - 1 > self.settled_upto {
                break;
            }
            cursor = sequence;
            count += 1;
        }
        count
    }

    /// Records that `sequence` was sent.
    pub fn sent(&mut self, sequence: i64) {
        self.cursor = sequence;
        self.settled_upto = self.settled_upto.max(sequence);
    }

    /// Gaps below `highest_seen` are settled (their holders have finished).
    pub fn settle_below(&mut self, highest_seen: i64) {
        self.settled_upto = self.settled_upto.max(highest_seen - 1);
    }
}

/// Streams records after `after` into `out` until the receiver goes away or
/// `stop` is cancelled. `purposes` filters what is sent (empty: all); the
/// cursor advances over filtered records too. Without a wake-up, the stream
/// re-reads every `poll`.
pub async fn follow(
    store: Store,
    mut wake: watch::Receiver<u64>,
    poll: Duration,
    after: i64,
    purposes: HashSet<PurposeCode>,
    out: mpsc::Sender<Result<ConsentRecord>>,
    stop: CancellationToken,
) {
    let _subscribed = SubscriberGauge::open();
    let mut frontier = Frontier::new(after);
    loop {
        let read = match store.read_feed(frontier.cursor, READ_LIMIT).await {
            Ok(read) => read,
            Err(e) => {
                let _ = out.send(Err(e)).await;
                return;
            }
        };
        let sequences: Vec<i64> = read.records.iter().map(|r| r.sequence).collect();
        let sendable = frontier.sendable(&sequences);
        for record in read.records.into_iter().take(sendable) {
            let sequence = record.sequence;
            let age = (chrono::Utc::now() - record.recorded_at)
                .num_milliseconds()
                .max(0) as f64
                / 1000.0;
            if purposes.is_empty() || purposes.contains(&record.content.purpose) {
                tokio::select! {
                    () = stop.cancelled() => return,
                    sent = out.send(Ok(record)) => if sent.is_err() { return },
                }
            }
            frontier.sent(sequence);
            metrics::gauge!(crate::metrics::FEED_LAG).set(age);
        }

        if sendable < sequences.len() {
            // Blocked at a gap: wait for the snapshot's in-flight
            // transactions, then everything below what we saw is settled.
            let highest_seen = *sequences.last().expect("non-empty");
            if !read.in_progress.is_empty() {
                loop {
                    match store.transactions_finished(&read.in_progress).await {
                        Ok(true) => break,
                        Ok(false) => {}
                        Err(e) => {
                            let _ = out.send(Err(e)).await;
                            return;
                        }
                    }
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = out.closed() => return,
                        () = tokio::time::sleep(GAP_POLL) => {}
                    }
                }
            }
            frontier.settle_below(highest_seen);
            continue;
        }
        if sequences.len() as i64 == READ_LIMIT {
            continue; // more is waiting
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = out.closed() => return,
            () = next_wake(&mut wake, poll) => {}
        }
    }
}

/// Waits for a wake-up or for `poll`, whichever comes first. Once the
/// listener has ended, `changed()` fails at once for ever, so only the poll
/// interval is left: waiting on it keeps the stream from re-reading in a
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

/// Counts open streams in the subscribers gauge while alive.
struct SubscriberGauge;

impl SubscriberGauge {
    fn open() -> Self {
        metrics::gauge!(crate::metrics::FEED_SUBSCRIBERS).increment(1.0);
        Self
    }
}

impl Drop for SubscriberGauge {
    fn drop(&mut self) {
        metrics::gauge!(crate::metrics::FEED_SUBSCRIBERS).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_a_listener_a_stream_waits_the_poll_interval_between_reads() {
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
    async fn a_notification_wakes_a_stream_before_the_poll_interval() {
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

    #[test]
    fn contiguous_sequences_are_all_sendable() {
        assert_eq!(Frontier::new(0).sendable(&[1, 2, 3]), 3);
        assert_eq!(Frontier::new(10).sendable(&[11]), 1);
        assert_eq!(Frontier::new(0).sendable(&[]), 0);
    }

    #[test]
    fn an_unsettled_gap_blocks_everything_after_it() {
        let frontier = Frontier::new(0);
        assert_eq!(frontier.sendable(&[1, 2, 4, 5]), 2);
        assert_eq!(frontier.sendable(&[2, 3]), 0, "1 may still commit");
    }

    #[test]
    fn a_settled_gap_is_skipped() {
        let mut frontier = Frontier::new(0);
        frontier.settle_below(5); // 1..=4 settled
        assert_eq!(frontier.sendable(&[2, 5, 6]), 3);
        assert_eq!(
            frontier.sendable(&[7]),
            0,
            "5 and 6 were not seen yet when settling"
        );
    }

    #[test]
    fn a_late_commit_below_the_highest_seen_is_sent_in_order() {
        // First read saw 2 (1 in flight); after settling, 1 shows up.
        let mut frontier = Frontier::new(0);
        assert_eq!(frontier.sendable(&[2]), 0);
        frontier.settle_below(2);
        assert_eq!(frontier.sendable(&[1, 2]), 2);
        frontier.sent(1);
        frontier.sent(2);
        assert_eq!(frontier.cursor, 2);
        assert_eq!(frontier.sendable(&[4]), 0, "3 is a new, unsettled gap");
    }
}
