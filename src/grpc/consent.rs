//! `consent.v1.ConsentService` over the domain service.

mod parse;

pub(super) use parse::{
    parse_batch, parse_check, parse_history, parse_links, parse_preference_links, parse_record,
    parse_registration, parse_subject, parse_watch,
};

use opentelemetry::{KeyValue, trace::TraceContextExt as _};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::{
    auth::Permit,
    bulk::BulkStream,
    convert,
    enums::PbEnum as _,
    observe::{Observed, observe, observe_stream},
    page::PageToken,
    pb::{self, consent_service_server::ConsentService as Rpc},
};
use crate::{
    domain::{ConsistencyToken, PurposeCode},
    error::Result,
    policy::Decision,
    service::{CheckQuery, ConsentService, preferences::Preferences, unsubscribe::Unsubscribes},
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
