//! `tether netcheck`: what this machine's network does for a node, checked without a
//! running node.
//!
//! One connection attempt to the configured relay, as the node makes it (QUIC over
//! UDP, then the mutual authentication of [`ServerLink`]), but rendezvous-only, so a
//! node running with the same key keeps its own connection. It tells whether UDP to the
//! relay works (the QUIC handshake completed) and how long that took, whether the relay
//! proved the configured key and admits this device, the reflexive address the relay
//! sees (when it reports one), whether that shows a NAT, and which local addresses the
//! node would announce to its peers. What it cannot know is said so: one observation
//! from one server cannot tell the NAT's kind.

use super::server_session::{self, CoreOutput, ServerClientCore};
use rand::SeedableRng as _;
use rand_chacha::ChaCha20Rng;
use serde::Serialize;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::ops::ControlFlow;
use std::time::{Duration, Instant};
use tether::metrics::NatReport;
use tether_crypto::{PublicKey, StaticKeypair};
use tether_protocol::{LinkBound, LinkId, RelayMessage, RequestId, TransportEvent, WireFrame};
use tether_server_link::{Change, ServerAuthFailure, ServerLink, ServerLinkConfig};

/// What is reported for the reflexive address (and the NAT) when the relay does not
/// report it (an older relay, or one that did not get that far).
pub const NOT_REPORTED: &str = "unknown (not reported by this relay)";

/// What netcheck does not check, said with every report: direct UDP to the peers, the
/// NAT's kind unless a running node learnt it (`nat_known`), the other address family.
pub fn not_checked(nat_known: bool) -> Vec<&'static str> {
    let mut out = vec![
        "direct UDP between this machine and its peers (run `tether ping PEER` on a running node)",
    ];
    if !nat_known {
        out.push(
            "the NAT's kind: one relay's observation cannot tell it (a running node learns how the NAT maps once a peer on a direct path has seen this device, and `tether status` shows it)",
        );
    }
    out.push("the other address family than the relay's");
    out
}

/// What the reflexive address says about a NAT between this machine and the relay,
/// given this machine's interface addresses, and what a running node's peers on direct
/// paths showed of its kind (`node`, when a node answered on the control socket).
pub fn nat(
    reflexive: Option<SocketAddr>,
    interfaces: &[IpAddr],
    node: Option<&NatReport>,
) -> String {
    let seen = match reflexive {
        None => NOT_REPORTED,
        Some(seen) if seen.ip().is_loopback() => "none seen (the relay is reached over loopback)",
        Some(seen) if interfaces.contains(&seen.ip()) => {
            "none seen (the relay sees one of this machine's own addresses)"
        }
        Some(_) => "behind a NAT (the relay sees another address than this machine's)",
    };
    match node {
        Some(report) if report.mapping != "unknown" => {
            format!("{seen}; the running node's peers show {}", report.summary)
        }
        Some(_) => format!(
            "{seen}; its kind: not known yet by the running node (no peer on a direct path has said where it sees this device since it last moved)"
        ),
        None if reflexive.is_some_and(|r| !interfaces.contains(&r.ip()) && !r.ip().is_loopback()) => {
            format!("{seen}; its kind is unknown (no node runs to have learnt it)")
        }
        None => seen.to_string(),
    }
}

/// What to check.
#[derive(Clone)]
pub struct NetcheckConfig {
    /// This device's key (it authenticates to the relay with it).
    pub keypair: StaticKeypair,
    /// The relay's address.
    pub relay_addr: SocketAddr,
    /// The relay's configured public key.
    pub relay_key: PublicKey,
    /// How long the attempt may take.
    pub timeout: Duration,
    /// Seed of the backoff jitter's RNG (unused: one attempt only).
    pub seed: [u8; 32],
}

/// How the attempt to reach the relay ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RelayCheck {
    /// QUIC came up and the relay proved the configured key and admitted us.
    Ok {
        /// From the dial to the QUIC link up (UDP both ways, the QUIC handshake).
        quic_ms: f64,
        /// From the dial to the end of the mutual authentication.
        authenticated_ms: f64,
        /// The address the relay sees this connection come from, if it says.
        reflexive: Option<SocketAddr>,
    },
    /// No QUIC connection: the dial failed.
    Unreachable {
        /// The transport's reason.
        reason: String,
    },
    /// Nothing conclusive within the timeout.
    TimedOut {
        /// Whether the QUIC handshake completed (then UDP works, and the relay did not
        /// finish authenticating).
        quic_ms: Option<f64>,
        /// The timeout.
        after_ms: u64,
    },
    /// The relay answered with another key than the configured one.
    WrongKey {
        /// The QUIC handshake's time.
        quic_ms: f64,
        /// The key it presents (hex).
        presented: String,
    },
    /// The relay did not prove the configured key, or refused our proof.
    Unauthenticated {
        /// The QUIC handshake's time.
        quic_ms: f64,
        /// Why.
        reason: String,
    },
    /// The relay does not admit this device.
    NotAdmitted {
        /// The QUIC handshake's time.
        quic_ms: f64,
    },
}

impl RelayCheck {
    /// Whether a node could use the relay.
    pub fn ok(&self) -> bool {
        matches!(self, RelayCheck::Ok { .. })
    }

    /// Whether UDP to the relay works (its QUIC handshake completed).
    pub fn udp_works(&self) -> bool {
        match self {
            RelayCheck::Ok { .. }
            | RelayCheck::WrongKey { .. }
            | RelayCheck::Unauthenticated { .. }
            | RelayCheck::NotAdmitted { .. } => true,
            RelayCheck::TimedOut { quic_ms, .. } => quic_ms.is_some(),
            RelayCheck::Unreachable { .. } => false,
        }
    }

    /// The reflexive address the relay reported, if it did.
    pub fn reflexive(&self) -> Option<SocketAddr> {
        match self {
            RelayCheck::Ok { reflexive, .. } => *reflexive,
            _ => None,
        }
    }

    /// The QUIC handshake's time, when it completed.
    pub fn quic_ms(&self) -> Option<f64> {
        match self {
            RelayCheck::Ok { quic_ms, .. }
            | RelayCheck::WrongKey { quic_ms, .. }
            | RelayCheck::Unauthenticated { quic_ms, .. }
            | RelayCheck::NotAdmitted { quic_ms } => Some(*quic_ms),
            RelayCheck::TimedOut { quic_ms, .. } => *quic_ms,
            RelayCheck::Unreachable { .. } => None,
        }
    }

    /// One line saying what is wrong, when something is.
    pub fn problem(&self, relay: SocketAddr) -> Option<String> {
        match self {
            RelayCheck::Ok { .. } => None,
            RelayCheck::Unreachable { reason } => {
                Some(format!("the relay at {relay} is unreachable: {reason}"))
            }
            RelayCheck::TimedOut {
                quic_ms: None,
                after_ms,
            } => Some(format!(
                "the relay at {relay} is unreachable: no QUIC answer within {after_ms} ms (UDP blocked, or nothing listens there)"
            )),
            RelayCheck::TimedOut {
                quic_ms: Some(_),
                after_ms,
            } => Some(format!(
                "the relay at {relay} answered over QUIC but did not authenticate within {after_ms} ms"
            )),
            RelayCheck::WrongKey { presented, .. } => Some(format!(
                "wrong key: the relay at {relay} proves key {presented}, not the configured relay.public_key"
            )),
            RelayCheck::Unauthenticated { reason, .. } => {
                Some(format!("the relay at {relay} did not authenticate: {reason}"))
            }
            RelayCheck::NotAdmitted { .. } => Some(format!(
                "the relay at {relay} does not admit this device: add its public key to the relay's `allow` list"
            )),
        }
    }
}

/// The addresses a node with this `listen` address would announce, given the
/// interface addresses (loopback and link-local already left out): `listen`'s own IP,
/// or for a wildcard `listen` every interface address of its family (an IPv6 wildcard
/// is dual-stack).
pub fn announced_ips(listen: SocketAddr, interfaces: &[IpAddr]) -> Vec<IpAddr> {
    tether::actors::announced_endpoints(listen, interfaces)
        .into_iter()
        .map(|addr| addr.ip())
        .collect()
}

/// The sans-IO check: one attempt of a [`ServerLink`], and its outcome.
pub struct NetcheckCore {
    link: ServerLink,
    rng: ChaCha20Rng,
    started: Instant,
    deadline: Instant,
    timeout: Duration,
    link_up_at: Option<Instant>,
    outputs: VecDeque<CoreOutput<RelayCheck>>,
    done: bool,
}

impl NetcheckCore {
    /// Starts the attempt at `now`.
    pub fn start(config: NetcheckConfig, now: Instant) -> Self {
        let mut link = ServerLink::new(ServerLinkConfig {
            // A node may be running with this key: its own connection must stay.
            rendezvous_only: true,
            connect_timeout: config.timeout,
            ..ServerLinkConfig::new(
                config.keypair,
                config.relay_key,
                config.relay_addr,
                RequestId(1),
            )
        });
        link.start(now);
        let mut core = Self {
            link,
            rng: ChaCha20Rng::from_seed(config.seed),
            started: now,
            deadline: now + config.timeout,
            timeout: config.timeout,
            link_up_at: None,
            outputs: VecDeque::new(),
            done: false,
        };
        core.drain_link();
        core
    }

    fn drain_link(&mut self) {
        while let Some(command) = self.link.poll_command() {
            self.outputs.push_back(CoreOutput::Transport(command));
        }
    }

    fn ms(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.started).as_secs_f64() * 1000.0
    }

    fn quic_ms(&self) -> f64 {
        self.link_up_at.map_or(0.0, |at| self.ms(at))
    }

    fn finish(&mut self, check: RelayCheck) {
        if self.done {
            return;
        }
        self.done = true;
        if let Some(link) = self.link.connected() {
            self.outputs.push_back(CoreOutput::Transport(
                tether_protocol::TransportCommand::Close { link },
            ));
        }
        self.outputs.push_back(CoreOutput::Other(check));
    }

    fn apply(&mut self, now: Instant, change: Change, dial_error: Option<String>) {
        self.drain_link();
        match change {
            Change::None => {}
            Change::Up(_) => {
                let check = RelayCheck::Ok {
                    quic_ms: self.quic_ms(),
                    authenticated_ms: self.ms(now),
                    reflexive: self.link.counters().reflexive,
                };
                self.finish(check);
            }
            Change::Down { .. } => {
                let quic_ms = self.quic_ms();
                let check = match self.link.auth_failure() {
                    Some(ServerAuthFailure::WrongKey { presented }) => RelayCheck::WrongKey {
                        quic_ms,
                        presented: data_encoding::HEXLOWER.encode(&presented),
                    },
                    Some(ServerAuthFailure::NotAdmitted) => RelayCheck::NotAdmitted { quic_ms },
                    Some(failure) => RelayCheck::Unauthenticated {
                        quic_ms,
                        reason: failure.to_string(),
                    },
                    None => match dial_error {
                        Some(reason) => RelayCheck::Unreachable { reason },
                        None => self.timed_out(),
                    },
                };
                self.finish(check);
            }
            Change::Frame(link, bytes) => self.frame(now, link, &bytes),
        }
    }

    fn timed_out(&self) -> RelayCheck {
        RelayCheck::TimedOut {
            quic_ms: self.link_up_at.map(|at| self.ms(at)),
            after_ms: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
        }
    }

    fn frame(&mut self, now: Instant, link: LinkId, bytes: &[u8]) {
        let Ok(WireFrame::Relay(message)) = tether_protocol::decode(bytes) else {
            return;
        };
        if let Some(change) = self.link.server_message(now, link, &message, &mut self.rng) {
            self.apply(now, change, None);
            return;
        }
        if let RelayMessage::Refused { reason, .. } = message {
            if self.link.connected().is_none() {
                let change = self.link.refused(now, link, reason, &mut self.rng);
                self.apply(now, change, None);
            }
        }
    }
}

impl ServerClientCore for NetcheckCore {
    type Output = RelayCheck;

    fn transport(&mut self, now: Instant, event: TransportEvent) {
        if self.done {
            return;
        }
        let dial_error = match &event {
            TransportEvent::DialFailed { reason, .. } => Some(reason.clone()),
            TransportEvent::LinkUp { .. } => {
                self.link_up_at.get_or_insert(now);
                None
            }
            _ => None,
        };
        let change = self.link.transport(now, event, &mut self.rng);
        self.apply(now, change, dial_error);
    }

    fn bound(&mut self, bound: LinkBound) {
        self.link.bound(bound);
        self.drain_link();
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.done {
            return;
        }
        if now >= self.deadline {
            let check = self.timed_out();
            self.finish(check);
            return;
        }
        let change = self.link.handle_timeout(now, &mut self.rng);
        self.apply(now, change, None);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        (!self.done).then_some(self.deadline)
    }

    fn poll_output(&mut self) -> Option<CoreOutput<RelayCheck>> {
        self.outputs.pop_front()
    }
}

/// Makes one attempt to reach the relay over a real UDP endpoint.
pub async fn check_relay(config: NetcheckConfig) -> Result<RelayCheck, server_session::BindError> {
    let relay = config.relay_addr;
    let mut core = NetcheckCore::start(config, Instant::now());
    server_session::drive(relay, &mut core, |_, check| ControlFlow::Break(check)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listen_announces_the_interfaces_of_its_family() {
        let interfaces: Vec<IpAddr> =
            vec!["192.0.2.7".parse().unwrap(), "2001:db8::1".parse().unwrap()];
        let v4: SocketAddr = "0.0.0.0:0".parse().unwrap();
        assert_eq!(announced_ips(v4, &interfaces), vec![interfaces[0]]);
        let fixed: SocketAddr = "198.51.100.1:7001".parse().unwrap();
        assert_eq!(announced_ips(fixed, &interfaces), vec![fixed.ip()]);
    }

    #[test]
    fn each_outcome_says_whether_udp_works_and_what_is_wrong() {
        let relay: SocketAddr = "192.0.2.1:7300".parse().unwrap();
        let ok = RelayCheck::Ok {
            quic_ms: 1.0,
            authenticated_ms: 2.0,
            reflexive: None,
        };
        assert!(ok.ok() && ok.udp_works() && ok.problem(relay).is_none());
        let wrong = RelayCheck::WrongKey {
            quic_ms: 1.0,
            presented: "ab".into(),
        };
        assert!(!wrong.ok() && wrong.udp_works());
        assert!(wrong.problem(relay).unwrap().starts_with("wrong key"));
        let silent = RelayCheck::TimedOut {
            quic_ms: None,
            after_ms: 3000,
        };
        assert!(!silent.udp_works());
        assert!(silent.problem(relay).unwrap().contains("unreachable"));
    }

    #[test]
    fn the_reflexive_address_shows_a_nat_only_when_it_is_not_ours() {
        let own: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(nat(None, &[own], None), NOT_REPORTED);
        assert!(nat(Some("192.0.2.7:5000".parse().unwrap()), &[own], None).starts_with("none seen"));
        assert!(nat(Some("127.0.0.1:5000".parse().unwrap()), &[], None).starts_with("none seen"));
        assert!(nat(Some("203.0.113.9:5000".parse().unwrap()), &[own], None)
            .starts_with("behind a NAT"));
        // A running node's peers tell the kind.
        let cone = NatReport {
            mapping: "endpoint-independent".into(),
            summary: "one mapping for every destination (a cone NAT): the relay and phone see this device at 203.0.113.9:5000".into(),
            ..NatReport::default()
        };
        assert_eq!(
            nat(Some("203.0.113.9:5000".parse().unwrap()), &[own], Some(&cone)),
            "behind a NAT (the relay sees another address than this machine's); the running node's peers show one mapping for every destination (a cone NAT): the relay and phone see this device at 203.0.113.9:5000"
        );
        assert_eq!(not_checked(true).len(), not_checked(false).len() - 1);
    }
}
