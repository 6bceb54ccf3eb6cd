//! The sans-IO DirectConnection core: its state, inputs and outputs, the timer
//! dispatch, and the routing of link events and wire frames to the peer they concern.
//!
//! The work is split by responsibility: [`crate::links`] (links, dials, validation and
//! the anti-amplification budget), [`crate::timers`] (every deadline),
//! [`crate::establish`] (connects and the handshake), [`crate::migration`] (both
//! migration roles, probing and standby links), [`crate::paths`] (binding a session to
//! a path), [`crate::sending`] (sealing, queues, retransmission, liveness) and
//! [`crate::frames`] (authenticated session frames).

use crate::channels::{Inbound, Outbound};
use crate::config::{Config, Limits};
use crate::links::{DialPurpose, LinkTable, PendingDial};
use crate::migration::direct_addrs;
use crate::state::{Heartbeat, InitiationBudget, PeerCounters, PeerState, RekeyState, Via};
use crate::timers::{Timer, TimerTable};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tether_crypto::{Fingerprint, KeyRing, PathChallenger, RendezvousId, Sealed, StaticKeypair};
use tether_protocol::shell::SansIoCore;
use tether_protocol::{
    AllowRekey, BlueprintCompiled, CarryOverRelay, ChannelId, ConnectFailed, ConnectPeer, DeviceId,
    DirectDialFailed, Endpoint, EvictSession, HandshakeStarted, InboundMigrationPing,
    JournalCommitted, JournalEntry, LinkId, LivenessReport, MessageConsumed, MessageDelivered,
    MessagesAcknowledged, PathKind, PathLost, PathMeasured, PeerAnnounced, PeerEndpointHint,
    PeerEndpointsChanged, PeerReset, ReflexiveAddress, RelayDelivered, RelayEnqueue, RelayForward,
    RelayMigrationPing, RelayStatus, RequestId, SealedFrame, SendCapacity, SendMigrationPing,
    SendWaiting, SessionFrame, SessionId, SessionReady, TransportCommand, TransportEvent,
    WireFrame,
};

/// Receiving channels a peer may open. Channels are an application's multiplexed
/// streams: a thousand covers any app, and each costs a map entry, a journal row and
/// an ack held for the store, so a peer cannot grow them without limit.
pub const MAX_INBOUND_CHANNELS: usize = 1024;

/// Most outstanding path challenges per peer (one per path being validated).
const MAX_CHALLENGES_PER_PEER: usize = 8;

/// What the core is told.
#[derive(Debug)]
pub enum Input {
    /// PresenceConnect.
    Connect(ConnectPeer),
    /// Migration phase 2: announce our new endpoints.
    SendMigrationPing(SendMigrationPing),
    /// Migration phase 2: the relay queue carries the ping too.
    RelayMigrationPing(RelayMigrationPing),
    /// Migration phase 2: the queued data follows the ping through the relay.
    CarryOverRelay(CarryOverRelay),
    /// Drop the session's keys and path (queued messages are kept).
    Evict(EvictSession),
    /// Presence allows or refuses a rekey (the session is Ready, or not).
    AllowRekey(AllowRekey),
    /// A link event from the transport driver.
    Transport(TransportEvent),
    /// A frame that came through the relay.
    Relay(RelayDelivered),
    /// The relay connection went up or down.
    RelayStatus(RelayStatus),
    /// This device's endpoints changed.
    LocalEndpoints(Vec<SocketAddr>),
    /// The address the relay sees this device at (None: not connected to it).
    Reflexive(ReflexiveAddress),
    /// ConnectionBlueprint's new candidate order for a peer.
    Blueprint(BlueprintCompiled),
    /// The store committed the first `through` journal entries.
    JournalCommitted(JournalCommitted),
    /// The peer's endpoints from a rendezvous hint.
    Hint(PeerEndpointHint),
    /// The application consumed a delivered message.
    Consumed(MessageConsumed),
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
    PathLost(PathLost),
    /// To Presence.
    PeerReset(PeerReset),
    /// To Presence.
    Liveness(LivenessReport),
    /// To ConnectionBlueprint and Presence.
    PathMeasured(PathMeasured),
    /// To Presence.
    DirectDialFailed(DirectDialFailed),
    /// To ConnectionBlueprint.
    PeerAnnounced(PeerAnnounced),
    /// To Presence.
    SendWaiting(SendWaiting),
    /// To the store that keeps channels across restarts (only when journalling).
    Journal(JournalEntry),
    /// To Presence.
    PeerEndpointsChanged(PeerEndpointsChanged),
    /// To the application.
    Delivered(MessageDelivered),
    /// To the application: a full queue has room again.
    SendCapacity(SendCapacity),
    /// To the application: the peer acknowledged messages.
    Acknowledged(MessagesAcknowledged),
    /// To whoever asked: an operator ping was answered.
    PingAnswered(crate::operator_ping::PingAnswered),
    /// To whoever asked: an operator ping will not be answered (newer pings displaced
    /// it).
    PingExpired {
        /// The peer.
        peer: DeviceId,
        /// The ping's id.
        id: u64,
    },
}

/// Peer- and network-caused problems, counted and dropped (invariant 8).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
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
    /// Handshake responses naming one of our sessions with no initiation waiting: the
    /// second copy of an answer sent on two paths, the answer to an initiation a retry
    /// or a crossing handshake replaced, or anything else in that shape (nothing is
    /// checked before the ring finds no initiation to match).
    pub unmatched_handshake_responses: u64,
    /// Migration pings whose PeerSecret tag did not verify.
    pub bad_migration_tags: u64,
    /// Migration pings with an old counter.
    pub stale_migration_pings: u64,
    /// Path responses that matched no challenge.
    pub bad_path_responses: u64,
    /// Rendezvous hints ignored for being older than what the peer last said itself.
    pub stale_hints: u64,
    /// Direct paths that answered while on the relay and were left unused for being
    /// slower than the relay (`path_choice`).
    pub direct_paths_declined: u64,
    /// Sessions moved from a direct path that still answered to the relay, for being
    /// clearly slower or losing heartbeats.
    pub direct_fallbacks: u64,
    /// Frames not sent to an unvalidated address (anti-amplification).
    pub amplification_blocked: u64,
    /// Frames from a link or relay sender that is not the session's peer.
    pub wrong_sender: u64,
    /// Accepted links closed because nobody proved to be a peer on them in time, or to
    /// keep at most `MAX_UNCLAIMED_LINKS` of them.
    pub unclaimed_links_closed: u64,
    /// Handshake initiations dropped, before any Diffie-Hellman, because their session
    /// had used its budget.
    pub rate_limited_initiations: u64,
    /// Frames for a channel the peer opened beyond `MAX_INBOUND_CHANNELS`, dropped.
    pub channels_refused: u64,
    /// Data frames dropped (unacknowledged, so resent later) because their peer's
    /// messages held the receive budget: the application reads slower than it sends.
    pub receive_budget_drops: u64,
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
    /// Completed handshakes: generations committed with this peer, one per new epoch
    /// (establishment, recovery, restart, rekey).
    pub handshakes: u64,
    /// Handshake messages 1 sent to this peer (every retry counts) or answered.
    pub handshake_attempts: u64,
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
    /// Bytes of this peer's messages the receive budget holds (delivered and not yet
    /// consumed by the application, or buffered ahead of a gap).
    pub held_bytes: usize,
    /// Messages accepted / delivered / dropped as duplicates.
    pub counters: PeerCounters,
    /// Open transport links that carry this peer.
    pub links: usize,
    /// When the last authentic frame from the peer arrived.
    pub last_received: Option<Instant>,
    /// When the committed generation (the current session keys) was committed here:
    /// the last completed handshake.
    pub last_handshake: Option<Instant>,
    /// Whether the bound direct link answered a challenge (or an authenticated
    /// handshake) from its address; None when not bound to a direct link.
    pub path_validated: Option<bool>,
    /// Direct addresses known for the peer: its newest announcement and the
    /// blueprint's candidates.
    pub direct_candidates: usize,
    /// Smoothed round trip of the relay path, when measured (liveness pings answered
    /// over the relay).
    pub relay_rtt_ms: Option<u64>,
    /// The last direct path left unused for being slower than the relay, since the
    /// session last changed paths.
    pub direct_declined: Option<crate::state::DeclinedDirect>,
    /// Where the peer last saw this device on a direct path (since this device last
    /// moved), and what that says about its NAT.
    pub seen_by_peer: Option<crate::nat::SeenByPeer>,
}

/// The DirectConnection core. See the crate docs.
pub struct DirectConnection {
    pub(crate) limits: Limits,
    pub(crate) local: StaticKeypair,
    pub(crate) rng: ChaCha20Rng,
    pub(crate) start: Instant,
    pub(crate) unix_ms_at_start: u64,
    pub(crate) peers: BTreeMap<DeviceId, PeerState>,
    pub(crate) by_session: BTreeMap<SessionId, DeviceId>,
    pub(crate) links: LinkTable,
    pub(crate) timers: TimerTable,
    pub(crate) next_request: u64,
    pub(crate) relay_connected: bool,
    /// The losses of the device's link to the relay (path choice compares a lossy
    /// direct path with it).
    pub(crate) relay_loss: crate::path_choice::LossMeter,
    pub(crate) local_endpoints: Vec<SocketAddr>,
    /// The address the relay sees this device at, since the last move.
    pub(crate) reflexive: Option<SocketAddr>,
    /// The last address the relay said it sees, since the last move (kept while the
    /// relay is away): what the peers' views are compared with.
    pub(crate) relay_view: Option<SocketAddr>,
    pub(crate) counters: Counters,
    pub(crate) outputs: VecDeque<Output>,
    /// Whether channel changes are journalled (`Output::Journal`).
    pub(crate) journal: bool,
    /// Journal entries emitted so far (the number of the last one).
    pub(crate) journal_emitted: u64,
    /// Acks held back until the store commits the entry (by number) that records the
    /// channel's position, with the path to send them on.
    pub(crate) awaiting_commit: BTreeMap<(DeviceId, ChannelId), (u64, Via)>,
}

impl DirectConnection {
    /// A core for this device and its paired peers.
    pub fn new(config: Config, now: Instant) -> Self {
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
                    generations: 0,
                    handshake_attempts: 0,
                    rekey: RekeyState::default(),
                    bound: None,
                    evicted_at_epoch: None,
                    reported: None,
                    connect: None,
                    migration: None,
                    ping_counter_sent: 0,
                    highest_ping_received: 0,
                    candidates_sent_at: None,
                    candidates_dialled_at: None,
                    probe_rounds: 0,
                    relay_rtt_ms: None,
                    direct_declined: None,
                    declined_link: None,
                    seen_by_peer: None,
                    observed_told_at_ms: None,
                    direct_quality: Default::default(),
                    fallback: None,
                    heard_from_peer_at_ms: None,
                    announced: Vec::new(),
                    blueprint: Vec::new(),
                    challenger: PathChallenger::new(challenge_ttl_ms, MAX_CHALLENGES_PER_PEER),
                    initiation_budget: InitiationBudget::new(now),
                    outbound: BTreeMap::new(),
                    inbound: BTreeMap::new(),
                    ack_via: None,
                    resend_all: false,
                    send_waiting_reported: false,
                    queue_full_refused: false,
                    unconsumed_bytes: 0,
                    heartbeat: Heartbeat::default(),
                    last_received: None,
                    operator_pings: crate::operator_ping::Pings::default(),
                    counters: PeerCounters::default(),
                },
            );
        }
        let credit = config.limits.credit;
        for kept in config.restored.outbound {
            if let Some(peer) = peers.get_mut(&kept.peer) {
                peer.outbound.insert(
                    kept.channel,
                    Outbound::restore(
                        credit,
                        kept.incarnation,
                        kept.next_seq,
                        kept.acked_below,
                        kept.unacked,
                    ),
                );
            }
        }
        for kept in config.restored.inbound {
            if let Some(peer) = peers.get_mut(&kept.peer) {
                peer.inbound.insert(
                    kept.channel,
                    Inbound::restore(kept.sender_incarnation, kept.next_expected),
                );
            }
        }
        Self {
            journal: config.journal,
            journal_emitted: 0,
            awaiting_commit: BTreeMap::new(),
            limits: config.limits,
            local: config.local,
            rng: ChaCha20Rng::from_seed(config.rng_seed),
            start: now,
            unix_ms_at_start: config.unix_ms_at_start,
            peers,
            by_session,
            links: LinkTable::default(),
            timers: TimerTable::default(),
            next_request: 1,
            relay_connected: false,
            relay_loss: Default::default(),
            local_endpoints: config.local_endpoints,
            reflexive: None,
            relay_view: None,
            counters: Counters::default(),
            outputs: VecDeque::new(),
        }
    }

    /// Counters of dropped input.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The status of one peer's session.
    pub fn snapshot(&self, peer: &DeviceId) -> Option<PeerSnapshot> {
        let state = self.peers.get(peer)?;
        let (path, remote) = match state.bound {
            Some(Via::Relay) => (Some(PathKind::Relay), None),
            Some(Via::Link(link)) => (Some(PathKind::Direct), self.links.remote(link)),
            None => (None, None),
        };
        Some(PeerSnapshot {
            peer: *peer,
            session: state.session,
            epoch: state.ring.committed_epoch(),
            handshakes: state.generations,
            handshake_attempts: state.handshake_attempts,
            peer_secret: state.ring.committed_fingerprint(),
            session_keys: state.ring.session_fingerprint(),
            path,
            remote,
            rtt_ms: state.heartbeat.srtt_ms,
            queued: state.queued(),
            held_bytes: state.held_bytes(),
            counters: state.counters,
            links: self.links.links_of_peer_count(*peer),
            last_received: state.last_received,
            last_handshake: state.rekey.generation_since,
            path_validated: match state.bound {
                Some(Via::Link(link)) => Some(self.links.is_validated(link)),
                _ => None,
            },
            direct_candidates: state.announced.len() + state.blueprint.len(),
            relay_rtt_ms: state.relay_rtt_ms,
            direct_declined: state.direct_declined.as_deref().copied(),
            seen_by_peer: self.seen_by(peer),
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

    /// Feeds one input. Only the peer it concerns (if any) is touched.
    fn handle(&mut self, now: Instant, input: Input) {
        let touched = match input {
            Input::Connect(connect) => {
                let peer = connect.peer;
                self.connect(now, connect);
                Some(peer)
            }
            Input::SendMigrationPing(request) => {
                let peer = request.peer;
                self.send_migration_ping(now, request);
                Some(peer)
            }
            Input::RelayMigrationPing(request) => {
                self.migration_relay_copy(request.peer);
                Some(request.peer)
            }
            Input::CarryOverRelay(request) => {
                self.migration_carry(now, request.peer);
                Some(request.peer)
            }
            Input::Evict(evict) => {
                let peer = evict.peer;
                self.evict(evict);
                Some(peer)
            }
            Input::AllowRekey(message) => {
                let peer = message.peer;
                self.allow_rekey(now, message);
                Some(peer)
            }
            Input::Transport(event) => self.transport_event(now, event),
            Input::Relay(delivered) => {
                self.wire_bytes(now, Via::Relay, Some(delivered.from), &delivered.envelope)
            }
            Input::RelayStatus(status) => {
                let came_up = status.connected && !self.relay_connected;
                self.relay_connected = status.connected;
                if came_up {
                    self.relay_up(now);
                }
                None
            }
            Input::LocalEndpoints(endpoints) => {
                // This device's network changed: a migration begins, so no rekey.
                self.refuse_rekeys_on_move();
                self.local_endpoints = endpoints;
                // The relay and the peers will say where they see us now.
                self.reflexive = None;
                self.forget_nat_views();
                None
            }
            Input::Reflexive(ReflexiveAddress { addr }) => {
                self.reflexive_changed(now, addr);
                None
            }
            Input::Blueprint(compiled) => {
                if let Some(peer) = self.peers.get_mut(&compiled.peer) {
                    peer.blueprint = direct_addrs(&compiled.candidates);
                }
                None
            }
            Input::JournalCommitted(committed) => {
                self.journal_committed(committed.through);
                None
            }
            Input::Hint(hint) => {
                self.hint_received(now, hint);
                None
            }
            Input::Consumed(consumed) => {
                self.consumed(consumed);
                None
            }
        };
        if let Some(device) = touched {
            self.pump(now, device);
            self.close_unneeded_links(now, device);
            self.maybe_rekey(now, device);
        }
    }

    /// Runs the timers that are due, and only those. Spurious calls are harmless.
    fn handle_timeout(&mut self, now: Instant) {
        for link in self.links.unclaimed_expired(now) {
            self.close_unclaimed(link);
        }
        let due = self.timers.expired(now);
        let mut touched = Vec::new();
        for (device, timer) in due {
            // An earlier handler may have moved or stopped this timer.
            if !self.timers.take_if_due(device, timer, now) {
                continue;
            }
            match timer {
                Timer::ConnectDeadline => self.connect_deadline(now, device),
                Timer::ConnectRelay => self.connect_relay_due(now, device),
                Timer::HandshakeRetry => self.send_initiation(now, device),
                Timer::Heartbeat => self.heartbeat(now, device),
                Timer::Probe => self.probe(now, device),
                Timer::AckDelay => self.send_owed_acks(device),
                // The pump below resends what is due.
                Timer::Retransmit => {}
                Timer::Rekey => self.rekey_timer(now, device),
            }
            if touched.last() != Some(&device) {
                touched.push(device);
            }
        }
        for device in touched {
            self.pump(now, device);
            self.close_unneeded_links(now, device);
            self.maybe_rekey(now, device);
        }
    }

    /// Next output to deliver.
    fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The next instant at which [`SansIoCore::handle_timeout`] has work.
    fn poll_timeout(&self) -> Option<Instant> {
        let links = self.links.next_unclaimed_deadline();
        match (self.timers.next_timeout(), links) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
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

    /// Asks the transport driver to dial `addrs` for `purpose`.
    pub(crate) fn dial(&mut self, device: DeviceId, purpose: DialPurpose, addrs: Vec<SocketAddr>) {
        tracing::debug!(peer = %device, ?purpose, ?addrs, "dialling");
        let request = self.request_id();
        self.links.add_dial(
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

    /// Routes a link event; returns the peer it concerned.
    fn transport_event(&mut self, now: Instant, event: TransportEvent) -> Option<DeviceId> {
        match event {
            TransportEvent::LinkUp {
                request,
                link,
                remote,
                ..
            } => {
                let dial = request.and_then(|r| self.links.take_dial(r));
                let claim_by = now + self.limits.unclaimed_link_close_after;
                let dialled_for = dial.as_ref().map(|d| d.device);
                if let Some(displaced) =
                    self.links.link_up(now, claim_by, link, remote, dialled_for)
                {
                    self.close_unclaimed(displaced);
                }
                let dial = dial?;
                let device = dial.device;
                match dial.purpose {
                    DialPurpose::Connect => self.connect_on(now, device, Via::Link(link)),
                    DialPurpose::Migration => self.migration_link_up(device, link),
                    DialPurpose::Probe => self.challenge(now, device, Via::Link(link)),
                    // Kept open by QUIC keep-alives; it carries our next migration ping.
                    // An empty authenticated frame claims it at once, or the peer would
                    // close it as a link nobody proved to be theirs.
                    DialPurpose::Standby => self.send_frame(
                        device,
                        Via::Link(link),
                        &SessionFrame::Padding { bytes: Vec::new() },
                    ),
                }
                Some(device)
            }
            TransportEvent::DialFailed { request, reason } => {
                let dial = self.links.take_dial(request)?;
                let device = dial.device;
                tracing::debug!(peer = %device, %reason, purpose = ?dial.purpose, "dial failed");
                // Every candidate of the dial failed: the blueprint demotes them.
                for addr in dial.addrs {
                    self.outputs.push_back(Output::PathMeasured(PathMeasured {
                        peer: device,
                        endpoint: Endpoint::Direct(addr),
                        rtt_ms: None,
                        srtt_ms: None,
                    }));
                }
                // Nothing direct answered: let the relay carry the connect now, if it is
                // still to join; Presence does the same for a migration ping.
                if self.timers.is_armed(device, Timer::ConnectRelay) {
                    self.timers.set(device, Timer::ConnectRelay, now);
                }
                self.outputs
                    .push_back(Output::DirectDialFailed(DirectDialFailed { peer: device }));
                Some(device)
            }
            TransportEvent::LinkDown { link, reason } => {
                let device = self.links.remove(link)?.peer?;
                self.unbind_link(device, link, &reason);
                Some(device)
            }
            TransportEvent::RemoteChanged { link, remote } => {
                let device = self.links.remote_changed(link, remote)?;
                if let Some(peer) = self.peers.get_mut(&device) {
                    peer.challenger.forget(&Via::Link(link));
                }
                Some(device)
            }
            TransportEvent::FrameReceived { link, frame } => {
                if !self.links.contains(link) {
                    return None;
                }
                self.wire_bytes(now, Via::Link(link), None, &frame)
            }
            TransportEvent::PathSampled {
                link,
                path,
                sent_bytes,
                lost_bytes,
            } => self.path_sampled(now, link, path, sent_bytes, lost_bytes),
        }
    }

    /// A wire frame from a link or (with its sender) from the relay; returns the peer
    /// it concerned, if it came from one.
    fn wire_bytes(
        &mut self,
        now: Instant,
        via: Via,
        relay_from: Option<DeviceId>,
        bytes: &[u8],
    ) -> Option<DeviceId> {
        let Ok(frame) = tether_protocol::decode(bytes) else {
            self.counters.malformed_frames += 1;
            return None;
        };
        let wire_len = bytes.len() as u64;
        match frame {
            WireFrame::HandshakeInit(message) => {
                self.handshake_init(now, via, relay_from, message, wire_len)
            }
            WireFrame::HandshakeResponse(message) => {
                self.handshake_response(now, via, relay_from, message, wire_len)
            }
            WireFrame::Sealed(sealed) => self.sealed(now, via, relay_from, sealed, wire_len),
            // Server protocols belong to Rcs and Pms.
            WireFrame::Relay(_) | WireFrame::Rendezvous(_) => {
                self.counters.malformed_frames += 1;
                None
            }
        }
    }

    /// Closes an accepted link the link table gave up on: nobody claimed it in time, or
    /// newer unclaimed links displaced it.
    fn close_unclaimed(&mut self, link: LinkId) {
        self.counters.unclaimed_links_closed += 1;
        self.outputs
            .push_back(Output::Transport(TransportCommand::Close { link }));
    }

    /// Bytes that authenticated on a link count towards its anti-amplification budget.
    pub(crate) fn credit_link(&mut self, via: Via, len: u64) {
        if let Via::Link(link) = via {
            self.links.credit(link, len);
        }
    }

    /// The peer whose session a frame names, if it is known and the frame came from it
    /// (both failures are counted).
    pub(crate) fn session_peer(
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
    pub(crate) fn sender_matches(
        &mut self,
        via: Via,
        relay_from: Option<DeviceId>,
        device: DeviceId,
    ) -> bool {
        let ok = match via {
            Via::Relay => relay_from == Some(device),
            Via::Link(link) => self
                .links
                .get(link)
                .is_some_and(|l| l.peer.is_none_or(|p| p == device)),
        };
        if !ok {
            self.counters.wrong_sender += 1;
        }
        ok
    }

    /// A sealed session frame: opened under the peer's keys, then dispatched.
    fn sealed(
        &mut self,
        now: Instant,
        via: Via,
        relay_from: Option<DeviceId>,
        frame: SealedFrame,
        wire_len: u64,
    ) -> Option<DeviceId> {
        let device = self.session_peer(frame.session, via, relay_from)?;
        let peer = self.peers.get_mut(&device)?;
        let sealed = Sealed {
            key_id: tether_crypto::KeyId(frame.key_id),
            nonce: frame.nonce,
            ciphertext: frame.ciphertext,
        };
        // Invariant 4: a frame that fails authentication or the replay check changes
        // nothing; the ring guarantees it, and nothing below runs.
        let Ok(opened) = peer.ring.open(&sealed) else {
            self.counters.rejected_frames += 1;
            return None;
        };
        peer.counters.traffic(via).received(wire_len);
        peer.last_received = Some(now);
        // Authentic: these bytes count towards the link's anti-amplification budget.
        self.credit_link(via, wire_len);
        let Ok(session_frame) = tether_protocol::decode_session(&opened.plaintext) else {
            self.counters.malformed_session_frames += 1;
            return Some(device);
        };
        if let Via::Link(link) = via {
            self.links.heard(link, device, now);
        }
        if opened.newly_committed {
            self.committed(
                now,
                device,
                via,
                opened.generation.epoch,
                opened.epoch_raised,
                opened.purpose,
            );
        }
        self.session_frame(now, device, via, session_frame);
        Some(device)
    }

    /// The remote address `via` reaches (direct links only).
    pub(crate) fn remote_of(&self, via: Via) -> Option<SocketAddr> {
        match via {
            Via::Link(link) => self.links.remote(link),
            Via::Relay => None,
        }
    }
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
