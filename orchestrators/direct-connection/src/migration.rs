//! Migration, in both roles, and the paths it leans on.
//!
//! - The moving side (phase 2): padding and the ping on every link and every direct
//!   candidate; when Presence says so (its timers: about one RTT without an answer),
//!   the relay-queue copy and then the queued data through the relay; then the
//!   acknowledgement.
//! - The receiving side (phase 3): PeerSecret resolution of the ping, the replay check
//!   by counter, the acknowledgement on the path the ping came by, and the data carried
//!   to the peer's new address within the anti-amplification budget.
//! - While on the relay, direct addresses are probed; next to a link the peer dialled,
//!   a standby link of our own is kept for our next move.

use crate::core::{DirectConnection, Output};
use crate::links::DialPurpose;
use crate::state::{OutMigration, Via};
use crate::timers::Timer;
use std::net::SocketAddr;
use std::time::Instant;
use tether_crypto::MigrationTag;
use tether_protocol::{
    canonical_endpoints, Candidate, CandidateSource, DeviceId, Endpoint, InboundMigrationPing,
    LinkId, MigrationAck, MigrationPing, PeerAnnounced, PeerEndpointHint, PeerEndpointsChanged,
    RelayEnqueue, SendMigrationPing, SessionFrame, MAX_DIRECT_CANDIDATES,
};

/// Filler sent after a migration ping on a migrated link. The peer's QUIC stack may send
/// our new address three times what it received from it until the address validates;
/// its path challenge takes 1200 bytes of that, its first MTU probe on the new path up
/// to 1452, and every packet it sends meanwhile is padded to 1200 bytes. A ping and a
/// few small packets buy less than that, so the peer's acknowledgement would wait a
/// round trip; 2400 bytes more buy the challenge, the probe and the answer.
const MIGRATION_PADDING_LEN: usize = 2400;

/// The direct addresses among a blueprint's candidates, in order.
pub(crate) fn direct_addrs(candidates: &[Candidate]) -> Vec<SocketAddr> {
    candidates
        .iter()
        .filter_map(|c| match c.endpoint {
            Endpoint::Direct(addr) => Some(addr),
            Endpoint::Relay => None,
        })
        .collect()
}

impl DirectConnection {
    /// Where to reach the peer directly, best first: its newest announcement, then
    /// ConnectionBlueprint's order (which ranks that announcement first too once it has
    /// it), at most [`MAX_DIRECT_CANDIDATES`].
    pub(crate) fn direct_candidates(&self, device: DeviceId) -> Vec<SocketAddr> {
        let Some(peer) = self.peers.get(&device) else {
            return Vec::new();
        };
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for addr in peer.announced.iter().chain(&peer.blueprint) {
            if addrs.len() < MAX_DIRECT_CANDIDATES && !addrs.contains(addr) {
                addrs.push(*addr);
            }
        }
        addrs
    }

    /// The peer said where it is (an authenticated ping or ack, or a hint). A new,
    /// non-empty announcement replaces the last one and is passed on: to
    /// ConnectionBlueprint to rank, to Presence to decide on a direct attempt.
    pub(crate) fn peer_announced(
        &mut self,
        now: Instant,
        device: DeviceId,
        endpoints: Vec<SocketAddr>,
        source: CandidateSource,
    ) {
        let wall_ms = self.wall_ms(now);
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        if source == CandidateSource::LearnedFromPeer {
            peer.heard_from_peer_at_ms = Some(wall_ms);
        }
        if endpoints.is_empty() || peer.announced == endpoints {
            return;
        }
        peer.announced.clone_from(&endpoints);
        self.outputs.push_back(Output::PeerAnnounced(PeerAnnounced {
            peer: device,
            endpoints,
            source,
        }));
        self.outputs
            .push_back(Output::PeerEndpointsChanged(PeerEndpointsChanged {
                peer: device,
                hinted: source == CandidateSource::Rendezvous,
            }));
    }

    /// The rendezvous server's answer about the peer. A hint sealed before the peer last
    /// told us itself where it is must not replace what it told us: after a move the
    /// server may still hold its previous network's addresses. (The two devices'
    /// clocks are compared: a peer whose clock is behind ours by a few seconds has its
    /// fresh hints ignored for those seconds after it last spoke.)
    pub(crate) fn hint_received(&mut self, now: Instant, hint: PeerEndpointHint) {
        let heard_at = self
            .peers
            .get(&hint.peer)
            .and_then(|p| p.heard_from_peer_at_ms);
        if heard_at.is_some_and(|at| hint.issued_at_ms < at) {
            self.counters.stale_hints += 1;
            return;
        }
        let before = self.direct_candidates(hint.peer);
        let pushed = hint.request.is_none();
        self.peer_announced(now, hint.peer, hint.endpoints, CandidateSource::Rendezvous);
        self.hinted_during_connect(now, hint.peer, &before, pushed);
    }

    /// Migration phase 2: this device moved; announce its new endpoints.
    pub(crate) fn send_migration_ping(&mut self, now: Instant, request: SendMigrationPing) {
        let device = request.peer;
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        let Some(epoch) = peer.ring.committed_epoch() else {
            return;
        };
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
            ping: ping.clone(),
            started: now,
            acked: false,
        });
        // Every link the session keeps (the bound link and the standbys: a link we
        // dialled survives the move by QUIC migration), then every direct candidate,
        // then (when Presence says so) the relay queue. Spare links the lifecycle is
        // about to close would only multiply the ping, its answers and their challenges.
        for link in self.needed_links(device) {
            // The filler first: when the ping arrives, the peer's answer is already
            // within the budget the filler bought. Only a link we dialled moves with us
            // (QUIC migration); one the peer dialled keeps its path or is dead, and
            // either way the peer has no new address to limit its answer to.
            let dialled = self.links.get(link).is_some_and(|l| l.dialled);
            if dialled {
                self.send_frame(
                    device,
                    Via::Link(link),
                    &SessionFrame::Padding {
                        bytes: vec![0; MIGRATION_PADDING_LEN],
                    },
                );
            }
            self.send_frame(
                device,
                Via::Link(link),
                &SessionFrame::MigrationPing(ping.clone()),
            );
        }
        // An address a link we dialled already reaches needs no new dial: that link
        // moved with us (QUIC migration) and carries the ping there.
        let reached: Vec<SocketAddr> = self
            .links
            .of_peer(device)
            .into_iter()
            .filter_map(|link| self.links.get(link))
            .filter(|l| l.dialled)
            .filter_map(|l| l.remote)
            .collect();
        let to_dial: Vec<SocketAddr> = self
            .direct_candidates(device)
            .into_iter()
            .filter(|addr| !reached.contains(addr))
            .collect();
        if !to_dial.is_empty() {
            self.dial(device, DialPurpose::Migration, to_dial);
        }
    }

    /// A link dialled for our migration came up: the ping goes on it.
    pub(crate) fn migration_link_up(&mut self, device: DeviceId, link: LinkId) {
        let ping = self
            .peers
            .get(&device)
            .and_then(|p| p.migration.as_ref())
            .map(|m| m.ping.clone());
        if let Some(ping) = ping {
            self.send_frame(device, Via::Link(link), &SessionFrame::MigrationPing(ping));
        }
    }

    /// Presence's word that no direct path answered in time: unless the ping was
    /// acknowledged meanwhile, the relay queue carries it too. It pushes at once to a
    /// connected peer and keeps the ping for one that is offline; the peer dedupes copies
    /// by counter.
    pub(crate) fn migration_relay_copy(&mut self, device: DeviceId) {
        let Some(migration) = self.peers.get(&device).and_then(|p| p.migration.as_ref()) else {
            return;
        };
        if migration.acked {
            return;
        }
        let ping = SessionFrame::MigrationPing(migration.ping.clone());
        let Some(envelope) = self.seal_wire(device, &ping) else {
            return;
        };
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

    /// Presence's word that the data should follow the relay copy: unless the ping was
    /// acknowledged or a direct link has answered since we moved, the queued messages
    /// go through the relay rather than wait for the acknowledgement (the receiver
    /// dedupes whatever the direct path delivers too). Not reported as Ready: that waits
    /// for the peer.
    pub(crate) fn migration_carry(&mut self, now: Instant, device: DeviceId) {
        let Some(migration) = self.peers.get(&device).and_then(|p| p.migration.as_ref()) else {
            return;
        };
        let unanswered = !migration.acked
            && !self
                .links
                .answered_directly_since(device, migration.started);
        if unanswered && self.relay_connected {
            self.carry(now, device, Via::Relay);
        }
    }

    /// While the session runs over the relay, dial the peer's direct addresses now and
    /// then; a link that answers a path challenge replaces the relay.
    pub(crate) fn probe(&mut self, now: Instant, device: DeviceId) {
        let Some(peer) = self.peers.get(&device) else {
            return;
        };
        if peer.bound != Some(Via::Relay) {
            return;
        }
        self.dial_every_candidate(now, device);
    }

    /// Bound to a link the peer dialled: dial one of our own to the same address, so a
    /// change of our address finds a link QUIC migrates (the accepted one dies with
    /// our old address, and a fresh dial would cost the migration a round trip). A link
    /// we dialled to another address does not count: after the peer moved, the one to
    /// its old address is dead (its new address came with the link it dialled, which
    /// QUIC migrated). A dial to the address already in flight (a reconnect's) will do.
    pub(crate) fn ensure_standby(&mut self, device: DeviceId, bound: LinkId, remote: SocketAddr) {
        let accepted = self.links.get(bound).is_some_and(|l| !l.dialled);
        if accepted
            && !self.links.has_dialled(device, remote)
            && !self.links.dialling_to(device, remote)
        {
            self.dial(device, DialPurpose::Standby, vec![remote]);
        }
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
        self.timers
            .set_or_stop(device, Timer::Probe, (via == Via::Relay).then_some(now));
        self.send_markers(device, via);
        self.pump(now, device);
    }

    /// Migration phase 3 on the receiving device: PeerSecret resolution, the replay
    /// check by counter, then the ack and a challenge of the new path.
    pub(crate) fn inbound_migration_ping(
        &mut self,
        now: Instant,
        device: DeviceId,
        via: Via,
        ping: MigrationPing,
    ) {
        let own_candidates = self.own_candidates();
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        let canonical = canonical_endpoints(&ping.endpoints);
        let verified = peer.ring.resolve_migration_tag(
            peer.session.as_bytes(),
            ping.counter,
            &canonical,
            &MigrationTag(ping.tag),
        );
        if verified.is_none() {
            tracing::debug!(peer = %device, counter = ping.counter, "migration ping refused: its tag does not verify");
            self.counters.bad_migration_tags += 1;
            return;
        }
        // A ping of an older epoch predates the last handshake (e.g. queued at the relay
        // before an eviction): the move it announced is over. Counters restart per epoch.
        let current_epoch = peer.ring.committed_epoch().unwrap_or(0);
        if ping.epoch.0 < current_epoch || ping.counter < peer.highest_ping_received {
            tracing::debug!(
                peer = %device,
                epoch = ping.epoch.0,
                current_epoch,
                counter = ping.counter,
                highest = peer.highest_ping_received,
                "migration ping ignored: older than one already seen"
            );
            self.counters.stale_migration_pings += 1;
            return;
        }
        let first_copy = ping.counter > peer.highest_ping_received;
        let ack = SessionFrame::MigrationAck(MigrationAck {
            epoch: ping.epoch,
            counter: ping.counter,
            endpoints: own_candidates,
        });
        let stale_bound = match peer.bound {
            Some(Via::Link(link)) => self
                .links
                .remote(link)
                .is_none_or(|remote| !ping.endpoints.contains(&remote)),
            _ => false,
        };
        if first_copy {
            if stale_bound {
                // The peer left the address this link goes to: it carries nothing now.
                peer.bound = None;
            } else if peer.bound == Some(via) && via != Via::Relay {
                // The peer moved under the bound link: what we sent towards its old
                // address is lost, and the transport dropped that stream for a fresh
                // one. Resend what is unacknowledged (the peer drops duplicates).
                peer.resend_all = true;
            }
            peer.highest_ping_received = ping.counter;
            if peer.bound == Some(Via::Relay) {
                // New direct endpoints while on the relay: probe them now.
                peer.probe_rounds = 0;
                self.timers.set(device, Timer::Probe, now);
            }
            let session = peer.session;
            self.peer_announced(
                now,
                device,
                ping.endpoints,
                CandidateSource::LearnedFromPeer,
            );
            self.outputs
                .push_back(Output::InboundMigrationPing(InboundMigrationPing {
                    peer: device,
                    session,
                    epoch: ping.epoch,
                    counter: ping.counter,
                    via: via.kind(),
                }));
        }
        // Every copy is acknowledged on the path it came by, so the mover hears back on
        // whichever of its paths works; except a repeated copy through the relay while
        // a direct link carries the session: that link acknowledged the first copy (the
        // mover sends the relay copy at once, so it usually arrives second).
        let direct_bound = self
            .peers
            .get(&device)
            .is_some_and(|p| matches!(p.bound, Some(Via::Link(_))));
        if first_copy || via != Via::Relay || !direct_bound {
            self.send_frame(device, via, &ack);
        }
        if first_copy && stale_bound && via != Via::Relay {
            // The link the ping came by reaches the peer where it is now: let the data
            // follow at once, within the anti-amplification budget, while the address
            // answers its challenge (Ready waits for that).
            self.carry(now, device, via);
        }
        self.pump(now, device);

        // A ping that came through the relay means the relay works: carry the session
        // there until a direct path validates (also when our own unanswered migration
        // already carries data there).
        let unbound = self
            .peers
            .get(&device)
            .is_some_and(|p| matches!(p.bound, None | Some(Via::Relay)));
        if via == Via::Relay && unbound && self.relay_connected {
            self.bind(now, device, Via::Relay);
        }
    }

    /// The peer acknowledged our migration ping on `via`.
    pub(crate) fn migration_ack(
        &mut self,
        now: Instant,
        device: DeviceId,
        via: Via,
        ack: MigrationAck,
    ) {
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        let Some(migration) = peer.migration.as_mut() else {
            return;
        };
        if ack.counter != migration.ping.counter || ack.epoch != migration.ping.epoch {
            return;
        }
        migration.acked = true;
        let moved_at = migration.started;
        self.peer_announced(now, device, ack.endpoints, CandidateSource::LearnedFromPeer);
        match via {
            Via::Link(link) => {
                // The ack answers a ping sent after the move: this link carries ours.
                self.links.answered(link, now);
                let validated = self.links.is_validated(link);
                tracing::debug!(peer = %device, ?link, validated, "migration acknowledged");
                if validated {
                    self.bind(now, device, via);
                } else {
                    self.challenge(now, device, via);
                }
            }
            Via::Relay => {
                // The relay answered: use it unless a direct link has answered since we
                // moved (that one will carry the session instead).
                if !self.links.answered_directly_since(device, moved_at) {
                    self.bind(now, device, Via::Relay);
                }
            }
        }
    }
}
