//! Two rendezvous client cores and one rendezvous table, connected in memory. The
//! server in front of the table is simulated here the way the harness runs it: it
//! challenges each connection, verifies the proof with the real
//! `tether_crypto::verify_server_auth`, and hands rendezvous requests of authenticated
//! connections to the table with the proven device id.

// Test code: a panic is a failed test, so unwrap and expect are fine here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tether_crypto::{server_proof, verify_server_auth, PublicKey, RelationshipKey, StaticKeypair};

/// The channel binding of connection `conn` (each connection has its own).
fn binding(conn: u64) -> [u8; 32] {
    let mut binding = [0xC0; 32];
    binding[..8].copy_from_slice(&conn.to_be_bytes());
    binding
}
use tether_pms::{
    ClientInput, ClientOutput, RendezvousClient, RendezvousClientConfig, RendezvousTable,
    RendezvousTableConfig,
};
use tether_protocol::shell::SansIoCore;
use tether_protocol::{
    DeviceId, LinkId, LookupEndpointHint, PathKind, PeerEndpointHint, PublishEndpointHint,
    RelayMessage, RendezvousMessage, RequestId, ServerRefusal, TransportCommand, TransportEvent,
    WireFrame,
};

const A: usize = 0;
const B: usize = 1;

/// What the simulated server knows of a connection.
enum Conn {
    Challenged { owner: usize, nonce: [u8; 32] },
    Authenticated { owner: usize, device: DeviceId },
}

impl Conn {
    fn owner(&self) -> usize {
        match self {
            Self::Challenged { owner, .. } | Self::Authenticated { owner, .. } => *owner,
        }
    }
}

struct Net {
    now: Instant,
    server_keys: StaticKeypair,
    rng: ChaCha8Rng,
    table: RendezvousTable,
    clients: Vec<RendezvousClient>,
    ids: Vec<DeviceId>,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    hints: Vec<Vec<PeerEndpointHint>>,
    /// Requests the simulated server refused as unauthenticated.
    unauthenticated: u64,
}

impl Net {
    fn new() -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let server_keys = StaticKeypair::generate(&mut rng);
        let a = StaticKeypair::generate(&mut rng);
        let b = StaticKeypair::generate(&mut rng);
        let rk = RelationshipKey::generate(&mut rng);
        let ids = vec![
            DeviceId(*a.public().as_bytes()),
            DeviceId(*b.public().as_bytes()),
        ];
        let addr: SocketAddr = "203.0.113.1:443".parse().unwrap();
        let t0 = Instant::now();
        let clients = [(a, ids[B], 1_u8), (b, ids[A], 2_u8)]
            .into_iter()
            .map(|(keys, peer, seed)| {
                let config = RendezvousClientConfig::new(
                    keys,
                    *server_keys.public(),
                    addr,
                    BTreeMap::from([(peer, rk.clone())]),
                    1_700_000_000_000,
                    [seed; 32],
                );
                RendezvousClient::new(config, t0)
            })
            .collect();
        Self {
            now: t0,
            server_keys,
            rng,
            table: RendezvousTable::new(RendezvousTableConfig::default(), t0),
            clients,
            ids,
            conns: BTreeMap::new(),
            next_conn: 1,
            hints: vec![Vec::new(), Vec::new()],
            unauthenticated: 0,
        }
    }

    fn client(&mut self, who: usize, input: ClientInput) {
        self.clients[who].handle(self.now, input);
        self.settle();
    }

    fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            for who in 0..self.clients.len() {
                while let Some(output) = self.clients[who].poll_output() {
                    moved = true;
                    self.carry(who, output);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the network never settles");
    }

    fn send_to_client(&mut self, conn: u64, frame: WireFrame) {
        let Some(owner) = self.conns.get(&conn).map(Conn::owner) else {
            return;
        };
        let frame = tether_protocol::encode(&frame).unwrap();
        self.clients[owner].handle(
            self.now,
            ClientInput::Transport(TransportEvent::FrameReceived {
                link: LinkId(conn),
                frame,
            }),
        );
    }

    fn carry(&mut self, who: usize, output: ClientOutput) {
        match output {
            ClientOutput::Transport(TransportCommand::Dial { request, .. }) => {
                let conn = self.next_conn;
                self.next_conn += 1;
                let mut nonce = [0; 32];
                self.rng.fill_bytes(&mut nonce);
                self.conns
                    .insert(conn, Conn::Challenged { owner: who, nonce });
                self.clients[who].handle(
                    self.now,
                    ClientInput::Bound(tether_protocol::LinkBound {
                        link: LinkId(conn),
                        binding: binding(conn),
                    }),
                );
                self.clients[who].handle(
                    self.now,
                    ClientInput::Transport(TransportEvent::LinkUp {
                        request: Some(request),
                        link: LinkId(conn),
                        path: PathKind::Direct,
                        remote: None,
                    }),
                );
                let server_key = *self.server_keys.public().as_bytes();
                self.send_to_client(
                    conn,
                    WireFrame::Relay(RelayMessage::Challenge { nonce, server_key }),
                );
            }
            ClientOutput::Transport(TransportCommand::Transmit { link, frame }) => {
                self.server_receives(link.0, tether_protocol::decode(&frame).unwrap());
            }
            ClientOutput::Transport(
                TransportCommand::Close { link } | TransportCommand::Farewell { link, .. },
            ) => {
                self.conns.remove(&link.0);
            }
            ClientOutput::Hint(hint) => self.hints[who].push(hint),
        }
    }

    fn server_receives(&mut self, conn: u64, frame: WireFrame) {
        match (self.conns.get(&conn), frame) {
            (
                Some(Conn::Challenged { owner, nonce }),
                WireFrame::Relay(RelayMessage::Authenticate { device, proof }),
            ) => {
                let owner = *owner;
                let key = PublicKey::from_bytes(device.0).unwrap();
                let nonce = *nonce;
                assert!(verify_server_auth(
                    &self.server_keys,
                    &key,
                    &nonce,
                    &binding(conn),
                    &proof
                ));
                self.conns
                    .insert(conn, Conn::Authenticated { owner, device });
                let proof = server_proof(&self.server_keys, &key, &nonce, &binding(conn)).to_vec();
                self.send_to_client(conn, WireFrame::Relay(RelayMessage::Welcome { proof }));
            }
            (Some(Conn::Authenticated { device, .. }), WireFrame::Rendezvous(request)) => {
                let device = *device;
                if let Some(answer) = self.table.handle(self.now, device, request) {
                    self.send_to_client(conn, WireFrame::Rendezvous(answer));
                }
            }
            (Some(_), WireFrame::Rendezvous(_)) => {
                self.unauthenticated += 1;
                self.send_to_client(
                    conn,
                    WireFrame::Rendezvous(RendezvousMessage::Refused {
                        reason: ServerRefusal::NotAuthenticated,
                    }),
                );
            }
            // A connection the network dropped: the frame is lost.
            (None, _) => {}
            (Some(_), other) => panic!("unexpected frame at the server: {other:?}"),
        }
    }

    fn cut(&mut self, who: usize) {
        let conn = *self
            .conns
            .iter()
            .find(|(_, c)| c.owner() == who)
            .expect("connected")
            .0;
        self.conns.remove(&conn);
        self.client(
            who,
            ClientInput::Transport(TransportEvent::LinkDown {
                link: LinkId(conn),
                reason: "moved".into(),
            }),
        );
    }

    fn advance(&mut self, ms: u64) {
        let target = self.now + Duration::from_millis(ms);
        loop {
            let next = self
                .clients
                .iter()
                .filter_map(RendezvousClient::poll_timeout)
                .min();
            match next {
                Some(at) if at <= target => {
                    self.now = self.now.max(at);
                    for client in &mut self.clients {
                        client.handle_timeout(self.now);
                    }
                    self.table.handle_timeout(self.now);
                    self.settle();
                }
                _ => break,
            }
        }
        self.now = target;
    }

    fn publish(&mut self, who: usize, request: u64, endpoints: &[&str]) {
        let peer = self.ids[1 - who];
        let endpoints = endpoints.iter().map(|e| e.parse().unwrap()).collect();
        self.client(
            who,
            ClientInput::Publish(PublishEndpointHint {
                request: RequestId(request),
                peer,
                endpoints,
            }),
        );
    }

    fn lookup(&mut self, who: usize, request: u64) {
        let peer = self.ids[1 - who];
        self.client(
            who,
            ClientInput::Lookup(LookupEndpointHint {
                request: RequestId(request),
                peer,
            }),
        );
    }

    fn endpoints(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|e| e.parse().unwrap()).collect()
    }
}

#[test]
fn two_devices_learn_each_others_endpoints_through_the_table() {
    let mut net = Net::new();
    // A publishes before it is even connected; B connects first.
    net.publish(A, 1, &["198.51.100.7:4433", "[2001:db8::7]:4433"]);
    net.client(B, ClientInput::Start);
    net.publish(B, 1, &["192.0.2.30:5000"]);
    net.client(A, ClientInput::Start);
    assert!(net.clients[A].is_connected() && net.clients[B].is_connected());

    net.lookup(A, 2);
    net.lookup(B, 2);
    assert_eq!(net.hints[A].len(), 1);
    assert_eq!(net.hints[A][0].peer, net.ids[B]);
    assert_eq!(net.hints[A][0].request, Some(RequestId(2)));
    assert_eq!(
        net.hints[A][0].endpoints,
        Net::endpoints(&["192.0.2.30:5000"])
    );
    assert_eq!(net.hints[B].len(), 1);
    assert_eq!(net.hints[B][0].peer, net.ids[A]);
    assert_eq!(
        net.hints[B][0].endpoints,
        Net::endpoints(&["198.51.100.7:4433", "[2001:db8::7]:4433"])
    );

    // B moves: its link dies, it publishes its new address while reconnecting, and A's
    // next lookup finds the new one, not the old.
    net.advance(1_000);
    net.cut(B);
    net.publish(B, 3, &["203.0.113.44:5001"]);
    net.advance(2_000);
    assert!(net.clients[B].is_connected());
    net.lookup(A, 4);
    assert_eq!(net.hints[A].len(), 2);
    assert_eq!(
        net.hints[A][1].endpoints,
        Net::endpoints(&["203.0.113.44:5001"])
    );
    assert!(net.hints[A][1].issued_at_ms > net.hints[A][0].issued_at_ms);

    // The table saw two members under one id, and only sealed bytes.
    assert_eq!(net.table.ids(), 1);
    assert_eq!(net.unauthenticated, 0);
    let counters = net.table.counters();
    assert_eq!(counters.refused_not_yours, 0);
    assert_eq!(counters.lookups, 3);
    for client in &net.clients {
        let c = client.counters();
        assert_eq!(
            (c.tampered_hints, c.expired_hints, c.rejected_hints),
            (0, 0, 0)
        );
        assert!(c.own_hints >= 1, "each saw its own hint and skipped it");
    }
}

#[test]
fn a_hint_expires_for_the_peer_unless_refreshed_while_connected() {
    let mut net = Net::new();
    net.client(A, ClientInput::Start);
    net.client(B, ClientInput::Start);
    // Only members get answers: A publishes too, which makes it one.
    net.publish(A, 1, &["198.51.100.7:4433"]);
    net.publish(B, 1, &["192.0.2.30:5000"]);
    // B stays connected: its refresh every half TTL keeps the hint alive for an hour.
    net.advance(60 * 60 * 1_000);
    net.lookup(A, 2);
    assert_eq!(net.hints[A].len(), 1);
    // B goes away for good (never reconnects): after the TTL nothing is found.
    let conn = *net.conns.iter().find(|(_, c)| c.owner() == B).unwrap().0;
    net.conns.remove(&conn);
    net.advance(11 * 60 * 1_000);
    net.lookup(A, 3);
    assert_eq!(net.hints[A].len(), 1, "an expired hint is never emitted");
    // The table no longer holds B's hint either (A's own, refreshed, is still there).
    assert_eq!(net.table.counters().expired, 1);
    assert_eq!(net.clients[A].counters().lookups_without_hint, 1);
}
