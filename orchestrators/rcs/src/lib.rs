//! Rcs: the relay queue (RCS) of Tether, both sides.
//!
//! - [`RelayClient`] is the device side, a sans-IO core: the device's one authenticated
//!   connection to the relay and rendezvous server, over which DirectConnection's
//!   sealed envelopes are queued for an offline peer or forwarded live to a connected
//!   one, through which the peer's envelopes arrive (pushed, or fetched on Presence's
//!   heartbeat poll), and which carries the rendezvous client's (Pms) requests and
//!   answers. [`Orchestrator`] is its actix actor.
//! - [`RelayQueueServer`] is the server's queue logic, also sans-IO: the harness runs it
//!   behind a QUIC endpoint (`tether relay`). It authenticates devices by a proof of
//!   static-key ownership ([`tether_crypto::server_auth`]), keeps bounded per-device
//!   queues with TTLs, and never looks inside an envelope (invariant 7). What it stores
//!   is reported as [`QueueChange`]s for a [`RelayQueueStore`] (see [`store`]), so a
//!   relay restart loses no envelope before its TTL.
//!
//! # Messages (the actor)
//! - in: [`RelayEnqueue`], [`RelayForward`] (DirectConnection); [`RelayPoll`] (Presence);
//!   [`RendezvousToServer`] (Pms); [`TransportEvent`] (the transport driver, for the
//!   server link).
//! - out: [`TransportCommand`] (the transport driver: dial the server, transmit, close);
//!   [`RelayDelivered`], [`RelayEnqueueResult`] (DirectConnection); [`RelayStatus`]
//!   (DirectConnection, Pms); [`RendezvousFromServer`] (Pms).
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
//!
//! # Wire (device ↔ server)
//! [`tether_protocol::RelayMessage`] inside [`tether_protocol::WireFrame::Relay`]:
//! `Challenge` → `Authenticate` → `Welcome`, then `Enqueue`/`Enqueued`, `Push`/`Delivered`,
//! `Fetch`, `Forward`/`Forwarded` and `Refused`; see [`server`] for the server's rules.
//!
//! [`RelayEnqueue`]: tether_protocol::RelayEnqueue
//! [`RelayForward`]: tether_protocol::RelayForward
//! [`RelayPoll`]: tether_protocol::RelayPoll
//! [`TransportEvent`]: tether_protocol::TransportEvent
//! [`TransportCommand`]: tether_protocol::TransportCommand
//! [`RelayDelivered`]: tether_protocol::RelayDelivered
//! [`RelayEnqueueResult`]: tether_protocol::RelayEnqueueResult
//! [`RelayStatus`]: tether_protocol::RelayStatus
//! [`RendezvousToServer`]: tether_protocol::RendezvousToServer
//! [`RendezvousFromServer`]: tether_protocol::RendezvousFromServer

mod actor;
pub mod client;
mod counters;
pub mod rate;
pub mod server;
pub mod store;

pub use actor::{GetRelayClientCounters, Orchestrator, Recipients};
pub use client::{
    ClientInput, ClientOutput, RelayClient, RelayClientConfig, RelayClientCounters,
    DEFAULT_FIRST_DIAL_REQUEST,
};
pub use counters::RefusalCounters;
pub use rate::{Rate, RateLimits};
pub use server::{
    Admission, ConnId, DeviceSeen, RelayQueueServer, RelayServerConfig, RelayServerCounters,
    ServerInput, ServerOutput, MAX_PENDING_SEEN, MAX_SEALED_RENDEZVOUS_IDS,
};
pub use store::{
    LoadedQueue, MemoryRelayQueueStore, QueueChange, RelayQueueStore, RelayStoreError,
    StoredEnvelope,
};
pub use tether_server_link::{
    ConnectFailure, ConnectionCounters, ConnectionState, ServerAuthFailure, ServerLinkConfig,
};

#[cfg(test)]
mod tests;
