//! RecordConsent's group commit: the records of concurrent callers go to
//! the database in batches, one transaction and one WAL flush each (see
//! `store::consent_batch`), instead of one of each per record.

use std::time::Duration;

use tokio::task::JoinHandle;

use super::batcher::{BatchLimits, Batcher};
use crate::{
    domain::{ConsentRecord, NewConsentRecord},
    error::Result,
    store::Store,
};

/// The callers' end of the writer.
pub type RecordWriter = Batcher<NewConsentRecord, ConsentRecord>;

/// 128 records make one transaction of a few milliseconds of work: long
/// enough to amortise the commit, short enough that a record waits little
/// behind the others and row locks are held briefly.
///
/// Two writers, the second starting beside the first only once the batch
/// in flight has run for 25 ms. Each batch costs PostgreSQL about 1.3 ms
/// of CPU whatever its size (the function's statements, the transaction,
/// the NOTIFY and the feed's read it wakes), so fewer, larger batches cost
/// less a record. In the serving bench (record phase alone) one writer
/// wrote 3,611 records/s, two starting freely 2,941, four 2,246, eight
/// 1,968; two with the 25 ms overlap 3,499-3,628. A lone writer whose batch
/// waits on a lock (a subject an erasure holds) would stop every
/// RecordConsent until the lock goes; the second takes over after 25 ms,
/// or the call is answered UNAVAILABLE when no connection is free.
pub const LIMITS: BatchLimits = BatchLimits {
    max_batch: 128,
    writers: 2,
    overlap_after: Duration::from_millis(OVERLAP_MS),
    queue: 4096,
};

/// See [`BatchLimits::overlap_after`]: in the serving bench a batch took
/// 5–20 ms, and a batch waiting longer than this is waiting on something
/// other than its own work.
const OVERLAP_MS: u64 = 25;

/// Starts the writer on `store`. It ends once every [`RecordWriter`] clone
/// is dropped and the batches in flight have committed.
pub fn start(store: Store, limits: BatchLimits) -> (RecordWriter, JoinHandle<()>) {
    Batcher::start(limits, crate::metrics::RECORD_QUEUE, move |records| {
        let store = store.clone();
        async move { write_sorted(&store, records).await }
    })
}

/// Writes `records` in the order of their subjects (then request ids),
/// and answers in the order given. Two batches in flight at once then take
/// their subjects' row locks, and retries' idempotency keys (a retry names
/// the same subject), in one global order, so they wait for each other but
/// never deadlock.
async fn write_sorted(store: &Store, records: Vec<NewConsentRecord>) -> Vec<Result<ConsentRecord>> {
    let mut numbered: Vec<(usize, NewConsentRecord)> = records.into_iter().enumerate().collect();
    // Stable: records of one subject keep the order they arrived in.
    numbered.sort_by(|(_, a), (_, b)| {
        let request = |r: &NewConsentRecord| r.request_id.as_ref().map(|id| id.as_str().to_owned());
        a.subject_id
            .as_str()
            .cmp(b.subject_id.as_str())
            .then_with(|| request(a).cmp(&request(b)))
    });
    let (positions, sorted): (Vec<usize>, Vec<NewConsentRecord>) = numbered.into_iter().unzip();
    let results = store.append_consent_batch(&sorted).await;
    let mut answers: Vec<Option<Result<ConsentRecord>>> = positions.iter().map(|_| None).collect();
    for (position, result) in positions.into_iter().zip(results) {
        answers[position] = Some(result);
    }
    answers.into_iter().flatten().collect()
}
