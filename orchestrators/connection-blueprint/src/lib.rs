//! ConnectionBlueprint: which paths to try to reach a peer, in which order.
//!
//! The policy is a pure function, [`order_candidates`], over what is known of each of a
//! peer's addresses: how it was learned, when, whether it worked and how fast. The
//! sans-IO core [`ConnectionBlueprint`] is the one store of those records: it compiles a
//! peer's order after every input that concerns the peer and sends it to
//! DirectConnection when it changed, so a connect or a migration ping never waits for
//! it. The actor [`Orchestrator`] only feeds it messages with the runtime's clock and
//! forwards its outputs.
//!
//! # Messages
//! - in: [`AddPeer`] (the node, at start: configured addresses), [`PeerAnnounced`]
//!   (DirectConnection: the peer's authenticated announcement or a rendezvous hint; it
//!   ranks first), [`PathMeasured`] (DirectConnection), [`SessionReady`]
//!   (DirectConnection: the bound address becomes the last known good one).
//! - out: [`BlueprintCompiled`] to DirectConnection.
//!
//! # States
//! None beyond the per-peer records and the order last sent.
//!
//! # Timers
//! | timer | armed | on expiry |
//! |---|---|---|
//! | staleness | a fresh announced or hinted address exists | recompile: it drops below the configured and last-known-good addresses |
//!
//! [`PeerAnnounced`]: tether_protocol::PeerAnnounced
//! [`PathMeasured`]: tether_protocol::PathMeasured
//! [`SessionReady`]: tether_protocol::SessionReady
//! [`BlueprintCompiled`]: tether_protocol::BlueprintCompiled

mod actor;
mod core;
mod policy;

pub use actor::{AddPeer, Orchestrator, Recipients};
pub use core::{Config, ConnectionBlueprint, Input, Output};
pub use policy::{order_candidates, AddressRecord};
