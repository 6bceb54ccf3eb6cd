//! The NAT traversal matrix: two paired devices, each on the public network or behind a
//! NAT of one kind, on the simulated network (real quinn and Noise, virtual time).
//! One run of a [`Cell`] establishes the session and, for the move scenarios, changes
//! one or both devices' networks (each new network with a NAT of the same kind), then
//! says whether and when the session reached a direct path, whether any handshake ran
//! after the first, and whether every message arrived once and in order.
//!
//! The test (`harness/tests/nat_matrix.rs`) checks every cell's outcome against
//! [`Cell::expects_direct`] over a few seeds; the benchmark (`cargo bench -p
//! tether-harness --bench nat`) prints the table of `docs/benchmarks.md` over many.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use tether_protocol::{PathKind, SessionStatus};
use tether_transport::sim::{LinkConditions, NatBehavior};

use crate::cluster::nat_public_ip_on;
use crate::{ClusterBuilder, NodeEvent, SimCluster};

/// The two devices of every run.
const A: usize = 0;
const B: usize = 1;

/// Polling step while timing a path change: a fraction of any RTT the matrix runs at.
const STEP: Duration = Duration::from_millis(1);

/// How long a run waits for the relay, a session, or a direct path before it calls
/// the attempt failed: far beyond any expected time, short enough to keep runs cheap.
const PATIENCE: Duration = Duration::from_secs(10);

/// How long a cell expected to stay on the relay is watched for a direct path: longer
/// than the direct probe interval, so a late upgrade would be seen.
const RELAY_WATCH: Duration = Duration::from_secs(6);

/// Messages each device sends while the path changes, and again once it settled.
const MESSAGES: u8 = 5;

/// The classic NAT kinds (RFC 4787 mapping and filtering behaviours).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NatKind {
    /// Endpoint-independent mapping and filtering.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering.
    RestrictedCone,
    /// Endpoint-independent mapping, address-and-port-dependent filtering (Linux
    /// masquerade while it keeps the port).
    PortRestrictedCone,
    /// Address-and-port-dependent mapping and filtering.
    Symmetric,
}

impl NatKind {
    /// Every kind, from the most permissive to the least.
    pub const ALL: [NatKind; 4] = [
        NatKind::FullCone,
        NatKind::RestrictedCone,
        NatKind::PortRestrictedCone,
        NatKind::Symmetric,
    ];

    /// The simulated NAT of this kind (no timeout, no rebinding, no hairpinning).
    pub fn behavior(self) -> NatBehavior {
        match self {
            NatKind::FullCone => NatBehavior::full_cone(),
            NatKind::RestrictedCone => NatBehavior::restricted_cone(),
            NatKind::PortRestrictedCone => NatBehavior::port_restricted_cone(),
            NatKind::Symmetric => NatBehavior::symmetric(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            NatKind::FullCone => "full cone",
            NatKind::RestrictedCone => "restricted cone",
            NatKind::PortRestrictedCone => "port-restricted",
            NatKind::Symmetric => "symmetric",
        }
    }
}

/// What happens after the session is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scenario {
    /// Nothing: the time is counted from both devices being connected to the relay.
    Establish,
    /// Device A changes networks; the time is counted from the change.
    OneMoves,
    /// Both devices change networks at the same moment; counted from the change.
    BothMove,
}

impl Scenario {
    /// Every scenario.
    pub const ALL: [Scenario; 3] = [Scenario::Establish, Scenario::OneMoves, Scenario::BothMove];
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scenario::Establish => "establish",
            Scenario::OneMoves => "one moves",
            Scenario::BothMove => "both move",
        })
    }
}

/// One cell of the matrix: what is in front of each device, and what happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cell {
    /// The NAT in front of device A; `None`: A is on the public network.
    pub a: Option<NatKind>,
    /// The NAT in front of device B.
    pub b: Option<NatKind>,
    /// What happens after the session is up.
    pub scenario: Scenario,
}

impl Cell {
    /// The matrix: each kind on one side (the other public), each kind on both sides,
    /// and a symmetric NAT against each other kind; every scenario for each.
    pub fn all() -> Vec<Cell> {
        let mut pairs: Vec<(Option<NatKind>, Option<NatKind>)> = Vec::new();
        for kind in NatKind::ALL {
            pairs.push((Some(kind), None));
        }
        for kind in NatKind::ALL {
            pairs.push((Some(kind), Some(kind)));
        }
        for kind in [
            NatKind::FullCone,
            NatKind::RestrictedCone,
            NatKind::PortRestrictedCone,
        ] {
            pairs.push((Some(NatKind::Symmetric), Some(kind)));
        }
        let mut cells = Vec::new();
        for (a, b) in pairs {
            for scenario in Scenario::ALL {
                cells.push(Cell { a, b, scenario });
            }
        }
        cells
    }

    /// Whether the session must reach a direct path in this cell.
    ///
    /// A device on the public network is reached at its own address, whatever is in
    /// front of the other. Behind endpoint-independent mappings, the address the relay
    /// sees is the one the peer must use, and both devices send to each other's at
    /// about the same moment, which opens every filter. A symmetric NAT gives the
    /// flow towards the peer a port nobody announced: the other side can only answer
    /// it if its filter admits any port of the symmetric NAT's address (full cone,
    /// restricted cone), not behind a port-restricted or another symmetric NAT, where
    /// the session stays on the relay.
    pub fn expects_direct(&self) -> bool {
        let (Some(a), Some(b)) = (self.a, self.b) else {
            return true;
        };
        let hard = |k: NatKind| matches!(k, NatKind::PortRestrictedCone | NatKind::Symmetric);
        let symmetric = a == NatKind::Symmetric || b == NatKind::Symmetric;
        !(symmetric && hard(a) && hard(b))
    }

    /// "A: symmetric, B: public" and the like.
    pub fn sides(&self) -> String {
        let side = |k: Option<NatKind>| k.map_or("public", NatKind::name);
        format!("{} / {}", side(self.a), side(self.b))
    }
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, {}", self.sides(), self.scenario)
    }
}

/// What one run of a cell saw.
#[derive(Debug, Clone)]
pub struct CellRun {
    /// The cell.
    pub cell: Cell,
    /// The seed.
    pub seed: u64,
    /// From the reference moment (both on the relay, or the move) until both sides'
    /// sessions were bound to a direct path; `None` if they never were.
    pub direct_after: Option<Duration>,
    /// Establishment only: from both sessions Ready (over the relay, unless a direct
    /// path came first) until both were bound to a direct path: the upgrade alone.
    pub upgrade_after: Option<Duration>,
    /// Whether both sessions were Ready at the end.
    pub ready: bool,
    /// Completed handshakes on each side at the end (1: none after the first).
    pub handshakes: (u64, u64),
    /// Whether a session was evicted at any time.
    pub evicted: bool,
    /// Whether every message of both sides arrived exactly once and in order.
    pub exactly_once: bool,
    /// Both devices' phase timelines, to explain a failure.
    pub timeline: String,
}

impl CellRun {
    /// Whether the run kept every promise: Ready at the end, one handshake per side,
    /// no eviction, exactly-once delivery, and direct exactly when expected.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.ready {
            problems.push("not Ready at the end".to_owned());
        }
        if self.handshakes != (1, 1) {
            problems.push(format!("handshakes {:?}, not (1, 1)", self.handshakes));
        }
        if self.evicted {
            problems.push("a session was evicted".to_owned());
        }
        if !self.exactly_once {
            problems.push("messages not delivered exactly once in order".to_owned());
        }
        match (self.cell.expects_direct(), self.direct_after) {
            (true, None) => problems.push("never on a direct path".to_owned()),
            (false, Some(after)) => {
                problems.push(format!("direct after {after:?} where none was expected"))
            }
            _ => {}
        }
        problems
    }
}

/// Where device `i` is reached from outside its network now: its NAT's public address
/// on its current network, or its own.
fn public_ip(cluster: &SimCluster, i: usize) -> IpAddr {
    let device = &cluster.devices[i];
    match device.nat {
        Some(_) => nat_public_ip_on(i, device.network),
        None => device.ip,
    }
}

/// Whether both sessions are bound to a direct path that reaches the peer where it is
/// now (not a path to where it was before it moved).
async fn both_direct(cluster: &SimCluster) -> bool {
    for (side, peer) in [(A, B), (B, A)] {
        let Some(status) = cluster.peer_status(side, peer).await else {
            return false;
        };
        let current = status.remote.map(|r| r.ip()) == Some(public_ip(cluster, peer));
        if status.path != Some(PathKind::Direct) || !current {
            return false;
        }
    }
    true
}

async fn both_on_relay(cluster: &SimCluster) -> bool {
    for i in [A, B] {
        let Some(node) = cluster.devices[i].node.as_ref() else {
            return false;
        };
        if !node.server_client_counters().await.0.connection.connected {
            return false;
        }
    }
    true
}

/// Steps until `condition` holds or `within` passes; the time it held, if it did.
async fn step_until<F>(
    cluster: &mut SimCluster,
    within: Duration,
    mut condition: F,
) -> Option<Duration>
where
    F: for<'c> FnMut(
        &'c SimCluster,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + 'c>>,
{
    let start = cluster.elapsed();
    loop {
        if condition(cluster).await {
            return Some(cluster.elapsed());
        }
        if cluster.elapsed() - start >= within {
            return None;
        }
        cluster.run_for(STEP).await;
    }
}

async fn send_round(cluster: &SimCluster, round: u8) {
    for i in 0..MESSAGES {
        let payload = vec![round, i];
        for (from, to) in [(A, B), (B, A)] {
            if let Some(node) = cluster.devices[from].node.as_ref() {
                // A refused send shows up as a missing message.
                let _ = node.send(cluster.id(to), payload.clone()).await;
            }
        }
    }
}

/// Runs `cell` once with `seed`, every link (device to device, device to relay) with
/// round-trip time `rtt`.
pub async fn run(cell: Cell, seed: u64, rtt: Duration) -> CellRun {
    run_with_relay_at(cell, seed, rtt, [rtt / 2, rtt / 2]).await
}

/// [`run`], with device A and device B `relay_one_way[0]` and `relay_one_way[1]` (one
/// way) from the relay: the server's introduction then reaches the two at different
/// moments, and their dials no longer leave at the same time.
pub async fn run_with_relay_at(
    cell: Cell,
    seed: u64,
    rtt: Duration,
    relay_one_way: [Duration; 2],
) -> CellRun {
    let mut builder = ClusterBuilder::new(seed, 2)
        .pair(A, B)
        .conditions(LinkConditions {
            latency: rtt / 2,
            ..LinkConditions::default()
        });
    for (i, kind) in [(A, cell.a), (B, cell.b)] {
        if let Some(kind) = kind {
            builder = builder.behind_nat_of(i, kind.behavior());
        }
    }
    let mut cluster = builder.start().await;
    for (i, latency) in [A, B].into_iter().zip(relay_one_way) {
        cluster.net.set_conditions(
            cluster.devices[i].host,
            cluster.relay_host,
            LinkConditions {
                latency,
                ..LinkConditions::default()
            },
        );
    }
    let on_relay = step_until(&mut cluster, PATIENCE, |c| Box::pin(both_on_relay(c))).await;
    let mut direct_after = None;
    let mut upgrade_after = None;
    let mut rounds = 0u8;
    if let Some(on_relay) = on_relay {
        let watch = if cell.expects_direct() {
            PATIENCE
        } else {
            RELAY_WATCH
        };
        match cell.scenario {
            Scenario::Establish => {
                let ready = step_until(&mut cluster, PATIENCE, |c| {
                    Box::pin(std::future::ready(c.both_ready(A, B)))
                })
                .await;
                let direct = step_until(&mut cluster, watch, |c| Box::pin(both_direct(c))).await;
                direct_after = direct.map(|at| at - on_relay);
                upgrade_after = direct.zip(ready).map(|(direct, ready)| direct - ready);
            }
            Scenario::OneMoves | Scenario::BothMove => {
                // Settle first: the session up, and on a direct path where one is
                // expected, so the move starts from the usual state.
                cluster.run_until(PATIENCE, |c| c.both_ready(A, B)).await;
                step_until(&mut cluster, watch, |c| Box::pin(both_direct(c))).await;
                let moved_at = cluster.elapsed();
                let movers: &[usize] = if cell.scenario == Scenario::BothMove {
                    &[A, B]
                } else {
                    &[A]
                };
                for &i in movers {
                    // A failed move shows up as a session that never recovers.
                    let _ = cluster.change_address(i).await;
                }
                send_round(&cluster, rounds).await;
                rounds += 1;
                let direct = step_until(&mut cluster, watch, |c| Box::pin(both_direct(c))).await;
                direct_after = direct.map(|at| at - moved_at);
            }
        }
    }
    cluster.run_until(PATIENCE, |c| c.both_ready(A, B)).await;
    send_round(&cluster, rounds).await;
    rounds += 1;
    cluster.run_for(Duration::from_secs(3)).await;
    let ready = cluster.both_ready(A, B);
    let mut handshakes = (0, 0);
    if let Some(s) = cluster.peer_status(A, B).await {
        handshakes.0 = s.handshakes;
    }
    if let Some(s) = cluster.peer_status(B, A).await {
        handshakes.1 = s.handshakes;
    }
    let expected: Vec<Vec<u8>> = (0..rounds)
        .flat_map(|r| (0..MESSAGES).map(move |i| vec![r, i]))
        .collect();
    let exactly_once = [(A, B), (B, A)]
        .iter()
        .all(|&(side, peer)| cluster.devices[side].delivered_from(cluster.id(peer)) == expected);
    let evicted = cluster.devices.iter().any(|d| {
        d.log.iter().any(|(_, e)| {
            matches!(
                e,
                NodeEvent::Status {
                    to: SessionStatus::Evicted,
                    ..
                }
            )
        })
    });
    CellRun {
        cell,
        seed,
        direct_after,
        upgrade_after,
        ready,
        handshakes,
        evicted,
        exactly_once,
        timeline: cluster.timeline(&[A, B], Duration::ZERO),
    }
}
