//! PeerSessionEstablishment scenarios on the simulated network, whole nodes, virtual
//! time: direct, relay only, rendezvous only, crossing initiations, a lossy and
//! duplicating path, and an eviction followed by SessionRecovery.

// A panic in a test is a failed test, not a crashed node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use tether_harness::{run_simulation, ClusterBuilder, SimCluster};
use tether_protocol::{PathKind, SessionStatus};
use tether_transport::sim::LinkConditions;

const A: usize = 0;
const B: usize = 1;

/// 40 ms RTT, the demo's default path.
fn wan() -> LinkConditions {
    LinkConditions {
        latency: Duration::from_millis(20),
        ..LinkConditions::default()
    }
}

/// A and B on the WAN path, with a short migration window (eviction comes sooner).
fn pair_with_window(seed: u64, migration_window: Duration) -> ClusterBuilder {
    ClusterBuilder::new(seed, 2)
        .pair(A, B)
        .conditions(wan())
        .presence(tether_presence::Config {
            migration_window,
            ..tether_presence::Config::default()
        })
}

/// Both Ready, then on one committed PeerSecret. Both devices usually initiate at once,
/// and their crossing handshakes may commit in opposite orders: each side's first
/// commit makes it Ready, and the commit rule brings both to the winning generation
/// within about a round trip (the frames each side sends under it).
async fn ready(cluster: &mut SimCluster, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    assert!(
        cluster.run_until(within, |c| c.both_ready(A, B)).await,
        "A and B not Ready within {within:?}:\n{}",
        cluster.timeline(&[A, B], Duration::ZERO)
    );
    loop {
        let a = cluster.peer_status(A, B).await.unwrap();
        let b = cluster.peer_status(B, A).await.unwrap();
        if a.peer_secret == b.peer_secret {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "A and B Ready on different PeerSecrets until {within:?}"
        );
        cluster.run_for(Duration::from_millis(10)).await;
    }
}

/// Both sides hold the same committed session (by fingerprints, never secrets).
async fn assert_same_session(cluster: &SimCluster) -> (u64, u64) {
    let a = cluster.peer_status(A, B).await.unwrap();
    let b = cluster.peer_status(B, A).await.unwrap();
    assert!(a.peer_secret.is_some());
    assert_eq!(a.peer_secret, b.peer_secret, "PeerSecret fingerprints");
    assert_eq!(a.session_keys, b.session_keys, "session key fingerprints");
    assert_eq!(a.epoch, b.epoch, "epochs");
    (a.epoch.unwrap(), a.handshakes)
}

/// Sends `count` messages each way and checks each arrives exactly once, in order.
async fn exchange(cluster: &mut SimCluster, tag: &str, count: usize) {
    let (a, b) = (cluster.id(A), cluster.id(B));
    let before_a = cluster.devices[A].delivered_from(b).len();
    let before_b = cluster.devices[B].delivered_from(a).len();
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
    let done = cluster
        .run_until(Duration::from_secs(30), |c| {
            c.devices[B].delivered_from(a).len() >= before_b + count
                && c.devices[A].delivered_from(b).len() >= before_a + count
        })
        .await;
    assert!(done, "messages not delivered");
    cluster.run_for(Duration::from_millis(500)).await;
    let expect = |side: &str| -> Vec<Vec<u8>> {
        (0..count)
            .map(|i| format!("{tag} {side}{i}").into_bytes())
            .collect()
    };
    assert_eq!(
        cluster.devices[B].delivered_from(a)[before_b..],
        expect("a")[..]
    );
    assert_eq!(
        cluster.devices[A].delivered_from(b)[before_a..],
        expect("b")[..]
    );
}

#[test]
fn establish_over_a_direct_path() {
    let timeline = run_simulation(|| async {
        let mut cluster = ClusterBuilder::new(1, 2)
            .pair(A, B)
            .conditions(wan())
            .start()
            .await;
        ready(&mut cluster, Duration::from_secs(10)).await;
        let (epoch, _) = assert_same_session(&cluster).await;
        assert_eq!(epoch, 1);
        let a = cluster.peer_status(A, B).await.unwrap();
        assert_eq!(a.path, Some(PathKind::Direct));
        exchange(&mut cluster, "direct", 20).await;
        // Traffic is counted on the path kind it took, and nothing went by the relay.
        let a = cluster.peer_status(A, B).await.unwrap();
        let b = cluster.peer_status(B, A).await.unwrap();
        assert!(
            a.counters.direct.frames_sent >= 20,
            "{:?}",
            a.counters.direct
        );
        assert!(
            b.counters.direct.frames_received >= 20,
            "{:?}",
            b.counters.direct
        );
        assert!(b.counters.direct.frames_received <= a.counters.direct.frames_sent);
        assert!(
            a.counters.direct.bytes_sent > a.counters.direct.frames_sent * 20,
            "{:?}",
            a.counters.direct
        );
        assert_eq!(
            (
                a.counters.relay.frames_sent,
                b.counters.relay.frames_received
            ),
            (0, 0)
        );
        assert_eq!(
            (a.counters.handshake_timeouts, b.counters.handshake_timeouts),
            (0, 0)
        );
        cluster.timeline(&[A, B], Duration::ZERO)
    });
    insta::assert_snapshot!(timeline);
}

#[test]
fn establish_when_direct_udp_is_blocked() {
    run_simulation(|| async {
        let mut cluster = ClusterBuilder::new(2, 2)
            .pair(A, B)
            .conditions(wan())
            .block_direct(A, B)
            .start()
            .await;
        ready(&mut cluster, Duration::from_secs(15)).await;
        assert_same_session(&cluster).await;
        let a = cluster.peer_status(A, B).await.unwrap();
        assert_eq!(a.path, Some(PathKind::Relay));
        exchange(&mut cluster, "relayed", 20).await;
        let a = cluster.peer_status(A, B).await.unwrap();
        let b = cluster.peer_status(B, A).await.unwrap();
        assert!(a.counters.relay.frames_sent >= 20, "{:?}", a.counters.relay);
        assert!(
            b.counters.relay.frames_received >= 20,
            "{:?}",
            b.counters.relay
        );
        assert_eq!(
            (
                a.counters.direct.frames_sent,
                b.counters.direct.frames_received
            ),
            (0, 0)
        );
    });
}

#[test]
fn establish_when_only_the_rendezvous_server_knows_the_address() {
    run_simulation(|| async {
        let mut cluster = ClusterBuilder::new(3, 2)
            .pair(A, B)
            .conditions(wan())
            .stale_addresses(A, B)
            .start()
            .await;
        ready(&mut cluster, Duration::from_secs(15)).await;
        // Whatever path came first, the session ends up direct at the real address.
        let mut on_direct = false;
        for _ in 0..40 {
            let a = cluster.peer_status(A, B).await.unwrap();
            if a.path == Some(PathKind::Direct) {
                on_direct = true;
                break;
            }
            cluster.run_for(Duration::from_millis(500)).await;
        }
        assert!(on_direct, "{}", cluster.timeline(&[A, B], Duration::ZERO));
        assert_same_session(&cluster).await;
        exchange(&mut cluster, "hinted", 10).await;
    });
}

/// Seeds of the crossing-initiation scenario (latency and jitter grow with the seed).
const CROSSING_SEEDS: u64 = 20;

#[test]
fn crossing_initiations_converge_on_one_peer_secret_over_many_seeds() {
    for seed in 0..CROSSING_SEEDS {
        run_simulation(|| async move {
            // Zero connect jitter: both devices initiate at the same virtual instant.
            let presence = tether_presence::Config {
                connect_retry_base: Duration::ZERO,
                ..tether_presence::Config::default()
            };
            let mut cluster = ClusterBuilder::new(100 + seed, 2)
                .pair(A, B)
                .conditions(LinkConditions {
                    latency: Duration::from_millis(5 + seed * 7),
                    jitter: Duration::from_millis(seed * 3),
                    ..LinkConditions::default()
                })
                .presence(presence)
                .start()
                .await;
            ready(&mut cluster, Duration::from_secs(15)).await;
            cluster.run_for(Duration::from_secs(2)).await;
            assert_same_session(&cluster).await;
            assert_eq!(
                cluster.status(A, B),
                Some(SessionStatus::Ready),
                "seed {seed}"
            );
            let a = cluster.peer_status(A, B).await.unwrap();
            let b = cluster.peer_status(B, A).await.unwrap();
            println!(
                "seed {seed}: epoch {:?}, handshakes A {} B {}, PeerSecret {}\n{}",
                a.epoch,
                a.handshakes,
                b.handshakes,
                a.peer_secret.map(|f| f.to_string()).unwrap_or_default(),
                cluster.timeline(&[A, B], Duration::ZERO)
            );
        });
    }
}

#[test]
fn lost_and_duplicated_handshake_messages_still_establish() {
    run_simulation(|| async {
        let mut cluster = ClusterBuilder::new(4, 2)
            .pair(A, B)
            .conditions(LinkConditions {
                latency: Duration::from_millis(20),
                loss: 0.2,
                duplicate: 0.2,
                ..LinkConditions::default()
            })
            .start()
            .await;
        ready(&mut cluster, Duration::from_secs(30)).await;
        // Crossing handshakes may commit different generations for a moment; the
        // next authenticated frames settle both on the better one.
        cluster.run_for(Duration::from_secs(5)).await;
        assert_same_session(&cluster).await;
        exchange(&mut cluster, "lossy", 10).await;
    });
}

#[test]
fn eviction_then_recovery_keeps_every_message() {
    let timeline = run_simulation(|| async {
        let mut cluster = pair_with_window(5, Duration::from_secs(10)).start().await;
        ready(&mut cluster, Duration::from_secs(10)).await;
        let (epoch_before, _) = assert_same_session(&cluster).await;
        let fingerprint_before = cluster.peer_status(A, B).await.unwrap().peer_secret;
        cluster.run_for(Duration::from_millis(100)).await;
        let since = cluster.elapsed();
        // Cut A off from B and from the relay: nothing can carry the session.
        cluster.partition(A, B);
        cluster.partition_relay(A);
        let b = cluster.id(B);
        for i in 0..5 {
            cluster
                .node(A)
                .send(b, format!("queued {i}").into_bytes())
                .await
                .unwrap();
        }
        let evicted = cluster
            .run_until(Duration::from_secs(30), |c| {
                c.status(A, B) == Some(SessionStatus::Evicted)
                    || c.status(A, B) == Some(SessionStatus::Recovering)
            })
            .await;
        assert!(evicted, "{}", cluster.timeline(&[A, B], since));
        cluster.heal(A, B);
        cluster.net.heal_all();
        ready(&mut cluster, Duration::from_secs(30)).await;
        cluster.run_for(Duration::from_secs(2)).await;
        let (epoch_after, _) = assert_same_session(&cluster).await;
        assert!(epoch_after > epoch_before, "recovery is a new epoch");
        let fingerprint_after = cluster.peer_status(A, B).await.unwrap().peer_secret;
        assert_ne!(
            fingerprint_after, fingerprint_before,
            "and a new PeerSecret"
        );
        let a = cluster.id(A);
        let expect: Vec<Vec<u8>> = (0..5).map(|i| format!("queued {i}").into_bytes()).collect();
        assert_eq!(cluster.devices[B].delivered_from(a), expect);
        cluster.timeline(&[A, B], since)
    });
    insta::assert_snapshot!(timeline);
}

#[test]
fn a_crashed_and_restarted_device_resynchronises_without_loss() {
    run_simulation(|| async {
        let mut cluster = pair_with_window(6, Duration::from_secs(8)).start().await;
        ready(&mut cluster, Duration::from_secs(10)).await;
        exchange(&mut cluster, "before", 10).await;
        let (epoch_before, _) = assert_same_session(&cluster).await;
        cluster.crash(B);
        let b = cluster.id(B);
        for i in 0..5 {
            cluster
                .node(A)
                .send(b, format!("while down {i}").into_bytes())
                .await
                .unwrap();
        }
        cluster.run_for(Duration::from_secs(2)).await;
        cluster.restart(B).await;
        // B starts from nothing; A evicts the dead session and recovers it.
        let while_down_count = |c: &SimCluster| {
            c.devices[B]
                .delivered_from(c.id(A))
                .iter()
                .filter(|m| m.starts_with(b"while down"))
                .count()
        };
        let recovered = cluster
            .run_until(Duration::from_secs(60), |c| {
                c.both_ready(A, B) && while_down_count(c) >= 5
            })
            .await;
        assert!(recovered, "{}", cluster.timeline(&[A, B], Duration::ZERO));
        let (epoch_after, _) = assert_same_session(&cluster).await;
        assert!(epoch_after > epoch_before || epoch_after == 1);
        let a = cluster.id(A);
        let while_down: Vec<Vec<u8>> = cluster.devices[B]
            .delivered_from(a)
            .into_iter()
            .filter(|m| m.starts_with(b"while down"))
            .collect();
        let expect: Vec<Vec<u8>> = (0..5)
            .map(|i| format!("while down {i}").into_bytes())
            .collect();
        assert_eq!(
            while_down, expect,
            "queued while B was down: once, in order"
        );
        exchange(&mut cluster, "after", 10).await;
    });
}
