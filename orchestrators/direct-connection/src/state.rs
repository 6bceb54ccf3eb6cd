//! The per-peer and per-link state the core keeps.

use crate::channels::{Inbound, Outbound};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;
use tether_crypto::{KeyRing, PathChallenger};
use tether_protocol::{ChannelId, DeviceId, LinkId, MigrationPing, PathKind, RequestId, SessionId};

/// A way a frame reaches the peer: a transport link, or the relay (forwarded to the
/// peer's device id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Via {
    /// A QUIC link.
    Link(LinkId),
    /// The relay server.
    Relay,
}

/// Proof that a connect is on the establishment path (PresenceConnect without
/// `transport_only`, or a recovery). Only the PresenceConnect handler creates one, and
/// only for an establishment connect; the only function that starts a handshake does
/// nothing unless the connect holds it. A transport-only reconnect, and everything a
/// migration does, hold none, so they cannot handshake.
#[derive(Debug)]
pub struct EstablishmentPermit(pub(crate) ());

/// A PresenceConnect in progress.
#[derive(Debug)]
pub struct Connect {
    /// Presence's request.
    pub request: RequestId,
    /// Present only for an establishment connect; absent for transport-only.
    pub permit: Option<EstablishmentPermit>,
    /// Reported failed at this instant.
    pub deadline: Instant,
    /// The path the handshake (or the path challenge) runs on.
    pub via: Option<Via>,
    /// When the relay joins the attempt, if it is a candidate and not yet used.
    pub relay_at: Option<Instant>,
    /// When the handshake is retried.
    pub retry_at: Option<Instant>,
}

/// Our own migration (this device moved): the ping we announce.
#[derive(Debug, Clone)]
pub struct OutMigration {
    /// Presence's request.
    pub request: RequestId,
    /// The sealed ping's contents.
    pub ping: MigrationPing,
    /// When the relay queue carries the ping too, if no ack came by then.
    pub relay_at: Option<Instant>,
    /// When the queued data follows through the relay, if nothing direct answered.
    pub carry_at: Option<Instant>,
    /// When this ping was first sent (our move): a link heard from since then is
    /// known to work from our new address.
    pub started: Instant,
    /// The peer acknowledged this counter.
    pub acked: bool,
}

/// Liveness of the bound path.
#[derive(Debug, Clone, Default)]
pub struct Heartbeat {
    /// Next ping at.
    pub next_at: Option<Instant>,
    /// The outstanding ping id and when it left.
    pub outstanding: Option<(u64, Instant)>,
    /// Pings unanswered in a row.
    pub missed: u32,
    /// Whether Presence was told the path is dead.
    pub reported_dead: bool,
    /// Smoothed RTT.
    pub srtt_ms: Option<u64>,
    /// Ping id counter.
    pub next_id: u64,
}

/// What Presence was last told about the session. A move between two links to the same
/// address (crossing dials, a probe link) is not news to Presence or the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reported {
    /// Epoch reported Ready.
    pub epoch: u64,
    /// Kind of path reported.
    pub path: PathKind,
    /// The peer's address on a direct path.
    pub remote: Option<SocketAddr>,
}

impl Reported {
    /// The report for `epoch` on `via`, reaching the peer at `remote`.
    pub fn new(epoch: u64, via: Via, remote: Option<SocketAddr>) -> Self {
        let path = match via {
            Via::Link(_) => PathKind::Direct,
            Via::Relay => PathKind::Relay,
        };
        Self {
            epoch,
            path,
            remote,
        }
    }
}

/// Counters shown in the status of a peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerCounters {
    /// Messages accepted by `send`.
    pub sent: u64,
    /// Messages delivered to the application.
    pub delivered: u64,
    /// Data frames received again (dropped).
    pub duplicates: u64,
    /// Channels resynchronised because one side had lost its state (a restart).
    pub resyncs: u64,
    /// Session frames exchanged over direct links.
    pub direct: PathTraffic,
    /// Session frames exchanged through the relay (live or queued).
    pub relay: PathTraffic,
    /// Connects with a handshake (establishment, recovery) that no path answered in
    /// time.
    pub handshake_timeouts: u64,
    /// Transport-only reconnects that no path answered in time.
    pub reconnect_timeouts: u64,
}

/// Sealed session frames on one kind of path: sent, and received authentic (frames
/// that fail authentication are counted as rejected input instead).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathTraffic {
    /// Frames sent.
    pub frames_sent: u64,
    /// Encoded bytes of those frames.
    pub bytes_sent: u64,
    /// Authentic frames received.
    pub frames_received: u64,
    /// Encoded bytes of those frames.
    pub bytes_received: u64,
}

impl PathTraffic {
    /// Counts a frame of `len` bytes sent.
    pub fn sent(&mut self, len: u64) {
        self.frames_sent += 1;
        self.bytes_sent = self.bytes_sent.saturating_add(len);
    }

    /// Counts an authentic frame of `len` bytes received.
    pub fn received(&mut self, len: u64) {
        self.frames_received += 1;
        self.bytes_received = self.bytes_received.saturating_add(len);
    }
}

impl PeerCounters {
    /// The traffic counters of the path kind `via` is.
    pub(crate) fn traffic(&mut self, via: Via) -> &mut PathTraffic {
        match via {
            Via::Link(_) => &mut self.direct,
            Via::Relay => &mut self.relay,
        }
    }
}

/// Everything the core holds for one paired peer.
pub struct PeerState {
    /// The pair's session id (fixed per pair: it outlives epochs and paths).
    pub session: SessionId,
    /// Key generations and the commit rule.
    pub ring: KeyRing,
    /// Handshakes this device started or answered with the peer.
    pub handshakes: u64,
    /// The path data goes on; `None` while there is none.
    pub bound: Option<Via>,
    /// Set by an eviction: the committed keys must not carry data until a newer epoch
    /// commits.
    pub evicted_at_epoch: Option<u64>,
    /// What Presence last heard.
    pub reported: Option<Reported>,
    /// A PresenceConnect in progress.
    pub connect: Option<Connect>,
    /// Our own migration in progress.
    pub migration: Option<OutMigration>,
    /// Counter of our last migration ping.
    pub ping_counter_sent: u64,
    /// Highest migration ping counter accepted from the peer.
    pub highest_ping_received: u64,
    /// The peer's endpoints as it last announced them.
    pub announced: Vec<SocketAddr>,
    /// Direct addresses of the peer from the last blueprint given to us.
    pub known_direct: Vec<SocketAddr>,
    /// While bound to the relay: when direct addresses are probed next.
    pub probe_at: Option<Instant>,
    /// Outstanding path challenges, per path.
    pub challenger: PathChallenger<Via>,
    /// Sending halves of channels.
    pub outbound: BTreeMap<ChannelId, Outbound>,
    /// Receiving halves of channels.
    pub inbound: BTreeMap<ChannelId, Inbound>,
    /// Resend every unacknowledged message on the next pump (the path changed).
    pub resend_all: bool,
    /// Liveness.
    pub heartbeat: Heartbeat,
    /// Counters.
    pub counters: PeerCounters,
}

impl PeerState {
    /// Messages queued (accepted, unacknowledged) over all channels.
    pub fn queued(&self) -> usize {
        self.outbound.values().map(Outbound::queued).sum()
    }

    /// Whether the session may carry data now: a sendable generation exists, and after
    /// an eviction only once a newer epoch is committed (the recovery completed).
    pub fn usable(&self) -> bool {
        if self.ring.best_sendable_generation().is_none() {
            return false;
        }
        match self.evicted_at_epoch {
            None => true,
            Some(evicted) => self.ring.committed_epoch().is_some_and(|e| e > evicted),
        }
    }
}

/// One transport link as the core sees it.
#[derive(Debug, Clone)]
pub struct LinkState {
    /// The peer it carries, once an authenticated frame or handshake told.
    pub peer: Option<DeviceId>,
    /// The remote address.
    pub remote: Option<SocketAddr>,
    /// Whether the address is validated: dialled by us, or answered a challenge.
    pub validated: bool,
    /// We dialled it: QUIC carries it across a change of our own address.
    pub dialled: bool,
    /// Bytes received since the last address change (anti-amplification budget).
    pub bytes_in: u64,
    /// Bytes sent while unvalidated.
    pub bytes_out_unvalidated: u64,
    /// When an authenticated frame last arrived on it.
    pub last_heard: Option<Instant>,
}

/// A dial the transport driver is working on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingDial {
    /// The peer it is for.
    pub device: DeviceId,
    /// What it is for.
    pub purpose: DialPurpose,
    /// The candidates, reported failed together if none answers.
    pub addrs: Vec<SocketAddr>,
}

/// What a dial was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialPurpose {
    /// A PresenceConnect (establishment or transport-only).
    Connect,
    /// Carrying our migration ping.
    Migration,
    /// Looking for a direct path while the session runs over the relay.
    Probe,
    /// A link of our own next to one the peer dialled: if we move, QUIC migrates a link
    /// we dialled, while one we accepted dies with our old address.
    Standby,
}
