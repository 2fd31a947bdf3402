//! Concerns and their append-only event history.

use chrono::{DateTime, Duration, Utc};
use tokio_postgres::Row;
use uuid::Uuid;

use super::{
    Store,
    idempotency::{self, Claim, RequestDigest},
    rows::{stored, stored_enum},
};
use crate::{
    domain::{
        Actor, Concern, ConcernCategory, ConcernEvent, ConcernOutcome, ConcernStatus, NewConcern,
        SubjectId, Text,
    },
    error::{Error, Result},
};

/// The longest free texts a concern holds.
pub const MAX_CONTACT_CHARS: usize = 256;
pub const MAX_TEXT_CHARS: usize = 10_000;

/// The advisory lock class under which status changes of one concern take
/// turns.
const CONCERN_LOCK_CLASS: i32 = 0x636f_6e63; // "conc"

/// Which concerns ListConcerns wants.
#[derive(Debug, Clone, Copy)]
pub struct ConcernFilter {
    pub status: Option<ConcernStatus>,
    pub overdue_only: bool,
    /// The policy's deadlines, counted from filing: past the first an
    /// unacknowledged concern is overdue, past the second an unresolved one.
    pub acknowledge_within: Duration,
    pub resolve_within: Duration,
}

/// One page of concerns, and where the next starts.
pub struct ConcernPage {
    pub concerns: Vec<Concern>,
    pub next_after: Option<(DateTime<Utc>, Uuid)>,
}

/// The current status of each concern: its latest event.
const CURRENT: &str = "
    SELECT c.concern_id, c.subject_id, c.contact, c.category, c.description, c.links, c.filed_at,
           c.filed_by, e.status
      FROM concerns c
      JOIN LATERAL (SELECT status FROM concern_events
                     WHERE concern_id = c.concern_id ORDER BY sequence DESC LIMIT 1) e ON true";

impl Store {
    #[tracing::instrument(name = "store.file_concern", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "file_concern"))]
    pub async fn file_concern(&self, new: &NewConcern) -> Result<Concern> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if let Some(request_id) = &new.request_id {
            let links: Vec<String> = new.links.iter().map(Uuid::to_string).collect();
            let mut parts = vec![
                new.subject_id.as_ref().map_or("", |s| s.as_str()),
                new.contact.as_str(),
                new.category.as_str(),
                new.description.as_str(),
                new.actor.as_str(),
            ];
            parts.extend(links.iter().map(String::as_str));
            let digest = RequestDigest::of("FileConcern", &parts);
            if let Claim::Replay(id) = idempotency::claim(
                &tx,
                self.request_key.as_ref(),
                request_id,
                &digest,
                new.subject_id.as_ref(),
            )
            .await?
            {
                let id: Uuid = id
                    .parse()
                    .map_err(|e| Error::Internal(anyhow::anyhow!("bad concern id: {e}")))?;
                return concern_in(&tx, id)
                    .await?
                    .ok_or_else(|| Error::Internal(anyhow::anyhow!("replayed concern is gone")));
            }
        }
        let concern_id = Uuid::now_v7();
        tx.execute(
            &tx.prepare_cached("INSERT INTO concerns (concern_id, subject_id, contact, category, description, links, filed_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7)").await?,
            &[
                &concern_id,
                &new.subject_id.as_ref().map(|s| s.as_str()),
                &new.contact.as_str(),
                &new.category.as_str(),
                &new.description.as_str(),
                &new.links,
                &new.actor.as_str(),
            ],
        )
        .await?;
        tx.execute(
            &tx.prepare_cached(
                "INSERT INTO concern_events (concern_id, status, actor) VALUES ($1, 'filed', $2)",
            )
            .await?,
            &[&concern_id, &new.actor.as_str()],
        )
        .await?;
        if let Some(request_id) = &new.request_id {
            idempotency::settle(&tx, request_id, &concern_id.to_string()).await?;
        }
        let concern = concern_in(&tx, concern_id)
            .await?
            .ok_or_else(|| Error::Internal(anyhow::anyhow!("concern vanished")))?;
        tx.commit().await?;
        Ok(concern)
    }

    /// Applies a status change under the concern's row lock, so two agents
    /// acting at once cannot both resolve it. `step` is the policy's
    /// transition rule, given the current status under that lock: the event
    /// to append (status, outcome, resolution), or `None` to change nothing.
    #[tracing::instrument(name = "store.change_concern", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "change_concern"))]
    pub async fn change_concern(
        &self,
        concern_id: Uuid,
        step: impl FnOnce(
            ConcernStatus,
        ) -> Result<Option<(ConcernStatus, Option<ConcernOutcome>, String)>>
        + Send,
        actor: &Actor,
    ) -> Result<Concern> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // A transaction-scoped advisory lock on the concern rather than a
        // row lock: the serving role may not UPDATE concerns, and FOR UPDATE
        // needs that privilege. Its own class keeps it apart from other
        // advisory locks.
        tx.execute(
            &tx.prepare_cached("SELECT pg_advisory_xact_lock($1, hashtext($2::uuid::text))")
                .await?,
            &[&CONCERN_LOCK_CLASS, &concern_id],
        )
        .await?;
        let locked = tx
            .query_opt(
                &tx.prepare_cached("SELECT 1 FROM concerns WHERE concern_id = $1")
                    .await?,
                &[&concern_id],
            )
            .await?;
        if locked.is_none() {
            return Err(concern_not_found(concern_id));
        }
        let current = concern_in(&tx, concern_id)
            .await?
            .ok_or_else(|| concern_not_found(concern_id))?;
        let Some((status, outcome, resolution)) = step(current.status())? else {
            return Ok(current);
        };
        tx.execute(
            &tx.prepare_cached("INSERT INTO concern_events (concern_id, status, outcome, resolution, actor) VALUES ($1, $2, $3, $4, $5)").await?,
            &[&concern_id, &status.as_str(), &outcome.map(|o| o.as_str()), &resolution, &actor.as_str()],
        )
        .await?;
        let concern = concern_in(&tx, concern_id)
            .await?
            .ok_or_else(|| concern_not_found(concern_id))?;
        tx.commit().await?;
        Ok(concern)
    }

    #[tracing::instrument(name = "store.concern", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "concern"))]
    pub async fn concern(&self, concern_id: Uuid) -> Result<Option<Concern>> {
        let client = self.client().await?;
        concern_in(&*client, concern_id).await
    }

    /// Concerns after `after` (filing time, id), oldest first. Events are
    /// not loaded: a list shows status, not history.
    #[tracing::instrument(name = "store.list_concerns", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "list_concerns"))]
    pub async fn list_concerns(
        &self,
        filter: &ConcernFilter,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: usize,
    ) -> Result<ConcernPage> {
        let client = self.client().await?;
        let (after_time, after_id) = (after.map(|a| a.0), after.map(|a| a.1));
        let fetch = (limit + 1) as i64;
        let rows = client
            .query(
                &client
                    .prepare_cached(&format!(
                        "SELECT * FROM ({CURRENT}) cur
                      WHERE ($1::text IS NULL OR status = $1)
                        AND (NOT $2 OR {overdue})
                        AND ($5::timestamptz IS NULL OR (filed_at, concern_id) > ($5, $6::uuid))
                      ORDER BY filed_at, concern_id LIMIT $7",
                        overdue = overdue("$3", "$4")
                    ))
                    .await?,
                &[
                    &filter.status.map(|s| s.as_str()),
                    &filter.overdue_only,
                    &filter.acknowledge_within.num_seconds(),
                    &filter.resolve_within.num_seconds(),
                    &after_time,
                    &after_id,
                    &fetch,
                ],
            )
            .await?;
        let mut concerns = rows
            .iter()
            .map(|row| concern_from_row(row, Vec::new()))
            .collect::<Result<Vec<_>>>()?;
        let next_after = if concerns.len() > limit {
            concerns.truncate(limit);
            concerns.last().map(|c| (c.filed_at, c.concern_id))
        } else {
            None
        };
        Ok(ConcernPage {
            concerns,
            next_after,
        })
    }

    /// How many concerns are past a deadline, for the metrics.
    #[tracing::instrument(name = "store.count_overdue_concerns", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "count_overdue_concerns"))]
    pub async fn count_overdue_concerns(
        &self,
        acknowledge_within: Duration,
        resolve_within: Duration,
    ) -> Result<i64> {
        let client = self.client().await?;
        let row = client
            .query_one(
                &client
                    .prepare_cached(&format!(
                        "SELECT count(*) FROM ({CURRENT}) cur WHERE {}",
                        overdue("$1", "$2")
                    ))
                    .await?,
                &[
                    &acknowledge_within.num_seconds(),
                    &resolve_within.num_seconds(),
                ],
            )
            .await?;
        Ok(row.get(0))
    }
}

/// Overdue, in SQL, given the placeholders holding the deadlines in
/// seconds. It must say the same as `ConcernDeadlines::is_overdue`; the
/// integration tests check both.
fn overdue(acknowledge: &str, resolve: &str) -> String {
    format!(
        "((status = 'filed' AND filed_at + {acknowledge}::bigint * interval '1 second' < now())
          OR (status <> 'resolved' AND filed_at + {resolve}::bigint * interval '1 second' < now()))"
    )
}

fn concern_not_found(id: Uuid) -> Error {
    Error::NotFound {
        resource_type: "consent.v1.Concern",
        name: id.to_string(),
    }
}

async fn concern_in(
    client: &impl deadpool_postgres::GenericClient,
    concern_id: Uuid,
) -> Result<Option<Concern>> {
    let Some(row) = client
        .query_opt(
            &client
                .prepare_cached(&format!(
                    "SELECT * FROM ({CURRENT}) cur WHERE concern_id = $1"
                ))
                .await?,
            &[&concern_id],
        )
        .await?
    else {
        return Ok(None);
    };
    let events = client
        .query(
            &client
                .prepare_cached(
                    "SELECT status, outcome, resolution, actor, at FROM concern_events
              WHERE concern_id = $1 ORDER BY sequence",
                )
                .await?,
            &[&concern_id],
        )
        .await?
        .iter()
        .map(|e| {
            Ok(ConcernEvent {
                status: stored_enum(ConcernStatus::from_stored(e.get(0)), "status")?,
                outcome: e
                    .get::<_, Option<&str>>(1)
                    .map(|o| stored_enum(ConcernOutcome::from_stored(o), "outcome"))
                    .transpose()?,
                resolution: e.get(2),
                actor: stored(Actor::parse(e.get::<_, String>(3)), "actor")?,
                at: e.get(4),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    concern_from_row(&row, events).map(Some)
}

/// A row of CURRENT. With no events loaded, the row's current status stands
/// in as the only event, so `Concern::status` is right either way.
fn concern_from_row(row: &Row, mut events: Vec<ConcernEvent>) -> Result<Concern> {
    let filed_at: DateTime<Utc> = row.get("filed_at");
    let filed_by = stored(Actor::parse(row.get::<_, String>("filed_by")), "filed_by")?;
    if events.is_empty() {
        events.push(ConcernEvent {
            status: stored_enum(ConcernStatus::from_stored(row.get("status")), "status")?,
            outcome: None,
            resolution: String::new(),
            actor: filed_by.clone(),
            at: filed_at,
        });
    }
    Ok(Concern {
        concern_id: row.get("concern_id"),
        filed_at,
        content: NewConcern {
            subject_id: row
                .get::<_, Option<String>>("subject_id")
                .map(|s| stored(SubjectId::parse(s), "subject_id"))
                .transpose()?,
            contact: stored(
                Text::parse(row.get::<_, String>("contact"), MAX_CONTACT_CHARS),
                "contact",
            )?,
            category: stored_enum(
                ConcernCategory::from_stored(row.get("category")),
                "category",
            )?,
            description: stored(
                Text::parse(row.get::<_, String>("description"), MAX_TEXT_CHARS),
                "description",
            )?,
            links: row.get("links"),
            actor: filed_by,
            request_id: None,
        },
        events,
    })
}
