//! The rendezvous client: requests held while the server connection is down, the
//! publish/lookup flow on it, hint filtering.

use super::Keys;
use crate::client::{ClientInput, ClientOutput, RendezvousClient, RendezvousClientConfig};
use crate::endpoints::{decode_endpoints, encode_endpoints};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tether_crypto::{open_hint, seal_hint, RendezvousId};
use tether_protocol::shell::SansIoCore;
use tether_protocol::{
    LookupEndpointHint, PeerEndpointHint, PublishEndpointHint, RelayStatus, RendezvousMessage,
    RequestId,
};

/// Wall clock at the start of every test: 2023-11-14.
const UNIX_START: u64 = 1_700_000_000_000;

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

struct Driver {
    keys: Keys,
    client: RendezvousClient,
    rendezvous_id: [u8; 32],
    t0: Instant,
    now: Instant,
    trace: Vec<String>,
    outputs: Vec<ClientOutput>,
}

impl Driver {
    /// Device p1, paired with p2.
    fn new(tune: impl FnOnce(&mut RendezvousClientConfig)) -> Self {
        let keys = Keys::new();
        let peers = BTreeMap::from([(keys.id(2), keys.rk.clone())]);
        let mut config =
            RendezvousClientConfig::new(keys.device(1).clone(), peers, UNIX_START, [4; 32]);
        config.hint_ttl = Duration::from_secs(60);
        tune(&mut config);
        let t0 = Instant::now();
        Self {
            rendezvous_id: RendezvousId::from_rk(&keys.rk).0,
            keys,
            client: RendezvousClient::new(config, t0),
            t0,
            now: t0,
            trace: Vec::new(),
            outputs: Vec::new(),
        }
    }

    fn ms(&self) -> u128 {
        (self.now - self.t0).as_millis()
    }

    fn rv(&self, id: &[u8; 32]) -> &'static str {
        if *id == self.rendezvous_id {
            "rv12"
        } else {
            "rv?"
        }
    }

    fn describe_message(&self, message: &RendezvousMessage) -> String {
        match message {
            RendezvousMessage::Publish {
                rendezvous_id,
                ttl_ms,
                hint,
            } => format!(
                "Publish {} ttl={ttl_ms}ms hint[{}B]",
                self.rv(rendezvous_id),
                hint.len()
            ),
            RendezvousMessage::Lookup { rendezvous_id } => {
                format!("Lookup {}", self.rv(rendezvous_id))
            }
            RendezvousMessage::Hints {
                rendezvous_id,
                hints,
            } => format!(
                "Hints {} [{}]",
                self.rv(rendezvous_id),
                hints
                    .iter()
                    .map(|h| format!("{}B", h.len()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            RendezvousMessage::PeerSeen {
                rendezvous_id,
                addr,
            } => format!("PeerSeen {} {addr}", self.rv(rendezvous_id)),
            other => format!("{other:?}"),
        }
    }

    fn describe(&self, output: &ClientOutput) -> String {
        match output {
            ClientOutput::ToServer(message) => {
                format!("ToServer {}", self.describe_message(message))
            }
            ClientOutput::Hint(hint) => format!(
                "Hint {} {:?} {:?} issued=+{}ms",
                self.keys.alias(&hint.peer),
                hint.request,
                hint.endpoints,
                hint.issued_at_ms - UNIX_START
            ),
        }
    }

    fn input(&mut self, label: String, input: ClientInput) {
        self.trace.push(format!("{:>6}ms in  {label}", self.ms()));
        self.client.handle(self.now, input);
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(output) = self.client.poll_output() {
            let line = self.describe(&output);
            self.trace.push(format!("{:>6}ms out {line}", self.ms()));
            self.outputs.push(output);
        }
    }

    fn advance_to(&mut self, ms: u64) {
        let target = self.t0 + Duration::from_millis(ms);
        while let Some(at) = self.client.poll_timeout() {
            if at > target {
                break;
            }
            self.now = self.now.max(at);
            self.trace.push(format!("{:>6}ms timeout", self.ms()));
            self.client.handle_timeout(self.now);
            self.drain();
        }
        self.now = target;
    }

    fn up(&mut self) {
        self.input(
            "server connection up".into(),
            ClientInput::Server(RelayStatus { connected: true }),
        );
    }

    fn down(&mut self) {
        self.input(
            "server connection down".into(),
            ClientInput::Server(RelayStatus { connected: false }),
        );
    }

    fn server(&mut self, message: RendezvousMessage) {
        let label = format!("FromServer {}", self.describe_message(&message));
        self.input(label, ClientInput::FromServer(message));
    }

    fn publish(&mut self, request: u64, peer: usize, endpoints: &[SocketAddr]) {
        let id = self.keys.id(peer);
        self.input(
            format!("Publish r{request} p{peer} {endpoints:?}"),
            ClientInput::Publish(PublishEndpointHint {
                request: RequestId(request),
                peer: id,
                endpoints: endpoints.to_vec(),
            }),
        );
    }

    fn lookup(&mut self, request: u64, peer: usize) {
        let id = self.keys.id(peer);
        self.input(
            format!("Lookup r{request} p{peer}"),
            ClientInput::Lookup(LookupEndpointHint {
                request: RequestId(request),
                peer: id,
            }),
        );
    }

    /// A hint sealed by device `n` under the pair's RK.
    fn sealed_by(&mut self, n: usize, endpoints: &[SocketAddr], issued: u64, ttl: u64) -> Vec<u8> {
        let sender = *self.keys.device(n).public();
        seal_hint(
            &self.keys.rk,
            &sender,
            &encode_endpoints(endpoints),
            issued,
            ttl,
            &mut self.keys.rng,
        )
        .unwrap()
    }

    fn hints_in(&mut self, hints: Vec<Vec<u8>>) {
        let rendezvous_id = self.rendezvous_id;
        self.server(RendezvousMessage::Hints {
            rendezvous_id,
            hints: hints.into_iter().map(Into::into).collect(),
        });
    }

    fn sent(&self) -> Vec<RendezvousMessage> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                ClientOutput::ToServer(message) => Some(message.clone()),
                ClientOutput::Hint(_) => None,
            })
            .collect()
    }

    fn published_hints(&self) -> Vec<Vec<u8>> {
        self.sent()
            .into_iter()
            .filter_map(|m| match m {
                RendezvousMessage::Publish { hint, .. } => Some(hint),
                _ => None,
            })
            .collect()
    }

    fn lookups_sent(&self) -> usize {
        self.sent()
            .iter()
            .filter(|m| matches!(m, RendezvousMessage::Lookup { .. }))
            .count()
    }

    fn emitted(&self) -> Vec<PeerEndpointHint> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                ClientOutput::Hint(h) => Some(h.clone()),
                ClientOutput::ToServer(_) => None,
            })
            .collect()
    }
}

#[test]
fn client_trace_publish_lookup_filter_refresh_and_reconnect() {
    let mut d = Driver::new(|_| {});
    let ours = [addr("198.51.100.7:4433"), addr("[2001:db8::7]:4433")];
    let theirs_old = [addr("192.0.2.20:5000")];
    let theirs = [addr("203.0.113.5:5000")];
    // Both asked for before the connection exists: nothing goes out.
    d.publish(1, 2, &ours);
    d.lookup(2, 2);
    d.advance_to(20);
    d.up();
    d.advance_to(50);
    // The server answers with: our own hint, an older and a newer one from p2, one of
    // p2's tampered with, and one of p2's that expired.
    let own = d.published_hints()[0].clone();
    let old = d.sealed_by(2, &theirs_old, UNIX_START - 30_000, 60_000);
    let new = d.sealed_by(2, &theirs, UNIX_START + 10, 60_000);
    let mut tampered = d.sealed_by(2, &[addr("6.6.6.6:6")], UNIX_START + 20, 60_000);
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let expired = d.sealed_by(2, &[addr("192.0.2.99:1")], UNIX_START - 120_000, 60_000);
    d.hints_in(vec![own, old, new, tampered, expired]);
    // Half the hint TTL later the hint is refreshed.
    d.advance_to(31_000);
    d.down();
    // No refresh while down, and the next connect publishes afresh.
    d.advance_to(40_000);
    d.up();
    insta::assert_snapshot!(d.trace.join("\n"));

    let emitted = d.emitted();
    assert_eq!(
        emitted,
        vec![PeerEndpointHint {
            request: Some(RequestId(2)),
            peer: d.keys.id(2),
            endpoints: theirs.to_vec(),
            issued_at_ms: UNIX_START + 10,
        }]
    );
    let c = d.client.counters();
    assert_eq!((c.own_hints, c.tampered_hints, c.expired_hints), (1, 1, 1));
    // Every publish (first, refresh, after reconnect) opens to our endpoints, issued at
    // the time it was sent.
    let hints = d.published_hints();
    assert_eq!(hints.len(), 3);
    let issued: Vec<u64> = hints
        .iter()
        .map(|h| {
            let hint = open_hint(&d.keys.rk, h, UNIX_START + 40_000).unwrap();
            assert_eq!(hint.sender, *d.keys.device(1).public());
            assert_eq!(decode_endpoints(&hint.endpoints).unwrap(), ours.to_vec());
            hint.issued_at_ms - UNIX_START
        })
        .collect();
    assert_eq!(issued, vec![20, 30_020, 40_000]);
}

#[test]
fn where_the_server_sees_the_peer_is_a_hint_issued_now() {
    let mut d = Driver::new(|_| {});
    let seen = addr("198.51.100.20:40000");
    let moved = addr("203.0.113.9:41000");
    // Before the connection is up (or after it went down) it makes no sense.
    let seen_at = |rendezvous_id, addr| RendezvousMessage::PeerSeen {
        rendezvous_id,
        addr,
    };
    d.server(seen_at(d.rendezvous_id, seen));
    d.up();
    d.advance_to(40);
    d.server(seen_at(d.rendezvous_id, seen));
    d.advance_to(300);
    d.server(seen_at(d.rendezvous_id, moved));
    // Another pair's id, and addresses nobody can dial: counted, nothing emitted.
    d.server(seen_at([7; 32], seen));
    d.server(seen_at(d.rendezvous_id, addr("0.0.0.0:40000")));
    d.server(seen_at(d.rendezvous_id, addr("198.51.100.20:0")));
    insta::assert_snapshot!(d.trace.join("\n"));
    assert_eq!(
        d.emitted(),
        vec![
            PeerEndpointHint {
                request: None,
                peer: d.keys.id(2),
                endpoints: vec![seen],
                issued_at_ms: UNIX_START + 40,
            },
            PeerEndpointHint {
                request: None,
                peer: d.keys.id(2),
                endpoints: vec![moved],
                issued_at_ms: UNIX_START + 300,
            },
        ]
    );
    let c = d.client.counters();
    assert_eq!(
        (
            c.peer_seen,
            c.bad_peer_seen,
            c.unknown_rendezvous,
            c.unexpected_frames
        ),
        (2, 2, 1, 1)
    );
}

#[test]
fn hints_without_a_valid_one_from_the_peer_emit_nothing() {
    let mut d = Driver::new(|_| {});
    d.up();
    d.publish(1, 2, &[addr("198.51.100.7:1")]);
    d.lookup(2, 2);
    let own = d.published_hints()[0].clone();
    // A hint sealed under the right RK by a third device (the RK leaked) is rejected.
    let foreign = d.sealed_by(3, &[addr("6.6.6.6:6")], UNIX_START, 60_000);
    d.hints_in(vec![own, foreign, vec![1, 2, 3]]);
    assert!(d.emitted().is_empty());
    let c = d.client.counters();
    assert_eq!(c.lookups_without_hint, 1);
    assert_eq!(c.rejected_hints, 1);
    assert_eq!(c.tampered_hints, 1);
    assert_eq!(c.own_hints, 1);
}

#[test]
fn lookups_queue_while_disconnected_bounded_and_requeue_when_the_connection_drops() {
    let mut d = Driver::new(|c| c.max_queued_lookups = 2);
    d.lookup(1, 2);
    d.lookup(2, 2);
    d.lookup(3, 2);
    assert_eq!(
        d.client.counters().lookups_dropped,
        1,
        "the oldest is dropped"
    );
    assert_eq!(d.lookups_sent(), 0);
    d.up();
    assert_eq!(d.lookups_sent(), 2);
    // The connection drops before the answers: both are asked again after it is back,
    // and the answers keep the request ids in order.
    d.down();
    d.advance_to(1_000);
    d.up();
    assert_eq!(d.lookups_sent(), 4);
    let hint = d.sealed_by(2, &[addr("203.0.113.5:1")], UNIX_START, 60_000);
    d.hints_in(vec![hint.clone()]);
    d.hints_in(vec![hint]);
    let requests: Vec<Option<RequestId>> = d.emitted().iter().map(|h| h.request).collect();
    assert_eq!(requests, vec![Some(RequestId(2)), Some(RequestId(3))]);
}

#[test]
fn a_repeated_connection_report_sends_nothing_twice() {
    let mut d = Driver::new(|_| {});
    d.publish(1, 2, &[addr("10.0.0.1:1")]);
    d.lookup(2, 2);
    d.up();
    let sent = d.sent().len();
    assert_eq!(sent, 2);
    d.up();
    assert_eq!(d.sent().len(), sent, "already connected: nothing new");
    d.down();
    d.down();
    d.up();
    assert_eq!(
        d.sent().len(),
        sent + 2,
        "the lookup again, and a fresh publish"
    );
}

#[test]
fn unknown_peers_stray_answers_and_refusals_are_counted() {
    let mut d = Driver::new(|_| {});
    d.publish(1, 3, &[addr("10.0.0.1:1")]);
    d.lookup(2, 3);
    assert_eq!(d.client.counters().unknown_peer, 2);
    // An answer while the client believes the connection down makes no sense.
    d.server(RendezvousMessage::Hints {
        rendezvous_id: [0; 32],
        hints: vec![],
    });
    assert_eq!(d.client.counters().unexpected_frames, 1);
    d.up();
    let before = d.outputs.len();
    d.server(RendezvousMessage::Hints {
        rendezvous_id: [0; 32],
        hints: vec![],
    });
    d.server(RendezvousMessage::Refused {
        reason: tether_protocol::ServerRefusal::NotYours,
    });
    d.server(RendezvousMessage::Lookup {
        rendezvous_id: [0; 32],
    });
    assert_eq!(d.outputs.len(), before);
    let c = d.client.counters();
    assert_eq!(c.unknown_rendezvous, 1);
    assert_eq!(c.refused, 1);
    assert_eq!(c.unexpected_frames, 2);
    assert!(d.client.is_connected());
}

#[test]
fn different_starts_draw_different_hint_nonces_from_the_same_seed() {
    let make = |unix: u64| {
        let mut d = Driver::new(|c| c.unix_ms_at_start = unix);
        d.publish(1, 2, &[addr("10.0.0.1:1")]);
        d.up();
        d.published_hints()[0].clone()
    };
    let a = make(UNIX_START);
    let b = make(UNIX_START + 1);
    // Bytes 1..25 are the nonce.
    assert_ne!(a[1..25], b[1..25]);
    assert_eq!(
        make(UNIX_START)[1..25],
        a[1..25],
        "deterministic for one start"
    );
}

#[test]
fn config_debug_redacts_the_seed_and_keys() {
    let keys = Keys::new();
    let config = RendezvousClientConfig::new(
        keys.device(1).clone(),
        BTreeMap::from([(keys.id(2), keys.rk.clone())]),
        UNIX_START,
        [0xab; 32],
    );
    let text = format!("{config:?}");
    assert!(
        !text.contains("171, 171"),
        "seed bytes (0xab = 171) must not print: {text}"
    );
    assert!(text.contains("RelationshipKey(<redacted>)"));
    assert!(!text.contains(keys.rk.to_hex().as_str()));
}

#[test]
fn thousands_of_peers_are_each_refreshed_once_per_half_ttl() {
    let keys = Keys::new();
    let peer = |n: u32| {
        let mut bytes = [0_u8; 32];
        bytes[..4].copy_from_slice(&n.to_be_bytes());
        tether_protocol::DeviceId(bytes)
    };
    const PEERS: u32 = 3_000;
    let peers = (0..PEERS).map(|n| (peer(n), keys.rk.clone())).collect();
    let mut config =
        RendezvousClientConfig::new(keys.device(1).clone(), peers, UNIX_START, [4; 32]);
    config.hint_ttl = Duration::from_secs(60);
    let t0 = Instant::now();
    let mut client = RendezvousClient::new(config, t0);
    let publishes = |client: &mut RendezvousClient| {
        let mut n = 0;
        while let Some(output) = client.poll_output() {
            if matches!(
                output,
                ClientOutput::ToServer(RendezvousMessage::Publish { .. })
            ) {
                n += 1;
            }
        }
        n
    };
    client.handle(t0, ClientInput::Server(RelayStatus { connected: true }));
    // Publishes spread over the first 3 s.
    for n in 0..PEERS {
        let now = t0 + Duration::from_millis(u64::from(n));
        client.handle(
            now,
            ClientInput::Publish(PublishEndpointHint {
                request: RequestId(u64::from(n)),
                peer: peer(n),
                endpoints: vec![addr("192.0.2.1:4433")],
            }),
        );
    }
    assert_eq!(publishes(&mut client), PEERS as usize);
    // The first refresh is due half a TTL after the first publish, and each peer's
    // comes once in the next 3 s, in publish order.
    assert_eq!(client.poll_timeout(), Some(t0 + Duration::from_secs(30)));
    let mut refreshed = 0;
    let mut now = t0 + Duration::from_secs(30);
    while now < t0 + Duration::from_secs(33) {
        client.handle_timeout(now);
        refreshed += publishes(&mut client);
        let next = client
            .poll_timeout()
            .expect("a refresh is always due later");
        assert!(next > now, "nothing due is left behind");
        now = next;
    }
    assert_eq!(refreshed, PEERS as usize);
    assert_eq!(client.poll_timeout(), Some(t0 + Duration::from_secs(60)));
    // A lost connection drops every refresh until it is back.
    client.handle(now, ClientInput::Server(RelayStatus { connected: false }));
    assert_eq!(client.poll_timeout(), None);
}
