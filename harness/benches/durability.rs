//! What keeping channels on disk costs a sender: messages per second from `Node::send`
//! to the peer's delivery, two nodes on real loopback UDP in one process, with the
//! channels in a redb file (`CommitOn::BlockingPool`, as `tether node` does) and with no
//! store. Two load shapes: one send at a time (each waits for its own commit), and 64
//! sends in flight at once (their commits are shared: group commit).
//!
//! Run: `cargo bench -p tether-harness --bench durability`
//! (`TETHER_BENCH_MESSAGES` sets the messages per row, 2000 by default).

// A benchmark that cannot set up has nothing to measure: it stops with the reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures_util::future::join_all;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tether_crypto::{RelationshipKey, StaticKeypair};
use tether_harness::{
    CommitOn, DurableChannels, Node, NodeConfig, NodeEvent, NodePeer, RelayServer, ServerInfo,
};
use tether_protocol::{DeviceId, SessionStatus};
use tether_rcs::{Admission, RelayServerConfig};
use tether_store::RedbChannelStore;
use tether_transport::{Endpoint, TransportConfig};

/// Sends in flight at once in the concurrent rows: enough to share commits, far below
/// the per-peer queue bound.
const IN_FLIGHT: usize = 64;
/// 1 KiB payloads: a chat message or a small record.
const PAYLOAD: usize = 1024;

struct Pair {
    a: Node,
    b: Node,
    b_id: DeviceId,
    _dir: Option<tempfile::TempDir>,
}

async fn pair(durable: bool, seed: u64) -> Pair {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let relay_endpoint = Endpoint::bind_udp(loopback, TransportConfig::default())
        .await
        .unwrap();
    let relay_key = StaticKeypair::generate(&mut rng);
    let keys = [
        StaticKeypair::generate(&mut rng),
        StaticKeypair::generate(&mut rng),
    ];
    let admitted = keys
        .iter()
        .map(|k| DeviceId(*k.public().as_bytes()))
        .collect();
    let relay_config = RelayServerConfig::new(relay_key, [1; 32], Admission::Allowlist(admitted));
    let relay = RelayServer::start(relay_endpoint, relay_config).unwrap();
    let rk = RelationshipKey::generate(&mut rng);
    let mut endpoints = Vec::new();
    for _ in 0..2 {
        endpoints.push(
            Endpoint::bind_udp(loopback, TransportConfig::default())
                .await
                .unwrap(),
        );
    }
    let addrs: Vec<SocketAddr> = endpoints.iter().map(|e| e.local_addr().unwrap()).collect();
    let dir = durable.then(|| tempfile::tempdir().unwrap());
    let mut nodes = Vec::new();
    for (i, endpoint) in endpoints.into_iter().enumerate() {
        let other = 1 - i;
        let durable = dir.as_ref().map(|dir| {
            let store = RedbChannelStore::open(&dir.path().join(format!("{i}.redb"))).unwrap();
            DurableChannels {
                store: Arc::new(Mutex::new(Box::new(store))),
                commit_on: CommitOn::BlockingPool,
            }
        });
        let config = NodeConfig {
            keypair: keys[i].clone(),
            peers: vec![NodePeer {
                public: *keys[other].public(),
                rk: rk.clone(),
                addrs: vec![addrs[other]],
            }],
            server: ServerInfo {
                addr: relay.local_addr,
                public: relay.public,
            },
            presence: tether_presence::Config::default(),
            limits: tether_direct_connection::Limits::default(),
            blueprint: tether_connection_blueprint::Config::default(),
            unix_ms_at_start: 1_700_000_000_000,
            interfaces: Vec::new(),
            durable,
        };
        nodes.push(Node::start(config, endpoint).unwrap());
    }
    let b = nodes.pop().unwrap();
    let a = nodes.pop().unwrap();
    let b_id = DeviceId(*keys[1].public().as_bytes());
    let mut pair = Pair {
        a,
        b,
        b_id,
        _dir: dir,
    };
    // Both Ready: each node's event stream says so.
    for node in [&mut pair.a, &mut pair.b] {
        let ready = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(event) = node.next_event().await {
                if matches!(
                    event,
                    NodeEvent::Status {
                        to: SessionStatus::Ready,
                        ..
                    }
                ) {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(ready, Ok(true), "no session");
    }
    // Drop what B reported while connecting, so only deliveries are counted.
    while pair.b.try_next_event().is_some() {}
    std::mem::forget(relay);
    pair
}

/// Sends `count` messages, `in_flight` at a time, and waits until B delivered them all;
/// returns messages per second.
async fn run(pair: &mut Pair, count: usize, in_flight: usize) -> f64 {
    let payload = vec![7u8; PAYLOAD];
    let started = Instant::now();
    let mut sent = 0;
    let mut delivered = 0;
    while sent < count {
        let batch = in_flight.min(count - sent);
        let sends = (0..batch).map(|_| pair.a.send(pair.b_id, payload.clone()));
        for result in join_all(sends).await {
            result.unwrap();
        }
        sent += batch;
        while let Some(event) = pair.b.try_next_event() {
            if matches!(event, NodeEvent::Delivered { .. }) {
                delivered += 1;
            }
        }
    }
    while delivered < count {
        match pair.b.next_event().await {
            Some(NodeEvent::Delivered { .. }) => delivered += 1,
            Some(_) => {}
            None => panic!("B stopped"),
        }
    }
    count as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let count: usize = std::env::var("TETHER_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let system = actix_rt::System::new();
    system.block_on(async move {
        println!("| store | sends in flight | messages/s (1 KiB, {count} per row) |");
        println!("|---|---|---|");
        for (durable, name) in [(false, "none"), (true, "redb file")] {
            for in_flight in [1, IN_FLIGHT] {
                let mut pair = pair(durable, 7).await;
                // Warm up (first commits, congestion window).
                run(&mut pair, 200.min(count), in_flight).await;
                let rate = run(&mut pair, count, in_flight).await;
                println!("| {name} | {in_flight} | {rate:.0} |");
                pair.a.abort();
                pair.b.abort();
            }
        }
    });
}
