//! The gap rules: how far a reader of the feed may go.
//!
//! Sequence numbers are taken before commit, so they can become visible out
//! of order, and a rolled-back transaction leaves a gap for ever. The feed
//! therefore never emits past a gap until the gap is settled: either its
//! event becomes visible, or every transaction that could hold it has
//! finished. A transaction that could hold a gap below the highest visible
//! sequence already had its id when the snapshot that showed the gap was
//! taken (writers take a transaction id before their sequence number), so
//! waiting for the transactions that held ids then is enough. Those are
//! more than the snapshot's own list, which stops at the newest finished
//! transaction: see `store::feed::in_flight`.

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

#[cfg(test)]
mod tests {
    use super::*;

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
