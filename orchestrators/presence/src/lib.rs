//! Presence: the migration decision maker.
//!
//! Owns each peer's [`SessionStatus`](tether_protocol::SessionStatus) machine, the
//! migration window, the migration ping rounds, the heartbeat fallback poll of the relay
//! queue, and when to connect and recover (with jitter and a bound on concurrent
//! connects). The sans-IO core is [`Presence`]; [`Orchestrator`] is its actor.
//!
//! # Messages
//! - in: `ConnectivityChanged` (transport), `HandshakeStarted`, `SessionReady`,
//!   `ConnectFailed`, `InboundMigrationPing`, `PathLost`, `PeerReset`, `LivenessReport`,
//!   `PathMeasured`, `DirectDialFailed`, `PeerEndpointsChanged`, `SendWaiting`
//!   (DirectConnection).
//! - out: `ConnectPeer` (PresenceConnect),
//!   `SendMigrationPing`, `RelayMigrationPing`, `CarryOverRelay`, `EvictSession`,
//!   `AllowRekey` (DirectConnection); `PublishEndpointHint`,
//!   `LookupEndpointHint` (Pms); `RelayPoll` (Rcs); `StatusChanged` and
//!   [`MigrationEvent`] (the node: a migration started, completed or failed; nothing
//!   else derives these).
//!
//! # States (per peer)
//! `Connecting → Handshaking → Ready ⇄ Degraded → ReconnectingOutbound |
//! ReconnectingInbound → Ready`, `Evicted → Recovering → Ready`, `Closed`.
//! - On a local network change every established peer goes Ready → Degraded →
//!   ReconnectingOutbound: migration ping rounds run (the first one jittered per peer
//!   and waiting for one of `max_concurrent_migrations` slots; the window starts with
//!   it), PresenceConnect is blocked, and after an unanswered round the rendezvous
//!   hints are looked up.
//! - On an authenticated inbound migration ping: ReconnectingInbound and a `ConnectPeer`
//!   with `transport_only = true` (DirectConnection dials the endpoints the ping
//!   announced first). In ReconnectingOutbound (both moved) a new ping round goes out
//!   instead, to the peer's new endpoints; no connect.
//! - On `PeerEndpointsChanged` from a rendezvous hint: a ping round in
//!   ReconnectingOutbound, a transport-only connect in ReconnectingInbound or Degraded or
//!   while Ready over the relay, and a waiting connect at once while Connecting (the
//!   server pushes a peer's new hint, so both sides dial each other about together).
//!   Ready over the relay with an announcement not yet tried directly: one
//!   transport-only connect.
//!
//! Presence holds no addresses: what to dial is DirectConnection's (the peer's newest
//! announcement) and ConnectionBlueprint's (the order of everything else known).
//! - When the window passes without Ready: Evicted, `EvictSession`, then Recovering
//!   after a jittered delay: a full handshake with a new epoch.
//!
//! - Rekeys: Presence decides whether a rekey may run, DirectConnection whether one is
//!   due (time or volume). On entering Ready Presence sends `AllowRekey { allowed:
//!   true }`, on leaving it `false`, so no rekey starts or is answered during a
//!   migration. A rekey's commit arrives as `SessionReady { rekey: true }`: only the
//!   epoch is recorded; no status change, no eviction, no `MigrationEvent`, and a
//!   migration in progress goes on.
//!
//! Presence is the one owner of the migration policy: it says when a migration starts,
//! when each ping round goes out, when an unanswered ping falls back to the relay, and
//! whether the migration completed or failed. DirectConnection executes these and keeps
//! the paths.
//!
//! # Timers (per peer)
//! | timer | armed | when it fires |
//! |---|---|---|
//! | connect / recovery (`scheduled`) | a connect is due (the first spread by `first_ping_spread_per_peer` × peers, at most `connect_retry_base`; after failures a capped exponential backoff, 250 ms doubling up to 5 min, started over by a network change, `SendWaiting` or a hinted `PeerEndpointsChanged`) | `ConnectPeer` |
//! | migration window (`deadline`) | an outbound migration's first ping round, an inbound migration ping, or the path is lost (`migration_window`) | the session is evicted; `MigrationEvent::Failed` if a migration was running |
//! | ping round | ReconnectingOutbound (first round jittered, and started only while fewer than `max_concurrent_migrations` first rounds are out and unanswered; then `migration_ping_interval`, doubling up to `migration_ping_max_interval`) | `SendMigrationPing`; from the second round the rendezvous is asked too |
//! | relay copy | a ping round sent (at once) | `RelayMigrationPing` |
//! | data carry | a ping round sent (1.5 × smoothed RTT, at most `migration_relay_after`, plus half that, at least 20 ms; 20 ms after `DirectDialFailed`) | `CarryOverRelay` |
//! | relay poll (node-wide) | every `relay_poll_interval` | `RelayPoll` |

mod actor;
mod config;
mod core;

pub use actor::{Orchestrator, Recipients};
pub use config::{Config, MAX_FIRST_PING_SPREAD};
pub use core::{Input, MigrationEvent, Output, Presence};

#[cfg(test)]
mod tests;
