//! Group commit: callers queue their writes, and a writer takes whatever
//! queued while its previous batch was being written, up to a bound, and
//! writes it as one batch. There is no wait to fill a batch: under load
//! the batches grow by themselves (each one collects the arrivals of the
//! one before), and a lone caller is written at once.

use std::{future::Future, sync::Arc};

use tokio::{
    sync::{Semaphore, mpsc, oneshot},
    task::JoinHandle,
};

use crate::error::{Error, Result};

/// How the queue and its writers are sized.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// The most items one batch carries.
    pub max_batch: usize,
    /// Batches written at the same time. Two let one batch build (and its
    /// statements run on one core) while the other commits, and keep
    /// writing when one batch waits on a lock.
    pub writers: usize,
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
    let max_batch = limits.max_batch.max(1);
    loop {
        let Ok(permit) = free.clone().acquire_owned().await else {
            break;
        };
        // Waits for the first item only; the rest is what is already there.
        let Some(first) = receiver.recv().await else {
            break;
        };
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
        tokio::spawn(async move {
            let results = written.await;
            for (reply, result) in replies.into_iter().zip(results) {
                // A caller that gave up no longer listens; its write stands.
                let _ = reply.send(result);
            }
            drop(permit);
        });
    }
    // The queue is closed: wait for the batches still being written.
    let _ = free.acquire_many(writers as u32).await;
}
