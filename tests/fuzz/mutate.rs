//! Mutations of seed inputs: byte-level ones for binary formats, and
//! line- and value-level ones that keep TOML mostly TOML, so that inputs get
//! past the parser into the checks behind it.

use crate::engine::Rng;

/// Bytes that mean something to the formats we parse.
const INTERESTING: &[u8] = &[
    0, 1, 0x7f, 0x80, 0xff, b'"', b'\'', b'[', b']', b'{', b'}', b'=', b'\n', b'\\', b'.', b',',
    b'#', b' ',
];

/// One to four byte-level edits: flips, deletions, insertions, copies, and
/// tokens from `dictionary`.
pub fn bytes(rng: &mut Rng, data: &mut Vec<u8>, dictionary: &[Vec<u8>]) {
    for _ in 0..=rng.below(4) {
        let len = data.len();
        let at = if len == 0 { 0 } else { rng.below(len + 1) };
        match rng.below(8) {
            0 if len > 0 => data[at.min(len - 1)] ^= 1 << rng.below(8),
            1 if len > 0 => data[at.min(len - 1)] = *rng.pick(INTERESTING),
            2 if len > 0 => {
                let end = (at + 1 + rng.below(16)).min(len);
                data.drain(at.min(len - 1)..end);
            }
            3 if !dictionary.is_empty() => {
                let token = rng.pick(dictionary).clone();
                data.splice(at..at, token);
            }
            4 if len > 0 => {
                let from = rng.below(len);
                let end = (from + 1 + rng.below(32)).min(len);
                let copy = data[from..end].to_vec();
                data.splice(at..at, copy);
            }
            5 => data.truncate(at),
            6 => {
                let n = 1 + rng.below(8);
                let random = rng.bytes(n);
                data.splice(at..at, random);
            }
            _ => data.push(*rng.pick(INTERESTING)),
        }
    }
}

/// Values a TOML key might be given: right and wrong types, edge numbers,
/// odd strings.
const VALUES: &[&str] = &[
    "\"\"",
    "\"x\"",
    "0",
    "-1",
    "1",
    "4294967296",
    "99999999999999999999",
    "1e400",
    "nan",
    "true",
    "[]",
    "[\"\"]",
    "[\"a\", \"a\"]",
    "{}",
    "\"\\u0000\"",
    "\"\\n\"",
    "\"𝕏 ünïcode\"",
    "'''multi\nline'''",
    "\"contract\"",
    "\"consent\"",
    "\"opt_out\"",
    "\"courier\"",
    "\"authority\"",
    "\"LEGAL_PROCESS\"",
    "\"consent.v1.ConsentService/*\"",
    "\"consent.v1.Nope/*\"",
    "1979-05-27",
];

/// A mutation of TOML text: whole lines moved, dropped, doubled or spliced
/// from the seed; values and keys swapped for others; sometimes byte edits
/// on top. The dictionary holds the seed's own words.
pub fn toml(rng: &mut Rng, seed: &str, dictionary: &[Vec<u8>]) -> String {
    let seed_lines = entries(seed);
    let mut lines = seed_lines.clone();
    for _ in 0..=rng.below(6) {
        let n = lines.len();
        if n == 0 {
            lines.push(rng.pick(&seed_lines).clone());
            continue;
        }
        let i = rng.below(n);
        match rng.below(10) {
            // A quoted string swapped for another word, keeping the line's
            // shape, so the file still parses and its checks must notice.
            7..=9 => {
                let quotes: Vec<usize> = lines[i].match_indices('"').map(|(at, _)| at).collect();
                if quotes.len() >= 2 && !dictionary.is_empty() {
                    let pair = rng.below(quotes.len() / 2) * 2;
                    let word = String::from_utf8_lossy(&dictionary[rng.below(dictionary.len())])
                        .into_owned();
                    lines[i].replace_range(quotes[pair] + 1..quotes[pair + 1], &word);
                }
            }
            0 => {
                lines.remove(i);
            }
            1 => {
                let line = lines[i].clone();
                lines.insert(rng.below(n + 1), line);
            }
            2 => lines.swap(i, rng.below(n)),
            3 => lines.insert(i, rng.pick(&seed_lines).clone()),
            4 | 5 => {
                if let Some((key, _)) = lines[i].split_once('=') {
                    let value = if rng.one_in(3) && !dictionary.is_empty() {
                        format!(
                            "\"{}\"",
                            String::from_utf8_lossy(&dictionary[rng.below(dictionary.len())])
                        )
                    } else {
                        rng.pick(VALUES).to_string()
                    };
                    lines[i] = format!("{key}= {value}");
                }
            }
            _ => {
                if let Some((_, value)) = lines[i].split_once('=')
                    && !dictionary.is_empty()
                {
                    let key = String::from_utf8_lossy(&dictionary[rng.below(dictionary.len())])
                        .to_string();
                    lines[i] = format!("{key} ={value}");
                }
            }
        }
    }
    let mut text = lines.join("\n").into_bytes();
    if rng.one_in(4) {
        bytes(rng, &mut text, dictionary);
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// The lines of TOML text, except that a multi-line string stays with its
/// key, so that dropping or moving an entry keeps the file parseable.
fn entries(text: &str) -> Vec<String> {
    let mut entries: Vec<String> = Vec::new();
    let mut open = false;
    for line in text.lines() {
        match entries.last_mut() {
            Some(last) if open => {
                last.push('\n');
                last.push_str(line);
            }
            _ => entries.push(line.to_string()),
        }
        if line.matches("\"\"\"").count() % 2 == 1 {
            open = !open;
        }
    }
    entries
}

/// The words and quoted strings of a seed, as mutation tokens.
pub fn words(seed: &str) -> Vec<Vec<u8>> {
    let mut words: Vec<Vec<u8>> = seed
        .split(|c: char| !(c.is_alphanumeric() || "_-./*".contains(c)))
        .filter(|w| !w.is_empty() && w.len() < 80)
        .map(|w| w.as_bytes().to_vec())
        .collect();
    words.sort();
    words.dedup();
    words
}
