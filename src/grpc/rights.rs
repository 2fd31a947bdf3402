//! `consent.v1.SubjectRightsService`: the person's right of access.

use tonic::{Request, Response, Status};

use super::{
    export::export_to_pb,
    observe::observe,
    pb::{self, subject_rights_service_server::SubjectRightsService as Rpc},
};
use crate::{
    domain::SubjectId, error::Error, policy::concern::ConcernDeadlines, service::export::Exporter,
};

const SERVICE: &str = "consent.v1.SubjectRightsService";

/// Serves `consent.v1.SubjectRightsService`.
#[derive(Clone)]
pub struct SubjectRightsGrpc {
    exporter: Exporter,
    deadlines: ConcernDeadlines,
}

impl SubjectRightsGrpc {
    pub fn new(exporter: Exporter, deadlines: ConcernDeadlines) -> Self {
        Self {
            exporter,
            deadlines,
        }
    }

    pub fn into_server(
        self,
    ) -> pb::subject_rights_service_server::SubjectRightsServiceServer<Self> {
        pb::subject_rights_service_server::SubjectRightsServiceServer::new(self)
    }

    async fn export_subject_rpc(
        &self,
        request: Request<pb::ExportSubjectRequest>,
    ) -> Result<Response<pb::ExportSubjectResponse>, Status> {
        let subject_id = SubjectId::parse(request.into_inner().subject_id)
            .map_err(|e| Error::invalid("subject_id", e))?;
        let export = self.exporter.export(&subject_id).await?;
        Ok(Response::new(export_to_pb(export, self.deadlines)))
    }
}

#[tonic::async_trait]
impl Rpc for SubjectRightsGrpc {
    async fn export_subject(
        &self,
        request: Request<pb::ExportSubjectRequest>,
    ) -> Result<Response<pb::ExportSubjectResponse>, Status> {
        observe(SERVICE, "ExportSubject", request, |r| {
            self.export_subject_rpc(r)
        })
        .await
    }
}
