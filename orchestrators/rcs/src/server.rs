//! The relay queue server's logic ([`RelayQueueServer`]), sans-IO: the harness runs it
//! behind a QUIC endpoint, tells it which connections open and close, hands it the
//! decoded [`RelayMessage`]s, and sends what it outputs.
//!
//! # Protocol
//! - On [`ServerInput::Opened`] (with the connection's channel binding, from its TLS
//!   exporter) the server sends `Challenge { nonce, server_key }` (a fresh random nonce
//!   and its public key).
//! - `Authenticate { device, proof }` with a proof over the nonce and this connection's
//!   binding that verifies ([`tether_crypto::verify_server_auth`]) → `Welcome { proof }`
//!   with the server's own proof ([`tether_crypto::server_proof`]) and the address the
//!   connection comes from (the device's reflexive address), then a `Push` of
//!   everything queued for the device. When the connection's address changes later,
//!   `Observed { addr }` tells the device its new one. A wrong proof (an invalid device key, or a proof
//!   made on another connection, as one relayed by a man in the middle) → `Refused {
//!   BadProof }` in [`ServerOutput::CloseWith`] (the refusal travels in the close). A
//!   proof that verifies for a device the [`Admission`] policy does not admit →
//!   `Refused { NotAdmitted }`, the same way.
//!   Anything else before authentication → `Refused { NotAuthenticated }` (with the
//!   request number for an `Enqueue`). A connection that has not authenticated within
//!   [`RelayServerConfig::auth_deadline`] of opening is closed (counted as
//!   `auth_timeouts`).
//!   The `Authenticate` may carry the rendezvous ids of the device's pairs, sealed for
//!   this server ([`tether_crypto::seal_rendezvous_ids`]); once the proof verifies
//!   they are opened (at most [`MAX_SEALED_RENDEZVOUS_IDS`]) and handed to the shell
//!   with the device's address ([`DeviceSeen`]), so that the rendezvous table can
//!   introduce the device to a connected partner right after its `Welcome`. Ids that
//!   do not open are counted (`sealed_ids_refused`) and the device is served anyway.
//! - `Enqueue { to, request, ttl_ms, envelope }` → `Enqueued { request }`, or `Refused {
//!   request, TooLarge | QuotaExceeded | QueueFull | RateLimited }`. Stored envelopes get a
//!   server-assigned id and an expiry (`ttl_ms` capped by [`RelayServerConfig::max_ttl`]);
//!   if the recipient is connected it is pushed at once and kept until acknowledged.
//! - `Fetch { max }` → up to `max` pushes from the caller's own queue, oldest first,
//!   including envelopes pushed before and not yet acknowledged (receivers dedupe).
//! - `Delivered { envelope_ids }` removes those ids from the caller's own queue. Ids of
//!   envelopes queued for another device are left untouched and answered with one
//!   `Refused { NotYours }`; unknown ids (already acknowledged or expired) are ignored, so
//!   a repeated acknowledgement is harmless.
//! - `Forward { to, frame }` → `Forwarded { from, frame }` on the connection of `to`,
//!   or `Refused { NotConnected | RateLimited }`.
//! - Rendezvous requests are served by the table in `tether-pms`; the shell asks
//!   [`RelayQueueServer::rendezvous_request`] first, which checks that the connection
//!   is authenticated and rate limits `Publish`. Where the server sees each device's
//!   own authenticated connection (when it authenticates, moves, ends) is reported to
//!   the shell ([`RelayQueueServer::poll_seen`], [`DeviceSeen`]), which tells the
//!   table: the table pushes it to the device's pair partners.
//!
//! The server never looks inside envelopes or frames (invariant 7): it sees routing ids,
//! lengths and opaque bytes.
//!
//! # One connection per device
//! A device's relay client and rendezvous client share one connection. When a device
//! authenticates a new connection (after a network change, or a reconnect the server
//! has not noticed as a loss yet), the older one is closed with `Refused { Replaced }`
//! as its last frame, so every push and forwarded frame goes to exactly one
//! connection. A device that sees `Replaced` on the connection it is using knows that
//! another connection proved its key: a second instance running with the same key.
//!
//! An `Authenticate` with `rendezvous_only` (pairing, which may run while the device's
//! node holds its connection) makes a side connection instead: it replaces nothing,
//! gets no pushes or forwarded frames, and serves rendezvous requests only (relay
//! requests on it are refused `NotAuthenticated`). At most
//! [`MAX_RENDEZVOUS_ONLY_CONNS`] per device; a newer one closes the oldest the same way.
//!
//! # Bounds
//! Per recipient: at most `max_queued_per_recipient` envelopes and
//! `max_queued_bytes_per_recipient` bytes. Of one recipient's queue, one sender may
//! hold at most `max_queued_per_sender_recipient` envelopes and
//! `max_queued_bytes_per_sender_recipient` bytes (its share), so no single sender can
//! fill a victim's queue and block the migration pings of the victim's peers. Per
//! sender: at most `max_stored_per_sender` envelopes and `max_stored_bytes_per_sender`
//! bytes (each envelope charged its length plus [`ENVELOPE_OVERHEAD`]) stored across all
//! recipients. Per envelope: `max_envelope_len` bytes. All recipients together: at most
//! `max_stored_bytes`, each envelope charged its length plus [`ENVELOPE_OVERHEAD`] (so
//! many tiny envelopes are bounded too). The same bounds bound the store on disk, which
//! only ever holds what the core holds.
//!
//! # Admission and rate limits
//! [`Admission::Allowlist`] admits only the listed device keys; [`Admission::Open`]
//! admits any device that proves a key, so there any number of self-made identities
//! share the global bounds. `Enqueue`, `Forward` and rendezvous `Publish` are rate
//! limited per connection ([`RelayServerConfig::conn_rates`]) and per identity
//! ([`RelayServerConfig::identity_rates`], across the device's connections) with token
//! buckets driven by `now`; a request over either is answered `Refused { RateLimited }`
//! and counted. An identity's buckets outlive its connections until they are full
//! again, so reconnecting does not buy a fresh burst. One warning is logged when an
//! identity starts being rate limited (again after [`RATE_LIMIT_QUIET`] without a
//! refusal), and one per device refused admission (for at most
//! [`MAX_LOGGED_NOT_ADMITTED`] devices; beyond that they are only counted).
//! Nothing is ever dropped silently before its TTL: an envelope leaves the queue only
//! when its recipient acknowledges it or its TTL passes (counted as expired).
//!
//! # Persistence
//! Every envelope stored or removed is also reported as a [`QueueChange`]
//! ([`RelayQueueServer::poll_change`]). The shell applies the changes to its
//! [`RelayQueueStore`](crate::store::RelayQueueStore) in one commit and then says so
//! ([`RelayQueueServer::committed`]); until then the server holds back every output it
//! produced after the first change not yet committed
//! ([`RelayQueueServer::poll_output`] returns none of them), so `Enqueued` means
//! durable, whatever the shell does. A shell may feed several inputs before one commit
//! (a group commit: a durable store costs one disk sync per commit, not per input), at
//! most [`MAX_INPUTS_PER_COMMIT`]; [`RelayQueueServer::commit_due`] says when that many
//! are waiting for one. At start,
//! [`RelayQueueServer::restore`] takes over what the store held, dropping (and
//! reporting) what has expired or no longer fits the configured bounds. See
//! [`crate::store`].

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tether_crypto::{
    open_rendezvous_ids, server_proof, verify_server_auth, PublicKey, StaticKeypair,
    CHANNEL_BINDING_LEN,
};
use tether_protocol::{DeviceId, RelayMessage, RendezvousMessage, ServerRefusal, WireFrame};
use tracing::{debug, warn};

use crate::counters::RefusalCounters;
use crate::rate::{Buckets, Limited, Rate, RateLimits};
use crate::store::{LoadedQueue, QueueChange, StoredEnvelope};

/// One transport connection to the server, numbered by the harness. The server keys its
/// per-connection state (challenge, authenticated device) by it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnId({})", self.0)
    }
}

/// Envelopes queued for one recipient. 1024 covers minutes of a busy session's frames
/// while the recipient is offline, with retransmissions.
pub const DEFAULT_MAX_QUEUED_PER_RECIPIENT: usize = 1024;

/// Bytes queued for one recipient: 8 MiB bounds the server's memory per device while
/// holding a thousand frames of several KiB.
pub const DEFAULT_MAX_QUEUED_BYTES_PER_RECIPIENT: usize = 8 * 1024 * 1024;

/// Largest envelope: a Noise message or sealed frame is at most
/// [`NOISE_MAX_MESSAGE_LEN`](tether_crypto::NOISE_MAX_MESSAGE_LEN) (65 535) bytes; 1 KiB
/// more leaves room for the sealed frame's header fields.
pub const DEFAULT_MAX_ENVELOPE_LEN: usize = tether_crypto::NOISE_MAX_MESSAGE_LEN + 1024;

/// Longest an envelope is kept: one day lets a device that was offline overnight still
/// receive its migration ping and queued data; longer would keep garbage for no one.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Envelopes one sender may have stored at once across all recipients: four recipients'
/// full queues, so one device cannot fill the server on its own.
pub const DEFAULT_MAX_STORED_PER_SENDER: usize = 4 * DEFAULT_MAX_QUEUED_PER_RECIPIENT;

/// Bytes one sender may have stored at once across all recipients (each envelope
/// charged its length plus [`ENVELOPE_OVERHEAD`]): 16 MiB is its envelope quota at 4 KiB
/// each, while a device queues only migration pings (a few hundred bytes each). Without
/// it one identity could store 4096 envelopes of 65 KiB, 270 MB.
pub const DEFAULT_MAX_STORED_BYTES_PER_SENDER: usize = 16 * 1024 * 1024;

/// Envelopes one sender may hold in one recipient's queue: an eighth of it. A device
/// queues a migration ping about once a second while a migration window (30 s) lasts,
/// so 128 covers four unacknowledged windows; eight senders at their share are needed
/// to fill a queue, so one identity can never keep the recipient's peers' migration
/// pings out.
pub const DEFAULT_MAX_QUEUED_PER_SENDER_RECIPIENT: usize = DEFAULT_MAX_QUEUED_PER_RECIPIENT / 8;

/// Bytes one sender may hold in one recipient's queue: the same eighth, 1 MiB.
pub const DEFAULT_MAX_QUEUED_BYTES_PER_SENDER_RECIPIENT: usize =
    DEFAULT_MAX_QUEUED_BYTES_PER_RECIPIENT / 8;

/// How long a connection may stay unauthenticated: a device sends its proof as soon as
/// it has the challenge (one round trip after QUIC's handshake), so 5 s covers a
/// mobile link with a 1-2 s round trip and a lost packet, while a connection that
/// never authenticates holds its state for no longer than that.
pub const DEFAULT_AUTH_DEADLINE: Duration = Duration::from_secs(5);

/// Rates of one connection, the device's only one, so each kind gets its device's full
/// legitimate rate here, with a wide margin:
/// - `Enqueue`: a device queues only migration pings, about one a second per peer
///   while a migration lasts, and resends at most 256 held ones after a reconnect: 64
///   a second with a burst of 512.
/// - `Forward`: everything a session sends while the relay is its path, one frame per
///   message plus coalesced acks. Its frame rate is bounded by how fast the application
///   sends and by the path's bandwidth, not by Tether: in the simulator (no bandwidth
///   limit, 4 ms relay round trip) a sender fed 41 000 messages of 1 KiB a second had
///   them all forwarded. 50 000 a second (400 Mbit/s of 1 KiB messages; bulk data uses
///   larger messages, so fewer frames) with a burst of 100 000 (two seconds) leaves
///   that margin and bounds the relay's per-frame work (decoding, and copying to the
///   recipient's connection) that one connection can cause.
/// - `Publish`: one hint per peer after each connect, on each address change and every
///   5 minutes; a device has at most 64 peers on the rendezvous server: 16 a second,
///   burst 128 (two full republishes).
pub const DEFAULT_CONN_RATES: RateLimits = RateLimits {
    enqueue: Rate {
        per_second: 64,
        burst: 512,
    },
    forward: Rate {
        per_second: 50_000,
        burst: 100_000,
    },
    publish: Rate {
        per_second: 16,
        burst: 128,
    },
};

/// Rates of one identity across its connections: the same as one connection's (a
/// device holds one), and they outlive a connection, so a device that reconnects or
/// opens more connections gains nothing.
pub const DEFAULT_IDENTITY_RATES: RateLimits = DEFAULT_CONN_RATES;

/// Queued envelopes pushed again when a device's connection moves: a device's queue
/// holds mostly the migration pings of a migration in progress (one per peer), so 64
/// covers them for dozens of peers while bounding the burst.
pub const REPUSH_ON_MOVE: usize = 64;

/// Inputs a shell may feed between two commits of the store (a group commit). A commit
/// holds back every answer of the inputs fed before it, so the batch is bounded: the
/// core handles an input in a few microseconds, so 256 add well under a millisecond to
/// the first one's answer, and one commit writes at most 256 envelopes (16.5 MiB at the
/// largest envelope, one transaction). A durable commit costs one disk sync (about 1.5
/// ms on the measured machine, where one per input capped the relay at 300 envelopes a
/// second); shared by 256 inputs it costs a few microseconds each, below the 75–120 µs
/// the relay spends on an envelope's frames and packets.
pub const MAX_INPUTS_PER_COMMIT: usize = 256;

/// [`DeviceSeen`] reports waiting for the shell. It takes them after every input, and
/// one input reports at most one; the bound only keeps a shell that forgets from
/// growing the server (the oldest report is dropped and counted).
pub const MAX_PENDING_SEEN: usize = 64;

/// Rendezvous ids a device may send sealed with its proof: the rendezvous table's
/// default quota of pairs per device (64), so that a device never needs more and a
/// hostile one costs the server at most 2 KiB of decryption per connection.
pub const MAX_SEALED_RENDEZVOUS_IDS: usize = 64;

/// Where the server sees a device's own authenticated connection (not a
/// rendezvous-only one) now: reported when it authenticates (`Some`), when it moves
/// (`Some`, the new address) and when it ends (`None`). The harness hands it to the
/// rendezvous table, which tells the device's pair partners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSeen {
    /// The device.
    pub device: DeviceId,
    /// Its reflexive address, or `None`: no longer connected.
    pub addr: Option<SocketAddr>,
    /// On authentication, the rendezvous ids the device sent sealed with its proof
    /// (the pairs it is a member of); empty otherwise.
    pub rendezvous_ids: Vec<[u8; 32]>,
}

/// Rendezvous-only connections kept per device: a pairing runs one, and a second covers
/// a retry while the first has not closed yet; a newer one beyond that replaces the
/// oldest.
pub const MAX_RENDEZVOUS_ONLY_CONNS: usize = 2;

/// How long an identity goes without a rate-limit refusal before the next one is
/// logged again: one warning per episode, not one per refused frame.
pub const RATE_LIMIT_QUIET: Duration = Duration::from_secs(10);

/// Devices refused admission whose first refusal is logged: an attacker can make keys
/// without end, so the log (and this set) must stop growing; later ones are counted.
pub const MAX_LOGGED_NOT_ADMITTED: usize = 1024;

/// Which devices the relay serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Any device that proves its key (`admission = "open"`): self-made identities
    /// cost nothing, so only the global bounds and rate limits hold.
    Open,
    /// Only devices whose keys are listed (`allow = [...]`).
    Allowlist(BTreeSet<DeviceId>),
}

impl Admission {
    /// Whether `device` is admitted.
    pub fn admits(&self, device: &DeviceId) -> bool {
        match self {
            Self::Open => true,
            Self::Allowlist(allowed) => allowed.contains(device),
        }
    }
}

/// Bytes stored for all recipients together: 1 GiB bounds the relay's memory and its
/// store on disk; with [`ENVELOPE_OVERHEAD`] charged per envelope it also bounds the
/// count (at most 4 Mi envelopes).
pub const DEFAULT_MAX_STORED_BYTES: usize = 1024 * 1024 * 1024;

/// What each stored envelope is charged against `max_stored_bytes` on top of its
/// length: its ids, expiry and index entries, in memory and in the store (about 150
/// bytes), rounded up.
pub const ENVELOPE_OVERHEAD: usize = 256;

/// Settings of the relay queue server. `Debug` redacts the seed.
#[derive(Clone)]
pub struct RelayServerConfig {
    /// The server's static keypair; devices are configured with its public half.
    pub keypair: StaticKeypair,
    /// Most envelopes queued for one recipient.
    pub max_queued_per_recipient: usize,
    /// Most bytes queued for one recipient.
    pub max_queued_bytes_per_recipient: usize,
    /// Largest envelope or forwarded frame accepted.
    pub max_envelope_len: usize,
    /// Cap on the sender's requested TTL.
    pub max_ttl: Duration,
    /// Most envelopes one sender may have stored at once.
    pub max_stored_per_sender: usize,
    /// Most bytes one sender may have stored at once (lengths plus overheads).
    pub max_stored_bytes_per_sender: usize,
    /// Most envelopes one sender may hold in one recipient's queue.
    pub max_queued_per_sender_recipient: usize,
    /// Most bytes one sender may hold in one recipient's queue.
    pub max_queued_bytes_per_sender_recipient: usize,
    /// Which devices are served.
    pub admission: Admission,
    /// How long a connection may stay unauthenticated before it is closed.
    pub auth_deadline: Duration,
    /// Rate limits of each connection.
    pub conn_rates: RateLimits,
    /// Rate limits of each identity, across its connections.
    pub identity_rates: RateLimits,
    /// Most bytes stored for all recipients together, each envelope charged its length
    /// plus [`ENVELOPE_OVERHEAD`].
    pub max_stored_bytes: usize,
    /// Unix time in milliseconds at the `now` given to [`RelayQueueServer::new`]: stored
    /// expiries are wall-clock times so that they keep their meaning across a restart.
    /// The shell reads the wall clock once; the core reads none.
    pub unix_ms_at_start: u64,
    /// Seed of the challenge RNG (ChaCha20). In production it MUST come from the OS's
    /// entropy: a repeated seed repeats the challenge nonces, and a recorded proof would
    /// then authenticate again.
    pub seed: [u8; 32],
}

impl fmt::Debug for RelayServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayServerConfig")
            .field("keypair", &self.keypair)
            .field("max_queued_per_recipient", &self.max_queued_per_recipient)
            .field(
                "max_queued_bytes_per_recipient",
                &self.max_queued_bytes_per_recipient,
            )
            .field("max_envelope_len", &self.max_envelope_len)
            .field("max_ttl", &self.max_ttl)
            .field("max_stored_per_sender", &self.max_stored_per_sender)
            .field(
                "max_stored_bytes_per_sender",
                &self.max_stored_bytes_per_sender,
            )
            .field(
                "max_queued_per_sender_recipient",
                &self.max_queued_per_sender_recipient,
            )
            .field(
                "max_queued_bytes_per_sender_recipient",
                &self.max_queued_bytes_per_sender_recipient,
            )
            .field("admission", &self.admission)
            .field("auth_deadline", &self.auth_deadline)
            .field("conn_rates", &self.conn_rates)
            .field("identity_rates", &self.identity_rates)
            .field("max_stored_bytes", &self.max_stored_bytes)
            .field("unix_ms_at_start", &self.unix_ms_at_start)
            .field("seed", &format_args!("<redacted>"))
            .finish()
    }
}

impl RelayServerConfig {
    /// A config with the default bounds and rates, the given admission policy, and a
    /// wall clock starting at Unix time 0 (set `unix_ms_at_start` when envelopes are
    /// stored across restarts).
    pub fn new(keypair: StaticKeypair, seed: [u8; 32], admission: Admission) -> Self {
        Self {
            keypair,
            max_queued_per_recipient: DEFAULT_MAX_QUEUED_PER_RECIPIENT,
            max_queued_bytes_per_recipient: DEFAULT_MAX_QUEUED_BYTES_PER_RECIPIENT,
            max_envelope_len: DEFAULT_MAX_ENVELOPE_LEN,
            max_ttl: DEFAULT_MAX_TTL,
            max_stored_per_sender: DEFAULT_MAX_STORED_PER_SENDER,
            max_stored_bytes_per_sender: DEFAULT_MAX_STORED_BYTES_PER_SENDER,
            max_queued_per_sender_recipient: DEFAULT_MAX_QUEUED_PER_SENDER_RECIPIENT,
            max_queued_bytes_per_sender_recipient: DEFAULT_MAX_QUEUED_BYTES_PER_SENDER_RECIPIENT,
            admission,
            auth_deadline: DEFAULT_AUTH_DEADLINE,
            conn_rates: DEFAULT_CONN_RATES,
            identity_rates: DEFAULT_IDENTITY_RATES,
            max_stored_bytes: DEFAULT_MAX_STORED_BYTES,
            unix_ms_at_start: 0,
            seed,
        }
    }
}

/// What the server is told by the harness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerInput {
    /// A device connected, on a connection with this channel binding
    /// (`tether_transport::LinkHandle::channel_binding`), from this address.
    Opened(ConnId, [u8; CHANNEL_BINDING_LEN], SocketAddr),
    /// A connection closed (by either side).
    Closed(ConnId),
    /// A relay message arrived on a connection (the harness decoded the frame).
    Frame(ConnId, RelayMessage),
    /// Raw bytes arrived: decoded with [`tether_protocol::decode`]; undecodable bytes
    /// and frames other than relay messages are counted as bad frames.
    Bytes(ConnId, Vec<u8>),
    /// The connection's remote address changed to this one (the device moved, or its
    /// NAT rebound it): the harness reports it before the frame that revealed it.
    Moved(ConnId, SocketAddr),
}

/// What the server asks the harness to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerOutput {
    /// Send this frame on the connection.
    Send(ConnId, WireFrame),
    /// Close the connection (after sending what was queued before it).
    Close(ConnId),
    /// Close the connection with this frame as its last word (a refusal that ends
    /// it): the shell sends it in the close itself (a QUIC farewell), so it arrives
    /// although the connection ends at once.
    CloseWith(ConnId, WireFrame),
}

/// What the server counted. Everything peer-caused lands here, never in an error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayServerCounters {
    /// Envelopes accepted and stored.
    pub stored: u64,
    /// Envelopes acknowledged by their recipient and removed.
    pub delivered: u64,
    /// Envelopes removed because their TTL passed.
    pub expired: u64,
    /// Push frames sent (re-pushes included).
    pub pushed: u64,
    /// Frames forwarded live (one per receiving connection).
    pub forwarded: u64,
    /// Successful authentications.
    pub authenticated: u64,
    /// Refusals sent, by reason.
    pub refused: RefusalCounters,
    /// Path probes received (a device's first frame after its network changed).
    pub path_probes: u64,
    /// Envelopes pushed again because their recipient's connection moved.
    pub repushed: u64,
    /// [`DeviceSeen`] reports dropped because [`MAX_PENDING_SEEN`] were waiting.
    pub seen_dropped: u64,
    /// Sealed rendezvous ids that did not open or were too many (the device was
    /// served without them).
    pub sealed_ids_refused: u64,
    /// Frames that could not be decoded, were not relay messages, or made no sense
    /// where they arrived (a server message from a device, a second Authenticate).
    pub bad_frames: u64,
    /// Inputs naming a connection the server does not know (a harness ordering slip).
    pub unknown_connections: u64,
    /// Connections closed because their device authenticated a newer one.
    pub replaced_connections: u64,
    /// Connections closed because they did not authenticate within the deadline.
    pub auth_timeouts: u64,
    /// Times an identity started being rate limited (one per episode; each refused
    /// request is counted in `refused.rate_limited`).
    pub rate_limit_episodes: u64,
    /// Envelopes taken over from the store at start.
    pub restored: u64,
    /// Envelopes in the store at start that no longer fit the configured bounds
    /// (lowered since they were stored), removed.
    pub restore_dropped: u64,
    /// Records in the store at start that could not be decoded, skipped and removed.
    pub store_undecodable: u64,
    /// Store commits that failed (counted by the shell, which applies them): the
    /// envelopes stay queued in memory but would not survive a restart.
    pub store_failures: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    /// Challenge sent, waiting for Authenticate until `deadline`.
    Challenged {
        nonce: [u8; 32],
        binding: [u8; CHANNEL_BINDING_LEN],
        deadline: Instant,
    },
    /// Proof verified and the device admitted.
    Authenticated {
        device: DeviceId,
        buckets: Buckets,
        /// A rendezvous-only connection (see the module docs).
        rendezvous_only: bool,
    },
}

/// What the server keeps per identity (device key).
#[derive(Debug, Default)]
struct Identity {
    /// Its authenticated connection (at most one: a newer one replaces it).
    conn: Option<ConnId>,
    /// Its rendezvous-only connections, oldest first (at most
    /// [`MAX_RENDEZVOUS_ONLY_CONNS`]).
    rendezvous_only: Vec<ConnId>,
    /// Rate limits across the connections.
    buckets: Buckets,
    /// Until when the current rate-limit episode lasts (extended by each refusal).
    limited_until: Option<Instant>,
    /// Without connections: when the buckets are full again and the entry goes (it
    /// is also in `RelayQueueServer::idle_identities`).
    idle_until: Option<Instant>,
}

impl Identity {
    /// Without any connection: its entry lasts only until its buckets are full.
    fn is_idle(&self) -> bool {
        self.conn.is_none() && self.rendezvous_only.is_empty()
    }
}

/// What an `Authenticate` claims on a challenged connection.
struct Proved {
    nonce: [u8; 32],
    binding: [u8; CHANNEL_BINDING_LEN],
    device: DeviceId,
    rendezvous_only: bool,
    /// The sealed rendezvous ids (empty: none).
    rendezvous_ids: Vec<u8>,
}

/// Envelopes and bytes held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Usage {
    count: usize,
    bytes: usize,
}

impl Usage {
    fn add(&mut self, bytes: usize) {
        self.count += 1;
        self.bytes += bytes;
    }

    /// Takes one envelope of `bytes` off; true when nothing is left.
    fn sub(&mut self, bytes: usize) -> bool {
        self.count = self.count.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(bytes);
        self.count == 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stored {
    from: DeviceId,
    envelope: Vec<u8>,
    expires_at: Instant,
}

#[derive(Debug, Default)]
struct Queue {
    /// By server-assigned id, which grows: iteration is oldest first.
    envelopes: BTreeMap<u64, Stored>,
    bytes: usize,
    /// Envelopes and bytes (lengths) of each sender in this queue, for its share.
    per_sender: BTreeMap<DeviceId, Usage>,
}

/// The relay queue server's state. See the module docs.
#[derive(Debug)]
pub struct RelayQueueServer {
    config: RelayServerConfig,
    rng: ChaCha20Rng,
    conns: BTreeMap<ConnId, ConnState>,
    /// Where each open connection comes from now (its device's reflexive address).
    remotes: BTreeMap<ConnId, SocketAddr>,
    /// (deadline, connection) of every connection not authenticated yet.
    auth_deadlines: BTreeSet<(Instant, ConnId)>,
    /// Identities with connections, and those without whose buckets are not full yet.
    identities: BTreeMap<DeviceId, Identity>,
    /// (when its buckets are full, identity) of identities without connections.
    idle_identities: BTreeSet<(Instant, DeviceId)>,
    /// Devices refused admission whose refusal was logged (at most
    /// [`MAX_LOGGED_NOT_ADMITTED`]).
    not_admitted_logged: BTreeSet<DeviceId>,
    queues: BTreeMap<DeviceId, Queue>,
    /// Envelope id → its recipient.
    owners: BTreeMap<u64, DeviceId>,
    /// (expiry, envelope id), earliest first.
    expiries: BTreeSet<(Instant, u64)>,
    /// Envelopes stored per sender, and their bytes (lengths plus overheads).
    per_sender: BTreeMap<DeviceId, Usage>,
    next_envelope_id: u64,
    /// Bytes charged against `max_stored_bytes` (lengths plus overheads).
    stored_bytes: usize,
    /// The `now` of `new`, when the wall clock read `unix_ms_at_start`.
    started: Instant,
    /// Outputs not yet taken by the shell, each with the number of changes reported
    /// before it: it goes out only once that many are committed.
    outputs: VecDeque<(u64, ServerOutput)>,
    /// Store changes not yet taken by the shell.
    changes: VecDeque<QueueChange>,
    /// Changes reported since the start, taken by the shell, and committed.
    changes_reported: u64,
    changes_taken: u64,
    changes_committed: u64,
    /// Inputs fed since the last commit.
    inputs_since_commit: usize,
    counters: RelayServerCounters,
    /// Where devices' connections are seen, not yet taken by the shell, oldest first.
    seen: VecDeque<DeviceSeen>,
}

impl RelayQueueServer {
    /// A server with no connections and empty queues.
    pub fn new(config: RelayServerConfig, now: Instant) -> Self {
        let rng = ChaCha20Rng::from_seed(config.seed);
        Self {
            config,
            rng,
            conns: BTreeMap::new(),
            remotes: BTreeMap::new(),
            auth_deadlines: BTreeSet::new(),
            identities: BTreeMap::new(),
            idle_identities: BTreeSet::new(),
            not_admitted_logged: BTreeSet::new(),
            queues: BTreeMap::new(),
            owners: BTreeMap::new(),
            expiries: BTreeSet::new(),
            per_sender: BTreeMap::new(),
            next_envelope_id: 1,
            stored_bytes: 0,
            started: now,
            outputs: VecDeque::new(),
            changes: VecDeque::new(),
            changes_reported: 0,
            changes_taken: 0,
            changes_committed: 0,
            inputs_since_commit: 0,
            counters: RelayServerCounters::default(),
            seen: VecDeque::new(),
        }
    }

    /// The server's public key, which devices must be configured with.
    pub fn public_key(&self) -> &PublicKey {
        self.config.keypair.public()
    }

    /// The device a connection has authenticated as, if it has. The harness gates
    /// rendezvous requests arriving on the same connection with it.
    pub fn authenticated_device(&self, conn: ConnId) -> Option<DeviceId> {
        match self.conns.get(&conn) {
            Some(ConnState::Authenticated { device, .. }) => Some(*device),
            _ => None,
        }
    }

    /// The authenticated connection `device` has now, if any: where the rendezvous
    /// table's pushes to it go.
    pub fn connection_of(&self, device: &DeviceId) -> Option<ConnId> {
        self.identities
            .get(device)
            .and_then(|identity| identity.conn)
    }

    /// The next change of where a device's connection is seen (see [`DeviceSeen`]).
    /// Unlike outputs, reports need no commit: they carry nothing stored.
    pub fn poll_seen(&mut self) -> Option<DeviceSeen> {
        self.seen.pop_front()
    }

    fn report_seen(
        &mut self,
        device: DeviceId,
        addr: Option<SocketAddr>,
        rendezvous_ids: Vec<[u8; 32]>,
    ) {
        if self.seen.len() >= MAX_PENDING_SEEN {
            self.seen.pop_front();
            self.counters.seen_dropped += 1;
        }
        self.seen.push_back(DeviceSeen {
            device,
            addr,
            rendezvous_ids,
        });
    }

    /// The rendezvous ids an authenticated device sent sealed with its proof; none
    /// (counted) when they do not open or are too many.
    fn open_ids(
        &mut self,
        device: &PublicKey,
        nonce: &[u8; 32],
        binding: &[u8; CHANNEL_BINDING_LEN],
        sealed: &[u8],
    ) -> Vec<[u8; 32]> {
        if sealed.is_empty() {
            return Vec::new();
        }
        let opened = open_rendezvous_ids(
            &self.config.keypair,
            device,
            nonce,
            binding,
            sealed,
            MAX_SEALED_RENDEZVOUS_IDS,
        );
        opened.unwrap_or_else(|err| {
            debug!(%err, "relay server: sealed rendezvous ids refused");
            self.counters.sealed_ids_refused += 1;
            Vec::new()
        })
    }

    /// Checks a rendezvous request that arrived on `conn` before the table serves it:
    /// the device the connection proved to be, or the refusal to answer with (counted):
    /// `NotAuthenticated` on a connection that has not authenticated, `RateLimited` for
    /// a `Publish` over the connection's or the identity's rate.
    pub fn rendezvous_request(
        &mut self,
        now: Instant,
        conn: ConnId,
        message: &RendezvousMessage,
    ) -> Result<DeviceId, ServerRefusal> {
        self.close_unauthenticated(now);
        let Some(device) = self.authenticated_device(conn) else {
            self.counters.refused.count(ServerRefusal::NotAuthenticated);
            return Err(ServerRefusal::NotAuthenticated);
        };
        if matches!(message, RendezvousMessage::Publish { .. })
            && !self.within_rates(now, conn, device, Limited::Publish)
        {
            self.counters.refused.count(ServerRefusal::RateLimited);
            return Err(ServerRefusal::RateLimited);
        }
        Ok(device)
    }

    /// Queues the rendezvous table's answer to a request on `conn` (after
    /// [`rendezvous_request`](Self::rendezvous_request) let it through, or its
    /// refusal): it goes out in order with this connection's other answers, after the
    /// commit of what came before it.
    pub fn rendezvous_answer(&mut self, conn: ConnId, answer: RendezvousMessage) {
        self.output(ServerOutput::Send(conn, WireFrame::Rendezvous(answer)));
    }

    /// What the server counted so far.
    pub fn counters(&self) -> RelayServerCounters {
        self.counters
    }

    /// Envelopes currently queued for `device`.
    pub fn queued_for(&self, device: &DeviceId) -> usize {
        self.queues.get(device).map_or(0, |q| q.envelopes.len())
    }

    /// Envelopes `sender` has stored now, and their bytes charged against
    /// `max_stored_bytes_per_sender`.
    pub fn stored_by(&self, sender: &DeviceId) -> (usize, usize) {
        self.per_sender
            .get(sender)
            .map_or((0, 0), |u| (u.count, u.bytes))
    }

    /// Connections open now, authenticated or not.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Envelopes currently stored, all recipients together.
    pub fn total_queued(&self) -> usize {
        self.owners.len()
    }

    /// Bytes charged against `max_stored_bytes` now.
    pub fn stored_bytes(&self) -> usize {
        self.stored_bytes
    }

    /// Takes over what the store held at start (call it before the first input). Each
    /// envelope is kept only if it has not expired and still fits every bound of the
    /// current config, oldest first, with its expiry capped at `now + max_ttl`; the
    /// others are counted and reported as [`QueueChange::Remove`]. Ids handed out
    /// later are above every id the store ever saw.
    pub fn restore(&mut self, now: Instant, loaded: LoadedQueue) {
        self.counters.store_undecodable += loaded.undecodable;
        self.next_envelope_id = self.next_envelope_id.max(loaded.next_envelope_id);
        let now_unix = self.unix_ms_at(now);
        let mut envelopes = loaded.envelopes;
        envelopes.sort_by_key(|stored| stored.id);
        for stored in envelopes {
            self.next_envelope_id = self.next_envelope_id.max(stored.id.saturating_add(1));
            if stored.expires_at_unix_ms <= now_unix {
                self.counters.expired += 1;
                self.change(QueueChange::Remove { id: stored.id });
                continue;
            }
            let fits = stored.envelope.len() <= self.config.max_envelope_len
                && self
                    .admits(&stored.from, &stored.to, stored.envelope.len())
                    .is_ok()
                && !self.owners.contains_key(&stored.id);
            if !fits {
                debug!(
                    id = stored.id,
                    "relay server: stored envelope over a bound, dropped"
                );
                self.counters.restore_dropped += 1;
                self.change(QueueChange::Remove { id: stored.id });
                continue;
            }
            let left = Duration::from_millis(stored.expires_at_unix_ms - now_unix);
            let expires_at = now + left.min(self.config.max_ttl);
            self.insert(
                stored.id,
                stored.to,
                stored.from,
                stored.envelope,
                expires_at,
            );
            self.counters.restored += 1;
            if let Some(recipient) = self.conn_of(&stored.to) {
                self.push(recipient, &stored.to, stored.id);
            }
        }
    }

    /// Next change for the store. The shell applies the changes it took in one commit,
    /// then calls [`committed`](Self::committed), which releases the outputs that
    /// waited for them.
    pub fn poll_change(&mut self) -> Option<QueueChange> {
        let change = self.changes.pop_front()?;
        self.changes_taken += 1;
        Some(change)
    }

    /// The shell applied every change taken with [`poll_change`](Self::poll_change) so
    /// far, in one commit: the outputs produced before the next change not taken go
    /// out, and a new batch of inputs starts. (A commit that failed is counted by the
    /// shell, which calls this too: the envelopes stay queued in memory, as if durable.)
    pub fn committed(&mut self) {
        self.changes_committed = self.changes_taken;
        self.inputs_since_commit = 0;
    }

    /// Whether [`MAX_INPUTS_PER_COMMIT`] inputs were fed since the last
    /// [`committed`](Self::committed): the shell must commit before it feeds another.
    pub fn commit_due(&self) -> bool {
        self.inputs_since_commit >= MAX_INPUTS_PER_COMMIT
    }

    /// Whether changes or outputs wait for a commit.
    pub fn commit_pending(&self) -> bool {
        !self.changes.is_empty() || self.changes_taken > self.changes_committed
    }

    /// Feeds one input. Its outputs wait for the commit of the changes reported before
    /// them (see the module docs); feed at most [`MAX_INPUTS_PER_COMMIT`] between two
    /// commits ([`commit_due`](Self::commit_due)).
    pub fn handle(&mut self, now: Instant, input: ServerInput) {
        self.inputs_since_commit += 1;
        // Expired envelopes are never pushed, even if the timer has not fired yet, and
        // a late proof is not taken.
        self.expire(now);
        self.close_unauthenticated(now);
        self.forget_idle_identities(now);
        match input {
            ServerInput::Opened(conn, binding, remote) => {
                self.opened(now, conn, binding);
                self.remotes.insert(conn, remote);
            }
            ServerInput::Closed(conn) => self.closed(now, conn),
            ServerInput::Moved(conn, remote) => self.moved(conn, remote),
            ServerInput::Frame(conn, message) => self.frame(now, conn, message),
            ServerInput::Bytes(conn, bytes) => match tether_protocol::decode(&bytes) {
                Ok(WireFrame::Relay(message)) => self.frame(now, conn, message),
                Ok(other) => {
                    debug!(%conn, kind = frame_kind(&other), "relay server: not a relay frame");
                    self.counters.bad_frames += 1;
                }
                Err(err) => {
                    debug!(%conn, %err, "relay server: undecodable frame");
                    self.counters.bad_frames += 1;
                }
            },
        }
    }

    /// Removes expired envelopes, closes connections past their authentication
    /// deadline, forgets idle identities whose buckets are full. Spurious calls are
    /// harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire(now);
        self.close_unauthenticated(now);
        self.forget_idle_identities(now);
    }

    /// Next output to deliver: none while the next one waits for a commit of the
    /// changes reported before it.
    pub fn poll_output(&mut self) -> Option<ServerOutput> {
        let (after, _) = self.outputs.front()?;
        if *after > self.changes_committed {
            return None;
        }
        self.outputs.pop_front().map(|(_, output)| output)
    }

    /// When the next envelope expires, authentication deadline passes, or idle
    /// identity may be forgotten.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.expiries.first().map(|(at, _)| *at),
            self.auth_deadlines.first().map(|(at, _)| *at),
            self.idle_identities.first().map(|(at, _)| *at),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn send(&mut self, conn: ConnId, message: RelayMessage) {
        self.output(ServerOutput::Send(conn, WireFrame::Relay(message)));
    }

    /// Queues an output behind every change reported so far.
    fn output(&mut self, output: ServerOutput) {
        self.outputs.push_back((self.changes_reported, output));
    }

    /// Reports a change for the store.
    fn change(&mut self, change: QueueChange) {
        self.changes_reported += 1;
        self.changes.push_back(change);
    }

    fn refuse(&mut self, conn: ConnId, request: Option<u64>, reason: ServerRefusal) {
        self.counters.refused.count(reason);
        self.send(conn, RelayMessage::Refused { request, reason });
    }

    fn opened(&mut self, now: Instant, conn: ConnId, binding: [u8; CHANNEL_BINDING_LEN]) {
        if self.conns.contains_key(&conn) {
            // Reused id: forget the old connection's state first.
            self.closed(now, conn);
        }
        let mut nonce = [0_u8; 32];
        self.rng.fill_bytes(&mut nonce);
        let deadline = now + self.config.auth_deadline;
        self.conns.insert(
            conn,
            ConnState::Challenged {
                nonce,
                binding,
                deadline,
            },
        );
        self.auth_deadlines.insert((deadline, conn));
        let server_key = *self.config.keypair.public().as_bytes();
        self.send(conn, RelayMessage::Challenge { nonce, server_key });
    }

    fn closed(&mut self, now: Instant, conn: ConnId) {
        self.remotes.remove(&conn);
        match self.conns.remove(&conn) {
            Some(ConnState::Authenticated {
                device,
                rendezvous_only,
                ..
            }) => self.detach(now, device, conn, rendezvous_only),
            Some(ConnState::Challenged { deadline, .. }) => {
                self.auth_deadlines.remove(&(deadline, conn));
            }
            None => {}
        }
    }

    /// Forgets `conn` and closes it (after what was sent on it before).
    fn close(&mut self, now: Instant, conn: ConnId) {
        self.closed(now, conn);
        self.output(ServerOutput::Close(conn));
    }

    /// Forgets `conn` and closes it with a refusal (counted) as its last frame.
    fn refuse_and_close(&mut self, now: Instant, conn: ConnId, reason: ServerRefusal) {
        self.counters.refused.count(reason);
        self.closed(now, conn);
        let refusal = RelayMessage::Refused {
            request: None,
            reason,
        };
        self.output(ServerOutput::CloseWith(conn, WireFrame::Relay(refusal)));
    }

    fn detach(&mut self, now: Instant, device: DeviceId, conn: ConnId, rendezvous_only: bool) {
        let Some(identity) = self.identities.get_mut(&device) else {
            return;
        };
        if rendezvous_only {
            identity.rendezvous_only.retain(|c| *c != conn);
        } else if identity.conn == Some(conn) {
            identity.conn = None;
            self.report_seen(device, None, Vec::new());
        } else {
            return;
        }
        let Some(identity) = self.identities.get_mut(&device) else {
            return;
        };
        if !identity.is_idle() {
            return;
        }
        // Its buckets outlive it until they are full: reconnecting buys no new burst.
        match identity.buckets.full_at(now) {
            Some(at) => {
                identity.idle_until = Some(at);
                self.idle_identities.insert((at, device));
            }
            None => {
                self.identities.remove(&device);
            }
        }
    }

    /// The device's connection moved to another address: it is told its new reflexive
    /// address, and what was pushed on it just before may have gone to the old one and
    /// would wait for QUIC's loss detection, so the device's oldest queued envelopes
    /// (at most [`REPUSH_ON_MOVE`]) are pushed again. Receivers dedupe.
    fn moved(&mut self, conn: ConnId, remote: SocketAddr) {
        let Some(state) = self.conns.get(&conn).copied() else {
            return;
        };
        self.remotes.insert(conn, remote);
        let ConnState::Authenticated {
            device,
            rendezvous_only,
            ..
        } = state
        else {
            return;
        };
        self.send(conn, RelayMessage::Observed { addr: remote });
        if rendezvous_only {
            return;
        }
        if self.conn_of(&device) != Some(conn) {
            return;
        }
        self.report_seen(device, Some(remote), Vec::new());
        let ids: Vec<u64> = self
            .queues
            .get(&device)
            .map(|q| q.envelopes.keys().take(REPUSH_ON_MOVE).copied().collect())
            .unwrap_or_default();
        for id in ids {
            self.counters.repushed += 1;
            self.push(conn, &device, id);
        }
    }

    /// The authenticated connection of `device`.
    fn conn_of(&self, device: &DeviceId) -> Option<ConnId> {
        self.identities.get(device).and_then(|i| i.conn)
    }

    /// Closes every connection still unauthenticated at its deadline.
    fn close_unauthenticated(&mut self, now: Instant) {
        while let Some(&(deadline, conn)) = self.auth_deadlines.first() {
            if deadline > now {
                break;
            }
            self.auth_deadlines.remove(&(deadline, conn));
            if !matches!(self.conns.get(&conn), Some(ConnState::Challenged { .. })) {
                continue;
            }
            debug!(%conn, "relay server: no proof within the deadline, closed");
            self.counters.auth_timeouts += 1;
            self.close(now, conn);
        }
    }

    /// Forgets identities without connections whose buckets are full again.
    fn forget_idle_identities(&mut self, now: Instant) {
        while let Some(&(at, device)) = self.idle_identities.first() {
            if at > now {
                break;
            }
            self.idle_identities.remove(&(at, device));
            if self.identities.get(&device).is_some_and(Identity::is_idle) {
                self.identities.remove(&device);
            }
        }
    }

    /// Whether a request of `kind` from `device` on `conn` is within both the
    /// connection's and the identity's rates; takes a token from each if it is. A
    /// refusal starts (or extends) the identity's rate-limit episode; the first
    /// refusal of an episode is logged.
    fn within_rates(
        &mut self,
        now: Instant,
        conn: ConnId,
        device: DeviceId,
        kind: Limited,
    ) -> bool {
        let conn_rates = self.config.conn_rates;
        let identity_rates = self.config.identity_rates;
        let (Some(ConnState::Authenticated { buckets, .. }), Some(identity)) =
            (self.conns.get_mut(&conn), self.identities.get_mut(&device))
        else {
            return false;
        };
        if buckets.allows(now, &conn_rates, kind)
            && identity.buckets.allows(now, &identity_rates, kind)
        {
            buckets.take(now, &conn_rates, kind);
            identity.buckets.take(now, &identity_rates, kind);
            return true;
        }
        let new_episode = identity.limited_until.is_none_or(|until| until <= now);
        identity.limited_until = Some(now + RATE_LIMIT_QUIET);
        if new_episode {
            self.counters.rate_limit_episodes += 1;
            warn!(
                %device,
                request = kind.name(),
                "relay: device rate limited; its requests over the rate are refused"
            );
        }
        false
    }

    fn frame(&mut self, now: Instant, conn: ConnId, message: RelayMessage) {
        let Some(state) = self.conns.get(&conn).copied() else {
            debug!(%conn, "relay server: frame on an unknown connection");
            self.counters.unknown_connections += 1;
            return;
        };
        match state {
            ConnState::Challenged { nonce, binding, .. } => match message {
                RelayMessage::Authenticate {
                    device,
                    proof,
                    rendezvous_only,
                    rendezvous_ids,
                } => {
                    let proved = Proved {
                        nonce,
                        binding,
                        device,
                        rendezvous_only,
                        rendezvous_ids,
                    };
                    self.authenticate(now, conn, proved, &proof)
                }
                RelayMessage::Enqueue { request, .. } => {
                    self.refuse(conn, Some(request), ServerRefusal::NotAuthenticated)
                }
                _ => self.refuse(conn, None, ServerRefusal::NotAuthenticated),
            },
            ConnState::Authenticated {
                rendezvous_only: true,
                ..
            } => match message {
                RelayMessage::PathProbe { .. } => self.counters.path_probes += 1,
                RelayMessage::Enqueue { request, .. } => {
                    self.refuse(conn, Some(request), ServerRefusal::NotAuthenticated)
                }
                _ => self.refuse(conn, None, ServerRefusal::NotAuthenticated),
            },
            ConnState::Authenticated { device, .. } => match message {
                RelayMessage::Enqueue {
                    to,
                    request,
                    ttl_ms,
                    envelope,
                } => self.enqueue(now, conn, device, to, request, ttl_ms, envelope),
                RelayMessage::Fetch { max } => self.fetch(conn, device, max),
                RelayMessage::Delivered { envelope_ids } => {
                    self.delivered(conn, device, &envelope_ids)
                }
                RelayMessage::Forward { to, frame } => self.forward(now, conn, device, to, frame),
                RelayMessage::PathProbe { .. } => self.counters.path_probes += 1,
                RelayMessage::Authenticate { .. }
                | RelayMessage::Challenge { .. }
                | RelayMessage::Welcome { .. }
                | RelayMessage::Observed { .. }
                | RelayMessage::Enqueued { .. }
                | RelayMessage::Push { .. }
                | RelayMessage::Forwarded { .. }
                | RelayMessage::Refused { .. } => {
                    debug!(%conn, "relay server: unexpected message after authentication");
                    self.counters.bad_frames += 1;
                }
            },
        }
    }

    fn authenticate(&mut self, now: Instant, conn: ConnId, proved: Proved, proof: &[u8]) {
        let Proved {
            nonce,
            binding,
            device,
            rendezvous_only,
            rendezvous_ids,
        } = proved;
        let key = PublicKey::from_bytes(device.0)
            .ok()
            .filter(|key| verify_server_auth(&self.config.keypair, key, &nonce, &binding, proof));
        let Some(key) = key else {
            debug!(%conn, %device, "relay server: bad proof");
            self.refuse_and_close(now, conn, ServerRefusal::BadProof);
            return;
        };
        if !self.config.admission.admits(&device) {
            self.not_admitted(now, conn, device);
            return;
        }
        // The challenge state goes; where the connection comes from stays.
        let remote = self.remotes.get(&conn).copied();
        self.closed(now, conn);
        if let Some(remote) = remote {
            self.remotes.insert(conn, remote);
        }
        self.counters.authenticated += 1;
        self.conns.insert(
            conn,
            ConnState::Authenticated {
                device,
                buckets: Buckets::default(),
                rendezvous_only,
            },
        );
        let identity = self.identities.entry(device).or_default();
        if let Some(at) = identity.idle_until.take() {
            self.idle_identities.remove(&(at, device));
        }
        let replaced = if rendezvous_only {
            identity.rendezvous_only.push(conn);
            (identity.rendezvous_only.len() > MAX_RENDEZVOUS_ONLY_CONNS)
                .then(|| identity.rendezvous_only.remove(0))
        } else {
            identity.conn.replace(conn)
        };
        if let Some(old) = replaced {
            self.counters.replaced_connections += 1;
            self.conns.remove(&old);
            let refusal = RelayMessage::Refused {
                request: None,
                reason: ServerRefusal::Replaced,
            };
            self.output(ServerOutput::CloseWith(old, WireFrame::Relay(refusal)));
        }
        let proof = server_proof(&self.config.keypair, &key, &nonce, &binding).to_vec();
        self.send(
            conn,
            RelayMessage::Welcome {
                proof,
                observed: remote,
            },
        );
        if rendezvous_only {
            return;
        }
        if remote.is_some() {
            let rendezvous_ids = self.open_ids(&key, &nonce, &binding, &rendezvous_ids);
            self.report_seen(device, remote, rendezvous_ids);
        }
        let ids: Vec<u64> = self
            .queues
            .get(&device)
            .map(|q| q.envelopes.keys().copied().collect())
            .unwrap_or_default();
        for id in ids {
            self.push(conn, &device, id);
        }
    }

    /// Refuses a device that proved its key but is not admitted, closes the
    /// connection, and logs the device's first refusal.
    fn not_admitted(&mut self, now: Instant, conn: ConnId, device: DeviceId) {
        self.refuse_and_close(now, conn, ServerRefusal::NotAdmitted);
        if self.not_admitted_logged.len() < MAX_LOGGED_NOT_ADMITTED {
            if self.not_admitted_logged.insert(device) {
                warn!(%device, "relay: device not admitted (its key is not on the allowlist); connection closed");
            }
        } else if self.not_admitted_logged.len() == MAX_LOGGED_NOT_ADMITTED
            && !self.not_admitted_logged.contains(&device)
        {
            // One marker entry past the cap: logged once, then only counted.
            self.not_admitted_logged.insert(device);
            warn!(
                logged = MAX_LOGGED_NOT_ADMITTED,
                "relay: more devices not admitted; from now on they are only counted (refused_not_admitted)"
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        &mut self,
        now: Instant,
        conn: ConnId,
        from: DeviceId,
        to: DeviceId,
        request: u64,
        ttl_ms: u64,
        envelope: Vec<u8>,
    ) {
        let len = envelope.len();
        if len > self.config.max_envelope_len {
            return self.refuse(conn, Some(request), ServerRefusal::TooLarge);
        }
        if !self.within_rates(now, conn, from, Limited::Enqueue) {
            return self.refuse(conn, Some(request), ServerRefusal::RateLimited);
        }
        if let Err(reason) = self.admits(&from, &to, len) {
            return self.refuse(conn, Some(request), reason);
        }
        let ttl = Duration::from_millis(ttl_ms).min(self.config.max_ttl);
        let expires_at = now + ttl;
        let id = self.next_envelope_id;
        self.next_envelope_id += 1;
        self.change(QueueChange::Put(StoredEnvelope {
            id,
            to,
            from,
            expires_at_unix_ms: self.unix_ms_at(expires_at),
            envelope: envelope.clone(),
        }));
        self.insert(id, to, from, envelope, expires_at);
        self.counters.stored += 1;
        self.send(conn, RelayMessage::Enqueued { request });
        if let Some(recipient) = self.conn_of(&to) {
            self.push(recipient, &to, id);
        }
    }

    /// Whether an envelope of `len` bytes from `from` to `to` fits every bound, or the
    /// refusal: `QuotaExceeded` over the sender's own quota (envelopes or bytes in all,
    /// or its share of the recipient's queue), `QueueFull` over the recipient's queue
    /// or the server's total.
    fn admits(&self, from: &DeviceId, to: &DeviceId, len: usize) -> Result<(), ServerRefusal> {
        let c = &self.config;
        let charged = len.saturating_add(ENVELOPE_OVERHEAD);
        let sender = self.per_sender.get(from).copied().unwrap_or_default();
        let queue = self.queues.get(to);
        let (count, bytes) = queue.map_or((0, 0), |q| (q.envelopes.len(), q.bytes));
        let share = queue
            .and_then(|q| q.per_sender.get(from).copied())
            .unwrap_or_default();
        if sender.count >= c.max_stored_per_sender
            || sender.bytes.saturating_add(charged) > c.max_stored_bytes_per_sender
            || share.count >= c.max_queued_per_sender_recipient
            || share.bytes.saturating_add(len) > c.max_queued_bytes_per_sender_recipient
        {
            return Err(ServerRefusal::QuotaExceeded);
        }
        if count >= c.max_queued_per_recipient
            || bytes.saturating_add(len) > c.max_queued_bytes_per_recipient
            || self.stored_bytes.saturating_add(charged) > c.max_stored_bytes
        {
            return Err(ServerRefusal::QueueFull);
        }
        Ok(())
    }

    /// Adds an envelope to every index (bounds already checked).
    fn insert(
        &mut self,
        id: u64,
        to: DeviceId,
        from: DeviceId,
        envelope: Vec<u8>,
        expires_at: Instant,
    ) {
        let len = envelope.len();
        let queue = self.queues.entry(to).or_default();
        queue.bytes += len;
        queue.per_sender.entry(from).or_default().add(len);
        queue.envelopes.insert(
            id,
            Stored {
                from,
                envelope,
                expires_at,
            },
        );
        self.owners.insert(id, to);
        self.expiries.insert((expires_at, id));
        self.per_sender
            .entry(from)
            .or_default()
            .add(len + ENVELOPE_OVERHEAD);
        self.stored_bytes += len + ENVELOPE_OVERHEAD;
    }

    /// The wall-clock time (Unix ms) of `at`, from the config's anchor.
    fn unix_ms_at(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.started).as_millis();
        self.config
            .unix_ms_at_start
            .saturating_add(u64::try_from(since).unwrap_or(u64::MAX))
    }

    /// Pushes envelope `id` of `device`'s queue on `conn`.
    fn push(&mut self, conn: ConnId, device: &DeviceId, id: u64) {
        let Some(stored) = self.queues.get(device).and_then(|q| q.envelopes.get(&id)) else {
            return;
        };
        let message = RelayMessage::Push {
            from: stored.from,
            envelope_id: id,
            envelope: stored.envelope.clone(),
        };
        self.counters.pushed += 1;
        self.send(conn, message);
    }

    fn fetch(&mut self, conn: ConnId, device: DeviceId, max: u32) {
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        let ids: Vec<u64> = self
            .queues
            .get(&device)
            .map(|q| q.envelopes.keys().take(max).copied().collect())
            .unwrap_or_default();
        for id in ids {
            self.push(conn, &device, id);
        }
    }

    fn delivered(&mut self, conn: ConnId, device: DeviceId, ids: &[u64]) {
        let mut foreign = false;
        for id in ids {
            // An unknown id was already acknowledged or expired: a harmless duplicate.
            let Some(owner) = self.owners.get(id).copied() else {
                continue;
            };
            if owner != device {
                foreign = true;
            } else if self.remove(*id).is_some() {
                self.counters.delivered += 1;
            }
        }
        if foreign {
            self.refuse(conn, None, ServerRefusal::NotYours);
        }
    }

    fn forward(
        &mut self,
        now: Instant,
        conn: ConnId,
        from: DeviceId,
        to: DeviceId,
        frame: Vec<u8>,
    ) {
        if frame.len() > self.config.max_envelope_len {
            return self.refuse(conn, None, ServerRefusal::TooLarge);
        }
        if !self.within_rates(now, conn, from, Limited::Forward) {
            return self.refuse(conn, None, ServerRefusal::RateLimited);
        }
        let Some(recipient) = self.conn_of(&to) else {
            return self.refuse(conn, None, ServerRefusal::NotConnected);
        };
        self.counters.forwarded += 1;
        self.send(recipient, RelayMessage::Forwarded { from, frame });
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.expiries.first() {
            if at > now {
                break;
            }
            if self.remove(id).is_some() {
                self.counters.expired += 1;
            } else {
                // Index without an envelope: cannot happen, but never loop on it.
                self.expiries.remove(&(at, id));
            }
        }
    }

    /// Removes an envelope from every index, and from the store.
    fn remove(&mut self, id: u64) -> Option<Stored> {
        let owner = self.owners.remove(&id)?;
        self.change(QueueChange::Remove { id });
        let queue = self.queues.get_mut(&owner)?;
        let stored = queue.envelopes.remove(&id)?;
        let len = stored.envelope.len();
        queue.bytes = queue.bytes.saturating_sub(len);
        if let Some(share) = queue.per_sender.get_mut(&stored.from) {
            if share.sub(len) {
                queue.per_sender.remove(&stored.from);
            }
        }
        self.stored_bytes = self
            .stored_bytes
            .saturating_sub(stored.envelope.len() + ENVELOPE_OVERHEAD);
        if queue.envelopes.is_empty() {
            self.queues.remove(&owner);
        }
        self.expiries.remove(&(stored.expires_at, id));
        if let Some(usage) = self.per_sender.get_mut(&stored.from) {
            if usage.sub(len + ENVELOPE_OVERHEAD) {
                self.per_sender.remove(&stored.from);
            }
        }
        Some(stored)
    }
}

/// A frame's kind, for logs.
pub(crate) fn frame_kind(frame: &WireFrame) -> &'static str {
    match frame {
        WireFrame::HandshakeInit(_) => "HandshakeInit",
        WireFrame::HandshakeResponse(_) => "HandshakeResponse",
        WireFrame::Sealed(_) => "Sealed",
        WireFrame::Relay(_) => "Relay",
        WireFrame::Rendezvous(_) => "Rendezvous",
    }
}
