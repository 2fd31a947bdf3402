//! The compact tables behind the decision state.
//!
//! Sized for tens of millions of subjects: no `String` or `Vec` per subject.
//! Ids live back to back in one byte arena; a subject is a 16-byte slot;
//! its choices are 24-byte nodes in one pool, linked newest first; purposes
//! and fields are small integers. Only the few subjects with stored values
//! have an entry in the (sparse) map of field ages.
//!
//! Slots are kept in registration order, which is feed order, so an erasure
//! event finds its subject by the registration's sequence (a binary search)
//! without naming the person.

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasher, RandomState},
};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{domain::Choice, policy::DataFacts};

mod index;
use index::Index;

/// End of a choice list; also the slot of an erased subject's id.
const NIL: u32 = u32::MAX;

/// One registered subject.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// The registration's feed sequence: slots ascend by it.
    sequence: i64,
    /// Where its id starts in the arena; [`NIL`] once erased.
    id_at: u32,
    /// Its newest choice, or [`NIL`].
    choices: u32,
}

/// One current choice: the latest for its purpose and field. 24 bytes: the
/// choice rides in the top bit of `field`.
#[derive(Debug, Clone, Copy)]
struct Node {
    record_id: [u8; 16],
    /// The next older choice of the same subject, or [`NIL`]; the free
    /// list's link for a node not in use.
    next: u32,
    purpose: u16,
    /// Low 15 bits: 0 for every field of the purpose, else a field's index
    /// + 1. Top bit: a grant.
    field_and_grant: u16,
}

const GRANT: u16 = 0x8000;

impl Node {
    fn field(&self) -> u16 {
        self.field_and_grant & !GRANT
    }

    fn choice(&self) -> Choice {
        if self.field_and_grant & GRANT != 0 {
            Choice::Grant
        } else {
            Choice::Refuse
        }
    }
}

/// A stored value's collection and age (R2, R3).
#[derive(Debug, Clone)]
struct Age {
    field: u16,
    collected_for: Box<[u16]>,
    checked_at: DateTime<Utc>,
}

/// Text codes (purposes, fields) as small integers. Codes from the policy
/// come first; records may name codes the policy no longer declares.
#[derive(Debug, Default)]
pub struct Interner {
    codes: HashMap<Box<str>, u16>,
}

impl Interner {
    pub fn get(&self, code: &str) -> Option<u16> {
        self.codes.get(code).copied()
    }

    /// `None` only past 65,535 distinct codes, which no policy reaches.
    fn intern(&mut self, code: &str) -> Option<u16> {
        if let Some(&i) = self.codes.get(code) {
            return Some(i);
        }
        let i = u16::try_from(self.codes.len()).ok()?;
        self.codes.insert(code.into(), i);
        Some(i)
    }
}

/// What a lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    Registered(u32),
    /// Not registered; the id is on the suppression list.
    Erased,
    Unknown,
}

pub struct Tables {
    hasher: RandomState,
    ids: Vec<u8>,
    slots: Vec<Slot>,
    /// Slot numbers, by id.
    index: Index,
    nodes: Vec<Node>,
    free: u32,
    ages: HashMap<u32, Vec<Age>>,
    /// Suppression-list hashes of erased ids.
    erased: HashSet<Box<[u8]>>,
    /// Registrations of an id still held by an earlier registration. A
    /// registration that waited on the erasure of its id drew its number
    /// first, so the feed carries it before that erasure: it is added when
    /// the erasure ends the earlier one. Empty but for such a race.
    reborn: Vec<(i64, Box<str>)>,
    pub purposes: Interner,
    pub fields: Interner,
}

impl Default for Tables {
    fn default() -> Self {
        Self {
            hasher: RandomState::new(),
            ids: Vec::new(),
            slots: Vec::new(),
            index: Index::default(),
            nodes: Vec::new(),
            free: NIL,
            ages: HashMap::new(),
            erased: HashSet::new(),
            reborn: Vec::new(),
            purposes: Interner::default(),
            fields: Interner::default(),
        }
    }
}

impl Tables {
    /// Room for `subjects` more subjects with `choices` choices, so a load
    /// of known size allocates once rather than doubling.
    pub fn reserve(&mut self, subjects: usize, id_bytes: usize, choices: usize) {
        self.slots.reserve_exact(subjects);
        self.ids.reserve_exact(id_bytes);
        self.nodes.reserve_exact(choices);
        let (slots, ids, hasher) = (&self.slots, &self.ids, &self.hasher);
        self.index.reserve(subjects, |&s| {
            hasher.hash_one(id_in(ids, slots[s as usize].id_at))
        });
    }

    pub fn subjects(&self) -> usize {
        self.index.len()
    }

    fn id(&self, slot: u32) -> Option<&[u8]> {
        let at = self.slots[slot as usize].id_at;
        (at != NIL).then(|| id_in(&self.ids, at))
    }

    pub fn find(&self, id: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(id.as_bytes());
        self.index
            .find(hash, |&s| self.id(s) == Some(id.as_bytes()))
            .copied()
    }

    /// Registered, erased or unknown. `erasure_hash` is asked only for an
    /// unregistered id while the suppression list is not empty.
    pub fn lookup(&self, id: &str, erasure_hash: impl FnOnce() -> Vec<u8>) -> Found {
        match self.find(id) {
            Some(slot) => Found::Registered(slot),
            None if self.erased.is_empty() => Found::Unknown,
            None if self.erased.contains(erasure_hash().as_slice()) => Found::Erased,
            None => Found::Unknown,
        }
    }

    /// Adds a registration. Registrations arrive in sequence order; one
    /// already held (by id) is left as it is. A new registration of an id
    /// held under another number waits for the erasure that ends it.
    pub fn register(&mut self, sequence: i64, id: &str) -> u32 {
        if let Some(slot) = self.find(id) {
            if self.slots[slot as usize].sequence != sequence
                && !self.reborn.iter().any(|(s, _)| *s == sequence)
            {
                self.reborn.push((sequence, id.into()));
            }
            return slot;
        }
        let id_at = u32::try_from(self.ids.len()).expect("under 4 GiB of ids");
        push_id(&mut self.ids, id.as_bytes());
        let slot = Slot {
            sequence,
            id_at,
            choices: NIL,
        };
        // Feed order keeps this a push; the search covers a registration
        // that arrives out of order all the same.
        let at = match self.slots.last() {
            Some(last) if last.sequence > sequence => {
                let at = self.slots.partition_point(|s| s.sequence < sequence);
                self.slots.insert(at, slot);
                self.renumber_from(at);
                at
            }
            _ => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        };
        let n = u32::try_from(at).expect("under 4 billion subjects");
        let (slots, ids, hasher) = (&self.slots, &self.ids, &self.hasher);
        self.index
            .insert_unique(hasher.hash_one(id.as_bytes()), n, |&s| {
                hasher.hash_one(id_in(ids, slots[s as usize].id_at))
            });
        n
    }

    /// After an insertion at `at`, every later slot moved up one.
    fn renumber_from(&mut self, at: usize) {
        for s in self.index.iter_mut() {
            if *s as usize >= at {
                *s += 1;
            }
        }
        let moved: Vec<(u32, Vec<Age>)> = self.ages.extract_if(|&s, _| s as usize >= at).collect();
        for (s, ages) in moved {
            self.ages.insert(s + 1, ages);
        }
    }

    /// The slot of the registration with this sequence, if it is held.
    pub fn slot_of_registration(&self, sequence: i64) -> Option<u32> {
        let at = self.slots.partition_point(|s| s.sequence < sequence);
        (self
            .slots
            .get(at)
            .is_some_and(|s| s.sequence == sequence && s.id_at != NIL))
        .then(|| u32::try_from(at).expect("under 4 billion subjects"))
    }

    /// Makes `choice` the subject's latest for its purpose and field. The
    /// caller applies choices in sequence order.
    pub fn choose(
        &mut self,
        slot: u32,
        purpose: &str,
        field: Option<&str>,
        choice: Choice,
        record_id: Uuid,
    ) {
        let (Some(purpose), Some(field)) = (self.purposes.intern(purpose), self.field_code(field))
        else {
            tracing::error!("more than 65,535 purposes or fields; a choice is not held in memory");
            return;
        };
        self.unlink(slot, |n| n.purpose == purpose && n.field() == field);
        let grant = if choice == Choice::Grant { GRANT } else { 0 };
        let node = Node {
            record_id: *record_id.as_bytes(),
            next: self.slots[slot as usize].choices,
            purpose,
            field_and_grant: field | grant,
        };
        let at = if self.free == NIL {
            self.nodes.push(node);
            u32::try_from(self.nodes.len() - 1).expect("under 4 billion choices")
        } else {
            let at = self.free;
            self.free = self.nodes[at as usize].next;
            self.nodes[at as usize] = node;
            at
        };
        self.slots[slot as usize].choices = at;
    }

    /// Below [`GRANT`], which marks the choice.
    fn field_code(&mut self, field: Option<&str>) -> Option<u16> {
        match field {
            None => Some(0),
            Some(f) => self.fields.intern(f)?.checked_add(1).filter(|c| *c < GRANT),
        }
    }

    /// Takes the first node of the subject's list that `matches` out of the
    /// list, onto the free list.
    fn unlink(&mut self, slot: u32, matches: impl Fn(&Node) -> bool) {
        let mut prev = NIL;
        let mut at = self.slots[slot as usize].choices;
        while at != NIL {
            let node = self.nodes[at as usize];
            if matches(&node) {
                if prev == NIL {
                    self.slots[slot as usize].choices = node.next;
                } else {
                    self.nodes[prev as usize].next = node.next;
                }
                self.nodes[at as usize].next = self.free;
                self.free = at;
                return;
            }
            prev = at;
            at = node.next;
        }
    }

    /// The newest choice covering `purpose` and `field` (a purpose-wide
    /// choice or one for the field), as `SubjectState::latest_covering`.
    /// `field` is the field's index as [`Interner::get`] gives it.
    pub fn latest(&self, slot: u32, purpose: u16, field: Option<u16>) -> Option<(Choice, Uuid)> {
        let field = field.map(|f| f + 1);
        let mut at = self.slots[slot as usize].choices;
        while at != NIL {
            let node = &self.nodes[at as usize];
            if node.purpose == purpose && (node.field() == 0 || Some(node.field()) == field) {
                return Some((node.choice(), Uuid::from_bytes(node.record_id)));
            }
            at = node.next;
        }
        None
    }

    /// Records a stored field's collection and age, replacing the earlier.
    pub fn store_field(
        &mut self,
        slot: u32,
        field: &str,
        collected_for: &[&str],
        checked_at: DateTime<Utc>,
    ) {
        let (Some(field), Some(collected_for)) = (
            self.fields.intern(field),
            collected_for
                .iter()
                .map(|p| self.purposes.intern(p))
                .collect::<Option<Box<[u16]>>>(),
        ) else {
            tracing::error!("more than 65,535 purposes or fields; a field age is not held");
            return;
        };
        let ages = self.ages.entry(slot).or_default();
        ages.retain(|a| a.field != field);
        ages.push(Age {
            field,
            collected_for,
            checked_at,
        });
    }

    /// What a decision needs of the subject's stored `field`, if stored.
    /// `None` indexes are codes nothing in memory names.
    pub fn facts(&self, slot: u32, field: Option<u16>, purpose: Option<u16>) -> Option<DataFacts> {
        let field = field?;
        let age = self.ages.get(&slot)?.iter().find(|a| a.field == field)?;
        Some(DataFacts {
            collected_for_purpose: purpose.is_some_and(|p| age.collected_for.contains(&p)),
            checked_at: age.checked_at,
        })
    }

    /// Puts a hash on the suppression list.
    pub fn add_erased(&mut self, hash: Vec<u8>) {
        self.erased.insert(hash.into_boxed_slice());
    }

    /// Ends the registration with this sequence: its id goes onto the
    /// suppression list as `erasure_hash` of it, and is overwritten here;
    /// its choices and ages are dropped. Returns whether it was held.
    pub fn erase(&mut self, registration: i64, erasure_hash: impl FnOnce(&str) -> Vec<u8>) -> bool {
        let Some(slot) = self.slot_of_registration(registration) else {
            return false;
        };
        let at = self.slots[slot as usize].id_at;
        let bytes = id_in(&self.ids, at);
        let hash = self.hasher.hash_one(bytes);
        let reborn = self
            .reborn
            .iter()
            .position(|(_, id)| id.as_bytes() == bytes);
        // Ids are stored from valid text, so this never fails.
        if let Ok(id) = std::str::from_utf8(bytes) {
            self.erased.insert(erasure_hash(id).into_boxed_slice());
        }
        if let Ok(entry) = self.index.find_entry(hash, |&s| s == slot) {
            entry.remove();
        }
        let (start, len) = id_span(&self.ids, at);
        self.ids[start..start + len].fill(0);
        while self.slots[slot as usize].choices != NIL {
            self.unlink(slot, |_| true);
        }
        self.ages.remove(&slot);
        self.slots[slot as usize].id_at = NIL;
        if let Some(at) = reborn {
            let (sequence, id) = self.reborn.swap_remove(at);
            self.register(sequence, &id);
        }
        true
    }

    /// Bytes held, for the memory metric: what the tables allocated.
    pub fn allocated_bytes(&self) -> usize {
        self.ids.capacity()
            + self.slots.capacity() * size_of::<Slot>()
            + self.index.allocated_bytes()
            + self.nodes.capacity() * size_of::<Node>()
            + self.ages.capacity() * (size_of::<u32>() + size_of::<Vec<Age>>() + 1)
            + self.erased.capacity() * (size_of::<Box<[u8]>>() + 32 + 1)
    }
}

/// Ids are stored as a length (one byte, or 255 and two more for long
/// non-ASCII ids) and then their bytes.
fn push_id(ids: &mut Vec<u8>, id: &[u8]) {
    match u8::try_from(id.len()) {
        Ok(len) if len < 255 => ids.push(len),
        _ => {
            let len = u16::try_from(id.len()).expect("ids are at most 512 bytes");
            ids.push(255);
            ids.extend_from_slice(&len.to_le_bytes());
        }
    }
    ids.extend_from_slice(id);
}

fn id_span(ids: &[u8], at: u32) -> (usize, usize) {
    let at = at as usize;
    match ids[at] {
        255 => (
            at + 3,
            usize::from(u16::from_le_bytes([ids[at + 1], ids[at + 2]])),
        ),
        len => (at + 1, usize::from(len)),
    }
}

fn id_in(ids: &[u8], at: u32) -> &[u8] {
    let (start, len) = id_span(ids, at);
    &ids[start..start + len]
}

// The per-subject budget rests on these.
const _: () = assert!(size_of::<Slot>() == 16 && size_of::<Node>() == 24);

#[cfg(test)]
mod tests;
