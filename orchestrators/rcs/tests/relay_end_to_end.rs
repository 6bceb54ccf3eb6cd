//! Two relay client cores and one relay queue server core, connected in memory by a
//! tiny loop that moves encoded frames between them.

// Test code: a panic is a failed test, so unwrap and expect are fine here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tether_crypto::StaticKeypair;
use tether_protocol::shell::SansIoCore;
use tether_protocol::{
    DeviceId, LinkId, PathKind, RelayDelivered, RelayEnqueue, RelayForward, RelayMessage,
    RequestId, TransportCommand, TransportEvent, WireFrame,
};
use tether_rcs::{
    Admission, ClientInput, ClientOutput, ConnId, RelayClient, RelayClientConfig, RelayQueueServer,
    RelayServerConfig, ServerInput, ServerOutput,
};

const A: usize = 0;
const B: usize = 1;

struct Net {
    now: Instant,
    server: RelayQueueServer,
    clients: Vec<RelayClient>,
    ids: Vec<DeviceId>,
    /// Connection ↔ (client, link). Link ids equal connection ids.
    conns: BTreeMap<ConnId, usize>,
    next_conn: u64,
    delivered: Vec<Vec<RelayDelivered>>,
    results: Vec<Vec<(RequestId, Result<(), String>)>>,
    /// While set, the client's `Delivered` acknowledgements are lost on the way.
    drop_acks: Vec<bool>,
}

impl Net {
    fn new() -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let server_keys = StaticKeypair::generate(&mut rng);
        let addr: SocketAddr = "203.0.113.1:443".parse().unwrap();
        let t0 = Instant::now();
        let mut clients = Vec::new();
        let mut ids = Vec::new();
        for seed in 0..2 {
            let keys = StaticKeypair::generate(&mut rng);
            ids.push(DeviceId(*keys.public().as_bytes()));
            let rng_seed = ChaCha8Rng::seed_from_u64(seed).get_seed();
            let config = RelayClientConfig::new(keys, *server_keys.public(), addr, rng_seed);
            clients.push(RelayClient::new(config, t0));
        }
        Self {
            now: t0,
            server: RelayQueueServer::new(
                RelayServerConfig::new(server_keys, [9; 32], Admission::Open),
                t0,
            ),
            clients,
            ids,
            conns: BTreeMap::new(),
            next_conn: 1,
            delivered: vec![Vec::new(), Vec::new()],
            results: vec![Vec::new(), Vec::new()],
            drop_acks: vec![false, false],
        }
    }

    fn client(&mut self, who: usize, input: ClientInput) {
        self.clients[who].handle(self.now, input);
        self.settle();
    }

    /// Moves frames until nobody has anything left to send.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            for who in 0..self.clients.len() {
                while let Some(output) = self.clients[who].poll_output() {
                    moved = true;
                    self.carry_client_output(who, output);
                }
            }
            // The store is not under test here: every change commits at once.
            while self.server.poll_change().is_some() {}
            self.server.committed();
            while let Some(output) = self.server.poll_output() {
                moved = true;
                self.carry_server_output(output);
            }
            if !moved {
                return;
            }
        }
        panic!("the network never settles");
    }

    fn link_of(&self, who: usize) -> Option<ConnId> {
        self.conns
            .iter()
            .find(|(_, owner)| **owner == who)
            .map(|(conn, _)| *conn)
    }

    fn carry_client_output(&mut self, who: usize, output: ClientOutput) {
        match output {
            ClientOutput::Transport(TransportCommand::Dial { request, .. }) => {
                let conn = ConnId(self.next_conn);
                self.next_conn += 1;
                self.conns.insert(conn, who);
                // Both ends of a connection share its binding; each connection has its own.
                let mut binding = [0_u8; 32];
                binding[..8].copy_from_slice(&conn.0.to_be_bytes());
                self.server.handle(
                    self.now,
                    ServerInput::Opened(conn, binding, "203.0.113.50:40000".parse().unwrap()),
                );
                self.clients[who].handle(
                    self.now,
                    ClientInput::Bound(tether_protocol::LinkBound {
                        link: LinkId(conn.0),
                        binding,
                    }),
                );
                self.clients[who].handle(
                    self.now,
                    ClientInput::Transport(TransportEvent::LinkUp {
                        request: Some(request),
                        link: LinkId(conn.0),
                        path: PathKind::Direct,
                        remote: None,
                    }),
                );
            }
            ClientOutput::Transport(TransportCommand::Transmit { link, frame }) => {
                let is_ack = matches!(
                    tether_protocol::decode(&frame),
                    Ok(WireFrame::Relay(RelayMessage::Delivered { .. }))
                );
                if is_ack && self.drop_acks[who] {
                    return;
                }
                self.server
                    .handle(self.now, ServerInput::Bytes(ConnId(link.0), frame));
            }
            ClientOutput::Transport(
                TransportCommand::Close { link } | TransportCommand::Farewell { link, .. },
            ) => {
                self.conns.remove(&ConnId(link.0));
                self.server
                    .handle(self.now, ServerInput::Closed(ConnId(link.0)));
            }
            ClientOutput::Delivered(delivered) => self.delivered[who].push(delivered),
            ClientOutput::EnqueueResult(result) => {
                self.results[who].push((result.request, result.result))
            }
            ClientOutput::Status(_) | ClientOutput::Rendezvous(_) | ClientOutput::Reflexive(_) => {}
        }
    }

    fn carry_server_output(&mut self, output: ServerOutput) {
        match output {
            ServerOutput::Send(conn, frame) => {
                let Some(&who) = self.conns.get(&conn) else {
                    return;
                };
                let frame = tether_protocol::encode(&frame).unwrap();
                self.clients[who].handle(
                    self.now,
                    ClientInput::Transport(TransportEvent::FrameReceived {
                        link: LinkId(conn.0),
                        frame,
                    }),
                );
            }
            ServerOutput::CloseWith(conn, frame) => {
                self.carry_server_output(ServerOutput::Send(conn, frame));
                self.carry_server_output(ServerOutput::Close(conn));
            }
            ServerOutput::Close(conn) => {
                if let Some(who) = self.conns.remove(&conn) {
                    self.clients[who].handle(
                        self.now,
                        ClientInput::Transport(TransportEvent::LinkDown {
                            link: LinkId(conn.0),
                            reason: "closed by server".into(),
                        }),
                    );
                }
            }
        }
    }

    /// The network drops a client's connection (both ends notice).
    fn cut(&mut self, who: usize) {
        let conn = self.link_of(who).expect("connected");
        self.conns.remove(&conn);
        self.server.handle(self.now, ServerInput::Closed(conn));
        self.clients[who].handle(
            self.now,
            ClientInput::Transport(TransportEvent::LinkDown {
                link: LinkId(conn.0),
                reason: "cut".into(),
            }),
        );
        self.settle();
    }

    /// Advances virtual time, firing every due timeout.
    fn advance(&mut self, ms: u64) {
        let target = self.now + Duration::from_millis(ms);
        loop {
            let next = self
                .clients
                .iter()
                .filter_map(RelayClient::poll_timeout)
                .chain(self.server.poll_timeout())
                .min();
            match next {
                Some(at) if at <= target => {
                    self.now = self.now.max(at);
                    for client in &mut self.clients {
                        client.handle_timeout(self.now);
                    }
                    self.server.handle_timeout(self.now);
                    self.settle();
                }
                _ => break,
            }
        }
        self.now = target;
    }

    fn enqueue(&mut self, from: usize, to: usize, request: u64, envelope: &[u8]) {
        let to = self.ids[to];
        self.client(
            from,
            ClientInput::Enqueue(RelayEnqueue {
                request: RequestId(request),
                to,
                envelope: envelope.to_vec(),
            }),
        );
    }

    fn copies_at(&self, who: usize, envelope: &[u8]) -> usize {
        self.delivered[who]
            .iter()
            .filter(|d| d.envelope == envelope)
            .count()
    }
}

#[test]
fn an_envelope_from_a_reaches_b_exactly_once_online_and_offline() {
    let mut net = Net::new();
    net.client(A, ClientInput::Start);
    net.client(B, ClientInput::Start);
    assert!(net.clients[A].is_connected() && net.clients[B].is_connected());

    // Online: pushed at once, acknowledged, removed.
    net.enqueue(A, B, 1, b"sealed frame one");
    assert_eq!(net.copies_at(B, b"sealed frame one"), 1);
    assert_eq!(net.delivered[B][0].from, net.ids[A]);
    assert_eq!(net.results[A], vec![(RequestId(1), Ok(()))]);
    assert_eq!(net.server.total_queued(), 0);

    // Offline: B's link is cut; A's envelope waits at the server and arrives once B is
    // back (after its backoff).
    net.cut(B);
    net.enqueue(A, B, 2, b"sealed frame two");
    assert_eq!(net.server.queued_for(&net.ids[B]), 1);
    net.advance(1_000);
    assert!(net.clients[B].is_connected());
    assert_eq!(net.copies_at(B, b"sealed frame two"), 1);
    assert_eq!(net.server.total_queued(), 0);

    // Nothing arrived twice, nothing was lost, and A got no refusals.
    assert_eq!(net.delivered[B].len(), 2);
    assert!(net.delivered[A].is_empty());
    assert_eq!(net.results[A].len(), 2);
    assert!(net.results[A].iter().all(|(_, r)| r.is_ok()));
    let counters = net.server.counters();
    assert_eq!((counters.stored, counters.delivered), (2, 2));
    assert_eq!(counters.bad_frames, 0);
}

#[test]
fn a_lost_acknowledgement_makes_the_server_push_again_after_reconnect() {
    let mut net = Net::new();
    net.client(A, ClientInput::Start);
    net.client(B, ClientInput::Start);
    net.drop_acks[B] = true;
    net.enqueue(A, B, 1, b"the envelope");
    assert_eq!(net.copies_at(B, b"the envelope"), 1);
    // The acknowledgement never reached the server: it still holds the envelope.
    assert_eq!(net.server.queued_for(&net.ids[B]), 1);

    net.drop_acks[B] = false;
    net.cut(B);
    net.advance(1_000);
    assert!(net.clients[B].is_connected());
    // The re-push is a visible duplicate: the same bytes from the same sender. The
    // session layer dedupes it by its nonce; the relay client does not.
    assert_eq!(net.copies_at(B, b"the envelope"), 2);
    assert_eq!(net.delivered[B][0], net.delivered[B][1]);
    // This time the acknowledgement arrived.
    assert_eq!(net.server.total_queued(), 0);
    // And no third copy comes on a later reconnect.
    net.cut(B);
    net.advance(1_000);
    assert_eq!(net.copies_at(B, b"the envelope"), 2);
}

#[test]
fn live_forwarding_reaches_a_connected_peer_only() {
    let mut net = Net::new();
    net.client(A, ClientInput::Start);
    net.client(B, ClientInput::Start);
    let to = net.ids[B];
    net.client(
        A,
        ClientInput::Forward(RelayForward {
            to,
            frame: b"live".to_vec(),
        }),
    );
    assert_eq!(net.copies_at(B, b"live"), 1);
    net.cut(B);
    net.client(
        A,
        ClientInput::Forward(RelayForward {
            to,
            frame: b"lost".to_vec(),
        }),
    );
    assert_eq!(net.clients[A].counters().refused.not_connected, 1);
    net.advance(1_000);
    assert_eq!(net.copies_at(B, b"lost"), 0, "forwarding stores nothing");
    assert_eq!(net.server.total_queued(), 0);
}
