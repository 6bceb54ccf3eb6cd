//! A device restarted with its keys is back in session within about one RTT plus one
//! handshake of its first packet reaching the peer (issue 13, item 1), with the
//! default timings: the peer still holds the old session (its 30 s migration window
//! has not passed), raises the restarted device's fresh epoch-1 handshake above it,
//! and both commit a new epoch with a new PeerSecret. Restart A, restart B, restart
//! both, over several seeds; then a migration, which must not look like a restart.
//!
//! Times are virtual, measured from the node event log (5 ms resolution).

// A panic in a test is a failed test, not a crashed node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use tether_harness::{run_simulation, ClusterBuilder, NodeEvent, SimCluster};
use tether_protocol::SessionStatus;
use tether_transport::sim::LinkConditions;

const A: usize = 0;
const B: usize = 1;

/// One way; 40 ms RTT, the demo's default path.
const ONE_WAY: Duration = Duration::from_millis(20);
const RTT: Duration = Duration::from_millis(40);

/// Seeds each scenario runs with.
const SEEDS: std::ops::RangeInclusive<u64> = 1..=8;

/// The bound of issue 13, from the restarted device's first packet reaching the peer
/// to both sides Ready: 2 RTT plus the handshake (one more RTT), plus the 5 ms
/// resolution of the event log on each of the two instants compared.
const FROM_FIRST_PACKET: Duration = Duration::from_millis(3 * 40 + 10);

/// From the restart itself: the restarted device first waits up to Presence's
/// `connect_retry_base` (250 ms, the default) of jitter before it connects, and its
/// first packet takes one way to reach the peer; then as above.
const FROM_RESTART: Duration = Duration::from_millis(250 + 20 + 3 * 40 + 10);

fn wan() -> LinkConditions {
    LinkConditions {
        latency: ONE_WAY,
        ..LinkConditions::default()
    }
}

/// What a restart looked like in virtual time.
#[derive(Debug)]
struct Timing {
    /// From the restart to both sides Ready.
    from_restart: Duration,
    /// From the restarted device's first packet reaching the peer to both Ready.
    from_first_packet: Duration,
}

/// When device `i` first reported a handshake to `peer` in progress (its
/// `Connecting → Handshaking`) at or after `since`: the moment its link came up, one
/// RTT after its first packet left, so half an RTT after that packet reached the peer.
fn handshaking_at(cluster: &SimCluster, i: usize, peer: usize, since: Duration) -> Duration {
    let peer = cluster.id(peer);
    cluster.devices[i]
        .log
        .iter()
        .find_map(|(at, event)| match event {
            NodeEvent::Status { peer: p, to, .. }
                if *at >= since && *p == peer && *to == SessionStatus::Handshaking =>
            {
                Some(*at)
            }
            _ => None,
        })
        .expect("the restarted device started a handshake")
}

/// When device `i` reported its session with `peer` Ready after a handshake of an
/// epoch above `above`, at or after `since`.
fn handshake_ready_at(
    cluster: &SimCluster,
    i: usize,
    peer: usize,
    since: Duration,
    above: u64,
) -> Option<Duration> {
    let peer = cluster.id(peer);
    cluster.devices[i]
        .log
        .iter()
        .find_map(|(at, event)| match event {
            NodeEvent::Ready(ready)
                if *at >= since
                    && ready.peer == peer
                    && ready.after_handshake
                    && ready.epoch.0 > above =>
            {
                Some(*at)
            }
            _ => None,
        })
}

/// Both sides hold one committed session; returns (epoch, PeerSecret fingerprint).
async fn same_session(cluster: &SimCluster) -> (u64, String) {
    let a = cluster.peer_status(A, B).await.unwrap();
    let b = cluster.peer_status(B, A).await.unwrap();
    assert!(a.peer_secret.is_some());
    assert_eq!(a.peer_secret, b.peer_secret, "PeerSecret fingerprints");
    assert_eq!(a.session_keys, b.session_keys, "session key fingerprints");
    assert_eq!(a.epoch, b.epoch, "epochs");
    (a.epoch.unwrap(), format!("{:?}", a.peer_secret))
}

/// Sends `count` messages each way and checks each arrives once, in order.
async fn exchange(cluster: &mut SimCluster, tag: &str, count: usize) {
    let (a, b) = (cluster.id(A), cluster.id(B));
    let before_a = cluster.devices[A].delivered_from(b).len();
    let before_b = cluster.devices[B].delivered_from(a).len();
    for i in 0..count {
        let to_b = format!("{tag} a{i}").into_bytes();
        cluster.node(A).send(b, to_b).await.unwrap();
        let to_a = format!("{tag} b{i}").into_bytes();
        cluster.node(B).send(a, to_a).await.unwrap();
    }
    let done = cluster
        .run_until(Duration::from_secs(10), |c| {
            c.devices[B].delivered_from(a).len() >= before_b + count
                && c.devices[A].delivered_from(b).len() >= before_a + count
        })
        .await;
    assert!(done, "{tag}: messages not delivered");
    cluster.run_for(Duration::from_millis(500)).await;
    let expect = |side: &str| -> Vec<Vec<u8>> {
        (0..count)
            .map(|i| format!("{tag} {side}{i}").into_bytes())
            .collect()
    };
    assert_eq!(
        cluster.devices[B].delivered_from(a)[before_b..],
        expect("a")[..]
    );
    assert_eq!(
        cluster.devices[A].delivered_from(b)[before_a..],
        expect("b")[..]
    );
}

/// A and B on the 40 ms path with default timings, Ready, with messages exchanged.
async fn established(seed: u64) -> SimCluster {
    let mut cluster = ClusterBuilder::new(seed, 2)
        .pair(A, B)
        .conditions(wan())
        .start()
        .await;
    assert!(
        cluster
            .run_until(Duration::from_secs(10), |c| c.both_ready(A, B))
            .await
    );
    exchange(&mut cluster, "before", 5).await;
    cluster
}

/// Establishes A and B with default timings, restarts `restarted` (crash, 2 s down,
/// start with the same keys and config), and measures the way back.
async fn restart_scenario(seed: u64, restarted: &[usize]) -> Timing {
    let mut cluster = established(seed).await;
    let (epoch_before, secret_before) = same_session(&cluster).await;
    for &i in restarted {
        cluster.crash(i);
    }
    // Long enough for the survivor to notice nothing works, far shorter than its
    // 30 s migration window: it still holds the old session.
    cluster.run_for(Duration::from_secs(2)).await;
    let restart_at = cluster.elapsed();
    for &i in restarted {
        cluster.restart(i).await;
    }
    // The restarted side's first session has the epoch the survivor raised; with both
    // restarted, the fresh pair starts at epoch 1 again.
    let above = if restarted.len() == 2 {
        0
    } else {
        epoch_before
    };
    let back = cluster
        .run_until(Duration::from_secs(10), |c| {
            handshake_ready_at(c, A, B, restart_at, above).is_some()
                && handshake_ready_at(c, B, A, restart_at, above).is_some()
        })
        .await;
    assert!(
        back,
        "seed {seed}, restarted {restarted:?}: not back in session\n{}",
        cluster.timeline(&[A, B], restart_at)
    );
    let ready = [A, B]
        .map(|i| handshake_ready_at(&cluster, i, 1 - i, restart_at, above).unwrap())
        .into_iter()
        .max()
        .unwrap();
    // With one side restarted, that side connects; with both, the first to connect.
    let first_packet = restarted
        .iter()
        .map(|&i| handshaking_at(&cluster, i, 1 - i, restart_at))
        .min()
        .unwrap()
        .saturating_sub(RTT / 2);
    let timing = Timing {
        from_restart: ready - restart_at,
        from_first_packet: ready.saturating_sub(first_packet),
    };
    if seed == *SEEDS.start() {
        eprintln!(
            "restarted {restarted:?}, seed {seed}, from the restart on:\n{}",
            cluster.timeline(&[A, B], restart_at)
        );
    }

    // A new session: a new epoch and a new PeerSecret on both sides, never the old
    // keys; with one side restarted, the survivor counted one restart handshake, and so
    // did the restarted side.
    cluster.run_for(Duration::from_millis(500)).await;
    let (epoch_after, secret_after) = same_session(&cluster).await;
    assert_ne!(secret_after, secret_before, "a new PeerSecret");
    let mut restarts = Vec::new();
    for i in [A, B] {
        let status = cluster.peer_status(i, 1 - i).await.unwrap();
        restarts.push(status.counters.restart_handshakes);
    }
    if restarted.len() == 1 {
        assert_eq!(
            epoch_after,
            epoch_before + 1,
            "the survivor raised the epoch"
        );
        assert_eq!(restarts, [1, 1], "restart handshakes counted on both sides");
    } else {
        assert_eq!(epoch_after, 1, "two fresh processes start at epoch 1");
        assert_eq!(restarts, [0, 0], "nothing to raise");
    }
    assert!(cluster.both_ready(A, B));
    exchange(&mut cluster, "after", 5).await;

    // A migration afterwards is a migration, not a restart: no handshake, the same
    // epoch and PeerSecret, no restart counted.
    let mut before = Vec::new();
    for i in [A, B] {
        let status = cluster.peer_status(i, 1 - i).await.unwrap();
        before.push((status.handshakes, status.counters.restart_handshakes));
    }
    cluster.change_address(A).await.unwrap();
    exchange(&mut cluster, "moved", 5).await;
    assert!(cluster.both_ready(A, B));
    let (epoch_moved, secret_moved) = same_session(&cluster).await;
    assert_eq!((epoch_moved, secret_moved), (epoch_after, secret_after));
    for (i, before) in [A, B].into_iter().zip(before.iter().copied()) {
        let status = cluster.peer_status(i, 1 - i).await.unwrap();
        assert_eq!(
            (status.handshakes, status.counters.restart_handshakes),
            before,
            "a migration ran a handshake or counted a restart"
        );
    }
    timing
}

fn check(name: &str, restarted: &[usize]) {
    let mut timings = Vec::new();
    for seed in SEEDS {
        let timing = run_simulation(|| restart_scenario(seed, restarted));
        timings.push(timing);
    }
    let ms = |d: Duration| d.as_millis();
    eprintln!(
        "{name}: from restart {:?} ms; from first packet {:?} ms (RTT {} ms)",
        timings
            .iter()
            .map(|t| ms(t.from_restart))
            .collect::<Vec<_>>(),
        timings
            .iter()
            .map(|t| ms(t.from_first_packet))
            .collect::<Vec<_>>(),
        ms(RTT)
    );
    for (seed, timing) in SEEDS.zip(&timings) {
        assert!(
            timing.from_first_packet <= FROM_FIRST_PACKET && timing.from_restart <= FROM_RESTART,
            "{name}, seed {seed}: {timing:?} (bounds {FROM_FIRST_PACKET:?} from the first \
             packet, {FROM_RESTART:?} from the restart)"
        );
    }
}

#[test]
fn a_restarted_initiator_side_is_back_in_one_handshake() {
    check("restart A", &[A]);
}

#[test]
fn a_restarted_peer_is_back_in_one_handshake() {
    check("restart B", &[B]);
}

#[test]
fn both_restarted_are_back_in_one_handshake() {
    check("restart both", &[A, B]);
}

/// From a restart during a migration to both Ready. When the device that stayed put
/// restarts, it has forgotten where the peer moved: its dial to the old address fails
/// and its first packet reaches the peer through the relay, `relay_fallback_after`
/// (250 ms) later; so on top of the connect jitter (at most 250 ms) and one handshake
/// (here 2-3 RTT through the relay) it takes one such wait more than a plain restart.
const FROM_RESTART_DURING_MIGRATION: Duration = Duration::from_secs(1);

/// A migration is under way (`moved` changed networks 20 ms ago, its pings and the
/// transport reconnect in flight) when `restarted` crashes; 2 s later it starts again.
/// The pair is back in session, on a new PeerSecret, within the restart bound, and
/// messages flow both ways exactly once.
async fn restart_during_migration(seed: u64, moved: usize, restarted: usize) {
    let mut cluster = established(seed).await;
    let (_, secret_before) = same_session(&cluster).await;
    cluster.change_address(moved).await.unwrap();
    cluster.run_for(Duration::from_millis(20)).await;
    cluster.crash(restarted);
    cluster.run_for(Duration::from_secs(2)).await;
    let restart_at = cluster.elapsed();
    cluster.restart(restarted).await;
    let back = cluster
        .run_until(FROM_RESTART_DURING_MIGRATION, |c| c.both_ready(A, B))
        .await;
    assert!(
        back,
        "seed {seed}, {moved} moved, {restarted} restarted: not back within \
         {FROM_RESTART_DURING_MIGRATION:?}\n{}",
        cluster.timeline(&[A, B], restart_at - Duration::from_millis(2020))
    );
    eprintln!(
        "seed {seed}, device {moved} moved, device {restarted} restarted: back after {:?}",
        cluster.elapsed() - restart_at,
    );
    cluster.run_for(Duration::from_millis(500)).await;
    let (_, secret_after) = same_session(&cluster).await;
    assert_ne!(secret_after, secret_before, "a new PeerSecret");
    exchange(&mut cluster, "after", 5).await;
}

#[test]
fn a_restart_in_the_middle_of_a_migration_is_back_in_one_handshake() {
    for seed in SEEDS {
        for (moved, restarted) in [(A, B), (A, A)] {
            run_simulation(|| restart_during_migration(seed, moved, restarted));
        }
    }
}
