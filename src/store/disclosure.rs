//! The vault (sealed personal data and its collection records) and the
//! disclosure history with its events. Values arrive and leave sealed: this
//! module never sees a plaintext value.

use std::collections::HashMap;

use anyhow::anyhow;
use chrono::{DateTime, Utc};
use tokio_postgres::{Row, error::SqlState};
use uuid::Uuid;

use super::{
    Store,
    consent::{stored, stored_enum},
    idempotency::{self, Claim, RequestDigest},
};
use crate::{
    domain::{
        Actor, Disclosure, DisclosureStatus, FieldData, FieldName, Justification, LegalBasis,
        NewPersonalData, PurposeCode, RecipientId, Reference, RequestId, SealedValue, SubjectId,
        Withheld,
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

/// What happened to a disclosure after its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisclosureEvent {
    Approved,
    Reviewed,
}

impl DisclosureEvent {
    fn as_str(self) -> &'static str {
        match self {
            DisclosureEvent::Approved => "approved",
            DisclosureEvent::Reviewed => "reviewed",
        }
    }
}

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

/// A sealed value with the row it belongs to, for key rotation.
#[derive(Debug, Clone)]
pub struct SealedRow {
    pub subject_id: SubjectId,
    pub field: FieldName,
    pub sealed: SealedValue,
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
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE d.review_due < now())
                   FROM disclosures d
                  WHERE d.review_due IS NOT NULL
                    AND NOT EXISTS (SELECT 1 FROM disclosure_events e
                                     WHERE e.subject_id = d.subject_id
                                       AND e.disclosure_id = d.disclosure_id
                                       AND e.kind = 'reviewed')",
                &[],
            )
            .await?;
        Ok((row.get(0), row.get(1)))
    }

    /// Stores a new sealed value for a field (replacing the old one, whose
    /// verification no longer applies) and appends its collection record,
    /// in one transaction. Returns the collection record's id.
    #[tracing::instrument(name = "store.put_personal_data", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "put_personal_data"))]
    pub async fn put_personal_data(
        &self,
        new: &NewPersonalData,
        sealed: &SealedValue,
    ) -> Result<Uuid> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let collected_for: Vec<&str> = new.collected_for.iter().map(|p| p.as_str()).collect();
        if let Some(request_id) = &new.request_id {
            // The value is left out of the digest: a hash of a phone number
            // is as good as the number to anyone who can enumerate numbers.
            let mut parts = vec![
                new.subject_id.as_str(),
                new.field.as_str(),
                new.channel.as_str(),
                new.notice_version.as_str(),
                new.actor.as_str(),
            ];
            parts.extend(&collected_for);
            let digest = RequestDigest::of("PutPersonalData", &parts);
            if let Claim::Replay(id) = idempotency::claim(&tx, request_id, &digest).await? {
                return id
                    .parse()
                    .map_err(|e| Error::Internal(anyhow!("idempotency key holds a bad id: {e}")));
            }
        }
        let locked = tx
            .query_opt(
                "SELECT 1 FROM subjects WHERE subject_id = $1 FOR NO KEY UPDATE",
                &[&new.subject_id.as_str()],
            )
            .await?;
        if locked.is_none() {
            return Err(Error::subject_not_found(&new.subject_id));
        }
        let collection_id = Uuid::now_v7();
        let row = tx
            .query_one(
                "INSERT INTO collection_records (subject_id, collection_id, field, collected_for,
                     channel, notice_version, actor, request_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 RETURNING collected_at",
                &[
                    &new.subject_id.as_str(),
                    &collection_id,
                    &new.field.as_str(),
                    &collected_for,
                    &new.channel.as_str(),
                    &new.notice_version.as_str(),
                    &new.actor.as_str(),
                    &new.request_id.as_ref().map(|r| r.as_str()),
                ],
            )
            .await?;
        let collected_at: DateTime<Utc> = row.get(0);
        tx.execute(
            "INSERT INTO personal_data (subject_id, field, key_id, nonce, ciphertext,
                 collected_for, collected_at, verified_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)
             ON CONFLICT (subject_id, field) DO UPDATE
                SET key_id = EXCLUDED.key_id, nonce = EXCLUDED.nonce,
                    ciphertext = EXCLUDED.ciphertext, collected_for = EXCLUDED.collected_for,
                    collected_at = EXCLUDED.collected_at, verified_at = NULL",
            &[
                &new.subject_id.as_str(),
                &new.field.as_str(),
                &sealed.key_id,
                &sealed.nonce,
                &sealed.ciphertext,
                &collected_for,
                &collected_at,
            ],
        )
        .await?;
        if let Some(request_id) = &new.request_id {
            idempotency::settle(&tx, request_id, &collection_id.to_string()).await?;
        }
        tx.commit().await?;
        Ok(collection_id)
    }

    /// Notes that the field's value was confirmed now (R3). `None` when no
    /// value is stored.
    #[tracing::instrument(name = "store.verify_personal_data", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "verify_personal_data"))]
    pub async fn verify_personal_data(
        &self,
        subject_id: &SubjectId,
        field: &FieldName,
    ) -> Result<Option<DateTime<Utc>>> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "UPDATE personal_data SET verified_at = clock_timestamp()
                  WHERE subject_id = $1 AND field = $2
                  RETURNING verified_at",
                &[&subject_id.as_str(), &field.as_str()],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// What is stored for each given subject, without the values.
    #[tracing::instrument(name = "store.field_data_for", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "field_data_for", subjects = ids.len()))]
    pub async fn field_data_for(
        &self,
        ids: &[&SubjectId],
    ) -> Result<HashMap<SubjectId, Vec<FieldData>>> {
        let client = self.pool.get().await?;
        let ids: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
        let rows = client
            .query(
                "SELECT subject_id, field, collected_for, collected_at, verified_at
                   FROM personal_data WHERE subject_id = ANY($1)
                  ORDER BY subject_id, field",
                &[&ids],
            )
            .await?;
        let mut out: HashMap<SubjectId, Vec<FieldData>> = HashMap::new();
        for row in rows {
            let subject = stored(SubjectId::parse(row.get::<_, String>(0)), "subject_id")?;
            let collected_for = row
                .get::<_, Vec<String>>(2)
                .into_iter()
                .map(|p| stored(PurposeCode::parse(p), "collected_for"))
                .collect::<Result<_>>()?;
            out.entry(subject).or_default().push(FieldData {
                field: stored(FieldName::parse(row.get::<_, String>(1)), "field")?,
                collected_for,
                collected_at: row.get(3),
                verified_at: row.get(4),
            });
        }
        Ok(out)
    }

    /// The sealed values of some fields of one subject; absent fields are
    /// left out.
    #[tracing::instrument(name = "store.sealed_values", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "sealed_values"))]
    pub async fn sealed_values(
        &self,
        subject_id: &SubjectId,
        fields: &[FieldName],
    ) -> Result<HashMap<FieldName, SealedValue>> {
        let client = self.pool.get().await?;
        let names: Vec<&str> = fields.iter().map(|f| f.as_str()).collect();
        let rows = client
            .query(
                "SELECT field, key_id, nonce, ciphertext FROM personal_data
                  WHERE subject_id = $1 AND field = ANY($2)",
                &[&subject_id.as_str(), &names],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    stored(FieldName::parse(row.get::<_, String>(0)), "field")?,
                    SealedValue {
                        key_id: row.get(1),
                        nonce: row.get(2),
                        ciphertext: row.get(3),
                    },
                ))
            })
            .collect()
    }

    /// Appends a disclosure to the history. With a `request_id` already used
    /// for the same request, returns the first disclosure instead.
    #[tracing::instrument(name = "store.append_disclosure", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "append_disclosure"))]
    pub async fn append_disclosure(&self, new: &NewDisclosure) -> Result<Disclosure> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let fields: Vec<&str> = new.fields.iter().map(|f| f.as_str()).collect();
        let withheld: Vec<String> = new
            .withheld
            .iter()
            .map(|w| format!("{}:{}", w.field, w.reason.as_str()))
            .collect();
        if let Some(request_id) = &new.request_id {
            let digest = disclosure_digest(new);
            if let Claim::Replay(id) = idempotency::claim(&tx, request_id, &digest).await? {
                let id: Uuid = id
                    .parse()
                    .map_err(|e| anyhow!("idempotency key holds a bad id: {e}"))?;
                let row = tx
                    .query_one(
                        &format!("{DISCLOSURE_SELECT} WHERE d.disclosure_id = $1"),
                        &[&id],
                    )
                    .await?;
                return disclosure_from_row(&row);
            }
        }
        let disclosure_id = Uuid::now_v7();
        tx.execute(
            "INSERT INTO disclosures (subject_id, disclosure_id, recipient_id, purpose,
                 legal_basis, reference, justification, fields, withheld, status, review_due,
                 requested_by, request_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
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
        if let Some(request_id) = &new.request_id {
            idempotency::settle(&tx, request_id, &disclosure_id.to_string()).await?;
        }
        let row = tx
            .query_one(
                &format!("{DISCLOSURE_SELECT} WHERE d.disclosure_id = $1"),
                &[&disclosure_id],
            )
            .await?;
        let disclosure = disclosure_from_row(&row)?;
        tx.commit().await?;
        Ok(disclosure)
    }

    #[tracing::instrument(name = "store.disclosure", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "disclosure"))]
    pub async fn disclosure(&self, disclosure_id: Uuid) -> Result<Option<Disclosure>> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &format!("{DISCLOSURE_SELECT} WHERE d.disclosure_id = $1"),
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
        let client = self.pool.get().await?;
        let inserted = client
            .execute(
                "INSERT INTO disclosure_events (subject_id, disclosure_id, kind, actor)
                 VALUES ($1, $2, $3, $4)",
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
        let client = self.pool.get().await?;
        let fetch = i64::try_from(limit + 1).map_err(|e| anyhow!(e))?;
        let rows = client
            .query(
                &format!(
                    "{DISCLOSURE_SELECT}
                      WHERE ($1::text IS NULL OR d.subject_id = $1)
                        AND ($2::timestamptz IS NULL OR (d.review_due < $2 AND r.actor IS NULL))
                        AND ($3::uuid IS NULL OR d.disclosure_id > $3)
                      ORDER BY d.disclosure_id LIMIT $4"
                ),
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

    /// Up to `limit` values sealed with a key other than `current`.
    #[tracing::instrument(name = "store.sealed_under_other_keys", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "sealed_under_other_keys", limit))]
    pub async fn sealed_under_other_keys(
        &self,
        current: &str,
        limit: i64,
    ) -> Result<Vec<SealedRow>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT subject_id, field, key_id, nonce, ciphertext FROM personal_data
                  WHERE key_id <> $1 ORDER BY subject_id, field LIMIT $2",
                &[&current, &limit],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(SealedRow {
                    subject_id: stored(SubjectId::parse(row.get::<_, String>(0)), "subject_id")?,
                    field: stored(FieldName::parse(row.get::<_, String>(1)), "field")?,
                    sealed: SealedValue {
                        key_id: row.get(2),
                        nonce: row.get(3),
                        ciphertext: row.get(4),
                    },
                })
            })
            .collect()
    }

    /// Replaces sealed values in one transaction, each only if the row
    /// still holds the value that was read (a concurrent PutPersonalData
    /// wins). Returns how many rows were replaced.
    #[tracing::instrument(name = "store.reseal", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "reseal", rows = rows.len()))]
    pub async fn reseal(&self, rows: &[(SealedRow, SealedValue)]) -> Result<u64> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let mut replaced = 0;
        for (old, new) in rows {
            replaced += tx
                .execute(
                    "UPDATE personal_data SET key_id = $3, nonce = $4, ciphertext = $5
                      WHERE subject_id = $1 AND field = $2 AND key_id = $6 AND nonce = $7",
                    &[
                        &old.subject_id.as_str(),
                        &old.field.as_str(),
                        &new.key_id,
                        &new.nonce,
                        &new.ciphertext,
                        &old.sealed.key_id,
                        &old.sealed.nonce,
                    ],
                )
                .await?;
        }
        tx.commit().await?;
        Ok(replaced)
    }
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
