//! A walk-through of Tether on the simulated network, printed step by step (run with
//! `--nocapture` to read it): two devices pair and establish a session, exchange
//! messages, one moves to a new network while messages are in flight, then both move
//! at once. Every step checks the invariants it demonstrates.

// A panic in a test is a failed test, not a crashed node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use tether_harness::{run_simulation, ClusterBuilder, SimCluster};
use tether_transport::sim::LinkConditions;

const A: usize = 0;
const B: usize = 1;

async fn show(cluster: &SimCluster, title: &str) -> (u64, String) {
    let a = cluster.peer_status(A, B).await.unwrap();
    let b = cluster.peer_status(B, A).await.unwrap();
    println!(
        "  {title}: A sees B {:?} via {:?} {:?}, epoch {:?}, handshakes {}/{}, PeerSecret {} / {}",
        a.status,
        a.path,
        a.remote,
        a.epoch,
        a.handshakes,
        b.handshakes,
        a.peer_secret.map(|f| f.to_string()).unwrap_or_default(),
        b.peer_secret.map(|f| f.to_string()).unwrap_or_default(),
    );
    assert_eq!(a.peer_secret, b.peer_secret);
    (
        a.handshakes + b.handshakes,
        a.peer_secret.map(|f| f.to_string()).unwrap_or_default(),
    )
}

async fn exchange(cluster: &mut SimCluster, tag: &str, count: usize) {
    let (a, b) = (cluster.id(A), cluster.id(B));
    for i in 0..count {
        cluster
            .node(A)
            .send(b, format!("{tag} #{i}").into_bytes())
            .await
            .unwrap();
    }
    let delivered = |c: &SimCluster| {
        c.devices[B]
            .delivered_from(a)
            .into_iter()
            .filter(|m| m.starts_with(tag.as_bytes()))
            .collect::<Vec<_>>()
    };
    assert!(
        cluster
            .run_until(Duration::from_secs(30), |c| delivered(c).len() >= count)
            .await
    );
    cluster.run_for(Duration::from_secs(1)).await;
    let expect: Vec<Vec<u8>> = (0..count)
        .map(|i| format!("{tag} #{i}").into_bytes())
        .collect();
    assert_eq!(delivered(cluster), expect, "exactly once, in order");
    println!("  {count} messages \"{tag} #0..\" delivered exactly once, in order");
}

#[test]
fn walk_through() {
    run_simulation(|| async {
        println!("Tether walk-through: two devices and a relay on a simulated 40 ms RTT network");
        let mut cluster = ClusterBuilder::new(2026, 2)
            .pair(A, B)
            .conditions(LinkConditions {
                latency: Duration::from_millis(20),
                loss: 0.01,
                ..LinkConditions::default()
            })
            .start()
            .await;

        println!("\n1. Establish (Noise IKpsk2 handshake keyed by the pair's relationship key)");
        assert!(
            cluster
                .run_until(Duration::from_secs(10), |c| c.both_ready(A, B))
                .await
        );
        cluster.run_for(Duration::from_secs(2)).await;
        println!("{}", cluster.timeline(&[A, B], Duration::ZERO));
        let (handshakes, secret) = show(&cluster, "ready").await;
        exchange(&mut cluster, "hello", 20).await;

        println!("\n2. A changes networks while messages are queued (no handshake may run)");
        let since = cluster.elapsed();
        cluster.change_address(A).await.unwrap();
        exchange(&mut cluster, "during the move", 20).await;
        assert!(
            cluster
                .run_until(Duration::from_secs(10), |c| c.both_ready(A, B))
                .await
        );
        println!("{}", cluster.timeline(&[A, B], since));
        assert_eq!(show(&cluster, "after").await, (handshakes, secret.clone()));

        println!("\n3. Both devices change networks at the same moment");
        let since = cluster.elapsed();
        cluster.change_address(A).await.unwrap();
        cluster.change_address(B).await.unwrap();
        exchange(&mut cluster, "both moved", 20).await;
        assert!(
            cluster
                .run_until(Duration::from_secs(10), |c| c.both_ready(A, B))
                .await
        );
        println!("{}", cluster.timeline(&[A, B], since));
        assert_eq!(show(&cluster, "after").await, (handshakes, secret));
        println!("\nSame session key, same PeerSecret, zero handshakes across both migrations.");
    });
}
