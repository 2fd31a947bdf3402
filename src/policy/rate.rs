//! Rate limits: whether one more call from one caller fits its rate, as a
//! pure function ([`take`]), and the per-key state it reads ([`Buckets`]).
//!
//! The bucket is kept as GCRA keeps it: one instant, the "theoretical
//! arrival time" at which the caller's bucket would be full again. That is
//! exact in integer nanoseconds (no drifting float of tokens), and a bucket
//! whose instant has passed is the same as no bucket at all, so idle keys
//! can be forgotten.

use std::{
    collections::HashMap,
    hash::Hash,
    net::IpAddr,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

/// A rate: one call per `interval` on average, and up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    interval: Duration,
    burst: u32,
}

impl Rate {
    /// `per_second` calls a second, `burst` at once (both at least 1).
    pub fn per_second(per_second: u32, burst: u32) -> Self {
        Self::every(Duration::from_secs(1) / per_second.max(1), burst)
    }

    /// `per_minute` calls a minute, in bursts of as many.
    pub fn per_minute(per_minute: u32) -> Self {
        Self::every(Duration::from_secs(60) / per_minute.max(1), per_minute)
    }

    fn every(interval: Duration, burst: u32) -> Self {
        Self {
            interval: interval.max(Duration::from_nanos(1)),
            burst: burst.max(1),
        }
    }

    /// How far ahead of now a bucket may run and still take a call: the
    /// room the burst gives beyond the one call being taken.
    fn tolerance(&self) -> Duration {
        self.interval * (self.burst - 1)
    }
}

/// One caller's bucket: when it will be full again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    full_at: Instant,
}

impl Bucket {
    /// A bucket that is full at `now`, as a caller never seen has.
    pub fn full(now: Instant) -> Self {
        Self { full_at: now }
    }

    /// Full by `now`: it would admit a whole burst, as if never used.
    pub fn is_full(&self, now: Instant) -> bool {
        self.full_at <= now
    }
}

/// Whether one more call at `now` fits `rate`: the bucket after taking it,
/// or, when the caller is over its limit, how long until a call would fit.
pub fn take(bucket: Bucket, now: Instant, rate: Rate) -> Result<Bucket, Duration> {
    let from = bucket.full_at.max(now);
    let ahead = from - now;
    if ahead > rate.tolerance() {
        return Err(ahead - rate.tolerance());
    }
    Ok(Bucket {
        full_at: from + rate.interval,
    })
}

/// The address a caller is counted under: an IPv6 host usually holds a
/// whole /64, so that is one caller; an IPv4-mapped address is its IPv4.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut segments = v6.segments();
            segments[4..].fill(0);
            IpAddr::V6(segments.into())
        }
        v4 => v4,
    }
}

/// Buckets remembered at most: past it, full buckets are forgotten, and if
/// every one is in use a new key is refused rather than memory grown.
const MAX_KEYS: usize = 100_000;
/// How often a full map is swept, so that a flood of new keys costs one
/// sweep a second and not one per call.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The bucket of every key seen lately, all held to one rate.
pub struct Buckets<K> {
    rate: Rate,
    state: Mutex<State<K>>,
    max_keys: usize,
}

struct State<K> {
    buckets: HashMap<K, Bucket>,
    next_sweep: Option<Instant>,
}

impl<K: Hash + Eq> Buckets<K> {
    pub fn new(rate: Rate) -> Self {
        Self::with_capacity(rate, MAX_KEYS)
    }

    fn with_capacity(rate: Rate, max_keys: usize) -> Self {
        Self {
            rate,
            state: Mutex::new(State {
                buckets: HashMap::new(),
                next_sweep: None,
            }),
            max_keys,
        }
    }

    /// Takes one call for `key` at `now` ([`take`]); `Err` says when to retry.
    pub fn take(&self, key: K, now: Instant) -> Result<(), Duration> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(bucket) = state.buckets.get_mut(&key) {
            *bucket = take(*bucket, now, self.rate)?;
            return Ok(());
        }
        if state.buckets.len() >= self.max_keys {
            if state.next_sweep.is_none_or(|at| at <= now) {
                state.buckets.retain(|_, bucket| !bucket.is_full(now));
                state.next_sweep = Some(now + SWEEP_EVERY);
            }
            if state.buckets.len() >= self.max_keys {
                return Err(SWEEP_EVERY);
            }
        }
        let bucket = take(Bucket::full(now), now, self.rate)?;
        state.buckets.insert(key, bucket);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
