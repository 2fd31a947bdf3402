//! Request validation for every method of every consent.v1 service:
//! messages built from the descriptor set with field values chosen by the
//! field's name (mostly ids the policy declares, sometimes hostile text),
//! encoded, often mutated or truncated, then validated as the handler does
//! (`consentd::grpc::validate`). Properties: no panic; the answer is `Ok`
//! or INVALID_ARGUMENT with violations that each say what is wrong and name
//! a field of the request (or `x-actor`, or nothing for bytes that do not
//! decode).

use std::collections::BTreeMap;

use consentd::{error::Error, grpc::validate};
use prost::Message as _;
use prost_reflect::MessageDescriptor;
use tonic::{Code, Status, metadata::MetadataMap};

use crate::{
    engine::{Rng, fuzz},
    messages::{Strings, message, metadata, methods, policy, x_actor},
    mutate,
};

#[derive(Debug)]
struct Input {
    method: String,
    message: Vec<u8>,
    x_actor: Option<Vec<u8>>,
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
    let strings = Strings::new(&policy);
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
            Input {
                method,
                message,
                x_actor: x_actor(rng),
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
