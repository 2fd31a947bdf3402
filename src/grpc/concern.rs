//! `consent.v1.ConcernService` over the domain service.

use chrono::{DateTime, Utc};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{
    convert::{self, done, optional},
    enums::{self, PbEnum as _},
    observe::observe,
    page::PageToken,
    pb::{self, concern_service_server::ConcernService as Rpc},
};
use crate::{
    domain::{
        Actor, ConcernCategory, ConcernOutcome, ConcernStatus, ListLimit, NewConcern, RequestId,
        Resolution, SubjectId, Text, Violations,
    },
    error::Error,
    service::concern::{ConcernService, ConcernView},
    store::{MAX_CONTACT_CHARS, MAX_TEXT_CHARS},
};

const SERVICE: &str = "consent.v1.ConcernService";
const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 1000;
/// FileConcern's `links`.
pub(super) const CONCERN_LINKS: ListLimit = ListLimit {
    field: "links",
    noun: "links",
    min: 0,
    max: 50,
};

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
        observe(SERVICE, "FileConcern", request, |r| async move {
            let view = self.service.file(&parse_file(r)?).await?;
            Ok(Response::new(pb::FileConcernResponse {
                concern_id: view.concern.concern_id.to_string(),
                concern: Some(concern_to_pb(view, false)),
            }))
        })
        .await
    }

    async fn acknowledge_concern(
        &self,
        request: Request<pb::AcknowledgeConcernRequest>,
    ) -> Result<Response<pb::AcknowledgeConcernResponse>, Status> {
        observe(SERVICE, "AcknowledgeConcern", request, |r| async move {
            let (actor, id) = parse_acknowledge(r)?;
            let view = self.service.acknowledge(id, &actor).await?;
            Ok(Response::new(pb::AcknowledgeConcernResponse {
                concern: Some(concern_to_pb(view, true)),
            }))
        })
        .await
    }

    async fn resolve_concern(
        &self,
        request: Request<pb::ResolveConcernRequest>,
    ) -> Result<Response<pb::ResolveConcernResponse>, Status> {
        observe(SERVICE, "ResolveConcern", request, |r| async move {
            let Resolve {
                actor,
                id,
                outcome,
                resolution,
            } = parse_resolve(r)?;
            let view = self
                .service
                .resolve(id, outcome, resolution, &actor)
                .await?;
            Ok(Response::new(pb::ResolveConcernResponse {
                concern: Some(concern_to_pb(view, true)),
            }))
        })
        .await
    }

    async fn get_concern(
        &self,
        request: Request<pb::GetConcernRequest>,
    ) -> Result<Response<pb::GetConcernResponse>, Status> {
        observe(SERVICE, "GetConcern", request, |r| async move {
            let id = parse_get(r.into_inner())?;
            let view = self.service.get(id).await?;
            Ok(Response::new(pb::GetConcernResponse {
                concern: Some(concern_to_pb(view, true)),
            }))
        })
        .await
    }

    async fn list_concerns(
        &self,
        request: Request<pb::ListConcernsRequest>,
    ) -> Result<Response<pb::ListConcernsResponse>, Status> {
        observe(SERVICE, "ListConcerns", request, |r| async move {
            let List {
                status,
                overdue_only,
                after,
                page_size,
                scope,
            } = parse_list(r.into_inner())?;
            let page = self
                .service
                .list(status, overdue_only, after, page_size)
                .await?;
            Ok(Response::new(pb::ListConcernsResponse {
                concerns: page
                    .concerns
                    .into_iter()
                    .map(|c| concern_to_pb(c, false))
                    .collect(),
                next_page_token: page
                    .next_after
                    .map(|(at, id)| PageToken::encode(&format!("{}|{id}", at.to_rfc3339()), &scope))
                    .unwrap_or_default(),
            }))
        })
        .await
    }
}

pub(super) fn parse_file(request: Request<pb::FileConcernRequest>) -> Result<NewConcern, Error> {
    let mut v = Violations::new();
    let actor = convert::actor(&request, &mut v);
    let r = request.into_inner();
    let subject_id = optional(&mut v, "subject_id", r.subject_id, SubjectId::parse);
    let contact = v.check("contact", Text::parse(r.contact, MAX_CONTACT_CHARS));
    let category = enums::required::<ConcernCategory>(&mut v, "category", r.category);
    let description = v.check("description", Text::parse(r.description, MAX_TEXT_CHARS));
    let links: Vec<Uuid> = if CONCERN_LINKS.check(&mut v, r.links.len()) {
        (r.links.iter().enumerate())
            .filter_map(|(i, link)| v.check(format!("links[{i}]"), uuid(link)))
            .collect()
    } else {
        Vec::new()
    };
    let request_id = optional(&mut v, "request_id", r.request_id, RequestId::parse);
    let parsed = (|| {
        Some(NewConcern {
            subject_id: subject_id?,
            contact: contact?,
            category: category?,
            description: description?,
            links,
            actor: actor?,
            request_id: request_id?,
        })
    })();
    done(v, parsed)
}

pub(super) fn parse_acknowledge(
    request: Request<pb::AcknowledgeConcernRequest>,
) -> Result<(Actor, Uuid), Error> {
    let mut v = Violations::new();
    let actor = convert::actor(&request, &mut v);
    let id = v.check("concern_id", uuid(&request.get_ref().concern_id));
    done(v, actor.zip(id))
}

pub(super) struct Resolve {
    actor: Actor,
    id: Uuid,
    outcome: ConcernOutcome,
    resolution: Resolution,
}

pub(super) fn parse_resolve(request: Request<pb::ResolveConcernRequest>) -> Result<Resolve, Error> {
    let mut v = Violations::new();
    let actor = convert::actor(&request, &mut v);
    let r = request.into_inner();
    let id = v.check("concern_id", uuid(&r.concern_id));
    let outcome = enums::required::<ConcernOutcome>(&mut v, "outcome", r.outcome);
    let resolution = v.check(
        "resolution",
        Resolution::parse(r.resolution, outcome, MAX_TEXT_CHARS),
    );
    let parsed = (|| {
        Some(Resolve {
            actor: actor?,
            id: id?,
            outcome: outcome?,
            resolution: resolution?,
        })
    })();
    done(v, parsed)
}

pub(super) fn parse_get(r: pb::GetConcernRequest) -> Result<Uuid, Error> {
    uuid(&r.concern_id).map_err(|e| Error::invalid("concern_id", e))
}

pub(super) struct List {
    status: Option<ConcernStatus>,
    overdue_only: bool,
    after: Option<(DateTime<Utc>, Uuid)>,
    page_size: usize,
    /// What the page tokens are bound to, so one cannot be reused with
    /// another filter.
    scope: String,
}

pub(super) fn parse_list(r: pb::ListConcernsRequest) -> Result<List, Error> {
    let mut v = Violations::new();
    let status = enums::optional::<ConcernStatus>(&mut v, "status", r.status);
    let page_size = v.check(
        "page_size",
        PageToken::page_size(r.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE),
    );
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
    let parsed = (|| {
        Some(List {
            status: status?,
            overdue_only: r.overdue_only,
            after: after?,
            page_size: page_size?,
            scope,
        })
    })();
    done(v, parsed)
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

pub fn concern_to_pb(view: ConcernView, with_events: bool) -> pb::Concern {
    let concern = view.concern;
    let c = concern.content;
    pb::Concern {
        concern_id: concern.concern_id.to_string(),
        subject_id: c.subject_id.map(|s| s.to_string()).unwrap_or_default(),
        contact: c.contact.as_str().to_string(),
        category: c.category.to_wire(),
        description: c.description.as_str().to_string(),
        links: c.links.iter().map(Uuid::to_string).collect(),
        filed_at: convert::timestamp(concern.filed_at),
        status: view.status.to_wire(),
        outcome: enums::optional_to_wire(view.outcome),
        acknowledge_by: convert::timestamp(view.acknowledge_by),
        resolve_by: convert::timestamp(view.resolve_by),
        overdue: view.overdue,
        age_seconds: view.age_seconds,
        events: if with_events {
            concern
                .events
                .into_iter()
                .map(|e| pb::ConcernEvent {
                    status: e.status.to_wire(),
                    actor: e.actor.to_string(),
                    at: convert::timestamp(e.at),
                    outcome: enums::optional_to_wire(e.outcome),
                    resolution: e.resolution,
                })
                .collect()
        } else {
            Vec::new()
        },
    }
}
