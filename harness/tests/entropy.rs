//! Production randomness: a node started for a real network draws its RNG seeds from the
//! operating system, so two nodes started with the very same configuration never share
//! a Noise ephemeral key. Only the simulator's constructor takes a seed.

// A panic in a test is a failed test, not a crashed node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tether_crypto::{RelationshipKey, StaticKeypair};
use tether_harness::{run_simulation, Node, NodeConfig, NodePeer, ServerInfo};
use tether_protocol::WireFrame;
use tether_transport::sim::SimNetwork;
use tether_transport::{Endpoint, TransportConfig};

/// Bytes of the initiator's ephemeral public key at the start of Noise IK message 1.
const EPHEMERAL_KEY_LEN: usize = 32;

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

/// How two nodes are started.
#[derive(Clone, Copy)]
enum Start {
    /// `Node::start`: the production constructor.
    Production,
    /// `Node::start_simulated` with this seed for both.
    Simulated(u64),
}

/// Starts two nodes with one and the same configuration (same static key, same peer,
/// same clock) on two hosts, lets each dial the peer's address, and returns the
/// ephemeral key of the first handshake initiation each of them sent.
fn ephemeral_keys(start: Start) -> [Vec<u8>; 2] {
    run_simulation(|| async move {
        let net = SimNetwork::new(1);
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let device = StaticKeypair::generate(&mut rng);
        let peer = StaticKeypair::generate(&mut rng);
        let relay = StaticKeypair::generate(&mut rng);
        let rk = RelationshipKey::generate(&mut rng);
        let listen = SocketAddr::new(ip(9), 7000);
        let listener_host = net.add_host("peer", [ip(9)]);
        let listener = Endpoint::bind_sim(&net, listener_host, listen, TransportConfig::seeded(3))
            .await
            .unwrap();
        let config = NodeConfig {
            keypair: device,
            peers: vec![NodePeer {
                public: *peer.public(),
                rk,
                addrs: vec![listen],
            }],
            // No relay answers there: the nodes can only dial the peer directly.
            server: ServerInfo {
                addr: SocketAddr::new(ip(99), 7300),
                public: *relay.public(),
            },
            presence: tether_presence::Config::default(),
            limits: tether_direct_connection::Limits::default(),
            blueprint: tether_connection_blueprint::Config::default(),
            unix_ms_at_start: 1_700_000_000_000,
            interfaces: Vec::new(),
            durable: None,
        };
        let mut nodes = Vec::new();
        for i in 0..2_u8 {
            let host = net.add_host(&format!("device{i}"), [ip(i + 1)]);
            let addr = SocketAddr::new(ip(i + 1), 7001);
            let endpoint = Endpoint::bind_sim(&net, host, addr, TransportConfig::seeded(4))
                .await
                .unwrap();
            let node = match start {
                Start::Production => Node::start(config.clone(), endpoint),
                Start::Simulated(seed) => Node::start_simulated(config.clone(), endpoint, seed),
            };
            nodes.push(node.unwrap());
        }
        let mut keys: Vec<(IpAddr, Vec<u8>)> = Vec::new();
        while keys.len() < 2 {
            let link = tokio::time::timeout(Duration::from_secs(30), listener.accept())
                .await
                .expect("both nodes dial the peer within 30 s")
                .expect("the listener is open");
            let from = link.handle().remote_addr().ip();
            let (_sender, mut receiver) = link.split();
            let frame = receiver.recv_frame().await.unwrap().unwrap();
            let WireFrame::HandshakeInit(init) = tether_protocol::decode(&frame).unwrap() else {
                panic!("the first frame of a dialled link is a handshake initiation");
            };
            if keys.iter().all(|(seen, _)| *seen != from) {
                keys.push((from, init.noise[..EPHEMERAL_KEY_LEN].to_vec()));
            }
        }
        for node in &nodes {
            node.abort();
        }
        [keys[0].1.clone(), keys[1].1.clone()]
    })
}

#[test]
fn two_production_nodes_with_one_config_never_share_an_ephemeral_key() {
    let [a, b] = ephemeral_keys(Start::Production);
    assert_ne!(a, b, "ephemeral keys come from the OS, not from the config");
}

#[test]
fn the_simulator_replays_a_seed_exactly() {
    // The check above can see sharing: simulated nodes with one seed do share keys.
    let [a, b] = ephemeral_keys(Start::Simulated(7));
    assert_eq!(a, b, "one seed, one stream of random values");
}
