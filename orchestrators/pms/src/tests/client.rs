//! The rendezvous client: connection, publish/lookup flow, hint filtering.

use super::Keys;
use crate::client::{
    ClientInput, ClientOutput, RendezvousClient, RendezvousClientConfig, DEFAULT_FIRST_DIAL_REQUEST,
};
use crate::endpoints::{decode_endpoints, encode_endpoints};
use crate::ConnectionState;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tether_crypto::{open_hint, seal_hint, server_proof, verify_server_auth, RendezvousId};

/// The channel binding of every link in these tests.
const BINDING: [u8; 32] = [0xB1; 32];
use tether_protocol::shell::SansIoCore;
use tether_protocol::{
    DeviceId, LinkBound, LinkId, LookupEndpointHint, PathKind, PeerEndpointHint,
    PublishEndpointHint, RelayMessage, RendezvousMessage, RequestId, TransportCommand,
    TransportEvent, WireFrame,
};

/// Wall clock at the start of every test: 2023-11-14.
const UNIX_START: u64 = 1_700_000_000_000;

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn dial(n: u64) -> RequestId {
    RequestId(DEFAULT_FIRST_DIAL_REQUEST.0 + n)
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
        let mut config = RendezvousClientConfig::new(
            keys.device(1).clone(),
            *keys.server.public(),
            addr("203.0.113.10:4433"),
            peers,
            UNIX_START,
            [4; 32],
        );
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

    fn describe_frame(&self, frame: &WireFrame) -> String {
        match frame {
            WireFrame::Relay(RelayMessage::Challenge { .. }) => "Challenge nonce[32B]".into(),
            WireFrame::Relay(RelayMessage::Welcome { .. }) => "Welcome".into(),
            WireFrame::Relay(RelayMessage::Authenticate { device, proof }) => format!(
                "Authenticate {} proof[{}B]",
                self.keys.alias(device),
                proof.len()
            ),
            WireFrame::Relay(RelayMessage::Push { envelope, .. }) => {
                format!("Push env[{}B]", envelope.len())
            }
            WireFrame::Relay(other) => format!("{other:?}"),
            WireFrame::Rendezvous(RendezvousMessage::Publish {
                rendezvous_id,
                ttl_ms,
                hint,
            }) => format!(
                "Publish {} ttl={ttl_ms}ms hint[{}B]",
                self.rv(rendezvous_id),
                hint.len()
            ),
            WireFrame::Rendezvous(RendezvousMessage::Lookup { rendezvous_id }) => {
                format!("Lookup {}", self.rv(rendezvous_id))
            }
            WireFrame::Rendezvous(RendezvousMessage::Hints {
                rendezvous_id,
                hints,
            }) => format!(
                "Hints {} [{}]",
                self.rv(rendezvous_id),
                hints
                    .iter()
                    .map(|h| format!("{}B", h.len()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            WireFrame::Rendezvous(other) => format!("{other:?}"),
            other => format!("{other:?}"),
        }
    }

    fn describe(&self, output: &ClientOutput) -> String {
        match output {
            ClientOutput::Transport(TransportCommand::Dial { request, addrs }) => format!(
                "Dial d{} {addrs:?}",
                request.0 - DEFAULT_FIRST_DIAL_REQUEST.0
            ),
            ClientOutput::Transport(TransportCommand::Transmit { link, frame }) => {
                let text = match tether_protocol::decode(frame) {
                    Ok(frame) => self.describe_frame(&frame),
                    Err(err) => format!("{err:?}"),
                };
                format!("Transmit l{} {text}", link.0)
            }
            ClientOutput::Transport(TransportCommand::Close { link }) => {
                format!("Close l{}", link.0)
            }
            ClientOutput::Transport(TransportCommand::Farewell { link, .. }) => {
                format!("Farewell l{}", link.0)
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

    fn event(&mut self, label: String, event: TransportEvent) {
        self.input(label, ClientInput::Transport(event));
    }

    fn link_up(&mut self, request: RequestId, link: u64) {
        // The driver reports the binding first (no output of its own: not traced).
        self.client.handle(
            self.now,
            ClientInput::Bound(LinkBound {
                link: LinkId(link),
                binding: BINDING,
            }),
        );
        self.event(
            format!(
                "LinkUp d{} l{link}",
                request.0 - DEFAULT_FIRST_DIAL_REQUEST.0
            ),
            TransportEvent::LinkUp {
                request: Some(request),
                link: LinkId(link),
                path: PathKind::Direct,
                remote: None,
            },
        );
    }

    fn server(&mut self, link: u64, frame: WireFrame) {
        let label = format!("l{link} {}", self.describe_frame(&frame));
        let bytes = tether_protocol::encode(&frame).unwrap();
        self.event(
            label,
            TransportEvent::FrameReceived {
                link: LinkId(link),
                frame: bytes,
            },
        );
    }

    fn authenticate(&mut self, dial_n: u64, link: u64) {
        self.link_up(dial(dial_n), link);
        let server_key = *self.keys.server.public().as_bytes();
        self.server(
            link,
            WireFrame::Relay(RelayMessage::Challenge {
                nonce: [6; 32],
                server_key,
            }),
        );
        let device = self.keys.device(1).public();
        let proof = server_proof(&self.keys.server, device, &[6; 32], &BINDING).to_vec();
        self.server(link, WireFrame::Relay(RelayMessage::Welcome { proof }));
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

    fn hints_in(&mut self, link: u64, hints: Vec<Vec<u8>>) {
        let rendezvous_id = self.rendezvous_id;
        self.server(
            link,
            WireFrame::Rendezvous(RendezvousMessage::Hints {
                rendezvous_id,
                hints: hints.into_iter().map(Into::into).collect(),
            }),
        );
    }

    fn transmitted(&self) -> Vec<WireFrame> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                ClientOutput::Transport(TransportCommand::Transmit { frame, .. }) => {
                    tether_protocol::decode(frame).ok()
                }
                _ => None,
            })
            .collect()
    }

    fn published_hints(&self) -> Vec<Vec<u8>> {
        self.transmitted()
            .into_iter()
            .filter_map(|f| match f {
                WireFrame::Rendezvous(RendezvousMessage::Publish { hint, .. }) => Some(hint),
                _ => None,
            })
            .collect()
    }

    fn emitted(&self) -> Vec<PeerEndpointHint> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                ClientOutput::Hint(h) => Some(h.clone()),
                _ => None,
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
    // Both asked for before the connection exists.
    d.publish(1, 2, &ours);
    d.lookup(2, 2);
    d.input("Start".into(), ClientInput::Start);
    d.advance_to(20);
    d.authenticate(0, 1);
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
    d.hints_in(1, vec![own, old, new, tampered, expired]);
    // Relay traffic on this connection is ignored, never acknowledged.
    d.server(
        1,
        WireFrame::Relay(RelayMessage::Push {
            from: DeviceId([9; 32]),
            envelope_id: 1,
            envelope: vec![0; 40],
        }),
    );
    // Half the hint TTL later the hint is refreshed.
    d.advance_to(31_000);
    d.event(
        "LinkDown l1".into(),
        TransportEvent::LinkDown {
            link: LinkId(1),
            reason: "moved".into(),
        },
    );
    d.advance_to(40_000);
    d.authenticate(1, 2);
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
    assert_eq!(c.relay_traffic_ignored, 1);
    assert!(!d
        .transmitted()
        .iter()
        .any(|f| matches!(f, WireFrame::Relay(RelayMessage::Delivered { .. }))));
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
    assert_eq!(issued[0], 20);
    assert_eq!(issued[1], 30_020);
    assert!(issued[2] >= 31_000 && issued[2] <= 40_000);
    // The proof verifies at the server.
    let proof = d
        .transmitted()
        .into_iter()
        .find_map(|f| match f {
            WireFrame::Relay(RelayMessage::Authenticate { proof, .. }) => Some(proof),
            _ => None,
        })
        .unwrap();
    assert!(verify_server_auth(
        &d.keys.server,
        d.keys.device(1).public(),
        &[6; 32],
        &BINDING,
        &proof
    ));
}

#[test]
fn hints_without_a_valid_one_from_the_peer_emit_nothing() {
    let mut d = Driver::new(|_| {});
    d.input("Start".into(), ClientInput::Start);
    d.authenticate(0, 1);
    d.publish(1, 2, &[addr("198.51.100.7:1")]);
    d.lookup(2, 2);
    let own = d.published_hints()[0].clone();
    // A hint sealed under the right RK by a third device (the RK leaked) is rejected.
    let foreign = d.sealed_by(3, &[addr("6.6.6.6:6")], UNIX_START, 60_000);
    d.hints_in(1, vec![own, foreign, vec![1, 2, 3]]);
    assert!(d.emitted().is_empty());
    let c = d.client.counters();
    assert_eq!(c.lookups_without_hint, 1);
    assert_eq!(c.rejected_hints, 1);
    assert_eq!(c.tampered_hints, 1);
    assert_eq!(c.own_hints, 1);
}

#[test]
fn lookups_queue_while_disconnected_bounded_and_requeue_on_link_loss() {
    let mut d = Driver::new(|c| c.max_queued_lookups = 2);
    d.lookup(1, 2);
    d.lookup(2, 2);
    d.lookup(3, 2);
    assert_eq!(
        d.client.counters().lookups_dropped,
        1,
        "the oldest is dropped"
    );
    d.input("Start".into(), ClientInput::Start);
    d.authenticate(0, 1);
    let lookups = |d: &Driver| {
        d.transmitted()
            .iter()
            .filter(|f| matches!(f, WireFrame::Rendezvous(RendezvousMessage::Lookup { .. })))
            .count()
    };
    assert_eq!(lookups(&d), 2);
    // The link dies before the answers: both are asked again after reconnecting, and the
    // answers keep the request ids in order.
    d.event(
        "LinkDown l1".into(),
        TransportEvent::LinkDown {
            link: LinkId(1),
            reason: "x".into(),
        },
    );
    d.advance_to(1_000);
    d.authenticate(1, 2);
    assert_eq!(lookups(&d), 4);
    let hint = d.sealed_by(2, &[addr("203.0.113.5:1")], UNIX_START, 60_000);
    d.hints_in(2, vec![hint.clone()]);
    d.hints_in(2, vec![hint]);
    let requests: Vec<Option<RequestId>> = d.emitted().iter().map(|h| h.request).collect();
    assert_eq!(requests, vec![Some(RequestId(2)), Some(RequestId(3))]);
}

#[test]
fn unknown_peers_garbage_and_refusals_are_counted() {
    let mut d = Driver::new(|_| {});
    d.publish(1, 3, &[addr("10.0.0.1:1")]);
    d.lookup(2, 3);
    assert_eq!(d.client.counters().unknown_peer, 2);
    d.input("Start".into(), ClientInput::Start);
    d.authenticate(0, 1);
    let before = d.outputs.len();
    for bytes in [vec![], vec![7, 7], vec![1, 0xc1], vec![0; 300 * 1024]] {
        d.event(
            format!("garbage {}B", bytes.len()),
            TransportEvent::FrameReceived {
                link: LinkId(1),
                frame: bytes,
            },
        );
    }
    d.server(
        1,
        WireFrame::Rendezvous(RendezvousMessage::Hints {
            rendezvous_id: [0; 32],
            hints: vec![],
        }),
    );
    d.server(
        1,
        WireFrame::Rendezvous(RendezvousMessage::Refused {
            reason: tether_protocol::ServerRefusal::NotYours,
        }),
    );
    assert_eq!(d.outputs.len(), before);
    let c = d.client.counters();
    assert_eq!(c.decode_errors, 4);
    assert_eq!(c.unknown_rendezvous, 1);
    assert_eq!(c.refused, 1);
    assert!(d.client.is_connected());
}

#[test]
fn a_refused_proof_backs_off_and_redials() {
    let mut d = Driver::new(|_| {});
    d.input("Start".into(), ClientInput::Start);
    d.link_up(dial(0), 1);
    d.server(
        1,
        WireFrame::Relay(RelayMessage::Challenge {
            nonce: [1; 32],
            server_key: *d.keys.server.public().as_bytes(),
        }),
    );
    d.server(
        1,
        WireFrame::Relay(RelayMessage::Refused {
            request: None,
            reason: tether_protocol::ServerRefusal::BadProof,
        }),
    );
    assert!(matches!(
        d.client.state(),
        ConnectionState::Disconnected { .. }
    ));
    d.advance_to(1_000);
    assert!(matches!(
        d.client.state(),
        ConnectionState::Dialling { request, .. } if request == dial(1)
    ));
}

#[test]
fn different_starts_draw_different_hint_nonces_from_the_same_seed() {
    let make = |unix: u64| {
        let mut d = Driver::new(|c| c.unix_ms_at_start = unix);
        d.publish(1, 2, &[addr("10.0.0.1:1")]);
        d.input("Start".into(), ClientInput::Start);
        d.authenticate(0, 1);
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
        *keys.server.public(),
        addr("203.0.113.10:4433"),
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
