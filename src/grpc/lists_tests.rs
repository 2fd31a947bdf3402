use prost::Message as _;
use prost_reflect::{DescriptorPool, Kind};

use super::*;
use crate::{
    domain::{FieldViolation, SubjectId},
    grpc::pb,
};

fn violations(result: Result<(), Error>) -> Vec<FieldViolation> {
    match result {
        Ok(()) => Vec::new(),
        Err(Error::InvalidArgument(violations)) => violations,
        Err(other) => panic!("not INVALID_ARGUMENT: {other:?}"),
    }
}

fn batch(items: usize) -> Vec<u8> {
    pb::BatchCheckRequest {
        items: vec![pb::BatchCheckItem::default(); items],
        consistency: None,
    }
    .encode_to_vec()
}

#[test]
fn a_list_over_its_limit_is_one_violation_naming_the_field_and_the_length() {
    assert_eq!(
        violations(check_lists("BatchCheckRequest", &batch(1001))),
        [FieldViolation::new(
            "items",
            "must hold 1 to 1000 items (got 1001)"
        )]
    );
    assert_eq!(
        violations(check_lists("BatchCheckRequest", &batch(200_000))).len(),
        1
    );
}

#[test]
fn lists_within_their_limit_and_too_short_lists_are_left_to_the_conversion() {
    assert!(check_lists("BatchCheckRequest", &batch(1000)).is_ok());
    assert!(check_lists("BatchCheckRequest", &batch(0)).is_ok());
    // A message without a list, and one that is not a request.
    assert!(check_lists("CheckRequest", &[0x0a; 3000]).is_ok());
    assert!(check_lists("BatchCheckResponse", &batch(5000)).is_ok());
}

/// The key of field `number` with wire type `wire`.
fn key(number: u32, wire: u32) -> u8 {
    u8::try_from(number << 3 | wire).unwrap()
}

#[test]
fn only_top_level_occurrences_of_the_field_count_whatever_surrounds_them() {
    let mut bytes = Vec::new();
    for _ in 0..3 {
        bytes.extend([key(1, 2), 0]); // an element
        bytes.extend([key(2, 0), 0x96, 0x01]); // a varint
        bytes.extend([key(3, 1), 0, 0, 0, 0, 0, 0, 0, 0]); // 64 bits
        bytes.extend([key(4, 5), 0, 0, 0, 0]); // 32 bits
        bytes.extend([key(5, 2), 2, key(1, 0), 1]); // bytes that look like field 1
    }
    // A group holding field 1 twice: not the message's own field 1.
    bytes.extend([key(6, 3), key(1, 2), 0, key(1, 2), 0, key(6, 4)]);
    assert_eq!(count_top_level(&bytes, 1), 3);
    assert_eq!(count_top_level(&bytes, 5), 3);
}

#[test]
fn the_count_stops_at_the_first_malformed_byte() {
    let mut bytes = vec![key(1, 2), 0, key(1, 2), 0];
    let well_formed = bytes.len();
    for tail in [
        vec![key(2, 2), 100],               // a length past the end
        vec![key(2, 6)],                    // no wire type 6
        vec![0],                            // field 0
        vec![key(2, 4)],                    // the end of a group never started
        vec![0xff; 11],                     // a varint that never ends
        vec![0xff, 0xff, 0xff, 0xff, 0x7f], // a key past u32
    ] {
        bytes.truncate(well_formed);
        bytes.extend(&tail);
        bytes.extend([key(1, 2), 0].repeat(5));
        assert_eq!(count_top_level(&bytes, 1), 2, "{tail:?}");
    }
}

fn pool() -> DescriptorPool {
    DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).unwrap()
}

#[test]
fn every_repeated_field_of_every_request_has_its_row_and_every_row_its_field() {
    let pool = pool();
    let mut found = Vec::new();
    for service in pool.services() {
        for method in service.methods() {
            let input = method.input();
            for field in input.fields().filter(|f| f.is_list()) {
                let rpc = format!("{}/{}", service.full_name(), method.name());
                let list = list_of(input.name())
                    .unwrap_or_else(|| panic!("{rpc}: {} has no limit in LISTS", field.name()));
                assert_eq!(list.rpc, rpc);
                assert_eq!(list.number, field.number(), "{rpc}");
                assert_eq!(list.limit.field, field.name(), "{rpc}");
                found.push(rpc);
            }
            // Only top-level lists are counted: an element must not carry
            // a list of its own.
            for field in input.fields() {
                if let Kind::Message(inner) = field.kind() {
                    assert!(
                        inner.fields().all(|f| !f.is_list()),
                        "{}.{} holds a list the scan cannot see",
                        input.name(),
                        field.name()
                    );
                }
            }
        }
    }
    let mut rows: Vec<&str> = LISTS.iter().map(|list| list.rpc).collect();
    found.sort();
    rows.sort_unstable();
    assert_eq!(found, rows, "one row per list");
}

/// Characters of 4 bytes, the most UTF-8 spends on one.
fn wide(chars: usize) -> String {
    "\u{1F600}".repeat(chars)
}

/// A policy code at its longest.
fn code() -> String {
    "c".repeat(64)
}

#[test]
fn the_largest_valid_request_of_each_list_fits_its_cap() {
    let id = wide(128);
    assert!(SubjectId::parse(id.clone()).is_ok());
    assert!(SubjectId::parse(wide(129)).is_err());
    let item = pb::BatchCheckItem {
        correlation_id: id.clone(),
        subject_id: id.clone(),
        field: code(),
        purpose: code(),
    };
    let campaign = wide(MAX_CAMPAIGN_CHARS);
    let largest: Vec<(&str, Vec<u8>)> = vec![
        (
            "BatchCheckRequest",
            pb::BatchCheckRequest {
                items: vec![item; 1000],
                consistency: Some(freshest()),
            }
            .encode_to_vec(),
        ),
        (
            "BulkCheckRequest",
            pb::BulkCheckRequest {
                purpose: code(),
                field: code(),
                subject_ids: vec!["x".repeat(128); 10_000],
                consistency: Some(freshest()),
            }
            .encode_to_vec(),
        ),
        (
            "WatchChangesRequest",
            pb::WatchChangesRequest {
                after: i64::MAX,
                purposes: vec![code(); 100],
            }
            .encode_to_vec(),
        ),
        (
            "CreateUnsubscribeLinksRequest",
            pb::CreateUnsubscribeLinksRequest {
                purpose: code(),
                field: code(),
                campaign: campaign.clone(),
                subject_ids: vec![id.clone(); 1000],
            }
            .encode_to_vec(),
        ),
        (
            "CreatePreferenceLinksRequest",
            pb::CreatePreferenceLinksRequest {
                subject_ids: vec![id.clone(); 1000],
                campaign,
            }
            .encode_to_vec(),
        ),
        (
            "FileConcernRequest",
            pb::FileConcernRequest {
                subject_id: id.clone(),
                contact: wide(MAX_CONTACT_CHARS),
                category: i32::MAX,
                description: wide(MAX_TEXT_CHARS),
                links: vec![format!("urn:uuid:{}", uuid::Uuid::nil()); 50],
                request_id: id.clone(),
            }
            .encode_to_vec(),
        ),
        (
            "PutPersonalDataRequest",
            pb::PutPersonalDataRequest {
                subject_id: id.clone(),
                field: code(),
                value: wide(PersonalValue::MAX_CHARS),
                collected_for: vec![code(); 100],
                channel: i32::MIN,
                notice_version: wide(64),
                request_id: id.clone(),
            }
            .encode_to_vec(),
        ),
        (
            "RequestDisclosureRequest",
            pb::RequestDisclosureRequest {
                subject_id: id.clone(),
                recipient_id: code(),
                purpose: code(),
                fields: vec![code(); 100],
                legal_basis: i32::MIN,
                reference: wide(256),
                justification: wide(2000),
                request_id: id,
            }
            .encode_to_vec(),
        ),
    ];
    assert_eq!(largest.len(), LISTS.len());
    for (message, bytes) in largest {
        let list = list_of(message).unwrap();
        assert!(
            bytes.len() <= list.max_bytes(),
            "{message}: {} bytes over the cap of {}",
            bytes.len(),
            list.max_bytes()
        );
        assert!(check_lists(message, &bytes).is_ok(), "{message}");
    }
}

#[test]
fn a_list_rpc_is_capped_below_the_message_size_and_others_at_it() {
    let batch = "/consent.v1.ConsentService/BatchCheck";
    let cap = request_cap(batch, 4 << 20);
    assert!(cap < 2 << 20, "{cap}");
    assert_eq!(request_cap(batch, 1000), 1000);
    assert_eq!(
        request_cap("/consent.v1.ConsentService/Check", 4 << 20),
        4 << 20
    );
}

/// The largest consistency a check may carry: a token.
fn freshest() -> pb::Consistency {
    pb::Consistency {
        requirement: Some(pb::consistency::Requirement::AtLeastAsFresh(
            crate::domain::ConsistencyToken::at(i64::MAX).encode(),
        )),
    }
}
