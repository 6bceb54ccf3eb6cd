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
