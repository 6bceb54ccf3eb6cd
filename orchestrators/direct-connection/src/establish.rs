//! Establishment: PresenceConnect (with a handshake, or transport-only), the Noise
//! handshake in both roles, the commit of a new generation, and eviction.
//!
//! This is the only module that runs a handshake, and [`DirectConnection::send_initiation`]
//! does nothing unless the connect holds an [`EstablishmentPermit`], which only an
//! establishment PresenceConnect creates.

use crate::core::{DirectConnection, Output};
use crate::links::DialPurpose;
use crate::state::{Connect, EstablishmentPermit, Heartbeat, Reported, Via};
use crate::timers::Timer;
use std::net::SocketAddr;
use std::time::Instant;
use tether_crypto::{Handshake, HandshakeError, HandshakePurpose, RingError};
use tether_protocol::{
    ConnectFailed, ConnectPeer, DeviceId, EvictSession, HandshakeMessage, HandshakeStarted,
    SessionFrame, SessionReady, WireFrame,
};

/// The timers of a connect in progress.
const CONNECT_TIMERS: [Timer; 3] = [
    Timer::ConnectDeadline,
    Timer::ConnectRelay,
    Timer::HandshakeRetry,
];

impl DirectConnection {
    /// PresenceConnect.
    pub(crate) fn connect(&mut self, now: Instant, request: ConnectPeer) {
        // Presence's request comes first: a rekey in flight gives way.
        self.abandon_rekey(request.peer);
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
            Some(EstablishmentPermit(HandshakePurpose::Establish))
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
        let addrs = self.direct_candidates(device);
        // The relay is always a candidate, last: at once when no direct one is known.
        let relay_at = if addrs.is_empty() {
            now
        } else {
            now + self.limits.relay_fallback_after
        };
        // A link that already works is tried at once: for a transport-only reconnect the
        // validated bound link first (its fresh answer completes the reconnect, and no
        // other link's answer would replace it), else the newest validated link (one the
        // peer dialled to us).
        let bound = self.peers.get(&device).and_then(|p| match p.bound {
            Some(Via::Link(link)) if permit.is_none() && self.links.is_validated(link) => {
                Some(link)
            }
            _ => None,
        });
        let existing = bound.or_else(|| self.links.live_of(device));
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        peer.connect = Some(Connect {
            request: request.request,
            permit,
            via: None,
            waiting_for_relay: false,
        });
        self.timers.set(
            device,
            Timer::ConnectDeadline,
            now + self.limits.connect_timeout,
        );
        self.timers.set(device, Timer::ConnectRelay, relay_at);
        self.timers.stop(device, Timer::HandshakeRetry);
        if !addrs.is_empty() {
            self.dial(device, DialPurpose::Connect, addrs);
        }
        if let Some(link) = existing {
            self.connect_on(now, device, Via::Link(link));
        }
    }

    /// Runs the connect's next step on a path that just became available.
    pub(crate) fn connect_on(&mut self, now: Instant, device: DeviceId, via: Via) {
        let Some(connect) = self.peers.get_mut(&device).and_then(|p| p.connect.as_mut()) else {
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

    /// The rendezvous hint came while a connect tries its direct candidates (before the
    /// relay's turn): dial the addresses it adds at once, each on its own, rather than
    /// after the candidates dialled before it. Behind a NAT the hint holds the peer's
    /// reflexive address, which no configured address reaches; the peer does the same
    /// with ours, so both NATs open within about one relay round trip.
    ///
    /// A hint the server pushed (`pushed`: the peer just connected or published, so it
    /// is on the relay now) also gives the relay its turn at once: message 1 reaches
    /// the peer through the relay while the dials are in flight, and the peer answers
    /// on the direct link its own dial opens ([`Self::handshake_init`]), so the session
    /// is Ready on the direct path a round trip sooner than a handshake that waits for
    /// a link.
    pub(crate) fn hinted_during_connect(
        &mut self,
        now: Instant,
        device: DeviceId,
        known: &[SocketAddr],
        pushed: bool,
    ) {
        let direct_phase = self
            .peers
            .get(&device)
            .and_then(|p| p.connect.as_ref())
            .is_some_and(|c| c.via.is_none() && c.permit.is_some());
        if !direct_phase {
            return;
        }
        for addr in self.direct_candidates(device) {
            if !known.contains(&addr) {
                self.dial(device, DialPurpose::Connect, vec![addr]);
            }
        }
        if pushed && self.relay_connected {
            self.timers.stop(device, Timer::ConnectRelay);
            self.connect_relay_due(now, device);
        }
    }

    /// Sends a fresh handshake message 1 on the connect's path. Only reachable with the
    /// connect's [`EstablishmentPermit`]: a transport-only connect has none.
    pub(crate) fn send_initiation(&mut self, now: Instant, device: DeviceId) {
        let wall_ms = self.wall_ms(now);
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        let Some(connect) = peer.connect.as_mut() else {
            return;
        };
        let (Some(permit), Some(via)) = (connect.permit.as_ref(), connect.via) else {
            return;
        };
        let purpose = permit.purpose();
        let request = connect.request;
        // A rekey follows the session's path if it moved meanwhile (a validated link
        // replaced the bound one).
        let via = match (purpose, peer.bound) {
            (HandshakePurpose::Rekey, Some(bound)) => bound,
            _ => via,
        };
        self.timers.set(
            device,
            Timer::HandshakeRetry,
            now + self.limits.handshake_retry,
        );
        let message1 = match peer
            .ring
            .initiate_for(purpose, &self.local, wall_ms, &mut self.rng)
        {
            Ok(message1) => message1,
            Err(error) => {
                tracing::warn!(peer = %device, %error, "cannot start a handshake");
                return;
            }
        };
        peer.handshake_attempts += 1;
        let frame = WireFrame::HandshakeInit(HandshakeMessage {
            session: peer.session,
            noise: message1,
        });
        self.deliver_wire(device, via, &frame);
        if purpose == HandshakePurpose::Rekey {
            // Not a Presence request: the session stays Ready throughout.
            return;
        }
        self.outputs
            .push_back(Output::HandshakeStarted(HandshakeStarted {
                request: Some(request),
                peer: device,
            }));
    }

    /// No path answered the connect in time.
    pub(crate) fn connect_deadline(&mut self, now: Instant, device: DeviceId) {
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        let Some(connect) = peer.connect.take() else {
            return;
        };
        if connect.is_rekey() {
            self.end_connect(device);
            self.rekey_failed(now, device);
            return;
        }
        if connect.permit.is_some() {
            peer.counters.handshake_timeouts += 1;
        } else {
            peer.counters.reconnect_timeouts += 1;
        }
        self.end_connect(device);
        self.outputs.push_back(Output::ConnectFailed(ConnectFailed {
            request: connect.request,
            peer: device,
            reason: "no path answered in time".into(),
        }));
    }

    /// The relay's turn in a connect that no direct path completed.
    pub(crate) fn connect_relay_due(&mut self, now: Instant, device: DeviceId) {
        let Some(connect) = self.peers.get_mut(&device).and_then(|p| p.connect.as_mut()) else {
            return;
        };
        if !self.relay_connected {
            // The relay is not up yet: its turn comes when it is (`relay_up`), or after
            // another fallback interval.
            connect.waiting_for_relay = true;
            self.timers.set(
                device,
                Timer::ConnectRelay,
                now + self.limits.relay_fallback_after,
            );
            return;
        }
        connect.waiting_for_relay = false;
        // No direct path completed the connect in time (it would be gone): the relay
        // carries it from now on; a direct path that answers later still wins.
        connect.via = None;
        self.connect_on(now, device, Via::Relay);
    }

    /// The relay connection is up: connects whose relay turn came while it was down run
    /// on it now, not a fallback interval later.
    pub(crate) fn relay_up(&mut self, now: Instant) {
        let waiting: Vec<DeviceId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.connect.as_ref().is_some_and(|c| c.waiting_for_relay))
            .map(|(id, _)| *id)
            .collect();
        for device in waiting {
            self.timers.stop(device, Timer::ConnectRelay);
            self.connect_relay_due(now, device);
        }
    }

    /// The connect is over (done or failed): its timers go with it.
    pub(crate) fn end_connect(&mut self, device: DeviceId) {
        for timer in CONNECT_TIMERS {
            self.timers.stop(device, timer);
        }
    }

    /// Takes the connect a path or a commit completed.
    pub(crate) fn take_connect(&mut self, device: DeviceId) -> Option<Connect> {
        let connect = self.peers.get_mut(&device)?.connect.take()?;
        self.end_connect(device);
        Some(connect)
    }

    /// Our own migration is over (answered, superseded by a handshake, or evicted).
    pub(crate) fn end_migration(&mut self, device: DeviceId) {
        if let Some(peer) = self.peers.get_mut(&device) {
            peer.migration = None;
        }
    }

    /// Drops the session's keys and path (queued messages are kept).
    pub(crate) fn evict(&mut self, evict: EvictSession) {
        let device = evict.peer;
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        peer.evicted_at_epoch = peer.ring.committed_epoch();
        peer.bound = None;
        peer.connect = None;
        peer.reported = None;
        peer.heartbeat = Heartbeat::default();
        self.end_connect(device);
        self.end_migration(device);
        self.timers.stop(device, Timer::Heartbeat);
        self.timers.stop(device, Timer::Retransmit);
    }

    /// Handshake message 1 from a device that may be one of our peers.
    pub(crate) fn handshake_init(
        &mut self,
        now: Instant,
        via: Via,
        relay_from: Option<DeviceId>,
        message: HandshakeMessage,
        wire_len: u64,
    ) -> Option<DeviceId> {
        // Cheap checks before the two Diffie-Hellman operations of a response: the
        // initiation must name the session of one of our pairs (an id only paired
        // devices derive, though it is visible on the wire), and that session must have
        // budget left, so replaying a seen initiation cannot make us compute at will.
        let Some(&claimed) = self.by_session.get(&message.session) else {
            self.counters.unknown_device_handshakes += 1;
            return None;
        };
        let within_budget = self
            .peers
            .get_mut(&claimed)
            .is_some_and(|peer| peer.initiation_budget.take(now));
        if !within_budget {
            self.counters.rate_limited_initiations += 1;
            return None;
        }
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
                return None;
            }
            Err(HandshakeError::ReplayedInitiation { .. }) => {
                self.counters.replayed_initiations += 1;
                return None;
            }
            Err(error) => {
                tracing::debug!(%error, "refused handshake initiation");
                self.counters.refused_handshakes += 1;
                return None;
            }
        };
        let device = DeviceId(*responded.peer.as_bytes());
        if !self.sender_matches(via, relay_from, device) {
            return None;
        }
        let peer = self.peers.get_mut(&device)?;
        if message.session != peer.session {
            self.counters.refused_handshakes += 1;
            return None;
        }
        let epoch_raised = responded.epoch_raised;
        let proposed = responded.payload.epoch;
        if responded.payload.purpose == HandshakePurpose::Rekey && !peer.rekey.allowed {
            // A rekey never runs while this side is not Ready (migrating, degraded):
            // unanswered, it changes nothing here, and the peer tries again later.
            peer.counters.rekeys_refused += 1;
            tracing::debug!(peer = %device, "rekey not answered: the session is not Ready here");
            return None;
        }
        let message2 = match peer.ring.accept(responded) {
            Ok(message2) => message2,
            Err(error) => {
                tracing::debug!(peer = %device, %error, "refused handshake");
                self.counters.refused_handshakes += 1;
                return None;
            }
        };
        peer.handshake_attempts += 1;
        let session = peer.session;
        let committed = peer.ring.committed_epoch();
        self.credit_link(via, wire_len);
        if epoch_raised {
            // The peer proposed an epoch we are past: it lost the session we hold (it
            // restarted), or this is a late or replayed initiation. Nothing changes until
            // a frame under the new keys opens (`committed`); only that frame, which needs
            // the initiator's ephemeral key, claims and validates this link.
            tracing::debug!(
                peer = %device,
                proposed,
                ?committed,
                "answering a handshake for an epoch we are past, with a raised epoch"
            );
        } else if let Via::Link(link) = via {
            // The initiator proved its static key and the relationship key, fresh.
            self.links.attribute(link, device);
            self.links.validate(link);
        }
        let response = WireFrame::HandshakeResponse(HandshakeMessage {
            session,
            noise: message2,
        });
        self.deliver_wire(device, via, &response);
        // An initiation through the relay is also answered on a direct link to the peer
        // if one is up (one this device dialled, or one the peer proved is its own):
        // the initiator then finishes on the direct path. The relay copy covers a link
        // that is up here but no longer reaches the peer.
        if let Some(direct) = self.direct_beside(device, via) {
            self.deliver_wire(device, direct, &response);
        }
        Some(device)
    }

    /// Handshake message 2: our candidate becomes sendable, and the first frame under
    /// it lets the responder commit.
    pub(crate) fn handshake_response(
        &mut self,
        now: Instant,
        via: Via,
        relay_from: Option<DeviceId>,
        message: HandshakeMessage,
        wire_len: u64,
    ) -> Option<DeviceId> {
        let device = self.session_peer(message.session, via, relay_from)?;
        let peer = self.peers.get_mut(&device)?;
        match peer.ring.confirm(&message.noise) {
            Ok(_) => {}
            Err(RingError::NoPendingInitiation) => {
                // The second copy of an answer sent on two paths, or an answer to an
                // initiation a retry replaced: nothing to do.
                self.counters.unmatched_handshake_responses += 1;
                return None;
            }
            Err(error) => {
                tracing::debug!(peer = %device, %error, "refused handshake response");
                self.counters.refused_handshakes += 1;
                return None;
            }
        }
        self.credit_link(via, wire_len);
        if let Via::Link(link) = via {
            // An answer to an initiation sent through the relay may come on a link the
            // peer dialled to us. It proves the peer's static key and is bound to our
            // ephemeral key, as an initiation proves the initiator's on the link it
            // comes on (`handshake_init` validates that one): the link is the peer's.
            // Someone who saw the answer on the way (a relay could carry the peer's
            // copy onto a link of its own, as it could any sealed frame) gets only our
            // first frame under the new keys, which only the peer can answer: the
            // session commits where the peer's answer comes from.
            self.links.attribute(link, device);
            self.links.validate(link);
        }
        let direct = self.direct_beside(device, via);
        let peer = self.peers.get_mut(&device)?;
        if let Some(connect) = peer.connect.as_mut() {
            connect.via = Some(via);
            self.timers.stop(device, Timer::HandshakeRetry);
        }
        // The first frame under the new keys lets the responder commit them; its answer
        // lets us commit.
        peer.heartbeat.next_id += 1;
        let id = peer.heartbeat.next_id;
        peer.heartbeat.sent(id, now, self.limits.missed_heartbeats);
        self.send_frame(device, via, &SessionFrame::Ping { id });
        // Through the relay while a direct link is up: the frame goes direct too, and
        // the responder commits on the direct path.
        if let Some(direct) = direct {
            self.send_frame(device, direct, &SessionFrame::Ping { id });
        }
        Some(device)
    }

    /// A direct link to `device` to carry a handshake step that came through the relay
    /// (`via`) a second time: the newest validated one, if any.
    fn direct_beside(&self, device: DeviceId, via: Via) -> Option<Via> {
        match via {
            Via::Relay => self.links.live_of(device).map(Via::Link),
            Via::Link(_) => None,
        }
    }

    /// A new generation was committed (a handshake completed on this side).
    /// `epoch_raised`: its responder raised the epoch, so one side had restarted and lost
    /// the session the other held; this commit ends that. A rekey of a session that is
    /// live here (reported, not evicted, not raised) changes only the keys
    /// ([`Self::rekey_committed`]).
    pub(crate) fn committed(
        &mut self,
        now: Instant,
        device: DeviceId,
        via: Via,
        epoch: u64,
        epoch_raised: bool,
        purpose: HandshakePurpose,
    ) {
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        let live = peer.reported.is_some() && peer.evicted_at_epoch.is_none();
        if purpose == HandshakePurpose::Rekey && !epoch_raised && live {
            self.rekey_committed(now, device, via, epoch);
            return;
        }
        if epoch_raised {
            peer.counters.restart_handshakes += 1;
            tracing::info!(
                peer = %device,
                epoch,
                "back in session after a restart: a new handshake above the lost session"
            );
        }
        if let Via::Link(link) = via {
            // The frame that committed came under keys only the two ends of this
            // handshake hold: the link it came on is the peer's. (Its messages may
            // have gone through the relay, so nothing else validated it.)
            self.links.attribute(link, device);
            self.links.validate(link);
        }
        let newer = peer.reported.is_none_or(|r| epoch > r.epoch);
        if !newer {
            return;
        }
        peer.evicted_at_epoch = None;
        peer.generations += 1;
        self.end_migration(device);
        self.generation_started(now, device);
        // The handshake's path is the session's path from now on.
        let request = self
            .take_connect(device)
            .filter(|c| !c.is_rekey())
            .map(|c| c.request);
        let remote = self.remote_of(via);
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        let session = peer.session;
        peer.bound = Some(via);
        peer.resend_all = true;
        let report = Reported::new(epoch, via, remote);
        peer.reported = Some(report);
        self.timers.set(
            device,
            Timer::Heartbeat,
            now + self.limits.heartbeat_interval,
        );
        // Migration ping counters belong to an epoch (the tag binds it).
        peer.ping_counter_sent = 0;
        peer.highest_ping_received = 0;
        self.timers
            .set_or_stop(device, Timer::Probe, (via == Via::Relay).then_some(now));
        self.outputs.push_back(Output::SessionReady(SessionReady {
            request,
            peer: device,
            session,
            epoch: tether_protocol::Epoch(epoch),
            path: report.path,
            remote,
            after_handshake: true,
            rekey: false,
        }));
        // Answer at once so the initiator commits the same generation.
        peer.heartbeat.next_id += 1;
        let id = peer.heartbeat.next_id;
        self.send_frame(device, via, &SessionFrame::Ping { id });
        // A new epoch may follow a restart of either side: line the channels up.
        self.send_markers(device, via);
        self.pump(now, device);
        match (via, remote) {
            (Via::Link(link), Some(remote)) => self.ensure_standby(device, link, remote),
            // On the relay: tell the peer where we can be reached directly.
            (Via::Relay, _) => self.send_candidates(now, device),
            (Via::Link(_), None) => {}
        }
    }
}
