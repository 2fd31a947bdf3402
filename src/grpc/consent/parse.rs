//! ConsentService's requests, parsed and validated into domain values:
//! every violation of a request named in one `INVALID_ARGUMENT`.

use tonic::Request;

use crate::{
    domain::{
        Channel, Choice, Consistency, Evidence, FieldName, NewConsentRecord, NoticeVersion,
        PurposeCode, RecipientId, RequestId, SubjectId, SubjectKind, SubjectRegistration,
        Violations,
    },
    error::{Error, Result},
    grpc::{
        consistency::parse_consistency,
        convert::{self, done, optional},
        enums::{self},
        page::PageToken,
        pb,
    },
    policy::Policy,
    service::{
        BATCH_ITEMS, CheckQuery, WATCH_PURPOSES, preferences,
        unsubscribe::{self, LinkRequest, MAX_CAMPAIGN_CHARS},
    },
};

/// A history page when the request names no size.
const DEFAULT_PAGE_SIZE: usize = 100;

pub(in crate::grpc) fn parse_registration(
    request: Request<pb::RegisterSubjectRequest>,
) -> Result<(SubjectRegistration, crate::domain::Actor)> {
    let mut v = Violations::new();
    let actor = convert::actor(&request, &mut v);
    let r = request.into_inner();
    let subject_id = v.check("subject_id", SubjectId::parse(r.subject_id));
    let kind = enums::required::<SubjectKind>(&mut v, "kind", r.kind);
    let notice_version = v.check("notice_version", NoticeVersion::parse(r.notice_version));
    let channel = enums::required::<Channel>(&mut v, "channel", r.channel);
    let request_id = optional(&mut v, "request_id", r.request_id, RequestId::parse);
    let parsed = (|| {
        let registration = SubjectRegistration {
            subject_id: subject_id?,
            kind: kind?,
            notice_version: notice_version?,
            channel: channel?,
            request_id: request_id?,
        };
        Some((registration, actor?))
    })();
    done(v, parsed)
}

/// The subject, the sequence to continue after, and the page size.
pub(in crate::grpc) fn parse_history(
    r: pb::ListConsentHistoryRequest,
) -> Result<(SubjectId, i64, usize)> {
    let mut v = Violations::new();
    let subject_id = v.check("subject_id", SubjectId::parse(r.subject_id));
    let page_size = v.check(
        "page_size",
        PageToken::page_size(r.page_size, DEFAULT_PAGE_SIZE, 1000),
    );
    // The token is bound to the subject, so it can only be read once that parsed.
    let after = match &subject_id {
        Some(_) if r.page_token.is_empty() => Some(0),
        Some(subject_id) => v.check(
            "page_token",
            PageToken::decode(&r.page_token, subject_id.as_str()).and_then(|c| {
                c.parse()
                    .map_err(|_| "is not a token this service issued".into())
            }),
        ),
        None => None,
    };
    let parsed = (|| Some((subject_id?, after?, page_size?)))();
    done(v, parsed)
}

/// The subject ids of a link request, and how many the caller sent. Past
/// `max` none is parsed: the count alone is the one violation.
struct SubjectIds {
    sent: usize,
    /// `None` when some id did not parse, or there were too many.
    parsed: Option<Vec<SubjectId>>,
}

fn subject_ids(v: &mut Violations, max: usize, raw: Vec<String>) -> SubjectIds {
    let sent = raw.len();
    if sent > max {
        return SubjectIds { sent, parsed: None };
    }
    let parsed = (raw.into_iter().enumerate())
        .map(|(i, id)| v.check(format!("subject_ids[{i}]"), SubjectId::parse(id)))
        .collect::<Vec<_>>();
    SubjectIds {
        sent,
        parsed: parsed.into_iter().collect(),
    }
}

/// A campaign name: optional, short, printable. It travels inside tokens
/// and into evidence, so it is held to the evidence rules and a length cap.
fn campaign(raw: String) -> Result<String, String> {
    let chars = raw.chars().count();
    if chars > MAX_CAMPAIGN_CHARS {
        return Err(format!(
            "must be at most {MAX_CAMPAIGN_CHARS} characters (got {chars})"
        ));
    }
    if raw.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(raw)
}

/// Each parser collects every violation: the fields that fail to parse, and
/// what the policy refuses among those that did, in one answer.
pub(in crate::grpc) fn parse_watch(
    policy: &Policy,
    r: pb::WatchChangesRequest,
) -> Result<(i64, Vec<PurposeCode>)> {
    let mut v = Violations::new();
    if !WATCH_PURPOSES.check(&mut v, r.purposes.len()) {
        return done(v, None);
    }
    let purposes: Vec<(usize, PurposeCode)> = (r.purposes.into_iter().enumerate())
        .filter_map(|(i, p)| Some((i, v.check(format!("purposes[{i}]"), PurposeCode::parse(p))?)))
        .collect();
    policy.check_watch(&mut v, r.after, purposes.iter().map(|(i, p)| (*i, p)));
    let purposes = purposes.into_iter().map(|(_, p)| p).collect();
    done(v, Some((r.after, purposes)))
}

pub(in crate::grpc) fn parse_links(
    policy: &Policy,
    r: pb::CreateUnsubscribeLinksRequest,
) -> Result<LinkRequest> {
    let mut v = Violations::new();
    let purpose = v.check("purpose", PurposeCode::parse(r.purpose));
    let field = optional(&mut v, "field", r.field, FieldName::parse);
    let campaign = v.check("campaign", campaign(r.campaign));
    let subject_ids = subject_ids(&mut v, unsubscribe::LINK_SUBJECTS.max, r.subject_ids);
    policy.check_unsubscribe_parts(
        &mut v,
        purpose.as_ref(),
        field.as_ref().and_then(Option::as_ref),
    );
    unsubscribe::check_link_count(&mut v, subject_ids.sent);
    let parsed = (|| {
        Some(LinkRequest {
            purpose: purpose?,
            field: field?,
            campaign: campaign?,
            subject_ids: subject_ids.parsed?,
        })
    })();
    done(v, parsed)
}

pub(in crate::grpc) fn parse_preference_links(
    r: pb::CreatePreferenceLinksRequest,
) -> Result<(Vec<SubjectId>, Option<String>)> {
    let mut v = Violations::new();
    let campaign = v.check("campaign", campaign(r.campaign));
    let subject_ids = subject_ids(&mut v, preferences::LINK_SUBJECTS.max, r.subject_ids);
    preferences::check_link_count(&mut v, subject_ids.sent);
    let campaign = campaign.map(|c| Some(c).filter(|c| !c.is_empty()));
    let parsed = (|| Some((subject_ids.parsed?, campaign?)))();
    done(v, parsed)
}

pub(in crate::grpc) fn parse_record(
    policy: &Policy,
    request: Request<pb::RecordConsentRequest>,
) -> Result<NewConsentRecord> {
    let mut v = Violations::new();
    let actor = convert::actor(&request, &mut v);
    let r = request.into_inner();
    let subject_id = v.check("subject_id", SubjectId::parse(r.subject_id));
    let purpose = v.check("purpose", PurposeCode::parse(r.purpose));
    let field = optional(&mut v, "field", r.field, FieldName::parse);
    let choice = enums::required::<Choice>(&mut v, "choice", r.choice);
    let channel = enums::required::<Channel>(&mut v, "channel", r.channel);
    let notice_version = v.check("notice_version", NoticeVersion::parse(r.notice_version));
    let evidence = v.check("evidence", Evidence::parse(r.evidence));
    let request_id = optional(&mut v, "request_id", r.request_id, RequestId::parse);
    let recipient = optional(&mut v, "recipient", r.recipient, RecipientId::parse);
    policy.check_record_parts(
        &mut v,
        purpose.as_ref(),
        field.as_ref().and_then(Option::as_ref),
        recipient.as_ref().and_then(Option::as_ref),
    );
    let parsed = (|| {
        Some(NewConsentRecord {
            subject_id: subject_id?,
            purpose: purpose?,
            field: field?,
            choice: choice?,
            channel: channel?,
            notice_version: notice_version?,
            evidence: evidence?,
            actor: actor?,
            request_id: request_id?,
            recipient: recipient?,
        })
    })();
    done(v, parsed)
}

/// A batch of 1 to [`BATCH_ITEMS`]`.max` checks and their correlation ids.
pub(in crate::grpc) fn parse_batch(
    policy: &Policy,
    r: pb::BatchCheckRequest,
) -> Result<(Vec<CheckQuery>, Vec<String>, Consistency)> {
    let (items, consistency) = (r.items, r.consistency);
    if let Some(violation) = BATCH_ITEMS.violation(items.len()) {
        return Err(Error::InvalidArgument(vec![violation]));
    }
    let mut v = Violations::new();
    let mut queries = Vec::with_capacity(items.len());
    let mut correlation_ids = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        if item.correlation_id.chars().count() > 128 {
            v.push(
                format!("items[{i}].correlation_id"),
                "must be at most 128 characters",
            );
        }
        correlation_ids.push(item.correlation_id);
        let prefix = format!("items[{i}].");
        queries.extend(parse_query(
            policy,
            &mut v,
            &prefix,
            item.subject_id,
            item.purpose,
            item.field,
        ));
    }
    let consistency = parse_consistency(&mut v, consistency);
    done(v, consistency.map(|c| (queries, correlation_ids, c)))
}

/// One check; violations are named `{prefix}subject_id` and so on.
fn parse_query(
    policy: &Policy,
    v: &mut Violations,
    prefix: &str,
    subject_id: String,
    purpose: String,
    field: String,
) -> Option<CheckQuery> {
    // Field names are formatted only for a violation: on every valid
    // Check, three of them cost more than the parsing.
    let name = |field: &str| format!("{prefix}{field}");
    let subject_id = v.check_named(|| name("subject_id"), SubjectId::parse(subject_id));
    let purpose = v.check_named(|| name("purpose"), PurposeCode::parse(purpose));
    let field = v.check_named(|| name("field"), FieldName::parse(field));
    policy.check_query_named(v, name, purpose.as_ref(), field.as_ref());
    Some(CheckQuery {
        subject_id: subject_id?,
        purpose: purpose?,
        field: field?,
    })
}

/// One Check.
pub(in crate::grpc) fn parse_check(
    policy: &Policy,
    r: pb::CheckRequest,
) -> Result<(CheckQuery, Consistency)> {
    let mut v = Violations::new();
    let query = parse_query(policy, &mut v, "", r.subject_id, r.purpose, r.field);
    let consistency = parse_consistency(&mut v, r.consistency);
    done(v, query.zip(consistency))
}

/// The subject a read names.
pub(in crate::grpc) fn parse_subject(raw: String) -> Result<SubjectId> {
    SubjectId::parse(raw).map_err(|e| Error::invalid("subject_id", e))
}
