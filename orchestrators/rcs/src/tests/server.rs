//! The relay queue server: authentication, bounds, TTL, push/fetch/ack, forwarding.

use super::{Keys, Names};
use crate::rate::{Rate, RateLimits};
use crate::server::{
    Admission, ConnId, DeviceSeen, RelayQueueServer, RelayServerConfig, ServerInput, ServerOutput,
    ENVELOPE_OVERHEAD, MAX_INPUTS_PER_COMMIT, MAX_PENDING_SEEN, MAX_SEALED_RENDEZVOUS_IDS,
    RATE_LIMIT_QUIET,
};
use crate::store::{MemoryRelayQueueStore, QueueChange, RelayQueueStore, StoredEnvelope};
use std::time::{Duration, Instant};
use tether_crypto::{seal_rendezvous_ids, server_auth_proof, verify_server_proof};
use tether_protocol::{DeviceId, RelayMessage, RendezvousMessage, ServerRefusal, WireFrame};

/// Unix time of the driver's `t0`.
const UNIX_T0: u64 = 1_700_000_000_000;

struct Driver {
    keys: Keys,
    names: Names,
    config: RelayServerConfig,
    server: RelayQueueServer,
    /// Where every change the server reports is applied after each input, as the shell
    /// does.
    store: MemoryRelayQueueStore,
    t0: Instant,
    now: Instant,
    trace: Vec<String>,
    /// Outputs of the last input, for assertions.
    last: Vec<ServerOutput>,
    /// Store commits made (drains that had changes to apply).
    commits: usize,
    /// Whether the trace shows each commit (group commit tests).
    trace_commits: bool,
}

impl Driver {
    fn new(tune: impl FnOnce(&mut RelayServerConfig)) -> Self {
        let keys = Keys::new();
        let mut config = RelayServerConfig::new(keys.server.clone(), [5; 32], Admission::Open);
        config.unix_ms_at_start = UNIX_T0;
        tune(&mut config);
        let t0 = Instant::now();
        Self {
            names: keys.names(),
            keys,
            server: RelayQueueServer::new(config.clone(), t0),
            config,
            store: MemoryRelayQueueStore::new(),
            t0,
            now: t0,
            trace: Vec::new(),
            last: Vec::new(),
            commits: 0,
            trace_commits: false,
        }
    }

    fn ms(&self) -> u128 {
        (self.now - self.t0).as_millis()
    }

    fn input(&mut self, input: ServerInput) -> Vec<ServerOutput> {
        let label = match &input {
            ServerInput::Opened(c, _, remote) => format!("{c} Opened from {remote}"),
            ServerInput::Closed(c) => format!("{c} Closed"),
            ServerInput::Frame(c, m) => format!("{c} {}", self.names.relay(m)),
            ServerInput::Bytes(c, b) => format!("{c} bytes[{}B]", b.len()),
            ServerInput::Moved(c, remote) => format!("{c} Moved to {remote}"),
        };
        self.trace.push(format!("{:>6}ms in  {label}", self.ms()));
        self.server.handle(self.now, input);
        self.drain()
    }

    fn drain(&mut self) -> Vec<ServerOutput> {
        let changes: Vec<QueueChange> = std::iter::from_fn(|| self.server.poll_change()).collect();
        self.store.apply(&changes).unwrap();
        self.commits += usize::from(!changes.is_empty());
        if self.trace_commits {
            let line = format!("{:>6}ms commit {} changes", self.ms(), changes.len());
            self.trace.push(line);
        }
        self.server.committed();
        let mut outputs = Vec::new();
        while let Some(output) = self.server.poll_output() {
            let line = match &output {
                ServerOutput::Send(c, frame) => format!("{c} {}", self.names.wire(frame)),
                ServerOutput::Close(c) => format!("{c} Close"),
                ServerOutput::CloseWith(c, frame) => {
                    format!("{c} Close with {}", self.names.wire(frame))
                }
            };
            self.trace.push(format!("{:>6}ms out {line}", self.ms()));
            outputs.push(output);
        }
        self.last = outputs.clone();
        outputs
    }

    fn advance_to(&mut self, ms: u64) {
        let target = self.t0 + Duration::from_millis(ms);
        while let Some(at) = self.server.poll_timeout() {
            if at > target {
                break;
            }
            self.now = self.now.max(at);
            self.trace.push(format!("{:>6}ms timeout", self.ms()));
            self.server.handle_timeout(self.now);
            self.drain();
        }
        self.now = target;
    }

    /// The relay restarts now: a new server (every connection gone) takes over the
    /// store, with its wall clock going on from the old one's.
    fn restart(&mut self, tune: impl FnOnce(&mut RelayServerConfig)) {
        let mut config = self.config.clone();
        config.unix_ms_at_start = UNIX_T0 + (self.now - self.t0).as_millis() as u64;
        tune(&mut config);
        self.server = RelayQueueServer::new(config, self.now);
        let loaded = self.store.load().unwrap();
        self.server.restore(self.now, loaded);
        self.drain();
    }

    fn frame(&mut self, conn: u64, message: RelayMessage) -> Vec<ServerOutput> {
        self.input(ServerInput::Frame(ConnId(conn), message))
    }

    /// Opens `conn` and returns the challenge nonce.
    fn open(&mut self, conn: u64) -> [u8; 32] {
        let outputs = self.input(ServerInput::Opened(
            ConnId(conn),
            binding(conn),
            remote(conn),
        ));
        match outputs.as_slice() {
            [ServerOutput::Send(
                c,
                WireFrame::Relay(RelayMessage::Challenge { nonce, server_key }),
            )] if *c == ConnId(conn) && server_key == self.keys.server.public().as_bytes() => {
                *nonce
            }
            other => panic!("expected one challenge, got {other:?}"),
        }
    }

    /// Opens `conn` and authenticates device `n` on it; returns the outputs after the
    /// proof (Welcome and pushes).
    fn connect(&mut self, conn: u64, n: usize) -> Vec<ServerOutput> {
        self.connect_as(conn, n, false)
    }

    /// [`connect`](Self::connect), for a rendezvous-only connection if asked.
    fn connect_as(&mut self, conn: u64, n: usize, rendezvous_only: bool) -> Vec<ServerOutput> {
        self.connect_with(conn, n, rendezvous_only, |_| Vec::new())
    }

    /// [`connect_as`](Self::connect_as) with the sealed rendezvous ids `seal` makes
    /// from the connection's challenge nonce.
    fn connect_with(
        &mut self,
        conn: u64,
        n: usize,
        rendezvous_only: bool,
        seal: impl FnOnce(&[u8; 32]) -> Vec<u8>,
    ) -> Vec<ServerOutput> {
        let nonce = self.open(conn);
        let rendezvous_ids = seal(&nonce);
        let proof = server_auth_proof(
            self.keys.device(n),
            self.keys.server.public(),
            &nonce,
            &binding(conn),
        );
        let device = self.keys.id(n);
        self.frame(
            conn,
            RelayMessage::Authenticate {
                device,
                proof: proof.to_vec(),
                rendezvous_only,
                rendezvous_ids,
            },
        )
    }

    fn enqueue(&mut self, conn: u64, to: usize, request: u64, ttl_ms: u64, len: usize) {
        let message = self.enqueue_message(to, request, ttl_ms, len);
        self.frame(conn, message);
    }

    fn enqueue_message(&self, to: usize, request: u64, ttl_ms: u64, len: usize) -> RelayMessage {
        RelayMessage::Enqueue {
            to: self.keys.id(to),
            request,
            ttl_ms,
            envelope: vec![request as u8; len],
        }
    }

    /// Feeds `inputs` one after another, as the shell does with the frames waiting
    /// when it wakes up, then commits once and drains: a group commit.
    fn batch(&mut self, inputs: Vec<ServerInput>) -> Vec<ServerOutput> {
        for input in inputs {
            let label = match &input {
                ServerInput::Frame(c, m) => format!("{c} {}", self.names.relay(m)),
                other => format!("{other:?}"),
            };
            self.trace.push(format!("{:>6}ms in  {label}", self.ms()));
            self.server.handle(self.now, input);
        }
        self.trace_commits = true;
        let outputs = self.drain();
        self.trace_commits = false;
        outputs
    }
}

fn relay_to(outputs: &[ServerOutput], conn: u64) -> Vec<RelayMessage> {
    outputs
        .iter()
        .filter_map(|o| match o {
            ServerOutput::Send(c, WireFrame::Relay(m))
            | ServerOutput::CloseWith(c, WireFrame::Relay(m))
                if *c == ConnId(conn) =>
            {
                Some(m.clone())
            }
            _ => None,
        })
        .collect()
}

fn pushed_ids(outputs: &[ServerOutput], conn: u64) -> Vec<u64> {
    relay_to(outputs, conn)
        .into_iter()
        .filter_map(|m| match m {
            RelayMessage::Push { envelope_id, .. } => Some(envelope_id),
            _ => None,
        })
        .collect()
}

fn refused(reason: ServerRefusal, request: Option<u64>) -> RelayMessage {
    RelayMessage::Refused { request, reason }
}

#[test]
fn requests_before_authentication_are_refused() {
    let mut d = Driver::new(|_| {});
    d.open(1);
    assert_eq!(d.server.authenticated_device(ConnId(1)), None);
    d.enqueue(1, 2, 7, 1_000, 10);
    assert_eq!(
        relay_to(&d.last, 1),
        vec![refused(ServerRefusal::NotAuthenticated, Some(7))]
    );
    let out = d.frame(1, RelayMessage::Fetch { max: 10 });
    assert_eq!(
        relay_to(&out, 1),
        vec![refused(ServerRefusal::NotAuthenticated, None)]
    );
    assert_eq!(d.server.total_queued(), 0);
    assert_eq!(d.server.counters().refused.not_authenticated, 2);
}

#[test]
fn bad_proof_is_refused_and_the_connection_closed() {
    let mut d = Driver::new(|_| {});
    let nonce = d.open(1);
    // Device 2 proves with its own key but claims to be device 1.
    let proof = server_auth_proof(
        d.keys.device(2),
        d.keys.server.public(),
        &nonce,
        &binding(1),
    );
    let claimed = d.keys.id(1);
    let out = d.frame(
        1,
        RelayMessage::Authenticate {
            device: claimed,
            proof: proof.to_vec(),
            rendezvous_only: false,
            rendezvous_ids: Vec::new(),
        },
    );
    assert_eq!(
        out,
        vec![ServerOutput::CloseWith(
            ConnId(1),
            WireFrame::Relay(refused(ServerRefusal::BadProof, None))
        )]
    );
    assert_eq!(d.server.authenticated_device(ConnId(1)), None);

    // A proof recorded on one connection does not work on another (fresh nonce).
    let nonce2 = d.open(2);
    assert_ne!(nonce, nonce2);
    let replayed = server_auth_proof(
        d.keys.device(1),
        d.keys.server.public(),
        &nonce,
        &binding(1),
    );
    let out = d.frame(
        2,
        RelayMessage::Authenticate {
            device: claimed,
            proof: replayed.to_vec(),
            rendezvous_only: false,
            rendezvous_ids: Vec::new(),
        },
    );
    assert_eq!(
        out,
        vec![ServerOutput::CloseWith(
            ConnId(2),
            WireFrame::Relay(refused(ServerRefusal::BadProof, None))
        )]
    );

    // An invalid device key (all zeros, low order) is a bad proof, not a crash.
    d.open(3);
    let out = d.frame(
        3,
        RelayMessage::Authenticate {
            device: DeviceId([0; 32]),
            proof: vec![0; 32],
            rendezvous_only: false,
            rendezvous_ids: Vec::new(),
        },
    );
    assert!(matches!(
        out.as_slice(),
        [ServerOutput::CloseWith(ConnId(3), _)]
    ));
    assert_eq!(d.server.counters().refused.bad_proof, 3);
    assert_eq!(d.server.counters().authenticated, 0);
}

#[test]
fn good_proof_is_welcomed() {
    let mut d = Driver::new(|_| {});
    let out = d.connect(1, 1);
    assert!(matches!(
        relay_to(&out, 1)[..],
        [RelayMessage::Welcome { .. }]
    ));
    assert_eq!(d.server.authenticated_device(ConnId(1)), Some(d.keys.id(1)));
    // A second Authenticate on an authenticated connection is a bad frame, nothing else.
    let out = d.frame(
        1,
        RelayMessage::Authenticate {
            device: d.keys.id(2),
            proof: vec![0; 32],
            rendezvous_only: false,
            rendezvous_ids: Vec::new(),
        },
    );
    assert!(out.is_empty());
    assert_eq!(d.server.authenticated_device(ConnId(1)), Some(d.keys.id(1)));
    assert_eq!(d.server.counters().bad_frames, 1);
    // After Closed the connection is forgotten.
    d.input(ServerInput::Closed(ConnId(1)));
    assert_eq!(d.server.authenticated_device(ConnId(1)), None);
}

#[test]
fn recipient_queue_is_bounded_by_count_and_bytes() {
    let mut d = Driver::new(|c| {
        c.max_queued_per_recipient = 2;
        c.max_queued_bytes_per_recipient = 150;
    });
    d.connect(1, 1);
    d.enqueue(1, 2, 1, 60_000, 50);
    d.enqueue(1, 2, 2, 60_000, 50);
    d.enqueue(1, 2, 3, 60_000, 10);
    assert_eq!(
        relay_to(&d.last, 1),
        vec![refused(ServerRefusal::QueueFull, Some(3))]
    );
    // Bytes: one 120-byte envelope fits for p3, a second 40-byte one does not (160 > 150).
    d.enqueue(1, 3, 4, 60_000, 120);
    assert_eq!(
        relay_to(&d.last, 1),
        vec![RelayMessage::Enqueued { request: 4 }]
    );
    d.enqueue(1, 3, 5, 60_000, 40);
    assert_eq!(
        relay_to(&d.last, 1),
        vec![refused(ServerRefusal::QueueFull, Some(5))]
    );
    assert_eq!(d.server.queued_for(&d.keys.id(2)), 2);
    assert_eq!(d.server.queued_for(&d.keys.id(3)), 1);
    assert_eq!(d.server.counters().refused.queue_full, 2);
}

#[test]
fn sender_quota_spans_recipients_and_frees_on_delivery() {
    let mut d = Driver::new(|c| c.max_stored_per_sender = 2);
    d.connect(1, 1);
    d.enqueue(1, 2, 1, 60_000, 8);
    d.enqueue(1, 3, 2, 60_000, 8);
    d.enqueue(1, 3, 3, 60_000, 8);
    assert_eq!(
        relay_to(&d.last, 1),
        vec![refused(ServerRefusal::QuotaExceeded, Some(3))]
    );
    // p2 connects, receives envelope 1 and acknowledges it: p1's quota frees one slot.
    let out = d.connect(2, 2);
    assert_eq!(pushed_ids(&out, 2), vec![1]);
    d.frame(
        2,
        RelayMessage::Delivered {
            envelope_ids: vec![1],
        },
    );
    d.enqueue(1, 3, 4, 60_000, 8);
    assert_eq!(
        relay_to(&d.last, 1),
        vec![RelayMessage::Enqueued { request: 4 }]
    );
    assert_eq!(d.server.counters().refused.quota_exceeded, 1);
    assert_eq!(d.server.counters().delivered, 1);
}

#[test]
fn oversized_envelope_and_forward_are_refused() {
    let mut d = Driver::new(|c| c.max_envelope_len = 100);
    d.connect(1, 1);
    d.connect(2, 2);
    d.enqueue(1, 2, 1, 60_000, 101);
    assert_eq!(
        relay_to(&d.last, 1),
        vec![refused(ServerRefusal::TooLarge, Some(1))]
    );
    let to = d.keys.id(2);
    let out = d.frame(
        1,
        RelayMessage::Forward {
            to,
            frame: vec![0; 101],
        },
    );
    assert_eq!(
        relay_to(&out, 1),
        vec![refused(ServerRefusal::TooLarge, None)]
    );
    assert!(relay_to(&out, 2).is_empty());
    assert_eq!(d.server.total_queued(), 0);
}

#[test]
fn offline_envelope_survives_until_ttl_is_pushed_on_connect_and_then_expires() {
    let mut d = Driver::new(|_| {});
    d.connect(1, 1);
    d.enqueue(1, 2, 1, 10_000, 16);
    assert_eq!(
        d.server.poll_timeout(),
        Some(d.t0 + Duration::from_secs(10))
    );
    d.advance_to(9_999);
    assert_eq!(d.server.queued_for(&d.keys.id(2)), 1, "lost before its TTL");
    // p2 connects just before the TTL: pushed, not yet acknowledged.
    let out = d.connect(2, 2);
    assert_eq!(pushed_ids(&out, 2), vec![1]);
    assert_eq!(d.server.counters().expired, 0);
    // Unacknowledged at its TTL: it expires.
    d.advance_to(10_000);
    assert_eq!(d.server.queued_for(&d.keys.id(2)), 0);
    assert_eq!(d.server.counters().expired, 1);
    assert_eq!(d.server.poll_timeout(), None);
    // Reconnecting finds nothing, and a fetch neither.
    d.input(ServerInput::Closed(ConnId(2)));
    let out = d.connect(3, 2);
    assert!(matches!(
        relay_to(&out, 3)[..],
        [RelayMessage::Welcome { .. }]
    ));
    let out = d.frame(3, RelayMessage::Fetch { max: 10 });
    assert!(out.is_empty());
}

#[test]
fn ttl_is_capped_by_the_server_max() {
    let mut d = Driver::new(|c| c.max_ttl = Duration::from_secs(5));
    d.connect(1, 1);
    d.enqueue(1, 2, 1, u64::MAX, 16);
    assert_eq!(d.server.poll_timeout(), Some(d.t0 + Duration::from_secs(5)));
    d.advance_to(5_000);
    assert_eq!(d.server.total_queued(), 0);
    assert_eq!(d.server.counters().expired, 1);
}

#[test]
fn enqueue_to_a_connected_recipient_is_pushed_at_once_and_kept_until_acknowledged() {
    let mut d = Driver::new(|_| {});
    d.connect(1, 1);
    d.connect(2, 2);
    d.enqueue(1, 2, 9, 60_000, 24);
    assert_eq!(
        relay_to(&d.last, 1),
        vec![RelayMessage::Enqueued { request: 9 }]
    );
    assert_eq!(
        relay_to(&d.last, 2),
        vec![RelayMessage::Push {
            from: d.keys.id(1),
            envelope_id: 1,
            envelope: vec![9; 24],
        }]
    );
    assert_eq!(
        d.server.queued_for(&d.keys.id(2)),
        1,
        "kept until acknowledged"
    );
    // Not acknowledged: a fetch pushes it again (a duplicate the receiver dedupes).
    let out = d.frame(2, RelayMessage::Fetch { max: 5 });
    assert_eq!(pushed_ids(&out, 2), vec![1]);
    d.frame(
        2,
        RelayMessage::Delivered {
            envelope_ids: vec![1],
        },
    );
    assert_eq!(d.server.queued_for(&d.keys.id(2)), 0);
    // A repeated acknowledgement is harmless.
    let out = d.frame(
        2,
        RelayMessage::Delivered {
            envelope_ids: vec![1],
        },
    );
    assert!(out.is_empty());
    assert_eq!(d.server.counters().delivered, 1);
}

#[test]
fn fetch_returns_only_the_callers_own_queue_oldest_first_up_to_max() {
    let mut d = Driver::new(|_| {});
    d.connect(1, 1);
    d.enqueue(1, 2, 1, 60_000, 4);
    d.enqueue(1, 3, 2, 60_000, 4);
    d.enqueue(1, 2, 3, 60_000, 4);
    d.enqueue(1, 2, 4, 60_000, 4);
    d.connect(3, 3);
    d.input(ServerInput::Closed(ConnId(3)));
    // p3 is gone again; p2 connects and fetches in batches.
    let out = d.connect(2, 2);
    assert_eq!(pushed_ids(&out, 2), vec![1, 3, 4]);
    let out = d.frame(2, RelayMessage::Fetch { max: 2 });
    assert_eq!(pushed_ids(&out, 2), vec![1, 3]);
    let out = d.frame(2, RelayMessage::Fetch { max: 0 });
    assert!(out.is_empty());
    // p1's own queue is empty: its fetch returns nothing of p2's or p3's.
    let out = d.frame(1, RelayMessage::Fetch { max: 100 });
    assert!(out.is_empty());
    assert_eq!(d.server.queued_for(&d.keys.id(3)), 1);
}

#[test]
fn delivered_with_another_devices_id_is_refused_and_removes_nothing() {
    let mut d = Driver::new(|_| {});
    d.connect(1, 1);
    d.enqueue(1, 2, 1, 60_000, 4); // id 1, for p2
    d.enqueue(1, 3, 2, 60_000, 4); // id 2, for p3
    d.connect(2, 2);
    // p2 acknowledges its own id 1 and p3's id 2.
    let out = d.frame(
        2,
        RelayMessage::Delivered {
            envelope_ids: vec![2, 1],
        },
    );
    assert_eq!(
        relay_to(&out, 2),
        vec![refused(ServerRefusal::NotYours, None)]
    );
    assert_eq!(
        d.server.queued_for(&d.keys.id(2)),
        0,
        "its own id is removed"
    );
    assert_eq!(
        d.server.queued_for(&d.keys.id(3)),
        1,
        "the other's is untouched"
    );
    // The sender cannot delete what it sent either.
    let out = d.frame(
        1,
        RelayMessage::Delivered {
            envelope_ids: vec![2],
        },
    );
    assert_eq!(
        relay_to(&out, 1),
        vec![refused(ServerRefusal::NotYours, None)]
    );
    assert_eq!(d.server.queued_for(&d.keys.id(3)), 1);
    let out = d.connect(3, 3);
    assert_eq!(pushed_ids(&out, 3), vec![2]);
    assert_eq!(d.server.counters().refused.not_yours, 2);
}

#[test]
fn forward_reaches_a_connected_device_and_is_refused_otherwise() {
    let mut d = Driver::new(|_| {});
    d.connect(1, 1);
    let to = d.keys.id(2);
    let out = d.frame(
        1,
        RelayMessage::Forward {
            to,
            frame: vec![1; 30],
        },
    );
    assert_eq!(
        relay_to(&out, 1),
        vec![refused(ServerRefusal::NotConnected, None)]
    );
    d.connect(2, 2);
    let out = d.frame(
        1,
        RelayMessage::Forward {
            to,
            frame: vec![1; 30],
        },
    );
    assert_eq!(
        relay_to(&out, 2),
        vec![RelayMessage::Forwarded {
            from: d.keys.id(1),
            frame: vec![1; 30],
        }]
    );
    assert!(relay_to(&out, 1).is_empty());
    assert_eq!(d.server.total_queued(), 0, "forwarding stores nothing");
}

#[test]
fn a_newer_connection_of_a_device_replaces_the_older_and_frames_go_out_once() {
    let mut d = Driver::new(|_| {});
    d.connect(1, 1);
    d.connect(2, 2);
    let out = d.connect(3, 2); // p2 again: another network, or another instance
    assert!(out.contains(&ServerOutput::CloseWith(
        ConnId(2),
        WireFrame::Relay(RelayMessage::Refused {
            request: None,
            reason: ServerRefusal::Replaced,
        })
    )));
    assert_eq!(d.server.authenticated_device(ConnId(2)), None);
    assert_eq!(d.server.counters().replaced_connections, 1);
    assert_eq!(d.server.connections(), 2);
    d.enqueue(1, 2, 1, 60_000, 4);
    assert_eq!(pushed_ids(&d.last, 3), vec![1]);
    assert!(pushed_ids(&d.last, 2).is_empty());
    let out = d.frame(
        1,
        RelayMessage::Forward {
            to: d.keys.id(2),
            frame: vec![7; 10],
        },
    );
    let forwarded: Vec<ConnId> = out
        .iter()
        .filter_map(|o| match o {
            ServerOutput::Send(c, WireFrame::Relay(RelayMessage::Forwarded { .. })) => Some(*c),
            _ => None,
        })
        .collect();
    assert_eq!(
        forwarded,
        vec![ConnId(3)],
        "one copy, to the newest connection"
    );
    // The replaced connection closing later does not detach the device.
    d.input(ServerInput::Closed(ConnId(2)));
    assert_eq!(d.server.authenticated_device(ConnId(3)), Some(d.keys.id(2)));
    let out = d.frame(
        1,
        RelayMessage::Forward {
            to: d.keys.id(2),
            frame: vec![7; 10],
        },
    );
    assert!(out.iter().any(|o| matches!(
        o,
        ServerOutput::Send(ConnId(3), WireFrame::Relay(RelayMessage::Forwarded { .. }))
    )));
}

#[test]
fn a_rendezvous_only_connection_replaces_nothing_and_gets_no_relay_traffic() {
    let mut d = Driver::new(|_| {});
    d.connect(1, 1);
    d.connect(2, 2);
    d.enqueue(1, 2, 1, 60_000, 4);
    // A pairing connection of p2 while p2's node holds its connection.
    let out = d.connect_as(3, 2, true);
    assert!(matches!(
        relay_to(&out, 3).as_slice(),
        [RelayMessage::Welcome { .. }]
    ));
    assert!(pushed_ids(&out, 3).is_empty(), "no pushes on it");
    assert_eq!(d.server.counters().replaced_connections, 0);
    assert_eq!(d.server.authenticated_device(ConnId(2)), Some(d.keys.id(2)));
    // Pushes and forwarded frames still go to the device's own connection only.
    d.enqueue(1, 2, 2, 60_000, 4);
    assert_eq!(pushed_ids(&d.last, 2), vec![2]);
    assert!(pushed_ids(&d.last, 3).is_empty());
    // Relay requests on it are refused; rendezvous requests are served as p2.
    d.enqueue(3, 1, 3, 60_000, 4);
    assert_eq!(
        relay_to(&d.last, 3),
        vec![refused(ServerRefusal::NotAuthenticated, Some(3))]
    );
    let lookup = RendezvousMessage::Lookup {
        rendezvous_id: [1; 32],
    };
    let now = d.now;
    assert_eq!(
        d.server.rendezvous_request(now, ConnId(3), &lookup),
        Ok(d.keys.id(2))
    );
    // Two are kept per device; a third replaces the oldest of them, never the device's
    // own connection.
    d.connect_as(4, 2, true);
    let out = d.connect_as(5, 2, true);
    assert!(out.contains(&ServerOutput::CloseWith(
        ConnId(3),
        WireFrame::Relay(refused(ServerRefusal::Replaced, None))
    )));
    assert_eq!(d.server.authenticated_device(ConnId(2)), Some(d.keys.id(2)));
    // Closing them leaves the device's connection in place.
    d.input(ServerInput::Closed(ConnId(4)));
    d.input(ServerInput::Closed(ConnId(5)));
    d.enqueue(1, 2, 4, 60_000, 4);
    assert_eq!(pushed_ids(&d.last, 2).len(), 1);
}

#[test]
fn a_moved_connection_gets_its_queued_envelopes_again_and_probes_are_ignored() {
    let mut d = Driver::new(|_| {});
    d.connect(1, 1);
    d.connect(2, 2);
    d.enqueue(1, 2, 1, 60_000, 4);
    d.enqueue(1, 2, 2, 60_000, 4);
    assert_eq!(pushed_ids(&d.last, 2).len(), 1);
    // p2's connection moves: the pushes may have gone to its old address.
    let out = d.input(ServerInput::Moved(ConnId(2), moved_remote(2)));
    assert_eq!(pushed_ids(&out, 2).len(), 2, "both queued envelopes again");
    assert_eq!(d.server.counters().repushed, 2);
    let out = d.frame(
        2,
        RelayMessage::PathProbe {
            padding: vec![0; 1200],
        },
    );
    assert!(out.is_empty(), "a probe is not answered");
    assert_eq!(d.server.counters().path_probes, 1);
    // Another device's move pushes it nothing (its queue is empty) but tells it its
    // new reflexive address; an unknown connection gets nothing.
    let out = d.input(ServerInput::Moved(ConnId(1), moved_remote(1)));
    assert_eq!(
        relay_to(&out, 1),
        vec![RelayMessage::Observed {
            addr: moved_remote(1)
        }]
    );
    assert!(d
        .input(ServerInput::Moved(ConnId(9), moved_remote(9)))
        .is_empty());
    // Acknowledged envelopes are not pushed again (only the address is told).
    d.frame(
        2,
        RelayMessage::Delivered {
            envelope_ids: vec![1, 2],
        },
    );
    let out = d.input(ServerInput::Moved(ConnId(2), moved_remote(2)));
    assert!(pushed_ids(&out, 2).is_empty());
}

#[test]
fn garbage_and_misdirected_frames_are_counted_and_dropped() {
    let mut d = Driver::new(|_| {});
    d.connect(1, 1);
    for bytes in [
        vec![],
        vec![0xff],
        vec![1, 0xc1],
        vec![1; 300 * 1024],
        tether_protocol::encode(&WireFrame::Rendezvous(
            tether_protocol::RendezvousMessage::Lookup {
                rendezvous_id: [0; 32],
            },
        ))
        .unwrap(),
    ] {
        let out = d.input(ServerInput::Bytes(ConnId(1), bytes));
        assert!(out.is_empty());
    }
    // A server-to-device message sent by a device.
    let out = d.frame(
        1,
        RelayMessage::Welcome {
            proof: vec![0; 32],
            observed: None,
        },
    );
    assert!(out.is_empty());
    // A frame on a connection never opened.
    let out = d.frame(9, RelayMessage::Fetch { max: 1 });
    assert!(out.is_empty());
    let counters = d.server.counters();
    assert_eq!(counters.bad_frames, 6);
    assert_eq!(counters.unknown_connections, 1);
    assert_eq!(d.server.authenticated_device(ConnId(1)), Some(d.keys.id(1)));
    // Valid bytes still work.
    let out = d.input(ServerInput::Bytes(
        ConnId(1),
        tether_protocol::encode(&WireFrame::Relay(RelayMessage::Fetch { max: 1 })).unwrap(),
    ));
    assert!(out.is_empty());
    assert_eq!(d.server.counters().bad_frames, 6);
}

#[test]
fn two_device_exchange_trace() {
    let mut d = Driver::new(|_| {});
    d.connect(1, 1);
    // p1 queues two envelopes for p2, who is offline.
    d.enqueue(1, 2, 1, 30_000, 48);
    d.enqueue(1, 2, 2, 30_000, 64);
    d.advance_to(1_000);
    // p2 connects: both pushed after Welcome; it acknowledges them.
    d.connect(2, 2);
    d.frame(
        2,
        RelayMessage::Delivered {
            envelope_ids: vec![1, 2],
        },
    );
    // p2 answers live: p1 is connected, so the frame is forwarded.
    let p1 = d.keys.id(1);
    d.frame(
        2,
        RelayMessage::Forward {
            to: p1,
            frame: vec![0; 80],
        },
    );
    // p2 queues one for p1 while p1 is connected: pushed at once, acknowledged.
    d.enqueue(2, 1, 7, 30_000, 40);
    d.frame(
        1,
        RelayMessage::Delivered {
            envelope_ids: vec![3],
        },
    );
    // p1 leaves; p2's live forward is refused and an envelope for p1 waits then expires.
    d.advance_to(2_000);
    d.input(ServerInput::Closed(ConnId(1)));
    d.frame(
        2,
        RelayMessage::Forward {
            to: p1,
            frame: vec![0; 80],
        },
    );
    d.enqueue(2, 1, 8, 5_000, 40);
    d.advance_to(8_000);
    assert_eq!(d.server.total_queued(), 0);
    let c = d.server.counters();
    assert_eq!((c.stored, c.delivered, c.expired), (4, 3, 1));
    insta::assert_snapshot!(d.trace.join("\n"));
}

#[test]
fn config_debug_redacts_the_challenge_seed() {
    let keys = Keys::new();
    let config = RelayServerConfig::new(keys.server.clone(), [0xab; 32], Admission::Open);
    let text = format!("{config:?}");
    assert!(text.contains("<redacted>"));
    assert!(
        !text.contains("171, 171"),
        "seed bytes (0xab = 171) must not print: {text}"
    );
}

#[test]
fn every_stored_and_removed_envelope_is_a_store_change() {
    let mut d = Driver::new(|_| {});
    d.connect(1, 1);
    d.enqueue(1, 2, 1, 10_000, 16);
    let changes: Vec<QueueChange> = std::iter::from_fn(|| d.server.poll_change()).collect();
    assert!(changes.is_empty(), "drained after each input");
    let loaded = d.store.load().unwrap();
    assert_eq!(
        loaded.envelopes,
        vec![StoredEnvelope {
            id: 1,
            to: d.keys.id(2),
            from: d.keys.id(1),
            expires_at_unix_ms: UNIX_T0 + 10_000,
            envelope: vec![1; 16],
        }]
    );
    assert_eq!(loaded.next_envelope_id, 2);
    // Acknowledged: removed from the store too.
    d.connect(2, 2);
    d.frame(
        2,
        RelayMessage::Delivered {
            envelope_ids: vec![1],
        },
    );
    assert!(d.store.is_empty());
    // Expired: removed from the store too.
    d.enqueue(1, 3, 2, 1_000, 16);
    assert_eq!(d.store.len(), 1);
    d.advance_to(1_000);
    assert!(d.store.is_empty());
}

#[test]
fn a_restarted_server_pushes_what_it_stored_in_order_and_never_reuses_an_id() {
    let mut d = Driver::new(|_| {});
    d.connect(1, 1);
    for request in 1..=3 {
        d.enqueue(1, 2, request, 60_000, 16);
    }
    // p2 receives and acknowledges the first; the other two wait.
    let out = d.connect(2, 2);
    assert_eq!(pushed_ids(&out, 2), vec![1, 2, 3]);
    d.frame(
        2,
        RelayMessage::Delivered {
            envelope_ids: vec![1],
        },
    );
    d.advance_to(30_000);
    d.restart(|_| {});
    assert_eq!(d.server.counters().restored, 2);
    assert_eq!(d.server.queued_for(&d.keys.id(2)), 2);
    // The reconnecting recipient gets them, oldest first, once.
    let out = d.connect(3, 2);
    assert_eq!(pushed_ids(&out, 3), vec![2, 3]);
    let envelopes: Vec<Vec<u8>> = relay_to(&out, 3)
        .into_iter()
        .filter_map(|m| match m {
            RelayMessage::Push { envelope, .. } => Some(envelope),
            _ => None,
        })
        .collect();
    assert_eq!(envelopes, vec![vec![2; 16], vec![3; 16]]);
    // Their TTL runs from when they were stored, not from the restart.
    assert_eq!(
        d.server.poll_timeout(),
        Some(d.t0 + Duration::from_secs(60))
    );
    // A new envelope gets an id above every id handed out before, acknowledged or not.
    d.connect(4, 1);
    d.enqueue(4, 3, 9, 60_000, 16);
    assert_eq!(d.store.load().unwrap().next_envelope_id, 5);
    d.advance_to(60_000);
    assert_eq!(d.server.queued_for(&d.keys.id(2)), 0);
    assert_eq!(d.store.len(), 1, "only the new envelope is left");
}

#[test]
fn a_restart_drops_what_expired_while_down_and_what_no_longer_fits() {
    let mut d = Driver::new(|_| {});
    d.connect(1, 1);
    d.enqueue(1, 2, 1, 5_000, 16);
    d.enqueue(1, 3, 2, 60_000, 16);
    d.enqueue(1, 3, 3, 60_000, 16);
    d.enqueue(1, 3, 4, 60_000, 16);
    // Down for 10 s, back with lower bounds: p3's queue holds two, TTLs at most 20 s.
    d.now = d.t0 + Duration::from_secs(10);
    d.restart(|c| {
        c.max_queued_per_recipient = 2;
        c.max_ttl = Duration::from_secs(20);
    });
    let c = d.server.counters();
    assert_eq!((c.restored, c.expired, c.restore_dropped), (2, 1, 1));
    assert_eq!(d.server.queued_for(&d.keys.id(2)), 0);
    assert_eq!(d.server.queued_for(&d.keys.id(3)), 2);
    let kept: Vec<u64> = d
        .store
        .load()
        .unwrap()
        .envelopes
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(kept, vec![2, 3], "the oldest are kept, the store agrees");
    assert_eq!(
        d.server.poll_timeout(),
        Some(d.now + Duration::from_secs(20)),
        "expiry capped by the new max_ttl"
    );
}

/// The store never holds more than the per-recipient cap, and nothing past its TTL,
/// however much is offered.
#[test]
fn the_store_is_bounded_by_the_queue_caps_and_the_ttl() {
    let mut d = Driver::new(|c| {
        c.max_queued_per_recipient = 8;
        c.max_stored_per_sender = 1_000;
    });
    d.connect(1, 1);
    for request in 0..100 {
        d.enqueue(1, 2, request, 10_000, 100);
        assert!(d.store.len() <= 8);
    }
    assert_eq!(d.store.len(), 8);
    assert_eq!(d.server.counters().refused.queue_full, 92);
    d.advance_to(10_000);
    assert!(d.store.is_empty());
    assert_eq!(d.server.stored_bytes(), 0);
}

#[test]
fn the_total_of_all_queues_is_bounded_with_an_overhead_per_envelope() {
    // Room for exactly three 100-byte envelopes, whoever they are for.
    let mut d = Driver::new(|c| c.max_stored_bytes = 3 * (100 + ENVELOPE_OVERHEAD));
    d.connect(1, 1);
    d.enqueue(1, 2, 1, 60_000, 100);
    d.enqueue(1, 3, 2, 60_000, 100);
    d.enqueue(1, 2, 3, 60_000, 100);
    d.enqueue(1, 3, 4, 60_000, 1);
    assert_eq!(
        relay_to(&d.last, 1),
        vec![refused(ServerRefusal::QueueFull, Some(4))]
    );
    assert_eq!(d.store.len(), 3);
    assert_eq!(d.server.stored_bytes(), 3 * (100 + ENVELOPE_OVERHEAD));
}

#[test]
fn undecodable_records_reported_by_the_store_are_counted() {
    let mut d = Driver::new(|_| {});
    d.server = RelayQueueServer::new(d.config.clone(), d.now);
    d.server.restore(
        d.now,
        crate::store::LoadedQueue {
            envelopes: Vec::new(),
            next_envelope_id: 40,
            undecodable: 3,
        },
    );
    assert_eq!(d.server.counters().store_undecodable, 3);
    d.connect(1, 1);
    d.enqueue(1, 2, 1, 60_000, 8);
    assert_eq!(d.store.load().unwrap().envelopes[0].id, 40);
}

/// The channel binding of connection `conn` (both of its ends derive the same bytes;
/// every connection has its own).
fn binding(conn: u64) -> [u8; 32] {
    let mut binding = [0xC0; 32];
    binding[..8].copy_from_slice(&conn.to_be_bytes());
    binding
}

/// Where connection `conn` comes from when it opens.
fn remote(conn: u64) -> std::net::SocketAddr {
    format!("198.51.100.{}:40000", conn % 250).parse().unwrap()
}

/// Where connection `conn` comes from after its device moved.
fn moved_remote(conn: u64) -> std::net::SocketAddr {
    format!("203.0.113.{}:50000", conn % 250).parse().unwrap()
}

#[test]
fn the_welcome_proves_the_server_key_on_this_connection_only() {
    let mut d = Driver::new(|_| {});
    let nonce = d.open(1);
    let proof = server_auth_proof(
        d.keys.device(1),
        d.keys.server.public(),
        &nonce,
        &binding(1),
    );
    let out = d.frame(
        1,
        RelayMessage::Authenticate {
            device: d.keys.id(1),
            proof: proof.to_vec(),
            rendezvous_only: false,
            rendezvous_ids: Vec::new(),
        },
    );
    let [RelayMessage::Welcome { proof, .. }, ..] = &relay_to(&out, 1)[..] else {
        panic!("a Welcome first, got {out:?}");
    };
    let server = d.keys.server.public();
    assert!(verify_server_proof(
        d.keys.device(1),
        server,
        &nonce,
        &binding(1),
        proof
    ));
    assert!(!verify_server_proof(
        d.keys.device(1),
        server,
        &nonce,
        &binding(2),
        proof
    ));
    assert!(!verify_server_proof(
        d.keys.device(2),
        server,
        &nonce,
        &binding(1),
        proof
    ));
}

#[test]
fn a_proof_relayed_by_a_man_in_the_middle_is_refused() {
    // The man in the middle holds two connections: the device's to it (binding 1) and
    // its own to the server (binding 2). It passes the server's challenge on; the
    // device proves over its own connection; the proof is relayed on the other one.
    let mut d = Driver::new(|_| {});
    let nonce = d.open(2);
    let proof = server_auth_proof(
        d.keys.device(1),
        d.keys.server.public(),
        &nonce,
        &binding(1),
    );
    let out = d.frame(
        2,
        RelayMessage::Authenticate {
            device: d.keys.id(1),
            proof: proof.to_vec(),
            rendezvous_only: false,
            rendezvous_ids: Vec::new(),
        },
    );
    assert_eq!(
        out,
        vec![ServerOutput::CloseWith(
            ConnId(2),
            WireFrame::Relay(refused(ServerRefusal::BadProof, None))
        )]
    );
    assert_eq!(d.server.authenticated_device(ConnId(2)), None);
    assert_eq!(d.server.counters().authenticated, 0);
}

/// Rates so high that no test of something else meets them.
fn unlimited() -> RateLimits {
    let rate = Rate {
        per_second: 1_000_000,
        burst: 1_000_000,
    };
    RateLimits {
        enqueue: rate,
        forward: rate,
        publish: rate,
    }
}

fn publish() -> RendezvousMessage {
    RendezvousMessage::Publish {
        rendezvous_id: [7; 32],
        ttl_ms: 60_000,
        hint: vec![1; 8],
    }
}

fn forward(d: &mut Driver, conn: u64, to: usize) -> Vec<RelayMessage> {
    let to = d.keys.id(to);
    let out = d.frame(
        conn,
        RelayMessage::Forward {
            to,
            frame: vec![1; 30],
        },
    );
    relay_to(&out, conn)
}

#[test]
fn a_connection_without_a_proof_is_closed_at_the_auth_deadline() {
    let mut d = Driver::new(|_| {});
    assert_eq!(d.config.auth_deadline, Duration::from_secs(5));
    d.open(1);
    d.connect(2, 2);
    assert_eq!(d.server.poll_timeout(), Some(d.t0 + Duration::from_secs(5)));
    d.advance_to(4_999);
    assert_eq!(d.server.connections(), 2);
    d.advance_to(5_000);
    assert_eq!(d.last, vec![ServerOutput::Close(ConnId(1))]);
    assert_eq!(d.server.connections(), 1, "the authenticated one stays");
    assert_eq!(d.server.authenticated_device(ConnId(2)), Some(d.keys.id(2)));
    assert_eq!(d.server.counters().auth_timeouts, 1);
    assert_eq!(d.server.poll_timeout(), None, "nothing left to time out");

    // A proof that comes after the deadline is not taken, even before the timer fires.
    let nonce = d.open(3);
    d.now = d.t0 + Duration::from_millis(10_000);
    let proof = server_auth_proof(
        d.keys.device(3),
        d.keys.server.public(),
        &nonce,
        &binding(3),
    );
    let device = d.keys.id(3);
    let out = d.frame(
        3,
        RelayMessage::Authenticate {
            device,
            proof: proof.to_vec(),
            rendezvous_only: false,
            rendezvous_ids: Vec::new(),
        },
    );
    assert_eq!(out, vec![ServerOutput::Close(ConnId(3))]);
    assert_eq!(d.server.authenticated_device(ConnId(3)), None);
    assert_eq!(d.server.counters().auth_timeouts, 2);
    assert_eq!(d.server.counters().authenticated, 1);
}

#[test]
fn a_device_not_on_the_allowlist_is_refused_after_its_proof_and_closed() {
    let keys = Keys::new();
    let admitted = [keys.id(1), keys.id(3)].into_iter().collect();
    let mut d = Driver::new(|c| c.admission = Admission::Allowlist(admitted));
    let out = d.connect(1, 1);
    assert!(matches!(
        relay_to(&out, 1).as_slice(),
        [RelayMessage::Welcome { .. }]
    ));
    let out = d.connect(2, 2);
    assert_eq!(
        out,
        vec![ServerOutput::CloseWith(
            ConnId(2),
            WireFrame::Relay(refused(ServerRefusal::NotAdmitted, None))
        )]
    );
    assert_eq!(d.server.authenticated_device(ConnId(2)), None);
    assert_eq!(d.server.connections(), 1);
    // It stores nothing: its connection is gone, and a new one is refused again.
    d.enqueue(2, 1, 9, 60_000, 10);
    assert_eq!(d.server.total_queued(), 0);
    d.connect(3, 2);
    assert_eq!(d.server.authenticated_device(ConnId(3)), None);
    assert_eq!(
        d.server.rendezvous_request(d.now, ConnId(3), &publish()),
        Err(ServerRefusal::NotAuthenticated)
    );
    let c = d.server.counters();
    assert_eq!((c.refused.not_admitted, c.authenticated), (2, 1));
    // An admitted device is served.
    d.connect(4, 3);
    d.enqueue(4, 1, 1, 60_000, 10);
    assert_eq!(
        relay_to(&d.last, 4),
        vec![RelayMessage::Enqueued { request: 1 }]
    );
}

#[test]
fn an_open_relay_admits_any_device_that_proves_a_key() {
    let mut d = Driver::new(|c| c.admission = Admission::Open);
    for n in 1..=3 {
        d.connect(n as u64, n);
        assert_eq!(
            d.server.authenticated_device(ConnId(n as u64)),
            Some(d.keys.id(n))
        );
    }
    assert_eq!(d.server.counters().refused.not_admitted, 0);
}

#[test]
fn one_sender_cannot_fill_a_victims_queue_and_the_victims_peer_still_enqueues() {
    let mut d = Driver::new(|c| {
        c.conn_rates = unlimited();
        c.identity_rates = unlimited();
    });
    let share = d.config.max_queued_per_sender_recipient;
    assert_eq!(share, 128);
    // p1 floods p2's queue with more than the whole queue holds.
    d.connect(1, 1);
    let mut accepted = 0;
    for request in 0..1_100 {
        d.enqueue(1, 2, request, 600_000, 100);
        match relay_to(&d.last, 1).as_slice() {
            [RelayMessage::Enqueued { .. }] => accepted += 1,
            [RelayMessage::Refused {
                reason: ServerRefusal::QuotaExceeded,
                ..
            }] => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(accepted, share);
    assert_eq!(d.server.queued_for(&d.keys.id(2)), share);
    // p3, p2's peer, still queues its migration ping for p2.
    d.connect(3, 3);
    d.enqueue(3, 2, 5_000, 600_000, 200);
    assert_eq!(
        relay_to(&d.last, 3),
        vec![RelayMessage::Enqueued { request: 5_000 }]
    );
    // p1's share of another queue is its own.
    d.enqueue(1, 3, 6_000, 600_000, 100);
    assert_eq!(
        relay_to(&d.last, 1),
        vec![RelayMessage::Enqueued { request: 6_000 }]
    );
}

#[test]
fn a_senders_share_of_one_queue_is_bounded_in_bytes_too() {
    let mut d = Driver::new(|c| c.max_queued_bytes_per_sender_recipient = 1_000);
    d.connect(1, 1);
    for request in 0..10 {
        d.enqueue(1, 2, request, 600_000, 100);
    }
    d.enqueue(1, 2, 10, 600_000, 1);
    assert_eq!(
        relay_to(&d.last, 1),
        vec![refused(ServerRefusal::QuotaExceeded, Some(10))]
    );
    d.connect(3, 3);
    d.enqueue(3, 2, 11, 600_000, 100);
    assert_eq!(
        relay_to(&d.last, 3),
        vec![RelayMessage::Enqueued { request: 11 }]
    );
    // Acknowledged envelopes give the share back.
    let out = d.connect(2, 2);
    let ids = pushed_ids(&out, 2);
    d.frame(2, RelayMessage::Delivered { envelope_ids: ids });
    d.enqueue(1, 2, 12, 600_000, 100);
    assert_eq!(
        relay_to(&d.last, 1),
        vec![RelayMessage::Enqueued { request: 12 }]
    );
}

#[test]
fn a_senders_stored_bytes_are_bounded_across_recipients() {
    let charged = 100 + ENVELOPE_OVERHEAD;
    let mut d = Driver::new(|c| c.max_stored_bytes_per_sender = 3 * charged);
    assert_eq!(
        RelayServerConfig::new(d.keys.server.clone(), [0; 32], Admission::Open)
            .max_stored_bytes_per_sender,
        16 * 1024 * 1024
    );
    d.connect(1, 1);
    d.enqueue(1, 2, 1, 600_000, 100);
    d.enqueue(1, 3, 2, 600_000, 100);
    d.enqueue(1, 2, 3, 600_000, 100);
    d.enqueue(1, 3, 4, 600_000, 1);
    assert_eq!(
        relay_to(&d.last, 1),
        vec![refused(ServerRefusal::QuotaExceeded, Some(4))]
    );
    let p1 = d.keys.id(1);
    assert_eq!(d.server.stored_by(&p1), (3, 3 * charged));
    // Well below the count quota: bytes are what stopped it.
    assert!(d.config.max_stored_per_sender > 3);
    // Expiry gives the bytes back.
    d.advance_to(600_000);
    assert_eq!(d.server.stored_by(&p1), (0, 0));
    d.enqueue(1, 3, 5, 600_000, 100);
    assert_eq!(
        relay_to(&d.last, 1),
        vec![RelayMessage::Enqueued { request: 5 }]
    );
}

#[test]
fn enqueue_forward_and_publish_are_rate_limited_per_connection() {
    let mut d = Driver::new(|c| {
        c.identity_rates = unlimited();
        c.conn_rates = RateLimits {
            enqueue: Rate {
                per_second: 2,
                burst: 3,
            },
            forward: Rate {
                per_second: 10,
                burst: 2,
            },
            publish: Rate {
                per_second: 1,
                burst: 2,
            },
        };
    });
    d.connect(1, 1);
    d.connect(2, 2);
    for request in 0..3 {
        d.enqueue(1, 2, request, 600_000, 10);
        assert!(matches!(
            relay_to(&d.last, 1).as_slice(),
            [RelayMessage::Enqueued { .. }]
        ));
    }
    d.enqueue(1, 2, 3, 600_000, 10);
    assert_eq!(
        relay_to(&d.last, 1),
        vec![refused(ServerRefusal::RateLimited, Some(3))]
    );
    // Half a second later one more token has come back.
    d.advance_to(500);
    d.enqueue(1, 2, 4, 600_000, 10);
    assert_eq!(
        relay_to(&d.last, 1),
        vec![RelayMessage::Enqueued { request: 4 }]
    );
    // Another connection has its own buckets.
    d.enqueue(2, 1, 5, 600_000, 10);
    assert_eq!(
        relay_to(&d.last, 2),
        vec![RelayMessage::Enqueued { request: 5 }]
    );

    let frames: Vec<_> = (0..3).map(|_| forward(&mut d, 1, 2)).collect();
    assert_eq!(
        frames[0],
        Vec::<RelayMessage>::new(),
        "forwarded, no answer"
    );
    assert_eq!(frames[1], Vec::<RelayMessage>::new());
    assert_eq!(frames[2], vec![refused(ServerRefusal::RateLimited, None)]);

    let now = d.now;
    let conn = ConnId(1);
    assert_eq!(
        d.server.rendezvous_request(now, conn, &publish()),
        Ok(d.keys.id(1))
    );
    assert_eq!(
        d.server.rendezvous_request(now, conn, &publish()),
        Ok(d.keys.id(1))
    );
    assert_eq!(
        d.server.rendezvous_request(now, conn, &publish()),
        Err(ServerRefusal::RateLimited)
    );
    // Lookups are not limited.
    let lookup = RendezvousMessage::Lookup {
        rendezvous_id: [7; 32],
    };
    assert_eq!(
        d.server.rendezvous_request(now, conn, &lookup),
        Ok(d.keys.id(1))
    );

    let c = d.server.counters();
    assert_eq!(c.refused.rate_limited, 3);
    assert_eq!(
        c.rate_limit_episodes, 1,
        "one episode, however many refusals"
    );
}

#[test]
fn an_identitys_rate_spans_its_connections_and_outlives_them() {
    let mut d = Driver::new(|c| {
        c.conn_rates = unlimited();
        c.identity_rates.enqueue = Rate {
            per_second: 1,
            burst: 4,
        };
    });
    let enqueued = |d: &mut Driver, conn: u64, request: u64| {
        d.enqueue(conn, 2, request, 600_000, 10);
        assert!(matches!(
            relay_to(&d.last, conn).as_slice(),
            [RelayMessage::Enqueued { .. }]
        ));
    };
    d.connect(1, 1);
    enqueued(&mut d, 1, 0);
    enqueued(&mut d, 1, 1);
    // A second connection of the device replaces the first; the bucket is the same.
    d.connect(2, 1);
    enqueued(&mut d, 2, 2);
    enqueued(&mut d, 2, 3);
    d.enqueue(2, 2, 4, 600_000, 10);
    assert_eq!(
        relay_to(&d.last, 2),
        vec![refused(ServerRefusal::RateLimited, Some(4))]
    );
    // Reconnecting buys no fresh burst.
    d.input(ServerInput::Closed(ConnId(1)));
    d.input(ServerInput::Closed(ConnId(2)));
    d.connect(3, 1);
    d.enqueue(3, 2, 5, 600_000, 10);
    assert_eq!(
        relay_to(&d.last, 3),
        vec![refused(ServerRefusal::RateLimited, Some(5))]
    );
    // The rate is one a second.
    d.advance_to(1_000);
    d.enqueue(3, 2, 6, 600_000, 10);
    assert_eq!(
        relay_to(&d.last, 3),
        vec![RelayMessage::Enqueued { request: 6 }]
    );
    // Once it has gone, the identity's state lasts until its buckets are full.
    d.input(ServerInput::Closed(ConnId(3)));
    assert_eq!(d.server.poll_timeout(), Some(d.t0 + Duration::from_secs(5)));
    d.advance_to(5_000);
    assert_eq!(
        d.server.poll_timeout(),
        Some(d.t0 + Duration::from_secs(600)),
        "forgotten: only the envelopes' expiry is left"
    );
}

#[test]
fn a_new_rate_limit_episode_starts_after_a_quiet_time() {
    let mut d = Driver::new(|c| {
        c.identity_rates = unlimited();
        c.conn_rates.forward = Rate {
            per_second: 1,
            burst: 1,
        };
    });
    d.connect(1, 1);
    d.connect(2, 2);
    for _ in 0..20 {
        forward(&mut d, 1, 2);
    }
    assert_eq!(d.server.counters().refused.rate_limited, 19);
    assert_eq!(d.server.counters().rate_limit_episodes, 1);
    // Refused again within the quiet time: the same episode.
    d.advance_to(5_000);
    forward(&mut d, 1, 2);
    forward(&mut d, 1, 2);
    assert_eq!(d.server.counters().rate_limit_episodes, 1);
    // RATE_LIMIT_QUIET after the last refusal, the next one is a new episode.
    d.advance_to(5_000 + RATE_LIMIT_QUIET.as_millis() as u64);
    forward(&mut d, 1, 2);
    assert_eq!(
        forward(&mut d, 1, 2),
        vec![refused(ServerRefusal::RateLimited, None)]
    );
    assert_eq!(d.server.counters().rate_limit_episodes, 2);
}

#[test]
fn default_rates_let_a_busy_session_through() {
    // Two seconds of the busiest relayed session measured in the simulator (41 000
    // messages a second), then 64 peers' migration pings and hint publishes at once
    // after a reconnect: nothing is refused.
    let mut d = Driver::new(|_| {});
    d.connect(1, 1);
    d.connect(2, 2);
    for ms in 0..2_000_u64 {
        d.advance_to(ms);
        for _ in 0..41 {
            forward(&mut d, 1, 2);
        }
    }
    for request in 0..64 {
        d.enqueue(1, 2, request, 600_000, 300);
    }
    for _ in 0..64 {
        assert!(d
            .server
            .rendezvous_request(d.now, ConnId(1), &publish())
            .is_ok());
    }
    assert_eq!(d.server.counters().refused.total(), 0);
    assert_eq!(d.server.counters().forwarded, 82_000);
}

/// A sender's share of one queue, lifted so that one sender can fill a whole batch.
fn wide_share(c: &mut RelayServerConfig) {
    c.max_queued_per_sender_recipient = c.max_queued_per_recipient;
    c.max_queued_bytes_per_sender_recipient = c.max_queued_bytes_per_recipient;
}

#[test]
fn a_batch_of_enqueues_is_one_commit_and_no_answer_goes_out_before_it() {
    let mut d = Driver::new(wide_share);
    d.connect(1, 1);
    d.connect(2, 2);
    let commits_before = d.commits;
    // The frames waiting when the shell wakes up: fed one after another, no commit.
    for request in 1..=MAX_INPUTS_PER_COMMIT as u64 {
        assert!(!d.server.commit_due(), "due after {} inputs", request - 1);
        let message = d.enqueue_message(2, request, 60_000, 16);
        d.server
            .handle(d.now, ServerInput::Frame(ConnId(1), message));
        assert_eq!(d.server.poll_output(), None, "an answer before its commit");
    }
    // The bound: a full batch asks for its commit before another input.
    assert!(d.server.commit_due());
    // One commit holds the whole batch.
    let changes: Vec<QueueChange> = std::iter::from_fn(|| d.server.poll_change()).collect();
    assert_eq!(changes.len(), MAX_INPUTS_PER_COMMIT);
    assert!(changes.iter().all(|c| matches!(c, QueueChange::Put(_))));
    // Taken and written, but not committed yet: still nothing goes out.
    d.store.apply(&changes).unwrap();
    assert_eq!(d.server.poll_output(), None, "an answer before its commit");
    assert_eq!(d.store.len(), MAX_INPUTS_PER_COMMIT);
    d.server.committed();
    assert!(!d.server.commit_due());
    let outputs: Vec<ServerOutput> = std::iter::from_fn(|| d.server.poll_output()).collect();
    let requests: Vec<u64> = relay_to(&outputs, 1)
        .into_iter()
        .map(|m| match m {
            RelayMessage::Enqueued { request } => request,
            other => panic!("expected Enqueued, got {other:?}"),
        })
        .collect();
    assert_eq!(
        requests,
        (1..=MAX_INPUTS_PER_COMMIT as u64).collect::<Vec<_>>()
    );
    assert_eq!(
        pushed_ids(&outputs, 2),
        (1..=MAX_INPUTS_PER_COMMIT as u64).collect::<Vec<_>>()
    );
    // The recipient acknowledges all of them in one frame: one commit removes them.
    let out = d.batch(vec![ServerInput::Frame(
        ConnId(2),
        RelayMessage::Delivered {
            envelope_ids: (1..=MAX_INPUTS_PER_COMMIT as u64).collect(),
        },
    )]);
    assert!(out.is_empty());
    assert_eq!(d.commits - commits_before, 1);
    assert!(d.store.is_empty());
}

#[test]
fn outputs_before_the_first_uncommitted_change_are_not_held() {
    let mut d = Driver::new(|_| {});
    d.connect(1, 1);
    d.connect(2, 2);
    let p2 = d.keys.id(2);
    d.server.handle(
        d.now,
        ServerInput::Frame(
            ConnId(1),
            RelayMessage::Forward {
                to: p2,
                frame: vec![0; 8],
            },
        ),
    );
    let message = d.enqueue_message(2, 7, 60_000, 16);
    d.server
        .handle(d.now, ServerInput::Frame(ConnId(1), message));
    // The forwarded frame needs no commit; the Enqueued and its Push do.
    assert!(matches!(
        d.server.poll_output(),
        Some(ServerOutput::Send(c, WireFrame::Relay(RelayMessage::Forwarded { .. }))) if c == ConnId(2)
    ));
    assert_eq!(d.server.poll_output(), None);
    let out = d.drain();
    assert_eq!(
        relay_to(&out, 1),
        vec![RelayMessage::Enqueued { request: 7 }]
    );
    assert_eq!(pushed_ids(&out, 2), vec![1]);
}

#[test]
fn a_batch_survives_a_restart_once_committed() {
    let mut d = Driver::new(|_| {});
    d.connect(1, 1);
    let inputs = (1..=3)
        .map(|request| ServerInput::Frame(ConnId(1), d.enqueue_message(2, request, 60_000, 16)))
        .collect();
    d.batch(inputs);
    d.restart(|_| {});
    let out = d.connect(2, 2);
    assert_eq!(pushed_ids(&out, 2), vec![1, 2, 3]);
}

#[test]
fn group_commit_trace() {
    let mut d = Driver::new(|_| {});
    d.connect(1, 1);
    d.connect(2, 2);
    d.trace.clear();
    let p2 = d.keys.id(2);
    let mut inputs: Vec<ServerInput> = (1..=3)
        .map(|request| ServerInput::Frame(ConnId(1), d.enqueue_message(2, request, 60_000, 16)))
        .collect();
    inputs.push(ServerInput::Frame(
        ConnId(2),
        RelayMessage::Forward {
            to: d.keys.id(1),
            frame: vec![0; 8],
        },
    ));
    d.batch(inputs);
    d.batch(vec![
        ServerInput::Frame(
            ConnId(2),
            RelayMessage::Delivered {
                envelope_ids: vec![1, 2],
            },
        ),
        ServerInput::Frame(ConnId(1), d.enqueue_message(2, 4, 60_000, 16)),
        ServerInput::Frame(
            ConnId(1),
            RelayMessage::Forward {
                to: p2,
                frame: vec![0; 8],
            },
        ),
    ]);
    assert_eq!(d.commits, 2);
    insta::assert_snapshot!(d.trace.join("\n"));
}

#[test]
fn a_rendezvous_answer_waits_in_order_behind_the_answers_before_it() {
    let mut d = Driver::new(|_| {});
    d.connect(1, 1);
    let message = d.enqueue_message(2, 3, 60_000, 16);
    d.server
        .handle(d.now, ServerInput::Frame(ConnId(1), message));
    let answer = RendezvousMessage::Refused {
        reason: ServerRefusal::RateLimited,
    };
    d.server.rendezvous_answer(ConnId(1), answer.clone());
    assert_eq!(d.server.poll_output(), None, "an answer before its commit");
    let out = d.drain();
    assert_eq!(
        out,
        vec![
            ServerOutput::Send(
                ConnId(1),
                WireFrame::Relay(RelayMessage::Enqueued { request: 3 })
            ),
            ServerOutput::Send(ConnId(1), WireFrame::Rendezvous(answer)),
        ]
    );
}

/// The reports of where devices are seen, waiting.
fn seen_reports(d: &mut Driver) -> Vec<DeviceSeen> {
    std::iter::from_fn(|| d.server.poll_seen()).collect()
}

#[test]
fn where_a_devices_own_connection_is_seen_is_reported_when_it_authenticates_moves_and_ends() {
    let mut d = Driver::new(|_| {});
    let seen = |device, addr| DeviceSeen {
        device,
        addr,
        rendezvous_ids: Vec::new(),
    };
    // Opening is not authenticating: nothing to report yet.
    d.open(1);
    assert_eq!(seen_reports(&mut d), vec![]);
    d.input(ServerInput::Closed(ConnId(1)));
    assert_eq!(seen_reports(&mut d), vec![], "it never authenticated");
    d.connect(2, 1);
    assert_eq!(
        seen_reports(&mut d),
        vec![seen(d.keys.id(1), Some(remote(2)))]
    );
    d.input(ServerInput::Moved(ConnId(2), moved_remote(2)));
    assert_eq!(
        seen_reports(&mut d),
        vec![seen(d.keys.id(1), Some(moved_remote(2)))]
    );
    // A rendezvous-only connection of the same device is not where it is reached.
    d.connect_as(3, 1, true);
    d.input(ServerInput::Moved(ConnId(3), moved_remote(3)));
    d.input(ServerInput::Closed(ConnId(3)));
    assert_eq!(seen_reports(&mut d), vec![]);
    // A new connection replaces the old one: reported from where the new one comes.
    d.connect(4, 1);
    assert_eq!(
        seen_reports(&mut d),
        vec![seen(d.keys.id(1), Some(remote(4)))]
    );
    d.input(ServerInput::Closed(ConnId(2)));
    assert_eq!(
        seen_reports(&mut d),
        vec![],
        "the replaced connection is not its own"
    );
    d.input(ServerInput::Closed(ConnId(4)));
    assert_eq!(seen_reports(&mut d), vec![seen(d.keys.id(1), None)]);
}

#[test]
fn reports_nobody_takes_are_bounded() {
    let mut d = Driver::new(|_| {});
    d.connect(1, 1);
    let extra = 5;
    for n in 0..MAX_PENDING_SEEN + extra {
        let addr: std::net::SocketAddr = format!("203.0.113.1:{}", 1000 + n).parse().unwrap();
        d.input(ServerInput::Moved(ConnId(1), addr));
    }
    let waiting = seen_reports(&mut d);
    assert_eq!(waiting.len(), MAX_PENDING_SEEN);
    // The oldest went: the newest address is the last report.
    let newest: std::net::SocketAddr =
        format!("203.0.113.1:{}", 1000 + MAX_PENDING_SEEN + extra - 1)
            .parse()
            .unwrap();
    assert_eq!(waiting.last().and_then(|s| s.addr), Some(newest));
    assert_eq!(d.server.counters().seen_dropped, (extra + 1) as u64);
}

#[test]
fn rendezvous_ids_sealed_with_the_proof_are_reported_with_the_device_and_bad_ones_are_counted() {
    let mut d = Driver::new(|_| {});
    let ids = vec![[1; 32], [2; 32]];
    let (device, server) = (d.keys.device(1).clone(), *d.keys.server.public());
    let sealed = |nonce: &[u8; 32]| seal_rendezvous_ids(&device, &server, nonce, &binding(1), &ids);
    let out = d.connect_with(1, 1, false, sealed);
    assert!(matches!(
        out.first(),
        Some(ServerOutput::Send(
            _,
            WireFrame::Relay(RelayMessage::Welcome { .. })
        ))
    ));
    assert_eq!(
        seen_reports(&mut d),
        vec![DeviceSeen {
            device: d.keys.id(1),
            addr: Some(remote(1)),
            rendezvous_ids: ids.clone(),
        }]
    );
    // Sealed for another connection (a man in the middle's), too many, or garbage:
    // the device is served all the same, without ids, and each is counted.
    let too_many = vec![[3; 32]; MAX_SEALED_RENDEZVOUS_IDS + 1];
    let device2 = d.keys.device(2).clone();
    /// Makes the sealed ids from the connection's challenge nonce.
    type Sealing<'a> = Box<dyn Fn(&[u8; 32]) -> Vec<u8> + 'a>;
    let sealings: [Sealing; 3] = [
        Box::new(|nonce| seal_rendezvous_ids(&device2, &server, nonce, &binding(99), &ids)),
        Box::new(|nonce| seal_rendezvous_ids(&device2, &server, nonce, &binding(2), &too_many)),
        Box::new(|_| vec![7; 80]),
    ];
    for (attempt, seal) in sealings.into_iter().enumerate() {
        let out = d.connect_with(2, 2, false, seal);
        assert!(
            matches!(
                out.first(),
                Some(ServerOutput::Send(
                    _,
                    WireFrame::Relay(RelayMessage::Welcome { .. })
                ))
            ),
            "attempt {attempt}: {out:?}"
        );
        let reports = seen_reports(&mut d);
        assert!(
            reports.iter().all(|r| r.rendezvous_ids.is_empty()),
            "attempt {attempt}: {reports:?}"
        );
        assert_eq!(d.server.counters().sealed_ids_refused, attempt as u64 + 1);
        d.input(ServerInput::Closed(ConnId(2)));
        seen_reports(&mut d);
    }
}
