//! Recording choices and answering checks.

use std::{collections::HashSet, sync::Arc, time::Duration};

use tokio::sync::Semaphore;
use tokio_stream::{Stream, StreamExt as _};

use crate::{
    domain::{
        Actor, ConsentRecord, Consistency, ConsistencyToken, FeedEvent, FieldName, ListLimit,
        NewConsentRecord, PurposeCode, StoredChoice, Subject, SubjectId, SubjectRegistration,
        SubjectState, Violations,
    },
    error::{Error, Result},
    metrics::Handles,
    policy::{Decision, Outcome, Policy, Reason, decide_with_data},
    service::{
        erasure::ErasureRefs,
        feed::{self, FeedHub},
        record_writer::RecordWriter,
    },
    state::DecisionState,
    store::{DecisionInputs, HistoryPage, Registered, Store},
};

/// How long a check that carries a consistency token waits for this
/// server's memory to apply it before reading through to the database.
pub const TOKEN_WAIT: Duration = crate::state::WAIT;

/// The most items one BatchCheck may carry.
pub const MAX_BATCH: usize = 1000;
/// BatchCheck's `items`.
pub const BATCH_ITEMS: ListLimit = ListLimit {
    field: "items",
    noun: "items",
    min: 1,
    max: MAX_BATCH,
};
/// WatchChanges' `purposes`: more than a policy plausibly declares; an
/// empty list follows them all anyway.
pub const WATCH_PURPOSES: ListLimit = ListLimit {
    field: "purposes",
    noun: "purposes",
    min: 0,
    max: 100,
};
/// The largest history page.
pub const MAX_PAGE_SIZE: usize = 1000;

/// "May `field` of `subject_id` be used for `purpose`?"
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckQuery {
    pub subject_id: SubjectId,
    pub purpose: PurposeCode,
    pub field: FieldName,
}

/// Everything GetConsentState shows about one subject.
#[derive(Debug, Clone)]
pub struct ConsentOverview {
    pub subject: Subject,
    pub choices: Vec<StoredChoice>,
    /// The decision for every field of every purpose, by purpose then field.
    pub decisions: Vec<(PurposeCode, FieldName, Decision)>,
}

#[derive(Clone)]
pub struct ConsentService {
    store: Store,
    policy: Arc<Policy>,
    /// The server's one reader of the change feed.
    feed: FeedHub,
    /// One permit per open change stream (`--max-watch-streams`).
    watch_streams: Arc<Semaphore>,
    max_watch_streams: usize,
    /// Keyed hashes for the erasure suppression list.
    refs: ErasureRefs,
    /// What checks are decided from, when it is loaded.
    state: DecisionState,
    /// RecordConsent's group commit.
    records: RecordWriter,
}

impl ConsentService {
    pub fn new(
        store: Store,
        policy: Arc<Policy>,
        feed: FeedHub,
        max_watch_streams: usize,
        refs: ErasureRefs,
        state: DecisionState,
        records: RecordWriter,
    ) -> Self {
        Self {
            store,
            policy,
            feed,
            watch_streams: Arc::new(Semaphore::new(max_watch_streams)),
            max_watch_streams,
            refs,
            state,
            records,
        }
    }

    /// Follows the feed after `after`, as a caller limited to `purposes`
    /// (empty: all) sees it; see [`feed::as_seen_by`]. Refused with
    /// RESOURCE_EXHAUSTED when `--max-watch-streams` streams are open.
    pub fn watch_changes(
        &self,
        after: i64,
        purposes: Vec<PurposeCode>,
    ) -> Result<impl Stream<Item = Result<FeedEvent>> + Send + 'static> {
        let mut violations = Violations::new();
        self.policy
            .check_watch(&mut violations, after, purposes.iter().enumerate());
        if !violations.is_empty() {
            return Err(violations.into());
        }
        let permit = (self.watch_streams.clone().try_acquire_owned()).map_err(|_| {
            Error::TooManyStreams {
                limit: self.max_watch_streams,
            }
        })?;
        let purposes: HashSet<PurposeCode> = purposes.into_iter().collect();
        let events = self.feed.subscribe(after).into_stream();
        Ok(events.filter_map(move |item| {
            // The stream holds its permit until it ends.
            let _open = &permit;
            match item {
                Ok(event) => feed::as_seen_by(&event, &purposes).map(Ok),
                Err(e) => Some(Err(e)),
            }
        }))
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub async fn register_subject(
        &self,
        reg: &SubjectRegistration,
        actor: &Actor,
    ) -> Result<Registered> {
        let registered = self
            .store
            .register_subject(reg, actor, &self.refs.hash(&reg.subject_id))
            .await?;
        self.state.settle(registered.token).await;
        Ok(registered)
    }

    /// Appends a choice after checking that the policy knows its purpose and
    /// that the field, if any, is one the purpose uses.
    pub async fn record_consent(&self, new: &NewConsentRecord) -> Result<ConsentRecord> {
        let mut violations = Violations::new();
        self.policy.check_record_parts(
            &mut violations,
            Some(&new.purpose),
            new.field.as_ref(),
            new.recipient.as_ref(),
        );
        if !violations.is_empty() {
            return Err(violations.into());
        }
        // Written with the records of concurrent callers, in one
        // transaction; answered once that has committed and this server's
        // memory has applied it.
        let record = self.records.submit(new.clone()).await?;
        self.state
            .settle(ConsistencyToken::at(record.sequence))
            .await;
        Ok(record)
    }

    /// One decision, and the position it was decided at.
    pub async fn check(
        &self,
        query: &CheckQuery,
        consistency: Consistency,
    ) -> Result<(Decision, ConsistencyToken)> {
        let (mut decisions, at) = self
            .decide_all(std::slice::from_ref(query), consistency, |_, name| {
                name.to_string()
            })
            .await?;
        Ok((decisions.remove(0), at))
    }

    /// Decides up to [`MAX_BATCH`] queries from one read of the subjects'
    /// state. A query naming an undeclared purpose or field fails the whole
    /// batch, with violations named `items[i].purpose` / `items[i].field`.
    pub async fn batch_check(
        &self,
        queries: &[CheckQuery],
        consistency: Consistency,
    ) -> Result<(Vec<Decision>, ConsistencyToken)> {
        if queries.len() > MAX_BATCH {
            return Err(Error::invalid(
                "items",
                format!(
                    "at most {MAX_BATCH} items per batch (got {})",
                    queries.len()
                ),
            ));
        }
        self.decide_all(queries, consistency, |i, name| format!("items[{i}].{name}"))
            .await
    }

    /// `violation_name(i, "purpose")` names the request field of query `i`.
    async fn decide_all(
        &self,
        queries: &[CheckQuery],
        consistency: Consistency,
        violation_name: impl Fn(usize, &str) -> String,
    ) -> Result<(Vec<Decision>, ConsistencyToken)> {
        // Caller bugs first, before any IO.
        let mut violations = Violations::new();
        for (i, q) in queries.iter().enumerate() {
            self.policy.check_query_named(
                &mut violations,
                |name| violation_name(i, name),
                Some(&q.purpose),
                Some(&q.field),
            );
        }
        if !violations.is_empty() {
            return Err(violations.into());
        }
        let ids: Vec<&SubjectId> = queries.iter().map(|q| &q.subject_id).collect();
        self.decide_each(&ids, consistency, |i| {
            (&queries[i].purpose, &queries[i].field)
        })
        .await
    }

    /// The one source of every Check, BatchCheck and BulkCheck decision:
    /// decides `asked(i)` (a purpose and field) for `ids[i]`, and says at
    /// which feed position. Assumes the queries passed the policy. Taking
    /// the purpose and field by index lets a bulk request of one purpose
    /// and field decide thousands of ids without a copy per id.
    ///
    /// From memory when it is loaded and as fresh as `consistency` asks
    /// (waiting up to [`TOKEN_WAIT`] for a token); otherwise from the
    /// primary database, through the same pure decision.
    pub(super) async fn decide_each<'q>(
        &self,
        ids: &[&SubjectId],
        consistency: Consistency,
        asked: impl Fn(usize) -> (&'q PurposeCode, &'q FieldName),
    ) -> Result<(Vec<Decision>, ConsistencyToken)> {
        let from_memory = match consistency {
            Consistency::MinimizeLatency => true,
            Consistency::AtLeastAsFresh(token) => {
                self.state.wait_applied(token.sequence(), TOKEN_WAIT).await
            }
            Consistency::FullyConsistent => false,
        };
        let now = chrono::Utc::now();
        let memory = from_memory
            .then(|| self.state.decide_each(&self.policy, ids, &asked, now))
            .flatten();
        let (decisions, at) = match memory {
            Some((decisions, at)) => (decisions, ConsistencyToken::at(at)),
            None => {
                // Everything the feed has published committed before this
                // read began, so the read is at least that fresh.
                let floor =
                    ConsistencyToken::at(self.state.applied().max(self.feed.head().unwrap_or(0)));
                let at = match consistency {
                    Consistency::AtLeastAsFresh(token) => floor.max(token),
                    _ => floor,
                };
                (self.decide_from_database(ids, &asked, now).await?, at)
            }
        };
        let mut tally = DecisionTally::default();
        for (i, decision) in decisions.iter().enumerate() {
            tally.add(asked(i).0, decision);
        }
        tally.record();
        Ok((decisions, at))
    }

    /// [`Self::decide_each`] read through to the database, in one round
    /// trip: the suppression-list hashes go along for every id, since which
    /// ids are unregistered is known only from the same read.
    async fn decide_from_database<'q>(
        &self,
        ids: &[&SubjectId],
        asked: impl Fn(usize) -> (&'q PurposeCode, &'q FieldName),
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<Decision>> {
        let hashes: Vec<Vec<u8>> = ids.iter().map(|id| self.refs.hash(id)).collect();
        let DecisionInputs {
            mut states,
            data,
            erased,
        } = self.store.decision_inputs(ids, &hashes).await?;
        // An unregistered id on the suppression list is erased, so `decide`
        // answers REASON_SUBJECT_ERASED for it.
        for (id, hash) in ids.iter().zip(&hashes) {
            if !states.contains_key(*id) && erased.contains(hash) {
                let state = SubjectState {
                    erased: true,
                    ..Default::default()
                };
                states.insert((*id).clone(), state);
            }
        }
        Ok(ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let (purpose, field) = asked(i);
                // R3: the stored fields' ages, never their values.
                let stored = data
                    .get(*id)
                    .and_then(|fields| fields.iter().find(|d| &d.field == field));
                decide_with_data(&self.policy, states.get(*id), purpose, field, stored, now)
            })
            .collect())
    }

    pub async fn consent_state(&self, subject_id: &SubjectId) -> Result<ConsentOverview> {
        let subject = self
            .store
            .subject(subject_id)
            .await?
            .ok_or_else(|| Error::subject_not_found(subject_id))?;
        let mut states = self.store.current_state_for(&[subject_id]).await?;
        // Registered a moment ago but the state read raced a deletion: there
        // is no deletion of subjects, so an empty state is the honest answer.
        let state = states.remove(subject_id).unwrap_or_default();
        // The same inputs as a Check, so each decision is what a Check says.
        let data = self
            .store
            .field_data_for(&[subject_id])
            .await?
            .remove(subject_id)
            .unwrap_or_default();
        let now = chrono::Utc::now();
        let mut decisions = Vec::new();
        for purpose in self.policy.purposes() {
            for field in self.policy.fields() {
                if purpose.permits(&field.name) {
                    let stored = data.iter().find(|d| d.field == field.name);
                    let decision = decide_with_data(
                        &self.policy,
                        Some(&state),
                        &purpose.code,
                        &field.name,
                        stored,
                        now,
                    );
                    decisions.push((purpose.code.clone(), field.name.clone(), decision));
                }
            }
        }
        Ok(ConsentOverview {
            subject,
            choices: state.choices,
            decisions,
        })
    }

    /// One page of history after sequence `after` (0 for the first page).
    pub async fn history(
        &self,
        subject_id: &SubjectId,
        after: i64,
        page_size: usize,
    ) -> Result<HistoryPage> {
        if self.store.subject(subject_id).await?.is_none() {
            return Err(Error::subject_not_found(subject_id));
        }
        self.store
            .consent_history(subject_id, after, page_size.clamp(1, MAX_PAGE_SIZE))
            .await
    }
}

/// Counts decisions by their metric labels, so that a request of thousands
/// of ids touches the metrics registry once per distinct label set rather
/// than once per id.
#[derive(Default)]
struct DecisionTally<'q> {
    counts: Vec<((&'q PurposeCode, Outcome, Reason), u64)>,
}

impl<'q> DecisionTally<'q> {
    fn add(&mut self, purpose: &'q PurposeCode, decision: &Decision) {
        let (outcome, reason) = (decision.outcome, decision.reason);
        // A handful of label sets per request: a scan beats hashing here.
        // A bulk request passes the same purpose for every id, so the
        // pointer comparison settles it without comparing the text.
        let same = |(p, o, r): &(&PurposeCode, Outcome, Reason)| {
            *o == outcome && *r == reason && (std::ptr::eq(*p, purpose) || *p == purpose)
        };
        match self.counts.iter_mut().find(|(k, _)| same(k)) {
            Some((_, n)) => *n += 1,
            None => self.counts.push(((purpose, outcome, reason), 1)),
        }
    }

    fn record(self) {
        // Resolved once per label set: formatting the purpose label and
        // finding its counter in the registry cost more than the decision.
        static COUNTERS: Handles<(PurposeCode, Outcome, Reason), metrics::Counter> = Handles::new();
        for ((purpose, outcome, reason), n) in self.counts {
            COUNTERS
                .get(
                    |(p, o, r)| *o == outcome && *r == reason && p == purpose,
                    || {
                        let counter = metrics::counter!(
                            crate::metrics::DECISIONS,
                            "purpose" => purpose.to_string(),
                            "decision" => outcome.as_str(),
                            "reason" => reason.as_str(),
                        );
                        ((purpose.clone(), outcome, reason), counter)
                    },
                )
                .increment(n);
        }
    }
}
