//! The decision state in memory (issue 12): what Check, BatchCheck and
//! BulkCheck decide from, without a database round trip.
//!
//! Each server loads the current state through `store/` at start, in pages
//! of settled history, then follows the change feed (the same [`FeedHub`]
//! and gap rules as WatchChanges) and applies each event in sequence order.
//! It holds only what it can rebuild: registered subjects, their latest
//! choice per purpose and field, the ages and collection purposes of their
//! stored fields, and the suppression-list hashes of erased ids. Until the
//! load is done the server is not ready, and decisions read through to the
//! database.
//!
//! `applied` is the feed position the memory reflects: every event at or
//! below it is applied. A consistency token is that position, so a read
//! that carries one waits until the memory has reached it.

mod load;
mod table;

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long a write, or a check that carries a consistency token, waits
/// for this server's memory to apply a position. Replication and the feed
/// normally take milliseconds; a longer wait would only hold the caller
/// when something is wrong.
pub const WAIT: Duration = Duration::from_millis(250);

use crate::{
    domain::{ConsistencyToken, FeedEvent, FieldName, PurposeCode, SubjectId},
    policy::{Decision, Policy, Standing, decide_known},
    service::{erasure::ErasureRefs, feed::FeedHub},
    store::Store,
};

use table::{Found, Tables};

/// The server's decision state. Cheap to clone.
#[derive(Clone)]
pub struct DecisionState {
    inner: Arc<Inner>,
}

struct Inner {
    tables: RwLock<Tables>,
    /// Every feed event at or below this is applied; meaningful once
    /// `ready`. Written under the tables' write lock, so a reader holding
    /// the read lock sees the position its tables are at.
    applied: watch::Sender<i64>,
    ready: watch::Sender<bool>,
    refs: ErasureRefs,
}

impl Inner {
    /// Applies events, ascending, then moves `applied` past them.
    fn apply(&self, events: &[Arc<FeedEvent>]) {
        let Some(last) = events.last().map(|e| e.sequence()) else {
            return;
        };
        let mut tables = self.tables.write().unwrap_or_else(|p| p.into_inner());
        for event in events {
            apply(&mut tables, &self.refs, event);
        }
        self.applied.send_replace(last);
        metrics::gauge!(crate::metrics::STATE_SUBJECTS).set(tables.subjects() as f64);
    }
}

/// One event's change to the tables.
fn apply(tables: &mut Tables, refs: &ErasureRefs, event: &FeedEvent) {
    match event {
        FeedEvent::Registered(r) => {
            tables.register(r.sequence, r.subject_id.as_str());
        }
        FeedEvent::Record(record) => {
            let c = &record.content;
            // A permission naming a recipient decides only disclosures to
            // it, never a Check (R5).
            if c.recipient.is_some() {
                return;
            }
            if let Some(slot) = tables.find(c.subject_id.as_str()) {
                let field = c.field.as_ref().map(FieldName::as_str);
                tables.choose(slot, c.purpose.as_str(), field, c.choice, record.record_id);
            }
        }
        FeedEvent::FieldStored(f) => {
            if let Some(slot) = tables.find(f.subject_id.as_str()) {
                let purposes: Vec<&str> = f.data.collected_for.iter().map(|p| p.as_str()).collect();
                tables.store_field(slot, f.data.field.as_str(), &purposes, f.data.checked_at());
            }
        }
        FeedEvent::Erasure(e) => {
            if let Some(registration) = e.registration_sequence {
                tables.erase(registration, |id| match SubjectId::parse(id) {
                    Ok(id) => refs.hash(&id),
                    Err(_) => Vec::new(),
                });
            }
        }
    }
}

impl DecisionState {
    /// Starts loading from `store` (the read database) once the feed has a
    /// position, then follows the feed until `stop`.
    pub fn start(store: Store, feed: FeedHub, refs: ErasureRefs, stop: CancellationToken) -> Self {
        let inner = Arc::new(Inner {
            tables: RwLock::new(Tables::default()),
            applied: watch::Sender::new(0),
            ready: watch::Sender::new(false),
            refs,
        });
        tokio::spawn(load::run(inner.clone(), store, feed, stop));
        Self { inner }
    }

    /// Whether the first load is done: decisions come from memory.
    pub fn is_ready(&self) -> bool {
        *self.inner.ready.borrow()
    }

    /// Resolves once the first load is done (or never, if it never is).
    pub async fn loaded(&self) {
        let mut ready = self.inner.ready.subscribe();
        let _ = ready.wait_for(|r| *r).await;
    }

    /// The feed position the memory reflects.
    pub fn applied(&self) -> i64 {
        *self.inner.applied.borrow()
    }

    /// Waits, at most `within`, until the memory is loaded and has applied
    /// `sequence`. Returns whether it has.
    pub async fn wait_applied(&self, sequence: i64, within: Duration) -> bool {
        let mut ready = self.inner.ready.subscribe();
        let mut applied = self.inner.applied.subscribe();
        tokio::time::timeout(within, async {
            ready.wait_for(|r| *r).await.is_ok()
                && applied.wait_for(|a| *a >= sequence).await.is_ok()
        })
        .await
        .unwrap_or(false)
    }

    /// Decides `asked(i)` for `ids[i]` from memory, and the position it
    /// decided at; `None` until loaded. The same inputs as the database
    /// path, through the same pure `decide_known`.
    pub fn decide_each<'q>(
        &self,
        policy: &Policy,
        ids: &[&SubjectId],
        asked: impl Fn(usize) -> (&'q PurposeCode, &'q FieldName),
        now: DateTime<Utc>,
    ) -> Option<(Vec<Decision>, i64)> {
        let tables = self.inner.tables.read().unwrap_or_else(|p| p.into_inner());
        if !self.is_ready() {
            return None;
        }
        let at = self.applied();
        // A bulk request asks one purpose and field of every id: look their
        // indexes up once per change, not once per id.
        let mut codes: Option<(&PurposeCode, &FieldName, Option<u16>, Option<u16>)> = None;
        let decisions = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let (purpose, field) = asked(i);
                let (p, f) = match codes {
                    Some((cp, cf, p, f))
                        if std::ptr::eq(cp, purpose) && std::ptr::eq(cf, field) =>
                    {
                        (p, f)
                    }
                    _ => {
                        let p = tables.purposes.get(purpose.as_str());
                        let f = tables.fields.get(field.as_str());
                        codes = Some((purpose, field, p, f));
                        (p, f)
                    }
                };
                let (standing, data) = match tables.lookup(id.as_str(), || self.inner.refs.hash(id))
                {
                    Found::Unknown => (Standing::Unknown, None),
                    Found::Erased => (Standing::Erased, None),
                    Found::Registered(slot) => (
                        Standing::Registered(p.and_then(|p| tables.latest(slot, p, f))),
                        tables.facts(slot, f, p),
                    ),
                };
                decide_known(policy, standing, purpose, field, data, now)
            })
            .collect();
        Some((decisions, at))
    }

    /// After a write through this server: waits (at most [`WAIT`]) until
    /// the memory has applied it, so a check on this same server sees its
    /// own writes without a token. Returns at once while still loading:
    /// decisions then read the database anyway.
    pub async fn settle(&self, written: ConsistencyToken) {
        let sequence = written.sequence();
        if self.is_ready() && !self.wait_applied(sequence, WAIT).await {
            tracing::debug!(sequence, "a write was not applied in memory in time");
        }
    }
}

/// What a write path holds to settle its writes on the server's state:
/// nothing (a path built outside a server, as in tests) or the state.
#[derive(Clone, Default)]
pub struct Settle(Option<DecisionState>);

impl Settle {
    pub fn on(state: DecisionState) -> Self {
        Self(Some(state))
    }

    /// See [`DecisionState::settle`].
    pub async fn after(&self, written: ConsistencyToken) {
        if let Some(state) = &self.0 {
            state.settle(written).await;
        }
    }
}
