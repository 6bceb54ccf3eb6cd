//! SessionMigration scenarios on the simulated network: whole nodes, real quinn and
//! Noise, virtual time. Every scenario checks the invariants: no handshake ran (except
//! where eviction is the point), both sides hold the same PeerSecret and session keys
//! as before, and every message sent during the move arrived exactly once, in order.

// A panic in a test is a failed test, not a crashed node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tether_harness::cluster::DEVICE_PORT;
use tether_harness::{
    run_simulation, ClusterBuilder, GetTap, NodeEvent, PeerStatus, SimCluster, StartTap,
};
use tether_protocol::{DeviceId, PathKind, RelayMessage, SealedFrame, SessionStatus, WireFrame};
use tether_transport::sim::LinkConditions;
use tether_transport::{Endpoint, TransportConfig};

const A: usize = 0;
const B: usize = 1;

/// A path with `rtt` and `loss`.
fn path(rtt_ms: u64, loss: f64) -> LinkConditions {
    LinkConditions {
        latency: Duration::from_millis(rtt_ms / 2),
        loss,
        ..LinkConditions::default()
    }
}

/// What must not change across a migration, recorded before it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Baseline {
    handshakes: (u64, u64),
    epoch: u64,
    peer_secret: String,
    session_keys: String,
}

async fn baseline(cluster: &SimCluster, a: usize, b: usize) -> Baseline {
    let sa = cluster.peer_status(a, b).await.unwrap();
    let sb = cluster.peer_status(b, a).await.unwrap();
    assert_eq!(sa.peer_secret, sb.peer_secret, "PeerSecret fingerprints");
    assert_eq!(sa.session_keys, sb.session_keys, "session key fingerprints");
    assert_eq!(sa.epoch, sb.epoch, "epochs");
    Baseline {
        handshakes: (sa.handshakes, sb.handshakes),
        epoch: sa.epoch.unwrap(),
        peer_secret: sa.peer_secret.unwrap().to_string(),
        session_keys: sa.session_keys.unwrap().to_string(),
    }
}

/// Starts two paired devices and waits until they are Ready and settled.
async fn established(seed: u64, conditions: LinkConditions) -> (SimCluster, Baseline) {
    established_with(
        ClusterBuilder::new(seed, 2)
            .pair(A, B)
            .conditions(conditions),
    )
    .await
}

async fn established_with(builder: ClusterBuilder) -> (SimCluster, Baseline) {
    let mut cluster = builder.start().await;
    let ready = cluster
        .run_until(Duration::from_secs(30), |c| c.both_ready(A, B))
        .await;
    assert!(ready, "{}", cluster.timeline(&[A, B], Duration::ZERO));
    // Let crossing handshakes settle on one generation.
    cluster.run_for(Duration::from_secs(3)).await;
    let base = baseline(&cluster, A, B).await;
    (cluster, base)
}

/// Sends `count` numbered messages each way, tagged.
async fn send_both_ways(cluster: &SimCluster, tag: &str, count: usize) {
    let (a, b) = (cluster.id(A), cluster.id(B));
    for i in 0..count {
        cluster
            .node(A)
            .send(b, format!("{tag} a{i}").into_bytes())
            .await
            .unwrap();
        cluster
            .node(B)
            .send(a, format!("{tag} b{i}").into_bytes())
            .await
            .unwrap();
    }
}

/// Waits until both are Ready again and every tagged message arrived; then checks
/// exactly-once, in order, and the unchanged session.
async fn assert_recovered(
    cluster: &mut SimCluster,
    tag: &str,
    count: usize,
    base: &Baseline,
    within: Duration,
) {
    let (a, b) = (cluster.id(A), cluster.id(B));
    let tagged = |c: &SimCluster, at: usize, from| {
        c.devices[at]
            .delivered_from(from)
            .into_iter()
            .filter(|m| m.starts_with(tag.as_bytes()))
            .count()
    };
    let done = cluster
        .run_until(within, |c| {
            c.both_ready(A, B) && tagged(c, B, a) >= count && tagged(c, A, b) >= count
        })
        .await;
    assert!(
        done,
        "not recovered within {within:?}:\n{}",
        cluster.timeline(&[A, B], Duration::ZERO)
    );
    // Anything duplicated would arrive now.
    cluster.run_for(Duration::from_secs(2)).await;
    let expect = |side: &str| -> Vec<Vec<u8>> {
        (0..count)
            .map(|i| format!("{tag} {side}{i}").into_bytes())
            .collect()
    };
    let got = |at: usize, from| -> Vec<Vec<u8>> {
        cluster.devices[at]
            .delivered_from(from)
            .into_iter()
            .filter(|m| m.starts_with(tag.as_bytes()))
            .collect()
    };
    assert_eq!(got(B, a), expect("a"), "A -> B exactly once, in order");
    assert_eq!(got(A, b), expect("b"), "B -> A exactly once, in order");
    let after = baseline(cluster, A, B).await;
    assert_eq!(&after, base, "same session, no handshake");
    for side in [A, B] {
        let counts = migration_events(cluster, side);
        assert!(
            counts.started >= 1 && counts.started == counts.completed && counts.failed == 0,
            "Presence reports every migration it starts as completed: {counts:?}"
        );
    }
}

/// Presence's migration events in one device's log.
#[derive(Debug, Default)]
struct MigrationEvents {
    started: usize,
    completed: usize,
    failed: usize,
}

fn migration_events(cluster: &SimCluster, side: usize) -> MigrationEvents {
    let mut counts = MigrationEvents::default();
    for (_, event) in &cluster.devices[side].log {
        match event {
            NodeEvent::MigrationStarted { .. } => counts.started += 1,
            NodeEvent::MigrationCompleted { .. } => counts.completed += 1,
            NodeEvent::MigrationFailed { .. } => counts.failed += 1,
            _ => {}
        }
    }
    counts
}

/// Seeds per path: each seed changes the network's randomness (loss, jitter) and the
/// nodes' (keys, timing jitter).
const SEEDS_PER_PATH: u64 = 8;

/// Every scenario runs on these paths, with several seeds each: (path, seed).
fn runs() -> Vec<(&'static str, LinkConditions, u64)> {
    let paths = [
        ("40ms", path(40, 0.0)),
        ("40ms 5% loss", path(40, 0.05)),
        ("200ms", path(200, 0.0)),
        ("200ms 5% loss", path(200, 0.05)),
    ];
    let mut runs = Vec::new();
    for (index, (name, conditions)) in paths.into_iter().enumerate() {
        for seed in 0..SEEDS_PER_PATH {
            runs.push((name, conditions.clone(), index as u64 * 100 + seed));
        }
    }
    runs
}

#[test]
fn single_side_move_on_a_direct_path() {
    let mut timeline = String::new();
    for (name, conditions, seed) in runs() {
        let text = run_simulation(|| async move {
            let (mut cluster, base) = established(10_000 + seed, conditions).await;
            let since = cluster.elapsed();
            cluster.change_address(A).await.unwrap();
            send_both_ways(&cluster, "move", 10).await;
            assert_recovered(&mut cluster, "move", 10, &base, Duration::from_secs(20)).await;
            let status = cluster.peer_status(B, A).await.unwrap();
            assert_eq!(status.path, Some(PathKind::Direct));
            assert_eq!(
                status.remote.map(|r| r.ip()),
                Some(cluster.devices[A].ip),
                "B reaches A at its new address"
            );
            cluster.timeline(&[A, B], since)
        });
        if name == "40ms" && seed == 0 {
            timeline = text;
        }
    }
    insta::assert_snapshot!(timeline);
}

#[test]
fn direct_path_blocked_after_the_move_uses_the_relay() {
    let mut timeline = String::new();
    for (name, conditions, seed) in runs() {
        let text = run_simulation(|| async move {
            let (mut cluster, base) = established(20_000 + seed, conditions).await;
            let since = cluster.elapsed();
            cluster.block_direct(A, B);
            cluster.change_address(A).await.unwrap();
            send_both_ways(&cluster, "relay", 10).await;
            assert_recovered(&mut cluster, "relay", 10, &base, Duration::from_secs(25)).await;
            let status = cluster.peer_status(A, B).await.unwrap();
            assert_eq!(status.path, Some(PathKind::Relay));
            cluster.timeline(&[A, B], since)
        });
        if name == "40ms" && seed == 0 {
            timeline = text;
        }
    }
    insta::assert_snapshot!(timeline);
}

#[test]
fn both_sides_move_at_once_and_find_each_other() {
    let mut timeline = String::new();
    for (name, conditions, seed) in runs() {
        let text = run_simulation(|| async move {
            let (mut cluster, base) = established(30_000 + seed, conditions).await;
            let since = cluster.elapsed();
            cluster.change_address(A).await.unwrap();
            cluster.change_address(B).await.unwrap();
            send_both_ways(&cluster, "both", 10).await;
            assert_recovered(&mut cluster, "both", 10, &base, Duration::from_secs(25)).await;
            // The relay may carry the session first; the direct path takes over.
            let mut path = None;
            for _ in 0..20 {
                path = cluster.peer_status(A, B).await.unwrap().path;
                if path == Some(PathKind::Direct) {
                    break;
                }
                cluster.run_for(Duration::from_millis(500)).await;
            }
            assert_eq!(path, Some(PathKind::Direct));
            assert_eq!(baseline(&cluster, A, B).await, base);
            cluster.timeline(&[A, B], since)
        });
        if name == "40ms" && seed == 0 {
            timeline = text;
        }
    }
    insta::assert_snapshot!(timeline);
}

#[test]
fn window_expiry_evicts_then_recovers_without_losing_messages() {
    let mut timeline = String::new();
    for (name, conditions, seed) in runs() {
        let text = run_simulation(|| async move {
            let presence = tether_presence::Config {
                migration_window: Duration::from_secs(8),
                ..tether_presence::Config::default()
            };
            let (mut cluster, base) = established_with(
                ClusterBuilder::new(40_000 + seed, 2)
                    .pair(A, B)
                    .conditions(conditions)
                    .presence(presence),
            )
            .await;
            let since = cluster.elapsed();
            // A moves into a network that reaches neither B nor the relay.
            cluster.partition(A, B);
            cluster.partition_relay(A);
            cluster.change_address(A).await.unwrap();
            send_both_ways(&cluster, "evict", 10).await;
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
            assert!(evicted, "{}", cluster.timeline(&[A, B], since));
            let failed = cluster.devices[A].log.iter().find_map(|(_, e)| match e {
                NodeEvent::MigrationFailed {
                    outbound, duration, ..
                } => Some((*outbound, *duration)),
                _ => None,
            });
            let window = Duration::from_secs(8);
            assert!(
                failed.is_some_and(|(outbound, after)| outbound
                    && after >= window
                    && after < window + Duration::from_millis(10)),
                "Presence reports A's migration failed when its window expired: {failed:?}"
            );
            cluster.net.heal_all();
            let (a, b) = (cluster.id(A), cluster.id(B));
            let done = cluster
                .run_until(Duration::from_secs(40), |c| {
                    c.both_ready(A, B)
                        && c.devices[B].delivered_from(a).len() >= 10
                        && c.devices[A].delivered_from(b).len() >= 10
                })
                .await;
            assert!(done, "{}", cluster.timeline(&[A, B], since));
            cluster.run_for(Duration::from_secs(2)).await;
            let expect = |side: &str| -> Vec<Vec<u8>> {
                (0..10)
                    .map(|i| format!("evict {side}{i}").into_bytes())
                    .collect()
            };
            assert_eq!(cluster.devices[B].delivered_from(a), expect("a"));
            assert_eq!(cluster.devices[A].delivered_from(b), expect("b"));
            let after = baseline(&cluster, A, B).await;
            assert!(after.epoch > base.epoch, "recovery is a new epoch");
            assert_ne!(after.peer_secret, base.peer_secret, "with a new PeerSecret");
            cluster.timeline(&[A, B], since)
        });
        if name == "40ms" && seed == 0 {
            timeline = text;
        }
    }
    insta::assert_snapshot!(timeline);
}

#[test]
fn the_accepting_side_moves() {
    run_simulation(|| async {
        // Only A knows B's address at first: A dials, B accepts. Then B moves.
        let (mut cluster, base) = established_with(
            ClusterBuilder::new(50, 2)
                .pair(A, B)
                .conditions(path(40, 0.0))
                .stale_address_of(B, A),
        )
        .await;
        let status = cluster.peer_status(B, A).await.unwrap();
        assert_eq!(status.path, Some(PathKind::Direct));
        cluster.change_address(B).await.unwrap();
        send_both_ways(&cluster, "acceptor", 10).await;
        assert_recovered(&mut cluster, "acceptor", 10, &base, Duration::from_secs(20)).await;
    });
}

#[test]
fn a_second_change_during_the_migration_and_back_to_the_old_network() {
    run_simulation(|| async {
        let (mut cluster, base) = established(60, path(40, 0.0)).await;
        cluster.change_address(A).await.unwrap();
        cluster.run_for(Duration::from_millis(30)).await;
        // Flapping WiFi: another change before the first migration completed.
        cluster.change_address(A).await.unwrap();
        send_both_ways(&cluster, "flap", 5).await;
        assert_recovered(&mut cluster, "flap", 5, &base, Duration::from_secs(20)).await;
        // And back to the first network.
        cluster.change_address_to(A, 0).await.unwrap();
        send_both_ways(&cluster, "back", 5).await;
        assert_recovered(&mut cluster, "back", 5, &base, Duration::from_secs(20)).await;
    });
}

#[test]
fn the_receiving_side_moves_while_the_mover_is_still_reconnecting() {
    run_simulation(|| async {
        let (mut cluster, base) = established(70, path(200, 0.0)).await;
        cluster.change_address(A).await.unwrap();
        // Before A's ping can arrive (100 ms one way), B moves too.
        cluster.run_for(Duration::from_millis(50)).await;
        assert_eq!(
            cluster.status(A, B),
            Some(SessionStatus::ReconnectingOutbound)
        );
        cluster.change_address(B).await.unwrap();
        send_both_ways(&cluster, "crossed", 10).await;
        assert_recovered(&mut cluster, "crossed", 10, &base, Duration::from_secs(25)).await;
    });
}

#[test]
fn a_device_with_fifty_peers_moves_and_every_session_recovers() {
    run_simulation(|| async {
        const PEERS: usize = 50;
        let mut builder = ClusterBuilder::new(80, PEERS + 1).conditions(path(40, 0.0));
        for peer in 1..=PEERS {
            builder = builder.pair(0, peer);
        }
        let mut cluster = builder.start().await;
        let all_ready = |c: &SimCluster| {
            (1..=PEERS).all(|p| {
                c.status(0, p) == Some(SessionStatus::Ready)
                    && c.status(p, 0) == Some(SessionStatus::Ready)
            })
        };
        assert!(cluster.run_until(Duration::from_secs(60), all_ready).await);
        cluster.run_for(Duration::from_secs(3)).await;
        let mut before = Vec::new();
        for p in 1..=PEERS {
            before.push(baseline(&cluster, 0, p).await);
        }
        let since = cluster.elapsed();
        cluster.change_address(0).await.unwrap();
        cluster.run_for(Duration::from_millis(100)).await;
        assert!(
            cluster.run_until(Duration::from_secs(30), all_ready).await,
            "{}",
            cluster.timeline(&[0], since)
        );
        cluster.run_for(Duration::from_secs(2)).await;
        for p in 1..=PEERS {
            assert_eq!(baseline(&cluster, 0, p).await, before[p - 1], "peer {p}");
        }
    });
}

/// The sealed frames A sent B through the relay (live forwards and queued envelopes),
/// as an attacker who watched the relay would have recorded them.
fn sealed_frames_to(tap: &[Vec<u8>], to: DeviceId) -> Vec<SealedFrame> {
    let sealed = |bytes: &[u8]| match tether_protocol::decode(bytes) {
        Ok(WireFrame::Sealed(frame)) => Some(frame),
        _ => None,
    };
    tap.iter()
        .filter_map(|bytes| match tether_protocol::decode(bytes).ok()? {
            WireFrame::Relay(RelayMessage::Forward { to: t, frame }) if t == to => sealed(&frame),
            WireFrame::Relay(RelayMessage::Enqueue {
                to: t, envelope, ..
            }) if t == to => sealed(&envelope),
            _ => None,
        })
        .collect()
}

/// Frames that claim A's session but were sealed by someone without its keys: the
/// recorded frames with their ciphertext flipped (a forged PeerSecret tag inside cannot
/// be told apart from any other forgery without the keys), and fresh nonces far ahead.
fn forged_from(recorded: &[SealedFrame]) -> Vec<SealedFrame> {
    recorded
        .iter()
        .map(|frame| {
            let mut forged = frame.clone();
            forged.nonce = frame.nonce + 1_000_000;
            for byte in &mut forged.ciphertext {
                *byte ^= 0x5a;
            }
            forged
        })
        .collect()
}

/// Spoofed and replayed migration pings (invariant 4). A migrates through the relay
/// while an attacker records every frame the relay carries to B. Later, from its own
/// address, the attacker opens a direct link to B and sends B every recorded frame
/// (the migration pings among them) and forged ones. B must reject every forgery and
/// every frame it had already accepted, stay Ready on A's real address, send the
/// attacker at most three times what it got from it, and the session must go on
/// exactly once, in order, without a handshake.
#[test]
fn spoofed_and_replayed_migration_pings_are_rejected() {
    for (name, conditions, seed) in runs() {
        run_simulation(|| async move {
            let (mut cluster, base) = established(90_000 + seed, conditions.clone()).await;
            let b = cluster.id(B);
            cluster.relay.addr.send(StartTap).await.unwrap();
            cluster.block_direct(A, B);
            cluster.change_address(A).await.unwrap();
            send_both_ways(&cluster, "recorded", 5).await;
            assert_recovered(&mut cluster, "recorded", 5, &base, Duration::from_secs(25)).await;
            let tap = cluster.relay.addr.send(GetTap).await.unwrap();
            let recorded = sealed_frames_to(&tap, b);
            assert!(
                recorded.len() >= 5,
                "{name}: the relay carried A's migration ({} frames)",
                recorded.len()
            );
            // The direct path opens again and takes the session back from the relay.
            cluster.unblock_direct(A, B);
            let mut direct = false;
            for _ in 0..40 {
                let on = |status: Option<PeerStatus>| {
                    status.is_some_and(|s| s.path == Some(PathKind::Direct))
                };
                if on(cluster.peer_status(A, B).await) && on(cluster.peer_status(B, A).await) {
                    direct = true;
                    break;
                }
                cluster.run_for(Duration::from_millis(500)).await;
            }
            assert!(direct, "{name}: the direct path takes over from the relay");
            // The attack starts on a settled session: Ready on the direct path on both
            // sides, with no status change for two seconds (the upgrade's spare links
            // may still be closing).
            let mut settled = false;
            for _ in 0..10 {
                let quiet_since = cluster.elapsed();
                cluster.run_for(Duration::from_secs(2)).await;
                let ready_direct = |status: Option<PeerStatus>| {
                    status.is_some_and(|s| {
                        s.path == Some(PathKind::Direct) && s.status == Some(SessionStatus::Ready)
                    })
                };
                if cluster.timeline(&[A, B], quiet_since).is_empty()
                    && ready_direct(cluster.peer_status(A, B).await)
                    && ready_direct(cluster.peer_status(B, A).await)
                {
                    settled = true;
                    break;
                }
            }
            assert!(settled, "{name}: the session settles on the direct path");
            let before = cluster.peer_status(B, A).await.unwrap();
            let rejected_before = cluster.node(B).counters().await.rejected_frames;

            // The attacker, on a network of its own.
            let attacker_ip = IpAddr::V4(Ipv4Addr::new(10, 66, 0, 1));
            let host = cluster.net.add_host("attacker", [attacker_ip]);
            let endpoint = Endpoint::bind_sim(
                &cluster.net,
                host,
                SocketAddr::new(attacker_ip, DEVICE_PORT),
                TransportConfig::seeded(seed ^ 0xa77ac),
            )
            .await
            .unwrap();
            let since = cluster.elapsed();
            let b_addr = SocketAddr::new(cluster.devices[B].ip, DEVICE_PORT);
            let mut link = endpoint.dial(b_addr).await.unwrap();
            let attack: Vec<SealedFrame> = recorded
                .iter()
                .cloned()
                .chain(forged_from(&recorded))
                .collect();
            for frame in &attack {
                let bytes = tether_protocol::encode(&WireFrame::Sealed(frame.clone())).unwrap();
                link.send_frame(bytes.into()).await.unwrap();
            }
            // Whatever B says to the attacker while the attack lands.
            let listen = async {
                let mut answered = 0_usize;
                while let Ok(Ok(Some(frame))) =
                    tokio::time::timeout(Duration::from_secs(3), link.recv_frame()).await
                {
                    answered += frame.len();
                }
                answered
            };
            let (_, answered) = tokio::join!(cluster.run_for(Duration::from_secs(3)), listen);
            let rejected = cluster.node(B).counters().await.rejected_frames - rejected_before;
            // Every forgery is rejected, and so is every frame B had already accepted.
            // A recorded frame the relay never got to deliver (B was not connected to
            // it at the time) is authentic news to B, and B may answer its sender, but
            // only within the anti-amplification budget of an unvalidated address.
            let forged = recorded.len() as u64;
            assert!(
                (forged..=attack.len() as u64).contains(&rejected),
                "{name}: {rejected} of {} frames rejected ({forged} forged)",
                attack.len()
            );
            let recorded_bytes: usize = recorded.iter().map(|f| f.ciphertext.len()).sum();
            assert!(
                answered <= 3 * recorded_bytes,
                "{name}: B sent the attacker {answered} bytes for {recorded_bytes}"
            );
            if rejected == attack.len() as u64 {
                assert_eq!(answered, 0, "{name}: nothing authentic, no answer");
            }
            let after = cluster.peer_status(B, A).await.unwrap();
            assert_eq!(after.path, Some(PathKind::Direct), "{name}");
            assert_eq!(
                after.remote, before.remote,
                "{name}: B still reaches A where it is"
            );
            assert_eq!(
                cluster.timeline(&[A, B], since),
                "",
                "{name}: no status changed on either side"
            );
            send_both_ways(&cluster, "after", 10).await;
            assert_recovered(&mut cluster, "after", 10, &base, Duration::from_secs(20)).await;
        });
    }
}
