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
//!   with the server's own proof ([`tether_crypto::server_proof`]), then a `Push` of
//!   everything queued for the device. A wrong proof (an invalid device key, or a proof
//!   made on another connection, as one relayed by a man in the middle) → `Refused {
//!   BadProof }` and [`ServerOutput::Close`]. Anything else before authentication →
//!   `Refused { NotAuthenticated }` (with the request number for an `Enqueue`).
//! - `Enqueue { to, request, ttl_ms, envelope }` → `Enqueued { request }`, or `Refused {
//!   request, TooLarge | QuotaExceeded | QueueFull }`. Stored envelopes get a
//!   server-assigned id and an expiry (`ttl_ms` capped by [`RelayServerConfig::max_ttl`]);
//!   if the recipient is connected it is pushed at once and kept until acknowledged.
//! - `Fetch { max }` → up to `max` pushes from the caller's own queue, oldest first,
//!   including envelopes pushed before and not yet acknowledged (receivers dedupe).
//! - `Delivered { envelope_ids }` removes those ids from the caller's own queue. Ids of
//!   envelopes queued for another device are left untouched and answered with one
//!   `Refused { NotYours }`; unknown ids (already acknowledged or expired) are ignored, so
//!   a repeated acknowledgement is harmless.
//! - `Forward { to, frame }` → `Forwarded { from, frame }` to every authenticated
//!   connection of `to`, or `Refused { NotConnected }`.
//!
//! The server never looks inside envelopes or frames (invariant 7): it sees routing ids,
//! lengths and opaque bytes.
//!
//! # Several connections per device
//! A device may hold more than one authenticated connection: its relay client and its
//! rendezvous client each have one, and after a network change the old connection may
//! linger until its idle timeout. Pushes and forwarded frames go to every authenticated
//! connection of the recipient (the rendezvous client ignores them; receivers dedupe).
//! At most [`RelayServerConfig::max_conns_per_device`] are kept: authenticating one more
//! closes the oldest.
//!
//! # Bounds
//! Per recipient: at most `max_queued_per_recipient` envelopes and
//! `max_queued_bytes_per_recipient` bytes. Per sender: at most `max_stored_per_sender`
//! envelopes stored across all recipients. Per envelope: `max_envelope_len` bytes.
//! All recipients together: at most `max_stored_bytes`, each envelope charged its length
//! plus [`ENVELOPE_OVERHEAD`] (so many tiny envelopes are bounded too). The same bounds
//! bound the store on disk, which only ever holds what the core holds.
//! Nothing is ever dropped silently before its TTL: an envelope leaves the queue only
//! when its recipient acknowledges it or its TTL passes (counted as expired).
//!
//! # Persistence
//! Every envelope stored or removed is also reported as a [`QueueChange`]
//! ([`RelayQueueServer::poll_change`]). The shell applies the changes of an input to its
//! [`RelayQueueStore`](crate::store::RelayQueueStore) in one commit before it sends
//! that input's outputs, so `Enqueued` means durable. At start,
//! [`RelayQueueServer::restore`] takes over what the store held, dropping (and
//! reporting) what has expired or no longer fits the configured bounds. See
//! [`crate::store`].

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};
use tether_crypto::{
    server_proof, verify_server_auth, PublicKey, StaticKeypair, CHANNEL_BINDING_LEN,
};
use tether_protocol::{DeviceId, RelayMessage, ServerRefusal, WireFrame};
use tracing::debug;

use crate::counters::RefusalCounters;
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

/// Bytes stored for all recipients together: 1 GiB bounds the relay's memory and its
/// store on disk; with [`ENVELOPE_OVERHEAD`] charged per envelope it also bounds the
/// count (at most 4 Mi envelopes).
pub const DEFAULT_MAX_STORED_BYTES: usize = 1024 * 1024 * 1024;

/// What each stored envelope is charged against `max_stored_bytes` on top of its
/// length: its ids, expiry and index entries, in memory and in the store (about 150
/// bytes), rounded up.
pub const ENVELOPE_OVERHEAD: usize = 256;

/// Authenticated connections per device: the relay client, the rendezvous client, and
/// the two they are replacing after a network change.
pub const DEFAULT_MAX_CONNS_PER_DEVICE: usize = 4;

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
    /// Most authenticated connections kept per device.
    pub max_conns_per_device: usize,
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
            .field("max_conns_per_device", &self.max_conns_per_device)
            .field("max_stored_bytes", &self.max_stored_bytes)
            .field("unix_ms_at_start", &self.unix_ms_at_start)
            .field("seed", &format_args!("<redacted>"))
            .finish()
    }
}

impl RelayServerConfig {
    /// A config with the default bounds, and a wall clock starting at Unix time 0 (set
    /// `unix_ms_at_start` when envelopes are stored across restarts).
    pub fn new(keypair: StaticKeypair, seed: [u8; 32]) -> Self {
        Self {
            keypair,
            max_queued_per_recipient: DEFAULT_MAX_QUEUED_PER_RECIPIENT,
            max_queued_bytes_per_recipient: DEFAULT_MAX_QUEUED_BYTES_PER_RECIPIENT,
            max_envelope_len: DEFAULT_MAX_ENVELOPE_LEN,
            max_ttl: DEFAULT_MAX_TTL,
            max_stored_per_sender: DEFAULT_MAX_STORED_PER_SENDER,
            max_conns_per_device: DEFAULT_MAX_CONNS_PER_DEVICE,
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
    /// (`tether_transport::LinkHandle::channel_binding`).
    Opened(ConnId, [u8; CHANNEL_BINDING_LEN]),
    /// A connection closed (by either side).
    Closed(ConnId),
    /// A relay message arrived on a connection (the harness decoded the frame).
    Frame(ConnId, RelayMessage),
    /// Raw bytes arrived: decoded with [`tether_protocol::decode`]; undecodable bytes
    /// and frames other than relay messages are counted as bad frames.
    Bytes(ConnId, Vec<u8>),
}

/// What the server asks the harness to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerOutput {
    /// Send this frame on the connection.
    Send(ConnId, WireFrame),
    /// Close the connection (after sending what was queued before it).
    Close(ConnId),
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
    /// Frames that could not be decoded, were not relay messages, or made no sense
    /// where they arrived (a server message from a device, a second Authenticate).
    pub bad_frames: u64,
    /// Inputs naming a connection the server does not know (a harness ordering slip).
    pub unknown_connections: u64,
    /// Connections closed because the device opened more than the limit.
    pub evicted_connections: u64,
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
    /// Challenge sent, waiting for Authenticate.
    Challenged {
        nonce: [u8; 32],
        binding: [u8; CHANNEL_BINDING_LEN],
    },
    /// Proof verified.
    Authenticated { device: DeviceId },
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
}

/// The relay queue server's state. See the module docs.
#[derive(Debug)]
pub struct RelayQueueServer {
    config: RelayServerConfig,
    rng: ChaCha20Rng,
    conns: BTreeMap<ConnId, ConnState>,
    /// Authenticated connections per device, oldest first.
    devices: BTreeMap<DeviceId, Vec<ConnId>>,
    queues: BTreeMap<DeviceId, Queue>,
    /// Envelope id → its recipient.
    owners: BTreeMap<u64, DeviceId>,
    /// (expiry, envelope id), earliest first.
    expiries: BTreeSet<(Instant, u64)>,
    /// Envelopes stored per sender.
    per_sender: BTreeMap<DeviceId, usize>,
    next_envelope_id: u64,
    /// Bytes charged against `max_stored_bytes` (lengths plus overheads).
    stored_bytes: usize,
    /// The `now` of `new`, when the wall clock read `unix_ms_at_start`.
    started: Instant,
    outputs: VecDeque<ServerOutput>,
    /// Store changes not yet taken by the shell.
    changes: VecDeque<QueueChange>,
    counters: RelayServerCounters,
}

impl RelayQueueServer {
    /// A server with no connections and empty queues.
    pub fn new(config: RelayServerConfig, now: Instant) -> Self {
        let rng = ChaCha20Rng::from_seed(config.seed);
        Self {
            config,
            rng,
            conns: BTreeMap::new(),
            devices: BTreeMap::new(),
            queues: BTreeMap::new(),
            owners: BTreeMap::new(),
            expiries: BTreeSet::new(),
            per_sender: BTreeMap::new(),
            next_envelope_id: 1,
            stored_bytes: 0,
            started: now,
            outputs: VecDeque::new(),
            changes: VecDeque::new(),
            counters: RelayServerCounters::default(),
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
            Some(ConnState::Authenticated { device }) => Some(*device),
            _ => None,
        }
    }

    /// What the server counted so far.
    pub fn counters(&self) -> RelayServerCounters {
        self.counters
    }

    /// Envelopes currently queued for `device`.
    pub fn queued_for(&self, device: &DeviceId) -> usize {
        self.queues.get(device).map_or(0, |q| q.envelopes.len())
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
                self.changes
                    .push_back(QueueChange::Remove { id: stored.id });
                continue;
            }
            let fits = stored.envelope.len() <= self.config.max_envelope_len
                && self.admits(&stored.from, &stored.to, stored.envelope.len())
                && !self.owners.contains_key(&stored.id);
            if !fits {
                debug!(
                    id = stored.id,
                    "relay server: stored envelope over a bound, dropped"
                );
                self.counters.restore_dropped += 1;
                self.changes
                    .push_back(QueueChange::Remove { id: stored.id });
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
            let recipients = self.devices.get(&stored.to).cloned().unwrap_or_default();
            for recipient in recipients {
                self.push(recipient, &stored.to, stored.id);
            }
        }
    }

    /// Next change for the store. The shell applies every change an input produced
    /// before it sends that input's outputs.
    pub fn poll_change(&mut self) -> Option<QueueChange> {
        self.changes.pop_front()
    }

    /// Feeds one input.
    pub fn handle(&mut self, now: Instant, input: ServerInput) {
        // Expired envelopes are never pushed, even if the timer has not fired yet.
        self.expire(now);
        match input {
            ServerInput::Opened(conn, binding) => self.opened(conn, binding),
            ServerInput::Closed(conn) => self.closed(conn),
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

    /// Removes expired envelopes. Spurious calls are harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire(now);
    }

    /// Next output to deliver.
    pub fn poll_output(&mut self) -> Option<ServerOutput> {
        self.outputs.pop_front()
    }

    /// When the next envelope expires.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.expiries.first().map(|(at, _)| *at)
    }

    fn send(&mut self, conn: ConnId, message: RelayMessage) {
        self.outputs
            .push_back(ServerOutput::Send(conn, WireFrame::Relay(message)));
    }

    fn refuse(&mut self, conn: ConnId, request: Option<u64>, reason: ServerRefusal) {
        self.counters.refused.count(reason);
        self.send(conn, RelayMessage::Refused { request, reason });
    }

    fn opened(&mut self, conn: ConnId, binding: [u8; CHANNEL_BINDING_LEN]) {
        if self.conns.contains_key(&conn) {
            // Reused id: forget the old connection's state first.
            self.closed(conn);
        }
        let mut nonce = [0_u8; 32];
        self.rng.fill_bytes(&mut nonce);
        self.conns
            .insert(conn, ConnState::Challenged { nonce, binding });
        let server_key = *self.config.keypair.public().as_bytes();
        self.send(conn, RelayMessage::Challenge { nonce, server_key });
    }

    fn closed(&mut self, conn: ConnId) {
        if let Some(ConnState::Authenticated { device }) = self.conns.remove(&conn) {
            self.detach(device, conn);
        }
    }

    fn detach(&mut self, device: DeviceId, conn: ConnId) {
        if let Some(list) = self.devices.get_mut(&device) {
            list.retain(|c| *c != conn);
            if list.is_empty() {
                self.devices.remove(&device);
            }
        }
    }

    fn frame(&mut self, now: Instant, conn: ConnId, message: RelayMessage) {
        let Some(state) = self.conns.get(&conn).copied() else {
            debug!(%conn, "relay server: frame on an unknown connection");
            self.counters.unknown_connections += 1;
            return;
        };
        match state {
            ConnState::Challenged { nonce, binding } => match message {
                RelayMessage::Authenticate { device, proof } => {
                    self.authenticate(conn, nonce, binding, device, &proof)
                }
                RelayMessage::Enqueue { request, .. } => {
                    self.refuse(conn, Some(request), ServerRefusal::NotAuthenticated)
                }
                _ => self.refuse(conn, None, ServerRefusal::NotAuthenticated),
            },
            ConnState::Authenticated { device } => match message {
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
                RelayMessage::Forward { to, frame } => self.forward(conn, device, to, frame),
                RelayMessage::Authenticate { .. }
                | RelayMessage::Challenge { .. }
                | RelayMessage::Welcome { .. }
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

    fn authenticate(
        &mut self,
        conn: ConnId,
        nonce: [u8; 32],
        binding: [u8; CHANNEL_BINDING_LEN],
        device: DeviceId,
        proof: &[u8],
    ) {
        let key = PublicKey::from_bytes(device.0)
            .ok()
            .filter(|key| verify_server_auth(&self.config.keypair, key, &nonce, &binding, proof));
        let Some(key) = key else {
            debug!(%conn, %device, "relay server: bad proof");
            self.refuse(conn, None, ServerRefusal::BadProof);
            self.conns.remove(&conn);
            self.outputs.push_back(ServerOutput::Close(conn));
            return;
        };
        self.counters.authenticated += 1;
        self.conns.insert(conn, ConnState::Authenticated { device });
        let list = self.devices.entry(device).or_default();
        list.push(conn);
        let excess = list
            .len()
            .saturating_sub(self.config.max_conns_per_device.max(1));
        let evicted: Vec<ConnId> = list.drain(..excess).collect();
        for old in evicted {
            self.counters.evicted_connections += 1;
            self.conns.remove(&old);
            self.outputs.push_back(ServerOutput::Close(old));
        }
        let proof = server_proof(&self.config.keypair, &key, &nonce, &binding).to_vec();
        self.send(conn, RelayMessage::Welcome { proof });
        let ids: Vec<u64> = self
            .queues
            .get(&device)
            .map(|q| q.envelopes.keys().copied().collect())
            .unwrap_or_default();
        for id in ids {
            self.push(conn, &device, id);
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
        if self.per_sender.get(&from).copied().unwrap_or(0) >= self.config.max_stored_per_sender {
            return self.refuse(conn, Some(request), ServerRefusal::QuotaExceeded);
        }
        if !self.admits(&from, &to, len) {
            return self.refuse(conn, Some(request), ServerRefusal::QueueFull);
        }
        let ttl = Duration::from_millis(ttl_ms).min(self.config.max_ttl);
        let expires_at = now + ttl;
        let id = self.next_envelope_id;
        self.next_envelope_id += 1;
        self.changes.push_back(QueueChange::Put(StoredEnvelope {
            id,
            to,
            from,
            expires_at_unix_ms: self.unix_ms_at(expires_at),
            envelope: envelope.clone(),
        }));
        self.insert(id, to, from, envelope, expires_at);
        self.counters.stored += 1;
        self.send(conn, RelayMessage::Enqueued { request });
        let recipients = self.devices.get(&to).cloned().unwrap_or_default();
        for recipient in recipients {
            self.push(recipient, &to, id);
        }
    }

    /// Whether an envelope of `len` bytes from `from` to `to` fits every bound: the
    /// sender's quota, the recipient's queue, the server's total.
    fn admits(&self, from: &DeviceId, to: &DeviceId, len: usize) -> bool {
        let (count, bytes) = self
            .queues
            .get(to)
            .map_or((0, 0), |q| (q.envelopes.len(), q.bytes));
        self.per_sender.get(from).copied().unwrap_or(0) < self.config.max_stored_per_sender
            && count < self.config.max_queued_per_recipient
            && bytes.saturating_add(len) <= self.config.max_queued_bytes_per_recipient
            && self
                .stored_bytes
                .saturating_add(len)
                .saturating_add(ENVELOPE_OVERHEAD)
                <= self.config.max_stored_bytes
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
        *self.per_sender.entry(from).or_default() += 1;
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

    fn forward(&mut self, conn: ConnId, from: DeviceId, to: DeviceId, frame: Vec<u8>) {
        if frame.len() > self.config.max_envelope_len {
            return self.refuse(conn, None, ServerRefusal::TooLarge);
        }
        let recipients = self.devices.get(&to).cloned().unwrap_or_default();
        if recipients.is_empty() {
            return self.refuse(conn, None, ServerRefusal::NotConnected);
        }
        for recipient in recipients {
            self.counters.forwarded += 1;
            self.send(
                recipient,
                RelayMessage::Forwarded {
                    from,
                    frame: frame.clone(),
                },
            );
        }
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
        self.changes.push_back(QueueChange::Remove { id });
        let queue = self.queues.get_mut(&owner)?;
        let stored = queue.envelopes.remove(&id)?;
        queue.bytes = queue.bytes.saturating_sub(stored.envelope.len());
        self.stored_bytes = self
            .stored_bytes
            .saturating_sub(stored.envelope.len() + ENVELOPE_OVERHEAD);
        if queue.envelopes.is_empty() {
            self.queues.remove(&owner);
        }
        self.expiries.remove(&(stored.expires_at, id));
        if let Some(count) = self.per_sender.get_mut(&stored.from) {
            *count = count.saturating_sub(1);
            if *count == 0 {
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
