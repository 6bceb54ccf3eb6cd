//! Retrying a peer that is gone, on the simulated network with default timings: the
//! attempts back off to one every few minutes, and a network change or a send waiting
//! for the peer makes the next one run at once.

// A panic in a test is a failed test, not a crashed node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use tether_harness::{run_simulation, ClusterBuilder, SimCluster};

const A: usize = 0;
const B: usize = 1;

/// A and B paired and Ready, then B gone for good (its node stopped).
async fn peer_gone(seed: u64) -> SimCluster {
    let mut cluster = ClusterBuilder::new(seed, 2).pair(A, B).start().await;
    assert!(
        cluster
            .run_until(Duration::from_secs(10), |c| c.both_ready(A, B))
            .await
    );
    cluster.crash(B);
    cluster
}

/// A's connect attempts to B that no path answered, and the handshake initiations A
/// sent B.
async fn attempts(cluster: &SimCluster) -> (u64, u64) {
    let status = cluster.peer_status(A, B).await.unwrap();
    (
        status.counters.handshake_timeouts,
        status.handshake_attempts,
    )
}

/// Runs until A's current attempt to reach B has timed out (its next one waits for the
/// backoff), for at most `within`.
async fn until_an_attempt_ends(cluster: &mut SimCluster, within: Duration) {
    let (before, _) = attempts(cluster).await;
    let step = Duration::from_millis(100);
    let mut waited = Duration::ZERO;
    while attempts(cluster).await.0 == before {
        assert!(waited < within, "no attempt ended within {within:?}");
        cluster.run_for(step).await;
        waited += step;
    }
}

#[test]
fn a_peer_that_is_gone_is_retried_a_few_times_an_hour() {
    run_simulation(|| async {
        let mut cluster = peer_gone(31).await;
        cluster.run_for(Duration::from_secs(600)).await;
        let (after_ten_minutes, _) = attempts(&cluster).await;
        cluster.run_for(Duration::from_secs(3600)).await;
        let (after_seventy, handshakes) = attempts(&cluster).await;
        let last_hour = after_seventy - after_ten_minutes;
        // Capped at 5 minutes with equal jitter: one attempt every 2.5 to 5 minutes
        // (plus the 10 s the attempt itself lasts).
        assert!(
            (11..=25).contains(&last_hour),
            "{last_hour} attempts in the last hour"
        );
        assert!(
            handshakes <= after_seventy * 12,
            "{handshakes} initiations for {after_seventy} attempts"
        );
    });
}

#[test]
fn a_send_or_a_network_change_retries_at_once() {
    run_simulation(|| async {
        let mut cluster = peer_gone(32).await;
        // Well into the backoff: the next attempt is minutes away.
        cluster.run_for(Duration::from_secs(900)).await;
        until_an_attempt_ends(&mut cluster, Duration::from_secs(400)).await;
        let (_, before) = attempts(&cluster).await;
        cluster.run_for(Duration::from_secs(2)).await;
        assert_eq!(
            attempts(&cluster).await.1,
            before,
            "no attempt while backing off"
        );

        let b = cluster.id(B);
        cluster.node(A).send(b, b"hello?".to_vec()).await.unwrap();
        cluster.run_for(Duration::from_secs(2)).await;
        let (_, after_send) = attempts(&cluster).await;
        assert!(after_send > before, "a send retries at once");

        until_an_attempt_ends(&mut cluster, Duration::from_secs(30)).await;
        let (_, before) = attempts(&cluster).await;
        cluster.change_address(A).await.unwrap();
        cluster.run_for(Duration::from_secs(2)).await;
        let (_, after_move) = attempts(&cluster).await;
        assert!(after_move > before, "a network change retries at once");
    });
}
