//! The sans-IO Presence core: one [`SessionStatus`] machine per peer, the migration
//! window, migration ping rounds, and connect/recovery scheduling with jitter and a
//! concurrency bound.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tether_protocol::shell::SansIoCore;
use tether_protocol::{
    BlueprintCompiled, CarryOverRelay, ConnectFailed, ConnectPeer, ConnectivityChanged, DeviceId,
    DirectDialFailed, Epoch, EvictSession, EvictionReason, HandshakeStarted, InboundMigrationPing,
    LivenessReport, LookupEndpointHint, MigrationAcked, PathKind, PathLost, PathMeasured,
    PeerEndpointHint, PeerReset, PublishEndpointHint, RecompileBlueprint, RelayMigrationPing,
    RelayPoll, RequestId, SendMigrationPing, SessionId, SessionReady, SessionStatus, StatusChanged,
};

/// Settings of the Presence core. Every duration is virtual under paused time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// How long a migration may take before both sides evict (the seed's window).
    pub migration_window: Duration,
    /// First interval between migration ping rounds; doubles up to
    /// [`Config::migration_ping_max_interval`].
    pub migration_ping_interval: Duration,
    /// Longest interval between migration ping rounds.
    pub migration_ping_max_interval: Duration,
    /// Spread of the first migration ping per peer after a network change, per peer
    /// (capped at [`MAX_FIRST_PING_SPREAD`]): avoids a burst when many peers exist.
    pub first_ping_spread_per_peer: Duration,
    /// First connect/recovery retry delay; doubles up to `connect_retry_max`.
    pub connect_retry_base: Duration,
    /// Longest connect/recovery retry delay.
    pub connect_retry_max: Duration,
    /// Connect attempts (handshakes) in flight at once, so a restart with many peers is
    /// not a reconnection storm.
    pub max_concurrent_connects: usize,
    /// Delay before a transport-only reconnect after the bound path was lost.
    pub path_lost_reconnect_after: Duration,
    /// Heartbeat fallback: how often the relay queue is polled.
    pub relay_poll_interval: Duration,
    /// Longest wait, after a migration ping, before the relay queue carries it too (the
    /// wait is 1.5 RTT of the session's path when one was measured).
    pub migration_relay_after: Duration,
    /// Seed of the jitter RNG.
    pub seed: u64,
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
            connect_retry_max: Duration::from_secs(10),
            max_concurrent_connects: 8,
            path_lost_reconnect_after: Duration::from_millis(200),
            relay_poll_interval: Duration::from_secs(5),
            // A quarter second: a migrated direct link answers well within it, and a
            // blocked one then costs at most this much before the relay carries the ping.
            migration_relay_after: Duration::from_millis(250),
            seed: 0,
        }
    }
}

/// What the core is told.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A paired peer: start connecting to it.
    AddPeer(DeviceId),
    /// The device's own endpoints at start.
    LocalEndpoints(Vec<SocketAddr>),
    /// The local network changed (migration phase 1).
    ConnectivityChanged(ConnectivityChanged),
    /// ConnectionBlueprint answered.
    BlueprintCompiled(BlueprintCompiled),
    /// DirectConnection started a handshake.
    HandshakeStarted(HandshakeStarted),
    /// DirectConnection bound a session to a path.
    SessionReady(SessionReady),
    /// DirectConnection found no path.
    ConnectFailed(ConnectFailed),
    /// An authenticated migration ping arrived (migration phase 3).
    InboundMigrationPing(InboundMigrationPing),
    /// The peer acknowledged our migration ping.
    MigrationAcked(MigrationAcked),
    /// The bound path went away.
    PathLost(PathLost),
    /// The peer dropped the session.
    PeerReset(PeerReset),
    /// Heartbeat outcome.
    Liveness(LivenessReport),
    /// The peer's endpoints from the rendezvous server.
    PeerEndpointHint(PeerEndpointHint),
    /// A round-trip sample of the session's path (the relay-copy wait follows it).
    PathMeasured(PathMeasured),
    /// A dial to the peer's direct candidates failed: no direct path answers now.
    DirectDialFailed(DirectDialFailed),
}

/// What the core asks to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// To ConnectionBlueprint.
    RecompileBlueprint(RecompileBlueprint),
    /// PresenceConnect, to DirectConnection.
    ConnectPeer(ConnectPeer),
    /// To DirectConnection (migration phase 2).
    SendMigrationPing(SendMigrationPing),
    /// To DirectConnection: no direct answer in time, the relay queue carries the ping.
    RelayMigrationPing(RelayMigrationPing),
    /// To DirectConnection: the queued data follows the ping through the relay.
    CarryOverRelay(CarryOverRelay),
    /// To DirectConnection.
    EvictSession(EvictSession),
    /// To Pms.
    PublishEndpointHint(PublishEndpointHint),
    /// To Pms.
    LookupEndpointHint(LookupEndpointHint),
    /// To Rcs (heartbeat fallback poll).
    RelayPoll(RelayPoll),
    /// To the node's event stream.
    StatusChanged(StatusChanged),
    /// A migration started, completed or failed: to the node's event stream and metrics.
    Migration(MigrationEvent),
}

/// A migration's lifecycle as Presence decides it. Presence owns the migration window
/// and the status machine, so it alone says when a migration starts and how it ends;
/// the node reports these events and derives nothing from status changes.
#[derive(Debug, Clone, PartialEq, Eq, actix::Message)]
#[rtype(result = "()")]
pub enum MigrationEvent {
    /// A migration began: this device's network changed (`outbound`), or the peer
    /// announced a move. A further change during a migration does not start another.
    Started {
        /// The peer.
        peer: DeviceId,
        /// Whether this device is the one that moved.
        outbound: bool,
    },
    /// The session is Ready again.
    Completed {
        /// The peer.
        peer: DeviceId,
        /// Whether this device was the one that moved.
        outbound: bool,
        /// From the network change (or the inbound signal) to Ready.
        duration: Duration,
    },
    /// The session was evicted before the migration completed (its window expired, or
    /// the peer reset the session).
    Failed {
        /// The peer.
        peer: DeviceId,
        /// Whether this device was the one that moved.
        outbound: bool,
        /// From the network change (or the inbound signal) to the eviction.
        duration: Duration,
    },
}

/// Why a blueprint was requested: what to do with it when it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// PresenceConnect with a handshake (establishment or recovery).
    Connect,
    /// PresenceConnect with `transport_only` (ReconnectingInbound, path lost).
    TransportOnly,
    /// Migration pings on every candidate (ReconnectingOutbound).
    MigrationPing,
}

/// What is scheduled for a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Scheduled {
    at: Instant,
    purpose: Purpose,
}

/// A migration in progress, on either side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Migration {
    /// The network change (outbound) or the inbound signal.
    started: Instant,
    /// Outbound only: ping rounds sent so far, and when the next is due.
    outbound: Option<PingRounds>,
    /// After our last migration ping: when the relay queue carries it too.
    relay_copy_at: Option<Instant>,
    /// After our last migration ping: when the queued data follows it through the relay.
    carry_at: Option<Instant>,
}

impl Migration {
    fn new(started: Instant, outbound: Option<PingRounds>) -> Self {
        Self {
            started,
            outbound,
            relay_copy_at: None,
            carry_at: None,
        }
    }
}

/// The least wait between the relay copy of a migration ping and the data that follows
/// it: timer slack, so the two do not race.
const CARRY_FLOOR: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PingRounds {
    /// Correlates SendMigrationPing and MigrationAcked.
    request: RequestId,
    sent: u32,
    next: Instant,
}

#[derive(Debug, Default)]
struct Peer {
    status: Option<SessionStatus>,
    session: Option<SessionId>,
    epoch: Option<Epoch>,
    /// The blueprint request we are waiting for, and what it is for.
    pending_blueprint: Option<(RequestId, Purpose)>,
    /// A connect (blueprint or handshake) in flight: counts against the concurrency bound.
    connecting: bool,
    scheduled: Option<Scheduled>,
    /// Consecutive failed connect attempts (backoff exponent).
    attempts: u32,
    migration: Option<Migration>,
    /// Evict when this passes without a path (degraded or migrating).
    deadline: Option<Instant>,
    /// Endpoints the peer last announced (migration ping, ack, or hint).
    announced: Vec<SocketAddr>,
    /// The path the session was last reported Ready on.
    path: Option<PathKind>,
    /// Endpoints a direct path was last tried at while the session ran over the relay
    /// (so each announcement is tried once, not on every report).
    direct_tried: Vec<SocketAddr>,
    /// Smoothed round-trip time of the session's path (from DirectConnection's
    /// samples), which sets how long a migration ping waits for a direct answer.
    srtt_ms: Option<u64>,
}

/// The Presence core. See the crate docs for its messages and states.
#[derive(Debug)]
pub struct Presence {
    config: Config,
    rng: ChaCha8Rng,
    peers: BTreeMap<DeviceId, Peer>,
    local_endpoints: Vec<SocketAddr>,
    next_request: u64,
    next_relay_poll: Instant,
    outputs: VecDeque<Output>,
    /// Transitions the table forbids that inputs asked for (a bug if ever non-zero).
    illegal_transitions: u64,
}

impl Presence {
    /// A core with no peers.
    pub fn new(config: Config, now: Instant) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(config.seed);
        let next_relay_poll = now + config.relay_poll_interval;
        Self {
            config,
            rng,
            peers: BTreeMap::new(),
            local_endpoints: Vec::new(),
            next_request: 1,
            next_relay_poll,
            outputs: VecDeque::new(),
            illegal_transitions: 0,
        }
    }

    /// The current status of a peer, if it is known.
    pub fn status(&self, peer: &DeviceId) -> Option<SessionStatus> {
        self.peers.get(peer).and_then(|p| p.status)
    }

    /// How many forbidden transitions were asked for and refused.
    pub fn illegal_transitions(&self) -> u64 {
        self.illegal_transitions
    }
}

impl SansIoCore for Presence {
    type Input = Input;
    type Output = Output;

    /// Feeds one input.
    fn handle(&mut self, now: Instant, input: Input) {
        match input {
            Input::AddPeer(peer) => self.add_peer(now, peer),
            Input::LocalEndpoints(endpoints) => {
                self.local_endpoints = endpoints;
                self.publish_hints();
            }
            Input::ConnectivityChanged(change) => self.connectivity_changed(now, change),
            Input::BlueprintCompiled(compiled) => self.blueprint_compiled(now, compiled),
            Input::HandshakeStarted(started) => {
                if self.status(&started.peer) == Some(SessionStatus::Connecting) {
                    self.set_status(started.peer, SessionStatus::Handshaking);
                }
            }
            Input::SessionReady(ready) => self.session_ready(now, ready),
            Input::ConnectFailed(failed) => self.connect_failed(now, failed),
            Input::InboundMigrationPing(ping) => self.inbound_migration_ping(now, ping),
            Input::MigrationAcked(acked) => {
                if let Some(peer) = self.peers.get_mut(&acked.peer) {
                    if !acked.peer_endpoints.is_empty() {
                        peer.announced = acked.peer_endpoints;
                    }
                }
            }
            Input::PathLost(lost) => self.path_lost(now, lost.peer),
            Input::PeerReset(reset) => self.evict(now, reset.peer, EvictionReason::PeerReset),
            Input::Liveness(report) => self.liveness(now, report),
            Input::PeerEndpointHint(hint) => self.peer_endpoint_hint(hint),
            Input::PathMeasured(measured) => self.path_measured(measured),
            Input::DirectDialFailed(failed) => {
                // No direct path answers: a migration ping still waiting for one goes to
                // the relay now.
                if let Some(migration) = self
                    .peers
                    .get_mut(&failed.peer)
                    .and_then(|p| p.migration.as_mut())
                {
                    if migration.relay_copy_at.is_some() {
                        migration.relay_copy_at = Some(now);
                    }
                }
            }
        }
    }

    /// Fires whatever is due at `now`. Spurious calls are harmless.
    fn handle_timeout(&mut self, now: Instant) {
        if now >= self.next_relay_poll {
            self.next_relay_poll = now + self.config.relay_poll_interval;
            let request = self.request_id();
            self.outputs
                .push_back(Output::RelayPoll(RelayPoll { request }));
        }
        let ids: Vec<DeviceId> = self.peers.keys().copied().collect();
        for id in &ids {
            self.expire_deadline(now, *id);
        }
        for id in &ids {
            self.run_migration_round(now, *id);
            self.relay_fallback(now, *id);
        }
        self.start_due_attempts(now, &ids);
    }

    /// Next output to deliver.
    fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The next instant at which [`SansIoCore::handle_timeout`] has something to do.
    fn poll_timeout(&self) -> Option<Instant> {
        let mut next = self.next_relay_poll;
        let slots_full = self.peers.values().filter(|p| p.connecting).count()
            >= self.config.max_concurrent_connects;
        for peer in self.peers.values() {
            // A connect waiting for a slot is woken by the input that frees one.
            let waiting = |s: &Scheduled| slots_full && s.purpose == Purpose::Connect;
            let candidates = [
                peer.deadline,
                peer.scheduled.filter(|s| !waiting(s)).map(|s| s.at),
                peer.migration
                    .and_then(|m| m.outbound)
                    .map(|rounds| rounds.next),
                peer.migration.and_then(|m| m.relay_copy_at),
                peer.migration.and_then(|m| m.carry_at),
            ];
            for at in candidates.into_iter().flatten() {
                next = next.min(at);
            }
        }
        Some(next)
    }
}

impl Presence {
    fn request_id(&mut self) -> RequestId {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        id
    }

    fn jitter(&mut self, up_to: Duration) -> Duration {
        let max = u64::try_from(up_to.as_micros()).unwrap_or(u64::MAX);
        if max == 0 {
            return Duration::ZERO;
        }
        Duration::from_micros(self.rng.gen_range(0..max))
    }

    /// Applies a legal transition and reports it; refuses and counts an illegal one.
    fn set_status(&mut self, id: DeviceId, to: SessionStatus) -> bool {
        let Some(peer) = self.peers.get_mut(&id) else {
            return false;
        };
        let from = peer.status;
        if from == Some(to) {
            return true;
        }
        let legal = match from {
            None => to == SessionStatus::Connecting,
            Some(from) => from.can_transition_to(to),
        };
        if !legal {
            self.illegal_transitions += 1;
            return false;
        }
        peer.status = Some(to);
        self.outputs
            .push_back(Output::StatusChanged(StatusChanged { peer: id, from, to }));
        true
    }

    fn add_peer(&mut self, now: Instant, id: DeviceId) {
        if self.peers.contains_key(&id) {
            return;
        }
        self.peers.insert(id, Peer::default());
        self.set_status(id, SessionStatus::Connecting);
        // The rendezvous server answers lookups only to a pair's publishers.
        if !self.local_endpoints.is_empty() {
            let request = self.request_id();
            self.outputs
                .push_back(Output::PublishEndpointHint(PublishEndpointHint {
                    request,
                    peer: id,
                    endpoints: self.local_endpoints.clone(),
                }));
        }
        let spread = self.jitter(self.config.connect_retry_base);
        self.schedule(id, now + spread, Purpose::Connect);
    }

    fn schedule(&mut self, id: DeviceId, at: Instant, purpose: Purpose) {
        if let Some(peer) = self.peers.get_mut(&id) {
            peer.scheduled = Some(Scheduled { at, purpose });
        }
    }

    fn backoff(&mut self, attempts: u32) -> Duration {
        let exponent = attempts.min(16);
        let delay = self
            .config
            .connect_retry_base
            .saturating_mul(1u32 << exponent)
            .min(self.config.connect_retry_max);
        delay / 2 + self.jitter(delay / 2)
    }

    fn request_blueprint(&mut self, id: DeviceId, purpose: Purpose, first: Vec<SocketAddr>) {
        let request = self.request_id();
        if let Some(peer) = self.peers.get_mut(&id) {
            peer.pending_blueprint = Some((request, purpose));
        }
        self.outputs
            .push_back(Output::RecompileBlueprint(RecompileBlueprint {
                request,
                peer: id,
                peer_endpoints_first: first,
            }));
    }

    fn start_due_attempts(&mut self, now: Instant, ids: &[DeviceId]) {
        for id in ids {
            let Some(peer) = self.peers.get(id) else {
                continue;
            };
            let Some(scheduled) = peer.scheduled.filter(|s| s.at <= now) else {
                continue;
            };
            let in_flight = self.peers.values().filter(|p| p.connecting).count();
            if scheduled.purpose == Purpose::Connect
                && in_flight >= self.config.max_concurrent_connects
            {
                // Over the bound: stays due, starts when a slot frees.
                continue;
            }
            let Some(status) = peer.status else {
                continue;
            };
            if !status.allows_presence_connect() {
                // ReconnectingOutbound blocks PresenceConnect: drop the attempt.
                if let Some(peer) = self.peers.get_mut(id) {
                    peer.scheduled = None;
                }
                continue;
            }
            if scheduled.purpose == Purpose::Connect && status == SessionStatus::Evicted {
                self.set_status(*id, SessionStatus::Recovering);
            }
            let announced = self
                .peers
                .get_mut(id)
                .map(|peer| {
                    peer.scheduled = None;
                    peer.connecting |= scheduled.purpose == Purpose::Connect;
                    peer.announced.clone()
                })
                .unwrap_or_default();
            if scheduled.purpose == Purpose::Connect {
                // The configured addresses may be stale: ask the rendezvous server too.
                let request = self.request_id();
                self.outputs
                    .push_back(Output::LookupEndpointHint(LookupEndpointHint {
                        request,
                        peer: *id,
                    }));
            }
            self.request_blueprint(*id, scheduled.purpose, announced);
        }
    }

    fn blueprint_compiled(&mut self, now: Instant, compiled: BlueprintCompiled) {
        let Some(peer) = self.peers.get_mut(&compiled.peer) else {
            return;
        };
        let Some((request, purpose)) = peer.pending_blueprint else {
            return;
        };
        if request != compiled.request {
            return;
        }
        peer.pending_blueprint = None;
        match purpose {
            Purpose::Connect | Purpose::TransportOnly => {
                self.outputs.push_back(Output::ConnectPeer(ConnectPeer {
                    request,
                    peer: compiled.peer,
                    transport_only: purpose == Purpose::TransportOnly,
                    candidates: compiled.candidates,
                }));
            }
            Purpose::MigrationPing => {
                let Some(migration) = peer.migration.as_mut() else {
                    return;
                };
                let Some(rounds) = migration.outbound else {
                    return;
                };
                // The relay copy follows after about one RTT of the old path: long
                // enough for a migrated link to answer first, short enough that a
                // blocked one costs little. The data follows half that later, by when a
                // working direct path has usually answered.
                let cap = self.config.migration_relay_after;
                let relay_after = peer
                    .srtt_ms
                    .map_or(cap, |srtt| {
                        Duration::from_millis(srtt.saturating_mul(3) / 2)
                    })
                    .min(cap);
                migration.relay_copy_at = Some(now + relay_after);
                migration.carry_at = Some(now + relay_after + (relay_after / 2).max(CARRY_FLOOR));
                self.outputs
                    .push_back(Output::SendMigrationPing(SendMigrationPing {
                        request: rounds.request,
                        peer: compiled.peer,
                        new_endpoints: self.local_endpoints.clone(),
                        candidates: compiled.candidates,
                    }));
            }
        }
    }

    fn session_ready(&mut self, now: Instant, ready: SessionReady) {
        let Some(peer) = self.peers.get_mut(&ready.peer) else {
            return;
        };
        let status = peer.status;
        let newer_epoch = peer.epoch.is_some_and(|epoch| ready.epoch > epoch);
        peer.session = Some(ready.session);
        peer.epoch = Some(ready.epoch);
        peer.path = Some(ready.path);
        peer.connecting = false;
        peer.scheduled = None;
        peer.pending_blueprint = None;
        peer.attempts = 0;
        peer.deadline = None;
        let migration = peer.migration.take();
        let established = matches!(
            status,
            Some(
                SessionStatus::Ready
                    | SessionStatus::Degraded
                    | SessionStatus::ReconnectingInbound
                    | SessionStatus::ReconnectingOutbound
            )
        );
        if ready.after_handshake && newer_epoch && established {
            // The peer ran a fresh handshake with us (it restarted or evicted us): our
            // old session is gone, and this is its recovery.
            self.set_status(ready.peer, SessionStatus::Evicted);
            self.set_status(ready.peer, SessionStatus::Recovering);
        }
        if status == Some(SessionStatus::Connecting) && ready.after_handshake {
            self.set_status(ready.peer, SessionStatus::Handshaking);
        }
        if status == Some(SessionStatus::Evicted) {
            // The peer's recovery handshake completed before ours started.
            self.set_status(ready.peer, SessionStatus::Recovering);
        }
        self.set_status(ready.peer, SessionStatus::Ready);
        let untried = self
            .peers
            .get_mut(&ready.peer)
            .filter(|p| p.announced != p.direct_tried)
            .map(|p| {
                p.direct_tried = p.announced.clone();
                p.announced.clone()
            })
            .unwrap_or_default();
        if ready.path == PathKind::Relay && !untried.is_empty() {
            // Ready over the relay while the peer's direct endpoints are known: try them
            // (a transport-only reconnect: no handshake).
            self.request_blueprint(ready.peer, Purpose::TransportOnly, untried);
        }
        if let Some(migration) = migration {
            self.outputs
                .push_back(Output::Migration(MigrationEvent::Completed {
                    peer: ready.peer,
                    outbound: migration.outbound.is_some(),
                    duration: now.saturating_duration_since(migration.started),
                }));
        }
    }

    fn connect_failed(&mut self, now: Instant, failed: ConnectFailed) {
        let Some(peer) = self.peers.get_mut(&failed.peer) else {
            return;
        };
        if peer.status == Some(SessionStatus::Ready) {
            return;
        }
        peer.connecting = false;
        peer.attempts = peer.attempts.saturating_add(1);
        let attempts = peer.attempts;
        let status = peer.status;
        let purpose = if status.is_some_and(SessionStatus::is_migrating)
            || status == Some(SessionStatus::Degraded)
        {
            Purpose::TransportOnly
        } else {
            Purpose::Connect
        };
        if status == Some(SessionStatus::Handshaking) {
            self.set_status(failed.peer, SessionStatus::Connecting);
        }
        if status == Some(SessionStatus::ReconnectingOutbound) {
            // The pings keep going; no connect is ours to retry.
            return;
        }
        let delay = self.backoff(attempts);
        self.schedule(failed.peer, now + delay, purpose);
    }

    fn connectivity_changed(&mut self, now: Instant, change: ConnectivityChanged) {
        self.local_endpoints = change.new;
        let ids: Vec<DeviceId> = self.peers.keys().copied().collect();
        let spread_total = self
            .config
            .first_ping_spread_per_peer
            .saturating_mul(u32::try_from(ids.len()).unwrap_or(u32::MAX))
            .min(MAX_FIRST_PING_SPREAD);
        for id in ids {
            let status = self.status(&id);
            match status {
                Some(SessionStatus::Ready) => {
                    self.set_status(id, SessionStatus::Degraded);
                    self.start_outbound_migration(now, id, spread_total);
                }
                Some(
                    SessionStatus::Degraded
                    | SessionStatus::ReconnectingInbound
                    | SessionStatus::ReconnectingOutbound,
                ) => self.start_outbound_migration(now, id, spread_total),
                Some(
                    SessionStatus::Connecting
                    | SessionStatus::Handshaking
                    | SessionStatus::Evicted
                    | SessionStatus::Recovering,
                ) => {
                    // Not established: our old attempts used the old network.
                    let in_flight = self.peers.get(&id).is_some_and(|p| p.connecting);
                    if !in_flight {
                        self.schedule(id, now, Purpose::Connect);
                    }
                }
                Some(SessionStatus::Closed) | None => {}
            }
        }
        self.publish_hints();
    }

    fn start_outbound_migration(&mut self, now: Instant, id: DeviceId, spread: Duration) {
        self.set_status(id, SessionStatus::ReconnectingOutbound);
        let first_round = now + self.jitter(spread);
        let request = self.request_id();
        let window = self.config.migration_window;
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        peer.scheduled = None;
        peer.pending_blueprint = None;
        peer.deadline = Some(now + window);
        let previous = peer.migration.replace(Migration::new(
            now,
            Some(PingRounds {
                request,
                sent: 0,
                next: first_round,
            }),
        ));
        if previous.is_none() {
            self.outputs
                .push_back(Output::Migration(MigrationEvent::Started {
                    peer: id,
                    outbound: true,
                }));
        }
    }

    /// Migration phase 2 on the migrating device: one round of pings on every candidate,
    /// repeated with a doubling interval until the session is Ready or the window ends.
    fn run_migration_round(&mut self, now: Instant, id: DeviceId) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let Some(rounds) = peer.migration.as_mut().and_then(|m| m.outbound.as_mut()) else {
            return;
        };
        if rounds.next > now {
            return;
        }
        rounds.sent += 1;
        let exponent = (rounds.sent - 1).min(16);
        let interval = self
            .config
            .migration_ping_interval
            .saturating_mul(1u32 << exponent)
            .min(self.config.migration_ping_max_interval);
        rounds.next = now + interval;
        let sent = rounds.sent;
        let announced = peer.announced.clone();
        if sent > 1 {
            // A whole round went unanswered: the peer may have moved too. Ask the
            // rendezvous server where it is now.
            let request = self.request_id();
            self.outputs
                .push_back(Output::LookupEndpointHint(LookupEndpointHint {
                    request,
                    peer: id,
                }));
        }
        self.request_blueprint(id, Purpose::MigrationPing, announced);
    }

    fn inbound_migration_ping(&mut self, now: Instant, ping: InboundMigrationPing) {
        let Some(peer) = self.peers.get_mut(&ping.peer) else {
            return;
        };
        peer.announced = ping.endpoints.clone();
        match peer.status {
            Some(SessionStatus::Ready | SessionStatus::Degraded) => {
                let window = self.config.migration_window;
                peer.deadline = Some(now + window);
                let previous = peer.migration.replace(Migration::new(now, None));
                peer.scheduled = None;
                self.set_status(ping.peer, SessionStatus::ReconnectingInbound);
                if previous.is_none() {
                    self.outputs
                        .push_back(Output::Migration(MigrationEvent::Started {
                            peer: ping.peer,
                            outbound: false,
                        }));
                }
                self.request_blueprint(ping.peer, Purpose::TransportOnly, ping.endpoints);
            }
            Some(SessionStatus::ReconnectingInbound) => {
                // The peer moved again: reconnect towards its newest endpoints.
                self.request_blueprint(ping.peer, Purpose::TransportOnly, ping.endpoints);
            }
            Some(SessionStatus::ReconnectingOutbound) => {
                // Both moved: we now know where the peer is; ping it there. No connect.
                self.request_blueprint(ping.peer, Purpose::MigrationPing, ping.endpoints);
            }
            _ => {}
        }
    }

    fn path_lost(&mut self, now: Instant, id: DeviceId) {
        let Some(status) = self.status(&id) else {
            return;
        };
        if status == SessionStatus::Ready {
            self.set_status(id, SessionStatus::Degraded);
        }
        if matches!(status, SessionStatus::Ready | SessionStatus::Degraded) {
            let window = self.config.migration_window;
            let delay = self.config.path_lost_reconnect_after;
            let jitter = self.jitter(delay);
            if let Some(peer) = self.peers.get_mut(&id) {
                peer.deadline.get_or_insert(now + window);
            }
            self.schedule(id, now + delay + jitter, Purpose::TransportOnly);
        }
        if status == SessionStatus::ReconnectingInbound {
            let delay = self.config.path_lost_reconnect_after;
            self.schedule(id, now + delay, Purpose::TransportOnly);
        }
    }

    fn liveness(&mut self, now: Instant, report: LivenessReport) {
        let Some(status) = self.status(&report.peer) else {
            return;
        };
        match (status, report.alive) {
            (SessionStatus::Ready, false) => {
                self.set_status(report.peer, SessionStatus::Degraded);
                let window = self.config.migration_window;
                if let Some(peer) = self.peers.get_mut(&report.peer) {
                    peer.deadline.get_or_insert(now + window);
                }
                self.schedule(report.peer, now, Purpose::TransportOnly);
            }
            (SessionStatus::Degraded, true) => {
                if let Some(peer) = self.peers.get_mut(&report.peer) {
                    peer.deadline = None;
                    peer.scheduled = None;
                }
                self.set_status(report.peer, SessionStatus::Ready);
            }
            _ => {}
        }
    }

    fn peer_endpoint_hint(&mut self, hint: PeerEndpointHint) {
        let Some(peer) = self.peers.get_mut(&hint.peer) else {
            return;
        };
        if hint.endpoints.is_empty() || peer.announced == hint.endpoints {
            return;
        }
        peer.announced = hint.endpoints.clone();
        match peer.status {
            Some(SessionStatus::ReconnectingOutbound) => {
                self.request_blueprint(hint.peer, Purpose::MigrationPing, hint.endpoints);
            }
            Some(SessionStatus::ReconnectingInbound | SessionStatus::Degraded) => {
                self.request_blueprint(hint.peer, Purpose::TransportOnly, hint.endpoints);
            }
            Some(SessionStatus::Ready) if peer.path == Some(PathKind::Relay) => {
                // Running over the relay: try the hinted direct path (no handshake).
                peer.direct_tried = hint.endpoints.clone();
                self.request_blueprint(hint.peer, Purpose::TransportOnly, hint.endpoints);
            }
            // Otherwise (connecting) the next attempt's blueprint has the hint first; an
            // attempt in flight is not interrupted (it may already be answering).
            _ => {}
        }
    }

    fn expire_deadline(&mut self, now: Instant, id: DeviceId) {
        let Some(peer) = self.peers.get(&id) else {
            return;
        };
        if peer.deadline.is_none_or(|deadline| deadline > now) {
            return;
        }
        let reason = if peer.migration.is_some() {
            EvictionReason::MigrationWindowExpired
        } else {
            EvictionReason::LivenessLost
        };
        self.evict(now, id, reason);
    }

    fn evict(&mut self, now: Instant, id: DeviceId, reason: EvictionReason) {
        let Some(status) = self.status(&id) else {
            return;
        };
        if matches!(status, SessionStatus::Evicted | SessionStatus::Closed) {
            return;
        }
        if !self.set_status(id, SessionStatus::Evicted) {
            return;
        }
        let mut migration = None;
        if let Some(peer) = self.peers.get_mut(&id) {
            peer.deadline = None;
            migration = peer.migration.take();
            // The session's keys and path are gone; a new one is measured afresh.
            peer.srtt_ms = None;
            peer.pending_blueprint = None;
            peer.connecting = false;
            peer.attempts = 0;
        }
        self.outputs
            .push_back(Output::EvictSession(EvictSession { peer: id, reason }));
        if let Some(migration) = migration {
            self.outputs
                .push_back(Output::Migration(MigrationEvent::Failed {
                    peer: id,
                    outbound: migration.outbound.is_some(),
                    duration: now.saturating_duration_since(migration.started),
                }));
        }
        let delay = self.backoff(0);
        self.schedule(id, now + delay, Purpose::Connect);
    }

    /// Our migration ping had no direct answer in time: first the relay queue carries
    /// it, then the queued data follows it (DirectConnection skips either when the ping
    /// was acknowledged meanwhile).
    fn relay_fallback(&mut self, now: Instant, id: DeviceId) {
        let Some(migration) = self.peers.get_mut(&id).and_then(|p| p.migration.as_mut()) else {
            return;
        };
        if migration.relay_copy_at.is_some_and(|at| at <= now) {
            migration.relay_copy_at = None;
            self.outputs
                .push_back(Output::RelayMigrationPing(RelayMigrationPing { peer: id }));
        }
        if migration.carry_at.is_some_and(|at| at <= now) {
            migration.carry_at = None;
            self.outputs
                .push_back(Output::CarryOverRelay(CarryOverRelay { peer: id }));
        }
    }

    /// A round-trip sample of the session's path, smoothed as RFC 6298 does (7/8 old).
    fn path_measured(&mut self, measured: PathMeasured) {
        let (Some(sample), Some(peer)) = (measured.rtt_ms, self.peers.get_mut(&measured.peer))
        else {
            return;
        };
        peer.srtt_ms = Some(peer.srtt_ms.map_or(sample, |srtt| (srtt * 7 + sample) / 8));
    }

    fn publish_hints(&mut self) {
        if self.local_endpoints.is_empty() {
            return;
        }
        let ids: Vec<DeviceId> = self.peers.keys().copied().collect();
        for id in ids {
            let request = self.request_id();
            self.outputs
                .push_back(Output::PublishEndpointHint(PublishEndpointHint {
                    request,
                    peer: id,
                    endpoints: self.local_endpoints.clone(),
                }));
        }
    }
}
