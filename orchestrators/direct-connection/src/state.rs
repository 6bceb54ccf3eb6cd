//! The state the core keeps per peer. Its deadlines live in the core's
//! [`TimerTable`](crate::timers::TimerTable), never here.

use crate::channels::{Inbound, Outbound};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tether_crypto::{HandshakePurpose, KeyRing, PathChallenger};
use tether_protocol::{ChannelId, LinkId, MigrationPing, PathKind, RequestId, SessionId};

/// A way a frame reaches the peer: a transport link, or the relay (forwarded to the
/// peer's device id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Via {
    /// A QUIC link.
    Link(LinkId),
    /// The relay server.
    Relay,
}

impl Via {
    /// The kind of path this is.
    pub fn kind(self) -> PathKind {
        match self {
            Via::Link(_) => PathKind::Direct,
            Via::Relay => PathKind::Relay,
        }
    }
}

/// Proof that a connect may run a handshake, and for what. Only two places create one:
/// the PresenceConnect handler, for an establishment connect (not `transport_only`:
/// establishment or recovery), and the rekey starter, only while Presence allows a
/// rekey ([`tether_protocol::AllowRekey`]: the session is Ready, so not migrating). The
/// only function that starts a handshake does nothing unless the connect holds it. A
/// transport-only reconnect, and everything a migration does, hold none, so they
/// cannot handshake.
#[derive(Debug)]
pub struct EstablishmentPermit(pub(crate) HandshakePurpose);

impl EstablishmentPermit {
    /// What the handshake is for.
    pub fn purpose(&self) -> HandshakePurpose {
        self.0
    }
}

/// A PresenceConnect in progress.
#[derive(Debug)]
pub struct Connect {
    /// Presence's request.
    pub request: RequestId,
    /// Present only for an establishment connect; absent for transport-only.
    pub permit: Option<EstablishmentPermit>,
    /// The path the handshake (or the path challenge) runs on.
    pub via: Option<Via>,
    /// The relay's turn came while the relay was down: it runs as soon as the relay is
    /// up.
    pub waiting_for_relay: bool,
}

impl Connect {
    /// Whether this is a rekey of the live session (not a Presence request).
    pub fn is_rekey(&self) -> bool {
        self.permit
            .as_ref()
            .is_some_and(|p| p.purpose() == HandshakePurpose::Rekey)
    }
}

/// Where the session's rekey stands (see [`crate::rekey`]).
#[derive(Debug, Clone, Default)]
pub struct RekeyState {
    /// Presence allows a rekey now (the session is Ready): set only by
    /// [`tether_protocol::AllowRekey`], cleared also by this device's network change.
    pub allowed: bool,
    /// When the committed generation was committed here (its age starts).
    pub generation_since: Option<Instant>,
    /// Set when the generation reached the time limit: the application traffic
    /// (messages sent plus delivered) at that moment. The next message after it makes
    /// the rekey due, so an idle session keeps its keys and is never woken for a rekey.
    pub aged_at_traffic: Option<u64>,
    /// A rekey attempt failed: no new one until the rekey timer fires again.
    pub held: bool,
}

/// Our own migration (this device moved): the ping we announce.
#[derive(Debug, Clone)]
pub struct OutMigration {
    /// The sealed ping's contents.
    pub ping: MigrationPing,
    /// When this ping was first sent (our move): a link heard from since then is
    /// known to work from our new address.
    pub started: Instant,
    /// The peer acknowledged this counter.
    pub acked: bool,
}

/// Liveness of the bound path.
#[derive(Debug, Clone, Default)]
pub struct Heartbeat {
    /// The pings not answered yet, oldest first, with when each left: at most
    /// `missed_heartbeats` (see [`Heartbeat::sent`]). An answer to any of them shows
    /// the path alive, so a round trip longer than the heartbeat interval (a loaded
    /// node, a slow path) is not taken for a dead path.
    pub unanswered: VecDeque<(u64, Instant)>,
    /// Pings unanswered in a row.
    pub missed: u32,
    /// Whether Presence was told the path is dead.
    pub reported_dead: bool,
    /// Smoothed RTT.
    pub srtt_ms: Option<u64>,
    /// Ping id counter.
    pub next_id: u64,
}

impl Heartbeat {
    /// Ping `id` left at `now`; only the newest `keep` unanswered pings are kept.
    pub fn sent(&mut self, id: u64, now: Instant, keep: u32) {
        self.unanswered.push_back((id, now));
        let keep = usize::try_from(keep.max(1)).unwrap_or(usize::MAX);
        while self.unanswered.len() > keep {
            self.unanswered.pop_front();
        }
    }

    /// Whether the newest ping (`next_id`) is still unanswered.
    pub fn newest_unanswered(&self) -> bool {
        self.unanswered
            .back()
            .is_some_and(|(id, _)| *id == self.next_id)
    }

    /// The answer to ping `id`: when it left, if it is one of the unanswered pings
    /// kept; it and every older ping are forgotten.
    pub fn answered(&mut self, id: u64) -> Option<Instant> {
        let position = self.unanswered.iter().position(|(sent, _)| *sent == id)?;
        let (_, at) = self.unanswered[position];
        self.unanswered.drain(..=position);
        Some(at)
    }
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
        Self {
            epoch,
            path: via.kind(),
            remote,
        }
    }
}

/// Counters shown in the status of a peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerCounters {
    /// Messages accepted by `send`.
    pub sent: u64,
    /// Messages the peer acknowledged (released from the queue).
    pub acknowledged: u64,
    /// Messages delivered to the application.
    pub delivered: u64,
    /// Data frames received again (dropped).
    pub duplicates: u64,
    /// Channels resynchronised because one side had lost its state (a restart).
    pub resyncs: u64,
    /// Data frames sent (first sends and retransmissions), on any path.
    pub data_frames_sent: u64,
    /// Acknowledgements sent, on any path. What else was sent (the paths' `frames_sent`
    /// minus these two) is control traffic: pings, migration signals, challenges.
    pub acks_sent: u64,
    /// Session frames exchanged over direct links.
    pub direct: PathTraffic,
    /// Session frames exchanged through the relay (live or queued).
    pub relay: PathTraffic,
    /// Connects with a handshake (establishment, recovery) that no path answered in
    /// time.
    pub handshake_timeouts: u64,
    /// Transport-only reconnects that no path answered in time.
    pub reconnect_timeouts: u64,
    /// Handshakes that committed with an epoch their responder raised: one side had
    /// restarted and lost the session the other still held, and this handshake brought
    /// the pair back (counted on both sides, once per such handshake).
    pub restart_handshakes: u64,
    /// Rekeys committed: new generations of the live session after a time or volume
    /// limit, whichever side initiated (counted on both sides, once per epoch).
    pub rekeys: u64,
    /// Rekey initiations of the peer not answered because the session was not Ready
    /// here (migrating, degraded): the peer tries again once both sides are Ready.
    pub rekeys_refused: u64,
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

/// A direct path the session is not on although it answers: it answered its challenge
/// with a round trip more than
/// [`DIRECT_SLOWER_TOLERANCE_MS`](crate::path_choice::DIRECT_SLOWER_TOLERANCE_MS) above
/// the relay's, or the session fell back from it to the relay (more than
/// [`FALLBACK_SLOWER_MS`](crate::path_choice::FALLBACK_SLOWER_MS) slower, or with
/// [`FALLBACK_MISSED`](crate::path_choice::FALLBACK_MISSED) late heartbeats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeclinedDirect {
    /// The direct path's round trip (its challenge's, or its heartbeats' smoothed), ms.
    pub direct_rtt_ms: u64,
    /// The relay path's smoothed round trip then, ms.
    pub relay_rtt_ms: u64,
    /// Set when the session fell back from this path: its heartbeats unanswered within
    /// their interval among the last
    /// [`QUALITY_WINDOW`](crate::path_choice::QUALITY_WINDOW).
    pub fell_back_with_missed: Option<u32>,
    /// Set when the session fell back from this path and its losses were known: the
    /// share of its packets lost (per cent), and the relay link's if known.
    pub fell_back_with_loss: Option<(u8, Option<u8>)>,
    /// Set when the session fell back from this path: seconds until a direct path is
    /// taken again (the hold, doubled for each recent fallback before it).
    pub retry_after_s: Option<u64>,
}

/// A session's fallbacks from a direct path to the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fallback {
    /// When the session last fell back.
    pub at: Instant,
    /// No direct path is taken before this (see [`crate::path_choice::FALLBACK_HOLD`]).
    pub held_until: Instant,
    /// Fallbacks before the last one that came within
    /// [`crate::path_choice::HOLD_RESET_AFTER`] of each other: each doubles the hold.
    pub in_a_row: u32,
    /// The direct path's share lost (per cent) when the session left it for losses
    /// while the relay's were not known: the hold is lifted if the relay turns out as
    /// lossy. `None` once checked, or when the fallback was not for that.
    pub on_trust: Option<u8>,
}

/// Everything the core holds for one paired peer.
pub struct PeerState {
    /// The pair's session id (fixed per pair: it outlives epochs and paths).
    pub session: SessionId,
    /// Key generations and the commit rule.
    pub ring: KeyRing,
    /// Completed handshakes: generations committed with the peer, one per new epoch (a
    /// crossing handshake that replaces a generation within its epoch is not another).
    pub generations: u64,
    /// Handshake messages 1 this device sent (every retry counts) or answered.
    pub handshake_attempts: u64,
    /// The rekey's state.
    pub rekey: RekeyState,
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
    /// When our direct candidates last went to the peer over the relay.
    pub candidates_sent_at: Option<Instant>,
    /// When the peer's direct candidates were last dialled all at once.
    pub candidates_dialled_at: Option<Instant>,
    /// Rounds of dials since the session last bound the relay or heard something new
    /// about the peer's addresses: the probe interval doubles with each.
    pub probe_rounds: u32,
    /// Smoothed round trip of the relay path, from liveness pings answered over it.
    pub relay_rtt_ms: Option<u64>,
    /// Where the peer last said it sees this device on a direct link, since this
    /// device last moved. Boxed: every peer pays the inline size.
    pub seen_by_peer: Option<Box<std::net::SocketAddr>>,
    /// When this device last told the peer where it sees it (ms since start).
    pub observed_told_at_ms: Option<u64>,
    /// The last direct path that answered while the session was on the relay and was
    /// left unused for being slower: its round trip and the relay's (for `status`).
    pub direct_declined: Option<Box<DeclinedDirect>>,
    /// The link of [`PeerState::direct_declined`]: traffic on it does not move the
    /// session off the relay either.
    pub declined_link: Option<LinkId>,
    /// How the bound direct path fares, to fall back to the relay when it is clearly
    /// worse ([`crate::path_choice`]); boxed, as it matters only while a session is
    /// direct and `PeerState` is held per configured peer.
    pub direct_quality: Box<crate::path_choice::DirectQuality>,
    /// The session's last fallback from a direct path to the relay, if any (boxed: most
    /// sessions never fall back).
    pub fallback: Option<Box<Fallback>>,
    /// When (our wall clock, Unix ms) the peer last told us itself where it is (a
    /// migration ping or ack, or `Candidates`): rendezvous hints sealed before it are
    /// stale.
    pub heard_from_peer_at_ms: Option<u64>,
    /// The peer's newest announcement (authenticated migration ping or ack, or sealed
    /// rendezvous hint): where it says it is now. Dialled first.
    pub announced: Vec<SocketAddr>,
    /// Direct candidates in ConnectionBlueprint's latest order.
    pub blueprint: Vec<SocketAddr>,
    /// Outstanding path challenges, per path.
    pub challenger: PathChallenger<Via>,
    /// Handshake initiations for this session we may still answer now.
    pub initiation_budget: InitiationBudget,
    /// Sending halves of channels.
    pub outbound: BTreeMap<ChannelId, Outbound>,
    /// Receiving halves of channels.
    pub inbound: BTreeMap<ChannelId, Inbound>,
    /// The path of the latest in-order data frame whose acknowledgement waits for
    /// `Timer::AckDelay` (see `frames::ACK_EVERY_FRAMES`).
    pub ack_via: Option<Via>,
    /// Resend every unacknowledged message on the next pump (the path changed).
    pub resend_all: bool,
    /// Presence was told a message waits for a usable path (`SendWaiting`); cleared
    /// when the session carries data again.
    pub send_waiting_reported: bool,
    /// A `send` was refused because the queue was full: tell the application
    /// (`SendCapacity`) once it has room again.
    pub queue_full_refused: bool,
    /// Bytes of delivered messages the application has not consumed yet.
    pub unconsumed_bytes: usize,
    /// Liveness.
    pub heartbeat: Heartbeat,
    /// When the last authentic frame from the peer arrived.
    pub last_received: Option<Instant>,
    /// Operator probes waiting for their answer (see `probe.rs`).
    pub operator_pings: crate::operator_ping::Pings,
    /// Counters.
    pub counters: PeerCounters,
}

impl PeerState {
    /// Messages queued (accepted, unacknowledged) over all channels.
    pub fn queued(&self) -> usize {
        self.outbound.values().map(Outbound::queued).sum()
    }

    /// Bytes queued (accepted, unacknowledged) over all channels.
    pub fn queued_bytes(&self) -> usize {
        self.outbound.values().map(Outbound::queued_bytes).sum()
    }

    /// What this peer's messages hold of the receive budget: delivered and not
    /// consumed, and buffered ahead of a gap.
    pub fn held_bytes(&self) -> usize {
        // Summed, not kept: a resynchronised channel drops its early messages, and a
        // running total would miss that (at most `MAX_INBOUND_CHANNELS` terms).
        self.unconsumed_bytes
            + self
                .inbound
                .values()
                .map(Inbound::early_bytes)
                .sum::<usize>()
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

/// Handshake initiations one session may make us answer in a burst: each costs two
/// Diffie-Hellman operations before it can be told from a replay. A peer's retries (one
/// a second), a crossing pair and a restart fit well within it.
const INITIATION_BURST: u32 = 8;

/// One more initiation becomes answerable every this long: four a second, far above
/// what a well-behaved peer sends and far below what a CPU core computes.
const INITIATION_REFILL: Duration = Duration::from_millis(250);

/// A token bucket of handshake initiations for one session (its budget of
/// Diffie-Hellman work).
#[derive(Debug, Clone)]
pub struct InitiationBudget {
    tokens: u32,
    refilled_at: Instant,
}

impl InitiationBudget {
    /// A full bucket at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            tokens: INITIATION_BURST,
            refilled_at: now,
        }
    }

    /// Takes one initiation's worth at `now`, if any is left.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled_at);
        let earned = elapsed.as_nanos() / INITIATION_REFILL.as_nanos().max(1);
        if earned > 0 {
            let earned = u32::try_from(earned).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(earned).min(INITIATION_BURST);
            self.refilled_at += INITIATION_REFILL * earned.min(INITIATION_BURST);
            if self.tokens == INITIATION_BURST {
                self.refilled_at = now;
            }
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node keeps one `PeerState` per paired peer, with or without a session, in a
    /// B-tree whose nodes hold eleven of them: its inline size is paid per peer, more
    /// than once over. Key generations and handshakes are boxed inside the key ring.
    #[test]
    fn a_peer_state_keeps_its_large_parts_out_of_line() {
        let bytes = std::mem::size_of::<PeerState>();
        assert!(
            bytes <= 1024,
            "PeerState is {bytes} bytes: something large is held inline again"
        );
    }

    #[test]
    fn the_initiation_budget_allows_a_burst_then_four_a_second() {
        let t0 = Instant::now();
        let mut budget = InitiationBudget::new(t0);
        let burst = (0..100).filter(|_| budget.take(t0)).count();
        assert_eq!(burst, INITIATION_BURST as usize);
        let after_a_second = t0 + Duration::from_secs(1);
        let refilled = (0..100).filter(|_| budget.take(after_a_second)).count();
        assert_eq!(refilled, 4);
        // A long quiet time refills up to the burst, not beyond.
        let much_later = t0 + Duration::from_secs(3600);
        let again = (0..100).filter(|_| budget.take(much_later)).count();
        assert_eq!(again, INITIATION_BURST as usize);
    }
}
