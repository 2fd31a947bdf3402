//! One subscriber's way through the feed: the settled history from the
//! tables first, then the hub's ring.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use tokio::sync::broadcast::{self, error::RecvError};

use super::{PAGE, Shared};
use crate::{
    domain::FeedEvent,
    error::{Error, Result},
};

/// How often the ring may overtake a subscriber while it joins (it reads
/// the tables meanwhile, and then simply reads them again) before it is
/// told it cannot keep up.
const MAX_MISSED_JOINS: u32 = 3;

/// Every event after a cursor, in sequence order, each exactly once: see
/// [`Subscription::next`].
pub struct Subscription {
    shared: Arc<Shared>,
    /// Every event at or below this was yielded, or does not exist.
    cursor: i64,
    /// Read from the tables and not yet yielded, ascending.
    page: VecDeque<Arc<FeedEvent>>,
    /// Once `page` is yielded the cursor moves here: the read that filled
    /// it covered the whole range up to it.
    page_upto: i64,
    /// The ring, once joined.
    live: Option<Live>,
    missed_joins: u32,
    /// Ended: lagged, failed or stopped.
    done: bool,
    _gauge: SubscriberGauge,
}

struct Live {
    ring: broadcast::Receiver<Arc<FeedEvent>>,
    /// The head when it joined: the ring carries what follows it, the
    /// tables what comes before.
    joined_at: i64,
    /// Whether it has taken an event from the ring yet.
    received: bool,
}

impl Subscription {
    pub(super) fn new(shared: Arc<Shared>, after: i64) -> Self {
        Self {
            shared,
            cursor: after,
            page: VecDeque::new(),
            page_upto: after,
            live: None,
            missed_joins: 0,
            done: false,
            _gauge: SubscriberGauge::open(),
        }
    }

    /// Everything at or below this has been yielded or does not exist: the
    /// position to resume from.
    pub fn cursor(&self) -> i64 {
        self.cursor
    }

    /// The next event, or `None` once the server stops. An error ends the
    /// subscription: [`Error::FeedLagged`] when it fell a whole ring behind
    /// the reader (its cursor says where to resume), or a database error
    /// while it read the history.
    pub async fn next(&mut self) -> Option<Result<Arc<FeedEvent>>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(event) = self.page.pop_front() {
                self.cursor = event.sequence();
                return Some(Ok(event));
            }
            self.cursor = self.cursor.max(self.page_upto);
            let step = match &self.live {
                None => self.catch_up().await,
                Some(live) if self.cursor < live.joined_at => {
                    let upto = live.joined_at;
                    self.read(upto).await.err().unwrap_or(Step::Again)
                }
                Some(_) => self.receive().await,
            };
            match step {
                Step::Again => {}
                Step::Yield(item) => {
                    self.done = item.is_err();
                    return Some(item);
                }
                Step::End => {
                    self.done = true;
                    return None;
                }
            }
        }
    }

    /// Before joining the ring: a page of the history up to the head, and
    /// once a read reaches the head, the ring.
    async fn catch_up(&mut self) -> Step {
        let mut head = self.shared.head.subscribe();
        let head = tokio::select! {
            () = self.shared.stop.cancelled() => None,
            started = head.wait_for(Option::is_some) => started.ok().and_then(|h| *h),
        };
        let Some(head) = head else {
            return Step::End;
        };
        if self.cursor < head {
            match self.read(head).await {
                Err(step) => return step,
                Ok(false) => return Step::Again,
                Ok(true) => {}
            }
        }
        self.join();
        Step::Again
    }

    /// Reads the next page of settled events up to `upto` into `page`, in
    /// its turn. Returns whether the read reached `upto`, or the step that
    /// ends the subscription (shutdown, or a failed read).
    async fn read(&mut self, upto: i64) -> Result<bool, Step> {
        let shared = self.shared.clone();
        let after = self.cursor;
        let read = async {
            let _turn = shared.catching_up.acquire().await;
            shared.read_settled(after, upto, PAGE).await
        };
        let events = tokio::select! {
            () = shared.stop.cancelled() => return Err(Step::End),
            events = read => events.map_err(|e| Step::Yield(Err(e)))?,
        };
        let reached = (events.len() as i64) < PAGE;
        if reached {
            self.page_upto = upto;
        }
        self.page.extend(events.into_iter().map(Arc::new));
        Ok(reached)
    }

    fn join(&mut self) {
        // Receive first, then read the head: see `Shared::publish`.
        let ring = self.shared.ring.subscribe();
        let joined_at = self.shared.head.borrow().unwrap_or(self.cursor);
        self.live = Some(Live {
            ring,
            joined_at,
            received: false,
        });
    }

    /// The next event from the ring. A copy of one it already has is
    /// skipped; when the ring overtook it while it joined, it goes back to
    /// the tables; past that, a lag ends it.
    async fn receive(&mut self) -> Step {
        let live = self.live.as_mut().expect("joined");
        let received = tokio::select! {
            () = self.shared.stop.cancelled() => return Step::End,
            received = live.ring.recv() => received,
        };
        match received {
            Ok(event) if event.sequence() <= self.cursor => Step::Again,
            Ok(event) => {
                live.received = true;
                self.cursor = event.sequence();
                Step::Yield(Ok(event))
            }
            Err(RecvError::Lagged(_)) if !live.received && self.missed_joins < MAX_MISSED_JOINS => {
                self.missed_joins += 1;
                self.live = None;
                Step::Again
            }
            Err(RecvError::Lagged(_)) => Step::Yield(Err(Error::FeedLagged {
                cursor: self.cursor,
            })),
            Err(RecvError::Closed) => Step::End,
        }
    }

    /// The subscription as a `Stream`, for a gRPC response.
    pub fn into_stream(self) -> SubscriptionStream {
        SubscriptionStream {
            idle: Some(self),
            pending: None,
        }
    }
}

/// What one turn of `next` came to.
enum Step {
    /// Look again: a page was read, the ring joined, a copy skipped.
    Again,
    Yield(Result<Arc<FeedEvent>>),
    End,
}

type Next = Pin<Box<dyn Future<Output = (Option<Result<Arc<FeedEvent>>>, Subscription)> + Send>>;

/// A [`Subscription`] as a `Stream`: no task of its own, so an idle
/// subscriber costs its state and a place in the ring, nothing more.
pub struct SubscriptionStream {
    idle: Option<Subscription>,
    pending: Option<Next>,
}

impl tokio_stream::Stream for SubscriptionStream {
    type Item = Result<Arc<FeedEvent>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.pending.is_none() {
            let Some(mut subscription) = this.idle.take() else {
                return Poll::Ready(None);
            };
            this.pending = Some(Box::pin(async move {
                let item = subscription.next().await;
                (item, subscription)
            }));
        }
        let pending = this.pending.as_mut().expect("set above");
        let (item, subscription) = ready!(pending.as_mut().poll(cx));
        this.pending = None;
        if item.is_some() {
            this.idle = Some(subscription);
        }
        Poll::Ready(item)
    }
}

/// Counts open subscriptions in the subscribers gauge while alive.
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
