//! A device's connection to the relay and rendezvous server, sans-IO: the part the relay
//! client (Rcs) and the rendezvous client (Pms) share.
//!
//! # States
//! `Idle` (before [`ServerLink::start`]) → `Dialling` (a `Dial` of the server address is
//! out) → `Authenticating` (link up; waiting for the server's `Challenge`, then for
//! `Welcome`) → `Connected`. A failed dial, a lost link, a refused proof or no progress
//! within [`ServerLinkConfig::connect_timeout`] lead to `Disconnected`, which redials
//! after a jittered exponential backoff (base doubling up to the max; the delay is drawn
//! uniformly from its upper half).
//!
//! The clients keep their own requests and outputs. They hand this piece every
//! transport event and every relay-protocol message, drain its transport commands, and
//! learn from each call's [`Change`] when the connection came up or went down. The
//! backoff jitter is drawn from the client's seeded RNG, passed in.

use rand::Rng;
use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tether_crypto::{server_auth_proof, PublicKey, StaticKeypair};
use tether_protocol::{
    DeviceId, LinkId, RelayMessage, RequestId, TransportCommand, TransportEvent, WireFrame,
};
use tracing::debug;

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

    /// What the connection counted so far.
    pub fn counters(&self) -> ConnectionCounters {
        self.counters
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
                if self.stale_dials.len() >= MAX_STALE_DIALS {
                    self.stale_dials.pop_first();
                }
                self.stale_dials.insert(request);
                self.disconnect(now, rng)
            }
            ConnectionState::Authenticating { link, deadline } if now >= deadline => {
                self.counters.connect_timeouts += 1;
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
                    self.disconnect(now, rng)
                } else {
                    Change::None
                }
            }
            TransportEvent::LinkDown { link, reason } if self.is_ours(link) => {
                debug!(%reason, "server link: link lost");
                self.counters.links_lost += 1;
                self.disconnect(now, rng)
            }
            TransportEvent::FrameReceived { link, frame } if self.is_ours(link) => {
                Change::Frame(link, frame)
            }
            TransportEvent::LinkUp { request: None, .. }
            | TransportEvent::LinkDown { .. }
            | TransportEvent::FrameReceived { .. }
            | TransportEvent::RemoteChanged { .. } => Change::None,
        }
    }

    /// The connection's part of the relay protocol: the server's `Challenge` (answered
    /// with our proof) and `Welcome`, while not connected. None when `message` is the
    /// client's to handle.
    pub fn server_message(&mut self, link: LinkId, message: &RelayMessage) -> Option<Change> {
        if self.connected().is_some() {
            return None;
        }
        match message {
            RelayMessage::Challenge { nonce } => {
                let proof = server_auth_proof(&self.config.keypair, &self.config.server_key, nonce);
                let authenticate = RelayMessage::Authenticate {
                    device: self.device,
                    proof: proof.to_vec(),
                };
                match tether_protocol::encode(&WireFrame::Relay(authenticate)) {
                    Ok(frame) => self
                        .commands
                        .push_back(TransportCommand::Transmit { link, frame }),
                    // A fixed-size message always encodes; should it not, the attempt
                    // times out and is retried.
                    Err(err) => debug!(%err, "server link: cannot encode the proof"),
                }
                Some(Change::None)
            }
            RelayMessage::Welcome => {
                self.state = ConnectionState::Connected { link };
                self.attempts = 0;
                self.counters.connects += 1;
                Some(Change::Up(link))
            }
            _ => None,
        }
    }

    /// The server refused to authenticate us on `link`: start over.
    pub fn refused(&mut self, now: Instant, link: LinkId, rng: &mut impl Rng) -> Change {
        if self.is_ours(link) && self.connected().is_none() {
            self.close(link);
            self.disconnect(now, rng)
        } else {
            Change::None
        }
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
    use tether_crypto::verify_server_auth;
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
        let challenge = RelayMessage::Challenge { nonce };
        assert_eq!(
            s.link.server_message(LinkId(9), &challenge),
            Some(Change::None)
        );
        let [TransportCommand::Transmit { link, frame }] = &commands(&mut s.link)[..] else {
            panic!("one Authenticate expected");
        };
        assert_eq!(*link, LinkId(9));
        let Ok(WireFrame::Relay(RelayMessage::Authenticate { device, proof })) =
            tether_protocol::decode(frame)
        else {
            panic!("an Authenticate frame");
        };
        assert_eq!(device, s.link.device());
        let device_key = PublicKey::from_bytes(device.0).unwrap();
        assert!(verify_server_auth(&s.server, &device_key, &nonce, &proof));
        assert_eq!(
            s.link.server_message(LinkId(9), &RelayMessage::Welcome),
            Some(Change::Up(LinkId(9)))
        );
        assert_eq!(s.link.connected(), Some(LinkId(9)));
        assert_eq!(s.link.poll_timeout(), None);
        // Connected: the connection's part of the protocol is over.
        assert_eq!(s.link.server_message(LinkId(9), &challenge), None);
        assert_eq!(s.link.counters().connects, 1);
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
        assert_eq!(s.link.refused(s.t0, LinkId(8), &mut s.rng), Change::None);
        assert_eq!(
            s.link.refused(s.t0, LinkId(9), &mut s.rng),
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
