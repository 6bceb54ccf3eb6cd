//! A relay restart loses no queued envelope: on the simulated network, with default
//! timings and virtual time, a sender queues envelopes at the relay for a recipient
//! that is offline, the relay restarts (a new server on the same address and key that
//! takes over the queue store), and the recipient, coming online, is pushed every
//! envelope once, in order.
//!
//! The devices speak the relay protocol themselves ([`common::relay_device`]): a node
//! queues only migration pings at the relay, and this test must see the queue exactly.

// A panic in a test is a failed test, not a crashed node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::relay_device::RelayDevice;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::net::Ipv4Addr;
use std::time::Duration;
use tether_harness::cluster::RELAY_ADDR;
use tether_harness::{run_simulation, ClusterBuilder, GetServerCounters, SimCluster};
use tether_protocol::RelayMessage;

/// How long a device waits for the relay's next frame (virtual time): far longer than
/// any round trip of the simulated network.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// A device on its own host of the simulated network, not connected yet.
async fn device(cluster: &SimCluster, name: &str, last: u8, rng: &mut ChaCha20Rng) -> RelayDevice {
    let ip = Ipv4Addr::new(10, 1, 0, last);
    RelayDevice::on_sim_host(cluster, name, ip, rng, ANSWER_WITHIN).await
}

#[test]
fn a_relay_restart_keeps_queued_envelopes_and_pushes_them_once_in_order_on_connect() {
    run_simulation(|| async {
        let mut cluster = ClusterBuilder::new(31, 0).open_relay().start().await;
        let relay_key = cluster.relay.public;
        let mut rng = ChaCha20Rng::seed_from_u64(31);
        let mut sender = device(&cluster, "sender", 1, &mut rng).await;
        let mut receiver = device(&cluster, "receiver", 2, &mut rng).await;

        // The receiver is offline: the sender's envelopes are queued.
        sender.connect(RELAY_ADDR, &relay_key).await;
        let sent: Vec<Vec<u8>> = (0..20).map(|i| format!("m{i:02}").into_bytes()).collect();
        sender.enqueue_all(receiver.id(), 0, &sent).await;
        assert_eq!(cluster.relay_store.len(), 20, "durable before Enqueued");
        cluster.run_for(Duration::from_secs(3)).await;

        cluster.restart_relay().await.unwrap();
        let counters = cluster.relay.addr.send(GetServerCounters).await.unwrap();
        assert_eq!(counters.restored, 20, "{counters:?}");
        // The old connection went with the old relay.
        assert_eq!(sender.recv().await, None);

        // The receiver comes online: pushed everything, oldest first, once.
        receiver.connect(RELAY_ADDR, &relay_key).await;
        let (ids, received) = receiver.pushes(sent.len()).await;
        let expected: Vec<_> = sent.iter().map(|e| (sender.id(), e.clone())).collect();
        assert_eq!(received, expected, "every envelope, in order");
        receiver
            .send(RelayMessage::Delivered {
                envelope_ids: ids.clone(),
            })
            .await;
        // Nothing more comes: no duplicate.
        assert_eq!(receiver.recv().await, None);
        let counters = cluster.relay.addr.send(GetServerCounters).await.unwrap();
        assert_eq!(counters.delivered, 20);
        assert!(
            cluster.relay_store.is_empty(),
            "acknowledged ones leave the store"
        );

        // The sender reconnects and queues more: a new id, above the old ones.
        sender.connect(RELAY_ADDR, &relay_key).await;
        sender
            .enqueue_all(receiver.id(), 99, &[b"after".to_vec()])
            .await;
        let (new_ids, received) = receiver.pushes(1).await;
        assert_eq!(received[0].1, b"after");
        assert!(new_ids[0] > *ids.iter().max().unwrap());
    });
}

#[test]
fn envelopes_that_expire_while_the_relay_is_down_are_not_pushed() {
    run_simulation(|| async {
        let mut cluster = ClusterBuilder::new(32, 0).open_relay().start().await;
        let relay_key = cluster.relay.public;
        let mut rng = ChaCha20Rng::seed_from_u64(32);
        let mut sender = device(&cluster, "sender", 1, &mut rng).await;
        let mut receiver = device(&cluster, "receiver", 2, &mut rng).await;
        sender.connect(RELAY_ADDR, &relay_key).await;
        let to = receiver.id();
        for (request, ttl_ms) in [(1, 2_000), (2, 60_000)] {
            sender
                .send(RelayMessage::Enqueue {
                    to,
                    request,
                    ttl_ms,
                    envelope: vec![request as u8; 8],
                })
                .await;
            assert_eq!(
                sender.recv().await,
                Some(RelayMessage::Enqueued { request })
            );
        }
        cluster.run_for(Duration::from_secs(1)).await;
        cluster.restart_relay().await.unwrap();
        // The short one expires after the restart, at its original time.
        cluster.run_for(Duration::from_secs(2)).await;
        assert_eq!(cluster.relay_store.len(), 1);
        receiver.connect(RELAY_ADDR, &relay_key).await;
        let (_, received) = receiver.pushes(1).await;
        assert_eq!(received[0].1, vec![2; 8]);
        assert_eq!(receiver.recv().await, None);
    });
}
