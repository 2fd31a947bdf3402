//! Requests for every served method, built from the descriptor set: each
//! field gets a value chosen by its name (mostly what the policy declares,
//! now and then text a parser must refuse). Shared by the fuzz targets and
//! the wire-level test (tests/api/wire_fuzz.rs).

use std::path::Path;

use consentd::{
    grpc::{pb::FILE_DESCRIPTOR_SET, served_rpcs},
    policy::Policy,
};
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value,
};

use crate::engine::Rng;

/// The example policy, whose ids the generated requests use.
pub fn policy() -> Policy {
    Policy::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/policy.toml")).unwrap()
}

/// Each served method and its request message.
pub fn methods() -> Vec<(String, MessageDescriptor)> {
    let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET).unwrap();
    served_rpcs()
        .into_iter()
        .map(|rpc| {
            let (service, method) = rpc.split_once('/').unwrap();
            let service = pool.get_service_by_name(service).unwrap();
            let method = service.methods().find(|m| m.name() == method).unwrap();
            (rpc, method.input())
        })
        .collect()
}

/// Values a string field gets: the ids the policy declares, well-formed
/// values of the other kinds, and text each parser must refuse.
pub struct Strings {
    purposes: Vec<String>,
    fields: Vec<String>,
    recipients: Vec<String>,
}

impl Strings {
    pub fn new(policy: &Policy) -> Self {
        Self {
            purposes: policy.purposes().map(|p| p.code.to_string()).collect(),
            fields: policy.fields().map(|f| f.name.to_string()).collect(),
            recipients: policy.recipients().map(|r| r.id.to_string()).collect(),
        }
    }
}

pub const HOSTILE: &[&str] = &[
    "",
    " ",
    " C-1",
    "C-1 ",
    "\u{0}",
    "a\nb",
    "\u{7f}",
    "NOT_A_CODE",
    "中文",
    "𝕏",
    "-1",
    "00000000-0000-0000-0000-00000000000g",
    "djEuMDAwMDAwMDAwMDAwLjQy",
    "v1.abc.42",
];

impl Strings {
    fn for_field(&self, rng: &mut Rng, name: &str) -> String {
        if rng.one_in(4) {
            return match rng.below(3) {
                0 => rng.pick(HOSTILE).to_string(),
                1 => "x".repeat(60 + rng.below(300)),
                _ => String::from_utf8_lossy(&rng.some_bytes(12)).into_owned(),
            };
        }
        let uuid = || uuid::Uuid::new_v4().to_string();
        match name {
            "subject_id" | "subject_ids" => format!("C-{}", rng.below(10_000)),
            "purpose" | "purposes" | "collected_for" => rng.pick(&self.purposes).clone(),
            "field" | "fields" => rng.pick(&self.fields).clone(),
            "recipient" | "recipient_id" => rng.pick(&self.recipients).clone(),
            "request_id" | "correlation_id" => format!("req-{}", rng.next()),
            "notice_version" => "2026-11".into(),
            "page_token" => String::new(),
            n if n.ends_with("_id") || n == "links" => uuid(),
            _ => [
                "web form",
                "order 7781",
                "Case 2026/17",
                "a@b.example",
                "Mail",
            ][rng.below(5)]
            .to_string(),
        }
    }
}

fn scalar(rng: &mut Rng, strings: &Strings, field: &FieldDescriptor, depth: usize) -> Value {
    match field.kind() {
        Kind::String => Value::String(strings.for_field(rng, field.name())),
        Kind::Bool => Value::Bool(rng.one_in(2)),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32(*rng.pick(&[0, 1, 10, 1000, 1001, -1, i32::MAX, i32::MIN]))
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Value::I64(*rng.pick(&[0, 1, 42, -1, i64::MAX, i64::MIN]))
        }
        Kind::Uint32 | Kind::Fixed32 => Value::U32(rng.next() as u32),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(rng.next()),
        Kind::Float => Value::F32(f32::from_bits(rng.next() as u32)),
        Kind::Double => Value::F64(f64::from_bits(rng.next())),
        Kind::Bytes => Value::Bytes(rng.some_bytes(16).into()),
        Kind::Enum(e) => {
            let values: Vec<i32> = e.values().map(|v| v.number()).collect();
            Value::EnumNumber(match rng.below(8) {
                0 => rng.next() as i32,
                1 => 0,
                _ => *rng.pick(&values),
            })
        }
        Kind::Message(m) => Value::Message(message(rng, strings, &m, depth + 1)),
    }
}

/// A message of type `desc`, most fields set.
pub fn message(
    rng: &mut Rng,
    strings: &Strings,
    desc: &MessageDescriptor,
    depth: usize,
) -> DynamicMessage {
    let mut msg = DynamicMessage::new(desc.clone());
    for field in desc.fields() {
        // Most fields set, a few left at their default (absent).
        if depth > 3 || field.is_map() || rng.one_in(6) {
            continue;
        }
        let value = if field.is_list() {
            let len = match rng.below(10) {
                0 => 0,
                1 => 1 + rng.below(1100),
                _ => 1 + rng.below(3),
            };
            Value::List(
                (0..len)
                    .map(|_| scalar(rng, strings, &field, depth))
                    .collect(),
            )
        } else {
            scalar(rng, strings, &field, depth)
        };
        msg.set_field(&field, value);
    }
    msg
}

/// An x-actor header value, or none: well-formed, hostile or random bytes.
pub fn x_actor(rng: &mut Rng) -> Option<Vec<u8>> {
    match rng.below(6) {
        0 => Some(b"agent-7".to_vec()),
        1 => Some(rng.pick(HOSTILE).as_bytes().to_vec()),
        2 => Some(rng.some_bytes(8)),
        _ => None,
    }
}

/// The metadata a call carries: `x_actor` when the header can hold it.
pub fn metadata(x_actor: &Option<Vec<u8>>) -> tonic::metadata::MetadataMap {
    let mut metadata = tonic::metadata::MetadataMap::new();
    if let Some(value) = x_actor
        && let Ok(value) = value.as_slice().try_into()
    {
        metadata.insert("x-actor", value);
    }
    metadata
}
