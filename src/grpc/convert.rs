//! Conversions between prost and domain values.

use chrono::{DateTime, Utc};
use tonic::Request;

use super::{auth::Permit, enums::PbEnum as _, pb};
use crate::{
    domain::{self, Actor, Violations},
    error::Error,
    policy::Decision,
};

pub fn timestamp(t: DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    })
}

/// An optional string: empty means absent.
pub fn optional<T>(
    violations: &mut Violations,
    field: &str,
    raw: String,
    parse: impl Fn(String) -> Result<T, String>,
) -> Option<Option<T>> {
    if raw.is_empty() {
        Some(None)
    } else {
        violations.check(field, parse(raw)).map(Some)
    }
}

/// The parsed request when nothing was violated, else every violation.
/// `parsed` is `None` exactly when some part failed to parse, and then
/// `violations` says which.
pub fn done<T>(violations: Violations, parsed: Option<T>) -> Result<T, Error> {
    match parsed {
        Some(value) if violations.is_empty() => Ok(value),
        _ => Err(violations.into()),
    }
}

/// Who makes the call: the authenticated caller, with `x-actor` as its
/// "on behalf of" note. Served without callers, the caller named in
/// `x-actor`, or `anonymous`.
pub fn actor<T>(request: &Request<T>, violations: &mut Violations) -> Option<Actor> {
    let x_actor = match request.metadata().get("x-actor") {
        None => None,
        Some(value) => match value.to_str() {
            Ok(text) => Some(text),
            Err(_) => {
                violations.push("x-actor", "must be visible ASCII");
                return None;
            }
        },
    };
    let caller = request
        .extensions()
        .get::<Permit>()
        .and_then(|permit| permit.caller().map(|c| c.id.clone()));
    let parsed = match (caller, x_actor) {
        (Some(caller), note) => Actor::acting(&caller, note),
        (None, Some(named)) => Actor::parse(named),
        (None, None) => Ok(Actor::anonymous()),
    };
    violations.check("x-actor", parsed)
}

pub fn record_id(decision: &Decision) -> String {
    decision
        .record_id
        .map(|id| id.to_string())
        .unwrap_or_default()
}

pub fn subject_to_pb(subject: domain::Subject) -> pb::Subject {
    pb::Subject {
        subject_id: subject.subject_id.to_string(),
        kind: subject.kind.to_wire(),
        notice_version: subject.notice_version.to_string(),
        channel: subject.channel.to_wire(),
        registered_at: timestamp(subject.registered_at),
        updated_at: timestamp(subject.updated_at),
    }
}

pub fn record_to_pb(record: domain::ConsentRecord) -> pb::ConsentRecord {
    let c = record.content;
    pb::ConsentRecord {
        record_id: record.record_id.to_string(),
        sequence: record.sequence,
        subject_id: c.subject_id.to_string(),
        purpose: c.purpose.to_string(),
        field: c.field.map(|f| f.to_string()).unwrap_or_default(),
        choice: c.choice.to_wire(),
        channel: c.channel.to_wire(),
        notice_version: c.notice_version.to_string(),
        evidence: c.evidence.as_str().to_string(),
        recorded_at: timestamp(record.recorded_at),
        actor: c.actor.to_string(),
        request_id: c.request_id.map(|r| r.to_string()).unwrap_or_default(),
        recipient: c.recipient.map(|r| r.to_string()).unwrap_or_default(),
    }
}

/// `None` for the events only the servers' memory follows.
pub fn feed_event_to_pb(event: domain::FeedEvent) -> Option<pb::WatchChangesResponse> {
    use pb::watch_changes_response::Change;
    let change = match event {
        domain::FeedEvent::Record(record) => Change::Record(record_to_pb(record)),
        domain::FeedEvent::Erasure(erasure) => Change::Erasure(pb::SubjectErased {
            sequence: erasure.sequence,
            pseudonym: erasure.pseudonym.to_string(),
            erased_at: timestamp(erasure.erased_at),
            record_sequences: erasure.records.into_iter().map(|(s, _)| s).collect(),
        }),
        domain::FeedEvent::Registered(_) | domain::FeedEvent::FieldStored(_) => return None,
    };
    Some(pb::WatchChangesResponse {
        change: Some(change),
    })
}

pub fn choice_state_to_pb(c: domain::StoredChoice) -> pb::ConsentChoice {
    pb::ConsentChoice {
        purpose: c.purpose.to_string(),
        field: c.field.map(|f| f.to_string()).unwrap_or_default(),
        choice: c.choice.to_wire(),
        record_id: c.record_id.to_string(),
        sequence: c.sequence,
        recorded_at: timestamp(c.recorded_at),
    }
}
