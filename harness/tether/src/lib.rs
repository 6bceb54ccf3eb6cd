//! Tether: end-to-end encrypted sessions between paired devices that survive network
//! changes.
//!
//! TODO crate docs

mod announce;
#[cfg(feature = "simulation")]
pub mod cluster;
mod driver;
mod hub;
mod journal_writer;
mod link_tasks;
mod node;
mod relay_server;

/// The node as actix actors, for programs that run an actix system of their own (and
/// for the simulator): the same node [`Node`](crate::Node) runs on a thread of its own.
pub mod actors {
    pub use crate::announce::announced_endpoints;
    pub use crate::driver::{Rebind, TransportDriver};
    pub use crate::hub::{phase_timeline, PresenceView, MAX_PENDING_NOTICES};
    pub use crate::journal_writer::{CommitOn, SharedChannelStore, MAX_PENDING};
    pub use crate::node::{
        DurableChannels, Node, NodeConfig, NodePeer, PeerStatus, ServerInfo, CLOSE_LINGER,
    };
    pub use crate::relay_server::{
        GetServerCounters, GetTap, RelayServer, RelayServerHandle, StartTap,
    };
}

pub use hub::NodeEvent;

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
