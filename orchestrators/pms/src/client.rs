//! The device side of the rendezvous service ([`RendezvousClient`]), sans-IO.
//!
//! # Connection
//! A device holds one connection to the relay and rendezvous server, and the relay
//! client (Rcs) owns it: it dials, authenticates and backs off. This client learns
//! when that connection comes up or goes down ([`ClientInput::Server`]), hands its
//! requests to the relay client to send ([`ClientOutput::ToServer`]), and is given the
//! server's rendezvous answers ([`ClientInput::FromServer`]). A request handed over
//! just as the connection drops is lost with it; lookups in flight are sent again
//! after the next connect, and publishes are re-sent then anyway.
//!
//! # Requests
//! - `Publish`: the latest endpoints per peer are kept. When connected they are sealed
//!   ([`tether_crypto::seal_hint`], under the pair's RK, issued now for
//!   [`RendezvousClientConfig::hint_ttl`]) and sent under the pair's rendezvous id; after
//!   every `Welcome` the latest publish of every peer is sealed afresh and sent again,
//!   and while connected it is refreshed every half TTL so the peer never finds it
//!   expired. Publishing while disconnected therefore needs no queue.
//! - `Lookup`: sent when connected; queued otherwise (at most
//!   [`RendezvousClientConfig::max_queued_lookups`]; when full the oldest is dropped and
//!   counted) and sent after `Welcome`. Lookups in flight when the link is lost are
//!   queued again.
//! - On `Hints`: each hint is opened with the pair's RK; hints sealed by this device are
//!   ignored, expired, tampered and malformed ones are counted, and the newest valid one
//!   from the peer is emitted as [`PeerEndpointHint`] with the lookup's request id
//!   (lookups of one id are answered in order). The server also pushes the peer's new
//!   hint unasked when the peer publishes (the same `Hints`, which the wire cannot tell
//!   from an answer): it is emitted the same way, taking the request id of a lookup of
//!   that id still in flight if there is one (the id only labels the hint; the answer
//!   that follows is emitted without one). No valid hint: nothing is emitted
//!   (counted). The table answers members only, and a device becomes a member of its
//!   pair's id by publishing there: a device that never published for a peer gets
//!   `Refused { NotYours }` (counted) instead of hints. Presence publishes as soon as it
//!   knows its endpoints, before it ever looks one up.
//! - On `PeerSeen`: the server sees the peer's authenticated connection at that
//!   address (its reflexive address, told when either of us connects and when the
//!   peer's connection moves): emitted as a [`PeerEndpointHint`] with that address
//!   alone, issued now, without a request id. It reaches us before the peer could
//!   have published it (the peer learns its own reflexive address from the server
//!   first). An address nobody can dial (unspecified, port 0) is counted and dropped.
//!
//! # Time
//! Hints carry wall-clock times. The core reads no clock: unix time is
//! `unix_ms_at_start + (now - start)`, where `start` is the `now` given to
//! [`RendezvousClient::new`].

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tether_crypto::{
    open_hint, seal_hint, HintError, PublicKey, RelationshipKey, RendezvousId, StaticKeypair,
};
use tether_protocol::shell::SansIoCore;
use tether_protocol::{
    DeviceId, LookupEndpointHint, PeerEndpointHint, PublishEndpointHint, RelayStatus,
    RendezvousMessage,
};
use tracing::debug;

use crate::endpoints::{decode_endpoints, encode_endpoints};

/// Settings of the rendezvous client. `Debug` redacts the seed (the RKs redact
/// themselves).
#[derive(Clone)]
pub struct RendezvousClientConfig {
    /// This device's static keypair: hints are sealed as sent by its public key.
    pub keypair: StaticKeypair,
    /// The paired peers and their relationship keys: each pair's rendezvous id is
    /// [`RendezvousId::from_rk`], and its hints are sealed under the RK.
    pub peers: BTreeMap<DeviceId, RelationshipKey>,
    /// How long a published hint is valid (and kept by the server).
    pub hint_ttl: Duration,
    /// Unix time, in milliseconds, at the `now` given to [`RendezvousClient::new`].
    pub unix_ms_at_start: u64,
    /// Most lookups held while disconnected.
    pub max_queued_lookups: usize,
    /// Seed of the RNG that draws hint nonces and backoff jitter (ChaCha20). In
    /// production it MUST come from the OS's entropy: hint nonces are random, and a
    /// repeated stream under the same RK repeats nonces. As a second line of defence the
    /// seed is mixed with the device key and `unix_ms_at_start`, so a constant seed on
    /// one device still differs between starts at different times.
    pub seed: [u8; 32],
}

impl std::fmt::Debug for RendezvousClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RendezvousClientConfig")
            .field("device", &self.keypair.public())
            .field("peers", &self.peers)
            .field("hint_ttl", &self.hint_ttl)
            .field("unix_ms_at_start", &self.unix_ms_at_start)
            .field("max_queued_lookups", &self.max_queued_lookups)
            .field("seed", &format_args!("<redacted>"))
            .finish()
    }
}

impl RendezvousClientConfig {
    /// A config with default timings and bounds.
    pub fn new(
        keypair: StaticKeypair,
        peers: BTreeMap<DeviceId, RelationshipKey>,
        unix_ms_at_start: u64,
        seed: [u8; 32],
    ) -> Self {
        Self {
            keypair,
            peers,
            // 10 minutes: outlives a migration window many times over, and a refresh
            // every 5 minutes costs one small frame per peer.
            hint_ttl: Duration::from_secs(600),
            unix_ms_at_start,
            // 64: one pending lookup per peer for dozens of peers.
            max_queued_lookups: 64,
            seed,
        }
    }
}

/// What the rendezvous client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientInput {
    /// The device's connection to the server came up or went down (from the relay
    /// client, which owns it).
    Server(RelayStatus),
    /// A rendezvous message from the server, received on that connection.
    FromServer(RendezvousMessage),
    /// Publish our endpoints for a peer.
    Publish(PublishEndpointHint),
    /// Look up a peer's endpoints.
    Lookup(LookupEndpointHint),
}

/// What the rendezvous client asks to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOutput {
    /// A request for the server, to send on the device's connection (to the relay
    /// client).
    ToServer(RendezvousMessage),
    /// A peer's endpoints from an authentic, unexpired hint (to DirectConnection).
    Hint(PeerEndpointHint),
}

/// What the client counted. Peer- and server-caused problems land here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RendezvousClientCounters {
    /// Messages from the server that made no sense here.
    pub unexpected_frames: u64,
    /// Publishes and lookups naming a device that is not a configured peer.
    pub unknown_peer: u64,
    /// `Hints` for a rendezvous id of no configured peer.
    pub unknown_rendezvous: u64,
    /// Lookups dropped because too many were queued while disconnected.
    pub lookups_dropped: u64,
    /// Lookups answered without any valid hint from the peer.
    pub lookups_without_hint: u64,
    /// Hints sealed by this device, skipped.
    pub own_hints: u64,
    /// Hints whose lifetime was over.
    pub expired_hints: u64,
    /// Hints that failed to open (tampered, wrong key, bad length or version).
    pub tampered_hints: u64,
    /// Authentic hints sealed by a device other than the peer (only possible if the RK
    /// leaked), or whose endpoint bytes could not be read.
    pub rejected_hints: u64,
    /// Hints that could not be sealed (local).
    pub seal_errors: u64,
    /// Refusals received from the server.
    pub refused: u64,
    /// Hints published (re-publishes and refreshes included).
    pub published: u64,
    /// Peer addresses the server said it sees (`PeerSeen`), passed on.
    pub peer_seen: u64,
    /// `PeerSeen` with an address nobody can dial (unspecified, port 0).
    pub bad_peer_seen: u64,
}

/// One configured peer.
#[derive(Debug)]
struct Peer {
    rk: RelationshipKey,
    rendezvous_id: RendezvousId,
    /// The peer's validated static key; None if its id is not a valid key (then no hint
    /// can ever be accepted from it).
    public: Option<PublicKey>,
    /// Our latest endpoints for this peer.
    published: Option<Vec<SocketAddr>>,
    /// While connected: when the published hint is sealed and sent again.
    refresh_at: Option<Instant>,
}

/// The rendezvous client core. See the module docs.
#[derive(Debug)]
pub struct RendezvousClient {
    config: RendezvousClientConfig,
    device: DeviceId,
    start: Instant,
    /// Draws hint nonces.
    rng: ChaCha20Rng,
    /// Whether the device's connection to the server is up.
    connected: bool,
    peers: BTreeMap<DeviceId, Peer>,
    /// Every peer's `refresh_at`, by instant: the next refresh and the ones due are
    /// found without a walk over every peer (each input ends with `poll_timeout`, and
    /// a node may have thousands of peers).
    refreshes: BTreeSet<(Instant, DeviceId)>,
    by_rendezvous: BTreeMap<[u8; 32], DeviceId>,
    /// Lookups waiting for a connection, oldest first.
    queued_lookups: VecDeque<LookupEndpointHint>,
    /// Lookups sent, per rendezvous id, in the order sent.
    in_flight: BTreeMap<[u8; 32], VecDeque<LookupEndpointHint>>,
    outputs: VecDeque<ClientOutput>,
    counters: RendezvousClientCounters,
}

impl RendezvousClient {
    /// A client that sends nothing until the server connection is reported up.
    pub fn new(config: RendezvousClientConfig, now: Instant) -> Self {
        let public = *config.keypair.public();
        let device = DeviceId(*public.as_bytes());
        let mut seed = config.seed;
        for (byte, key) in seed.iter_mut().zip(public.as_bytes()) {
            *byte ^= key;
        }
        for (byte, time) in seed.iter_mut().zip(config.unix_ms_at_start.to_le_bytes()) {
            *byte ^= time;
        }
        let mut peers = BTreeMap::new();
        let mut by_rendezvous = BTreeMap::new();
        for (id, rk) in &config.peers {
            let rendezvous_id = RendezvousId::from_rk(rk);
            by_rendezvous.insert(rendezvous_id.0, *id);
            peers.insert(
                *id,
                Peer {
                    rk: rk.clone(),
                    rendezvous_id,
                    public: PublicKey::from_bytes(id.0).ok(),
                    published: None,
                    refresh_at: None,
                },
            );
        }
        Self {
            config,
            device,
            start: now,
            rng: ChaCha20Rng::from_seed(seed),
            connected: false,
            peers,
            refreshes: BTreeSet::new(),
            by_rendezvous,
            queued_lookups: VecDeque::new(),
            in_flight: BTreeMap::new(),
            outputs: VecDeque::new(),
            counters: RendezvousClientCounters::default(),
        }
    }

    /// This device's id.
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// Whether the device's connection to the server is up.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// What the client counted so far.
    pub fn counters(&self) -> RendezvousClientCounters {
        self.counters
    }

    /// Unix time in milliseconds at `now`, on the clock given in the config.
    pub fn unix_ms(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.start).as_millis();
        self.config
            .unix_ms_at_start
            .saturating_add(u64::try_from(since).unwrap_or(u64::MAX))
    }
}

impl SansIoCore for RendezvousClient {
    type Input = ClientInput;
    type Output = ClientOutput;

    /// Feeds one input.
    fn handle(&mut self, now: Instant, input: ClientInput) {
        match input {
            ClientInput::Server(RelayStatus { connected: true }) => self.up(now),
            ClientInput::Server(RelayStatus { connected: false }) => self.down(),
            ClientInput::FromServer(message) => self.server_message(now, message),
            ClientInput::Publish(publish) => self.publish(now, publish),
            ClientInput::Lookup(lookup) => self.lookup(lookup),
        }
    }

    /// Refreshes hints when due. Spurious calls are harmless.
    fn handle_timeout(&mut self, now: Instant) {
        if !self.connected {
            return;
        }
        while let Some(&(at, peer)) = self.refreshes.first() {
            if at > now {
                break;
            }
            self.refreshes.remove(&(at, peer));
            if let Some(state) = self.peers.get_mut(&peer) {
                state.refresh_at = None;
            }
            self.send_publish(now, peer);
        }
    }

    /// Next output to deliver.
    fn poll_output(&mut self) -> Option<ClientOutput> {
        self.outputs.pop_front()
    }

    /// The next instant at which [`SansIoCore::handle_timeout`] has something to do.
    fn poll_timeout(&self) -> Option<Instant> {
        if !self.connected {
            return None;
        }
        self.refreshes.first().map(|(at, _)| *at)
    }
}

impl RendezvousClient {
    /// The connection came up: publish afresh for every peer, send queued lookups.
    fn up(&mut self, now: Instant) {
        if self.connected {
            return;
        }
        self.connected = true;
        let published: Vec<DeviceId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.published.is_some())
            .map(|(id, _)| *id)
            .collect();
        for peer in published {
            self.send_publish(now, peer);
        }
        while let Some(lookup) = self.queued_lookups.pop_front() {
            self.send_lookup(lookup);
        }
    }

    /// The connection went down: lookups in flight go back in front of the queue, in
    /// the order sent.
    fn down(&mut self) {
        if !self.connected {
            return;
        }
        self.connected = false;
        let mut in_flight: Vec<LookupEndpointHint> = std::mem::take(&mut self.in_flight)
            .into_values()
            .flatten()
            .collect();
        in_flight.sort_by_key(|l| l.request);
        for lookup in in_flight.into_iter().rev() {
            self.queued_lookups.push_front(lookup);
        }
        self.trim_queue();
        for peer in self.peers.values_mut() {
            peer.refresh_at = None;
        }
        self.refreshes.clear();
    }

    fn server_message(&mut self, now: Instant, message: RendezvousMessage) {
        if !self.connected {
            self.counters.unexpected_frames += 1;
            return;
        }
        match message {
            RendezvousMessage::Hints {
                rendezvous_id,
                hints,
            } => self.hints(now, rendezvous_id, &hints),
            RendezvousMessage::Refused { reason } => {
                debug!(?reason, "rendezvous client: refused");
                self.counters.refused += 1;
            }
            RendezvousMessage::PeerSeen {
                rendezvous_id,
                addr,
            } => self.peer_seen(now, rendezvous_id, addr),
            RendezvousMessage::Publish { .. } | RendezvousMessage::Lookup { .. } => {
                self.counters.unexpected_frames += 1;
            }
        }
    }

    fn publish(&mut self, now: Instant, publish: PublishEndpointHint) {
        let Some(peer) = self.peers.get_mut(&publish.peer) else {
            self.counters.unknown_peer += 1;
            return;
        };
        peer.published = Some(publish.endpoints);
        if self.connected {
            self.send_publish(now, publish.peer);
        }
    }

    /// Seals our latest endpoints for `peer` now and sends them.
    fn send_publish(&mut self, now: Instant, peer_id: DeviceId) {
        let unix_now = self.unix_ms(now);
        let ttl_ms = u64::try_from(self.config.hint_ttl.as_millis()).unwrap_or(u64::MAX);
        let public = *self.config.keypair.public();
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        let Some(endpoints) = &peer.published else {
            return;
        };
        // At least a millisecond later, so a refresh never falls due again at once.
        let refresh_at = now + (self.config.hint_ttl / 2).max(Duration::from_millis(1));
        if let Some(old) = peer.refresh_at.replace(refresh_at) {
            self.refreshes.remove(&(old, peer_id));
        }
        self.refreshes.insert((refresh_at, peer_id));
        let encoded = encode_endpoints(endpoints);
        let sealed = seal_hint(&peer.rk, &public, &encoded, unix_now, ttl_ms, &mut self.rng);
        let rendezvous_id = peer.rendezvous_id.0;
        match sealed {
            Ok(hint) => {
                self.counters.published += 1;
                self.outputs
                    .push_back(ClientOutput::ToServer(RendezvousMessage::Publish {
                        rendezvous_id,
                        ttl_ms,
                        hint,
                    }));
            }
            Err(err) => {
                debug!(%err, "rendezvous client: cannot seal");
                self.counters.seal_errors += 1;
            }
        }
    }

    fn lookup(&mut self, lookup: LookupEndpointHint) {
        if !self.peers.contains_key(&lookup.peer) {
            self.counters.unknown_peer += 1;
            return;
        }
        if self.connected {
            self.send_lookup(lookup);
        } else {
            self.queued_lookups.push_back(lookup);
            self.trim_queue();
        }
    }

    fn trim_queue(&mut self) {
        while self.queued_lookups.len() > self.config.max_queued_lookups {
            self.queued_lookups.pop_front();
            self.counters.lookups_dropped += 1;
        }
    }

    fn send_lookup(&mut self, lookup: LookupEndpointHint) {
        let Some(rendezvous_id) = self.peers.get(&lookup.peer).map(|p| p.rendezvous_id.0) else {
            return;
        };
        self.outputs
            .push_back(ClientOutput::ToServer(RendezvousMessage::Lookup {
                rendezvous_id,
            }));
        self.in_flight
            .entry(rendezvous_id)
            .or_default()
            .push_back(lookup);
    }

    fn peer_seen(&mut self, now: Instant, rendezvous_id: [u8; 32], addr: SocketAddr) {
        let Some(peer) = self.by_rendezvous.get(&rendezvous_id).copied() else {
            self.counters.unknown_rendezvous += 1;
            return;
        };
        if addr.ip().is_unspecified() || addr.port() == 0 {
            self.counters.bad_peer_seen += 1;
            return;
        }
        self.counters.peer_seen += 1;
        self.outputs.push_back(ClientOutput::Hint(PeerEndpointHint {
            request: None,
            peer,
            endpoints: vec![addr],
            issued_at_ms: self.unix_ms(now),
        }));
    }

    fn hints(&mut self, now: Instant, rendezvous_id: [u8; 32], hints: &[impl AsRef<[u8]>]) {
        let Some(peer_id) = self.by_rendezvous.get(&rendezvous_id).copied() else {
            self.counters.unknown_rendezvous += 1;
            return;
        };
        let request = self
            .in_flight
            .get_mut(&rendezvous_id)
            .and_then(VecDeque::pop_front)
            .map(|lookup| lookup.request);
        let unix_now = self.unix_ms(now);
        let our_key = *self.config.keypair.public();
        let Some(peer) = self.peers.get(&peer_id) else {
            return;
        };
        let mut best: Option<(u64, Vec<SocketAddr>)> = None;
        for sealed in hints {
            let hint = match open_hint(&peer.rk, sealed.as_ref(), unix_now) {
                Ok(hint) => hint,
                Err(HintError::Expired { .. }) => {
                    self.counters.expired_hints += 1;
                    continue;
                }
                Err(err) => {
                    debug!(%err, "rendezvous client: hint does not open");
                    self.counters.tampered_hints += 1;
                    continue;
                }
            };
            if hint.sender == our_key {
                self.counters.own_hints += 1;
                continue;
            }
            if Some(hint.sender) != peer.public {
                self.counters.rejected_hints += 1;
                continue;
            }
            let Ok(endpoints) = decode_endpoints(&hint.endpoints) else {
                self.counters.rejected_hints += 1;
                continue;
            };
            // Newest wins; among equal times the later one (the server lists newest last).
            if best.as_ref().is_none_or(|(at, _)| hint.issued_at_ms >= *at) {
                best = Some((hint.issued_at_ms, endpoints));
            }
        }
        match best {
            Some((issued_at_ms, endpoints)) => {
                self.outputs.push_back(ClientOutput::Hint(PeerEndpointHint {
                    request,
                    peer: peer_id,
                    endpoints,
                    issued_at_ms,
                }))
            }
            None => self.counters.lookups_without_hint += 1,
        }
    }
}
