//! DirectConnection: the transport executor and keeper of session keys.
//!
//! Owns, per paired peer: the [`KeyRing`](tether_crypto::KeyRing) (epochs, committed
//! PeerSecret, candidates), the path the session is bound to, the outbound queues with
//! sequence numbers, acknowledgements and retransmission, and in-order, deduplicated
//! delivery to the application. It is the ONLY code that runs a handshake, and only on
//! the establishment path or for a rekey: a handshake needs an `EstablishmentPermit`,
//! which only a `ConnectPeer` without `transport_only` creates, or a due rekey while
//! Presence allows one (`AllowRekey`: the session is Ready). A transport-only
//! reconnect, and everything a migration does, hold none, so a migration cannot
//! handshake by construction.
//!
//! The sans-IO core is [`DirectConnection`]; [`Orchestrator`] is its actor.
//!
//! # Parts
//! The core routes each input to the state it concerns, in the spirit of quinn-proto's
//! endpoint and connections:
//! - the link table (`links.rs`): links, dials, which peer each carries, path
//!   validation and the anti-amplification budget; indexed by peer;
//! - the timer table (`timers.rs`): every deadline of every peer, indexed by deadline;
//! - per peer (`state.rs`): the key ring, channels, liveness and what Presence was told;
//! - establishment (`establish.rs`), rekeys (`rekey.rs`), migration in both roles (`migration.rs`), binding a
//!   session to a path (`paths.rs`), sending and liveness (`sending.rs`), and the
//!   authenticated session frames (`frames.rs`).
//!
//! An input touches only the peer it names (or the peer of the link it came on), and a
//! timeout runs only the timers that are due, so the work per event does not grow with
//! the number of peers.
//!
//! # Messages
//! - in: `ConnectPeer`, `SendMigrationPing`, `RelayMigrationPing`, `CarryOverRelay`,
//!   `EvictSession`, `AllowRekey` (Presence); `SendMessage`
//!   (application: answered at once with the sequence number or the refusal);
//!   `TransportEvent` (transport driver); `RelayDelivered`, `RelayStatus` (Rcs);
//!   `BlueprintCompiled` (ConnectionBlueprint: the peer's candidate order, whenever it
//!   changes); `PeerEndpointHint` (Pms); `JournalCommitted` (the node's journal writer);
//!   `CloseSessions` (the node, stopping: answered with how many peers were told).
//! - out: `TransportCommand` (transport driver); `RelayForward`, `RelayEnqueue` (Rcs);
//!   `HandshakeStarted`, `SessionReady`, `ConnectFailed`, `InboundMigrationPing`,
//!   `PathLost`, `PeerReset`, `LivenessReport`, `DirectDialFailed`, `PathMeasured`,
//!   `PeerEndpointsChanged`, `SendWaiting` (Presence); `SessionReady`, `PathMeasured`,
//!   `PeerAnnounced` (ConnectionBlueprint); `MessageDelivered` (application);
//!   `JournalEntry` (the node's journal writer, when a store keeps the channels).
//!
//! # Where to dial
//! The peer's newest announcement (an authenticated migration ping or ack, or a sealed
//! rendezvous hint) first, then ConnectionBlueprint's latest order, at most
//! `MAX_DIRECT_CANDIDATES`, and the relay last. A new announcement goes to
//! ConnectionBlueprint (`PeerAnnounced`, to rank and remember) and to Presence
//! (`PeerEndpointsChanged`, to decide whether to try it now).
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
//!   its QUIC anti-amplification budget) and every candidate → relay queue and then the
//!   queued data through the relay when Presence says no direct answer came in time
//!   (skipped once acknowledged) → acknowledged → bound to a validated path → Ready.
//!   When to signal, when to fall back to the relay, and when the migration has failed
//!   are Presence's decisions; this crate executes them and keeps the paths.
//! - the peer's migration: ping verified → acknowledged on the path it came by; the
//!   unacknowledged data is resent at once on the link that reaches the peer's new
//!   address (within the 3× budget) while that address answers its challenge → Ready.
//! - links: a link the session does not need (not the bound link, a connect's link,
//!   nor the newest link in each direction, the standbys QUIC migrates when either side
//!   moves) is closed once quiet for `idle_link_close_after`; beyond
//!   `MAX_LINKS_PER_PEER` (8) the least recently active go at once. A validated bound
//!   link is left only during a connect or migration, or for a link that reaches the
//!   peer's newest address when the bound one does not.
//! - evicted: keys kept for epoch numbering but unused until a newer epoch commits;
//!   queued messages survive and are resent, and the receiver dedupes by sequence.
//! - journalled (a store keeps the channels): each accepted message, release by the
//!   peer's ack and new receiving position becomes a `JournalEntry`; an ack this side
//!   owes waits until the store committed the entry with the position it acknowledges.
//!   At start the channels come back from the store (`Config::restored`).
//! - operator pings (`operator_ping.rs`): an operator's ping (`tether ping`) is a liveness ping of its
//!   own id kind on the bound path, measured when the peer's ordinary pong returns.
//! - closing (`closing.rs`): stopping on purpose, every peer with a usable session gets
//!   a sealed `Reset { reason: Closed }` on its bound path (on a link, in the link's
//!   QUIC close).
//! - rekey (`rekey.rs`): the committed generation reached `rekey_after` and a message
//!   went either way since, or `rekey_after_messages` frames were sealed under it →
//!   while Presence allows (Ready) and nothing else is in progress, a handshake marked
//!   as a rekey on the bound path → its commit replaces only the keys and the epoch
//!   (`SessionReady { rekey: true }`; path, channels and status untouched; the old keys
//!   open late frames until the next commit). Refused (the session left Ready, or this
//!   device's network changed): the pending initiation is given up, and the peer's
//!   rekey initiations go unanswered until allowed again.
//!
//! # Timers (per peer)
//! | timer | armed | when it fires |
//! |---|---|---|
//! | `ConnectDeadline` | a connect starts (`connect_timeout`) | the connect is reported failed |
//! | `ConnectRelay` | a connect with the relay among its candidates (`relay_fallback_after`, or at once without direct candidates or when the dial fails) | the relay carries the connect (re-armed while the relay is down, and run at once when it comes up) |
//! | `HandshakeRetry` | message 1 sent (`handshake_retry`) | a fresh message 1 |
//! | `Heartbeat` | a path is bound (`heartbeat_interval`) | a liveness ping; `missed_heartbeats` in a row report the path dead |
//! | `Probe` | bound to the relay (at once, then `direct_probe_interval`, doubling up to `MAX_PROBE_DOUBLINGS` times) | the peer's direct addresses are dialled, each at once, in parallel |
//! | `AckDelay` | in-order data came and was not acknowledged yet (`frames::ACK_DELAY`, 5 ms) | every channel that owes one is acknowledged |
//! | `Retransmit` | data is unacknowledged on a bound path (`rto`) | the due messages are resent |
//! | `Rekey` | a generation commits (`rekey_after`), or a rekey went unanswered (`connect_timeout`) | the next application message (or this one, if allowed and one went since) starts a rekey |

mod actor;
mod candidates;
mod channels;
mod closing;
mod config;
mod core;
mod establish;
mod frames;
mod links;
mod migration;
mod nat;
mod operator_ping;
mod path_choice;
mod paths;
mod rekey;
mod sending;
mod state;
mod timers;

pub use actor::{CloseSessions, GetPeerSnapshots, Orchestrator, PingPeer, PingReply, Recipients};
pub use channels::{Inbound, Outbound, Received};
pub use config::{Config, Limits, PeerConfig};
pub use core::{Counters, DirectConnection, Input, Output, PeerSnapshot, MAX_INBOUND_CHANNELS};
pub use links::AMPLIFICATION_FACTOR;
pub use nat::{NatMapping, SeenByPeer, OBSERVED_RETELL_AFTER};
pub use operator_ping::{PingAnswered, PingRefused, PingSent, MAX_PINGS_PER_PEER};
pub use path_choice::{
    DIRECT_SLOWER_TOLERANCE_MS, FALLBACK_HOLD, FALLBACK_MISSED, FALLBACK_SLOWER_MS,
    MAX_PROBE_DOUBLINGS, QUALITY_WINDOW, RELAY_PROBE_MIN_INTERVAL,
};
pub use state::{DeclinedDirect, PathTraffic, PeerCounters};

#[cfg(test)]
mod tests;
