//! A message `send` accepted is delivered exactly once, in order, even when either side
//! crashes before the peer acknowledged it: each device keeps its channels in a store
//! (here the simulator's memory store, which outlives the node as a data directory
//! would), on the simulated network with default timings.

// A panic in a test is a failed test, not a crashed node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use tether_harness::{run_simulation, ClusterBuilder, SimCluster};

const A: usize = 0;
const B: usize = 1;
const BURST: usize = 40;

fn wan() -> tether_transport::sim::LinkConditions {
    tether_transport::sim::LinkConditions {
        latency: Duration::from_millis(20),
        ..tether_transport::sim::LinkConditions::default()
    }
}

fn pair(seed: u64) -> ClusterBuilder {
    ClusterBuilder::new(seed, 2).pair(A, B).conditions(wan())
}

async fn ready_pair(builder: ClusterBuilder) -> SimCluster {
    let mut cluster = builder.start().await;
    assert!(
        cluster
            .run_until(Duration::from_secs(10), |c| c.both_ready(A, B))
            .await
    );
    cluster
}

/// A sends a burst to B: every message is accepted (durable) before `send` returns.
async fn burst(cluster: &SimCluster, tag: &str) -> Vec<Vec<u8>> {
    let b = cluster.id(B);
    let mut sent = Vec::new();
    for i in 0..BURST {
        let payload = format!("{tag} {i}").into_bytes();
        cluster.node(A).send(b, payload.clone()).await.unwrap();
        sent.push(payload);
    }
    sent
}

/// Runs until B has every message of `sent` (and then a little longer, for duplicates)
/// and checks it got each exactly once, in order.
async fn assert_delivered_once(cluster: &mut SimCluster, sent: &[Vec<u8>]) {
    let a = cluster.id(A);
    let got_all = cluster
        .run_until(Duration::from_secs(30), |c| {
            c.devices[B].delivered_from(a).len() >= sent.len()
        })
        .await;
    cluster.run_for(Duration::from_secs(3)).await;
    let delivered = cluster.devices[B].delivered_from(a);
    assert!(
        got_all && delivered == sent,
        "B got {} of {} (in order and once: {}):\n{}",
        delivered.len(),
        sent.len(),
        delivered == sent,
        cluster.timeline(&[A, B], Duration::ZERO)
    );
}

#[test]
fn the_sender_crashes_before_anything_it_accepted_got_out() {
    for seed in 0..6 {
        run_simulation(|| async move {
            let mut cluster = ready_pair(pair(seed)).await;
            // A is cut off: what it accepts now exists only in its store.
            cluster.partition(A, B);
            cluster.partition_relay(A);
            let sent = burst(&cluster, "burst").await;
            cluster.crash(A);
            cluster.heal(A, B);
            cluster.heal_relay(A);
            cluster.run_for(Duration::from_secs(2)).await;
            cluster.restart(A).await;
            assert_delivered_once(&mut cluster, &sent).await;
        });
    }
}

#[test]
fn the_receiver_crashes_right_after_delivering_before_its_acks_arrive() {
    for seed in 0..6 {
        run_simulation(|| async move {
            let mut cluster = ready_pair(pair(seed)).await;
            let a = cluster.id(A);
            let sent = burst(&cluster, "burst").await;
            // Crash B as soon as it delivered some: its acks are still on the way (20 ms),
            // so A resends what B already delivered.
            let some = 5 + seed as usize * 3;
            assert!(
                cluster
                    .run_until(Duration::from_secs(5), |c| {
                        c.devices[B].delivered_from(a).len() >= some
                    })
                    .await
            );
            cluster.crash(B);
            cluster.run_for(Duration::from_secs(2)).await;
            cluster.restart(B).await;
            assert_delivered_once(&mut cluster, &sent).await;
        });
    }
}

#[test]
fn both_crash_and_restart_while_messages_are_in_flight() {
    for seed in 0..6 {
        run_simulation(|| async move {
            let mut cluster = ready_pair(pair(seed)).await;
            let sent = burst(&cluster, "burst").await;
            cluster.run_for(Duration::from_millis(15 + seed * 5)).await;
            cluster.crash(A);
            cluster.crash(B);
            cluster.run_for(Duration::from_secs(2)).await;
            cluster.restart(B).await;
            cluster.restart(A).await;
            assert_delivered_once(&mut cluster, &sent).await;
        });
    }
}
