//! Transition traces of the Presence core. Where to connect is DirectConnection's
//! concern: Presence's outputs say only what to do and when.

use crate::config::Config;
use crate::core::{Input, MigrationEvent, Output, Presence};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tether_protocol::shell::SansIoCore;
use tether_protocol::{
    ConnectFailed, ConnectivityChanged, DeviceId, DirectDialFailed, Endpoint, Epoch,
    HandshakeStarted, InboundMigrationPing, PathKind, PathMeasured, PeerEndpointsChanged,
    RequestId, SessionId, SessionReady, SessionStatus,
};

fn peer(n: u8) -> DeviceId {
    DeviceId([n; 32])
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn session() -> SessionId {
    SessionId::from_random_bytes([9; 16])
}

struct Driver {
    core: Presence,
    t0: Instant,
    now: Instant,
    trace: Vec<String>,
    /// Every output, for assertions beyond the trace.
    outputs: Vec<Output>,
}

impl Driver {
    fn new(config: Config) -> Self {
        let t0 = Instant::now();
        Self {
            core: Presence::new(config, ChaCha8Rng::seed_from_u64(0).get_seed(), t0),
            t0,
            now: t0,
            trace: Vec::new(),
            outputs: Vec::new(),
        }
    }

    fn ms(&self) -> u128 {
        (self.now - self.t0).as_millis()
    }

    fn input(&mut self, label: &str, input: Input) {
        self.trace.push(format!("{:>6}ms in  {label}", self.ms()));
        self.core.handle(self.now, input);
        self.drain();
    }

    /// Advances virtual time to `ms`, firing every timeout on the way.
    fn advance_to(&mut self, ms: u64) {
        let target = self.t0 + Duration::from_millis(ms);
        let mut wakeups = 0;
        while let Some(at) = self.core.poll_timeout() {
            if at > target {
                break;
            }
            wakeups += 1;
            assert!(
                wakeups < 10_000,
                "the core keeps asking to be woken at {at:?}"
            );
            self.now = self.now.max(at);
            self.core.handle_timeout(self.now);
            self.drain();
        }
        self.now = target;
    }

    fn drain(&mut self) {
        self.core.check_index();
        while let Some(output) = self.core.poll_output() {
            let line = describe(&output);
            self.trace.push(format!("{:>6}ms out {line}", self.ms()));
            self.outputs.push(output);
        }
    }

    fn ready(&mut self, who: u8, after_handshake: bool, epoch: u64) {
        self.ready_as(who, after_handshake, false, epoch);
    }

    /// DirectConnection committed a rekey of the live session.
    fn rekeyed(&mut self, who: u8, epoch: u64) {
        self.ready_as(who, true, true, epoch);
    }

    fn ready_as(&mut self, who: u8, after_handshake: bool, rekey: bool, epoch: u64) {
        self.input(
            &format!(
                "SessionReady p{who} e{epoch} handshake={after_handshake}{}",
                if rekey { " rekey" } else { "" }
            ),
            Input::SessionReady(SessionReady {
                request: None,
                peer: peer(who),
                session: session(),
                epoch: Epoch(epoch),
                path: PathKind::Direct,
                remote: Some(addr("192.0.2.1:4433")),
                after_handshake,
                rekey,
            }),
        );
    }

    fn establish(&mut self, who: u8) {
        self.input(&format!("AddPeer p{who}"), Input::AddPeer(peer(who)));
        self.advance_to(300);
        self.input(
            &format!("HandshakeStarted p{who}"),
            Input::HandshakeStarted(HandshakeStarted {
                request: None,
                peer: peer(who),
            }),
        );
        self.ready(who, true, 1);
    }

    fn count(&self, predicate: impl Fn(&Output) -> bool) -> usize {
        self.outputs.iter().filter(|o| predicate(o)).count()
    }

    /// What `pick` takes from each output it recognises, in order.
    fn picked<T>(&self, pick: impl Fn(&Output) -> Option<T>) -> Vec<T> {
        self.outputs.iter().filter_map(pick).collect()
    }
}

fn describe(output: &Output) -> String {
    let peer_name = |id: &DeviceId| format!("p{}", id.0[0]);
    match output {
        Output::RelayPoll(_) => "RelayPoll".into(),
        Output::ConnectPeer(m) => format!(
            "ConnectPeer {} transport_only={}",
            peer_name(&m.peer),
            m.transport_only,
        ),
        Output::RelayMigrationPing(m) => format!("RelayMigrationPing {}", peer_name(&m.peer)),
        Output::CarryOverRelay(m) => format!("CarryOverRelay {}", peer_name(&m.peer)),
        Output::SendMigrationPing(m) => format!(
            "SendMigrationPing {} new={:?}",
            peer_name(&m.peer),
            m.new_endpoints,
        ),
        Output::EvictSession(m) => format!("EvictSession {} {:?}", peer_name(&m.peer), m.reason),
        Output::AllowRekey(m) => format!("AllowRekey {} {}", peer_name(&m.peer), m.allowed),
        Output::PublishEndpointHint(m) => {
            format!(
                "PublishEndpointHint {} {:?}",
                peer_name(&m.peer),
                m.endpoints
            )
        }
        Output::LookupEndpointHint(m) => format!("LookupEndpointHint {}", peer_name(&m.peer)),
        Output::StatusChanged(m) => format!(
            "Status {} {} -> {}",
            peer_name(&m.peer),
            m.from.map_or("-".to_string(), |s| s.to_string()),
            m.to
        ),
        Output::Migration(MigrationEvent::Started { peer, outbound }) => {
            format!("MigrationStarted {} outbound={outbound}", peer_name(peer))
        }
        Output::Migration(MigrationEvent::Completed {
            peer,
            outbound,
            duration,
        }) => format!(
            "MigrationCompleted {} outbound={outbound} in {}ms",
            peer_name(peer),
            duration.as_millis()
        ),
        Output::Migration(MigrationEvent::Failed {
            peer,
            outbound,
            duration,
        }) => format!(
            "MigrationFailed {} outbound={outbound} after {}ms",
            peer_name(peer),
            duration.as_millis()
        ),
    }
}

fn moved(driver: &mut Driver) {
    driver.input(
        "ConnectivityChanged -> 198.51.100.5",
        Input::ConnectivityChanged(ConnectivityChanged {
            old: vec![addr("192.0.2.9:4433")],
            new: vec![addr("198.51.100.5:4433")],
        }),
    );
}

#[test]
fn establishment_trace() {
    let mut driver = Driver::new(Config::default());
    driver.input(
        "LocalEndpoints",
        Input::LocalEndpoints(vec![addr("192.0.2.9:4433")]),
    );
    driver.establish(1);
    assert_eq!(driver.core.status(&peer(1)), Some(SessionStatus::Ready));
    insta::assert_snapshot!(driver.trace.join("\n"));
}

#[test]
fn outbound_migration_trace_never_connects() {
    let mut driver = Driver::new(Config::default());
    driver.establish(1);
    let connects_before = driver.count(|o| matches!(o, Output::ConnectPeer(_)));
    driver.trace.clear();
    driver.advance_to(1000);
    moved(&mut driver);
    assert_eq!(
        driver.core.status(&peer(1)),
        Some(SessionStatus::ReconnectingOutbound)
    );
    // No answer for a while: rounds repeat and the rendezvous is asked.
    driver.advance_to(2600);
    driver.ready(1, false, 1);
    assert_eq!(driver.core.status(&peer(1)), Some(SessionStatus::Ready));
    // PresenceConnect stayed blocked for the whole migration.
    assert_eq!(
        driver.count(|o| matches!(o, Output::ConnectPeer(_))),
        connects_before
    );
    insta::assert_snapshot!(driver.trace.join("\n"));
}

/// Moves at 1 s, then returns the instant the first migration round went out (its
/// first-ping jitter is at most 5 ms with one peer).
fn moved_and_pinged(driver: &mut Driver) -> Instant {
    driver.advance_to(1000);
    moved(driver);
    let mut at = 1000;
    while driver.count(|o| matches!(o, Output::SendMigrationPing(_))) == 0 {
        at += 1;
        assert!(at <= 1005, "{}", driver.trace.join("\n"));
        driver.advance_to(at);
    }
    driver.now
}

fn relay_copies(driver: &Driver) -> usize {
    driver.count(|o| matches!(o, Output::RelayMigrationPing(_)))
}

#[test]
fn the_relay_copy_goes_at_once_and_the_data_after_one_and_a_half_measured_rtt() {
    let mut driver = Driver::new(Config::default());
    driver.establish(1);
    driver.input(
        "PathMeasured p1 40ms",
        Input::PathMeasured(PathMeasured {
            peer: peer(1),
            endpoint: Endpoint::Direct(addr("192.0.2.1:4433")),
            rtt_ms: Some(40),
            srtt_ms: Some(40),
        }),
    );
    let sent = moved_and_pinged(&mut driver);
    let t0 = driver.t0;
    let ms_after = |ms: u64| {
        u64::try_from((sent - t0 + Duration::from_millis(ms)).as_millis()).unwrap_or(u64::MAX)
    };
    driver.advance_to(ms_after(0));
    assert_eq!(relay_copies(&driver), 1, "{}", driver.trace.join("\n"));
    let carries = |driver: &Driver| driver.count(|o| matches!(o, Output::CarryOverRelay(_)));
    driver.advance_to(ms_after(60 + 29));
    assert_eq!(carries(&driver), 0, "the data waits 1.5 RTT plus half that");
    driver.advance_to(ms_after(60 + 30));
    assert_eq!(carries(&driver), 1);
    assert_eq!(relay_copies(&driver), 1, "one copy per ping round");
}

#[test]
fn a_failed_direct_dial_brings_the_data_over_the_relay_forward() {
    let mut driver = Driver::new(Config::default());
    driver.establish(1);
    moved_and_pinged(&mut driver);
    // No RTT measured: the data would wait 250 + 125 ms.
    let now_ms = u64::try_from(driver.ms()).unwrap_or(u64::MAX);
    driver.advance_to(now_ms + 10);
    assert_eq!(relay_copies(&driver), 1);
    let carries = |driver: &Driver| driver.count(|o| matches!(o, Output::CarryOverRelay(_)));
    assert_eq!(carries(&driver), 0);
    driver.input(
        "DirectDialFailed p1",
        Input::DirectDialFailed(DirectDialFailed { peer: peer(1) }),
    );
    driver.advance_to(now_ms + 29);
    assert_eq!(carries(&driver), 0, "the least gap after the copy");
    driver.advance_to(now_ms + 30);
    assert_eq!(carries(&driver), 1, "{}", driver.trace.join("\n"));
    driver.advance_to(now_ms + 400);
    assert_eq!(carries(&driver), 1, "once per ping round");
    assert_eq!(relay_copies(&driver), 1, "one copy per ping round");
}

#[test]
fn inbound_migration_trace_is_transport_only() {
    let mut driver = Driver::new(Config::default());
    driver.establish(1);
    driver.trace.clear();
    driver.advance_to(1000);
    driver.input(
        "InboundMigrationPing p1 -> 203.0.113.7",
        Input::InboundMigrationPing(InboundMigrationPing {
            peer: peer(1),
            session: session(),
            epoch: Epoch(1),
            counter: 1,
            via: PathKind::Direct,
        }),
    );
    assert_eq!(
        driver.core.status(&peer(1)),
        Some(SessionStatus::ReconnectingInbound)
    );
    let last_connect = driver.outputs.iter().rev().find_map(|o| match o {
        Output::ConnectPeer(c) => Some(c.clone()),
        _ => None,
    });
    let connect = last_connect.expect("a transport-only connect");
    assert!(connect.transport_only);
    driver.advance_to(1100);
    driver.ready(1, false, 1);
    insta::assert_snapshot!(driver.trace.join("\n"));
}

#[test]
fn a_new_announcement_while_on_the_relay_is_tried_directly_once() {
    let mut driver = Driver::new(Config::default());
    driver.establish(1);
    let transport_only =
        |driver: &Driver| driver.count(|o| matches!(o, Output::ConnectPeer(c) if c.transport_only));
    let changed = |driver: &mut Driver, hinted: bool| {
        driver.input(
            &format!("PeerEndpointsChanged p1 hinted={hinted}"),
            Input::PeerEndpointsChanged(PeerEndpointsChanged {
                peer: peer(1),
                hinted,
            }),
        );
    };
    let ready_on_relay = |driver: &mut Driver| {
        driver.input(
            "SessionReady p1 over the relay",
            Input::SessionReady(SessionReady {
                request: None,
                peer: peer(1),
                session: session(),
                epoch: Epoch(1),
                path: PathKind::Relay,
                remote: None,
                after_handshake: false,
                rekey: false,
            }),
        );
    };
    // An announcement by the session itself while direct: nothing to try yet.
    changed(&mut driver, false);
    assert_eq!(transport_only(&driver), 0);
    // Ready over the relay with that announcement untried: one direct attempt...
    ready_on_relay(&mut driver);
    assert_eq!(transport_only(&driver), 1);
    // ...and none for the next report over the relay.
    ready_on_relay(&mut driver);
    assert_eq!(transport_only(&driver), 1);
    // A rendezvous hint while on the relay is tried at once, and only once.
    changed(&mut driver, true);
    assert_eq!(transport_only(&driver), 2);
    ready_on_relay(&mut driver);
    assert_eq!(transport_only(&driver), 2);
}

#[test]
fn window_expiry_evicts_then_recovers_with_a_handshake() {
    let mut driver = Driver::new(Config::default());
    driver.establish(1);
    driver.trace.clear();
    driver.advance_to(1000);
    moved(&mut driver);
    // The window runs from the first ping round, at most 5 ms after the move with one
    // peer.
    driver.advance_to(31_005);
    assert_eq!(driver.core.status(&peer(1)), Some(SessionStatus::Evicted));
    driver.advance_to(32_000);
    assert_eq!(
        driver.core.status(&peer(1)),
        Some(SessionStatus::Recovering)
    );
    let recovery = driver.outputs.iter().rev().find_map(|o| match o {
        Output::ConnectPeer(c) => Some(c.clone()),
        _ => None,
    });
    assert!(!recovery.expect("a recovery connect").transport_only);
    driver.ready(1, true, 2);
    assert_eq!(driver.core.status(&peer(1)), Some(SessionStatus::Ready));
    insta::assert_snapshot!(driver.trace.join("\n"));
}

#[test]
fn a_second_change_during_a_migration_restarts_the_rounds() {
    let mut driver = Driver::new(Config::default());
    driver.establish(1);
    driver.advance_to(1000);
    moved(&mut driver);
    driver.advance_to(1500);
    let pings_before = driver.count(|o| matches!(o, Output::SendMigrationPing(_)));
    driver.input(
        "ConnectivityChanged -> 198.51.100.6",
        Input::ConnectivityChanged(ConnectivityChanged {
            old: vec![addr("198.51.100.5:4433")],
            new: vec![addr("198.51.100.6:4433")],
        }),
    );
    // The new round fires within the first-ping spread of one peer.
    driver.advance_to(1510);
    let last_ping = driver.outputs.iter().rev().find_map(|o| match o {
        Output::SendMigrationPing(p) => Some(p.clone()),
        _ => None,
    });
    assert_eq!(
        last_ping.expect("a ping").new_endpoints,
        vec![addr("198.51.100.6:4433")]
    );
    assert!(driver.count(|o| matches!(o, Output::SendMigrationPing(_))) > pings_before);
    assert_eq!(
        driver.core.status(&peer(1)),
        Some(SessionStatus::ReconnectingOutbound)
    );
    assert_eq!(driver.core.illegal_transitions(), 0);
}

#[test]
fn connects_are_bounded_and_jittered_for_many_peers() {
    let config = Config::default();
    let bound = config.max_concurrent_connects;
    let mut driver = Driver::new(config);
    for n in 1..=50 {
        driver.input("AddPeer", Input::AddPeer(peer(n)));
    }
    driver.advance_to(1000);
    let connects = driver.picked(|o| match o {
        Output::ConnectPeer(c) => Some(c.clone()),
        _ => None,
    });
    assert_eq!(connects.len(), bound, "only {bound} connects in flight");
    // One finishes, one more starts.
    let first = connects[0].peer;
    driver.input(
        "ConnectFailed",
        Input::ConnectFailed(ConnectFailed {
            request: RequestId(0),
            peer: first,
            reason: "test".into(),
        }),
    );
    driver.advance_to(1001);
    assert_eq!(
        driver.count(|o| matches!(o, Output::ConnectPeer(_))),
        bound + 1
    );
}

/// 50 peers Ready, then this device moves at 1 s (outputs before the move cleared).
fn fifty_ready_then_moved(config: Config) -> Driver {
    let mut driver = Driver::new(config);
    for n in 1..=50 {
        driver.input("AddPeer", Input::AddPeer(peer(n)));
        driver.ready(n, true, 1);
    }
    driver.outputs.clear();
    driver.advance_to(1000);
    moved(&mut driver);
    driver
}

#[test]
fn many_peers_migrate_with_spread_first_pings() {
    let mut driver = fifty_ready_then_moved(Config::default());
    // 50 peers × 5 ms: first pings spread over 250 ms.
    driver.advance_to(1000 + 125);
    let halfway = driver.count(|o| matches!(o, Output::SendMigrationPing(_)));
    driver.advance_to(1000 + 251);
    let all = driver.count(|o| matches!(o, Output::SendMigrationPing(_)));
    assert_eq!(all, 50, "every peer pinged within the spread");
    assert!(
        (10..40).contains(&halfway),
        "first pings are spread, not a burst ({halfway} of 50 at half the spread)"
    );
    assert_eq!(driver.core.illegal_transitions(), 0);
}

/// The peers whose migration pings went out, in order.
fn pinged(driver: &Driver) -> Vec<DeviceId> {
    driver.picked(|o| match o {
        Output::SendMigrationPing(ping) => Some(ping.peer),
        _ => None,
    })
}

#[test]
fn first_migration_rounds_wait_for_a_slot() {
    let config = Config {
        max_concurrent_migrations: 10,
        ..Config::default()
    };
    let interval = config.migration_ping_interval;
    let mut driver = fifty_ready_then_moved(config);
    // Past the spread of the first pings (50 × 5 ms): only the slots' worth went out.
    driver.advance_to(1300);
    let first = pinged(&driver);
    assert_eq!(first.len(), 10, "{first:?}");
    // Three sessions Ready again: three more first rounds go at once.
    for who in &first[..3] {
        driver.ready(who.0[0], false, 1);
    }
    driver.advance_to(1301);
    assert_eq!(pinged(&driver).len(), 13);
    // The other seven stay unanswered: their slots free when their round is over
    // (their second round is due, before 2 250 ms), and seven more first rounds take
    // them; the three started at 1 300 ms still hold theirs just before 2 300 ms.
    let second_round = 1300 + u64::try_from(interval.as_millis()).unwrap();
    driver.advance_to(second_round - 10);
    let all = pinged(&driver);
    let firsts: std::collections::BTreeSet<DeviceId> = all.iter().copied().collect();
    assert_eq!(firsts.len(), 20, "{all:?}");
    assert_eq!(all.len(), 27, "7 second rounds and 7 more first ones");
    // Everyone gets a first round in the end, and nobody is evicted meanwhile.
    driver.advance_to(second_round + 6_000);
    let firsts: std::collections::BTreeSet<DeviceId> = pinged(&driver).into_iter().collect();
    assert_eq!(firsts.len(), 50);
    assert_eq!(driver.count(|o| matches!(o, Output::EvictSession(_))), 0);
    assert_eq!(driver.core.illegal_transitions(), 0);
}

#[test]
fn the_window_of_a_session_waiting_for_a_slot_runs_from_its_first_round() {
    // 50 sessions, 10 slots, nobody answers: each batch holds its slots for the
    // 1 s round, so the last first rounds go about 4 s after the move, past a 2 s
    // window counted from the move.
    let config = Config {
        max_concurrent_migrations: 10,
        migration_window: Duration::from_secs(2),
        ..Config::default()
    };
    let mut driver = fifty_ready_then_moved(config);
    driver.advance_to(12_000);
    for n in 1..=50 {
        let who = peer(n);
        let position = |want: &dyn Fn(&Output) -> bool| driver.outputs.iter().position(want);
        let pinged = position(&|o| matches!(o, Output::SendMigrationPing(p) if p.peer == who));
        let evicted = position(&|o| matches!(o, Output::EvictSession(e) if e.peer == who));
        assert!(
            pinged.is_some() && pinged < evicted,
            "p{n}: evicted at {evicted:?} before its first ping ({pinged:?})"
        );
    }
    assert_eq!(driver.core.illegal_transitions(), 0);
}

#[test]
fn a_peer_that_says_where_it_is_gets_its_first_round_without_waiting_for_a_slot() {
    let config = Config {
        max_concurrent_migrations: 10,
        ..Config::default()
    };
    let mut driver = fifty_ready_then_moved(config);
    driver.advance_to(1300);
    let first = pinged(&driver);
    assert_eq!(first.len(), 10);
    // A peer still waiting for a slot moved too and pinged us: our round goes to it
    // now, once, and counts as its first.
    let waiting = (1..=50)
        .map(peer)
        .find(|p| !first.contains(p))
        .expect("a peer waits");
    driver.input(
        "InboundMigrationPing",
        Input::InboundMigrationPing(InboundMigrationPing {
            peer: waiting,
            session: session(),
            epoch: Epoch(1),
            counter: 1,
            via: PathKind::Relay,
        }),
    );
    driver.advance_to(1310);
    let to_waiting = |driver: &Driver| pinged(driver).iter().filter(|p| **p == waiting).count();
    assert_eq!(to_waiting(&driver), 1);
    // The first ten free their slots by 2.25 s (their rounds unanswered); its own
    // second round is due 1 s after its first, at 2.3 s.
    driver.advance_to(2290);
    assert!(pinged(&driver).len() > 21, "slots freed and taken");
    assert_eq!(
        to_waiting(&driver),
        1,
        "no second first round when a slot frees"
    );
    driver.advance_to(2310);
    assert_eq!(to_waiting(&driver), 2, "its second round, on time");
}

#[test]
fn same_seed_same_trace() {
    let run = || {
        let mut driver = Driver::new(Config::default());
        for n in 1..=5 {
            driver.input("AddPeer", Input::AddPeer(peer(n)));
        }
        driver.advance_to(2000);
        driver.trace
    };
    assert_eq!(run(), run());
}

#[test]
fn failed_connects_back_off_to_the_cap_and_a_waiting_send_retries_at_once() {
    let config = Config::default();
    let mut driver = Driver::new(config.clone());
    driver.input("AddPeer p1", Input::AddPeer(peer(1)));
    let connects = |driver: &Driver| driver.count(|o| matches!(o, Output::ConnectPeer(_)));
    let mut waits = Vec::new();
    driver.advance_to(config.connect_retry_base.as_millis() as u64);
    for attempt in 0..14u64 {
        assert_eq!(
            connects(&driver),
            attempt as usize + 1,
            "one connect per wait"
        );
        let started = driver.now;
        driver.input(
            "ConnectFailed p1",
            Input::ConnectFailed(ConnectFailed {
                request: RequestId(attempt),
                peer: peer(1),
                reason: "no path answered".into(),
            }),
        );
        // Step through every wake-up (the relay poll's too) until the next connect.
        let mut at = started;
        while connects(&driver) == attempt as usize + 1 {
            at = driver.core.poll_timeout().unwrap().max(at);
            driver.now = at;
            driver.core.handle_timeout(at);
            driver.drain();
        }
        waits.push(at - started);
    }
    // Doubling from connect_retry_base with equal jitter ([d/2, d]), capped.
    for (failed, wait) in waits.iter().enumerate() {
        let full = config
            .connect_retry_base
            .saturating_mul(1 << (failed + 1))
            .min(config.connect_retry_max);
        assert!(
            *wait >= full / 2 && *wait <= full,
            "wait {failed}: {wait:?} outside [{:?}, {full:?}]",
            full / 2
        );
    }
    assert!(waits[13] >= config.connect_retry_max / 2);
    // Backing off: a send waiting for the peer makes the next attempt run now.
    driver.input(
        "ConnectFailed p1",
        Input::ConnectFailed(ConnectFailed {
            request: RequestId(99),
            peer: peer(1),
            reason: "no path answered".into(),
        }),
    );
    let before = connects(&driver);
    driver.input(
        "SendWaiting p1",
        Input::SendWaiting(tether_protocol::SendWaiting { peer: peer(1) }),
    );
    let due = driver.core.poll_timeout().unwrap();
    assert_eq!(due, driver.now, "due at once");
    driver.core.handle_timeout(due);
    driver.drain();
    assert_eq!(connects(&driver), before + 1);
}

#[test]
fn a_goodbye_closes_the_session_retries_nothing_and_a_return_readies_it() {
    let mut driver = Driver::new(Config::default());
    driver.establish(1);
    driver.input(
        "PeerReset p1 Closed",
        Input::PeerReset(tether_protocol::PeerReset {
            peer: peer(1),
            reason: tether_protocol::ResetReason::Closed,
        }),
    );
    assert_eq!(driver.core.status(&peer(1)), Some(SessionStatus::Closed));
    assert_eq!(
        driver.count(|o| matches!(o, Output::EvictSession(e)
            if e.reason == tether_protocol::EvictionReason::PeerClosed)),
        1
    );
    let connects = driver.count(|o| matches!(o, Output::ConnectPeer(_)));
    driver.advance_to(600_000);
    assert_eq!(
        driver.count(|o| matches!(o, Output::ConnectPeer(_))),
        connects,
        "nothing is retried while the peer is away"
    );
    // It comes back with a handshake of its own.
    driver.ready(1, true, 2);
    assert_eq!(driver.core.status(&peer(1)), Some(SessionStatus::Ready));
    assert_eq!(driver.core.illegal_transitions(), 0);
}

fn allowed(driver: &Driver) -> Vec<bool> {
    driver.picked(|o| match o {
        Output::AllowRekey(m) => Some(m.allowed),
        _ => None,
    })
}

#[test]
fn a_rekey_is_allowed_only_while_ready_and_changes_nothing_but_the_epoch() {
    let mut driver = Driver::new(Config::default());
    driver.establish(1);
    assert_eq!(allowed(&driver), vec![true], "allowed on entering Ready");
    driver.trace.clear();
    // Either side's rekey commits: no eviction, no flap, no migration event.
    driver.advance_to(1000);
    driver.rekeyed(1, 2);
    assert_eq!(driver.core.status(&peer(1)), Some(SessionStatus::Ready));
    // A migration refuses rekeys; a rekey that still commits during it (the peer had
    // answered before the move) neither completes nor disturbs the migration.
    moved(&mut driver);
    assert_eq!(allowed(&driver), vec![true, false]);
    driver.advance_to(1500);
    driver.rekeyed(1, 3);
    assert_eq!(
        driver.core.status(&peer(1)),
        Some(SessionStatus::ReconnectingOutbound)
    );
    driver.advance_to(2000);
    driver.ready(1, false, 3);
    assert_eq!(
        allowed(&driver),
        vec![true, false, true],
        "allowed again once Ready"
    );
    assert_eq!(
        driver.count(|o| matches!(o, Output::Migration(MigrationEvent::Completed { .. }))),
        1
    );
    assert_eq!(
        driver.count(|o| matches!(o, Output::Migration(MigrationEvent::Failed { .. }))),
        0
    );
    assert_eq!(driver.count(|o| matches!(o, Output::EvictSession(_))), 0);
    insta::assert_snapshot!(driver.trace.join("\n"));
}

#[test]
fn a_peer_s_fresh_handshake_without_rekey_is_still_a_recovery() {
    let mut driver = Driver::new(Config::default());
    driver.establish(1);
    driver.advance_to(1000);
    driver.ready(1, true, 2);
    // The peer restarted or evicted us: Evicted → Recovering → Ready, as before.
    assert!(driver.trace.iter().any(|l| l.contains("Ready -> Evicted")));
    assert_eq!(driver.core.status(&peer(1)), Some(SessionStatus::Ready));
}

#[test]
fn hints_announce_the_reflexive_address_until_the_next_move() {
    let mut driver = Driver::new(Config::default());
    driver.input(
        "LocalEndpoints",
        Input::LocalEndpoints(vec![addr("192.168.1.9:4433")]),
    );
    driver.establish(1);
    let published = |driver: &Driver| -> Vec<Vec<std::net::SocketAddr>> {
        driver.picked(|o| match o {
            Output::PublishEndpointHint(p) => Some(p.endpoints.clone()),
            _ => None,
        })
    };
    let before = published(&driver).len();
    let reflexive = addr("198.51.100.9:20000");
    driver.input(
        "Reflexive",
        Input::Reflexive(tether_protocol::ReflexiveAddress {
            addr: Some(reflexive),
        }),
    );
    let after = published(&driver);
    assert_eq!(after.len(), before + 1, "published again");
    assert_eq!(
        after.last().unwrap(),
        &vec![addr("192.168.1.9:4433"), reflexive]
    );
    // The same address again publishes nothing new.
    driver.input(
        "Reflexive",
        Input::Reflexive(tether_protocol::ReflexiveAddress {
            addr: Some(reflexive),
        }),
    );
    assert_eq!(published(&driver).len(), before + 1);
    // After a move the old reflexive address is not announced.
    driver.input(
        "ConnectivityChanged",
        Input::ConnectivityChanged(ConnectivityChanged {
            old: vec![addr("192.168.1.9:4433")],
            new: vec![addr("10.0.0.9:4433")],
        }),
    );
    let last = published(&driver);
    assert!(last.len() > before + 1, "published after the move");
    assert_eq!(last.last().unwrap(), &vec![addr("10.0.0.9:4433")]);
}

#[test]
fn a_new_reflexive_address_without_a_move_migrates_every_session() {
    let mut driver = Driver::new(Config::default());
    driver.input(
        "LocalEndpoints",
        Input::LocalEndpoints(vec![addr("192.168.1.9:4433")]),
    );
    driver.establish(1);
    let reflexive = |a: &str| {
        Input::Reflexive(tether_protocol::ReflexiveAddress {
            addr: Some(addr(a)),
        })
    };
    // The first address after the start is only published.
    driver.input("Reflexive", reflexive("198.51.100.9:20000"));
    assert_eq!(driver.core.status(&peer(1)), Some(SessionStatus::Ready));
    assert_eq!(driver.core.nat_rebindings(), 0);
    // The NAT moves us to another public port: the session migrates, no handshake.
    driver.trace.clear();
    driver.input("Reflexive", reflexive("198.51.100.9:20007"));
    assert_eq!(driver.core.nat_rebindings(), 1);
    assert_eq!(
        driver.core.status(&peer(1)),
        Some(SessionStatus::ReconnectingOutbound)
    );
    assert_eq!(
        driver.count(|o| matches!(
            o,
            Output::Migration(MigrationEvent::Started { outbound: true, .. })
        )),
        1
    );
    assert_eq!(driver.count(|o| matches!(o, Output::EvictSession(_))), 0);
    // Losing the relay (no address) and getting the same one back is no rebinding.
    driver.input(
        "Reflexive",
        Input::Reflexive(tether_protocol::ReflexiveAddress { addr: None }),
    );
    driver.input("Reflexive", reflexive("198.51.100.9:20007"));
    assert_eq!(driver.core.nat_rebindings(), 1);
    insta::assert_snapshot!(driver.trace.join("\n"));
}

#[test]
fn first_connects_are_spread_by_the_number_of_peers() {
    let config = Config::default();
    let mut driver = Driver::new(config.clone());
    let connect_of = |driver: &Driver, who: u8| {
        driver
            .outputs
            .iter()
            .any(|o| matches!(o, Output::ConnectPeer(c) if c.peer == peer(who)))
    };
    // One peer: its first connect is due within one peer's spread, not a retry base.
    driver.input("AddPeer p1", Input::AddPeer(peer(1)));
    driver.advance_to(config.first_ping_spread_per_peer.as_millis() as u64);
    assert!(connect_of(&driver, 1), "the only peer waited");
    // A hundred peers (no bound on concurrent connects here, to see when each is due):
    // their first connects spread over up to the retry base, not in one burst.
    let mut driver = Driver::new(Config {
        max_concurrent_connects: 1000,
        ..config.clone()
    });
    for who in 1..=100 {
        driver.input(&format!("AddPeer p{who}"), Input::AddPeer(peer(who)));
    }
    let mut started_at = Vec::new();
    while started_at.len() < 100 {
        let at = driver.core.poll_timeout().expect("a connect is due");
        driver.now = at;
        driver.core.handle_timeout(at);
        driver.drain();
        let started = driver.count(|o| matches!(o, Output::ConnectPeer(_)));
        started_at.resize(started, at - driver.t0);
    }
    let last = *started_at.last().unwrap();
    let within_first_spread = started_at
        .iter()
        .filter(|at| **at <= config.first_ping_spread_per_peer)
        .count();
    assert!(
        last > config.connect_retry_base / 2 && last <= config.connect_retry_base,
        "the last of a hundred first connects at {last:?}"
    );
    assert!(
        within_first_spread < 10,
        "{within_first_spread} of a hundred connects in the first {:?}",
        config.first_ping_spread_per_peer
    );
}

#[test]
fn an_announcement_while_waiting_to_retry_connects_at_once() {
    let mut driver = Driver::new(Config::default());
    driver.input("AddPeer p1", Input::AddPeer(peer(1)));
    driver.advance_to(10);
    driver.input(
        "ConnectFailed p1",
        Input::ConnectFailed(ConnectFailed {
            request: RequestId(0),
            peer: peer(1),
            reason: "no path answered".into(),
        }),
    );
    let connects = |driver: &Driver| driver.count(|o| matches!(o, Output::ConnectPeer(_)));
    assert_eq!(connects(&driver), 1);
    // The rendezvous brings the peer's new addresses: no waiting for the backoff.
    driver.input(
        "PeerEndpointsChanged p1 hinted",
        Input::PeerEndpointsChanged(PeerEndpointsChanged {
            peer: peer(1),
            hinted: true,
        }),
    );
    driver.advance_to(11);
    assert_eq!(connects(&driver), 2, "the hint waited for the backoff");
    // One in flight is not interrupted by another hint.
    driver.input(
        "PeerEndpointsChanged p1 hinted",
        Input::PeerEndpointsChanged(PeerEndpointsChanged {
            peer: peer(1),
            hinted: true,
        }),
    );
    driver.advance_to(12);
    assert_eq!(connects(&driver), 2);
    insta::assert_snapshot!(driver.trace.join("\n"));
}

/// A hub holds thousands of sessions: every heartbeat of each one is an input here
/// (its RTT), each input ends with `poll_timeout`, and the timeouts run while thousands
/// of first connects wait for a slot. Their cost must not grow with the number of
/// peers: when each input walked every peer, and each timeout every peer once per due
/// connect, one timeout with 10 000 peers took a quarter of a second of release CPU
/// and the hub could no longer answer heartbeats in time.
#[test]
fn inputs_and_timeouts_cost_the_same_with_ten_thousand_peers() {
    let t0 = Instant::now();
    let config = Config::default();
    let bound = config.max_concurrent_connects;
    let mut core = Presence::new(config, [7; 32], t0);
    let id = |i: u32| {
        let mut bytes = [0_u8; 32];
        bytes[..4].copy_from_slice(&i.to_be_bytes());
        DeviceId(bytes)
    };
    for i in 0..10_000 {
        core.handle(t0, Input::AddPeer(id(i)));
    }
    while core.poll_output().is_some() {}
    let mut in_flight = Vec::new();
    let drain = |core: &mut Presence, in_flight: &mut Vec<DeviceId>| {
        while let Some(output) = core.poll_output() {
            if let Output::ConnectPeer(connect) = output {
                in_flight.push(connect.peer);
            }
        }
    };
    let started = std::time::Instant::now();
    let budget = Duration::from_secs(2);
    // Every first connect is due: `bound` start, the rest wait for a slot.
    let mut now = t0 + Duration::from_secs(1);
    core.handle_timeout(now);
    drain(&mut core, &mut in_flight);
    assert_eq!(in_flight.len(), bound);
    for round in 0..500_u32 {
        assert!(
            started.elapsed() < budget,
            "{round} rounds took {:?}",
            started.elapsed()
        );
        now += Duration::from_millis(10);
        // A measurement of some session's path, as each heartbeat brings.
        core.handle(
            now,
            Input::PathMeasured(PathMeasured {
                peer: id(round),
                endpoint: Endpoint::Relay,
                rtt_ms: Some(5),
                srtt_ms: Some(5),
            }),
        );
        drain(&mut core, &mut in_flight);
        // A connect in flight fails: its slot goes to the next connect due.
        let failed = in_flight[round as usize];
        core.handle(
            now,
            Input::ConnectFailed(ConnectFailed {
                request: RequestId(0),
                peer: failed,
                reason: "test".into(),
            }),
        );
        let wake = core.poll_timeout().expect("a deadline");
        assert!(wake <= now, "the freed slot is taken at once");
        core.handle_timeout(now);
        drain(&mut core, &mut in_flight);
        assert_eq!(in_flight.len(), bound + round as usize + 1);
    }
    assert!(started.elapsed() < budget, "took {:?}", started.elapsed());
}
