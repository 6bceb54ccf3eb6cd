//! A device that speaks the relay protocol itself (challenge, proof, enqueue, push,
//! acknowledge) over any [`Endpoint`], simulated or real: what the relay queue tests
//! use to put exact envelopes in the queue and see exactly what comes out. (A node
//! queues only migration pings at the relay.)

use bytes::Bytes;
use rand::{CryptoRng, RngCore};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tether_crypto::{server_auth_proof, verify_server_proof, PublicKey, StaticKeypair};
use tether_harness::SimCluster;
use tether_protocol::{DeviceId, RelayMessage, WireFrame};
use tether_transport::{Endpoint, LinkReceiver, LinkSender, LostReason, TransportConfig};

/// A device with at most one authenticated connection to the relay.
pub struct RelayDevice {
    keys: StaticKeypair,
    endpoint: Endpoint,
    link: Option<(LinkSender, LinkReceiver)>,
    /// How long [`recv`](Self::recv) waits for the next frame.
    pub answer_within: Duration,
}

impl RelayDevice {
    /// A device with `keys` on `endpoint`, not connected yet.
    pub fn new(endpoint: Endpoint, keys: StaticKeypair, answer_within: Duration) -> Self {
        Self {
            keys,
            endpoint,
            link: None,
            answer_within,
        }
    }

    /// A device with a fresh key from `rng` on its own host at `ip` of the cluster's
    /// simulated network (port 4433; QUIC seeded by the address's last byte), not
    /// connected yet.
    pub async fn on_sim_host(
        cluster: &SimCluster,
        name: &str,
        ip: Ipv4Addr,
        rng: &mut (impl RngCore + CryptoRng),
        answer_within: Duration,
    ) -> Self {
        let host = cluster.net.add_host(name, [IpAddr::V4(ip)]);
        let endpoint = Endpoint::bind_sim(
            &cluster.net,
            host,
            SocketAddr::new(IpAddr::V4(ip), 4433),
            TransportConfig::seeded(u64::from(ip.octets()[3])),
        )
        .await
        .unwrap();
        Self::new(endpoint, StaticKeypair::generate(rng), answer_within)
    }

    /// Its device id.
    pub fn id(&self) -> DeviceId {
        DeviceId(*self.keys.public().as_bytes())
    }

    /// Sends one relay message on the connection.
    pub async fn send(&self, message: RelayMessage) {
        self.send_wire(&WireFrame::Relay(message)).await;
    }

    /// Sends one frame of any kind on the connection (rendezvous requests).
    pub async fn send_wire(&self, frame: &WireFrame) {
        let bytes = tether_protocol::encode(frame).unwrap();
        let (sender, _) = self.link.as_ref().expect("connected");
        sender.send_frame(Bytes::from(bytes)).await.unwrap();
    }

    /// The next relay message, or None if the connection ends or nothing comes within
    /// `answer_within`.
    pub async fn recv(&mut self) -> Option<RelayMessage> {
        match self.recv_wire().await? {
            WireFrame::Relay(message) => Some(message),
            other => panic!("not a relay frame: {other:?}"),
        }
    }

    /// The next frame of any kind (the relay's farewell, the frame it closed the
    /// connection with, included), or None if the connection ends or nothing comes
    /// within `answer_within`.
    pub async fn recv_wire(&mut self) -> Option<WireFrame> {
        let (_, receiver) = self.link.as_mut()?;
        let frame = match tokio::time::timeout(self.answer_within, receiver.recv_frame())
            .await
            .ok()?
        {
            Ok(Some(frame)) => frame.to_vec(),
            Ok(None) | Err(_) => match receiver.handle().lost_reason() {
                Some(LostReason::Farewell { frame }) => {
                    // Read once: the connection is gone after it.
                    self.link = None;
                    frame
                }
                _ => return None,
            },
        };
        Some(tether_protocol::decode(&frame).unwrap())
    }

    /// Dials the relay at `addr` and authenticates, up to its `Welcome`.
    pub async fn connect(&mut self, addr: SocketAddr, relay: &PublicKey) {
        match self.try_connect(addr, relay).await {
            Some(RelayMessage::Welcome { .. }) => {}
            other => panic!("no Welcome from the relay: {other:?}"),
        }
    }

    /// Dials the relay at `addr` and sends a proof; returns the relay's answer to it
    /// (a verified `Welcome`, a `Refused`, or None if nothing came).
    pub async fn try_connect(
        &mut self,
        addr: SocketAddr,
        relay: &PublicKey,
    ) -> Option<RelayMessage> {
        let link = self.endpoint.dial(addr).await.unwrap();
        let binding = link.handle().channel_binding().unwrap();
        self.link = Some(link.split());
        let Some(RelayMessage::Challenge { nonce, server_key }) = self.recv().await else {
            panic!("no challenge from the relay");
        };
        assert_eq!(&server_key, relay.as_bytes());
        let proof = server_auth_proof(&self.keys, relay, &nonce, &binding).to_vec();
        let device = self.id();
        self.send(RelayMessage::Authenticate {
            device,
            proof,
            rendezvous_only: false,
            rendezvous_ids: Vec::new(),
        })
        .await;
        let answer = self.recv().await;
        if let Some(RelayMessage::Welcome { proof, .. }) = &answer {
            assert!(verify_server_proof(
                &self.keys, relay, &nonce, &binding, proof
            ));
        }
        answer
    }

    /// Queues `envelopes` for `to` (requests numbered from `first_request`, a 10-minute
    /// TTL as a node's relay client asks) and waits until every one is `Enqueued`.
    pub async fn enqueue_all(&mut self, to: DeviceId, first_request: u64, envelopes: &[Vec<u8>]) {
        for (i, envelope) in envelopes.iter().enumerate() {
            self.send(RelayMessage::Enqueue {
                to,
                request: first_request + i as u64,
                ttl_ms: 600_000,
                envelope: envelope.clone(),
            })
            .await;
        }
        for i in 0..envelopes.len() as u64 {
            assert_eq!(
                self.recv().await,
                Some(RelayMessage::Enqueued {
                    request: first_request + i
                }),
                "every envelope is accepted"
            );
        }
    }

    /// Reads `n` pushes; returns (envelope ids, (sender, envelope)) in arrival order.
    pub async fn pushes(&mut self, n: usize) -> (Vec<u64>, Vec<(DeviceId, Vec<u8>)>) {
        let mut ids = Vec::new();
        let mut received = Vec::new();
        while received.len() < n {
            match self.recv().await {
                Some(RelayMessage::Push {
                    from,
                    envelope_id,
                    envelope,
                }) => {
                    ids.push(envelope_id);
                    received.push((from, envelope));
                }
                other => panic!("expected a push, got {other:?} after {}", received.len()),
            }
        }
        (ids, received)
    }
}
