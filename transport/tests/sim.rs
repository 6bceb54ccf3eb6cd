//! Real quinn over the simulated network, under tokio's paused clock: every second
//! below is virtual and costs (almost) nothing.

// Test code: a panic is a failed test (clippy.toml allows this inside #[test] fns;
// the helpers outside them need it said explicitly).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{connect, frame, ip, sa};
use tether_transport::sim::{LinkConditions, SimNetwork, Verdict};
use tether_transport::{
    dial_any, DialFailure, Endpoint, LinkError, LinkRole, LostReason, TransportConfig,
};
use tokio::time::Instant;

const SEED: u64 = 0x7e7e_0001;

async fn endpoint(net: &SimNetwork, host: tether_transport::sim::HostId, addr: &str) -> Endpoint {
    Endpoint::bind_sim(net, host, sa(addr), TransportConfig::seeded(SEED))
        .await
        .unwrap()
}

/// Sends frames `range` on `link` from a spawned task.
fn spawn_sender(
    sender: tether_transport::LinkSender,
    range: std::ops::Range<u32>,
    spacing: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for i in range {
            sender.send_frame(frame(i)).await.unwrap();
            if !spacing.is_zero() {
                tokio::time::sleep(spacing).await;
            }
        }
    })
}

async fn expect_frames(rx: &mut tether_transport::LinkReceiver, range: std::ops::Range<u32>) {
    for i in range {
        let got = rx.recv_frame().await.unwrap().expect("stream ended early");
        assert_eq!(got, frame(i), "frame {i} differs");
    }
}

#[tokio::test(start_paused = true)]
async fn frames_arrive_intact_and_in_order_despite_loss_and_reordering() {
    let net = SimNetwork::new(SEED);
    net.set_default_conditions(LinkConditions {
        latency: Duration::from_millis(20),
        jitter: Duration::from_millis(8),
        loss: 0.10,
        reorder: 0.10,
        duplicate: 0.02,
        ..LinkConditions::default()
    });
    let a = net.add_host("a", [ip("10.0.0.1")]);
    let b = net.add_host("b", [ip("10.0.0.2")]);
    let ea = endpoint(&net, a, "10.0.0.1:0").await;
    let eb = endpoint(&net, b, "10.0.0.2:4433").await;
    let (la, lb) = connect(&ea, &eb).await;
    let (tx_a, mut rx_a) = la.split();
    let (tx_b, mut rx_b) = lb.split();

    let forward = spawn_sender(tx_a.clone(), 0..300, Duration::ZERO);
    let backward = spawn_sender(tx_b.clone(), 1000..1100, Duration::ZERO);
    expect_frames(&mut rx_b, 0..300).await;
    expect_frames(&mut rx_a, 1000..1100).await;
    forward.await.unwrap();
    backward.await.unwrap();

    let counters = net.counters(a).unwrap();
    assert!(
        counters.packets_dropped > 0,
        "loss must have hit: {counters:?}"
    );
    assert!(net.counters(b).unwrap().packets_dropped > 0);
    assert_eq!(rx_b.handle().stats().frames_received, 300);
    assert_eq!(tx_a.handle().stats().frames_sent, 300);
    assert_eq!(rx_a.handle().stats().frames_received, 100);
}

#[tokio::test(start_paused = true)]
async fn partition_then_heal_delivers_everything_in_order() {
    let net = SimNetwork::new(SEED);
    let a = net.add_host("a", [ip("10.0.0.1")]);
    let b = net.add_host("b", [ip("10.0.0.2")]);
    let ea = endpoint(&net, a, "10.0.0.1:0").await;
    let eb = endpoint(&net, b, "10.0.0.2:4433").await;
    let (la, lb) = connect(&ea, &eb).await;
    let (tx, _rx_a) = la.split();
    let (_tx_b, mut rx) = lb.split();

    spawn_sender(tx.clone(), 0..20, Duration::ZERO)
        .await
        .unwrap();
    expect_frames(&mut rx, 0..20).await;

    net.partition(a, b);
    let during = spawn_sender(tx.clone(), 20..60, Duration::from_millis(10));
    // Five virtual seconds of outage, below the 15 s idle timeout.
    let outage = tokio::time::timeout(Duration::from_secs(5), rx.recv_frame()).await;
    assert!(outage.is_err(), "nothing may cross a partition");
    assert_eq!(rx.handle().stats().frames_received, 20);

    net.heal(a, b);
    let healed_at = Instant::now();
    expect_frames(&mut rx, 20..60).await;
    during.await.unwrap();
    // QUIC's backed-off retransmission timer fires within a few seconds of the heal.
    assert!(healed_at.elapsed() < Duration::from_secs(5));
    assert!(rx.handle().lost_reason().is_none());
    assert!(tx.handle().lost_reason().is_none());
}

#[tokio::test(start_paused = true)]
async fn dialler_address_change_migrates_and_receiver_sees_new_address() {
    let net = SimNetwork::new(SEED);
    let a = net.add_host("phone", [ip("10.0.0.1")]);
    let b = net.add_host("laptop", [ip("10.0.0.2")]);
    let ea = endpoint(&net, a, "10.0.0.1:0").await;
    let eb = endpoint(&net, b, "10.0.0.2:4433").await;
    let (la, lb) = connect(&ea, &eb).await;
    assert_eq!(la.role(), LinkRole::Dialled);
    let dialled_id = la.id();
    let (tx, _rx_a) = la.split();
    let (_tx_b, mut rx) = lb.split();
    assert_eq!(rx.handle().remote_addr().ip(), ip("10.0.0.1"));

    let sending = spawn_sender(tx.clone(), 0..200, Duration::from_millis(5));
    expect_frames(&mut rx, 0..100).await;

    // WiFi to mobile mid-stream: the old address disappears, then the endpoint moves.
    net.set_address(a, ip("10.0.0.1"), ip("100.64.0.7"))
        .unwrap();
    let outcome = ea.rebind(sa("100.64.0.7:0")).unwrap();
    assert_eq!(outcome.migrating, vec![dialled_id]);
    assert!(outcome.lost.is_empty());
    assert_eq!(outcome.new.ip(), ip("100.64.0.7"));

    expect_frames(&mut rx, 100..200).await;
    sending.await.unwrap();
    assert_eq!(rx.handle().remote_addr(), outcome.new);
    assert!(rx.handle().lost_reason().is_none());
    assert!(tx.handle().lost_reason().is_none());
    assert_eq!(ea.stats().rebinds, 1);
}

/// Frames the acceptor sent to the dialler's old address just before it moved are lost
/// on the way; on the old stream they would hold every later frame back until QUIC
/// noticed the loss. The acceptor's first frame after it sees the new address goes on a
/// fresh stream instead and arrives one way later.
#[tokio::test(start_paused = true)]
async fn the_acceptor_rolls_to_a_fresh_stream_when_the_dialler_moves() {
    const ONE_WAY: Duration = Duration::from_millis(50);
    let net = SimNetwork::new(SEED);
    net.set_default_conditions(LinkConditions {
        latency: ONE_WAY,
        ..LinkConditions::default()
    });
    let a = net.add_host("phone", [ip("10.0.0.1")]);
    let b = net.add_host("laptop", [ip("10.0.0.2")]);
    let ea = endpoint(&net, a, "10.0.0.1:0").await;
    let eb = endpoint(&net, b, "10.0.0.2:4433").await;
    let (mut la, mut lb) = connect(&ea, &eb).await;
    lb.send_frame(frame(0)).await.unwrap();
    assert_eq!(la.recv_frame().await.unwrap(), Some(frame(0)));

    // In flight to the old address when the phone moves: lost. (Small, as messages
    // are: QUIC may retransmit them on the new path before the rollover resets their
    // stream, and that counts against the anti-amplification budget there.)
    for i in 1..4_u8 {
        lb.send_frame(Bytes::from(vec![i; 100])).await.unwrap();
    }
    net.set_address(a, ip("10.0.0.1"), ip("100.64.0.7"))
        .unwrap();
    ea.rebind(sa("100.64.0.7:0")).unwrap();
    // Big enough that QUIC's anti-amplification limit lets the answer out before the
    // new address is validated (the session layer pads its migration ping likewise).
    let hello = Bytes::from(vec![5_u8; 2000]);
    la.send_frame(hello.clone()).await.unwrap();
    assert_eq!(lb.recv_frame().await.unwrap(), Some(hello));
    assert_eq!(lb.remote_addr().ip(), ip("100.64.0.7"));

    let sent_at = Instant::now();
    let answer = Bytes::from_static(b"after the move");
    lb.send_frame(answer.clone()).await.unwrap();
    let got = la.recv_frame().await.unwrap();
    assert_eq!(got, Some(answer), "the fresh stream is not held back");
    assert!(
        sent_at.elapsed() <= ONE_WAY + Duration::from_millis(5),
        "arrived {:?} after it was sent",
        sent_at.elapsed()
    );
    assert_eq!(lb.stats().stream_rollovers, 1);
    assert_eq!(
        la.stats().stream_rollovers,
        0,
        "the mover's peer did not move"
    );
}

#[tokio::test(start_paused = true)]
async fn acceptor_address_change_is_reported_as_lost_and_a_redial_works() {
    let net = SimNetwork::new(SEED);
    let a = net.add_host("a", [ip("10.0.0.1")]);
    let b = net.add_host("b", [ip("10.0.0.2")]);
    let ea = endpoint(&net, a, "10.0.0.1:0").await;
    let eb = endpoint(&net, b, "10.0.0.2:4433").await;
    let (la, mut lb) = connect(&ea, &eb).await;
    la.send_frame(frame(1)).await.unwrap();
    assert_eq!(lb.recv_frame().await.unwrap(), Some(frame(1)));

    net.set_address(b, ip("10.0.0.2"), ip("10.0.9.2")).unwrap();
    let outcome = eb.rebind(sa("10.0.9.2:4433")).unwrap();
    assert_eq!(outcome.lost, vec![lb.id()]);
    assert!(outcome.migrating.is_empty());

    // Locally: reported at once.
    assert_eq!(lb.handle().lost().await, LostReason::LocalAddressChanged);
    assert_eq!(
        lb.recv_frame().await,
        Err(LinkError::Lost(LostReason::LocalAddressChanged))
    );
    // On the dialling side: the connection dies at its idle timeout.
    let start = Instant::now();
    assert_eq!(la.handle().lost().await, LostReason::IdleTimeout);
    assert!(start.elapsed() <= TransportConfig::default().idle_timeout + Duration::from_secs(1));

    // The session layer's answer: a transport-only reconnect to the new address.
    let (mut la2, lb2) = connect(&ea, &eb).await;
    lb2.send_frame(frame(2)).await.unwrap();
    assert_eq!(la2.recv_frame().await.unwrap(), Some(frame(2)));
    assert_eq!(la2.remote_addr(), sa("10.0.9.2:4433"));
}

#[tokio::test(start_paused = true)]
async fn a_farewell_travels_in_the_close_and_an_oversized_one_is_left_out() {
    let net = SimNetwork::new(SEED);
    let a = net.add_host("a", [ip("10.0.0.1")]);
    let b = net.add_host("b", [ip("10.0.0.2")]);
    let ea = endpoint(&net, a, "10.0.0.1:0").await;
    let eb = endpoint(&net, b, "10.0.0.2:4433").await;
    let (la, lb) = connect(&ea, &eb).await;
    la.handle().close_with_farewell(b"goodbye");
    assert_eq!(
        lb.handle().lost().await,
        LostReason::Farewell {
            frame: b"goodbye".to_vec()
        }
    );

    let (la, lb) = connect(&ea, &eb).await;
    la.handle()
        .close_with_farewell(&vec![0; tether_transport::MAX_FAREWELL_LEN + 1]);
    assert!(matches!(
        lb.handle().lost().await,
        LostReason::ClosedByPeer { .. }
    ));
}

#[tokio::test(start_paused = true)]
async fn endpoint_independent_nat_maps_on_first_packet_and_admits_any_remote() {
    let net = SimNetwork::new(SEED);
    net.enable_packet_log();
    let nat = net.add_nat(ip("198.51.100.1"));
    let a = net
        .add_host_behind_nat("phone", nat, [ip("192.168.1.10")])
        .unwrap();
    let b = net.add_host("server", [ip("203.0.113.5")]);
    let c = net.add_host("stranger", [ip("203.0.113.9")]);
    let ea = endpoint(&net, a, "192.168.1.10:0").await;
    let eb = endpoint(&net, b, "203.0.113.5:4433").await;

    // Unsolicited traffic to the NAT finds no mapping.
    let stranger = net.bind(c, sa("203.0.113.9:0")).unwrap();
    stranger.send_to(&[0x40; 64], sa("198.51.100.1:20000"));

    let (mut la, mut lb) = connect(&ea, &eb).await;
    let public = lb.remote_addr();
    assert_eq!(public, sa("198.51.100.1:20000"));
    lb.send_frame(frame(5)).await.unwrap();
    assert_eq!(la.recv_frame().await.unwrap(), Some(frame(5)));
    la.send_frame(frame(6)).await.unwrap();
    assert_eq!(lb.recv_frame().await.unwrap(), Some(frame(6)));

    // Endpoint-independent filtering: once mapped, a third host reaches the phone too
    // (here with a datagram that is not QUIC, which the endpoint drops and counts).
    stranger.send_to(&[0x00; 64], public);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(ea.stats().garbage_datagrams_dropped, 1);

    let log = net.packet_log();
    assert_eq!(log[0].verdict, Verdict::NoRoute);
    assert!(log
        .iter()
        .filter(|e| e.to == sa("203.0.113.5:4433"))
        .all(|e| e.from == public));
}

/// Datagrams of random bytes with the QUIC fixed bit set: every one is counted as
/// dropped, by the socket guard (unsupported version) or where quinn drops it (a
/// connection id this endpoint never issued); none reaches a connection.
#[tokio::test(start_paused = true)]
async fn quic_looking_junk_is_dropped_and_every_datagram_counted() {
    use rand::{Rng, SeedableRng};
    const JUNK: u64 = 2000;
    let net = SimNetwork::new(SEED);
    let b = net.add_host("b", [ip("10.0.0.2")]);
    let m = net.add_host("mallory", [ip("10.0.0.66")]);
    let eb = endpoint(&net, b, "10.0.0.2:4433").await;
    let target = eb.local_addr().unwrap();
    let raw = net.bind(m, sa("10.0.0.66:0")).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(SEED);
    // In rounds the simulated bottleneck queue and receive buffer take whole.
    for _ in 0..JUNK / 100 {
        for _ in 0..100 {
            // Shorter than an Initial, so no version negotiation answers any of them.
            let mut junk = vec![0_u8; rng.gen_range(21..1200)];
            rng.fill(&mut junk[..]);
            junk[0] |= 0x40;
            raw.send_to(&junk, target);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = eb.stats();
    assert!(stats.unsupported_version_dropped > JUNK / 3, "{stats:?}");
    assert!(stats.unknown_connection_dropped > JUNK / 3, "{stats:?}");
    assert_eq!(
        stats.unsupported_version_dropped + stats.unknown_connection_dropped,
        JUNK,
        "{stats:?}"
    );
    assert_eq!(stats.garbage_datagrams_dropped, 0);
    assert_eq!(stats.datagrams_sent, 0, "nothing answered");
}

#[tokio::test(start_paused = true)]
async fn dialler_moving_from_one_nat_to_another_keeps_its_connection() {
    let net = SimNetwork::new(SEED);
    let home = net.add_nat(ip("198.51.100.1"));
    let carrier = net.add_nat(ip("100.64.255.1"));
    let phone = net
        .add_host_behind_nat("phone", home, [ip("192.168.1.10")])
        .unwrap();
    let server = net.add_host("server", [ip("203.0.113.5")]);
    let ep = endpoint(&net, phone, "192.168.1.10:0").await;
    let es = endpoint(&net, server, "203.0.113.5:4433").await;
    let (lp, ls) = connect(&ep, &es).await;
    let (tx, _rx_phone) = lp.split();
    let (_tx_server, mut rx) = ls.split();
    assert_eq!(rx.handle().remote_addr().ip(), ip("198.51.100.1"));

    let sending = spawn_sender(tx.clone(), 0..60, Duration::from_millis(10));
    expect_frames(&mut rx, 0..30).await;
    // WiFi at home to mobile data behind the carrier's NAT: new NAT, new address.
    net.set_nat(phone, Some(carrier)).unwrap();
    net.set_address(phone, ip("192.168.1.10"), ip("10.20.30.40"))
        .unwrap();
    ep.rebind(sa("10.20.30.40:0")).unwrap();
    expect_frames(&mut rx, 30..60).await;
    sending.await.unwrap();
    assert_eq!(rx.handle().remote_addr().ip(), ip("100.64.255.1"));
    assert!(rx.handle().lost_reason().is_none());
}

#[tokio::test(start_paused = true)]
async fn blocked_direct_path_leaves_only_the_relay_reachable() {
    let net = SimNetwork::new(SEED);
    let a = net.add_host("a", [ip("10.0.0.1")]);
    let b = net.add_host("b", [ip("10.0.0.2")]);
    let r = net.add_host("relay", [ip("10.0.0.3")]);
    let ea = endpoint(&net, a, "10.0.0.1:0").await;
    let eb = endpoint(&net, b, "10.0.0.2:4433").await;
    let er = endpoint(&net, r, "10.0.0.3:443").await;
    net.block_direct(a, b);

    let direct = ea.dial(eb.local_addr().unwrap()).await;
    assert_eq!(direct.unwrap_err().kind(), DialFailure::TimedOut);
    let (mut la, mut lr) = connect(&ea, &er).await;
    let (mut lb, mut lr2) = connect(&eb, &er).await;
    la.send_frame(frame(1)).await.unwrap();
    lb.send_frame(frame(2)).await.unwrap();
    assert_eq!(lr.recv_frame().await.unwrap(), Some(frame(1)));
    assert_eq!(lr2.recv_frame().await.unwrap(), Some(frame(2)));
    lr.send_frame(frame(3)).await.unwrap();
    assert_eq!(la.recv_frame().await.unwrap(), Some(frame(3)));
    lr2.send_frame(frame(4)).await.unwrap();
    assert_eq!(lb.recv_frame().await.unwrap(), Some(frame(4)));
    assert!(net.counters(a).unwrap().packets_dropped > 0);
}

#[tokio::test(start_paused = true)]
async fn dial_any_staggers_and_first_success_wins_and_cancels_the_rest() {
    let net = SimNetwork::new(SEED);
    let a = net.add_host("a", [ip("10.0.0.1")]);
    let slow = net.add_host("far", [ip("10.0.0.3")]);
    let b = net.add_host("b", [ip("10.0.0.2"), ip("10.0.1.2")]);
    net.set_conditions(
        a,
        slow,
        LinkConditions {
            latency: Duration::from_millis(400),
            ..LinkConditions::default()
        },
    );
    let ea = endpoint(&net, a, "10.0.0.1:0").await;
    let eslow = endpoint(&net, slow, "10.0.0.3:4433").await;
    let eb = endpoint(&net, b, "0.0.0.0:4433").await;

    // A dead candidate, then a slow one (started at 250 ms, would finish after 1 s),
    // then a fast one (started at 500 ms, done 40 ms later): the fast one wins, the slow
    // attempt is cancelled, the fourth candidate is never tried.
    let start = Instant::now();
    let candidates = [
        sa("10.9.9.9:4433"),
        sa("10.0.0.3:4433"),
        sa("10.0.0.2:4433"),
        sa("10.0.1.2:4433"),
    ];
    let (link, accepted) = tokio::join!(dial_any(&ea, &candidates), eb.accept());
    let (link, mut accepted) = (link.unwrap(), accepted.unwrap());
    let took = start.elapsed();
    assert_eq!(link.remote_addr(), sa("10.0.0.2:4433"));
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(took < Duration::from_millis(700), "{took:?}");
    link.send_frame(frame(9)).await.unwrap();
    assert_eq!(accepted.recv_frame().await.unwrap(), Some(frame(9)));

    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(eb.stats().links_accepted, 1);
    assert_eq!(ea.stats().links_dialled, 1);
    assert_eq!(eslow.stats().links_accepted, 0);
    assert_eq!(
        eslow.stats().accept_failures,
        1,
        "the cancelled attempt reached it"
    );
}

#[tokio::test(start_paused = true)]
async fn bandwidth_limit_paces_delivery() {
    let net = SimNetwork::new(SEED);
    net.set_default_conditions(LinkConditions {
        bandwidth_bps: 1_000_000,
        max_queue_delay: Duration::from_secs(1),
        ..LinkConditions::default()
    });
    let a = net.add_host("a", [ip("10.0.0.1")]);
    let b = net.add_host("b", [ip("10.0.0.2")]);
    let ea = endpoint(&net, a, "10.0.0.1:0").await;
    let eb = endpoint(&net, b, "10.0.0.2:4433").await;
    let (la, mut lb) = connect(&ea, &eb).await;
    let payload = Bytes::from(vec![1u8; 250_000]);
    let start = Instant::now();
    let (sent, received) = tokio::join!(la.send_frame(payload.clone()), lb.recv_frame());
    sent.unwrap();
    assert_eq!(received.unwrap(), Some(payload));
    // 2 Mbit at 1 Mbit/s: at least two seconds, and QUIC keeps the pipe mostly full.
    let took = start.elapsed();
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert!(took < Duration::from_secs(4), "{took:?}");
}

#[tokio::test(start_paused = true)]
async fn dial_errors_are_typed() {
    let net = SimNetwork::new(SEED);
    let a = net.add_host("a", [ip("10.0.0.1")]);
    let b = net.add_host("b", [ip("10.0.0.2")]);
    let ea = endpoint(&net, a, "10.0.0.1:0").await;
    let eb = endpoint(&net, b, "10.0.0.2:4433").await;

    assert_eq!(
        dial_any(&ea, &[]).await.unwrap_err().kind(),
        DialFailure::NoCandidates
    );
    // An IPv6 candidate from an IPv4-only socket.
    let v6 = ea.dial(sa("[2001:db8::1]:4433")).await.unwrap_err();
    assert_eq!(v6.kind(), DialFailure::Unreachable, "{v6}");
    // Nobody there: the dial deadline (10 s virtual) passes.
    let start = Instant::now();
    let silent = dial_any(&ea, &[sa("10.0.0.77:1"), sa("10.0.0.78:1")])
        .await
        .unwrap_err();
    assert_eq!(silent.kind(), DialFailure::TimedOut, "{silent}");
    assert!(matches!(silent, tether_transport::DialError::AllFailed(ref v) if v.len() == 2));
    let timeout = TransportConfig::default().dial_timeout;
    assert!(start.elapsed() >= timeout && start.elapsed() < timeout + Duration::from_millis(100));
    // A closed endpoint answers with CONNECTION_REFUSED.
    eb.close();
    let refused = ea.dial(sa("10.0.0.2:4433")).await.unwrap_err();
    assert_eq!(refused.kind(), DialFailure::Refused, "{refused}");
}

#[tokio::test(start_paused = true)]
async fn garbage_datagrams_are_dropped_and_counted_and_links_still_work() {
    let net = SimNetwork::new(SEED);
    net.enable_packet_log();
    let a = net.add_host("a", [ip("10.0.0.1")]);
    let b = net.add_host("b", [ip("10.0.0.2")]);
    let m = net.add_host("mallory", [ip("10.0.0.66")]);
    let ea = endpoint(&net, a, "10.0.0.1:0").await;
    let eb = endpoint(&net, b, "10.0.0.2:4433").await;
    let target = eb.local_addr().unwrap();
    let raw = net.bind(m, sa("10.0.0.66:0")).unwrap();

    raw.send_to(&[], target); // empty
    raw.send_to(&[0xC0; 5], target); // too short for QUIC
    raw.send_to(&[0x3F; 1000], target); // fixed bit clear: not QUIC
    raw.send_to(&[0x5A; 1200], target); // QUIC-shaped noise: quinn drops it
    let mut long_header = vec![0xC0; 1200];
    long_header[1..5].copy_from_slice(&[0xFF; 4]); // unknown version
    raw.send_to(&long_header, target); // answered with a version negotiation
    raw.send_to(&long_header[..100], target); // too short to answer: dropped
    raw.send_to(&vec![0x40; 9000], target); // above the path MTU: the network drops it
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stats = eb.stats();
    assert_eq!(stats.garbage_datagrams_dropped, 3);
    assert_eq!(stats.unsupported_version_dropped, 1);
    assert_eq!(stats.unknown_connection_dropped, 1);
    assert_eq!(
        stats.receive_buffer_drops, 0,
        "not counted on the simulated network"
    );
    assert!(net
        .packet_log()
        .iter()
        .any(|e| e.len == 9000 && e.verdict == Verdict::TooBig));

    let (la, mut lb) = connect(&ea, &eb).await;
    la.send_frame(Bytes::from_static(b"still fine"))
        .await
        .unwrap();
    assert_eq!(
        lb.recv_frame().await.unwrap(),
        Some(Bytes::from_static(b"still fine"))
    );
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_sends_too_fast_is_held_back_by_flow_control() {
    let net = SimNetwork::new(SEED);
    let a = net.add_host("a", [ip("10.0.0.1")]);
    let b = net.add_host("b", [ip("10.0.0.2")]);
    let ea = endpoint(&net, a, "10.0.0.1:0").await;
    let eb = endpoint(&net, b, "10.0.0.2:4433").await;
    let (la, _lb_never_read) = connect(&ea, &eb).await;

    let chunk = Bytes::from(vec![7u8; 64 * 1024]);
    let mut accepted = 0usize;
    loop {
        let send = tokio::time::timeout(Duration::from_secs(2), la.send_frame(chunk.clone()));
        match send.await {
            Ok(result) => {
                result.unwrap();
                accepted += chunk.len();
            }
            Err(_) => break,
        }
        assert!(accepted < 64 * 1024 * 1024, "no back-pressure");
    }
    // The receiver never read, so the sender got the receiver's stream window of credit
    // (less the partial frame that did not fit) and the frames the link's reader holds
    // ahead of the session layer (two at most), not one byte more.
    let window = TransportConfig::default().stream_receive_window as usize;
    assert!(
        accepted <= window + 2 * chunk.len(),
        "{accepted} > {window} + read-ahead"
    );
    assert!(
        accepted + 2 * chunk.len() >= window,
        "{accepted} far below {window}"
    );
}

/// The scenario whose packet log is snapshotted: a handshake, a few frames over a
/// lossy, jittery path, a close.
async fn logged_scenario(seed: u64) -> String {
    let net = SimNetwork::new(seed);
    net.enable_packet_log();
    net.set_default_conditions(LinkConditions {
        latency: Duration::from_millis(15),
        jitter: Duration::from_millis(4),
        loss: 0.05,
        ..LinkConditions::default()
    });
    let a = net.add_host("a", [ip("10.0.0.1")]);
    let b = net.add_host("b", [ip("10.0.0.2")]);
    let config = TransportConfig::seeded(seed);
    let ea = Endpoint::bind_sim(&net, a, sa("10.0.0.1:5000"), config.clone())
        .await
        .unwrap();
    let eb = Endpoint::bind_sim(&net, b, sa("10.0.0.2:4433"), config)
        .await
        .unwrap();
    let (la, mut lb) = connect(&ea, &eb).await;
    for i in 0..6 {
        la.send_frame(frame(i * 3)).await.unwrap();
    }
    for i in 0..6 {
        assert_eq!(lb.recv_frame().await.unwrap(), Some(frame(i * 3)));
    }
    la.close();
    tokio::time::sleep(Duration::from_secs(1)).await;
    net.packet_log_text()
}

fn run_paused<F: std::future::Future<Output = String>>(f: F) -> String {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn same_seed_gives_the_same_packet_log() {
    let first = run_paused(logged_scenario(42));
    let second = run_paused(logged_scenario(42));
    assert_eq!(first, second);
    let other = run_paused(logged_scenario(43));
    assert_ne!(first, other);
    insta::assert_snapshot!("packet_log_seed_42", first);
}
