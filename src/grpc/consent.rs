//! `consent.v1.ConsentService` over the domain service.

use opentelemetry::{KeyValue, trace::TraceContextExt as _};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::{
    auth::Permit,
    bulk::BulkStream,
    consistency::parse_consistency,
    convert::{self, done, optional},
    enums::{self, PbEnum as _},
    observe::{Observed, observe, observe_stream},
    page::PageToken,
    pb::{self, consent_service_server::ConsentService as Rpc},
};
use crate::{
    domain::{
        Channel, Choice, Consistency, ConsistencyToken, Evidence, FieldName, NewConsentRecord,
        NoticeVersion, PurposeCode, RecipientId, RequestId, SubjectId, SubjectKind,
        SubjectRegistration, Violations,
    },
    error::{Error, Result},
    policy::{Decision, Policy},
    service::{
        BATCH_ITEMS, CheckQuery, ConsentService, WATCH_PURPOSES,
        preferences::{self, Preferences},
        unsubscribe::{self, LinkRequest, MAX_CAMPAIGN_CHARS, Unsubscribes},
    },
    telemetry::SubjectRefs,
};

/// Serves `consent.v1.ConsentService`.
#[derive(Clone)]
pub struct ConsentGrpc {
    pub(super) service: ConsentService,
    unsubscribes: Unsubscribes,
    preferences: Preferences,
    /// Pseudonyms for subjects in spans: never the external id (R8).
    refs: SubjectRefs,
    /// Cancelled at shutdown: BulkCheck streams then end, so that an idle
    /// one cannot hold the server's drain open.
    pub(super) stop: CancellationToken,
}

impl ConsentGrpc {
    pub fn new(
        service: ConsentService,
        unsubscribes: Unsubscribes,
        preferences: Preferences,
        refs: SubjectRefs,
    ) -> Self {
        Self {
            service,
            unsubscribes,
            preferences,
            refs,
            stop: CancellationToken::new(),
        }
    }

    /// Ends BulkCheck streams when `stop` is cancelled.
    pub fn ending_streams_at(mut self, stop: CancellationToken) -> Self {
        self.stop = stop;
        self
    }

    pub fn into_server(self) -> pb::consent_service_server::ConsentServiceServer<Self> {
        pb::consent_service_server::ConsentServiceServer::new(self)
    }
}

const DEFAULT_PAGE_SIZE: usize = 100;
const SERVICE: &str = "consent.v1.ConsentService";

/// The stream WatchChanges answers with.
pub type WatchStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<pb::WatchChangesResponse, Status>> + Send>,
>;

#[tonic::async_trait]
impl Rpc for ConsentGrpc {
    type WatchChangesStream = WatchStream;
    type BulkCheckStream = Observed<BulkStream>;

    async fn watch_changes(
        &self,
        request: Request<pb::WatchChangesRequest>,
    ) -> Result<Response<Self::WatchChangesStream>, Status> {
        observe(SERVICE, "WatchChanges", request, |r| async move {
            let permit = Permit::of(&r)?;
            let (after, purposes) = parse_watch(self.service.policy(), r.into_inner())?;
            let purposes = permit.watchable(purposes)?;
            let events = self.service.watch_changes(after, purposes)?;
            // The service sends only public events; the rest cannot occur.
            let stream = tokio_stream::StreamExt::filter_map(events, |item| match item {
                Ok(event) => convert::feed_event_to_pb(event).map(Ok),
                Err(e) => Some(Err(Status::from(e))),
            });
            Ok(Response::new(Box::pin(stream) as WatchStream))
        })
        .await
    }

    async fn create_unsubscribe_links(
        &self,
        request: Request<pb::CreateUnsubscribeLinksRequest>,
    ) -> Result<Response<pb::CreateUnsubscribeLinksResponse>, Status> {
        observe(SERVICE, "CreateUnsubscribeLinks", request, |r| async move {
            let permit = Permit::of(&r)?;
            let request = parse_links(self.service.policy(), r.into_inner())?;
            permit.allow(std::slice::from_ref(&request.purpose), &[], &[])?;
            let (links, instructions) = self.unsubscribes.create_links(&request).await?;
            Ok(Response::new(pb::CreateUnsubscribeLinksResponse {
                links: links
                    .into_iter()
                    .map(|link| pb::UnsubscribeLink {
                        subject_id: link.subject_id.to_string(),
                        list_unsubscribe: format!("<{}>", link.url),
                        list_unsubscribe_post: "List-Unsubscribe=One-Click".into(),
                        url: link.url,
                        token: link.token,
                    })
                    .collect(),
                refusal_instructions: instructions,
            }))
        })
        .await
    }

    async fn create_preference_links(
        &self,
        request: Request<pb::CreatePreferenceLinksRequest>,
    ) -> Result<Response<pb::CreatePreferenceLinksResponse>, Status> {
        observe(SERVICE, "CreatePreferenceLinks", request, |r| async move {
            let (subject_ids, campaign) = parse_preference_links(r.into_inner())?;
            let links = self
                .preferences
                .create_links(&subject_ids, campaign)
                .await?;
            Ok(Response::new(pb::CreatePreferenceLinksResponse {
                links: links
                    .into_iter()
                    .map(|link| pb::PreferenceLink {
                        subject_id: link.subject_id.to_string(),
                        url: link.url,
                        expires_at: convert::timestamp(link.expires_at),
                    })
                    .collect(),
            }))
        })
        .await
    }

    async fn register_subject(
        &self,
        request: Request<pb::RegisterSubjectRequest>,
    ) -> Result<Response<pb::RegisterSubjectResponse>, Status> {
        observe(SERVICE, "RegisterSubject", request, |r| async move {
            let (registration, actor) = parse_registration(r)?;
            let registered = self.service.register_subject(&registration, &actor).await?;
            Ok(Response::new(pb::RegisterSubjectResponse {
                subject: Some(convert::subject_to_pb(registered.subject)),
                created: registered.created,
                consistency_token: registered.token.encode(),
            }))
        })
        .await
    }

    async fn record_consent(
        &self,
        request: Request<pb::RecordConsentRequest>,
    ) -> Result<Response<pb::RecordConsentResponse>, Status> {
        observe(SERVICE, "RecordConsent", request, |r| async move {
            let permit = Permit::of(&r)?;
            let record = parse_record(self.service.policy(), r)?;
            permit.allow(std::slice::from_ref(&record.purpose), &[], &[])?;
            let record = self.service.record_consent(&record).await?;
            Ok(Response::new(pb::RecordConsentResponse {
                // The record's own position: a retry answers the first
                // record, so the same token.
                consistency_token: ConsistencyToken::at(record.sequence).encode(),
                record: Some(convert::record_to_pb(record)),
            }))
        })
        .await
    }

    async fn check(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        observe(SERVICE, "Check", request, |r| async move {
            let permit = Permit::of(&r)?;
            let (query, consistency) = parse_check(self.service.policy(), r.into_inner())?;
            permit.allow(std::slice::from_ref(&query.purpose), &[], &[])?;
            let (decision, at) = self.service.check(&query, consistency).await?;
            // The attributes cost a keyed hash and a few strings: only for a
            // span that is exported (and the current span is not looked up
            // at all when nothing exports spans).
            if crate::telemetry::spans_exported() {
                let span = tracing::Span::current();
                if span.context().span().is_recording() {
                    for attribute in self.decision_attributes(&query, &decision) {
                        span.set_attribute(attribute.key, attribute.value);
                    }
                }
            }
            Ok(Response::new(pb::CheckResponse {
                decision: decision.outcome.to_wire(),
                reason: decision.reason.to_wire(),
                record_id: convert::record_id(&decision),
                policy_version: self.service.policy().version().to_string(),
                needs_verification: decision.needs_verification,
                consistency_token: at.encode(),
            }))
        })
        .await
    }

    async fn batch_check(
        &self,
        request: Request<pb::BatchCheckRequest>,
    ) -> Result<Response<pb::BatchCheckResponse>, Status> {
        observe(SERVICE, "BatchCheck", request, |r| async move {
            let permit = Permit::of(&r)?;
            let (queries, correlation_ids, consistency) =
                parse_batch(self.service.policy(), r.into_inner())?;
            // One item the caller may not ask about refuses the whole batch.
            let purposes: Vec<PurposeCode> = queries.iter().map(|q| q.purpose.clone()).collect();
            permit.allow(&purposes, &[], &[])?;
            let (decisions, at) = self.service.batch_check(&queries, consistency).await?;
            let span = tracing::Span::current();
            span.set_attribute("consent.batch.size", queries.len() as i64);
            span.set_attribute(
                "consent.policy_version",
                self.service.policy().version().to_string(),
            );
            if span.context().span().is_recording() {
                for (query, decision) in queries.iter().zip(&decisions) {
                    span.add_event(
                        "consent.decision",
                        self.decision_attributes(query, decision),
                    );
                }
            }
            let results = decisions
                .iter()
                .zip(correlation_ids)
                .map(|(decision, correlation_id)| pb::BatchCheckResult {
                    correlation_id,
                    decision: decision.outcome.to_wire(),
                    reason: decision.reason.to_wire(),
                    record_id: convert::record_id(decision),
                    needs_verification: decision.needs_verification,
                })
                .collect();
            Ok(Response::new(pb::BatchCheckResponse {
                results,
                policy_version: self.service.policy().version().to_string(),
                consistency_token: at.encode(),
            }))
        })
        .await
    }

    async fn bulk_check(
        &self,
        request: Request<Streaming<pb::BulkCheckRequest>>,
    ) -> Result<Response<Self::BulkCheckStream>, Status> {
        // One span for the whole stream, one child span per request.
        observe_stream(SERVICE, "BulkCheck", request, |r| async move {
            let permit = Permit::of(&r)?;
            Ok(Response::new(self.bulk_stream(permit, r.into_inner())))
        })
        .await
    }

    async fn get_consent_state(
        &self,
        request: Request<pb::GetConsentStateRequest>,
    ) -> Result<Response<pb::GetConsentStateResponse>, Status> {
        observe(SERVICE, "GetConsentState", request, |r| async move {
            let subject_id = parse_subject(r.into_inner().subject_id)?;
            let overview = self.service.consent_state(&subject_id).await?;
            let decisions = overview
                .decisions
                .into_iter()
                .map(|(purpose, field, decision)| pb::EffectiveDecision {
                    purpose: purpose.to_string(),
                    field: field.to_string(),
                    decision: decision.outcome.to_wire(),
                    reason: decision.reason.to_wire(),
                    record_id: convert::record_id(&decision),
                })
                .collect();
            Ok(Response::new(pb::GetConsentStateResponse {
                subject: Some(convert::subject_to_pb(overview.subject)),
                choices: (overview.choices.into_iter())
                    .map(convert::choice_state_to_pb)
                    .collect(),
                decisions,
                policy_version: self.service.policy().version().to_string(),
            }))
        })
        .await
    }

    async fn list_consent_history(
        &self,
        request: Request<pb::ListConsentHistoryRequest>,
    ) -> Result<Response<pb::ListConsentHistoryResponse>, Status> {
        observe(SERVICE, "ListConsentHistory", request, |r| async move {
            let (subject_id, after, page_size) = parse_history(r.into_inner())?;
            let page = self.service.history(&subject_id, after, page_size).await?;
            Ok(Response::new(pb::ListConsentHistoryResponse {
                records: page
                    .records
                    .into_iter()
                    .map(convert::record_to_pb)
                    .collect(),
                next_page_token: page
                    .next_after
                    .map(|after| PageToken::encode(&after.to_string(), subject_id.as_str()))
                    .unwrap_or_default(),
            }))
        })
        .await
    }
}

impl ConsentGrpc {
    /// The span attributes of one decision. The subject appears only as its
    /// keyed pseudonym.
    fn decision_attributes(&self, query: &CheckQuery, decision: &Decision) -> Vec<KeyValue> {
        vec![
            KeyValue::new("consent.subject_ref", self.refs.of(&query.subject_id)),
            KeyValue::new("consent.purpose", query.purpose.to_string()),
            KeyValue::new("consent.field", query.field.to_string()),
            KeyValue::new("consent.decision", decision.outcome.as_str()),
            KeyValue::new("consent.reason", decision.reason.as_str()),
            KeyValue::new(
                "consent.policy_version",
                self.service.policy().version().to_string(),
            ),
        ]
    }
}

pub(super) fn parse_registration(
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
pub(super) fn parse_history(r: pb::ListConsentHistoryRequest) -> Result<(SubjectId, i64, usize)> {
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
pub(super) fn parse_watch(
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

pub(super) fn parse_links(
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

pub(super) fn parse_preference_links(
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

pub(super) fn parse_record(
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
pub(super) fn parse_batch(
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
pub(super) fn parse_check(
    policy: &Policy,
    r: pb::CheckRequest,
) -> Result<(CheckQuery, Consistency)> {
    let mut v = Violations::new();
    let query = parse_query(policy, &mut v, "", r.subject_id, r.purpose, r.field);
    let consistency = parse_consistency(&mut v, r.consistency);
    done(v, query.zip(consistency))
}

/// The subject a read names.
pub(super) fn parse_subject(raw: String) -> Result<SubjectId> {
    SubjectId::parse(raw).map_err(|e| Error::invalid("subject_id", e))
}
