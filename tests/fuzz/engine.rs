//! The bounded-time loop every target runs in, and its random source.

use std::{
    cell::{Cell, RefCell},
    fmt::Debug,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::Once,
    time::{Duration, Instant},
};

/// SplitMix64: small, fast, and the same sequence for the same seed, so
/// that a reported seed replays the run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`; `n` must not be 0.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True one time in `n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// Fewer than `max` random bytes.
    pub fn some_bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max);
        self.bytes(n)
    }
}

/// How long each target runs.
pub fn budget() -> Duration {
    let seconds = std::env::var("CONSENTD_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(seconds)
}

/// `CONSENTD_FUZZ_SEED`, else a fresh one.
pub fn seed() -> u64 {
    match std::env::var("CONSENTD_FUZZ_SEED") {
        Ok(seed) => seed.parse().expect("CONSENTD_FUZZ_SEED is a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

thread_local! {
    /// Set while a target checks an input: its panics are counted, not printed.
    static QUIET: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Keeps the panic of a checked input (message and place) for the report
/// instead of printing one per input; any other panic prints as usual.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.get() {
                LAST_PANIC.set(info.to_string());
            } else {
                default(info);
            }
        }));
    });
}

/// Generates and checks inputs until the budget is spent, then reports.
/// `check` returns `Err` for a failed property; a panic is a crash.
pub fn fuzz<I: Debug>(
    target: &str,
    mut generate: impl FnMut(&mut Rng) -> I,
    mut check: impl FnMut(&I) -> Result<(), String>,
) {
    install_panic_hook();
    let seed = seed();
    let mut rng = Rng::new(seed);
    let (started, budget) = (Instant::now(), budget());
    let (mut inputs, mut crashes, mut failures) = (0u64, 0u64, 0u64);
    let mut examples = Vec::new();
    while inputs == 0 || started.elapsed() < budget {
        let input = generate(&mut rng);
        inputs += 1;
        QUIET.set(true);
        let outcome = catch_unwind(AssertUnwindSafe(|| check(&input)));
        QUIET.set(false);
        let problem = match outcome {
            Ok(Ok(())) => continue,
            Ok(Err(failed)) => {
                failures += 1;
                format!("property failed: {failed}")
            }
            Err(_) => {
                crashes += 1;
                format!("crash: {}", LAST_PANIC.take())
            }
        };
        if examples.len() < 3 {
            let mut shown = format!("{input:?}");
            shown.truncate(4000);
            examples.push(format!("input #{inputs}: {shown}\n  {problem}"));
        }
    }
    println!(
        "target {target}: {inputs} inputs, {crashes} crashes, {failures} failed properties \
         ({:.1} s, CONSENTD_FUZZ_SEED={seed})",
        started.elapsed().as_secs_f64()
    );
    assert!(
        crashes == 0 && failures == 0,
        "target {target}: {crashes} crashes and {failures} failed properties in {inputs} inputs \
         (replay with CONSENTD_FUZZ_SEED={seed}); the first:\n{}",
        examples.join("\n")
    );
}
