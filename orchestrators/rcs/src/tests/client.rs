//! The relay client: connection states, buffering, push acknowledgement, bad input.

use super::{Keys, Names};
use crate::client::{
    ClientInput, ClientOutput, RelayClient, RelayClientConfig, DEFAULT_FIRST_DIAL_REQUEST,
};
use crate::ConnectionState;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tether_crypto::{server_proof, verify_server_auth};
use tether_protocol::shell::SansIoCore;
use tether_protocol::{
    DeviceId, LinkBound, LinkId, PathKind, RelayEnqueue, RelayForward, RelayMessage, RelayPoll,
    RendezvousMessage, RequestId, ServerRefusal, TransportCommand, TransportEvent, WireFrame,
};

/// The channel binding of every link in these tests.
const BINDING: [u8; 32] = [0xB1; 32];

fn server_addr() -> SocketAddr {
    "203.0.113.10:4433".parse().unwrap()
}

/// The address the genuine server says it sees this device at.
fn observed() -> SocketAddr {
    "198.51.100.20:40000".parse().unwrap()
}

fn dial(n: u64) -> RequestId {
    RequestId(DEFAULT_FIRST_DIAL_REQUEST.0 + n)
}

struct Driver {
    keys: Keys,
    names: Names,
    client: RelayClient,
    t0: Instant,
    now: Instant,
    trace: Vec<String>,
    outputs: Vec<ClientOutput>,
}

impl Driver {
    fn new(tune: impl FnOnce(&mut RelayClientConfig)) -> Self {
        let keys = Keys::new();
        let mut config = RelayClientConfig::new(
            keys.device(1).clone(),
            *keys.server.public(),
            server_addr(),
            ChaCha8Rng::seed_from_u64(7).get_seed(),
        );
        config.enqueue_ttl = Duration::from_secs(60);
        config.fetch_batch = 16;
        tune(&mut config);
        let t0 = Instant::now();
        Self {
            names: keys.names(),
            keys,
            client: RelayClient::new(config, t0),
            t0,
            now: t0,
            trace: Vec::new(),
            outputs: Vec::new(),
        }
    }

    fn ms(&self) -> u128 {
        (self.now - self.t0).as_millis()
    }

    fn at(&mut self, ms: u64) {
        self.advance_to(ms);
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

    fn describe(&self, output: &ClientOutput) -> String {
        match output {
            ClientOutput::Transport(TransportCommand::Dial { request, addrs }) => format!(
                "Dial d{} {addrs:?}",
                request.0 - DEFAULT_FIRST_DIAL_REQUEST.0
            ),
            ClientOutput::Transport(TransportCommand::Transmit { link, frame }) => {
                let text = match tether_protocol::decode(frame) {
                    Ok(WireFrame::Relay(m)) => self.names.relay(&m),
                    other => format!("{other:?}"),
                };
                format!("Transmit l{} {text}", link.0)
            }
            ClientOutput::Transport(TransportCommand::Close { link }) => {
                format!("Close l{}", link.0)
            }
            ClientOutput::Transport(TransportCommand::Farewell { link, .. }) => {
                format!("Farewell l{}", link.0)
            }
            ClientOutput::Delivered(m) => format!(
                "Delivered from={} env[{}B]",
                self.names.of(&m.from),
                m.envelope.len()
            ),
            ClientOutput::EnqueueResult(m) => format!("EnqueueResult {} {:?}", m.request, m.result),
            ClientOutput::Status(m) => format!("Status connected={}", m.connected),
            ClientOutput::Rendezvous(m) => format!("Rendezvous {m:?}"),
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

    fn start(&mut self) {
        self.input("Start".into(), ClientInput::Start);
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
        self.input(
            format!(
                "LinkUp d{} l{link}",
                request.0 - DEFAULT_FIRST_DIAL_REQUEST.0
            ),
            ClientInput::Transport(TransportEvent::LinkUp {
                request: Some(request),
                link: LinkId(link),
                path: PathKind::Direct,
                remote: Some(server_addr()),
            }),
        );
    }

    fn server(&mut self, link: u64, message: RelayMessage) {
        let label = format!("l{link} {}", self.names.relay(&message));
        let frame = tether_protocol::encode(&WireFrame::Relay(message)).unwrap();
        self.input(
            label,
            ClientInput::Transport(TransportEvent::FrameReceived {
                link: LinkId(link),
                frame,
            }),
        );
    }

    fn raw(&mut self, link: u64, frame: Vec<u8>) {
        self.input(
            format!("l{link} bytes[{}B]", frame.len()),
            ClientInput::Transport(TransportEvent::FrameReceived {
                link: LinkId(link),
                frame,
            }),
        );
    }

    fn link_down(&mut self, link: u64) {
        self.input(
            format!("LinkDown l{link}"),
            ClientInput::Transport(TransportEvent::LinkDown {
                link: LinkId(link),
                reason: "test".into(),
            }),
        );
    }

    fn enqueue(&mut self, request: u64, to: usize, len: usize) {
        let to_id = self.keys.id(to);
        self.input(
            format!("Enqueue r{request} to=p{to} env[{len}B]"),
            ClientInput::Enqueue(RelayEnqueue {
                request: RequestId(request),
                to: to_id,
                envelope: vec![request as u8; len],
            }),
        );
    }

    /// The genuine server's challenge.
    fn challenge(&self, nonce: [u8; 32]) -> RelayMessage {
        RelayMessage::Challenge {
            nonce,
            server_key: *self.keys.server.public().as_bytes(),
        }
    }

    /// The genuine server's Welcome after `challenge(nonce)`.
    fn welcome(&self, nonce: [u8; 32]) -> RelayMessage {
        let device = self.keys.device(1).public();
        RelayMessage::Welcome {
            proof: server_proof(&self.keys.server, device, &nonce, &BINDING).to_vec(),
            observed: Some(observed()),
        }
    }

    /// Brings the client from Idle to Connected on `link`.
    fn connect(&mut self, link: u64) {
        self.start();
        self.link_up(dial(0), link);
        self.server(link, self.challenge([3; 32]));
        self.server(link, self.welcome([3; 32]));
        assert!(self.client.is_connected());
    }

    /// The relay messages transmitted so far.
    fn transmitted(&self) -> Vec<RelayMessage> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                ClientOutput::Transport(TransportCommand::Transmit { frame, .. }) => {
                    match tether_protocol::decode(frame) {
                        Ok(WireFrame::Relay(m)) => Some(m),
                        _ => None,
                    }
                }
                _ => None,
            })
            .collect()
    }

    fn results(&self) -> Vec<(RequestId, Result<(), String>)> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                ClientOutput::EnqueueResult(r) => Some((r.request, r.result.clone())),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn client_trace_from_start_to_redial() {
    let mut d = Driver::new(|_| {});
    // Buffered before the connection exists.
    d.enqueue(1, 2, 40);
    d.start();
    d.at(20);
    d.link_up(dial(0), 1);
    d.at(30);
    d.server(1, d.challenge([9; 32]));
    d.at(40);
    d.server(1, d.welcome([9; 32]));
    d.at(50);
    d.server(1, RelayMessage::Enqueued { request: 1 });
    d.at(60);
    let p2 = d.keys.id(2);
    d.server(
        1,
        RelayMessage::Push {
            from: p2,
            envelope_id: 5,
            envelope: vec![0; 33],
        },
    );
    d.at(70);
    d.server(
        1,
        RelayMessage::Forwarded {
            from: p2,
            frame: vec![0; 21],
        },
    );
    d.at(80);
    d.input(
        "Poll".into(),
        ClientInput::Poll(RelayPoll {
            request: RequestId(99),
        }),
    );
    // An enqueue goes out, and the link dies before its answer.
    d.enqueue(2, 2, 12);
    d.at(100);
    d.link_down(1);
    d.enqueue(3, 2, 12);
    d.input(
        "Forward to=p2 frame[10B]".into(),
        ClientInput::Forward(RelayForward {
            to: p2,
            frame: vec![0; 10],
        }),
    );
    d.at(2_000);
    // The first redial fails: the next backoff is longer.
    d.input(
        "DialFailed d1".into(),
        ClientInput::Transport(TransportEvent::DialFailed {
            request: dial(1),
            reason: "unreachable".into(),
        }),
    );
    d.at(5_000);
    d.link_up(dial(2), 2);
    d.server(2, d.challenge([8; 32]));
    d.server(2, d.welcome([8; 32]));
    insta::assert_snapshot!(d.trace.join("\n"));

    // The proof it sent verifies at the server for the server's nonce.
    let proofs: Vec<Vec<u8>> = d
        .transmitted()
        .into_iter()
        .filter_map(|m| match m {
            RelayMessage::Authenticate { device, proof, .. } => {
                assert_eq!(device, d.keys.id(1));
                Some(proof)
            }
            _ => None,
        })
        .collect();
    assert_eq!(proofs.len(), 2);
    assert!(verify_server_auth(
        &d.keys.server,
        d.keys.device(1).public(),
        &[9; 32],
        &BINDING,
        &proofs[0]
    ));
    // The envelope in flight at the link loss (r2) and the buffered one (r3) were sent
    // again after the second Welcome, in order; r1 was answered once.
    let enqueued: Vec<u8> = d
        .transmitted()
        .into_iter()
        .filter_map(|m| match m {
            RelayMessage::Enqueue { envelope, .. } => Some(envelope[0]),
            _ => None,
        })
        .collect();
    assert_eq!(enqueued, vec![1, 2, 2, 3]);
    assert_eq!(d.results(), vec![(RequestId(1), Ok(()))]);
    assert_eq!(d.client.counters().forwards_dropped, 1);
    assert_eq!(d.client.counters().pushes, 1);
}

#[test]
fn enqueue_beyond_the_bound_is_answered_with_an_error_at_once() {
    let mut d = Driver::new(|c| c.max_pending = 2);
    d.enqueue(1, 2, 8);
    d.enqueue(2, 2, 8);
    d.enqueue(3, 2, 8);
    let results = d.results();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].0, RequestId(3));
    assert!(results[0].1.is_err());
    assert_eq!(d.client.pending(), 2);
    // Connected, the bound counts sent-but-unanswered envelopes too.
    d.connect(1);
    d.enqueue(4, 2, 8);
    assert_eq!(d.results().len(), 2);
    assert!(d.results()[1].1.is_err());
    d.server(1, RelayMessage::Enqueued { request: 1 });
    d.enqueue(5, 2, 8);
    assert_eq!(d.results().len(), 3, "r1 answered Ok, r5 accepted");
    assert_eq!(d.client.counters().pending_overflow, 2);
}

#[test]
fn server_refusals_answer_the_matching_enqueue_with_an_error() {
    let mut d = Driver::new(|_| {});
    d.connect(1);
    d.enqueue(10, 2, 8);
    d.enqueue(11, 2, 8);
    d.server(
        1,
        RelayMessage::Refused {
            request: Some(2),
            reason: ServerRefusal::QueueFull,
        },
    );
    d.server(1, RelayMessage::Enqueued { request: 1 });
    let results = d.results();
    assert_eq!(
        results[0],
        (RequestId(11), Err("relay refused: QueueFull".into()))
    );
    assert_eq!(results[1], (RequestId(10), Ok(())));
    // An answer to nothing is counted, not a result.
    d.server(1, RelayMessage::Enqueued { request: 77 });
    assert_eq!(d.results().len(), 2);
    assert_eq!(d.client.counters().unexpected_frames, 1);
    assert_eq!(d.client.counters().refused.queue_full, 1);
}

#[test]
fn garbage_frames_are_counted_and_change_nothing() {
    let mut d = Driver::new(|_| {});
    d.connect(1);
    let before = d.outputs.len();
    d.raw(1, vec![]);
    d.raw(1, vec![0x42, 1, 2]);
    d.raw(1, vec![1, 0xc1, 0xc1]);
    d.raw(1, vec![0; 300 * 1024]);
    // A relay message that makes no sense for a device.
    d.server(1, RelayMessage::Fetch { max: 3 });
    // Frames on a link that is not ours are ignored entirely.
    d.server(7, d.welcome([0; 32]));
    assert_eq!(d.outputs.len(), before, "no output for garbage");
    let c = d.client.counters();
    assert_eq!(c.decode_errors, 4);
    assert_eq!(c.unexpected_frames, 1);
    assert!(d.client.is_connected());
}

#[test]
fn a_refused_proof_closes_the_link_and_backs_off() {
    let mut d = Driver::new(|_| {});
    d.start();
    d.link_up(dial(0), 1);
    d.server(1, d.challenge([1; 32]));
    d.server(
        1,
        RelayMessage::Refused {
            request: None,
            reason: ServerRefusal::BadProof,
        },
    );
    assert!(matches!(
        d.client.state(),
        ConnectionState::Disconnected { .. }
    ));
    assert!(d
        .outputs
        .contains(&ClientOutput::Transport(TransportCommand::Close {
            link: LinkId(1)
        })));
    assert_eq!(d.client.counters().refused.bad_proof, 1);
}

#[test]
fn a_stuck_attempt_times_out_and_a_late_link_is_closed() {
    let mut d = Driver::new(|c| c.server.connect_timeout = Duration::from_secs(1));
    d.start();
    d.at(1_000);
    assert!(matches!(
        d.client.state(),
        ConnectionState::Disconnected { .. }
    ));
    assert_eq!(d.client.counters().connection.connect_timeouts, 1);
    // The abandoned dial comes up late: closed, not adopted.
    d.link_up(dial(0), 4);
    assert_eq!(
        d.outputs.last(),
        Some(&ClientOutput::Transport(TransportCommand::Close {
            link: LinkId(4)
        }))
    );
    assert!(matches!(
        d.client.state(),
        ConnectionState::Disconnected { .. }
    ));
    // The redial goes out after the backoff.
    d.at(1_500);
    assert!(matches!(
        d.client.state(),
        ConnectionState::Dialling { request, .. } if request == dial(1)
    ));
    // A link that never sends the challenge times out too.
    d.link_up(dial(1), 5);
    d.at(2_600);
    assert!(d
        .outputs
        .contains(&ClientOutput::Transport(TransportCommand::Close {
            link: LinkId(5)
        })));
    assert_eq!(d.client.counters().connection.connect_timeouts, 2);
}

#[test]
fn backoff_grows_and_is_capped() {
    let mut d = Driver::new(|c| {
        c.server.backoff_base = Duration::from_millis(100);
        c.server.backoff_max = Duration::from_millis(1_000);
    });
    d.start();
    let mut delays = Vec::new();
    for n in 0..8 {
        d.input(
            format!("DialFailed d{n}"),
            ClientInput::Transport(TransportEvent::DialFailed {
                request: dial(n),
                reason: "x".into(),
            }),
        );
        let at = d.client.poll_timeout().unwrap();
        let delay = at - d.now;
        delays.push(delay);
        d.now = at;
        d.client.handle_timeout(at);
        d.drain();
    }
    for (n, delay) in delays.iter().enumerate() {
        let full = Duration::from_millis(100 * (1 << n)).min(Duration::from_millis(1_000));
        assert!(
            *delay >= full / 2 && *delay < full,
            "attempt {n}: {delay:?} not in [{:?}, {full:?})",
            full / 2
        );
    }
}

#[test]
fn pushes_before_welcome_and_events_of_other_dials_are_ignored() {
    let mut d = Driver::new(|_| {});
    d.start();
    // Another orchestrator's dial.
    d.input(
        "LinkUp other".into(),
        ClientInput::Transport(TransportEvent::LinkUp {
            request: Some(RequestId(3)),
            link: LinkId(50),
            path: PathKind::Direct,
            remote: None,
        }),
    );
    assert!(matches!(d.client.state(), ConnectionState::Dialling { .. }));
    d.link_up(dial(0), 1);
    d.server(
        1,
        RelayMessage::Push {
            from: DeviceId([1; 32]),
            envelope_id: 1,
            envelope: vec![1],
        },
    );
    assert!(!d
        .outputs
        .iter()
        .any(|o| matches!(o, ClientOutput::Delivered(_))));
    assert_eq!(d.client.counters().unexpected_frames, 1);
}

#[test]
fn a_fake_relay_that_welcomes_without_proof_gets_nothing() {
    // Buffered before the connection: must not go to a server that has not proved
    // the configured key.
    let mut d = Driver::new(|_| {});
    d.enqueue(1, 2, 40);
    d.start();
    d.link_up(dial(0), 1);
    d.server(1, d.challenge([4; 32]));
    let before = d.transmitted().len();
    d.server(
        1,
        RelayMessage::Welcome {
            proof: vec![0; 32],
            observed: None,
        },
    );
    assert!(!d.client.is_connected());
    assert_eq!(
        d.transmitted().len(),
        before,
        "nothing sent after a bad Welcome"
    );
    // Pushes from it are not delivered either.
    d.server(
        1,
        RelayMessage::Push {
            from: d.keys.id(2),
            envelope_id: 1,
            envelope: vec![1; 8],
        },
    );
    assert!(!d
        .outputs
        .iter()
        .any(|o| matches!(o, ClientOutput::Delivered(_) | ClientOutput::Status(_))));
    let c = d.client.counters().connection;
    assert_eq!(c.bad_server_proofs, 1);
    assert_eq!(c.connects, 0);
    assert_eq!(
        c.auth_failure,
        Some(crate::ServerAuthFailure::BadServerProof)
    );
}

#[test]
fn rendezvous_requests_and_answers_ride_on_the_connection() {
    let mut d = Driver::new(|_| {});
    let lookup = RendezvousMessage::Lookup {
        rendezvous_id: [5; 32],
    };
    let hints = RendezvousMessage::Hints {
        rendezvous_id: [5; 32],
        hints: vec![vec![1, 2, 3].into()],
    };
    let rendezvous_frame =
        |m: &RendezvousMessage| tether_protocol::encode(&WireFrame::Rendezvous(m.clone())).unwrap();
    // Not connected: the request is dropped (counted); the rendezvous client holds
    // what must survive, and re-sends when it hears the connection is up.
    d.input(
        "Rendezvous Lookup".into(),
        ClientInput::Rendezvous(lookup.clone()),
    );
    assert!(d.outputs.is_empty());
    assert_eq!(d.client.counters().rendezvous_dropped, 1);
    d.connect(1);
    d.input(
        "Rendezvous Lookup".into(),
        ClientInput::Rendezvous(lookup.clone()),
    );
    assert_eq!(
        d.outputs.last(),
        Some(&ClientOutput::Transport(TransportCommand::Transmit {
            link: LinkId(1),
            frame: rendezvous_frame(&lookup),
        }))
    );
    d.raw(1, rendezvous_frame(&hints));
    assert_eq!(d.outputs.last(), Some(&ClientOutput::Rendezvous(hints)));
    assert_eq!(d.client.counters().unexpected_frames, 0);
}

#[test]
fn replaced_by_another_connection_with_our_key_waits_the_longest_backoff() {
    let mut d = Driver::new(|_| {});
    d.connect(1);
    // A refusal naming an old link of ours changes nothing.
    d.server(
        9,
        RelayMessage::Refused {
            request: None,
            reason: ServerRefusal::Replaced,
        },
    );
    assert!(d.client.is_connected());
    d.server(
        1,
        RelayMessage::Refused {
            request: None,
            reason: ServerRefusal::Replaced,
        },
    );
    let retry_at = match d.client.state() {
        ConnectionState::Disconnected { retry_at } => retry_at,
        other => panic!("expected Disconnected, got {other:?}"),
    };
    assert_eq!(retry_at - d.now, Duration::from_secs(30));
    let c = d.client.counters();
    assert_eq!(c.connection.replaced, 1);
    assert_eq!(c.refused.replaced, 1);
    assert!(d
        .outputs
        .contains(&ClientOutput::Status(tether_protocol::RelayStatus {
            connected: false
        })));
    assert!(d
        .outputs
        .contains(&ClientOutput::Transport(TransportCommand::Close {
            link: LinkId(1)
        })));
}

#[test]
fn a_move_sends_a_path_probe_on_the_connection_and_nothing_while_down() {
    let mut d = Driver::new(|_| {});
    d.input("Moved".into(), ClientInput::Moved);
    assert!(d.outputs.is_empty(), "not connected: nothing to probe");
    d.connect(1);
    d.input("Moved".into(), ClientInput::Moved);
    let probe = d.transmitted().pop().unwrap();
    assert_eq!(
        probe,
        RelayMessage::PathProbe {
            padding: vec![0; tether_protocol::PATH_PROBE_PADDING]
        }
    );
    assert_eq!(d.client.counters().path_probes, 1);
}

#[test]
fn the_server_tells_the_device_its_reflexive_address_and_its_changes() {
    let mut d = Driver::new(|_| {});
    assert_eq!(d.client.counters().connection.reflexive, None);
    d.connect(1);
    assert_eq!(d.client.counters().connection.reflexive, Some(observed()));
    let moved: SocketAddr = "198.51.100.20:40001".parse().unwrap();
    // On another link (an old one of ours) it means nothing.
    d.server(9, RelayMessage::Observed { addr: moved });
    assert_eq!(d.client.counters().connection.reflexive, Some(observed()));
    let before = d.outputs.len();
    d.server(1, RelayMessage::Observed { addr: moved });
    assert_eq!(d.client.counters().connection.reflexive, Some(moved));
    assert_eq!(d.outputs.len(), before, "nothing to send or report");
    assert_eq!(d.client.counters().unexpected_frames, 0);
    d.link_down(1);
    assert_eq!(d.client.counters().connection.reflexive, None);
}
