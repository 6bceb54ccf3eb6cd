//! The device side of the rendezvous service ([`RendezvousClient`]), sans-IO.
//!
//! # Connection
//! Its own connection to the server, authenticated exactly like the relay client's:
//! `Dial` the server → link up → the server's `Challenge { nonce }` → `Authenticate {
//! device, proof }` ([`tether_crypto::server_auth_proof`]) → `Welcome`. States `Idle →
//! Dialling → Authenticating → Connected`, and `Disconnected` (jittered exponential
//! backoff) after a failed dial, a lost link, a refused proof or no progress within
//! [`RendezvousClientConfig::connect_timeout`]. The server may push relay envelopes on
//! this connection too (it is authenticated as the device); they are ignored, never
//! acknowledged, so the relay client's connection still receives them.
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
//!   (lookups of one id are answered in order). No valid hint: nothing is emitted
//!   (counted). The table answers members only, and a device becomes a member of its
//!   pair's id by publishing there: a device that never published for a peer gets
//!   `Refused { NotYours }` (counted) instead of hints. Presence publishes as soon as it
//!   knows its endpoints, before it ever looks one up.
//!
//! # Time
//! Hints carry wall-clock times. The core reads no clock: unix time is
//! `unix_ms_at_start + (now - start)`, where `start` is the `now` given to
//! [`RendezvousClient::new`].

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tether_crypto::{
    open_hint, seal_hint, server_auth_proof, HintError, PublicKey, RelationshipKey, RendezvousId,
    StaticKeypair,
};
use tether_protocol::{
    DeviceId, LinkId, LookupEndpointHint, PeerEndpointHint, PublishEndpointHint, RelayMessage,
    RendezvousMessage, RequestId, ServerRefusal, TransportCommand, TransportEvent, WireFrame,
};
use tracing::debug;

use crate::endpoints::{decode_endpoints, encode_endpoints};

/// First request id of the rendezvous client's dials: a distinct range ("PM" in the top
/// bytes) so the transport driver's answers cannot be confused with another
/// orchestrator's dials if they share a driver.
pub const DEFAULT_FIRST_DIAL_REQUEST: RequestId = RequestId(0x504d_0000_0000_0000);

/// Dials abandoned after a timeout that we still remember, to close their links if they
/// come up late. A handful is enough: each timeout adds one and dials are slow.
const MAX_STALE_DIALS: usize = 16;

/// Settings of the rendezvous client. `Debug` redacts the seed (the RKs redact
/// themselves).
#[derive(Clone)]
pub struct RendezvousClientConfig {
    /// This device's static keypair (its id, and the key it proves to the server).
    pub keypair: StaticKeypair,
    /// The rendezvous (relay) server's public key.
    pub server_key: PublicKey,
    /// Where the server listens.
    pub server_addr: SocketAddr,
    /// The paired peers and their relationship keys: each pair's rendezvous id is
    /// [`RendezvousId::from_rk`], and its hints are sealed under the RK.
    pub peers: BTreeMap<DeviceId, RelationshipKey>,
    /// How long a published hint is valid (and kept by the server).
    pub hint_ttl: Duration,
    /// Unix time, in milliseconds, at the `now` given to [`RendezvousClient::new`].
    pub unix_ms_at_start: u64,
    /// First reconnect delay.
    pub backoff_base: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// How long a dial plus authentication may take before the attempt is abandoned.
    pub connect_timeout: Duration,
    /// Most lookups held while disconnected.
    pub max_queued_lookups: usize,
    /// Seed of the RNG that draws hint nonces and backoff jitter (ChaCha20). In
    /// production it MUST come from the OS's entropy: hint nonces are random, and a
    /// repeated stream under the same RK repeats nonces. As a second line of defence the
    /// seed is mixed with the device key and `unix_ms_at_start`, so a constant seed on
    /// one device still differs between starts at different times.
    pub seed: [u8; 32],
    /// Request id of the first dial; later dials count up from it.
    pub first_dial_request: RequestId,
}

impl std::fmt::Debug for RendezvousClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RendezvousClientConfig")
            .field("keypair", &self.keypair)
            .field("server_key", &self.server_key)
            .field("server_addr", &self.server_addr)
            .field("peers", &self.peers)
            .field("hint_ttl", &self.hint_ttl)
            .field("unix_ms_at_start", &self.unix_ms_at_start)
            .field("backoff_base", &self.backoff_base)
            .field("backoff_max", &self.backoff_max)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_queued_lookups", &self.max_queued_lookups)
            .field("seed", &format_args!("<redacted>"))
            .field("first_dial_request", &self.first_dial_request)
            .finish()
    }
}

impl RendezvousClientConfig {
    /// A config with default timings and bounds.
    pub fn new(
        keypair: StaticKeypair,
        server_key: PublicKey,
        server_addr: SocketAddr,
        peers: BTreeMap<DeviceId, RelationshipKey>,
        unix_ms_at_start: u64,
        seed: [u8; 32],
    ) -> Self {
        Self {
            keypair,
            server_key,
            server_addr,
            peers,
            // 10 minutes: outlives a migration window many times over, and a refresh
            // every 5 minutes costs one small frame per peer.
            hint_ttl: Duration::from_secs(600),
            unix_ms_at_start,
            // 250 ms: hints matter most right after a network change.
            backoff_base: Duration::from_millis(250),
            // 30 s: a server that is down is not hammered by every device.
            backoff_max: Duration::from_secs(30),
            // 10 s: several round trips on a slow mobile link.
            connect_timeout: Duration::from_secs(10),
            // 64: one pending lookup per peer for dozens of peers.
            max_queued_lookups: 64,
            seed,
            first_dial_request: DEFAULT_FIRST_DIAL_REQUEST,
        }
    }
}

/// What the rendezvous client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientInput {
    /// Begin: dial the server.
    Start,
    /// A transport event; events for links and dials that are not the client's are
    /// ignored.
    Transport(TransportEvent),
    /// Publish our endpoints for a peer.
    Publish(PublishEndpointHint),
    /// Look up a peer's endpoints.
    Lookup(LookupEndpointHint),
}

/// What the rendezvous client asks to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOutput {
    /// To the transport driver.
    Transport(TransportCommand),
    /// A peer's endpoints from an authentic, unexpired hint (to Presence and
    /// ConnectionBlueprint).
    Hint(PeerEndpointHint),
}

/// Where the client's connection to the server stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// Not started.
    Idle,
    /// Waiting to redial.
    Disconnected {
        /// When the next dial goes out.
        retry_at: Instant,
    },
    /// A dial is out.
    Dialling {
        /// The dial.
        request: RequestId,
        /// Abandon it then.
        deadline: Instant,
    },
    /// Link up; proving our key.
    Authenticating {
        /// The link.
        link: LinkId,
        /// Abandon it then.
        deadline: Instant,
    },
    /// Authenticated: requests flow.
    Connected {
        /// The link.
        link: LinkId,
    },
}

/// What the client counted. Peer- and server-caused problems land here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RendezvousClientCounters {
    /// Frames from the server that could not be decoded.
    pub decode_errors: u64,
    /// Frames that decoded but made no sense here.
    pub unexpected_frames: u64,
    /// Relay pushes or forwards that arrived on this connection (ignored, never acked).
    pub relay_traffic_ignored: u64,
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
    /// Hints that could not be sealed or frames that could not be encoded (local).
    pub seal_errors: u64,
    /// Refusals received from the server.
    pub refused: u64,
    /// Dials that failed.
    pub dial_failures: u64,
    /// Connection attempts abandoned after `connect_timeout`.
    pub connect_timeouts: u64,
    /// Links lost (after they came up).
    pub links_lost: u64,
    /// Successful authentications.
    pub connects: u64,
    /// Hints published (re-publishes and refreshes included).
    pub published: u64,
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
    rng: ChaCha20Rng,
    state: ClientState,
    attempts: u32,
    next_dial_request: u64,
    stale_dials: BTreeSet<RequestId>,
    peers: BTreeMap<DeviceId, Peer>,
    by_rendezvous: BTreeMap<[u8; 32], DeviceId>,
    /// Lookups waiting for a connection, oldest first.
    queued_lookups: VecDeque<LookupEndpointHint>,
    /// Lookups sent, per rendezvous id, in the order sent.
    in_flight: BTreeMap<[u8; 32], VecDeque<LookupEndpointHint>>,
    outputs: VecDeque<ClientOutput>,
    counters: RendezvousClientCounters,
}

impl RendezvousClient {
    /// A client that does nothing until [`ClientInput::Start`].
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
        let next_dial_request = config.first_dial_request.0;
        Self {
            config,
            device,
            start: now,
            rng: ChaCha20Rng::from_seed(seed),
            state: ClientState::Idle,
            attempts: 0,
            next_dial_request,
            stale_dials: BTreeSet::new(),
            peers,
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

    /// Where the connection stands.
    pub fn state(&self) -> ClientState {
        self.state
    }

    /// Whether the client is authenticated to the server.
    pub fn is_connected(&self) -> bool {
        matches!(self.state, ClientState::Connected { .. })
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

    /// Feeds one input.
    pub fn handle(&mut self, now: Instant, input: ClientInput) {
        match input {
            ClientInput::Start => {
                if self.state == ClientState::Idle {
                    self.dial(now);
                }
            }
            ClientInput::Transport(event) => self.transport(now, event),
            ClientInput::Publish(publish) => self.publish(now, publish),
            ClientInput::Lookup(lookup) => self.lookup(lookup),
        }
    }

    /// Redials, abandons a stuck attempt or refreshes hints when due. Spurious calls are
    /// harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            ClientState::Disconnected { retry_at } if now >= retry_at => self.dial(now),
            ClientState::Dialling { request, deadline } if now >= deadline => {
                self.counters.connect_timeouts += 1;
                if self.stale_dials.len() >= MAX_STALE_DIALS {
                    self.stale_dials.pop_first();
                }
                self.stale_dials.insert(request);
                self.disconnect(now);
            }
            ClientState::Authenticating { link, deadline } if now >= deadline => {
                self.counters.connect_timeouts += 1;
                self.close(link);
                self.disconnect(now);
            }
            ClientState::Connected { link } => {
                let due: Vec<DeviceId> = self
                    .peers
                    .iter()
                    .filter(|(_, p)| p.refresh_at.is_some_and(|at| at <= now))
                    .map(|(id, _)| *id)
                    .collect();
                for peer in due {
                    self.send_publish(now, link, peer);
                }
            }
            _ => {}
        }
    }

    /// Next output to deliver.
    pub fn poll_output(&mut self) -> Option<ClientOutput> {
        self.outputs.pop_front()
    }

    /// The next instant at which [`RendezvousClient::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            ClientState::Disconnected { retry_at } => Some(retry_at),
            ClientState::Dialling { deadline, .. }
            | ClientState::Authenticating { deadline, .. } => Some(deadline),
            ClientState::Connected { .. } => self.peers.values().filter_map(|p| p.refresh_at).min(),
            ClientState::Idle => None,
        }
    }

    fn dial(&mut self, now: Instant) {
        let request = RequestId(self.next_dial_request);
        self.next_dial_request = self.next_dial_request.wrapping_add(1);
        self.state = ClientState::Dialling {
            request,
            deadline: now + self.config.connect_timeout,
        };
        self.outputs
            .push_back(ClientOutput::Transport(TransportCommand::Dial {
                request,
                addrs: vec![self.config.server_addr],
            }));
    }

    fn close(&mut self, link: LinkId) {
        self.outputs
            .push_back(ClientOutput::Transport(TransportCommand::Close { link }));
    }

    fn disconnect(&mut self, now: Instant) {
        // Lookups in flight go back in front of the queue, in the order they were sent.
        let in_flight: Vec<LookupEndpointHint> = std::mem::take(&mut self.in_flight)
            .into_values()
            .flatten()
            .collect();
        let mut in_flight = in_flight;
        in_flight.sort_by_key(|l| l.request);
        for lookup in in_flight.into_iter().rev() {
            self.queued_lookups.push_front(lookup);
        }
        self.trim_queue();
        for peer in self.peers.values_mut() {
            peer.refresh_at = None;
        }
        let delay = self.backoff();
        self.attempts = self.attempts.saturating_add(1);
        self.state = ClientState::Disconnected {
            retry_at: now + delay,
        };
    }

    fn backoff(&mut self) -> Duration {
        let exponent = self.attempts.min(16);
        let delay = self
            .config
            .backoff_base
            .saturating_mul(1_u32 << exponent)
            .min(self.config.backoff_max);
        let half = delay / 2;
        let spread = u64::try_from(half.as_micros()).unwrap_or(u64::MAX);
        let jitter = if spread == 0 {
            Duration::ZERO
        } else {
            Duration::from_micros(self.rng.gen_range(0..spread))
        };
        half + jitter
    }

    fn our_link(&self, link: LinkId) -> bool {
        matches!(
            self.state,
            ClientState::Authenticating { link: l, .. } | ClientState::Connected { link: l }
                if l == link
        )
    }

    fn transport(&mut self, now: Instant, event: TransportEvent) {
        match event {
            TransportEvent::LinkUp {
                request: Some(request),
                link,
                ..
            } => match self.state {
                ClientState::Dialling {
                    request: current, ..
                } if current == request => {
                    self.state = ClientState::Authenticating {
                        link,
                        deadline: now + self.config.connect_timeout,
                    };
                }
                _ => {
                    if self.stale_dials.remove(&request) {
                        self.close(link);
                    }
                }
            },
            TransportEvent::DialFailed { request, reason } => {
                self.stale_dials.remove(&request);
                if matches!(self.state, ClientState::Dialling { request: r, .. } if r == request) {
                    debug!(%reason, "rendezvous client: dial failed");
                    self.counters.dial_failures += 1;
                    self.disconnect(now);
                }
            }
            TransportEvent::LinkDown { link, reason } => {
                if self.our_link(link) {
                    debug!(%reason, "rendezvous client: link lost");
                    self.counters.links_lost += 1;
                    self.disconnect(now);
                }
            }
            TransportEvent::FrameReceived { link, frame } => {
                if self.our_link(link) {
                    self.frame(now, link, &frame);
                }
            }
            TransportEvent::LinkUp { request: None, .. } | TransportEvent::RemoteChanged { .. } => {
            }
        }
    }

    fn frame(&mut self, now: Instant, link: LinkId, bytes: &[u8]) {
        match tether_protocol::decode(bytes) {
            Ok(WireFrame::Relay(message)) => self.relay_message(now, link, message),
            Ok(WireFrame::Rendezvous(message)) => self.rendezvous_message(now, message),
            Ok(_) => self.counters.unexpected_frames += 1,
            Err(err) => {
                debug!(%err, "rendezvous client: undecodable frame");
                self.counters.decode_errors += 1;
            }
        }
    }

    fn relay_message(&mut self, now: Instant, link: LinkId, message: RelayMessage) {
        let connected = self.is_connected();
        match message {
            RelayMessage::Challenge { nonce } if !connected => {
                let proof =
                    server_auth_proof(&self.config.keypair, &self.config.server_key, &nonce);
                let device = self.device;
                self.transmit(
                    link,
                    WireFrame::Relay(RelayMessage::Authenticate {
                        device,
                        proof: proof.to_vec(),
                    }),
                );
            }
            RelayMessage::Welcome if !connected => {
                self.state = ClientState::Connected { link };
                self.attempts = 0;
                self.counters.connects += 1;
                let published: Vec<DeviceId> = self
                    .peers
                    .iter()
                    .filter(|(_, p)| p.published.is_some())
                    .map(|(id, _)| *id)
                    .collect();
                for peer in published {
                    self.send_publish(now, link, peer);
                }
                while let Some(lookup) = self.queued_lookups.pop_front() {
                    self.send_lookup(link, lookup);
                }
            }
            RelayMessage::Refused { reason, .. } if !connected => {
                self.counters.refused += 1;
                if matches!(
                    reason,
                    ServerRefusal::BadProof | ServerRefusal::NotAuthenticated
                ) {
                    self.close(link);
                    self.disconnect(now);
                }
            }
            RelayMessage::Push { .. } | RelayMessage::Forwarded { .. } => {
                // Meant for the relay client's connection; never acknowledged here.
                self.counters.relay_traffic_ignored += 1;
            }
            other => {
                debug!(?other, "rendezvous client: unexpected relay message");
                self.counters.unexpected_frames += 1;
            }
        }
    }

    fn rendezvous_message(&mut self, now: Instant, message: RendezvousMessage) {
        if !self.is_connected() {
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
        if let ClientState::Connected { link } = self.state {
            self.send_publish(now, link, publish.peer);
        }
    }

    /// Seals our latest endpoints for `peer` now and sends them.
    fn send_publish(&mut self, now: Instant, link: LinkId, peer_id: DeviceId) {
        let unix_now = self.unix_ms(now);
        let ttl_ms = u64::try_from(self.config.hint_ttl.as_millis()).unwrap_or(u64::MAX);
        let public = *self.config.keypair.public();
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        let Some(endpoints) = &peer.published else {
            return;
        };
        peer.refresh_at = Some(now + self.config.hint_ttl / 2);
        let encoded = encode_endpoints(endpoints);
        let sealed = seal_hint(&peer.rk, &public, &encoded, unix_now, ttl_ms, &mut self.rng);
        let rendezvous_id = peer.rendezvous_id.0;
        match sealed {
            Ok(hint) => {
                self.counters.published += 1;
                self.transmit(
                    link,
                    WireFrame::Rendezvous(RendezvousMessage::Publish {
                        rendezvous_id,
                        ttl_ms,
                        hint,
                    }),
                );
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
        match self.state {
            ClientState::Connected { link } => self.send_lookup(link, lookup),
            _ => {
                self.queued_lookups.push_back(lookup);
                self.trim_queue();
            }
        }
    }

    fn trim_queue(&mut self) {
        while self.queued_lookups.len() > self.config.max_queued_lookups {
            self.queued_lookups.pop_front();
            self.counters.lookups_dropped += 1;
        }
    }

    fn send_lookup(&mut self, link: LinkId, lookup: LookupEndpointHint) {
        let Some(rendezvous_id) = self.peers.get(&lookup.peer).map(|p| p.rendezvous_id.0) else {
            return;
        };
        if self.transmit(
            link,
            WireFrame::Rendezvous(RendezvousMessage::Lookup { rendezvous_id }),
        ) {
            self.in_flight
                .entry(rendezvous_id)
                .or_default()
                .push_back(lookup);
        }
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

    /// Encodes and sends; false (counted) when the frame cannot be encoded.
    fn transmit(&mut self, link: LinkId, frame: WireFrame) -> bool {
        match tether_protocol::encode(&frame) {
            Ok(frame) => {
                self.outputs
                    .push_back(ClientOutput::Transport(TransportCommand::Transmit {
                        link,
                        frame,
                    }));
                true
            }
            Err(err) => {
                debug!(%err, "rendezvous client: cannot encode");
                self.counters.seal_errors += 1;
                false
            }
        }
    }
}
