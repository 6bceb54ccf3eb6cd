//! Presence: the migration decision maker.
//!
//! Owns each peer's [`SessionStatus`](tether_protocol::SessionStatus) machine, the
//! migration window, the migration ping rounds, the heartbeat fallback poll of the relay
//! queue, and when to connect and recover (with jitter and a bound on concurrent
//! connects). The sans-IO core is [`Presence`]; [`Orchestrator`] is its actor.
//!
//! # Messages
//! - in: `ConnectivityChanged` (transport), `BlueprintCompiled` (ConnectionBlueprint),
//!   `HandshakeStarted`, `SessionReady`, `ConnectFailed`, `InboundMigrationPing`,
//!   `MigrationAcked`, `PathLost`, `PeerReset`, `LivenessReport` (DirectConnection),
//!   `PeerEndpointHint` (Pms).
//! - out: `RecompileBlueprint` (ConnectionBlueprint); `ConnectPeer` (PresenceConnect),
//!   `SendMigrationPing`, `EvictSession` (DirectConnection); `PublishEndpointHint`,
//!   `LookupEndpointHint` (Pms); `RelayPoll` (Rcs); `StatusChanged` and
//!   [`MigrationEvent`] (the node: a migration started, completed or failed; nothing
//!   else derives these).
//!
//! # States (per peer)
//! `Connecting → Handshaking → Ready ⇄ Degraded → ReconnectingOutbound |
//! ReconnectingInbound → Ready`, `Evicted → Recovering → Ready`, `Closed`.
//! - On a local network change every established peer goes Ready → Degraded →
//!   ReconnectingOutbound: the window starts, migration ping rounds run (first one
//!   jittered per peer), PresenceConnect is blocked, and after an unanswered round the
//!   rendezvous hints are looked up.
//! - On an authenticated inbound migration ping: ReconnectingInbound, the blueprint is
//!   recompiled with the peer's new endpoints first and a `ConnectPeer` with
//!   `transport_only = true` is sent. In ReconnectingOutbound (both moved) the pings are
//!   redirected to the peer's new endpoints instead; no connect.
//! - When the window passes without Ready: Evicted, `EvictSession`, then Recovering
//!   after a jittered delay: a full handshake with a new epoch.

mod actor;
mod core;

pub use actor::{Orchestrator, Recipients};
pub use core::{Config, Input, MigrationEvent, Output, Presence, MAX_FIRST_PING_SPREAD};

#[cfg(test)]
mod tests;
