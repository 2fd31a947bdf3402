//! Subjects, consent records and the current consent state.

use std::collections::HashMap;

use anyhow::anyhow;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{
    Store,
    idempotency::{self, Claim, RequestDigest},
    rows::{
        RECORD_COLUMNS, optional_field, record_from_row, state_choice_from, stored, stored_enum,
    },
};
use crate::{
    domain::{
        Actor, Channel, Choice, ConsentRecord, ConsistencyToken, NewConsentRecord, NoticeVersion,
        PurposeCode, RecipientId, StoredChoice, Subject, SubjectId, SubjectKind,
        SubjectRegistration, SubjectState,
    },
    error::{Error, Result},
};

/// What a registration stored.
#[derive(Debug, Clone)]
pub struct Registered {
    pub subject: Subject,
    /// True when this call (or the first call, on a retry) created it.
    pub created: bool,
    /// The feed position of the registration and of any refusals carried
    /// over to it: the same on a repeat or a retry.
    pub token: ConsistencyToken,
}

/// One page of a subject's history.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    pub records: Vec<ConsentRecord>,
    /// The sequence to continue after, when there are more records.
    pub next_after: Option<i64>,
}

impl Store {
    /// Inserts the subject, or updates its kind, notice and channel. Returns
    /// the stored subject, whether this call created it and its feed
    /// position.
    #[tracing::instrument(name = "store.register_subject", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "register_subject"))]
    pub async fn register_subject(
        &self,
        reg: &SubjectRegistration,
        actor: &Actor,
        erasure_hash: &[u8],
    ) -> Result<Registered> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if let Some(request_id) = &reg.request_id {
            let digest = RequestDigest::of(
                "RegisterSubject",
                &[
                    reg.subject_id.as_str(),
                    reg.kind.as_str(),
                    reg.notice_version.as_str(),
                    reg.channel.as_str(),
                    actor.as_str(),
                ],
            );
            if let Claim::Replay(result) = idempotency::claim(
                &tx,
                self.request_key.as_ref(),
                request_id,
                &digest,
                Some(&reg.subject_id),
            )
            .await?
            {
                let subject = subject_in(&tx, &reg.subject_id)
                    .await?
                    .ok_or_else(|| anyhow!("idempotency key refers to a missing subject"))?;
                let token = super::erasure::registration_position(&tx, &reg.subject_id).await?;
                return Ok(Registered {
                    subject,
                    created: result == "created",
                    token,
                });
            }
        }
        // `xmax = 0` is true only for a row this statement inserted. The
        // WHERE clause leaves an unchanged subject (and its updated_at) alone.
        let row = tx
            .query_opt(
                &tx.prepare_cached(
                    "INSERT INTO subjects (subject_id, kind, notice_version, channel)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (subject_id) DO UPDATE
                    SET kind = EXCLUDED.kind,
                        notice_version = EXCLUDED.notice_version,
                        channel = EXCLUDED.channel,
                        updated_at = now()
                  WHERE (subjects.kind, subjects.notice_version, subjects.channel)
                        IS DISTINCT FROM (EXCLUDED.kind, EXCLUDED.notice_version, EXCLUDED.channel)
                 RETURNING (xmax = 0) AS created",
                )
                .await?,
                &[
                    &reg.subject_id.as_str(),
                    &reg.kind.as_str(),
                    &reg.notice_version.as_str(),
                    &reg.channel.as_str(),
                ],
            )
            .await?;
        let created = row.is_some_and(|r| r.get::<_, bool>(0));
        if created {
            // An id that was erased before: its refusals still hold.
            super::erasure::carry_refusals(&tx, &reg.subject_id, erasure_hash).await?;
        }
        let subject = subject_in(&tx, &reg.subject_id)
            .await?
            .ok_or_else(|| anyhow!("subject vanished inside its own transaction"))?;
        let token = super::erasure::registration_position(&tx, &reg.subject_id).await?;
        if let Some(request_id) = &reg.request_id {
            let result = if created { "created" } else { "updated" };
            idempotency::name_subject(&tx, request_id, &reg.subject_id).await?;
            idempotency::settle(&tx, request_id, result).await?;
        }
        tx.commit().await?;
        if created {
            // The registration is on the feed: the servers' memory follows it.
            super::feed::wake_streams(&client).await;
        }
        Ok(Registered {
            subject,
            created,
            token,
        })
    }

    #[tracing::instrument(name = "store.subject", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "subject"))]
    pub async fn subject(&self, subject_id: &SubjectId) -> Result<Option<Subject>> {
        let client = self.client().await?;
        subject_in(&*client, subject_id).await
    }

    /// Appends a consent record and updates the current state in the same
    /// transaction. The subject's row is locked first, so records of one
    /// subject commit in sequence order and the state always holds the
    /// latest of them.
    #[tracing::instrument(name = "store.append_consent_record", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "append_consent_record"))]
    pub async fn append_consent_record(&self, new: &NewConsentRecord) -> Result<ConsentRecord> {
        Ok(self.append(new, false).await?.0)
    }

    /// Appends the record unless the subject's current choice for the same
    /// purpose and field already is the same choice; then returns that
    /// choice's record and `false`. Used where a repeat must add nothing (a
    /// second click on an unsubscribe link), decided under the subject's
    /// row lock so two concurrent clicks still add one record.
    #[tracing::instrument(name = "store.append_unless_current", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "append_unless_current"))]
    pub async fn append_unless_current(
        &self,
        new: &NewConsentRecord,
    ) -> Result<(ConsentRecord, bool)> {
        self.append(new, true).await
    }

    async fn append(
        &self,
        new: &NewConsentRecord,
        unless_current: bool,
    ) -> Result<(ConsentRecord, bool)> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if let Some(request_id) = &new.request_id {
            let digest = consent_digest(new);
            if let Claim::Replay(record_id) = idempotency::claim(
                &tx,
                self.request_key.as_ref(),
                request_id,
                &digest,
                Some(&new.subject_id),
            )
            .await?
            {
                return Ok((replayed_record(&tx, &record_id).await?, false));
            }
        }
        // pg_current_xact_id() makes sure this transaction has an id before
        // it takes a sequence number: the change feed relies on that to tell
        // a rolled-back gap from a transaction still in flight.
        let locked = tx
            .query_opt(
                &tx.prepare_cached("SELECT pg_current_xact_id()::text FROM subjects WHERE subject_id = $1 FOR NO KEY UPDATE").await?,
                &[&new.subject_id.as_str()],
            )
            .await?;
        if locked.is_none() {
            return Err(Error::subject_not_found(&new.subject_id));
        }
        let field = new.field.as_ref().map_or("", |f| f.as_str());
        if unless_current {
            let current = tx
                .query_opt(
                    &tx.prepare_cached(&format!(
                        "SELECT {RECORD_COLUMNS} FROM consent_records WHERE subject_id = $1 AND sequence =
                           (SELECT sequence FROM consent_state
                             WHERE subject_id = $1 AND purpose = $2 AND field = $3 AND choice = $4)"
                    )).await?,
                    &[&new.subject_id.as_str(), &new.purpose.as_str(), &field, &new.choice.as_str()],
                )
                .await?;
            if let Some(row) = current {
                return Ok((record_from_row(&row)?, false));
            }
        }
        let record_id = Uuid::now_v7();
        let row = tx
            .query_one(
                &tx.prepare_cached(&format!(
                    "INSERT INTO consent_records (subject_id, record_id, purpose, field, choice,
                         channel, notice_version, evidence, actor, request_id, recipient)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                     RETURNING {RECORD_COLUMNS}"
                ))
                .await?,
                &[
                    &new.subject_id.as_str(),
                    &record_id,
                    &new.purpose.as_str(),
                    &field,
                    &new.choice.as_str(),
                    &new.channel.as_str(),
                    &new.notice_version.as_str(),
                    &new.evidence.as_str(),
                    &new.actor.as_str(),
                    &new.request_id.as_ref().map(|r| r.as_str()),
                    &new.recipient.as_ref().map_or("", |r| r.as_str()),
                ],
            )
            .await?;
        let record = record_from_row(&row)?;
        // consent_state follows the record by a trigger (V9), the only way
        // it can change.
        if let Some(request_id) = &new.request_id {
            idempotency::settle(&tx, request_id, &record.record_id.to_string()).await?;
        }
        tx.commit().await?;
        super::feed::wake_streams(&client).await;
        Ok((record, true))
    }

    /// The current choices of each given subject, in one indexed read. A
    /// subject that is not registered is absent from the map.
    #[tracing::instrument(name = "store.current_state_for", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "current_state_for", subjects = ids.len()))]
    pub async fn current_state_for(
        &self,
        ids: &[&SubjectId],
    ) -> Result<HashMap<SubjectId, SubjectState>> {
        let client = self.client().await?;
        let ids: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
        let rows = client
            .query(
                &client.prepare_cached("SELECT s.subject_id, c.purpose, c.field, c.choice, c.record_id, c.sequence, c.recorded_at
                   FROM subjects s
                   LEFT JOIN consent_state c ON c.subject_id = s.subject_id
                  WHERE s.subject_id = ANY($1)
                  ORDER BY s.subject_id, c.purpose, c.field").await?,
                &[&ids],
            )
            .await?;
        let mut states: HashMap<SubjectId, SubjectState> = HashMap::new();
        for row in rows {
            let subject = stored(SubjectId::parse(row.get::<_, String>(0)), "subject_id")?;
            let state = states.entry(subject).or_default();
            // None: registered, no choices yet.
            state.choices.extend(state_choice_from(&row, 1)?);
        }
        Ok(states)
    }

    /// The latest permission naming `recipient` for each purpose and field
    /// of a subject. They live only in the history (see `append`), and a
    /// subject has few records, so this reads its history by primary key.
    #[tracing::instrument(name = "store.recipient_choices", skip_all)]
    pub async fn recipient_choices(
        &self,
        subject_id: &SubjectId,
        recipient: &RecipientId,
    ) -> Result<Vec<StoredChoice>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT DISTINCT ON (purpose, field)
                        purpose, field, choice, record_id, sequence, recorded_at
                   FROM consent_records
                  WHERE subject_id = $1 AND recipient = $2
                  ORDER BY purpose, field, sequence DESC",
                    )
                    .await?,
                &[&subject_id.as_str(), &recipient.as_str()],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(StoredChoice {
                    purpose: stored(PurposeCode::parse(row.get::<_, String>(0)), "purpose")?,
                    field: optional_field(row.get(1))?,
                    choice: stored_enum(Choice::from_stored(row.get(2)), "choice")?,
                    record_id: row.get(3),
                    sequence: row.get(4),
                    recorded_at: row.get(5),
                    recipient: Some(recipient.clone()),
                })
            })
            .collect()
    }

    /// The random surrogate keys that unsubscribe tokens use, for the
    /// given subjects. Unregistered subjects are absent.
    #[tracing::instrument(name = "store.subject_keys", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "subject_keys", subjects = ids.len()))]
    pub async fn subject_keys(&self, ids: &[&SubjectId]) -> Result<HashMap<SubjectId, Uuid>> {
        let client = self.client().await?;
        let ids: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT subject_id, subject_key FROM subjects WHERE subject_id = ANY($1)",
                    )
                    .await?,
                &[&ids],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    stored(SubjectId::parse(row.get::<_, String>(0)), "subject_id")?,
                    row.get(1),
                ))
            })
            .collect()
    }

    /// The subject an unsubscribe token's surrogate key names.
    #[tracing::instrument(name = "store.subject_by_key", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "subject_by_key"))]
    pub async fn subject_by_key(&self, key: Uuid) -> Result<Option<SubjectId>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &client
                    .prepare_cached("SELECT subject_id FROM subjects WHERE subject_key = $1")
                    .await?,
                &[&key],
            )
            .await?;
        row.map(|r| stored(SubjectId::parse(r.get::<_, String>(0)), "subject_id"))
            .transpose()
    }

    /// Up to `limit` records of a subject after `after` (a sequence), oldest
    /// first.
    #[tracing::instrument(name = "store.consent_history", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "consent_history", limit))]
    pub async fn consent_history(
        &self,
        subject_id: &SubjectId,
        after: i64,
        limit: usize,
    ) -> Result<HistoryPage> {
        let client = self.client().await?;
        // One extra row tells whether another page follows.
        let fetch = i64::try_from(limit + 1).map_err(|e| anyhow!(e))?;
        let rows = client
            .query(
                &client
                    .prepare_cached(&format!(
                        "SELECT {RECORD_COLUMNS} FROM consent_records
                      WHERE subject_id = $1 AND sequence > $2
                      ORDER BY sequence LIMIT $3"
                    ))
                    .await?,
                &[&subject_id.as_str(), &after, &fetch],
            )
            .await?;
        let mut records = rows
            .iter()
            .map(record_from_row)
            .collect::<Result<Vec<_>>>()?;
        let next_after = if records.len() > limit {
            records.truncate(limit);
            records.last().map(|r| r.sequence)
        } else {
            None
        };
        Ok(HistoryPage {
            records,
            next_after,
        })
    }
}

pub(super) fn consent_digest(new: &NewConsentRecord) -> RequestDigest {
    // The recipient is added only when set, so keys used before recipients
    // existed keep their digests.
    let recipient = new.recipient.as_ref().map(|r| r.as_str());
    RequestDigest::of(
        "RecordConsent",
        &[
            new.subject_id.as_str(),
            new.purpose.as_str(),
            new.field.as_ref().map_or("", |f| f.as_str()),
            new.choice.as_str(),
            new.channel.as_str(),
            new.notice_version.as_str(),
            new.evidence.as_str(),
            new.actor.as_str(),
        ]
        .into_iter()
        .chain(recipient)
        .collect::<Vec<_>>(),
    )
}

/// One subject, read through a plain client or inside a transaction.
async fn subject_in(
    client: &impl deadpool_postgres::GenericClient,
    id: &SubjectId,
) -> Result<Option<Subject>> {
    let row = client
        .query_opt(
            &client
                .prepare_cached(
                    "SELECT subject_id, kind, notice_version, channel, registered_at, updated_at
               FROM subjects WHERE subject_id = $1",
                )
                .await?,
            &[&id.as_str()],
        )
        .await?;
    row.map(|r| subject_from_row(&r)).transpose()
}

fn subject_from_row(row: &Row) -> Result<Subject> {
    Ok(Subject {
        subject_id: stored(SubjectId::parse(row.get::<_, String>(0)), "subject_id")?,
        kind: stored_enum(SubjectKind::from_stored(row.get(1)), "kind")?,
        notice_version: stored(
            NoticeVersion::parse(row.get::<_, String>(2)),
            "notice_version",
        )?,
        channel: stored_enum(Channel::from_stored(row.get(3)), "channel")?,
        registered_at: row.get(4),
        updated_at: row.get(5),
    })
}

/// The record an idempotency key names by its result, for a retry's answer.
pub(super) async fn replayed_record(
    tx: &deadpool_postgres::Transaction<'_>,
    result: &str,
) -> Result<ConsentRecord> {
    let record_id: Uuid = result
        .parse()
        .map_err(|e| anyhow!("idempotency key holds a bad record id: {e}"))?;
    let row = tx
        .query_one(
            &tx.prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS} FROM consent_records WHERE record_id = $1"
            ))
            .await?,
            &[&record_id],
        )
        .await?;
    record_from_row(&row)
}
