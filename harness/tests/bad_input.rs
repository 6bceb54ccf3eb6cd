//! Bad input against whole nodes: a device that is not paired knocks, and the session
//! between the paired devices is not disturbed.

// A panic in a test is a failed test, not a crashed node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use tether_harness::{run_simulation, ClusterBuilder};
use tether_protocol::SessionStatus;

const A: usize = 0;
const B: usize = 1;
const STRANGER: usize = 2;

#[test]
fn an_unknown_device_is_refused_counted_and_disturbs_nothing() {
    run_simulation(|| async {
        let mut cluster = ClusterBuilder::new(7, 3)
            .pair(A, B)
            .one_way(STRANGER, B)
            .start()
            .await;
        assert!(
            cluster
                .run_until(Duration::from_secs(10), |c| c.both_ready(A, B))
                .await
        );
        cluster.run_for(Duration::from_secs(2)).await;
        let before = cluster.peer_status(A, B).await.unwrap();
        // The stranger keeps trying for a while (retries with backoff).
        cluster.run_for(Duration::from_secs(20)).await;
        let counters = cluster.node(B).counters().await;
        assert!(
            counters.unknown_device_handshakes >= 1,
            "B refused and counted the stranger: {counters:?}"
        );
        assert_ne!(
            cluster.status(STRANGER, B),
            Some(SessionStatus::Ready),
            "the stranger never got a session"
        );
        let stranger = cluster.peer_status(STRANGER, B).await.unwrap();
        assert!(
            stranger.counters.handshake_timeouts >= 1,
            "the stranger counts its unanswered handshakes: {stranger:?}"
        );
        let after = cluster.peer_status(A, B).await.unwrap();
        assert_eq!(cluster.status(A, B), Some(SessionStatus::Ready));
        assert_eq!(after.peer_secret, before.peer_secret);
        assert_eq!(after.handshakes, before.handshakes);
        // And the pair still talks.
        let b = cluster.id(B);
        cluster
            .node(A)
            .send(b, b"still here".to_vec())
            .await
            .unwrap();
        let a = cluster.id(A);
        assert!(
            cluster
                .run_until(Duration::from_secs(5), |c| {
                    c.devices[B].delivered_from(a) == vec![b"still here".to_vec()]
                })
                .await
        );
    });
}

/// Invariant 7: the relay and rendezvous server only ever sees ciphertext and routing ids.
#[test]
fn the_relay_sees_only_ciphertext() {
    use tether_harness::{GetTap, StartTap};
    run_simulation(|| async {
        let mut cluster = ClusterBuilder::new(8, 2)
            .pair(A, B)
            .block_direct(A, B)
            .start()
            .await;
        cluster.relay.addr.send(StartTap).await.unwrap();
        assert!(
            cluster
                .run_until(Duration::from_secs(15), |c| c.both_ready(A, B))
                .await
        );
        // Everything between the two devices crosses the relay.
        let (a, b) = (cluster.id(A), cluster.id(B));
        let marker = b"plaintext-marker-7f3a";
        for i in 0..10u8 {
            let mut payload = marker.to_vec();
            payload.push(i);
            cluster.node(A).send(b, payload.clone()).await.unwrap();
            cluster.node(B).send(a, payload).await.unwrap();
        }
        assert!(
            cluster
                .run_until(Duration::from_secs(10), |c| {
                    c.devices[B].delivered_from(a).len() == 10
                        && c.devices[A].delivered_from(b).len() == 10
                })
                .await
        );
        // A migration through the relay too (its ping carries the new endpoints).
        cluster.change_address(A).await.unwrap();
        cluster.run_for(Duration::from_secs(2)).await;
        let seen = cluster.relay.addr.send(GetTap).await.unwrap();
        assert!(
            seen.len() > 20,
            "the relay carried the session ({} frames)",
            seen.len()
        );
        let contains =
            |haystack: &[u8], needle: &[u8]| haystack.windows(needle.len()).any(|w| w == needle);
        // The new endpoint as the hints and migration tags encode it (family, octets,
        // port): it crosses the server only sealed, never in the clear.
        let new_addr =
            std::net::SocketAddr::new(cluster.devices[A].ip, tether_harness::cluster::DEVICE_PORT);
        let endpoint = tether_protocol::canonical_endpoints(&[new_addr]);
        for frame in &seen {
            assert!(!contains(frame, marker), "plaintext reached the relay");
            assert!(
                !contains(frame, &endpoint),
                "an endpoint reached the server in the clear"
            );
        }
    });
}
