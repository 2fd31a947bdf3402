//! The change feed: every consent record and erasure, in sequence order,
//! exactly once, to any number of subscribers at the cost of one reader.
//!
//! One [`FeedHub`] per server runs the only loop that follows the tables
//! (`reader`, under the gap rules of [`Frontier`]) and publishes each
//! settled event once into a bounded ring that every live subscriber reads.
//! A [`Subscription`] that starts behind the reader first pages through the
//! settled history itself (a few at once, see [`MAX_CATCHING_UP`]), then
//! joins the ring; one that falls a whole ring behind is told so with its
//! cursor, and resumes from it, rather than being buffered without bound.
//!
//! WatchChanges streams are subscriptions; so can be anything in the
//! process that must follow the history in order (the in-memory decision
//! state of issue 12).

mod frontier;
mod reader;
mod standby;
mod subscription;

use std::{collections::HashSet, sync::Arc, time::Duration};

use tokio::sync::{Semaphore, broadcast, watch};
use tokio_util::sync::CancellationToken;

pub use frontier::Frontier;
pub use subscription::{Subscription, SubscriptionStream};

use crate::{
    domain::{ErasureEvent, FeedEvent, PurposeCode},
    store::Store,
};

/// Events the ring holds: how far a live subscriber may fall behind the
/// reader before it is told it lagged. Events are shared, not copied, so the
/// ring's memory does not grow with the number of subscribers.
pub const RING: usize = 8192;
/// Subscribers that may read the history from the database at once; the
/// rest wait their turn, so a crowd that reconnects cannot take the pool.
pub const MAX_CATCHING_UP: usize = 4;
/// Events one catch-up read fetches. A subscription holds at most one page
/// it has not yielded yet, so this bounds what a stalled subscriber that is
/// still catching up keeps in memory.
const PAGE: i64 = 128;

/// The server's one reader of the change feed, and its subscribers'
/// meeting point. Cheap to clone.
#[derive(Clone)]
pub struct FeedHub {
    shared: Arc<Shared>,
}

/// What the reader and every subscription share.
pub(crate) struct Shared {
    /// Where the feed is read: the database, or its hot standby.
    store: Store,
    /// When `store` is a standby: the primary it copies, which knows what a
    /// standby cannot (see `standby`).
    standby: Option<standby::Standby>,
    /// The live fan-out: the reader sends, each live subscriber receives.
    ring: broadcast::Sender<Arc<FeedEvent>>,
    /// Every sequence at or below this is settled and published; `None`
    /// until the reader has found where to start.
    head: watch::Sender<Option<i64>>,
    /// Turns at reading the history from the database.
    catching_up: Semaphore,
    /// Ends the reader and every subscription.
    stop: CancellationToken,
}

impl Shared {
    /// Publishes settled events, ascending. The head moves first: a
    /// subscriber that joins in between reads these from the tables and
    /// also receives them from the ring, and drops the second copy by its
    /// cursor; the other order could lose them.
    fn publish(&self, events: Vec<FeedEvent>) {
        let Some(last) = events.last().map(FeedEvent::sequence) else {
            return;
        };
        self.head.send_replace(Some(last));
        for event in events {
            // No live subscriber is no error: the event is in the tables.
            let _ = self.ring.send(Arc::new(event));
        }
    }
}

impl FeedHub {
    /// Starts the reader. It follows the feed in `store` until `stop`, which
    /// also ends every subscription. `wake` is bumped when changes commit;
    /// without a wake-up the reader reads again every `poll`. When `store`
    /// is a hot standby, `primary` is the database it copies.
    pub fn start(
        store: Store,
        primary: Option<Store>,
        wake: watch::Receiver<u64>,
        poll: Duration,
        stop: CancellationToken,
    ) -> Self {
        let shared = Arc::new(Shared {
            store,
            standby: primary.map(standby::Standby::new),
            ring: broadcast::Sender::new(RING),
            head: watch::Sender::new(None),
            catching_up: Semaphore::new(MAX_CATCHING_UP),
            stop: stop.clone(),
        });
        tokio::spawn(reader::run(shared.clone(), wake, poll, stop));
        Self { shared }
    }

    /// Every event with a sequence above `after`, in order; see
    /// [`Subscription`].
    pub fn subscribe(&self, after: i64) -> Subscription {
        Subscription::new(self.shared.clone(), after)
    }

    /// The reader's position: every event at or below it has been published.
    /// `None` until the reader has started.
    pub fn head(&self) -> Option<i64> {
        *self.shared.head.borrow()
    }
}

/// An event as a stream limited to `purposes` (empty: all) sees it: a
/// record of another purpose is not sent, and an erasure names only the
/// records of those purposes, or is not sent when it names none. The
/// stream's cursor still moves past what it is not sent.
pub fn as_seen_by(event: &FeedEvent, purposes: &HashSet<PurposeCode>) -> Option<FeedEvent> {
    if !event.is_public() {
        return None;
    }
    if purposes.is_empty() {
        return Some(event.clone());
    }
    match event {
        FeedEvent::Record(record) => purposes
            .contains(&record.content.purpose)
            .then(|| event.clone()),
        FeedEvent::Erasure(erasure) => {
            let records: Vec<_> = (erasure.records.iter())
                .filter(|(_, purpose)| purposes.contains(purpose))
                .cloned()
                .collect();
            (!records.is_empty()).then(|| {
                FeedEvent::Erasure(ErasureEvent {
                    records,
                    ..erasure.clone()
                })
            })
        }
        FeedEvent::Registered(_) | FeedEvent::FieldStored(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        Actor, Channel, Choice, ConsentRecord, Evidence, NewConsentRecord, NoticeVersion, SubjectId,
    };

    fn purpose(code: &str) -> PurposeCode {
        PurposeCode::parse(code.to_string()).unwrap()
    }

    fn record(sequence: i64, code: &str) -> FeedEvent {
        FeedEvent::Record(ConsentRecord {
            record_id: uuid::Uuid::new_v4(),
            sequence,
            recorded_at: chrono::Utc::now(),
            content: NewConsentRecord {
                subject_id: SubjectId::parse("C-1".to_string()).unwrap(),
                purpose: purpose(code),
                field: None,
                choice: Choice::Refuse,
                channel: Channel::Api,
                notice_version: NoticeVersion::parse("v1".to_string()).unwrap(),
                evidence: Evidence::parse(String::new()).unwrap(),
                actor: Actor::parse("test".to_string()).unwrap(),
                request_id: None,
                recipient: None,
            },
        })
    }

    fn erasure(records: &[(i64, &str)]) -> ErasureEvent {
        ErasureEvent {
            sequence: 9,
            pseudonym: SubjectId::parse("erased-0a".to_string()).unwrap(),
            erased_at: chrono::Utc::now(),
            registration_sequence: None,
            records: records.iter().map(|(s, p)| (*s, purpose(p))).collect(),
        }
    }

    fn only(codes: &[&str]) -> HashSet<PurposeCode> {
        codes.iter().map(|c| purpose(c)).collect()
    }

    #[test]
    fn an_unfiltered_stream_sees_every_event_whole() {
        let all = HashSet::new();
        let event = record(1, "promotional_mail");
        assert_eq!(as_seen_by(&event, &all), Some(event));
        let event = FeedEvent::Erasure(erasure(&[(1, "a_purpose"), (2, "b_purpose")]));
        assert_eq!(as_seen_by(&event, &all), Some(event));
    }

    #[test]
    fn a_filtered_stream_sees_only_records_of_its_purposes() {
        let mail = only(&["promotional_mail"]);
        let event = record(1, "promotional_mail");
        assert_eq!(as_seen_by(&event, &mail), Some(event));
        assert_eq!(as_seen_by(&record(2, "partner_offers"), &mail), None);
    }

    #[test]
    fn a_filtered_stream_sees_an_erasure_with_only_its_purposes_records() {
        let mail = only(&["promotional_mail"]);
        let event = erasure(&[
            (1, "partner_offers"),
            (2, "promotional_mail"),
            (3, "partner_offers"),
        ]);
        let Some(FeedEvent::Erasure(seen)) = as_seen_by(&FeedEvent::Erasure(event.clone()), &mail)
        else {
            panic!("the erasure is sent");
        };
        assert_eq!(seen.records, [(2, purpose("promotional_mail"))]);
        assert_eq!(
            (seen.sequence, &seen.pseudonym),
            (event.sequence, &event.pseudonym)
        );
        let elsewhere = erasure(&[(1, "partner_offers")]);
        assert_eq!(as_seen_by(&FeedEvent::Erasure(elsewhere), &mail), None);
    }
}
