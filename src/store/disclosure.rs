//! The disclosure history: each decision with what was released and
//! withheld, and the approval and review events after it. It holds field
//! names, never values.

use anyhow::anyhow;
use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use tokio_postgres::{Row, error::SqlState};
use uuid::Uuid;

use super::{
    Store,
    idempotency::{self, Claim, RequestDigest},
    rows::{stored, stored_enum},
};
use crate::domain::stored_enum;
use crate::{
    domain::{
        Actor, Disclosure, DisclosureStatus, FieldName, Justification, LegalBasis, PurposeCode,
        RecipientId, Reference, RequestId, SubjectId, Withheld,
    },
    error::{Error, Result},
};

/// A disclosure decision to append to the history.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDisclosure {
    pub subject_id: SubjectId,
    pub recipient_id: RecipientId,
    pub purpose: Option<PurposeCode>,
    pub legal_basis: Option<LegalBasis>,
    pub reference: Option<Reference>,
    pub justification: Option<Justification>,
    /// The fields asked for, in request order: part of the idempotency
    /// digest, which must not depend on what was decided.
    pub requested: Vec<FieldName>,
    pub fields: Vec<FieldName>,
    pub withheld: Vec<Withheld>,
    pub status: DisclosureStatus,
    pub review_due: Option<DateTime<Utc>>,
    pub requested_by: Actor,
    pub request_id: Option<RequestId>,
}

/// What [`Store::append_disclosure`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Appended {
    /// A new row.
    New(Disclosure),
    /// The `request_id` was used before for the same request; nothing was
    /// appended, and this is the first row, as it stands now.
    Replay(Disclosure),
}

stored_enum!(
    /// What happened to a disclosure after its request; the text is the
    /// `kind` of a disclosure_events row.
    DisclosureEvent {
        Approved => "approved",
        Reviewed => "reviewed",
    }
);

/// Which disclosures a listing wants.
#[derive(Debug, Clone)]
pub struct DisclosureFilter {
    pub subject_id: Option<SubjectId>,
    /// Only emergency releases whose review was due before this time and
    /// that nobody has reviewed yet.
    pub overdue_at: Option<DateTime<Utc>>,
}

/// One page of disclosures.
#[derive(Debug, Clone)]
pub struct DisclosurePage {
    pub disclosures: Vec<Disclosure>,
    /// The disclosure id to continue after, when there are more.
    pub next_after: Option<Uuid>,
}

const DISCLOSURE_SELECT: &str = "
    SELECT d.subject_id, d.disclosure_id, d.recipient_id, d.purpose, d.legal_basis,
           d.reference, d.justification, d.fields, d.withheld, d.status, d.review_due,
           d.requested_by, d.requested_at,
           a.actor AS approved_by, a.at AS approved_at,
           r.actor AS reviewed_by, r.at AS reviewed_at
      FROM disclosures d
      LEFT JOIN disclosure_events a ON a.subject_id = d.subject_id
           AND a.disclosure_id = d.disclosure_id AND a.kind = 'approved'
      LEFT JOIN disclosure_events r ON r.subject_id = d.subject_id
           AND r.disclosure_id = d.disclosure_id AND r.kind = 'reviewed'";

impl Store {
    /// Emergency disclosures whose review is not closed: all of them, and
    /// those past their deadline. For the metrics.
    #[tracing::instrument(name = "store.count_open_reviews", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "count_open_reviews"))]
    pub async fn count_open_reviews(&self) -> Result<(i64, i64)> {
        let client = self.client().await?;
        let row = client
            .query_one(
                &client
                    .prepare_cached(
                        "SELECT count(*), count(*) FILTER (WHERE d.review_due < now())
                   FROM disclosures d
                  WHERE d.review_due IS NOT NULL
                    AND NOT EXISTS (SELECT 1 FROM disclosure_events e
                                     WHERE e.subject_id = d.subject_id
                                       AND e.disclosure_id = d.disclosure_id
                                       AND e.kind = 'reviewed')",
                    )
                    .await?,
                &[],
            )
            .await?;
        Ok((row.get(0), row.get(1)))
    }

    /// Appends a disclosure to the history. With a `request_id` already used
    /// for the same request, appends nothing and returns the first
    /// disclosure as a [`Appended::Replay`].
    #[tracing::instrument(name = "store.append_disclosure", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "append_disclosure"))]
    pub async fn append_disclosure(&self, new: &NewDisclosure) -> Result<Appended> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if let Some(request_id) = &new.request_id {
            let digest = disclosure_digest(new);
            if let Claim::Replay(id) = idempotency::claim(
                &tx,
                self.request_key.as_ref(),
                request_id,
                &digest,
                Some(&new.subject_id),
            )
            .await?
            {
                let id: Uuid = id
                    .parse()
                    .map_err(|e| anyhow!("idempotency key holds a bad id: {e}"))?;
                let row = tx
                    .query_one(
                        &tx.prepare_cached(&format!(
                            "{DISCLOSURE_SELECT} WHERE d.disclosure_id = $1"
                        ))
                        .await?,
                        &[&id],
                    )
                    .await?;
                return Ok(Appended::Replay(disclosure_from_row(&row)?));
            }
        }
        let disclosure = insert_disclosure(&tx, new).await?;
        if let Some(request_id) = &new.request_id {
            idempotency::settle(&tx, request_id, &disclosure.disclosure_id.to_string()).await?;
        }
        tx.commit().await?;
        Ok(Appended::New(disclosure))
    }

    /// Appends the new decision of a retried request whose first answer the
    /// current rules no longer give. The `request_id` is kept on the row, so
    /// the history shows both came from one request, but its key still
    /// answers with the first disclosure.
    #[tracing::instrument(name = "store.append_retried_disclosure", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "append_retried_disclosure"))]
    pub async fn append_retried_disclosure(&self, new: &NewDisclosure) -> Result<Disclosure> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let disclosure = insert_disclosure(&tx, new).await?;
        tx.commit().await?;
        Ok(disclosure)
    }

    #[tracing::instrument(name = "store.disclosure", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "disclosure"))]
    pub async fn disclosure(&self, disclosure_id: Uuid) -> Result<Option<Disclosure>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &client
                    .prepare_cached(&format!("{DISCLOSURE_SELECT} WHERE d.disclosure_id = $1"))
                    .await?,
                &[&disclosure_id],
            )
            .await?;
        row.map(|r| disclosure_from_row(&r)).transpose()
    }

    /// Appends an approval or review. Returns `None` when the disclosure
    /// already has one of this kind (a concurrent second approver loses on
    /// the primary key instead of being recorded too).
    #[tracing::instrument(name = "store.append_disclosure_event", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "append_disclosure_event"))]
    pub async fn append_disclosure_event(
        &self,
        disclosure: &Disclosure,
        kind: DisclosureEvent,
        actor: &Actor,
    ) -> Result<Option<Disclosure>> {
        let client = self.client().await?;
        let inserted = client
            .execute(
                &client
                    .prepare_cached(
                        "INSERT INTO disclosure_events (subject_id, disclosure_id, kind, actor)
                 VALUES ($1, $2, $3, $4)",
                    )
                    .await?,
                &[
                    &disclosure.subject_id.as_str(),
                    &disclosure.disclosure_id,
                    &kind.as_str(),
                    &actor.as_str(),
                ],
            )
            .await;
        match inserted {
            Ok(_) => {}
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        drop(client);
        self.disclosure(disclosure.disclosure_id).await
    }

    /// Up to `limit` disclosures after `after`, oldest first.
    #[tracing::instrument(name = "store.list_disclosures", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "list_disclosures", limit))]
    pub async fn list_disclosures(
        &self,
        filter: &DisclosureFilter,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<DisclosurePage> {
        let client = self.client().await?;
        let fetch = i64::try_from(limit + 1).map_err(|e| anyhow!(e))?;
        let rows = client
            .query(
                &client
                    .prepare_cached(&format!(
                        "{DISCLOSURE_SELECT}
                      WHERE ($1::text IS NULL OR d.subject_id = $1)
                        AND ($2::timestamptz IS NULL OR (d.review_due < $2 AND r.actor IS NULL))
                        AND ($3::uuid IS NULL OR d.disclosure_id > $3)
                      ORDER BY d.disclosure_id LIMIT $4"
                    ))
                    .await?,
                &[
                    &filter.subject_id.as_ref().map(|s| s.as_str()),
                    &filter.overdue_at,
                    &after,
                    &fetch,
                ],
            )
            .await?;
        let mut disclosures = rows
            .iter()
            .map(disclosure_from_row)
            .collect::<Result<Vec<_>>>()?;
        let next_after = if disclosures.len() > limit {
            disclosures.truncate(limit);
            disclosures.last().map(|d| d.disclosure_id)
        } else {
            None
        };
        Ok(DisclosurePage {
            disclosures,
            next_after,
        })
    }
}

async fn insert_disclosure(tx: &Transaction<'_>, new: &NewDisclosure) -> Result<Disclosure> {
    let fields: Vec<&str> = new.fields.iter().map(|f| f.as_str()).collect();
    let withheld: Vec<String> = new
        .withheld
        .iter()
        .map(|w| format!("{}:{}", w.field, w.reason.as_str()))
        .collect();
    let disclosure_id = Uuid::now_v7();
    tx.execute(
        &tx.prepare_cached(
            "INSERT INTO disclosures (subject_id, disclosure_id, recipient_id, purpose,
             legal_basis, reference, justification, fields, withheld, status, review_due,
             requested_by, request_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .await?,
        &[
            &new.subject_id.as_str(),
            &disclosure_id,
            &new.recipient_id.as_str(),
            &new.purpose.as_ref().map(|p| p.as_str()),
            &new.legal_basis.map(|b| b.as_str()),
            &new.reference.as_ref().map(|r| r.as_str()),
            &new.justification.as_ref().map(|j| j.as_str()),
            &fields,
            &withheld,
            &new.status.as_str(),
            &new.review_due,
            &new.requested_by.as_str(),
            &new.request_id.as_ref().map(|r| r.as_str()),
        ],
    )
    .await?;
    let row = tx
        .query_one(
            &tx.prepare_cached(&format!("{DISCLOSURE_SELECT} WHERE d.disclosure_id = $1"))
                .await?,
            &[&disclosure_id],
        )
        .await?;
    disclosure_from_row(&row)
}

fn disclosure_digest(new: &NewDisclosure) -> RequestDigest {
    let requested: Vec<&str> = new.requested.iter().map(|f| f.as_str()).collect();
    let joined = requested.join(",");
    RequestDigest::of(
        "RequestDisclosure",
        &[
            new.subject_id.as_str(),
            new.recipient_id.as_str(),
            new.purpose.as_ref().map_or("", |p| p.as_str()),
            new.legal_basis.map_or("", |b| b.as_str()),
            new.reference.as_ref().map_or("", |r| r.as_str()),
            new.justification.as_ref().map_or("", |j| j.as_str()),
            &joined,
            new.requested_by.as_str(),
        ],
    )
}

fn disclosure_from_row(row: &Row) -> Result<Disclosure> {
    let optional = |column: &str| row.get::<_, Option<String>>(column);
    let withheld = row
        .get::<_, Vec<String>>("withheld")
        .into_iter()
        .map(|w| {
            let (field, reason) = w
                .split_once(':')
                .ok_or_else(|| Error::Internal(anyhow!("stored withheld entry is malformed")))?;
            Ok(Withheld {
                field: stored(FieldName::parse(field), "withheld")?,
                reason: stored_enum(
                    crate::domain::Reason::from_stored(reason),
                    "withheld reason",
                )?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let decided = stored_enum(DisclosureStatus::from_stored(row.get("status")), "status")?;
    let approved_by = optional("approved_by")
        .map(|a| stored(Actor::parse(a), "approved_by"))
        .transpose()?;
    let approved_at: Option<DateTime<Utc>> = row.get("approved_at");
    let requested_at: DateTime<Utc> = row.get("requested_at");
    // The history row keeps the status decided at request time; an
    // approval event is what turns a pending request into a release.
    let (status, released_at) = match (decided, approved_at) {
        (DisclosureStatus::PendingApproval, Some(at)) if withheld.is_empty() => {
            (DisclosureStatus::Released, Some(at))
        }
        (DisclosureStatus::PendingApproval, Some(at)) => (DisclosureStatus::Partial, Some(at)),
        (DisclosureStatus::PendingApproval | DisclosureStatus::Denied, None) => (decided, None),
        (status, _) => (status, Some(requested_at)),
    };
    Ok(Disclosure {
        disclosure_id: row.get("disclosure_id"),
        subject_id: stored(
            SubjectId::parse(row.get::<_, String>("subject_id")),
            "subject_id",
        )?,
        recipient_id: stored(
            RecipientId::parse(row.get::<_, String>("recipient_id")),
            "recipient_id",
        )?,
        purpose: optional("purpose")
            .map(|p| stored(PurposeCode::parse(p), "purpose"))
            .transpose()?,
        legal_basis: optional("legal_basis")
            .map(|b| stored_enum(LegalBasis::from_stored(&b), "legal_basis"))
            .transpose()?,
        reference: optional("reference")
            .map(|r| stored(Reference::parse(r), "reference"))
            .transpose()?,
        justification: optional("justification")
            .map(|j| stored(Justification::parse(j), "justification"))
            .transpose()?,
        fields: row
            .get::<_, Vec<String>>("fields")
            .into_iter()
            .map(|f| stored(FieldName::parse(f), "fields"))
            .collect::<Result<_>>()?,
        withheld,
        status,
        requested_by: stored(
            Actor::parse(row.get::<_, String>("requested_by")),
            "requested_by",
        )?,
        requested_at,
        approved_by,
        released_at,
        review_due: row.get("review_due"),
        reviewed_by: optional("reviewed_by")
            .map(|a| stored(Actor::parse(a), "reviewed_by"))
            .transpose()?,
        reviewed_at: row.get("reviewed_at"),
    })
}
