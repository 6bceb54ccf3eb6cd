//! The Noise handshake that establishes a generation of session keys.
//!
//! Pattern `Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s` with the pair's relationship key as
//! the PSK. IK: the initiator knows the responder's static key in advance and sends its
//! own encrypted in message 1. psk2: the PSK is mixed in only at message 2, so the
//! responder first reads message 1, learns who is calling, looks up that peer's RK and
//! then answers; an unknown device is refused before any state is kept.
//!
//! Message 1 carries an encrypted [`InitiationPayload`]: the epoch the initiator
//! proposes and a timestamp that must be strictly greater than the last one accepted
//! from that peer, so a recorded message 1 cannot be replayed (as WireGuard's TAI64N
//! timestamp). Message 2 carries, encrypted and authenticated by the RK and both
//! static keys, a [`ResponsePayload`]: the epoch the generation gets, which both sides
//! then use.
//!
//! The responder decides the epoch. Usually it is the proposal. When the proposal is
//! not above the epoch the responder has committed, the initiator has lost the session
//! the responder still holds (it restarted: a fresh process proposes
//! [`crate::keyring::FIRST_EPOCH`]); the responder then *raises* the epoch above every
//! generation it holds, so the new handshake outranks the old session on both sides
//! and the pair is back in session after this one handshake, instead of waiting for the
//! responder to give the old session up. Nothing about the old session changes until
//! the new generation commits, which takes a frame only the holder of the initiator's
//! ephemeral key can seal: a replayed message 1 gets a message 2 and nothing more.
//!
//! ```text
//! initiator                                   responder
//!   Handshake::initiate  ── message 1 ──▶  Handshake::respond (lookup peer → RK, epoch)
//!   InitiatorHandshake::confirm ◀── message 2 (epoch) ──
//!   both: SessionKeys (same epoch, PeerSecret, KeyId and session fingerprint)
//! ```

use std::fmt;

use rand::{CryptoRng, RngCore};
use snow::params::NoiseParams;
use snow::{Builder, HandshakeState, StatelessTransportState};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::fingerprint::Fingerprint;
use crate::kdf::{derive, label};
use crate::keys::{KeyError, PublicKey, RelationshipKey, StaticKeypair, KEY_LEN};
use crate::peer_secret::{KeyId, PeerSecret};
use crate::rng::resolver_from;

/// The Noise protocol name: IK because the initiator knows whom it calls, psk2 so the
/// responder can pick the RK after learning who calls, ChaChaPoly and BLAKE2s because
/// they are fast in pure Rust on phones without AES instructions.
pub const NOISE_PROTOCOL: &str = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";

/// Noise prologue: binds both sides to this protocol and version, so a handshake
/// between two incompatible versions fails instead of producing mismatched keys. v2:
/// message 2 carries the generation's epoch ([`ResponsePayload`]); v3: message 1 says
/// whether it rekeys a live session ([`HandshakePurpose`]).
const PROLOGUE: &[u8] = b"tether noise v3";

/// Position of the PSK token in the pattern (the `2` of `psk2`).
const PSK_LOCATION: u8 = 2;

/// Length of the AEAD tag Noise appends to every encrypted field (ChaChaPoly).
const TAG_LEN: usize = 16;

/// Length of the encoded [`InitiationPayload`]: two little-endian u64 and the purpose
/// byte.
pub const INITIATION_PAYLOAD_LEN: usize = 17;

/// Length of the encoded [`ResponsePayload`]: one little-endian u64.
pub const RESPONSE_PAYLOAD_LEN: usize = 8;

/// Exact length of message 1: ephemeral key, encrypted static key, encrypted payload.
pub const MESSAGE1_LEN: usize = KEY_LEN + (KEY_LEN + TAG_LEN) + (INITIATION_PAYLOAD_LEN + TAG_LEN);

/// Exact length of message 2: ephemeral key and the encrypted [`ResponsePayload`].
pub const MESSAGE2_LEN: usize = KEY_LEN + (RESPONSE_PAYLOAD_LEN + TAG_LEN);

/// Why a handshake message was refused. No variant carries secret material.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The message does not have the fixed length of its kind.
    #[error("handshake message has {found} bytes, expected {expected}")]
    BadLength {
        /// Required length.
        expected: usize,
        /// Length received.
        found: usize,
    },
    /// The message failed authentication (corrupted, forged, or the wrong RK).
    #[error("handshake message failed authentication")]
    Authentication,
    /// The initiator's static key is not a valid public key.
    #[error("initiator's static key is invalid: {0}")]
    BadStaticKey(KeyError),
    /// The initiation or response payload does not decode, or message 2 gives the
    /// generation an epoch below the one proposed (a responder only ever raises it).
    #[error("handshake payload is malformed")]
    BadPayload,
    /// The initiator is not a paired device.
    #[error("initiation from unknown device {0}")]
    UnknownPeer(Fingerprint),
    /// The initiation's timestamp is not after the last accepted one (a replay).
    #[error("replayed initiation: timestamp {timestamp_ms} is not after {last_accepted_ms}")]
    ReplayedInitiation {
        /// Timestamp in the message.
        timestamp_ms: u64,
        /// Last timestamp accepted from this peer.
        last_accepted_ms: u64,
    },
    /// The handshake's epoch is not after the committed one: a handshake result
    /// computed against other [`PeerParams`] than the ring's own.
    #[error("stale epoch {proposed}: epoch {committed} is already committed")]
    StaleEpoch {
        /// Epoch of the handshake.
        proposed: u64,
        /// Epoch committed with this peer.
        committed: u64,
    },
    /// The epoch cannot be raised above the ones held (u64::MAX reached).
    #[error("epoch counter exhausted")]
    EpochExhausted,
    /// `confirm` was called again after it succeeded.
    #[error("handshake already confirmed")]
    AlreadyConfirmed,
    /// The Noise library failed on input this crate had already validated; a bug.
    #[error("noise failure: {0}")]
    Noise(String),
}

fn noise_error(error: snow::Error) -> HandshakeError {
    match error {
        snow::Error::Decrypt => HandshakeError::Authentication,
        other => HandshakeError::Noise(other.to_string()),
    }
}

/// Which side of a handshake this device played.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Sent message 1.
    Initiator,
    /// Answered with message 2.
    Responder,
}

/// Why the initiator runs a handshake, authenticated inside message 1 so both sides of
/// the generation know it ([`SessionKeys::purpose`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HandshakePurpose {
    /// Establishes a session, or recovers one the initiator evicted or lost: the new
    /// generation replaces a session that is gone or going.
    #[default]
    Establish,
    /// Replaces the keys of a live session (time or volume limit reached): only the
    /// keys change; path, status and any migration in progress are untouched.
    Rekey,
}

impl HandshakePurpose {
    fn to_byte(self) -> u8 {
        match self {
            HandshakePurpose::Establish => 0,
            HandshakePurpose::Rekey => 1,
        }
    }

    fn from_byte(byte: u8) -> Result<Self, HandshakeError> {
        match byte {
            0 => Ok(HandshakePurpose::Establish),
            1 => Ok(HandshakePurpose::Rekey),
            _ => Err(HandshakeError::BadPayload),
        }
    }
}

/// What the initiator proposes, encrypted inside message 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitiationPayload {
    /// Epoch proposed for the generation this handshake creates (committed epoch + 1,
    /// or [`crate::keyring::FIRST_EPOCH`] with nothing committed); the responder may
    /// raise it ([`ResponsePayload`]).
    pub epoch: u64,
    /// Strictly increasing per initiator and peer; lets the responder refuse replays.
    pub timestamp_ms: u64,
    /// Why the initiator runs this handshake.
    pub purpose: HandshakePurpose,
}

impl InitiationPayload {
    /// Encodes as `epoch` then `timestamp_ms`, each a little-endian u64, then the
    /// purpose byte (0 establish, 1 rekey).
    pub fn encode(&self) -> [u8; INITIATION_PAYLOAD_LEN] {
        let mut out = [0_u8; INITIATION_PAYLOAD_LEN];
        out[..8].copy_from_slice(&self.epoch.to_le_bytes());
        out[8..16].copy_from_slice(&self.timestamp_ms.to_le_bytes());
        out[16] = self.purpose.to_byte();
        out
    }

    /// Decodes exactly [`INITIATION_PAYLOAD_LEN`] bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, HandshakeError> {
        let bytes: &[u8; INITIATION_PAYLOAD_LEN] =
            bytes.try_into().map_err(|_| HandshakeError::BadPayload)?;
        let (epoch, rest) = bytes.split_at(8);
        let (timestamp, purpose) = rest.split_at(8);
        let word = |b: &[u8]| -> Result<u64, HandshakeError> {
            Ok(u64::from_le_bytes(
                b.try_into().map_err(|_| HandshakeError::BadPayload)?,
            ))
        };
        Ok(Self {
            epoch: word(epoch)?,
            timestamp_ms: word(timestamp)?,
            purpose: HandshakePurpose::from_byte(purpose[0])?,
        })
    }
}

/// What the responder answers, encrypted inside message 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponsePayload {
    /// Epoch of the generation this handshake creates, on both sides: the proposal,
    /// or above every generation the responder holds when the proposal was not above
    /// its committed epoch (the initiator lost its state).
    pub epoch: u64,
}

impl ResponsePayload {
    /// Encodes `epoch` as a little-endian u64.
    pub fn encode(&self) -> [u8; RESPONSE_PAYLOAD_LEN] {
        self.epoch.to_le_bytes()
    }

    /// Decodes exactly [`RESPONSE_PAYLOAD_LEN`] bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, HandshakeError> {
        let bytes: [u8; RESPONSE_PAYLOAD_LEN] =
            bytes.try_into().map_err(|_| HandshakeError::BadPayload)?;
        Ok(Self {
            epoch: u64::from_le_bytes(bytes),
        })
    }
}

/// What the responder knows about a paired device, returned by the lookup in
/// [`Handshake::respond`] (usually [`crate::KeyRing::peer_params`]).
#[derive(Debug, Clone)]
pub struct PeerParams {
    /// The pair's relationship key.
    pub rk: RelationshipKey,
    /// Timestamp of the last initiation accepted from this peer, if any.
    pub last_initiation_timestamp_ms: Option<u64>,
    /// Epoch committed with this peer, if any: a proposal not above it is raised.
    pub committed_epoch: Option<u64>,
    /// Highest epoch among the generations held with this peer (committed and
    /// candidates), if any: a raised epoch goes one above it.
    pub highest_epoch: Option<u64>,
}

/// The result of a successful [`Handshake::respond`]: send `message2`, then hand the
/// whole value to [`crate::KeyRing::accept`].
pub struct Responded {
    /// The initiator's static key, authenticated by message 1.
    pub peer: PublicKey,
    /// The initiator's proposal.
    pub payload: InitiationPayload,
    /// True when the proposal was not above the committed epoch and the epoch was
    /// raised (`keys.epoch()` is the generation's epoch): the initiator lost the session
    /// this side holds, most likely because it restarted.
    pub epoch_raised: bool,
    /// Message 2, to send to the initiator.
    pub message2: Vec<u8>,
    /// The new generation's keys (a candidate until the initiator uses them).
    pub keys: SessionKeys,
}

impl fmt::Debug for Responded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responded")
            .field("peer", &self.peer)
            .field("payload", &self.payload)
            .field("epoch_raised", &self.epoch_raised)
            .field("message2_len", &self.message2.len())
            .field("keys", &self.keys)
            .finish()
    }
}

/// Entry points of the handshake (a namespace: the state lives in the values returned).
#[derive(Debug)]
pub struct Handshake;

impl Handshake {
    /// Starts a handshake to `remote`: returns the initiator state and message 1.
    pub fn initiate<R: RngCore + CryptoRng>(
        local: &StaticKeypair,
        remote: &PublicKey,
        rk: &RelationshipKey,
        payload: InitiationPayload,
        rng: &mut R,
    ) -> Result<(InitiatorHandshake, Vec<u8>), HandshakeError> {
        let mut state = builder(rng)?
            .local_private_key(local.private_bytes())
            .and_then(|b| b.remote_public_key(remote.as_bytes()))
            .and_then(|b| b.psk(PSK_LOCATION, rk.as_bytes()))
            .and_then(Builder::build_initiator)
            .map_err(noise_error)?;
        let mut message1 = vec![0_u8; MESSAGE1_LEN];
        let written = state
            .write_message(&payload.encode(), &mut message1)
            .map_err(noise_error)?;
        if written != MESSAGE1_LEN {
            return Err(HandshakeError::Noise(format!(
                "message 1 has {written} bytes, expected {MESSAGE1_LEN}"
            )));
        }
        let initiator = InitiatorHandshake {
            state: Some(state),
            local: *local.public(),
            remote: *remote,
            payload,
        };
        Ok((initiator, message1))
    }

    /// Answers message 1. `lookup` maps the initiator's authenticated static key to
    /// its [`PeerParams`], or `None` for a device that is not paired (refused).
    /// Nothing is kept on failure: a refused or corrupted message 1 leaves no state.
    pub fn respond<R, F>(
        local: &StaticKeypair,
        message1: &[u8],
        lookup: F,
        rng: &mut R,
    ) -> Result<Responded, HandshakeError>
    where
        R: RngCore + CryptoRng,
        F: FnOnce(&PublicKey) -> Option<PeerParams>,
    {
        check_len(message1, MESSAGE1_LEN)?;
        let mut state = builder(rng)?
            .local_private_key(local.private_bytes())
            .and_then(Builder::build_responder)
            .map_err(noise_error)?;
        let mut payload = [0_u8; MESSAGE1_LEN];
        let payload_len = state
            .read_message(message1, &mut payload)
            .map_err(noise_error)?;
        let peer = PublicKey::from_slice(state.get_remote_static().unwrap_or_default())
            .map_err(HandshakeError::BadStaticKey)?;
        let proposal = InitiationPayload::decode(&payload[..payload_len])?;
        let params = lookup(&peer).ok_or(HandshakeError::UnknownPeer(peer.fingerprint()))?;
        let agreed = check_initiation(&proposal, &params)?;
        state
            .set_psk(usize::from(PSK_LOCATION), params.rk.as_bytes())
            .map_err(noise_error)?;
        let mut message2 = vec![0_u8; MESSAGE2_LEN];
        let response = ResponsePayload {
            epoch: agreed.epoch,
        };
        let written = state
            .write_message(&response.encode(), &mut message2)
            .map_err(noise_error)?;
        if written != MESSAGE2_LEN {
            return Err(HandshakeError::Noise(format!(
                "message 2 has {written} bytes, expected {MESSAGE2_LEN}"
            )));
        }
        let keys =
            SessionKeys::from_finished(state, Role::Responder, peer, peer, agreed.epoch, proposal)?;
        Ok(Responded {
            peer,
            payload: proposal,
            epoch_raised: agreed.raised,
            message2,
            keys,
        })
    }
}

/// The epoch a responder gives a handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AgreedEpoch {
    /// The generation's epoch.
    pub(crate) epoch: u64,
    /// Raised above the proposal (the initiator lost its state).
    pub(crate) raised: bool,
}

/// Refuses a replayed initiation and decides the generation's epoch: the proposal if
/// it is above the committed epoch, else one above every epoch held (see the module
/// docs: the initiator restarted).
pub(crate) fn check_initiation(
    proposal: &InitiationPayload,
    params: &PeerParams,
) -> Result<AgreedEpoch, HandshakeError> {
    if let Some(last) = params.last_initiation_timestamp_ms {
        if proposal.timestamp_ms <= last {
            return Err(HandshakeError::ReplayedInitiation {
                timestamp_ms: proposal.timestamp_ms,
                last_accepted_ms: last,
            });
        }
    }
    match params.committed_epoch {
        Some(committed) if proposal.epoch <= committed => {
            let highest = params.highest_epoch.map_or(committed, |h| h.max(committed));
            let epoch = highest
                .checked_add(1)
                .ok_or(HandshakeError::EpochExhausted)?;
            Ok(AgreedEpoch {
                epoch,
                raised: true,
            })
        }
        _ => Ok(AgreedEpoch {
            epoch: proposal.epoch,
            raised: false,
        }),
    }
}

fn check_len(message: &[u8], expected: usize) -> Result<(), HandshakeError> {
    if message.len() == expected {
        Ok(())
    } else {
        Err(HandshakeError::BadLength {
            expected,
            found: message.len(),
        })
    }
}

fn builder<'a, R: RngCore + CryptoRng>(rng: &mut R) -> Result<Builder<'a>, HandshakeError> {
    let params: NoiseParams = NOISE_PROTOCOL.parse().map_err(noise_error)?;
    Builder::with_resolver(params, resolver_from(rng))
        .prologue(PROLOGUE)
        .map_err(noise_error)
}

/// The initiator between message 1 and message 2.
pub struct InitiatorHandshake {
    /// `None` once confirmed.
    state: Option<HandshakeState>,
    local: PublicKey,
    remote: PublicKey,
    payload: InitiationPayload,
}

impl InitiatorHandshake {
    /// Reads message 2 and returns the new generation's keys, with the epoch the
    /// responder gave it (the proposal, or above it if the responder raised it). A
    /// corrupted or forged message 2 returns an error and leaves this state able to
    /// read the genuine one.
    pub fn confirm(&mut self, message2: &[u8]) -> Result<SessionKeys, HandshakeError> {
        check_len(message2, MESSAGE2_LEN)?;
        let state = self
            .state
            .as_mut()
            .ok_or(HandshakeError::AlreadyConfirmed)?;
        // snow restores its symmetric state when a read fails, and message 2 starts
        // with the responder's ephemeral key, which a later read overwrites: a failed
        // read leaves the handshake as it was.
        let mut payload = [0_u8; MESSAGE2_LEN];
        let payload_len = state
            .read_message(message2, &mut payload)
            .map_err(noise_error)?;
        // Authentic from here on: the state is finished either way.
        let state = self.state.take().ok_or(HandshakeError::AlreadyConfirmed)?;
        let response = ResponsePayload::decode(&payload[..payload_len])?;
        if response.epoch < self.payload.epoch {
            return Err(HandshakeError::BadPayload);
        }
        SessionKeys::from_finished(
            state,
            Role::Initiator,
            self.local,
            self.remote,
            response.epoch,
            self.payload,
        )
    }

    /// The proposal sent in message 1.
    pub fn payload(&self) -> InitiationPayload {
        self.payload
    }

    /// The device this handshake calls.
    pub fn remote(&self) -> &PublicKey {
        &self.remote
    }
}

impl fmt::Debug for InitiatorHandshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InitiatorHandshake")
            .field("remote", &self.remote)
            .field("payload", &self.payload)
            .field("confirmed", &self.state.is_none())
            .finish()
    }
}

/// The keys and identity of one finished handshake: one *generation*.
pub struct SessionKeys {
    transport: StatelessTransportState,
    peer_secret: PeerSecret,
    key_id: KeyId,
    session_fingerprint: Fingerprint,
    /// The generation's epoch (message 2's, maybe raised above the proposal).
    epoch: u64,
    /// The initiator's proposal in message 1.
    payload: InitiationPayload,
    role: Role,
    initiator: PublicKey,
    remote: PublicKey,
}

impl SessionKeys {
    fn from_finished(
        mut state: HandshakeState,
        role: Role,
        initiator: PublicKey,
        remote: PublicKey,
        epoch: u64,
        payload: InitiationPayload,
    ) -> Result<Self, HandshakeError> {
        let hash: [u8; 32] = state
            .get_handshake_hash()
            .try_into()
            .map_err(|_| HandshakeError::Noise("handshake hash is not 32 bytes".into()))?;
        let (k1, k2) = state.dangerously_get_raw_split();
        let (k1, k2) = (Zeroizing::new(k1), Zeroizing::new(k2));
        let transport = state.into_stateless_transport_mode().map_err(noise_error)?;
        Ok(Self {
            transport,
            peer_secret: PeerSecret::derive(&k1, &k2, &hash),
            key_id: KeyId::from_handshake_hash(&hash),
            session_fingerprint: Fingerprint::from_digest(&derive(
                &hash,
                label::SESSION_FINGERPRINT,
                &[],
            )),
            epoch,
            payload,
            role,
            initiator,
            remote,
        })
    }

    /// The transport cipher states, for sealing.
    pub(crate) fn transport(&self) -> &StatelessTransportState {
        &self.transport
    }

    /// This generation's PeerSecret.
    pub fn peer_secret(&self) -> &PeerSecret {
        &self.peer_secret
    }

    /// The id frames sealed with these keys carry.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// Equal on both sides iff they finished the same handshake.
    pub fn session_fingerprint(&self) -> Fingerprint {
        self.session_fingerprint
    }

    /// The generation's epoch: the one message 2 carried, equal on both sides.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The epoch the initiator proposed in message 1.
    pub fn proposed_epoch(&self) -> u64 {
        self.payload.epoch
    }

    /// True when the responder raised the epoch above the proposal: the initiator had
    /// lost the session the responder held (it restarted). Equal on both sides.
    pub fn epoch_raised(&self) -> bool {
        self.epoch > self.payload.epoch
    }

    /// Why the initiator ran this handshake (from message 1). Equal on both sides.
    pub fn purpose(&self) -> HandshakePurpose {
        self.payload.purpose
    }

    /// The initiator's timestamp (orders retries of one initiator within an epoch).
    pub fn initiation_timestamp_ms(&self) -> u64 {
        self.payload.timestamp_ms
    }

    /// Which side this device played.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The initiator's static key (the tie-break between handshakes of one epoch).
    pub fn initiator(&self) -> &PublicKey {
        &self.initiator
    }

    /// The other device.
    pub fn remote(&self) -> &PublicKey {
        &self.remote
    }
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionKeys")
            .field("epoch", &self.epoch)
            .field("proposed_epoch", &self.payload.epoch)
            .field("role", &self.role)
            .field("key_id", &self.key_id)
            .field("initiator", &self.initiator)
            .field("session", &self.session_fingerprint)
            .field("peer_secret", &self.peer_secret)
            .finish_non_exhaustive()
    }
}
