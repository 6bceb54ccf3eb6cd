//! Migration latency in RTTs, measured in **virtual time** on the simulated network:
//! whole nodes (the real actors, quinn and Noise) under tokio's paused clock, one fresh
//! cluster per seed, so the figures do not depend on the machine or its load.
//!
//! Run: `cargo bench -p tether-harness --bench migration`
//! Environment:
//! - `TETHER_BENCH_SEEDS`: seeds per scenario and RTT (default 100);
//! - `TETHER_BENCH_FIRST_SEED`: first seed (default 1000; seeds are consecutive);
//! - `TETHER_BENCH_MESSAGES`: messages sent each way after the change (default 5; 0
//!   measures the time to both Ready alone);
//! - `TETHER_BENCH_ONLY`: run only the scenarios whose name contains this text
//!   (e.g. `single`, `relay`, `both`, `baseline`);
//! - `TETHER_BENCH_VERBOSE=1`: print every row's distribution and slowest seeds to stderr;
//! - `TETHER_BENCH_TRACE=1`: for the first seed of every row, print the phase timeline
//!   and the packet log from the change on to stderr.
//!
//! The measurement is `tether_harness::app::bench::migration`, which `tether bench
//! migration` runs too (with rows of loss, jitter and detection delay on top of the
//! classic rows this bench runs); see its docs for what each figure means.

use std::time::Instant;
use tether_harness::app::bench::migration::{self, Plan, Settings};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let defaults = Settings::default();
    let settings = Settings {
        seeds: env_u64("TETHER_BENCH_SEEDS", defaults.seeds).max(1),
        first_seed: env_u64("TETHER_BENCH_FIRST_SEED", defaults.first_seed),
        messages: usize::try_from(env_u64("TETHER_BENCH_MESSAGES", defaults.messages as u64))
            .unwrap_or(defaults.messages),
        trace: std::env::var("TETHER_BENCH_TRACE").is_ok_and(|v| v == "1"),
        verbose: std::env::var("TETHER_BENCH_VERBOSE").is_ok_and(|v| v == "1"),
    };
    let only = std::env::var("TETHER_BENCH_ONLY").unwrap_or_default();
    let started = Instant::now();
    let rows = migration::run(&Plan::classic(&only), &settings);
    print!("{}", migration::render(&rows, &settings, started.elapsed()));
}
