//! The sans-IO Presence core: one [`SessionStatus`] machine per peer, the migration
//! window, migration ping rounds, and connect/recovery scheduling with jitter and a
//! concurrency bound.

mod migration;
mod reachability;

use crate::config::{Config, MAX_FIRST_PING_SPREAD};
use migration::Migration;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use reachability::RetryReason;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tether_protocol::shell::SansIoCore;
use tether_protocol::{
    AllowRekey, CarryOverRelay, ConnectFailed, ConnectPeer, ConnectivityChanged, DeviceId,
    DirectDialFailed, Epoch, EvictSession, EvictionReason, HandshakeStarted, InboundMigrationPing,
    LivenessReport, LookupEndpointHint, PathKind, PathLost, PathMeasured, PeerEndpointsChanged,
    PeerReset, PublishEndpointHint, ReflexiveAddress, RelayMigrationPing, RelayPoll, RequestId,
    ResetReason, SendMigrationPing, SendWaiting, SessionId, SessionReady, SessionStatus,
    StatusChanged, MAX_DIRECT_CANDIDATES,
};

/// What the core is told.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A paired peer: start connecting to it.
    AddPeer(DeviceId),
    /// The device's own endpoints at start.
    LocalEndpoints(Vec<SocketAddr>),
    /// The local network changed (migration phase 1).
    ConnectivityChanged(ConnectivityChanged),
    /// The address the relay sees this device at (None: not connected to it).
    Reflexive(ReflexiveAddress),
    /// DirectConnection started a handshake.
    HandshakeStarted(HandshakeStarted),
    /// DirectConnection bound a session to a path.
    SessionReady(SessionReady),
    /// DirectConnection found no path.
    ConnectFailed(ConnectFailed),
    /// An authenticated migration ping arrived (migration phase 3).
    InboundMigrationPing(InboundMigrationPing),
    /// The bound path went away.
    PathLost(PathLost),
    /// The peer dropped the session.
    PeerReset(PeerReset),
    /// Heartbeat outcome.
    Liveness(LivenessReport),
    /// The peer announced new endpoints (DirectConnection holds them).
    PeerEndpointsChanged(PeerEndpointsChanged),
    /// DirectConnection measured the session's path (its smoothed RTT sets the relay-copy wait).
    PathMeasured(PathMeasured),
    /// A dial to the peer's direct candidates failed: no direct path answers now.
    DirectDialFailed(DirectDialFailed),
    /// A message waits for a session that cannot carry it: retry a backing-off peer now.
    SendWaiting(SendWaiting),
}

/// What the core asks to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
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
    /// To DirectConnection: a rekey may run (the session became Ready) or may not (it
    /// left Ready). Presence owns this decision; DirectConnection owns whether a rekey
    /// is due.
    AllowRekey(AllowRekey),
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

/// What an attempt on a peer does.
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

#[derive(Debug, Default)]
struct Peer {
    status: Option<SessionStatus>,
    session: Option<SessionId>,
    epoch: Option<Epoch>,
    /// A connect in flight: counts against the concurrency bound.
    connecting: bool,
    scheduled: Option<Scheduled>,
    /// Consecutive failed connect attempts (backoff exponent).
    attempts: u32,
    migration: Option<Migration>,
    /// Evict when this passes without a path (degraded or migrating).
    deadline: Option<Instant>,
    /// The path the session was last reported Ready on.
    path: Option<PathKind>,
    /// The peer announced endpoints that no direct attempt from the relay has tried
    /// yet (each announcement is tried once, not on every report).
    untried_announcement: bool,
    /// DirectConnection's smoothed round-trip time of the session's path, as last
    /// reported: it sets how long a migration ping waits for a direct answer.
    srtt_ms: Option<u64>,
    /// When the first of the connect attempts failing in a row failed (the peer is
    /// unreachable since then); cleared when the session is Ready.
    unreachable_since: Option<Instant>,
    /// Its entry in [`Presence::wakes`], as last indexed.
    indexed_wake: Option<Instant>,
    /// Its entry in [`Presence::connects`], as last indexed.
    indexed_connect: Option<Instant>,
    /// Its entry in [`Presence::first_rounds`], as last indexed.
    indexed_first_round: Option<Instant>,
}

impl Peer {
    /// The next instant at which the timeout has something to do for this peer, other
    /// than a connect or a first migration round (which wait for a slot, see
    /// [`Presence::connects`] and [`Presence::first_rounds`]).
    fn next_wake(&self) -> Option<Instant> {
        let candidates = [
            self.deadline,
            self.scheduled
                .filter(|s| s.purpose != Purpose::Connect)
                .map(|s| s.at),
            // A first round waits for a slot (see [`Presence::first_rounds`]); a
            // redirect does not.
            self.migration
                .and_then(|m| m.outbound)
                .and_then(|rounds| rounds.redirect_at),
            self.migration
                .and_then(|m| m.outbound)
                .filter(|rounds| rounds.sent > 0)
                .map(|rounds| rounds.next),
            self.migration.and_then(|m| m.relay_copy_at),
            self.migration.and_then(|m| m.carry_at),
        ];
        candidates.into_iter().flatten().min()
    }

    /// When its outbound migration's first ping round is due, if it waits for one.
    fn first_round_due(&self) -> Option<Instant> {
        self.migration
            .and_then(|m| m.outbound)
            .filter(|rounds| rounds.sent == 0)
            .map(|rounds| rounds.next)
    }

    /// Whether its outbound migration holds a slot: its first round is out, unanswered,
    /// and the second not yet due.
    fn holds_migration_slot(&self) -> bool {
        self.migration
            .and_then(|m| m.outbound)
            .is_some_and(|rounds| rounds.sent == 1)
    }

    /// When its scheduled connect is due, if one is.
    fn connect_due(&self) -> Option<Instant> {
        self.scheduled
            .filter(|s| s.purpose == Purpose::Connect)
            .map(|s| s.at)
    }
}

/// The Presence core. See the crate docs for its messages and states.
#[derive(Debug)]
pub struct Presence {
    config: Config,
    rng: ChaCha8Rng,
    peers: BTreeMap<DeviceId, Peer>,
    local_endpoints: Vec<SocketAddr>,
    /// The address the relay sees this device at, since the last move.
    reflexive: Option<SocketAddr>,
    next_request: u64,
    next_relay_poll: Instant,
    outputs: VecDeque<Output>,
    /// Transitions the table forbids that inputs asked for (a bug if ever non-zero).
    illegal_transitions: u64,
    /// Times the relay saw us at a new address while our interfaces stayed the same.
    nat_rebindings: u64,
    /// Every peer's [`Peer::next_wake`], by instant, so the next deadline and the peers
    /// due are found without a walk over every peer: a node with thousands of sessions
    /// feeds this core an input per heartbeat, and each input ends with
    /// [`SansIoCore::poll_timeout`]. One entry per peer at most.
    wakes: BTreeSet<(Instant, DeviceId)>,
    /// Scheduled connects, by when they are due: they start in that order while fewer
    /// than `max_concurrent_connects` are in flight. One entry per peer at most.
    connects: BTreeSet<(Instant, DeviceId)>,
    /// The peers with a connect in flight (at most `max_concurrent_connects` start).
    in_flight: BTreeSet<DeviceId>,
    /// Outbound migrations whose first ping round waits for a slot, by when it is due:
    /// they start in that order while fewer than `max_concurrent_migrations` hold one.
    /// One entry per peer at most.
    first_rounds: BTreeSet<(Instant, DeviceId)>,
    /// The peers whose migration holds a slot (first round out and unanswered).
    migrating: BTreeSet<DeviceId>,
}

impl Presence {
    /// A core with no peers. `rng_seed` seeds the jitter RNG: from the OS in a
    /// production node, from a test's seed in the simulator.
    pub fn new(config: Config, rng_seed: [u8; 32], now: Instant) -> Self {
        let rng = ChaCha8Rng::from_seed(rng_seed);
        let next_relay_poll = now + config.relay_poll_interval;
        Self {
            config,
            rng,
            peers: BTreeMap::new(),
            local_endpoints: Vec::new(),
            reflexive: None,
            next_request: 1,
            next_relay_poll,
            outputs: VecDeque::new(),
            illegal_transitions: 0,
            nat_rebindings: 0,
            wakes: BTreeSet::new(),
            connects: BTreeSet::new(),
            in_flight: BTreeSet::new(),
            first_rounds: BTreeSet::new(),
            migrating: BTreeSet::new(),
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

    /// How many times the relay saw this device at a new address while its interfaces
    /// stayed the same (a NAT rebinding), each of which migrated every session.
    pub fn nat_rebindings(&self) -> u64 {
        self.nat_rebindings
    }
}

impl SansIoCore for Presence {
    type Input = Input;
    type Output = Output;

    /// Feeds one input. Only the peer it names (or, for a move of this device, every
    /// peer) is touched.
    fn handle(&mut self, now: Instant, input: Input) {
        let touched = input.peer();
        let every_peer = matches!(input, Input::ConnectivityChanged(_) | Input::Reflexive(_));
        match input {
            Input::AddPeer(peer) => self.add_peer(now, peer),
            Input::LocalEndpoints(endpoints) => {
                self.local_endpoints = endpoints;
                self.publish_hints();
            }
            Input::ConnectivityChanged(change) => self.connectivity_changed(now, change),
            Input::Reflexive(ReflexiveAddress { addr }) => self.reflexive_learned(now, addr),
            Input::HandshakeStarted(started) => {
                if self.status(&started.peer) == Some(SessionStatus::Connecting) {
                    self.set_status(started.peer, SessionStatus::Handshaking);
                }
            }
            Input::SessionReady(ready) => self.session_ready(now, ready),
            Input::ConnectFailed(failed) => self.connect_failed(now, failed),
            Input::SendWaiting(waiting) => {
                self.retry_now(now, waiting.peer, RetryReason::SendWaiting);
            }
            Input::InboundMigrationPing(ping) => self.inbound_migration_ping(now, ping),
            Input::PathLost(lost) => self.path_lost(now, lost.peer, &lost.reason),
            Input::PeerReset(reset) if reset.reason == ResetReason::Closed => {
                self.closed_by_peer(now, reset.peer);
            }
            Input::PeerReset(reset) => self.evict(now, reset.peer, EvictionReason::PeerReset),
            Input::Liveness(report) => self.liveness(now, report),
            Input::PeerEndpointsChanged(changed) => self.peer_endpoints_changed(now, changed),
            Input::PathMeasured(measured) => self.path_measured(measured),
            Input::DirectDialFailed(failed) => self.direct_dial_failed(now, failed.peer),
        }
        if every_peer {
            let ids: Vec<DeviceId> = self.peers.keys().copied().collect();
            for id in ids {
                self.reindex(id);
            }
        } else if let Some(id) = touched {
            self.reindex(id);
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
        // Only the peers with something due, in id order.
        let mut due: Vec<DeviceId> = self
            .wakes
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, id)| *id)
            .collect();
        due.sort_unstable();
        for id in &due {
            self.expire_deadline(now, *id);
        }
        for id in &due {
            self.run_migration_round(now, *id, false);
            self.relay_fallback(now, *id);
        }
        self.start_due_attempts(now, &due);
        for id in due {
            self.reindex(id);
        }
        self.start_due_first_rounds(now);
    }

    /// Next output to deliver.
    fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The next instant at which [`SansIoCore::handle_timeout`] has something to do.
    fn poll_timeout(&self) -> Option<Instant> {
        let mut next = self.next_relay_poll;
        if let Some((at, _)) = self.wakes.first() {
            next = next.min(*at);
        }
        // A connect or a first ping round waiting for a slot is woken by the input that
        // frees one.
        if self.in_flight.len() < self.config.max_concurrent_connects {
            if let Some((at, _)) = self.connects.first() {
                next = next.min(*at);
            }
        }
        if self.migrating.len() < self.migration_slots() {
            if let Some((at, _)) = self.first_rounds.first() {
                next = next.min(*at);
            }
        }
        Some(next)
    }
}

/// Moves `id`'s entry in `index` from the instant it was indexed at (`indexed`) to
/// `at` (`None`: no entry), and remembers `at` as indexed.
fn move_entry(
    index: &mut BTreeSet<(Instant, DeviceId)>,
    indexed: &mut Option<Instant>,
    at: Option<Instant>,
    id: DeviceId,
) {
    if *indexed == at {
        return;
    }
    if let Some(old) = indexed.take() {
        index.remove(&(old, id));
    }
    if let Some(at) = at {
        index.insert((at, id));
    }
    *indexed = at;
}

impl Input {
    /// The one peer an input concerns, if it names one.
    fn peer(&self) -> Option<DeviceId> {
        match self {
            Input::AddPeer(peer) => Some(*peer),
            Input::HandshakeStarted(m) => Some(m.peer),
            Input::SessionReady(m) => Some(m.peer),
            Input::ConnectFailed(m) => Some(m.peer),
            Input::InboundMigrationPing(m) => Some(m.peer),
            Input::PathLost(m) => Some(m.peer),
            Input::PeerReset(m) => Some(m.peer),
            Input::Liveness(m) => Some(m.peer),
            Input::PeerEndpointsChanged(m) => Some(m.peer),
            Input::PathMeasured(m) => Some(m.peer),
            Input::DirectDialFailed(m) => Some(m.peer),
            Input::SendWaiting(m) => Some(m.peer),
            Input::LocalEndpoints(_) | Input::ConnectivityChanged(_) | Input::Reflexive(_) => None,
        }
    }
}

impl Presence {
    /// Brings a peer's entries in [`Presence::wakes`], [`Presence::connects`],
    /// [`Presence::in_flight`], [`Presence::first_rounds`] and [`Presence::migrating`] up
    /// to date with its state; called after anything that may have changed it.
    fn reindex(&mut self, id: DeviceId) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let (wake, connect) = (peer.next_wake(), peer.connect_due());
        move_entry(&mut self.wakes, &mut peer.indexed_wake, wake, id);
        move_entry(&mut self.connects, &mut peer.indexed_connect, connect, id);
        let first_round = peer.first_round_due();
        move_entry(
            &mut self.first_rounds,
            &mut peer.indexed_first_round,
            first_round,
            id,
        );
        if peer.connecting {
            self.in_flight.insert(id);
        } else {
            self.in_flight.remove(&id);
        }
        if peer.holds_migration_slot() {
            self.migrating.insert(id);
        } else {
            self.migrating.remove(&id);
        }
    }

    /// How many first migration rounds may be out at once (at least one: with none, no
    /// session could ever migrate).
    pub(super) fn migration_slots(&self) -> usize {
        self.config.max_concurrent_migrations.max(1)
    }

    /// Checks the indexes against every peer's state (tests).
    #[cfg(test)]
    pub(crate) fn check_index(&self) {
        let by_instant = |due: fn(&Peer) -> Option<Instant>| -> BTreeSet<(Instant, DeviceId)> {
            self.peers
                .iter()
                .filter_map(|(id, p)| due(p).map(|at| (at, *id)))
                .collect()
        };
        let those = |holds: fn(&Peer) -> bool| -> BTreeSet<DeviceId> {
            self.peers
                .iter()
                .filter(|(_, p)| holds(p))
                .map(|(id, _)| *id)
                .collect()
        };
        let wakes = by_instant(Peer::next_wake);
        let connects = by_instant(Peer::connect_due);
        let first_rounds = by_instant(Peer::first_round_due);
        let in_flight = those(|p| p.connecting);
        let migrating = those(Peer::holds_migration_slot);
        assert_eq!(
            self.first_rounds, first_rounds,
            "the first-round index is out of date"
        );
        assert_eq!(
            self.migrating, migrating,
            "the migration slots are out of date"
        );
        assert_eq!(self.wakes, wakes, "the wake index is out of date");
        assert_eq!(self.connects, connects, "the connect index is out of date");
        assert_eq!(
            self.in_flight, in_flight,
            "the in-flight set is out of date"
        );
    }

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
        let allowed = to.allows_rekey();
        if from.is_some_and(SessionStatus::allows_rekey) != allowed {
            self.outputs
                .push_back(Output::AllowRekey(AllowRekey { peer: id, allowed }));
        }
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
                    endpoints: self.published_endpoints(),
                }));
        }
        // Spread first connects as first migration pings are: by the number of peers, so
        // a device with one peer connects at once and one with hundreds does not burst.
        let peers = u32::try_from(self.peers.len()).unwrap_or(u32::MAX);
        let spread = self
            .config
            .first_ping_spread_per_peer
            .saturating_mul(peers)
            .min(self.config.connect_retry_base);
        let spread = self.jitter(spread);
        self.schedule(id, now + spread, Purpose::Connect);
    }

    fn schedule(&mut self, id: DeviceId, at: Instant, purpose: Purpose) {
        if let Some(peer) = self.peers.get_mut(&id) {
            peer.scheduled = Some(Scheduled { at, purpose });
        }
    }

    /// Sends what `purpose` asks of DirectConnection now. The candidates are
    /// DirectConnection's: the peer's newest announcement, then ConnectionBlueprint's order.
    fn attempt(&mut self, now: Instant, id: DeviceId, purpose: Purpose) {
        match purpose {
            Purpose::Connect | Purpose::TransportOnly => {
                let request = self.request_id();
                self.outputs.push_back(Output::ConnectPeer(ConnectPeer {
                    request,
                    peer: id,
                    transport_only: purpose == Purpose::TransportOnly,
                }));
            }
            Purpose::MigrationPing => {
                let outbound = self
                    .peers
                    .get(&id)
                    .and_then(|p| p.migration)
                    .is_some_and(|m| m.outbound.is_some());
                if !outbound {
                    return;
                }
                self.arm_relay_fallback(now, id);
                // After a NAT rebinding the reflexive address is the news; after a
                // network change it is not known yet (the relay says it later).
                let new_endpoints = self.published_endpoints();
                self.outputs
                    .push_back(Output::SendMigrationPing(SendMigrationPing {
                        peer: id,
                        new_endpoints,
                    }));
            }
        }
    }

    /// Starts the due attempts: those of the peers in `due` that need no slot (in id
    /// order), then the due connects, earliest first, while slots are free.
    fn start_due_attempts(&mut self, now: Instant, due: &[DeviceId]) {
        for id in due {
            let scheduled = self.peers.get(id).and_then(|p| p.scheduled);
            if scheduled.is_some_and(|s| s.at <= now && s.purpose != Purpose::Connect) {
                self.start_due_attempt(now, *id);
                self.reindex(*id);
            }
        }
        let mut after = None;
        while self.in_flight.len() < self.config.max_concurrent_connects {
            let next = match after {
                None => self.connects.first(),
                Some(key) => self
                    .connects
                    .range((std::ops::Bound::Excluded(key), std::ops::Bound::Unbounded))
                    .next(),
            };
            let Some(&(at, id)) = next else {
                break;
            };
            if at > now {
                break;
            }
            after = Some((at, id));
            self.start_due_attempt(now, id);
            self.reindex(id);
        }
    }

    /// Starts a peer's scheduled attempt, which is due (a connect only when a slot is
    /// free).
    fn start_due_attempt(&mut self, now: Instant, id: DeviceId) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let Some(scheduled) = peer.scheduled.filter(|s| s.at <= now) else {
            return;
        };
        let Some(status) = peer.status else {
            return;
        };
        peer.scheduled = None;
        if !status.allows_presence_connect() {
            // ReconnectingOutbound blocks PresenceConnect: drop the attempt.
            return;
        }
        peer.connecting |= scheduled.purpose == Purpose::Connect;
        if scheduled.purpose == Purpose::Connect && status == SessionStatus::Evicted {
            self.set_status(id, SessionStatus::Recovering);
        }
        if scheduled.purpose == Purpose::Connect {
            // The configured addresses may be stale: ask the rendezvous server too.
            let request = self.request_id();
            self.outputs
                .push_back(Output::LookupEndpointHint(LookupEndpointHint {
                    request,
                    peer: id,
                }));
        }
        self.attempt(now, id, scheduled.purpose);
    }

    fn session_ready(&mut self, now: Instant, ready: SessionReady) {
        let Some(peer) = self.peers.get_mut(&ready.peer) else {
            return;
        };
        if ready.rekey {
            // New keys for the live session: neither a restart nor an eviction. Only the
            // epoch changes; the status, a migration in progress and its deadline stay.
            peer.epoch = Some(ready.epoch);
            return;
        }
        let mut status = peer.status;
        let newer_epoch = peer.epoch.is_some_and(|epoch| ready.epoch > epoch);
        peer.session = Some(ready.session);
        peer.epoch = Some(ready.epoch);
        peer.path = Some(ready.path);
        peer.connecting = false;
        peer.scheduled = None;
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
        if status == Some(SessionStatus::Closed) {
            // The peer that said goodbye is back.
            self.set_status(ready.peer, SessionStatus::Connecting);
            status = Some(SessionStatus::Connecting);
        }
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
        self.reachable_again(now, ready.peer);
        let untried = self
            .peers
            .get_mut(&ready.peer)
            .is_some_and(|p| std::mem::take(&mut p.untried_announcement));
        if ready.path == PathKind::Relay && untried {
            // Ready over the relay while the peer's direct endpoints are known: try them
            // (a transport-only reconnect: no handshake).
            self.attempt(now, ready.peer, Purpose::TransportOnly);
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

    fn path_lost(&mut self, now: Instant, id: DeviceId, reason: &str) {
        let Some(status) = self.status(&id) else {
            return;
        };
        if status == SessionStatus::Ready {
            tracing::debug!(peer = %id, %reason, "session degraded: its path went down");
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
                tracing::debug!(peer = %report.peer, "session degraded: its heartbeats went unanswered");
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

    fn peer_endpoints_changed(&mut self, now: Instant, changed: PeerEndpointsChanged) {
        let Some(peer) = self.peers.get_mut(&changed.peer) else {
            return;
        };
        peer.untried_announcement = true;
        if !changed.hinted {
            // The session itself told us (a migration ping or ack): its own handling
            // follows with InboundMigrationPing or SessionReady.
            return;
        }
        match peer.status {
            Some(SessionStatus::ReconnectingOutbound) => {
                self.attempt(now, changed.peer, Purpose::MigrationPing);
            }
            Some(SessionStatus::ReconnectingInbound | SessionStatus::Degraded) => {
                self.attempt(now, changed.peer, Purpose::TransportOnly);
            }
            Some(SessionStatus::Ready) if peer.path == Some(PathKind::Relay) => {
                // Running over the relay: try the hinted direct path (no handshake).
                peer.untried_announcement = false;
                self.attempt(now, changed.peer, Purpose::TransportOnly);
            }
            // Connecting: a waiting attempt runs at once with the hint first, so both
            // sides dial each other's new addresses at about the same moment (what opens
            // their NATs' filters); an attempt in flight is not interrupted (it may
            // already be answering).
            _ => self.retry_now(now, changed.peer, RetryReason::PeerAnnounced),
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

    /// The peer said goodbye (it stopped on purpose): the session shows Closed at once,
    /// its keys and path are dropped as in an eviction (the queued messages stay), and
    /// nothing is retried: the peer comes back with a handshake of its own.
    fn closed_by_peer(&mut self, now: Instant, id: DeviceId) {
        if !self.set_status(id, SessionStatus::Closed) {
            return;
        }
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        peer.deadline = None;
        peer.scheduled = None;
        peer.connecting = false;
        peer.attempts = 0;
        peer.srtt_ms = None;
        let migration = peer.migration.take();
        tracing::info!(peer = %id, "the peer closed the session");
        self.outputs.push_back(Output::EvictSession(EvictSession {
            peer: id,
            reason: EvictionReason::PeerClosed,
        }));
        if let Some(migration) = migration {
            self.outputs
                .push_back(Output::Migration(MigrationEvent::Failed {
                    peer: id,
                    outbound: migration.outbound.is_some(),
                    duration: now.saturating_duration_since(migration.started),
                }));
        }
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
        tracing::debug!(peer = %id, ?reason, ?status, "session evicted");
        let mut migration = None;
        if let Some(peer) = self.peers.get_mut(&id) {
            peer.deadline = None;
            migration = peer.migration.take();
            // The session's keys and path are gone; a new one is measured afresh.
            peer.srtt_ms = None;
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

    fn publish_hints(&mut self) {
        if self.local_endpoints.is_empty() {
            return;
        }
        let endpoints = self.published_endpoints();
        let ids: Vec<DeviceId> = self.peers.keys().copied().collect();
        for id in ids {
            let request = self.request_id();
            self.outputs
                .push_back(Output::PublishEndpointHint(PublishEndpointHint {
                    request,
                    peer: id,
                    endpoints: endpoints.clone(),
                }));
        }
    }

    /// What a hint and a migration ping announce: the interface addresses, then the
    /// reflexive address.
    fn published_endpoints(&self) -> Vec<SocketAddr> {
        let mut endpoints = self.local_endpoints.clone();
        if let Some(reflexive) = self.reflexive.filter(|r| !endpoints.contains(r)) {
            endpoints.push(reflexive);
        }
        endpoints.truncate(MAX_DIRECT_CANDIDATES);
        endpoints
    }
}
