//! The gRPC adapter: the only module that sees prost types. Each RPC does
//! three things: turn the request into domain values (collecting every
//! violation), call `service`, and turn the result into a response.

mod concern;
mod consent;
mod convert;
mod disclosure;
mod enums;
mod export;
mod observe;
mod page;
mod rights;
mod status;
pub mod tls;

pub use concern::ConcernGrpc;
pub use consent::ConsentGrpc;
pub use disclosure::DisclosureGrpc;
pub use export::export_json;
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
