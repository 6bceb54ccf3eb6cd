//! Backpressure from the application to the sender: a receiving application that
//! stops reading holds its sender back instead of growing its node's memory, and once
//! it reads again every message arrives exactly once, in order. A sender whose queue is
//! full waits in `send` (or is refused by `try_send`) until the peer makes room. On the
//! simulated network with default timings and limits.

// A panic in a test is a failed test, not a crashed node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;
use tether_direct_connection::Limits;
use tether_harness::{run_simulation, ClusterBuilder, NodeEvent, SimCluster};
use tether_protocol::{ChannelId, SendError};

const A: usize = 0;
const B: usize = 1;

fn wan() -> tether_transport::sim::LinkConditions {
    tether_transport::sim::LinkConditions {
        latency: Duration::from_millis(20),
        ..tether_transport::sim::LinkConditions::default()
    }
}

async fn ready_pair(seed: u64) -> SimCluster {
    let mut cluster = ClusterBuilder::new(seed, 2)
        .pair(A, B)
        .conditions(wan())
        .start()
        .await;
    assert!(
        cluster
            .run_until(Duration::from_secs(10), |c| c.both_ready(A, B))
            .await
    );
    cluster
}

/// Payload `i` of `channel`: its numbers, then filler up to `len` bytes.
fn payload(channel: u32, i: usize, len: usize) -> Vec<u8> {
    let mut bytes = format!("{channel}:{i}:").into_bytes();
    bytes.resize(len, b'.');
    bytes
}

/// What B delivered from A, per channel, in delivery order.
fn delivered_per_channel(cluster: &SimCluster) -> BTreeMap<u32, Vec<Vec<u8>>> {
    let a = cluster.id(A);
    let mut per_channel: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
    for (_, event) in &cluster.devices[B].log {
        if let NodeEvent::Delivered {
            peer,
            channel,
            payload,
            ..
        } = event
        {
            if *peer == a {
                per_channel
                    .entry(channel.0)
                    .or_default()
                    .push(payload.clone());
            }
        }
    }
    per_channel
}

/// A sends 12 MiB on 12 channels (each within a channel's credit, so only the
/// receive budget can hold them back) while B's application reads nothing: B holds at
/// most its budget, A keeps the rest queued, and once B reads everything arrives once.
#[test]
fn an_application_that_stops_reading_holds_its_sender_back_and_loses_nothing() {
    const CHANNELS: u32 = 12;
    const PER_CHANNEL: usize = 250;
    const LEN: usize = 4096;
    let budget = Limits::default().receive_budget;
    for seed in [1, 2, 3] {
        run_simulation(|| async move {
            let mut cluster = ready_pair(seed).await;
            let b = cluster.id(B);
            cluster.devices[B].reading_paused = true;
            for i in 0..PER_CHANNEL {
                for channel in 0..CHANNELS {
                    let bytes = payload(channel, i, LEN);
                    let node = cluster.node(A);
                    node.try_send_on(b, ChannelId(channel), bytes)
                        .await
                        .unwrap();
                }
            }
            let total = CHANNELS as usize * PER_CHANNEL;
            cluster.run_for(Duration::from_secs(20)).await;

            let held = cluster.peer_status(B, A).await.unwrap().held_bytes;
            let queued = cluster.peer_status(A, B).await.unwrap().queued;
            assert!(held > budget / 2, "seed {seed}: B holds {held} bytes");
            assert!(
                held <= budget,
                "seed {seed}: B holds {held} bytes, more than its budget of {budget}"
            );
            assert!(
                queued >= total - budget / LEN,
                "seed {seed}: A has only {queued} of {total} messages still queued"
            );

            cluster.devices[B].reading_paused = false;
            let all = cluster
                .run_until(Duration::from_secs(60), |c| {
                    delivered_per_channel(c)
                        .values()
                        .map(Vec::len)
                        .sum::<usize>()
                        >= total
                })
                .await;
            cluster.run_for(Duration::from_secs(3)).await;
            assert!(all, "seed {seed}: not everything arrived once B read again");
            for (channel, got) in delivered_per_channel(&cluster) {
                let expected: Vec<Vec<u8>> =
                    (0..PER_CHANNEL).map(|i| payload(channel, i, LEN)).collect();
                assert!(
                    got == expected,
                    "seed {seed}: channel {channel} delivered {} messages, not each once in order",
                    got.len()
                );
            }
            let held = cluster.peer_status(B, A).await.unwrap().held_bytes;
            assert_eq!(held, 0, "seed {seed}: read messages still held");
            assert_eq!(cluster.peer_status(A, B).await.unwrap().handshakes, 1);
        });
    }
}

/// One channel: B's application reads nothing, so A's credit ends after one window
/// (256 messages, acknowledged) and its queue fills; `try_send` is refused, `send` waits, and goes
/// through once B reads.
#[test]
fn a_full_queue_makes_send_wait_until_the_reader_makes_room() {
    run_simulation(|| async {
        let mut cluster = ready_pair(4).await;
        let b = cluster.id(B);
        let limits = Limits::default();
        cluster.devices[B].reading_paused = true;
        for i in 0..limits.max_queued {
            cluster
                .node(A)
                .try_send(b, format!("m{i}").into_bytes())
                .await
                .unwrap();
        }
        cluster.run_for(Duration::from_secs(5)).await;
        let delivered_unread = cluster.peer_status(B, A).await.unwrap().counters.delivered;
        assert_eq!(
            delivered_unread, limits.credit,
            "one window reaches B while its application reads nothing"
        );
        // The delivered window was acknowledged: A's queue takes that many more, then
        // refuses.
        for i in 0..limits.credit {
            cluster
                .node(A)
                .try_send(b, format!("n{i}").into_bytes())
                .await
                .unwrap();
        }
        let refused = cluster.node(A).try_send(b, b"one more".to_vec()).await;
        assert!(
            matches!(refused, Err(SendError::QueueFull { .. })),
            "{refused:?}"
        );

        // `send` waits while B does not read...
        let (left, right) = cluster.devices.split_at_mut(B);
        let a_node = left[A].node.as_ref().unwrap();
        let b_node = right[0].node.as_mut().unwrap();
        let waiting = a_node.send(b, b"one more".to_vec());
        tokio::pin!(waiting);
        let early = tokio::time::timeout(Duration::from_secs(10), &mut waiting).await;
        assert!(
            early.is_err(),
            "send returned while the queue was full: {early:?}"
        );

        // ...and goes through once it reads.
        let mut read = 0;
        let seq = loop {
            tokio::select! {
                result = &mut waiting => break result.unwrap(),
                () = tokio::time::sleep(Duration::from_millis(10)) => {
                    while let Some(event) = b_node.try_next_event() {
                        read += usize::from(matches!(event, NodeEvent::Delivered { .. }));
                    }
                }
            }
        };
        assert_eq!(seq, limits.max_queued as u64 + limits.credit);
        assert!(read > 0);
    });
}
