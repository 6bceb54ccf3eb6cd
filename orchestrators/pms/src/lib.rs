//! Pms: the rendezvous service (PMS) of Tether, both sides.
//!
//! Two paired devices meet at the server under their pair's rendezvous id (a hash of
//! their relationship key) and leave each other sealed endpoint hints, so that after
//! both moved each can learn the other's new address.
//!
//! - [`RendezvousClient`] is the device side, a sans-IO core: publishing this device's
//!   endpoints sealed under each peer's RK and looking up the peer's, on the device's
//!   one connection to the server, which the relay client (Rcs) owns.
//!   [`Orchestrator`] is its actix actor.
//! - [`RendezvousTable`] is the server's table logic, also sans-IO: membership (two
//!   devices per id), the latest hint per member with a TTL, bounded sizes. It stores
//!   ciphertext only (invariant 7).
//!
//! # Messages (the actor)
//! - in: [`PublishEndpointHint`], [`LookupEndpointHint`] (Presence); [`RelayStatus`]
//!   and [`RendezvousFromServer`] (Rcs: the server connection's state and the server's
//!   answers).
//! - out: [`RendezvousToServer`] (Rcs, which sends it on the server connection);
//!   [`PeerEndpointHint`] (DirectConnection, which passes a new announcement on).
//!
//! # States (the client)
//! Disconnected (requests are held: the latest publish per peer, lookups up to a bound)
//! and Connected (requests go out); see [`client`].
//!
//! # Timers (the client)
//! | timer | armed | on expiry |
//! |---|---|---|
//! | hint refresh (per peer) | connected, a hint published (half `hint_ttl`) | the hint is published again |
//!
//! # Wire (device ↔ server)
//! [`tether_protocol::RendezvousMessage`]: `Publish`, `Lookup`, `Hints`, `Refused`, on
//! the connection the relay client authenticated. The endpoint list inside a hint is
//! encoded by [`endpoints`].
//!
//! [`PublishEndpointHint`]: tether_protocol::PublishEndpointHint
//! [`LookupEndpointHint`]: tether_protocol::LookupEndpointHint
//! [`PeerEndpointHint`]: tether_protocol::PeerEndpointHint
//! [`RelayStatus`]: tether_protocol::RelayStatus
//! [`RendezvousFromServer`]: tether_protocol::RendezvousFromServer
//! [`RendezvousToServer`]: tether_protocol::RendezvousToServer

mod actor;
pub mod client;
pub mod endpoints;
pub mod table;

pub use actor::{GetRendezvousClientCounters, Orchestrator, Recipients};
pub use client::{
    ClientInput, ClientOutput, RendezvousClient, RendezvousClientConfig, RendezvousClientCounters,
};
pub use endpoints::{decode_endpoints, encode_endpoints, EndpointsError};
pub use table::{RendezvousTable, RendezvousTableConfig, TableCounters, MAX_PENDING_PUSHES};

#[cfg(test)]
mod tests;
