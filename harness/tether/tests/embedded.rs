//! The library as an application uses it: two nodes built with `Node::builder` on a
//! multi-threaded tokio runtime (the application's), a relay, messages both ways with
//! their acknowledgements, a wait for room in a full queue, and an orderly stop; and a
//! node started from the config file `tether node` reads. Real UDP on loopback.

// A panic in a test is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::start_relay;

use std::net::SocketAddr;
use std::time::Duration;
use tether::{
    ChannelId, DeviceId, Limits, Node, NodeEvent, PathKind, PingError, PublicKey, RelationshipKey,
    StaticKeypair,
};

/// Waits for the first event `pick` accepts.
async fn until<T>(node: &mut Node, mut pick: impl FnMut(&NodeEvent) -> Option<T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let event = node.next_event().await.expect("the node stopped");
            if let Some(found) = pick(&event) {
                return found;
            }
        }
    })
    .await
    .expect("no such event within 20 s")
}

fn ready(peer: DeviceId) -> impl FnMut(&NodeEvent) -> Option<()> {
    move |event| matches!(event, NodeEvent::Ready(r) if r.peer == peer).then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_embedded_nodes_talk_through_the_builder_api() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::OsRng;
    let relay_key = StaticKeypair::generate(&mut rng);
    let relay_public = *relay_key.public();
    let relay = start_relay(relay_key);
    let b_key = StaticKeypair::generate(&mut rng);
    let b_public = *b_key.public();
    let rk = RelationshipKey::generate(&mut rng);
    let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();

    // A keeps its key in a file (created on first start) and its channels on disk.
    let key_file = dir.path().join("a.key");
    let mut a = Node::builder()
        .key_file(&key_file)
        .relay(relay, relay_public)
        .peer(b_public, rk.clone())
        .listen(loopback)
        .data_dir(dir.path().join("data"))
        .watch_interfaces(false)
        .start()
        .await
        .unwrap();
    let a_public = PublicKey::from_bytes(a.device().0).unwrap();
    assert_eq!(
        StaticKeypair::load(&key_file).unwrap().public(),
        &a_public,
        "the key file holds the device's key"
    );
    let mut b = Node::builder()
        .keypair(b_key)
        .relay(relay, relay_public)
        .peer_at(a_public, rk, vec![a.local_addr()])
        .listen(loopback)
        .watch_interfaces(false)
        .start()
        .await
        .unwrap();
    let (a_id, b_id) = (a.device(), b.device());
    until(&mut a, ready(b_id)).await;
    until(&mut b, ready(a_id)).await;

    for i in 0..100u32 {
        a.send_on(b_id, ChannelId(3), i.to_be_bytes())
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 100 {
        let payload = until(&mut b, |event| match event {
            NodeEvent::Delivered {
                peer,
                channel,
                payload,
                ..
            } if *peer == a_id && *channel == ChannelId(3) => Some(payload.clone()),
            _ => None,
        })
        .await;
        got.push(u32::from_be_bytes(payload.try_into().unwrap()));
    }
    assert_eq!(got, (0..100).collect::<Vec<_>>(), "each once, in order");
    // A learns that B has them all.
    until(&mut a, |event| match event {
        NodeEvent::Acknowledged {
            peer,
            channel,
            below,
        } if *peer == b_id && *channel == ChannelId(3) && *below == 100 => Some(()),
        _ => None,
    })
    .await;

    b.send(a_id, b"hello back".to_vec()).await.unwrap();
    let back = until(&mut a, |event| match event {
        NodeEvent::Delivered { payload, .. } => Some(payload.clone()),
        _ => None,
    })
    .await;
    assert_eq!(back, b"hello back");
    let status = a.status().await;
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].handshakes, 1);

    a.stop().await;
    b.stop().await;

    // A restarts from its key file: the same device.
    let a = Node::builder()
        .key_file(&key_file)
        .relay(relay, relay_public)
        .peer(b_public, RelationshipKey::generate(&mut rng))
        .listen(loopback)
        .watch_interfaces(false)
        .start()
        .await
        .unwrap();
    assert_eq!(a.device(), a_id);
    a.stop().await;
}

/// A free UDP port on loopback (bound, then let go).
fn free_loopback_port() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A node config as `tether node` reads it (docs/config.md): key file, listen address,
/// data folder, the relay, one paired peer.
fn node_config(listen: SocketAddr, relay: SocketAddr, relay_public: &PublicKey) -> String {
    let mut rng = rand::rngs::OsRng;
    let peer = StaticKeypair::generate(&mut rng);
    let rk = RelationshipKey::generate(&mut rng);
    format!(
        "key_file = \"device.key\"\nlisten = \"{listen}\"\ndata_dir = \"data\"\nwatch_interfaces = false\n\n\
         [limits]\nheartbeat_interval_ms = 2000\n\n\
         [relay]\naddr = \"{relay}\"\npublic_key = \"{}\"\n\n\
         [[peers]]\nname = \"laptop\"\npublic_key = \"{}\"\nrelationship_key = \"{}\"\n",
        relay_public.to_hex(),
        peer.public().to_hex(),
        rk.to_hex().as_str(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_starts_from_the_config_file_the_cli_reads() {
    let dir = tempfile::tempdir().unwrap();
    let relay_key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let relay_public = *relay_key.public();
    let relay = start_relay(relay_key);
    let device_key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    device_key.save(&dir.path().join("device.key")).unwrap();
    let listen = free_loopback_port();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, node_config(listen, relay, &relay_public)).unwrap();

    let settings = tether::config::load_node(&config).unwrap();
    assert_eq!(settings.limits.heartbeat_interval, Duration::from_secs(2));
    let node = Node::builder_from_config_file(&config)
        .unwrap()
        .start()
        .await
        .unwrap();
    assert_eq!(node.device(), tether::device_id(device_key.public()));
    assert_eq!(node.local_addr(), listen);
    let peers = node.status().await;
    assert_eq!(peers.len(), 1);
    let report = node.status_report().await.unwrap();
    assert_eq!(
        report.peers[0].name, "laptop",
        "the metrics name the config's peers"
    );
    node.stop().await;
    assert!(
        tether::channel_store_path(
            &dir.path().join("data"),
            &tether::device_id(device_key.public())
        )
        .exists(),
        "the channels live in the config's data_dir"
    );
}

#[test]
fn a_bad_config_file_is_an_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let relay_public = *StaticKeypair::generate(&mut rand::rngs::OsRng).public();
    StaticKeypair::generate(&mut rand::rngs::OsRng)
        .save(&dir.path().join("device.key"))
        .unwrap();
    let config = dir.path().join("node.toml");
    let text = node_config(free_loopback_port(), free_loopback_port(), &relay_public)
        .replace("listen = \"127.0.0.1:", "listen = \"nowhere:");
    std::fs::write(&config, text).unwrap();

    let error = Node::builder_from_config_file(&config).unwrap_err();
    assert!(
        matches!(&error, tether::config::ConfigError::Key { key, .. } if key == "listen"),
        "{error}"
    );
    assert!(
        error.to_string().contains("is not an ip:port address"),
        "{error}"
    );

    let missing = Node::builder_from_config_file(dir.path().join("absent.toml")).unwrap_err();
    assert!(
        matches!(missing, tether::config::ConfigError::Read { .. }),
        "{missing}"
    );
}

/// A relay on loopback, node A started, and B (its id, and its builder, paired with A
/// and knowing A's address).
async fn pair() -> (Node, DeviceId, tether::NodeBuilder) {
    let mut rng = rand::rngs::OsRng;
    let relay_key = StaticKeypair::generate(&mut rng);
    let relay_public = *relay_key.public();
    let relay = start_relay(relay_key);
    let b_key = StaticKeypair::generate(&mut rng);
    let b_id = tether::device_id(b_key.public());
    let rk = RelationshipKey::generate(&mut rng);
    let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let a = Node::builder()
        .keypair(StaticKeypair::generate(&mut rng))
        .relay(relay, relay_public)
        .peer(*b_key.public(), rk.clone())
        .listen(loopback)
        .watch_interfaces(false)
        .start()
        .await
        .unwrap();
    let a_public = PublicKey::from_bytes(a.device().0).unwrap();
    let b = Node::builder()
        .keypair(b_key)
        .relay(relay, relay_public)
        .peer_at(a_public, rk, vec![a.local_addr()])
        .listen(loopback)
        .watch_interfaces(false);
    (a, b_id, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_measures_the_session_and_says_why_when_there_is_none() {
    let (mut a, b_id, b) = pair().await;
    let probe = Duration::from_secs(2);

    // B is not running: no session carries a ping, and the error says so at once.
    let started = std::time::Instant::now();
    let error = a.ping(b_id, probe).await.unwrap_err();
    assert!(matches!(error, PingError::NoSession { .. }), "{error:?}");
    assert!(started.elapsed() < probe, "no session is no wait");
    assert!(error.to_string().starts_with("no session"), "{error}");
    let stranger = tether::device_id(StaticKeypair::generate(&mut rand::rngs::OsRng).public());
    assert_eq!(
        a.ping(stranger, probe).await.unwrap_err(),
        PingError::UnknownPeer
    );

    let mut b = b.start().await.unwrap();
    until(&mut a, ready(b_id)).await;
    until(&mut b, ready(a.device())).await;
    // Each probe is one round trip, with the path its answer came by (the session may
    // start on the relay and move to the direct path meanwhile).
    for _ in 0..3 {
        let answer = a.ping(b_id, probe).await.unwrap();
        assert!(
            answer.rtt > Duration::ZERO && answer.rtt < probe,
            "{answer:?}"
        );
        let remote = match answer.path {
            PathKind::Direct => Some(b.local_addr()),
            PathKind::Relay => None,
        };
        assert_eq!(answer.remote, remote, "{answer:?}");
    }
    // And the other way.
    let back = b.ping(a.device(), probe).await.unwrap();
    assert!(back.rtt < probe, "{back:?}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_node_gives_the_report_and_prometheus_text_tether_node_serves() {
    let (mut a, b_id, b) = pair().await;
    let mut b = b.start().await.unwrap();
    until(&mut a, ready(b_id)).await;
    a.send(b_id, b"counted".to_vec()).await.unwrap();
    until(&mut b, |event| {
        matches!(event, NodeEvent::Delivered { .. }).then_some(())
    })
    .await;
    until(&mut a, |event| {
        matches!(event, NodeEvent::Acknowledged { below: 1, .. }).then_some(())
    })
    .await;

    let report = a.status_report().await.unwrap();
    assert_eq!(report.device, a.device().to_hex());
    assert_eq!(report.listen, a.local_addr().to_string());
    let [peer] = report.peers.as_slice() else {
        panic!("one peer: {report:?}")
    };
    assert_eq!(peer.name, b_id.short(), "peers are named by their short id");
    assert_eq!(peer.status.as_deref(), Some("Ready"));
    assert_eq!((peer.accepted, peer.acknowledged), (1, 1));
    // The session's start came from the node's events, which the node's thread saw on
    // their way to the application.
    assert_eq!(peer.session.sessions_started, 1, "{peer:?}");
    assert_eq!(report.server_clients.relay_connection.state, "connected");
    let text = tether::metrics::render_node_status(&report);
    assert!(text.contains(&b_id.short()), "{text}");

    let metrics = a.metrics().await.unwrap();
    let name = b_id.short();
    for line in [
        format!("tether_sessions_started_total{{peer=\"{name}\"}} 1\n"),
        format!("tether_messages_sent_total{{peer=\"{name}\"}} 1\n"),
        format!("tether_handshakes_total{{peer=\"{name}\"}} 1\n"),
        "# TYPE tether_udp_datagrams_total counter\n".to_string(),
    ] {
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    assert!(
        metrics.contains(&format!(
            "tether_session_ready{{peer=\"{name}\",status=\"Ready\","
        )),
        "{metrics}"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_all_delivers_a_burst_larger_than_the_queue_once_and_in_order() {
    let (mut a, b_id, b) = pair().await;
    let mut b = b.start().await.unwrap();
    until(&mut a, ready(b_id)).await;
    // More messages than the peer's queue holds: send_all waits for room as the
    // acknowledgements come, and hands none back.
    let count = Limits::default().max_queued + 500;
    let payloads: Vec<Vec<u8>> = (0..count).map(|i| format!("m{i}").into_bytes()).collect();
    let a_id = a.device();
    let reader = tokio::spawn(async move {
        let mut received = Vec::new();
        while received.len() < count {
            let payload = until(&mut b, |event| match event {
                NodeEvent::Delivered { peer, payload, .. } if *peer == a_id => {
                    Some(payload.clone())
                }
                _ => None,
            })
            .await;
            received.push(payload);
        }
        (b, received)
    });
    let accepted = a.send_all(b_id, payloads.clone()).await.unwrap();
    assert_eq!(accepted, (0..count as u64).collect::<Vec<_>>());
    let (b, received) = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("every message arrives")
        .unwrap();
    assert_eq!(received, payloads);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_send_refuses_at_once_when_the_queue_is_full_and_accepts_again_once_acknowledged() {
    let (mut a, b_id, b) = pair().await;
    // B is not running: nothing is acknowledged, so the queue fills.
    let max = Limits::default().max_queued;
    for i in 0..max as u64 {
        assert_eq!(a.try_send(b_id, vec![1]).await.unwrap(), i);
    }
    let full = tokio::time::timeout(Duration::from_secs(5), a.try_send(b_id, vec![1]))
        .await
        .expect("try_send does not wait")
        .unwrap_err();
    assert!(
        matches!(full, tether::SendError::QueueFull { .. }),
        "{full}"
    );

    let mut b = b.start().await.unwrap();
    let a_id = a.device();
    // B reads through the `Stream` of its events.
    let mut events = b.events();
    let mut delivered = 0;
    while delivered < max {
        let event = tokio::time::timeout(
            Duration::from_secs(20),
            std::future::poll_fn(|cx| {
                futures_core::Stream::poll_next(std::pin::Pin::new(&mut events), cx)
            }),
        )
        .await
        .expect("the queued messages arrive")
        .expect("the node runs");
        if matches!(event, NodeEvent::Delivered { peer, .. } if peer == a_id) {
            delivered += 1;
        }
    }
    until(&mut a, |event| {
        matches!(event, NodeEvent::Acknowledged { below, .. } if *below == max as u64).then_some(())
    })
    .await;
    assert_eq!(
        a.try_send(b_id, b"room again".to_vec()).await.unwrap(),
        max as u64
    );
    a.stop().await;
    b.stop().await;
}
