//! `consent.v1.ConsentService` over the domain service.

use opentelemetry::KeyValue;
use tonic::{Request, Response, Status};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::{
    convert::{self, optional},
    enums::{self, PbEnum as _},
    observe::observe,
    page::PageToken,
    pb::{self, consent_service_server::ConsentService as Rpc},
};
use crate::{
    domain::{
        Channel, Choice, Evidence, FieldName, NewConsentRecord, NoticeVersion, PurposeCode,
        RecipientId, RequestId, SubjectId, SubjectKind, SubjectRegistration, Violations,
    },
    error::Error,
    policy::Decision,
    service::{
        CheckQuery, ConsentService, MAX_BATCH,
        unsubscribe::{LinkRequest, MAX_CAMPAIGN_CHARS, Unsubscribes},
    },
    telemetry::SubjectRefs,
};

/// Serves `consent.v1.ConsentService`.
#[derive(Clone)]
pub struct ConsentGrpc {
    service: ConsentService,
    unsubscribes: Unsubscribes,
    /// Pseudonyms for subjects in spans: never the external id (R8).
    refs: SubjectRefs,
}

impl ConsentGrpc {
    pub fn new(service: ConsentService, unsubscribes: Unsubscribes, refs: SubjectRefs) -> Self {
        Self {
            service,
            unsubscribes,
            refs,
        }
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

    async fn watch_changes(
        &self,
        request: Request<pb::WatchChangesRequest>,
    ) -> Result<Response<Self::WatchChangesStream>, Status> {
        observe(SERVICE, "WatchChanges", request, |r| {
            self.watch_changes_rpc(r)
        })
        .await
    }

    async fn create_unsubscribe_links(
        &self,
        request: Request<pb::CreateUnsubscribeLinksRequest>,
    ) -> Result<Response<pb::CreateUnsubscribeLinksResponse>, Status> {
        observe(SERVICE, "CreateUnsubscribeLinks", request, |r| {
            self.create_unsubscribe_links_rpc(r)
        })
        .await
    }

    async fn register_subject(
        &self,
        request: Request<pb::RegisterSubjectRequest>,
    ) -> Result<Response<pb::RegisterSubjectResponse>, Status> {
        observe(SERVICE, "RegisterSubject", request, |r| {
            self.register_subject_rpc(r)
        })
        .await
    }

    async fn record_consent(
        &self,
        request: Request<pb::RecordConsentRequest>,
    ) -> Result<Response<pb::RecordConsentResponse>, Status> {
        observe(SERVICE, "RecordConsent", request, |r| {
            self.record_consent_rpc(r)
        })
        .await
    }

    async fn check(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        observe(SERVICE, "Check", request, |r| self.check_rpc(r)).await
    }

    async fn batch_check(
        &self,
        request: Request<pb::BatchCheckRequest>,
    ) -> Result<Response<pb::BatchCheckResponse>, Status> {
        observe(SERVICE, "BatchCheck", request, |r| self.batch_check_rpc(r)).await
    }

    async fn get_consent_state(
        &self,
        request: Request<pb::GetConsentStateRequest>,
    ) -> Result<Response<pb::GetConsentStateResponse>, Status> {
        observe(SERVICE, "GetConsentState", request, |r| {
            self.get_consent_state_rpc(r)
        })
        .await
    }

    async fn list_consent_history(
        &self,
        request: Request<pb::ListConsentHistoryRequest>,
    ) -> Result<Response<pb::ListConsentHistoryResponse>, Status> {
        observe(SERVICE, "ListConsentHistory", request, |r| {
            self.list_consent_history_rpc(r)
        })
        .await
    }
}

impl ConsentGrpc {
    async fn watch_changes_rpc(
        &self,
        request: Request<pb::WatchChangesRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let r = request.into_inner();
        let mut v = Violations::new();
        let purposes: Vec<_> = r
            .purposes
            .into_iter()
            .enumerate()
            .filter_map(|(i, p)| v.check(format!("purposes[{i}]"), PurposeCode::parse(p)))
            .collect();
        if !v.is_empty() {
            return Err(Error::from(v).into());
        }
        let records = self.service.watch_changes(r.after, purposes)?;
        let stream = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::ReceiverStream::new(records),
            |item| {
                item.map(|record| pb::WatchChangesResponse {
                    record: Some(convert::record_to_pb(record)),
                })
                .map_err(Status::from)
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn create_unsubscribe_links_rpc(
        &self,
        request: Request<pb::CreateUnsubscribeLinksRequest>,
    ) -> Result<Response<pb::CreateUnsubscribeLinksResponse>, Status> {
        let r = request.into_inner();
        let mut v = Violations::new();
        let purpose = v.check("purpose", PurposeCode::parse(r.purpose));
        let field = optional(&mut v, "field", r.field, FieldName::parse);
        let campaign = v.check("campaign", campaign(r.campaign));
        let subject_ids: Vec<_> = r
            .subject_ids
            .into_iter()
            .enumerate()
            .filter_map(|(i, id)| v.check(format!("subject_ids[{i}]"), SubjectId::parse(id)))
            .collect();
        let (Some(purpose), Some(field), Some(campaign), true) =
            (purpose, field, campaign, v.is_empty())
        else {
            return Err(Error::from(v).into());
        };
        let (links, instructions) = self
            .unsubscribes
            .create_links(&LinkRequest {
                purpose,
                field,
                campaign,
                subject_ids,
            })
            .await?;
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
    }

    async fn register_subject_rpc(
        &self,
        request: Request<pb::RegisterSubjectRequest>,
    ) -> Result<Response<pb::RegisterSubjectResponse>, Status> {
        let mut v = Violations::new();
        let actor = convert::actor(&request, &mut v);
        let r = request.into_inner();
        let subject_id = v.check("subject_id", SubjectId::parse(r.subject_id));
        let kind = enums::required::<SubjectKind>(&mut v, "kind", r.kind);
        let notice_version = v.check("notice_version", NoticeVersion::parse(r.notice_version));
        let channel = enums::required::<Channel>(&mut v, "channel", r.channel);
        let request_id = optional(&mut v, "request_id", r.request_id, RequestId::parse);
        let (
            Some(actor),
            Some(subject_id),
            Some(kind),
            Some(notice_version),
            Some(channel),
            Some(request_id),
        ) = (actor, subject_id, kind, notice_version, channel, request_id)
        else {
            return Err(Error::from(v).into());
        };
        let registration = SubjectRegistration {
            subject_id,
            kind,
            notice_version,
            channel,
            request_id,
        };
        let (subject, created) = self.service.register_subject(&registration, &actor).await?;
        Ok(Response::new(pb::RegisterSubjectResponse {
            subject: Some(convert::subject_to_pb(subject)),
            created,
        }))
    }

    async fn record_consent_rpc(
        &self,
        request: Request<pb::RecordConsentRequest>,
    ) -> Result<Response<pb::RecordConsentResponse>, Status> {
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
        let (
            Some(actor),
            Some(subject_id),
            Some(purpose),
            Some(field),
            Some(choice),
            Some(channel),
            Some(notice_version),
            Some(evidence),
            Some(request_id),
            Some(recipient),
        ) = (
            actor,
            subject_id,
            purpose,
            field,
            choice,
            channel,
            notice_version,
            evidence,
            request_id,
            recipient,
        )
        else {
            return Err(Error::from(v).into());
        };
        let record = self
            .service
            .record_consent(&NewConsentRecord {
                subject_id,
                purpose,
                field,
                choice,
                channel,
                notice_version,
                evidence,
                actor,
                request_id,
                recipient,
            })
            .await?;
        Ok(Response::new(pb::RecordConsentResponse {
            record: Some(convert::record_to_pb(record)),
        }))
    }

    async fn check_rpc(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        let r = request.into_inner();
        let mut v = Violations::new();
        let query = check_query(&mut v, "", r.subject_id, r.purpose, r.field)
            .ok_or_else(|| Error::from(v))?;
        let decision = self.service.check(&query).await?;
        for attribute in self.decision_attributes(&query, &decision) {
            tracing::Span::current().set_attribute(attribute.key, attribute.value);
        }
        Ok(Response::new(pb::CheckResponse {
            decision: decision.outcome.to_wire(),
            reason: decision.reason.to_wire(),
            record_id: convert::record_id(&decision),
            policy_version: self.service.policy().version().to_string(),
            needs_verification: decision.needs_verification,
        }))
    }

    async fn batch_check_rpc(
        &self,
        request: Request<pb::BatchCheckRequest>,
    ) -> Result<Response<pb::BatchCheckResponse>, Status> {
        let items = request.into_inner().items;
        if items.is_empty() || items.len() > MAX_BATCH {
            return Err(Error::invalid(
                "items",
                format!("must hold 1 to {MAX_BATCH} items (got {})", items.len()),
            )
            .into());
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
            queries.extend(check_query(
                &mut v,
                &prefix,
                item.subject_id,
                item.purpose,
                item.field,
            ));
        }
        if !v.is_empty() {
            return Err(Error::from(v).into());
        }
        let decisions = self.service.batch_check(&queries).await?;
        let span = tracing::Span::current();
        span.set_attribute("consent.batch.size", queries.len() as i64);
        span.set_attribute(
            "consent.policy_version",
            self.service.policy().version().to_string(),
        );
        for (query, decision) in queries.iter().zip(&decisions) {
            span.add_event(
                "consent.decision",
                self.decision_attributes(query, decision),
            );
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
        }))
    }

    async fn get_consent_state_rpc(
        &self,
        request: Request<pb::GetConsentStateRequest>,
    ) -> Result<Response<pb::GetConsentStateResponse>, Status> {
        let subject_id = SubjectId::parse(request.into_inner().subject_id)
            .map_err(|e| Error::invalid("subject_id", e))?;
        let overview = self.service.consent_state(&subject_id).await?;
        let choices = overview
            .choices
            .into_iter()
            .map(convert::choice_state_to_pb)
            .collect();
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
            choices,
            decisions,
            policy_version: self.service.policy().version().to_string(),
        }))
    }

    async fn list_consent_history_rpc(
        &self,
        request: Request<pb::ListConsentHistoryRequest>,
    ) -> Result<Response<pb::ListConsentHistoryResponse>, Status> {
        let r = request.into_inner();
        let mut v = Violations::new();
        let subject_id = v.check("subject_id", SubjectId::parse(r.subject_id));
        let page_size = v.check(
            "page_size",
            PageToken::page_size(r.page_size, DEFAULT_PAGE_SIZE, 1000),
        );
        let (Some(subject_id), Some(page_size)) = (subject_id, page_size) else {
            return Err(Error::from(v).into());
        };
        let after = if r.page_token.is_empty() {
            0
        } else {
            PageToken::decode(&r.page_token, subject_id.as_str())
                .and_then(|c| {
                    c.parse()
                        .map_err(|_| "is not a token this service issued".into())
                })
                .map_err(|e: String| Error::invalid("page_token", e))?
        };
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

/// Parses one check; violations are named `{prefix}subject_id` and so on.
fn check_query(
    v: &mut Violations,
    prefix: &str,
    subject_id: String,
    purpose: String,
    field: String,
) -> Option<CheckQuery> {
    let subject_id = v.check(format!("{prefix}subject_id"), SubjectId::parse(subject_id));
    let purpose = v.check(format!("{prefix}purpose"), PurposeCode::parse(purpose));
    let field = v.check(format!("{prefix}field"), FieldName::parse(field));
    Some(CheckQuery {
        subject_id: subject_id?,
        purpose: purpose?,
        field: field?,
    })
}
