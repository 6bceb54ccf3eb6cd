//! Two rendezvous client cores and one rendezvous table, connected in memory. Each
//! device's server connection (its relay client's, authenticated there) is modelled as
//! up or down; the server hands the requests of a connection that is up to the table
//! with the device id it proved.

// Test code: a panic is a failed test, so unwrap and expect are fine here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tether_crypto::{RelationshipKey, StaticKeypair};
use tether_pms::{
    ClientInput, ClientOutput, RendezvousClient, RendezvousClientConfig, RendezvousTable,
    RendezvousTableConfig,
};
use tether_protocol::shell::SansIoCore;
use tether_protocol::{
    DeviceId, LookupEndpointHint, PeerEndpointHint, PublishEndpointHint, RelayStatus, RequestId,
};

const A: usize = 0;
const B: usize = 1;

struct Net {
    now: Instant,
    table: RendezvousTable,
    clients: Vec<RendezvousClient>,
    ids: Vec<DeviceId>,
    /// Whether each device's server connection is up: requests sent while it is down
    /// are lost with it.
    up: Vec<bool>,
    hints: Vec<Vec<PeerEndpointHint>>,
}

impl Net {
    fn new() -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let a = StaticKeypair::generate(&mut rng);
        let b = StaticKeypair::generate(&mut rng);
        let rk = RelationshipKey::generate(&mut rng);
        let ids = vec![
            DeviceId(*a.public().as_bytes()),
            DeviceId(*b.public().as_bytes()),
        ];
        let t0 = Instant::now();
        let clients = [(a, ids[B], 1_u8), (b, ids[A], 2_u8)]
            .into_iter()
            .map(|(keys, peer, seed)| {
                let config = RendezvousClientConfig::new(
                    keys,
                    BTreeMap::from([(peer, rk.clone())]),
                    1_700_000_000_000,
                    [seed; 32],
                );
                RendezvousClient::new(config, t0)
            })
            .collect();
        Self {
            now: t0,
            table: RendezvousTable::new(RendezvousTableConfig::default(), t0),
            clients,
            ids,
            up: vec![false, false],
            hints: vec![Vec::new(), Vec::new()],
        }
    }

    fn client(&mut self, who: usize, input: ClientInput) {
        self.clients[who].handle(self.now, input);
        self.settle();
    }

    /// Device `who`'s connection comes up or goes down (its relay client's report).
    fn connection(&mut self, who: usize, connected: bool) {
        self.up[who] = connected;
        self.client(who, ClientInput::Server(RelayStatus { connected }));
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

    fn carry(&mut self, who: usize, output: ClientOutput) {
        match output {
            // The server serves the device its connection proved to be.
            ClientOutput::ToServer(request) if self.up[who] => {
                if let Some(answer) = self.table.handle(self.now, self.ids[who], request) {
                    self.clients[who].handle(self.now, ClientInput::FromServer(answer));
                }
            }
            ClientOutput::ToServer(_) => {}
            ClientOutput::Hint(hint) => self.hints[who].push(hint),
        }
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
    net.connection(B, true);
    net.publish(B, 1, &["192.0.2.30:5000"]);
    net.connection(A, true);
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

    // B moves: its connection dies, it publishes its new address while reconnecting,
    // and A's next lookup finds the new one, not the old.
    net.advance(1_000);
    net.connection(B, false);
    net.publish(B, 3, &["203.0.113.44:5001"]);
    net.advance(2_000);
    net.connection(B, true);
    net.lookup(A, 4);
    assert_eq!(net.hints[A].len(), 2);
    assert_eq!(
        net.hints[A][1].endpoints,
        Net::endpoints(&["203.0.113.44:5001"])
    );
    assert!(net.hints[A][1].issued_at_ms > net.hints[A][0].issued_at_ms);

    // The table saw two members under one id, and only sealed bytes.
    assert_eq!(net.table.ids(), 1);
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
    net.connection(A, true);
    net.connection(B, true);
    // Only members get answers: A publishes too, which makes it one.
    net.publish(A, 1, &["198.51.100.7:4433"]);
    net.publish(B, 1, &["192.0.2.30:5000"]);
    // B stays connected: its refresh every half TTL keeps the hint alive for an hour.
    net.advance(60 * 60 * 1_000);
    net.lookup(A, 2);
    assert_eq!(net.hints[A].len(), 1);
    // B goes away for good (never reconnects): after the TTL nothing is found.
    net.up[B] = false;
    net.advance(11 * 60 * 1_000);
    net.lookup(A, 3);
    assert_eq!(net.hints[A].len(), 1, "an expired hint is never emitted");
    // The table no longer holds B's hint either (A's own, refreshed, is still there).
    assert_eq!(net.table.counters().expired, 1);
    assert_eq!(net.clients[A].counters().lookups_without_hint, 1);
}
