//! `tether bench migration`, and `cargo bench -p tether-harness --bench migration`:
//! migration latency in RTTs, measured in **virtual time** on the simulated network:
//! whole nodes (the real actors, quinn and Noise) under tokio's paused clock, one fresh
//! cluster per seed, so the figures do not depend on the machine or its load. Both
//! run this module; the cargo bench runs the [classic rows](Plan::classic), the
//! subcommand adds rows with loss, jitter and the real detection delay
//! ([`Plan::full`]).
//!
//! Per seed and row: establish a pair, let it settle (as the scenario tests do),
//! record `t0`, trigger the change, send the messages each way right away, then step
//! virtual time by [`POLL`] until both devices see each other Ready and every one of
//! those messages has been delivered (`t1`). The time `t1 - t0` is reported in RTTs of
//! the direct path (relay RTTs, twice the direct RTT here, for the relay scenario),
//! with p50 / p99 / max over the seeds.
//!
//! # Detection
//! In the classic rows the simulated network change is detected at once (the rebind
//! reports `ConnectivityChanged` in the same instant), so "after the change" and
//! "after detection" are the same instant. A row with a detection delay (the one
//! `tether node` has: its interface watcher's debounce, [`DETECTION`]) takes the
//! moving device's address away at `t0` (its socket dies, as a socket bound to a
//! deleted address does), sends the messages, lets `detection` of virtual time pass,
//! and only then gives the device its new address and rebinds its node. Its time is
//! still counted from `t0`, so it includes the delay; its target is checked against
//! the time after detection.
//!
//! # Link conditions
//! Loss and jitter apply to every path of the row (device to device and device to
//! relay, both directions): each packet is lost with probability `loss` and delayed by
//! an extra uniform `[0, jitter]`. The RTT unit stays the base RTT.
//!
//! # Resolution
//! Events are stamped with the virtual time at which the bench collects them, and the
//! bench collects every [`POLL`] = 1 ms (the cluster's own `run_until` polls every
//! 5 ms). tokio's timer wheel has a 1 ms granularity, so a finer step would not add
//! precision: every figure is a whole number of milliseconds and overestimates the
//! true instant by less than 1 ms.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::Serialize;
use tether::cluster::{run_simulation, ClusterBuilder, SimCluster};
use tether::NodeEvent;
use tether_protocol::{PathKind, SessionStatus};
use tether_transport::connectivity::DEFAULT_DEBOUNCE;
use tether_transport::sim::LinkConditions;

const A: usize = 0;
const B: usize = 1;

/// Step of virtual time between two looks at the cluster.
pub const POLL: Duration = Duration::from_millis(1);

/// A seed that has not recovered by then (after the change) counts as a failure.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// How long a network change goes unnoticed by `tether node` (and a library node that
/// watches interfaces): its interface watcher's debounce.
pub const DETECTION: Duration = DEFAULT_DEBOUNCE;

/// Path RTTs of the rows, ms.
pub const DEFAULT_RTTS_MS: [u64; 2] = [40, 200];

/// Loss rates of the lossy rows.
pub const LOSS_RATES: [f64; 2] = [0.01, 0.05];

/// Jitter of the jittery rows, as a fraction of the RTT (one way, uniform
/// `[0, jitter]` per packet): 10 ms at 40 ms, 50 ms at 200 ms.
pub const JITTER_OF_RTT: f64 = 0.25;

/// What happens to the pair at `t0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
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
    /// Every scenario, in the order of the tables.
    pub const ALL: [Scenario; 4] = [
        Scenario::SingleMove,
        Scenario::Relay,
        Scenario::BothMove,
        Scenario::FreshPair,
    ];

    /// The scenario's name in the tables.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::SingleMove => "single-side move, direct",
            Scenario::Relay => "single-side move, relay (direct blocked)",
            Scenario::BothMove => "both sides move at once",
            Scenario::FreshPair => "baseline: fresh pair, full handshake",
        }
    }

    /// A short name for scripts.
    pub fn key(self) -> &'static str {
        match self {
            Scenario::SingleMove => "single-move-direct",
            Scenario::Relay => "single-move-relay",
            Scenario::BothMove => "both-move",
            Scenario::FreshPair => "fresh-pair",
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

    /// The unit's name.
    pub fn unit(self) -> &'static str {
        match self {
            Scenario::Relay => "relay RTT",
            _ => "direct RTT",
        }
    }

    /// The target from the requirements, in this row's unit, after detection.
    pub fn target(self) -> Option<f64> {
        match self {
            Scenario::SingleMove => Some(2.0),
            Scenario::Relay => Some(2.0),
            Scenario::BothMove => Some(4.0),
            Scenario::FreshPair => None,
        }
    }
}

/// The network around the pair in one row.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Network {
    /// Probability that a packet is lost, on every path.
    pub loss: f64,
    /// Extra one-way delay per packet, uniform in `[0, jitter]`.
    pub jitter: Duration,
    /// How long the moving devices take to notice their change.
    pub detection: Duration,
}

impl Network {
    /// No loss, no jitter, detected at once (the classic rows).
    pub fn ideal(&self) -> bool {
        *self == Network::default()
    }

    /// What the row name adds for this network ("" for the ideal one).
    fn suffix(&self) -> String {
        let mut parts = Vec::new();
        if self.loss > 0.0 {
            parts.push(format!("{} % loss", self.loss * 100.0));
        }
        if !self.jitter.is_zero() {
            parts.push(format!("{} ms jitter", self.jitter.as_millis()));
        }
        if !self.detection.is_zero() {
            parts.push(format!("{} ms detection", self.detection.as_millis()));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!(", {}", parts.join(", "))
        }
    }
}

/// One row to measure: a scenario at one RTT on one network.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowSpec {
    /// What happens at `t0`.
    pub scenario: Scenario,
    /// Base RTT of every path, ms.
    pub rtt_ms: u64,
    /// Loss, jitter and detection delay.
    pub network: Network,
}

impl RowSpec {
    /// The row's name in the tables: the scenario's, plus its network when not ideal.
    pub fn name(&self) -> String {
        format!("{}{}", self.scenario.name(), self.network.suffix())
    }

    fn conditions(&self) -> LinkConditions {
        LinkConditions {
            latency: Duration::from_millis(self.rtt_ms / 2),
            jitter: self.network.jitter,
            loss: self.network.loss,
            ..LinkConditions::default()
        }
    }
}

/// The rows to run.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// In the order of the tables.
    pub rows: Vec<RowSpec>,
}

impl Plan {
    /// The rows of the cargo bench: every scenario at 40 and 200 ms, no loss, no
    /// jitter, detected at once; only those whose name contains `only`.
    pub fn classic(only: &str) -> Plan {
        let rows = DEFAULT_RTTS_MS
            .iter()
            .flat_map(|&rtt_ms| {
                Scenario::ALL.into_iter().map(move |scenario| RowSpec {
                    scenario,
                    rtt_ms,
                    network: Network::default(),
                })
            })
            .filter(|row| row.scenario.name().contains(only))
            .collect();
        Plan { rows }
    }

    /// The classic rows at each of `rtts_ms`, then for every migration scenario: 1 %
    /// and 5 % loss ([`LOSS_RATES`]), jitter ([`JITTER_OF_RTT`]), and the real
    /// detection delay ([`DETECTION`]) alone and with 1 % loss; only rows whose name
    /// contains `only`.
    pub fn full(rtts_ms: &[u64], only: &str) -> Plan {
        let mut rows = Vec::new();
        for &rtt_ms in rtts_ms {
            let jitter = Duration::from_millis((rtt_ms as f64 * JITTER_OF_RTT).round() as u64);
            let mut networks = vec![Network::default()];
            networks.extend(LOSS_RATES.iter().map(|&loss| Network {
                loss,
                ..Network::default()
            }));
            networks.push(Network {
                jitter,
                ..Network::default()
            });
            networks.push(Network {
                detection: DETECTION,
                ..Network::default()
            });
            networks.push(Network {
                detection: DETECTION,
                loss: LOSS_RATES[0],
                ..Network::default()
            });
            for network in networks {
                for scenario in Scenario::ALL {
                    if scenario == Scenario::FreshPair && !network.ideal() {
                        continue;
                    }
                    rows.push(RowSpec {
                        scenario,
                        rtt_ms,
                        network,
                    });
                }
            }
        }
        rows.retain(|row| row.name().contains(only));
        Plan { rows }
    }
}

/// How each seed runs.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Seeds per row.
    pub seeds: u64,
    /// The first seed; seeds are consecutive.
    pub first_seed: u64,
    /// Messages sent each way right after the change (0: time to both Ready alone).
    pub messages: usize,
    /// Print the timeline and packet log of each row's first seed to stderr.
    pub trace: bool,
    /// Print every row's distribution and slowest seeds to stderr.
    pub verbose: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            seeds: 100,
            first_seed: 1000,
            messages: 5,
            trace: false,
            verbose: false,
        }
    }
}

/// What one seed measured, in virtual time since `t0`.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// The seed.
    pub seed: u64,
    /// Both Ready and every message delivered.
    pub total: Option<Duration>,
    /// First `Status -> Ready` of A's session with B, and of B's with A, after `t0`.
    pub ready: [Option<Duration>; 2],
    /// Both sides had a session bound to a direct path again (both-move only).
    pub direct: Option<Duration>,
    /// Baseline only: the first packet between the two devices (the first dial).
    pub first_dial: Option<Duration>,
    /// Baseline only: `total - first_dial`.
    pub from_dial: Option<Duration>,
    /// A handshake ran after `t0` (a `Ready` event marked `after_handshake`).
    pub handshake: bool,
    /// The messages did not arrive exactly once, in order.
    pub misdelivered: bool,
    /// Why the seed could not run (the pair never got Ready, a move failed).
    pub failure: Option<String>,
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

/// The row's network change at `t0`, and the messages right after it. With a
/// detection delay, the movers lose their addresses at once, the messages are sent,
/// and the nodes learn of the change (new address, rebind) only after the delay.
async fn change(cluster: &mut SimCluster, spec: &RowSpec, messages: usize) -> Result<(), String> {
    let movers: &[usize] = match spec.scenario {
        Scenario::FreshPair => &[],
        Scenario::SingleMove | Scenario::Relay => &[A],
        Scenario::BothMove => &[A, B],
    };
    if spec.scenario == Scenario::Relay {
        cluster.block_direct(A, B);
    }
    let detection = spec.network.detection;
    if detection.is_zero() {
        for &i in movers {
            cluster.change_address(i).await?;
        }
    } else {
        for &i in movers {
            let device = &cluster.devices[i];
            cluster
                .net
                .remove_address(device.host, device.ip)
                .map_err(|e| e.to_string())?;
        }
        if !send_both_ways(cluster, messages).await {
            return Err("a send was refused".into());
        }
        let noticed = cluster.elapsed() + detection;
        while cluster.elapsed() < noticed {
            step(cluster).await;
        }
        for &i in movers {
            // The old address comes back only for the instant `change_address` takes
            // it away again: nothing runs in between, and its dead socket stays dead.
            let device = &cluster.devices[i];
            cluster
                .net
                .add_address(device.host, device.ip)
                .map_err(|e| e.to_string())?;
            cluster.change_address(i).await?;
        }
        return Ok(());
    }
    if !send_both_ways(cluster, messages).await {
        return Err("a send was refused".into());
    }
    Ok(())
}

/// One seed of one row.
pub async fn measure(spec: RowSpec, seed: u64, messages: usize, trace: bool) -> Sample {
    let scenario = spec.scenario;
    let mut sample = Sample {
        seed,
        ..Sample::default()
    };
    let mut cluster = ClusterBuilder::new(seed, 2)
        .pair(A, B)
        .conditions(spec.conditions())
        .start()
        .await;
    if scenario != Scenario::FreshPair {
        if !cluster.run_until(TIMEOUT, |c| c.both_ready(A, B)).await {
            sample.failure = Some("the pair never got Ready".into());
            return sample;
        }
        // Let crossing handshakes settle on one generation, as the scenario tests do.
        cluster.run_for(Duration::from_secs(3)).await;
    }
    if trace || scenario == Scenario::FreshPair {
        cluster.net.enable_packet_log();
    }

    let t0 = cluster.elapsed();
    if let Err(e) = change(&mut cluster, &spec, messages).await {
        sample.failure = Some(e);
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
            spec.name(),
            spec.rtt_ms,
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

/// p50 / p99 / max of some durations.
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
    d.as_secs_f64() / unit.as_secs_f64().max(1e-9)
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

/// The seeds of one row.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was measured.
    pub spec: RowSpec,
    /// One per seed.
    pub samples: Vec<Sample>,
}

impl Row {
    /// The row's RTT unit (the relay RTT for the relay scenario).
    fn unit(&self) -> Duration {
        Duration::from_millis(self.spec.rtt_ms * u64::from(self.spec.scenario.rtt_factor()))
    }

    fn totals(&self) -> Option<Stats> {
        Stats::of(self.samples.iter().filter_map(|s| s.total))
    }

    /// Every seed recovered and the p99, less the detection delay, is within the
    /// target; None for rows without a target.
    fn met(&self) -> Option<bool> {
        let target = self.spec.scenario.target()?;
        let stats = self.totals();
        let ok = stats.as_ref().map_or(0, |s| s.n);
        Some(
            ok == self.samples.len()
                && stats.is_some_and(|s| {
                    rtts(
                        s.p99.saturating_sub(self.spec.network.detection),
                        self.unit(),
                    ) <= target
                }),
        )
    }

    /// The row for scripts.
    pub fn json(&self) -> JsonRow {
        let unit = self.unit();
        let stats = self.totals();
        let to_rtt = |d: Option<Duration>| d.map(|d| round3(rtts(d, unit)));
        let to_ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
        JsonRow {
            scenario: self.spec.scenario.key(),
            name: self.spec.name(),
            rtt_ms: self.spec.rtt_ms,
            unit: self.spec.scenario.unit(),
            unit_ms: unit.as_millis() as u64,
            loss: self.spec.network.loss,
            jitter_ms: self.spec.network.jitter.as_millis() as u64,
            detection_ms: self.spec.network.detection.as_millis() as u64,
            p50_rtt: to_rtt(stats.as_ref().map(|s| s.p50)),
            p99_rtt: to_rtt(stats.as_ref().map(|s| s.p99)),
            max_rtt: to_rtt(stats.as_ref().map(|s| s.max)),
            p50_ms: to_ms(stats.as_ref().map(|s| s.p50)),
            p99_ms: to_ms(stats.as_ref().map(|s| s.p99)),
            p99_rtt_after_detection: to_rtt(
                stats
                    .as_ref()
                    .map(|s| s.p99.saturating_sub(self.spec.network.detection)),
            ),
            target_rtt: self.spec.scenario.target(),
            met: self.met(),
            seeds: self.samples.len(),
            unrecovered: self.samples.iter().filter(|s| s.total.is_none()).count(),
            handshakes: self.samples.iter().filter(|s| s.handshake).count(),
            exactly_once: !self.samples.iter().any(|s| s.misdelivered),
        }
    }

    /// Each distinct value of a row with how many seeds measured it, and the slowest
    /// seeds.
    fn distribution(&self, value: impl Fn(&Sample) -> Option<Duration>) -> String {
        let mut counts: BTreeMap<u128, usize> = BTreeMap::new();
        for sample in &self.samples {
            if let Some(v) = value(sample) {
                *counts.entry(v.as_millis()).or_default() += 1;
            }
        }
        let values: Vec<String> = counts
            .iter()
            .map(|(ms, n)| format!("{ms} ms ×{n}"))
            .collect();
        let mut slow: Vec<(Duration, u64)> = self
            .samples
            .iter()
            .filter_map(|s| value(s).map(|v| (v, s.seed)))
            .collect();
        slow.sort_by(|a, b| b.cmp(a));
        let seeds: Vec<String> = slow.iter().take(5).map(|(_, s)| s.to_string()).collect();
        format!("{}; slowest seeds {}", values.join(", "), seeds.join(", "))
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// One row of `tether bench migration --json`.
#[derive(Debug, Clone, Serialize)]
pub struct JsonRow {
    /// `single-move-direct`, `single-move-relay`, `both-move` or `fresh-pair`.
    pub scenario: &'static str,
    /// The row's name in the table.
    pub name: String,
    /// Base RTT of every path, ms.
    pub rtt_ms: u64,
    /// `direct RTT` or `relay RTT`: what the `_rtt` figures count.
    pub unit: &'static str,
    /// That unit, ms.
    pub unit_ms: u64,
    /// Packet loss on every path, 0..=1.
    pub loss: f64,
    /// Extra one-way delay per packet, uniform up to this, ms.
    pub jitter_ms: u64,
    /// How long the change went unnoticed, ms (included in the figures).
    pub detection_ms: u64,
    /// Change → both Ready and every message delivered: median over the recovered
    /// seeds, in units.
    pub p50_rtt: Option<f64>,
    /// The same, 99th percentile (nearest rank).
    pub p99_rtt: Option<f64>,
    /// The same, slowest seed.
    pub max_rtt: Option<f64>,
    /// `p50_rtt` in ms.
    pub p50_ms: Option<u64>,
    /// `p99_rtt` in ms.
    pub p99_ms: Option<u64>,
    /// `p99_rtt` less the detection delay: what the target is checked against.
    pub p99_rtt_after_detection: Option<f64>,
    /// The target after detection, in units (none for the baseline).
    pub target_rtt: Option<f64>,
    /// Every seed recovered and `p99_rtt_after_detection` ≤ `target_rtt`.
    pub met: Option<bool>,
    /// Seeds run.
    pub seeds: usize,
    /// Seeds not recovered within 30 s of the change.
    pub unrecovered: usize,
    /// Seeds whose migration ran a handshake (always 0 unless something broke).
    pub handshakes: usize,
    /// Every recovered seed delivered its messages exactly once, in order.
    pub exactly_once: bool,
}

/// Everything `tether bench migration` measured.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationReport {
    /// Seeds per row.
    pub seeds: u64,
    /// The first seed.
    pub first_seed: u64,
    /// Messages sent each way after the change.
    pub messages: usize,
    /// One object per row.
    pub migration: Vec<JsonRow>,
}

/// Runs every row of `plan`, each seed on a fresh simulation; says on stderr when each
/// row is done (and, with `verbose`, its distributions).
pub fn run(plan: &Plan, settings: &Settings) -> Vec<Row> {
    let started = Instant::now();
    let Settings {
        seeds,
        first_seed,
        messages,
        trace,
        verbose,
    } = *settings;
    let mut rows = Vec::new();
    for &spec in &plan.rows {
        let samples: Vec<Sample> = (first_seed..first_seed + seeds)
            .map(|seed| {
                let trace = trace && seed == first_seed;
                run_simulation(|| measure(spec, seed, messages, trace))
            })
            .collect();
        let row = Row { spec, samples };
        eprintln!(
            "{} @ {} ms: {seeds} seeds done ({:.1} s real time so far)",
            spec.name(),
            spec.rtt_ms,
            started.elapsed().as_secs_f64()
        );
        if verbose {
            eprintln!("  done: {}", row.distribution(|s| s.total));
            eprintln!("  A Ready: {}", row.distribution(|s| s.ready[A]));
            eprintln!("  B Ready: {}", row.distribution(|s| s.ready[B]));
            if spec.scenario == Scenario::BothMove {
                eprintln!("  direct: {}", row.distribution(|s| s.direct));
            }
            if spec.scenario == Scenario::FreshPair {
                eprintln!("  first dial: {}", row.distribution(|s| s.first_dial));
                eprintln!("  dial to done: {}", row.distribution(|s| s.from_dial));
            }
            for s in row.samples.iter().filter(|s| s.failure.is_some()) {
                eprintln!("  seed {}: {}", s.seed, s.failure.as_deref().unwrap_or(""));
            }
        }
        rows.push(row);
    }
    rows
}

/// The report for scripts.
pub fn report(rows: &[Row], settings: &Settings) -> MigrationReport {
    MigrationReport {
        seeds: settings.seeds,
        first_seed: settings.first_seed,
        messages: settings.messages,
        migration: rows.iter().map(Row::json).collect(),
    }
}

/// The tables (Markdown), as the cargo bench has always printed them; `real_time` is
/// how long the run took.
pub fn render(rows: &[Row], settings: &Settings, real_time: Duration) -> String {
    let Settings {
        seeds,
        first_seed,
        messages,
        ..
    } = *settings;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nMigration latency, virtual time, {seeds} seeds per row (seeds {first_seed}..{}), \
         {messages} messages each way, 1 ms resolution.\n",
        first_seed + seeds.max(1) - 1
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
    for row in rows {
        let unit = row.unit();
        let stats = row.totals();
        let ok = stats.as_ref().map_or(0, |s| s.n);
        let (target, met) = match (row.spec.scenario.target(), row.met()) {
            (Some(t), Some(met)) => {
                let after = if row.spec.network.detection.is_zero() {
                    String::new()
                } else {
                    format!(
                        " after {} ms detection",
                        row.spec.network.detection.as_millis()
                    )
                };
                (
                    format!("≤ {t} {}{after}", row.spec.scenario.unit()),
                    if met { "met" } else { "**NOT met**" }.to_string(),
                )
            }
            _ => ("(baseline)".to_string(), "–".to_string()),
        };
        let _ = writeln!(
            out,
            "| {} | {} ms | {} = {} ms | {ok}/{} | {} | {target} | {met} |",
            row.spec.name(),
            row.spec.rtt_ms,
            row.spec.scenario.unit(),
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
    for row in rows {
        let unit = row.unit();
        let side = |i: usize| Stats::of(row.samples.iter().filter_map(|s| s.ready[i]));
        let _ = writeln!(
            out,
            "| {} | {} ms | {} | {} |",
            row.spec.name(),
            row.spec.rtt_ms,
            cells(&side(A), unit),
            cells(&side(B), unit),
        );
    }

    let _ = writeln!(
        out,
        "\nBoth sides move: change → both sessions bound to a direct path again, in direct RTTs:\n"
    );
    let both: Vec<&Row> = rows
        .iter()
        .filter(|r| r.spec.scenario == Scenario::BothMove)
        .collect();
    let named = both.iter().any(|r| !r.spec.network.ideal());
    if named {
        let _ = writeln!(out, "| scenario | path RTT | ok | p50 | p99 | max |");
        let _ = writeln!(out, "|---|---|---|---|---|---|");
    } else {
        let _ = writeln!(out, "| path RTT | ok | p50 | p99 | max |");
        let _ = writeln!(out, "|---|---|---|---|---|");
    }
    for row in both {
        let unit = row.unit();
        let stats = Stats::of(row.samples.iter().filter_map(|s| s.direct));
        let ok = stats.as_ref().map_or(0, |s| s.n);
        let name = if named {
            format!("{} | ", row.spec.name())
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "| {name}{} ms | {ok}/{} | {} |",
            row.spec.rtt_ms,
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
    for row in rows
        .iter()
        .filter(|r| r.spec.scenario == Scenario::FreshPair)
    {
        let unit = row.unit();
        let dial = Stats::of(row.samples.iter().filter_map(|s| s.first_dial));
        let done = Stats::of(row.samples.iter().filter_map(|s| s.from_dial));
        let _ = writeln!(
            out,
            "| {} ms | {} | {} |",
            row.spec.rtt_ms,
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
        real_time.as_secs_f64()
    );
    out
}
