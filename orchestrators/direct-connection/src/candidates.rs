//! Direct candidates exchanged over the relay, so that both sides dial each other at
//! about the same moment: the first step of NAT traversal.
//!
//! This device's candidates are its interface addresses and the reflexive address the
//! relay sees it at (learned since its last move). While a session runs over the relay
//! they go to the peer in a `Candidates` frame: when the session binds the relay (a
//! handshake over it included), when the reflexive address becomes known or changes,
//! and in answer to the peer's own when they told us something new or we last sent
//! ours more than [`CANDIDATES_ANSWER_AFTER`] ago (so an exchange completes both ways
//! even if our first frame reached a peer that could not open it yet, and two devices
//! never answer each other in a loop). A received `Candidates` frame is the peer's
//! announcement, and on the relay every candidate is dialled at once, in parallel (as
//! on binding the relay and on every probe): the peer dials ours at about the same
//! time, so a NAT in front of either device has seen its own device send towards the
//! other when the other's packets arrive.

use crate::core::DirectConnection;
use crate::links::DialPurpose;
use crate::state::Via;
use crate::timers::Timer;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tether_protocol::{CandidateSource, DeviceId, SessionFrame, MAX_DIRECT_CANDIDATES};

/// Least time between two `Candidates` frames sent in answer to the peer's when they
/// told us nothing new: a peer cannot make this device answer more often.
pub const CANDIDATES_ANSWER_AFTER: Duration = Duration::from_secs(1);

impl DirectConnection {
    /// Where this device can be reached directly: its interface addresses, then the
    /// reflexive address, at most [`MAX_DIRECT_CANDIDATES`].
    pub(crate) fn own_candidates(&self) -> Vec<SocketAddr> {
        let mut own: Vec<SocketAddr> = Vec::new();
        for addr in self.local_endpoints.iter().chain(&self.reflexive) {
            if own.len() < MAX_DIRECT_CANDIDATES && !own.contains(addr) {
                own.push(*addr);
            }
        }
        own
    }

    /// The relay told us where it sees us: sessions on the relay tell their peers.
    pub(crate) fn reflexive_changed(&mut self, now: Instant, addr: Option<SocketAddr>) {
        self.relay_view_changed(addr);
        if self.reflexive == addr {
            return;
        }
        self.reflexive = addr;
        if addr.is_none() {
            return;
        }
        let on_relay: Vec<DeviceId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.bound == Some(Via::Relay))
            .map(|(id, _)| *id)
            .collect();
        for device in on_relay {
            self.send_candidates(now, device);
        }
    }

    /// Sends our candidates to `device` over the relay.
    pub(crate) fn send_candidates(&mut self, now: Instant, device: DeviceId) {
        let endpoints = self.own_candidates();
        if endpoints.is_empty() {
            return;
        }
        if let Some(peer) = self.peers.get_mut(&device) {
            peer.candidates_sent_at = Some(now);
        }
        self.send_frame(device, Via::Relay, &SessionFrame::Candidates { endpoints });
    }

    /// The peer's candidates: its announcement; on the relay, answer with ours and dial
    /// theirs now. Answering and dialling are limited separately: an answer goes when
    /// they told us something new or ours last went [`CANDIDATES_ANSWER_AFTER`] ago, a
    /// round of dials when they are new or the last round was that long ago. So the
    /// first frame of a session on the relay is always dialled at once (even when its
    /// addresses were known from the rendezvous hint and ours just went out), and a
    /// peer repeating them gets at most one answer and one round of dials a second.
    pub(crate) fn candidates_received(
        &mut self,
        now: Instant,
        device: DeviceId,
        mut endpoints: Vec<SocketAddr>,
    ) {
        endpoints.truncate(MAX_DIRECT_CANDIDATES);
        let news = self
            .peers
            .get(&device)
            .is_some_and(|p| p.announced != endpoints);
        self.peer_announced(now, device, endpoints, CandidateSource::LearnedFromPeer);
        let Some(peer) = self.peers.get(&device) else {
            return;
        };
        if peer.bound != Some(Via::Relay) {
            return;
        }
        let a_while_ago = |at: Option<Instant>| {
            at.is_none_or(|at| now.saturating_duration_since(at) >= CANDIDATES_ANSWER_AFTER)
        };
        let answer = news || a_while_ago(peer.candidates_sent_at);
        let dial = news || a_while_ago(peer.candidates_dialled_at);
        if answer {
            self.send_candidates(now, device);
        }
        if news {
            self.probes_start_over(device);
        }
        if dial {
            self.dial_every_candidate(now, device);
        }
    }

    /// Dials each of the peer's direct candidates at once, in parallel, and looks again
    /// after the probe interval (backing off, see [`crate::path_choice`]). Which candidate crosses the NATs is not known, and a
    /// staggered dial would wait on the unreachable ones (a private address first)
    /// while the moment both NATs are open passes.
    pub(crate) fn dial_every_candidate(&mut self, now: Instant, device: DeviceId) {
        let addrs = self.direct_candidates(device);
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        peer.candidates_dialled_at = Some(now);
        for addr in addrs {
            self.dial(device, DialPurpose::Probe, vec![addr]);
        }
        let next = self.next_probe_at(now, device);
        self.timers.set(device, Timer::Probe, next);
    }
}
