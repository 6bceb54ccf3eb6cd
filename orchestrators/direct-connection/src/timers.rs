//! Every timer of the core, in one table (in the style of quinn-proto's `TimerTable`).
//!
//! A timer is a kind ([`Timer`]) of one peer's session. The table keeps each armed
//! timer once, indexed both by `(peer, kind)` and by deadline, so
//! [`TimerTable::next_timeout`] is a lookup and [`TimerTable::expired`] visits only what
//! is due, whatever the number of peers.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;
use tether_protocol::DeviceId;

/// The kinds of timer a peer's session has. The order is the order in which timers
/// due at the same call run for one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// A PresenceConnect is reported failed.
    ConnectDeadline,
    /// The relay joins a connect that no direct path completed.
    ConnectRelay,
    /// An unanswered handshake message 1 is sent again, fresh.
    HandshakeRetry,
    /// A liveness ping on the bound path.
    Heartbeat,
    /// While on the relay, the peer's direct addresses are dialled again.
    Probe,
    /// In-order data received since the last acknowledgement is acknowledged.
    AckDelay,
    /// The oldest unacknowledged message reaches its retransmission timeout.
    Retransmit,
    /// The committed generation reaches the rekey age, or a failed rekey may be tried
    /// again.
    Rekey,
}

/// Armed timers: at most one deadline per peer and kind.
#[derive(Debug, Default)]
pub struct TimerTable {
    deadlines: BTreeMap<(DeviceId, Timer), Instant>,
    by_deadline: BTreeSet<(Instant, DeviceId, Timer)>,
}

impl TimerTable {
    /// Arms (or moves) `peer`'s `timer` to fire at `at`.
    pub fn set(&mut self, peer: DeviceId, timer: Timer, at: Instant) {
        if let Some(old) = self.deadlines.insert((peer, timer), at) {
            self.by_deadline.remove(&(old, peer, timer));
        }
        self.by_deadline.insert((at, peer, timer));
    }

    /// Arms the timer at `at`, or disarms it for `None`.
    pub fn set_or_stop(&mut self, peer: DeviceId, timer: Timer, at: Option<Instant>) {
        match at {
            Some(at) => self.set(peer, timer, at),
            None => self.stop(peer, timer),
        }
    }

    /// Disarms `peer`'s `timer` (harmless when it is not armed).
    pub fn stop(&mut self, peer: DeviceId, timer: Timer) {
        if let Some(at) = self.deadlines.remove(&(peer, timer)) {
            self.by_deadline.remove(&(at, peer, timer));
        }
    }

    /// When `peer`'s `timer` fires, if armed.
    pub fn get(&self, peer: DeviceId, timer: Timer) -> Option<Instant> {
        self.deadlines.get(&(peer, timer)).copied()
    }

    /// Whether `peer`'s `timer` is armed.
    pub fn is_armed(&self, peer: DeviceId, timer: Timer) -> bool {
        self.deadlines.contains_key(&(peer, timer))
    }

    /// The earliest deadline of all armed timers.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.by_deadline.first().map(|(at, _, _)| *at)
    }

    /// The timers due at `now`, ordered by peer, then kind. They stay armed: the caller
    /// disarms each one as it runs it (see [`TimerTable::take_if_due`]), so a handler
    /// that moves another due timer is respected.
    pub fn expired(&self, now: Instant) -> Vec<(DeviceId, Timer)> {
        let mut due: Vec<(DeviceId, Timer)> = self
            .by_deadline
            .iter()
            .take_while(|(at, _, _)| *at <= now)
            .map(|(_, peer, timer)| (*peer, *timer))
            .collect();
        due.sort_unstable();
        due
    }

    /// Disarms and returns true if `peer`'s `timer` is due at `now`.
    pub fn take_if_due(&mut self, peer: DeviceId, timer: Timer, now: Instant) -> bool {
        if self.get(peer, timer).is_some_and(|at| at <= now) {
            self.stop(peer, timer);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn peer(n: u8) -> DeviceId {
        DeviceId([n; 32])
    }

    #[test]
    fn one_deadline_per_peer_and_kind_and_the_earliest_is_next() {
        let t0 = Instant::now();
        let mut table = TimerTable::default();
        assert_eq!(table.next_timeout(), None);
        table.set(peer(1), Timer::Heartbeat, t0 + Duration::from_secs(2));
        table.set(peer(2), Timer::Probe, t0 + Duration::from_secs(5));
        table.set(peer(1), Timer::Heartbeat, t0 + Duration::from_secs(7));
        assert_eq!(table.next_timeout(), Some(t0 + Duration::from_secs(5)));
        table.stop(peer(2), Timer::Probe);
        assert_eq!(table.next_timeout(), Some(t0 + Duration::from_secs(7)));
        table.set_or_stop(peer(1), Timer::Heartbeat, None);
        assert_eq!(table.next_timeout(), None);
        assert!(!table.is_armed(peer(1), Timer::Heartbeat));
    }

    #[test]
    fn expired_lists_only_what_is_due_in_peer_then_kind_order() {
        let t0 = Instant::now();
        let mut table = TimerTable::default();
        table.set(peer(2), Timer::ConnectDeadline, t0);
        table.set(peer(1), Timer::Retransmit, t0);
        table.set(peer(1), Timer::Heartbeat, t0 + Duration::from_millis(1));
        table.set(peer(1), Timer::Probe, t0 + Duration::from_secs(1));
        let now = t0 + Duration::from_millis(1);
        assert_eq!(
            table.expired(now),
            vec![
                (peer(1), Timer::Heartbeat),
                (peer(1), Timer::Retransmit),
                (peer(2), Timer::ConnectDeadline),
            ]
        );
        assert!(table.take_if_due(peer(1), Timer::Heartbeat, now));
        assert!(!table.take_if_due(peer(1), Timer::Heartbeat, now));
        assert!(!table.take_if_due(peer(1), Timer::Probe, now));
        assert_eq!(table.expired(now).len(), 2);
    }
}
