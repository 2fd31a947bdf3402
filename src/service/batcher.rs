//! Group commit: callers queue their writes, and a writer takes whatever
//! queued while its previous batch was being written, up to a bound, and
//! writes it as one batch. There is no wait to fill a batch: under load
//! the batches grow by themselves (each one collects the arrivals of the
//! one before), and a lone caller is written at once.
//!
//! A second batch starts beside one in flight only when that one has run
//! for [`BatchLimits::overlap_after`]: until then arrivals gather for the
//! next batch, which is larger and so cheaper a record, and a batch stuck
//! on a lock still does not stop every write.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::{
    sync::{Notify, Semaphore, mpsc, oneshot},
    task::JoinHandle,
    time::Instant,
};

use crate::error::{Error, Result};

/// How the queue and its writers are sized.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// The most items one batch carries.
    pub max_batch: usize,
    /// Batches written at the same time. Two keep writing when one batch
    /// waits on a lock.
    pub writers: usize,
    /// How long a batch in flight runs alone before the next one may start
    /// beside it. Meanwhile arrivals queue for the next batch.
    pub overlap_after: Duration,
    /// Items waiting beyond which callers wait to queue: backpressure
    /// rather than a queue without bound.
    pub queue: usize,
}

struct Pending<T, R> {
    item: T,
    reply: oneshot::Sender<Result<R>>,
}

/// The callers' end. Cheap to clone; the writer ends once every clone is
/// dropped and the queue is empty.
pub struct Batcher<T, R> {
    queue: mpsc::Sender<Pending<T, R>>,
    /// Exported as a gauge: the items queued and not yet taken.
    gauge: &'static str,
}

impl<T, R> Clone for Batcher<T, R> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
            gauge: self.gauge,
        }
    }
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// Starts the writer: `write` gets each batch and answers each item, in
    /// order. It must answer only once its batch is durable. The handle
    /// ends when the last [`Batcher`] is dropped and every batch is done.
    pub fn start<W, F>(limits: BatchLimits, gauge: &'static str, write: W) -> (Self, JoinHandle<()>)
    where
        W: Fn(Vec<T>) -> F + Send + Sync + 'static,
        F: Future<Output = Vec<Result<R>>> + Send + 'static,
    {
        let (queue, receiver) = mpsc::channel(limits.queue.max(1));
        let writer = tokio::spawn(collect(receiver, limits, gauge, write));
        (Self { queue, gauge }, writer)
    }

    /// Queues `item` and waits for its batch to be written.
    pub async fn submit(&self, item: T) -> Result<R> {
        let (reply, answer) = oneshot::channel();
        // Counted before it is sent, so the writer's decrement never runs
        // ahead of it.
        metrics::gauge!(self.gauge).increment(1.0);
        if self.queue.send(Pending { item, reply }).await.is_err() {
            metrics::gauge!(self.gauge).decrement(1.0);
            return Err(Error::ShuttingDown);
        }
        // The writer answers every item it took; a dropped reply means it
        // panicked.
        answer
            .await
            .map_err(|_| Error::Internal(anyhow::anyhow!("the batch writer stopped")))?
    }
}

/// Takes batches off the queue as writers come free.
async fn collect<T, R, W, F>(
    mut receiver: mpsc::Receiver<Pending<T, R>>,
    limits: BatchLimits,
    gauge: &'static str,
    write: W,
) where
    T: Send + 'static,
    R: Send + 'static,
    W: Fn(Vec<T>) -> F + Send + Sync + 'static,
    F: Future<Output = Vec<Result<R>>> + Send + 'static,
{
    let writers = limits.writers.max(1);
    let free = Arc::new(Semaphore::new(writers));
    // Told when a batch is done, so that the next one stops waiting.
    let done = Arc::new(Notify::new());
    let max_batch = limits.max_batch.max(1);
    let mut last_started = Instant::now();
    loop {
        let Ok(permit) = free.clone().acquire_owned().await else {
            break;
        };
        // Waits for the first item only; the rest is what is already there.
        let Some(first) = receiver.recv().await else {
            break;
        };
        // Another batch in flight: let it finish first, unless it has run
        // past `overlap_after` (a lock wait, a slow commit).
        let deadline = last_started + limits.overlap_after;
        while free.available_permits() + 1 < writers {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                () = done.notified() => {}
            }
        }
        last_started = Instant::now();
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match receiver.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        metrics::gauge!(gauge).decrement(batch.len() as f64);
        let (items, replies): (Vec<T>, Vec<_>) =
            batch.into_iter().map(|p| (p.item, p.reply)).unzip();
        let written = write(items);
        let done = done.clone();
        tokio::spawn(async move {
            let results = written.await;
            for (reply, result) in replies.into_iter().zip(results) {
                // A caller that gave up no longer listens; its write stands.
                let _ = reply.send(result);
            }
            drop(permit);
            done.notify_one();
        });
    }
    // The queue is closed: wait for the batches still being written.
    let _ = free.acquire_many(writers as u32).await;
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::sync::watch;

    use super::*;

    /// Every batch's size, in the order the batches were taken.
    type Sizes = Arc<Mutex<Vec<usize>>>;

    /// A batcher of two writers whose first batch is held until `release`
    /// says so, and which notes every batch's size.
    fn held_first(overlap_after: Duration) -> (Batcher<u32, u32>, watch::Sender<bool>, Sizes) {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let (release, released) = watch::channel(false);
        let limits = BatchLimits {
            max_batch: 128,
            writers: 2,
            overlap_after,
            queue: 64,
        };
        let noted = sizes.clone();
        let (batcher, _) = Batcher::start(limits, "consentd_test_queue", move |items: Vec<u32>| {
            let first = {
                let mut sizes = noted.lock().unwrap();
                sizes.push(items.len());
                sizes.len() == 1
            };
            let mut released = released.clone();
            async move {
                if first {
                    let _ = released.wait_for(|r| *r).await;
                }
                items.into_iter().map(Ok).collect()
            }
        });
        (batcher, release, sizes)
    }

    /// Lets every task that can run, run (the test runtime has one thread).
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[tokio::test]
    async fn arrivals_while_a_batch_is_in_flight_wait_for_it_and_go_in_one_batch() {
        let (batcher, release, sizes) = held_first(Duration::from_secs(3600));
        let submit = |n| {
            let batcher = batcher.clone();
            tokio::spawn(async move { batcher.submit(n).await })
        };
        let first = submit(0);
        settle().await;
        // The writer takes this one at once, and waits with it for the
        // first batch instead of writing it beside that one.
        let mut later = vec![submit(1)];
        settle().await;
        later.extend((2..=5).map(submit));
        settle().await;
        assert_eq!(
            *sizes.lock().unwrap(),
            [1],
            "nothing overlaps the held batch"
        );
        release.send(true).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), 0);
        for (n, call) in (1..).zip(later) {
            assert_eq!(call.await.unwrap().unwrap(), n);
        }
        assert_eq!(*sizes.lock().unwrap(), [1, 5]);
    }

    #[tokio::test]
    async fn a_batch_held_past_the_overlap_does_not_stop_the_next() {
        let (batcher, release, sizes) = held_first(Duration::from_millis(20));
        let first = {
            let batcher = batcher.clone();
            tokio::spawn(async move { batcher.submit(0).await })
        };
        settle().await;
        // Answered while the first batch is still held: a guard against a
        // hang, not a measure of speed.
        let next = tokio::time::timeout(Duration::from_secs(30), batcher.submit(1)).await;
        assert_eq!(next.expect("written beside the held batch").unwrap(), 1);
        assert!(!first.is_finished());
        assert_eq!(*sizes.lock().unwrap(), [1, 1]);
        release.send(true).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), 0);
    }
}
