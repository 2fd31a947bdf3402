//! Every repeated field of every request, with its limit, checked in the
//! raw protobuf bytes before prost decodes anything.
//!
//! prost would allocate every element of a list before any handler could
//! count them: a 4 MiB BatchCheck of empty items is two million items, and
//! four at once took the server from 14 MB to 330 MB. Counting the field's
//! occurrences in the bytes costs no allocation, so an over-long list is
//! refused with its one violation while it is still bytes.
//!
//! The same table gives each list-carrying RPC a message size cap: the
//! largest request its limits allow, so a maximal hostile request buffers
//! about what a maximal honest one does, not `--max-message-bytes`.

use crate::{
    domain::{ListLimit, PersonalValue},
    error::Error,
    service::{
        BATCH_ITEMS, BULK_SUBJECTS, WATCH_PURPOSES,
        disclosure::{COLLECTED_FOR, DISCLOSED_FIELDS},
        preferences,
        unsubscribe::{self, MAX_CAMPAIGN_CHARS},
    },
    store::{MAX_CONTACT_CHARS, MAX_TEXT_CHARS},
};

use super::concern::CONCERN_LINKS;

/// One repeated field of one request message.
#[derive(Debug)]
pub struct RequestList {
    /// The method, as the callers file names it.
    pub rpc: &'static str,
    /// The request message, without its package.
    pub message: &'static str,
    /// The repeated field's number in that message.
    pub number: u32,
    pub limit: &'static ListLimit,
    /// One element at its largest, encoded with its tag and length.
    item_bytes: usize,
    /// Every other field of the message at its largest, encoded.
    other_bytes: usize,
}

impl RequestList {
    /// The largest request the limits allow: anything bigger cannot be
    /// valid, so it is refused before it is buffered.
    pub const fn max_bytes(&self) -> usize {
        self.limit.max * self.item_bytes + self.other_bytes
    }
}

/// A length-delimited field of up to `bytes` bytes, with its tag and length
/// (8 bytes covers any tag and any length varint that fits a message).
const fn bytes_field(bytes: usize) -> usize {
    bytes + 8
}

/// A string of up to `chars` characters, each up to 4 bytes of UTF-8.
const fn text(chars: usize) -> usize {
    bytes_field(4 * chars)
}

/// A policy code (purpose, field, recipient): at most 64 ASCII bytes.
const CODE: usize = bytes_field(64);
/// An enum or an int64: a tag and a varint of at most 10 bytes.
const NUMBER: usize = 12;
/// External ids, request ids and correlation ids: at most 128 characters.
const ID: usize = text(128);
/// A UUID in its longest accepted spelling (`urn:uuid:…`).
const UUID: usize = bytes_field(45);

/// Every list a request can carry. The tests below hold this table to the
/// descriptors: each repeated field of each request has its row.
pub const LISTS: &[RequestList] = &[
    RequestList {
        rpc: "consent.v1.ConsentService/BatchCheck",
        message: "BatchCheckRequest",
        number: 1,
        limit: &BATCH_ITEMS,
        // correlation_id, subject_id, field, purpose.
        item_bytes: bytes_field(ID + ID + CODE + CODE),
        other_bytes: 0,
    },
    RequestList {
        rpc: "consent.v1.ConsentService/BulkCheck",
        message: "BulkCheckRequest",
        number: 3,
        limit: &BULK_SUBJECTS,
        // A mailer's ids are ASCII: 10,000 of 128 ASCII characters fit, and
        // the cap stays near what an honest message holds, not four times
        // that. Longer (non-ASCII) ids go in smaller messages.
        item_bytes: bytes_field(128),
        // purpose, field.
        other_bytes: CODE + CODE,
    },
    RequestList {
        rpc: "consent.v1.ConsentService/WatchChanges",
        message: "WatchChangesRequest",
        number: 2,
        limit: &WATCH_PURPOSES,
        item_bytes: CODE,
        // after.
        other_bytes: NUMBER,
    },
    RequestList {
        rpc: "consent.v1.ConsentService/CreateUnsubscribeLinks",
        message: "CreateUnsubscribeLinksRequest",
        number: 4,
        limit: &unsubscribe::LINK_SUBJECTS,
        item_bytes: ID,
        // purpose, field, campaign.
        other_bytes: CODE + CODE + text(MAX_CAMPAIGN_CHARS),
    },
    RequestList {
        rpc: "consent.v1.ConsentService/CreatePreferenceLinks",
        message: "CreatePreferenceLinksRequest",
        number: 1,
        limit: &preferences::LINK_SUBJECTS,
        item_bytes: ID,
        // campaign.
        other_bytes: text(MAX_CAMPAIGN_CHARS),
    },
    RequestList {
        rpc: "consent.v1.ConcernService/FileConcern",
        message: "FileConcernRequest",
        number: 5,
        limit: &CONCERN_LINKS,
        item_bytes: UUID,
        // subject_id, contact, category, description, request_id.
        other_bytes: ID + text(MAX_CONTACT_CHARS) + NUMBER + text(MAX_TEXT_CHARS) + ID,
    },
    RequestList {
        rpc: "consent.v1.DisclosureService/PutPersonalData",
        message: "PutPersonalDataRequest",
        number: 4,
        limit: &COLLECTED_FOR,
        item_bytes: CODE,
        // subject_id, field, value, channel, notice_version, request_id.
        other_bytes: ID + CODE + text(PersonalValue::MAX_CHARS) + NUMBER + text(64) + ID,
    },
    RequestList {
        rpc: "consent.v1.DisclosureService/RequestDisclosure",
        message: "RequestDisclosureRequest",
        number: 4,
        limit: &DISCLOSED_FIELDS,
        item_bytes: CODE,
        // subject_id, recipient_id, purpose, legal_basis, reference,
        // justification, request_id.
        other_bytes: ID + CODE + CODE + NUMBER + text(256) + text(2000) + ID,
    },
];

/// Every method whose request carries a list, as the callers file names it.
pub fn list_rpcs() -> impl Iterator<Item = &'static str> {
    LISTS.iter().map(|list| list.rpc)
}

/// The list `message` (a consent.v1 message name) carries, if any.
pub fn list_of(message: &str) -> Option<&'static RequestList> {
    LISTS.iter().find(|list| list.message == message)
}

/// The largest request `path` (`/consent.v1.ConsentService/BatchCheck`)
/// accepts: its list's cap, and never more than `max_message_bytes`.
pub fn request_cap(path: &str, max_message_bytes: usize) -> usize {
    let rpc = path.strip_prefix('/').unwrap_or(path);
    LISTS
        .iter()
        .find(|list| list.rpc == rpc)
        .map_or(max_message_bytes, |list| {
            list.max_bytes().min(max_message_bytes)
        })
}

/// Refuses an encoded `message` whose list is over its limit, with the one
/// violation the conversion would give. Anything else, malformed bytes
/// included, is left to prost and the conversion: the count stops at the
/// first malformation, so whatever prost then decodes is within the limit.
pub fn check_lists(message: &str, bytes: &[u8]) -> Result<(), Error> {
    let Some(list) = list_of(message) else {
        return Ok(());
    };
    let count = count_top_level(bytes, list.number);
    // Too few is the conversion's to say, among the request's other problems.
    if count <= list.limit.max {
        return Ok(());
    }
    Err(Error::InvalidArgument(
        list.limit.violation(count).into_iter().collect(),
    ))
}

/// How often field `number` occurs at the top level of an encoded message,
/// up to the first byte that is not well-formed protobuf.
fn count_top_level(mut bytes: &[u8], number: u32) -> usize {
    // prost refuses groups nested deeper than this, so no message it
    // accepts is missed by stopping there.
    const MAX_DEPTH: usize = 100;
    let mut count = 0;
    // Fields inside a (proto2) group are not the message's own.
    let mut depth = 0;
    while !bytes.is_empty() {
        let Some(key) = varint(&mut bytes).and_then(|key| u32::try_from(key).ok()) else {
            break;
        };
        let field = key >> 3;
        if field == 0 {
            break;
        }
        if depth == 0 && field == number {
            count += 1;
        }
        let skipped = match key & 7 {
            0 => varint(&mut bytes).map(drop),
            1 => skip(&mut bytes, 8),
            2 => varint(&mut bytes)
                .and_then(|len| usize::try_from(len).ok())
                .and_then(|len| skip(&mut bytes, len)),
            3 if depth < MAX_DEPTH => {
                depth += 1;
                Some(())
            }
            4 if depth > 0 => {
                depth -= 1;
                Some(())
            }
            5 => skip(&mut bytes, 4),
            _ => None,
        };
        if skipped.is_none() {
            break;
        }
    }
    count
}

/// Reads one base-128 varint, as protobuf encodes keys and lengths.
fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(value);
        }
    }
    None
}

fn skip(bytes: &mut &[u8], len: usize) -> Option<()> {
    *bytes = bytes.get(len..)?;
    Some(())
}

#[cfg(test)]
#[path = "lists_tests.rs"]
mod tests;
