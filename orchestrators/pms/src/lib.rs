//! Pms: the rendezvous service (PMS) of Tether, both sides.
//!
//! Two paired devices meet at the server under their pair's rendezvous id (a hash of
//! their relationship key) and leave each other sealed endpoint hints, so that after
//! both moved each can learn the other's new address.
//!
//! - [`RendezvousClient`] is the device side, a sans-IO core: its own authenticated
//!   connection to the server, publishing this device's endpoints sealed under each
//!   peer's RK and looking up the peer's. [`Orchestrator`] is its actix actor.
//! - [`RendezvousTable`] is the server's table logic, also sans-IO: membership (two
//!   devices per id), the latest hint per member with a TTL, bounded sizes. It stores
//!   ciphertext only (invariant 7).
//!
//! # Messages (the actor)
//! - in: [`PublishEndpointHint`], [`LookupEndpointHint`] (Presence); [`TransportEvent`]
//!   (the transport driver, for the rendezvous link).
//! - out: [`TransportCommand`] (the transport driver); [`PeerEndpointHint`]
//!   (DirectConnection, which passes a new announcement on).
//!
//! # States (the client)
//! `Idle → Dialling → Authenticating → Connected`, and `Disconnected` (waiting for a
//! jittered exponential backoff) after any failure; see [`client`].
//!
//! # Timers (the client)
//! | timer | armed | on expiry |
//! |---|---|---|
//! | connect deadline | dialling or authenticating (`connect_timeout`, 10 s) | the attempt is abandoned: Disconnected |
//! | reconnect | Disconnected (jittered exponential backoff, 250 ms up to 30 s) | dial again |
//! | hint refresh (per peer) | connected, a hint published (half `hint_ttl`) | the hint is published again |
//!
//! # Wire (device ↔ server)
//! Authentication uses the relay's messages ([`tether_protocol::RelayMessage`]:
//! `Challenge`, `Authenticate`, `Welcome`, `Refused`); then
//! [`tether_protocol::RendezvousMessage`]: `Publish`, `Lookup`, `Hints`, `Refused`. The
//! endpoint list inside a hint is encoded by [`endpoints`].
//!
//! [`PublishEndpointHint`]: tether_protocol::PublishEndpointHint
//! [`LookupEndpointHint`]: tether_protocol::LookupEndpointHint
//! [`PeerEndpointHint`]: tether_protocol::PeerEndpointHint
//! [`TransportEvent`]: tether_protocol::TransportEvent
//! [`TransportCommand`]: tether_protocol::TransportCommand

mod actor;
pub mod client;
pub mod endpoints;
pub mod table;

pub use actor::{GetRendezvousClientCounters, Orchestrator, Recipients};
pub use client::{
    ClientInput, ClientOutput, RendezvousClient, RendezvousClientConfig, RendezvousClientCounters,
    DEFAULT_FIRST_DIAL_REQUEST,
};
pub use endpoints::{decode_endpoints, encode_endpoints, EndpointsError};
pub use table::{RendezvousTable, RendezvousTableConfig, TableCounters};
pub use tether_server_link::{
    ConnectionCounters, ConnectionState, ServerAuthFailure, ServerLinkConfig,
};

#[cfg(test)]
mod tests;
