//! The gRPC adapter: the only module that sees prost types. Each RPC does
//! three things: turn the request into domain values (collecting every
//! violation), call `service`, and turn the result into a response.

mod concern;
mod consent;
mod convert;
mod disclosure;
mod enums;
mod export;
mod health;
mod observe;
mod page;
mod rights;
mod status;

pub use concern::ConcernGrpc;
pub use consent::ConsentGrpc;
pub use disclosure::DisclosureGrpc;
pub use export::export_json;
pub use health::health_server;
pub use rights::SubjectRightsGrpc;

/// The generated `consent.v1` types and service traits. Generated code is
/// not ours to lint: proto comments are prose, not rustdoc.
#[allow(clippy::all)]
pub mod pb {
    tonic::include_proto!("consent.v1");

    /// The encoded descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("consent_descriptor");
}

/// Every `consent.v1` method as `package.Service/Method`, the form a callers
/// file names them in.
pub fn method_paths() -> anyhow::Result<Vec<String>> {
    let pool = prost_reflect::DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET)?;
    Ok(pool
        .services()
        .flat_map(|service| service.methods().collect::<Vec<_>>())
        .map(|method| format!("{}/{}", method.parent_service().full_name(), method.name()))
        .collect())
}
