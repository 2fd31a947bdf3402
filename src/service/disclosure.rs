//! The vault and disclosures: storing personal data sealed, and releasing it
//! to recipients exactly as `policy::decide_disclosure` allows, with every
//! release appended to the history before any value leaves.

use std::sync::Arc;

use chrono::Utc;
use uuid::Uuid;

use crate::{
    domain::{
        Actor, ConsistencyToken, Disclosure, DisclosureStatus, FieldName, LegalBasis, ListLimit,
        NewPersonalData, PersonalValue, PurposeCode, RecipientId, ReleasedField, RequestId,
        SubjectId, Withheld,
    },
    error::{Error, Result},
    policy::{
        DisclosureDecision, DisclosureFacts, DisclosureRequest, FieldOutcome, Ground, Policy,
        Reason, Recipient, decide_disclosure,
    },
    service::vault::DataKeys,
    state::{DecisionState, Settle},
    store::{Appended, DisclosureEvent, DisclosureFilter, DisclosurePage, NewDisclosure, Store},
};

/// The largest page of disclosures.
pub const MAX_DISCLOSURE_PAGE: usize = 1000;
/// PutPersonalData's `collected_for`: no purpose may be listed twice, so
/// more than a policy plausibly declares is never needed.
pub const COLLECTED_FOR: ListLimit = ListLimit {
    field: "collected_for",
    noun: "purposes",
    min: 0,
    max: 100,
};
/// RequestDisclosure's `fields`: no field may be asked for twice, so more
/// than a policy plausibly declares is never needed.
pub const DISCLOSED_FIELDS: ListLimit = ListLimit {
    field: "fields",
    noun: "fields",
    min: 0,
    max: 100,
};

/// What a disclosure request or approval answers.
#[derive(Debug, Clone)]
pub struct DisclosureAnswer {
    /// `None` for a denial, which releases nothing and so is not recorded.
    pub disclosure: Option<Disclosure>,
    pub status: DisclosureStatus,
    pub released: Vec<ReleasedField>,
    pub withheld: Vec<(FieldName, Reason)>,
    pub about: DisclosureAbout,
}

/// What a disclosure decision was about, for traces and metrics: names and
/// codes only, never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisclosureAbout {
    pub subject_id: SubjectId,
    pub recipient: RecipientId,
    /// `purpose`, or the legal basis that stands in for one (R7).
    pub basis: &'static str,
    pub purpose: Option<PurposeCode>,
}

impl DisclosureAbout {
    fn new(
        subject_id: &SubjectId,
        recipient: &RecipientId,
        purpose: Option<&PurposeCode>,
        legal_basis: Option<LegalBasis>,
    ) -> Self {
        Self {
            subject_id: subject_id.clone(),
            recipient: recipient.clone(),
            basis: legal_basis.map_or("purpose", LegalBasis::as_str),
            purpose: purpose.cloned(),
        }
    }
}

#[derive(Clone)]
pub struct DisclosureService {
    store: Store,
    policy: Arc<Policy>,
    keys: Arc<DataKeys>,
    settle: Settle,
}

impl DisclosureService {
    pub fn new(store: Store, policy: Arc<Policy>, keys: Arc<DataKeys>) -> Self {
        Self {
            store,
            policy,
            keys,
            settle: Settle::default(),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Seals and stores a value, with its collection record (R2), once it
    /// passes [`Policy::check_collection`]. Returns the collection record's
    /// id and the stored value's feed position.
    pub async fn put_personal_data(
        &self,
        new: &NewPersonalData,
    ) -> Result<(Uuid, ConsistencyToken)> {
        let purposes: Vec<_> = new.collected_for.iter().cloned().map(Some).collect();
        let violations = self.policy.check_collection(Some(&new.field), &purposes);
        if !violations.is_empty() {
            return Err(violations.into());
        }
        let sealed = self.keys.seal(&new.subject_id, &new.field, &new.value)?;
        let stored = self.store.put_personal_data(new, &sealed).await?;
        self.settle.after(stored.1).await;
        Ok(stored)
    }

    /// Each write waits until `state` has applied it, so a check on this
    /// server sees it at once.
    pub fn settling(mut self, state: DecisionState) -> Self {
        self.settle = Settle::on(state);
        self
    }

    /// Notes that the value was confirmed with the person (R3). Returns when,
    /// and the value's feed position after it.
    pub async fn verify_personal_data(
        &self,
        subject_id: &SubjectId,
        field: &FieldName,
    ) -> Result<(chrono::DateTime<Utc>, ConsistencyToken)> {
        let violations = self.policy.check_field(field);
        if !violations.is_empty() {
            return Err(violations.into());
        }
        let verified = self
            .store
            .verify_personal_data(subject_id, field)
            .await?
            .ok_or_else(|| Error::NotFound {
                resource_type: "consent.v1.PersonalData",
                name: format!("{subject_id}/{field}"),
            })?;
        self.settle.after(verified.1).await;
        Ok(verified)
    }

    pub fn recipients(&self) -> impl Iterator<Item = &Recipient> {
        self.policy.recipients()
    }

    /// Decides a disclosure; records it unless it is a denial; releases the
    /// values only once the record is committed.
    pub async fn request_disclosure(
        &self,
        subject_id: &SubjectId,
        request: &DisclosureRequest,
        actor: &Actor,
        request_id: Option<RequestId>,
    ) -> Result<DisclosureAnswer> {
        // Caller bugs first, before any IO.
        let violations = self.policy.check_disclosure(request);
        if !violations.is_empty() {
            return Err(violations.into());
        }
        let now = Utc::now();
        let mut states = self.store.current_state_for(&[subject_id]).await?;
        let mut state = states.remove(subject_id);
        if let Some(state) = &mut state {
            let named = self
                .store
                .recipient_choices(subject_id, &request.recipient)
                .await?;
            state.choices.extend(named);
        }
        let data = self
            .store
            .field_data_for(&[subject_id])
            .await?
            .remove(subject_id)
            .unwrap_or_default();
        let facts = DisclosureFacts {
            subject: state.as_ref(),
            data: &data,
            now,
        };
        let decision = decide_disclosure(&self.policy, facts, request);
        let withheld = withheld(&decision);
        let (purpose, legal_basis) = match &request.ground {
            Ground::Purpose(p) => (Some(p.clone()), None),
            Ground::Legal(b) => (None, Some(*b)),
        };
        // A denial releases nothing, so it is not recorded. A retry the
        // rules now deny is one too: what its first answer released does
        // not go out again.
        if decision.status == DisclosureStatus::Denied {
            return Ok(DisclosureAnswer {
                disclosure: None,
                status: decision.status,
                released: Vec::new(),
                withheld,
                about: DisclosureAbout::new(
                    subject_id,
                    &request.recipient,
                    purpose.as_ref(),
                    legal_basis,
                ),
            });
        }
        let fields: Vec<FieldName> = decision.released().map(|(f, _)| f.clone()).collect();
        let releases_now = decision.status != DisclosureStatus::PendingApproval;
        // Opened before the record is written, so a value that cannot be
        // opened fails the call instead of recording a release that did not
        // happen; returned only after the record committed.
        let values = if releases_now {
            self.open(subject_id, &fields).await?
        } else {
            Vec::new()
        };
        let new = NewDisclosure {
            subject_id: subject_id.clone(),
            recipient_id: request.recipient.clone(),
            purpose,
            legal_basis,
            reference: request.reference.clone(),
            justification: request.justification.clone(),
            requested: request.fields.clone(),
            fields,
            withheld: withheld
                .iter()
                .map(|(field, reason)| Withheld {
                    field: field.clone(),
                    reason: *reason,
                })
                .collect(),
            status: decision.status,
            review_due: decision.review_due,
            requested_by: actor.clone(),
            request_id,
        };
        let disclosure = match self.store.append_disclosure(&new).await? {
            Appended::New(disclosure) => disclosure,
            // A retry is decided again. While the rules still release what
            // the first answer released, it answers from the first record,
            // which already holds those fields.
            Appended::Replay(first) if first.fields == new.fields => first,
            // Otherwise the first answer would release what the rules now
            // withhold (or did not then): this decision is what goes out,
            // so it is recorded as a disclosure of its own.
            Appended::Replay(_) => self.store.append_retried_disclosure(&new).await?,
        };
        let stale = |field: &FieldName| {
            decision
                .released()
                .any(|(f, needs_verification)| f == field && needs_verification)
        };
        // A replayed first record may be a legal-basis request approved
        // since, whose values this decision (pending) did not open.
        let values = if values.len() == disclosure.fields.len()
            && values
                .iter()
                .zip(&disclosure.fields)
                .all(|(v, f)| &v.0 == f)
        {
            values
        } else if is_released(disclosure.status) {
            self.open(subject_id, &disclosure.fields).await?
        } else {
            Vec::new()
        };
        Ok(self.answer(disclosure, values, stale))
    }

    /// Releases a pending legal-basis disclosure. A second person must
    /// approve (R7): the requester is refused with PERMISSION_DENIED.
    /// `may` says whether the approver may touch this disclosure at all
    /// (its recipient and legal basis); it is asked before anything else,
    /// so a caller that may not learns nothing of it.
    pub async fn approve_disclosure(
        &self,
        disclosure_id: Uuid,
        actor: &Actor,
        may: impl FnOnce(&Disclosure) -> Result<()>,
    ) -> Result<DisclosureAnswer> {
        let disclosure = self.get_disclosure(disclosure_id).await?;
        may(&disclosure)?;
        if disclosure.status != DisclosureStatus::PendingApproval {
            return Err(not_pending(&disclosure));
        }
        if disclosure.requested_by.principal() == actor.principal() {
            return Err(Error::PermissionDenied(
                "a disclosure must be approved by someone other than its requester".into(),
            ));
        }
        let values = self
            .open(&disclosure.subject_id, &disclosure.fields)
            .await?;
        let approved = self
            .store
            .append_disclosure_event(&disclosure, DisclosureEvent::Approved, actor)
            .await?
            .ok_or_else(|| not_pending(&disclosure))?;
        Ok(self.answer(approved, values, |_| false))
    }

    /// Closes the review of an emergency release. The reviewer must not be
    /// the requester, for the same reason as an approval; `may` as for
    /// [`Self::approve_disclosure`].
    pub async fn review_disclosure(
        &self,
        disclosure_id: Uuid,
        actor: &Actor,
        may: impl FnOnce(&Disclosure) -> Result<()>,
    ) -> Result<Disclosure> {
        let disclosure = self.get_disclosure(disclosure_id).await?;
        may(&disclosure)?;
        let no_review = || Error::FailedPrecondition {
            violation_type: "REVIEW",
            subject: format!("disclosures/{disclosure_id}"),
            description: "the disclosure has no open review".into(),
        };
        if disclosure.review_due.is_none() || disclosure.reviewed_by.is_some() {
            return Err(no_review());
        }
        if disclosure.requested_by.principal() == actor.principal() {
            return Err(Error::PermissionDenied(
                "a disclosure must be reviewed by someone other than its requester".into(),
            ));
        }
        self.store
            .append_disclosure_event(&disclosure, DisclosureEvent::Reviewed, actor)
            .await?
            .ok_or_else(no_review)
    }

    pub async fn get_disclosure(&self, disclosure_id: Uuid) -> Result<Disclosure> {
        self.store
            .disclosure(disclosure_id)
            .await?
            .ok_or_else(|| Error::NotFound {
                resource_type: "consent.v1.Disclosure",
                name: disclosure_id.to_string(),
            })
    }

    /// A subject's disclosures, or with `overdue_review_only` the emergency
    /// releases whose review is past due now (of one subject, or of all).
    pub async fn list_disclosures(
        &self,
        subject_id: Option<SubjectId>,
        overdue_review_only: bool,
        after: Option<Uuid>,
        page_size: usize,
    ) -> Result<DisclosurePage> {
        let filter = DisclosureFilter {
            subject_id,
            overdue_at: overdue_review_only.then(Utc::now),
        };
        self.store
            .list_disclosures(&filter, after, page_size.clamp(1, MAX_DISCLOSURE_PAGE))
            .await
    }

    async fn open(
        &self,
        subject_id: &SubjectId,
        fields: &[FieldName],
    ) -> Result<Vec<(FieldName, PersonalValue)>> {
        let sealed = self.store.sealed_values(subject_id, fields).await?;
        fields
            .iter()
            .map(|field| {
                let value = sealed
                    .get(field)
                    .ok_or_else(|| anyhow::anyhow!("field `{field}` vanished before release"))
                    .and_then(|s| self.keys.open(subject_id, field, s))?;
                Ok((field.clone(), value))
            })
            .collect()
    }

    fn answer(
        &self,
        disclosure: Disclosure,
        values: Vec<(FieldName, PersonalValue)>,
        stale: impl Fn(&FieldName) -> bool,
    ) -> DisclosureAnswer {
        let withheld = disclosure
            .withheld
            .iter()
            .map(|w| (w.field.clone(), w.reason))
            .collect();
        DisclosureAnswer {
            about: DisclosureAbout::new(
                &disclosure.subject_id,
                &disclosure.recipient_id,
                disclosure.purpose.as_ref(),
                disclosure.legal_basis,
            ),
            status: disclosure.status,
            released: values
                .into_iter()
                .map(|(field, value)| ReleasedField {
                    needs_verification: stale(&field),
                    field,
                    value,
                })
                .collect(),
            withheld,
            disclosure: Some(disclosure),
        }
    }
}

fn withheld(decision: &DisclosureDecision) -> Vec<(FieldName, Reason)> {
    decision
        .fields
        .iter()
        .filter_map(|(f, o)| match o {
            FieldOutcome::Withhold(reason) => Some((f.clone(), *reason)),
            FieldOutcome::Release { .. } => None,
        })
        .collect()
}

fn is_released(status: DisclosureStatus) -> bool {
    matches!(
        status,
        DisclosureStatus::Released | DisclosureStatus::Partial
    )
}

fn not_pending(disclosure: &Disclosure) -> Error {
    Error::FailedPrecondition {
        violation_type: "STATUS",
        subject: format!("disclosures/{}", disclosure.disclosure_id),
        description: "the disclosure is not pending approval".into(),
    }
}
