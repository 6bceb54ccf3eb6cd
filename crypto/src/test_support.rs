//! Fixtures shared by the crate's tests: seeded RNGs, device pairs, handshakes.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::handshake::{Handshake, InitiationPayload, PeerParams, SessionKeys};
use crate::keyring::{KeyRing, RingError};
use crate::keys::{RelationshipKey, StaticKeypair};

/// A deterministic RNG.
pub(crate) fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Two paired devices and their RNG.
pub(crate) struct Pair {
    pub(crate) alice: StaticKeypair,
    pub(crate) bob: StaticKeypair,
    pub(crate) rk: RelationshipKey,
    pub(crate) rng: ChaCha8Rng,
}

pub(crate) fn pair(seed: u64) -> Pair {
    let mut rng = rng(seed);
    let alice = StaticKeypair::generate(&mut rng);
    let bob = StaticKeypair::generate(&mut rng);
    let rk = RelationshipKey::generate(&mut rng);
    Pair {
        alice,
        bob,
        rk,
        rng,
    }
}

/// Peer parameters with nothing accepted or committed yet.
pub(crate) fn fresh_params(rk: &RelationshipKey) -> PeerParams {
    PeerParams {
        rk: rk.clone(),
        last_initiation_timestamp_ms: None,
        committed_epoch: None,
        highest_epoch: None,
    }
}

/// A full handshake from `initiator` to `responder`: (initiator keys, responder keys).
pub(crate) fn handshake(
    initiator: &StaticKeypair,
    responder: &StaticKeypair,
    rk: &RelationshipKey,
    payload: InitiationPayload,
    rng: &mut ChaCha8Rng,
) -> (SessionKeys, SessionKeys) {
    let (mut pending, message1) =
        Handshake::initiate(initiator, responder.public(), rk, payload, rng).unwrap();
    let responded = Handshake::respond(
        responder,
        &message1,
        |peer| (peer == initiator.public()).then(|| fresh_params(rk)),
        rng,
    )
    .unwrap();
    let initiator_keys = pending.confirm(&responded.message2).unwrap();
    (initiator_keys, responded.keys)
}

/// Answers message 1 with `ring` as the only paired peer; returns message 2.
pub(crate) fn respond(
    local: &StaticKeypair,
    ring: &mut KeyRing,
    message1: &[u8],
    rng: &mut ChaCha8Rng,
) -> Result<Vec<u8>, RingError> {
    let responded = Handshake::respond(
        local,
        message1,
        |peer| (peer == ring.peer()).then(|| ring.peer_params()),
        rng,
    )?;
    ring.accept(responded)
}

/// Two rings (alice's, bob's) with a first generation, initiated by alice, committed
/// on both sides.
pub(crate) fn committed_rings(pair: &mut Pair) -> (KeyRing, KeyRing) {
    let mut alice = KeyRing::new(*pair.bob.public(), pair.rk.clone());
    let mut bob = KeyRing::new(*pair.alice.public(), pair.rk.clone());
    let message1 = alice.initiate(&pair.alice, 1_000, &mut pair.rng).unwrap();
    let message2 = respond(&pair.bob, &mut bob, &message1, &mut pair.rng).unwrap();
    alice.confirm(&message2).unwrap();
    let frame = alice.seal(b"confirm").unwrap();
    assert!(bob.open(&frame).unwrap().newly_committed);
    let ack = bob.seal(b"ack").unwrap();
    assert!(alice.open(&ack).unwrap().newly_committed);
    assert_eq!(alice.committed_fingerprint(), bob.committed_fingerprint());
    (alice, bob)
}
