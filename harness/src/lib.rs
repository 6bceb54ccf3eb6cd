//! The Tether node, the relay and rendezvous server, and the integration harness.
//!
//! - [`Node`]: one device: the five orchestrator actors, the transport driver and the
//!   event hub, wired through `protocol` messages, behind `send`, events and `status`.
//! - [`RelayServer`]: the relay queue and rendezvous services behind one QUIC endpoint,
//!   on real UDP or the simulated network.
//! - [`cluster`]: the simulated cluster for scenario tests: whole nodes on the
//!   simulated network under tokio's paused clock.

mod announce;
pub mod app;
pub mod cluster;
mod driver;
mod hub;
mod journal_writer;
mod link_tasks;
mod node;
mod relay_server;

pub use announce::announced_endpoints;
pub use cluster::{run_simulation, ClusterBuilder, SimCluster, SimDevice};
pub use driver::{Rebind, TransportDriver};
pub use hub::{NodeEvent, PresenceView};
pub use journal_writer::{CommitOn, SharedChannelStore, MAX_PENDING};
pub use node::{DurableChannels, Node, NodeConfig, NodePeer, PeerStatus, ServerInfo, CLOSE_LINGER};
pub use relay_server::{
    GetServerCounters, GetServerState, GetTap, RelayServer, RelayServerHandle, RelayServerState,
    StartTap,
};

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
