//! Row decoding shared by the store modules: a column into a validated
//! domain value, and a `consent_records` row into a record.

use anyhow::anyhow;
use tokio_postgres::Row;

use crate::{
    domain::{
        Actor, Channel, Choice, ConsentRecord, Evidence, FieldData, FieldName, NewConsentRecord,
        NoticeVersion, PurposeCode, RecipientId, RequestId, StoredChoice, SubjectId,
    },
    error::{Error, Result},
};

/// What `record_from_row` reads, so every query on the history selects it.
pub(super) const RECORD_COLUMNS: &str =
    "subject_id, sequence, record_id, purpose, field, choice, channel,
     notice_version, evidence, actor, request_id, recorded_at, recipient";

/// A stored value that no longer parses means the database was changed
/// behind the service's back: an internal error, never a caller's.
pub(super) fn stored<T>(parsed: Result<T, String>, column: &str) -> Result<T> {
    parsed.map_err(|why| Error::Internal(anyhow!("stored {column} is invalid: {why}")))
}

pub(super) fn stored_enum<T>(parsed: Option<T>, column: &str) -> Result<T> {
    parsed.ok_or_else(|| Error::Internal(anyhow!("stored {column} has an unknown value")))
}

/// The empty string stands for "every field" (the column is NOT NULL so that
/// it can be part of a key).
pub(super) fn optional_field(field: String) -> Result<Option<FieldName>> {
    if field.is_empty() {
        Ok(None)
    } else {
        stored(FieldName::parse(field), "field").map(Some)
    }
}

pub(super) fn record_from_row(row: &Row) -> Result<ConsentRecord> {
    Ok(ConsentRecord {
        sequence: row.get("sequence"),
        record_id: row.get("record_id"),
        recorded_at: row.get("recorded_at"),
        content: NewConsentRecord {
            subject_id: stored(
                SubjectId::parse(row.get::<_, String>("subject_id")),
                "subject_id",
            )?,
            purpose: stored(
                PurposeCode::parse(row.get::<_, String>("purpose")),
                "purpose",
            )?,
            field: optional_field(row.get("field"))?,
            choice: stored_enum(Choice::from_stored(row.get("choice")), "choice")?,
            channel: stored_enum(Channel::from_stored(row.get("channel")), "channel")?,
            notice_version: stored(
                NoticeVersion::parse(row.get::<_, String>("notice_version")),
                "notice_version",
            )?,
            evidence: stored(
                Evidence::parse(row.get::<_, String>("evidence")),
                "evidence",
            )?,
            actor: stored(Actor::parse(row.get::<_, String>("actor")), "actor")?,
            request_id: row
                .get::<_, Option<String>>("request_id")
                .map(|r| stored(RequestId::parse(r), "request_id"))
                .transpose()?,
            recipient: match row.get::<_, String>("recipient") {
                r if r.is_empty() => None,
                r => Some(stored(RecipientId::parse(r), "recipient")?),
            },
        },
    })
}

/// A stored field's collection and age from `field, collected_for,
/// collected_at, verified_at`, starting at column `first`.
pub(super) fn field_data_from(row: &Row, first: usize) -> Result<FieldData> {
    let collected_for = row
        .get::<_, Vec<String>>(first + 1)
        .into_iter()
        .map(|p| stored(PurposeCode::parse(p), "collected_for"))
        .collect::<Result<_>>()?;
    Ok(FieldData {
        field: stored(FieldName::parse(row.get::<_, String>(first)), "field")?,
        collected_for,
        collected_at: row.get(first + 2),
        verified_at: row.get(first + 3),
    })
}

/// A current choice from `purpose, field, choice, record_id, sequence,
/// recorded_at` of `consent_state`, starting at column `first`; `None` for
/// a subject with no choice (the columns of an outer join's missing row).
pub(super) fn state_choice_from(row: &Row, first: usize) -> Result<Option<StoredChoice>> {
    let Some(purpose) = row.get::<_, Option<String>>(first) else {
        return Ok(None);
    };
    Ok(Some(StoredChoice {
        purpose: stored(PurposeCode::parse(purpose), "purpose")?,
        field: optional_field(row.get(first + 1))?,
        choice: stored_enum(Choice::from_stored(row.get(first + 2)), "choice")?,
        record_id: row.get(first + 3),
        sequence: row.get(first + 4),
        recorded_at: row.get(first + 5),
        recipient: None,
    }))
}
