//! The migration side of Presence: a network change starts an outbound migration (ping
//! rounds with a relay fallback each), an inbound ping starts an inbound one, and the
//! round-trip samples that time the relay fallback.

use super::reachability::RetryReason;
use super::*;

/// A migration in progress, on either side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Migration {
    /// The network change (outbound) or the inbound signal.
    pub(super) started: Instant,
    /// Outbound only: ping rounds sent so far, and when the next is due.
    pub(super) outbound: Option<PingRounds>,
    /// After our last migration ping: when the relay queue carries it too.
    pub(super) relay_copy_at: Option<Instant>,
    /// After our last migration ping: when the queued data follows it through the relay.
    pub(super) carry_at: Option<Instant>,
}

impl Migration {
    pub(super) fn new(started: Instant, outbound: Option<PingRounds>) -> Self {
        Self {
            started,
            outbound,
            relay_copy_at: None,
            carry_at: None,
        }
    }
}

/// The least wait between the relay copy of a migration ping and the data that follows
/// it: timer slack, so the two do not race.
const CARRY_FLOOR: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PingRounds {
    pub(super) sent: u32,
    pub(super) next: Instant,
    /// A ping outside the round schedule, to where the peer just said it is (both moved).
    pub(super) redirect_at: Option<Instant>,
}

impl Presence {
    /// A ping round goes out: its relay copy goes at once, and the data follows over
    /// the relay after about one and a half RTT of the old path (long enough for a
    /// migrated link to answer first, short enough that a blocked one costs little).
    ///
    /// The copy does not wait for the direct answer: when the peer moved too, its old
    /// address is dead and only the relay reaches it, and waiting cost the whole wait
    /// on every such migration. A copy costs the relay one small envelope and the peer a
    /// duplicate it drops by counter (DirectConnection skips it if the ping was already
    /// acknowledged).
    pub(super) fn arm_relay_fallback(&mut self, now: Instant, id: DeviceId) {
        let cap = self.config.migration_relay_after;
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let relay_after = peer
            .srtt_ms
            .map_or(cap, |srtt| {
                Duration::from_millis(srtt.saturating_mul(3) / 2)
            })
            .min(cap);
        if let Some(migration) = peer.migration.as_mut() {
            migration.relay_copy_at = Some(now);
            migration.carry_at = Some(now + relay_after + (relay_after / 2).max(CARRY_FLOOR));
        }
    }

    /// No direct path answers: the queued data of a migration still waiting for one
    /// follows its relay copy now (after the least gap between the two).
    pub(super) fn direct_dial_failed(&mut self, now: Instant, id: DeviceId) {
        if let Some(migration) = self.peers.get_mut(&id).and_then(|p| p.migration.as_mut()) {
            let soon = now + CARRY_FLOOR;
            if migration.carry_at.is_some_and(|at| at > soon) {
                migration.carry_at = Some(soon);
            }
        }
    }

    pub(super) fn connectivity_changed(&mut self, now: Instant, change: ConnectivityChanged) {
        self.local_endpoints = change.new;
        // The relay will say where it sees us now.
        self.reflexive = None;
        self.moved(now);
    }

    /// The relay says where it sees us. The first address after a start or a network
    /// change is published next to the interface addresses, so a peer that looks us up
    /// finds our NAT's public side. A different address while the interfaces stayed as
    /// they were is the NAT rebinding us to a new public port: the peers' direct paths
    /// point at a port that no longer leads here, so every session migrates as after a
    /// network change of ours (no handshake; the pings carry the new address).
    pub(super) fn reflexive_learned(&mut self, now: Instant, addr: Option<SocketAddr>) {
        if addr.is_none() || addr == self.reflexive {
            return;
        }
        let rebound = self.reflexive.is_some();
        self.reflexive = addr;
        if rebound {
            self.nat_rebindings += 1;
            self.moved(now);
        } else {
            self.publish_hints();
        }
    }

    /// Our reachable addresses changed: every session migrates, then the hints are
    /// published again.
    fn moved(&mut self, now: Instant) {
        let ids: Vec<DeviceId> = self.peers.keys().copied().collect();
        let spread_total = self
            .config
            .first_ping_spread_per_peer
            .saturating_mul(u32::try_from(ids.len()).unwrap_or(u32::MAX))
            .min(MAX_FIRST_PING_SPREAD);
        for id in ids {
            let status = self.status(&id);
            match status {
                Some(SessionStatus::Ready) => {
                    self.set_status(id, SessionStatus::Degraded);
                    self.start_outbound_migration(now, id, spread_total);
                }
                Some(
                    SessionStatus::Degraded
                    | SessionStatus::ReconnectingInbound
                    | SessionStatus::ReconnectingOutbound,
                ) => self.start_outbound_migration(now, id, spread_total),
                Some(
                    SessionStatus::Connecting
                    | SessionStatus::Handshaking
                    | SessionStatus::Evicted
                    | SessionStatus::Recovering,
                ) => self.retry_now(now, id, RetryReason::NetworkChanged),
                Some(SessionStatus::Closed) | None => {}
            }
        }
        self.publish_hints();
    }

    pub(super) fn start_outbound_migration(
        &mut self,
        now: Instant,
        id: DeviceId,
        spread: Duration,
    ) {
        self.set_status(id, SessionStatus::ReconnectingOutbound);
        let first_round = now + self.jitter(spread);
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        peer.scheduled = None;
        // The window starts with the first ping round (`run_migration_round`), which may
        // wait for a migration slot.
        peer.deadline = None;
        let previous = peer.migration.replace(Migration::new(
            now,
            Some(PingRounds {
                sent: 0,
                next: first_round,
                redirect_at: None,
            }),
        ));
        if previous.is_none() {
            self.outputs
                .push_back(Output::Migration(MigrationEvent::Started {
                    peer: id,
                    outbound: true,
                }));
        }
    }

    /// The first ping rounds that are due, earliest first, while migration slots are
    /// free (see `max_concurrent_migrations`).
    pub(super) fn start_due_first_rounds(&mut self, now: Instant) {
        let free = self.migration_slots().saturating_sub(self.migrating.len());
        let due: Vec<DeviceId> = self
            .first_rounds
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(free)
            .map(|(_, id)| *id)
            .collect();
        for id in due {
            self.run_migration_round(now, id, true);
            self.reindex(id);
        }
    }

    /// Migration phase 2 on the migrating device: one round of pings on every candidate,
    /// repeated with a doubling interval until the session is Ready or the window ends.
    /// The first round goes only with a slot (`slot_granted`), or when the peer said
    /// where it is now (a redirect, which is otherwise a ping outside the rounds). The
    /// migration window runs from the first round: a session that waited for a slot
    /// has had no chance to migrate yet.
    pub(super) fn run_migration_round(&mut self, now: Instant, id: DeviceId, slot_granted: bool) {
        let window = self.config.migration_window;
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let Some(rounds) = peer.migration.as_mut().and_then(|m| m.outbound.as_mut()) else {
            return;
        };
        let first = rounds.sent == 0;
        let redirect_due = rounds.redirect_at.is_some_and(|at| at <= now);
        let round_due = (rounds.next <= now && (!first || slot_granted)) || (first && redirect_due);
        if redirect_due && !round_due {
            rounds.redirect_at = None;
            self.attempt(now, id, Purpose::MigrationPing);
            return;
        }
        if !round_due {
            return;
        }
        rounds.redirect_at = None;
        rounds.sent += 1;
        if first {
            peer.deadline = Some(now + window);
        }
        let exponent = (rounds.sent - 1).min(16);
        let interval = self
            .config
            .migration_ping_interval
            .saturating_mul(1u32 << exponent)
            .min(self.config.migration_ping_max_interval);
        rounds.next = now + interval;
        let sent = rounds.sent;
        if sent > 1 {
            // A whole round went unanswered: the peer may have moved too. Ask the
            // rendezvous server where it is now.
            let request = self.request_id();
            self.outputs
                .push_back(Output::LookupEndpointHint(LookupEndpointHint {
                    request,
                    peer: id,
                }));
        }
        self.attempt(now, id, Purpose::MigrationPing);
    }

    pub(super) fn inbound_migration_ping(&mut self, now: Instant, ping: InboundMigrationPing) {
        let Some(peer) = self.peers.get_mut(&ping.peer) else {
            return;
        };
        match peer.status {
            Some(SessionStatus::Ready | SessionStatus::Degraded) => {
                let window = self.config.migration_window;
                peer.deadline = Some(now + window);
                let previous = peer.migration.replace(Migration::new(now, None));
                peer.scheduled = None;
                self.set_status(ping.peer, SessionStatus::ReconnectingInbound);
                if previous.is_none() {
                    self.outputs
                        .push_back(Output::Migration(MigrationEvent::Started {
                            peer: ping.peer,
                            outbound: false,
                        }));
                }
                self.attempt(now, ping.peer, Purpose::TransportOnly);
            }
            Some(SessionStatus::ReconnectingInbound) => {
                // The peer moved again: an authenticated ping proves it alive and holding
                // the session, so the window runs from its newest move, and the
                // reconnect goes towards its newest endpoints.
                peer.deadline = Some(now + self.config.migration_window);
                self.attempt(now, ping.peer, Purpose::TransportOnly);
            }
            Some(SessionStatus::ReconnectingOutbound) => {
                // Both moved: we now know where the peer is; the next ping round goes
                // there now (no connect). It goes from the timer, after the inputs
                // already waiting: when the ping came by the relay, DirectConnection bound
                // the relay with it and the SessionReady that follows ends the migration
                // (the peer's direct address is probed from there), so no round is sent
                // that would start a migration on the peer's side.
                if let Some(rounds) = peer.migration.as_mut().and_then(|m| m.outbound.as_mut()) {
                    rounds.redirect_at = Some(now);
                }
            }
            _ => {}
        }
    }

    /// Our migration ping had no direct answer in time: first the relay queue carries
    /// it, then the queued data follows it (DirectConnection skips either when the ping
    /// was acknowledged meanwhile).
    pub(super) fn relay_fallback(&mut self, now: Instant, id: DeviceId) {
        let Some(migration) = self.peers.get_mut(&id).and_then(|p| p.migration.as_mut()) else {
            return;
        };
        if migration.relay_copy_at.is_some_and(|at| at <= now) {
            migration.relay_copy_at = None;
            self.outputs
                .push_back(Output::RelayMigrationPing(RelayMigrationPing { peer: id }));
        }
        if migration.carry_at.is_some_and(|at| at <= now) {
            migration.carry_at = None;
            self.outputs
                .push_back(Output::CarryOverRelay(CarryOverRelay { peer: id }));
        }
    }

    /// DirectConnection measured the session's path: keep its smoothed RTT (a failed
    /// dial carries none and changes nothing).
    pub(super) fn path_measured(&mut self, measured: PathMeasured) {
        let (Some(srtt), Some(peer)) = (measured.srtt_ms, self.peers.get_mut(&measured.peer))
        else {
            return;
        };
        peer.srtt_ms = Some(srtt);
    }
}
