//! The policy and callers file parsers, fed mutations of the shipped
//! examples. Properties: no panic; a refusal names at least one problem,
//! each with a message and, when it has one, a line of the file; an
//! accepted file is consistent (what it names is declared).

use std::path::Path;

use consentd::{
    grpc::served_rpcs,
    policy::{Basis, Callers, Known, Policy, Problem},
};

use crate::{
    engine::{Rng, fuzz},
    mutate,
};

fn deploy(file: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy")
            .join(file),
    )
    .unwrap()
}

/// Each problem has a message and a line inside the text (or just past
/// its end, where TOML reports an unexpected end of file).
fn problems_are_well_formed(problems: &[Problem], text: &str) -> Result<(), String> {
    if problems.is_empty() {
        return Err("refused with no problem named".into());
    }
    let last_line = text.lines().count() + 1;
    for problem in problems {
        if problem.message.trim().is_empty() {
            return Err(format!("a problem without a message: {problem:?}"));
        }
        if let Some(line) = problem.line
            && !(1..=last_line).contains(&line)
        {
            return Err(format!("line {line} is outside the file: {problem:?}"));
        }
    }
    Ok(())
}

/// What an accepted policy promises the rest of the service.
fn policy_is_consistent(policy: &Policy) -> Result<(), String> {
    for purpose in policy.purposes() {
        if let Some(field) = purpose.fields.iter().find(|f| !policy.declares_field(f)) {
            return Err(format!("purpose {} uses undeclared {field}", purpose.code));
        }
        if purpose.basis == Basis::OptOut && purpose.refusal_instructions.is_none() {
            return Err(format!("opt-out {} says not how to refuse", purpose.code));
        }
    }
    for recipient in policy.recipients() {
        if let Some(code) = recipient
            .purposes
            .iter()
            .find(|p| policy.purpose(p).is_none())
        {
            return Err(format!(
                "recipient {} names undeclared {code}",
                recipient.id
            ));
        }
    }
    Ok(())
}

#[test]
fn policy_parser() {
    let seed = deploy("policy.toml");
    assert!(Policy::parse(Path::new("policy.toml"), &seed).is_ok());
    let dictionary = mutate::words(&seed);
    let (mut accepted, mut refused) = (0, 0);
    fuzz(
        "policy_parser",
        |rng: &mut Rng| mutate::toml(rng, &seed, &dictionary),
        |text| match Policy::parse(Path::new("fuzz.toml"), text) {
            Ok(policy) => {
                accepted += 1;
                policy_is_consistent(&policy)
            }
            Err(e) => {
                refused += 1;
                let _ = e.to_string();
                problems_are_well_formed(&e.problems, text)
            }
        },
    );
    println!("  {accepted} accepted, {refused} refused");
}

#[test]
fn callers_parser() {
    let seed = deploy("callers.example.toml");
    let policy = Policy::parse(Path::new("policy.toml"), &deploy("policy.toml")).unwrap();
    let rpcs = served_rpcs();
    let known = Known {
        policy: Some(&policy),
        rpcs: Some(&rpcs),
    };
    assert!(Callers::parse(Path::new("callers.toml"), &seed, known).is_ok());
    let dictionary = mutate::words(&seed);
    let (mut accepted, mut refused) = (0, 0);
    fuzz(
        "callers_parser",
        |rng: &mut Rng| (mutate::toml(rng, &seed, &dictionary), rng.one_in(4)),
        |(text, alone)| {
            // A file checked alone is checked for its own consistency only.
            let against = if *alone { Known::default() } else { known };
            match Callers::parse(Path::new("fuzz.toml"), text, against) {
                Ok(callers) => {
                    accepted += 1;
                    callers_are_consistent(&callers, against)
                }
                Err(e) => {
                    refused += 1;
                    let _ = e.to_string();
                    problems_are_well_formed(&e.problems, text)
                }
            }
        },
    );
    println!("  {accepted} accepted, {refused} refused");
}

/// What an accepted callers file promises: unique ids, and, checked
/// against a policy and the served methods, only what those declare.
fn callers_are_consistent(callers: &Callers, known: Known<'_>) -> Result<(), String> {
    let mut ids: Vec<_> = callers.iter().map(|c| c.id.to_string()).collect();
    ids.sort();
    if ids.windows(2).any(|w| w[0] == w[1]) {
        return Err(format!("duplicate caller ids: {ids:?}"));
    }
    if callers.by_token("not a token of the file").is_some() {
        return Err("an unknown token authenticates".into());
    }
    for caller in callers.iter() {
        if let Some(policy) = known.policy {
            if let Some(p) = caller.purposes.iter().find(|p| policy.purpose(p).is_none()) {
                return Err(format!("{} may use undeclared purpose {p}", caller.id));
            }
            if let Some(r) = caller
                .recipients
                .iter()
                .find(|r| policy.recipient(r).is_none())
            {
                return Err(format!("{} may disclose to undeclared {r}", caller.id));
            }
        }
        if let Some(rpcs) = known.rpcs {
            let serves = |pattern: &String| match pattern.strip_suffix("/*") {
                Some(service) => rpcs.iter().any(|r| r.starts_with(&format!("{service}/"))),
                None => rpcs.contains(pattern),
            };
            if let Some(rpc) = caller.rpcs.iter().find(|r| !serves(r)) {
                return Err(format!("{} may call {rpc}, which is not served", caller.id));
            }
        }
    }
    Ok(())
}
