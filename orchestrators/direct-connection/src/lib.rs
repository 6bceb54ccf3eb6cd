//! DirectConnection: the transport executor and keeper of session keys.
//!
//! Owns, per paired peer: the [`KeyRing`](tether_crypto::KeyRing) (epochs, committed
//! PeerSecret, candidates), the path the session is bound to, the outbound queues with
//! sequence numbers, acknowledgements and retransmission, and in-order, deduplicated
//! delivery to the application. It is the ONLY code that runs a handshake, and only on
//! the establishment path: a handshake needs an `EstablishmentPermit`, which only a
//! `ConnectPeer` without `transport_only` creates. A transport-only reconnect, and
//! everything a migration does, hold none, so a migration cannot handshake by
//! construction.
//!
//! The sans-IO core is [`DirectConnection`]; [`DirectConnectionOrchestrator`] is its
//! actor.
//!
//! # Messages
//! - in: `ConnectPeer`, `SendMigrationPing`, `EvictSession` (Presence); `SendMessage`
//!   (application); `TransportEvent` (transport driver); `RelayDelivered`, `RelayStatus`
//!   (Rcs).
//! - out: `TransportCommand` (transport driver); `RelayForward`, `RelayEnqueue` (Rcs);
//!   `HandshakeStarted`, `SessionReady`, `ConnectFailed`, `InboundMigrationPing`,
//!   `MigrationAcked`, `PathLost`, `PeerReset`, `LivenessReport` (Presence);
//!   `SessionReady`, `PathMeasured` (ConnectionBlueprint); `SendResult`,
//!   `MessageDelivered` (application).
//!
//! # States (per peer)
//! - no keys → handshake pending (message 1 sent, retried) → candidate confirmed →
//!   committed (an authenticated frame under it arrived) → bound to a path.
//! - bound path: a dialled link, an accepted link that answered a path challenge, or the
//!   relay when nothing direct validates in time. A new path is challenged under the
//!   session keys before the session moves; until then at most 3× the bytes received
//!   from it are sent to it.
//! - standby link: bound to a link the peer dialled, we dial one of our own to it too,
//!   so that when we move QUIC migrates a link of ours (an accepted one dies with our
//!   old address).
//! - our migration: padding, then the ping, on every link (so the peer's answer fits
//!   its QUIC anti-amplification budget) and every candidate → relay queue after a
//!   short bound → acknowledged → bound to a validated path → Ready.
//! - the peer's migration: ping verified → acknowledged on the path it came by; the
//!   unacknowledged data is resent at once on the link that reaches the peer's new
//!   address (within the 3× budget) while that address answers its challenge → Ready.
//! - evicted: keys kept for epoch numbering but unused until a newer epoch commits;
//!   queued messages survive and are resent, and the receiver dedupes by sequence.

mod actor;
mod channels;
mod config;
mod core;
mod frames;
mod state;

pub use actor::{DcRecipients, DirectConnectionOrchestrator, GetPeerSnapshots};
pub use channels::{Inbound, Outbound, Received};
pub use config::{DcConfig, DcLimits, PeerConfig};
pub use core::{DcCounters, DirectConnection, Input, Output, PeerSnapshot, AMPLIFICATION_FACTOR};
pub use state::{PathTraffic, PeerCounters};

#[cfg(test)]
mod tests;
