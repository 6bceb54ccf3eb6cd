//! `tether invite` and `tether accept`: two devices pair through the relay's rendezvous
//! table with a one-time code ([`tether_crypto::pairing`]), and neither private key nor
//! the relationship key ever leaves its device.
//!
//! # Protocol
//! Both devices connect to the relay as themselves (mutual authentication by
//! [`ServerLink`]; an allowlisted relay must admit both keys), and meet under the
//! rendezvous id of the code's channel key. Each publishes one record at a time there
//! (a newer one replaces its older one), sealed under the channel key with its public
//! key inside ([`seal_hint`]), and looks the id up every [`LOOKUP_INTERVAL`] for the
//! other's. The relay sees the id, the two devices' keys (they authenticated) and
//! ciphertext; the table admits two members per id, so a third device is refused.
//!
//! 1. The inviter publishes `Offer { name }`.
//! 2. The acceptor, which knows the inviter's key from the code, derives the pair's keys
//!    ([`PairingKeys`]) and publishes `Answer { name, tag }` with its confirmation tag.
//! 3. The inviter takes the first answer only. Its tag must verify under the keys
//!    derived with the answering device's key (else the invitation ends: someone else
//!    holds the code), and an entry for that device must not exist unless `--force`.
//!    It writes its config entry, then publishes `Confirm { name, acceptor, tag }`.
//! 4. The acceptor checks that the confirmation comes from the code's key, names its
//!    own key and carries the inviter's tag; it writes its entry, publishes `Done { tag
//!    }`, and succeeds once a lookup shows the relay holds it.
//! 5. The inviter succeeds on `Done`.
//!
//! So neither side reports success unless the other has written the same entry: the
//! inviter writes before it confirms, the acceptor writes before it says done. A side
//! that fails after the other may have written publishes `Abort { reason }`, and the
//! other reports it. Everything is bounded by the command's timeout.
//!
//! The core ([`PairingCore`]) does no IO and reads no clock, like every orchestrator;
//! [`run`] drives it over a real UDP endpoint.

use crate::app::peers_file::NewPeer;
pub use crate::app::server_session::BindError;
use crate::app::server_session::{self, CoreOutput, ServerClientCore};
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha20Rng;
use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};
use tether_crypto::pairing::{Side, TAG_LEN};
use tether_crypto::{
    open_hint, seal_hint, PairingKeys, PairingSecret, PublicKey, RelationshipKey, RendezvousId,
    StaticKeypair,
};
use tether_protocol::{
    LinkBound, LinkId, RelayMessage, RendezvousMessage, RequestId, ServerRefusal, TransportCommand,
    TransportEvent, WireFrame,
};
use tether_server_link::{Change, ServerAuthFailure, ServerLink, ServerLinkConfig};

/// How often each side looks the pairing id up while it waits.
pub const LOOKUP_INTERVAL: Duration = Duration::from_millis(300);

/// Longest lifetime asked for a published record. The relay keeps a record at most
/// an hour (`tether_pms::table::DEFAULT_MAX_HINT_TTL`) and forgets the pairing slot with it,
/// so a record is published again at half its lifetime for as long as the pairing
/// waits, however long its timeout.
const MAX_RECORD_TTL: Duration = Duration::from_secs(20 * 60);

/// A record's lifetime when `remaining` is left before the pairing's deadline (a
/// minute beyond it, so that a clock a little behind still reads it, and at most
/// [`MAX_RECORD_TTL`]), and when to publish it again.
fn record_lifetime(remaining: Duration) -> (Duration, Duration) {
    let ttl = (remaining + Duration::from_secs(60)).min(MAX_RECORD_TTL);
    (ttl, ttl / 2)
}

/// Longest announced device name carried in a record.
const MAX_NAME_LEN: usize = 64;

/// Which side this device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// It made the code and waits for a device to accept it.
    Inviter,
    /// It was given the code of the device with this key.
    Acceptor {
        /// The inviting device's key (from the code).
        inviter: PublicKey,
    },
}

/// What the core needs.
pub struct PairingConfig {
    /// This device's keypair.
    pub keypair: StaticKeypair,
    /// The relay's address.
    pub relay_addr: SocketAddr,
    /// The relay's public key.
    pub relay_key: PublicKey,
    /// The code's secret.
    pub secret: PairingSecret,
    /// Which side this is.
    pub role: Role,
    /// The name this device announces (the other side names its entry so by default).
    pub name: String,
    /// Peers this device's config has an entry for already (the inviter refuses to
    /// replace one unless `force`).
    pub known: BTreeSet<PublicKey>,
    /// Replace an existing entry.
    pub force: bool,
    /// How long the whole pairing may take.
    pub timeout: Duration,
    /// Unix time in ms at the `now` given to [`PairingCore::new`].
    pub unix_ms_at_start: u64,
    /// Seed of the RNG for record nonces and the connection's backoff (OS entropy in
    /// production).
    pub seed: [u8; 32],
}

/// What the core is told.
#[derive(Debug)]
pub enum Input {
    /// Begin: dial the relay.
    Start,
    /// A transport event of the relay link.
    Transport(TransportEvent),
    /// The relay link's channel binding.
    Bound(LinkBound),
    /// The answer to [`Output::Save`]: Ok once the entry is in the config file.
    Saved(Result<(), String>),
}

/// What the core asks for.
#[derive(Debug)]
pub enum Output {
    /// A transport command for the relay link.
    Transport(TransportCommand),
    /// Write this entry into the config file, then answer [`Input::Saved`].
    Save(SaveRequest),
    /// The pairing ended.
    Finished(Result<Paired, PairingFailure>),
}

/// The entry to write.
#[derive(Debug, Clone)]
pub struct SaveRequest {
    /// The other device's key.
    pub peer: PublicKey,
    /// The name it announced (not yet cleaned or made unique).
    pub announced_name: String,
    /// The pair's relationship key.
    pub rk: RelationshipKey,
}

impl SaveRequest {
    /// The entry as [`crate::app::peers_file::write_peer`] takes it, under `name`.
    pub fn entry(&self, name: String) -> NewPeer {
        NewPeer {
            name,
            public: self.peer,
            rk: self.rk.clone(),
        }
    }
}

/// A pairing that succeeded: both configs have the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paired {
    /// The other device's key.
    pub peer: PublicKey,
}

/// Why the other side gave up, as its `Abort` record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortReason {
    /// The inviting device has an entry for the accepting one already.
    AlreadyPaired,
    /// A confirmation tag did not verify.
    BadProof,
    /// The device could not write its config.
    NotSaved,
    /// A reason this build does not know.
    Other(u8),
}

impl AbortReason {
    fn code(self) -> u8 {
        match self {
            AbortReason::AlreadyPaired => 1,
            AbortReason::BadProof => 2,
            AbortReason::NotSaved => 3,
            AbortReason::Other(code) => code,
        }
    }

    fn from_code(code: u8) -> Self {
        match code {
            1 => AbortReason::AlreadyPaired,
            2 => AbortReason::BadProof,
            3 => AbortReason::NotSaved,
            other => AbortReason::Other(other),
        }
    }
}

impl std::fmt::Display for AbortReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AbortReason::AlreadyPaired => write!(
                f,
                "the inviting device has an entry for this device already (run `tether invite --force` there to replace its relationship key)"
            ),
            AbortReason::BadProof => write!(f, "a confirmation did not verify"),
            AbortReason::NotSaved => write!(f, "it could not write its config"),
            AbortReason::Other(code) => write!(f, "reason {code}"),
        }
    }
}

/// Why a pairing failed. Each renders as one line that says what happened and, where
/// one was written, what became of this device's entry.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PairingFailure {
    /// The relay did not admit this device.
    #[error("the relay at {relay} does not admit this device (public key {device}): add the key to the relay's `allow` list (or run the relay with admission = \"open\"), then run this again")]
    NotAdmitted {
        /// The relay's address.
        relay: SocketAddr,
        /// This device's key (hex).
        device: String,
    },
    /// The relay failed the mutual authentication.
    #[error("the relay at {relay} failed authentication: {failure}")]
    RelayAuth {
        /// The relay's address.
        relay: SocketAddr,
        /// What failed.
        failure: String,
    },
    /// Nothing within the timeout.
    #[error("timed out after {seconds} s: {waiting_for}")]
    TimedOut {
        /// The timeout.
        seconds: u64,
        /// What was awaited, and what was done.
        waiting_for: String,
    },
    /// The acceptor saw records of another device than the code names.
    #[error("the invitation's records come from another device than the code names (the code was altered, or was made by another device); nothing was written")]
    WrongInviter,
    /// The inviter confirmed another device than this one.
    #[error("the inviting device paired with another device that used the code first; nothing was written here")]
    TakenByAnother,
    /// The code's id on the relay has two other members already.
    #[error("the code was used by another device already; ask for a new code")]
    CodeInUse,
    /// A confirmation tag did not verify.
    #[error("the other device did not prove it holds the keys it claims (someone else may hold the code); nothing was written, ask for a new code")]
    BadProof,
    /// The inviter has an entry for the acceptor and no `--force`.
    #[error("this device's config has an entry for {peer} already; run `tether invite --force` to replace its relationship key (the other device must then re-pair too), nothing was written")]
    AlreadyPaired {
        /// The accepting device's key (hex).
        peer: String,
    },
    /// The other device gave up.
    #[error("the other device gave up: {reason}{written}")]
    Aborted {
        /// Why.
        reason: AbortReason,
        /// Whether this device's entry was written already (then it is useless).
        written: WrittenNote,
    },
    /// This device's config could not be written.
    #[error("{0}")]
    Save(String),
    /// The relay refused a request.
    #[error("the relay refused: {0:?}")]
    Refused(ServerRefusal),
    /// The two keys are the same.
    #[error("the code was made by this very device; accept it on the other device")]
    SameDevice,
}

/// Whether a failed pairing had written this device's entry, as a message suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrittenNote(pub bool);

impl std::fmt::Display for WrittenNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0 {
            write!(
                f,
                "; this device's entry for it was written but the other device has none: remove it or pair again with --force"
            )
        } else {
            write!(f, "; nothing was written")
        }
    }
}

/// One record on the rendezvous table.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Record {
    Offer {
        name: String,
    },
    Answer {
        name: String,
        tag: [u8; TAG_LEN],
    },
    Confirm {
        name: String,
        acceptor: PublicKey,
        tag: [u8; TAG_LEN],
    },
    Done {
        tag: [u8; TAG_LEN],
    },
    Abort {
        reason: AbortReason,
    },
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let name = |out: &mut Vec<u8>, name: &str| {
            let bytes = &name.as_bytes()[..name.len().min(MAX_NAME_LEN)];
            out.push(u8::try_from(bytes.len()).unwrap_or(0));
            out.extend_from_slice(bytes);
        };
        match self {
            Record::Offer { name: n } => {
                out.push(1);
                name(&mut out, n);
            }
            Record::Answer { name: n, tag } => {
                out.push(2);
                out.extend_from_slice(tag);
                name(&mut out, n);
            }
            Record::Confirm {
                name: n,
                acceptor,
                tag,
            } => {
                out.push(3);
                out.extend_from_slice(acceptor.as_bytes());
                out.extend_from_slice(tag);
                name(&mut out, n);
            }
            Record::Done { tag } => {
                out.push(4);
                out.extend_from_slice(tag);
            }
            Record::Abort { reason } => {
                out.push(5);
                out.push(reason.code());
            }
        }
        out
    }

    /// None for anything malformed (only a holder of the code could have sealed it).
    fn decode(bytes: &[u8]) -> Option<Record> {
        let (kind, mut rest) = bytes.split_first()?;
        let mut take = |n: usize| -> Option<&[u8]> {
            let (head, tail) = rest.split_at_checked(n)?;
            rest = tail;
            Some(head)
        };
        let tag = |b: &[u8]| -> Option<[u8; TAG_LEN]> { b.try_into().ok() };
        let record = match kind {
            1 => {
                let len = usize::from(*take(1)?.first()?);
                Record::Offer {
                    name: String::from_utf8_lossy(take(len)?).into_owned(),
                }
            }
            2 => {
                let t = tag(take(TAG_LEN)?)?;
                let len = usize::from(*take(1)?.first()?);
                Record::Answer {
                    tag: t,
                    name: String::from_utf8_lossy(take(len)?).into_owned(),
                }
            }
            3 => {
                let acceptor = PublicKey::from_slice(take(32)?).ok()?;
                let t = tag(take(TAG_LEN)?)?;
                let len = usize::from(*take(1)?.first()?);
                Record::Confirm {
                    acceptor,
                    tag: t,
                    name: String::from_utf8_lossy(take(len)?).into_owned(),
                }
            }
            4 => Record::Done {
                tag: tag(take(TAG_LEN)?)?,
            },
            5 => Record::Abort {
                reason: AbortReason::from_code(*take(1)?.first()?),
            },
            _ => return None,
        };
        rest.is_empty().then_some(record)
    }
}

/// Where the pairing stands.
#[derive(Debug)]
enum Phase {
    /// Inviter: waiting for an answer. Acceptor: waiting for the confirmation.
    Waiting,
    /// Waiting for [`Input::Saved`].
    Saving { peer: PublicKey, keys: PairingKeys },
    /// Inviter: confirmed, waiting for `Done`. Acceptor: `Done` published, waiting to
    /// see the relay holds it.
    Confirming { peer: PublicKey },
    /// Our `Abort` is published; once the relay holds it, fail with this.
    Aborting(PairingFailure),
    /// Over.
    Finished,
}

/// The sans-IO pairing core. See the module docs.
pub struct PairingCore {
    config: PairingConfig,
    start: Instant,
    deadline: Instant,
    rng: ChaCha20Rng,
    link: ServerLink,
    channel: RelationshipKey,
    rendezvous_id: RendezvousId,
    /// The acceptor's keys, known from the code at once.
    acceptor_keys: Option<PairingKeys>,
    phase: Phase,
    /// Our current record and its sealed bytes (as last published).
    record: Record,
    sealed: Option<Vec<u8>>,
    /// Whether a lookup showed the relay holds `sealed`.
    echoed: bool,
    /// When `sealed` is published again, before the relay lets it expire.
    republish_at: Option<Instant>,
    /// Whether a lookup is out (one at a time).
    lookup_in_flight: bool,
    next_lookup: Option<Instant>,
    /// Whether our entry is in the config file.
    written: bool,
    last_problem: Option<String>,
    outputs: VecDeque<Output>,
}

impl PairingCore {
    /// A core that does nothing until [`Input::Start`].
    pub fn new(config: PairingConfig, now: Instant) -> Self {
        let channel = config.secret.channel_key();
        let rendezvous_id = RendezvousId::from_rk(&channel);
        // A rendezvous-only connection: the device's node may be running and holding
        // the device's own connection to the relay, which this must not replace.
        let link = ServerLink::new(ServerLinkConfig {
            rendezvous_only: true,
            ..ServerLinkConfig::new(
                config.keypair.clone(),
                config.relay_key,
                config.relay_addr,
                RequestId(1),
            )
        });
        // The acceptor's first record, its answer, is made at start.
        let record = Record::Offer {
            name: config.name.clone(),
        };
        Self {
            deadline: now + config.timeout,
            start: now,
            rng: ChaCha20Rng::from_seed(config.seed),
            link,
            channel,
            rendezvous_id,
            acceptor_keys: None,
            phase: Phase::Waiting,
            record,
            sealed: None,
            echoed: false,
            republish_at: None,
            lookup_in_flight: false,
            next_lookup: None,
            written: false,
            last_problem: None,
            outputs: VecDeque::new(),
            config,
        }
    }

    /// Feeds one input.
    pub fn handle(&mut self, now: Instant, input: Input) {
        if matches!(self.phase, Phase::Finished) {
            return;
        }
        match input {
            Input::Start => self.start(now),
            Input::Transport(event) => {
                if let TransportEvent::DialFailed { reason, .. } = &event {
                    self.last_problem = Some(format!("cannot reach the relay: {reason}"));
                }
                let change = self.link.transport(now, event, &mut self.rng);
                self.apply(now, change);
            }
            Input::Bound(bound) => self.link.bound(bound),
            Input::Saved(result) => self.saved(now, result),
        }
        self.drain_link();
        self.maybe_lookup(now);
    }

    /// Looks up, or gives up at the deadline. Spurious calls are harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Finished) {
            return;
        }
        if now >= self.deadline {
            let failure = self.timed_out();
            self.finish(Err(failure));
            return;
        }
        let change = self.link.handle_timeout(now, &mut self.rng);
        self.apply(now, change);
        self.drain_link();
        self.maybe_lookup(now);
    }

    /// The next output.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Self::handle_timeout`] has something to do next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if matches!(self.phase, Phase::Finished) {
            return None;
        }
        let lookup = if self.link.connected().is_some() && !self.lookup_in_flight {
            self.next_lookup
        } else {
            None
        };
        [Some(self.deadline), self.link.poll_timeout(), lookup]
            .into_iter()
            .flatten()
            .min()
    }

    fn start(&mut self, now: Instant) {
        if let Role::Acceptor { inviter } = self.config.role {
            match PairingKeys::derive(&self.config.secret, &self.config.keypair, &inviter) {
                Ok(keys) => {
                    self.record = Record::Answer {
                        name: self.config.name.clone(),
                        tag: keys.tag(Side::Acceptor),
                    };
                    self.acceptor_keys = Some(keys);
                }
                Err(_) => {
                    self.finish(Err(PairingFailure::SameDevice));
                    return;
                }
            }
        }
        self.link.start(now);
    }

    fn unix_ms(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.start).as_millis();
        self.config
            .unix_ms_at_start
            .saturating_add(u64::try_from(since).unwrap_or(u64::MAX))
    }

    fn drain_link(&mut self) {
        while let Some(command) = self.link.poll_command() {
            self.outputs.push_back(Output::Transport(command));
        }
    }

    fn finish(&mut self, result: Result<Paired, PairingFailure>) {
        self.phase = Phase::Finished;
        if let Some(link) = self.link.connected() {
            self.outputs
                .push_back(Output::Transport(TransportCommand::Close { link }));
        }
        self.outputs.push_back(Output::Finished(result));
    }

    fn apply(&mut self, now: Instant, change: Change) {
        self.drain_link();
        match change {
            Change::None => {}
            Change::Up(link) => {
                self.last_problem = None;
                self.lookup_in_flight = false;
                self.publish(now, link);
                self.next_lookup = Some(now);
            }
            Change::Down { .. } => {
                self.lookup_in_flight = false;
                self.check_auth();
            }
            Change::Frame(link, bytes) => self.frame(now, link, &bytes),
        }
    }

    /// A conclusive authentication failure ends the pairing: retrying cannot help.
    fn check_auth(&mut self) {
        let relay = self.config.relay_addr;
        match self.link.auth_failure() {
            Some(ServerAuthFailure::NotAdmitted) => self.finish(Err(PairingFailure::NotAdmitted {
                relay,
                device: self.config.keypair.public().to_hex(),
            })),
            Some(failure) => self.finish(Err(PairingFailure::RelayAuth {
                relay,
                failure: failure.to_string(),
            })),
            None => {}
        }
    }

    fn frame(&mut self, now: Instant, link: LinkId, bytes: &[u8]) {
        let Ok(frame) = tether_protocol::decode(bytes) else {
            return;
        };
        match frame {
            WireFrame::Relay(message) => {
                if let Some(change) = self.link.server_message(now, link, &message, &mut self.rng) {
                    self.apply(now, change);
                    return;
                }
                if let RelayMessage::Refused { reason, .. } = message {
                    if self.link.connected().is_none() {
                        let change = self.link.refused(now, link, reason, &mut self.rng);
                        self.apply(now, change);
                    }
                }
                // Relay pushes for this device belong to its node: never acknowledged here.
            }
            WireFrame::Rendezvous(message) if self.link.connected() == Some(link) => {
                self.rendezvous(now, message)
            }
            _ => {}
        }
    }

    fn rendezvous(&mut self, now: Instant, message: RendezvousMessage) {
        match message {
            RendezvousMessage::Hints {
                rendezvous_id,
                hints,
            } if rendezvous_id == self.rendezvous_id.0 => {
                self.lookup_in_flight = false;
                self.next_lookup = Some(now + LOOKUP_INTERVAL);
                let unix_now = self.unix_ms(now);
                let own = *self.config.keypair.public();
                for sealed in &hints {
                    let Ok(hint) = open_hint(&self.channel, sealed, unix_now) else {
                        continue;
                    };
                    if hint.sender == own {
                        if self.sealed.as_deref() == Some(sealed.as_ref()) {
                            self.echoed = true;
                        }
                        continue;
                    }
                    if let Some(record) = Record::decode(&hint.endpoints) {
                        self.record_from(now, hint.sender, record);
                    }
                    if matches!(self.phase, Phase::Finished) {
                        return;
                    }
                }
                self.after_echo();
            }
            RendezvousMessage::Refused { reason } => match reason {
                ServerRefusal::RateLimited => {
                    self.lookup_in_flight = false;
                    self.next_lookup = Some(now + LOOKUP_INTERVAL * 4);
                    // The refused request may have been our publish: send it again.
                    self.sealed = None;
                }
                ServerRefusal::NotYours => self.finish(Err(PairingFailure::CodeInUse)),
                other => self.finish(Err(PairingFailure::Refused(other))),
            },
            _ => {}
        }
    }

    /// What a published record of ours, once the relay holds it, concludes.
    fn after_echo(&mut self) {
        if !self.echoed {
            return;
        }
        match &self.phase {
            Phase::Confirming { peer } if matches!(self.config.role, Role::Acceptor { .. }) => {
                let peer = *peer;
                self.finish(Ok(Paired { peer }));
            }
            Phase::Aborting(failure) => {
                let failure = failure.clone();
                self.finish(Err(failure));
            }
            _ => {}
        }
    }

    fn record_from(&mut self, now: Instant, sender: PublicKey, record: Record) {
        match self.config.role {
            Role::Inviter => self.inviter_sees(now, sender, record),
            Role::Acceptor { inviter } => {
                if sender != inviter {
                    self.finish(Err(PairingFailure::WrongInviter));
                    return;
                }
                self.acceptor_sees(now, record);
            }
        }
    }

    fn inviter_sees(&mut self, now: Instant, sender: PublicKey, record: Record) {
        match (&self.phase, record) {
            (Phase::Waiting, Record::Answer { name, tag }) => {
                let Ok(keys) =
                    PairingKeys::derive(&self.config.secret, &self.config.keypair, &sender)
                else {
                    self.abort(now, AbortReason::BadProof, PairingFailure::BadProof);
                    return;
                };
                if !keys.verify(Side::Acceptor, &tag) {
                    self.abort(now, AbortReason::BadProof, PairingFailure::BadProof);
                    return;
                }
                if self.config.known.contains(&sender) && !self.config.force {
                    let peer = sender.to_hex();
                    self.abort(
                        now,
                        AbortReason::AlreadyPaired,
                        PairingFailure::AlreadyPaired { peer },
                    );
                    return;
                }
                self.outputs.push_back(Output::Save(SaveRequest {
                    peer: sender,
                    announced_name: name,
                    rk: keys.relationship_key().clone(),
                }));
                self.phase = Phase::Saving { peer: sender, keys };
            }
            (Phase::Confirming { peer }, Record::Done { tag }) if *peer == sender => {
                let verified =
                    PairingKeys::derive(&self.config.secret, &self.config.keypair, &sender)
                        .is_ok_and(|keys| keys.verify(Side::Acceptor, &tag));
                if verified {
                    self.finish(Ok(Paired { peer: sender }));
                }
            }
            (Phase::Confirming { peer }, Record::Abort { reason }) if *peer == sender => {
                self.finish(Err(PairingFailure::Aborted {
                    reason,
                    written: WrittenNote(self.written),
                }));
            }
            (Phase::Waiting, Record::Abort { reason }) => {
                self.finish(Err(PairingFailure::Aborted {
                    reason,
                    written: WrittenNote(false),
                }));
            }
            // An answer seen again, or records of a device that was not first.
            _ => {}
        }
    }

    fn acceptor_sees(&mut self, now: Instant, record: Record) {
        if !matches!(self.phase, Phase::Waiting) {
            return;
        }
        let own = *self.config.keypair.public();
        match record {
            Record::Offer { .. } | Record::Done { .. } | Record::Answer { .. } => {}
            Record::Confirm {
                name,
                acceptor,
                tag,
            } => {
                if acceptor != own {
                    self.finish(Err(PairingFailure::TakenByAnother));
                    return;
                }
                let Some(keys) = self.acceptor_keys.take() else {
                    return;
                };
                if !keys.verify(Side::Inviter, &tag) {
                    self.abort(now, AbortReason::BadProof, PairingFailure::BadProof);
                    return;
                }
                let Role::Acceptor { inviter } = self.config.role else {
                    return;
                };
                self.outputs.push_back(Output::Save(SaveRequest {
                    peer: inviter,
                    announced_name: name,
                    rk: keys.relationship_key().clone(),
                }));
                self.phase = Phase::Saving {
                    peer: inviter,
                    keys,
                };
            }
            Record::Abort { reason } => self.finish(Err(PairingFailure::Aborted {
                reason,
                written: WrittenNote(false),
            })),
        }
    }

    fn saved(&mut self, now: Instant, result: Result<(), String>) {
        let Phase::Saving { peer, keys } = std::mem::replace(&mut self.phase, Phase::Waiting)
        else {
            return;
        };
        match result {
            Ok(()) => {
                self.written = true;
                self.record = match self.config.role {
                    Role::Inviter => Record::Confirm {
                        name: self.config.name.clone(),
                        acceptor: peer,
                        tag: keys.tag(Side::Inviter),
                    },
                    Role::Acceptor { .. } => Record::Done {
                        tag: keys.tag(Side::Acceptor),
                    },
                };
                self.phase = Phase::Confirming { peer };
                self.republish(now);
            }
            Err(reason) => self.abort(now, AbortReason::NotSaved, PairingFailure::Save(reason)),
        }
    }

    /// Tells the other side we give up, and fails once the relay holds that.
    fn abort(&mut self, now: Instant, reason: AbortReason, failure: PairingFailure) {
        self.record = Record::Abort { reason };
        self.phase = Phase::Aborting(failure);
        self.republish(now);
    }

    fn republish(&mut self, now: Instant) {
        self.sealed = None;
        self.echoed = false;
        if let Some(link) = self.link.connected() {
            self.publish(now, link);
            self.next_lookup = Some(now);
        }
    }

    /// Seals the current record now and sends it.
    fn publish(&mut self, now: Instant, link: LinkId) {
        let (ttl, republish_after) = record_lifetime(self.deadline.saturating_duration_since(now));
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let Ok(hint) = seal_hint(
            &self.channel,
            self.config.keypair.public(),
            &self.record.encode(),
            self.unix_ms(now),
            ttl_ms,
            &mut self.rng,
        ) else {
            return;
        };
        self.sealed = Some(hint.clone());
        self.echoed = false;
        self.republish_at = Some(now + republish_after);
        self.transmit(
            link,
            WireFrame::Rendezvous(RendezvousMessage::Publish {
                rendezvous_id: self.rendezvous_id.0,
                ttl_ms,
                hint,
            }),
        );
    }

    fn maybe_lookup(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Finished | Phase::Saving { .. }) || self.lookup_in_flight {
            return;
        }
        let Some(link) = self.link.connected() else {
            return;
        };
        if self.next_lookup.is_none_or(|at| now < at) {
            return;
        }
        if self.sealed.is_none() || self.republish_at.is_some_and(|at| now >= at) {
            self.publish(now, link);
        }
        self.lookup_in_flight = true;
        self.transmit(
            link,
            WireFrame::Rendezvous(RendezvousMessage::Lookup {
                rendezvous_id: self.rendezvous_id.0,
            }),
        );
    }

    fn transmit(&mut self, link: LinkId, frame: WireFrame) {
        if let Ok(frame) = tether_protocol::encode(&frame) {
            self.outputs
                .push_back(Output::Transport(TransportCommand::Transmit {
                    link,
                    frame,
                }));
        }
    }

    fn timed_out(&self) -> PairingFailure {
        let seconds = self.config.timeout.as_secs();
        let waiting_for = if self.link.connected().is_none() && self.sealed.is_none() {
            format!(
                "could not connect to the relay at {}{}; nothing was written",
                self.config.relay_addr,
                self.last_problem
                    .as_ref()
                    .map(|p| format!(" ({p})"))
                    .unwrap_or_default()
            )
        } else {
            match (&self.phase, self.config.role) {
                (Phase::Waiting, Role::Inviter) => {
                    "no device accepted the code; nothing was written".to_string()
                }
                (Phase::Waiting, Role::Acceptor { .. }) => {
                    "the inviting device did not confirm (is `tether invite` still running there, and was the code copied whole?); nothing was written".to_string()
                }
                (Phase::Confirming { .. }, Role::Inviter) => {
                    "the other device did not say it saved its entry; this device's entry for it was written (if `tether accept` failed there, remove it or pair again with --force)".to_string()
                }
                (Phase::Confirming { .. }, Role::Acceptor { .. }) => {
                    "the relay did not confirm it holds this device's last record; this device's entry was written".to_string()
                }
                (Phase::Aborting(failure), _) => failure.to_string(),
                (Phase::Saving { .. } | Phase::Finished, _) => "the pairing did not finish".to_string(),
            }
        };
        PairingFailure::TimedOut {
            seconds,
            waiting_for,
        }
    }
}

/// What [`run`] ends with: the result, and what the save callback returned if it ran.
pub struct RunOutcome<T> {
    /// Success, or why not.
    pub result: Result<Paired, PairingFailure>,
    /// The save callback's value, if the entry was written.
    pub saved: Option<T>,
}

impl ServerClientCore for PairingCore {
    type Output = Output;

    fn transport(&mut self, now: Instant, event: TransportEvent) {
        self.handle(now, Input::Transport(event));
    }

    fn bound(&mut self, bound: LinkBound) {
        self.handle(Instant::now(), Input::Bound(bound));
    }

    fn handle_timeout(&mut self, now: Instant) {
        PairingCore::handle_timeout(self, now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        PairingCore::poll_timeout(self)
    }

    fn poll_output(&mut self) -> Option<CoreOutput<Output>> {
        PairingCore::poll_output(self).map(|output| match output {
            Output::Transport(command) => CoreOutput::Transport(command),
            other => CoreOutput::Other(other),
        })
    }
}

/// Runs a pairing over a real UDP endpoint until it ends. `save` writes the entry
/// (Err: why not, in one line).
pub async fn run<T>(
    config: PairingConfig,
    mut save: impl FnMut(&SaveRequest) -> Result<T, String>,
) -> Result<RunOutcome<T>, BindError> {
    let relay = config.relay_addr;
    let mut core = PairingCore::new(config, Instant::now());
    core.handle(Instant::now(), Input::Start);
    let mut saved = None;
    let result = server_session::drive(relay, &mut core, |core, output| match output {
        Output::Save(request) => {
            let answer = match save(&request) {
                Ok(value) => {
                    saved = Some(value);
                    Ok(())
                }
                Err(reason) => Err(reason),
            };
            core.handle(Instant::now(), Input::Saved(answer));
            ControlFlow::Continue(())
        }
        Output::Finished(result) => ControlFlow::Break(result),
        Output::Transport(_) => ControlFlow::Continue(()),
    })
    .await?;
    Ok(RunOutcome { result, saved })
}

/// A seed for the core's RNG from the operating system.
pub fn os_seed() -> [u8; 32] {
    rand::rngs::OsRng.gen()
}

/// This machine's host name (what a device announces by default), if it has one.
pub fn host_name() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|file| std::fs::read_to_string(file).ok())
        .map(|name| name.trim().to_string())
        .find(|name| !name.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An inviter with a `timeout` of two hours against a relay that admits it and
    /// answers every lookup with no record but its own: the time and lifetime of each
    /// record it publishes in the first `watch`.
    fn publishes_of_a_long_invitation(watch: Duration) -> Vec<(Duration, Duration)> {
        use tether_protocol::{PathKind, CHANNEL_BINDING_LEN};
        let mut rng = rand::rngs::OsRng;
        let relay = StaticKeypair::generate(&mut rng);
        let keypair = StaticKeypair::generate(&mut rng);
        let device = *keypair.public();
        let t0 = Instant::now();
        let mut core = PairingCore::new(
            PairingConfig {
                keypair,
                relay_addr: "192.0.2.1:7300".parse().unwrap_or_else(|e| panic!("{e}")),
                relay_key: *relay.public(),
                secret: PairingSecret::generate(&mut rng),
                role: Role::Inviter,
                name: "laptop".into(),
                known: BTreeSet::new(),
                force: false,
                timeout: Duration::from_secs(2 * 60 * 60),
                unix_ms_at_start: 1_700_000_000_000,
                seed: [7; 32],
            },
            t0,
        );
        let encode = |message: WireFrame| {
            tether_protocol::encode(&message).unwrap_or_else(|e| panic!("{e}"))
        };
        let link = LinkId(9);
        let binding = [0xB1; CHANNEL_BINDING_LEN];
        let nonce = [5; 32];
        core.handle(t0, Input::Start);
        let Some(Output::Transport(TransportCommand::Dial { request, .. })) = core.poll_output()
        else {
            panic!("a dial first");
        };
        core.handle(t0, Input::Bound(LinkBound { link, binding }));
        let up = TransportEvent::LinkUp {
            request: Some(request),
            link,
            path: PathKind::Direct,
            remote: None,
        };
        core.handle(t0, Input::Transport(up));
        let relay_says = |core: &mut PairingCore, now, message| {
            let frame = encode(WireFrame::Relay(message));
            core.handle(
                now,
                Input::Transport(TransportEvent::FrameReceived { link, frame }),
            );
        };
        let challenge = RelayMessage::Challenge {
            nonce,
            server_key: *relay.public().as_bytes(),
        };
        relay_says(&mut core, t0, challenge);
        let proof = tether_crypto::server_proof(&relay, &device, &nonce, &binding).to_vec();
        relay_says(
            &mut core,
            t0,
            RelayMessage::Welcome {
                proof,
                observed: None,
            },
        );

        let mut publishes = Vec::new();
        let mut now = t0;
        while now - t0 < watch {
            while let Some(output) = core.poll_output() {
                let Output::Transport(TransportCommand::Transmit { frame, .. }) = output else {
                    continue;
                };
                let Ok(WireFrame::Rendezvous(message)) = tether_protocol::decode(&frame) else {
                    continue;
                };
                match message {
                    RendezvousMessage::Publish { ttl_ms, .. } => {
                        publishes.push((now - t0, Duration::from_millis(ttl_ms)))
                    }
                    RendezvousMessage::Lookup { rendezvous_id } => {
                        let hints = RendezvousMessage::Hints {
                            rendezvous_id,
                            hints: Vec::new(),
                        };
                        let frame = encode(WireFrame::Rendezvous(hints));
                        let event = TransportEvent::FrameReceived { link, frame };
                        core.handle(now, Input::Transport(event));
                    }
                    _ => {}
                }
            }
            now = core
                .poll_timeout()
                .unwrap_or_else(|| panic!("the invitation ended"));
            core.handle_timeout(now);
        }
        publishes
    }

    #[test]
    fn an_invitation_longer_than_the_relay_keeps_a_record_publishes_it_again_in_time() {
        let publishes = publishes_of_a_long_invitation(Duration::from_secs(90 * 60));
        assert!(publishes.len() >= 2, "{publishes:?}");
        // Each record asks for no more than the relay grants, and the next one goes out
        // before it expires.
        let max = tether_pms::table::DEFAULT_MAX_HINT_TTL;
        for (i, &(at, ttl)) in publishes.iter().enumerate() {
            assert!(ttl <= max, "{publishes:?}");
            let next = publishes
                .get(i + 1)
                .map_or(Duration::from_secs(90 * 60), |p| p.0);
            assert!(
                next < at + ttl,
                "record {i} expires before the next: {publishes:?}"
            );
        }
    }

    #[test]
    fn records_round_trip_and_malformed_ones_are_refused() {
        let key = *StaticKeypair::generate(&mut rand::rngs::OsRng).public();
        let records = [
            Record::Offer {
                name: "laptop".into(),
            },
            Record::Answer {
                name: "phone".into(),
                tag: [7; TAG_LEN],
            },
            Record::Confirm {
                name: "laptop".into(),
                acceptor: key,
                tag: [9; TAG_LEN],
            },
            Record::Done { tag: [1; TAG_LEN] },
            Record::Abort {
                reason: AbortReason::AlreadyPaired,
            },
        ];
        for record in records {
            let bytes = record.encode();
            assert_eq!(Record::decode(&bytes), Some(record.clone()));
            // Every truncation, and one byte too many, is refused without a panic.
            for cut in 0..bytes.len() {
                assert_eq!(
                    Record::decode(&bytes[..cut]),
                    None,
                    "{record:?} cut at {cut}"
                );
            }
            let mut long = bytes.clone();
            long.push(0);
            assert_eq!(Record::decode(&long), None);
        }
        assert_eq!(Record::decode(&[9, 1, 2]), None);
        // A name longer than the bound is cut, not refused.
        let long = Record::Offer {
            name: "x".repeat(200),
        };
        assert_eq!(
            Record::decode(&long.encode()),
            Some(Record::Offer {
                name: "x".repeat(MAX_NAME_LEN)
            })
        );
    }
}
