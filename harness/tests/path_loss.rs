//! Path choice by loss on the simulated network (whole nodes, real quinn and Noise):
//! QUIC's loss counts travel from the transport driver to DirectConnection
//! (`PathSampled`), and a direct path that loses packets the relay does not gives the
//! session to the relay, with no handshake and every message once, in order.

// A panic in a test is a failed test, not a crashed node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use tether_harness::{run_simulation, ClusterBuilder, SimCluster};
use tether_protocol::PathKind;
use tether_transport::sim::LinkConditions;

const A: usize = 0;
const B: usize = 1;

/// Sends `rounds` rounds of 10 messages of 1 KiB from A to B, 100 ms apart, numbered
/// from `first`: light enough that no queue builds up behind the losses, so the round
/// trips stay those of the path and only the losses tell it from the relay.
async fn stream(cluster: &mut SimCluster, first: u32, rounds: u32) -> u32 {
    let to = cluster.id(B);
    let mut next = first;
    for _ in 0..rounds {
        let node = cluster.devices[A].node.as_ref().expect("A runs");
        for _ in 0..10 {
            let mut payload = next.to_be_bytes().to_vec();
            payload.resize(1024, 0);
            node.send(to, payload).await.expect("queued");
            next += 1;
        }
        cluster.run_for(Duration::from_millis(100)).await;
    }
    next
}

#[test]
fn a_direct_path_losing_what_the_relay_does_not_gives_the_session_to_the_relay() {
    run_simulation(|| async {
        let mut cluster = ClusterBuilder::new(31, 2).pair(A, B).start().await;
        cluster
            .run_until(Duration::from_secs(10), |c| c.both_ready(A, B))
            .await;
        let status = cluster.peer_status(A, B).await.expect("status");
        assert_eq!(status.path, Some(PathKind::Direct));
        let handshakes = status.handshakes;
        // The direct route starts losing a fifth of its packets; the relay's do not.
        let (a, b) = (cluster.devices[A].host, cluster.devices[B].host);
        cluster.net.set_conditions(
            a,
            b,
            LinkConditions {
                loss: 0.2,
                ..LinkConditions::default()
            },
        );
        let sent = stream(&mut cluster, 0, 200).await;
        let status = cluster.peer_status(A, B).await.expect("status");
        assert_eq!(status.path, Some(PathKind::Relay), "{status:?}");
        let declined = status.direct_declined.expect("why it left");
        let (direct_loss, _relay_loss) = declined
            .fell_back_with_loss
            .unwrap_or_else(|| panic!("losses known: {declined:?}"));
        assert!(direct_loss >= 10, "{declined:?}");
        assert_eq!(status.handshakes, handshakes, "no handshake");
        cluster.run_for(Duration::from_secs(5)).await;
        let delivered = cluster.devices[B].delivered_from(cluster.id(A));
        let numbers: Vec<u32> = delivered
            .iter()
            .map(|m| u32::from_be_bytes([m[0], m[1], m[2], m[3]]))
            .collect();
        assert_eq!(
            numbers,
            (0..sent).collect::<Vec<_>>(),
            "every message once, in order"
        );
    });
}
