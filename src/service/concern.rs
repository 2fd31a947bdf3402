//! Concerns: filed, acknowledged, resolved, with deadlines from the policy.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{
    domain::{Actor, Concern, ConcernOutcome, ConcernStatus, NewConcern},
    error::{Error, Result},
    policy::{
        Policy,
        concern::{ConcernChange, ConcernChangeError, ConcernDeadlines, next_step},
    },
    store::{ConcernFilter, ConcernPage, Store},
};

#[derive(Clone)]
pub struct ConcernService {
    store: Store,
    policy: Arc<Policy>,
}

impl ConcernService {
    pub fn new(store: Store, policy: Arc<Policy>) -> Self {
        Self { store, policy }
    }

    pub fn deadlines(&self) -> ConcernDeadlines {
        self.policy.concern_deadlines()
    }

    pub async fn file(&self, new: &NewConcern) -> Result<Concern> {
        self.store.file_concern(new).await
    }

    pub async fn acknowledge(&self, concern_id: Uuid, actor: &Actor) -> Result<Concern> {
        self.change(concern_id, ConcernChange::Acknowledge, actor)
            .await
    }

    /// A rejection must say why (PIPL Art. 50); every resolution must say
    /// something, so the rule is enforced on the text for all outcomes and
    /// named specifically for rejections.
    pub async fn resolve(
        &self,
        concern_id: Uuid,
        outcome: ConcernOutcome,
        resolution: String,
        actor: &Actor,
    ) -> Result<Concern> {
        if resolution.trim().is_empty() {
            let why = match outcome {
                ConcernOutcome::Rejected => "a rejection must give its reasons (PIPL Art. 50)",
                _ => "must say what was done",
            };
            return Err(Error::invalid("resolution", why));
        }
        self.change(
            concern_id,
            ConcernChange::Resolve {
                outcome,
                resolution,
            },
            actor,
        )
        .await
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

    pub async fn get(&self, concern_id: Uuid) -> Result<Concern> {
        self.store
            .concern(concern_id)
            .await?
            .ok_or_else(|| Error::NotFound {
                resource_type: "consent.v1.Concern",
                name: concern_id.to_string(),
            })
    }

    pub async fn list(
        &self,
        status: Option<ConcernStatus>,
        overdue_only: bool,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: usize,
    ) -> Result<ConcernPage> {
        let deadlines = self.deadlines();
        let filter = ConcernFilter {
            status,
            overdue_only,
            acknowledge_within: deadlines.acknowledge,
            resolve_within: deadlines.resolve,
        };
        self.store.list_concerns(&filter, after, limit).await
    }
}
