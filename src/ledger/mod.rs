//! The tamper-evident history: how a history row is encoded and chained,
//! how checkpoints are signed, and how `consentd verify` judges what the
//! database holds. Pure: the rows come in from `store`, nothing here does IO
//! except reading and creating the checkpoint key file (`key`).
//!
//! The database computes the chain as rows are appended (a trigger, see
//! `V6__ledger.sql`); this module recomputes it independently. Both follow
//! the encoding below, byte for byte.
//!
//! Rows are plain strings here, not domain newtypes: verify must read a row
//! that was tampered with into something it cannot parse.

pub mod checkpoint;
pub mod key;
pub mod verify;

use chrono::{DateTime, Utc};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// Where a subject's chain starts: bound to its internal key, so a chain
/// copied to another subject does not verify.
pub fn genesis(subject_key: Uuid) -> Hash {
    let mut hash = Sha256::new();
    hash.update(b"consentd ledger v1");
    hash.update(subject_key.as_bytes());
    hash.finalize().into()
}

/// `H(previous ‖ encoding)`.
pub fn link(previous: &[u8], encoding: &[u8]) -> Hash {
    let mut hash = Sha256::new();
    hash.update(previous);
    hash.update(encoding);
    hash.finalize().into()
}

/// The canonical encoding: every field as a 4-byte big-endian length and its
/// bytes, or length -1 for none, so that no two different rows encode alike.
#[derive(Default)]
pub struct Encoder(Vec<u8>);

impl Encoder {
    pub fn bytes(mut self, value: Option<&[u8]>) -> Self {
        match value {
            Some(bytes) => {
                let len = i32::try_from(bytes.len()).expect("a field under 2 GiB");
                self.0.extend_from_slice(&len.to_be_bytes());
                self.0.extend_from_slice(bytes);
            }
            None => self.0.extend_from_slice(&(-1i32).to_be_bytes()),
        }
        self
    }

    pub fn text(self, value: &str) -> Self {
        self.bytes(Some(value.as_bytes()))
    }

    pub fn opt_text(self, value: Option<&str>) -> Self {
        self.bytes(value.map(str::as_bytes))
    }

    pub fn int(self, value: i64) -> Self {
        self.bytes(Some(&value.to_be_bytes()))
    }

    pub fn uuid(self, value: Uuid) -> Self {
        self.bytes(Some(value.as_bytes()))
    }

    /// Microseconds since the epoch: what PostgreSQL stores, so nothing rounds.
    pub fn time(self, value: Option<DateTime<Utc>>) -> Self {
        self.bytes(
            value
                .map(|t| t.timestamp_micros().to_be_bytes())
                .as_ref()
                .map(|b| &b[..]),
        )
    }

    /// The element count, then each element as a field.
    pub fn texts(self, values: &[String]) -> Self {
        let count = i32::try_from(values.len()).expect("fewer than 2^31 elements");
        let inner = values
            .iter()
            .fold(Encoder(count.to_be_bytes().to_vec()), |e, v| e.text(v));
        self.bytes(Some(&inner.0))
    }

    pub fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// A consent record as the chain sees it.
#[derive(Debug, Clone)]
pub struct ConsentRecordLink {
    pub record_id: Uuid,
    pub sequence: i64,
    pub purpose: String,
    pub field: String,
    pub recipient: String,
    pub choice: String,
    pub channel: String,
    pub notice_version: String,
    pub actor: String,
    pub request_id: Option<String>,
    pub recorded_at: DateTime<Utc>,
    pub evidence: String,
    /// 1: the request id is encoded as it is; 2 (V10): it is part of the
    /// free text, so that erasure can blank it.
    pub ledger_version: i16,
}

/// A disclosure as the chain sees it.
#[derive(Debug, Clone)]
pub struct DisclosureLink {
    pub disclosure_id: Uuid,
    pub recipient_id: String,
    pub purpose: Option<String>,
    pub legal_basis: Option<String>,
    pub fields: Vec<String>,
    pub withheld: Vec<String>,
    pub status: String,
    pub review_due: Option<DateTime<Utc>>,
    pub requested_by: String,
    pub request_id: Option<String>,
    pub requested_at: DateTime<Utc>,
    pub reference: Option<String>,
    pub justification: Option<String>,
    /// As for consent records.
    pub ledger_version: i16,
}

/// An approval or review of a disclosure as the chain sees it.
#[derive(Debug, Clone)]
pub struct DisclosureEventLink {
    pub disclosure_id: Uuid,
    pub kind: String,
    pub actor: String,
    pub at: DateTime<Utc>,
    pub note: String,
}

/// What one link of a chain holds.
#[derive(Debug, Clone)]
pub enum Content {
    ConsentRecord(ConsentRecordLink),
    Disclosure(DisclosureLink),
    DisclosureEvent(DisclosureEventLink),
}

impl Content {
    /// The digest of the free text, which the chain hashes instead of the
    /// text itself, so that the text can be blanked at erasure without
    /// breaking the chain. From encoding v2 on the request id counts as free
    /// text.
    pub fn text_digest(&self) -> Hash {
        let encoded = match self {
            Content::ConsentRecord(r) => {
                let text = Encoder::default().text(&r.evidence);
                match r.ledger_version {
                    1 => text,
                    _ => text.opt_text(r.request_id.as_deref()),
                }
            }
            Content::Disclosure(d) => {
                let text = Encoder::default()
                    .opt_text(d.reference.as_deref())
                    .opt_text(d.justification.as_deref());
                match d.ledger_version {
                    1 => text,
                    _ => text.opt_text(d.request_id.as_deref()),
                }
            }
            Content::DisclosureEvent(e) => Encoder::default().text(&e.note),
        };
        Sha256::digest(encoded.finish()).into()
    }

    /// Whether the free text is what erasure leaves: blank, and for v2 no
    /// request id. A row marked erased must be, or it hides a change.
    pub fn text_is_blank(&self) -> bool {
        match self {
            Content::ConsentRecord(r) => {
                r.evidence.is_empty() && (r.ledger_version == 1 || r.request_id.is_none())
            }
            Content::Disclosure(d) => {
                d.reference.is_none()
                    && d.justification.is_none()
                    && (d.ledger_version == 1 || d.request_id.is_none())
            }
            Content::DisclosureEvent(e) => e.note.is_empty(),
        }
    }

    /// The canonical encoding of the row at `position` in its chain.
    pub fn encode(&self, position: i64, text_digest: &[u8]) -> Vec<u8> {
        match self {
            Content::ConsentRecord(r) => Encoder::default()
                .text("consent_record")
                .int(position)
                .uuid(r.record_id)
                .int(r.sequence)
                .text(&r.purpose)
                .text(&r.field)
                .text(&r.recipient)
                .text(&r.choice)
                .text(&r.channel)
                .text(&r.notice_version)
                .text(&r.actor)
                .opt_text(encoded_request_id(r.ledger_version, &r.request_id)),
            Content::Disclosure(d) => Encoder::default()
                .text("disclosure")
                .int(position)
                .uuid(d.disclosure_id)
                .text(&d.recipient_id)
                .opt_text(d.purpose.as_deref())
                .opt_text(d.legal_basis.as_deref())
                .texts(&d.fields)
                .texts(&d.withheld)
                .text(&d.status)
                .time(d.review_due)
                .text(&d.requested_by)
                .opt_text(encoded_request_id(d.ledger_version, &d.request_id)),
            Content::DisclosureEvent(e) => Encoder::default()
                .text("disclosure_event")
                .int(position)
                .uuid(e.disclosure_id)
                .text(&e.kind)
                .text(&e.actor),
        }
        .time(Some(self.at()))
        .bytes(Some(text_digest))
        .finish()
    }

    fn at(&self) -> DateTime<Utc> {
        match self {
            Content::ConsentRecord(r) => r.recorded_at,
            Content::Disclosure(d) => d.requested_at,
            Content::DisclosureEvent(e) => e.at,
        }
    }

    /// The row, as a person finds it: its kind and id.
    pub fn describe(&self) -> String {
        match self {
            Content::ConsentRecord(r) => format!("consent record {}", r.record_id),
            Content::Disclosure(d) => format!("disclosure {}", d.disclosure_id),
            Content::DisclosureEvent(e) => {
                format!("disclosure event {} ({})", e.disclosure_id, e.kind)
            }
        }
    }
}

/// The request id as the encoding holds it: itself in v1, none from v2 on
/// (it is in the text digest instead).
fn encoded_request_id(version: i16, request_id: &Option<String>) -> Option<&str> {
    match version {
        1 => request_id.as_deref(),
        _ => None,
    }
}

/// One history row with its place in the chain, as stored.
#[derive(Debug, Clone)]
pub struct Link {
    /// None when no subject owns the row any more.
    pub subject_key: Option<Uuid>,
    pub position: i64,
    pub text_digest: Vec<u8>,
    /// Erasure blanked the free text; the digest stays as it was.
    pub text_erased: bool,
    pub hash: Vec<u8>,
    pub content: Content,
}

/// The end of a chain: how many links and the last hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    pub subject_key: Uuid,
    pub length: i64,
    pub head: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Content {
        Content::ConsentRecord(ConsentRecordLink {
            record_id: Uuid::nil(),
            sequence: 7,
            purpose: "promotional_mail".into(),
            field: String::new(),
            recipient: String::new(),
            choice: "refuse".into(),
            channel: "web".into(),
            notice_version: "2026-11".into(),
            actor: "crm".into(),
            request_id: None,
            recorded_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            evidence: "form-17".into(),
            ledger_version: 1,
        })
    }

    #[test]
    fn fields_are_length_prefixed_and_none_differs_from_empty() {
        assert_eq!(
            Encoder::default().text("ab").finish(),
            [0, 0, 0, 2, b'a', b'b']
        );
        assert_eq!(
            Encoder::default().opt_text(None).finish(),
            [255, 255, 255, 255]
        );
        assert_eq!(Encoder::default().opt_text(Some("")).finish(), [0, 0, 0, 0]);
        // "a","bc" and "ab","c" must not encode alike.
        assert_ne!(
            Encoder::default().text("a").text("bc").finish(),
            Encoder::default().text("ab").text("c").finish()
        );
    }

    #[test]
    fn every_field_of_a_record_changes_its_encoding() {
        let base = record();
        let digest = base.text_digest();
        let encoded = base.encode(1, &digest);
        let Content::ConsentRecord(r) = &base else {
            unreachable!()
        };
        let changes: Vec<fn(&mut ConsentRecordLink)> = vec![
            |r| r.record_id = Uuid::max(),
            |r| r.sequence += 1,
            |r| r.purpose.push('x'),
            |r| r.field.push('x'),
            |r| r.recipient.push('x'),
            |r| r.choice = "grant".into(),
            |r| r.channel = "api".into(),
            |r| r.notice_version.push('x'),
            |r| r.actor.push('x'),
            |r| r.request_id = Some(String::new()),
            |r| r.recorded_at += chrono::Duration::microseconds(1),
        ];
        for change in changes {
            let mut changed = r.clone();
            change(&mut changed);
            assert_ne!(Content::ConsentRecord(changed).encode(1, &digest), encoded);
        }
        assert_ne!(base.encode(2, &digest), encoded, "the position is encoded");
    }

    #[test]
    fn free_text_reaches_the_chain_only_through_its_digest() {
        let base = record();
        let Content::ConsentRecord(r) = &base else {
            unreachable!()
        };
        let blanked = Content::ConsentRecord(ConsentRecordLink {
            evidence: String::new(),
            ..r.clone()
        });
        assert_ne!(base.text_digest(), blanked.text_digest());
        let digest = base.text_digest();
        assert_eq!(base.encode(1, &digest), blanked.encode(1, &digest));
    }

    #[test]
    fn from_v2_the_request_id_reaches_the_chain_only_through_its_digest() {
        let Content::ConsentRecord(r) = record() else {
            unreachable!()
        };
        let v2 = |request_id: Option<&str>| {
            Content::ConsentRecord(ConsentRecordLink {
                request_id: request_id.map(String::from),
                ledger_version: 2,
                ..r.clone()
            })
        };
        let (with, without) = (v2(Some("req-1")), v2(None));
        assert_ne!(with.text_digest(), without.text_digest());
        let digest = with.text_digest();
        assert_eq!(with.encode(1, &digest), without.encode(1, &digest));
        // In v1 it is hashed as it is, so erasure must leave it.
        let v1 = |request_id: Option<&str>| {
            Content::ConsentRecord(ConsentRecordLink {
                request_id: request_id.map(String::from),
                ..r.clone()
            })
        };
        assert_ne!(
            v1(Some("req-1")).encode(1, &digest),
            v1(None).encode(1, &digest)
        );
    }

    #[test]
    fn a_chain_starts_from_its_subject_key() {
        assert_ne!(genesis(Uuid::nil()), genesis(Uuid::max()));
        assert_ne!(
            link(&genesis(Uuid::nil()), b"x"),
            link(&genesis(Uuid::max()), b"x")
        );
    }
}
