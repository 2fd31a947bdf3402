//! The id index: slot numbers by id hash, in a few hash tables (shards)
//! whose number is chosen when the load reserves room.
//!
//! One hashbrown table has a power of two of buckets, filled to at most
//! 7/8: a million ids need 2^21 buckets, 48% full, about 10.5 bytes an id.
//! Split over the shard count that fills power-of-two shards best (nine
//! shards of 2^17 for a million: 85% full), the same ids take about 5.9
//! bytes each. A lookup hashes once, picks its shard by other bits of the
//! hash than hashbrown uses, and probes one table as before. Growth after
//! the load doubles one shard at a time.

use hashbrown::{HashTable, hash_table};

/// Enough to fill power-of-two shards within a few percent of 7/8 at any
/// size; each shard is still far bigger than a cache line's worth of ids.
const MAX_SHARDS: usize = 16;

pub struct Index {
    shards: Vec<HashTable<u32>>,
}

impl Default for Index {
    fn default() -> Self {
        Self {
            shards: vec![HashTable::new()],
        }
    }
}

/// hashbrown's bucket count for `capacity` entries: a power of two that
/// is at most 7/8 full (small tables aside).
fn buckets_for(capacity: usize) -> usize {
    if capacity < 8 {
        if capacity < 4 { 4 } else { 8 }
    } else {
        (capacity * 8 / 7).next_power_of_two()
    }
}

/// The entries one of `shards` shards must hold for `total` ids spread by
/// hash: its share and four standard deviations, so that no shard of a
/// reserved load grows.
fn per_shard(total: usize, shards: usize) -> usize {
    let share = total.div_ceil(shards);
    share + 4 * (share as f64).sqrt() as usize + 8
}

/// The shard count (up to [`MAX_SHARDS`]) with the fewest buckets for
/// `total` ids; the fewer shards on a tie.
fn best_shards(total: usize) -> usize {
    (1..=MAX_SHARDS)
        .min_by_key(|&s| s * buckets_for(per_shard(total, s)))
        .expect("at least one shard count")
}

impl Index {
    fn shard_of(&self, hash: u64) -> usize {
        // hashbrown takes the bucket from the low bits and its tag from the
        // top seven; the shard comes from bits 25..57, multiplied into range.
        let bits = (hash >> 25) as u32;
        ((u64::from(bits) * self.shards.len() as u64) >> 32) as usize
    }

    /// Room for `additional` more ids. An empty index picks its shard count
    /// for them; a filled one keeps its shards and grows each by its share.
    pub fn reserve(&mut self, additional: usize, hasher: impl Fn(&u32) -> u64) {
        if self.len() == 0 {
            let shards = best_shards(additional);
            let per = per_shard(additional, shards);
            self.shards = (0..shards).map(|_| HashTable::with_capacity(per)).collect();
            return;
        }
        let per = per_shard(additional, self.shards.len());
        for shard in &mut self.shards {
            shard.reserve(per, &hasher);
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(HashTable::len).sum()
    }

    pub fn find(&self, hash: u64, eq: impl FnMut(&u32) -> bool) -> Option<&u32> {
        self.shards[self.shard_of(hash)].find(hash, eq)
    }

    pub fn find_entry(
        &mut self,
        hash: u64,
        eq: impl FnMut(&u32) -> bool,
    ) -> Result<hash_table::OccupiedEntry<'_, u32>, hash_table::AbsentEntry<'_, u32>> {
        let shard = self.shard_of(hash);
        self.shards[shard].find_entry(hash, eq)
    }

    pub fn insert_unique(&mut self, hash: u64, value: u32, hasher: impl Fn(&u32) -> u64) {
        let shard = self.shard_of(hash);
        self.shards[shard].insert_unique(hash, value, hasher);
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut u32> {
        self.shards.iter_mut().flat_map(HashTable::iter_mut)
    }

    /// Bytes the shards allocated: a slot number and a control byte per
    /// bucket.
    pub fn allocated_bytes(&self) -> usize {
        self.shards
            .iter()
            .filter(|shard| shard.capacity() > 0)
            .map(|shard| buckets_for(shard.capacity()) * (size_of::<u32>() + 1))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use std::hash::{BuildHasher as _, RandomState};

    use super::*;

    #[test]
    fn a_million_ids_fill_their_buckets_to_more_than_four_fifths() {
        let shards = best_shards(1_000_000);
        let buckets = shards * buckets_for(per_shard(1_000_000, shards));
        assert!(
            1_000_000.0 / buckets as f64 > 0.8,
            "{shards} shards, {buckets} buckets"
        );
    }

    #[test]
    fn a_reserved_load_fills_without_growing_and_every_id_is_found_in_its_shard() {
        let hasher = RandomState::new();
        let hash = |n: &u32| hasher.hash_one(n);
        let n = 100_000u32;
        let mut index = Index::default();
        index.reserve(n as usize, hash);
        assert!(index.shards.len() > 1, "a load this size is sharded");
        let reserved = index.allocated_bytes();
        for i in 0..n {
            index.insert_unique(hash(&i), i, hash);
        }
        assert_eq!(index.allocated_bytes(), reserved, "no shard grew");
        assert_eq!(index.len(), n as usize);
        for i in 0..n {
            assert_eq!(index.find(hash(&i), |&s| s == i), Some(&i));
        }
        assert_eq!(index.find(hash(&n), |&s| s == n), None);
        index.find_entry(hash(&7), |&s| s == 7).unwrap().remove();
        assert_eq!(index.find(hash(&7), |&s| s == 7), None);
        assert_eq!(index.len(), n as usize - 1);
    }
}
