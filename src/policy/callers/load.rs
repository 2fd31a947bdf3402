//! Loading and validating the callers file (`--callers`), the way
//! `policy.toml` is loaded: every problem at once, each with its line, and a
//! server that never starts on a file with a problem.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use toml::Spanned;

use super::{Callers, legal_basis_name, rpc_matches};
use crate::{
    domain::{Caller, CallerId, Credential, LegalBasis, PurposeCode, RecipientId},
    policy::{
        Policy,
        load::{LineIndex, Problem, Problems, write_problems},
    },
};

/// What the file may name, when known. A file checked without them is
/// checked for its own consistency only.
#[derive(Debug, Default, Clone, Copy)]
pub struct Known<'a> {
    /// Purposes and recipients must be declared here.
    pub policy: Option<&'a Policy>,
    /// Full method paths served (`consent.v1.ConsentService/Check`); each
    /// pattern must match at least one of them.
    pub rpcs: Option<&'a [String]>,
}

/// Why a callers file was refused: every problem found, with its line.
#[derive(Debug, thiserror::Error)]
pub struct CallersError {
    pub path: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for CallersError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_problems(f, "callers", &self.path, &self.problems)
    }
}

impl Callers {
    /// Reads and validates a callers file on its own.
    pub fn load(path: &Path) -> Result<Callers, CallersError> {
        Self::load_with(path, Known::default())
    }

    /// Reads a callers file and validates it, also against what is known.
    pub fn load_with(path: &Path, known: Known<'_>) -> Result<Callers, CallersError> {
        let text = std::fs::read_to_string(path).map_err(|e| CallersError {
            path: path.to_path_buf(),
            problems: vec![Problem {
                line: None,
                message: format!("cannot read the file: {e}"),
            }],
        })?;
        Self::parse(path, &text, known)
    }

    /// Validates callers text; `path` only names it in errors.
    pub fn parse(path: &Path, text: &str, known: Known<'_>) -> Result<Callers, CallersError> {
        let lines = LineIndex::new(text);
        let fail = |problems| CallersError {
            path: path.to_path_buf(),
            problems,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            fail(vec![Problem {
                line: e.span().map(|span| lines.line_of(span.start)),
                message: e.message().to_string(),
            }])
        })?;
        let mut problems = Problems {
            lines: &lines,
            found: Vec::new(),
        };
        let callers = check_callers(raw.callers, known, &mut problems);
        let mut found = problems.found;
        if found.is_empty() {
            Ok(Callers { callers })
        } else {
            found.sort_by_key(|p| p.line);
            Err(fail(found))
        }
    }
}

/// The file as written, before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    callers: Vec<RawCaller>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCaller {
    id: Spanned<String>,
    token_sha256: Option<Spanned<String>>,
    cert_subject: Option<Spanned<String>>,
    #[serde(default)]
    rpcs: Vec<Spanned<String>>,
    #[serde(default)]
    purposes: Vec<Spanned<String>>,
    #[serde(default)]
    recipients: Vec<Spanned<String>>,
    #[serde(default)]
    legal_bases: Vec<Spanned<String>>,
}

/// Where each credential was first seen, so a second use names the first.
#[derive(Default)]
struct Seen {
    ids: HashMap<CallerId, usize>,
    tokens: HashMap<[u8; 32], (String, usize)>,
    subjects: HashMap<String, (String, usize)>,
}

fn check_callers(raw: Vec<RawCaller>, known: Known<'_>, problems: &mut Problems) -> Vec<Caller> {
    if raw.is_empty() {
        problems.found.push(Problem {
            line: None,
            message: "the file names no [[callers]]: nobody could call".into(),
        });
    }
    let mut seen = Seen::default();
    raw.into_iter()
        .filter_map(|raw| check_caller(raw, known, &mut seen, problems))
        .collect()
}

/// One `[[callers]]` entry; `None` when its id or credential is unusable
/// (the problem is noted either way).
fn check_caller(
    raw: RawCaller,
    known: Known<'_>,
    seen: &mut Seen,
    problems: &mut Problems,
) -> Option<Caller> {
    let id = match CallerId::parse(raw.id.get_ref().clone()) {
        Ok(id) => id,
        Err(why) => {
            problems.at(
                raw.id.span(),
                format!("caller id `{}` {why}", raw.id.get_ref()),
            );
            return None;
        }
    };
    if problems.is_duplicate(&mut seen.ids, id.clone(), raw.id.span(), "caller") {
        return None;
    }
    let owner = format!("caller `{id}`");
    let credential = check_credential(&raw, &owner, seen, problems);
    let rpcs = check_list(&raw.rpcs, &owner, problems, |text| {
        check_rpc(text, known.rpcs).map(|()| text.to_string())
    });
    if raw.rpcs.is_empty() {
        problems.at(
            raw.id.span(),
            format!("{owner} lists no rpcs: it could call nothing"),
        );
    }
    let purposes = check_list(&raw.purposes, &owner, problems, |text| {
        let code = PurposeCode::parse(text).map_err(|why| format!("purpose `{text}` {why}"))?;
        match known.policy {
            Some(policy) if policy.purpose(&code).is_none() => Err(format!(
                "purpose `{code}` is not declared under [[purposes]] of the policy"
            )),
            _ => Ok(code),
        }
    });
    let recipients = check_list(&raw.recipients, &owner, problems, |text| {
        let id = RecipientId::parse(text).map_err(|why| format!("recipient `{text}` {why}"))?;
        match known.policy {
            Some(policy) if policy.recipient(&id).is_none() => Err(format!(
                "recipient `{id}` is not declared under [[recipients]] of the policy"
            )),
            _ => Ok(id),
        }
    });
    let legal_bases = check_list(&raw.legal_bases, &owner, problems, parse_legal_basis);
    Some(Caller {
        id,
        credential: credential?,
        rpcs,
        purposes,
        recipients,
        legal_bases,
    })
}

/// Exactly one of `token_sha256` and `cert_subject`, well formed and used by
/// no other caller: a shared credential would make two callers one.
fn check_credential(
    raw: &RawCaller,
    owner: &str,
    seen: &mut Seen,
    problems: &mut Problems,
) -> Option<Credential> {
    let line = problems.lines.line_of(raw.id.span().start);
    match (&raw.token_sha256, &raw.cert_subject) {
        (Some(_), Some(_)) | (None, None) => {
            problems.at(
                raw.id.span(),
                format!("{owner} must have exactly one of token_sha256 and cert_subject"),
            );
            None
        }
        (Some(token), None) => {
            let Some(hash) = parse_sha256_hex(token.get_ref()) else {
                problems.at(
                    token.span(),
                    format!(
                        "{owner}: token_sha256 must be 64 hex digits, the SHA-256 of the token \
                         (`consentd callers token` prints one)"
                    ),
                );
                return None;
            };
            if let Some((first, first_line)) = seen.tokens.get(&hash) {
                problems.at(
                    token.span(),
                    format!(
                        "{owner} has the same token_sha256 as caller `{first}` (line {first_line})"
                    ),
                );
                return None;
            }
            seen.tokens.insert(hash, (raw.id.get_ref().clone(), line));
            Some(Credential::TokenSha256(hash))
        }
        (None, Some(subject)) => {
            let text = subject.get_ref();
            if let Err(why) = check_subject(text) {
                problems.at(subject.span(), format!("{owner}: cert_subject {why}"));
                return None;
            }
            if let Some((first, first_line)) = seen.subjects.get(text) {
                problems.at(
                    subject.span(),
                    format!(
                        "{owner} has the same cert_subject as caller `{first}` (line {first_line})"
                    ),
                );
                return None;
            }
            seen.subjects
                .insert(text.clone(), (raw.id.get_ref().clone(), line));
            Some(Credential::CertSubject(text.clone()))
        }
    }
}

/// Parses each entry of a list, noting bad and repeated ones on their line.
fn check_list<T: PartialEq>(
    raw: &[Spanned<String>],
    owner: &str,
    problems: &mut Problems,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Vec<T> {
    let mut parsed = Vec::new();
    let mut texts = HashSet::new();
    for item in raw {
        match parse(item.get_ref()) {
            Ok(_) if !texts.insert(item.get_ref()) => problems.at(
                item.span(),
                format!("{owner} lists `{}` twice", item.get_ref()),
            ),
            Ok(value) => parsed.push(value),
            Err(why) => problems.at(item.span(), format!("{owner}: {why}")),
        }
    }
    parsed
}

/// `package.Service/Method` or `package.Service/*`, without the leading
/// '/', and one that a served method matches when the methods are known.
fn check_rpc(pattern: &str, known: Option<&[String]>) -> Result<(), String> {
    fn ident(s: &str) -> bool {
        s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    }
    let well_formed = pattern.split_once('/').is_some_and(|(service, method)| {
        service.contains('.') && service.split('.').all(ident) && (method == "*" || ident(method))
    });
    if !well_formed {
        let hint = if pattern.starts_with('/') {
            " (without the leading '/')"
        } else {
            ""
        };
        return Err(format!(
            "rpc `{pattern}` must be `package.Service/Method` or `package.Service/*`{hint}"
        ));
    }
    match known {
        Some(methods) if !methods.iter().any(|m| rpc_matches(pattern, m)) => Err(format!(
            "rpc `{pattern}` matches no method this server serves"
        )),
        _ => Ok(()),
    }
}

/// Printable, trimmed, and in `attribute=value` form (`CN=shipping`).
fn check_subject(subject: &str) -> Result<(), String> {
    if subject.trim().is_empty() {
        Err("must not be empty".into())
    } else if subject.trim() != subject || subject.chars().any(char::is_control) {
        Err("must not contain control characters or surrounding white space".into())
    } else if !subject.contains('=') {
        Err(format!(
            "`{subject}` must name attributes, as in `CN=shipping`"
        ))
    } else {
        Ok(())
    }
}

fn parse_legal_basis(text: &str) -> Result<LegalBasis, String> {
    LegalBasis::ALL
        .iter()
        .copied()
        .find(|basis| legal_basis_name(*basis) == text)
        .ok_or_else(|| {
            let known: Vec<_> = LegalBasis::ALL
                .iter()
                .map(|b| legal_basis_name(*b))
                .collect();
            format!("unknown legal basis `{text}` (known: {})", known.join(", "))
        })
}

/// 64 hex digits, either case, as 32 bytes.
fn parse_sha256_hex(text: &str) -> Option<[u8; 32]> {
    let digits = text.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let mut hash = [0u8; 32];
    for (byte, pair) in hash.iter_mut().zip(digits.chunks_exact(2)) {
        let high = char::from(pair[0]).to_digit(16)?;
        let low = char::from(pair[1]).to_digit(16)?;
        *byte = u8::try_from(high * 16 + low).ok()?;
    }
    Some(hash)
}

#[cfg(test)]
mod tests;
