//! The proptest runner of the fuzz tests: `RECTHINKER_FUZZ_SCALE=N` runs N times as many
//! cases, `RECTHINKER_FUZZ_SEED=N` another fixed seed (14 by default); no failure files.

use proptest::test_runner::{Config, RngSeed, TestRunner};

pub fn scale() -> u32 {
    std::env::var("RECTHINKER_FUZZ_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

/// A runner of `cases` x `scale()` cases.
pub fn runner(cases: u32) -> TestRunner {
    let seed = std::env::var("RECTHINKER_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(14);
    TestRunner::new(Config {
        cases: cases * scale(),
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        max_shrink_iters: 4000,
        ..Config::default()
    })
}
