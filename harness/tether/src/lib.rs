//! Tether: end-to-end encrypted sessions between paired devices that survive network
//! changes.
//!
//! Two devices that were paired (each knows the other's public key, and both hold a
//! relationship key) keep one Noise session while either or both of them change
//! networks: only the path changes, no handshake runs, and every message `send`
//! accepted arrives exactly once and in order per channel — across reconnects, and
//! across restarts with a `data_dir`. When no direct path works, a relay carries the
//! signal and the data.
//!
//! Two devices on this machine, with a relay on loopback: Alice sends, Bob receives.
//!
//! ```
//! use tether::{Node, NodeEvent, RelationshipKey, StaticKeypair};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let (relay_addr, relay_key) = relay_on_loopback();
//! # tokio::time::timeout(std::time::Duration::from_secs(60), async {
//! // What pairing gives two devices (`tether invite` and `tether accept`): each one's
//! // key pair, the other's public key and a relationship key both hold.
//! let mut rng = rand::rngs::OsRng;
//! let alice_key = StaticKeypair::generate(&mut rng);
//! let bob_key = StaticKeypair::generate(&mut rng);
//! let (alice_public, bob_public) = (*alice_key.public(), *bob_key.public());
//! let relationship = RelationshipKey::generate(&mut rng);
//! let (alice_dir, bob_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
//!
//! let alice = Node::builder()
//!     .keypair(alice_key) // or .key_file(path): created on first start
//!     .relay(relay_addr, relay_key)
//!     .peer(bob_public, relationship.clone())
//!     .data_dir(alice_dir.path()) // accepted messages survive a crash
//!     .listen("127.0.0.1:0".parse()?) // default: every interface, any port
//!     .watch_interfaces(false) // loopback never changes
//!     .start()
//!     .await?;
//! let mut bob = Node::builder()
//!     .keypair(bob_key)
//!     .relay(relay_addr, relay_key)
//!     .peer(alice_public, relationship)
//!     .data_dir(bob_dir.path())
//!     .listen("127.0.0.1:0".parse()?)
//!     .watch_interfaces(false)
//!     .start()
//!     .await?;
//!
//! // Accepted at once (waits only while Bob's queue is full), delivered once the
//! // session is up: exactly once, in order.
//! alice.send(tether::device_id(&bob_public), b"hello".to_vec()).await?;
//! while let Some(event) = bob.next_event().await {
//!     match event {
//!         NodeEvent::Delivered { peer, payload, .. } => {
//!             assert_eq!(peer, alice.device());
//!             assert_eq!(payload, b"hello");
//!             break;
//!         }
//!         NodeEvent::Status { to, .. } => println!("session with Alice: {to}"),
//!         _ => {}
//!     }
//! }
//! alice.stop().await;
//! bob.stop().await;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })
//! # .await??;
//! # Ok(())
//! # }
//! #
//! # /// A relay on loopback, on a thread of its own (as `tether relay` runs one).
//! # fn relay_on_loopback() -> (std::net::SocketAddr, tether::PublicKey) {
//! #     let keypair = StaticKeypair::generate(&mut rand::rngs::OsRng);
//! #     let public = *keypair.public();
//! #     let (addr_tx, addr_rx) = std::sync::mpsc::channel();
//! #     std::thread::spawn(move || {
//! #         actix_rt::System::new().block_on(async move {
//! #             let endpoint = tether_transport::Endpoint::bind_udp(
//! #                 "127.0.0.1:0".parse().unwrap(),
//! #                 tether_transport::TransportConfig::default(),
//! #             )
//! #             .await
//! #             .unwrap();
//! #             addr_tx.send(endpoint.local_addr().unwrap()).unwrap();
//! #             let config = tether_rcs::RelayServerConfig::new(
//! #                 keypair,
//! #                 [7; 32],
//! #                 tether_rcs::Admission::Open,
//! #             );
//! #             let _relay = tether::actors::RelayServer::start(endpoint, config).unwrap();
//! #             std::future::pending::<()>().await;
//! #         });
//! #     });
//! #     (addr_rx.recv().unwrap(), public)
//! # }
//! ```
//!
//! Between two machines, the relay is the one `tether relay` runs (`.relay(addr,
//! PublicKey::from_hex(..)?)`), and the keys come from a key file and the pairing.
//! `examples/chat.rs` is a chat two terminals can run.
//!
//! The node can also come from the config file `tether node` reads (`docs/config.md`,
//! with the same `TETHER_*` environment overrides): [`Node::builder_from_config_file`]
//! reads and checks it, and [`NodeBuilder::from_config`] turns [`config::NodeSettings`]
//! (from [`config::load_node`]) into a builder the application may adjust before
//! starting it. A config that cannot be used is a [`config::ConfigError`] naming the key
//! and the problem.
//!
//! ```no_run
//! # async fn from_file() -> Result<(), Box<dyn std::error::Error>> {
//! let node = tether::Node::builder_from_config_file("node.toml")?
//!     .start()
//!     .await?;
//! println!("device {} on {}", node.device(), node.local_addr());
//! # Ok(())
//! # }
//! ```
//!
//! [`Node::status`] gives every peer's session and counters ([`PeerStatus`]);
//! [`Node::status_report`] the full report `tether status` shows, and [`Node::metrics`]
//! the same Prometheus text `tether node` serves at its `metrics_addr`, for the
//! application to serve (module [`metrics`]). [`Node::ping`] measures one round trip
//! over a session, and says why when no session carries it ([`PingError`]).
//!
//! [`Node`] runs on any tokio runtime: its actors run on a thread of their own, and every
//! random value it draws comes from the operating system. It watches the network
//! interfaces and migrates its sessions when they change (`watch_interfaces`). Programs
//! that run an actix system of their own can use the actors directly ([`actors`]); the
//! simulated cluster (whole nodes on a simulated network under a paused clock) is behind
//! the `simulation` feature.

mod announce;
#[cfg(feature = "simulation")]
pub mod cluster;
pub mod config;
mod driver;
mod embedded;
mod hub;
mod journal_writer;
mod link_tasks;
pub mod metrics;
mod node;
pub mod paths;
mod relay_server;

/// The node as actix actors, for programs that run an actix system of their own (and
/// for the simulator): the same node [`crate::Node`] runs on a thread of its own.
pub mod actors {
    pub use crate::announce::announced_endpoints;
    pub use crate::driver::{Rebind, TransportDriver};
    pub use crate::hub::{phase_timeline, PresenceView, MAX_PENDING_NOTICES};
    pub use crate::journal_writer::{CommitOn, SharedChannelStore, MAX_PENDING};
    pub use crate::node::{
        DurableChannels, Node, NodeConfig, NodeEvents, NodePeer, PeerStatus, PingAnswer, PingError,
        SendAllError, ServerInfo, CLOSE_LINGER, MAX_SEND_BATCH,
    };
    pub use crate::relay_server::{
        GetServerCounters, GetServerState, GetTap, RelayServer, RelayServerHandle,
        RelayServerState, StartTap,
    };
}

pub use announce::rebind_target;
pub use embedded::{
    channel_store_path, device_id, unix_ms, Events, Node, NodeBuilder, NodeStopped, StartError,
};
pub use hub::NodeEvent;
pub use node::{NodeEvents, PeerStatus, PingAnswer, PingError, SendAllError};
pub use tether_crypto::{PublicKey, RelationshipKey, StaticKeypair};
pub use tether_direct_connection::Limits;
pub use tether_protocol::{ChannelId, DeviceId, PathKind, SendError, SessionStatus};

// `tether-protocol` and `tether-crypto` do not depend on each other, yet the wire has
// fixed-size fields for crypto's values. Crypto owns the sizes (and the reasons for
// them); this crate links both, so it checks at compile time that protocol agrees.
const _: () = {
    use tether_crypto::{hints::RendezvousId, keys::KEY_LEN, migration};
    assert!(tether_protocol::wire::MIGRATION_TAG_LEN == migration::MIGRATION_TAG_LEN);
    assert!(tether_protocol::wire::PATH_CHALLENGE_LEN == migration::PATH_CHALLENGE_LEN);
    assert!(tether_protocol::wire::RENDEZVOUS_ID_LEN == std::mem::size_of::<RendezvousId>());
    assert!(tether_protocol::ids::DEVICE_ID_LEN == KEY_LEN);
    assert!(tether_protocol::CHANNEL_BINDING_LEN == tether_crypto::CHANNEL_BINDING_LEN);
};
