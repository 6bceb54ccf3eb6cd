//! Hostile peers, driven with raw quinn (which the public API does not expose): bad
//! stream preambles, oversized frames, extra streams, silent connections and wrong
//! ALPN are dropped and counted; quinn's limits hold the peer back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::config::TransportConfig;
use crate::link::LINK_PREAMBLE;
use crate::quic;
use crate::sim::{HostId, SimNetwork};
use crate::{Endpoint, LinkError};

struct Setup {
    _net: SimNetwork,
    server: Endpoint,
    server_addr: SocketAddr,
    raw: quinn::Endpoint,
    client_config: quinn::ClientConfig,
}

async fn setup() -> Setup {
    let net = SimNetwork::new(99);
    let a: HostId = net.add_host("mallory", ["10.0.0.66".parse().unwrap()]);
    let b: HostId = net.add_host("b", ["10.0.0.2".parse().unwrap()]);
    let config = TransportConfig::seeded(99);
    let server = Endpoint::bind_sim(&net, b, "10.0.0.2:4433".parse().unwrap(), config.clone())
        .await
        .unwrap();
    let socket = net.bind(a, "10.0.0.66:0".parse().unwrap()).unwrap();
    let raw = quinn::Endpoint::new_with_abstract_socket(
        quic::endpoint_config(&config),
        None,
        Arc::new(socket),
        Arc::new(quinn::TokioRuntime),
    )
    .unwrap();
    Setup {
        server_addr: server.local_addr().unwrap(),
        client_config: quic::client_config(&config).unwrap(),
        _net: net,
        server,
        raw,
    }
}

impl Setup {
    async fn connect(&self) -> quinn::Connection {
        self.raw
            .connect_with(
                self.client_config.clone(),
                self.server_addr,
                quic::SERVER_NAME,
            )
            .unwrap()
            .await
            .unwrap()
    }

    /// A connection whose frame stream opened properly, and the link it became.
    async fn link(&self) -> (quinn::Connection, quinn::SendStream, crate::Link) {
        let conn = self.connect().await;
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        send.write_all(&LINK_PREAMBLE).await.unwrap();
        let link = self.server.accept().await.unwrap();
        (conn, send, link)
    }

    async fn no_link_within(&self, wait: Duration) {
        let accepted = tokio::time::timeout(wait, self.server.accept()).await;
        assert!(accepted.is_err(), "no link may come out of this");
    }
}

#[tokio::test(start_paused = true)]
async fn a_stream_without_the_preamble_is_rejected_and_counted() {
    let s = setup().await;
    let conn = s.connect().await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    s.no_link_within(Duration::from_secs(1)).await;
    assert_eq!(s.server.stats().bad_streams, 1);
    assert_eq!(s.server.stats().links_accepted, 0);
    assert!(matches!(
        conn.closed().await,
        quinn::ConnectionError::ApplicationClosed(_)
    ));
}

#[tokio::test(start_paused = true)]
async fn an_oversized_length_prefix_is_skipped_and_the_link_survives() {
    let s = setup().await;
    let (_conn, mut send, mut link) = s.link().await;

    let too_long = u32::try_from(tether_protocol::MAX_FRAME_LEN + 1).unwrap();
    send.write_all(&too_long.to_be_bytes()).await.unwrap();
    let junk = vec![0xEE; tether_protocol::MAX_FRAME_LEN + 1];
    let good = b"after the junk";
    let feeding = tokio::spawn(async move {
        send.write_all(&junk).await.unwrap();
        send.write_all(&[0, 0, 0, 0]).await.unwrap(); // an empty frame
        send.write_all(&u32::try_from(good.len()).unwrap().to_be_bytes())
            .await
            .unwrap();
        send.write_all(good).await.unwrap();
        send.write_all(&[0, 0, 0, 9, 1, 2]).await.unwrap(); // truncated frame
        send.finish().unwrap();
        send
    });
    assert_eq!(
        link.recv_frame().await.unwrap(),
        Some(Bytes::from_static(good))
    );
    assert_eq!(link.recv_frame().await.unwrap(), None);
    let _send = feeding.await.unwrap();
    let stats = link.stats();
    assert_eq!(stats.oversized_frames_dropped, 1);
    assert_eq!(stats.empty_frames_dropped, 1);
    assert_eq!(stats.truncated_frames_dropped, 1);
    assert_eq!(stats.frames_received, 1);
}

#[tokio::test(start_paused = true)]
async fn a_rollover_stream_without_its_preamble_closes_the_link() {
    let s = setup().await;
    let (conn, _send, mut link) = s.link().await;
    let mut uni = conn.open_uni().await.unwrap();
    uni.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    assert!(matches!(link.recv_frame().await, Err(LinkError::Lost(_))));
    assert!(matches!(
        conn.closed().await,
        quinn::ConnectionError::ApplicationClosed(_)
    ));
}

#[tokio::test(start_paused = true)]
async fn a_second_stream_is_held_back_by_the_stream_limit() {
    let s = setup().await;
    let (conn, _send, _link) = s.link().await;
    let second = tokio::time::timeout(Duration::from_secs(5), conn.open_bi()).await;
    assert!(second.is_err(), "the peer may open exactly one stream");
    // Rollover streams: a few at once, then the limit holds the next one back.
    let mut uni = Vec::new();
    for _ in 0..crate::config::MAX_ROLLOVER_STREAMS {
        uni.push(conn.open_uni().await.unwrap());
    }
    let more = tokio::time::timeout(Duration::from_secs(1), conn.open_uni()).await;
    assert!(more.is_err(), "the rollover stream limit holds");
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_never_opens_its_stream_times_out_and_is_counted() {
    let s = setup().await;
    let conn = s.connect().await;
    let timeout = TransportConfig::default().accept_timeout;
    s.no_link_within(timeout + Duration::from_secs(1)).await;
    assert_eq!(s.server.stats().accept_failures, 1);
    // The abandoned connection is closed by the server.
    let closed = tokio::time::timeout(Duration::from_secs(1), conn.closed()).await;
    assert!(closed.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_peer_with_another_alpn_is_refused() {
    let s = setup().await;
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(NoVerify))
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let attempt = s
        .raw
        .connect_with(
            quinn::ClientConfig::new(Arc::new(crypto)),
            s.server_addr,
            quic::SERVER_NAME,
        )
        .unwrap()
        .await;
    assert!(attempt.is_err());
    s.no_link_within(Duration::from_secs(1)).await;
    assert_eq!(s.server.stats().accept_failures, 1);
}

/// A verifier for the raw test client only.
#[derive(Debug)]
struct NoVerify;

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[tokio::test(start_paused = true)]
async fn one_address_full_of_half_open_connections_leaves_room_for_everyone_else() {
    let s = setup().await;
    let config = TransportConfig::seeded(99);
    // Mallory opens every handshake slot's worth of QUIC connections and never opens the
    // frame stream: each would hold its slot until the accept timeout.
    let mut held = Vec::new();
    for _ in 0..config.max_pending_accepts {
        let connecting = s
            .raw
            .connect_with(s.client_config.clone(), s.server_addr, quic::SERVER_NAME)
            .unwrap();
        if let Ok(Ok(conn)) = tokio::time::timeout(Duration::from_secs(2), connecting).await {
            held.push(conn);
        }
    }
    let refused = s.server.stats().incoming_refused;
    assert!(
        refused >= (config.max_pending_accepts - config.max_pending_accepts_per_source) as u64,
        "one address holds at most {} pending accepts; refused {refused}",
        config.max_pending_accepts_per_source
    );
    // A well-behaved device at another address still gets in, at once.
    let net = &s._net;
    let honest = net.add_host("honest", ["10.0.0.3".parse().unwrap()]);
    let client = Endpoint::bind_sim(net, honest, "10.0.0.3:0".parse().unwrap(), config)
        .await
        .unwrap();
    let dialled = tokio::time::timeout(Duration::from_secs(2), client.dial(s.server_addr)).await;
    assert!(matches!(dialled, Ok(Ok(_))), "the honest dial: {dialled:?}");
    let accepted = tokio::time::timeout(Duration::from_secs(2), s.server.accept()).await;
    assert!(
        matches!(accepted, Ok(Some(_))),
        "the honest link is accepted"
    );
    drop(held);
}

#[tokio::test(start_paused = true)]
async fn a_man_in_the_middle_holds_two_connections_with_different_bindings() {
    // A device dials what it takes for the relay (Mallory), who dials the relay: both
    // ends of each connection derive the same binding, the two connections different
    // ones, so a proof over the device's binding does not verify at the relay.
    let net = SimNetwork::new(7);
    let device_host = net.add_host("device", ["10.0.0.1".parse().unwrap()]);
    let mallory_host = net.add_host("mallory", ["10.0.0.66".parse().unwrap()]);
    let relay_host = net.add_host("relay", ["10.0.0.2".parse().unwrap()]);
    let config = TransportConfig::seeded(7);
    let bind =
        |host, addr: &str| Endpoint::bind_sim(&net, host, addr.parse().unwrap(), config.clone());
    let device = bind(device_host, "10.0.0.1:0").await.unwrap();
    let mallory = bind(mallory_host, "10.0.0.66:4433").await.unwrap();
    let relay = bind(relay_host, "10.0.0.2:4433").await.unwrap();

    let (to_mallory, from_device) =
        tokio::join!(device.dial(mallory.local_addr().unwrap()), mallory.accept());
    let (to_relay, from_mallory) =
        tokio::join!(mallory.dial(relay.local_addr().unwrap()), relay.accept());
    let binding = |link: &crate::Link| link.handle().channel_binding().unwrap();
    let device_side = binding(&to_mallory.unwrap());
    let relay_side = binding(&from_mallory.unwrap());
    assert_eq!(device_side, binding(&from_device.unwrap()));
    assert_eq!(relay_side, binding(&to_relay.unwrap()));
    assert_ne!(device_side, relay_side);

    // A second connection between the same two endpoints has its own binding too.
    let (again, again_accepted) =
        tokio::join!(device.dial(relay.local_addr().unwrap()), relay.accept());
    let again = binding(&again.unwrap());
    assert_eq!(again, binding(&again_accepted.unwrap()));
    assert_ne!(again, relay_side);
    assert_ne!(again, device_side);
}
