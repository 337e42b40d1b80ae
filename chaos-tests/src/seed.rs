//! The seed of a test run: from `CHAOS_SEED` to replay a failure, otherwise random.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Reads `CHAOS_SEED` or draws a seed, prints `seed=<n>` and returns it.
pub fn chaos_seed() -> u64 {
    let seed = match std::env::var("CHAOS_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("CHAOS_SEED={s:?} is not a u64")),
        Err(_) => rand::thread_rng().gen(),
    };
    println!("seed={seed}");
    seed
}

/// A deterministic generator for `seed`.
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}
