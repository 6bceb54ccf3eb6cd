//! Devices bound to the wildcard address, as `tether node` is with its default `listen`:
//! they announce their interface addresses, never `0.0.0.0`, so a peer can dial them
//! where they are. On real networks, devices that announced the wildcard address and
//! moved at the same moment stayed on the relay for good: each dialled the other's
//! `0.0.0.0:port`, which reaches nobody.

// A panic in a test is a failed test, not a crashed node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use tether_harness::{run_simulation, ClusterBuilder, SimCluster};
use tether_protocol::PathKind;

const A: usize = 0;
const B: usize = 1;

/// Two wildcard-bound devices, paired, Ready, settled.
async fn established(seed: u64) -> SimCluster {
    let mut cluster = ClusterBuilder::new(seed, 2)
        .pair(A, B)
        .wildcard(A)
        .wildcard(B)
        .start()
        .await;
    assert!(
        cluster
            .run_until(Duration::from_secs(10), |c| c.both_ready(A, B))
            .await,
        "{}",
        cluster.timeline(&[A, B], Duration::ZERO)
    );
    cluster.run_for(Duration::from_secs(3)).await;
    cluster
}

/// Runs until both devices reach each other directly, each at the other's real address
/// (its host's IP), or `within` passes; says which.
async fn direct_at_real_addresses(cluster: &mut SimCluster, within: Duration) -> bool {
    let step = Duration::from_millis(100);
    let mut waited = Duration::ZERO;
    while waited <= within {
        let mut both = true;
        for (me, other) in [(A, B), (B, A)] {
            let status = cluster.peer_status(me, other).await.unwrap();
            let at_real_address = status
                .remote
                .is_some_and(|remote| remote.ip() == cluster.devices[other].ip);
            both &= status.path == Some(PathKind::Direct) && at_real_address;
        }
        if both {
            return true;
        }
        cluster.run_for(step).await;
        waited += step;
    }
    false
}

#[test]
fn wildcard_devices_that_both_move_at_once_get_back_to_a_direct_path() {
    for seed in 0..4 {
        run_simulation(|| async move {
            let mut cluster = established(70_000 + seed).await;
            let since = cluster.elapsed();
            let base = cluster.peer_status(A, B).await.unwrap();
            cluster.change_address(A).await.unwrap();
            cluster.change_address(B).await.unwrap();
            assert!(
                direct_at_real_addresses(&mut cluster, Duration::from_secs(10)).await,
                "seed {seed}: not back on a direct path:\n{}",
                cluster.timeline(&[A, B], since)
            );
            let after = cluster.peer_status(A, B).await.unwrap();
            assert_eq!(
                (after.epoch, after.handshakes, after.peer_secret),
                (base.epoch, base.handshakes, base.peer_secret),
                "seed {seed}: the same session, no handshake"
            );
        });
    }
}

#[test]
fn a_wildcard_device_that_moves_is_reached_at_its_new_address() {
    run_simulation(|| async {
        let mut cluster = established(71_000).await;
        let since = cluster.elapsed();
        cluster.change_address(A).await.unwrap();
        assert!(
            direct_at_real_addresses(&mut cluster, Duration::from_secs(5)).await,
            "not reached at the new address:\n{}",
            cluster.timeline(&[A, B], since)
        );
    });
}
