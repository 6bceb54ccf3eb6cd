//! Tether's cryptography: Noise handshakes between paired devices, sealing frames
//! with explicit nonces and a replay window, the PeerSecret commit rule, migration
//! authentication, sealed endpoint hints and static key files.
//!
//! The crate is sans-IO: it reads no clock (times are `now_ms` parameters), owns no
//! task and never draws from a global RNG (every function needing randomness takes
//! `&mut impl RngCore + CryptoRng`, so tests are seeded). Secrets are wiped on drop
//! and print only as fingerprints or `<redacted>`. Nothing panics on input from the
//! network: every decode and open returns a typed error and changes no state.
//!
//! # What it owns
//!
//! | module | owns |
//! |---|---|
//! | [`keys`], [`key_file`] | static X25519 keypairs (validated public keys, 0600 key files), the relationship key (RK) |
//! | [`handshake`] | `Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s` with the RK as PSK; [`SessionKeys`] of one generation |
//! | [`session`], [`replay`] | seal/open with explicit nonces, an 8192-bit replay window, rekey and exhaustion limits |
//! | [`keyring`] | per-peer generations and the PeerSecret commit rule ([`KeyRing`]) |
//! | [`migration`] | migration-signal tags, PeerSecret resolution, path challenges |
//! | [`hints`] | the rendezvous id and sealed endpoint hints |
//! | [`pairing`] | one-time pairing codes, and the relationship key two devices derive from one |
//! | [`server_auth`] | mutual proofs of static keys between a device and the relay/rendezvous server, bound to the connection |
//!
//! # How to use it
//!
//! One [`KeyRing`] per paired peer. The initiator calls [`KeyRing::initiate`] and sends
//! message 1; the responder calls [`Handshake::respond`] with a lookup over its rings
//! ([`KeyRing::peer_params`]), hands the result to [`KeyRing::accept`] and sends the
//! message 2 it returns; the initiator calls [`KeyRing::confirm`] and sends a frame.
//! From then on [`KeyRing::seal`] and [`KeyRing::open`] carry frames, and the ring
//! commits generations by the rule below.
//!
//! ```
//! use rand::SeedableRng;
//! use tether_crypto::{Handshake, KeyRing, RelationshipKey, StaticKeypair};
//!
//! let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
//! let (alice, bob) = (StaticKeypair::generate(&mut rng), StaticKeypair::generate(&mut rng));
//! let rk = RelationshipKey::generate(&mut rng); // set up at pairing
//! let mut alice_ring = KeyRing::new(*bob.public(), rk.clone());
//! let mut bob_ring = KeyRing::new(*alice.public(), rk);
//!
//! let message1 = alice_ring.initiate(&alice, 1_000, &mut rng)?;
//! let responded = Handshake::respond(
//!     &bob,
//!     &message1,
//!     |peer| (peer == bob_ring.peer()).then(|| bob_ring.peer_params()),
//!     &mut rng,
//! )?;
//! let message2 = bob_ring.accept(responded)?;
//! alice_ring.confirm(&message2)?;
//!
//! let frame = alice_ring.seal(b"hello")?; // the initiator's confirming frame
//! assert!(bob_ring.open(&frame)?.newly_committed); // Bob commits
//! let reply = bob_ring.seal(b"hi")?;
//! assert!(alice_ring.open(&reply)?.newly_committed); // Alice commits
//! assert_eq!(alice_ring.committed_fingerprint(), bob_ring.committed_fingerprint());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # The PeerSecret commit rule
//!
//! Each finished handshake is a *generation*: transport keys, a [`PeerSecret`], a
//! [`KeyId`] and an epoch, one unit. The two devices may run handshakes at the same
//! time (both reconnecting), lose message 2, or receive frames late and out of order;
//! the rule below guarantees they never end with two different committed PeerSecrets
//! (invariant 3 of the design).
//!
//! 1. **Order.** Generations are totally ordered by [`GenerationId`]: by epoch; within
//!    an epoch the handshake whose initiator has the *lower* static public key
//!    (bytewise) wins; then the initiator's later retry; then the session fingerprint.
//!    Higher is better. Both sides compute the same order from public data.
//! 2. **Candidates.** A fresh handshake yields a candidate. The initiator's candidate
//!    is *sendable* once it has read message 2 (it knows the peer holds the keys); the
//!    responder's is not sendable until the initiator uses it.
//! 3. **Seal** uses the best sendable generation: the committed one, or a better
//!    sendable candidate. After `confirm` the initiator sends a frame at once.
//! 4. **Open** tries the generation the frame's key id names: committed, previous or a
//!    candidate. Success under a candidate better than the committed generation
//!    *commits* it: the committed generation becomes previous (kept for receiving
//!    until the next commit), or, when better, a worse candidate this side already
//!    sent under (crossing handshakes: the peer may have committed that one first),
//!    candidates no better than the new one are dropped, better ones stay. Success under a worse candidate changes nothing about commitment.
//!    Failure changes nothing at all. A responder that commits sends a frame back, so
//!    the initiator commits too.
//! 5. **Epochs.** An initiator proposes committed epoch + 1 ([`keyring::FIRST_EPOCH`]
//!    with nothing committed). The responder decides the epoch and sends it in message
//!    2, so both sides give the generation the same [`GenerationId`]: the proposal when
//!    it is above the responder's committed epoch, else one above every epoch the
//!    responder holds (*raised*, [`Responded::epoch_raised`]). A proposal that is not
//!    above the committed epoch comes from a peer that lost the session (it restarted
//!    with an empty ring), or from a late initiation of a handshake the other side
//!    already finished. Committing epoch `e` cancels a pending initiation that proposed
//!    `<= e` ([`KeyRing::is_initiation_moot`]), so the caller stops retrying it.
//! 6. **Restarts.** A device that restarts has lost its ring; its first handshake
//!    proposes [`keyring::FIRST_EPOCH`] and the peer raises it above the session it
//!    still holds, so that one handshake brings the pair back (rather than the peer
//!    refusing every initiation until it gives its session up). A raised handshake is
//!    an ordinary one from there: a fresh generation, a fresh PeerSecret, a candidate
//!    on both sides until a frame under it opens, so the old session keeps working
//!    until the new one commits and the restarted device never resumes the old keys.
//!    The initiation's timestamp must still be above the last accepted one (the
//!    restarted device's wall clock continues), so replaying a message 1 that was
//!    accepted is refused, and replaying one that never was (an attacker held it back)
//!    yields a non-sendable candidate and a message 2 that only the holder of the
//!    initiation's ephemeral key can use: the live session is untouched.
//! 7. **Resolution.** Migration signals are verified against the committed, candidate
//!    and previous secrets ([`KeyRing::resolve_migration_tag`]), so the transient
//!    difference while a new generation is being committed never rejects a genuine
//!    signal.
//! 8. **Rekeys.** A rekey is an ordinary handshake of a live session (committed + 1),
//!    whose message 1 says so ([`HandshakePurpose::Rekey`], authenticated, known to both
//!    sides as [`SessionKeys::purpose`] and [`Opened::purpose`]), so the callers can
//!    tell it from a peer that evicted or lost the session. The commit rule is the
//!    same: the old generation carries and opens frames until the new one commits,
//!    then stays as *previous* and opens late frames until the next commit; crossing
//!    rekeys converge like any crossing handshakes. [`KeyRing::abandon_initiation`]
//!    gives up a rekey (a migration began): its message 2 is then refused, so nobody
//!    ever sends under, or commits, its keys.
//!
//! **Why it converges.** Commitment only moves up the order, and a side commits a
//! generation only after opening a frame the other side sealed under it, so the other
//! side held it as sendable. A side drops a candidate only when it commits something at
//! least as good. Once the network delivers and both sides send, take each side's best
//! sendable generation, X and Y, and say X > Y. X is sendable at A, so B holds or held
//! it (B answered its message 2, or sealed under it), and B could only have dropped it
//! by committing something at least X, above its own best sendable Y: impossible. So
//! B holds X as a candidate better than its committed generation, and A's next frame
//! makes B commit X; then B's best sendable is at least X. Repeating, both best
//! sendable generations become the same X. X was initiated by one side, say A; B holds
//! it only as committed (it cannot be B's own sendable candidate), and B's frames under
//! X make A commit it too. Both end with the same committed generation and PeerSecret.
//! Keys held by one side only (message 2 lost) are never sent under by that side's
//! peer and so are never committed by anyone.
//!
//! A restart breaks one premise: the restarted side drops what it held without
//! committing anything, so the survivor may hold, even as its best sendable generation,
//! keys nobody else has any more; its frames under them fail. The argument holds again
//! from the restarted side's next handshake that the survivor answers once the old
//! process's messages are gone: the survivor raises it above everything it holds, so
//! the restarted side's next frame commits it there, and from then on every generation
//! either side holds is one both held. Until its session commits, a restarted device
//! keeps initiating (the caller retries, as for any connect).
//!
//! Bounded memory has one cost: with more than [`keyring::MAX_CANDIDATES`] uncommitted
//! handshakes, the worst candidate is evicted; if its initiator later sends under it,
//! those frames fail until the next handshake (liveness, not safety: no side ever
//! commits a generation the other does not hold).

#![forbid(unsafe_code)]

pub mod fingerprint;
pub mod handshake;
pub mod hints;
mod kdf;
pub mod key_file;
pub mod keyring;
pub mod keys;
pub mod migration;
pub mod pairing;
pub mod peer_secret;
pub mod replay;
mod rng;
pub mod server_auth;
pub mod session;

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;

pub use fingerprint::Fingerprint;
pub use handshake::{
    Handshake, HandshakeError, HandshakePurpose, InitiationPayload, InitiatorHandshake, PeerParams,
    Responded, ResponsePayload, Role, SessionKeys,
};
pub use hints::{open_hint, seal_hint, Hint, HintError, RendezvousId};
pub use key_file::{KeyFileError, KeyFileFormatError};
pub use keyring::{GenerationId, KeyRing, Opened, RingError, RingSnapshot, SecretMatch, Slot};
pub use keys::{KeyError, PublicKey, RelationshipKey, StaticKeypair};
pub use migration::{
    migration_tag, verify_migration_tag, MigrationError, MigrationTag, PathChallenge,
    PathChallenger, PathError,
};
pub use pairing::{CodeError, PairingCode, PairingKeys, PairingSecret};
pub use peer_secret::{KeyId, PeerSecret};
pub use replay::{ReplayError, ReplayWindow};
pub use server_auth::{
    open_rendezvous_ids, seal_rendezvous_ids, server_auth_proof, server_proof, verify_server_auth,
    verify_server_proof, SealedIdsError, CHANNEL_BINDING_LEN, RENDEZVOUS_ID_LEN,
    SEALED_IDS_OVERHEAD, SERVER_AUTH_PROOF_LEN,
};
pub use session::{
    OpenError, SealError, Sealed, Session, MAX_PLAINTEXT_LEN, NOISE_MAX_MESSAGE_LEN,
    REJECT_AFTER_MESSAGES, REKEY_AFTER_MESSAGES,
};
