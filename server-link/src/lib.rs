//! A device's connection to the relay and rendezvous server, sans-IO. The relay client
//! (Rcs) drives it; the rendezvous client (Pms) sends and receives on the same
//! connection through the relay client, so a device holds one connection to the
//! server.
//!
//! # States
//! `Idle` (before [`ServerLink::start`]) → `Dialling` (a `Dial` of the server address is
//! out) → `Authenticating` (link up; waiting for the server's `Challenge`, then for
//! `Welcome`) → `Connected`. A failed dial, a lost link, a failed authentication (in
//! either direction) or no progress within [`ServerLinkConfig::connect_timeout`] lead
//! to `Disconnected`, which redials after a jittered exponential backoff (base doubling
//! up to the max; the delay is drawn uniformly from its upper half).
//!
//! # Mutual authentication, bound to the connection
//! Both proofs ([`tether_crypto::server_auth`]) cover the link's channel binding, which
//! the transport driver reports with [`LinkBound`] (before or after `LinkUp`; a
//! `Challenge` waits for it). The server's `Challenge` names its key: another key than
//! the configured one ends the attempt there ([`ServerAuthFailure::WrongKey`]), before
//! our proof is sent. Our proof goes out only when both the nonce and the binding are
//! known. The server's `Welcome` carries its proof, checked against the configured key
//! before the connection counts as up ([`ServerAuthFailure::BadServerProof`] if it does
//! not verify: nothing was sent after our proof, and nothing is). A `Refused {
//! BadProof }` from the server ([`ServerLink::refused`]) is
//! [`ServerAuthFailure::ProofRefused`]; a `Refused { NotAdmitted }` after our proof
//! (the relay's allowlist does not hold our key) is [`ServerAuthFailure::NotAdmitted`].
//! Each failure is
//! counted, kept as [`ServerLink::auth_failure`] until an authentication succeeds,
//! and logged once per change (not once per retry); the backoff applies as to any
//! failed attempt.
//!
//! # Replaced
//! The server keeps one connection per device: when another connection authenticates
//! with this device's key, it closes ours with `Refused { Replaced }`. This device
//! never authenticates a second connection while it holds one, so on the connection in
//! use that means a second instance runs with the same key. It is counted
//! ([`ConnectionCounters::replaced`]), logged as a warning (once per
//! [`REPLACED_QUIET`]), and the redial waits the longest backoff, so two instances
//! take turns slowly instead of evicting each other several times a second.
//!
//! The client keeps its own requests and outputs. It hands this piece every transport
//! event and every relay-protocol message, drains its transport commands, and learns
//! from each call's [`Change`] when the connection came up or went down. The backoff
//! jitter is drawn from the client's seeded RNG, passed in.

use rand::Rng;
use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tether_crypto::{
    seal_rendezvous_ids, server_auth_proof, verify_server_proof, PublicKey, StaticKeypair,
};
use tether_protocol::{
    DeviceId, LinkBound, LinkId, RelayMessage, RequestId, ServerRefusal, TransportCommand,
    TransportEvent, WireFrame, CHANNEL_BINDING_LEN,
};
use tracing::{debug, info, warn};

/// How long after a replacement the next one is logged again: one warning per episode
/// of two instances sharing a key, not one per turn they take.
pub const REPLACED_QUIET: Duration = Duration::from_secs(300);

/// Dials abandoned after a timeout that we still remember, to close their links if they
/// come up late. A handful is enough: each timeout adds one and dials are slow.
const MAX_STALE_DIALS: usize = 16;

/// How to reach and prove ourselves to the server.
#[derive(Debug, Clone)]
pub struct ServerLinkConfig {
    /// This device's static keypair (its id, and the key it proves to the server).
    pub keypair: StaticKeypair,
    /// The server's public key.
    pub server_key: PublicKey,
    /// Where the server listens.
    pub server_addr: SocketAddr,
    /// First reconnect delay.
    pub backoff_base: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// How long a dial plus authentication may take before the attempt is abandoned.
    pub connect_timeout: Duration,
    /// Request id of the first dial; later dials count up from it.
    pub first_dial_request: RequestId,
    /// Authenticate a rendezvous-only connection (pairing): it does not replace the
    /// device's own connection, which a running node may hold.
    pub rendezvous_only: bool,
    /// The rendezvous ids of this device's pairs, sent sealed with the proof so that
    /// the server can introduce the device to a connected partner as it authenticates
    /// (the server keeps at most its own bound of them).
    pub rendezvous_ids: Vec<[u8; 32]>,
}

impl ServerLinkConfig {
    /// Default timings, dials numbered from `first_dial_request`.
    pub fn new(
        keypair: StaticKeypair,
        server_key: PublicKey,
        server_addr: SocketAddr,
        first_dial_request: RequestId,
    ) -> Self {
        Self {
            keypair,
            server_key,
            server_addr,
            // 250 ms: the relay is the last path and hints matter most right after a
            // network change, so a lost connection is retried quickly.
            backoff_base: Duration::from_millis(250),
            // 30 s: a server that is down is not hammered by every device.
            backoff_max: Duration::from_secs(30),
            // 10 s: several handshakes' worth of round trips on a slow mobile link.
            connect_timeout: Duration::from_secs(10),
            first_dial_request,
            rendezvous_only: false,
            rendezvous_ids: Vec::new(),
        }
    }
}

/// Where the connection to the server stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
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

/// What the connection counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionCounters {
    /// Dials that failed.
    pub dial_failures: u64,
    /// Connection attempts abandoned after `connect_timeout`.
    pub connect_timeouts: u64,
    /// Links lost (after they came up).
    pub links_lost: u64,
    /// Successful authentications.
    pub connects: u64,
    /// Attempts whose server named another key than the configured one.
    pub wrong_server_key: u64,
    /// Attempts whose server's `Welcome` proof did not verify against the configured
    /// key (a server without that key, or a man in the middle).
    pub bad_server_proofs: u64,
    /// Attempts whose server refused our proof (it does not hold the configured key,
    /// or the connection is intercepted).
    pub proofs_refused: u64,
    /// Attempts whose server took our proof but does not admit this device (its key
    /// is not on the relay's allowlist).
    pub not_admitted: u64,
    /// Connections the server closed because another connection authenticated with
    /// this device's key (a second instance with the same key).
    pub replaced: u64,
    /// Why the server is not authenticated now; None once an authentication succeeds
    /// (and before any failed).
    pub auth_failure: Option<ServerAuthFailure>,
    /// Whether the connection is authenticated now.
    pub connected: bool,
    /// Since when no attempt reached the server (a dial failed or timed out, since
    /// the start or the last time it was reached); None while it is reachable.
    pub unreachable_since: Option<Instant>,
    /// How the last attempt or connection ended, if one did.
    pub last_failure: Option<ConnectFailure>,
    /// The address the server sees this device's connection come from (its reflexive
    /// address), as the server last said; None while not connected.
    pub reflexive: Option<SocketAddr>,
}

/// How an attempt to reach the server, or a connection, ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// The dial failed (no route, refused, a QUIC handshake error).
    DialFailed,
    /// No link came up, or the authentication did not finish, within
    /// [`ServerLinkConfig::connect_timeout`].
    TimedOut,
    /// The link went down after it came up.
    LinkLost,
    /// The server refused us, or did not prove the configured key.
    Refused(ServerAuthFailure),
    /// The server closed our connection because another one proved this device's key.
    Replaced,
}

impl std::fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectFailure::DialFailed => f.write_str("dial failed"),
            ConnectFailure::TimedOut => f.write_str("timed out"),
            ConnectFailure::LinkLost => f.write_str("link lost"),
            ConnectFailure::Refused(ServerAuthFailure::WrongKey { .. }) => {
                f.write_str("refused: wrong server key?")
            }
            ConnectFailure::Refused(ServerAuthFailure::NotAdmitted) => {
                f.write_str("refused: this device is not admitted")
            }
            ConnectFailure::Refused(_) => f.write_str("refused: the server did not authenticate"),
            ConnectFailure::Replaced => {
                f.write_str("replaced by another connection with this device's key")
            }
        }
    }
}

/// Why an attempt to authenticate with the server failed: what `status` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerAuthFailure {
    /// The server named another public key than the configured one (our proof was
    /// not sent).
    WrongKey {
        /// The key it named.
        presented: [u8; 32],
    },
    /// The server claimed the configured key but could not prove it: a server without
    /// that key, or a man in the middle.
    BadServerProof,
    /// The server refused our proof: it does not hold the configured key, or the
    /// connection is intercepted (the proof is bound to it).
    ProofRefused,
    /// The server does not admit this device: its key is not on the relay's
    /// allowlist.
    NotAdmitted,
}

impl ServerAuthFailure {
    /// A short name for reports: `wrong key`, `unauthenticated` or `not admitted`.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerAuthFailure::WrongKey { .. } => "wrong key",
            ServerAuthFailure::BadServerProof | ServerAuthFailure::ProofRefused => {
                "unauthenticated"
            }
            ServerAuthFailure::NotAdmitted => "not admitted",
        }
    }
}

impl std::fmt::Display for ServerAuthFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerAuthFailure::WrongKey { presented } => {
                write!(f, "the server presents key ")?;
                for byte in presented {
                    write!(f, "{byte:02x}")?;
                }
                write!(f, ", not the configured one")
            }
            ServerAuthFailure::BadServerProof => write!(
                f,
                "the server did not prove the configured key (another server, or a man in \
                 the middle)"
            ),
            ServerAuthFailure::ProofRefused => write!(
                f,
                "the server refused our proof (it does not hold the configured key, or the \
                 connection is intercepted)"
            ),
            ServerAuthFailure::NotAdmitted => write!(
                f,
                "the relay does not admit this device (add its public key to the relay's \
                 `allow` list)"
            ),
        }
    }
}

/// What an attempt in `Authenticating` knows so far.
#[derive(Debug, Clone, Copy, Default)]
struct Handshake {
    /// The link's channel binding, once the driver reported it.
    binding: Option<[u8; CHANNEL_BINDING_LEN]>,
    /// The server's challenge nonce, once it arrived.
    nonce: Option<[u8; 32]>,
    /// Whether our proof went out (then `Welcome` is checked against both).
    proved: bool,
}

/// What a call did to the connection, for the client's own bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Nothing the client must act on.
    None,
    /// Authenticated: the client sends what it held back.
    Up(LinkId),
    /// The attempt or the connection ended; a redial is scheduled. The client puts
    /// back what it had in flight.
    Down {
        /// Whether it was connected (not only attempting).
        was_connected: bool,
    },
    /// A frame arrived on the server link: the client decodes it.
    Frame(LinkId, Vec<u8>),
}

/// The connection state machine. See the module docs.
#[derive(Debug)]
pub struct ServerLink {
    config: ServerLinkConfig,
    device: DeviceId,
    state: ConnectionState,
    /// Consecutive failed attempts (the backoff exponent).
    attempts: u32,
    next_dial_request: u64,
    /// Dials abandoned after a timeout; a late LinkUp for one is closed.
    stale_dials: BTreeSet<RequestId>,
    commands: VecDeque<TransportCommand>,
    counters: ConnectionCounters,
    /// The current attempt's authentication progress (reset on every link up).
    handshake: Handshake,
    /// A binding reported before its link's `LinkUp`.
    early_binding: Option<LinkBound>,
    /// When the server last replaced our connection (for the warning's quiet period).
    last_replaced: Option<Instant>,
}

impl ServerLink {
    /// A connection that does nothing until [`ServerLink::start`].
    pub fn new(config: ServerLinkConfig) -> Self {
        let device = DeviceId(*config.keypair.public().as_bytes());
        let next_dial_request = config.first_dial_request.0;
        Self {
            config,
            device,
            state: ConnectionState::Idle,
            attempts: 0,
            next_dial_request,
            stale_dials: BTreeSet::new(),
            commands: VecDeque::new(),
            counters: ConnectionCounters::default(),
            handshake: Handshake::default(),
            early_binding: None,
            last_replaced: None,
        }
    }

    /// Why the server is not authenticated now (None once authenticated).
    pub fn auth_failure(&self) -> Option<ServerAuthFailure> {
        self.counters.auth_failure
    }

    /// The driver's report of a link's channel binding; for a link that is not (yet)
    /// ours it is kept until its `LinkUp`.
    pub fn bound(&mut self, bound: LinkBound) {
        match self.state {
            ConnectionState::Authenticating { link, .. } if link == bound.link => {
                self.handshake.binding = Some(bound.binding);
                self.prove(link);
            }
            _ => self.early_binding = Some(bound),
        }
    }

    /// This device's id.
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// Where the connection stands.
    pub fn state(&self) -> ConnectionState {
        self.state
    }

    /// The authenticated link, if connected.
    pub fn connected(&self) -> Option<LinkId> {
        match self.state {
            ConnectionState::Connected { link } => Some(link),
            _ => None,
        }
    }

    /// What the connection counted so far, and where it stands.
    pub fn counters(&self) -> ConnectionCounters {
        ConnectionCounters {
            connected: self.connected().is_some(),
            ..self.counters
        }
    }

    /// An attempt did not reach the server: recorded, and logged once when the server
    /// becomes unreachable (not at every retry; [`ServerLink::server_message`] logs when
    /// it is reached again).
    fn unreachable(&mut self, now: Instant, failure: ConnectFailure, detail: &str) {
        self.counters.last_failure = Some(failure);
        if self.counters.unreachable_since.is_none() {
            self.counters.unreachable_since = Some(now);
            warn!(
                server = %self.config.server_addr,
                "relay unreachable: {failure} ({detail}); retrying with backoff"
            );
        }
    }

    /// Dials the server (once; later calls do nothing).
    pub fn start(&mut self, now: Instant) {
        if self.state == ConnectionState::Idle {
            self.dial(now);
        }
    }

    /// Redials or abandons a stuck attempt when due. Spurious calls are harmless.
    pub fn handle_timeout(&mut self, now: Instant, rng: &mut impl Rng) -> Change {
        match self.state {
            ConnectionState::Disconnected { retry_at } if now >= retry_at => {
                self.dial(now);
                Change::None
            }
            ConnectionState::Dialling { request, deadline } if now >= deadline => {
                self.counters.connect_timeouts += 1;
                let waited = format!("no link within {:?}", self.config.connect_timeout);
                self.unreachable(now, ConnectFailure::TimedOut, &waited);
                if self.stale_dials.len() >= MAX_STALE_DIALS {
                    self.stale_dials.pop_first();
                }
                self.stale_dials.insert(request);
                self.disconnect(now, rng)
            }
            ConnectionState::Authenticating { link, deadline } if now >= deadline => {
                self.counters.connect_timeouts += 1;
                let waited = format!(
                    "the server did not finish authenticating within {:?}",
                    self.config.connect_timeout
                );
                self.unreachable(now, ConnectFailure::TimedOut, &waited);
                self.close(link);
                self.disconnect(now, rng)
            }
            _ => Change::None,
        }
    }

    /// The next instant at which [`ServerLink::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            ConnectionState::Disconnected { retry_at } => Some(retry_at),
            ConnectionState::Dialling { deadline, .. }
            | ConnectionState::Authenticating { deadline, .. } => Some(deadline),
            ConnectionState::Idle | ConnectionState::Connected { .. } => None,
        }
    }

    /// The next transport command to deliver.
    pub fn poll_command(&mut self) -> Option<TransportCommand> {
        self.commands.pop_front()
    }

    /// A transport event; events for links and dials that are not ours are ignored.
    pub fn transport(&mut self, now: Instant, event: TransportEvent, rng: &mut impl Rng) -> Change {
        match event {
            TransportEvent::LinkUp {
                request: Some(request),
                link,
                ..
            } => match self.state {
                ConnectionState::Dialling {
                    request: current, ..
                } if current == request => {
                    self.state = ConnectionState::Authenticating {
                        link,
                        deadline: now + self.config.connect_timeout,
                    };
                    self.handshake = Handshake {
                        binding: self
                            .early_binding
                            .take()
                            .filter(|b| b.link == link)
                            .map(|b| b.binding),
                        ..Handshake::default()
                    };
                    Change::None
                }
                _ => {
                    if self.stale_dials.remove(&request) {
                        // A dial we gave up on came up late: not ours any more.
                        self.close(link);
                    }
                    Change::None
                }
            },
            TransportEvent::DialFailed { request, reason } => {
                self.stale_dials.remove(&request);
                if matches!(self.state, ConnectionState::Dialling { request: r, .. } if r == request)
                {
                    debug!(%reason, "server link: dial failed");
                    self.counters.dial_failures += 1;
                    self.unreachable(now, ConnectFailure::DialFailed, &reason);
                    self.disconnect(now, rng)
                } else {
                    Change::None
                }
            }
            TransportEvent::LinkDown { link, reason } if self.is_ours(link) => {
                debug!(%reason, "server link: link lost");
                self.counters.links_lost += 1;
                self.counters.last_failure = Some(ConnectFailure::LinkLost);
                self.disconnect(now, rng)
            }
            TransportEvent::FrameReceived { link, frame } if self.is_ours(link) => {
                Change::Frame(link, frame)
            }
            TransportEvent::LinkUp { request: None, .. }
            | TransportEvent::LinkDown { .. }
            | TransportEvent::FrameReceived { .. }
            | TransportEvent::RemoteChanged { .. }
            | TransportEvent::PathSampled { .. } => Change::None,
        }
    }

    /// The connection's part of the relay protocol: while not connected, the server's
    /// `Challenge` (answered with our proof once the binding is known) and its
    /// `Welcome` (checked against the configured key, and holding our reflexive
    /// address); while connected, `Observed` (our reflexive address changed). None when
    /// `message` is the client's to handle.
    pub fn server_message(
        &mut self,
        now: Instant,
        link: LinkId,
        message: &RelayMessage,
        rng: &mut impl Rng,
    ) -> Option<Change> {
        if let Some(connected) = self.connected() {
            return match message {
                RelayMessage::Observed { addr } if connected == link => {
                    if self.counters.reflexive != Some(*addr) {
                        info!(server = %self.config.server_addr, reflexive = %addr, "the relay sees this device at a new address");
                    }
                    self.counters.reflexive = Some(*addr);
                    Some(Change::None)
                }
                RelayMessage::Observed { .. } => Some(Change::None),
                _ => None,
            };
        }
        if !self.is_ours(link) {
            // Not the link of the current attempt: nothing a server says there counts.
            return matches!(
                message,
                RelayMessage::Challenge { .. } | RelayMessage::Welcome { .. }
            )
            .then_some(Change::None);
        }
        match message {
            RelayMessage::Challenge { nonce, server_key } => {
                if self.handshake.nonce.is_some() {
                    // One challenge per connection; a second one is ignored.
                    return Some(Change::None);
                }
                if server_key != self.config.server_key.as_bytes() {
                    self.counters.wrong_server_key += 1;
                    let failure = ServerAuthFailure::WrongKey {
                        presented: *server_key,
                    };
                    return Some(self.auth_failed(now, link, failure, rng));
                }
                self.handshake.nonce = Some(*nonce);
                self.prove(link);
                Some(Change::None)
            }
            RelayMessage::Welcome { proof, observed } => {
                let verified = match self.handshake {
                    Handshake {
                        binding: Some(binding),
                        nonce: Some(nonce),
                        proved: true,
                    } => verify_server_proof(
                        &self.config.keypair,
                        &self.config.server_key,
                        &nonce,
                        &binding,
                        proof,
                    ),
                    _ => false,
                };
                if !verified {
                    self.counters.bad_server_proofs += 1;
                    return Some(self.auth_failed(
                        now,
                        link,
                        ServerAuthFailure::BadServerProof,
                        rng,
                    ));
                }
                self.state = ConnectionState::Connected { link };
                self.attempts = 0;
                self.counters.connects += 1;
                self.counters.reflexive = *observed;
                if let Some(since) = self.counters.unreachable_since.take() {
                    info!(
                        server = %self.config.server_addr,
                        after_s = now.saturating_duration_since(since).as_secs(),
                        "relay reachable again"
                    );
                }
                if let Some(failure) = self.counters.auth_failure.take() {
                    info!(
                        server = %self.config.server_addr,
                        previously = %failure,
                        "server authenticated with the configured key"
                    );
                }
                Some(Change::Up(link))
            }
            _ => None,
        }
    }

    /// The server refused us on `link` for `reason` with no request named: start
    /// over. A refused proof is an authentication failure
    /// ([`ServerAuthFailure::ProofRefused`]), and so is a refused admission
    /// ([`ServerAuthFailure::NotAdmitted`]). `Replaced` on the connected link ends it
    /// (see the module docs).
    pub fn refused(
        &mut self,
        now: Instant,
        link: LinkId,
        reason: ServerRefusal,
        rng: &mut impl Rng,
    ) -> Change {
        if reason == ServerRefusal::Replaced {
            return self.replaced(now, link, rng);
        }
        if !self.is_ours(link) || self.connected().is_some() {
            return Change::None;
        }
        if reason == ServerRefusal::BadProof && self.handshake.proved {
            self.counters.proofs_refused += 1;
            return self.auth_failed(now, link, ServerAuthFailure::ProofRefused, rng);
        }
        if reason == ServerRefusal::NotAdmitted && self.handshake.proved {
            self.counters.not_admitted += 1;
            return self.auth_failed(now, link, ServerAuthFailure::NotAdmitted, rng);
        }
        self.close(link);
        self.disconnect(now, rng)
    }

    /// Another connection authenticated with our key and the server closed ours.
    fn replaced(&mut self, now: Instant, link: LinkId, rng: &mut impl Rng) -> Change {
        if self.connected() != Some(link) {
            // An old link of ours: already given up.
            return Change::None;
        }
        self.counters.replaced += 1;
        if self
            .last_replaced
            .is_none_or(|at| now.saturating_duration_since(at) >= REPLACED_QUIET)
        {
            warn!(
                server = %self.config.server_addr,
                device = %self.device,
                "the relay closed our connection: another connection proved this device's \
                 key (is a second instance running with the same key file?); reconnecting \
                 in {:?}",
                self.config.backoff_max
            );
        }
        self.last_replaced = Some(now);
        self.counters.last_failure = Some(ConnectFailure::Replaced);
        self.close(link);
        let change = self.disconnect(now, rng);
        self.state = ConnectionState::Disconnected {
            retry_at: now + self.config.backoff_max,
        };
        change
    }

    /// Sends our proof once both the challenge and the binding are known.
    fn prove(&mut self, link: LinkId) {
        let Handshake {
            binding: Some(binding),
            nonce: Some(nonce),
            proved: false,
        } = self.handshake
        else {
            return;
        };
        self.handshake.proved = true;
        let proof = server_auth_proof(
            &self.config.keypair,
            &self.config.server_key,
            &nonce,
            &binding,
        );
        let rendezvous_ids = if self.config.rendezvous_ids.is_empty() {
            Vec::new()
        } else {
            seal_rendezvous_ids(
                &self.config.keypair,
                &self.config.server_key,
                &nonce,
                &binding,
                &self.config.rendezvous_ids,
            )
        };
        let authenticate = RelayMessage::Authenticate {
            device: self.device,
            proof: proof.to_vec(),
            rendezvous_only: self.config.rendezvous_only,
            rendezvous_ids,
        };
        match tether_protocol::encode(&WireFrame::Relay(authenticate)) {
            Ok(frame) => self
                .commands
                .push_back(TransportCommand::Transmit { link, frame }),
            // A fixed-size message always encodes; should it not, the attempt times out
            // and is retried.
            Err(err) => debug!(%err, "server link: cannot encode the proof"),
        }
    }

    /// Ends an attempt whose authentication failed: records and (once per change)
    /// logs why, closes the link, backs off.
    fn auth_failed(
        &mut self,
        now: Instant,
        link: LinkId,
        failure: ServerAuthFailure,
        rng: &mut impl Rng,
    ) -> Change {
        if self.counters.auth_failure != Some(failure) {
            warn!(
                server = %self.config.server_addr,
                status = failure.kind(),
                "{failure}; retrying with backoff"
            );
        }
        self.counters.auth_failure = Some(failure);
        self.counters.last_failure = Some(ConnectFailure::Refused(failure));
        // It answered: reachable, though not usable.
        self.counters.unreachable_since = None;
        self.close(link);
        self.disconnect(now, rng)
    }

    fn dial(&mut self, now: Instant) {
        let request = RequestId(self.next_dial_request);
        self.next_dial_request = self.next_dial_request.wrapping_add(1);
        self.state = ConnectionState::Dialling {
            request,
            deadline: now + self.config.connect_timeout,
        };
        self.commands.push_back(TransportCommand::Dial {
            request,
            addrs: vec![self.config.server_addr],
        });
    }

    fn close(&mut self, link: LinkId) {
        self.commands.push_back(TransportCommand::Close { link });
    }

    /// Leaves the current attempt or connection and schedules a redial.
    fn disconnect(&mut self, now: Instant, rng: &mut impl Rng) -> Change {
        let was_connected = self.connected().is_some();
        self.counters.reflexive = None;
        let delay = self.backoff(rng);
        self.attempts = self.attempts.saturating_add(1);
        self.state = ConnectionState::Disconnected {
            retry_at: now + delay,
        };
        Change::Down { was_connected }
    }

    fn backoff(&self, rng: &mut impl Rng) -> Duration {
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
            Duration::from_micros(rng.gen_range(0..spread))
        };
        half + jitter
    }

    fn is_ours(&self, link: LinkId) -> bool {
        matches!(
            self.state,
            ConnectionState::Authenticating { link: l, .. } | ConnectionState::Connected { link: l }
                if l == link
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use tether_crypto::{server_proof, verify_server_auth};
    use tether_protocol::PathKind;

    const FIRST: RequestId = RequestId(100);

    struct Setup {
        link: ServerLink,
        server: StaticKeypair,
        rng: ChaCha8Rng,
        t0: Instant,
    }

    fn setup() -> Setup {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let device = StaticKeypair::generate(&mut rng);
        let server = StaticKeypair::generate(&mut rng);
        let addr: SocketAddr = "192.0.2.1:443".parse().unwrap();
        let config = ServerLinkConfig::new(device, *server.public(), addr, FIRST);
        Setup {
            link: ServerLink::new(config),
            server,
            rng,
            t0: Instant::now(),
        }
    }

    fn link_up(request: RequestId, link: u64) -> TransportEvent {
        TransportEvent::LinkUp {
            request: Some(request),
            link: LinkId(link),
            path: PathKind::Direct,
            remote: None,
        }
    }

    fn commands(link: &mut ServerLink) -> Vec<TransportCommand> {
        std::iter::from_fn(|| link.poll_command()).collect()
    }

    const BINDING: [u8; CHANNEL_BINDING_LEN] = [0xB1; CHANNEL_BINDING_LEN];

    fn bound(link: u64) -> LinkBound {
        LinkBound {
            link: LinkId(link),
            binding: BINDING,
        }
    }

    fn challenge(s: &Setup, nonce: [u8; 32]) -> RelayMessage {
        RelayMessage::Challenge {
            nonce,
            server_key: *s.server.public().as_bytes(),
        }
    }

    /// Dials, brings link 9 up with its binding, answers a challenge; returns the
    /// proof we sent.
    fn up_and_proved(s: &mut Setup, nonce: [u8; 32]) -> Vec<u8> {
        s.link.start(s.t0);
        commands(&mut s.link);
        s.link.bound(bound(9));
        s.link.transport(s.t0, link_up(FIRST, 9), &mut s.rng);
        let message = challenge(s, nonce);
        assert_eq!(
            s.link.server_message(s.t0, LinkId(9), &message, &mut s.rng),
            Some(Change::None)
        );
        let [TransportCommand::Transmit { link, frame }] = &commands(&mut s.link)[..] else {
            panic!("one Authenticate expected");
        };
        assert_eq!(*link, LinkId(9));
        let Ok(WireFrame::Relay(RelayMessage::Authenticate { device, proof, .. })) =
            tether_protocol::decode(frame)
        else {
            panic!("an Authenticate frame");
        };
        assert_eq!(device, s.link.device());
        proof
    }

    fn welcome(s: &mut Setup, proof: Vec<u8>) -> Option<Change> {
        let message = RelayMessage::Welcome {
            proof,
            observed: None,
        };
        s.link.server_message(s.t0, LinkId(9), &message, &mut s.rng)
    }

    fn genuine_welcome_proof(s: &Setup, nonce: [u8; 32]) -> Vec<u8> {
        server_proof(&s.server, s.link.config.keypair.public(), &nonce, &BINDING).to_vec()
    }

    #[test]
    fn dial_challenge_proof_welcome_connects() {
        let mut s = setup();
        s.link.start(s.t0);
        assert!(matches!(
            commands(&mut s.link)[..],
            [TransportCommand::Dial { request: FIRST, .. }]
        ));
        let up = s.link.transport(s.t0, link_up(FIRST, 9), &mut s.rng);
        assert_eq!(up, Change::None);
        assert!(matches!(
            s.link.state(),
            ConnectionState::Authenticating {
                link: LinkId(9),
                ..
            }
        ));
        let nonce = [5_u8; 32];
        let message = challenge(&s, nonce);
        assert_eq!(
            s.link.server_message(s.t0, LinkId(9), &message, &mut s.rng),
            Some(Change::None)
        );
        // No proof before the binding is known: it covers the binding.
        assert!(commands(&mut s.link).is_empty());
        s.link.bound(bound(9));
        let [TransportCommand::Transmit { link, frame }] = &commands(&mut s.link)[..] else {
            panic!("one Authenticate expected");
        };
        assert_eq!(*link, LinkId(9));
        let Ok(WireFrame::Relay(RelayMessage::Authenticate { device, proof, .. })) =
            tether_protocol::decode(frame)
        else {
            panic!("an Authenticate frame");
        };
        let device_key = PublicKey::from_bytes(device.0).unwrap();
        assert!(verify_server_auth(
            &s.server,
            &device_key,
            &nonce,
            &BINDING,
            &proof
        ));
        let proof = genuine_welcome_proof(&s, nonce);
        assert_eq!(welcome(&mut s, proof), Some(Change::Up(LinkId(9))));
        assert_eq!(s.link.connected(), Some(LinkId(9)));
        assert_eq!(s.link.poll_timeout(), None);
        // Connected: the connection's part of the protocol is over.
        assert_eq!(
            s.link.server_message(s.t0, LinkId(9), &message, &mut s.rng),
            None
        );
        assert_eq!(s.link.counters().connects, 1);
        assert_eq!(s.link.auth_failure(), None);
    }

    #[test]
    fn a_binding_reported_before_link_up_is_used() {
        let mut s = setup();
        let nonce = [4_u8; 32];
        let proof = up_and_proved(&mut s, nonce);
        let device_key = *s.link.config.keypair.public();
        assert!(verify_server_auth(
            &s.server,
            &device_key,
            &nonce,
            &BINDING,
            &proof
        ));
    }

    #[test]
    fn a_welcome_without_a_valid_server_proof_is_refused_and_nothing_is_sent_after_it() {
        let mut rng = ChaCha8Rng::seed_from_u64(99);
        let impostor = StaticKeypair::generate(&mut rng);
        let nonce = [6_u8; 32];
        let device_key = *setup().link.config.keypair.public();
        let mut other_binding = BINDING;
        other_binding[0] ^= 1;
        let bad_proofs: Vec<(&str, Vec<u8>)> = vec![
            ("none", Vec::new()),
            (
                "by another key",
                server_proof(&impostor, &device_key, &nonce, &BINDING).to_vec(),
            ),
            (
                "for another connection",
                server_proof(&setup().server, &device_key, &nonce, &other_binding).to_vec(),
            ),
            (
                "for another nonce",
                server_proof(&setup().server, &device_key, &[7; 32], &BINDING).to_vec(),
            ),
        ];
        for (what, proof) in bad_proofs {
            let mut s = setup();
            up_and_proved(&mut s, nonce);
            assert_eq!(
                welcome(&mut s, proof),
                Some(Change::Down {
                    was_connected: false
                }),
                "{what}"
            );
            assert_eq!(s.link.connected(), None, "{what}");
            assert!(
                matches!(s.link.state(), ConnectionState::Disconnected { .. }),
                "{what}"
            );
            assert_eq!(
                commands(&mut s.link),
                vec![TransportCommand::Close { link: LinkId(9) }],
                "{what}: only the close goes out"
            );
            assert_eq!(s.link.counters().bad_server_proofs, 1, "{what}");
            assert_eq!(s.link.counters().connects, 0, "{what}");
            assert_eq!(
                s.link.auth_failure(),
                Some(ServerAuthFailure::BadServerProof),
                "{what}"
            );
            // Frames on the closed link are not ours any more.
            let late = TransportEvent::FrameReceived {
                link: LinkId(9),
                frame: vec![1],
            };
            assert_eq!(s.link.transport(s.t0, late, &mut s.rng), Change::None);
        }
    }

    #[test]
    fn a_welcome_before_our_proof_is_refused() {
        let mut s = setup();
        s.link.start(s.t0);
        s.link.transport(s.t0, link_up(FIRST, 9), &mut s.rng);
        commands(&mut s.link);
        let proof = genuine_welcome_proof(&s, [0; 32]);
        assert_eq!(
            welcome(&mut s, proof),
            Some(Change::Down {
                was_connected: false
            })
        );
        assert_eq!(
            s.link.auth_failure(),
            Some(ServerAuthFailure::BadServerProof)
        );
    }

    #[test]
    fn a_challenge_naming_another_key_ends_the_attempt_without_a_proof() {
        let mut s = setup();
        s.link.start(s.t0);
        s.link.bound(bound(9));
        s.link.transport(s.t0, link_up(FIRST, 9), &mut s.rng);
        commands(&mut s.link);
        let message = RelayMessage::Challenge {
            nonce: [1; 32],
            server_key: [0xEE; 32],
        };
        assert_eq!(
            s.link.server_message(s.t0, LinkId(9), &message, &mut s.rng),
            Some(Change::Down {
                was_connected: false
            })
        );
        assert_eq!(
            commands(&mut s.link),
            vec![TransportCommand::Close { link: LinkId(9) }]
        );
        assert_eq!(s.link.counters().wrong_server_key, 1);
        let failure = s.link.auth_failure().unwrap();
        assert_eq!(
            failure,
            ServerAuthFailure::WrongKey {
                presented: [0xEE; 32]
            }
        );
        assert_eq!(failure.kind(), "wrong key");
        assert!(failure.to_string().contains(&"ee".repeat(32)));
        // The backoff applies: the redial waits.
        let ConnectionState::Disconnected { retry_at } = s.link.state() else {
            panic!("disconnected");
        };
        assert!(retry_at > s.t0);
    }

    #[test]
    fn a_refused_admission_is_an_authentication_failure_with_its_own_reason() {
        let mut s = setup();
        up_and_proved(&mut s, [3; 32]);
        assert_eq!(
            s.link
                .refused(s.t0, LinkId(9), ServerRefusal::NotAdmitted, &mut s.rng),
            Change::Down {
                was_connected: false
            }
        );
        let failure = s.link.auth_failure().unwrap();
        assert_eq!(failure, ServerAuthFailure::NotAdmitted);
        assert_eq!(failure.kind(), "not admitted");
        assert!(failure.to_string().contains("allow"), "{failure}");
        assert_eq!(s.link.counters().not_admitted, 1);
        assert_eq!(
            commands(&mut s.link),
            vec![TransportCommand::Close { link: LinkId(9) }]
        );
    }

    #[test]
    fn a_refused_proof_is_an_authentication_failure_until_a_welcome_verifies() {
        let mut s = setup();
        let nonce = [2_u8; 32];
        up_and_proved(&mut s, nonce);
        assert_eq!(
            s.link
                .refused(s.t0, LinkId(9), ServerRefusal::BadProof, &mut s.rng),
            Change::Down {
                was_connected: false
            }
        );
        assert_eq!(s.link.auth_failure(), Some(ServerAuthFailure::ProofRefused));
        assert_eq!(s.link.auth_failure().unwrap().kind(), "unauthenticated");
        assert_eq!(s.link.counters().proofs_refused, 1);
        // The next attempt succeeds: the failure is cleared.
        let retry_at = s.link.poll_timeout().unwrap();
        s.link.handle_timeout(retry_at, &mut s.rng);
        let request = RequestId(FIRST.0 + 1);
        commands(&mut s.link);
        s.link.bound(bound(10));
        s.link.transport(retry_at, link_up(request, 10), &mut s.rng);
        let message = challenge(&s, nonce);
        s.link
            .server_message(retry_at, LinkId(10), &message, &mut s.rng);
        let proof = genuine_welcome_proof(&s, nonce);
        let message = RelayMessage::Welcome {
            proof,
            observed: None,
        };
        assert_eq!(
            s.link
                .server_message(retry_at, LinkId(10), &message, &mut s.rng),
            Some(Change::Up(LinkId(10)))
        );
        assert_eq!(s.link.auth_failure(), None);
        assert_eq!(s.link.counters().proofs_refused, 1);
    }

    #[test]
    fn unreachable_is_kept_from_the_first_failed_attempt_until_the_server_is_reached() {
        let mut s = setup();
        s.link.start(s.t0);
        assert_eq!(s.link.counters().unreachable_since, None);
        // The first attempt times out: unreachable since then.
        let deadline = s.link.poll_timeout().unwrap();
        s.link.handle_timeout(deadline, &mut s.rng);
        let counters = s.link.counters();
        assert_eq!(counters.unreachable_since, Some(deadline));
        assert_eq!(counters.last_failure, Some(ConnectFailure::TimedOut));
        assert!(!counters.connected);
        // The second one fails to dial: still unreachable since the first.
        let retry_at = s.link.poll_timeout().unwrap();
        s.link.handle_timeout(retry_at, &mut s.rng);
        let failed = TransportEvent::DialFailed {
            request: RequestId(FIRST.0 + 1),
            reason: "no route".into(),
        };
        s.link.transport(retry_at, failed, &mut s.rng);
        let counters = s.link.counters();
        assert_eq!(counters.unreachable_since, Some(deadline));
        assert_eq!(counters.last_failure, Some(ConnectFailure::DialFailed));
        assert_eq!(
            ConnectFailure::DialFailed.to_string(),
            "dial failed",
            "what status shows"
        );
        // The third one reaches it and authenticates.
        let retry_at = s.link.poll_timeout().unwrap();
        s.link.handle_timeout(retry_at, &mut s.rng);
        commands(&mut s.link);
        s.link.bound(bound(10));
        s.link
            .transport(retry_at, link_up(RequestId(FIRST.0 + 2), 10), &mut s.rng);
        let nonce = [4_u8; 32];
        let message = challenge(&s, nonce);
        s.link
            .server_message(retry_at, LinkId(10), &message, &mut s.rng);
        let message = RelayMessage::Welcome {
            proof: genuine_welcome_proof(&s, nonce),
            observed: None,
        };
        assert_eq!(
            s.link
                .server_message(retry_at, LinkId(10), &message, &mut s.rng),
            Some(Change::Up(LinkId(10)))
        );
        let counters = s.link.counters();
        assert_eq!(counters.unreachable_since, None);
        assert!(counters.connected);
    }

    #[test]
    fn a_server_with_another_key_is_reachable_but_refused() {
        let mut s = setup();
        s.link.start(s.t0);
        commands(&mut s.link);
        s.link.bound(bound(9));
        s.link.transport(s.t0, link_up(FIRST, 9), &mut s.rng);
        let message = RelayMessage::Challenge {
            nonce: [1; 32],
            server_key: [9; 32],
        };
        s.link.server_message(s.t0, LinkId(9), &message, &mut s.rng);
        let counters = s.link.counters();
        assert_eq!(counters.unreachable_since, None);
        let failure = counters.last_failure.unwrap();
        assert_eq!(failure.to_string(), "refused: wrong server key?");
    }

    #[test]
    fn a_lost_link_backs_off_within_the_upper_half_and_doubles() {
        let mut s = setup();
        s.link.start(s.t0);
        let base = s.link.config.backoff_base;
        for attempt in 0..4_u32 {
            let request = RequestId(FIRST.0 + u64::from(attempt));
            let failed = TransportEvent::DialFailed {
                request,
                reason: "unreachable".into(),
            };
            let now = s.link.poll_timeout().map_or(s.t0, |at| at.max(s.t0));
            let change = s.link.transport(now, failed, &mut s.rng);
            assert_eq!(
                change,
                Change::Down {
                    was_connected: false
                }
            );
            let ConnectionState::Disconnected { retry_at } = s.link.state() else {
                panic!("disconnected after a failed dial");
            };
            let delay = base * 2_u32.pow(attempt);
            let waited = retry_at - now;
            assert!(
                waited >= delay / 2 && waited < delay,
                "{waited:?} for {delay:?}"
            );
            assert_eq!(s.link.handle_timeout(retry_at, &mut s.rng), Change::None);
            assert!(matches!(s.link.state(), ConnectionState::Dialling { .. }));
        }
        assert_eq!(s.link.counters().dial_failures, 4);
    }

    #[test]
    fn a_dial_that_comes_up_after_its_timeout_is_closed() {
        let mut s = setup();
        s.link.start(s.t0);
        let deadline = s.link.poll_timeout().unwrap();
        let change = s.link.handle_timeout(deadline, &mut s.rng);
        assert_eq!(
            change,
            Change::Down {
                was_connected: false
            }
        );
        commands(&mut s.link);
        assert_eq!(
            s.link.transport(deadline, link_up(FIRST, 3), &mut s.rng),
            Change::None
        );
        assert_eq!(
            commands(&mut s.link),
            vec![TransportCommand::Close { link: LinkId(3) }]
        );
        assert_eq!(s.link.counters().connect_timeouts, 1);
    }

    #[test]
    fn frames_and_losses_of_other_links_are_not_ours() {
        let mut s = setup();
        s.link.start(s.t0);
        s.link.transport(s.t0, link_up(FIRST, 9), &mut s.rng);
        let frame = TransportEvent::FrameReceived {
            link: LinkId(8),
            frame: vec![1],
        };
        assert_eq!(s.link.transport(s.t0, frame, &mut s.rng), Change::None);
        let ours = TransportEvent::FrameReceived {
            link: LinkId(9),
            frame: vec![1],
        };
        assert_eq!(
            s.link.transport(s.t0, ours, &mut s.rng),
            Change::Frame(LinkId(9), vec![1])
        );
        let down = TransportEvent::LinkDown {
            link: LinkId(8),
            reason: "x".into(),
        };
        assert_eq!(s.link.transport(s.t0, down, &mut s.rng), Change::None);
        let refused = ServerRefusal::NotAuthenticated;
        assert_eq!(
            s.link.refused(s.t0, LinkId(8), refused, &mut s.rng),
            Change::None
        );
        assert_eq!(
            s.link.refused(s.t0, LinkId(9), refused, &mut s.rng),
            Change::Down {
                was_connected: false
            }
        );
        assert_eq!(
            commands(&mut s.link).last(),
            Some(&TransportCommand::Close { link: LinkId(9) })
        );
    }
}
