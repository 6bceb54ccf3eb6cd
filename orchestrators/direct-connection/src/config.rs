//! Settings of the DirectConnection core.

use std::net::SocketAddr;
use std::time::Duration;
use tether_crypto::{PublicKey, RelationshipKey, StaticKeypair, REKEY_AFTER_MESSAGES};
use tether_protocol::{DeviceId, RestoredChannels};

/// A paired device: its identity and the relationship key shared with it.
#[derive(Clone)]
pub struct PeerConfig {
    /// Its static public key.
    pub public: PublicKey,
    /// The pre-shared key of this pair (the Noise PSK).
    pub rk: RelationshipKey,
}

impl PeerConfig {
    /// The peer's device id (its public key).
    pub fn device(&self) -> DeviceId {
        DeviceId(*self.public.as_bytes())
    }
}

/// Everything the core needs to know at start.
pub struct Config {
    /// This device's static keypair.
    pub local: StaticKeypair,
    /// Paired peers.
    pub peers: Vec<PeerConfig>,
    /// This device's endpoints, announced in migration acks.
    pub local_endpoints: Vec<SocketAddr>,
    /// Seed of the RNG for Noise ephemeral keys, path challenges and channel
    /// incarnations: 256 bits from the OS in a production node, from a test's seed in
    /// the simulator.
    pub rng_seed: [u8; 32],
    /// Unix time in milliseconds at the core's start `now` (handshake timestamps).
    pub unix_ms_at_start: u64,
    /// Timing and limits.
    pub limits: Limits,
    /// Channels as a store kept them at the last stop (empty without a store).
    pub restored: RestoredChannels,
    /// Emit a `JournalEntry` for each change to a channel's durable state (only when a
    /// store keeps them: each accepted message is copied into its entry).
    pub journal: bool,
}

/// Timing and limits of the DirectConnection core, each with the reason for its default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// How long before an unanswered handshake is retried with a fresh message 1.
    pub handshake_retry: Duration,
    /// How long a PresenceConnect may take before it is reported failed.
    pub connect_timeout: Duration,
    /// How long direct candidates get before the relay carries the attempt too (at
    /// once when the rendezvous server pushes the peer's address).
    pub relay_fallback_after: Duration,
    /// Interval of liveness pings on the bound path.
    pub heartbeat_interval: Duration,
    /// Unanswered heartbeats before the path is reported not alive; an answer to any
    /// of the last this many pings shows it alive.
    pub missed_heartbeats: u32,
    /// Retransmission timeout of unacknowledged messages on an unchanged path.
    pub rto: Duration,
    /// Messages a receiver lets a sender have in flight per channel.
    pub credit: u64,
    /// Messages accepted by `send` and not yet acknowledged, per peer.
    pub max_queued: usize,
    /// Bytes of the messages accepted by `send` and not yet acknowledged, per peer.
    pub max_queued_bytes: usize,
    /// Largest application message.
    pub max_message_len: usize,
    /// Bytes of one peer's messages held for the application at most: delivered and
    /// not yet consumed, plus buffered ahead of a gap (at most half of it). Frames
    /// beyond it are dropped unacknowledged and resent later.
    pub receive_budget: usize,
    /// How long a path challenge stays answerable.
    pub path_challenge_ttl: Duration,
    /// While the session runs over the relay, how often direct addresses are probed
    /// (a validated direct path replaces the relay).
    pub direct_probe_interval: Duration,
    /// How long a link the session does not need may stay quiet before it is closed.
    pub idle_link_close_after: Duration,
    /// How long an accepted link may go without a handshake or an authenticated frame
    /// (which show whose it is) before it is closed.
    pub unclaimed_link_close_after: Duration,
    /// Age of the committed generation after which the next application message
    /// (sent or delivered) starts a rekey (a new handshake, new keys and PeerSecret).
    pub rekey_after: Duration,
    /// Frames sealed under one generation after which a rekey starts.
    pub rekey_after_messages: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // One second: well above any RTT a handshake should see, short enough that
            // a lost message 1 costs little.
            handshake_retry: Duration::from_secs(1),
            // Ten seconds covers a dial timeout plus several handshake retries.
            connect_timeout: Duration::from_secs(10),
            // A quarter second: a healthy direct path answers well within it, and the
            // relay path then costs at most this much extra.
            relay_fallback_after: Duration::from_millis(250),
            heartbeat_interval: Duration::from_secs(2),
            // Three misses tell a dead path from a lost packet, and since a late answer
            // to any of the last three pings counts, a path (or a loaded node) with a
            // round trip of up to three intervals, 6 s, from a dead one.
            missed_heartbeats: 3,
            // QUIC already retransmits within a connection; this only covers frames
            // lost with a path, so it can be generous.
            rto: Duration::from_secs(1),
            // 256 messages in flight per channel keeps a 40 ms path full at 6 000
            // messages/s while bounding the receiver's reorder buffer.
            credit: 256,
            // 4 096 queued messages per peer: minutes of chat, seconds of bulk data,
            // bounded memory. Beyond it `send` says QueueFull.
            max_queued: 4096,
            // 16 MiB per peer: two receive budgets in flight, so a fast path stays
            // full, while 4 096 of the largest messages (240 MiB) could not be queued.
            max_queued_bytes: 16 * 1024 * 1024,
            // Fits one sealed frame with room for framing (Noise caps a message at
            // 65 535 bytes).
            max_message_len: 60 * 1024,
            // 8 MiB per peer: a full window of 256 messages of 32 KiB, and 80 MiB/s at
            // a 100 ms round trip, while a thousand peers whose applications stop
            // reading pin at most 8 GiB in the worst case. At least four of the
            // largest messages, so half of it holds two of them ahead of a gap.
            receive_budget: 8 * 1024 * 1024,
            path_challenge_ttl: Duration::from_secs(5),
            // Five seconds: a blocked path costs one dial per interval, and a path that
            // opens up is used within seconds.
            direct_probe_interval: Duration::from_secs(5),
            // Three seconds, one and a half heartbeat intervals: the peer pings on its
            // bound link every interval, so a link it uses is never quiet this long,
            // while the links a rebind or a migration left behind go within seconds.
            idle_link_close_after: Duration::from_secs(3),
            // Five seconds: a peer sends its handshake or a sealed frame as soon as its
            // dial completes, so this covers many QUIC retransmissions of a lost first
            // packet, while a client that never says who it is holds the link briefly.
            unclaimed_link_close_after: Duration::from_secs(5),
            // Ten minutes of use. A rekey bounds what one leaked set of transport keys
            // (and PeerSecret) exposes: the traffic of one generation, about ten
            // minutes, plus the in-flight tail the previous generation still opens.
            // WireGuard's two minutes suit a VPN that rekeys silently; here a rekey
            // also replaces the PeerSecret a migration proves itself with, and is put
            // off while either side migrates, so a longer period makes that overlap
            // rare while its cost stays negligible (one handshake: two messages of
            // about 100 bytes and four Diffie-Hellman operations per ten busy
            // minutes). The age only counts while the session carries application
            // messages: an idle session keeps its keys for days and is not woken for
            // a rekey; the first message after the limit starts one (as WireGuard
            // rekeys on send), and the old keys carry the traffic until the new ones
            // commit. Well above the migration benchmark's runs, so it never fires
            // there.
            rekey_after: Duration::from_secs(600),
            // WireGuard's 2^60 (crypto's `REKEY_AFTER_MESSAGES`): ChaCha20-Poly1305
            // has no practical per-key volume limit at that scale, so this is a
            // safety net far below nonce exhaustion (2^64 - 2^13), not a schedule.
            rekey_after_messages: REKEY_AFTER_MESSAGES,
        }
    }
}
