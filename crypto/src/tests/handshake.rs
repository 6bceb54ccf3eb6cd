//! The handshake: round trip, refusals, corruption.

use proptest::prelude::*;

use crate::handshake::{
    Handshake, HandshakeError, HandshakePurpose, InitiationPayload, PeerParams, Role, MESSAGE1_LEN,
    MESSAGE2_LEN,
};
use crate::session::Session;
use crate::test_support::{fresh_params, handshake, pair, rng};

const PROPOSAL: InitiationPayload = InitiationPayload {
    epoch: 1,
    timestamp_ms: 1_000,
    purpose: HandshakePurpose::Establish,
};

#[test]
fn handshake_round_trip_gives_equal_fingerprints_and_frames_flow_both_ways() {
    let mut p = pair(1);
    let (alice_keys, bob_keys) = handshake(&p.alice, &p.bob, &p.rk, PROPOSAL, &mut p.rng);
    assert_eq!(
        alice_keys.session_fingerprint(),
        bob_keys.session_fingerprint()
    );
    assert_eq!(
        alice_keys.peer_secret().fingerprint(),
        bob_keys.peer_secret().fingerprint()
    );
    assert_eq!(alice_keys.key_id(), bob_keys.key_id());
    assert_eq!(alice_keys.generation_id(), bob_keys.generation_id());
    assert_eq!(alice_keys.role(), Role::Initiator);
    assert_eq!(bob_keys.role(), Role::Responder);
    assert_eq!(alice_keys.initiator(), p.alice.public());
    assert_eq!(bob_keys.initiator(), p.alice.public());
    assert_eq!(alice_keys.remote(), p.bob.public());
    assert_eq!(bob_keys.remote(), p.alice.public());
    assert_eq!((alice_keys.epoch(), bob_keys.epoch()), (1, 1));

    let mut alice = Session::new(alice_keys);
    let mut bob = Session::new(bob_keys);
    for i in 0..3_u8 {
        let to_bob = alice.seal(&[i; 10]).unwrap();
        assert_eq!(bob.open(&to_bob).unwrap(), vec![i; 10]);
        let to_alice = bob.seal(&[i + 100; 3]).unwrap();
        assert_eq!(alice.open(&to_alice).unwrap(), vec![i + 100; 3]);
    }
}

#[test]
fn two_handshakes_give_unrelated_secrets() {
    let mut p = pair(2);
    let (first, _) = handshake(&p.alice, &p.bob, &p.rk, PROPOSAL, &mut p.rng);
    let (second, _) = handshake(&p.alice, &p.bob, &p.rk, PROPOSAL, &mut p.rng);
    assert_ne!(first.session_fingerprint(), second.session_fingerprint());
    assert_ne!(
        first.peer_secret().fingerprint(),
        second.peer_secret().fingerprint()
    );
    assert_ne!(first.key_id(), second.key_id());
    // A frame of one generation does not open under the other's keys.
    let mut sender = Session::new(first);
    let mut frame = sender.seal(b"x").unwrap();
    let mut receiver = Session::new(second);
    frame.key_id = receiver.keys().key_id();
    assert!(receiver.open(&frame).is_err());
}

#[test]
fn handshakes_are_deterministic_under_a_seeded_rng() {
    let p = pair(3);
    let message = |seed| {
        Handshake::initiate(&p.alice, p.bob.public(), &p.rk, PROPOSAL, &mut rng(seed))
            .unwrap()
            .1
    };
    assert_eq!(message(9), message(9));
    assert_ne!(message(9), message(10));
}

#[test]
fn messages_have_fixed_lengths() {
    let mut p = pair(4);
    let (mut pending, message1) =
        Handshake::initiate(&p.alice, p.bob.public(), &p.rk, PROPOSAL, &mut p.rng).unwrap();
    assert_eq!(message1.len(), MESSAGE1_LEN);
    assert_eq!(MESSAGE1_LEN, 113);
    let responded =
        Handshake::respond(&p.bob, &message1, |_| Some(fresh_params(&p.rk)), &mut p.rng).unwrap();
    assert_eq!(responded.message2.len(), MESSAGE2_LEN);
    assert_eq!(MESSAGE2_LEN, 56);
    assert_eq!(responded.payload, PROPOSAL);
    assert_eq!(&responded.peer, p.alice.public());
    assert!(pending.confirm(&responded.message2).is_ok());
    assert_eq!(
        pending.confirm(&responded.message2).unwrap_err(),
        HandshakeError::AlreadyConfirmed
    );
}

#[test]
fn unknown_initiator_is_refused() {
    let mut p = pair(5);
    let (_, message1) =
        Handshake::initiate(&p.alice, p.bob.public(), &p.rk, PROPOSAL, &mut p.rng).unwrap();
    let mut looked_up = None;
    let result = Handshake::respond(
        &p.bob,
        &message1,
        |peer| {
            looked_up = Some(*peer);
            None
        },
        &mut p.rng,
    );
    assert_eq!(
        result.unwrap_err(),
        HandshakeError::UnknownPeer(p.alice.public().fingerprint())
    );
    // The lookup saw the authenticated initiator key.
    assert_eq!(looked_up.as_ref(), Some(p.alice.public()));
}

#[test]
fn wrong_relationship_key_fails_at_confirm() {
    let mut p = pair(6);
    let other_rk = crate::keys::RelationshipKey::generate(&mut p.rng);
    let (mut pending, message1) =
        Handshake::initiate(&p.alice, p.bob.public(), &p.rk, PROPOSAL, &mut p.rng).unwrap();
    let responded = Handshake::respond(
        &p.bob,
        &message1,
        |_| Some(fresh_params(&other_rk)),
        &mut p.rng,
    )
    .unwrap();
    assert_eq!(
        pending.confirm(&responded.message2).unwrap_err(),
        HandshakeError::Authentication
    );
}

#[test]
fn replayed_message1_is_rejected() {
    let mut p = pair(7);
    let (_, message1) =
        Handshake::initiate(&p.alice, p.bob.public(), &p.rk, PROPOSAL, &mut p.rng).unwrap();
    let accepted = PeerParams {
        last_initiation_timestamp_ms: Some(PROPOSAL.timestamp_ms),
        ..fresh_params(&p.rk)
    };
    let result = Handshake::respond(&p.bob, &message1, |_| Some(accepted.clone()), &mut p.rng);
    assert_eq!(
        result.unwrap_err(),
        HandshakeError::ReplayedInitiation {
            timestamp_ms: 1_000,
            last_accepted_ms: 1_000
        }
    );
    // One millisecond earlier accepted: the timestamp is strictly greater.
    let earlier = PeerParams {
        last_initiation_timestamp_ms: Some(PROPOSAL.timestamp_ms - 1),
        ..fresh_params(&p.rk)
    };
    assert!(Handshake::respond(&p.bob, &message1, |_| Some(earlier), &mut p.rng).is_ok());
}

#[test]
fn a_proposal_not_above_the_committed_epoch_is_raised_above_every_held_epoch() {
    let mut p = pair(8);
    let (mut pending, message1) =
        Handshake::initiate(&p.alice, p.bob.public(), &p.rk, PROPOSAL, &mut p.rng).unwrap();
    // Bob committed epoch 4 and holds a candidate of epoch 6; alice (restarted)
    // proposes epoch 1.
    let committed = PeerParams {
        committed_epoch: Some(4),
        highest_epoch: Some(6),
        ..fresh_params(&p.rk)
    };
    let responded =
        Handshake::respond(&p.bob, &message1, |_| Some(committed.clone()), &mut p.rng).unwrap();
    assert!(responded.epoch_raised);
    assert_eq!(responded.payload, PROPOSAL);
    assert_eq!(responded.keys.epoch(), 7);
    assert_eq!(responded.keys.proposed_epoch(), 1);
    // The initiator learns the epoch from message 2: both sides agree on the generation.
    let alice_keys = pending.confirm(&responded.message2).unwrap();
    assert_eq!(alice_keys.epoch(), 7);
    assert!(alice_keys.epoch_raised() && responded.keys.epoch_raised());
    assert_eq!(alice_keys.generation_id(), responded.keys.generation_id());
    // A proposal above the committed epoch is kept as it is.
    let (mut pending, message1) = Handshake::initiate(
        &p.alice,
        p.bob.public(),
        &p.rk,
        InitiationPayload {
            epoch: 5,
            timestamp_ms: 2_000,
            purpose: HandshakePurpose::Establish,
        },
        &mut p.rng,
    )
    .unwrap();
    let responded = Handshake::respond(&p.bob, &message1, |_| Some(committed), &mut p.rng).unwrap();
    assert!(!responded.epoch_raised);
    assert_eq!(responded.keys.epoch(), 5);
    assert_eq!(pending.confirm(&responded.message2).unwrap().epoch(), 5);
}

#[test]
fn an_epoch_that_cannot_be_raised_is_refused() {
    let mut p = pair(18);
    let (_, message1) =
        Handshake::initiate(&p.alice, p.bob.public(), &p.rk, PROPOSAL, &mut p.rng).unwrap();
    let exhausted = PeerParams {
        committed_epoch: Some(u64::MAX),
        highest_epoch: Some(u64::MAX),
        ..fresh_params(&p.rk)
    };
    assert_eq!(
        Handshake::respond(&p.bob, &message1, |_| Some(exhausted), &mut p.rng).unwrap_err(),
        HandshakeError::EpochExhausted
    );
}

#[test]
fn corrupted_message1_is_an_error_at_every_byte() {
    let mut p = pair(9);
    let (_, message1) =
        Handshake::initiate(&p.alice, p.bob.public(), &p.rk, PROPOSAL, &mut p.rng).unwrap();
    for index in 0..message1.len() {
        let mut corrupted = message1.clone();
        corrupted[index] ^= 0x20;
        let result = Handshake::respond(
            &p.bob,
            &corrupted,
            |_| Some(fresh_params(&p.rk)),
            &mut p.rng,
        );
        assert!(result.is_err(), "byte {index} flipped was accepted");
    }
    for len in [0, 1, MESSAGE1_LEN - 1, MESSAGE1_LEN + 1, 70_000] {
        let mut resized = message1.clone();
        resized.resize(len, 0);
        assert_eq!(
            Handshake::respond(&p.bob, &resized, |_| Some(fresh_params(&p.rk)), &mut p.rng)
                .unwrap_err(),
            HandshakeError::BadLength {
                expected: MESSAGE1_LEN,
                found: len
            }
        );
    }
}

#[test]
fn corrupted_message2_is_an_error_and_the_genuine_one_still_confirms() {
    let mut p = pair(10);
    let (mut pending, message1) =
        Handshake::initiate(&p.alice, p.bob.public(), &p.rk, PROPOSAL, &mut p.rng).unwrap();
    let responded =
        Handshake::respond(&p.bob, &message1, |_| Some(fresh_params(&p.rk)), &mut p.rng).unwrap();
    for index in 0..responded.message2.len() {
        let mut corrupted = responded.message2.clone();
        corrupted[index] ^= 0x01;
        assert!(pending.confirm(&corrupted).is_err(), "byte {index}");
    }
    assert!(matches!(
        pending.confirm(&responded.message2[1..]),
        Err(HandshakeError::BadLength { .. })
    ));
    let keys = pending.confirm(&responded.message2).unwrap();
    assert_eq!(
        keys.session_fingerprint(),
        responded.keys.session_fingerprint()
    );
}

#[test]
fn initiation_payload_round_trips_and_rejects_wrong_lengths() {
    let payload = InitiationPayload {
        epoch: u64::MAX,
        timestamp_ms: 42,
        purpose: HandshakePurpose::Establish,
    };
    assert_eq!(InitiationPayload::decode(&payload.encode()), Ok(payload));
    assert_eq!(
        InitiationPayload::decode(&[0; 15]),
        Err(HandshakeError::BadPayload)
    );
}

#[test]
fn session_keys_debug_shows_fingerprints_only() {
    let mut p = pair(11);
    let (keys, _) = handshake(&p.alice, &p.bob, &p.rk, PROPOSAL, &mut p.rng);
    let debug = format!("{keys:?}");
    assert!(debug.contains(&keys.peer_secret().fingerprint().to_hex()));
    assert!(!debug.contains(&data_encoding::HEXLOWER.encode(keys.peer_secret().as_bytes())));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Arbitrary bytes of the right length never panic the responder or initiator.
    #[test]
    fn random_handshake_messages_are_errors(
        message1 in proptest::collection::vec(any::<u8>(), MESSAGE1_LEN),
        message2 in proptest::collection::vec(any::<u8>(), MESSAGE2_LEN),
    ) {
        let mut p = pair(12);
        prop_assert!(
            Handshake::respond(&p.bob, &message1, |_| Some(fresh_params(&p.rk)), &mut p.rng).is_err()
        );
        let (mut pending, _) =
            Handshake::initiate(&p.alice, p.bob.public(), &p.rk, PROPOSAL, &mut p.rng).unwrap();
        prop_assert!(pending.confirm(&message2).is_err());
    }
}
