//! The per-peer key ring: which handshake generation is committed, which are
//! candidates, and the two-phase commit rule that keeps both devices on the same
//! PeerSecret even when their handshakes cross (invariant 3 of the design).
//!
//! The rule and the argument that it converges are in the crate docs
//! ([`crate`], "The PeerSecret commit rule"). In short: a generation is ordered by
//! [`GenerationId`]; a handshake yields a candidate; the initiator's candidate is
//! sendable once it has message 2; a side commits a candidate when a frame sealed
//! under it opens and it is better than the committed one.

use std::cmp::Ordering;
use std::fmt;

use rand::{CryptoRng, RngCore};
use thiserror::Error;

use crate::fingerprint::Fingerprint;
use crate::handshake::{
    check_initiation, Handshake, HandshakeError, HandshakePurpose, InitiationPayload,
    InitiatorHandshake, PeerParams, Responded, Role, SessionKeys,
};
use crate::keys::{PublicKey, RelationshipKey, StaticKeypair};
use crate::migration::{verify_migration_tag, MigrationTag};
use crate::peer_secret::KeyId;
use crate::replay::ReplayWindow;
use crate::session::{OpenError, SealError, Sealed, Session};

/// Epoch of the first handshake with a peer. Starting at 1 keeps 0 free to mean
/// "nothing committed yet" in logs and wire formats that cannot carry an `Option`.
pub const FIRST_EPOCH: u64 = 1;

/// Most candidate generations kept at once. Each is one handshake of an epoch not yet
/// committed (mostly retries while the peer is unreachable); 16 outlasts any sane
/// retry schedule while bounding memory (a generation holds ~1 KiB of replay window).
/// When full, the worst candidate makes room for a better one; a responder refuses an
/// initiation worse than all it holds (see [`RingError::CandidatesFull`]).
pub const MAX_CANDIDATES: usize = 16;

/// Identifies a handshake generation and places it in the total order that decides
/// which generation wins. Greater is better: a later epoch; within an epoch, the
/// handshake whose initiator has the *lower* static public key (bytewise); then the
/// initiator's later retry (timestamp); then the session fingerprint, which only two
/// distinct handshakes with all else equal could differ in. Both devices compute the
/// same id for the same handshake, so they agree on the order.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct GenerationId {
    /// The handshake's epoch.
    pub epoch: u64,
    /// The initiator's static key.
    pub initiator: PublicKey,
    /// The initiator's timestamp in message 1.
    pub initiation_timestamp_ms: u64,
    /// The session fingerprint (equal on both sides of the handshake).
    pub session_fingerprint: Fingerprint,
}

impl Ord for GenerationId {
    fn cmp(&self, other: &Self) -> Ordering {
        self.epoch
            .cmp(&other.epoch)
            // Reversed: the lower initiator key ranks higher.
            .then_with(|| other.initiator.cmp(&self.initiator))
            .then_with(|| {
                self.initiation_timestamp_ms
                    .cmp(&other.initiation_timestamp_ms)
            })
            .then_with(|| self.session_fingerprint.cmp(&other.session_fingerprint))
    }
}

impl PartialOrd for GenerationId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for GenerationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "e{}/init {}/t{}/s {}",
            self.epoch,
            self.initiator.fingerprint(),
            self.initiation_timestamp_ms,
            self.session_fingerprint
        )
    }
}

impl SessionKeys {
    /// This generation's place in the commit order.
    pub fn generation_id(&self) -> GenerationId {
        GenerationId {
            epoch: self.epoch(),
            initiator: *self.initiator(),
            initiation_timestamp_ms: self.initiation_timestamp_ms(),
            session_fingerprint: self.session_fingerprint(),
        }
    }
}

/// Why the key ring refused an operation. The ring is unchanged in every case but
/// one: [`KeyRing::confirm`] of a genuine message 2 when the candidate table is full
/// of better generations consumes the pending initiation (its keys are discarded
/// unused, so the peer never commits them).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RingError {
    /// The handshake itself failed.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// A handshake result for another device was given to this peer's ring.
    #[error("handshake is with device {found}, this ring is for {expected}")]
    WrongPeer {
        /// This ring's peer.
        expected: Fingerprint,
        /// The handshake's peer.
        found: Fingerprint,
    },
    /// Message 2 arrived but no initiation is pending (never sent, already confirmed,
    /// replaced by a retry, or made moot by a commit).
    #[error("no pending initiation for this message 2")]
    NoPendingInitiation,
    /// The candidate table is full of generations better than this one.
    #[error("candidate table full ({MAX_CANDIDATES}) of better generations")]
    CandidatesFull,
    /// The epoch counter cannot advance (u64::MAX committed).
    #[error("epoch counter exhausted")]
    EpochExhausted,
    /// No generation may be sent under yet (nothing committed, no confirmed handshake).
    #[error("no generation is sendable yet")]
    NoSendableKey,
    /// The frame names a key id this ring does not hold.
    #[error("no generation with key id {0}")]
    UnknownKeyId(KeyId),
    /// Sealing failed.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// Opening failed.
    #[error(transparent)]
    Open(#[from] OpenError),
}

/// Where in the ring a generation sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    /// The committed generation.
    Committed,
    /// The generation committed before it, kept for receiving only.
    Previous,
    /// A candidate not (yet) committed.
    Candidate,
}

/// A frame opened by [`KeyRing::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The frame's contents.
    pub plaintext: Vec<u8>,
    /// The generation that opened it.
    pub generation: GenerationId,
    /// Where that generation was before this frame.
    pub slot: Slot,
    /// True when this frame committed `generation`. A responder that sees this should
    /// send a frame back soon, so the initiator commits the same generation.
    pub newly_committed: bool,
    /// True when `generation`'s epoch was raised by its responder: one side had
    /// restarted and lost the session the other held (see [`crate::handshake`]).
    pub epoch_raised: bool,
    /// Why `generation`'s initiator ran its handshake (equal on both sides).
    pub purpose: HandshakePurpose,
}

/// Which held secret verified a migration tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecretMatch {
    /// The generation whose PeerSecret verified it.
    pub generation: GenerationId,
    /// Where that generation sits.
    pub slot: Slot,
}

/// One generation as the ring holds it.
struct Generation {
    session: Session,
    /// May frames be sealed under it (committed, or an initiator-confirmed candidate)?
    sendable: bool,
}

impl Generation {
    fn id(&self) -> GenerationId {
        self.session.keys().generation_id()
    }

    fn snapshot(&self) -> GenerationSnapshot {
        let keys = self.session.keys();
        GenerationSnapshot {
            id: self.id(),
            key_id: keys.key_id(),
            role: keys.role(),
            sendable: self.sendable,
            peer_secret: keys.peer_secret().fingerprint(),
            next_nonce: self.session.next_nonce(),
            window: self.session.replay_window().clone(),
        }
    }
}

/// Everything observable about one held generation (no secrets): for status output
/// and for tests that assert a refused input changed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationSnapshot {
    /// Its place in the order.
    pub id: GenerationId,
    /// Its wire key id.
    pub key_id: KeyId,
    /// This device's role in its handshake.
    pub role: Role,
    /// Whether frames may be sealed under it.
    pub sendable: bool,
    /// Fingerprint of its PeerSecret.
    pub peer_secret: Fingerprint,
    /// Next nonce it would seal with.
    pub next_nonce: u64,
    /// Its receive window.
    pub window: ReplayWindow,
}

/// Everything observable about a key ring (no secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingSnapshot {
    /// The committed generation.
    pub committed: Option<GenerationSnapshot>,
    /// The previously committed generation.
    pub previous: Option<GenerationSnapshot>,
    /// Candidates, best first.
    pub candidates: Vec<GenerationSnapshot>,
    /// The pending initiation's proposal.
    pub pending_initiation: Option<InitiationPayload>,
    /// Timestamp of the last initiation sent.
    pub last_initiation_sent_ms: Option<u64>,
    /// Timestamp of the last initiation accepted from the peer.
    pub last_initiation_accepted_ms: Option<u64>,
}

/// Where a generation is, internally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    Committed,
    Previous,
    Candidate(usize),
}

/// All handshake generations held with one peer, and the commit rule over them.
pub struct KeyRing {
    peer: PublicKey,
    rk: RelationshipKey,
    // The committed and previous generations (keys and replay window, about 1.4 KiB
    // each) and the pending handshake sit behind boxes, allocated only while held: a
    // paired peer without a session costs a few pointers. `candidates` gives its
    // capacity back once empty (see `commit`).
    committed: Option<Box<Generation>>,
    previous: Option<Box<Generation>>,
    candidates: Vec<Generation>,
    pending: Option<Box<InitiatorHandshake>>,
    last_initiation_sent_ms: Option<u64>,
    last_initiation_accepted_ms: Option<u64>,
}

impl KeyRing {
    /// An empty ring for a paired peer: nothing committed yet.
    pub fn new(peer: PublicKey, rk: RelationshipKey) -> Self {
        Self {
            peer,
            rk,
            committed: None,
            previous: None,
            candidates: Vec::new(),
            pending: None,
            last_initiation_sent_ms: None,
            last_initiation_accepted_ms: None,
        }
    }

    /// The peer this ring is for.
    pub fn peer(&self) -> &PublicKey {
        &self.peer
    }

    /// What [`Handshake::respond`]'s lookup should return for this peer.
    pub fn peer_params(&self) -> PeerParams {
        PeerParams {
            rk: self.rk.clone(),
            last_initiation_timestamp_ms: self.last_initiation_accepted_ms,
            committed_epoch: self.committed_epoch(),
            highest_epoch: self.highest_epoch(),
        }
    }

    /// The highest epoch of the generations held (committed, previous, candidates).
    fn highest_epoch(&self) -> Option<u64> {
        self.committed
            .as_deref()
            .into_iter()
            .chain(self.previous.as_deref())
            .chain(self.candidates.iter())
            .map(|g| g.id().epoch)
            .max()
    }

    /// Starts a handshake proposing epoch committed + 1 (or [`FIRST_EPOCH`] with nothing
    /// committed, as after a restart) and returns message 1; the responder may raise
    /// the epoch (see [`crate::handshake`]). Replaces
    /// any pending initiation (a retry). The timestamp is `now_ms`, raised if needed to
    /// stay strictly above the last one sent, so the peer never takes it for a replay.
    /// The purpose is [`HandshakePurpose::Establish`]; see [`Self::initiate_for`].
    pub fn initiate<R: RngCore + CryptoRng>(
        &mut self,
        local: &StaticKeypair,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<Vec<u8>, RingError> {
        self.initiate_for(HandshakePurpose::Establish, local, now_ms, rng)
    }

    /// [`Self::initiate`] with a purpose: [`HandshakePurpose::Rekey`] replaces the keys
    /// of a live session. The commit rule is the same for every purpose; the purpose
    /// only tells both sides' callers what the new generation means.
    pub fn initiate_for<R: RngCore + CryptoRng>(
        &mut self,
        purpose: HandshakePurpose,
        local: &StaticKeypair,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<Vec<u8>, RingError> {
        let epoch = match self.committed_epoch() {
            Some(committed) => committed.checked_add(1).ok_or(RingError::EpochExhausted)?,
            None => FIRST_EPOCH,
        };
        let timestamp_ms = match self.last_initiation_sent_ms {
            Some(last) => now_ms.max(last.checked_add(1).ok_or(RingError::EpochExhausted)?),
            None => now_ms,
        };
        let payload = InitiationPayload {
            epoch,
            timestamp_ms,
            purpose,
        };
        let (handshake, message1) = Handshake::initiate(local, &self.peer, &self.rk, payload, rng)?;
        self.pending = Some(Box::new(handshake));
        self.last_initiation_sent_ms = Some(timestamp_ms);
        Ok(message1)
    }

    /// Takes the result of [`Handshake::respond`] for this peer: records the
    /// initiation (so a replay of it is refused) and keeps its keys as a candidate that
    /// is *not* sendable. Nothing else changes: even when the epoch was raised (the
    /// peer restarted), the committed generation stays until the new one commits.
    /// Returns message 2 for the caller to send; if this fails, message 2 must not be
    /// sent.
    pub fn accept(&mut self, responded: Responded) -> Result<Vec<u8>, RingError> {
        if responded.peer != self.peer {
            return Err(RingError::WrongPeer {
                expected: self.peer.fingerprint(),
                found: responded.peer.fingerprint(),
            });
        }
        let agreed = check_initiation(&responded.payload, &self.peer_params())?;
        if responded.keys.epoch() < agreed.epoch {
            // Computed against other parameters than this ring's: it could not commit.
            return Err(HandshakeError::StaleEpoch {
                proposed: responded.keys.epoch(),
                committed: self.committed_epoch().unwrap_or_default(),
            }
            .into());
        }
        let id = responded.keys.generation_id();
        self.make_room_for(&id)?;
        self.last_initiation_accepted_ms = Some(responded.payload.timestamp_ms);
        self.candidates.push(Generation {
            session: Session::new(responded.keys),
            sendable: false,
        });
        Ok(responded.message2)
    }

    /// Reads message 2 of the pending initiation. The new generation becomes a
    /// sendable candidate: the caller should send a frame under it right away (any
    /// [`Self::seal`] now uses it if it is the best), which lets the peer commit it.
    /// A corrupted, forged or stale message 2 changes nothing: the genuine one can
    /// still be confirmed afterwards.
    pub fn confirm(&mut self, message2: &[u8]) -> Result<GenerationId, RingError> {
        let pending = self
            .pending
            .as_mut()
            .ok_or(RingError::NoPendingInitiation)?;
        let keys = pending.confirm(message2)?;
        self.pending = None;
        let id = keys.generation_id();
        // A commit of this epoch or later drops the pending initiation, so the new
        // generation is better than the committed one; checked all the same.
        if !self.beats_committed(&id) {
            return Err(RingError::NoPendingInitiation);
        }
        self.make_room_for(&id)?;
        self.candidates.push(Generation {
            session: Session::new(keys),
            sendable: true,
        });
        Ok(id)
    }

    /// Seals under the best sendable generation.
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Sealed, RingError> {
        let position = self.best_sendable().ok_or(RingError::NoSendableKey)?;
        let generation = self
            .generation_mut(position)
            .ok_or(RingError::NoSendableKey)?;
        Ok(generation.session.seal(plaintext)?)
    }

    /// Opens a frame under the generation its key id names (committed, previous or a
    /// candidate). If that is a candidate better than the committed generation, it is
    /// committed: the committed one becomes previous, and candidates no better than
    /// the new one are dropped. Any error leaves the ring unchanged.
    pub fn open(&mut self, sealed: &Sealed) -> Result<Opened, RingError> {
        let mut first_error = None;
        for position in self.positions_with_key_id(sealed.key_id) {
            let Some(generation) = self.generation(position) else {
                continue;
            };
            match generation.session.open_unmarked(sealed) {
                Ok(plaintext) => {
                    let id = generation.id();
                    let epoch_raised = generation.session.keys().epoch_raised();
                    let purpose = generation.session.keys().purpose();
                    if let Some(generation) = self.generation_mut(position) {
                        generation.session.mark_received(sealed.nonce);
                    }
                    let newly_committed = match position {
                        Position::Candidate(index) if self.beats_committed(&id) => {
                            self.commit(index);
                            true
                        }
                        _ => false,
                    };
                    return Ok(Opened {
                        plaintext,
                        generation: id,
                        slot: slot_of(position),
                        newly_committed,
                        epoch_raised,
                        purpose,
                    });
                }
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        Err(first_error.map_or(RingError::UnknownKeyId(sealed.key_id), RingError::Open))
    }

    /// True when the best sendable generation has sent [`crate::REKEY_AFTER_MESSAGES`]
    /// frames: the caller should start a handshake.
    pub fn needs_rekey(&self) -> bool {
        self.best_sendable()
            .and_then(|p| self.generation(p))
            .is_some_and(|g| g.session.needs_rekey())
    }

    /// Frames sealed so far under the best sendable generation (its next nonce): the
    /// volume a caller's own rekey limit is measured against.
    pub fn sealed_under_best(&self) -> u64 {
        self.best_sendable()
            .and_then(|p| self.generation(p))
            .map_or(0, |g| g.session.next_nonce())
    }

    /// Gives up the pending initiation, if any: a message 2 that answers it later is
    /// refused ([`RingError::NoPendingInitiation`]), so this side never sends under its
    /// keys and neither side commits them. What is committed, previous or a candidate
    /// is untouched (a candidate the peer holds from answering it is never sent under
    /// and is dropped by the next commit). Returns whether one was pending.
    pub fn abandon_initiation(&mut self) -> bool {
        self.pending.take().is_some()
    }

    /// The committed epoch, if any.
    pub fn committed_epoch(&self) -> Option<u64> {
        self.committed.as_ref().map(|g| g.id().epoch)
    }

    /// The committed generation, if any.
    pub fn committed(&self) -> Option<GenerationId> {
        self.committed.as_deref().map(Generation::id)
    }

    /// Fingerprint of the committed PeerSecret (never the secret).
    pub fn committed_fingerprint(&self) -> Option<Fingerprint> {
        self.committed
            .as_ref()
            .map(|g| g.session.keys().peer_secret().fingerprint())
    }

    /// Session fingerprint of the committed generation.
    pub fn session_fingerprint(&self) -> Option<Fingerprint> {
        self.committed
            .as_ref()
            .map(|g| g.session.keys().session_fingerprint())
    }

    /// The generation [`Self::seal`] would use.
    pub fn best_sendable_generation(&self) -> Option<GenerationId> {
        self.best_sendable()
            .and_then(|p| self.generation(p))
            .map(Generation::id)
    }

    /// The proposal of the pending initiation, if one awaits message 2.
    pub fn pending_initiation(&self) -> Option<InitiationPayload> {
        self.pending.as_deref().map(InitiatorHandshake::payload)
    }

    /// True when an initiation of `epoch` can no longer matter because a generation of
    /// that epoch or later is committed: the caller stops retrying it.
    pub fn is_initiation_moot(&self, epoch: u64) -> bool {
        self.committed_epoch().is_some_and(|c| c >= epoch)
    }

    /// Tags a migration signal with the committed PeerSecret and epoch; `None` before
    /// anything is committed.
    pub fn migration_tag(
        &self,
        session_id: &[u8; 16],
        counter: u64,
        endpoints: &[u8],
    ) -> Option<MigrationTag> {
        self.committed.as_ref().map(|g| {
            let keys = g.session.keys();
            crate::migration::migration_tag(
                keys.peer_secret(),
                session_id,
                keys.epoch(),
                counter,
                endpoints,
            )
        })
    }

    /// PeerSecret resolution: verifies a migration tag against the committed, then each
    /// candidate (best first), then the previous secret, each with its own epoch. A
    /// signal tagged by a peer that has committed a generation this side still holds
    /// as a candidate (or has already replaced) is accepted, so the transient
    /// difference during an upgrade never rejects a legitimate signal.
    pub fn resolve_migration_tag(
        &self,
        session_id: &[u8; 16],
        counter: u64,
        endpoints: &[u8],
        tag: &MigrationTag,
    ) -> Option<SecretMatch> {
        let mut order: Vec<Position> = Vec::with_capacity(self.candidates.len() + 2);
        order.push(Position::Committed);
        order.extend(self.candidates_best_first());
        order.push(Position::Previous);
        order.into_iter().find_map(|position| {
            let generation = self.generation(position)?;
            let keys = generation.session.keys();
            verify_migration_tag(
                keys.peer_secret(),
                session_id,
                keys.epoch(),
                counter,
                endpoints,
                tag,
            )
            .ok()
            .map(|()| SecretMatch {
                generation: generation.id(),
                slot: slot_of(position),
            })
        })
    }

    /// Everything observable, for status output and tests.
    pub fn snapshot(&self) -> RingSnapshot {
        RingSnapshot {
            committed: self.committed.as_deref().map(Generation::snapshot),
            previous: self.previous.as_deref().map(Generation::snapshot),
            candidates: self
                .candidates_best_first()
                .filter_map(|p| self.generation(p))
                .map(Generation::snapshot)
                .collect(),
            pending_initiation: self.pending_initiation(),
            last_initiation_sent_ms: self.last_initiation_sent_ms,
            last_initiation_accepted_ms: self.last_initiation_accepted_ms,
        }
    }

    fn beats_committed(&self, id: &GenerationId) -> bool {
        self.committed.as_ref().is_none_or(|c| *id > c.id())
    }

    /// Commits candidate `index` (see [`Self::open`]).
    fn commit(&mut self, index: usize) {
        let mut generation = Box::new(self.candidates.remove(index));
        generation.sendable = true;
        let id = generation.id();
        let replaced = self.committed.replace(generation);
        // Crossing handshakes can commit in opposite orders: a worse candidate this side
        // already sent under (its initiator's, confirmed) may be what the peer has just
        // committed. The better of it and the replaced generation stays as previous, so
        // the peer's frames and migration signals under it still open and verify until
        // the peer commits this generation too (rule 7).
        let sent_under = self
            .candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.sendable && c.id() < id)
            .max_by_key(|(_, c)| c.id())
            .map(|(index, _)| index);
        let sent_under = sent_under.map(|index| Box::new(self.candidates.remove(index)));
        self.previous = match (replaced, sent_under) {
            (Some(replaced), Some(sent)) if sent.id() > replaced.id() => Some(sent),
            (replaced, sent) => replaced.or(sent),
        };
        self.candidates.retain(|c| c.id() > id);
        // Usually no candidate is left: an idle session then holds no spare
        // generation-sized capacity (a candidate table grows again when a handshake
        // comes, which is rare).
        self.candidates.shrink_to_fit();
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.payload().epoch <= id.epoch)
        {
            self.pending = None;
        }
    }

    /// Frees a candidate slot for `id` if the table is full, by dropping the worst
    /// candidate when `id` beats it.
    fn make_room_for(&mut self, id: &GenerationId) -> Result<(), RingError> {
        if self.candidates.len() < MAX_CANDIDATES {
            return Ok(());
        }
        let worst = self
            .candidates
            .iter()
            .enumerate()
            .min_by_key(|(_, c)| c.id())
            .map(|(index, c)| (index, c.id()));
        match worst {
            Some((index, worst_id)) if worst_id < *id => {
                self.candidates.remove(index);
                Ok(())
            }
            _ => Err(RingError::CandidatesFull),
        }
    }

    fn best_sendable(&self) -> Option<Position> {
        let committed = self
            .committed
            .as_ref()
            .map(|g| (Position::Committed, g.id()));
        let candidates = self
            .candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.sendable)
            .map(|(index, c)| (Position::Candidate(index), c.id()));
        committed
            .into_iter()
            .chain(candidates)
            .max_by_key(|(_, id)| *id)
            .map(|(position, _)| position)
    }

    fn candidates_best_first(&self) -> impl Iterator<Item = Position> {
        let mut ranked: Vec<(GenerationId, usize)> = self
            .candidates
            .iter()
            .enumerate()
            .map(|(index, c)| (c.id(), index))
            .collect();
        ranked.sort_by_key(|(id, _)| std::cmp::Reverse(*id));
        ranked
            .into_iter()
            .map(|(_, index)| Position::Candidate(index))
    }

    fn positions_with_key_id(&self, key_id: KeyId) -> Vec<Position> {
        let mut positions = Vec::new();
        let matches = |g: &Generation| g.session.keys().key_id() == key_id;
        if self.committed.as_deref().is_some_and(matches) {
            positions.push(Position::Committed);
        }
        positions.extend(
            self.candidates
                .iter()
                .enumerate()
                .filter(|(_, c)| matches(c))
                .map(|(index, _)| Position::Candidate(index)),
        );
        if self.previous.as_deref().is_some_and(matches) {
            positions.push(Position::Previous);
        }
        positions
    }

    fn generation(&self, position: Position) -> Option<&Generation> {
        match position {
            Position::Committed => self.committed.as_deref(),
            Position::Previous => self.previous.as_deref(),
            Position::Candidate(index) => self.candidates.get(index),
        }
    }

    fn generation_mut(&mut self, position: Position) -> Option<&mut Generation> {
        match position {
            Position::Committed => self.committed.as_deref_mut(),
            Position::Previous => self.previous.as_deref_mut(),
            Position::Candidate(index) => self.candidates.get_mut(index),
        }
    }

    /// Moves the best sendable generation's send counter (rekey/exhaustion tests).
    #[cfg(test)]
    pub(crate) fn set_next_nonce_for_test(&mut self, nonce: u64) {
        if let Some(position) = self.best_sendable() {
            if let Some(generation) = self.generation_mut(position) {
                generation.session.set_next_nonce_for_test(nonce);
            }
        }
    }
}

fn slot_of(position: Position) -> Slot {
    match position {
        Position::Committed => Slot::Committed,
        Position::Previous => Slot::Previous,
        Position::Candidate(_) => Slot::Candidate,
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("peer", &self.peer)
            .field("committed", &self.committed())
            .field("committed_peer_secret", &self.committed_fingerprint())
            .field("previous", &self.previous.as_deref().map(Generation::id))
            .field("candidates", &self.candidates.len())
            .field("pending_initiation", &self.pending_initiation())
            .finish_non_exhaustive()
    }
}
