//! The unsubscribe and preference token parsers. Three kinds of input each:
//! tokens the service made (they must round-trip), those tokens with bytes
//! altered (never accepted as anything but the original), and tokens a
//! forger holding the key builds from random content (they reach the
//! parsing behind the signature or the cipher; whatever is accepted must
//! be exactly what the service itself would have written).

use aes_gcm::{Aes256Gcm, KeyInit as _, Nonce, aead::Aead as _, aead::Payload};
use base64::{
    Engine as _,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use chrono::{DateTime, Utc};
use consentd::{
    domain::{FieldName, PurposeCode, SubjectId},
    keys::KeyFile as _,
    service::{
        preferences::{Claims, LinkError, Use},
        unsubscribe::{TokenError, UnsubscribeClaims, UnsubscribeKeys},
    },
};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

use crate::{
    engine::{Rng, fuzz},
    mutate,
};

const KEY: [u8; 32] = *b"fuzzing-key-fuzzing-key-fuzzing!";
const KID: &str = "k1";

fn keys() -> UnsubscribeKeys {
    UnsubscribeKeys::parse(&format!("{KID}={}", STANDARD.encode(KEY)), "fuzz").unwrap()
}

/// A code (purpose, field) that parses, or now and then an odd one.
fn code(rng: &mut Rng) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789_-";
    let len = 1 + rng.below(64);
    let mut code: String = (0..len)
        .map(|_| *rng.pick(ALPHABET) as char)
        .collect::<String>();
    code.replace_range(0..1, "p");
    code
}

/// Text up to `max` characters, from ASCII to astral planes.
fn text(rng: &mut Rng, max: usize) -> String {
    const CHARS: &[char] = &['a', 'Z', '0', ' ', '-', '.', 'é', '中', '𝕏', '\u{200b}'];
    (0..rng.below(max + 1)).map(|_| *rng.pick(CHARS)).collect()
}

fn unsubscribe_claims(rng: &mut Rng) -> UnsubscribeClaims {
    UnsubscribeClaims {
        subject_key: Uuid::from_u64_pair(rng.next(), rng.next()),
        purpose: PurposeCode::parse(code(rng)).unwrap(),
        field: (!rng.one_in(3)).then(|| FieldName::parse(code(rng)).unwrap()),
        campaign: text(rng, 128),
    }
}

/// A token alphabet edit: the bytes of the text, not of what it decodes to.
fn altered(rng: &mut Rng, token: &str) -> String {
    let mut bytes = token.as_bytes().to_vec();
    let alphabet: Vec<Vec<u8>> = ["A", "_", "-", "=", "+", "/", "."]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    mutate::bytes(rng, &mut bytes, &alphabet);
    String::from_utf8_lossy(&bytes).into_owned()
}

#[derive(Debug)]
enum UnsubscribeInput {
    Made(UnsubscribeClaims),
    Altered(UnsubscribeClaims, String),
    Forged(Vec<u8>, String),
}

/// A payload in the token's layout (version, key id, subject key, purpose,
/// field, campaign), then mutated, then signed as the service signs.
fn forged_unsubscribe(rng: &mut Rng) -> (Vec<u8>, String) {
    let claims = unsubscribe_claims(rng);
    let mut payload = vec![1, KID.len() as u8];
    payload.extend_from_slice(KID.as_bytes());
    payload.extend_from_slice(claims.subject_key.as_bytes());
    for part in [
        claims.purpose.as_str(),
        claims.field.as_ref().map_or("", |f| f.as_str()),
    ] {
        payload.push(part.len() as u8);
        payload.extend_from_slice(part.as_bytes());
    }
    payload.extend_from_slice(&(claims.campaign.len() as u16).to_be_bytes());
    payload.extend_from_slice(claims.campaign.as_bytes());
    if !rng.one_in(4) {
        mutate::bytes(rng, &mut payload, &[]);
    }
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&KEY).unwrap();
    mac.update(&payload);
    let mut token = payload.clone();
    token.extend_from_slice(&mac.finalize().into_bytes());
    (payload, URL_SAFE_NO_PAD.encode(token))
}

#[test]
fn unsubscribe_token_parser() {
    let keys = keys();
    fuzz(
        "unsubscribe_token_parser",
        |rng: &mut Rng| match rng.below(3) {
            0 => UnsubscribeInput::Made(unsubscribe_claims(rng)),
            1 => {
                let claims = unsubscribe_claims(rng);
                let token = altered(rng, &claims.sign(&keys));
                UnsubscribeInput::Altered(claims, token)
            }
            _ => {
                let (payload, token) = forged_unsubscribe(rng);
                UnsubscribeInput::Forged(payload, token)
            }
        },
        |input| match input {
            UnsubscribeInput::Made(claims) => {
                let token = claims.sign(&keys);
                match UnsubscribeClaims::verify(&token, &keys) {
                    Ok(read) if read == *claims => Ok(()),
                    other => Err(format!("signed {claims:?}, read back {other:?}")),
                }
            }
            UnsubscribeInput::Altered(claims, token) => {
                match UnsubscribeClaims::verify(token, &keys) {
                    Ok(read) if read != *claims => Err(format!("altered token read as {read:?}")),
                    _ => Ok(()),
                }
            }
            UnsubscribeInput::Forged(payload, token) => {
                match UnsubscribeClaims::verify(token, &keys) {
                    // The encoding is canonical: one token per claims.
                    Ok(read) if read.sign(&keys) != *token => {
                        Err(format!("accepted {read:?}, which signs differently"))
                    }
                    Ok(_) => Ok(()),
                    // Correctly signed under a held key: only its content can be wrong.
                    Err(TokenError::BadSignature)
                        if payload.starts_with(&[1, KID.len() as u8])
                            && payload.get(2..2 + KID.len()) == Some(KID.as_bytes()) =>
                    {
                        Err("a correct signature refused as bad".into())
                    }
                    Err(_) => Ok(()),
                }
            }
        },
    );
}

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_780_000_000, 0).unwrap()
}

fn preference_claims(rng: &mut Rng) -> Claims {
    let subject = match text(rng, 128).trim() {
        "" => "C-1".to_string(),
        s => s.to_string(),
    };
    Claims {
        purpose: if rng.one_in(2) {
            Use::Page
        } else {
            Use::Download
        },
        subject_id: SubjectId::parse(subject).unwrap(),
        campaign: (!rng.one_in(3)).then(|| text(rng, 128)),
        expires_at: DateTime::from_timestamp(
            now().timestamp() + 1 + rng.below(90 * 86_400) as i64,
            0,
        )
        .unwrap(),
    }
}

/// The plaintext layout of a preference token, as the service writes it.
fn plaintext(claims: &Claims) -> Vec<u8> {
    let mut plain = vec![claims.purpose as u8];
    plain.extend_from_slice(&claims.expires_at.timestamp().to_be_bytes());
    let long = |plain: &mut Vec<u8>, bytes: &[u8]| {
        plain.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        plain.extend_from_slice(bytes);
    };
    long(&mut plain, claims.subject_id.as_str().as_bytes());
    match &claims.campaign {
        None => plain.push(0),
        Some(campaign) => {
            plain.push(1);
            long(&mut plain, campaign.as_bytes());
        }
    }
    plain
}

/// Seals `plain` as the service does: AES-256-GCM under a key derived from
/// the link key, the version and key id as associated data.
fn seal(plain: &[u8], nonce: [u8; 12]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&KEY).unwrap();
    mac.update(b"consentd preference token key v1");
    let cipher = Aes256Gcm::new_from_slice(&mac.finalize().into_bytes()).unwrap();
    let mut token = vec![2, KID.len() as u8];
    token.extend_from_slice(KID.as_bytes());
    let sealed = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plain,
                aad: &token,
            },
        )
        .unwrap();
    token.extend_from_slice(&nonce);
    token.extend_from_slice(&sealed);
    URL_SAFE_NO_PAD.encode(token)
}

#[derive(Debug)]
enum PreferenceInput {
    Made(Claims),
    Altered(Claims, String),
    Forged(Vec<u8>, Use),
}

#[test]
fn preference_token_parser() {
    let keys = keys();
    fuzz(
        "preference_token_parser",
        |rng: &mut Rng| match rng.below(3) {
            0 => PreferenceInput::Made(preference_claims(rng)),
            1 => {
                let claims = preference_claims(rng);
                let token = altered(rng, &claims.seal(&keys));
                PreferenceInput::Altered(claims, token)
            }
            _ => {
                let mut plain = plaintext(&preference_claims(rng));
                if !rng.one_in(4) {
                    mutate::bytes(rng, &mut plain, &[]);
                }
                let asked = if rng.one_in(2) {
                    Use::Page
                } else {
                    Use::Download
                };
                PreferenceInput::Forged(plain, asked)
            }
        },
        |input| match input {
            PreferenceInput::Made(claims) => {
                let token = claims.seal(&keys);
                match Claims::open(&token, &keys, claims.purpose, now()) {
                    Ok(read) if read == *claims => Ok(()),
                    other => Err(format!("sealed {claims:?}, opened {other:?}")),
                }
            }
            PreferenceInput::Altered(claims, token) => {
                match Claims::open(token, &keys, claims.purpose, now()) {
                    Ok(read) if read != *claims => Err(format!("altered token read as {read:?}")),
                    _ => Ok(()),
                }
            }
            PreferenceInput::Forged(plain, asked) => {
                let token = seal(plain, [7; 12]);
                match Claims::open(&token, &keys, *asked, now()) {
                    Ok(read) if plaintext(&read) != *plain => {
                        Err(format!("accepted {read:?}, which is written differently"))
                    }
                    Ok(_) => Ok(()),
                    // Authentic content: "forged" only means issued for the other use.
                    Err(LinkError::Forged) if plain.first() == Some(&(*asked as u8)) => {
                        Err("authentic content refused as forged".into())
                    }
                    Err(_) => Ok(()),
                }
            }
        },
    );
}
