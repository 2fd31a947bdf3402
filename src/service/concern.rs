//! Concerns: filed, acknowledged, resolved, with deadlines from the policy.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{
    domain::{Actor, Concern, ConcernOutcome, ConcernStatus, NewConcern, Resolution},
    error::{Error, Result},
    policy::{
        Policy,
        concern::{ConcernChange, ConcernChangeError, ConcernDeadlines, next_step},
    },
    store::{ConcernFilter, Store},
};

/// A concern as callers see it: its history, plus what the policy's
/// deadlines make of it at `now`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConcernView {
    pub concern: Concern,
    pub status: ConcernStatus,
    pub outcome: Option<ConcernOutcome>,
    pub acknowledge_by: DateTime<Utc>,
    pub resolve_by: DateTime<Utc>,
    pub overdue: bool,
    pub age_seconds: i64,
}

impl ConcernView {
    pub fn new(concern: Concern, deadlines: ConcernDeadlines, now: DateTime<Utc>) -> Self {
        let status = concern.status();
        let filed_at = concern.filed_at;
        Self {
            status,
            outcome: concern.outcome(),
            acknowledge_by: deadlines.acknowledge_by(filed_at),
            resolve_by: deadlines.resolve_by(filed_at),
            overdue: deadlines.is_overdue(status, filed_at, now),
            // A clock behind the database's must not show a negative age.
            age_seconds: (now - filed_at).num_seconds().max(0),
            concern,
        }
    }
}

/// One page of concerns, oldest first.
#[derive(Debug, Clone)]
pub struct ConcernViewPage {
    pub concerns: Vec<ConcernView>,
    /// The filing time and id to continue after, when there are more.
    pub next_after: Option<(DateTime<Utc>, Uuid)>,
}

#[derive(Clone)]
pub struct ConcernService {
    store: Store,
    policy: Arc<Policy>,
}

impl ConcernService {
    pub fn new(store: Store, policy: Arc<Policy>) -> Self {
        Self { store, policy }
    }

    fn view(&self, concern: Concern) -> ConcernView {
        ConcernView::new(concern, self.policy.concern_deadlines(), Utc::now())
    }

    pub async fn file(&self, new: &NewConcern) -> Result<ConcernView> {
        Ok(self.view(self.store.file_concern(new).await?))
    }

    pub async fn acknowledge(&self, concern_id: Uuid, actor: &Actor) -> Result<ConcernView> {
        let concern = self
            .change(concern_id, ConcernChange::Acknowledge, actor)
            .await?;
        Ok(self.view(concern))
    }

    pub async fn resolve(
        &self,
        concern_id: Uuid,
        outcome: ConcernOutcome,
        resolution: Resolution,
        actor: &Actor,
    ) -> Result<ConcernView> {
        let change = ConcernChange::Resolve {
            outcome,
            resolution: resolution.into_string(),
        };
        let concern = self.change(concern_id, change, actor).await?;
        Ok(self.view(concern))
    }

    /// The store applies the policy's rule under the concern's lock, so the
    /// status it judges is the one the new event follows.
    async fn change(
        &self,
        concern_id: Uuid,
        change: ConcernChange,
        actor: &Actor,
    ) -> Result<Concern> {
        let step = move |current| {
            next_step(current, &change).map_err(|e| match e {
                ConcernChangeError::AlreadyResolved => Error::FailedPrecondition {
                    violation_type: "STATUS",
                    subject: format!("consent.v1.Concern/{concern_id}"),
                    description: e.to_string(),
                },
            })
        };
        self.store.change_concern(concern_id, step, actor).await
    }

    pub async fn get(&self, concern_id: Uuid) -> Result<ConcernView> {
        let concern = self
            .store
            .concern(concern_id)
            .await?
            .ok_or_else(|| Error::NotFound {
                resource_type: "consent.v1.Concern",
                name: concern_id.to_string(),
            })?;
        Ok(self.view(concern))
    }

    pub async fn list(
        &self,
        status: Option<ConcernStatus>,
        overdue_only: bool,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: usize,
    ) -> Result<ConcernViewPage> {
        let deadlines = self.policy.concern_deadlines();
        let filter = ConcernFilter {
            status,
            overdue_only,
            acknowledge_within: deadlines.acknowledge,
            resolve_within: deadlines.resolve,
        };
        let page = self.store.list_concerns(&filter, after, limit).await?;
        Ok(ConcernViewPage {
            concerns: page.concerns.into_iter().map(|c| self.view(c)).collect(),
            next_after: page.next_after,
        })
    }
}
