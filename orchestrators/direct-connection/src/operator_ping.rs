//! Operator pings (`tether ping`): a real round trip over the session, measured when
//! the answer returns.
//!
//! An operator ping is a liveness ping (`SessionFrame::Ping`) with an id of its own kind (the
//! top bit set; the heartbeat's ids count up from 1 and never reach it), sealed under
//! the session keys on the bound path. The peer answers every ping with a pong of the
//! same id on the path it came by, as it answers heartbeats, so operator pings need nothing new
//! on the wire and work with any peer. An operator ping's answer is never a heartbeat's:
//! it does not count as a missed or answered heartbeat, and a heartbeat's answer never
//! answers an operator ping.
//!
//! At most [`MAX_PINGS_PER_PEER`] operator pings wait per peer; a newer one displaces the
//! oldest ([`Output::PingExpired`]), so a caller that stopped waiting costs nothing.

use crate::core::{DirectConnection, Output};
use crate::state::Via;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tether_protocol::{DeviceId, PathKind, SessionFrame};

/// The bit that marks a ping id as an operator ping's.
const PING_ID_BIT: u64 = 1 << 63;

/// Probes that wait for their answer, per peer.
pub const MAX_PINGS_PER_PEER: usize = 16;

/// Whether a ping id is an operator ping's.
pub(crate) fn is_operator_ping(id: u64) -> bool {
    id & PING_ID_BIT != 0
}

/// A peer's operator pings waiting for their answer, oldest first.
#[derive(Debug, Default)]
pub struct Pings {
    waiting: VecDeque<(u64, Instant)>,
    next: u64,
}

/// An operator ping on its way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingSent {
    /// Its id (its answer names it).
    pub id: u64,
    /// The kind of path it went on.
    pub path: PathKind,
    /// The peer's address on a direct path.
    pub remote: Option<SocketAddr>,
}

/// Why an operator ping was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingRefused {
    /// Not a paired peer.
    UnknownPeer,
    /// No session can carry it: no keys, or no path bound.
    NoSession,
}

impl std::fmt::Display for PingRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PingRefused::UnknownPeer => f.write_str("unknown peer"),
            PingRefused::NoSession => f.write_str("no session"),
        }
    }
}

impl std::error::Error for PingRefused {}

/// An operator ping's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingAnswered {
    /// The peer.
    pub peer: DeviceId,
    /// The ping's id.
    pub id: u64,
    /// From sending the ping to its answer.
    pub rtt: Duration,
    /// The kind of path the answer came by.
    pub path: PathKind,
    /// The peer's address the answer came from, on a direct path.
    pub remote: Option<SocketAddr>,
}

impl DirectConnection {
    /// Sends an operator ping to `device` on the session's bound path. Its answer is
    /// [`Output::PingAnswered`], or [`Output::PingExpired`] once newer pings
    /// displaced it; one that is lost gets neither (the caller's timeout decides).
    pub fn operator_ping(
        &mut self,
        now: Instant,
        device: DeviceId,
    ) -> Result<PingSent, PingRefused> {
        let peer = self
            .peers
            .get_mut(&device)
            .ok_or(PingRefused::UnknownPeer)?;
        let via = peer
            .bound
            .filter(|_| peer.usable())
            .ok_or(PingRefused::NoSession)?;
        let pings = &mut peer.operator_pings;
        pings.next = pings.next.wrapping_add(1);
        let id = PING_ID_BIT | (pings.next & !PING_ID_BIT);
        if pings.waiting.len() >= MAX_PINGS_PER_PEER {
            if let Some((old, _)) = pings.waiting.pop_front() {
                self.outputs.push_back(Output::PingExpired {
                    peer: device,
                    id: old,
                });
            }
        }
        pings.waiting.push_back((id, now));
        self.send_frame(device, via, &SessionFrame::Ping { id });
        Ok(PingSent {
            id,
            path: via.kind(),
            remote: self.remote_of(via),
        })
    }

    /// The pong of an operator ping.
    pub(crate) fn operator_ping_answered(
        &mut self,
        now: Instant,
        device: DeviceId,
        via: Via,
        id: u64,
    ) {
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        let Some(at) = peer
            .operator_pings
            .waiting
            .iter()
            .position(|(p, _)| *p == id)
        else {
            return;
        };
        let Some((_, sent_at)) = peer.operator_pings.waiting.remove(at) else {
            return;
        };
        let remote = self.remote_of(via);
        self.outputs.push_back(Output::PingAnswered(PingAnswered {
            peer: device,
            id,
            rtt: now.saturating_duration_since(sent_at),
            path: via.kind(),
            remote,
        }));
    }
}
