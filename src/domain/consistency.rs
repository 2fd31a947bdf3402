//! Consistency tokens (issue 12; SpiceDB's ZedToken, Zanzibar's zookie): an
//! opaque encoding of a change-feed position. A write answers with the
//! position of what it wrote; a read that passes the token is decided from
//! state that includes that write, on any replica.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};

/// The version tag inside every token, so the encoding can change later
/// without old tokens being misread.
const VERSION: u8 = 1;

/// A feed position, as callers carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConsistencyToken(i64);

impl ConsistencyToken {
    /// The position of feed sequence `sequence`: state that has applied it
    /// has applied everything before it too.
    pub fn at(sequence: i64) -> Self {
        Self(sequence.max(0))
    }

    pub fn sequence(self) -> i64 {
        self.0
    }

    /// The text callers carry. Opaque to them: its form may change.
    pub fn encode(self) -> String {
        let mut bytes = [0u8; 9];
        bytes[0] = VERSION;
        bytes[1..].copy_from_slice(&self.0.to_be_bytes());
        // URL-safe base64 of nine bytes (twelve characters, no padding),
        // by hand: every decision answers with a token, and the general
        // engine cost a Check about 500 instructions.
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut text = [0u8; 12];
        for (three, four) in bytes.chunks_exact(3).zip(text.chunks_exact_mut(4)) {
            let n = u32::from(three[0]) << 16 | u32::from(three[1]) << 8 | u32::from(three[2]);
            for (i, c) in four.iter_mut().enumerate() {
                *c = ALPHABET[(n >> (18 - 6 * i) & 63) as usize];
            }
        }
        text.iter().map(|&c| char::from(c)).collect()
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        const WHY: &str = "is not a consistency token this service issued";
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| WHY.to_string())?;
        let [VERSION, rest @ ..] = bytes.as_slice() else {
            return Err(WHY.into());
        };
        let sequence = <[u8; 8]>::try_from(rest)
            .map(i64::from_be_bytes)
            .map_err(|_| WHY.to_string())?;
        if sequence < 0 {
            return Err(WHY.into());
        }
        Ok(Self(sequence))
    }

    /// The later of two positions.
    pub fn max(self, other: Self) -> Self {
        Ord::max(self, other)
    }
}

/// How fresh a Check's answer must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Whatever the server's memory holds now: the fastest.
    #[default]
    MinimizeLatency,
    /// State that includes this position: wait (bounded) for memory to
    /// apply it, else read through to the primary database.
    AtLeastAsFresh(ConsistencyToken),
    /// Read through to the primary database.
    FullyConsistent,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_encoding_is_url_safe_base64_of_the_version_and_position() {
        let mut sequence: i64 = 1;
        for _ in 0..200 {
            let mut bytes = vec![VERSION];
            bytes.extend_from_slice(&sequence.to_be_bytes());
            assert_eq!(
                ConsistencyToken::at(sequence).encode(),
                URL_SAFE_NO_PAD.encode(&bytes)
            );
            sequence = sequence
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1)
                & i64::MAX;
        }
    }

    #[test]
    fn a_token_round_trips_and_orders_by_position() {
        for sequence in [0, 1, 42, i64::MAX] {
            let token = ConsistencyToken::at(sequence);
            assert_eq!(ConsistencyToken::parse(&token.encode()), Ok(token));
        }
        assert!(ConsistencyToken::at(2) > ConsistencyToken::at(1));
        assert_eq!(
            ConsistencyToken::at(3)
                .max(ConsistencyToken::at(9))
                .sequence(),
            9
        );
    }

    #[test]
    fn anything_else_is_refused() {
        let good = ConsistencyToken::at(7).encode();
        for bad in [
            "",
            "not base64!",
            &good[..good.len() - 1],
            &format!("{good}AA"),
            // Version 2, and a negative position.
            &URL_SAFE_NO_PAD.encode([2u8, 0, 0, 0, 0, 0, 0, 0, 7]),
            &URL_SAFE_NO_PAD.encode([1u8, 0xff, 0, 0, 0, 0, 0, 0, 7]),
        ] {
            assert!(ConsistencyToken::parse(bad).is_err(), "{bad:?}");
        }
    }
}
