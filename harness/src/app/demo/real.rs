//! `tether demo --real`: the single-side move over real UDP sockets on loopback, with
//! a relay and two nodes in this process on a normal (not paused) runtime.

use super::recorder::{both_ready_again, delivered, messages, reported, Recorder, Snap};
use super::{DemoOptions, ScenarioReport, A, B, BURST};
use crate::app::metrics::{millis, path_name};
use crate::hub::{phase_timeline, NodeEvent};
use crate::node::{Node, NodeConfig, NodePeer, PeerStatus, ServerInfo};
use crate::relay_server::RelayServer;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::net::SocketAddr;
use std::time::Duration;
use tether_crypto::{RelationshipKey, StaticKeypair};
use tether_direct_connection::Limits;
use tether_protocol::{DeviceId, PathKind, SessionStatus};
use tether_rcs::{Admission, RelayServerConfig};
use tether_transport::{Endpoint, TransportConfig};

/// Longest a single-side move on loopback may take until both sides have completed it
/// (the mover its outbound migration, the peer its inbound one). Loopback round trips
/// take well under a millisecond; a second leaves room for a loaded machine and still
/// fails a reconnect that waits out a timeout (the 10 s connect timeout, for one).
const REAL_MIGRATION_BOUND: Duration = Duration::from_secs(1);

/// When each side's last migration completed (Presence's event), since `since`.
fn migration_completed_at(log: &[(Duration, NodeEvent)], since: Duration) -> Option<Duration> {
    log.iter()
        .filter(|(at, event)| *at >= since && matches!(event, NodeEvent::MigrationCompleted { .. }))
        .map(|(at, _)| at.saturating_sub(since))
        .next_back()
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

/// The same one-line-per-event timeline as [`crate::cluster::SimCluster::timeline`], for
/// real devices.
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
    let keys = [
        StaticKeypair::generate(&mut rng),
        StaticKeypair::generate(&mut rng),
    ];
    let admitted = keys
        .iter()
        .map(|k| DeviceId(*k.public().as_bytes()))
        .collect();
    let relay_config =
        RelayServerConfig::new(relay_key, [seed as u8; 32], Admission::Allowlist(admitted));
    let relay =
        RelayServer::start(relay_endpoint, relay_config).map_err(|e| err("relay server", &e))?;
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
    let unix_ms = crate::app::node::unix_ms();
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
            unix_ms_at_start: unix_ms,
            // Bound to one loopback address each: nothing to announce in its place.
            interfaces: Vec::new(),
            durable: None,
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
    let completed = [A, B].map(|side| migration_completed_at(&devices[side].log, since));
    let slowest = completed[0].zip(completed[1]).map(|(a, b)| a.max(b));
    rec.check(
        "both sides completed the migration in time",
        slowest.is_some_and(|at| at <= REAL_MIGRATION_BOUND),
        format!(
            "A's outbound at {}, B's inbound at {} (bound {} ms)",
            completed[0].map_or("-".into(), |at| format!("{} ms", millis(at))),
            completed[1].map_or("-".into(), |at| format!("{} ms", millis(at))),
            millis(REAL_MIGRATION_BOUND)
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
        d.node.abort();
    }
    relay.addr.do_send(tether_protocol::Shutdown);
}
