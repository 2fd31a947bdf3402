use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::*;

fn admitted_at_once(rate: Rate, now: Instant) -> u32 {
    let mut bucket = Bucket::full(now);
    let mut admitted = 0;
    while let Ok(next) = take(bucket, now, rate) {
        bucket = next;
        admitted += 1;
        assert!(admitted <= 1_000_000, "a bucket that never runs dry");
    }
    admitted
}

#[test]
fn a_fresh_caller_gets_exactly_its_burst_at_once() {
    let now = Instant::now();
    assert_eq!(admitted_at_once(Rate::per_second(10, 25), now), 25);
    assert_eq!(admitted_at_once(Rate::per_second(10, 1), now), 1);
    assert_eq!(admitted_at_once(Rate::per_minute(2), now), 2);
}

#[test]
fn an_empty_bucket_says_when_the_next_call_fits_and_admits_it_then() {
    let now = Instant::now();
    let rate = Rate::per_second(4, 2);
    let bucket = take(Bucket::full(now), now, rate).unwrap();
    let bucket = take(bucket, now, rate).unwrap();
    let wait = take(bucket, now, rate).unwrap_err();
    assert_eq!(wait, Duration::from_millis(250));
    assert!(take(bucket, now + wait - Duration::from_nanos(1), rate).is_err());
    assert!(take(bucket, now + wait, rate).is_ok());
}

#[test]
fn a_refused_call_costs_nothing() {
    let now = Instant::now();
    let rate = Rate::per_second(1, 1);
    let bucket = take(Bucket::full(now), now, rate).unwrap();
    for _ in 0..100 {
        assert!(take(bucket, now, rate).is_err());
    }
    assert!(take(bucket, now + Duration::from_secs(1), rate).is_ok());
}

#[test]
fn a_per_minute_rate_tells_a_refused_caller_to_wait_its_share_of_the_minute() {
    let now = Instant::now();
    let rate = Rate::per_minute(2);
    let mut bucket = Bucket::full(now);
    for _ in 0..2 {
        bucket = take(bucket, now, rate).unwrap();
    }
    assert_eq!(take(bucket, now, rate), Err(Duration::from_secs(30)));
}

#[test]
fn a_bucket_left_alone_is_full_again_after_burst_intervals() {
    let now = Instant::now();
    let rate = Rate::per_second(10, 3);
    let mut bucket = Bucket::full(now);
    for _ in 0..3 {
        bucket = take(bucket, now, rate).unwrap();
    }
    assert!(!bucket.is_full(now + Duration::from_millis(299)));
    assert!(bucket.is_full(now + Duration::from_millis(300)));
}

#[test]
fn ipv6_callers_count_by_their_64_and_mapped_ipv4_as_ipv4() {
    let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
    let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
    let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
    assert_eq!(address_key(a), address_key(b));
    assert_ne!(address_key(a), address_key(c));
    let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped());
    assert_eq!(address_key(mapped), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)));
    let v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
    assert_eq!(address_key(v4), v4);
    let loopback = IpAddr::V6(Ipv6Addr::LOCALHOST);
    assert_eq!(address_key(loopback), IpAddr::V6(Ipv6Addr::UNSPECIFIED));
}

#[test]
fn keys_have_buckets_of_their_own() {
    let now = Instant::now();
    let buckets = Buckets::new(Rate::per_second(1, 2));
    assert!(buckets.take("a", now).is_ok());
    assert!(buckets.take("a", now).is_ok());
    assert!(buckets.take("a", now).is_err());
    assert!(buckets.take("b", now).is_ok());
    assert!(buckets.take("b", now).is_ok());
    assert!(buckets.take("b", now).is_err());
}

#[test]
fn a_full_map_forgets_idle_keys_and_refuses_new_ones_only_while_all_are_busy() {
    let now = Instant::now();
    let buckets = Buckets::with_capacity(Rate::per_second(1, 1), 2);
    assert!(buckets.take(1, now).is_ok());
    assert!(buckets.take(2, now).is_ok());
    // Both busy: a third key cannot get a bucket, and is told to come back.
    assert_eq!(buckets.take(3, now), Err(SWEEP_EVERY));
    // Once they are full again they are forgotten, and the new key fits.
    let later = now + Duration::from_secs(1);
    assert!(buckets.take(3, later).is_ok());
    assert!(buckets.take(3, later).is_err(), "its own bucket is kept");
}

proptest! {
    /// Over any window, no caller gets more than its burst plus its rate.
    #[test]
    fn no_sequence_of_calls_beats_burst_plus_rate(
        per_second in 1u32..50,
        burst in 1u32..20,
        gaps in proptest::collection::vec(0u64..200, 1..300),
    ) {
        let rate = Rate::per_second(per_second, burst);
        let start = Instant::now();
        let mut now = start;
        let mut bucket = Bucket::full(now);
        let mut admitted = 0u64;
        for gap in gaps {
            now += Duration::from_millis(gap);
            if let Ok(next) = take(bucket, now, rate) {
                bucket = next;
                admitted += 1;
            }
        }
        let window = (now - start).as_secs_f64();
        let most = u64::from(burst) + (window * f64::from(per_second)).floor() as u64;
        prop_assert!(admitted <= most, "{admitted} > {most}");
    }

    /// A caller that waits as long as it was told always gets in.
    #[test]
    fn waiting_the_retry_hint_always_admits(
        per_second in 1u32..1000,
        burst in 1u32..50,
        extra in 0u32..100,
    ) {
        let rate = Rate::per_second(per_second, burst);
        let now = Instant::now();
        let mut bucket = Bucket::full(now);
        for _ in 0..burst + extra {
            match take(bucket, now, rate) {
                Ok(next) => bucket = next,
                Err(wait) => {
                    prop_assert!(take(bucket, now + wait, rate).is_ok());
                    prop_assert!(wait <= rate.interval * (extra + 1));
                }
            }
        }
    }
}
