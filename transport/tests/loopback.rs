//! Real UDP on loopback, real time: dial, send, and rebind the dialler from 127.0.0.1
//! to 127.0.0.2 while frames flow.

// Test code: a panic is a failed test (clippy.toml allows this inside #[test] fns;
// the helpers outside them need it said explicitly).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{connect, frame, ip, sa};
use tether_transport::connectivity;
use tether_transport::{DialFailure, Endpoint, TransportConfig};

/// Frames sent in the rebind test: enough to keep the stream busy across the rebind
/// (about 15 MB), few enough to take well under a second.
const FRAMES: u32 = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebind_dialler_to_another_loopback_address_loses_nothing() {
    let server = Endpoint::bind_udp(sa("127.0.0.1:0"), TransportConfig::default())
        .await
        .unwrap();
    let client = Endpoint::bind_udp(sa("127.0.0.1:0"), TransportConfig::default())
        .await
        .unwrap();
    let (dialled, accepted) = connect(&client, &server).await;
    let (tx, _rx_client) = dialled.split();
    let (_tx_server, mut rx) = accepted.split();
    assert_eq!(rx.handle().remote_addr().ip(), ip("127.0.0.1"));

    let sender = tokio::spawn(async move {
        for i in 0..FRAMES {
            tx.send_frame(frame(i)).await.unwrap();
        }
        tx
    });
    for i in 0..FRAMES / 3 {
        assert_eq!(rx.recv_frame().await.unwrap(), Some(frame(i)), "frame {i}");
    }

    // The manual trigger is how a loopback setup reports its own "network change".
    let (trigger, mut events) = connectivity::channel();
    let outcome = client.rebind(sa("127.0.0.2:0")).unwrap();
    assert!(trigger.rebound(&outcome));
    let event = events.next().await.unwrap();
    assert_eq!(event.new, vec![outcome.new]);
    assert_eq!(outcome.migrating.len(), 1);

    for i in FRAMES / 3..FRAMES {
        assert_eq!(rx.recv_frame().await.unwrap(), Some(frame(i)), "frame {i}");
    }
    let tx = sender.await.unwrap();
    assert_eq!(rx.handle().remote_addr(), outcome.new);
    assert_eq!(rx.handle().stats().frames_received, u64::from(FRAMES));
    assert!(tx.handle().lost_reason().is_none());
}

#[tokio::test]
async fn dialling_a_silent_port_times_out_with_a_typed_error() {
    // A bound UDP socket that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let config = TransportConfig {
        dial_timeout: Duration::from_millis(300),
        ..TransportConfig::default()
    };
    let client = Endpoint::bind_udp(sa("127.0.0.1:0"), config).await.unwrap();
    let err = client.dial(silent.local_addr().unwrap()).await.unwrap_err();
    assert_eq!(err.kind(), DialFailure::TimedOut, "{err}");
}

/// A flood the endpoint cannot read in time overflows its socket's receive buffer: the
/// kernel's drops appear in the endpoint's counters, and every datagram of the flood is
/// accounted for, read (and dropped as not QUIC) or dropped by the kernel.
///
/// The overflow is deterministic: this test's runtime has one thread, busy sending the
/// whole flood before quinn can read anything.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "current_thread")]
async fn a_flood_over_the_receive_buffer_shows_as_kernel_drops() {
    use std::time::Instant;
    let endpoint = Endpoint::bind_udp(sa("127.0.0.1:0"), TransportConfig::default())
        .await
        .unwrap();
    let target = endpoint.local_addr().unwrap();
    // The endpoint asks for RECEIVE_BUFFER_BYTES, which the kernel caps at rmem_max and
    // then doubles for its bookkeeping: twice that in payload alone always overflows it
    // (each datagram also costs the buffer its kernel overhead).
    let buffer = tether_transport::receive_buffer_ceiling_bytes();
    let flood = (2 * buffer / 1200).max(1000);
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let not_quic = [0_u8; 1200]; // fixed bit clear: counted as garbage when read
    for _ in 0..flood {
        sender.send_to(&not_quic, target).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let stats = loop {
        let stats = endpoint.stats();
        if stats.garbage_datagrams_dropped + stats.receive_buffer_drops >= flood {
            break stats;
        }
        assert!(
            Instant::now() < deadline,
            "flood of {flood} not accounted for: {stats:?}"
        );
        tokio::task::yield_now().await;
    };
    eprintln!(
        "flood {flood}: read {}, dropped by the kernel {}",
        stats.garbage_datagrams_dropped, stats.receive_buffer_drops
    );
    assert!(stats.receive_buffer_drops > 0, "{stats:?}");
    assert_eq!(
        stats.garbage_datagrams_dropped + stats.receive_buffer_drops,
        flood,
        "{stats:?}"
    );
}
