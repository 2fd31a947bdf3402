//! Request validation for every method of every consent.v1 service:
//! messages built from the descriptor set with field values chosen by the
//! field's name (mostly ids the policy declares, sometimes hostile text),
//! encoded, often mutated or truncated, then validated as the handler does
//! (`consentd::grpc::validate`). Properties: no panic; the answer is `Ok`
//! or INVALID_ARGUMENT with violations that each say what is wrong and name
//! a field of the request (or `x-actor`, or nothing for bytes that do not
//! decode).

use std::{collections::BTreeMap, path::Path};

use consentd::{
    error::Error,
    grpc::{pb::FILE_DESCRIPTOR_SET, served_rpcs, validate},
    policy::Policy,
};
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value,
};
use tonic::{Code, Status, metadata::MetadataMap};

use crate::{
    engine::{Rng, fuzz},
    mutate,
};

fn policy() -> Policy {
    Policy::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/policy.toml")).unwrap()
}

/// Each served method and its request message.
fn methods() -> Vec<(String, MessageDescriptor)> {
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
struct Strings {
    purposes: Vec<String>,
    fields: Vec<String>,
    recipients: Vec<String>,
}

const HOSTILE: &[&str] = &[
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

fn message(
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

#[derive(Debug)]
struct Input {
    method: String,
    message: Vec<u8>,
    x_actor: Option<Vec<u8>>,
}

fn metadata(x_actor: &Option<Vec<u8>>) -> MetadataMap {
    let mut metadata = MetadataMap::new();
    if let Some(value) = x_actor
        && let Ok(value) = value.as_slice().try_into()
    {
        metadata.insert("x-actor", value);
    }
    metadata
}

/// What a violation may name: a field of the message (`items[3].purpose`
/// names `items`), the `x-actor` metadata, or nothing for bytes that do
/// not decode.
fn names_a_field(name: &str, desc: &MessageDescriptor) -> bool {
    let top = name.split(['[', '.']).next().unwrap_or("");
    name.is_empty() || name == "x-actor" || desc.get_field_by_name(top).is_some()
}

#[test]
fn every_served_method_is_validated() {
    let policy = policy();
    for (method, _) in methods() {
        assert!(
            validate(&policy, &method, MetadataMap::new(), &[]).is_some(),
            "{method} has no validation in grpc::validate"
        );
    }
}

#[test]
fn request_validation() {
    let policy = policy();
    let methods = methods();
    let strings = Strings {
        purposes: policy.purposes().map(|p| p.code.to_string()).collect(),
        fields: policy.fields().map(|f| f.name.to_string()).collect(),
        recipients: policy.recipients().map(|r| r.id.to_string()).collect(),
    };
    let descriptors: BTreeMap<String, MessageDescriptor> = methods.iter().cloned().collect();
    // Per method: (accepted, refused), to show the generator reaches both.
    let mut outcomes: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    fuzz(
        "request_validation",
        |rng: &mut Rng| {
            let (method, desc) = rng.pick(&methods).clone();
            let mut message = message(rng, &strings, &desc, 0).encode_to_vec();
            match rng.below(6) {
                0 => mutate::bytes(rng, &mut message, &[]),
                1 => message.truncate(rng.below(message.len() + 1)),
                2 if rng.one_in(3) => message = rng.some_bytes(64),
                _ => {}
            }
            let x_actor = match rng.below(6) {
                0 => Some(b"agent-7".to_vec()),
                1 => Some(rng.pick(HOSTILE).as_bytes().to_vec()),
                2 => Some(rng.some_bytes(8)),
                _ => None,
            };
            Input {
                method,
                message,
                x_actor,
            }
        },
        |input| {
            let desc = &descriptors[&input.method];
            let Some(answer) = validate(
                &policy,
                &input.method,
                metadata(&input.x_actor),
                &input.message,
            ) else {
                return Err(format!("{} is not validated", input.method));
            };
            let tally = outcomes.entry(input.method.clone()).or_default();
            let violations = match answer {
                Ok(()) => {
                    tally.0 += 1;
                    return Ok(());
                }
                Err(Error::InvalidArgument(violations)) => violations,
                Err(other) => return Err(format!("answered {other:?}, not INVALID_ARGUMENT")),
            };
            tally.1 += 1;
            if violations.is_empty() {
                return Err("INVALID_ARGUMENT without a violation".into());
            }
            if let Some(v) = violations
                .iter()
                .find(|v| v.description.trim().is_empty() || !names_a_field(&v.field, desc))
            {
                return Err(format!("violation {v:?} says nothing or names no field"));
            }
            let status = Status::from(Error::InvalidArgument(violations));
            if status.code() != Code::InvalidArgument {
                return Err(format!("mapped to {:?}", status.code()));
            }
            Ok(())
        },
    );
    for (method, (accepted, refused)) in &outcomes {
        println!("  {method}: {accepted} accepted, {refused} refused");
    }
}
