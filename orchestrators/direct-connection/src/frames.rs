//! What the core does with each authenticated session frame.

use crate::channels::{Inbound, Received};
use crate::core::{DirectConnection, Output};
use crate::state::Via;
use std::time::Instant;
use tether_crypto::{MigrationTag, PathChallenge};
use tether_protocol::{
    canonical_endpoints, ChannelId, DeviceId, Endpoint, InboundMigrationPing, LivenessReport,
    MessageDelivered, MigrationAck, MigrationAcked, MigrationPing, PathKind, PathMeasured,
    PeerReset, SessionFrame,
};

impl DirectConnection {
    /// Dispatches one opened session frame from `device` that came over `via`.
    pub(crate) fn session_frame(
        &mut self,
        now: Instant,
        device: DeviceId,
        via: Via,
        frame: SessionFrame,
    ) {
        tracing::trace!(peer = %device, ?via, frame = frame_kind(&frame), "session frame");
        match frame {
            SessionFrame::Data {
                channel,
                seq,
                payload,
            } => self.data(device, via, channel, seq, payload),
            SessionFrame::Ack {
                channel,
                next_expected,
                credit,
            } => {
                if let Some(outbound) = self
                    .peers
                    .get_mut(&device)
                    .and_then(|p| p.outbound.get_mut(&channel))
                {
                    outbound.ack(next_expected, credit);
                }
                self.pump(now, device);
            }
            SessionFrame::Ping { id } => {
                self.send_frame(device, via, &SessionFrame::Pong { id });
            }
            SessionFrame::Pong { id } => self.pong(now, device, via, id),
            SessionFrame::MigrationPing(ping) => {
                self.inbound_migration_ping(now, device, via, ping)
            }
            SessionFrame::MigrationAck(ack) => self.migration_ack(now, device, via, ack),
            SessionFrame::PathChallenge { data } => {
                self.send_frame(device, via, &SessionFrame::PathResponse { data });
            }
            SessionFrame::PathResponse { data } => self.path_response(now, device, via, data),
            SessionFrame::Migrate {
                channel,
                incarnation,
                first_unacked,
                ..
            } => {
                // The sender switched paths (or epochs): line our position up with its
                // own, then tell it exactly where we are.
                if let Some(peer) = self.peers.get_mut(&device) {
                    let resynced = peer
                        .inbound
                        .entry(channel)
                        .or_default()
                        .resync(incarnation, first_unacked);
                    if resynced {
                        peer.counters.resyncs += 1;
                    }
                }
                self.send_ack(device, via, channel);
            }
            SessionFrame::Padding { .. } => {}
            SessionFrame::Reset { .. } => {
                self.outputs
                    .push_back(Output::PeerReset(PeerReset { peer: device }));
            }
        }
        self.adopt_validated_path(now, device, via);
    }

    /// Authenticated traffic arrived on a path that is not the bound one: bind it if it
    /// is already validated and nothing is bound, else challenge it.
    fn adopt_validated_path(&mut self, now: Instant, device: DeviceId, via: Via) {
        let Some(peer) = self.peers.get(&device) else {
            return;
        };
        if !peer.usable() {
            return;
        }
        let validated = match via {
            Via::Link(link) => self.links.get(&link).is_some_and(|l| l.validated),
            // The relay is chosen by timers (it is the path of last resort).
            Via::Relay => return,
        };
        if peer.bound == Some(via) {
            // The bound link's remote moved (QUIC migration): validate it again.
            if !validated {
                self.challenge(now, device, via);
            }
            return;
        }
        let bound_is_direct = matches!(peer.bound, Some(Via::Link(_)));
        if validated && !bound_is_direct {
            self.bind(now, device, via);
        } else if !validated {
            self.challenge(now, device, via);
        }
    }

    fn data(&mut self, device: DeviceId, via: Via, channel: ChannelId, seq: u64, payload: Vec<u8>) {
        let credit = self.limits.credit;
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        let received = peer
            .inbound
            .entry(channel)
            .or_insert_with(Inbound::default)
            .receive(seq, payload, credit);
        match received {
            Received::Deliver(messages) => {
                for (seq, payload) in messages {
                    peer.counters.delivered += 1;
                    self.outputs.push_back(Output::Delivered(MessageDelivered {
                        peer: device,
                        channel,
                        seq,
                        payload,
                    }));
                }
            }
            Received::Duplicate => peer.counters.duplicates += 1,
            Received::Buffered | Received::BeyondCredit => {}
        }
        self.send_ack(device, via, channel);
    }

    fn send_ack(&mut self, device: DeviceId, via: Via, channel: ChannelId) {
        let credit = self.limits.credit;
        let next_expected = self
            .peers
            .get(&device)
            .and_then(|p| p.inbound.get(&channel))
            .map_or(0, Inbound::next_expected);
        self.send_frame(
            device,
            via,
            &SessionFrame::Ack {
                channel,
                next_expected,
                credit,
            },
        );
    }

    fn pong(&mut self, now: Instant, device: DeviceId, via: Via, id: u64) {
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        let beat = &mut peer.heartbeat;
        let Some((outstanding, sent_at)) = beat.outstanding else {
            return;
        };
        if outstanding != id {
            return;
        }
        beat.outstanding = None;
        beat.missed = 0;
        let sample = crate::core::duration_ms(now.saturating_duration_since(sent_at));
        let srtt = beat.srtt_ms.map_or(sample, |srtt| (srtt * 7 + sample) / 8);
        beat.srtt_ms = Some(srtt);
        let was_dead = std::mem::take(&mut beat.reported_dead);
        if was_dead {
            self.outputs.push_back(Output::Liveness(LivenessReport {
                peer: device,
                alive: true,
                rtt_ms: Some(srtt),
            }));
        }
        let endpoint = match via {
            Via::Link(link) => self
                .links
                .get(&link)
                .and_then(|l| l.remote)
                .map(Endpoint::Direct),
            Via::Relay => Some(Endpoint::Relay),
        };
        if let Some(endpoint) = endpoint {
            self.outputs.push_back(Output::PathMeasured(PathMeasured {
                peer: device,
                endpoint,
                rtt_ms: Some(sample),
            }));
        }
    }

    /// Migration phase 3 on the receiving device: PeerSecret resolution, the replay
    /// check by counter, then the ack and a challenge of the new path.
    fn inbound_migration_ping(
        &mut self,
        now: Instant,
        device: DeviceId,
        via: Via,
        ping: MigrationPing,
    ) {
        let local_endpoints = self.local_endpoints.clone();
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
            self.counters.bad_migration_tags += 1;
            return;
        }
        // A ping of an older epoch predates the last handshake (e.g. queued at the relay
        // before an eviction): the move it announced is over. Counters restart per epoch.
        let current_epoch = peer.ring.committed_epoch().unwrap_or(0);
        if ping.epoch.0 < current_epoch || ping.counter < peer.highest_ping_received {
            self.counters.stale_migration_pings += 1;
            return;
        }
        let first_copy = ping.counter > peer.highest_ping_received;
        let ack = SessionFrame::MigrationAck(MigrationAck {
            epoch: ping.epoch,
            counter: ping.counter,
            endpoints: local_endpoints,
        });
        let stale_bound = match peer.bound {
            Some(Via::Link(link)) => self
                .links
                .get(&link)
                .and_then(|l| l.remote)
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
            peer.announced = ping.endpoints.clone();
            if peer.bound == Some(Via::Relay) {
                // New direct endpoints while on the relay: probe them now.
                peer.probe_at = Some(now);
            }
            let session = peer.session;
            self.outputs
                .push_back(Output::InboundMigrationPing(InboundMigrationPing {
                    peer: device,
                    session,
                    epoch: ping.epoch,
                    counter: ping.counter,
                    endpoints: ping.endpoints,
                    via: match via {
                        Via::Link(_) => PathKind::Direct,
                        Via::Relay => PathKind::Relay,
                    },
                }));
        }
        // Every copy is acknowledged on the path it came by, so the mover hears back on
        // whichever of its paths works.
        self.send_frame(device, via, &ack);
        if first_copy && stale_bound && via != Via::Relay {
            // The link the ping came by reaches the peer where it is now: let the data
            // follow at once, within the anti-amplification budget, while the address
            // answers its challenge (Ready waits for that).
            self.carry(now, device, via);
        }
        self.pump(now, device);

        // A ping that came through the relay means the relay works: carry the session
        // there until a direct path validates.
        // (Also when our own unanswered migration already carries data there.)
        let unbound = self
            .peers
            .get(&device)
            .is_some_and(|p| matches!(p.bound, None | Some(Via::Relay)));
        if via == Via::Relay && unbound && self.relay_connected {
            self.bind(now, device, Via::Relay);
        }
    }

    fn migration_ack(&mut self, now: Instant, device: DeviceId, via: Via, ack: MigrationAck) {
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        let Some(migration) = peer.migration.as_mut() else {
            return;
        };
        if ack.counter != migration.ping.counter || ack.epoch != migration.ping.epoch {
            return;
        }
        let first = !migration.acked;
        migration.acked = true;
        let moved_at = migration.started;
        let request = migration.request;
        if !ack.endpoints.is_empty() {
            peer.announced = ack.endpoints.clone();
        }
        if first {
            self.outputs
                .push_back(Output::MigrationAcked(MigrationAcked {
                    request,
                    peer: device,
                    counter: ack.counter,
                    peer_endpoints: ack.endpoints,
                    via: match via {
                        Via::Link(_) => PathKind::Direct,
                        Via::Relay => PathKind::Relay,
                    },
                }));
        }
        match via {
            Via::Link(link) => {
                let validated = self.links.get(&link).is_some_and(|l| l.validated);
                tracing::debug!(peer = %device, ?link, validated, "migration acknowledged");
                if validated {
                    self.bind(now, device, via);
                } else {
                    self.challenge(now, device, via);
                }
            }
            Via::Relay => {
                // The relay answered: use it unless a direct link has been heard from
                // since we moved (that one will carry the session instead).
                if !self.heard_directly_since(device, moved_at) {
                    self.bind(now, device, Via::Relay);
                }
            }
        }
    }

    fn path_response(&mut self, now: Instant, device: DeviceId, via: Via, data: [u8; 16]) {
        let now_ms = self.now_ms(now);
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        if peer
            .challenger
            .verify(&via, &PathChallenge(data), now_ms)
            .is_err()
        {
            self.counters.bad_path_responses += 1;
            return;
        }
        let mut remote = None;
        if let Via::Link(link) = via {
            if let Some(state) = self.links.get_mut(&link) {
                state.validated = true;
                remote = state.remote;
            }
        }
        // A validated direct path always wins over the relay; the relay is bound only
        // when nothing direct is.
        let bound_is_direct =
            matches!(peer.bound, Some(Via::Link(l)) if self.links.contains_key(&l));
        let in_progress = peer.connect.is_some() || peer.migration.is_some();
        // Carried tentatively (the peer moved), not yet reported Ready there.
        let tentative = peer.bound == Some(via) && peer.reported.is_none_or(|r| r.remote != remote);
        let take = match via {
            Via::Link(_) => true,
            Via::Relay => !bound_is_direct,
        };
        if take && (in_progress || tentative || peer.bound != Some(via)) {
            self.bind(now, device, via);
        }
    }
}

fn frame_kind(frame: &SessionFrame) -> &'static str {
    match frame {
        SessionFrame::Data { .. } => "data",
        SessionFrame::Ack { .. } => "ack",
        SessionFrame::Ping { .. } => "ping",
        SessionFrame::Pong { .. } => "pong",
        SessionFrame::MigrationPing(_) => "migration-ping",
        SessionFrame::MigrationAck(_) => "migration-ack",
        SessionFrame::PathChallenge { .. } => "path-challenge",
        SessionFrame::PathResponse { .. } => "path-response",
        SessionFrame::Migrate { .. } => "migrate",
        SessionFrame::Padding { .. } => "padding",
        SessionFrame::Reset { .. } => "reset",
    }
}
