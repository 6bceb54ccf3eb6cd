//! Binding a session to a path: challenges, validation, the choice of the bound path,
//! losing it, and closing the links the session no longer needs.

use crate::core::{DirectConnection, Output};
use crate::state::{Heartbeat, Reported, Via};
use crate::timers::Timer;
use std::time::Instant;
use tether_crypto::PathChallenge;
use tether_protocol::{DeviceId, LinkId, PathLost, SessionFrame, SessionReady, TransportCommand};

/// Most links held to one peer, on either side. A session needs at most four at once:
/// the bound link, a standby in each direction (the links QUIC migrates when either side
/// moves) and a migration or probe dial; twice four lets the previous generation of each
/// drain while its replacement validates. Beyond it the least recently active links the
/// session does not need are closed at once, so a burst of network changes cannot pile
/// links up (each migrated link costs a ping and a challenge on every later move).
pub(crate) const MAX_LINKS_PER_PEER: usize = 8;

impl DirectConnection {
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
        let remote = self.remote_of(via);
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
        if changed {
            peer.direct_declined = None;
            peer.declined_link = None;
            peer.probe_rounds = 0;
            *peer.direct_quality = Default::default();
        }
        match via {
            Via::Relay if changed => self.timers.set(device, Timer::Probe, now),
            Via::Relay => {
                if !self.timers.is_armed(device, Timer::Probe) {
                    let at = now + self.limits.direct_probe_interval;
                    self.timers.set(device, Timer::Probe, at);
                }
            }
            Via::Link(_) => self.timers.stop(device, Timer::Probe),
        }
        if was_tentative {
            // Data went here before the path was confirmed; resend what is unacknowledged.
            peer.resend_all = true;
        }
        if changed {
            peer.resend_all = true;
            peer.heartbeat = Heartbeat {
                srtt_ms: peer.heartbeat.srtt_ms,
                next_id: peer.heartbeat.next_id,
                ..Heartbeat::default()
            };
            let at = now + self.limits.heartbeat_interval;
            self.timers.set(device, Timer::Heartbeat, at);
        }
        let session = peer.session;
        // A path completes a transport-only connect; an establishment connect completes
        // only when its handshake commits (see `committed`).
        let transport_only = peer.connect.as_ref().is_some_and(|c| c.permit.is_none());
        let migrated = peer.migration.is_some();
        let connect = if transport_only {
            self.take_connect(device)
        } else {
            None
        };
        self.end_migration(device);
        if via == Via::Relay && changed {
            // Tell the peer where we can be reached directly, so both probe at once.
            self.send_candidates(now, device);
        }
        let report = Reported::new(epoch, via, remote);
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        let must_report = connect.is_some() || migrated || peer.reported != Some(report);
        if must_report {
            peer.reported = Some(report);
            self.outputs.push_back(Output::SessionReady(SessionReady {
                request: connect.map(|c| c.request),
                peer: device,
                session,
                epoch: tether_protocol::Epoch(epoch),
                path: report.path,
                remote,
                after_handshake: false,
                rekey: false,
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

    /// Authenticated traffic arrived on a path that is not the bound one: bind it if it
    /// is already validated and nothing direct is bound (unless it is a direct path
    /// left unused for being slower than the relay), else challenge it. While this device
    /// migrates, a link must also have answered since the move: the peer's frames may
    /// still arrive on a link ours can no longer leave by.
    pub(crate) fn adopt_validated_path(&mut self, now: Instant, device: DeviceId, via: Via) {
        let Some(peer) = self.peers.get(&device) else {
            return;
        };
        if !peer.usable() {
            return;
        }
        let validated = match via {
            Via::Link(link) => {
                self.links.is_validated(link)
                    && peer
                        .migration
                        .as_ref()
                        .is_none_or(|moved| self.links.answered_since(link, moved.started))
            }
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
        if matches!(via, Via::Link(link) if self.declined(now, device, link)) {
            return;
        }
        if validated && !bound_is_direct {
            self.bind(now, device, via);
        } else if !validated {
            self.challenge(now, device, via);
        }
    }

    /// The answer to one of our path challenges.
    pub(crate) fn path_response(
        &mut self,
        now: Instant,
        device: DeviceId,
        via: Via,
        data: [u8; 16],
    ) {
        let now_ms = self.now_ms(now);
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        let Ok(round_trip_ms) = peer.challenger.verify(&via, &PathChallenge(data), now_ms) else {
            self.counters.bad_path_responses += 1;
            return;
        };
        let remote = match via {
            Via::Link(link) => {
                self.links.answered(link, now);
                self.links.validate(link)
            }
            Via::Relay => None,
        };
        // A validated direct path wins over the relay unless it is clearly slower
        // (`path_choice`); the relay is bound only when nothing direct is.
        let bound_is_direct = matches!(peer.bound, Some(Via::Link(l)) if self.links.contains(l));
        let in_progress = peer.connect.is_some() || peer.migration.is_some();
        // Carried tentatively (the peer moved), not yet reported Ready there.
        let tentative = peer.bound == Some(via) && peer.reported.is_none_or(|r| r.remote != remote);
        let take = match (via, peer.bound) {
            // Hysteresis: a validated bound link to where the peer last said it is keeps
            // the session; another link that answers takes over only while a connect or
            // a migration is in progress, or when it reaches the peer's newest address
            // and the bound one does not.
            (Via::Link(new), Some(Via::Link(bound))) if new != bound => {
                let reaches_peer = |link| {
                    self.links.remote(link).is_some_and(|addr| {
                        peer.announced.is_empty() || peer.announced.contains(&addr)
                    })
                };
                in_progress
                    || !self.links.is_validated(bound)
                    || (reaches_peer(new) && !reaches_peer(bound))
            }
            (Via::Link(_), _) => true,
            (Via::Relay, _) => !bound_is_direct,
        };
        let bound = peer.bound;
        // From the relay, by measured round trip (`path_choice`), unless a connect or
        // a migration waits on a path.
        let take = take
            && match (via, bound) {
                (Via::Link(link), Some(Via::Relay)) if !self.waits_on_a_path(now, device) => {
                    self.direct_beats_relay(now, device, link, round_trip_ms)
                }
                _ => true,
            };
        if take && (in_progress || tentative || bound != Some(via)) {
            self.bind(now, device, via);
        }
    }

    /// One Migrate marker per outbound channel on `via`: where we stand.
    pub(crate) fn send_markers(&mut self, device: DeviceId, via: Via) {
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
    pub(crate) fn unbind_link(&mut self, device: DeviceId, link: LinkId, reason: &str) {
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
            self.timers.stop(device, Timer::Heartbeat);
            self.timers.stop(device, Timer::Retransmit);
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

    /// The links the session needs now, in id order: the bound link, the link a connect
    /// in progress runs on, and the newest link in each direction. Those last two are standbys,
    /// silent until a move: ours is the link QUIC migrates when we move, the peer's the
    /// one it migrates when it moves (a link only survives its dialler's move).
    pub(crate) fn needed_links(&self, device: DeviceId) -> Vec<LinkId> {
        let Some(peer) = self.peers.get(&device) else {
            return Vec::new();
        };
        let mut needed = Vec::new();
        if let Some(Via::Link(bound)) = peer.bound {
            needed.push(bound);
        }
        if let Some(Via::Link(link)) = peer.connect.as_ref().and_then(|c| c.via) {
            needed.push(link);
        }
        let links = self.links.of_peer(device);
        for dialled in [true, false] {
            let newest = links
                .iter()
                .rev()
                .find(|link| self.links.get(**link).is_some_and(|l| l.dialled == dialled));
            needed.extend(newest);
        }
        needed.sort_unstable();
        needed.dedup();
        needed
    }

    /// Closes the peer's links the session does not need once they have been quiet for
    /// `idle_link_close_after`, and, beyond [`MAX_LINKS_PER_PEER`], the least recently
    /// active ones at once.
    pub(crate) fn close_unneeded_links(&mut self, now: Instant, device: DeviceId) {
        let needed = self.needed_links(device);
        let links = self.links.of_peer(device);
        let mut open = links.len();
        let mut spare: Vec<(Instant, LinkId)> = links
            .into_iter()
            .filter(|link| !needed.contains(link))
            .filter_map(|link| self.links.get(link).map(|l| (l.last_active(), link)))
            .collect();
        spare.sort();
        let quiet_since = now.checked_sub(self.limits.idle_link_close_after);
        for (active, link) in spare {
            let idle = quiet_since.is_some_and(|since| active <= since);
            if !idle && open <= MAX_LINKS_PER_PEER {
                continue;
            }
            tracing::debug!(peer = %device, ?link, idle, "closing a link the session does not need");
            self.links.remove(link);
            if let Some(peer) = self.peers.get_mut(&device) {
                peer.challenger.forget(&Via::Link(link));
            }
            self.outputs
                .push_back(Output::Transport(TransportCommand::Close { link }));
            open -= 1;
        }
    }
}
