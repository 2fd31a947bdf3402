//! `consent.v1.DisclosureService` over the domain service.

use chrono::Utc;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::{
    convert::{self, optional, required_enum},
    enums::PbEnum as _,
    observe::observe,
    page::PageToken,
    pb::{self, disclosure_service_server::DisclosureService as Rpc},
};
use crate::{
    domain::{
        self, FieldName, Justification, NewPersonalData, NoticeVersion, PersonalValue, PurposeCode,
        RecipientId, Reference, RequestId, SubjectId, Violations,
    },
    error::Error,
    policy::{Category, DisclosureRequest, Ground, Reason},
    service::{DisclosureAnswer, DisclosureService, disclosure::MAX_DISCLOSURE_PAGE},
    store::DisclosureFilter,
    telemetry::SubjectRefs,
};

const DEFAULT_PAGE_SIZE: usize = 100;

/// Serves `consent.v1.DisclosureService`.
#[derive(Clone)]
pub struct DisclosureGrpc {
    service: DisclosureService,
    /// Pseudonyms for subjects in spans: never the external id (R8).
    refs: SubjectRefs,
}

const SERVICE: &str = "consent.v1.DisclosureService";

impl DisclosureGrpc {
    pub fn new(service: DisclosureService, refs: SubjectRefs) -> Self {
        Self { service, refs }
    }

    /// Span attributes and the disclosures counter for one decision. Field
    /// names and counts only: never a value, and the subject only as its
    /// pseudonym.
    fn observe_answer(
        &self,
        subject_id: &SubjectId,
        recipient: &str,
        basis: &'static str,
        purpose: Option<&str>,
        answer: &DisclosureAnswer,
    ) {
        let span = tracing::Span::current();
        span.set_attribute("consent.subject_ref", self.refs.of(subject_id));
        span.set_attribute(
            "consent.policy_version",
            self.service.policy().version().to_string(),
        );
        if let Some(purpose) = purpose {
            span.set_attribute("consent.purpose", purpose.to_string());
        }
        span.set_attribute("disclosure.recipient", recipient.to_string());
        span.set_attribute("disclosure.basis", basis);
        span.set_attribute("disclosure.status", answer.status.as_str());
        span.set_attribute("disclosure.fields_released", answer.released.len() as i64);
        span.set_attribute("disclosure.fields_withheld", answer.withheld.len() as i64);
        metrics::counter!(crate::metrics::DISCLOSURES, "basis" => basis, "status" => answer.status.as_str())
            .increment(1);
    }

    pub fn into_server(self) -> pb::disclosure_service_server::DisclosureServiceServer<Self> {
        pb::disclosure_service_server::DisclosureServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl Rpc for DisclosureGrpc {
    async fn list_recipients(
        &self,
        request: Request<pb::ListRecipientsRequest>,
    ) -> Result<Response<pb::ListRecipientsResponse>, Status> {
        observe(SERVICE, "ListRecipients", request, |r| {
            self.list_recipients_rpc(r)
        })
        .await
    }

    async fn put_personal_data(
        &self,
        request: Request<pb::PutPersonalDataRequest>,
    ) -> Result<Response<pb::PutPersonalDataResponse>, Status> {
        observe(SERVICE, "PutPersonalData", request, |r| {
            self.put_personal_data_rpc(r)
        })
        .await
    }

    async fn verify_personal_data(
        &self,
        request: Request<pb::VerifyPersonalDataRequest>,
    ) -> Result<Response<pb::VerifyPersonalDataResponse>, Status> {
        observe(SERVICE, "VerifyPersonalData", request, |r| {
            self.verify_personal_data_rpc(r)
        })
        .await
    }

    async fn request_disclosure(
        &self,
        request: Request<pb::RequestDisclosureRequest>,
    ) -> Result<Response<pb::RequestDisclosureResponse>, Status> {
        observe(SERVICE, "RequestDisclosure", request, |r| {
            self.request_disclosure_rpc(r)
        })
        .await
    }

    async fn approve_disclosure(
        &self,
        request: Request<pb::ApproveDisclosureRequest>,
    ) -> Result<Response<pb::ApproveDisclosureResponse>, Status> {
        observe(SERVICE, "ApproveDisclosure", request, |r| {
            self.approve_disclosure_rpc(r)
        })
        .await
    }

    async fn review_disclosure(
        &self,
        request: Request<pb::ReviewDisclosureRequest>,
    ) -> Result<Response<pb::ReviewDisclosureResponse>, Status> {
        observe(SERVICE, "ReviewDisclosure", request, |r| {
            self.review_disclosure_rpc(r)
        })
        .await
    }

    async fn list_disclosures(
        &self,
        request: Request<pb::ListDisclosuresRequest>,
    ) -> Result<Response<pb::ListDisclosuresResponse>, Status> {
        observe(SERVICE, "ListDisclosures", request, |r| {
            self.list_disclosures_rpc(r)
        })
        .await
    }

    async fn get_disclosure(
        &self,
        request: Request<pb::GetDisclosureRequest>,
    ) -> Result<Response<pb::GetDisclosureResponse>, Status> {
        observe(SERVICE, "GetDisclosure", request, |r| {
            self.get_disclosure_rpc(r)
        })
        .await
    }
}

impl DisclosureGrpc {
    async fn put_personal_data_rpc(
        &self,
        request: Request<pb::PutPersonalDataRequest>,
    ) -> Result<Response<pb::PutPersonalDataResponse>, Status> {
        let mut v = Violations::new();
        let actor = convert::actor(&request, &mut v);
        let r = request.into_inner();
        let subject_id = v.check("subject_id", SubjectId::parse(r.subject_id));
        let field = v.check("field", FieldName::parse(r.field));
        // The description says what is wrong, never what the value was.
        let value = v.check("value", PersonalValue::parse(r.value));
        let collected_for: Vec<_> = r
            .collected_for
            .into_iter()
            .enumerate()
            .filter_map(|(i, p)| v.check(format!("collected_for[{i}]"), PurposeCode::parse(p)))
            .collect();
        let channel = required_enum(
            &mut v,
            "channel",
            r.channel,
            |n| pb::Channel::try_from(n).ok(),
            domain::Channel::from_pb,
        );
        let notice_version = v.check("notice_version", NoticeVersion::parse(r.notice_version));
        let request_id = optional(&mut v, "request_id", r.request_id, RequestId::parse);
        let (
            Some(actor),
            Some(subject_id),
            Some(field),
            Some(value),
            Some(channel),
            Some(notice_version),
            Some(request_id),
            true,
        ) = (
            actor,
            subject_id,
            field,
            value,
            channel,
            notice_version,
            request_id,
            v.is_empty(),
        )
        else {
            return Err(Error::from(v).into());
        };
        let collection_id = self
            .service
            .put_personal_data(&NewPersonalData {
                subject_id,
                field,
                value,
                collected_for,
                channel,
                notice_version,
                actor,
                request_id,
            })
            .await?;
        Ok(Response::new(pb::PutPersonalDataResponse {
            collection_id: collection_id.to_string(),
        }))
    }

    async fn verify_personal_data_rpc(
        &self,
        request: Request<pb::VerifyPersonalDataRequest>,
    ) -> Result<Response<pb::VerifyPersonalDataResponse>, Status> {
        let r = request.into_inner();
        let mut v = Violations::new();
        let subject_id = v.check("subject_id", SubjectId::parse(r.subject_id));
        let field = v.check("field", FieldName::parse(r.field));
        let (Some(subject_id), Some(field)) = (subject_id, field) else {
            return Err(Error::from(v).into());
        };
        let verified_at = self
            .service
            .verify_personal_data(&subject_id, &field)
            .await?;
        Ok(Response::new(pb::VerifyPersonalDataResponse {
            verified_at: convert::timestamp(verified_at),
        }))
    }

    async fn list_recipients_rpc(
        &self,
        _request: Request<pb::ListRecipientsRequest>,
    ) -> Result<Response<pb::ListRecipientsResponse>, Status> {
        let recipients = self
            .service
            .recipients()
            .map(|r| pb::Recipient {
                recipient_id: r.id.to_string(),
                name: r.name.clone(),
                category: category_to_pb(r.category).into(),
                contact: r.contact.clone(),
                purposes: r.purposes.iter().map(ToString::to_string).collect(),
            })
            .collect();
        Ok(Response::new(pb::ListRecipientsResponse {
            recipients,
            policy_version: self.service.policy().version().to_string(),
        }))
    }

    async fn request_disclosure_rpc(
        &self,
        request: Request<pb::RequestDisclosureRequest>,
    ) -> Result<Response<pb::RequestDisclosureResponse>, Status> {
        let mut v = Violations::new();
        let actor = convert::actor(&request, &mut v);
        let r = request.into_inner();
        let subject_id = v.check("subject_id", SubjectId::parse(r.subject_id));
        let recipient = v.check("recipient_id", RecipientId::parse(r.recipient_id));
        let fields: Vec<_> = r
            .fields
            .into_iter()
            .enumerate()
            .filter_map(|(i, f)| v.check(format!("fields[{i}]"), FieldName::parse(f)))
            .collect();
        let legal_basis = match pb::LegalBasis::try_from(r.legal_basis) {
            Ok(basis) => Some(legal_basis(basis)),
            Err(_) => {
                v.push("legal_basis", format!("unknown value {}", r.legal_basis));
                None
            }
        };
        let ground = match (legal_basis, r.purpose.is_empty()) {
            (None, _) => None,
            (Some(None), true) => {
                v.push("purpose", "name a purpose, or a legal_basis instead");
                None
            }
            (Some(None), false) => v
                .check("purpose", PurposeCode::parse(r.purpose))
                .map(Ground::Purpose),
            (Some(Some(basis)), true) => Some(Ground::Legal(basis)),
            (Some(Some(_)), false) => {
                v.push(
                    "purpose",
                    "must be empty with a legal_basis: the legal basis is the purpose",
                );
                None
            }
        };
        let reference = optional(&mut v, "reference", r.reference, Reference::parse);
        let justification = optional(
            &mut v,
            "justification",
            r.justification,
            Justification::parse,
        );
        let request_id = optional(&mut v, "request_id", r.request_id, RequestId::parse);
        let (
            Some(actor),
            Some(subject_id),
            Some(recipient),
            Some(ground),
            Some(reference),
            Some(justification),
            Some(request_id),
            true,
        ) = (
            actor,
            subject_id,
            recipient,
            ground,
            reference,
            justification,
            request_id,
            v.is_empty(),
        )
        else {
            return Err(Error::from(v).into());
        };
        let (basis, purpose) = match &ground {
            Ground::Legal(basis) => (basis.as_str(), None),
            Ground::Purpose(purpose) => ("purpose", Some(purpose.to_string())),
        };
        let recipient_name = recipient.to_string();
        let answer = self
            .service
            .request_disclosure(
                &subject_id,
                &DisclosureRequest {
                    recipient,
                    ground,
                    fields,
                    reference,
                    justification,
                },
                &actor,
                request_id,
            )
            .await?;
        self.observe_answer(
            &subject_id,
            &recipient_name,
            basis,
            purpose.as_deref(),
            &answer,
        );
        let (disclosure_id, status, released, withheld) = answer_to_pb(answer);
        Ok(Response::new(pb::RequestDisclosureResponse {
            disclosure_id,
            status,
            released,
            withheld,
        }))
    }

    async fn approve_disclosure_rpc(
        &self,
        request: Request<pb::ApproveDisclosureRequest>,
    ) -> Result<Response<pb::ApproveDisclosureResponse>, Status> {
        let (actor, id) = actor_and_disclosure(&request, &request.get_ref().disclosure_id)?;
        let answer = self.service.approve_disclosure(id, &actor).await?;
        if let Some(d) = &answer.disclosure {
            let basis = d.legal_basis.map_or("purpose", |b| b.as_str());
            let purpose = d.purpose.as_ref().map(ToString::to_string);
            self.observe_answer(
                &d.subject_id,
                d.recipient_id.as_str(),
                basis,
                purpose.as_deref(),
                &answer,
            );
        }
        let (disclosure_id, status, released, withheld) = answer_to_pb(answer);
        Ok(Response::new(pb::ApproveDisclosureResponse {
            disclosure_id,
            status,
            released,
            withheld,
        }))
    }

    async fn review_disclosure_rpc(
        &self,
        request: Request<pb::ReviewDisclosureRequest>,
    ) -> Result<Response<pb::ReviewDisclosureResponse>, Status> {
        let (actor, id) = actor_and_disclosure(&request, &request.get_ref().disclosure_id)?;
        let disclosure = self.service.review_disclosure(id, &actor).await?;
        Ok(Response::new(pb::ReviewDisclosureResponse {
            disclosure: Some(disclosure_to_pb(disclosure)),
        }))
    }

    async fn list_disclosures_rpc(
        &self,
        request: Request<pb::ListDisclosuresRequest>,
    ) -> Result<Response<pb::ListDisclosuresResponse>, Status> {
        let r = request.into_inner();
        let mut v = Violations::new();
        let subject_id = if r.subject_id.is_empty() && r.overdue_review_only {
            Some(None)
        } else {
            v.check("subject_id", SubjectId::parse(r.subject_id))
                .map(Some)
        };
        let page_size = v.check(
            "page_size",
            PageToken::page_size(r.page_size, DEFAULT_PAGE_SIZE, MAX_DISCLOSURE_PAGE),
        );
        let (Some(subject_id), Some(page_size)) = (subject_id, page_size) else {
            return Err(Error::from(v).into());
        };
        let scope = format!(
            "disclosures:{}:{}",
            subject_id.as_ref().map_or("", |s| s.as_str()),
            r.overdue_review_only
        );
        let after = if r.page_token.is_empty() {
            None
        } else {
            let cursor = PageToken::decode(&r.page_token, &scope)
                .and_then(|c| {
                    c.parse::<Uuid>()
                        .map_err(|_| "is not a token this service issued".into())
                })
                .map_err(|e: String| Error::invalid("page_token", e))?;
            Some(cursor)
        };
        let filter = DisclosureFilter {
            subject_id,
            overdue_at: r.overdue_review_only.then(Utc::now),
        };
        let page = self
            .service
            .list_disclosures(&filter, after, page_size)
            .await?;
        Ok(Response::new(pb::ListDisclosuresResponse {
            disclosures: page.disclosures.into_iter().map(disclosure_to_pb).collect(),
            next_page_token: page
                .next_after
                .map(|id| PageToken::encode(&id.simple().to_string(), &scope))
                .unwrap_or_default(),
        }))
    }

    async fn get_disclosure_rpc(
        &self,
        request: Request<pb::GetDisclosureRequest>,
    ) -> Result<Response<pb::GetDisclosureResponse>, Status> {
        let id = disclosure_id(&request.get_ref().disclosure_id)
            .map_err(|e| Error::invalid("disclosure_id", e))?;
        let disclosure = self.service.get_disclosure(id).await?;
        Ok(Response::new(pb::GetDisclosureResponse {
            disclosure: Some(disclosure_to_pb(disclosure)),
        }))
    }
}

/// The caller and the disclosure a follow-up call (approve, review) names.
fn actor_and_disclosure<T>(
    request: &Request<T>,
    raw_id: &str,
) -> Result<(domain::Actor, Uuid), Error> {
    let mut v = Violations::new();
    let actor = convert::actor(request, &mut v);
    let id = v.check("disclosure_id", disclosure_id(raw_id));
    match (actor, id) {
        (Some(actor), Some(id)) => Ok((actor, id)),
        _ => Err(Error::from(v)),
    }
}

fn disclosure_id(raw: &str) -> Result<Uuid, String> {
    Uuid::parse_str(raw).map_err(|_| "must be a disclosure id (a UUID)".to_string())
}

/// `None` for UNSPECIFIED: the request names a purpose instead.
fn legal_basis(basis: pb::LegalBasis) -> Option<domain::LegalBasis> {
    match basis {
        pb::LegalBasis::Unspecified => None,
        pb::LegalBasis::LegalProcess => Some(domain::LegalBasis::LegalProcess),
        pb::LegalBasis::ProtectRightsProperty => Some(domain::LegalBasis::ProtectRightsProperty),
        pb::LegalBasis::EmergencySafety => Some(domain::LegalBasis::EmergencySafety),
    }
}

fn legal_basis_to_pb(basis: domain::LegalBasis) -> pb::LegalBasis {
    match basis {
        domain::LegalBasis::LegalProcess => pb::LegalBasis::LegalProcess,
        domain::LegalBasis::ProtectRightsProperty => pb::LegalBasis::ProtectRightsProperty,
        domain::LegalBasis::EmergencySafety => pb::LegalBasis::EmergencySafety,
    }
}

fn category_to_pb(category: Category) -> pb::RecipientCategory {
    match category {
        Category::Courier => pb::RecipientCategory::Courier,
        Category::Processor => pb::RecipientCategory::Processor,
        Category::Partner => pb::RecipientCategory::Partner,
        Category::Authority => pb::RecipientCategory::Authority,
    }
}

fn status_to_pb(status: domain::DisclosureStatus) -> pb::DisclosureStatus {
    match status {
        domain::DisclosureStatus::Released => pb::DisclosureStatus::Released,
        domain::DisclosureStatus::Partial => pb::DisclosureStatus::Partial,
        domain::DisclosureStatus::Denied => pb::DisclosureStatus::Denied,
        domain::DisclosureStatus::PendingApproval => pb::DisclosureStatus::PendingApproval,
    }
}

fn withheld_to_pb(field: &FieldName, reason: Reason) -> pb::WithheldField {
    pb::WithheldField {
        field: field.to_string(),
        reason: reason.to_wire(),
    }
}

type AnswerParts = (String, i32, Vec<pb::ReleasedField>, Vec<pb::WithheldField>);

fn answer_to_pb(answer: DisclosureAnswer) -> AnswerParts {
    (
        answer
            .disclosure
            .map(|d| d.disclosure_id.to_string())
            .unwrap_or_default(),
        status_to_pb(answer.status).into(),
        answer
            .released
            .into_iter()
            .map(|r| pb::ReleasedField {
                field: r.field.to_string(),
                value: r.value.into_string(),
                needs_verification: r.needs_verification,
            })
            .collect(),
        answer
            .withheld
            .iter()
            .map(|(f, reason)| withheld_to_pb(f, *reason))
            .collect(),
    )
}

pub(super) fn disclosure_to_pb(d: domain::Disclosure) -> pb::Disclosure {
    pb::Disclosure {
        disclosure_id: d.disclosure_id.to_string(),
        subject_id: d.subject_id.to_string(),
        recipient_id: d.recipient_id.to_string(),
        purpose: d.purpose.map(|p| p.to_string()).unwrap_or_default(),
        legal_basis: d
            .legal_basis
            .map_or(pb::LegalBasis::Unspecified, legal_basis_to_pb)
            .into(),
        reference: d.reference.map(|r| r.to_string()).unwrap_or_default(),
        justification: d.justification.map(|j| j.to_string()).unwrap_or_default(),
        fields: d.fields.iter().map(ToString::to_string).collect(),
        withheld: d
            .withheld
            .iter()
            .map(|w| withheld_to_pb(&w.field, w.reason))
            .collect(),
        status: status_to_pb(d.status).into(),
        requested_by: d.requested_by.to_string(),
        requested_at: convert::timestamp(d.requested_at),
        approved_by: d.approved_by.map(|a| a.to_string()).unwrap_or_default(),
        released_at: d.released_at.and_then(convert::timestamp),
        review_due: d.review_due.and_then(convert::timestamp),
        reviewed_by: d.reviewed_by.map(|a| a.to_string()).unwrap_or_default(),
        reviewed_at: d.reviewed_at.and_then(convert::timestamp),
    }
}
