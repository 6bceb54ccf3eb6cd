//! The sans-IO DirectConnection core: inputs, outputs, timers, and the routing of
//! link events and wire frames. Session frame handling is in [`crate::frames`].

use crate::config::{DcConfig, DcLimits};
use crate::state::{
    Connect, DialPurpose, EstablishmentPermit, Heartbeat, LinkState, OutMigration, PeerCounters,
    PeerState, PendingDial, Reported, Via,
};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tether_crypto::{
    Fingerprint, Handshake, HandshakeError, KeyRing, PathChallenger, RendezvousId, Sealed,
    StaticKeypair,
};
use tether_protocol::shell::SansIoCore;
use tether_protocol::{
    canonical_endpoints, ChannelId, ConnectFailed, ConnectPeer, DeviceId, Endpoint, EvictSession,
    HandshakeMessage, HandshakeStarted, InboundMigrationPing, LinkId, LivenessReport,
    MessageDelivered, MigrationAcked, MigrationPing, PathKind, PathLost, PathMeasured, PeerReset,
    RelayDelivered, RelayEnqueue, RelayForward, RelayStatus, RequestId, SealedFrame, SendError,
    SendMessage, SendMigrationPing, SendResult, SessionFrame, SessionId, SessionReady,
    TransportCommand, TransportEvent, WireFrame,
};

/// Most outstanding path challenges per peer (one per path being validated).
const MAX_CHALLENGES_PER_PEER: usize = 8;

/// Bytes a sealed frame adds to its plaintext (AEAD tag, ids, nonce, framing),
/// rounded up: used to check the anti-amplification budget before sealing.
const SEALED_OVERHEAD: u64 = 64;

/// Anti-amplification factor: until an address is validated the node sends it at most
/// this many times the bytes it received from it (QUIC's rule, RFC 9000 §8).
pub const AMPLIFICATION_FACTOR: u64 = 3;

/// Filler sent after a migration ping on a migrated link. The peer's QUIC stack may send
/// our new address three times what it received from it until the address validates;
/// its path challenge takes 1200 bytes of that, and every packet it sends meanwhile is
/// padded to 1200 bytes. A ping and a few small packets buy less than that, so the
/// peer's acknowledgement would wait a round trip; 1200 bytes more buy it three packets.
const MIGRATION_PADDING_LEN: usize = 1200;

/// What the core is told.
#[derive(Debug)]
pub enum Input {
    /// PresenceConnect.
    Connect(ConnectPeer),
    /// Migration phase 2: announce our new endpoints.
    SendMigrationPing(SendMigrationPing),
    /// Drop the session's keys and path (queued messages are kept).
    Evict(EvictSession),
    /// The application sends a message.
    Send(SendMessage),
    /// A link event from the transport driver.
    Transport(TransportEvent),
    /// A frame that came through the relay.
    Relay(RelayDelivered),
    /// The relay connection went up or down.
    RelayStatus(RelayStatus),
    /// This device's endpoints changed.
    LocalEndpoints(Vec<SocketAddr>),
}

/// What the core asks to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// To the transport driver.
    Transport(TransportCommand),
    /// To Rcs: live-forward a frame.
    RelayForward(RelayForward),
    /// To Rcs: queue a frame (migration pings).
    RelayEnqueue(RelayEnqueue),
    /// To Presence.
    HandshakeStarted(HandshakeStarted),
    /// To Presence and ConnectionBlueprint.
    SessionReady(SessionReady),
    /// To Presence.
    ConnectFailed(ConnectFailed),
    /// To Presence.
    InboundMigrationPing(InboundMigrationPing),
    /// To Presence.
    MigrationAcked(MigrationAcked),
    /// To Presence.
    PathLost(PathLost),
    /// To Presence.
    PeerReset(PeerReset),
    /// To Presence.
    Liveness(LivenessReport),
    /// To ConnectionBlueprint.
    PathMeasured(PathMeasured),
    /// To the application.
    SendResult(SendResult),
    /// To the application.
    Delivered(MessageDelivered),
}

/// Peer- and network-caused problems, counted and dropped (invariant 8).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DcCounters {
    /// Wire frames that did not decode.
    pub malformed_frames: u64,
    /// Sealed frames for a session we do not know.
    pub unknown_session: u64,
    /// Sealed frames that failed authentication or the replay check.
    pub rejected_frames: u64,
    /// Authentic frames whose plaintext did not decode.
    pub malformed_session_frames: u64,
    /// Handshakes from devices that are not paired.
    pub unknown_device_handshakes: u64,
    /// Replayed handshake initiations.
    pub replayed_initiations: u64,
    /// Other refused handshake messages.
    pub refused_handshakes: u64,
    /// Migration pings whose PeerSecret tag did not verify.
    pub bad_migration_tags: u64,
    /// Migration pings with an old counter.
    pub stale_migration_pings: u64,
    /// Path responses that matched no challenge.
    pub bad_path_responses: u64,
    /// Frames not sent to an unvalidated address (anti-amplification).
    pub amplification_blocked: u64,
    /// Frames from a link or relay sender that is not the session's peer.
    pub wrong_sender: u64,
}

/// What a peer's session looks like, for `status()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSnapshot {
    /// The peer.
    pub peer: DeviceId,
    /// The pair's session id.
    pub session: SessionId,
    /// Committed epoch.
    pub epoch: Option<u64>,
    /// Handshakes started or answered with this peer.
    pub handshakes: u64,
    /// Fingerprint of the committed PeerSecret.
    pub peer_secret: Option<Fingerprint>,
    /// Fingerprint of the committed session keys.
    pub session_keys: Option<Fingerprint>,
    /// Current path kind.
    pub path: Option<PathKind>,
    /// Current remote address (direct path).
    pub remote: Option<SocketAddr>,
    /// Smoothed RTT of the bound path.
    pub rtt_ms: Option<u64>,
    /// Messages queued.
    pub queued: usize,
    /// Messages accepted / delivered / dropped as duplicates.
    pub counters: PeerCounters,
}

/// The DirectConnection core. See the crate docs.
pub struct DirectConnection {
    pub(crate) limits: DcLimits,
    pub(crate) local: StaticKeypair,
    pub(crate) rng: ChaCha20Rng,
    pub(crate) start: Instant,
    pub(crate) unix_ms_at_start: u64,
    pub(crate) peers: BTreeMap<DeviceId, PeerState>,
    pub(crate) by_session: BTreeMap<SessionId, DeviceId>,
    pub(crate) links: BTreeMap<LinkId, LinkState>,
    pub(crate) dials: BTreeMap<RequestId, PendingDial>,
    pub(crate) next_request: u64,
    pub(crate) relay_connected: bool,
    pub(crate) local_endpoints: Vec<SocketAddr>,
    pub(crate) counters: DcCounters,
    pub(crate) outputs: VecDeque<Output>,
}

impl DirectConnection {
    /// A core for this device and its paired peers.
    pub fn new(config: DcConfig, now: Instant) -> Self {
        let challenge_ttl_ms = duration_ms(config.limits.path_challenge_ttl);
        let mut peers = BTreeMap::new();
        let mut by_session = BTreeMap::new();
        for peer in config.peers {
            let device = peer.device();
            let session = session_id_for_pair(&RendezvousId::from_rk(&peer.rk));
            by_session.insert(session, device);
            peers.insert(
                device,
                PeerState {
                    session,
                    ring: KeyRing::new(peer.public, peer.rk),
                    handshakes: 0,
                    bound: None,
                    evicted_at_epoch: None,
                    reported: None,
                    connect: None,
                    migration: None,
                    ping_counter_sent: 0,
                    highest_ping_received: 0,
                    announced: Vec::new(),
                    known_direct: Vec::new(),
                    probe_at: None,
                    challenger: PathChallenger::new(challenge_ttl_ms, MAX_CHALLENGES_PER_PEER),
                    outbound: BTreeMap::new(),
                    inbound: BTreeMap::new(),
                    resend_all: false,
                    heartbeat: Heartbeat::default(),
                    counters: PeerCounters::default(),
                },
            );
        }
        Self {
            limits: config.limits,
            local: config.local,
            rng: ChaCha20Rng::seed_from_u64(config.seed),
            start: now,
            unix_ms_at_start: config.unix_ms_at_start,
            peers,
            by_session,
            links: BTreeMap::new(),
            dials: BTreeMap::new(),
            next_request: 1,
            relay_connected: false,
            local_endpoints: config.local_endpoints,
            counters: DcCounters::default(),
            outputs: VecDeque::new(),
        }
    }

    /// Counters of dropped input.
    pub fn counters(&self) -> DcCounters {
        self.counters
    }

    /// The status of one peer's session.
    pub fn snapshot(&self, peer: &DeviceId) -> Option<PeerSnapshot> {
        let state = self.peers.get(peer)?;
        let (path, remote) = match state.bound {
            Some(Via::Relay) => (Some(PathKind::Relay), None),
            Some(Via::Link(link)) => (
                Some(PathKind::Direct),
                self.links.get(&link).and_then(|l| l.remote),
            ),
            None => (None, None),
        };
        Some(PeerSnapshot {
            peer: *peer,
            session: state.session,
            epoch: state.ring.committed_epoch(),
            handshakes: state.handshakes,
            peer_secret: state.ring.committed_fingerprint(),
            session_keys: state.ring.session_fingerprint(),
            path,
            remote,
            rtt_ms: state.heartbeat.srtt_ms,
            queued: state.queued(),
            counters: state.counters,
        })
    }

    /// Every peer's status, in device order.
    pub fn snapshots(&self) -> Vec<PeerSnapshot> {
        self.peers.keys().filter_map(|p| self.snapshot(p)).collect()
    }
}

impl SansIoCore for DirectConnection {
    type Input = Input;
    type Output = Output;

    /// Feeds one input.
    fn handle(&mut self, now: Instant, input: Input) {
        match input {
            Input::Connect(connect) => self.connect(now, connect),
            Input::SendMigrationPing(request) => self.send_migration_ping(now, request),
            Input::Evict(evict) => self.evict(evict),
            Input::Send(message) => self.send(now, message),
            Input::Transport(event) => self.transport_event(now, event),
            Input::Relay(delivered) => {
                self.wire_bytes(now, Via::Relay, Some(delivered.from), &delivered.envelope)
            }
            Input::RelayStatus(status) => self.relay_connected = status.connected,
            Input::LocalEndpoints(endpoints) => self.local_endpoints = endpoints,
        }
        self.pump_all(now);
    }

    /// Fires whatever is due. Spurious calls are harmless.
    fn handle_timeout(&mut self, now: Instant) {
        let devices: Vec<DeviceId> = self.peers.keys().copied().collect();
        for device in devices {
            self.connect_timers(now, device);
            self.migration_timers(now, device);
            self.heartbeat_timer(now, device);
            self.probe_timer(now, device);
        }
        self.pump_all(now);
    }

    /// Next output to deliver.
    fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The next instant at which [`SansIoCore::handle_timeout`] has work.
    fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |at: Option<Instant>| {
            if let Some(at) = at {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        };
        for peer in self.peers.values() {
            if let Some(connect) = &peer.connect {
                consider(Some(connect.deadline));
                consider(connect.relay_at);
                consider(connect.retry_at);
            }
            if let Some(migration) = &peer.migration {
                consider(migration.relay_at);
                consider(migration.carry_at);
            }
            consider(peer.heartbeat.next_at);
            consider(peer.probe_at);
            if peer.bound.is_some() && peer.usable() {
                for channel in peer.outbound.values() {
                    consider(channel.next_retransmit(self.limits.rto));
                }
            }
        }
        next
    }
}

impl DirectConnection {
    pub(crate) fn request_id(&mut self) -> RequestId {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        id
    }

    /// Wall-clock milliseconds at `now` (handshake timestamps).
    pub(crate) fn wall_ms(&self, now: Instant) -> u64 {
        self.unix_ms_at_start
            .saturating_add(duration_ms(now.saturating_duration_since(self.start)))
    }

    pub(crate) fn now_ms(&self, now: Instant) -> u64 {
        duration_ms(now.saturating_duration_since(self.start))
    }

    // ----- PresenceConnect -------------------------------------------------------------

    fn connect(&mut self, now: Instant, request: ConnectPeer) {
        let Some(peer) = self.peers.get(&request.peer) else {
            self.outputs.push_back(Output::ConnectFailed(ConnectFailed {
                request: request.request,
                peer: request.peer,
                reason: "unknown peer".into(),
            }));
            return;
        };
        if request.transport_only && peer.ring.committed().is_none() {
            self.outputs.push_back(Output::ConnectFailed(ConnectFailed {
                request: request.request,
                peer: request.peer,
                reason: "transport-only reconnect without a session".into(),
            }));
            return;
        }
        let permit = if request.transport_only {
            None
        } else {
            Some(EstablishmentPermit(()))
        };
        self.start_connect(now, request, permit);
    }

    /// Starts a connect. With a permit it establishes (handshake); without, it only
    /// finds and validates a path for the existing session keys.
    fn start_connect(
        &mut self,
        now: Instant,
        request: ConnectPeer,
        permit: Option<EstablishmentPermit>,
    ) {
        let device = request.peer;
        let addrs: Vec<SocketAddr> = request
            .candidates
            .iter()
            .filter_map(|c| match c.endpoint {
                Endpoint::Direct(addr) => Some(addr),
                Endpoint::Relay => None,
            })
            .collect();
        let has_relay = request
            .candidates
            .iter()
            .any(|c| c.endpoint == Endpoint::Relay);
        let relay_at = has_relay.then(|| {
            if addrs.is_empty() {
                now
            } else {
                now + self.limits.relay_fallback_after
            }
        });
        // A link the peer already holds to us (it dialled us) is tried at once.
        let existing = self.live_link_of(device);
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        peer.known_direct.clone_from(&addrs);
        peer.connect = Some(Connect {
            request: request.request,
            permit,
            deadline: now + self.limits.connect_timeout,
            via: None,
            relay_at,
            retry_at: None,
        });
        if !addrs.is_empty() {
            self.dial(device, DialPurpose::Connect, addrs);
        }
        if let Some(link) = existing {
            self.connect_on(now, device, Via::Link(link));
        }
    }

    /// Runs the connect's next step on a path that just became available.
    fn connect_on(&mut self, now: Instant, device: DeviceId, via: Via) {
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        let Some(connect) = peer.connect.as_mut() else {
            return;
        };
        if connect.via.is_some() {
            return;
        }
        connect.via = Some(via);
        if connect.permit.is_some() {
            self.send_initiation(now, device);
        } else {
            self.challenge(now, device, via);
        }
    }

    /// Sends a fresh handshake message 1 on the connect's path. Only reachable with the
    /// connect's [`EstablishmentPermit`]: a transport-only connect has none.
    fn send_initiation(&mut self, now: Instant, device: DeviceId) {
        let wall_ms = self.wall_ms(now);
        let retry = self.limits.handshake_retry;
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        let Some(connect) = peer.connect.as_mut() else {
            return;
        };
        let (Some(_permit), Some(via)) = (connect.permit.as_ref(), connect.via) else {
            return;
        };
        let request = connect.request;
        connect.retry_at = Some(now + retry);
        let message1 = match peer.ring.initiate(&self.local, wall_ms, &mut self.rng) {
            Ok(message1) => message1,
            Err(error) => {
                tracing::warn!(peer = %device, %error, "cannot start a handshake");
                return;
            }
        };
        peer.handshakes += 1;
        let frame = WireFrame::HandshakeInit(HandshakeMessage {
            session: peer.session,
            noise: message1,
        });
        self.deliver_wire(device, via, &frame);
        self.outputs
            .push_back(Output::HandshakeStarted(HandshakeStarted {
                request: Some(request),
                peer: device,
            }));
    }

    fn connect_timers(&mut self, now: Instant, device: DeviceId) {
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        let Some(connect) = peer.connect.as_mut() else {
            return;
        };
        if connect.deadline <= now {
            let request = connect.request;
            if connect.permit.is_some() {
                peer.counters.handshake_timeouts += 1;
            } else {
                peer.counters.reconnect_timeouts += 1;
            }
            peer.connect = None;
            self.outputs.push_back(Output::ConnectFailed(ConnectFailed {
                request,
                peer: device,
                reason: "no path answered in time".into(),
            }));
            return;
        }
        if connect.relay_at.is_some_and(|at| at <= now) && !self.relay_connected {
            // The relay is not up yet: look again after another fallback interval.
            connect.relay_at = Some(now + self.limits.relay_fallback_after);
        }
        if connect.relay_at.is_some_and(|at| at <= now) {
            // No direct path completed the connect in time (it would be gone): the relay
            // carries it from now on; a direct path that answers later still wins.
            connect.relay_at = None;
            connect.via = None;
            self.connect_on(now, device, Via::Relay);
            return;
        }
        if connect.retry_at.is_some_and(|at| at <= now) {
            self.send_initiation(now, device);
        }
    }

    // ----- Migration, the moving side (phase 2) ----------------------------------------

    fn send_migration_ping(&mut self, now: Instant, request: SendMigrationPing) {
        let device = request.peer;
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        let Some(epoch) = peer.ring.committed_epoch() else {
            return;
        };
        // The relay copy follows after about one RTT of the old path: long enough for a
        // migrated link to answer first, short enough that a blocked one costs little.
        let relay_fallback = peer
            .heartbeat
            .srtt_ms
            .map_or(self.limits.relay_fallback_after, |srtt| {
                Duration::from_millis(srtt.saturating_mul(3) / 2)
            })
            .min(self.limits.relay_fallback_after);
        // The data follows half a fallback later (at least 20 ms: timer slack), by when a
        // working direct path has usually answered.
        let carry_floor = Duration::from_millis(20);
        peer.ping_counter_sent += 1;
        let counter = peer.ping_counter_sent;
        let endpoints = request.new_endpoints.clone();
        let canonical = canonical_endpoints(&endpoints);
        let Some(tag) = peer
            .ring
            .migration_tag(peer.session.as_bytes(), counter, &canonical)
        else {
            return;
        };
        let ping = MigrationPing {
            epoch: tether_protocol::Epoch(epoch),
            counter,
            endpoints,
            tag: tag.0,
        };
        peer.migration = Some(OutMigration {
            request: request.request,
            ping: ping.clone(),
            relay_at: Some(now + relay_fallback),
            carry_at: Some(now + relay_fallback + (relay_fallback / 2).max(carry_floor)),
            started: now,
            acked: false,
        });
        // Every live link to the peer (a dialled one survives the move by QUIC
        // migration), then every direct candidate, then (later) the relay queue.
        let links: Vec<LinkId> = self.links_of(device);
        for link in links {
            // The filler first: when the ping arrives, the peer's answer is already
            // within the budget the filler bought.
            self.send_frame(
                device,
                Via::Link(link),
                &SessionFrame::Padding {
                    bytes: vec![0; MIGRATION_PADDING_LEN],
                },
            );
            self.send_frame(
                device,
                Via::Link(link),
                &SessionFrame::MigrationPing(ping.clone()),
            );
        }
        let addrs: Vec<SocketAddr> = request
            .candidates
            .iter()
            .filter_map(|c| match c.endpoint {
                Endpoint::Direct(addr) => Some(addr),
                Endpoint::Relay => None,
            })
            .collect();
        if let Some(peer) = self.peers.get_mut(&device) {
            peer.known_direct.clone_from(&addrs);
        }
        if !addrs.is_empty() {
            self.dial(device, DialPurpose::Migration, addrs);
        }
    }

    fn migration_timers(&mut self, now: Instant, device: DeviceId) {
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        let Some(migration) = peer.migration.as_mut() else {
            return;
        };
        if migration.relay_at.is_some_and(|at| at <= now) && !migration.acked {
            migration.relay_at = None;
            let ping = migration.ping.clone();
            // The relay queue pushes at once to a connected peer and keeps the ping for
            // one that is offline; the peer dedupes copies by counter.
            if let Some(envelope) = self.seal_wire(device, &SessionFrame::MigrationPing(ping)) {
                if let Some(peer) = self.peers.get_mut(&device) {
                    peer.counters.relay.sent(envelope.len() as u64);
                }
                let request = self.request_id();
                self.outputs.push_back(Output::RelayEnqueue(RelayEnqueue {
                    request,
                    to: device,
                    envelope,
                }));
            }
            return;
        }
        if migration.carry_at.is_some_and(|at| at <= now) {
            migration.carry_at = None;
            let moved_at = migration.started;
            let acked = migration.acked;
            // Still nothing direct since we moved, a round trip after the relay copy
            // left: let the queued messages follow it through the relay rather than
            // wait for its acknowledgement (the receiver dedupes whatever the direct
            // path delivers too). Not reported as Ready: that waits for the peer.
            if !acked && !self.heard_directly_since(device, moved_at) && self.relay_connected {
                self.carry(now, device, Via::Relay);
            }
            return;
        }
        if migration.relay_at.is_some_and(|at| at <= now) {
            // Acknowledged meanwhile: the relay copy is not needed.
            migration.relay_at = None;
        }
    }

    // ----- Eviction and sending --------------------------------------------------------

    fn evict(&mut self, evict: EvictSession) {
        let Some(peer) = self.peers.get_mut(&evict.peer) else {
            return;
        };
        peer.evicted_at_epoch = peer.ring.committed_epoch();
        peer.bound = None;
        peer.migration = None;
        peer.connect = None;
        peer.reported = None;
        peer.heartbeat = Heartbeat::default();
    }

    fn send(&mut self, now: Instant, message: SendMessage) {
        let result = self.accept_message(message.peer, message.channel, message.payload);
        self.outputs.push_back(Output::SendResult(SendResult {
            request: message.request,
            result,
        }));
        self.pump(now, message.peer);
    }

    fn accept_message(
        &mut self,
        device: DeviceId,
        channel: ChannelId,
        payload: Vec<u8>,
    ) -> Result<u64, SendError> {
        let credit = self.limits.credit;
        let max_queued = self.limits.max_queued;
        let max_len = self.limits.max_message_len;
        let peer = self.peers.get_mut(&device).ok_or(SendError::UnknownPeer)?;
        if payload.len() > max_len {
            return Err(SendError::TooLarge {
                len: payload.len(),
                max: max_len,
            });
        }
        if peer.queued() >= max_queued {
            return Err(SendError::QueueFull { limit: max_queued });
        }
        peer.counters.sent += 1;
        let outbound = match peer.outbound.entry(channel) {
            std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::btree_map::Entry::Vacant(entry) => {
                entry.insert(crate::channels::Outbound::new(credit, self.rng.next_u64()))
            }
        };
        Ok(outbound.push(payload))
    }

    fn pump_all(&mut self, now: Instant) {
        let devices: Vec<DeviceId> = self.peers.keys().copied().collect();
        for device in devices {
            self.pump(now, device);
        }
    }

    /// Puts due data frames on the bound path.
    pub(crate) fn pump(&mut self, now: Instant, device: DeviceId) {
        let rto = self.limits.rto;
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        let Some(via) = peer.bound else {
            return;
        };
        if !peer.usable() {
            return;
        }
        let resend_all = std::mem::take(&mut peer.resend_all);
        let mut frames = Vec::new();
        for (channel, outbound) in peer.outbound.iter_mut() {
            if outbound.take_announcement() {
                frames.push(SessionFrame::Migrate {
                    channel: *channel,
                    incarnation: outbound.incarnation(),
                    next_seq: outbound.next_seq(),
                    first_unacked: outbound.first_unacked(),
                });
            }
            for (seq, payload) in outbound.due(now, rto, resend_all) {
                frames.push(SessionFrame::Data {
                    channel: *channel,
                    seq,
                    payload,
                });
            }
        }
        for frame in frames {
            self.send_frame(device, via, &frame);
        }
    }

    fn heartbeat_timer(&mut self, now: Instant, device: DeviceId) {
        let interval = self.limits.heartbeat_interval;
        let missed_limit = self.limits.missed_heartbeats;
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        let Some(via) = peer.bound else {
            peer.heartbeat.next_at = None;
            return;
        };
        if peer.heartbeat.next_at.is_none_or(|at| at > now) {
            return;
        }
        let beat = &mut peer.heartbeat;
        if beat.outstanding.take().is_some() {
            beat.missed += 1;
        }
        let report_dead = beat.missed >= missed_limit && !beat.reported_dead;
        if report_dead {
            beat.reported_dead = true;
        }
        beat.next_id += 1;
        let id = beat.next_id;
        beat.outstanding = Some((id, now));
        beat.next_at = Some(now + interval);
        let rtt_ms = beat.srtt_ms;
        if report_dead {
            self.outputs.push_back(Output::Liveness(LivenessReport {
                peer: device,
                alive: false,
                rtt_ms,
            }));
        }
        self.send_frame(device, via, &SessionFrame::Ping { id });
    }

    /// While the session runs over the relay, dial the peer's direct addresses now and
    /// then; a link that answers a path challenge replaces the relay.
    fn probe_timer(&mut self, now: Instant, device: DeviceId) {
        let interval = self.limits.direct_probe_interval;
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        if peer.probe_at.is_none_or(|at| at > now) {
            return;
        }
        if peer.bound != Some(Via::Relay) {
            peer.probe_at = None;
            return;
        }
        peer.probe_at = Some(now + interval);
        let mut addrs = peer.announced.clone();
        for addr in &peer.known_direct {
            if !addrs.contains(addr) {
                addrs.push(*addr);
            }
        }
        if !addrs.is_empty() {
            self.dial(device, DialPurpose::Probe, addrs);
        }
    }

    /// Asks the transport driver to dial `addrs` for `purpose`.
    fn dial(&mut self, device: DeviceId, purpose: DialPurpose, addrs: Vec<SocketAddr>) {
        let request = self.request_id();
        self.dials.insert(
            request,
            PendingDial {
                device,
                purpose,
                addrs: addrs.clone(),
            },
        );
        self.outputs
            .push_back(Output::Transport(TransportCommand::Dial { request, addrs }));
    }

    // ----- Paths -----------------------------------------------------------------------

    pub(crate) fn links_of(&self, device: DeviceId) -> Vec<LinkId> {
        self.links
            .iter()
            .filter(|(_, l)| l.peer == Some(device))
            .map(|(id, _)| *id)
            .collect()
    }

    fn live_link_of(&self, device: DeviceId) -> Option<LinkId> {
        self.links
            .iter()
            .filter(|(_, l)| l.peer == Some(device) && l.validated)
            .map(|(id, _)| *id)
            .next_back()
    }

    /// Sends a path challenge on `via` (single value per path until it expires).
    pub(crate) fn challenge(&mut self, now: Instant, device: DeviceId, via: Via) {
        let now_ms = self.now_ms(now);
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        if peer.challenger.is_pending(&via, now_ms) {
            // Links and the relay connection are reliable streams: the first copy of
            // the challenge arrives unless the path dies.
            return;
        }
        let challenge = peer.challenger.issue(&via, now_ms, &mut self.rng);
        tracing::debug!(peer = %device, ?via, "path challenge sent");
        self.send_frame(
            device,
            via,
            &SessionFrame::PathChallenge { data: challenge.0 },
        );
    }

    /// Moves the session onto a validated path and resends what is unacknowledged there,
    /// after a Migrate marker per channel. Reports Ready when this completes a connect,
    /// a migration, or changes the reported path.
    pub(crate) fn bind(&mut self, now: Instant, device: DeviceId, via: Via) {
        let interval = self.limits.heartbeat_interval;
        let probe_interval = self.limits.direct_probe_interval;
        let remote = match via {
            Via::Link(link) => self.links.get(&link).and_then(|l| l.remote),
            Via::Relay => None,
        };
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        if !peer.usable() {
            return;
        }
        let Some(epoch) = peer.ring.committed_epoch() else {
            return;
        };
        let changed = peer.bound != Some(via);
        let was_tentative = !changed && peer.migration.is_some();
        tracing::debug!(peer = %device, ?via, changed, "session bound to path");
        peer.bound = Some(via);
        // On the relay, look for a direct path at once (the peer may have just told us
        // where it is), then every probe interval.
        peer.probe_at = match via {
            Via::Relay if changed => Some(now),
            Via::Relay => peer.probe_at.or(Some(now + probe_interval)),
            Via::Link(_) => None,
        };
        if was_tentative {
            // Data went here before the path was confirmed; resend what is unacknowledged.
            peer.resend_all = true;
        }
        if changed {
            peer.resend_all = true;
            peer.heartbeat = Heartbeat {
                next_at: Some(now + interval),
                srtt_ms: peer.heartbeat.srtt_ms,
                next_id: peer.heartbeat.next_id,
                ..Heartbeat::default()
            };
        }
        // A path completes a transport-only connect; an establishment connect completes
        // only when its handshake commits (see `committed`).
        let connect = if peer.connect.as_ref().is_some_and(|c| c.permit.is_none()) {
            peer.connect.take()
        } else {
            None
        };
        let migration = peer.migration.take();
        let report = Reported::new(epoch, via, remote);
        let must_report = connect.is_some() || migration.is_some() || peer.reported != Some(report);
        if must_report {
            peer.reported = Some(report);
            self.outputs.push_back(Output::SessionReady(SessionReady {
                request: connect.map(|c| c.request),
                peer: device,
                session: peer.session,
                epoch: tether_protocol::Epoch(epoch),
                path: report.path,
                remote,
                after_handshake: false,
            }));
        }
        if changed {
            self.send_markers(device, via);
        }
        self.pump(now, device);
        if let (Via::Link(link), Some(remote)) = (via, remote) {
            self.ensure_standby(device, link, remote);
        }
    }

    /// Bound to a link the peer dialled: dial one of our own to the same address, so a
    /// change of our address finds a link QUIC migrates (the accepted one dies with
    /// our old address, and a fresh dial would cost the migration a round trip).
    fn ensure_standby(&mut self, device: DeviceId, bound: LinkId, remote: SocketAddr) {
        let accepted = self.links.get(&bound).is_some_and(|l| !l.dialled);
        let have_own = self
            .links
            .values()
            .any(|l| l.peer == Some(device) && l.dialled);
        let dialling = self
            .dials
            .values()
            .any(|d| d.device == device && d.purpose == DialPurpose::Standby);
        if accepted && !have_own && !dialling {
            self.dial(device, DialPurpose::Standby, vec![remote]);
        }
    }

    /// Whether an authenticated frame arrived on a direct link from the peer since `at`.
    pub(crate) fn heard_directly_since(&self, device: DeviceId, at: Instant) -> bool {
        self.links
            .values()
            .any(|l| l.peer == Some(device) && l.last_heard.is_some_and(|heard| heard >= at))
    }

    /// Puts the session's data on `via` without reporting a path change (a tentative
    /// path while a migration is unanswered).
    pub(crate) fn carry(&mut self, now: Instant, device: DeviceId, via: Via) {
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        if !peer.usable() || peer.bound == Some(via) {
            return;
        }
        peer.bound = Some(via);
        peer.resend_all = true;
        // On the relay, look for a direct path at once (as `bind` does).
        peer.probe_at = (via == Via::Relay).then_some(now);
        self.send_markers(device, via);
        self.pump(now, device);
    }

    /// One Migrate marker per outbound channel on `via`: where we stand.
    fn send_markers(&mut self, device: DeviceId, via: Via) {
        let Some(peer) = self.peers.get(&device) else {
            return;
        };
        let markers: Vec<SessionFrame> = peer
            .outbound
            .iter()
            .map(|(channel, outbound)| SessionFrame::Migrate {
                channel: *channel,
                incarnation: outbound.incarnation(),
                next_seq: outbound.next_seq(),
                first_unacked: outbound.first_unacked(),
            })
            .collect();
        for marker in markers {
            self.send_frame(device, via, &marker);
        }
    }

    /// Drops the path after its link went down; tells Presence when it was the bound one.
    fn unbind_link(&mut self, device: DeviceId, link: LinkId, reason: &str) {
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        if peer.bound == Some(Via::Link(link)) {
            peer.bound = None;
            peer.heartbeat = Heartbeat {
                srtt_ms: peer.heartbeat.srtt_ms,
                next_id: peer.heartbeat.next_id,
                ..Heartbeat::default()
            };
            if peer.reported.is_some() {
                self.outputs.push_back(Output::PathLost(PathLost {
                    peer: device,
                    reason: reason.to_string(),
                }));
            }
        }
        if let Some(connect) = peer.connect.as_mut() {
            if connect.via == Some(Via::Link(link)) {
                connect.via = None;
            }
        }
    }

    // ----- Transport events and wire frames --------------------------------------------

    fn transport_event(&mut self, now: Instant, event: TransportEvent) {
        match event {
            TransportEvent::LinkUp {
                request,
                link,
                remote,
                ..
            } => {
                let dial = request
                    .and_then(|r| self.dials.remove(&r))
                    .map(|d| (d.device, d.purpose));
                self.links.insert(
                    link,
                    LinkState {
                        peer: dial.map(|(device, _)| device),
                        remote,
                        // An address we dialled is one we chose; an accepted one must
                        // prove itself before it gets more than the amplification budget.
                        validated: dial.is_some(),
                        dialled: dial.is_some(),
                        bytes_in: 0,
                        bytes_out_unvalidated: 0,
                        last_heard: None,
                    },
                );
                match dial {
                    Some((device, DialPurpose::Connect)) => {
                        self.connect_on(now, device, Via::Link(link))
                    }
                    Some((device, DialPurpose::Migration)) => {
                        let ping = self
                            .peers
                            .get(&device)
                            .and_then(|p| p.migration.as_ref())
                            .map(|m| m.ping.clone());
                        if let Some(ping) = ping {
                            self.send_frame(
                                device,
                                Via::Link(link),
                                &SessionFrame::MigrationPing(ping),
                            );
                        }
                    }
                    Some((device, DialPurpose::Probe)) => {
                        self.challenge(now, device, Via::Link(link));
                    }
                    // Kept open by QUIC keep-alives; it carries our next migration ping.
                    Some((_, DialPurpose::Standby)) | None => {}
                }
            }
            TransportEvent::DialFailed { request, reason } => {
                if let Some(PendingDial {
                    device,
                    purpose,
                    addrs,
                }) = self.dials.remove(&request)
                {
                    tracing::debug!(peer = %device, %reason, ?purpose, "dial failed");
                    // Every candidate of the dial failed: the blueprint demotes them.
                    for addr in addrs {
                        self.outputs.push_back(Output::PathMeasured(PathMeasured {
                            peer: device,
                            endpoint: Endpoint::Direct(addr),
                            rtt_ms: None,
                        }));
                    }
                    if let Some(connect) =
                        self.peers.get_mut(&device).and_then(|p| p.connect.as_mut())
                    {
                        // Nothing direct answered: let the relay carry it now.
                        if connect.relay_at.is_some() {
                            connect.relay_at = Some(now);
                        }
                    }
                    if let Some(migration) = self
                        .peers
                        .get_mut(&device)
                        .and_then(|p| p.migration.as_mut())
                    {
                        if migration.relay_at.is_some() {
                            migration.relay_at = Some(now);
                        }
                    }
                }
            }
            TransportEvent::LinkDown { link, reason } => {
                if let Some(state) = self.links.remove(&link) {
                    if let Some(device) = state.peer {
                        self.unbind_link(device, link, &reason);
                    }
                }
            }
            TransportEvent::RemoteChanged { link, remote } => {
                if let Some(state) = self.links.get_mut(&link) {
                    state.remote = Some(remote);
                    // A new address must validate again (invariant 6).
                    state.validated = false;
                    state.bytes_in = 0;
                    state.bytes_out_unvalidated = 0;
                    let peer = state.peer.and_then(|device| self.peers.get_mut(&device));
                    if let Some(peer) = peer {
                        peer.challenger.forget(&Via::Link(link));
                    }
                }
            }
            TransportEvent::FrameReceived { link, frame } => {
                if self.links.contains_key(&link) {
                    self.wire_bytes(now, Via::Link(link), None, &frame);
                }
            }
        }
    }

    /// A wire frame from a link or (with its sender) from the relay.
    fn wire_bytes(&mut self, now: Instant, via: Via, relay_from: Option<DeviceId>, bytes: &[u8]) {
        let frame = match tether_protocol::decode(bytes) {
            Ok(frame) => frame,
            Err(_) => {
                self.counters.malformed_frames += 1;
                return;
            }
        };
        let wire_len = bytes.len() as u64;
        match frame {
            WireFrame::HandshakeInit(message) => {
                self.handshake_init(via, relay_from, message, wire_len);
            }
            WireFrame::HandshakeResponse(message) => {
                self.handshake_response(now, via, relay_from, message)
            }
            WireFrame::Sealed(sealed) => {
                self.sealed(now, via, relay_from, sealed, wire_len);
            }
            // Server protocols belong to Rcs and Pms.
            WireFrame::Relay(_) | WireFrame::Rendezvous(_) => {
                self.counters.malformed_frames += 1;
            }
        }
    }

    /// Bytes that authenticated on a link count towards its anti-amplification budget
    /// (only those: forged input must not buy a spoofed address more traffic).
    fn credit_link(&mut self, via: Via, len: u64) {
        if let Via::Link(link) = via {
            if let Some(state) = self.links.get_mut(&link) {
                state.bytes_in = state.bytes_in.saturating_add(len);
            }
        }
    }

    /// The peer whose session a frame names, if it is known and the frame came from it
    /// (both failures are counted).
    fn session_peer(
        &mut self,
        session: SessionId,
        via: Via,
        relay_from: Option<DeviceId>,
    ) -> Option<DeviceId> {
        let Some(&device) = self.by_session.get(&session) else {
            self.counters.unknown_session += 1;
            return None;
        };
        self.sender_matches(via, relay_from, device)
            .then_some(device)
    }

    /// The sender of a frame must be the session's peer: the link's peer once known, or
    /// the relay's authenticated sender.
    fn sender_matches(&mut self, via: Via, relay_from: Option<DeviceId>, device: DeviceId) -> bool {
        let ok = match via {
            Via::Relay => relay_from == Some(device),
            Via::Link(link) => self
                .links
                .get(&link)
                .is_some_and(|l| l.peer.is_none_or(|p| p == device)),
        };
        if !ok {
            self.counters.wrong_sender += 1;
        }
        ok
    }

    fn handshake_init(
        &mut self,
        via: Via,
        relay_from: Option<DeviceId>,
        message: HandshakeMessage,
        wire_len: u64,
    ) {
        let peers = &self.peers;
        let responded = Handshake::respond(
            &self.local,
            &message.noise,
            |public| {
                peers
                    .get(&DeviceId(*public.as_bytes()))
                    .map(|p| p.ring.peer_params())
            },
            &mut self.rng,
        );
        let responded = match responded {
            Ok(responded) => responded,
            Err(HandshakeError::UnknownPeer(_)) => {
                self.counters.unknown_device_handshakes += 1;
                return;
            }
            Err(HandshakeError::ReplayedInitiation { .. }) => {
                self.counters.replayed_initiations += 1;
                return;
            }
            Err(error) => {
                tracing::debug!(%error, "refused handshake initiation");
                self.counters.refused_handshakes += 1;
                return;
            }
        };
        let device = DeviceId(*responded.peer.as_bytes());
        if !self.sender_matches(via, relay_from, device) {
            return;
        }
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        if message.session != peer.session {
            self.counters.refused_handshakes += 1;
            return;
        }
        let message2 = match peer.ring.accept(responded) {
            Ok(message2) => message2,
            Err(error) => {
                tracing::debug!(peer = %device, %error, "refused handshake");
                self.counters.refused_handshakes += 1;
                return;
            }
        };
        peer.handshakes += 1;
        let session = peer.session;
        self.credit_link(via, wire_len);
        if let Via::Link(link) = via {
            if let Some(state) = self.links.get_mut(&link) {
                // The initiator proved its static key and the relationship key, fresh.
                state.peer = Some(device);
                state.validated = true;
            }
        }
        self.deliver_wire(
            device,
            via,
            &WireFrame::HandshakeResponse(HandshakeMessage {
                session,
                noise: message2,
            }),
        );
    }

    fn handshake_response(
        &mut self,
        now: Instant,
        via: Via,
        relay_from: Option<DeviceId>,
        message: HandshakeMessage,
    ) {
        let Some(device) = self.session_peer(message.session, via, relay_from) else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        if let Err(error) = peer.ring.confirm(&message.noise) {
            tracing::debug!(peer = %device, %error, "refused handshake response");
            self.counters.refused_handshakes += 1;
            return;
        }
        if let Some(connect) = peer.connect.as_mut() {
            connect.via = Some(via);
            connect.retry_at = None;
        }
        // The first frame under the new keys lets the responder commit them; its answer
        // lets us commit.
        peer.heartbeat.next_id += 1;
        let id = peer.heartbeat.next_id;
        peer.heartbeat.outstanding = Some((id, now));
        self.send_frame(device, via, &SessionFrame::Ping { id });
    }

    fn sealed(
        &mut self,
        now: Instant,
        via: Via,
        relay_from: Option<DeviceId>,
        frame: SealedFrame,
        wire_len: u64,
    ) {
        let Some(device) = self.session_peer(frame.session, via, relay_from) else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        let sealed = Sealed {
            key_id: tether_crypto::KeyId(frame.key_id),
            nonce: frame.nonce,
            ciphertext: frame.ciphertext,
        };
        // Invariant 4: a frame that fails authentication or the replay check changes
        // nothing; the ring guarantees it, and nothing below runs.
        let opened = match peer.ring.open(&sealed) {
            Ok(opened) => opened,
            Err(_) => {
                self.counters.rejected_frames += 1;
                return;
            }
        };
        peer.counters.traffic(via).received(wire_len);
        // Authentic: these bytes count towards the link's anti-amplification budget.
        self.credit_link(via, wire_len);
        let session_frame = match tether_protocol::decode_session(&opened.plaintext) {
            Ok(session_frame) => session_frame,
            Err(_) => {
                self.counters.malformed_session_frames += 1;
                return;
            }
        };
        if let Via::Link(link) = via {
            if let Some(state) = self.links.get_mut(&link) {
                state.peer = Some(device);
                state.last_heard = Some(now);
            }
        }
        if opened.newly_committed {
            self.committed(now, device, via, opened.generation.epoch);
        }
        self.session_frame(now, device, via, session_frame);
    }

    /// A new generation was committed (a handshake completed on this side).
    fn committed(&mut self, now: Instant, device: DeviceId, via: Via, epoch: u64) {
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        let newer = peer.reported.is_none_or(|r| epoch > r.epoch);
        if !newer {
            return;
        }
        peer.evicted_at_epoch = None;
        peer.migration = None;
        // The handshake's path is the session's path from now on.
        let request = peer.connect.take().map(|c| c.request);
        let session = peer.session;
        let remote = match via {
            Via::Link(link) => self.links.get(&link).and_then(|l| l.remote),
            Via::Relay => None,
        };
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        peer.bound = Some(via);
        peer.resend_all = true;
        let report = Reported::new(epoch, via, remote);
        peer.reported = Some(report);
        peer.heartbeat.next_at = Some(now + self.limits.heartbeat_interval);
        // Migration ping counters belong to an epoch (the tag binds it).
        peer.ping_counter_sent = 0;
        peer.highest_ping_received = 0;
        peer.probe_at = (via == Via::Relay).then_some(now);
        self.outputs.push_back(Output::SessionReady(SessionReady {
            request,
            peer: device,
            session,
            epoch: tether_protocol::Epoch(epoch),
            path: report.path,
            remote,
            after_handshake: true,
        }));
        // Answer at once so the initiator commits the same generation.
        let id = self.peers.get_mut(&device).map_or(0, |p| {
            p.heartbeat.next_id += 1;
            p.heartbeat.next_id
        });
        self.send_frame(device, via, &SessionFrame::Ping { id });
        // A new epoch may follow a restart of either side: line the channels up.
        self.send_markers(device, via);
        self.pump(now, device);
        if let (Via::Link(link), Some(remote)) = (via, remote) {
            self.ensure_standby(device, link, remote);
        }
    }

    // ----- Sending ---------------------------------------------------------------------

    /// Seals a session frame into an encoded wire frame, or None when no key is usable.
    pub(crate) fn seal_wire(&mut self, device: DeviceId, frame: &SessionFrame) -> Option<Vec<u8>> {
        let peer = self.peers.get_mut(&device)?;
        let plaintext = tether_protocol::encode_session(frame).ok()?;
        let sealed = peer.ring.seal(&plaintext).ok()?;
        tether_protocol::encode(&WireFrame::Sealed(SealedFrame {
            session: peer.session,
            key_id: sealed.key_id.0,
            nonce: sealed.nonce,
            ciphertext: sealed.ciphertext,
        }))
        .ok()
    }

    /// Seals and sends a session frame on a path, within the anti-amplification budget
    /// of an unvalidated address (a frame beyond it is dropped and counted).
    pub(crate) fn send_frame(&mut self, device: DeviceId, via: Via, frame: &SessionFrame) {
        if let Via::Link(link) = via {
            let Some(state) = self.links.get(&link) else {
                return;
            };
            if !state.validated {
                let estimate = estimated_len(frame);
                let budget = state.bytes_in.saturating_mul(AMPLIFICATION_FACTOR);
                if state.bytes_out_unvalidated.saturating_add(estimate) > budget {
                    self.counters.amplification_blocked += 1;
                    return;
                }
            }
        }
        let Some(bytes) = self.seal_wire(device, frame) else {
            return;
        };
        if let Some(peer) = self.peers.get_mut(&device) {
            peer.counters.traffic(via).sent(bytes.len() as u64);
        }
        self.deliver_bytes(device, via, bytes);
    }

    /// Sends an unsealed wire frame (handshake messages).
    fn deliver_wire(&mut self, device: DeviceId, via: Via, frame: &WireFrame) {
        match tether_protocol::encode(frame) {
            Ok(bytes) => self.deliver_bytes(device, via, bytes),
            Err(error) => tracing::warn!(%error, "cannot encode a handshake frame"),
        }
    }

    fn deliver_bytes(&mut self, device: DeviceId, via: Via, bytes: Vec<u8>) {
        match via {
            Via::Link(link) => {
                if let Some(state) = self.links.get_mut(&link) {
                    if !state.validated {
                        state.bytes_out_unvalidated = state
                            .bytes_out_unvalidated
                            .saturating_add(bytes.len() as u64);
                    }
                }
                self.outputs
                    .push_back(Output::Transport(TransportCommand::Transmit {
                        link,
                        frame: bytes,
                    }));
            }
            Via::Relay => self.outputs.push_back(Output::RelayForward(RelayForward {
                to: device,
                frame: bytes,
            })),
        }
    }
}

fn estimated_len(frame: &SessionFrame) -> u64 {
    let plaintext = tether_protocol::encode_session(frame).map_or(0, |b| b.len() as u64);
    plaintext + SEALED_OVERHEAD
}

/// The pair's session id: fixed per relationship key, so both devices agree on it
/// without a round trip and it survives epochs, paths and restarts.
fn session_id_for_pair(rendezvous: &RendezvousId) -> SessionId {
    let mut bytes = [0_u8; 16];
    bytes.copy_from_slice(&rendezvous.0[16..32]);
    SessionId::from_random_bytes(bytes)
}

pub(crate) fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
