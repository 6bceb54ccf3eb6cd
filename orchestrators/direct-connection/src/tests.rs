//! Two DirectConnection cores on an in-memory network with a fixed one-way latency:
//! establishment, crossing handshakes, exactly-once delivery, and the migration paths
//! (moving dialler, moving acceptor, relay delivery, transport-only reconnect), with a
//! transition trace per scenario. Presence's role is played by the test.

use crate::config::{Config, Limits, PeerConfig};
use crate::core::{DirectConnection, Input, Output};
use crate::path_choice::{DIRECT_SLOWER_TOLERANCE_MS, FALLBACK_SLOWER_MS};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tether_crypto::{RelationshipKey, StaticKeypair};
use tether_protocol::shell::SansIoCore;
use tether_protocol::{
    AllowRekey, BlueprintCompiled, Candidate, CandidateSource, CarryOverRelay, ChannelId,
    ConnectPeer, DeviceId, Endpoint, JournalEntry, LinkId, PathKind, RelayDelivered,
    RelayMigrationPing, RelayStatus, RequestId, SendBatchAnswer, SendMessage, SendMessages,
    SendMigrationPing, TransportCommand, TransportEvent,
};

const A: usize = 0;
const B: usize = 1;

/// One way, on every path (direct and relay).
const LATENCY: Duration = Duration::from_millis(20);

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

struct Node {
    core: DirectConnection,
    device: DeviceId,
    addr: SocketAddr,
}

enum Event {
    /// Deliver an input to a node.
    Input(usize, Input),
    /// Presence's relay-copy timer of a node's migration (if still pending).
    RelayCopy(usize),
}

/// Drops a frame sent by a node when it returns true.
type DropRule = Box<dyn Fn(usize, &[u8]) -> bool>;

struct Net {
    t0: Instant,
    now: Instant,
    nodes: Vec<Node>,
    /// (at, sequence) → event; the sequence keeps same-time events in order.
    queue: BTreeMap<(Instant, u64), Event>,
    seq: u64,
    /// Link id on a node → (other node, link id on the other node).
    links: BTreeMap<(usize, LinkId), (usize, LinkId)>,
    /// Which node dialled each link pair (its side's id).
    dialled_by: BTreeMap<(usize, LinkId), bool>,
    next_link: u64,
    /// Direct UDP between the two nodes is blocked.
    direct_blocked: bool,
    /// When a node moves, the peer's side of a link that dies stays open (as QUIC keeps
    /// it until its idle timeout) instead of going down at once.
    dead_links_linger: bool,
    /// One-way delay a direct link adds to the relay's [`LATENCY`] (a direct path
    /// slower than the relay).
    direct_extra: Duration,
    /// Drop every frame matching this (node sending, bytes) predicate.
    drop_if: Option<DropRule>,
    trace: Vec<String>,
    /// Every output per node (for assertions).
    outputs: Vec<Vec<Output>>,
    /// Per node, whether Presence's relay copy of the migration ping is still to go
    /// (Presence's role is played by the test).
    relay_copy_pending: [bool; 2],
    delivered: Vec<Vec<Vec<u8>>>,
}

impl Net {
    fn new(seed: u64) -> Self {
        Self::with_limits(seed, Limits::default())
    }

    fn with_limits(seed: u64, limits: Limits) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let a = StaticKeypair::generate(&mut rng);
        let b = StaticKeypair::generate(&mut rng);
        let rk = RelationshipKey::generate(&mut rng);
        let t0 = Instant::now();
        let make = |local: StaticKeypair, other: &StaticKeypair, at: &str, seed: u64| {
            let device = DeviceId(*local.public().as_bytes());
            let config = Config {
                peers: vec![PeerConfig {
                    public: *other.public(),
                    rk: rk.clone(),
                }],
                local,
                local_endpoints: vec![addr(at)],
                rng_seed: ChaCha20Rng::seed_from_u64(seed).get_seed(),
                unix_ms_at_start: 1_700_000_000_000,
                limits: limits.clone(),
                restored: tether_protocol::RestoredChannels::default(),
                journal: false,
            };
            Node {
                core: DirectConnection::new(config, t0),
                device,
                addr: addr(at),
            }
        };
        let node_a = make(a.clone(), &b, "10.0.0.1:4433", seed * 2 + 1);
        let node_b = make(b, &a, "10.0.0.2:4433", seed * 2 + 2);
        let mut net = Self {
            t0,
            now: t0,
            nodes: vec![node_a, node_b],
            queue: BTreeMap::new(),
            seq: 0,
            links: BTreeMap::new(),
            dialled_by: BTreeMap::new(),
            next_link: 1,
            direct_blocked: false,
            dead_links_linger: false,
            direct_extra: Duration::ZERO,
            drop_if: None,
            trace: Vec::new(),
            outputs: vec![Vec::new(), Vec::new()],
            relay_copy_pending: [false; 2],
            delivered: vec![Vec::new(), Vec::new()],
        };
        for node in [A, B] {
            net.input(node, Input::RelayStatus(RelayStatus { connected: true }));
        }
        net
    }

    fn name(node: usize) -> &'static str {
        ["A", "B"][node]
    }

    fn ms(&self) -> u128 {
        (self.now - self.t0).as_millis()
    }

    fn device(&self, node: usize) -> DeviceId {
        self.nodes[node].device
    }

    fn schedule(&mut self, at: Instant, event: Event) {
        self.seq += 1;
        self.queue.insert((at, self.seq), event);
    }

    fn input(&mut self, node: usize, input: Input) {
        self.nodes[node].core.handle(self.now, input);
        self.drain(node);
    }

    fn note(&mut self, text: &str) {
        self.trace.push(format!("{:>6}ms -- {text}", self.ms()));
    }

    fn drain(&mut self, node: usize) {
        while let Some(output) = self.nodes[node].core.poll_output() {
            self.route(node, &output);
            self.outputs[node].push(output);
        }
    }

    fn later(&mut self, node: usize, input: Input) {
        let at = self.now + LATENCY;
        self.schedule(at, Event::Input(node, input));
    }

    /// As [`Net::later`], over a direct link.
    fn later_direct(&mut self, node: usize, input: Input) {
        let at = self.now + LATENCY + self.direct_extra;
        self.schedule(at, Event::Input(node, input));
    }

    fn route(&mut self, from: usize, output: &Output) {
        let other = 1 - from;
        let who = Self::name(from);
        match output {
            Output::Transport(TransportCommand::Dial { request, addrs }) => {
                let target = addrs.iter().any(|a| *a == self.nodes[other].addr);
                if target && !self.direct_blocked {
                    let mine = LinkId(self.next_link);
                    let theirs = LinkId(self.next_link + 1);
                    self.next_link += 2;
                    self.links.insert((from, mine), (other, theirs));
                    self.links.insert((other, theirs), (from, mine));
                    self.dialled_by.insert((from, mine), true);
                    self.dialled_by.insert((other, theirs), false);
                    let remote_of_other = self.nodes[other].addr;
                    let remote_of_me = self.nodes[from].addr;
                    self.later_direct(
                        other,
                        Input::Transport(TransportEvent::LinkUp {
                            request: None,
                            link: theirs,
                            path: PathKind::Direct,
                            remote: Some(remote_of_me),
                        }),
                    );
                    // The dialler learns of the link after a round trip.
                    let at = self.now + (LATENCY + self.direct_extra) * 2;
                    self.schedule(
                        at,
                        Event::Input(
                            from,
                            Input::Transport(TransportEvent::LinkUp {
                                request: Some(*request),
                                link: mine,
                                path: PathKind::Direct,
                                remote: Some(remote_of_other),
                            }),
                        ),
                    );
                } else {
                    self.later(
                        from,
                        Input::Transport(TransportEvent::DialFailed {
                            request: *request,
                            reason: "unreachable".into(),
                        }),
                    );
                }
            }
            Output::Transport(TransportCommand::Transmit { link, frame }) => {
                if self.drop_if.as_ref().is_some_and(|f| f(from, frame)) {
                    self.trace.push(format!(
                        "{:>6}ms {who} dropped {} bytes",
                        self.ms(),
                        frame.len()
                    ));
                    return;
                }
                if let Some(&(to, their_link)) = self.links.get(&(from, *link)) {
                    self.later_direct(
                        to,
                        Input::Transport(TransportEvent::FrameReceived {
                            link: their_link,
                            frame: frame.clone(),
                        }),
                    );
                }
            }
            Output::Transport(TransportCommand::Close { .. }) => {}
            Output::Transport(TransportCommand::Farewell { link, frame }) => {
                // As QUIC does: the frame rides in the close, then the link is gone.
                if let Some(&(to, their_link)) = self.links.get(&(from, *link)) {
                    self.later(
                        to,
                        Input::Transport(TransportEvent::FrameReceived {
                            link: their_link,
                            frame: frame.clone(),
                        }),
                    );
                    self.later(
                        to,
                        Input::Transport(TransportEvent::LinkDown {
                            link: their_link,
                            reason: "closed by peer with a farewell".into(),
                        }),
                    );
                }
            }
            Output::RelayForward(forward) => {
                let from_device = self.device(from);
                self.later(
                    other,
                    Input::Relay(RelayDelivered {
                        from: from_device,
                        envelope: forward.frame.clone(),
                    }),
                );
            }
            Output::RelayEnqueue(enqueue) => {
                self.trace
                    .push(format!("{:>6}ms {who} relay-queue ping", self.ms()));
                let from_device = self.device(from);
                self.later(
                    other,
                    Input::Relay(RelayDelivered {
                        from: from_device,
                        envelope: enqueue.envelope.clone(),
                    }),
                );
            }
            Output::Delivered(message) => {
                self.delivered[from].push(message.payload.clone());
            }
            // Presence's and ConnectionBlueprint's concern.
            Output::PathMeasured(_) | Output::PeerEndpointsChanged(_) | Output::SendWaiting(_) => {}
            // As Presence does: a migration ping no direct path can carry goes to the
            // relay at once.
            Output::DirectDialFailed(_) => {
                let at = self.now;
                self.schedule(at, Event::RelayCopy(from));
            }
            other_output => {
                let line = describe(other_output);
                self.trace.push(format!("{:>6}ms {who} {line}", self.ms()));
            }
        }
    }

    /// Runs events and timers until `ms` of virtual time.
    fn run_until(&mut self, ms: u64) {
        let end = self.t0 + Duration::from_millis(ms);
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(steps < 100_000, "no progress");
            let next_event = self.queue.keys().next().map(|k| k.0);
            let next_timer = [A, B]
                .into_iter()
                .filter_map(|n| self.nodes[n].core.poll_timeout().map(|t| (t, n)))
                .min();
            let event_first = match (next_event, next_timer) {
                (Some(e), Some((t, _))) => e <= t,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if event_first {
                let Some((&key, _)) = self.queue.iter().next() else {
                    break;
                };
                if key.0 > end {
                    break;
                }
                let Some(event) = self.queue.remove(&key) else {
                    break;
                };
                self.now = self.now.max(key.0);
                match event {
                    Event::Input(node, input) => self.input(node, input),
                    Event::RelayCopy(node) => self.relay_copy(node),
                }
            } else if let Some((at, node)) = next_timer {
                if at > end {
                    break;
                }
                self.now = self.now.max(at);
                self.nodes[node].core.handle_timeout(self.now);
                self.drain(node);
            }
        }
        self.now = end;
    }

    fn candidates(&self, of: usize) -> Vec<Candidate> {
        vec![
            Candidate {
                endpoint: Endpoint::Direct(self.nodes[of].addr),
                source: CandidateSource::Configured,
            },
            Candidate {
                endpoint: Endpoint::Relay,
                source: CandidateSource::Relay,
            },
        ]
    }

    /// ConnectionBlueprint's order on `node` for the other node: its address, then the
    /// relay.
    fn blueprint(&mut self, node: usize) {
        let peer = self.device(1 - node);
        let candidates = self.candidates(1 - node);
        self.input(
            node,
            Input::Blueprint(BlueprintCompiled { peer, candidates }),
        );
    }

    fn connect(&mut self, node: usize, transport_only: bool) {
        let peer = self.device(1 - node);
        self.blueprint(node);
        self.note(&format!(
            "{} ConnectPeer transport_only={transport_only}",
            Self::name(node)
        ));
        self.input(
            node,
            Input::Connect(ConnectPeer {
                request: RequestId(100 + node as u64),
                peer,
                transport_only,
            }),
        );
    }

    fn send(&mut self, node: usize, text: &str) {
        let peer = self.device(1 - node);
        let accepted = self.send_message(
            node,
            SendMessage {
                peer,
                channel: ChannelId(1),
                payload: text.as_bytes().to_vec(),
            },
        );
        assert!(accepted.is_ok(), "{accepted:?}");
    }

    /// The application's send on `node`: answered at once, then the outputs flow.
    fn send_message(
        &mut self,
        node: usize,
        message: SendMessage,
    ) -> Result<u64, tether_protocol::SendError> {
        let result = self.nodes[node].core.send(self.now, message);
        self.drain(node);
        result
    }

    /// The application's `send_all` on `node`: `payloads` to the other node on channel
    /// 1 in one batch, answered at once, then the outputs flow.
    fn send_batch(&mut self, node: usize, payloads: &[Vec<u8>]) -> SendBatchAnswer {
        let batch = SendMessages {
            peer: self.device(1 - node),
            channel: ChannelId(1),
            payloads: payloads.to_vec(),
        };
        let answer = self.nodes[node].core.send_batch(self.now, batch);
        self.drain(node);
        answer
    }

    /// Node moves to a new address: links it accepted die on both sides (QUIC cannot
    /// migrate them); links it dialled migrate, and the other side sees a new remote.
    fn move_to(&mut self, node: usize, new: &str) {
        self.note(&format!("{} moves to {new}", Self::name(node)));
        self.nodes[node].addr = addr(new);
        let pairs: Vec<((usize, LinkId), (usize, LinkId))> = self
            .links
            .iter()
            .filter(|((n, _), _)| *n == node)
            .map(|(k, v)| (*k, *v))
            .collect();
        for ((_, mine), (other, theirs)) in pairs {
            // A link we dialled follows us (QUIC migration), unless the new network
            // cannot reach the peer directly.
            if self.dialled_by[&(node, mine)] && !self.direct_blocked {
                let remote = addr(new);
                self.later(
                    other,
                    Input::Transport(TransportEvent::RemoteChanged {
                        link: theirs,
                        remote,
                    }),
                );
            } else {
                self.links.remove(&(node, mine));
                self.links.remove(&(other, theirs));
                self.input(
                    node,
                    Input::Transport(TransportEvent::LinkDown {
                        link: mine,
                        reason: "address gone".into(),
                    }),
                );
                if !self.dead_links_linger {
                    self.later(
                        other,
                        Input::Transport(TransportEvent::LinkDown {
                            link: theirs,
                            reason: "idle".into(),
                        }),
                    );
                }
            }
        }
        self.input(node, Input::LocalEndpoints(vec![addr(new)]));
    }

    /// Presence's migration phase 2 on `node`: the ping, then the relay copy after 1.5
    /// RTT (at most 250 ms) and the data half that later (at least 20 ms), as
    /// Presence's defaults schedule them.
    fn migration_ping(&mut self, node: usize) {
        let peer = self.device(1 - node);
        let new = self.nodes[node].addr;
        self.blueprint(node);
        let relay_after = self
            .snapshot(node)
            .rtt_ms
            .map_or(Duration::from_millis(250), |rtt| {
                Duration::from_millis(rtt * 3 / 2)
            })
            .min(Duration::from_millis(250));
        let carry_after = relay_after + (relay_after / 2).max(Duration::from_millis(20));
        self.input(
            node,
            Input::SendMigrationPing(SendMigrationPing {
                peer,
                new_endpoints: vec![new],
            }),
        );
        self.relay_copy_pending[node] = true;
        self.schedule(self.now + relay_after, Event::RelayCopy(node));
        self.schedule(
            self.now + carry_after,
            Event::Input(node, Input::CarryOverRelay(CarryOverRelay { peer })),
        );
    }

    /// Presence's relay copy, once per migration ping.
    fn relay_copy(&mut self, node: usize) {
        if std::mem::take(&mut self.relay_copy_pending[node]) {
            let peer = self.device(1 - node);
            self.input(node, Input::RelayMigrationPing(RelayMigrationPing { peer }));
        }
    }

    /// Both nodes' relay connection goes up or down.
    fn relay_status(&mut self, connected: bool) {
        for node in [A, B] {
            self.input(node, Input::RelayStatus(RelayStatus { connected }));
        }
    }

    fn snapshot(&self, node: usize) -> crate::core::PeerSnapshot {
        let peer = self.device(1 - node);
        self.nodes[node].core.snapshot(&peer).unwrap()
    }

    fn assert_same_session(&self) {
        let a = self.snapshot(A);
        let b = self.snapshot(B);
        assert!(a.peer_secret.is_some(), "A committed");
        assert_eq!(a.peer_secret, b.peer_secret, "PeerSecret fingerprints");
        assert_eq!(a.session_keys, b.session_keys, "session key fingerprints");
        assert_eq!(a.epoch, b.epoch, "epochs");
    }

    fn handshakes(&self) -> (u64, u64) {
        (self.snapshot(A).handshakes, self.snapshot(B).handshakes)
    }

    fn count(&self, node: usize, predicate: impl Fn(&Output) -> bool) -> usize {
        self.outputs[node].iter().filter(|o| predicate(o)).count()
    }
}

fn describe(output: &Output) -> String {
    match output {
        Output::HandshakeStarted(_) => "HandshakeStarted".into(),
        Output::SessionReady(m) => format!(
            "SessionReady e{} {:?} handshake={}{}",
            m.epoch.0,
            m.path,
            m.after_handshake,
            if m.rekey { " rekey" } else { "" }
        ),
        Output::ConnectFailed(m) => format!("ConnectFailed ({})", m.reason),
        Output::InboundMigrationPing(m) => {
            format!("InboundMigrationPing #{} via {:?}", m.counter, m.via)
        }
        Output::PeerAnnounced(m) => format!("PeerAnnounced {:?}", m.endpoints),
        Output::PathLost(_) => "PathLost".into(),
        Output::PeerReset(_) => "PeerReset".into(),
        Output::Liveness(m) => format!("Liveness alive={}", m.alive),
        other => format!("{other:?}"),
    }
}

fn established(seed: u64) -> Net {
    let mut net = Net::new(seed);
    net.connect(A, false);
    net.run_until(500);
    net.assert_same_session();
    net
}

#[test]
fn establishment_trace() {
    let net = established(1);
    assert_eq!(net.handshakes(), (1, 1));
    assert_eq!(net.snapshot(A).path, Some(PathKind::Direct));
    insta::assert_snapshot!(net.trace.join("\n"));
}

#[test]
fn crossing_handshakes_converge_on_one_peer_secret() {
    for seed in 0..40 {
        let mut net = Net::new(seed);
        net.connect(A, false);
        // B starts 0..39 ms later: every interleaving of the two handshakes.
        net.run_until(seed);
        net.connect(B, false);
        net.run_until(3000);
        net.assert_same_session();
        assert_eq!(net.snapshot(A).epoch, Some(1), "seed {seed}");
    }
}

#[test]
fn messages_are_delivered_exactly_once_in_order() {
    let mut net = established(2);
    for i in 0..50 {
        net.send(A, &format!("a{i}"));
        net.send(B, &format!("b{i}"));
    }
    net.run_until(2000);
    let expect = |p: &str| {
        (0..50)
            .map(|i| format!("{p}{i}").into_bytes())
            .collect::<Vec<_>>()
    };
    assert_eq!(net.delivered[B], expect("a"));
    assert_eq!(net.delivered[A], expect("b"));
}

/// Everything a migration must leave unchanged, checked after it.
fn assert_migrated(net: &Net, handshakes: (u64, u64), fingerprints: (String, String)) {
    net.assert_same_session();
    assert_eq!(net.handshakes(), handshakes, "no handshake ran");
    let now = (
        net.snapshot(A)
            .peer_secret
            .map(|f| f.to_string())
            .unwrap_or_default(),
        net.snapshot(B)
            .peer_secret
            .map(|f| f.to_string())
            .unwrap_or_default(),
    );
    assert_eq!(now, fingerprints, "same PeerSecret as before");
    assert_eq!(net.snapshot(A).epoch, Some(1));
}

fn fingerprints(net: &Net) -> (String, String) {
    (
        net.snapshot(A)
            .peer_secret
            .map(|f| f.to_string())
            .unwrap_or_default(),
        net.snapshot(B)
            .peer_secret
            .map(|f| f.to_string())
            .unwrap_or_default(),
    )
}

#[test]
fn moving_dialler_migrates_without_handshake() {
    let mut net = established(3);
    let before = (net.handshakes(), fingerprints(&net));
    net.trace.clear();
    net.run_until(1000);
    net.move_to(A, "10.9.0.1:4433");
    for i in 0..5 {
        net.send(A, &format!("during{i}"));
    }
    net.migration_ping(A);
    net.run_until(2000);
    assert_migrated(&net, before.0, before.1);
    assert_eq!(net.snapshot(B).remote, Some(addr("10.9.0.1:4433")));
    let expect: Vec<Vec<u8>> = (0..5).map(|i| format!("during{i}").into_bytes()).collect();
    assert_eq!(net.delivered[B], expect);
    insta::assert_snapshot!(net.trace.join("\n"));
}

#[test]
fn moving_acceptor_migrates_without_handshake() {
    let mut net = established(4);
    let before = (net.handshakes(), fingerprints(&net));
    net.trace.clear();
    net.run_until(1000);
    // B accepted A's link: QUIC cannot migrate it.
    net.move_to(B, "10.9.0.2:4433");
    net.send(B, "queued while moving");
    net.migration_ping(B);
    net.run_until(2000);
    assert_migrated(&net, before.0, before.1);
    assert_eq!(net.snapshot(A).remote, Some(addr("10.9.0.2:4433")));
    assert_eq!(net.delivered[A], vec![b"queued while moving".to_vec()]);
    insta::assert_snapshot!(net.trace.join("\n"));
}

#[test]
fn direct_blocked_after_move_falls_back_to_the_relay() {
    let mut net = established(5);
    let before = (net.handshakes(), fingerprints(&net));
    net.trace.clear();
    net.run_until(1000);
    net.direct_blocked = true;
    net.move_to(B, "10.9.0.2:4433");
    net.send(B, "over the relay");
    net.migration_ping(B);
    net.run_until(3000);
    assert_migrated(&net, before.0, before.1);
    assert_eq!(net.snapshot(B).path, Some(PathKind::Relay));
    assert_eq!(net.delivered[A], vec![b"over the relay".to_vec()]);
    insta::assert_snapshot!(net.trace.join("\n"));
}

#[test]
fn transport_only_reconnect_never_handshakes() {
    let mut net = established(6);
    let before = net.handshakes();
    // B learns A moved (via the relay, say) and reconnects transport-only.
    net.run_until(1000);
    net.move_to(A, "10.9.0.1:4433");
    net.blueprint(B);
    let peer = net.device(A);
    net.input(
        B,
        Input::Connect(ConnectPeer {
            request: RequestId(7),
            peer,
            transport_only: true,
        }),
    );
    net.run_until(2000);
    assert_eq!(net.handshakes(), before);
    assert_eq!(
        net.count(B, |o| matches!(o, Output::HandshakeStarted(_))),
        0
    );
    net.assert_same_session();
}

#[test]
fn transport_only_without_a_session_fails_instead_of_handshaking() {
    let mut net = Net::new(7);
    net.connect(A, true);
    net.run_until(1000);
    assert_eq!(net.handshakes(), (0, 0));
    assert_eq!(net.count(A, |o| matches!(o, Output::ConnectFailed(_))), 1);
}

#[test]
fn replayed_and_forged_frames_change_nothing() {
    let mut net = established(8);
    // Capture the next frame A sends to B, then replay it and a corrupted copy.
    net.send(A, "original");
    let frame = net.outputs[A]
        .iter()
        .rev()
        .find_map(|o| match o {
            Output::Transport(TransportCommand::Transmit { frame, .. }) => Some(frame.clone()),
            _ => None,
        })
        .unwrap();
    net.run_until(1000);
    let link = *net
        .links
        .keys()
        .find(|(n, _)| *n == B)
        .map(|(_, l)| l)
        .unwrap();
    let before = net.snapshot(B);
    let rejected_before = net.nodes[B].core.counters().rejected_frames;
    let mut corrupted = frame.clone();
    let last = corrupted.len() - 1;
    corrupted[last] ^= 1;
    for bytes in [frame, corrupted, vec![1, 2, 3]] {
        net.input(
            B,
            Input::Transport(TransportEvent::FrameReceived { link, frame: bytes }),
        );
    }
    assert_eq!(net.snapshot(B), before);
    assert_eq!(net.delivered[B], vec![b"original".to_vec()]);
    assert_eq!(
        net.nodes[B].core.counters().rejected_frames,
        rejected_before + 2
    );
    assert_eq!(net.nodes[B].core.counters().malformed_frames, 1);
}

#[test]
fn a_ping_under_the_wrong_peer_secret_is_refused() {
    // Two pairs that share nothing: a ping sealed for one session cannot even open in
    // the other; and a ping whose tag is wrong is refused by PeerSecret resolution.
    let mut net = established(9);
    net.drop_if = None;
    let peer = net.device(A);
    let bad_tag_before = net.nodes[B].core.counters().bad_migration_tags;
    // Forge: seal a migration ping with a wrong tag under A's real session keys.
    let forged = tether_protocol::SessionFrame::MigrationPing(tether_protocol::MigrationPing {
        epoch: tether_protocol::Epoch(1),
        counter: 99,
        endpoints: vec![addr("192.0.2.66:1")],
        tag: [0; 16],
    });
    let b_device = net.device(B);
    let sealed = net.nodes[A].core.seal_wire(b_device, &forged).unwrap();
    net.input(
        B,
        Input::Relay(RelayDelivered {
            from: peer,
            envelope: sealed,
        }),
    );
    assert_eq!(
        net.nodes[B].core.counters().bad_migration_tags,
        bad_tag_before + 1
    );
    assert_eq!(
        net.count(B, |o| matches!(o, Output::InboundMigrationPing(_))),
        0
    );
    assert_eq!(net.snapshot(B).remote, Some(addr("10.0.0.1:4433")));
}

#[test]
fn a_lost_handshake_message_is_retried_with_a_fresh_initiation() {
    let mut net = Net::new(10);
    let dropped = std::rc::Rc::new(std::cell::Cell::new(0));
    let seen = dropped.clone();
    net.drop_if = Some(Box::new(move |_, bytes| {
        let first_init = matches!(
            tether_protocol::decode(bytes),
            Ok(tether_protocol::WireFrame::HandshakeInit(_))
        ) && seen.get() == 0;
        if first_init {
            seen.set(1);
        }
        first_init
    }));
    net.connect(A, false);
    net.run_until(3000);
    assert_eq!(dropped.get(), 1, "the first message 1 was lost");
    net.assert_same_session();
    // One completed handshake; two initiations by A (the lost one and the retry),
    // one answer by B.
    assert_eq!(net.handshakes(), (1, 1));
    assert_eq!(
        (
            net.snapshot(A).handshake_attempts,
            net.snapshot(B).handshake_attempts
        ),
        (2, 1)
    );
}

#[test]
fn a_relayed_session_moves_to_a_direct_path_when_one_opens() {
    let mut net = established(11);
    let before = net.handshakes();
    net.run_until(1000);
    net.direct_blocked = true;
    net.move_to(B, "10.9.0.2:4433");
    net.migration_ping(B);
    net.run_until(3000);
    assert_eq!(net.snapshot(B).path, Some(PathKind::Relay));
    net.direct_blocked = false;
    net.run_until(12_000);
    assert_eq!(net.snapshot(B).path, Some(PathKind::Direct));
    assert_eq!(net.snapshot(A).path, Some(PathKind::Direct));
    assert_eq!(net.snapshot(A).remote, Some(addr("10.9.0.2:4433")));
    assert_eq!(net.handshakes(), before);
    net.assert_same_session();
}

#[test]
fn after_the_peer_moved_a_standby_link_of_our_own_goes_to_its_new_address() {
    let mut net = established(12);
    net.run_until(1000);
    // A dialled B; B dialled a standby link back. B moves: its standby link migrates,
    // and A's own link to B's old address stays open, dead, until QUIC's idle timeout.
    // (No reconnect from Presence here: the ping's link alone carries the session.)
    net.dead_links_linger = true;
    net.move_to(B, "10.9.0.2:4433");
    net.migration_ping(B);
    net.run_until(3000);
    assert_eq!(net.snapshot(A).remote, Some(addr("10.9.0.2:4433")));
    // A link of A's own to where B is now, so that A's next move migrates one.
    let dialled_to_b = net.count(A, |o| {
        matches!(o, Output::Transport(TransportCommand::Dial { addrs, .. })
            if addrs.contains(&addr("10.9.0.2:4433")))
    });
    assert_eq!(dialled_to_b, 1);
    net.assert_same_session();
}

/// Established, then the direct path blocked and B moved: the session runs over the
/// relay long enough for liveness pings to measure it.
fn on_the_relay(seed: u64) -> Net {
    let mut net = established(seed);
    net.run_until(1000);
    net.direct_blocked = true;
    net.move_to(B, "10.9.0.2:4433");
    net.migration_ping(B);
    net.run_until(9000);
    assert_eq!(net.snapshot(A).path, Some(PathKind::Relay));
    assert!(net.snapshot(A).relay_rtt_ms.is_some(), "relay measured");
    net
}

#[test]
fn a_direct_path_clearly_slower_than_the_relay_is_left_unused() {
    let mut net = on_the_relay(14);
    let before = net.handshakes();
    // The direct path opens, 100 ms slower each way than the relay.
    net.direct_blocked = false;
    net.direct_extra = Duration::from_millis(100);
    net.run_until(30_000);
    for node in [A, B] {
        let snapshot = net.snapshot(node);
        assert_eq!(snapshot.path, Some(PathKind::Relay), "node {node}");
        let declined = snapshot.direct_declined.expect("recorded");
        assert!(
            declined.direct_rtt_ms > declined.relay_rtt_ms + DIRECT_SLOWER_TOLERANCE_MS,
            "{declined:?}"
        );
    }
    // Within the tolerance it is taken (it spares the relay).
    net.direct_extra = Duration::from_millis(2);
    net.run_until(200_000);
    assert_eq!(net.snapshot(A).path, Some(PathKind::Direct));
    assert_eq!(net.snapshot(B).path, Some(PathKind::Direct));
    assert_eq!(net.snapshot(A).direct_declined, None);
    assert_eq!(net.handshakes(), before);
    net.assert_same_session();
}

#[test]
fn a_direct_path_that_turns_slow_gives_the_session_to_the_relay_and_back() {
    let mut net = established(16);
    let before = net.handshakes();
    net.run_until(10_000);
    assert_eq!(net.snapshot(A).path, Some(PathKind::Direct));
    assert_eq!(
        net.count(A, |o| matches!(o, Output::RelayForward(_))),
        0,
        "a healthy direct path costs the relay nothing"
    );
    // The direct path gets 150 ms slower each way while it still answers.
    net.direct_extra = Duration::from_millis(150);
    net.send(A, "before the fallback");
    net.run_until(40_000);
    for node in [A, B] {
        let snapshot = net.snapshot(node);
        assert_eq!(snapshot.path, Some(PathKind::Relay), "node {node}");
        let declined = snapshot.direct_declined.expect("recorded");
        assert!(
            declined.direct_rtt_ms > declined.relay_rtt_ms + FALLBACK_SLOWER_MS,
            "{declined:?}"
        );
    }
    assert_eq!(net.nodes[A].core.counters().direct_fallbacks, 1);
    net.send(A, "over the relay");
    net.run_until(45_000);
    // Fast again: the probes take the direct path back once the hold-down is over.
    net.direct_extra = Duration::ZERO;
    net.run_until(200_000);
    assert_eq!(net.snapshot(A).path, Some(PathKind::Direct));
    assert_eq!(net.snapshot(B).path, Some(PathKind::Direct));
    net.send(A, "direct again");
    net.run_until(201_000);
    assert_eq!(
        net.delivered[B],
        vec![
            b"before the fallback".to_vec(),
            b"over the relay".to_vec(),
            b"direct again".to_vec()
        ]
    );
    assert_eq!(net.handshakes(), before);
    net.assert_same_session();
}

#[test]
fn a_direct_path_slower_only_within_the_margin_keeps_the_session() {
    let mut net = established(17);
    net.run_until(10_000);
    // Slower than the relay, but by less than the fallback margin.
    net.direct_extra = Duration::from_millis(FALLBACK_SLOWER_MS / 2 - 5);
    net.run_until(120_000);
    assert_eq!(net.snapshot(A).path, Some(PathKind::Direct));
    assert_eq!(net.snapshot(B).path, Some(PathKind::Direct));
    assert_eq!(net.nodes[A].core.counters().direct_fallbacks, 0);
}

#[test]
fn one_answer_delayed_as_by_a_lost_packet_keeps_the_direct_path() {
    let mut net = established(19);
    net.run_until(10_000);
    // For one heartbeat interval every frame takes half a second more each way (as a
    // retransmission after a loss delays it); then the path is as fast as before.
    net.direct_extra = Duration::from_millis(500);
    net.run_until(12_000);
    net.direct_extra = Duration::ZERO;
    net.run_until(60_000);
    for node in [A, B] {
        let snapshot = net.snapshot(node);
        assert_eq!(snapshot.path, Some(PathKind::Direct), "node {node}");
        assert_eq!(snapshot.direct_declined, None, "node {node}");
    }
    assert_eq!(net.nodes[A].core.counters().direct_fallbacks, 0);
    assert_eq!(net.nodes[B].core.counters().direct_fallbacks, 0);
}

/// Feeds node A QUIC's counts of `link` at `at_ms`, in KiB sent and lost (as the
/// transport driver samples them while frames arrive).
fn path_sampled(net: &mut Net, at_ms: u64, link: LinkId, path: PathKind, sent: u64, lost: u64) {
    net.run_until(at_ms);
    net.input(
        A,
        Input::Transport(TransportEvent::PathSampled {
            link,
            path,
            sent_bytes: sent * 1024,
            lost_bytes: lost * 1024,
        }),
    );
}

/// The direct link A's session is bound to.
fn bound_link(net: &Net) -> LinkId {
    match net.nodes[A].core.peers[&net.device(B)].bound {
        Some(crate::state::Via::Link(link)) => link,
        other => panic!("not on a direct link: {other:?}"),
    }
}

/// A session settled on a direct path for 10 s: the net, its direct link and a link id
/// for the relay's.
fn settled_direct(seed: u64) -> (Net, LinkId, LinkId) {
    let mut net = established(seed);
    net.run_until(10_000);
    let direct = bound_link(&net);
    (net, direct, LinkId(9_999))
}

#[test]
fn a_direct_path_losing_packets_gives_the_session_to_a_relay_that_loses_fewer() {
    let (mut net, direct, relay) = settled_direct(20);
    let before = net.handshakes();
    path_sampled(&mut net, 10_000, direct, PathKind::Direct, 1_000, 10);
    path_sampled(&mut net, 10_000, relay, PathKind::Relay, 1_000, 10);
    // Over the next 5 s the direct link loses 200 of 1 000 KiB, the relay's 10.
    path_sampled(&mut net, 15_000, direct, PathKind::Direct, 2_000, 210);
    path_sampled(&mut net, 15_000, relay, PathKind::Relay, 2_000, 20);
    net.run_until(30_000);
    let snapshot = net.snapshot(A);
    assert_eq!(snapshot.path, Some(PathKind::Relay));
    let declined = snapshot.direct_declined.expect("recorded");
    assert_eq!(declined.fell_back_with_loss, Some((20, Some(1))));
    assert_eq!(net.nodes[A].core.counters().direct_fallbacks, 1);
    assert_eq!(net.handshakes(), before);
    net.assert_same_session();
}

#[test]
fn a_lossy_direct_path_stays_when_the_relay_loses_as_much_or_too_few_packets_were_sent() {
    for (relay_lost, direct_sent) in [(150, 1_000), (10, 40)] {
        let (mut net, direct, relay) = settled_direct(21);
        path_sampled(&mut net, 10_000, direct, PathKind::Direct, 1_000, 10);
        path_sampled(&mut net, 10_000, relay, PathKind::Relay, 1_000, 0);
        // 20 % lost on the direct link (of too few bytes, in the second run), and
        // 15 % on the relay's (1 % in the second).
        let direct_lost = direct_sent / 5;
        path_sampled(
            &mut net,
            15_000,
            direct,
            PathKind::Direct,
            1_000 + direct_sent,
            10 + direct_lost,
        );
        path_sampled(&mut net, 15_000, relay, PathKind::Relay, 2_000, relay_lost);
        net.run_until(30_000);
        assert_eq!(
            net.snapshot(A).path,
            Some(PathKind::Direct),
            "{relay_lost} {direct_sent}"
        );
        assert_eq!(net.nodes[A].core.counters().direct_fallbacks, 0);
    }
}

#[test]
fn a_fallback_on_trust_is_undone_when_the_relay_turns_out_as_lossy() {
    let (mut net, direct, relay) = settled_direct(22);
    let before = net.handshakes();
    // The relay's link is too idle to be judged: the direct path's 20 % moves the
    // session on trust.
    path_sampled(&mut net, 10_000, direct, PathKind::Direct, 1_000, 0);
    path_sampled(&mut net, 15_000, direct, PathKind::Direct, 2_000, 200);
    net.run_until(20_000);
    assert_eq!(net.snapshot(A).path, Some(PathKind::Relay));
    // Carrying the session, the relay's link loses 15 %: the loss is the device's own,
    // and a direct path is taken again long before the 30 s hold would end.
    path_sampled(&mut net, 20_000, relay, PathKind::Relay, 1_000, 0);
    path_sampled(&mut net, 25_000, relay, PathKind::Relay, 2_000, 150);
    net.run_until(40_000);
    assert_eq!(net.snapshot(A).path, Some(PathKind::Direct));
    assert_eq!(net.handshakes(), before);
    net.assert_same_session();
}

/// A connects to B knowing only an address where B no longer is (and the relay), 10 ms
/// into the connect.
fn connecting_to_a_stale_address(seed: u64) -> Net {
    let mut net = Net::new(seed);
    let peer = net.device(B);
    let stale = addr("10.200.0.2:4433");
    let candidates = vec![
        Candidate {
            endpoint: Endpoint::Direct(stale),
            source: CandidateSource::Configured,
        },
        Candidate {
            endpoint: Endpoint::Relay,
            source: CandidateSource::Relay,
        },
    ];
    net.input(A, Input::Blueprint(BlueprintCompiled { peer, candidates }));
    net.input(
        A,
        Input::Connect(ConnectPeer {
            request: RequestId(100),
            peer,
            transport_only: false,
        }),
    );
    net.run_until(10);
    net
}

/// A hint of `peer`'s `endpoints` the rendezvous server pushes (nobody asked for it),
/// sealed at `issued_at_ms`.
fn pushed_hint(peer: DeviceId, endpoints: Vec<SocketAddr>, issued_at_ms: u64) -> Input {
    Input::Hint(tether_protocol::PeerEndpointHint {
        request: None,
        peer,
        endpoints,
        issued_at_ms,
    })
}

/// The rendezvous server pushes A where B is (a hint A did not ask for); returns it.
fn push_address_of_b(net: &mut Net) -> SocketAddr {
    let real = net.nodes[B].addr;
    let peer = net.device(B);
    net.input(A, pushed_hint(peer, vec![real], 0));
    real
}

/// Whether `output` carries a handshake message 1 through the relay.
fn relays_an_initiation(output: &Output) -> bool {
    let frame = match output {
        Output::RelayForward(forward) => &forward.frame,
        Output::RelayEnqueue(enqueue) => &enqueue.envelope,
        _ => return false,
    };
    matches!(
        tether_protocol::decode(frame),
        Ok(tether_protocol::WireFrame::HandshakeInit(_))
    )
}

#[test]
fn a_pushed_address_during_a_connect_sends_message_1_through_the_relay_at_once() {
    let mut net = connecting_to_a_stale_address(23);
    assert_eq!(
        net.count(A, relays_an_initiation),
        0,
        "the relay's turn is later"
    );
    // A hint the server pushed: B is on the relay now.
    let real = push_address_of_b(&mut net);
    assert_eq!(
        net.count(A, relays_an_initiation),
        1,
        "message 1 went at once"
    );
    net.run_until(240);
    // It ends on the direct path A dialled, after one handshake on each side.
    assert_eq!(net.snapshot(A).path, Some(PathKind::Direct));
    assert_eq!(net.snapshot(A).remote, Some(real));
    assert_eq!(net.snapshot(B).path, Some(PathKind::Direct));
    assert_eq!(net.handshakes(), (1, 1));
    net.assert_same_session();
}

#[test]
fn probes_back_off_while_nothing_direct_answers() {
    let mut net = on_the_relay(15);
    let dials = |net: &Net| {
        net.count(A, |o| {
            matches!(o, Output::Transport(TransportCommand::Dial { .. }))
        })
    };
    let at_9s = dials(&net);
    net.run_until(9_000 + 300_000);
    let dials = dials(&net) - at_9s;
    let candidates = net.snapshot(A).direct_candidates;
    // Every 5 s for five minutes would be 60 rounds; doubling up to 80 s, 6 at most.
    assert!(
        dials <= 6 * candidates,
        "{dials} dials of {candidates} candidates in 300 s while nothing direct answers"
    );
    assert!(dials >= 3, "it keeps looking: {dials} dials");
}

#[test]
fn timers_make_progress_while_the_relay_is_down() {
    // The run loop asserts progress: a timer that stays due forever would trip it.
    let mut net = Net::new(12);
    net.relay_status(false);
    net.direct_blocked = true;
    net.connect(A, false);
    net.run_until(20_000);
    assert_eq!(net.handshakes(), (0, 0));
    assert_eq!(net.count(A, |o| matches!(o, Output::ConnectFailed(_))), 1);
}

#[test]
fn a_connect_waiting_for_the_relay_runs_as_soon_as_it_is_up() {
    let mut net = Net::new(18);
    net.relay_status(false);
    net.direct_blocked = true;
    net.connect(A, false);
    // The relay's turn comes at once (no direct candidate works) and finds it down.
    net.run_until(100);
    let initiations = |net: &Net| net.snapshot(A).handshake_attempts;
    assert_eq!(initiations(&net), 0);
    net.relay_status(true);
    // Not a fallback interval later: at once.
    assert_eq!(
        initiations(&net),
        1,
        "the connect waited for its next relay turn"
    );
    net.run_until(1000);
    net.assert_same_session();
    assert_eq!(net.snapshot(A).path, Some(PathKind::Relay));
    assert_eq!(initiations(&net), 1);
}

#[test]
fn send_refusals_are_typed_and_queue_nothing() {
    use tether_protocol::SendError;
    let mut net = established(13);
    let peer = net.device(B);
    // Unknown peer.
    let result = net.send_message(
        A,
        SendMessage {
            peer: DeviceId([9; 32]),
            channel: ChannelId(1),
            payload: vec![1],
        },
    );
    assert_eq!(result, Err(SendError::UnknownPeer));
    // Too large.
    let max = Limits::default().max_message_len;
    let result = net.send_message(
        A,
        SendMessage {
            peer,
            channel: ChannelId(1),
            payload: vec![0; max + 1],
        },
    );
    assert_eq!(result, Err(SendError::TooLarge { len: max + 1, max }));
    // Queue full: cut B off so nothing is acknowledged, then fill the queue.
    net.direct_blocked = true;
    net.links.clear();
    let limit = Limits::default().max_queued;
    for _ in 0..limit {
        let result = net.send_message(
            A,
            SendMessage {
                peer,
                channel: ChannelId(1),
                payload: vec![1],
            },
        );
        assert!(result.is_ok(), "{result:?}");
    }
    let result = net.send_message(
        A,
        SendMessage {
            peer,
            channel: ChannelId(1),
            payload: vec![1],
        },
    );
    assert_eq!(
        result,
        Err(SendError::QueueFull {
            messages: limit,
            bytes: Limits::default().max_queued_bytes
        })
    );
    assert_eq!(
        net.snapshot(A).queued,
        limit,
        "the refused one was not queued"
    );
}

#[test]
fn a_batch_is_delivered_once_and_in_order() {
    let mut net = established(15);
    let payloads: Vec<Vec<u8>> = (0..40)
        .map(|i| format!("batched {i}").into_bytes())
        .collect();
    let answer = net.send_batch(A, &payloads);
    assert_eq!(answer.refused, None);
    assert_eq!(answer.accepted, (0..40).collect::<Vec<u64>>());
    net.run_until(2000);
    assert_eq!(net.delivered[B], payloads);
}

#[test]
fn a_burst_is_acknowledged_once_per_eight_messages_and_a_lone_message_within_the_ack_delay() {
    use crate::frames::{ACK_DELAY, ACK_EVERY_FRAMES};
    let mut net = established(17);
    net.run_until(1000);
    let acks_before = net.snapshot(B).counters.acks_sent;
    let burst = 40;
    let payloads: Vec<Vec<u8>> = (0..burst)
        .map(|i| format!("burst {i}").into_bytes())
        .collect();
    let answer = net.send_batch(A, &payloads);
    assert_eq!(answer.accepted.len(), burst);
    net.run_until(1500);
    assert_eq!(net.delivered[B], payloads);
    let acks = net.snapshot(B).counters.acks_sent - acks_before;
    // One per eight, and the one that answers the new channel's opening marker.
    let expected = burst as u64 / u64::from(ACK_EVERY_FRAMES) + 1;
    assert_eq!(acks, expected, "one per eight");
    assert_eq!(net.snapshot(A).queued, 0, "all acknowledged");

    // A lone message: its acknowledgement leaves B at most ACK_DELAY after it came.
    net.send(A, "alone");
    let round_trip = LATENCY * 2 + net.direct_extra * 2;
    let acked_by = 1500 + (round_trip + ACK_DELAY).as_millis() as u64;
    net.run_until(acked_by - 1);
    assert_eq!(net.snapshot(A).queued, 1, "not before the delay");
    net.run_until(acked_by);
    assert_eq!(net.snapshot(A).queued, 0, "acknowledged after the delay");
}

#[test]
fn a_batch_beyond_a_full_queue_takes_what_fits_and_hands_the_rest_back_in_order() {
    use tether_protocol::SendError;
    let mut net = established(16);
    // Cut B off so nothing is acknowledged while the queue fills.
    net.direct_blocked = true;
    net.links.clear();
    let limit = Limits::default().max_queued;
    let payloads: Vec<Vec<u8>> = (0..limit + 3)
        .map(|i| (i as u32).to_be_bytes().to_vec())
        .collect();
    let answer = net.send_batch(A, &payloads);
    assert_eq!(answer.accepted, (0..limit as u64).collect::<Vec<u64>>());
    let Some((error, handed_back)) = answer.refused else {
        panic!("the batch was longer than the queue");
    };
    let queue_full = SendError::QueueFull {
        messages: limit,
        bytes: Limits::default().max_queued_bytes,
    };
    assert_eq!(error, queue_full);
    assert_eq!(handed_back, payloads[limit..].to_vec());
    assert_eq!(net.snapshot(A).queued, limit, "nothing refused was queued");
}

#[test]
fn an_unvalidated_address_gets_at_most_three_times_what_it_sent() {
    // B's bound link moves to A's new address (QUIC migration): until A answers B's
    // challenge there, B may send at most 3x the authenticated bytes it got from it,
    // even with a full queue of data waiting.
    let mut net = established(14);
    net.run_until(1000);
    for i in 0..50 {
        net.send(B, &format!("pending {i} {}", "x".repeat(200)));
    }
    let b_link = *net
        .links
        .keys()
        .find(|(n, l)| *n == B && !net.dialled_by[&(*n, *l)])
        .map(|(_, l)| l)
        .unwrap();
    // A's first frame after the move (its migration ping) arrives; everything after it
    // from A is lost, so the challenge is never answered and the address never validates.
    let passed = std::rc::Rc::new(std::cell::Cell::new(0));
    let seen = passed.clone();
    net.drop_if = Some(Box::new(move |from, _| {
        if from != A {
            return false;
        }
        seen.set(seen.get() + 1);
        seen.get() > 1
    }));
    let sent_before = net.outputs[B].len();
    net.move_to(A, "10.9.0.1:4433");
    net.migration_ping(A);
    net.run_until(3000);
    let state = net.nodes[B].core.links.get(b_link).unwrap();
    assert!(!state.validated, "the address never answered the challenge");
    let sent: usize = net.outputs[B][sent_before..]
        .iter()
        .filter_map(|o| match o {
            Output::Transport(TransportCommand::Transmit { link, frame }) if *link == b_link => {
                Some(frame.len())
            }
            _ => None,
        })
        .sum();
    assert!(state.bytes_in > 0);
    assert!(
        sent as u64 <= 3 * state.bytes_in,
        "sent {sent} bytes to an unvalidated address that sent {}",
        state.bytes_in
    );
    assert!(net.nodes[B].core.counters().amplification_blocked > 0);
}

#[test]
fn a_ping_from_before_the_last_handshake_is_stale() {
    use tether_protocol::{EvictSession, EvictionReason};
    let mut net = established(15);
    // A announces a move; the relay copy is held back (as a queue might hold it).
    net.direct_blocked = true;
    net.links.clear();
    net.migration_ping(A);
    let peer = net.device(B);
    let ping = tether_protocol::SessionFrame::MigrationPing(
        net.nodes[A].core.peers[&peer]
            .migration
            .as_ref()
            .unwrap()
            .ping
            .clone(),
    );
    let held = net.nodes[A].core.seal_wire(peer, &ping).unwrap();
    // Both evict and recover: a new epoch.
    net.direct_blocked = false;
    for node in [A, B] {
        let peer = net.device(1 - node);
        net.input(
            node,
            Input::Evict(EvictSession {
                peer,
                reason: EvictionReason::MigrationWindowExpired,
            }),
        );
    }
    net.connect(A, false);
    net.run_until(3000);
    assert_eq!(net.snapshot(B).epoch, Some(2));
    let stale_before = net.nodes[B].core.counters().stale_migration_pings;
    let pings_before = net.count(B, |o| matches!(o, Output::InboundMigrationPing(_)));
    let from = net.device(A);
    net.input(
        B,
        Input::Relay(RelayDelivered {
            from,
            envelope: held,
        }),
    );
    assert_eq!(
        net.nodes[B].core.counters().stale_migration_pings,
        stale_before + 1
    );
    assert_eq!(
        net.count(B, |o| matches!(o, Output::InboundMigrationPing(_))),
        pings_before
    );
}

#[test]
fn a_failed_dial_reports_its_candidates_as_failed() {
    // ConnectionBlueprint demotes addresses that fail repeatedly; DirectConnection tells
    // it which ones did.
    let mut net = Net::new(16);
    net.direct_blocked = true;
    net.connect(A, false);
    net.run_until(1000);
    let b_addr = net.nodes[B].addr;
    let failed = net.outputs[A]
        .iter()
        .filter(|o| {
            matches!(o, Output::PathMeasured(m)
                if m.endpoint == Endpoint::Direct(b_addr) && m.rtt_ms.is_none())
        })
        .count();
    // The connect's dial, then the relayed session's probes: each one failed.
    assert!(failed >= 1, "{failed}");
    let dials = net.outputs[A]
        .iter()
        .filter(|o| matches!(o, Output::Transport(TransportCommand::Dial { .. })))
        .count();
    assert_eq!(failed, dials, "one failure report per failed dial");
}

#[test]
fn an_accepted_link_nobody_claims_is_closed_and_a_claimed_one_is_kept() {
    let mut net = established(15);
    net.run_until(1000);
    // A client that completes QUIC and says nothing, next to the established session.
    let silent = LinkId(9_001);
    net.input(
        B,
        Input::Transport(TransportEvent::LinkUp {
            request: None,
            link: silent,
            path: PathKind::Direct,
            remote: Some(addr("192.0.2.99:5000")),
        }),
    );
    let closed = |net: &Net, link| {
        net.count(
            B,
            |o| matches!(o, Output::Transport(TransportCommand::Close { link: l }) if *l == link),
        )
    };
    let deadline = Limits::default().unclaimed_link_close_after;
    let deadline_ms = u64::try_from(deadline.as_millis()).unwrap();
    net.run_until(1000 + deadline_ms - 1);
    assert_eq!(closed(&net, silent), 0, "not before its deadline");
    net.run_until(1000 + deadline_ms + 1);
    assert_eq!(closed(&net, silent), 1, "closed at its deadline");
    assert_eq!(net.nodes[B].core.counters().unclaimed_links_closed, 1);
    // The session's own links were claimed at once: none of them closed.
    let session_links_closed = net.count(
        B,
        |o| matches!(o, Output::Transport(TransportCommand::Close { link }) if *link != silent),
    );
    assert_eq!(session_links_closed, 0);
    assert_eq!(net.snapshot(B).path, Some(PathKind::Direct));
}

#[test]
fn a_replayed_initiation_flood_costs_a_bounded_number_of_responses() {
    let mut net = Net::new(16);
    // Capture A's first handshake initiation on its way to B.
    net.connect(A, false);
    net.run_until(100);
    let initiation = net.outputs[A]
        .iter()
        .find_map(|o| match o {
            Output::Transport(TransportCommand::Transmit { frame, .. })
                if matches!(
                    tether_protocol::decode(frame),
                    Ok(tether_protocol::WireFrame::HandshakeInit(_))
                ) =>
            {
                Some(frame.clone())
            }
            _ => None,
        })
        .expect("A sent a handshake initiation");
    // An attacker replays it a thousand times within one second on a link of its own.
    let link = LinkId(9_002);
    net.input(
        B,
        Input::Transport(TransportEvent::LinkUp {
            request: None,
            link,
            path: PathKind::Direct,
            remote: Some(addr("192.0.2.66:5000")),
        }),
    );
    let before = net.nodes[B].core.counters();
    for _ in 0..1000 {
        net.input(
            B,
            Input::Transport(TransportEvent::FrameReceived {
                link,
                frame: initiation.clone(),
            }),
        );
    }
    let after = net.nodes[B].core.counters();
    let answered = (after.replayed_initiations - before.replayed_initiations)
        + (after.refused_handshakes - before.refused_handshakes);
    let limited = after.rate_limited_initiations - before.rate_limited_initiations;
    assert!(
        answered <= 8,
        "at most a burst of initiations reach the Diffie-Hellman work: {answered}"
    );
    assert!(limited >= 990, "the rest is dropped before it: {limited}");
    // An initiation for a session B does not hold is dropped before any work too.
    let mut foreign = tether_protocol::decode(&initiation).unwrap();
    if let tether_protocol::WireFrame::HandshakeInit(message) = &mut foreign {
        message.session = tether_protocol::SessionId::from_random_bytes([7; 16]);
    }
    let unknown_before = net.nodes[B].core.counters().unknown_device_handshakes;
    net.input(
        B,
        Input::Transport(TransportEvent::FrameReceived {
            link,
            frame: tether_protocol::encode(&foreign).unwrap(),
        }),
    );
    assert_eq!(
        net.nodes[B].core.counters().unknown_device_handshakes,
        unknown_before + 1
    );
}

#[test]
fn a_hint_that_comes_during_a_connect_is_dialled_at_once() {
    let mut net = connecting_to_a_stale_address(18);
    // The rendezvous server tells A where B is while the stale address is still being
    // dialled (this test network fails that dial after 20 ms; real ones time out).
    let real = push_address_of_b(&mut net);
    let dialled_now = net.outputs[A].iter().rev().find_map(|o| match o {
        Output::Transport(TransportCommand::Dial { addrs, .. }) => Some(addrs.clone()),
        _ => None,
    });
    assert_eq!(dialled_now, Some(vec![real]), "dialled on its own, at once");
    net.run_until(240);
    assert_eq!(net.snapshot(A).path, Some(PathKind::Direct));
    assert_eq!(net.snapshot(A).remote, Some(real));
    assert_eq!(net.handshakes(), (1, 1));
}

#[test]
fn a_hint_older_than_what_the_peer_said_itself_is_ignored() {
    let mut net = established(19);
    net.run_until(1000);
    let old = net.nodes[B].addr;
    net.move_to(B, "10.9.0.2:4433");
    net.migration_ping(B);
    net.run_until(3000);
    let moved = addr("10.9.0.2:4433");
    let peer = net.device(B);
    let announced = |net: &Net| {
        net.outputs[A]
            .iter()
            .rev()
            .find_map(|o| match o {
                Output::PeerAnnounced(m) if m.peer == peer => Some(m.endpoints.clone()),
                _ => None,
            })
            .unwrap()
    };
    assert_eq!(announced(&net), vec![moved]);
    // The rendezvous server still holds B's hint from before the move.
    let hint = |issued_at_ms| pushed_hint(peer, vec![old], issued_at_ms);
    let sealed_before_the_move = 1_700_000_000_000 + 500;
    net.input(A, hint(sealed_before_the_move));
    assert_eq!(
        announced(&net),
        vec![moved],
        "the stale hint changed nothing"
    );
    assert_eq!(net.nodes[A].core.counters().stale_hints, 1);
    // One sealed later is the peer's news.
    net.input(A, hint(1_700_000_000_000 + 10_000));
    assert_eq!(announced(&net), vec![old]);
}

#[test]
fn the_newest_announcement_is_dialled_before_the_blueprint_and_passed_on_once() {
    let mut net = established(17);
    net.run_until(1000);
    let peer = net.device(A);
    let hinted = addr("203.0.113.9:4433");
    let hint = |net: &mut Net| net.input(B, pushed_hint(peer, vec![hinted], 0));
    hint(&mut net);
    let announced = |net: &Net| {
        net.count(B, |o| {
            matches!(o, Output::PeerAnnounced(m)
                if m.endpoints == vec![hinted] && m.source == CandidateSource::Rendezvous)
        })
    };
    let changed = |net: &Net| {
        net.count(
            B,
            |o| matches!(o, Output::PeerEndpointsChanged(m) if m.hinted && m.peer == peer),
        )
    };
    assert_eq!((announced(&net), changed(&net)), (1, 1));
    // The same hint again is no news.
    hint(&mut net);
    assert_eq!((announced(&net), changed(&net)), (1, 1));
    // A connect dials the announcement first, then the blueprint's order.
    net.connect(B, true);
    let dial = net.outputs[B].iter().rev().find_map(|o| match o {
        Output::Transport(TransportCommand::Dial { addrs, .. }) => Some(addrs.clone()),
        _ => None,
    });
    assert_eq!(dial, Some(vec![hinted, net.nodes[A].addr]));
}

#[test]
fn a_send_the_session_cannot_carry_is_reported_once_until_it_can() {
    let mut net = Net::new(18);
    let waiting = |net: &Net| net.count(A, |o| matches!(o, Output::SendWaiting(_)));
    // No session yet: the first send says so, the next ones do not repeat it.
    net.send(A, "one");
    net.send(A, "two");
    assert_eq!(waiting(&net), 1);
    net.connect(A, false);
    net.run_until(500);
    net.assert_same_session();
    net.send(A, "three");
    assert_eq!(
        waiting(&net),
        1,
        "a session that carries data waits for nothing"
    );
    net.run_until(1000);
    assert_eq!(net.delivered[B].len(), 3);
}

#[test]
fn a_goodbye_rides_in_the_link_close_and_the_peer_hears_it_as_closed() {
    let mut net = established(19);
    net.run_until(1000);
    let told = net.nodes[A].core.close_sessions();
    net.drain(A);
    assert_eq!(told, 1);
    net.run_until(1100);
    let closed = |net: &Net| {
        net.count(B, |o| {
            matches!(o, Output::PeerReset(r) if r.reason == tether_protocol::ResetReason::Closed)
        })
    };
    assert_eq!(closed(&net), 1);
    // A replayed goodbye is refused by the replay window: nothing more is heard.
    let replayed = net.outputs[A].iter().rev().find_map(|o| match o {
        Output::Transport(TransportCommand::Farewell { frame, .. }) => Some(frame.clone()),
        _ => None,
    });
    let relay_from = net.device(A);
    net.input(
        B,
        Input::Relay(RelayDelivered {
            from: relay_from,
            envelope: replayed.unwrap(),
        }),
    );
    assert_eq!(closed(&net), 1);
}

#[test]
fn a_journalling_receiver_acks_only_what_its_store_committed() {
    let mut net = established(20);
    net.nodes[B].core.journal = true;
    net.send(A, "kept");
    net.run_until(1000);
    assert_eq!(net.delivered[B].len(), 1);
    let received = net.outputs[B]
        .iter()
        .filter(|o| {
            matches!(
                o,
                Output::Journal(JournalEntry::Received {
                    next_expected: 1,
                    ..
                })
            )
        })
        .count();
    assert_eq!(received, 1, "the new position is journalled");
    // Not durable yet: A must keep the message (B could forget it delivered it).
    assert_eq!(net.snapshot(A).queued, 1);
    let emitted = net.nodes[B].core.journal_emitted;
    net.input(
        B,
        Input::JournalCommitted(tether_protocol::JournalCommitted { through: emitted }),
    );
    net.run_until(1200);
    assert_eq!(net.snapshot(A).queued, 0, "released once committed");
    assert_eq!(net.delivered[B].len(), 1);
}

/// A short rekey age for the rekey scenarios (the default is ten minutes).
const TEST_REKEY_AFTER: Duration = Duration::from_secs(10);

fn rekey_limits() -> Limits {
    Limits {
        rekey_after: TEST_REKEY_AFTER,
        ..Limits::default()
    }
}

impl Net {
    /// Presence's answer on `node`: whether a rekey may run (the session is Ready).
    fn allow_rekey(&mut self, node: usize, allowed: bool) {
        let peer = self.device(1 - node);
        self.note(&format!("{} AllowRekey {allowed}", Self::name(node)));
        self.input(node, Input::AllowRekey(AllowRekey { peer, allowed }));
    }

    fn epochs(&self) -> (Option<u64>, Option<u64>) {
        (self.snapshot(A).epoch, self.snapshot(B).epoch)
    }

    fn rekey_reports(&self, node: usize) -> usize {
        self.count(node, |o| matches!(o, Output::SessionReady(r) if r.rekey))
    }
}

/// An established pair whose Presence allows rekeys on both sides (both Ready).
fn established_for_rekey(seed: u64, limits: Limits) -> Net {
    let mut net = Net::with_limits(seed, limits);
    net.connect(A, false);
    net.run_until(500);
    net.assert_same_session();
    net.allow_rekey(A, true);
    net.allow_rekey(B, true);
    net
}

#[test]
fn a_rekey_after_the_age_limit_replaces_only_the_keys() {
    let mut net = established_for_rekey(40, rekey_limits());
    let before = net.snapshot(A);
    // Idle past the limit: heartbeats flow, but no message, so no rekey.
    net.run_until(12_000);
    assert_eq!(
        net.epochs(),
        (Some(1), Some(1)),
        "an idle session keeps its keys"
    );
    net.trace.clear();
    net.send(A, "first after the limit");
    net.run_until(12_500);
    net.assert_same_session();
    assert_eq!(net.epochs(), (Some(2), Some(2)));
    let after = net.snapshot(A);
    assert_ne!(after.peer_secret, before.peer_secret, "a new PeerSecret");
    assert_eq!(after.path, before.path, "the path is untouched");
    assert_eq!(after.remote, before.remote);
    assert_eq!(net.handshakes(), (2, 2), "two completed generations each");
    // Both sides aged together and the message reached both: their rekeys may cross.
    assert!(net.snapshot(A).handshake_attempts >= 2);
    assert_eq!(net.snapshot(A).counters.rekeys, 1);
    assert_eq!(net.snapshot(B).counters.rekeys, 1);
    assert_eq!((net.rekey_reports(A), net.rekey_reports(B)), (1, 1));
    assert_eq!(net.delivered[B], vec![b"first after the limit".to_vec()]);
    insta::assert_snapshot!(net.trace.join("\n"));
}

#[test]
fn frames_in_flight_under_the_old_keys_are_delivered_once_across_a_rekey() {
    let mut net = established_for_rekey(41, rekey_limits());
    net.run_until(11_000);
    // A stream both ways, started just as the rekey becomes due: the first messages
    // go under the old keys, the rest under the new ones, and the old ones that
    // arrive after the commit still open (the ring keeps the previous generation).
    for i in 0..200 {
        net.send(A, &format!("a{i}"));
        net.send(B, &format!("b{i}"));
        net.run_until(11_000 + 5 * (i + 1));
    }
    net.run_until(14_000);
    net.assert_same_session();
    assert_eq!(net.epochs(), (Some(2), Some(2)));
    let expect = |p: &str| {
        (0..200)
            .map(|i| format!("{p}{i}").into_bytes())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        net.delivered[B],
        expect("a"),
        "every message once, in order"
    );
    assert_eq!(net.delivered[A], expect("b"));
    assert_eq!(net.snapshot(A).counters.duplicates, 0);
    assert_eq!(net.snapshot(B).counters.duplicates, 0);
}

#[test]
fn crossing_rekeys_converge_on_one_new_peer_secret() {
    for seed in 0..20 {
        let mut net = established_for_rekey(50 + seed, rekey_limits());
        let before = net.snapshot(A).peer_secret;
        net.run_until(11_000);
        // Both due, both send: each starts a rekey, 0..19 ms apart.
        net.send(A, "a");
        net.run_until(11_000 + seed);
        net.send(B, "b");
        net.run_until(13_000);
        net.assert_same_session();
        assert_eq!(net.epochs(), (Some(2), Some(2)), "seed {seed}");
        assert_ne!(net.snapshot(A).peer_secret, before, "seed {seed}");
        assert_eq!(net.handshakes(), (2, 2), "seed {seed}");
        assert_eq!(
            (net.rekey_reports(A), net.rekey_reports(B)),
            (1, 1),
            "seed {seed}"
        );
        assert_eq!(net.delivered[B], vec![b"a".to_vec()], "seed {seed}");
        assert_eq!(net.delivered[A], vec![b"b".to_vec()], "seed {seed}");
    }
}

#[test]
fn a_rekey_starts_after_the_volume_limit() {
    let limits = Limits {
        rekey_after_messages: 100,
        ..Limits::default()
    };
    let mut net = established_for_rekey(42, limits);
    for i in 0..60 {
        net.send(A, &format!("m{i}"));
        net.run_until(600 + 10 * i);
    }
    assert_eq!(net.epochs(), (Some(1), Some(1)), "below the limit");
    for i in 60..150 {
        net.send(A, &format!("m{i}"));
        net.run_until(600 + 10 * i);
    }
    net.run_until(3_000);
    net.assert_same_session();
    assert_eq!(
        net.epochs(),
        (Some(2), Some(2)),
        "one rekey after 100 frames"
    );
    assert_eq!(net.delivered[B].len(), 150);
}

#[test]
fn no_rekey_runs_or_is_answered_unless_allowed_and_a_refused_one_commits_nothing() {
    let mut net = established_for_rekey(43, rekey_limits());
    // B is not Ready (say it migrates): A's rekey goes unanswered, then gives up.
    net.allow_rekey(B, false);
    net.run_until(11_000);
    net.send(A, "due");
    net.run_until(11_500);
    assert!(net.snapshot(B).counters.rekeys_refused >= 1);
    assert_eq!(net.epochs(), (Some(1), Some(1)));
    assert_eq!(net.handshakes(), (1, 1));
    // A's own migration starts mid-rekey: it is abandoned. B, Ready again, would
    // answer a late message 1, but A no longer has an initiation to confirm.
    net.allow_rekey(B, true);
    net.allow_rekey(A, false);
    net.run_until(14_000);
    assert_eq!(
        net.epochs(),
        (Some(1), Some(1)),
        "nothing commits while refused"
    );
    assert_eq!(net.handshakes(), (1, 1));
    // Allowed again: the due rekey runs.
    net.allow_rekey(A, true);
    net.send(A, "again");
    net.run_until(23_000);
    net.send(A, "later");
    net.run_until(26_000);
    net.assert_same_session();
    assert_eq!(net.epochs(), (Some(2), Some(2)));
    assert_eq!(net.handshakes(), (2, 2));
    let expect: Vec<Vec<u8>> = ["due", "again", "later"]
        .iter()
        .map(|m| m.as_bytes().to_vec())
        .collect();
    assert_eq!(net.delivered[B], expect);
}

#[test]
fn a_move_during_a_rekey_runs_no_handshake_of_its_own() {
    let mut net = established_for_rekey(44, rekey_limits());
    net.run_until(11_000);
    net.send(A, "due");
    // The rekey starts at A's next input (B's ack); its message 1 is on its way to B
    // when A moves: the rekey is given up at once.
    let mut at = 11_000;
    while net.snapshot(A).handshake_attempts < 2 {
        at += 1;
        assert!(at < 11_200, "the rekey did not start");
        net.run_until(at);
    }
    net.run_until(at + 1);
    let before = (net.handshakes(), fingerprints(&net));
    net.move_to(A, "10.9.0.1:4433");
    assert!(
        net.snapshot(A).counters.rekeys == 0,
        "A's own rekey is abandoned"
    );
    net.send(A, "during");
    net.migration_ping(A);
    net.run_until(13_000);
    // B's crossing rekey, which A had answered just before it moved, may commit during
    // the migration (B had confirmed it): that is the only handshake, a rekey that
    // changes only the keys. The migration runs none of its own and completes.
    net.assert_same_session();
    let during = net.handshakes();
    assert!(
        during == before.0 || during == (before.0 .0 + 1, before.0 .1 + 1),
        "{during:?}"
    );
    assert_eq!(net.snapshot(A).counters.rekeys, during.0 - before.0 .0);
    assert_eq!(net.snapshot(B).remote, Some(addr("10.9.0.1:4433")));
    assert_eq!(net.delivered[B], vec![b"due".to_vec(), b"during".to_vec()]);
    // Presence allows it again once Ready: the next message rekeys, and the next
    // migration proves itself with the new PeerSecret.
    net.allow_rekey(A, true);
    net.send(A, "after");
    net.run_until(14_000);
    net.assert_same_session();
    assert_eq!(net.epochs(), (Some(2), Some(2)));
    let rekeyed = (net.handshakes(), fingerprints(&net));
    assert_ne!(rekeyed.1, before.1);
    net.allow_rekey(A, false);
    net.move_to(A, "10.9.0.2:4433");
    net.migration_ping(A);
    net.run_until(16_000);
    net.assert_same_session();
    assert_eq!(
        net.handshakes(),
        rekeyed.0,
        "no handshake in the second migration"
    );
    assert_eq!(
        fingerprints(&net),
        rekeyed.1,
        "the new PeerSecret carried it"
    );
    assert_eq!(net.snapshot(B).remote, Some(addr("10.9.0.2:4433")));
}

#[test]
fn a_peer_opens_at_most_the_bounded_number_of_channels() {
    let mut net = established(21);
    let peer = net.device(B);
    let extra = 6;
    let total = crate::MAX_INBOUND_CHANNELS as u32 + extra;
    for channel in 0..total {
        let sent = net.send_message(
            A,
            SendMessage {
                peer,
                channel: ChannelId(channel),
                payload: vec![1],
            },
        );
        assert!(sent.is_ok(), "{sent:?}");
    }
    net.run_until(3000);
    let b = &net.nodes[B].core;
    let a_device = net.device(A);
    assert_eq!(
        b.peers[&a_device].inbound.len(),
        crate::MAX_INBOUND_CHANNELS
    );
    assert_eq!(net.delivered[B].len(), crate::MAX_INBOUND_CHANNELS);
    assert!(
        b.counters().channels_refused >= u64::from(extra),
        "{:?}",
        b.counters()
    );
}

#[test]
fn an_operator_ping_is_answered_by_the_peers_pong_and_is_no_heartbeat() {
    let mut net = established(31);
    let peer = net.device(B);
    let before = net.snapshot(A).rtt_ms;
    let sent = net.nodes[A].core.operator_ping(net.now, peer).unwrap();
    assert_eq!(sent.path, PathKind::Direct);
    assert!(sent.remote.is_some());
    net.drain(A);
    net.run_until(600);
    let answers: Vec<_> = net.outputs[A]
        .iter()
        .filter_map(|o| match o {
            Output::PingAnswered(answer) => Some(*answer),
            _ => None,
        })
        .collect();
    assert_eq!(answers.len(), 1, "one answer");
    assert_eq!(answers[0].id, sent.id);
    assert_eq!(answers[0].peer, peer);
    assert_eq!(answers[0].path, PathKind::Direct);
    assert_eq!(answers[0].remote, sent.remote);
    assert!(answers[0].rtt >= LATENCY * 2, "{:?}", answers[0].rtt);
    // The heartbeat's state is the heartbeat's alone.
    assert_eq!(net.snapshot(A).rtt_ms, before);
    assert!(net.snapshot(A).last_received.is_some());
    assert!(net.snapshot(A).last_handshake.is_some());
    assert_eq!(net.snapshot(A).path_validated, Some(true));
    // No session: refused at once, nothing sent.
    let mut lone = Net::new(32);
    let other = lone.device(B);
    assert_eq!(
        lone.nodes[A].core.operator_ping(lone.now, other),
        Err(crate::PingRefused::NoSession)
    );
    assert_eq!(
        lone.nodes[A]
            .core
            .operator_ping(lone.now, DeviceId([0xEE; 32])),
        Err(crate::PingRefused::UnknownPeer)
    );
}

#[test]
fn operator_pings_beyond_the_bound_expire_the_oldest() {
    let mut net = established(33);
    let peer = net.device(B);
    // Sent at once, before any answer can come back.
    let first = net.nodes[A].core.operator_ping(net.now, peer).unwrap();
    for _ in 0..crate::MAX_PINGS_PER_PEER {
        net.nodes[A].core.operator_ping(net.now, peer).unwrap();
    }
    net.drain(A);
    let expired: Vec<u64> = net.outputs[A]
        .iter()
        .filter_map(|o| match o {
            Output::PingExpired { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(expired, vec![first.id]);
}

#[test]
fn acknowledged_messages_are_counted_once() {
    let mut net = established(34);
    for i in 0..5 {
        net.send(A, &format!("m{i}"));
    }
    net.run_until(2000);
    let a = net.snapshot(A);
    assert_eq!(a.counters.sent, 5);
    assert_eq!(a.counters.acknowledged, 5);
    assert_eq!(net.snapshot(B).counters.delivered, 5);
}

/// A round trip longer than the heartbeat interval (a loaded node answering late, a
/// slow path) is not a dead path: an answer to any of the last `missed_heartbeats`
/// pings shows it alive. When only the newest ping's answer counted, every heartbeat
/// was missed and the session was reported dead after three intervals, though every
/// ping was answered.
#[test]
fn answers_slower_than_the_heartbeat_interval_keep_the_path_alive() {
    let mut net = established(11);
    // The relay is down (nothing to fall back to) and the direct path turns slow:
    // 2.6 s round trips against a 2 s heartbeat interval.
    net.relay_status(false);
    net.direct_extra = Duration::from_millis(1280);
    let start = net.ms() as u64;
    net.run_until(start + 30_000);
    for node in [A, B] {
        let dead = net.count(
            node,
            |o| matches!(o, Output::Liveness(report) if !report.alive),
        );
        assert_eq!(dead, 0, "{} reported its path dead", Net::name(node));
        assert!(net.snapshot(node).rtt_ms.unwrap_or(0) >= 2_000);
    }
}
