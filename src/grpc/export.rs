//! The subject export as protobuf, shared by the ExportSubject RPC and the
//! `export-subject` command (which prints it as proto-JSON, through the
//! renderer `main` hands it, so that commands never see prost types).

use prost::Message as _;

use super::{
    concern::concern_to_pb, convert, disclosure::disclosure_to_pb, enums::PbEnum as _, pb,
};
use crate::service::export::SubjectExport;

pub fn export_to_pb(export: SubjectExport) -> pb::ExportSubjectResponse {
    pb::ExportSubjectResponse {
        subject: Some(convert::subject_to_pb(export.subject)),
        personal_data: export
            .personal_data
            .into_iter()
            .map(|f| pb::ExportedPersonalData {
                field: f.field.to_string(),
                value: f.value.into_string(),
                collected_for: f.collected_for,
                collected_at: convert::timestamp(f.collected_at),
                verified_at: f.verified_at.and_then(convert::timestamp),
            })
            .collect(),
        collections: export
            .collections
            .into_iter()
            .map(|c| pb::CollectionRecord {
                collection_id: c.collection_id.to_string(),
                field: c.field.to_string(),
                collected_for: c.collected_for,
                channel: c.channel.to_wire(),
                notice_version: c.notice_version,
                actor: c.actor.to_string(),
                collected_at: convert::timestamp(c.collected_at),
            })
            .collect(),
        consent_history: export
            .consent_history
            .into_iter()
            .map(convert::record_to_pb)
            .collect(),
        current_choices: export
            .current_choices
            .into_iter()
            .map(convert::choice_state_to_pb)
            .collect(),
        disclosures: export
            .disclosures
            .into_iter()
            .map(disclosure_to_pb)
            .collect(),
        concerns: export
            .concerns
            .into_iter()
            .map(|c| concern_to_pb(c, true))
            .collect(),
        exported_at: convert::timestamp(export.exported_at),
        chain_head: export.chain_head.map(|h| pb::ChainHead {
            hash: crate::keys::hex(&h.head),
            length: h.length,
        }),
        access_events: export
            .access_events
            .into_iter()
            .map(|a| pb::AccessEvent {
                access_id: a.access_id.to_string(),
                channel: a.channel.to_wire(),
                campaign: a.campaign,
                accessed_at: convert::timestamp(a.accessed_at),
            })
            .collect(),
    }
}

/// The export as the ExportSubject RPC answers it, in proto-JSON.
pub fn export_json(export: SubjectExport) -> anyhow::Result<String> {
    to_json(&export_to_pb(export))
}

/// Canonical proto-JSON (field names in lowerCamelCase, enums by name,
/// timestamps in RFC 3339), pretty-printed.
pub fn to_json(export: &pb::ExportSubjectResponse) -> anyhow::Result<String> {
    let pool = prost_reflect::DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET)?;
    let descriptor = pool
        .get_message_by_name("consent.v1.ExportSubjectResponse")
        .ok_or_else(|| anyhow::anyhow!("the descriptor set lacks ExportSubjectResponse"))?;
    let message =
        prost_reflect::DynamicMessage::decode(descriptor, export.encode_to_vec().as_slice())?;
    Ok(serde_json::to_string_pretty(&message)?)
}
