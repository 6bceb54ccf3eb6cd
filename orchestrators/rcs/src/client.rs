//! The device side of the relay ([`RelayClient`]), sans-IO.
//!
//! # Connection
//! Dialling, authenticating, backing off: [`ServerLink`]. This is the device's one
//! connection to the relay and rendezvous server: the relay client reports
//! `RelayStatus` when it comes up or goes down, sends the rendezvous client's requests
//! on it ([`ClientInput::Rendezvous`]; dropped and counted while not connected: the
//! rendezvous client holds what must survive a reconnect) and hands up the server's
//! rendezvous answers ([`ClientOutput::Rendezvous`]).
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

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tether_crypto::{PublicKey, StaticKeypair};
use tether_protocol::shell::SansIoCore;
use tether_protocol::{
    DeviceId, LinkBound, LinkId, RelayDelivered, RelayEnqueue, RelayEnqueueResult, RelayForward,
    RelayMessage, RelayPoll, RelayStatus, RendezvousMessage, RequestId, ServerRefusal,
    TransportCommand, TransportEvent, WireFrame, PATH_PROBE_PADDING,
};
use tether_server_link::{
    Change, ConnectionCounters, ConnectionState, ServerLink, ServerLinkConfig,
};
use tracing::debug;

use crate::counters::RefusalCounters;

/// First request id of the relay client's dials: a distinct range ("RC" in the top
/// bytes) so the transport driver's answers cannot be confused with another
/// orchestrator's dials if they share a driver.
pub const DEFAULT_FIRST_DIAL_REQUEST: RequestId = RequestId(0x5243_0000_0000_0000);

/// Settings of the relay client.
#[derive(Debug, Clone)]
pub struct RelayClientConfig {
    /// How to reach and prove ourselves to the relay server.
    pub server: ServerLinkConfig,
    /// TTL asked of the server for each envelope.
    pub enqueue_ttl: Duration,
    /// Most envelopes held by the client (buffered while disconnected, or sent and not
    /// yet answered).
    pub max_pending: usize,
    /// Envelopes asked for per `Fetch`.
    pub fetch_batch: u32,
    /// Seed of the RNG for backoff jitter and the server handshake: from the OS in a
    /// production node, from a test's seed in the simulator.
    pub rng_seed: [u8; 32],
}

impl RelayClientConfig {
    /// A config with default timings and bounds.
    pub fn new(
        keypair: StaticKeypair,
        server_key: PublicKey,
        server_addr: SocketAddr,
        rng_seed: [u8; 32],
    ) -> Self {
        Self {
            server: ServerLinkConfig::new(
                keypair,
                server_key,
                server_addr,
                DEFAULT_FIRST_DIAL_REQUEST,
            ),
            // 10 minutes: long enough for a peer to come back online after a migration,
            // short enough that stale frames do not pile up at the server.
            enqueue_ttl: Duration::from_secs(600),
            // 256: a migration burst plus retransmissions while the relay is unreachable.
            max_pending: 256,
            // 64 envelopes per fetch keeps a fetch answer well under the frame budget.
            fetch_batch: 64,
            rng_seed,
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
    /// The channel binding of a server link (the server proofs cover it).
    Bound(LinkBound),
    /// Store an envelope at the relay for a device.
    Enqueue(RelayEnqueue),
    /// Forward a frame live through the relay.
    Forward(RelayForward),
    /// Fetch what the relay queue holds for us.
    Poll(RelayPoll),
    /// A rendezvous request to send on the connection.
    Rendezvous(RendezvousMessage),
    /// This device's network changed: the connection follows QUIC's migration, and a
    /// [`RelayMessage::PathProbe`] goes out at once on the new path so the server can
    /// answer there before validating it.
    Moved,
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
    /// A rendezvous answer from the server, to the rendezvous client (Pms).
    Rendezvous(RendezvousMessage),
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
    /// Rendezvous requests dropped because the client was not connected.
    pub rendezvous_dropped: u64,
    /// Path probes sent after this device's network changed.
    pub path_probes: u64,
    /// Enqueues answered with an error because the client held too many.
    pub pending_overflow: u64,
    /// Requests that could not be encoded (too large): answered or dropped.
    pub encode_errors: u64,
    /// Refusals received from the server, by reason.
    pub refused: RefusalCounters,
    /// The connection's own: dials, timeouts, lost links, authentications.
    pub connection: ConnectionCounters,
}

/// The relay client core. See the module docs.
#[derive(Debug)]
pub struct RelayClient {
    config: RelayClientConfig,
    link: ServerLink,
    /// Draws the backoff jitter.
    rng: ChaCha8Rng,
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
        let rng = ChaCha8Rng::from_seed(config.rng_seed);
        let link = ServerLink::new(config.server.clone());
        Self {
            config,
            link,
            rng,
            buffered: VecDeque::new(),
            in_flight: BTreeMap::new(),
            next_wire_request: 1,
            outputs: VecDeque::new(),
            counters: RelayClientCounters::default(),
        }
    }

    /// This device's id.
    pub fn device(&self) -> DeviceId {
        self.link.device()
    }

    /// Where the connection stands.
    pub fn state(&self) -> ConnectionState {
        self.link.state()
    }

    /// Whether the client is authenticated to the server.
    pub fn is_connected(&self) -> bool {
        self.link.connected().is_some()
    }

    /// What the client counted so far.
    pub fn counters(&self) -> RelayClientCounters {
        RelayClientCounters {
            connection: self.link.counters(),
            ..self.counters
        }
    }

    /// Envelopes held: buffered plus sent and unanswered.
    pub fn pending(&self) -> usize {
        self.buffered.len() + self.in_flight.len()
    }
}

impl SansIoCore for RelayClient {
    type Input = ClientInput;
    type Output = ClientOutput;

    /// Feeds one input.
    fn handle(&mut self, now: Instant, input: ClientInput) {
        match input {
            ClientInput::Start => self.link.start(now),
            ClientInput::Transport(event) => {
                let change = self.link.transport(now, event, &mut self.rng);
                self.apply(now, change);
            }
            ClientInput::Bound(bound) => {
                self.link.bound(bound);
                self.drain_link();
            }
            ClientInput::Enqueue(request) => self.enqueue(request),
            ClientInput::Forward(forward) => {
                if let Some(link) = self.link.connected() {
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
                if let Some(link) = self.link.connected() {
                    let max = self.config.fetch_batch;
                    self.transmit(link, RelayMessage::Fetch { max });
                }
            }
            ClientInput::Moved => {
                if let Some(link) = self.link.connected() {
                    self.counters.path_probes += 1;
                    let padding = vec![0; PATH_PROBE_PADDING];
                    self.transmit(link, RelayMessage::PathProbe { padding });
                }
            }
            ClientInput::Rendezvous(message) => match self.link.connected() {
                Some(link) => {
                    self.transmit_frame(link, &WireFrame::Rendezvous(message));
                }
                None => self.counters.rendezvous_dropped += 1,
            },
        }
        self.drain_link();
    }

    /// Redials or abandons a stuck attempt when due. Spurious calls are harmless.
    fn handle_timeout(&mut self, now: Instant) {
        let change = self.link.handle_timeout(now, &mut self.rng);
        self.apply(now, change);
    }

    /// Next output to deliver.
    fn poll_output(&mut self) -> Option<ClientOutput> {
        self.outputs.pop_front()
    }

    /// The next instant at which [`SansIoCore::handle_timeout`] has something to do.
    fn poll_timeout(&self) -> Option<Instant> {
        self.link.poll_timeout()
    }
}

impl RelayClient {
    /// The connection's transport commands, in order after what the client queued.
    fn drain_link(&mut self) {
        while let Some(command) = self.link.poll_command() {
            self.outputs.push_back(ClientOutput::Transport(command));
        }
    }

    /// Passes on the connection's commands, then acts on what it did.
    fn apply(&mut self, now: Instant, change: Change) {
        self.drain_link();
        match change {
            Change::None => {}
            Change::Frame(link, frame) => self.frame(now, link, &frame),
            Change::Up(link) => {
                self.outputs
                    .push_back(ClientOutput::Status(RelayStatus { connected: true }));
                while let Some(request) = self.buffered.pop_front() {
                    self.send_enqueue(link, request);
                }
            }
            Change::Down { was_connected } => {
                if was_connected {
                    self.outputs
                        .push_back(ClientOutput::Status(RelayStatus { connected: false }));
                }
                // Unanswered envelopes go back in front of the buffer, oldest first.
                let in_flight = std::mem::take(&mut self.in_flight);
                for (_, request) in in_flight.into_iter().rev() {
                    self.buffered.push_front(request);
                }
            }
        }
    }

    fn frame(&mut self, now: Instant, link: LinkId, bytes: &[u8]) {
        let message = match tether_protocol::decode(bytes) {
            Ok(WireFrame::Relay(message)) => message,
            Ok(WireFrame::Rendezvous(message)) if self.is_connected() => {
                self.outputs.push_back(ClientOutput::Rendezvous(message));
                return;
            }
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
        if let Some(change) = self.link.server_message(now, link, &message, &mut self.rng) {
            self.apply(now, change);
            return;
        }
        let connected = self.is_connected();
        match message {
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
                            ServerRefusal::BadProof
                                | ServerRefusal::NotAuthenticated
                                | ServerRefusal::NotAdmitted
                                | ServerRefusal::Replaced
                        ) {
                            // The server does not accept us on this link: start over.
                            let change = self.link.refused(now, link, reason, &mut self.rng);
                            self.apply(now, change);
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
        match self.link.connected() {
            Some(link) => self.send_enqueue(link, request),
            None => self.buffered.push_back(request),
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
        self.transmit_frame(link, &WireFrame::Relay(message))
    }

    /// Encodes and sends any frame; false (counted) when it cannot be encoded.
    fn transmit_frame(&mut self, link: LinkId, frame: &WireFrame) -> bool {
        match tether_protocol::encode(frame) {
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
