//! Recording choices and answering checks.

use std::{sync::Arc, time::Duration};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    domain::{
        Actor, ConsentRecord, FieldName, NewConsentRecord, PurposeCode, RecipientId, StoredChoice,
        Subject, SubjectId, SubjectRegistration, SubjectState, Violations,
    },
    error::{Error, Result},
    policy::{Decision, Outcome, Policy, Reason, decide_with_data},
    service::{erasure::ErasureRefs, feed},
    store::{HistoryPage, Store},
};

/// The most items one BatchCheck may carry.
pub const MAX_BATCH: usize = 1000;
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
    /// Bumped when records commit (LISTEN/NOTIFY); wakes change streams.
    wake: watch::Receiver<u64>,
    /// Cancelled at shutdown, so change streams end and the server can stop.
    stop: CancellationToken,
    /// Keyed hashes for the erasure suppression list.
    refs: ErasureRefs,
    /// How often change streams re-read without a wake-up.
    feed_poll: Duration,
}

impl ConsentService {
    pub fn new(
        store: Store,
        policy: Arc<Policy>,
        wake: watch::Receiver<u64>,
        stop: CancellationToken,
        refs: ErasureRefs,
    ) -> Self {
        Self {
            store,
            policy,
            wake,
            stop,
            refs,
            feed_poll: Duration::from_secs(1),
        }
    }

    /// Sets how often change streams re-read without a wake-up.
    pub fn with_feed_poll_interval(mut self, interval: Duration) -> Self {
        self.feed_poll = interval;
        self
    }

    /// Follows the history after `after`; see [`feed::follow`].
    pub fn watch_changes(
        &self,
        after: i64,
        purposes: Vec<PurposeCode>,
    ) -> Result<mpsc::Receiver<Result<ConsentRecord>>> {
        let mut violations = Violations::new();
        self.check_watch(&mut violations, after, purposes.iter().enumerate());
        if !violations.is_empty() {
            return Err(violations.into());
        }
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(feed::follow(
            self.store.clone(),
            self.wake.clone(),
            self.feed_poll,
            after,
            purposes.into_iter().collect(),
            tx,
            self.stop.clone(),
        ));
        Ok(rx)
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub async fn register_subject(
        &self,
        reg: &SubjectRegistration,
        actor: &Actor,
    ) -> Result<(Subject, bool)> {
        self.store
            .register_subject(reg, actor, &self.refs.hash(&reg.subject_id))
            .await
    }

    /// Appends a choice after checking that the policy knows its purpose and
    /// that the field, if any, is one the purpose uses.
    pub async fn record_consent(&self, new: &NewConsentRecord) -> Result<ConsentRecord> {
        let mut violations = Violations::new();
        self.check_record(
            &mut violations,
            Some(&new.purpose),
            new.field.as_ref(),
            new.recipient.as_ref(),
        );
        if !violations.is_empty() {
            return Err(violations.into());
        }
        self.store.append_consent_record(new).await
    }

    pub async fn check(&self, query: &CheckQuery) -> Result<Decision> {
        let mut decisions = self
            .decide_all(std::slice::from_ref(query), |_, name| name.to_string())
            .await?;
        Ok(decisions.remove(0))
    }

    /// Decides up to [`MAX_BATCH`] queries from one read of the subjects'
    /// state. A query naming an undeclared purpose or field fails the whole
    /// batch, with violations named `items[i].purpose` / `items[i].field`.
    pub async fn batch_check(&self, queries: &[CheckQuery]) -> Result<Vec<Decision>> {
        if queries.len() > MAX_BATCH {
            return Err(Error::invalid(
                "items",
                format!(
                    "at most {MAX_BATCH} items per batch (got {})",
                    queries.len()
                ),
            ));
        }
        self.decide_all(queries, |i, name| format!("items[{i}].{name}"))
            .await
    }

    /// `violation_name(i, "purpose")` names the request field of query `i`.
    async fn decide_all(
        &self,
        queries: &[CheckQuery],
        violation_name: impl Fn(usize, &str) -> String,
    ) -> Result<Vec<Decision>> {
        // Caller bugs first, before any IO.
        let mut violations = Violations::new();
        for (i, q) in queries.iter().enumerate() {
            self.check_query(
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
        self.decide_each(&ids, |i| (&queries[i].purpose, &queries[i].field))
            .await
    }

    /// The one source of every Check, BatchCheck and BulkCheck decision:
    /// decides `asked(i)` (a purpose and field) for `ids[i]`, from one read
    /// of the subjects' state. Assumes the queries passed the policy.
    /// Taking the purpose and field by index lets a bulk request of one
    /// purpose and field decide thousands of ids without a copy per id.
    pub(super) async fn decide_each<'q>(
        &self,
        ids: &[&SubjectId],
        asked: impl Fn(usize) -> (&'q PurposeCode, &'q FieldName),
    ) -> Result<Vec<Decision>> {
        let mut states = self.store.current_state_for(ids).await?;
        self.mark_erased(ids, &mut states).await?;
        // R3: the stored fields' ages, never their values.
        let data = self.store.field_data_for(ids).await?;
        let now = chrono::Utc::now();
        let mut tally = DecisionTally::default();
        let decisions = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let (purpose, field) = asked(i);
                let stored = data
                    .get(*id)
                    .and_then(|fields| fields.iter().find(|d| &d.field == field));
                let decision =
                    decide_with_data(&self.policy, states.get(*id), purpose, field, stored, now);
                tally.add(purpose, &decision);
                decision
            })
            .collect();
        tally.record();
        Ok(decisions)
    }

    /// Adds an erased state for each unregistered id on the suppression
    /// list, so `decide` answers REASON_SUBJECT_ERASED for it. Costs a query
    /// only when some ids are not registered.
    async fn mark_erased(
        &self,
        ids: &[&SubjectId],
        states: &mut std::collections::HashMap<SubjectId, SubjectState>,
    ) -> Result<()> {
        let unknown: Vec<&SubjectId> = ids
            .iter()
            .copied()
            .filter(|id| !states.contains_key(*id))
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let hashes: Vec<Vec<u8>> = unknown.iter().map(|id| self.refs.hash(id)).collect();
        let erased = self.store.erased_among(&hashes).await?;
        for (id, hash) in unknown.into_iter().zip(hashes) {
            if erased.contains(&hash) {
                states.insert(
                    id.clone(),
                    SubjectState {
                        erased: true,
                        ..Default::default()
                    },
                );
            }
        }
        Ok(())
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

    /// Notes what the policy refuses in a query, for whichever of its
    /// purpose and field parsed (`None` did not), so that one answer names
    /// parse errors and policy errors together. `name("purpose")` names the
    /// request field.
    pub fn check_query(
        &self,
        violations: &mut Violations,
        name: impl Fn(&str) -> String,
        purpose: Option<&PurposeCode>,
        field: Option<&FieldName>,
    ) {
        for v in self.policy.check_query_parts(purpose, field).into_vec() {
            violations.push(name(&v.field), v.description);
        }
    }

    /// Notes what the policy refuses in a choice, for whichever parts parsed
    /// and are present: the purpose, the field it uses, the recipient.
    pub fn check_record(
        &self,
        violations: &mut Violations,
        purpose: Option<&PurposeCode>,
        field: Option<&FieldName>,
        recipient: Option<&RecipientId>,
    ) {
        let declared = purpose.and_then(|p| self.policy.purpose(p));
        if let Some(purpose) = purpose
            && declared.is_none()
        {
            violations.push("purpose", self.policy.not_a_purpose(purpose));
        }
        if let Some(field) = field {
            if !self.policy.declares_field(field) {
                violations.push("field", self.policy.not_a_field(field));
            } else if let Some(purpose) = declared
                && !purpose.permits(field)
            {
                violations.push(
                    "field",
                    format!(
                        "`{field}` is not used by purpose `{}` (it uses: {})",
                        purpose.code,
                        join(&purpose.fields)
                    ),
                );
            }
        }
        let Some(recipient) = recipient else { return };
        match self.policy.recipient(recipient) {
            None => violations.push(
                "recipient",
                format!(
                    "`{recipient}` is not a recipient of policy {}",
                    self.policy.version()
                ),
            ),
            Some(r) => {
                if let Some(purpose) = declared
                    && !r.purposes.contains(&purpose.code)
                {
                    violations.push(
                        "recipient",
                        format!(
                            "recipient `{recipient}` does not receive data for purpose `{}`",
                            purpose.code
                        ),
                    );
                }
            }
        }
    }

    /// Notes what is refused in a WatchChanges: a negative position, and
    /// each purpose (given with its index) the policy does not declare.
    pub fn check_watch<'p>(
        &self,
        violations: &mut Violations,
        after: i64,
        purposes: impl IntoIterator<Item = (usize, &'p PurposeCode)>,
    ) {
        if after < 0 {
            violations.push("after", "must not be negative");
        }
        for (i, purpose) in purposes {
            if self.policy.purpose(purpose).is_none() {
                violations.push(format!("purposes[{i}]"), self.policy.not_a_purpose(purpose));
            }
        }
    }
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
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
        for ((purpose, outcome, reason), n) in self.counts {
            metrics::counter!(
                crate::metrics::DECISIONS,
                "purpose" => purpose.to_string(),
                "decision" => outcome.as_str(),
                "reason" => reason.as_str(),
            )
            .increment(n);
        }
    }
}
