pub mod domain;
pub mod policy;
pub mod pb {
    tonic::include_proto!("consent.v1");
}
