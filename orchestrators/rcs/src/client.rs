//! The device side of the relay ([`RelayClient`]), sans-IO.
//!
//! # States
//! `Idle` (before [`ClientInput::Start`]) → `Dialling` (a `Dial` of the server address
//! is out) → `Authenticating` (link up; waiting for the server's `Challenge`, then for
//! `Welcome`) → `Connected`. A failed dial, a lost link, a refused proof or no progress
//! within [`RelayClientConfig::connect_timeout`] lead to `Disconnected`, which redials
//! after a jittered exponential backoff (base doubling up to the max; the delay is
//! drawn uniformly from its upper half).
//!
//! # Requests
//! - `Enqueue`: sent at once when connected; otherwise buffered and sent after
//!   `Welcome`. At most [`RelayClientConfig::max_pending`] envelopes are held (buffered
//!   or sent and unanswered); beyond that an `Err` result is returned at once, never a
//!   silent drop. Envelopes sent but unanswered when the link is lost are sent again
//!   after the next `Welcome` (the server may then store one twice; receivers dedupe by
//!   nonce). The server's `Enqueued` answers `Ok`, its `Refused` answers `Err`.
//! - `Forward`: sent at once when connected; dropped and counted otherwise (best effort:
//!   the session layer retransmits what is not acknowledged).
//! - `Poll`: a `Fetch` of up to [`RelayClientConfig::fetch_batch`] when connected; when
//!   not, nothing (the server pushes the whole queue after the next `Welcome`).
//!
//! Every `Push` is handed up as [`RelayDelivered`] and acknowledged with `Delivered` at
//! once; a `Forwarded` frame is handed up too. Duplicates are possible (a push whose
//! acknowledgement was lost is pushed again); the session layer dedupes.
//!
//! Bad input from the link (undecodable bytes, frames that make no sense in the current
//! state) is counted and dropped ([`RelayClientCounters`]).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tether_crypto::{server_auth_proof, PublicKey, StaticKeypair};
use tether_protocol::{
    DeviceId, LinkId, RelayDelivered, RelayEnqueue, RelayEnqueueResult, RelayForward, RelayMessage,
    RelayPoll, RelayStatus, RequestId, ServerRefusal, TransportCommand, TransportEvent, WireFrame,
};
use tracing::debug;

use crate::counters::RefusalCounters;

/// First request id of the relay client's dials: a distinct range ("RC" in the top
/// bytes) so the transport driver's answers cannot be confused with another
/// orchestrator's dials if they share a driver.
pub const DEFAULT_FIRST_DIAL_REQUEST: RequestId = RequestId(0x5243_0000_0000_0000);

/// Dials abandoned after a timeout that we still remember, to close their links if they
/// come up late. A handful is enough: each timeout adds one and dials are slow.
const MAX_STALE_DIALS: usize = 16;

/// Settings of the relay client.
#[derive(Debug, Clone)]
pub struct RelayClientConfig {
    /// This device's static keypair (its id, and the key it proves to the server).
    pub keypair: StaticKeypair,
    /// The relay server's public key.
    pub server_key: PublicKey,
    /// Where the relay server listens.
    pub server_addr: SocketAddr,
    /// First reconnect delay.
    pub backoff_base: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// How long a dial plus authentication may take before the attempt is abandoned.
    pub connect_timeout: Duration,
    /// TTL asked of the server for each envelope.
    pub enqueue_ttl: Duration,
    /// Most envelopes held by the client (buffered while disconnected, or sent and not
    /// yet answered).
    pub max_pending: usize,
    /// Envelopes asked for per `Fetch`.
    pub fetch_batch: u32,
    /// Seed of the backoff jitter RNG.
    pub seed: u64,
    /// Request id of the first dial; later dials count up from it.
    pub first_dial_request: RequestId,
}

impl RelayClientConfig {
    /// A config with default timings and bounds.
    pub fn new(
        keypair: StaticKeypair,
        server_key: PublicKey,
        server_addr: SocketAddr,
        seed: u64,
    ) -> Self {
        Self {
            keypair,
            server_key,
            server_addr,
            // 250 ms: a lost relay link is retried quickly, as it is the last path.
            backoff_base: Duration::from_millis(250),
            // 30 s: a server that is down is not hammered by every device.
            backoff_max: Duration::from_secs(30),
            // 10 s: several handshakes' worth of round trips on a slow mobile link.
            connect_timeout: Duration::from_secs(10),
            // 10 minutes: long enough for a peer to come back online after a migration,
            // short enough that stale frames do not pile up at the server.
            enqueue_ttl: Duration::from_secs(600),
            // 256: a migration burst plus retransmissions while the relay is unreachable.
            max_pending: 256,
            // 64 envelopes per fetch keeps a fetch answer well under the frame budget.
            fetch_batch: 64,
            seed,
            first_dial_request: DEFAULT_FIRST_DIAL_REQUEST,
        }
    }
}

/// What the relay client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientInput {
    /// Begin: dial the server.
    Start,
    /// A transport event; events for links and dials that are not the client's are
    /// ignored.
    Transport(TransportEvent),
    /// Store an envelope at the relay for a device.
    Enqueue(RelayEnqueue),
    /// Forward a frame live through the relay.
    Forward(RelayForward),
    /// Fetch what the relay queue holds for us.
    Poll(RelayPoll),
}

/// What the relay client asks to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOutput {
    /// To the transport driver.
    Transport(TransportCommand),
    /// An envelope or frame from another device, to DirectConnection.
    Delivered(RelayDelivered),
    /// The answer to a [`RelayEnqueue`], to DirectConnection.
    EnqueueResult(RelayEnqueueResult),
    /// The authenticated connection came up or went down.
    Status(RelayStatus),
}

/// Where the client's connection to the server stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// Not started.
    Idle,
    /// Waiting to redial.
    Disconnected {
        /// When the next dial goes out.
        retry_at: Instant,
    },
    /// A dial is out.
    Dialling {
        /// The dial.
        request: RequestId,
        /// Abandon it then.
        deadline: Instant,
    },
    /// Link up; proving our key.
    Authenticating {
        /// The link.
        link: LinkId,
        /// Abandon it then.
        deadline: Instant,
    },
    /// Authenticated: requests flow.
    Connected {
        /// The link.
        link: LinkId,
    },
}

/// What the client counted. Peer-caused problems land here, never in an error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayClientCounters {
    /// Frames from the server that could not be decoded.
    pub decode_errors: u64,
    /// Frames that decoded but made no sense here (wrong kind or wrong state).
    pub unexpected_frames: u64,
    /// Pushes received (duplicates included).
    pub pushes: u64,
    /// Live-forwarded frames received.
    pub forwarded_in: u64,
    /// Forwards dropped because the client was not connected.
    pub forwards_dropped: u64,
    /// Enqueues answered with an error because the client held too many.
    pub pending_overflow: u64,
    /// Requests that could not be encoded (too large): answered or dropped.
    pub encode_errors: u64,
    /// Refusals received from the server, by reason.
    pub refused: RefusalCounters,
    /// Dials that failed.
    pub dial_failures: u64,
    /// Connection attempts abandoned after `connect_timeout`.
    pub connect_timeouts: u64,
    /// Links lost (after they came up).
    pub links_lost: u64,
    /// Successful authentications.
    pub connects: u64,
}

/// The relay client core. See the module docs.
#[derive(Debug)]
pub struct RelayClient {
    config: RelayClientConfig,
    device: DeviceId,
    rng: ChaCha8Rng,
    state: ClientState,
    /// Consecutive failed attempts (the backoff exponent).
    attempts: u32,
    next_dial_request: u64,
    /// Dials abandoned after a timeout; a late LinkUp for one is closed.
    stale_dials: BTreeSet<RequestId>,
    /// Enqueues waiting for a connection, oldest first.
    buffered: VecDeque<RelayEnqueue>,
    /// Enqueues sent and not answered, by their wire request number.
    in_flight: BTreeMap<u64, RelayEnqueue>,
    next_wire_request: u64,
    outputs: VecDeque<ClientOutput>,
    counters: RelayClientCounters,
}

impl RelayClient {
    /// A client that does nothing until [`ClientInput::Start`].
    pub fn new(config: RelayClientConfig, _now: Instant) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(config.seed);
        let device = DeviceId(*config.keypair.public().as_bytes());
        let next_dial_request = config.first_dial_request.0;
        Self {
            config,
            device,
            rng,
            state: ClientState::Idle,
            attempts: 0,
            next_dial_request,
            stale_dials: BTreeSet::new(),
            buffered: VecDeque::new(),
            in_flight: BTreeMap::new(),
            next_wire_request: 1,
            outputs: VecDeque::new(),
            counters: RelayClientCounters::default(),
        }
    }

    /// This device's id.
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// Where the connection stands.
    pub fn state(&self) -> ClientState {
        self.state
    }

    /// Whether the client is authenticated to the server.
    pub fn is_connected(&self) -> bool {
        matches!(self.state, ClientState::Connected { .. })
    }

    /// What the client counted so far.
    pub fn counters(&self) -> RelayClientCounters {
        self.counters
    }

    /// Envelopes held: buffered plus sent and unanswered.
    pub fn pending(&self) -> usize {
        self.buffered.len() + self.in_flight.len()
    }

    /// Feeds one input.
    pub fn handle(&mut self, now: Instant, input: ClientInput) {
        match input {
            ClientInput::Start => {
                if self.state == ClientState::Idle {
                    self.dial(now);
                }
            }
            ClientInput::Transport(event) => self.transport(now, event),
            ClientInput::Enqueue(request) => self.enqueue(request),
            ClientInput::Forward(forward) => {
                if let ClientState::Connected { link } = self.state {
                    let message = RelayMessage::Forward {
                        to: forward.to,
                        frame: forward.frame,
                    };
                    if !self.transmit(link, message) {
                        self.counters.forwards_dropped += 1;
                    }
                } else {
                    self.counters.forwards_dropped += 1;
                }
            }
            ClientInput::Poll(_) => {
                if let ClientState::Connected { link } = self.state {
                    let max = self.config.fetch_batch;
                    self.transmit(link, RelayMessage::Fetch { max });
                }
            }
        }
    }

    /// Redials or abandons a stuck attempt when due. Spurious calls are harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            ClientState::Disconnected { retry_at } if now >= retry_at => self.dial(now),
            ClientState::Dialling { request, deadline } if now >= deadline => {
                self.counters.connect_timeouts += 1;
                if self.stale_dials.len() >= MAX_STALE_DIALS {
                    self.stale_dials.pop_first();
                }
                self.stale_dials.insert(request);
                self.disconnect(now);
            }
            ClientState::Authenticating { link, deadline } if now >= deadline => {
                self.counters.connect_timeouts += 1;
                self.close(link);
                self.disconnect(now);
            }
            _ => {}
        }
    }

    /// Next output to deliver.
    pub fn poll_output(&mut self) -> Option<ClientOutput> {
        self.outputs.pop_front()
    }

    /// The next instant at which [`RelayClient::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            ClientState::Disconnected { retry_at } => Some(retry_at),
            ClientState::Dialling { deadline, .. }
            | ClientState::Authenticating { deadline, .. } => Some(deadline),
            ClientState::Idle | ClientState::Connected { .. } => None,
        }
    }

    fn dial(&mut self, now: Instant) {
        let request = RequestId(self.next_dial_request);
        self.next_dial_request = self.next_dial_request.wrapping_add(1);
        self.state = ClientState::Dialling {
            request,
            deadline: now + self.config.connect_timeout,
        };
        self.outputs
            .push_back(ClientOutput::Transport(TransportCommand::Dial {
                request,
                addrs: vec![self.config.server_addr],
            }));
    }

    fn close(&mut self, link: LinkId) {
        self.outputs
            .push_back(ClientOutput::Transport(TransportCommand::Close { link }));
    }

    /// Leaves the current attempt or connection and schedules a redial.
    fn disconnect(&mut self, now: Instant) {
        if self.is_connected() {
            self.outputs
                .push_back(ClientOutput::Status(RelayStatus { connected: false }));
        }
        // Unanswered envelopes go back in front of the buffer, oldest first.
        let in_flight = std::mem::take(&mut self.in_flight);
        for (_, request) in in_flight.into_iter().rev() {
            self.buffered.push_front(request);
        }
        let delay = self.backoff();
        self.attempts = self.attempts.saturating_add(1);
        self.state = ClientState::Disconnected {
            retry_at: now + delay,
        };
    }

    fn backoff(&mut self) -> Duration {
        let exponent = self.attempts.min(16);
        let delay = self
            .config
            .backoff_base
            .saturating_mul(1_u32 << exponent)
            .min(self.config.backoff_max);
        let half = delay / 2;
        let spread = u64::try_from(half.as_micros()).unwrap_or(u64::MAX);
        let jitter = if spread == 0 {
            Duration::ZERO
        } else {
            Duration::from_micros(self.rng.gen_range(0..spread))
        };
        half + jitter
    }

    fn our_link(&self, link: LinkId) -> bool {
        matches!(
            self.state,
            ClientState::Authenticating { link: l, .. } | ClientState::Connected { link: l }
                if l == link
        )
    }

    fn transport(&mut self, now: Instant, event: TransportEvent) {
        match event {
            TransportEvent::LinkUp {
                request: Some(request),
                link,
                ..
            } => match self.state {
                ClientState::Dialling {
                    request: current, ..
                } if current == request => {
                    self.state = ClientState::Authenticating {
                        link,
                        deadline: now + self.config.connect_timeout,
                    };
                }
                _ => {
                    if self.stale_dials.remove(&request) {
                        // A dial we gave up on came up late: not ours any more.
                        self.close(link);
                    }
                }
            },
            TransportEvent::DialFailed { request, reason } => {
                self.stale_dials.remove(&request);
                if matches!(self.state, ClientState::Dialling { request: r, .. } if r == request) {
                    debug!(%reason, "relay client: dial failed");
                    self.counters.dial_failures += 1;
                    self.disconnect(now);
                }
            }
            TransportEvent::LinkDown { link, reason } => {
                if self.our_link(link) {
                    debug!(%reason, "relay client: link lost");
                    self.counters.links_lost += 1;
                    self.disconnect(now);
                }
            }
            TransportEvent::FrameReceived { link, frame } => {
                if self.our_link(link) {
                    self.frame(now, link, &frame);
                }
            }
            TransportEvent::LinkUp { request: None, .. } | TransportEvent::RemoteChanged { .. } => {
            }
        }
    }

    fn frame(&mut self, now: Instant, link: LinkId, bytes: &[u8]) {
        let message = match tether_protocol::decode(bytes) {
            Ok(WireFrame::Relay(message)) => message,
            Ok(_) => {
                self.counters.unexpected_frames += 1;
                return;
            }
            Err(err) => {
                debug!(%err, "relay client: undecodable frame");
                self.counters.decode_errors += 1;
                return;
            }
        };
        let connected = self.is_connected();
        match message {
            RelayMessage::Challenge { nonce } if !connected => {
                let proof =
                    server_auth_proof(&self.config.keypair, &self.config.server_key, &nonce);
                let device = self.device;
                self.transmit(
                    link,
                    RelayMessage::Authenticate {
                        device,
                        proof: proof.to_vec(),
                    },
                );
            }
            RelayMessage::Welcome if !connected => {
                self.state = ClientState::Connected { link };
                self.attempts = 0;
                self.counters.connects += 1;
                self.outputs
                    .push_back(ClientOutput::Status(RelayStatus { connected: true }));
                while let Some(request) = self.buffered.pop_front() {
                    self.send_enqueue(link, request);
                }
            }
            RelayMessage::Push {
                from,
                envelope_id,
                envelope,
            } if connected => {
                self.counters.pushes += 1;
                self.outputs
                    .push_back(ClientOutput::Delivered(RelayDelivered { from, envelope }));
                self.transmit(
                    link,
                    RelayMessage::Delivered {
                        envelope_ids: vec![envelope_id],
                    },
                );
            }
            RelayMessage::Forwarded { from, frame } if connected => {
                self.counters.forwarded_in += 1;
                self.outputs
                    .push_back(ClientOutput::Delivered(RelayDelivered {
                        from,
                        envelope: frame,
                    }));
            }
            RelayMessage::Enqueued { request } => match self.in_flight.remove(&request) {
                Some(enqueue) => self.answer(enqueue.request, Ok(())),
                None => self.counters.unexpected_frames += 1,
            },
            RelayMessage::Refused { request, reason } => {
                self.counters.refused.count(reason);
                match request.and_then(|r| self.in_flight.remove(&r)) {
                    Some(enqueue) => {
                        self.answer(enqueue.request, Err(format!("relay refused: {reason:?}")))
                    }
                    None => {
                        if matches!(
                            reason,
                            ServerRefusal::BadProof | ServerRefusal::NotAuthenticated
                        ) && !connected
                        {
                            // The server does not accept us on this link: start over.
                            self.close(link);
                            self.disconnect(now);
                        }
                    }
                }
            }
            other => {
                debug!(?other, "relay client: unexpected message");
                self.counters.unexpected_frames += 1;
            }
        }
    }

    fn enqueue(&mut self, request: RelayEnqueue) {
        if self.pending() >= self.config.max_pending {
            self.counters.pending_overflow += 1;
            let limit = self.config.max_pending;
            self.answer(
                request.request,
                Err(format!("relay client holds {limit} envelopes already")),
            );
            return;
        }
        match self.state {
            ClientState::Connected { link } => self.send_enqueue(link, request),
            _ => self.buffered.push_back(request),
        }
    }

    fn send_enqueue(&mut self, link: LinkId, request: RelayEnqueue) {
        let wire_request = self.next_wire_request;
        self.next_wire_request += 1;
        let ttl_ms = u64::try_from(self.config.enqueue_ttl.as_millis()).unwrap_or(u64::MAX);
        let message = RelayMessage::Enqueue {
            to: request.to,
            request: wire_request,
            ttl_ms,
            envelope: request.envelope.clone(),
        };
        if self.transmit(link, message) {
            self.in_flight.insert(wire_request, request);
        } else {
            self.answer(request.request, Err("envelope too large to send".into()));
        }
    }

    fn answer(&mut self, request: RequestId, result: Result<(), String>) {
        self.outputs
            .push_back(ClientOutput::EnqueueResult(RelayEnqueueResult {
                request,
                result,
            }));
    }

    /// Encodes and sends; false (counted) when the frame cannot be encoded.
    fn transmit(&mut self, link: LinkId, message: RelayMessage) -> bool {
        match tether_protocol::encode(&WireFrame::Relay(message)) {
            Ok(frame) => {
                self.outputs
                    .push_back(ClientOutput::Transport(TransportCommand::Transmit {
                        link,
                        frame,
                    }));
                true
            }
            Err(err) => {
                debug!(%err, "relay client: cannot encode");
                self.counters.encode_errors += 1;
                false
            }
        }
    }
}
