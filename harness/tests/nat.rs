//! Two devices behind NATs of their own, on the simulated network: neither can reach the
//! other's interface address, so the session starts over the relay. The relay tells each
//! device where it sees it (its reflexive address, the NAT's public side); while on the
//! relay, the sessions exchange `Candidates` and probe each other's addresses at once,
//! and the session moves to a direct path through both NATs without a handshake and
//! without losing or repeating a message.
//!
//! These NATs map and filter independently of the endpoint (RFC 4787 EIM/EIF), the kind
//! hole punching is easiest for; `nat_matrix.rs` covers every other kind.

// A panic in a test is a failed test, not a crashed node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use tether_harness::cluster::{nat_public_ip, nat_public_ip_on};
use tether_harness::{run_simulation, ClusterBuilder, NodeEvent, SimCluster};
use tether_protocol::{PathKind, SessionStatus};
use tether_transport::sim::LinkConditions;

const A: usize = 0;
const B: usize = 1;

/// 40 ms between the devices, and to the relay.
fn wan() -> LinkConditions {
    LinkConditions {
        latency: Duration::from_millis(20),
        ..LinkConditions::default()
    }
}

/// The path each side's session is bound to, as its status says.
async fn paths(cluster: &SimCluster) -> (Option<PathKind>, Option<PathKind>) {
    let a = cluster.peer_status(A, B).await.and_then(|s| s.path);
    let b = cluster.peer_status(B, A).await.and_then(|s| s.path);
    (a, b)
}

/// Steps in 10 ms slices until both sessions are bound to a direct path, or `within`.
async fn until_direct(cluster: &mut SimCluster, within: Duration) -> Option<Duration> {
    let start = cluster.elapsed();
    while cluster.elapsed() - start < within {
        if paths(cluster).await == (Some(PathKind::Direct), Some(PathKind::Direct)) {
            return Some(cluster.elapsed());
        }
        cluster.run_for(Duration::from_millis(10)).await;
    }
    None
}

#[test]
fn two_devices_behind_nats_move_from_the_relay_to_a_direct_path() {
    for seed in 0..20 {
        run_simulation(|| async move {
            let mut cluster = ClusterBuilder::new(50_000 + seed, 2)
                .pair(A, B)
                .behind_nat(A)
                .behind_nat(B)
                .conditions(wan())
                .start()
                .await;
            assert!(
                cluster
                    .run_until(Duration::from_secs(10), |c| c.both_ready(A, B))
                    .await,
                "seed {seed}: no session at all"
            );
            let ready_at = cluster.elapsed();
            let direct_at = until_direct(&mut cluster, Duration::from_secs(10)).await;
            let timeline = cluster.timeline(&[A, B], Duration::ZERO);
            let direct_at =
                direct_at.unwrap_or_else(|| panic!("seed {seed}: never direct\n{timeline}"));
            // The direct link goes through both NATs: each side reaches the other at its
            // NAT's public address.
            for (side, peer) in [(A, B), (B, A)] {
                let status = cluster.peer_status(side, peer).await.unwrap();
                let remote = status.remote.unwrap();
                assert_eq!(remote.ip(), nat_public_ip(peer), "seed {seed}\n{timeline}");
                assert_eq!(status.handshakes, 1, "seed {seed}: one handshake");
            }
            // Messages both ways arrive once, in order, on the direct path.
            for i in 0..5u8 {
                cluster.node(A).send(cluster.id(B), vec![i]).await.unwrap();
                cluster.node(B).send(cluster.id(A), vec![i]).await.unwrap();
            }
            cluster.run_for(Duration::from_secs(2)).await;
            for (side, peer) in [(A, B), (B, A)] {
                let got = cluster.devices[side].delivered_from(cluster.id(peer));
                assert_eq!(got, (0..5u8).map(|i| vec![i]).collect::<Vec<_>>());
            }
            assert!(
                !cluster.devices[A].log.iter().any(|(_, e)| matches!(
                    e,
                    NodeEvent::Status {
                        to: SessionStatus::Evicted,
                        ..
                    }
                )),
                "seed {seed}: no eviction"
            );
            println!(
                "seed {seed}: both Ready (over the relay) at {ready_at:?}, both direct {:?} later",
                direct_at - ready_at
            );
            if seed == 0 {
                println!("{timeline}");
            }
        });
    }
}

/// A cluster of A (behind `nat`, if any) and B with the session direct.
async fn direct_pair(seed: u64, nat: Option<tether_transport::sim::NatBehavior>) -> SimCluster {
    let builder = ClusterBuilder::new(seed, 2).pair(A, B).conditions(wan());
    let builder = match nat {
        Some(behavior) => builder.behind_nat_of(A, behavior),
        None => builder,
    };
    let mut cluster = builder.start().await;
    assert!(
        cluster
            .run_until(Duration::from_secs(10), |c| c.both_ready(A, B))
            .await
    );
    let direct = until_direct(&mut cluster, Duration::from_secs(10)).await;
    assert!(direct.is_some(), "{nat:?}: never direct");
    cluster
}

/// Asserts B and the relay see A at one address, on the public side of A's NAT `ip`.
fn assert_one_mapping(seen: &tether_direct_connection::SeenByPeer, ip: std::net::IpAddr) {
    use tether_direct_connection::NatMapping;
    assert_eq!(
        seen.mapping,
        Some(NatMapping::EndpointIndependent),
        "{seen:?}"
    );
    assert_eq!(seen.addr.ip(), ip, "{seen:?}");
    assert_eq!(Some(seen.addr), seen.relay_saw, "{seen:?}");
}

/// Where A's peer on a direct path sees A, next to where the relay sees it, once B
/// has said (it says so at most every `OBSERVED_RETELL_AFTER`).
async fn seen_by_b(cluster: &mut SimCluster) -> tether_direct_connection::SeenByPeer {
    let within = tether_direct_connection::OBSERVED_RETELL_AFTER + Duration::from_secs(5);
    let start = cluster.elapsed();
    loop {
        let status = cluster.peer_status(A, B).await.unwrap();
        if let Some(seen) = status.seen_by_peer {
            println!("after {:?}: {seen:?}", cluster.elapsed() - start);
            return seen;
        }
        assert!(
            cluster.elapsed() - start < within,
            "B never said where it sees A"
        );
        cluster.run_for(Duration::from_millis(100)).await;
    }
}

#[test]
fn a_peer_on_a_direct_path_shows_how_the_nat_maps() {
    use tether_direct_connection::NatMapping;
    use tether_transport::sim::NatBehavior;
    run_simulation(|| async move {
        // A cone NAT: B and the relay see A at one address.
        let mut cluster = direct_pair(51_000, Some(NatBehavior::port_restricted_cone())).await;
        assert_one_mapping(&seen_by_b(&mut cluster).await, nat_public_ip(A));
        // A moves behind another NAT of the same kind: what B and the relay saw of the
        // old one is forgotten, and both views are of the new one once direct again.
        cluster.change_address(A).await.unwrap();
        let direct = until_direct(&mut cluster, Duration::from_secs(10)).await;
        assert!(direct.is_some(), "never direct again after the move");
        assert_one_mapping(&seen_by_b(&mut cluster).await, nat_public_ip_on(A, 1));
        // A symmetric NAT: B sees another mapping than the relay does.
        let mut cluster = direct_pair(51_001, Some(NatBehavior::symmetric())).await;
        let seen = seen_by_b(&mut cluster).await;
        assert_eq!(
            seen.mapping,
            Some(NatMapping::EndpointDependent),
            "{seen:?}"
        );
        assert_eq!(seen.addr.ip(), nat_public_ip(A));
        assert_ne!(Some(seen.addr), seen.relay_saw);
        // No NAT: B and the relay see A's own address.
        let mut cluster = direct_pair(51_002, None).await;
        let seen = seen_by_b(&mut cluster).await;
        assert_eq!(seen.mapping, Some(NatMapping::None), "{seen:?}");
    });
}
