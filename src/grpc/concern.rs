//! `consent.v1.ConcernService` over the domain service.

use chrono::{DateTime, Utc};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{
    convert::{self, optional, required_enum},
    observe::observe,
    page::PageToken,
    pb::{self, concern_service_server::ConcernService as Rpc},
};
use crate::{
    domain::{
        self, Concern, ConcernCategory, ConcernOutcome, ConcernStatus, NewConcern, RequestId,
        SubjectId, Text, Violations,
    },
    error::Error,
    policy::concern::ConcernDeadlines,
    service::concern::ConcernService,
    store::{MAX_CONTACT_CHARS, MAX_TEXT_CHARS},
};

const SERVICE: &str = "consent.v1.ConcernService";
const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_LINKS: usize = 50;

/// Serves `consent.v1.ConcernService`.
#[derive(Clone)]
pub struct ConcernGrpc {
    service: ConcernService,
}

impl ConcernGrpc {
    pub fn new(service: ConcernService) -> Self {
        Self { service }
    }

    pub fn into_server(self) -> pb::concern_service_server::ConcernServiceServer<Self> {
        pb::concern_service_server::ConcernServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl Rpc for ConcernGrpc {
    async fn file_concern(
        &self,
        request: Request<pb::FileConcernRequest>,
    ) -> Result<Response<pb::FileConcernResponse>, Status> {
        observe(SERVICE, "FileConcern", request, |r| {
            self.file_concern_rpc(r)
        })
        .await
    }

    async fn acknowledge_concern(
        &self,
        request: Request<pb::AcknowledgeConcernRequest>,
    ) -> Result<Response<pb::AcknowledgeConcernResponse>, Status> {
        observe(SERVICE, "AcknowledgeConcern", request, |r| {
            self.acknowledge_concern_rpc(r)
        })
        .await
    }

    async fn resolve_concern(
        &self,
        request: Request<pb::ResolveConcernRequest>,
    ) -> Result<Response<pb::ResolveConcernResponse>, Status> {
        observe(SERVICE, "ResolveConcern", request, |r| {
            self.resolve_concern_rpc(r)
        })
        .await
    }

    async fn get_concern(
        &self,
        request: Request<pb::GetConcernRequest>,
    ) -> Result<Response<pb::GetConcernResponse>, Status> {
        observe(SERVICE, "GetConcern", request, |r| self.get_concern_rpc(r)).await
    }

    async fn list_concerns(
        &self,
        request: Request<pb::ListConcernsRequest>,
    ) -> Result<Response<pb::ListConcernsResponse>, Status> {
        observe(SERVICE, "ListConcerns", request, |r| {
            self.list_concerns_rpc(r)
        })
        .await
    }
}

impl ConcernGrpc {
    async fn file_concern_rpc(
        &self,
        request: Request<pb::FileConcernRequest>,
    ) -> Result<Response<pb::FileConcernResponse>, Status> {
        let mut v = Violations::new();
        let actor = convert::actor(&request, &mut v);
        let r = request.into_inner();
        let subject_id = optional(&mut v, "subject_id", r.subject_id, SubjectId::parse);
        let contact = v.check("contact", Text::parse(r.contact, MAX_CONTACT_CHARS));
        let category = required_enum(
            &mut v,
            "category",
            r.category,
            |n| pb::ConcernCategory::try_from(n).ok(),
            category,
        );
        let description = v.check("description", Text::parse(r.description, MAX_TEXT_CHARS));
        if r.links.len() > MAX_LINKS {
            v.push(
                "links",
                format!("at most {MAX_LINKS} links (got {})", r.links.len()),
            );
        }
        let links: Vec<Uuid> = r
            .links
            .iter()
            .enumerate()
            .filter_map(|(i, link)| v.check(format!("links[{i}]"), uuid(link)))
            .collect();
        let request_id = optional(&mut v, "request_id", r.request_id, RequestId::parse);
        let (
            Some(actor),
            Some(subject_id),
            Some(contact),
            Some(category),
            Some(description),
            Some(request_id),
            true,
        ) = (
            actor,
            subject_id,
            contact,
            category,
            description,
            request_id,
            v.is_empty(),
        )
        else {
            return Err(Error::from(v).into());
        };
        let concern = self
            .service
            .file(&NewConcern {
                subject_id,
                contact,
                category,
                description,
                links,
                actor,
                request_id,
            })
            .await?;
        Ok(Response::new(pb::FileConcernResponse {
            concern_id: concern.concern_id.to_string(),
            concern: Some(self.to_pb(concern, false)),
        }))
    }

    async fn acknowledge_concern_rpc(
        &self,
        request: Request<pb::AcknowledgeConcernRequest>,
    ) -> Result<Response<pb::AcknowledgeConcernResponse>, Status> {
        let mut v = Violations::new();
        let actor = convert::actor(&request, &mut v);
        let id = v.check("concern_id", uuid(&request.get_ref().concern_id));
        let (Some(actor), Some(id)) = (actor, id) else {
            return Err(Error::from(v).into());
        };
        let concern = self.service.acknowledge(id, &actor).await?;
        Ok(Response::new(pb::AcknowledgeConcernResponse {
            concern: Some(self.to_pb(concern, true)),
        }))
    }

    async fn resolve_concern_rpc(
        &self,
        request: Request<pb::ResolveConcernRequest>,
    ) -> Result<Response<pb::ResolveConcernResponse>, Status> {
        let mut v = Violations::new();
        let actor = convert::actor(&request, &mut v);
        let r = request.into_inner();
        let id = v.check("concern_id", uuid(&r.concern_id));
        let outcome = required_enum(
            &mut v,
            "outcome",
            r.outcome,
            |n| pb::ConcernOutcome::try_from(n).ok(),
            outcome,
        );
        if r.resolution.chars().count() > MAX_TEXT_CHARS {
            v.push(
                "resolution",
                format!("must be at most {MAX_TEXT_CHARS} characters"),
            );
        }
        let (Some(actor), Some(id), Some(outcome), true) = (actor, id, outcome, v.is_empty())
        else {
            return Err(Error::from(v).into());
        };
        let concern = self
            .service
            .resolve(id, outcome, r.resolution, &actor)
            .await?;
        Ok(Response::new(pb::ResolveConcernResponse {
            concern: Some(self.to_pb(concern, true)),
        }))
    }

    async fn get_concern_rpc(
        &self,
        request: Request<pb::GetConcernRequest>,
    ) -> Result<Response<pb::GetConcernResponse>, Status> {
        let id =
            uuid(&request.get_ref().concern_id).map_err(|e| Error::invalid("concern_id", e))?;
        let concern = self.service.get(id).await?;
        Ok(Response::new(pb::GetConcernResponse {
            concern: Some(self.to_pb(concern, true)),
        }))
    }

    async fn list_concerns_rpc(
        &self,
        request: Request<pb::ListConcernsRequest>,
    ) -> Result<Response<pb::ListConcernsResponse>, Status> {
        let r = request.into_inner();
        let mut v = Violations::new();
        let status = match pb::ConcernStatus::try_from(r.status) {
            Ok(pb::ConcernStatus::Unspecified) => Some(None),
            Ok(known) => Some(status(known)),
            Err(_) => {
                v.push("status", format!("unknown value {}", r.status));
                None
            }
        };
        let page_size = v.check(
            "page_size",
            match r.page_size {
                0 => Ok(DEFAULT_PAGE_SIZE),
                n @ 1..=1000 => Ok(n as usize),
                n => Err(format!("must be between 0 and 1000 (got {n})")),
            },
        );
        // The token is bound to the filter, so it cannot be reused with another.
        let scope = format!("concerns/{}/{}", r.status, r.overdue_only);
        let after = if r.page_token.is_empty() {
            Some(None)
        } else {
            v.check(
                "page_token",
                PageToken::decode(&r.page_token, &scope).and_then(|p| position(&p)),
            )
            .map(Some)
        };
        let (Some(status), Some(page_size), Some(after)) = (status, page_size, after) else {
            return Err(Error::from(v).into());
        };
        let page = self
            .service
            .list(status, r.overdue_only, after, page_size)
            .await?;
        Ok(Response::new(pb::ListConcernsResponse {
            concerns: page
                .concerns
                .into_iter()
                .map(|c| self.to_pb(c, false))
                .collect(),
            next_page_token: page
                .next_after
                .map(|(at, id)| PageToken::encode(&format!("{}|{id}", at.to_rfc3339()), &scope))
                .unwrap_or_default(),
        }))
    }

    fn to_pb(&self, concern: Concern, with_events: bool) -> pb::Concern {
        concern_to_pb(concern, self.service.deadlines(), Utc::now(), with_events)
    }
}

fn position(text: &str) -> Result<(DateTime<Utc>, Uuid), String> {
    let invalid = || "is not a token this service issued".to_string();
    let (at, id) = text.split_once('|').ok_or_else(invalid)?;
    let at = DateTime::parse_from_rfc3339(at)
        .map_err(|_| invalid())?
        .with_timezone(&Utc);
    Ok((at, id.parse().map_err(|_| invalid())?))
}

fn uuid(text: &str) -> Result<Uuid, String> {
    if text.is_empty() {
        return Err("must not be empty".into());
    }
    text.parse().map_err(|_| "must be a UUID".into())
}

fn category(category: pb::ConcernCategory) -> Option<ConcernCategory> {
    match category {
        pb::ConcernCategory::Unspecified => None,
        pb::ConcernCategory::Misuse => Some(ConcernCategory::Misuse),
        pb::ConcernCategory::UnwantedMail => Some(ConcernCategory::UnwantedMail),
        pb::ConcernCategory::WrongData => Some(ConcernCategory::WrongData),
        pb::ConcernCategory::Disclosure => Some(ConcernCategory::Disclosure),
        pb::ConcernCategory::Other => Some(ConcernCategory::Other),
    }
}

fn category_to_pb(category: ConcernCategory) -> pb::ConcernCategory {
    match category {
        ConcernCategory::Misuse => pb::ConcernCategory::Misuse,
        ConcernCategory::UnwantedMail => pb::ConcernCategory::UnwantedMail,
        ConcernCategory::WrongData => pb::ConcernCategory::WrongData,
        ConcernCategory::Disclosure => pb::ConcernCategory::Disclosure,
        ConcernCategory::Other => pb::ConcernCategory::Other,
    }
}

fn outcome(outcome: pb::ConcernOutcome) -> Option<ConcernOutcome> {
    match outcome {
        pb::ConcernOutcome::Unspecified => None,
        pb::ConcernOutcome::Fixed => Some(ConcernOutcome::Fixed),
        pb::ConcernOutcome::NoViolation => Some(ConcernOutcome::NoViolation),
        pb::ConcernOutcome::Rejected => Some(ConcernOutcome::Rejected),
    }
}

fn outcome_to_pb(outcome: Option<ConcernOutcome>) -> pb::ConcernOutcome {
    match outcome {
        None => pb::ConcernOutcome::Unspecified,
        Some(ConcernOutcome::Fixed) => pb::ConcernOutcome::Fixed,
        Some(ConcernOutcome::NoViolation) => pb::ConcernOutcome::NoViolation,
        Some(ConcernOutcome::Rejected) => pb::ConcernOutcome::Rejected,
    }
}

fn status(status: pb::ConcernStatus) -> Option<ConcernStatus> {
    match status {
        pb::ConcernStatus::Unspecified => None,
        pb::ConcernStatus::Filed => Some(ConcernStatus::Filed),
        pb::ConcernStatus::Acknowledged => Some(ConcernStatus::Acknowledged),
        pb::ConcernStatus::Resolved => Some(ConcernStatus::Resolved),
    }
}

fn status_to_pb(status: ConcernStatus) -> pb::ConcernStatus {
    match status {
        ConcernStatus::Filed => pb::ConcernStatus::Filed,
        ConcernStatus::Acknowledged => pb::ConcernStatus::Acknowledged,
        ConcernStatus::Resolved => pb::ConcernStatus::Resolved,
    }
}

pub fn concern_to_pb(
    concern: Concern,
    deadlines: ConcernDeadlines,
    now: DateTime<Utc>,
    with_events: bool,
) -> pb::Concern {
    let status = concern.status();
    let filed_at = concern.filed_at;
    let c: domain::NewConcern = concern.content.clone();
    pb::Concern {
        concern_id: concern.concern_id.to_string(),
        subject_id: c.subject_id.map(|s| s.to_string()).unwrap_or_default(),
        contact: c.contact.as_str().to_string(),
        category: category_to_pb(c.category).into(),
        description: c.description.as_str().to_string(),
        links: c.links.iter().map(Uuid::to_string).collect(),
        filed_at: convert::timestamp(filed_at),
        status: status_to_pb(status).into(),
        outcome: outcome_to_pb(concern.outcome()).into(),
        acknowledge_by: convert::timestamp(deadlines.acknowledge_by(filed_at)),
        resolve_by: convert::timestamp(deadlines.resolve_by(filed_at)),
        overdue: deadlines.is_overdue(status, filed_at, now),
        age_seconds: (now - filed_at).num_seconds().max(0),
        events: if with_events {
            concern
                .events
                .into_iter()
                .map(|e| pb::ConcernEvent {
                    status: status_to_pb(e.status).into(),
                    actor: e.actor.to_string(),
                    at: convert::timestamp(e.at),
                    outcome: outcome_to_pb(e.outcome).into(),
                    resolution: e.resolution,
                })
                .collect()
        } else {
            Vec::new()
        },
    }
}
