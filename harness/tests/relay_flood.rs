//! Many identities flooding the relay queue and the rendezvous table, on the simulated
//! network in virtual time, through the relay's QUIC endpoint and shell.
//!
//! - On an open relay (`admission = "open"`), self-made identities each fill what their
//!   quotas let them (their share of a victim's queue, their stored bytes, their
//!   rendezvous ids); a legitimate pair then still publishes its hints and queues its
//!   migration ping, and what the relay holds stays under the stated bounds. Fewer
//!   than eight identities are used: eight at their share of one queue can fill it,
//!   which is why an allowlist is the default.
//! - On a relay with an allowlist, the same identities are refused after their proof
//!   and store nothing, while the admitted pair holds its session over the relay.

// A panic in a test is a failed test, not a crashed node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::relay_device::RelayDevice;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::net::Ipv4Addr;
use std::time::Duration;
use tether_harness::cluster::RELAY_ADDR;
use tether_harness::{run_simulation, ClusterBuilder, GetServerState, SimCluster};
use tether_pms::RendezvousTableConfig;
use tether_protocol::{
    DeviceId, PathKind, RelayMessage, RendezvousMessage, ServerRefusal, SessionStatus, WireFrame,
};
use tether_rcs::server::ENVELOPE_OVERHEAD;
use tether_rcs::RelayServerConfig;

/// How long a device waits for the relay's next frame (virtual time): far longer than
/// any round trip of the simulated network.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// Self-made identities flooding an open relay: fewer than the eight whose shares
/// fill one queue.
const ATTACKERS: usize = 6;

/// Size of each flooding envelope.
const ENVELOPE: usize = 16 * 1024;

/// Fresh ids each attacker publishes under.
const IDS_PER_ATTACKER: u32 = 200;

/// Bounds of the open relay, scaled down from the defaults (same ratios: a sender's
/// share is an eighth of a queue) so the flood is quick to run.
fn small_bounds(c: &mut RelayServerConfig) {
    c.max_queued_bytes_per_recipient = 1024 * 1024;
    c.max_queued_bytes_per_sender_recipient = 128 * 1024;
    c.max_stored_bytes_per_sender = 512 * 1024;
    c.max_stored_bytes = 8 * 1024 * 1024;
}

/// A table of 500 ids: more than the attackers may hold (6 × 64), less than their
/// publishes within the rate limit's burst (6 × 128) without a per-device quota.
fn small_table() -> RendezvousTableConfig {
    RendezvousTableConfig {
        max_ids: 500,
        ..RendezvousTableConfig::default()
    }
}

/// A device on its own host of the simulated network, not connected yet.
async fn device(cluster: &SimCluster, name: &str, last: u8, rng: &mut ChaCha20Rng) -> RelayDevice {
    let ip = Ipv4Addr::new(10, 2, 0, last);
    RelayDevice::on_sim_host(cluster, name, ip, rng, ANSWER_WITHIN).await
}

fn publish(rendezvous_id: [u8; 32], hint: &[u8]) -> WireFrame {
    WireFrame::Rendezvous(RendezvousMessage::Publish {
        rendezvous_id,
        ttl_ms: 600_000,
        hint: hint.to_vec(),
    })
}

/// The answers a device gets until the relay goes quiet: (enqueued, refusals).
async fn answers(device: &mut RelayDevice) -> (usize, Vec<ServerRefusal>) {
    let mut enqueued = 0;
    let mut refusals = Vec::new();
    while let Some(frame) = device.recv_wire().await {
        match frame {
            WireFrame::Relay(RelayMessage::Enqueued { .. }) => enqueued += 1,
            WireFrame::Relay(RelayMessage::Refused { reason, .. })
            | WireFrame::Rendezvous(RendezvousMessage::Refused { reason }) => refusals.push(reason),
            other => panic!("unexpected {other:?}"),
        }
    }
    (enqueued, refusals)
}

#[test]
fn an_open_relay_flooded_by_many_identities_still_serves_a_legitimate_pair() {
    run_simulation(|| async {
        let cluster = ClusterBuilder::new(41, 0)
            .open_relay()
            .relay_config(small_bounds)
            .rendezvous_table(small_table())
            .start()
            .await;
        let relay_key = cluster.relay.public;
        // Not the cluster's seed: its keys (the relay's first) come from that one.
        let mut rng = ChaCha20Rng::seed_from_u64(4_100);
        let mut victim = device(&cluster, "victim", 1, &mut rng).await;
        let mut peer = device(&cluster, "peer", 2, &mut rng).await;
        let victim_id = victim.id();

        let mut per_attacker = Vec::new();
        for a in 0..ATTACKERS {
            let mut attacker =
                device(&cluster, &format!("attacker{a}"), 10 + a as u8, &mut rng).await;
            attacker.connect(RELAY_ADDR, &relay_key).await;
            // The victim's queue, more than all of it.
            for request in 0..80 {
                attacker
                    .send(RelayMessage::Enqueue {
                        to: victim_id,
                        request,
                        ttl_ms: 86_400_000,
                        envelope: vec![0xEE; ENVELOPE],
                    })
                    .await;
            }
            // Devices that never come.
            for request in 80..140 {
                let mut nobody = [0_u8; 32];
                rng.fill_bytes(&mut nobody);
                attacker
                    .send(RelayMessage::Enqueue {
                        to: DeviceId(nobody),
                        request,
                        ttl_ms: 86_400_000,
                        envelope: vec![0xEE; ENVELOPE],
                    })
                    .await;
            }
            // Fresh rendezvous ids.
            for _ in 0..IDS_PER_ATTACKER {
                let mut id = [0_u8; 32];
                rng.fill_bytes(&mut id);
                attacker.send_wire(&publish(id, b"junk")).await;
            }
            per_attacker.push(answers(&mut attacker).await);
        }
        for (enqueued, refusals) in &per_attacker {
            // Every request was answered: stored or refused, never dropped silently.
            assert!(
                *enqueued > 0 && !refusals.is_empty(),
                "{enqueued} {refusals:?}"
            );
        }

        let state = cluster.relay.addr.send(GetServerState).await.unwrap();
        let per_sender_bound = 512 * 1024;
        assert!(
            state.stored_bytes <= ATTACKERS * per_sender_bound,
            "{} bytes stored by {ATTACKERS} identities",
            state.stored_bytes
        );
        assert!(state.rendezvous_ids <= ATTACKERS * 64, "{state:?}");
        assert!(state.counters.refused.quota_exceeded > 0, "{state:?}");
        assert!(state.rendezvous.refused_device_quota > 0, "{state:?}");

        // The legitimate pair: the peer publishes its hint and queues a migration ping
        // for the victim; the victim finds both.
        peer.connect(RELAY_ADDR, &relay_key).await;
        let pair_id = [0x5A; 32];
        peer.send_wire(&publish(pair_id, b"peer hint")).await;
        peer.send(RelayMessage::Enqueue {
            to: victim_id,
            request: 1,
            ttl_ms: 600_000,
            envelope: b"migration ping".to_vec(),
        })
        .await;
        assert_eq!(
            peer.recv().await,
            Some(RelayMessage::Enqueued { request: 1 })
        );
        assert_eq!(peer.recv_wire().await, None, "the publish was not refused");

        victim.connect(RELAY_ADDR, &relay_key).await;
        let mut pushed = Vec::new();
        while let Some(frame) = victim.recv_wire().await {
            if let WireFrame::Relay(RelayMessage::Push { from, envelope, .. }) = frame {
                pushed.push((from, envelope));
            }
        }
        assert!(
            pushed.contains(&(peer.id(), b"migration ping".to_vec())),
            "the ping is in the victim's queue"
        );
        let flooded = pushed.len() - 1;
        assert!(
            flooded * ENVELOPE <= 1024 * 1024,
            "{flooded} flooding envelopes"
        );
        victim.send_wire(&publish(pair_id, b"victim hint")).await;
        victim
            .send_wire(&WireFrame::Rendezvous(RendezvousMessage::Lookup {
                rendezvous_id: pair_id,
            }))
            .await;
        // Joining the pair's id while the peer is connected, the victim is first told
        // where the server sees the peer; then comes the lookup's answer.
        match victim.recv_wire().await {
            Some(WireFrame::Rendezvous(RendezvousMessage::PeerSeen { rendezvous_id, .. })) => {
                assert_eq!(rendezvous_id, pair_id);
            }
            other => panic!("expected where the peer is seen, got {other:?}"),
        }
        match victim.recv_wire().await {
            Some(WireFrame::Rendezvous(RendezvousMessage::Hints { hints, .. })) => {
                let hints: Vec<Vec<u8>> = hints.into_iter().map(|h| h.to_vec()).collect();
                assert_eq!(hints, vec![b"peer hint".to_vec(), b"victim hint".to_vec()]);
            }
            other => panic!("expected the pair's hints, got {other:?}"),
        }
        let state = cluster.relay.addr.send(GetServerState).await.unwrap();
        assert!(
            state.stored_bytes
                <= ATTACKERS * per_sender_bound + b"migration ping".len() + ENVELOPE_OVERHEAD
        );
        assert!(state.stored_bytes <= 8 * 1024 * 1024, "the global bound");
    });
}

#[test]
fn self_made_identities_store_nothing_on_a_relay_with_an_allowlist() {
    run_simulation(|| async {
        // The cluster's relay admits its two devices only (the default).
        let mut cluster = ClusterBuilder::new(42, 2)
            .pair(0, 1)
            .block_direct(0, 1)
            .start()
            .await;
        let relay_key = cluster.relay.public;
        // Not the cluster's seed: these keys must not be its devices' keys.
        let mut rng = ChaCha20Rng::seed_from_u64(4_200);
        for a in 0..ATTACKERS {
            let mut attacker =
                device(&cluster, &format!("attacker{a}"), 10 + a as u8, &mut rng).await;
            let answer = attacker.try_connect(RELAY_ADDR, &relay_key).await;
            assert_eq!(
                answer,
                Some(RelayMessage::Refused {
                    request: None,
                    reason: ServerRefusal::NotAdmitted
                })
            );
            // The relay closed the connection.
            assert_eq!(attacker.recv_wire().await, None);
        }
        let ready = cluster
            .run_until(Duration::from_secs(30), |c| {
                c.status(0, 1) == Some(SessionStatus::Ready)
                    && c.status(1, 0) == Some(SessionStatus::Ready)
            })
            .await;
        assert!(ready, "the admitted pair holds its session");
        let status = cluster.peer_status(0, 1).await.unwrap();
        assert_eq!(status.path, Some(PathKind::Relay), "over the relay");
        let state = cluster.relay.addr.send(GetServerState).await.unwrap();
        assert_eq!(state.counters.refused.not_admitted, ATTACKERS as u64);
        assert_eq!(state.stored_bytes, 0, "{state:?}");
        assert!(state.rendezvous_ids <= 1, "only the pair's id: {state:?}");
    });
}
