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
//! Per seed and scenario: establish a pair, let it settle (as the scenario tests do),
//! record `t0`, trigger the change, send the messages each way right away, then
//! step virtual time by [`POLL`] until both devices see each other Ready and every one of
//! those messages has been delivered (`t1`). The time `t1 - t0` is reported in RTTs of
//! the direct path (relay RTTs, twice the direct RTT here, for the relay scenario), with
//! p50 / p99 / max over the seeds. The simulated
//! network change is detected at once (the rebind reports `ConnectivityChanged` in the
//! same instant), so "after the change" and "after detection" are the same instant.
//!
//! Resolution: events are stamped with the virtual time at which the bench collects
//! them, and the bench collects every [`POLL`] = 1 ms (the cluster's own `run_until`
//! polls every 5 ms). tokio's timer wheel has a 1 ms granularity, so a finer step would
//! not add precision: every figure is a whole number of milliseconds and overestimates
//! the true instant by less than 1 ms.

// A benchmark binary, not node code: a broken expectation aborts the run loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::time::Duration;
use tether_harness::{run_simulation, ClusterBuilder, NodeEvent, SimCluster};
use tether_protocol::{PathKind, SessionStatus};
use tether_transport::sim::LinkConditions;

const A: usize = 0;
const B: usize = 1;

/// Step of virtual time between two looks at the cluster.
const POLL: Duration = Duration::from_millis(1);

/// A seed that has not recovered by then counts as a failure.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of one seed's run.
#[derive(Debug, Clone, Copy)]
struct Settings {
    /// Messages sent each way right after the change.
    messages: usize,
    /// Print the timeline and packet log of this seed's run.
    trace: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// A changes networks; the direct path keeps working.
    SingleMove,
    /// Direct UDP between A and B is blocked, then A changes networks.
    Relay,
    /// A and B change networks in the same instant.
    BothMove,
    /// Baseline: a fresh pair from start to Ready (a full QUIC + Noise handshake).
    FreshPair,
}

impl Scenario {
    const ALL: [Scenario; 4] = [
        Scenario::SingleMove,
        Scenario::Relay,
        Scenario::BothMove,
        Scenario::FreshPair,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::SingleMove => "single-side move, direct",
            Scenario::Relay => "single-side move, relay (direct blocked)",
            Scenario::BothMove => "both sides move at once",
            Scenario::FreshPair => "baseline: fresh pair, full handshake",
        }
    }

    /// The devices whose status must have changed after `t0` before "Ready" counts.
    fn movers(self) -> &'static [usize] {
        match self {
            Scenario::SingleMove | Scenario::Relay => &[A],
            Scenario::BothMove | Scenario::FreshPair => &[A, B],
        }
    }

    /// The unit the result is reported in: how many direct RTTs one unit RTT is.
    /// Through the relay, both device-relay legs have the direct path's latency, so
    /// the relay RTT is twice the direct RTT.
    fn rtt_factor(self) -> u32 {
        match self {
            Scenario::Relay => 2,
            _ => 1,
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Scenario::Relay => "relay RTT",
            _ => "direct RTT",
        }
    }

    /// The target from the requirements, in this row's unit.
    fn target(self) -> Option<f64> {
        match self {
            Scenario::SingleMove => Some(2.0),
            Scenario::Relay => Some(2.0),
            Scenario::BothMove => Some(4.0),
            Scenario::FreshPair => None,
        }
    }
}

/// What one seed measured, in virtual time since `t0`.
#[derive(Debug, Clone, Default)]
struct Sample {
    /// The seed.
    seed: u64,
    /// Both Ready and every message delivered.
    total: Option<Duration>,
    /// First `Status -> Ready` of A's session with B, and of B's with A, after `t0`.
    ready: [Option<Duration>; 2],
    /// Both sides had a session bound to a direct path again (both-move only).
    direct: Option<Duration>,
    /// Baseline only: the first packet between the two devices (the first dial), and
    /// from it to both Ready with every message delivered.
    first_dial: Option<Duration>,
    /// Baseline only: `total - first_dial`.
    from_dial: Option<Duration>,
    /// A handshake ran after `t0` (a `Ready` event marked `after_handshake`).
    handshake: bool,
    /// The messages did not arrive exactly once, in order.
    misdelivered: bool,
}

fn conditions(rtt_ms: u64) -> LinkConditions {
    LinkConditions {
        latency: Duration::from_millis(rtt_ms / 2),
        ..LinkConditions::default()
    }
}

fn tag(side: &str, i: usize) -> Vec<u8> {
    format!("bench {side}{i}").into_bytes()
}

/// Tagged messages `at` has received from `from`.
fn received(cluster: &SimCluster, at: usize, from: usize) -> Vec<Vec<u8>> {
    cluster.devices[at]
        .delivered_from(cluster.id(from))
        .into_iter()
        .filter(|m| m.starts_with(b"bench "))
        .collect()
}

/// Both see each other Ready, every mover has reported a status change since `t0` (so
/// a Ready from before the change does not count), and every message arrived.
fn recovered(cluster: &SimCluster, scenario: Scenario, t0: Duration, messages: usize) -> bool {
    let moved = scenario.movers().iter().all(|&i| {
        cluster.devices[i]
            .log
            .iter()
            .any(|(at, e)| *at >= t0 && matches!(e, NodeEvent::Status { .. }))
    });
    moved
        && cluster.both_ready(A, B)
        && received(cluster, B, A).len() >= messages
        && received(cluster, A, B).len() >= messages
}

/// Time from `t0` to the first `Status -> Ready` of device `i` after `t0`.
fn first_ready(cluster: &SimCluster, i: usize, t0: Duration) -> Option<Duration> {
    cluster.devices[i].log.iter().find_map(|(at, e)| match e {
        NodeEvent::Status {
            to: SessionStatus::Ready,
            ..
        } if *at >= t0 => Some(*at - t0),
        _ => None,
    })
}

/// Whether device `i` bound its session to a direct path after `t0`.
fn direct_since(cluster: &SimCluster, i: usize, t0: Duration) -> bool {
    cluster.devices[i]
        .log
        .iter()
        .any(|(at, e)| *at >= t0 && matches!(e, NodeEvent::Ready(r) if r.path == PathKind::Direct))
}

async fn send_both_ways(cluster: &SimCluster, messages: usize) -> bool {
    let (a, b) = (cluster.id(A), cluster.id(B));
    for i in 0..messages {
        if cluster.node(A).send(b, tag("a", i)).await.is_err()
            || cluster.node(B).send(a, tag("b", i)).await.is_err()
        {
            return false;
        }
    }
    true
}

async fn step(cluster: &mut SimCluster) {
    tokio::time::sleep(POLL).await;
    cluster.collect_events();
}

/// One seed of one scenario on one path.
async fn measure(scenario: Scenario, rtt_ms: u64, seed: u64, settings: Settings) -> Sample {
    let Settings { messages, trace } = settings;
    let mut cluster = ClusterBuilder::new(seed, 2)
        .pair(A, B)
        .conditions(conditions(rtt_ms))
        .start()
        .await;
    if scenario != Scenario::FreshPair {
        let ready = cluster.run_until(TIMEOUT, |c| c.both_ready(A, B)).await;
        assert!(ready, "seed {seed}: the pair never got Ready");
        // Let crossing handshakes settle on one generation, as the scenario tests do.
        cluster.run_for(Duration::from_secs(3)).await;
    }
    if trace || scenario == Scenario::FreshPair {
        cluster.net.enable_packet_log();
    }

    let t0 = cluster.elapsed();
    match scenario {
        Scenario::SingleMove => {
            cluster.change_address(A).await.expect("change A");
        }
        Scenario::Relay => {
            cluster.block_direct(A, B);
            cluster.change_address(A).await.expect("change A");
        }
        Scenario::BothMove => {
            cluster.change_address(A).await.expect("change A");
            cluster.change_address(B).await.expect("change B");
        }
        Scenario::FreshPair => {}
    }
    let mut sample = Sample::default();
    if !send_both_ways(&cluster, messages).await {
        return sample;
    }

    let deadline = t0 + TIMEOUT;
    loop {
        cluster.collect_events();
        if recovered(&cluster, scenario, t0, messages) {
            sample.total = Some(cluster.elapsed() - t0);
            break;
        }
        if cluster.elapsed() >= deadline {
            break;
        }
        step(&mut cluster).await;
    }
    if scenario == Scenario::BothMove && sample.total.is_some() {
        // The relay may carry the session first; wait for the direct path.
        while !(direct_since(&cluster, A, t0) && direct_since(&cluster, B, t0))
            && cluster.elapsed() < deadline
        {
            step(&mut cluster).await;
        }
        if direct_since(&cluster, A, t0) && direct_since(&cluster, B, t0) {
            sample.direct = Some(cluster.elapsed() - t0);
        }
    }
    sample.ready = [first_ready(&cluster, A, t0), first_ready(&cluster, B, t0)];
    sample.handshake = scenario != Scenario::FreshPair
        && cluster.devices.iter().any(|d| {
            d.log
                .iter()
                .any(|(at, e)| *at >= t0 && matches!(e, NodeEvent::Ready(r) if r.after_handshake))
        });
    if scenario == Scenario::FreshPair {
        // The packet log counts from the network's creation, the same virtual instant
        // as the cluster's start.
        let (ip_a, ip_b) = (cluster.devices[A].ip, cluster.devices[B].ip);
        sample.first_dial = cluster
            .net
            .packet_log()
            .iter()
            .find(|p| {
                let (from, to) = (p.from.ip(), p.to.ip());
                (from, to) == (ip_a, ip_b) || (from, to) == (ip_b, ip_a)
            })
            .map(|p| p.at.saturating_sub(t0));
        sample.from_dial = sample
            .total
            .zip(sample.first_dial)
            .map(|(total, dial)| total.saturating_sub(dial));
    }
    let expect = |side: &str| (0..messages).map(|i| tag(side, i)).collect::<Vec<_>>();
    sample.misdelivered = sample.total.is_some()
        && (received(&cluster, B, A) != expect("a") || received(&cluster, A, B) != expect("b"));

    if trace {
        eprintln!(
            "---- {} | {} ms RTT | seed {seed} | t0 = {} ms since start ----\n{}\n---- packets ----\n{}",
            scenario.name(),
            rtt_ms,
            t0.as_millis(),
            cluster.timeline(&[A, B], t0),
            cluster.net.packet_log_text()
        );
    }
    sample
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// p50 / p99 / max of some durations, as RTTs of `unit` and in ms.
struct Stats {
    p50: Duration,
    p99: Duration,
    max: Duration,
    n: usize,
}

impl Stats {
    fn of(values: impl IntoIterator<Item = Duration>) -> Option<Stats> {
        let mut v: Vec<Duration> = values.into_iter().collect();
        v.sort();
        Some(Stats {
            p50: percentile(&v, 50.0)?,
            p99: percentile(&v, 99.0)?,
            max: *v.last()?,
            n: v.len(),
        })
    }
}

fn rtts(d: Duration, unit: Duration) -> f64 {
    d.as_secs_f64() / unit.as_secs_f64()
}

fn cell(d: Duration, unit: Duration) -> String {
    format!("{:.2} ({} ms)", rtts(d, unit), d.as_millis())
}

fn cells(stats: &Option<Stats>, unit: Duration) -> String {
    match stats {
        Some(s) => format!(
            "{} | {} | {}",
            cell(s.p50, unit),
            cell(s.p99, unit),
            cell(s.max, unit)
        ),
        None => "– | – | –".to_string(),
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Row {
    scenario: Scenario,
    rtt_ms: u64,
    samples: Vec<Sample>,
}

fn row_unit(row: &Row) -> Duration {
    Duration::from_millis(row.rtt_ms * u64::from(row.scenario.rtt_factor()))
}

/// Each distinct value of a row with how many seeds measured it, and the slowest seeds.
fn distribution(row: &Row, value: impl Fn(&Sample) -> Option<Duration>) -> String {
    let mut counts: std::collections::BTreeMap<u128, usize> = std::collections::BTreeMap::new();
    for sample in &row.samples {
        if let Some(v) = value(sample) {
            *counts.entry(v.as_millis()).or_default() += 1;
        }
    }
    let values: Vec<String> = counts
        .iter()
        .map(|(ms, n)| format!("{ms} ms ×{n}"))
        .collect();
    let mut slow: Vec<(Duration, u64)> = row
        .samples
        .iter()
        .filter_map(|s| value(s).map(|v| (v, s.seed)))
        .collect();
    slow.sort_by(|a, b| b.cmp(a));
    let seeds: Vec<String> = slow.iter().take(5).map(|(_, s)| s.to_string()).collect();
    format!("{}; slowest seeds {}", values.join(", "), seeds.join(", "))
}

fn main() {
    let seeds = env_usize("TETHER_BENCH_SEEDS", 100).max(1) as u64;
    let first_seed = env_usize("TETHER_BENCH_FIRST_SEED", 1000) as u64;
    let messages = env_usize("TETHER_BENCH_MESSAGES", 5);
    let trace = std::env::var("TETHER_BENCH_TRACE").is_ok_and(|v| v == "1");
    let verbose = std::env::var("TETHER_BENCH_VERBOSE").is_ok_and(|v| v == "1");
    let only = std::env::var("TETHER_BENCH_ONLY").unwrap_or_default();
    let started = std::time::Instant::now();
    let mut rows = Vec::new();
    for rtt_ms in [40_u64, 200] {
        for scenario in Scenario::ALL {
            if !scenario.name().contains(only.as_str()) {
                continue;
            }
            let samples: Vec<Sample> = (first_seed..first_seed + seeds)
                .map(|seed| {
                    let settings = Settings {
                        messages,
                        trace: trace && seed == first_seed,
                    };
                    let mut sample = run_simulation(|| measure(scenario, rtt_ms, seed, settings));
                    sample.seed = seed;
                    sample
                })
                .collect();
            let row = Row {
                scenario,
                rtt_ms,
                samples,
            };
            eprintln!(
                "{} @ {rtt_ms} ms: {seeds} seeds done ({:.1} s real time so far)",
                scenario.name(),
                started.elapsed().as_secs_f64()
            );
            if verbose {
                eprintln!("  done: {}", distribution(&row, |s| s.total));
                eprintln!("  A Ready: {}", distribution(&row, |s| s.ready[A]));
                eprintln!("  B Ready: {}", distribution(&row, |s| s.ready[B]));
                if scenario == Scenario::BothMove {
                    eprintln!("  direct: {}", distribution(&row, |s| s.direct));
                }
                if scenario == Scenario::FreshPair {
                    eprintln!("  first dial: {}", distribution(&row, |s| s.first_dial));
                    eprintln!("  dial to done: {}", distribution(&row, |s| s.from_dial));
                }
            }
            rows.push(row);
        }
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nMigration latency, virtual time, {seeds} seeds per row (seeds {first_seed}..{}), \
         {messages} messages each way, 1 ms resolution.\n",
        first_seed + seeds - 1
    );
    let _ = writeln!(
        out,
        "Change → both Ready and every message delivered, in RTTs of the row's unit (ms):\n"
    );
    let _ = writeln!(
        out,
        "| scenario | path RTT | unit | ok | p50 | p99 | max | target | met (p99 ≤ target) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for row in &rows {
        let unit = row_unit(row);
        let stats = Stats::of(row.samples.iter().filter_map(|s| s.total));
        let ok = stats.as_ref().map_or(0, |s| s.n);
        let (target, met) = match row.scenario.target() {
            Some(t) => {
                let met = ok == row.samples.len()
                    && stats.as_ref().is_some_and(|s| rtts(s.p99, unit) <= t);
                (
                    format!("≤ {t} {}", row.scenario.unit()),
                    if met { "met" } else { "**NOT met**" }.to_string(),
                )
            }
            None => ("(baseline)".to_string(), "–".to_string()),
        };
        let _ = writeln!(
            out,
            "| {} | {} ms | {} = {} ms | {ok}/{} | {} | {target} | {met} |",
            row.scenario.name(),
            row.rtt_ms,
            row.scenario.unit(),
            unit.as_millis(),
            row.samples.len(),
            cells(&stats, unit),
        );
    }

    let _ = writeln!(
        out,
        "\nChange → each side's first Status → Ready, same units:\n"
    );
    let _ = writeln!(
        out,
        "| scenario | path RTT | A Ready p50 | A p99 | A max | B Ready p50 | B p99 | B max |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for row in &rows {
        let unit = row_unit(row);
        let side = |i: usize| Stats::of(row.samples.iter().filter_map(|s| s.ready[i]));
        let _ = writeln!(
            out,
            "| {} | {} ms | {} | {} |",
            row.scenario.name(),
            row.rtt_ms,
            cells(&side(A), unit),
            cells(&side(B), unit),
        );
    }

    let _ = writeln!(
        out,
        "\nBoth sides move: change → both sessions bound to a direct path again, in direct RTTs:\n"
    );
    let _ = writeln!(out, "| path RTT | ok | p50 | p99 | max |");
    let _ = writeln!(out, "|---|---|---|---|---|");
    for row in rows.iter().filter(|r| r.scenario == Scenario::BothMove) {
        let unit = row_unit(row);
        let stats = Stats::of(row.samples.iter().filter_map(|s| s.direct));
        let ok = stats.as_ref().map_or(0, |s| s.n);
        let _ = writeln!(
            out,
            "| {} ms | {ok}/{} | {} |",
            row.rtt_ms,
            row.samples.len(),
            cells(&stats, unit)
        );
    }

    let _ = writeln!(
        out,
        "\nBaseline split: start → first packet between the devices (Presence's random \
         connect spread), then first packet → both Ready and every message delivered, in direct RTTs:\n"
    );
    let _ = writeln!(
        out,
        "| path RTT | start → dial p50 | p99 | max | dial → done p50 | p99 | max |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for row in rows.iter().filter(|r| r.scenario == Scenario::FreshPair) {
        let unit = row_unit(row);
        let dial = Stats::of(row.samples.iter().filter_map(|s| s.first_dial));
        let done = Stats::of(row.samples.iter().filter_map(|s| s.from_dial));
        let _ = writeln!(
            out,
            "| {} ms | {} | {} |",
            row.rtt_ms,
            cells(&dial, unit),
            cells(&done, unit)
        );
    }

    let count = |f: &dyn Fn(&Sample) -> bool| -> usize {
        rows.iter()
            .map(|r| r.samples.iter().filter(|s| f(s)).count())
            .sum()
    };
    let failed = count(&|s| s.total.is_none());
    let handshakes = count(&|s| s.handshake);
    let misdelivered = count(&|s| s.misdelivered);
    let _ = writeln!(
        out,
        "\nChecks: {failed} seeds not recovered within {TIMEOUT:?}; {handshakes} migrations \
         ran a handshake; {misdelivered} seeds delivered the messages other than exactly once \
         in order. Real time: {:.1} s.",
        started.elapsed().as_secs_f64()
    );
    print!("{out}");
}
