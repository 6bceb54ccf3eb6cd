//! Settings of the Presence core, each with the reason for its default.

use std::time::Duration;

/// Settings of the Presence core. Every duration is virtual under paused time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// How long a migration may take before both sides evict (the seed's window). On
    /// the moving side it runs from the migration's first ping round (a session waiting
    /// for a migration slot has not begun), on the other from the ping's arrival.
    pub migration_window: Duration,
    /// First interval between migration ping rounds; doubles up to
    /// [`Config::migration_ping_max_interval`].
    pub migration_ping_interval: Duration,
    /// Longest interval between migration ping rounds.
    pub migration_ping_max_interval: Duration,
    /// Spread of the first migration ping per peer after a network change, per peer
    /// (capped at [`MAX_FIRST_PING_SPREAD`]), and of the first connect per peer added
    /// (capped at `connect_retry_base`): avoids a burst when many peers exist, and
    /// costs a device with one peer nothing.
    pub first_ping_spread_per_peer: Duration,
    /// First connect/recovery retry delay; doubles up to `connect_retry_max`.
    pub connect_retry_base: Duration,
    /// Longest connect/recovery retry delay.
    pub connect_retry_max: Duration,
    /// Connect attempts (handshakes) in flight at once, so a restart with many peers is
    /// not a reconnection storm.
    pub max_concurrent_connects: usize,
    /// Sessions whose first migration ping round is out and unanswered at once, after a
    /// network change of this device (at least one). Each first round makes the peer
    /// answer with up to a few KiB at once (its acknowledgement, QUIC's path challenge
    /// and probes within the anti-amplification budget the round's padding buys); a
    /// node with thousands of sessions that sent every round together would have its
    /// own socket overflow with the answers, lose them, and retry into a collapse. The
    /// rest wait for a slot: a session Ready again, or a round unanswered for
    /// `migration_ping_interval`, frees one. Only first rounds wait: the later rounds
    /// of an unanswered session (after 1, 2, 4 and then every 8 s) and a ping to where
    /// the peer says it now is go when due.
    pub max_concurrent_migrations: usize,
    /// Delay before a transport-only reconnect after the bound path was lost.
    pub path_lost_reconnect_after: Duration,
    /// Heartbeat fallback: how often the relay queue is polled.
    pub relay_poll_interval: Duration,
    /// Longest wait, after a migration ping, for a direct answer before the queued data
    /// follows over the relay (the wait is 1.5 RTT of the session's path when one was
    /// measured, plus half of it; the relay copy of the ping itself goes at once).
    pub migration_relay_after: Duration,
}

/// Largest spread of first migration pings after one network change: half a second
/// keeps even a device with hundreds of peers from bursting while adding little delay.
pub const MAX_FIRST_PING_SPREAD: Duration = Duration::from_millis(500);

impl Default for Config {
    fn default() -> Self {
        Self {
            migration_window: Duration::from_secs(30),
            // One second: several RTTs on any real path, so a round is not resent while
            // its answer is still in flight.
            migration_ping_interval: Duration::from_secs(1),
            migration_ping_max_interval: Duration::from_secs(8),
            first_ping_spread_per_peer: Duration::from_millis(5),
            connect_retry_base: Duration::from_millis(250),
            // Five minutes: a peer that is gone costs one attempt (a dial and a few
            // handshake initiations) every few minutes, not a phone's battery, and any
            // sign it may be back (a network change, a send, its own handshake) retries
            // at once.
            connect_retry_max: Duration::from_secs(300),
            max_concurrent_connects: 8,
            // 128 first rounds: about 1 MiB of their answers in flight at most, a quarter
            // of the 4 MiB receive buffer the transport asks for; at a 100 ms RTT that is
            // still over a thousand sessions migrated per second.
            max_concurrent_migrations: 128,
            path_lost_reconnect_after: Duration::from_millis(200),
            relay_poll_interval: Duration::from_secs(5),
            // A quarter second: a migrated direct link answers well within it, and a
            // blocked one then costs at most this much before the relay carries the ping.
            migration_relay_after: Duration::from_millis(250),
        }
    }
}
