//! The gRPC adapter: the only module that sees prost types. Each RPC does
//! three things: turn the request into domain values (collecting every
//! violation), call `service`, and turn the result into a response.

mod auth;
mod bulk;
pub mod codec;
mod concern;
mod consent;
mod consistency;
mod convert;
mod disclosure;
mod enums;
mod export;
mod health;
mod limits;
mod lists;
mod message_size;
mod observe;
mod page;
mod rights;
mod status;
mod validate;

pub use auth::{Authenticator, cert_subject};
pub use concern::ConcernGrpc;
pub use consent::ConsentGrpc;
pub use disclosure::DisclosureGrpc;
pub use export::export_json;
pub use health::{follow_readiness, health_server, report_health};
pub use limits::LimitLayer;
pub use lists::{check_lists, list_rpcs, request_cap};
pub use message_size::SizeCapped;
pub use rights::SubjectRightsGrpc;
pub use validate::validate;

/// The generated `consent.v1` types and service traits. Generated code is
/// not ours to lint: proto comments are prose, not rustdoc.
#[allow(clippy::all)]
pub mod pb {
    tonic::include_proto!("consent.v1");

    /// The encoded descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("consent_descriptor");
}

impl pb::WatchChangesResponse {
    /// The change's position in the feed: the cursor to resume from.
    pub fn sequence(&self) -> Option<i64> {
        use pb::watch_changes_response::Change;
        match self.change.as_ref()? {
            Change::Record(record) => Some(record.sequence),
            Change::Erasure(erasure) => Some(erasure.sequence),
        }
    }

    /// The consent record it carries, when it carries one.
    pub fn into_record(self) -> Option<pb::ConsentRecord> {
        match self.change? {
            pb::watch_changes_response::Change::Record(record) => Some(record),
            pb::watch_changes_response::Change::Erasure(_) => None,
        }
    }
}

/// Every method the consent.v1 services serve, as the callers file names
/// them (`consent.v1.ConsentService/Check`), read from the descriptors so
/// that a new RPC is known to the callers check without a list to update.
pub fn served_rpcs() -> Vec<String> {
    let pool = prost_reflect::DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET)
        .expect("the embedded descriptor set decodes");
    pool.services()
        .filter(|service| service.package_name() == "consent.v1")
        .flat_map(|service| {
            (service.methods())
                .map(|method| format!("{}/{}", service.full_name(), method.name()))
                .collect::<Vec<_>>()
        })
        .collect()
}
