//! ConnectionBlueprint: which paths to try to reach a peer, in which order.
//!
//! The policy is a pure function, [`order_candidates`], over what is known of each of a
//! peer's addresses: how it was learned, when, whether it worked and how fast. The
//! sans-IO core [`ConnectionBlueprint`] keeps those records per peer and answers
//! [`RecompileBlueprint`] requests; the actor [`Orchestrator`] only
//! feeds it messages with the runtime's clock and forwards its outputs.
//!
//! # Messages
//! - in: [`RecompileBlueprint`] (Presence, on establishment and on a migration signal),
//!   [`PathMeasured`] (DirectConnection), [`PeerEndpointHint`] (Pms), [`SessionReady`]
//!   (DirectConnection: the bound address becomes the last known good one).
//! - out: [`BlueprintCompiled`] to Presence.
//!
//! # States
//! None beyond the per-peer records; the actor arms no timer.
//!
//! [`RecompileBlueprint`]: tether_protocol::RecompileBlueprint
//! [`PathMeasured`]: tether_protocol::PathMeasured
//! [`PeerEndpointHint`]: tether_protocol::PeerEndpointHint
//! [`SessionReady`]: tether_protocol::SessionReady
//! [`BlueprintCompiled`]: tether_protocol::BlueprintCompiled

mod actor;
mod core;
mod policy;

pub use actor::{AddPeer, Orchestrator, Recipients};
pub use core::{Config, ConnectionBlueprint, Input, Output};
pub use policy::{order_candidates, AddressRecord, MAX_DIRECT_CANDIDATES};
