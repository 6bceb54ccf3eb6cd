//! The NAT traversal matrix in **virtual time** (`tether_harness::nat_matrix`): per
//! cell, the share of seeds that reached a direct path and the time it took, from both
//! devices being connected to the relay (establishment) or from the network change
//! (moves, detected at once in the simulator), in milliseconds and in RTTs; for
//! establishment also the upgrade alone, from both sessions Ready over the relay.
//!
//! Run: `cargo bench -p tether-harness --bench nat`
//! Environment:
//! - `TETHER_BENCH_SEEDS`: seeds per cell (default 20);
//! - `TETHER_BENCH_RTT_MS`: the RTT of every link (default 40);
//! - `TETHER_BENCH_ONLY`: run only the cells whose description contains this text
//!   (e.g. `symmetric`, `both move`);
//! - `TETHER_BENCH_FIRST_SEED`: the first seed (80 000), so one slow seed can be rerun alone;
//! - `TETHER_BENCH_TRACE=1`: print the first seed's phase timeline of every cell;
//! - `RUST_LOG`: the nodes' logs at that level, on stderr, stamped with virtual time since
//!   the first log line (not since the cluster started: compare with the trace by an event).
//!
//! Every run is also checked against the promises ([`CellRun::problems`]); the table
//! counts the runs that broke one.

// A benchmark binary, not node code: a broken expectation aborts the run loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use tether_harness::nat_matrix::{run, Cell, CellRun};
use tether_harness::run_simulation;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Stamps log lines with the simulation's virtual time (tokio's paused clock) since the
/// first line.
struct VirtualTime;

impl tracing_subscriber::fmt::time::FormatTime for VirtualTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        static START: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
        let now = tokio::time::Instant::now();
        let since = now.saturating_duration_since(*START.get_or_init(|| now));
        write!(w, "{:>8.1}ms", since.as_secs_f64() * 1000.0)
    }
}

fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_timer(VirtualTime)
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .init();
    }
    let seeds = env_u64("TETHER_BENCH_SEEDS", 20);
    let first_seed = env_u64("TETHER_BENCH_FIRST_SEED", 80_000);
    let rtt = Duration::from_millis(env_u64("TETHER_BENCH_RTT_MS", 40));
    let only = std::env::var("TETHER_BENCH_ONLY").ok();
    let trace = std::env::var("TETHER_BENCH_TRACE").is_ok_and(|v| v == "1");
    let in_rtt = |d: Duration| d.as_secs_f64() / rtt.as_secs_f64();
    println!(
        "NAT matrix, RTT {} ms on every link, {seeds} seeds per cell\n",
        rtt.as_millis()
    );
    println!(
        "| A / B | scenario | expected | direct | p50 | p99 | max | upgrade p50 / p99 | broken promises |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for cell in Cell::all() {
        if only
            .as_ref()
            .is_some_and(|o| !cell.to_string().contains(o.as_str()))
        {
            continue;
        }
        let runs: Vec<CellRun> = (0..seeds)
            .map(|s| run_simulation(|| run(cell, first_seed + s, rtt)))
            .collect();
        if trace {
            eprintln!("== {cell}, seed {first_seed}\n{}", runs[0].timeline);
        }
        let mut times: Vec<Duration> = runs.iter().filter_map(|r| r.direct_after).collect();
        times.sort();
        let mut upgrades: Vec<Duration> = runs.iter().filter_map(|r| r.upgrade_after).collect();
        upgrades.sort();
        let broken = runs.iter().filter(|r| !r.problems().is_empty()).count();
        let show = |d: Option<Duration>| {
            d.map_or("-".to_owned(), |d| {
                format!("{} ms ({:.1} RTT)", d.as_millis(), in_rtt(d))
            })
        };
        let upgrade = match (percentile(&upgrades, 50.0), percentile(&upgrades, 99.0)) {
            (Some(p50), Some(p99)) => format!(
                "{} / {} ms ({:.1} / {:.1} RTT)",
                p50.as_millis(),
                p99.as_millis(),
                in_rtt(p50),
                in_rtt(p99)
            ),
            _ => "-".to_owned(),
        };
        println!(
            "| {} | {} | {} | {}/{} | {} | {} | {} | {} | {} |",
            cell.sides(),
            cell.scenario,
            if cell.expects_direct() {
                "direct"
            } else {
                "relay"
            },
            times.len(),
            runs.len(),
            show(percentile(&times, 50.0)),
            show(percentile(&times, 99.0)),
            show(times.last().copied()),
            upgrade,
            broken,
        );
    }
}
