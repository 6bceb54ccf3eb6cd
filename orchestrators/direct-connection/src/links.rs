//! The link table: every transport link the core knows, the dials in progress, which
//! peer each one carries, path validation state and the anti-amplification budget of
//! an address that has not answered a challenge yet (invariant 6).
//!
//! Links and dials are indexed by peer, so what concerns one peer is found without a
//! walk over every link of the node.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Instant;
use tether_protocol::{DeviceId, LinkId, RequestId};

/// Anti-amplification factor: until an address is validated the node sends it at most
/// this many times the bytes it received from it (QUIC's rule, RFC 9000 §8).
pub const AMPLIFICATION_FACTOR: u64 = 3;

/// One transport link as the core sees it.
#[derive(Debug, Clone)]
pub struct LinkState {
    /// The peer it carries, once a dial, an authenticated frame or a handshake told.
    pub peer: Option<DeviceId>,
    /// The remote address.
    pub remote: Option<SocketAddr>,
    /// Whether the address is validated: dialled by us, or answered a challenge.
    pub validated: bool,
    /// We dialled it: QUIC carries it across a change of our own address.
    pub dialled: bool,
    /// Authenticated bytes received since the last address change (the budget).
    pub bytes_in: u64,
    /// Bytes sent while unvalidated.
    pub bytes_out_unvalidated: u64,
    /// When an authenticated frame last arrived on it.
    pub last_heard: Option<Instant>,
    /// When it last carried an answer to something this device sent on it (a path
    /// response, a migration ack): proof that it carries our frames, not only the
    /// peer's.
    pub last_answer: Option<Instant>,
    /// When it came up (its QUIC handshake was a round trip of its own).
    pub opened_at: Instant,
    /// An accepted link no peer has claimed yet: when it is closed if none does.
    pub claim_by: Option<Instant>,
    /// The remote address last told to the peer on this link (`ObservedAddress`).
    pub observed_told: Option<SocketAddr>,
}

impl LinkState {
    /// When the link last showed it is in use: its last authenticated frame, or its
    /// opening.
    pub fn last_active(&self) -> Instant {
        self.last_heard.unwrap_or(self.opened_at)
    }
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

/// Most accepted links held at once that no peer has claimed yet. Well-behaved peers
/// claim a link within a round trip, so only a burst of new peers or a flood fills it;
/// 64 matches the transport's pending accepts, and beyond it the oldest unclaimed link
/// is closed, so a flood of silent clients costs a bounded amount of memory.
pub const MAX_UNCLAIMED_LINKS: usize = 64;

/// Links and dials, indexed by id and by peer.
#[derive(Debug, Default)]
pub struct LinkTable {
    links: BTreeMap<LinkId, LinkState>,
    links_by_peer: BTreeSet<(DeviceId, LinkId)>,
    dials: BTreeMap<RequestId, PendingDial>,
    dials_by_peer: BTreeSet<(DeviceId, RequestId)>,
    /// Accepted links no peer has claimed yet, by the instant they are closed if none
    /// does (see [`LinkTable::unclaimed_expired`]).
    unclaimed: BTreeSet<(Instant, LinkId)>,
}

impl LinkTable {
    /// A link came up: dialled by us for `dial` (its peer and purpose), or accepted.
    /// An accepted link must carry a handshake or an authenticated frame by
    /// `claim_by`, or it is closed then. Returns the unclaimed link it displaced, if
    /// [`MAX_UNCLAIMED_LINKS`] were held already (the oldest: to be closed).
    pub fn link_up(
        &mut self,
        now: Instant,
        claim_by: Instant,
        link: LinkId,
        remote: Option<SocketAddr>,
        dial: Option<DeviceId>,
    ) -> Option<LinkId> {
        self.links.insert(
            link,
            LinkState {
                peer: dial,
                remote,
                // An address we dialled is one we chose; an accepted one must prove
                // itself before it gets more than the amplification budget.
                validated: dial.is_some(),
                dialled: dial.is_some(),
                bytes_in: 0,
                bytes_out_unvalidated: 0,
                last_heard: None,
                last_answer: None,
                opened_at: now,
                claim_by: dial.is_none().then_some(claim_by),
                observed_told: None,
            },
        );
        match dial {
            Some(device) => {
                self.links_by_peer.insert((device, link));
            }
            None => {
                self.unclaimed.insert((claim_by, link));
            }
        }
        if self.unclaimed.len() <= MAX_UNCLAIMED_LINKS {
            return None;
        }
        let (_, oldest) = self.unclaimed.pop_first()?;
        self.links.remove(&oldest);
        Some(oldest)
    }

    /// Forgets a link that went down; returns what it was.
    pub fn remove(&mut self, link: LinkId) -> Option<LinkState> {
        let state = self.links.remove(&link)?;
        match state.peer {
            Some(device) => {
                self.links_by_peer.remove(&(device, link));
            }
            None => {
                if let Some(at) = state.claim_by {
                    self.unclaimed.remove(&(at, link));
                }
            }
        }
        Some(state)
    }

    /// When the next unclaimed accepted link is due to close.
    pub fn next_unclaimed_deadline(&self) -> Option<Instant> {
        self.unclaimed.first().map(|(at, _)| *at)
    }

    /// Removes and returns the accepted links still unclaimed at `now`: nobody proved
    /// to be a peer on them in time (a slow or hostile client), so they are closed.
    pub fn unclaimed_expired(&mut self, now: Instant) -> Vec<LinkId> {
        let mut expired = Vec::new();
        while let Some(&(at, link)) = self.unclaimed.first() {
            if at > now {
                break;
            }
            self.unclaimed.pop_first();
            self.links.remove(&link);
            expired.push(link);
        }
        expired
    }

    /// A link's state.
    pub fn get(&self, link: LinkId) -> Option<&LinkState> {
        self.links.get(&link)
    }

    /// Whether the link is known.
    pub fn contains(&self, link: LinkId) -> bool {
        self.links.contains_key(&link)
    }

    /// The link's remote address when the peer has not been told it on this link yet
    /// (it is then marked told): one `ObservedAddress` per address of a link.
    pub fn observed_to_tell(&mut self, link: LinkId) -> Option<SocketAddr> {
        let state = self.links.get_mut(&link)?;
        let remote = state.remote?;
        if state.observed_told == Some(remote) {
            return None;
        }
        state.observed_told = Some(remote);
        Some(remote)
    }

    /// The link's remote address.
    pub fn remote(&self, link: LinkId) -> Option<SocketAddr> {
        self.links.get(&link).and_then(|l| l.remote)
    }

    /// Whether the link's address is validated.
    pub fn is_validated(&self, link: LinkId) -> bool {
        self.links.get(&link).is_some_and(|l| l.validated)
    }

    /// The link carries `device` (an authenticated frame or handshake said so).
    pub fn attribute(&mut self, link: LinkId, device: DeviceId) {
        if let Some(state) = self.links.get_mut(&link) {
            if let Some(old) = state.peer.replace(device) {
                self.links_by_peer.remove(&(old, link));
            }
            if let Some(at) = state.claim_by.take() {
                self.unclaimed.remove(&(at, link));
            }
            self.links_by_peer.insert((device, link));
        }
    }

    /// An authenticated frame from `device` arrived on the link at `now`.
    pub fn heard(&mut self, link: LinkId, device: DeviceId, now: Instant) {
        self.attribute(link, device);
        if let Some(state) = self.links.get_mut(&link) {
            state.last_heard = Some(now);
        }
    }

    /// The link's address answered a challenge (or the initiator proved its keys on
    /// it): no budget applies any more. Returns the remote address.
    pub fn validate(&mut self, link: LinkId) -> Option<SocketAddr> {
        let state = self.links.get_mut(&link)?;
        state.validated = true;
        state.remote
    }

    /// The link's remote address changed: it must validate again (invariant 6).
    /// Returns the peer it carries.
    pub fn remote_changed(&mut self, link: LinkId, remote: SocketAddr) -> Option<DeviceId> {
        let state = self.links.get_mut(&link)?;
        state.remote = Some(remote);
        state.validated = false;
        state.bytes_in = 0;
        state.bytes_out_unvalidated = 0;
        state.peer
    }

    /// Authenticated bytes received on the link buy budget (only those: forged input
    /// must not buy a spoofed address more traffic).
    pub fn credit(&mut self, link: LinkId, len: u64) {
        if let Some(state) = self.links.get_mut(&link) {
            state.bytes_in = state.bytes_in.saturating_add(len);
        }
    }

    /// Whether about `len` more bytes fit the link's budget (always, once validated);
    /// `None` for an unknown link.
    pub fn budget_allows(&self, link: LinkId, len: u64) -> Option<bool> {
        let state = self.links.get(&link)?;
        if state.validated {
            return Some(true);
        }
        let budget = state.bytes_in.saturating_mul(AMPLIFICATION_FACTOR);
        Some(state.bytes_out_unvalidated.saturating_add(len) <= budget)
    }

    /// `len` bytes were handed to the transport on the link.
    pub fn record_sent(&mut self, link: LinkId, len: u64) {
        if let Some(state) = self.links.get_mut(&link) {
            if !state.validated {
                state.bytes_out_unvalidated = state.bytes_out_unvalidated.saturating_add(len);
            }
        }
    }

    /// The links that carry `device`, in id order.
    pub fn of_peer(&self, device: DeviceId) -> Vec<LinkId> {
        self.peer_links(device).map(|(id, _)| id).collect()
    }

    /// How many open links carry `device` (accepted links count once an authenticated
    /// frame or a handshake attributed them).
    pub fn links_of_peer_count(&self, device: DeviceId) -> usize {
        self.peer_links(device).count()
    }

    /// The newest validated link that carries `device`.
    pub fn live_of(&self, device: DeviceId) -> Option<LinkId> {
        self.peer_links(device)
            .filter(|(_, l)| l.validated)
            .map(|(id, _)| id)
            .next_back()
    }

    /// The link carried an answer to something this device sent on it, at `now`.
    pub fn answered(&mut self, link: LinkId, now: Instant) {
        if let Some(state) = self.links.get_mut(&link) {
            state.last_answer = Some(now);
        }
    }

    /// Whether the link has shown since `at` that it carries this device's frames: it
    /// answered one, or it came up since (its QUIC handshake was a round trip). After
    /// this device moved, a link the peer's frames still arrive on may not carry ours
    /// (the old socket still receives; a new one of another address family cannot
    /// send there).
    pub fn answered_since(&self, link: LinkId, at: Instant) -> bool {
        self.links
            .get(&link)
            .is_some_and(|l| l.opened_at >= at || l.last_answer.is_some_and(|answer| answer >= at))
    }

    /// Whether some link to `device` has answered since `at` (see
    /// [`LinkTable::answered_since`]).
    pub fn answered_directly_since(&self, device: DeviceId, at: Instant) -> bool {
        self.peer_links(device)
            .any(|(link, _)| self.answered_since(link, at))
    }

    /// Whether some link to `device` at `remote` is one we dialled.
    pub fn has_dialled(&self, device: DeviceId, remote: SocketAddr) -> bool {
        self.peer_links(device)
            .any(|(_, l)| l.dialled && l.remote == Some(remote))
    }

    fn peer_links(
        &self,
        device: DeviceId,
    ) -> impl DoubleEndedIterator<Item = (LinkId, &LinkState)> {
        self.links_by_peer
            .range((device, LinkId(0))..=(device, LinkId(u64::MAX)))
            .filter_map(|(_, id)| self.links.get(id).map(|state| (*id, state)))
    }

    /// Records a dial the transport driver is asked to make.
    pub fn add_dial(&mut self, request: RequestId, dial: PendingDial) {
        self.dials_by_peer.insert((dial.device, request));
        self.dials.insert(request, dial);
    }

    /// The dial a transport answer is about, forgotten.
    pub fn take_dial(&mut self, request: RequestId) -> Option<PendingDial> {
        let dial = self.dials.remove(&request)?;
        self.dials_by_peer.remove(&(dial.device, request));
        Some(dial)
    }

    /// Whether a dial for `device` that tries `addr` is in progress (for any purpose).
    pub fn dialling_to(&self, device: DeviceId, addr: SocketAddr) -> bool {
        self.dials_by_peer
            .range((device, RequestId(0))..=(device, RequestId(u64::MAX)))
            .any(|(_, request)| {
                self.dials
                    .get(request)
                    .is_some_and(|d| d.addrs.contains(&addr))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> DeviceId {
        DeviceId([n; 32])
    }

    #[test]
    fn an_accepted_link_gets_three_times_what_it_sent_until_validated() {
        let mut table = LinkTable::default();
        let _ = table.link_up(
            Instant::now(),
            Instant::now(),
            LinkId(1),
            "10.0.0.1:1".parse().ok(),
            None,
        );
        assert_eq!(table.budget_allows(LinkId(1), 1), Some(false));
        table.credit(LinkId(1), 100);
        assert_eq!(table.budget_allows(LinkId(1), 300), Some(true));
        table.record_sent(LinkId(1), 250);
        assert_eq!(table.budget_allows(LinkId(1), 51), Some(false));
        table.validate(LinkId(1));
        assert_eq!(table.budget_allows(LinkId(1), 1 << 20), Some(true));
        // A new address starts from nothing again.
        table.remote_changed(LinkId(1), "10.0.0.2:1".parse().unwrap());
        assert_eq!(table.budget_allows(LinkId(1), 1), Some(false));
        assert_eq!(table.budget_allows(LinkId(9), 1), None);
    }

    #[test]
    fn links_and_dials_are_found_by_peer() {
        let mut table = LinkTable::default();
        let _ = table.link_up(
            Instant::now(),
            Instant::now(),
            LinkId(1),
            None,
            Some(peer(1)),
        );
        let standby_at: SocketAddr = "192.0.2.7:4433".parse().unwrap();
        let _ = table.link_up(Instant::now(), Instant::now(), LinkId(2), None, None);
        let _ = table.link_up(
            Instant::now(),
            Instant::now(),
            LinkId(3),
            Some(standby_at),
            Some(peer(2)),
        );
        table.attribute(LinkId(2), peer(1));
        assert_eq!(table.of_peer(peer(1)), vec![LinkId(1), LinkId(2)]);
        assert_eq!(table.live_of(peer(1)), Some(LinkId(1)));
        table.validate(LinkId(2));
        assert_eq!(table.live_of(peer(1)), Some(LinkId(2)));
        table.remove(LinkId(2));
        assert_eq!(table.of_peer(peer(1)), vec![LinkId(1)]);
        assert!(table.has_dialled(peer(2), standby_at));
        assert!(!table.has_dialled(peer(2), "192.0.2.8:4433".parse().unwrap()));

        let dial = PendingDial {
            device: peer(2),
            purpose: DialPurpose::Connect,
            addrs: vec![standby_at],
        };
        table.add_dial(RequestId(7), dial.clone());
        assert!(table.dialling_to(peer(2), standby_at));
        assert!(!table.dialling_to(peer(1), standby_at));
        assert!(!table.dialling_to(peer(2), "192.0.2.8:4433".parse().unwrap()));
        assert_eq!(table.take_dial(RequestId(7)), Some(dial));
        assert!(!table.dialling_to(peer(2), standby_at));
    }

    #[test]
    fn unclaimed_links_are_bounded_and_the_oldest_goes_first() {
        let t0 = Instant::now();
        let mut table = LinkTable::default();
        let at = |n: u64| t0 + std::time::Duration::from_millis(n);
        for n in 0..MAX_UNCLAIMED_LINKS as u64 {
            assert_eq!(
                table.link_up(at(n), at(n + 5000), LinkId(n), None, None),
                None
            );
        }
        // One more displaces the oldest unclaimed link.
        let next = MAX_UNCLAIMED_LINKS as u64;
        assert_eq!(
            table.link_up(at(next), at(next + 5000), LinkId(next), None, None),
            Some(LinkId(0))
        );
        assert!(!table.contains(LinkId(0)));
        // A claimed link leaves the unclaimed set and is never displaced.
        table.attribute(LinkId(1), peer(1));
        for n in next + 1..next + 200 {
            let _ = table.link_up(at(n), at(n + 5000), LinkId(n), None, None);
        }
        assert!(table.contains(LinkId(1)));
        assert_eq!(table.unclaimed.len(), MAX_UNCLAIMED_LINKS);
    }
}
