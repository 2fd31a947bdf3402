//! `consent.v1.SubjectRightsService`: the person's rights of access and
//! erasure.

use tonic::{Request, Response, Status};

use super::{
    consent::parse_subject,
    convert::{self, done},
    export::export_to_pb,
    observe::observe,
    pb::{self, subject_rights_service_server::SubjectRightsService as Rpc},
};
use crate::{
    domain::{Actor, RequestId, SubjectId, Violations},
    error::Result,
    service::{erasure::Eraser, export::Exporter},
};

const SERVICE: &str = "consent.v1.SubjectRightsService";

/// Serves `consent.v1.SubjectRightsService`.
#[derive(Clone)]
pub struct SubjectRightsGrpc {
    exporter: Exporter,
    eraser: Eraser,
}

impl SubjectRightsGrpc {
    pub fn new(exporter: Exporter, eraser: Eraser) -> Self {
        Self { exporter, eraser }
    }

    pub fn into_server(
        self,
    ) -> pb::subject_rights_service_server::SubjectRightsServiceServer<Self> {
        pb::subject_rights_service_server::SubjectRightsServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl Rpc for SubjectRightsGrpc {
    async fn export_subject(
        &self,
        request: Request<pb::ExportSubjectRequest>,
    ) -> Result<Response<pb::ExportSubjectResponse>, Status> {
        observe(SERVICE, "ExportSubject", request, |r| async move {
            let subject_id = parse_subject(r.into_inner().subject_id)?;
            let export = self.exporter.export(&subject_id).await?;
            Ok(Response::new(export_to_pb(export)))
        })
        .await
    }

    async fn erase_subject(
        &self,
        request: Request<pb::EraseSubjectRequest>,
    ) -> Result<Response<pb::EraseSubjectResponse>, Status> {
        observe(SERVICE, "EraseSubject", request, |r| async move {
            let (subject_id, actor) = parse_erase(r)?;
            let erased = self.eraser.erase(&subject_id, &actor).await?;
            Ok(Response::new(pb::EraseSubjectResponse {
                pseudonym: erased.pseudonym.to_string(),
                erased_at: convert::timestamp(erased.erased_at),
                already_erased: erased.already,
                consistency_token: erased.token.encode(),
            }))
        })
        .await
    }
}

/// The subject to erase and who asks. The `request_id` is checked but not
/// kept: erasing twice is already harmless.
pub(super) fn parse_erase(request: Request<pb::EraseSubjectRequest>) -> Result<(SubjectId, Actor)> {
    let mut v = Violations::new();
    let actor = convert::actor(&request, &mut v);
    let r = request.into_inner();
    let subject_id = v.check("subject_id", SubjectId::parse(r.subject_id));
    let _ = convert::optional(&mut v, "request_id", r.request_id, RequestId::parse);
    done(v, subject_id.zip(actor))
}
