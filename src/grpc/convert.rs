//! Conversions between prost and domain values.

use chrono::{DateTime, Utc};
use tonic::Request;

use super::pb;
use crate::{
    domain::{self, Actor, Violations},
    policy::{Decision, Outcome, Reason},
};

pub fn timestamp(t: DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    })
}

/// Parses a required enum: unknown numbers and UNSPECIFIED are violations.
pub fn required_enum<P, D>(
    violations: &mut Violations,
    field: &str,
    raw: i32,
    decode: impl Fn(i32) -> Option<P>,
    to_domain: impl Fn(P) -> Option<D>,
) -> Option<D> {
    let parsed = match decode(raw) {
        None => Err(format!("unknown value {raw}")),
        Some(value) => to_domain(value).ok_or_else(|| "must be set".to_string()),
    };
    violations.check(field, parsed)
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

/// The caller named in `x-actor`, or `anonymous`.
pub fn actor<T>(request: &Request<T>, violations: &mut Violations) -> Option<Actor> {
    match request.metadata().get("x-actor") {
        None => Some(Actor::anonymous()),
        Some(value) => {
            let parsed = value
                .to_str()
                .map_err(|_| "must be visible ASCII".to_string())
                .and_then(Actor::parse);
            violations.check("x-actor", parsed)
        }
    }
}

pub fn subject_kind(kind: pb::SubjectKind) -> Option<domain::SubjectKind> {
    match kind {
        pb::SubjectKind::Unspecified => None,
        pb::SubjectKind::Individual => Some(domain::SubjectKind::Individual),
        pb::SubjectKind::Organization => Some(domain::SubjectKind::Organization),
    }
}

pub fn subject_kind_to_pb(kind: domain::SubjectKind) -> pb::SubjectKind {
    match kind {
        domain::SubjectKind::Individual => pb::SubjectKind::Individual,
        domain::SubjectKind::Organization => pb::SubjectKind::Organization,
    }
}

pub fn choice(choice: pb::Choice) -> Option<domain::Choice> {
    match choice {
        pb::Choice::Unspecified => None,
        pb::Choice::Grant => Some(domain::Choice::Grant),
        pb::Choice::Refuse => Some(domain::Choice::Refuse),
    }
}

pub fn choice_to_pb(choice: domain::Choice) -> pb::Choice {
    match choice {
        domain::Choice::Grant => pb::Choice::Grant,
        domain::Choice::Refuse => pb::Choice::Refuse,
    }
}

pub fn channel(channel: pb::Channel) -> Option<domain::Channel> {
    match channel {
        pb::Channel::Unspecified => None,
        pb::Channel::Web => Some(domain::Channel::Web),
        pb::Channel::EmailLink => Some(domain::Channel::EmailLink),
        pb::Channel::Support => Some(domain::Channel::Support),
        pb::Channel::Api => Some(domain::Channel::Api),
        pb::Channel::Import => Some(domain::Channel::Import),
    }
}

pub fn channel_to_pb(channel: domain::Channel) -> pb::Channel {
    match channel {
        domain::Channel::Web => pb::Channel::Web,
        domain::Channel::EmailLink => pb::Channel::EmailLink,
        domain::Channel::Support => pb::Channel::Support,
        domain::Channel::Api => pb::Channel::Api,
        domain::Channel::Import => pb::Channel::Import,
    }
}

pub fn decision_to_pb(outcome: Outcome) -> pb::Decision {
    match outcome {
        Outcome::Allow => pb::Decision::Allow,
        Outcome::Deny => pb::Decision::Deny,
    }
}

pub fn reason_to_pb(reason: Reason) -> pb::Reason {
    match reason {
        Reason::SubjectUnknown => pb::Reason::SubjectUnknown,
        Reason::SubjectErased => pb::Reason::SubjectErased,
        Reason::FieldNotPermitted => pb::Reason::FieldNotPermitted,
        Reason::Contract => pb::Reason::Contract,
        Reason::ConsentGranted => pb::Reason::ConsentGranted,
        Reason::NoConsent => pb::Reason::NoConsent,
        Reason::ConsentRefused => pb::Reason::ConsentRefused,
        Reason::OptedOut => pb::Reason::OptedOut,
        Reason::NotOptedOut => pb::Reason::NotOptedOut,
        Reason::StaleData => pb::Reason::StaleData,
        Reason::NotCollected => pb::Reason::NotCollected,
    }
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
        kind: subject_kind_to_pb(subject.kind).into(),
        notice_version: subject.notice_version.to_string(),
        channel: channel_to_pb(subject.channel).into(),
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
        choice: choice_to_pb(c.choice).into(),
        channel: channel_to_pb(c.channel).into(),
        notice_version: c.notice_version.to_string(),
        evidence: c.evidence.as_str().to_string(),
        recorded_at: timestamp(record.recorded_at),
        actor: c.actor.to_string(),
        request_id: c.request_id.map(|r| r.to_string()).unwrap_or_default(),
        recipient: c.recipient.map(|r| r.to_string()).unwrap_or_default(),
    }
}

pub fn choice_state_to_pb(c: domain::StoredChoice) -> pb::ConsentChoice {
    pb::ConsentChoice {
        purpose: c.purpose.to_string(),
        field: c.field.map(|f| f.to_string()).unwrap_or_default(),
        choice: choice_to_pb(c.choice).into(),
        record_id: c.record_id.to_string(),
        sequence: c.sequence,
        recorded_at: timestamp(c.recorded_at),
    }
}
