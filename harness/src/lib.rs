//! The `tether` binary's commands (node, relay, keys, demo, status…) and the
//! integration harness: the simulated cluster and the node and relay of the `tether`
//! library crate, re-exported under the names the tests and benchmarks use.

pub mod app;
pub mod nat_matrix;

pub use tether::actors::{
    announced_endpoints, CommitOn, DurableChannels, GetServerCounters, GetServerState, GetTap,
    Node, NodeConfig, NodePeer, PeerStatus, PresenceView, Rebind, RelayServer, RelayServerHandle,
    RelayServerState, ServerInfo, SharedChannelStore, StartTap, TransportDriver, CLOSE_LINGER,
    MAX_PENDING,
};
pub use tether::cluster::{self, run_simulation, ClusterBuilder, SimCluster, SimDevice};
pub use tether::NodeEvent;

/// The node's event hub, as the `tether` library names it.
pub mod hub {
    pub use tether::actors::{phase_timeline, PresenceView};
    pub use tether::NodeEvent;
}

/// The node's types, as the `tether` library names them.
pub mod node {
    pub use tether::actors::{DurableChannels, Node, NodeConfig, NodePeer, PeerStatus, ServerInfo};
}

/// The relay server, as the `tether` library names it.
pub mod relay_server {
    pub use tether::actors::{
        GetServerCounters, GetServerState, RelayServer, RelayServerHandle, RelayServerState,
    };
}

/// The channel journal writer's settings.
pub mod journal_writer {
    pub use tether::actors::CommitOn;
}
