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
//! ```no_run
//! use tether::{Node, NodeEvent, PublicKey, RelationshipKey};
//!
//! # async fn chat() -> Result<(), Box<dyn std::error::Error>> {
//! let relay_key = PublicKey::from_hex("<the relay's public key, hex>")?;
//! let peer_key = PublicKey::from_hex("<the other device's public key, hex>")?;
//! let relationship = RelationshipKey::from_hex("<the pair's relationship key, hex>")?;
//!
//! let mut node = Node::builder()
//!     .key_file("device.key") // created on first start
//!     .relay("203.0.113.7:7300".parse()?, relay_key)
//!     .peer(peer_key, relationship)
//!     .data_dir("tether-data") // accepted messages survive a crash
//!     .start()
//!     .await?;
//! let peer = tether::device_id(&peer_key);
//!
//! node.send(peer, b"hello".to_vec()).await?; // waits while the peer's queue is full
//! while let Some(event) = node.next_event().await {
//!     match event {
//!         NodeEvent::Delivered { payload, .. } => println!("{}", String::from_utf8_lossy(&payload)),
//!         NodeEvent::Acknowledged { below, .. } => println!("the peer has everything below {below}"),
//!         NodeEvent::Status { to, .. } => println!("session {to}"),
//!         _ => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```
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
//! interfaces and migrates its sessions when they change (`watch_interfaces`).
//! `examples/chat.rs` is a chat two terminals can run. Programs that run an actix system
//! of their own can use the actors directly ([`actors`]); the simulated cluster (whole
//! nodes on a simulated network under a paused clock) is behind the `simulation`
//! feature.

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
        SendAllError, ServerInfo, CLOSE_LINGER,
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
pub use node::{NodeEvents, PeerStatus, PingAnswer, PingError};
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
