//! `tether demo`: a relay server and two devices in one process, playing the
//! SessionMigration scenarios and checking the design's invariants on each.
//!
//! The simulated scenarios run whole nodes (the real actors, quinn and Noise) on the
//! simulated network under virtual time (see [`crate::cluster`]), with a realistic
//! path (40 ms RTT and 1% loss by default), so a run takes seconds of real time and
//! is the same for the same seed. `--real` plays the single-side move over real UDP
//! sockets on loopback, rebinding one device from 127.0.0.1 to 127.0.0.2.
//!
//! Every scenario records, before and after: the handshake counts of both sides, the
//! epoch, both sides' PeerSecret fingerprints; and the migration time (from the
//! network change to both sides Ready, read from the event log), the RTT, and whether
//! every message sent while it happened arrived exactly once and in order.

use super::metrics::{millis, path_name};
use crate::cluster::{run_simulation, ClusterBuilder, SimCluster};
use crate::hub::{phase_timeline, NodeEvent};
use crate::node::{Node, NodeConfig, NodePeer, PeerStatus, ServerInfo};
use crate::relay_server::RelayServer;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::Serialize;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;
use tether_crypto::{RelationshipKey, StaticKeypair};
use tether_direct_connection::Limits;
use tether_protocol::{DeviceId, PathKind, SessionStatus};
use tether_transport::sim::LinkConditions;
use tether_transport::{Endpoint, TransportConfig};

const A: usize = 0;
const B: usize = 1;

/// Messages each side sends just before the network change (in flight during it), and
/// again just after (queued while the path is down).
const BURST: usize = 5;

/// The default seed: the demo is the same on every run unless `--seed` changes it.
pub const DEFAULT_SEED: u64 = 7;

/// The demo's scenarios, in the order they are played.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    /// Two devices find each other and hand-shake once.
    Establish,
    /// One device changes networks; the other stays.
    SingleSideMove,
    /// One device moves into a network where direct UDP to the peer is blocked: the
    /// session continues over the relay.
    DirectBlockedRelay,
    /// Both devices change networks at the same moment and find each other again.
    BothMove,
    /// A device is cut off for longer than the migration window: both sides evict,
    /// then recover with a new handshake, losing no message.
    WindowExpiry,
}

impl Scenario {
    /// Every scenario, in play order.
    pub const ALL: [Scenario; 5] = [
        Scenario::Establish,
        Scenario::SingleSideMove,
        Scenario::DirectBlockedRelay,
        Scenario::BothMove,
        Scenario::WindowExpiry,
    ];

    /// The name `--scenario` takes.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Establish => "establish",
            Scenario::SingleSideMove => "single-side-move",
            Scenario::DirectBlockedRelay => "direct-blocked-relay",
            Scenario::BothMove => "both-move",
            Scenario::WindowExpiry => "window-expiry",
        }
    }

    /// The scenario called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    fn describe(self) -> &'static str {
        match self {
            Scenario::Establish => "A and B find each other and run one handshake",
            Scenario::SingleSideMove => "A changes networks while messages flow; B stays",
            Scenario::DirectBlockedRelay => {
                "A changes networks into one that blocks direct UDP to B: the relay carries the session"
            }
            Scenario::BothMove => "A and B change networks at the same moment",
            Scenario::WindowExpiry => {
                "A is cut off longer than the 8 s migration window: both evict, then recover with a new handshake"
            }
        }
    }
}

/// How to play the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Seed of the simulation (keys, loss, jitter).
    pub seed: u64,
    /// Round-trip time of the simulated path.
    pub rtt_ms: u64,
    /// Packet loss of the simulated path, 0..1.
    pub loss: f64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            seed: DEFAULT_SEED,
            rtt_ms: 40,
            loss: 0.01,
        }
    }
}

/// A value on each side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Sides {
    /// Device A.
    pub a: u64,
    /// Device B.
    pub b: u64,
}

/// A fingerprint before and after the scenario's change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BeforeAfter {
    /// Before.
    pub before: Option<String>,
    /// After.
    pub after: Option<String>,
}

/// One checked property.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it held.
    pub passed: bool,
    /// The values behind the verdict.
    pub detail: String,
}

/// The outcome of one scenario (one JSON object with `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    /// Scenario name.
    pub scenario: String,
    /// What it plays.
    pub description: String,
    /// Whether every check held.
    pub passed: bool,
    /// `simulated` or `loopback`.
    pub network: String,
    /// Path conditions.
    pub conditions: String,
    /// Seed.
    pub seed: u64,
    /// Handshake counts before the change (A's count with B, B's with A).
    pub handshakes_before: Sides,
    /// Handshake counts after.
    pub handshakes_after: Sides,
    /// Committed epoch before (A's view; B's is checked equal).
    pub epoch_before: Option<u64>,
    /// Committed epoch after.
    pub epoch_after: Option<u64>,
    /// A's PeerSecret fingerprint before and after.
    pub fingerprint_a: BeforeAfter,
    /// B's PeerSecret fingerprint before and after.
    pub fingerprint_b: BeforeAfter,
    /// From the change to both sides Ready, from the event log (none for establish).
    pub migration_ms: Option<u64>,
    /// From start to both sides Ready (establish only).
    pub establish_ms: Option<u64>,
    /// From the network healing to both sides Ready (window expiry only).
    pub recovery_ms: Option<u64>,
    /// Each side's own measure of its migration (Presence's MigrationCompleted).
    pub migration_reported_ms: Option<Sides>,
    /// Smoothed RTT after (A's view).
    pub rtt_ms: Option<u64>,
    /// Messages sent, both directions.
    pub messages_sent: u64,
    /// Distinct messages delivered, both directions.
    pub messages_delivered: u64,
    /// Messages the application received more than once.
    pub duplicates: u64,
    /// `direct` or `relay`, after (A's view).
    pub path_after: Option<String>,
    /// Every checked property.
    pub checks: Vec<Check>,
    /// Real time the scenario took to play.
    pub wall_ms: u64,
    /// The phase timeline (text output only).
    #[serde(skip)]
    pub timeline: String,
}

/// What one side reports about its session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Snap {
    handshakes: u64,
    epoch: Option<u64>,
    peer_secret: Option<String>,
    session_keys: Option<String>,
    path: Option<PathKind>,
    remote: Option<SocketAddr>,
    rtt_ms: Option<u64>,
    status: Option<SessionStatus>,
}

impl Snap {
    fn of(status: Option<PeerStatus>) -> Self {
        match status {
            None => Self::default(),
            Some(s) => Self {
                handshakes: s.handshakes,
                epoch: s.epoch,
                peer_secret: s.peer_secret.map(|f| f.to_hex()),
                session_keys: s.session_keys.map(|f| f.to_hex()),
                path: s.path,
                remote: s.remote,
                rtt_ms: s.rtt_ms,
                status: s.status,
            },
        }
    }
}

/// Builds a report and its checks.
struct Recorder {
    report: ScenarioReport,
    marks: Vec<(u64, String)>,
}

impl Recorder {
    fn new(
        scenario: &str,
        description: &str,
        network: &str,
        conditions: String,
        seed: u64,
    ) -> Self {
        Self {
            report: ScenarioReport {
                scenario: scenario.into(),
                description: description.into(),
                passed: false,
                network: network.into(),
                conditions,
                seed,
                handshakes_before: Sides::default(),
                handshakes_after: Sides::default(),
                epoch_before: None,
                epoch_after: None,
                fingerprint_a: BeforeAfter::default(),
                fingerprint_b: BeforeAfter::default(),
                migration_ms: None,
                establish_ms: None,
                recovery_ms: None,
                migration_reported_ms: None,
                rtt_ms: None,
                messages_sent: 0,
                messages_delivered: 0,
                duplicates: 0,
                path_after: None,
                checks: Vec::new(),
                wall_ms: 0,
                timeline: String::new(),
            },
            marks: Vec::new(),
        }
    }

    fn check(&mut self, name: &str, passed: bool, detail: impl Into<String>) {
        self.report.checks.push(Check {
            name: name.into(),
            passed,
            detail: detail.into(),
        });
    }

    fn mark(&mut self, at: Duration, text: impl Into<String>) {
        self.marks.push((millis(at), text.into()));
    }

    fn before(&mut self, a: &Snap, b: &Snap) {
        self.report.handshakes_before = Sides {
            a: a.handshakes,
            b: b.handshakes,
        };
        self.report.epoch_before = a.epoch;
        self.report.fingerprint_a.before = a.peer_secret.clone();
        self.report.fingerprint_b.before = b.peer_secret.clone();
    }

    fn after(&mut self, a: &Snap, b: &Snap) {
        self.report.handshakes_after = Sides {
            a: a.handshakes,
            b: b.handshakes,
        };
        self.report.epoch_after = a.epoch;
        self.report.fingerprint_a.after = a.peer_secret.clone();
        self.report.fingerprint_b.after = b.peer_secret.clone();
        self.report.rtt_ms = a.rtt_ms;
        self.report.path_after = a.path.map(|p| path_name(p).to_string());
    }

    /// The checks every scenario ends with: both Ready, one shared session.
    fn check_same_session(&mut self, a: &Snap, b: &Snap) {
        self.check(
            "both sides Ready",
            a.status == Some(SessionStatus::Ready) && b.status == Some(SessionStatus::Ready),
            format!("A: {}, B: {}", show_status(a.status), show_status(b.status)),
        );
        self.check(
            "same PeerSecret and session keys on both sides",
            a.peer_secret.is_some()
                && a.peer_secret == b.peer_secret
                && a.session_keys == b.session_keys
                && a.epoch == b.epoch,
            format!(
                "PeerSecret A {} / B {}, epoch A {} / B {}",
                short(&a.peer_secret),
                short(&b.peer_secret),
                show(a.epoch),
                show(b.epoch)
            ),
        );
    }

    /// Invariants 1 and 2: no handshake, same epoch and PeerSecret as before.
    fn check_no_handshake(&mut self, before: (&Snap, &Snap), after: (&Snap, &Snap)) {
        self.check(
            "no handshake during the migration",
            before.0.handshakes == after.0.handshakes && before.1.handshakes == after.1.handshakes,
            format!(
                "A {} -> {}, B {} -> {}",
                before.0.handshakes, after.0.handshakes, before.1.handshakes, after.1.handshakes
            ),
        );
        self.check(
            "same epoch, PeerSecret and session keys as before",
            before.0.epoch == after.0.epoch
                && before.0.peer_secret == after.0.peer_secret
                && before.0.session_keys == after.0.session_keys
                && before.1.peer_secret == after.1.peer_secret,
            format!(
                "epoch {} -> {}, PeerSecret {} -> {}",
                show(before.0.epoch),
                show(after.0.epoch),
                short(&before.0.peer_secret),
                short(&after.0.peer_secret)
            ),
        );
    }

    /// Invariant 5: every message exactly once, in order, each way.
    fn check_messages(&mut self, sent: [&[Vec<u8>]; 2], received: [&[Vec<u8>]; 2]) {
        let mut delivered = 0;
        let mut duplicates = 0;
        let mut exact = true;
        let mut wrong = Vec::new();
        for ((expected, got), direction) in sent.iter().zip(received.iter()).zip(["A->B", "B->A"]) {
            let unique: BTreeSet<&Vec<u8>> = got.iter().collect();
            duplicates += got.len() - unique.len();
            delivered += expected.iter().filter(|m| unique.contains(m)).count();
            if got != expected {
                exact = false;
                // What arrived, by the message's suffix ("a3"), to show the fault.
                let order: Vec<String> = got
                    .iter()
                    .take(40)
                    .map(|m| {
                        let text = String::from_utf8_lossy(m);
                        text.rsplit(' ').next().unwrap_or_default().to_string()
                    })
                    .collect();
                wrong.push(format!("{direction} got {}", order.join(" ")));
            }
        }
        let total = sent[0].len() + sent[1].len();
        self.report.messages_sent = total as u64;
        self.report.messages_delivered = delivered as u64;
        self.report.duplicates = duplicates as u64;
        self.check(
            "every message delivered exactly once, in order",
            exact,
            if wrong.is_empty() {
                format!("{delivered}/{total} delivered, {duplicates} duplicates")
            } else {
                format!(
                    "{delivered}/{total} delivered, {duplicates} duplicates; {}",
                    wrong.join("; ")
                )
            },
        );
    }

    fn finish(mut self, timeline: &str, wall: Duration) -> ScenarioReport {
        self.report.passed =
            !self.report.checks.is_empty() && self.report.checks.iter().all(|c| c.passed);
        self.report.timeline = merge_timeline(timeline, &self.marks);
        self.report.wall_ms = millis(wall);
        self.report
    }
}

fn show(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

fn show_status(s: Option<SessionStatus>) -> String {
    s.map_or("-".into(), |s| s.to_string())
}

fn short(fp: &Option<String>) -> String {
    fp.as_deref()
        .map_or("-".into(), |f| f.chars().take(8).collect())
}

/// Merges action marks into a timeline of `{:>7}ms text` lines (marks first at a tie).
fn merge_timeline(timeline: &str, marks: &[(u64, String)]) -> String {
    let mut lines: Vec<(u64, u8, usize, String)> = Vec::new();
    for (i, line) in timeline.lines().enumerate() {
        let ms = line
            .trim_start()
            .split("ms")
            .next()
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
        lines.push((ms, 1, i, line.to_string()));
    }
    for (i, (ms, text)) in marks.iter().enumerate() {
        lines.push((*ms, 0, i, format!("{ms:>7}ms ▶ {text}")));
    }
    lines.sort();
    lines
        .into_iter()
        .map(|(_, _, _, l)| l)
        .collect::<Vec<_>>()
        .join("\n")
}

/// First time at or after `since` when both sides are Ready after at least one of
/// them left Ready, from the two event logs; relative to `since`.
fn both_ready_again(
    logs: [&[(Duration, NodeEvent)]; 2],
    peers: [DeviceId; 2],
    since: Duration,
) -> Option<Duration> {
    let mut events: Vec<(Duration, usize, usize, SessionStatus)> = Vec::new();
    let mut state = [None, None];
    for side in 0..2 {
        for (order, (at, event)) in logs[side].iter().enumerate() {
            if let NodeEvent::Status { peer, to, .. } = event {
                if *peer != peers[side] {
                    continue;
                }
                if *at < since {
                    state[side] = Some(*to);
                } else {
                    events.push((*at, side, order, *to));
                }
            }
        }
    }
    events.sort_by_key(|(at, side, order, _)| (*at, *side, *order));
    let mut left = false;
    let mut i = 0;
    while i < events.len() {
        let at = events[i].0;
        while i < events.len() && events[i].0 == at {
            state[events[i].1] = Some(events[i].3);
            if events[i].3 != SessionStatus::Ready {
                left = true;
            }
            i += 1;
        }
        if left && state == [Some(SessionStatus::Ready); 2] {
            return Some(at.saturating_sub(since));
        }
    }
    None
}

/// Each side's MigrationCompleted duration after `since` (the last one).
fn reported(logs: [&[(Duration, NodeEvent)]; 2], since: Duration) -> Option<Sides> {
    let last = |log: &[(Duration, NodeEvent)]| {
        log.iter().rev().find_map(|(at, e)| match e {
            NodeEvent::MigrationCompleted { duration, .. } if *at >= since => {
                Some(millis(*duration))
            }
            _ => None,
        })
    };
    Some(Sides {
        a: last(logs[0])?,
        b: last(logs[1])?,
    })
}

fn delivered(log: &[(Duration, NodeEvent)], from: DeviceId, tag: &str) -> Vec<Vec<u8>> {
    log.iter()
        .filter_map(|(_, e)| match e {
            NodeEvent::Delivered { peer, payload, .. }
                if *peer == from && payload.starts_with(tag.as_bytes()) =>
            {
                Some(payload.clone())
            }
            _ => None,
        })
        .collect()
}

fn messages(tag: &str, side: &str, range: std::ops::Range<usize>) -> Vec<Vec<u8>> {
    range
        .map(|i| format!("{tag} {side}{i}").into_bytes())
        .collect()
}

fn conditions_text(opts: &DemoOptions) -> String {
    format!(
        "{} ms RTT, {}% loss, virtual clock",
        opts.rtt_ms,
        opts.loss * 100.0
    )
}

/// Plays one simulated scenario.
pub fn play(scenario: Scenario, opts: &DemoOptions) -> ScenarioReport {
    let started = std::time::Instant::now();
    let opts = opts.clone();
    let (recorder, timeline) = run_simulation(|| async move { simulate(scenario, &opts).await });
    recorder.finish(&timeline, started.elapsed())
}

async fn snaps(cluster: &SimCluster) -> (Snap, Snap) {
    (
        Snap::of(cluster.peer_status(A, B).await),
        Snap::of(cluster.peer_status(B, A).await),
    )
}

async fn send_burst(
    cluster: &SimCluster,
    tag: &str,
    range: std::ops::Range<usize>,
) -> Result<(), String> {
    let (a, b) = (cluster.id(A), cluster.id(B));
    for i in range {
        cluster
            .node(A)
            .send(b, format!("{tag} a{i}").into_bytes())
            .await
            .map_err(|e| format!("A send: {e}"))?;
        cluster
            .node(B)
            .send(a, format!("{tag} b{i}").into_bytes())
            .await
            .map_err(|e| format!("B send: {e}"))?;
    }
    Ok(())
}

async fn simulate(scenario: Scenario, opts: &DemoOptions) -> (Recorder, String) {
    let mut rec = Recorder::new(
        scenario.name(),
        scenario.describe(),
        "simulated",
        conditions_text(opts),
        opts.seed,
    );
    let conditions = LinkConditions {
        latency: Duration::from_millis(opts.rtt_ms / 2),
        loss: opts.loss,
        ..LinkConditions::default()
    };
    let mut builder = ClusterBuilder::new(opts.seed, 2)
        .pair(A, B)
        .conditions(conditions);
    if scenario == Scenario::WindowExpiry {
        builder = builder.presence(tether_presence::Config {
            migration_window: Duration::from_secs(8),
            ..tether_presence::Config::default()
        });
    }
    let mut cluster = builder.start().await;
    let tag = scenario.name();
    let (ida, idb) = (cluster.id(A), cluster.id(B));

    if scenario == Scenario::Establish {
        rec.mark(
            Duration::ZERO,
            "relay, A and B start; A and B are paired and know each other's address",
        );
    }
    let ready = cluster
        .run_until(Duration::from_secs(30), |c| c.both_ready(A, B))
        .await;
    if !ready {
        rec.check(
            "A and B establish a session",
            false,
            "not Ready within 30 s",
        );
        let timeline = cluster.timeline(&[A, B], Duration::ZERO);
        return (rec, timeline);
    }
    if scenario == Scenario::Establish {
        let ready_at = both_ready_again(
            [&cluster.devices[A].log, &cluster.devices[B].log],
            [idb, ida],
            Duration::ZERO,
        );
        rec.report.establish_ms = ready_at.map(millis);
        // Crossing handshakes settle on one generation.
        cluster.run_for(Duration::from_secs(3)).await;
        let at = cluster.elapsed();
        rec.mark(at, format!("A and B each send {} messages", 2 * BURST));
        if let Err(e) = send_burst(&cluster, tag, 0..2 * BURST).await {
            rec.check("send accepted", false, e);
        }
        let count = 2 * BURST;
        cluster
            .run_until(Duration::from_secs(20), |c| {
                delivered(&c.devices[B].log, ida, tag).len() >= count
                    && delivered(&c.devices[A].log, idb, tag).len() >= count
            })
            .await;
        cluster.run_for(Duration::from_secs(1)).await;
        let (a, b) = snaps(&cluster).await;
        rec.before(&Snap::default(), &Snap::default());
        rec.after(&a, &b);
        rec.check_same_session(&a, &b);
        rec.check(
            "one handshake generation committed",
            a.handshakes >= 1 && b.handshakes >= 1 && a.epoch.is_some(),
            format!(
                "handshakes A {} / B {}, epoch {}",
                a.handshakes,
                b.handshakes,
                show(a.epoch)
            ),
        );
        check_all_messages(&mut rec, &cluster, tag, count);
        rec.check(
            "direct path",
            a.path == Some(PathKind::Direct),
            format!("A's path: {}", a.path.map_or("-", path_name)),
        );
        let timeline = cluster.timeline(&[A, B], Duration::ZERO);
        return (rec, timeline);
    }

    // Every other scenario starts from an established, settled session.
    cluster.run_for(Duration::from_secs(3)).await;
    let (a0, b0) = snaps(&cluster).await;
    rec.before(&a0, &b0);
    let since = cluster.elapsed();
    rec.mark(
        Duration::ZERO,
        format!(
            "A and B are Ready: epoch {}, {} handshake(s) each, PeerSecret {}",
            show(a0.epoch),
            a0.handshakes,
            short(&a0.peer_secret)
        ),
    );
    rec.mark(
        Duration::ZERO,
        format!("A and B each send {BURST} messages"),
    );
    let mut sent_ok = send_burst(&cluster, tag, 0..BURST).await;
    let old_a = cluster.devices[A].ip;
    let old_b = cluster.devices[B].ip;
    match scenario {
        Scenario::SingleSideMove => {
            let moved = cluster.change_address(A).await;
            rec.mark(
                Duration::ZERO,
                format!("A changes networks: {old_a} -> {}", cluster.devices[A].ip),
            );
            if let Err(e) = moved {
                rec.check("A rebinds", false, e);
            }
        }
        Scenario::DirectBlockedRelay => {
            cluster.block_direct(A, B);
            let moved = cluster.change_address(A).await;
            rec.mark(
                Duration::ZERO,
                format!(
                    "A changes networks: {old_a} -> {}; the new network blocks direct UDP to B",
                    cluster.devices[A].ip
                ),
            );
            if let Err(e) = moved {
                rec.check("A rebinds", false, e);
            }
        }
        Scenario::BothMove => {
            let moved_a = cluster.change_address(A).await;
            let moved_b = cluster.change_address(B).await;
            rec.mark(
                Duration::ZERO,
                format!(
                    "A changes networks ({old_a} -> {}) and so does B ({old_b} -> {})",
                    cluster.devices[A].ip, cluster.devices[B].ip
                ),
            );
            if let Err(e) = moved_a.and(moved_b) {
                rec.check("A and B rebind", false, e);
            }
        }
        Scenario::WindowExpiry => {
            cluster.partition(A, B);
            cluster.partition_relay(A);
            let moved = cluster.change_address(A).await;
            rec.mark(
                Duration::ZERO,
                format!(
                    "A changes networks ({old_a} -> {}) into one that reaches neither B nor the relay",
                    cluster.devices[A].ip
                ),
            );
            if let Err(e) = moved {
                rec.check("A rebinds", false, e);
            }
        }
        Scenario::Establish => {}
    }
    rec.mark(
        Duration::ZERO,
        format!("A and B each send {BURST} more messages"),
    );
    sent_ok = sent_ok.and(send_burst(&cluster, tag, BURST..2 * BURST).await);
    if let Err(e) = sent_ok {
        rec.check("send accepted", false, e);
    }
    let count = 2 * BURST;
    let all_delivered = move |c: &SimCluster| {
        delivered(&c.devices[B].log, ida, tag).len() >= count
            && delivered(&c.devices[A].log, idb, tag).len() >= count
    };

    let mut heal_at = None;
    if scenario == Scenario::WindowExpiry {
        let evicted = cluster
            .run_until(Duration::from_secs(30), |c| {
                c.devices[A].log.iter().any(|(at, e)| {
                    *at >= since
                        && matches!(
                            e,
                            NodeEvent::Status {
                                to: SessionStatus::Evicted,
                                ..
                            }
                        )
                })
            })
            .await;
        rec.check(
            "the migration window expires and A evicts the session",
            evicted,
            if evicted {
                "evicted"
            } else {
                "no eviction within 30 s"
            },
        );
        let at = cluster.elapsed();
        cluster.net.heal_all();
        rec.mark(
            at - since,
            "the network heals: A reaches B and the relay again",
        );
        heal_at = Some(at);
    }
    let recovered = cluster
        .run_until(Duration::from_secs(40), |c| {
            all_delivered(c)
                && c.both_ready(A, B)
                && both_ready_again([&c.devices[A].log, &c.devices[B].log], [idb, ida], since)
                    .is_some()
        })
        .await;
    if !recovered {
        rec.check(
            "both sides Ready again with every message",
            false,
            "not within 40 s",
        );
    }
    let logs = [&cluster.devices[A].log[..], &cluster.devices[B].log[..]];
    rec.report.migration_ms = both_ready_again(logs, [idb, ida], since).map(millis);
    rec.report.migration_reported_ms = reported(logs, since);
    if let Some(heal) = heal_at {
        rec.report.recovery_ms = both_ready_again(logs, [idb, ida], heal).map(millis);
    }
    if scenario == Scenario::BothMove {
        // The relay may carry the session first; the direct path takes over.
        for _ in 0..20 {
            if cluster.peer_status(A, B).await.and_then(|s| s.path) == Some(PathKind::Direct) {
                break;
            }
            cluster.run_for(Duration::from_millis(500)).await;
        }
    }
    // Anything duplicated would arrive now.
    cluster.run_for(Duration::from_secs(2)).await;
    let (a1, b1) = snaps(&cluster).await;
    rec.after(&a1, &b1);
    rec.check_same_session(&a1, &b1);
    match scenario {
        Scenario::WindowExpiry => {
            rec.check(
                "recovery is a new handshake: new epoch and PeerSecret",
                a1.epoch > a0.epoch && a1.peer_secret != a0.peer_secret,
                format!(
                    "epoch {} -> {}, PeerSecret {} -> {}",
                    show(a0.epoch),
                    show(a1.epoch),
                    short(&a0.peer_secret),
                    short(&a1.peer_secret)
                ),
            );
        }
        _ => rec.check_no_handshake((&a0, &b0), (&a1, &b1)),
    }
    check_all_messages(&mut rec, &cluster, tag, count);
    let (want, why) = match scenario {
        Scenario::DirectBlockedRelay => (PathKind::Relay, "relay path (direct UDP is blocked)"),
        _ => (PathKind::Direct, "direct path"),
    };
    rec.check(
        why,
        a1.path == Some(want),
        format!("A's path: {}", a1.path.map_or("-", path_name)),
    );
    if scenario == Scenario::SingleSideMove {
        let ip = cluster.devices[A].ip;
        rec.check(
            "B reaches A at its new address",
            b1.remote.map(|r| r.ip()) == Some(ip),
            format!(
                "B sends to {}",
                b1.remote.map_or("-".into(), |r| r.to_string())
            ),
        );
    }
    let timeline = cluster.timeline(&[A, B], since);
    (rec, timeline)
}

fn check_all_messages(rec: &mut Recorder, cluster: &SimCluster, tag: &str, count: usize) {
    let (ida, idb) = (cluster.id(A), cluster.id(B));
    let from_a = messages(tag, "a", 0..count);
    let from_b = messages(tag, "b", 0..count);
    let at_b = delivered(&cluster.devices[B].log, ida, tag);
    let at_a = delivered(&cluster.devices[A].log, idb, tag);
    rec.check_messages([&from_a, &from_b], [&at_b, &at_a]);
}

/// A device of the real-sockets demo: a node and its event log.
struct RealDevice {
    node: Node,
    log: Vec<(Duration, NodeEvent)>,
}

fn collect(devices: &mut [RealDevice; 2], t0: std::time::Instant) {
    for d in devices.iter_mut() {
        while let Some(e) = d.node.try_next_event() {
            d.log.push((t0.elapsed(), e));
        }
    }
}

/// Runs until `condition` holds (true) or `timeout` passes (false), waking on events.
async fn real_until(
    devices: &mut [RealDevice; 2],
    t0: std::time::Instant,
    timeout: Duration,
    condition: impl Fn(&[RealDevice; 2]) -> bool,
) -> bool {
    let end = tokio::time::Instant::now() + timeout;
    loop {
        collect(devices, t0);
        if condition(devices) {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        let [a, b] = devices;
        tokio::select! {
            e = a.node.next_event() => if let Some(e) = e { a.log.push((t0.elapsed(), e)) },
            e = b.node.next_event() => if let Some(e) = e { b.log.push((t0.elapsed(), e)) },
            _ = tokio::time::sleep_until(end) => {}
        }
    }
}

fn last_status(log: &[(Duration, NodeEvent)], peer: DeviceId) -> Option<SessionStatus> {
    log.iter().rev().find_map(|(_, e)| match e {
        NodeEvent::Status { peer: p, to, .. } if *p == peer => Some(*to),
        _ => None,
    })
}

/// The same one-line-per-event timeline as [`SimCluster::timeline`], for real devices.
fn real_timeline(devices: &[RealDevice; 2], ids: [DeviceId; 2], since: Duration) -> String {
    let names = ["A", "B"];
    let name = |id: &DeviceId| {
        ids.iter()
            .position(|x| x == id)
            .map_or_else(|| id.short(), |i| names[i].to_string())
    };
    let logs = names
        .iter()
        .zip(devices)
        .map(|(name, device)| (*name, device.log.as_slice()));
    phase_timeline(logs, name, since)
}

/// Why the real-sockets demo could not set up.
#[derive(Debug, thiserror::Error)]
#[error("real-sockets demo: {0}")]
pub struct RealDemoError(String);

/// Plays the single-side move over real UDP sockets on loopback: a relay and two nodes
/// on 127.0.0.1, then A rebinds to 127.0.0.2 (any port) while messages flow. Runs its
/// own actix system on a normal (not paused) runtime.
pub fn play_real(opts: &DemoOptions) -> Result<ScenarioReport, RealDemoError> {
    let started = std::time::Instant::now();
    let seed = opts.seed;
    let system = actix_rt::System::new();
    let (rec, timeline) = system.block_on(real_single_side_move(seed))?;
    Ok(rec.finish(&timeline, started.elapsed()))
}

async fn real_single_side_move(seed: u64) -> Result<(Recorder, String), RealDemoError> {
    let err = |what: &str, e: &dyn std::fmt::Display| RealDemoError(format!("{what}: {e}"));
    let scenario = "single-side-move-real";
    let mut rec = Recorder::new(
        scenario,
        "A rebinds from 127.0.0.1 to 127.0.0.2 while messages flow, over real UDP sockets",
        "loopback",
        "real loopback UDP".into(),
        seed,
    );
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let relay_endpoint = Endpoint::bind_udp(loopback, TransportConfig::default())
        .await
        .map_err(|e| err("relay endpoint", &e))?;
    let relay_key = StaticKeypair::generate(&mut rng);
    let relay = RelayServer::start(relay_endpoint, relay_key, [seed as u8; 32])
        .map_err(|e| err("relay server", &e))?;
    let keys = [
        StaticKeypair::generate(&mut rng),
        StaticKeypair::generate(&mut rng),
    ];
    let rk = RelationshipKey::generate(&mut rng);
    let mut endpoints = Vec::new();
    for _ in 0..2 {
        endpoints.push(
            Endpoint::bind_udp(loopback, TransportConfig::default())
                .await
                .map_err(|e| err("device endpoint", &e))?,
        );
    }
    let addrs: Vec<SocketAddr> = endpoints
        .iter()
        .map(|e| e.local_addr())
        .collect::<Result<_, _>>()
        .map_err(|e| err("device address", &e))?;
    let ids = [
        DeviceId(*keys[0].public().as_bytes()),
        DeviceId(*keys[1].public().as_bytes()),
    ];
    let unix_ms = super::node::unix_ms();
    let mut nodes = Vec::new();
    for (i, endpoint) in endpoints.into_iter().enumerate() {
        let other = 1 - i;
        let config = NodeConfig {
            keypair: keys[i].clone(),
            peers: vec![NodePeer {
                public: *keys[other].public(),
                rk: rk.clone(),
                addrs: vec![addrs[other]],
            }],
            server: ServerInfo {
                addr: relay.local_addr,
                public: relay.public,
            },
            presence: tether_presence::Config::default(),
            limits: Limits::default(),
            blueprint: tether_connection_blueprint::Config::default(),
            seed: seed.wrapping_mul(1000).wrapping_add(i as u64),
            unix_ms_at_start: unix_ms,
        };
        nodes.push(Node::start(config, endpoint).map_err(|e| err("node", &e))?);
    }
    let t0 = std::time::Instant::now();
    let mut nodes = nodes.into_iter();
    let (Some(node_a), Some(node_b)) = (nodes.next(), nodes.next()) else {
        return Err(RealDemoError("two nodes".into()));
    };
    let mut devices = [
        RealDevice {
            node: node_a,
            log: Vec::new(),
        },
        RealDevice {
            node: node_b,
            log: Vec::new(),
        },
    ];
    let both_ready = move |d: &[RealDevice; 2]| {
        last_status(&d[A].log, ids[B]) == Some(SessionStatus::Ready)
            && last_status(&d[B].log, ids[A]) == Some(SessionStatus::Ready)
    };
    rec.mark(
        Duration::ZERO,
        format!(
            "relay on {}, A on {}, B on {}",
            relay.local_addr, addrs[A], addrs[B]
        ),
    );
    if !real_until(&mut devices, t0, Duration::from_secs(20), both_ready).await {
        rec.check(
            "A and B establish a session",
            false,
            "not Ready within 20 s",
        );
        let timeline = real_timeline(&devices, ids, Duration::ZERO);
        stop(&devices, &relay);
        return Ok((rec, timeline));
    }
    // Crossing handshakes settle on one generation.
    real_until(&mut devices, t0, Duration::from_secs(1), |_| false).await;
    let a0 = Snap::of(real_status(&devices[A].node, ids[B]).await);
    let b0 = Snap::of(real_status(&devices[B].node, ids[A]).await);
    rec.before(&a0, &b0);

    let tag = scenario;
    let since = t0.elapsed();
    rec.mark(
        Duration::ZERO,
        format!("A and B each send {BURST} messages"),
    );
    let mut sent = real_send(&devices, ids, tag, 0..BURST).await;
    let target = SocketAddr::from(([127, 0, 0, 2], 0));
    let moved = devices[A].node.rebind(target).await;
    let new_a = match &moved {
        Ok(new) => {
            rec.mark(
                t0.elapsed() - since,
                format!("A rebinds: {} -> {new}", addrs[A]),
            );
            Some(*new)
        }
        Err(e) => {
            rec.check("A rebinds to 127.0.0.2", false, e.clone());
            None
        }
    };
    rec.mark(
        t0.elapsed() - since,
        format!("A and B each send {BURST} more messages"),
    );
    sent = sent.and(real_send(&devices, ids, tag, BURST..2 * BURST).await);
    if let Err(e) = sent {
        rec.check("send accepted", false, e);
    }
    let count = 2 * BURST;
    let recovered = real_until(&mut devices, t0, Duration::from_secs(20), |d| {
        both_ready(d)
            && delivered(&d[B].log, ids[A], tag).len() >= count
            && delivered(&d[A].log, ids[B], tag).len() >= count
            && both_ready_again([&d[A].log, &d[B].log], [ids[B], ids[A]], since).is_some()
    })
    .await;
    if !recovered {
        rec.check(
            "both sides Ready again with every message",
            false,
            "not within 20 s",
        );
    }
    // Anything duplicated would arrive now.
    real_until(&mut devices, t0, Duration::from_millis(500), |_| false).await;
    let logs = [&devices[A].log[..], &devices[B].log[..]];
    rec.report.migration_ms = both_ready_again(logs, [ids[B], ids[A]], since).map(millis);
    rec.report.migration_reported_ms = reported(logs, since);
    let a1 = Snap::of(real_status(&devices[A].node, ids[B]).await);
    let b1 = Snap::of(real_status(&devices[B].node, ids[A]).await);
    rec.after(&a1, &b1);
    rec.check_same_session(&a1, &b1);
    rec.check_no_handshake((&a0, &b0), (&a1, &b1));
    let from_a = messages(tag, "a", 0..count);
    let from_b = messages(tag, "b", 0..count);
    let at_b = delivered(&devices[B].log, ids[A], tag);
    let at_a = delivered(&devices[A].log, ids[B], tag);
    rec.check_messages([&from_a, &from_b], [&at_b, &at_a]);
    rec.check(
        "direct path",
        a1.path == Some(PathKind::Direct),
        format!("A's path: {}", a1.path.map_or("-", path_name)),
    );
    rec.check(
        "B reaches A at its new address",
        new_a.is_some() && b1.remote == new_a,
        format!(
            "B sends to {}, A is at {}",
            b1.remote.map_or("-".into(), |r| r.to_string()),
            new_a.map_or("-".into(), |r| r.to_string())
        ),
    );
    let timeline = real_timeline(&devices, ids, since);
    stop(&devices, &relay);
    Ok((rec, timeline))
}

async fn real_status(node: &Node, peer: DeviceId) -> Option<PeerStatus> {
    node.status().await.into_iter().find(|s| s.peer == peer)
}

async fn real_send(
    devices: &[RealDevice; 2],
    ids: [DeviceId; 2],
    tag: &str,
    range: std::ops::Range<usize>,
) -> Result<(), String> {
    for i in range {
        devices[A]
            .node
            .send(ids[B], format!("{tag} a{i}").into_bytes())
            .await
            .map_err(|e| format!("A send: {e}"))?;
        devices[B]
            .node
            .send(ids[A], format!("{tag} b{i}").into_bytes())
            .await
            .map_err(|e| format!("B send: {e}"))?;
    }
    Ok(())
}

fn stop(devices: &[RealDevice; 2], relay: &crate::relay_server::RelayServerHandle) {
    for d in devices {
        d.node.stop();
    }
    relay.addr.do_send(tether_protocol::Shutdown);
}

/// A scenario's readable block: title, timeline, checks and the one-line verdict.
pub fn render(report: &ScenarioReport, index: usize, total: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "━━ {}/{} {} ━━ {}",
        index + 1,
        total,
        report.scenario,
        report.description
    );
    let _ = writeln!(
        out,
        "   network: {} ({}), seed {}",
        report.network, report.conditions, report.seed
    );
    for line in report.timeline.lines() {
        let _ = writeln!(out, "{line}");
    }
    for check in &report.checks {
        let _ = writeln!(
            out,
            "   {} {} ({})",
            if check.passed { "✓" } else { "✗" },
            check.name,
            check.detail
        );
    }
    let _ = writeln!(out, "{}", verdict(report));
    out
}

/// The one-line verdict of a scenario.
pub fn verdict(r: &ScenarioReport) -> String {
    let word = if r.passed { "PASS" } else { "FAIL" };
    let fp = |f: &BeforeAfter| short(&f.after);
    let mut parts = Vec::new();
    if let Some(ms) = r.establish_ms {
        parts.push(format!("Ready in {ms} ms"));
    }
    if let Some(ms) = r.migration_ms {
        match r.rtt_ms {
            Some(rtt) if rtt > 0 => parts.push(format!(
                "both Ready {ms} ms after the change ({:.1} RTT)",
                ms as f64 / rtt as f64
            )),
            _ => parts.push(format!("both Ready {ms} ms after the change")),
        }
    }
    if let Some(ms) = r.recovery_ms {
        parts.push(format!("recovered {ms} ms after the network healed"));
    }
    let hs_same = r.handshakes_before == r.handshakes_after;
    if r.scenario != "establish" {
        parts.push(if hs_same {
            "no handshake".to_string()
        } else {
            format!(
                "handshakes A {}→{}, B {}→{}",
                r.handshakes_before.a,
                r.handshakes_after.a,
                r.handshakes_before.b,
                r.handshakes_after.b
            )
        });
    }
    let fp_same = r.fingerprint_a.before == r.fingerprint_a.after;
    if r.scenario == "establish" || !fp_same {
        parts.push(format!("PeerSecret {} on both sides", fp(&r.fingerprint_a)));
    } else {
        parts.push(format!("PeerSecret {} unchanged", fp(&r.fingerprint_a)));
    }
    let in_order = r
        .checks
        .iter()
        .find(|c| c.name.starts_with("every message"))
        .is_some_and(|c| c.passed);
    parts.push(if in_order {
        format!(
            "{}/{} messages exactly once, in order",
            r.messages_delivered, r.messages_sent
        )
    } else {
        format!(
            "{}/{} messages delivered, {} DUPLICATES or out of order",
            r.messages_delivered, r.messages_sent, r.duplicates
        )
    });
    if let Some(path) = &r.path_after {
        parts.push(format!("{path} path"));
    }
    format!("{word} {}: {}", r.scenario, parts.join(", "))
}

/// The summary table of a run.
pub fn summary(reports: &[ScenarioReport]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<22} {:<6} {:>9} {:>13} {:>7} {:<20} {:>7} {:>4} {:<6}",
        "scenario",
        "result",
        "ready ms",
        "handshakes",
        "epoch",
        "PeerSecret A=B",
        "msgs",
        "dup",
        "path"
    );
    for r in reports {
        let ms = r
            .migration_ms
            .or(r.establish_ms)
            .map_or("-".to_string(), |v| v.to_string());
        let hs = format!(
            "{}/{}→{}/{}",
            r.handshakes_before.a,
            r.handshakes_before.b,
            r.handshakes_after.a,
            r.handshakes_after.b
        );
        let epoch = format!("{}→{}", show(r.epoch_before), show(r.epoch_after));
        let same = r.fingerprint_a.after == r.fingerprint_b.after;
        let fp = format!(
            "{}→{}{}",
            short(&r.fingerprint_a.before),
            short(&r.fingerprint_a.after),
            if same { "" } else { " ≠" }
        );
        let _ = writeln!(
            out,
            "{:<22} {:<6} {:>9} {:>13} {:>7} {:<20} {:>7} {:>4} {:<6}",
            r.scenario,
            if r.passed { "PASS" } else { "FAIL" },
            ms,
            hs,
            epoch,
            fp,
            format!("{}/{}", r.messages_delivered, r.messages_sent),
            r.duplicates,
            r.path_after.as_deref().unwrap_or("-"),
        );
    }
    let _ = writeln!(
        out,
        "ready ms: from the start (establish) or the network change to both sides Ready; handshakes A/B before→after"
    );
    let passed = reports.iter().filter(|r| r.passed).count();
    let _ = writeln!(out, "{passed}/{} scenarios passed", reports.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_merge_into_the_timeline_in_time_order() {
        let timeline =
            "      0ms A: B Ready -> Degraded\n     45ms B: A Ready -> ReconnectingInbound";
        let merged = merge_timeline(timeline, &[(0, "A moves".into()), (100, "heal".into())]);
        let lines: Vec<&str> = merged.lines().collect();
        assert_eq!(lines[0], "      0ms ▶ A moves");
        assert!(lines[1].ends_with("Degraded"));
        assert!(lines[3].ends_with("heal"));
    }

    #[test]
    fn scenario_names_round_trip() {
        for s in Scenario::ALL {
            assert_eq!(Scenario::from_name(s.name()), Some(s));
        }
    }
}
