//! Rekeys: a new handshake that replaces the keys and the PeerSecret of a live session
//! after a time or volume limit, without touching its path, its status or a migration.
//!
//! Two decisions, one owner each:
//!
//! - **Is a rekey due?** This core decides, from facts only it has: the committed
//!   generation's age ([`Limits::rekey_after`], counted from its commit here; once
//!   reached, the next application message sent or delivered makes the rekey due, so an
//!   idle session is never woken) and the frames sealed under it
//!   ([`Limits::rekey_after_messages`]).
//! - **May a rekey run now?** Presence decides, as it owns the session's status and the
//!   migration policy: it sends [`AllowRekey`] `true` when the session becomes Ready and
//!   `false` when it leaves Ready (so never during a migration on this side). A rekey
//!   starts only while allowed; the peer's rekey is answered only while allowed (so
//!   never during a migration on this side either: the peer retries); and a rekey in
//!   flight is given up when refused ([`KeyRing::abandon_initiation`]), so a message 2
//!   that arrives later is refused and nobody commits its keys. This device's own
//!   network change refuses at once, before Presence's answer arrives: both hear of it
//!   at the same instant, and Presence allows again only when Ready.
//!
//! A rekey's handshake runs on the bound path and holds an [`EstablishmentPermit`] for
//! [`HandshakePurpose::Rekey`]; its message 1 says so (authenticated), so both sides
//! know the new generation is a rekey. Its commit ([`DirectConnection::rekey_committed`])
//! changes the keys and the epoch only: [`SessionReady`] with `rekey: true` on the
//! path already reported, no rebinding, no migration ended, no markers (channels are
//! independent of keys, so nothing is resent or duplicated). The old generation keeps
//! sealing until the new one is sendable and keeps opening frames in flight until the
//! next commit. One race remains by design: a rekey the peer already answered when a
//! migration begins may still commit during it (the initiator had confirmed it and
//! sends under it); that changes only the keys, and migration signals verify against
//! the committed, candidate and previous PeerSecret alike.
//!
//! [`Limits::rekey_after`]: crate::Limits::rekey_after
//! [`Limits::rekey_after_messages`]: crate::Limits::rekey_after_messages
//! [`KeyRing::abandon_initiation`]: tether_crypto::KeyRing::abandon_initiation
//! [`EstablishmentPermit`]: crate::state::EstablishmentPermit

use crate::core::{DirectConnection, Output};
use crate::state::{Connect, EstablishmentPermit, PeerState, Via};
use crate::timers::Timer;
use std::time::Instant;
use tether_crypto::HandshakePurpose;
use tether_protocol::{AllowRekey, DeviceId, SessionFrame, SessionReady};

/// Application messages the session carried: sent plus delivered.
fn traffic(peer: &PeerState) -> u64 {
    peer.counters.sent.saturating_add(peer.counters.delivered)
}

impl DirectConnection {
    /// Presence allows or refuses a rekey of this peer's session.
    pub(crate) fn allow_rekey(&mut self, now: Instant, message: AllowRekey) {
        let Some(peer) = self.peers.get_mut(&message.peer) else {
            return;
        };
        peer.rekey.allowed = message.allowed;
        if message.allowed {
            self.maybe_rekey(now, message.peer);
        } else {
            self.abandon_rekey(message.peer);
        }
    }

    /// This device's network changed: no rekey may run until Presence allows it again
    /// (every Ready session leaves Ready on a network change, so Presence will).
    pub(crate) fn refuse_rekeys_on_move(&mut self) {
        let devices: Vec<DeviceId> = self.peers.keys().copied().collect();
        for device in devices {
            if let Some(peer) = self.peers.get_mut(&device) {
                peer.rekey.allowed = false;
            }
            self.abandon_rekey(device);
        }
    }

    /// Gives up a rekey in flight: its pending initiation, its retries and deadline.
    pub(crate) fn abandon_rekey(&mut self, device: DeviceId) {
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        if !peer.connect.as_ref().is_some_and(Connect::is_rekey) {
            return;
        }
        peer.connect = None;
        peer.ring.abandon_initiation();
        tracing::debug!(peer = %device, "rekey given up: the session left Ready");
        self.end_connect(device);
    }

    /// Whether a rekey is due: the committed generation reached the volume limit, or
    /// it reached the age limit and an application message went either way since.
    pub(crate) fn rekey_due(&self, device: DeviceId) -> bool {
        let Some(peer) = self.peers.get(&device) else {
            return false;
        };
        if peer.rekey.held || peer.rekey.generation_since.is_none() {
            return false;
        }
        let by_volume = peer.ring.sealed_under_best() >= self.limits.rekey_after_messages;
        let by_age = peer
            .rekey
            .aged_at_traffic
            .is_some_and(|mark| traffic(peer) > mark);
        by_volume || by_age
    }

    /// Starts a rekey if one is due and allowed, on the bound path of a session that
    /// carries data and has nothing else in progress.
    pub(crate) fn maybe_rekey(&mut self, now: Instant, device: DeviceId) {
        if !self.rekey_due(device) {
            return;
        }
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        let idle = peer.connect.is_none() && peer.migration.is_none();
        let live = peer.reported.is_some() && peer.usable();
        let (true, true, true, Some(via)) = (peer.rekey.allowed, idle, live, peer.bound) else {
            return;
        };
        let request = self.request_id();
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        tracing::debug!(
            peer = %device,
            epoch = ?peer.ring.committed_epoch(),
            sealed = peer.ring.sealed_under_best(),
            "rekey due: starting a handshake on the bound path"
        );
        peer.connect = Some(Connect {
            request,
            permit: Some(EstablishmentPermit(HandshakePurpose::Rekey)),
            via: None,
            waiting_for_relay: false,
        });
        self.timers.set(
            device,
            Timer::ConnectDeadline,
            now + self.limits.connect_timeout,
        );
        self.connect_on(now, device, via);
    }

    /// The rekey timer: the generation reached the age limit (the next message makes
    /// the rekey due), or a failed rekey may be tried again.
    pub(crate) fn rekey_timer(&mut self, now: Instant, device: DeviceId) {
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        peer.rekey.held = false;
        let mark = traffic(peer);
        peer.rekey.aged_at_traffic.get_or_insert(mark);
        self.maybe_rekey(now, device);
    }

    /// A rekey no path answered in time: tried again one connect timeout later, on the
    /// next message after that.
    pub(crate) fn rekey_failed(&mut self, now: Instant, device: DeviceId) {
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        peer.ring.abandon_initiation();
        peer.rekey.held = true;
        peer.counters.handshake_timeouts += 1;
        tracing::debug!(peer = %device, "rekey unanswered: trying again later");
        self.timers
            .set(device, Timer::Rekey, now + self.limits.connect_timeout);
    }

    /// A new generation committed here: its age starts now.
    pub(crate) fn generation_started(&mut self, now: Instant, device: DeviceId) {
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        peer.rekey.generation_since = Some(now);
        peer.rekey.aged_at_traffic = None;
        peer.rekey.held = false;
        self.timers
            .set(device, Timer::Rekey, now + self.limits.rekey_after);
    }

    /// A rekey committed (either side initiated it): only the keys and the epoch
    /// change. Presence hears `SessionReady { rekey: true }` on the path it already
    /// knows; the path, a migration in progress and the channels are untouched.
    pub(crate) fn rekey_committed(&mut self, now: Instant, device: DeviceId, via: Via, epoch: u64) {
        if self
            .peers
            .get(&device)
            .and_then(|p| p.connect.as_ref())
            .is_some_and(Connect::is_rekey)
        {
            self.take_connect(device);
        }
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        let Some(report) = peer.reported.as_mut() else {
            return;
        };
        if epoch <= report.epoch {
            // A crossing rekey replaced the generation within its epoch: not news.
            return;
        }
        report.epoch = epoch;
        let report = *report;
        peer.generations += 1;
        peer.counters.rekeys += 1;
        let session = peer.session;
        tracing::info!(peer = %device, epoch, "rekeyed: new session keys and PeerSecret");
        self.outputs.push_back(Output::SessionReady(SessionReady {
            request: None,
            peer: device,
            session,
            epoch: tether_protocol::Epoch(epoch),
            path: report.path,
            remote: report.remote,
            after_handshake: true,
            rekey: true,
        }));
        self.generation_started(now, device);
        // Answer at once so the initiator commits the same generation: on the bound
        // path, or the one the commit came by if none is bound.
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        let answer_on = peer.bound.unwrap_or(via);
        peer.heartbeat.next_id += 1;
        let id = peer.heartbeat.next_id;
        self.send_frame(device, answer_on, &SessionFrame::Ping { id });
    }
}
