//! `consent.v1.DisclosureService` over the domain service.

use tonic::{Request, Response, Status};
use uuid::Uuid;

use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::{
    auth::Permit,
    convert::{self, done, optional},
    enums::{self, PbEnum as _},
    observe::observe,
    page::PageToken,
    pb::{self, disclosure_service_server::DisclosureService as Rpc},
};
use crate::{
    domain::{
        self, Actor, Channel, Disclosure, FieldName, Justification, LegalBasis, ListLimit,
        NewPersonalData, NoticeVersion, PersonalValue, PurposeCode, RecipientId, Reference,
        RequestId, SubjectId, Violations,
    },
    error::Error,
    policy::{DisclosureParts, DisclosureRequest, Ground, Policy, Reason, Recipient},
    service::{
        DisclosureAnswer, DisclosureService,
        disclosure::{COLLECTED_FOR, DISCLOSED_FIELDS, MAX_DISCLOSURE_PAGE},
    },
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

    pub fn into_server(self) -> pb::disclosure_service_server::DisclosureServiceServer<Self> {
        pb::disclosure_service_server::DisclosureServiceServer::new(self)
    }

    /// Span attributes and the disclosures counter for one decision. Field
    /// names and counts only: never a value, and the subject only as its
    /// pseudonym.
    fn observe_answer(&self, answer: &DisclosureAnswer) {
        let about = &answer.about;
        let span = tracing::Span::current();
        span.set_attribute("consent.subject_ref", self.refs.of(&about.subject_id));
        span.set_attribute(
            "consent.policy_version",
            self.service.policy().version().to_string(),
        );
        if let Some(purpose) = &about.purpose {
            span.set_attribute("consent.purpose", purpose.to_string());
        }
        span.set_attribute("disclosure.recipient", about.recipient.to_string());
        span.set_attribute("disclosure.basis", about.basis);
        span.set_attribute("disclosure.status", answer.status.as_str());
        span.set_attribute("disclosure.fields_released", answer.released.len() as i64);
        span.set_attribute("disclosure.fields_withheld", answer.withheld.len() as i64);
        metrics::counter!(crate::metrics::DISCLOSURES, "basis" => about.basis, "status" => answer.status.as_str())
            .increment(1);
    }
}

#[tonic::async_trait]
impl Rpc for DisclosureGrpc {
    async fn list_recipients(
        &self,
        request: Request<pb::ListRecipientsRequest>,
    ) -> Result<Response<pb::ListRecipientsResponse>, Status> {
        observe(SERVICE, "ListRecipients", request, |_| async move {
            Ok(Response::new(pb::ListRecipientsResponse {
                recipients: self.service.recipients().map(recipient_to_pb).collect(),
                policy_version: self.service.policy().version().to_string(),
            }))
        })
        .await
    }

    async fn put_personal_data(
        &self,
        request: Request<pb::PutPersonalDataRequest>,
    ) -> Result<Response<pb::PutPersonalDataResponse>, Status> {
        observe(SERVICE, "PutPersonalData", request, |r| async move {
            let permit = Permit::of(&r)?;
            let new = parse_put(self.service.policy(), r)?;
            permit.allow(&new.collected_for, &[], &[])?;
            let (collection_id, token) = self.service.put_personal_data(&new).await?;
            Ok(Response::new(pb::PutPersonalDataResponse {
                collection_id: collection_id.to_string(),
                consistency_token: token.encode(),
            }))
        })
        .await
    }

    async fn verify_personal_data(
        &self,
        request: Request<pb::VerifyPersonalDataRequest>,
    ) -> Result<Response<pb::VerifyPersonalDataResponse>, Status> {
        observe(SERVICE, "VerifyPersonalData", request, |r| async move {
            let (subject_id, field) = parse_verify(self.service.policy(), r.into_inner())?;
            let (verified_at, token) = self
                .service
                .verify_personal_data(&subject_id, &field)
                .await?;
            Ok(Response::new(pb::VerifyPersonalDataResponse {
                verified_at: convert::timestamp(verified_at),
                consistency_token: token.encode(),
            }))
        })
        .await
    }

    async fn request_disclosure(
        &self,
        request: Request<pb::RequestDisclosureRequest>,
    ) -> Result<Response<pb::RequestDisclosureResponse>, Status> {
        observe(SERVICE, "RequestDisclosure", request, |r| async move {
            let permit = Permit::of(&r)?;
            let Disclose {
                actor,
                subject_id,
                request,
                request_id,
            } = parse_request(r, self.service.policy())?;
            let (purposes, legal_bases) = match &request.ground {
                Ground::Purpose(purpose) => (vec![purpose.clone()], vec![]),
                Ground::Legal(basis) => (vec![], vec![*basis]),
            };
            permit.allow(
                &purposes,
                std::slice::from_ref(&request.recipient),
                &legal_bases,
            )?;
            let answer = self
                .service
                .request_disclosure(&subject_id, &request, &actor, request_id)
                .await?;
            self.observe_answer(&answer);
            Ok(Response::new(answer_to_pb(answer)))
        })
        .await
    }

    async fn approve_disclosure(
        &self,
        request: Request<pb::ApproveDisclosureRequest>,
    ) -> Result<Response<pb::ApproveDisclosureResponse>, Status> {
        observe(SERVICE, "ApproveDisclosure", request, |r| async move {
            let permit = Permit::of(&r)?;
            let (actor, id) = actor_and_disclosure(&r, &r.get_ref().disclosure_id)?;
            let may = |d: &Disclosure| may_touch(&permit, d);
            let answer = self.service.approve_disclosure(id, &actor, may).await?;
            self.observe_answer(&answer);
            // An approval answers exactly like the request it completes.
            let pb::RequestDisclosureResponse {
                disclosure_id,
                status,
                released,
                withheld,
            } = answer_to_pb(answer);
            Ok(Response::new(pb::ApproveDisclosureResponse {
                disclosure_id,
                status,
                released,
                withheld,
            }))
        })
        .await
    }

    async fn review_disclosure(
        &self,
        request: Request<pb::ReviewDisclosureRequest>,
    ) -> Result<Response<pb::ReviewDisclosureResponse>, Status> {
        observe(SERVICE, "ReviewDisclosure", request, |r| async move {
            let permit = Permit::of(&r)?;
            let (actor, id) = actor_and_disclosure(&r, &r.get_ref().disclosure_id)?;
            let may = |d: &Disclosure| may_touch(&permit, d);
            let disclosure = self.service.review_disclosure(id, &actor, may).await?;
            Ok(Response::new(pb::ReviewDisclosureResponse {
                disclosure: Some(disclosure_to_pb(disclosure)),
            }))
        })
        .await
    }

    async fn list_disclosures(
        &self,
        request: Request<pb::ListDisclosuresRequest>,
    ) -> Result<Response<pb::ListDisclosuresResponse>, Status> {
        observe(SERVICE, "ListDisclosures", request, |r| async move {
            let permit = Permit::of(&r)?;
            let List {
                subject_id,
                overdue_review_only,
                after,
                page_size,
                scope,
            } = parse_list(r.into_inner())?;
            let page = self
                .service
                .list_disclosures(subject_id, overdue_review_only, after, page_size)
                .await?;
            // A caller sees only the disclosures it could read one by one
            // (GetDisclosure): its recipients and legal bases. The page
            // token still follows the last one read, so a page may come
            // back short, even empty, with a token to read on.
            Ok(Response::new(pb::ListDisclosuresResponse {
                disclosures: page
                    .disclosures
                    .into_iter()
                    .filter(|d| may_touch(&permit, d).is_ok())
                    .map(disclosure_to_pb)
                    .collect(),
                next_page_token: page
                    .next_after
                    .map(|id| PageToken::encode(&id.simple().to_string(), &scope))
                    .unwrap_or_default(),
            }))
        })
        .await
    }

    async fn get_disclosure(
        &self,
        request: Request<pb::GetDisclosureRequest>,
    ) -> Result<Response<pb::GetDisclosureResponse>, Status> {
        observe(SERVICE, "GetDisclosure", request, |r| async move {
            let permit = Permit::of(&r)?;
            let id = parse_get(r.get_ref())?;
            let disclosure = self.service.get_disclosure(id).await?;
            may_touch(&permit, &disclosure)?;
            Ok(Response::new(pb::GetDisclosureResponse {
                disclosure: Some(disclosure_to_pb(disclosure)),
            }))
        })
        .await
    }
}

pub(super) fn parse_put(
    policy: &Policy,
    request: Request<pb::PutPersonalDataRequest>,
) -> Result<NewPersonalData, Error> {
    let mut v = Violations::new();
    let actor = convert::actor(&request, &mut v);
    let r = request.into_inner();
    let subject_id = v.check("subject_id", SubjectId::parse(r.subject_id));
    let field = v.check("field", FieldName::parse(r.field));
    // The description says what is wrong, never what the value was.
    let value = v.check("value", PersonalValue::parse(r.value));
    let collected_for = each(&mut v, &COLLECTED_FOR, r.collected_for, PurposeCode::parse);
    let channel = enums::required::<Channel>(&mut v, "channel", r.channel);
    let notice_version = v.check("notice_version", NoticeVersion::parse(r.notice_version));
    let request_id = optional(&mut v, "request_id", r.request_id, RequestId::parse);
    v.merge(policy.check_collection(field.as_ref(), &collected_for));
    let parsed = (|| {
        Some(NewPersonalData {
            subject_id: subject_id?,
            field: field?,
            value: value?,
            collected_for: collected_for.into_iter().collect::<Option<_>>()?,
            channel: channel?,
            notice_version: notice_version?,
            actor: actor?,
            request_id: request_id?,
        })
    })();
    done(v, parsed)
}

pub(super) fn parse_verify(
    policy: &Policy,
    r: pb::VerifyPersonalDataRequest,
) -> Result<(SubjectId, FieldName), Error> {
    let mut v = Violations::new();
    let subject_id = v.check("subject_id", SubjectId::parse(r.subject_id));
    let field = v.check("field", FieldName::parse(r.field));
    if let Some(field) = &field {
        v.merge(policy.check_field(field));
    }
    done(v, subject_id.zip(field))
}

pub(super) struct Disclose {
    actor: Actor,
    subject_id: SubjectId,
    request: DisclosureRequest,
    request_id: Option<RequestId>,
}

pub(super) fn parse_request(
    request: Request<pb::RequestDisclosureRequest>,
    policy: &Policy,
) -> Result<Disclose, Error> {
    let mut v = Violations::new();
    let actor = convert::actor(&request, &mut v);
    let r = request.into_inner();
    let subject_id = v.check("subject_id", SubjectId::parse(r.subject_id));
    let recipient = v.check("recipient_id", RecipientId::parse(r.recipient_id));
    let fields = each(&mut v, &DISCLOSED_FIELDS, r.fields, FieldName::parse);
    let legal_basis = enums::optional::<LegalBasis>(&mut v, "legal_basis", r.legal_basis);
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
    // The policy judges whatever parsed, so one answer names every problem.
    let parsed_fields: Vec<FieldName> = fields.iter().flatten().cloned().collect();
    v.merge(renumbered(
        policy.check_disclosure_parts(&DisclosureParts {
            recipient: recipient.as_ref(),
            ground: ground.as_ref(),
            fields: &parsed_fields,
            has_reference: matches!(reference, Some(Some(_))),
            has_justification: matches!(justification, Some(Some(_))),
        }),
        "fields",
        &fields,
    ));
    let request = recipient
        .zip(ground)
        .map(|(recipient, ground)| DisclosureRequest {
            recipient,
            ground,
            fields: parsed_fields,
            reference: reference.clone().flatten(),
            justification: justification.clone().flatten(),
        });
    let parsed = (|| {
        Some(Disclose {
            actor: actor?,
            subject_id: subject_id?,
            request: request?,
            request_id: request_id?,
        })
    })();
    done(v, parsed)
}

/// Parses each element of a repeated field, keeping each one's place so
/// that a later check can name the caller's index. Past the limit nothing
/// is parsed and the list stands as one `None`: the length is the one
/// violation, and the request cannot pass.
fn each<T>(
    v: &mut Violations,
    limit: &ListLimit,
    raw: Vec<String>,
    parse: impl Fn(String) -> Result<T, String>,
) -> Vec<Option<T>> {
    if !limit.check(v, raw.len()) {
        return vec![None];
    }
    raw.into_iter()
        .enumerate()
        .map(|(i, item)| v.check(format!("{}[{i}]", limit.field), parse(item)))
        .collect()
}

/// A check ran over the elements of `list` that parsed; its `name[i]`
/// violations get the caller's index back, and "`name` is empty" goes when
/// the caller did send elements.
fn renumbered<T>(checked: Violations, name: &str, list: &[Option<T>]) -> Violations {
    let places: Vec<usize> = (0..list.len()).filter(|&i| list[i].is_some()).collect();
    let mut out = Violations::new();
    for violation in checked.into_vec() {
        let index = violation
            .field
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('['))
            .and_then(|rest| rest.strip_suffix(']'))
            .and_then(|i| i.parse::<usize>().ok());
        match index {
            Some(i) => out.push(format!("{name}[{}]", places[i]), violation.description),
            None if violation.field == name && !list.is_empty() => {}
            None => out.push(violation.field, violation.description),
        }
    }
    out
}

pub(super) struct List {
    subject_id: Option<SubjectId>,
    overdue_review_only: bool,
    after: Option<Uuid>,
    page_size: usize,
    /// What the page tokens are bound to, so one cannot page another
    /// subject's disclosures.
    scope: String,
}

pub(super) fn parse_list(r: pb::ListDisclosuresRequest) -> Result<List, Error> {
    let mut v = Violations::new();
    let subject_id = if r.subject_id.is_empty() && r.overdue_review_only {
        Some(None)
    } else {
        v.check("subject_id", SubjectId::parse(r.subject_id.clone()))
            .map(Some)
    };
    let page_size = v.check(
        "page_size",
        PageToken::page_size(r.page_size, DEFAULT_PAGE_SIZE, MAX_DISCLOSURE_PAGE),
    );
    let scope = format!("disclosures:{}:{}", r.subject_id, r.overdue_review_only);
    let after = if r.page_token.is_empty() {
        Some(None)
    } else {
        v.check(
            "page_token",
            PageToken::decode(&r.page_token, &scope).and_then(|c| {
                c.parse::<Uuid>()
                    .map_err(|_| "is not a token this service issued".into())
            }),
        )
        .map(Some)
    };
    let parsed = (|| {
        Some(List {
            subject_id: subject_id?,
            overdue_review_only: r.overdue_review_only,
            after: after?,
            page_size: page_size?,
            scope,
        })
    })();
    done(v, parsed)
}

/// Whether the caller may act on (approve, review, read) a disclosure
/// already requested: it must hold what a request of it would need, its
/// purpose or legal basis and its recipient. Otherwise anyone let call
/// ApproveDisclosure could release to any recipient on any basis.
fn may_touch(permit: &Permit, d: &Disclosure) -> Result<(), Error> {
    permit.allow(
        d.purpose.as_slice(),
        std::slice::from_ref(&d.recipient_id),
        d.legal_basis.as_slice(),
    )
}

/// The caller and the disclosure a follow-up call (approve, review) names.
pub(super) fn actor_and_disclosure<T>(
    request: &Request<T>,
    raw_id: &str,
) -> Result<(Actor, Uuid), Error> {
    let mut v = Violations::new();
    let actor = convert::actor(request, &mut v);
    let id = v.check("disclosure_id", disclosure_id(raw_id));
    done(v, actor.zip(id))
}

/// The disclosure a GetDisclosure names.
pub(super) fn parse_get(r: &pb::GetDisclosureRequest) -> Result<Uuid, Error> {
    disclosure_id(&r.disclosure_id).map_err(|e| Error::invalid("disclosure_id", e))
}

fn disclosure_id(raw: &str) -> Result<Uuid, String> {
    Uuid::parse_str(raw).map_err(|_| "must be a disclosure id (a UUID)".to_string())
}

fn recipient_to_pb(r: &Recipient) -> pb::Recipient {
    pb::Recipient {
        recipient_id: r.id.to_string(),
        name: r.name.clone(),
        category: r.category.to_wire(),
        contact: r.contact.clone(),
        purposes: r.purposes.iter().map(ToString::to_string).collect(),
    }
}

fn withheld_to_pb(field: &FieldName, reason: Reason) -> pb::WithheldField {
    pb::WithheldField {
        field: field.to_string(),
        reason: reason.to_wire(),
    }
}

fn answer_to_pb(answer: DisclosureAnswer) -> pb::RequestDisclosureResponse {
    pb::RequestDisclosureResponse {
        disclosure_id: answer
            .disclosure
            .map(|d| d.disclosure_id.to_string())
            .unwrap_or_default(),
        status: answer.status.to_wire(),
        released: answer
            .released
            .into_iter()
            .map(|r| pb::ReleasedField {
                field: r.field.to_string(),
                value: r.value.into_string(),
                needs_verification: r.needs_verification,
            })
            .collect(),
        withheld: answer
            .withheld
            .iter()
            .map(|(f, reason)| withheld_to_pb(f, *reason))
            .collect(),
    }
}

pub(super) fn disclosure_to_pb(d: domain::Disclosure) -> pb::Disclosure {
    pb::Disclosure {
        disclosure_id: d.disclosure_id.to_string(),
        subject_id: d.subject_id.to_string(),
        recipient_id: d.recipient_id.to_string(),
        purpose: d.purpose.map(|p| p.to_string()).unwrap_or_default(),
        legal_basis: enums::optional_to_wire(d.legal_basis),
        reference: d.reference.map(|r| r.to_string()).unwrap_or_default(),
        justification: d.justification.map(|j| j.to_string()).unwrap_or_default(),
        fields: d.fields.iter().map(ToString::to_string).collect(),
        withheld: d
            .withheld
            .iter()
            .map(|w| withheld_to_pb(&w.field, w.reason))
            .collect(),
        status: d.status.to_wire(),
        requested_by: d.requested_by.to_string(),
        requested_at: convert::timestamp(d.requested_at),
        approved_by: d.approved_by.map(|a| a.to_string()).unwrap_or_default(),
        released_at: d.released_at.and_then(convert::timestamp),
        review_due: d.review_due.and_then(convert::timestamp),
        reviewed_by: d.reviewed_by.map(|a| a.to_string()).unwrap_or_default(),
        reviewed_at: d.reviewed_at.and_then(convert::timestamp),
    }
}
