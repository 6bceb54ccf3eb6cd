//! A device that stops on purpose says goodbye, on the simulated network with default
//! timings: its peer shows the session as closed at once (not Ready), retries nothing,
//! and takes the device back when it returns.

// A panic in a test is a failed test, not a crashed node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use tether_harness::{run_simulation, ClusterBuilder, SimCluster};
use tether_protocol::SessionStatus;

const A: usize = 0;
const B: usize = 1;

async fn ready_pair(seed: u64) -> SimCluster {
    let mut cluster = ClusterBuilder::new(seed, 2).pair(A, B).start().await;
    assert!(
        cluster
            .run_until(Duration::from_secs(10), |c| c.both_ready(A, B))
            .await
    );
    cluster
}

#[test]
fn a_closed_device_is_shown_closed_at_once_and_taken_back_when_it_returns() {
    run_simulation(|| async {
        let mut cluster = ready_pair(41).await;
        let b = cluster.id(B);
        let a = cluster.id(A);
        let before = cluster.elapsed();
        cluster.close(A).await;
        let closed = cluster
            .run_until(Duration::from_millis(500), |c| {
                c.status(B, A) == Some(SessionStatus::Closed)
            })
            .await;
        assert!(
            closed,
            "B still {:?}:\n{}",
            cluster.status(B, A),
            cluster.timeline(&[A, B], before)
        );
        // Closed by the peer: nothing is retried while it is away.
        let attempts = cluster.peer_status(B, A).await.unwrap().handshake_attempts;
        cluster.run_for(Duration::from_secs(60)).await;
        assert_eq!(cluster.status(B, A), Some(SessionStatus::Closed));
        assert_eq!(
            cluster.peer_status(B, A).await.unwrap().handshake_attempts,
            attempts
        );
        // B queues for A meanwhile; A comes back and gets it.
        cluster
            .node(B)
            .send(a, b"while away".to_vec())
            .await
            .unwrap();
        cluster.restart(A).await;
        let back = cluster
            .run_until(Duration::from_secs(60), |c| {
                c.both_ready(A, B) && !c.devices[A].delivered_from(b).is_empty()
            })
            .await;
        assert!(back, "{}", cluster.timeline(&[A, B], before));
        assert_eq!(
            cluster.devices[A].delivered_from(b),
            vec![b"while away".to_vec()]
        );
    });
}
