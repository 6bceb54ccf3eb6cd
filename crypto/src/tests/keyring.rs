//! The key ring: the commit rule, refusals that change nothing, resolution.

use crate::handshake::{HandshakeError, HandshakePurpose, Role};
use crate::keyring::{GenerationId, KeyRing, RingError, Slot, MAX_CANDIDATES};
use crate::keys::StaticKeypair;
use crate::session::{OpenError, SealError, REJECT_AFTER_MESSAGES, REKEY_AFTER_MESSAGES};
use crate::test_support::{committed_rings, pair, respond, Pair};

const SESSION: [u8; 16] = [9; 16];

/// Runs a full upgrade handshake initiated by `alice`'s ring (`alice` first), through
/// both commits. Returns the new generation.
fn upgrade(
    p: &mut Pair,
    initiator: &mut KeyRing,
    initiator_keys: &StaticKeypair,
    responder: &mut KeyRing,
    responder_keys: &StaticKeypair,
    now_ms: u64,
) -> GenerationId {
    let message1 = initiator
        .initiate(initiator_keys, now_ms, &mut p.rng)
        .unwrap();
    let message2 = respond(responder_keys, responder, &message1, &mut p.rng).unwrap();
    let id = initiator.confirm(&message2).unwrap();
    let frame = initiator.seal(b"confirm").unwrap();
    assert!(responder.open(&frame).unwrap().newly_committed);
    let ack = responder.seal(b"ack").unwrap();
    assert!(initiator.open(&ack).unwrap().newly_committed);
    id
}

#[test]
fn forged_replayed_corrupted_frames_leave_ring_unchanged_and_commit_nothing() {
    let mut p = pair(1);
    let (mut alice, mut bob) = committed_rings(&mut p);
    let old_frame = alice.seal(b"old").unwrap();
    bob.open(&old_frame).unwrap();
    // A new handshake: bob holds a candidate, alice a sendable one.
    let message1 = alice.initiate(&p.alice, 2_000, &mut p.rng).unwrap();
    let message2 = respond(&p.bob, &mut bob, &message1, &mut p.rng).unwrap();
    let new_id = alice.confirm(&message2).unwrap();
    let genuine = alice.seal(b"new").unwrap();
    assert_eq!(alice.best_sendable_generation(), Some(new_id));

    let mut refused = vec![old_frame.clone()]; // replayed
    let mut corrupted = genuine.clone();
    corrupted.ciphertext[3] ^= 0x10;
    refused.push(corrupted);
    let mut bad_tag = genuine.clone();
    let last = bad_tag.ciphertext.len() - 1;
    bad_tag.ciphertext[last] ^= 0x01;
    refused.push(bad_tag);
    let mut moved_nonce = genuine.clone();
    moved_nonce.nonce = 7;
    refused.push(moved_nonce);
    let mut forged = genuine.clone();
    forged.ciphertext = vec![0x55; genuine.ciphertext.len()];
    refused.push(forged);
    let mut unknown_key = genuine.clone();
    unknown_key.key_id.0 = unknown_key.key_id.0.wrapping_add(1);
    refused.push(unknown_key);
    let mut empty = genuine.clone();
    empty.ciphertext.clear();
    refused.push(empty);

    for frame in &refused {
        let before = bob.snapshot();
        assert!(bob.open(frame).is_err(), "{frame:?} accepted");
        assert_eq!(bob.snapshot(), before, "{frame:?} changed the ring");
    }
    // Nothing was committed by the bad frames; the genuine one commits.
    assert_ne!(bob.committed(), Some(new_id));
    let opened = bob.open(&genuine).unwrap();
    assert!(opened.newly_committed);
    assert_eq!(opened.slot, Slot::Candidate);
    assert_eq!(bob.committed(), Some(new_id));
    // Replaying the genuine frame now fails and changes nothing.
    let before = bob.snapshot();
    assert!(matches!(
        bob.open(&genuine),
        Err(RingError::Open(OpenError::Replay(_)))
    ));
    assert_eq!(bob.snapshot(), before);
    // The session keeps working both ways.
    let reply = bob.seal(b"reply").unwrap();
    assert_eq!(alice.open(&reply).unwrap().plaintext, b"reply");
    assert_eq!(alice.committed_fingerprint(), bob.committed_fingerprint());
}

#[test]
fn responder_candidate_is_not_sendable_until_the_initiator_uses_it() {
    let mut p = pair(2);
    let (mut alice, mut bob) = committed_rings(&mut p);
    let first = alice.committed().unwrap();
    let message1 = alice.initiate(&p.alice, 2_000, &mut p.rng).unwrap();
    let message2 = respond(&p.bob, &mut bob, &message1, &mut p.rng).unwrap();
    let snapshot = bob.snapshot();
    assert_eq!(snapshot.candidates.len(), 1);
    assert!(!snapshot.candidates[0].sendable);
    assert_eq!(snapshot.candidates[0].role, Role::Responder);
    // Bob still seals under the committed generation.
    assert_eq!(bob.best_sendable_generation(), Some(first));
    let frame = bob.seal(b"still old").unwrap();
    assert_eq!(alice.open(&frame).unwrap().generation, first);
    // Alice's candidate is sendable as soon as she has message 2.
    assert_eq!(alice.best_sendable_generation(), Some(first));
    let new_id = alice.confirm(&message2).unwrap();
    assert_eq!(alice.best_sendable_generation(), Some(new_id));
    assert_eq!(alice.committed(), Some(first));
}

#[test]
fn replayed_message1_after_accept_is_refused_by_the_ring() {
    let mut p = pair(3);
    let (mut alice, mut bob) = committed_rings(&mut p);
    let message1 = alice.initiate(&p.alice, 2_000, &mut p.rng).unwrap();
    respond(&p.bob, &mut bob, &message1, &mut p.rng).unwrap();
    let before = bob.snapshot();
    assert_eq!(
        respond(&p.bob, &mut bob, &message1, &mut p.rng).unwrap_err(),
        RingError::Handshake(HandshakeError::ReplayedInitiation {
            timestamp_ms: 2_000,
            last_accepted_ms: 2_000
        })
    );
    assert_eq!(bob.snapshot(), before);
}

#[test]
fn corrupted_message2_leaves_the_ring_unchanged() {
    let mut p = pair(4);
    let (mut alice, mut bob) = committed_rings(&mut p);
    assert_eq!(
        alice.confirm(&[0; 56]).unwrap_err(),
        RingError::NoPendingInitiation
    );
    let message1 = alice.initiate(&p.alice, 2_000, &mut p.rng).unwrap();
    let message2 = respond(&p.bob, &mut bob, &message1, &mut p.rng).unwrap();
    let before = alice.snapshot();
    let mut corrupted = message2.clone();
    corrupted[40] ^= 1;
    assert_eq!(
        alice.confirm(&corrupted).unwrap_err(),
        RingError::Handshake(HandshakeError::Authentication)
    );
    assert_eq!(alice.snapshot(), before);
    alice.confirm(&message2).unwrap();
    assert_eq!(
        alice.confirm(&message2).unwrap_err(),
        RingError::NoPendingInitiation
    );
}

#[test]
fn a_late_initiation_is_raised_and_its_moot_initiator_ignores_the_answer() {
    let mut p = pair(5);
    let (mut alice, mut bob) = committed_rings(&mut p);
    // Both initiate epoch 2; alice's completes first and is committed on both sides.
    let bob_message1 = bob.initiate(&p.bob, 2_000, &mut p.rng).unwrap();
    assert_eq!(bob.pending_initiation().map(|i| i.epoch), Some(2));
    assert!(!bob.is_initiation_moot(2));
    let alice_message1 = alice.initiate(&p.alice, 2_000, &mut p.rng).unwrap();
    let message2 = respond(&p.bob, &mut bob, &alice_message1, &mut p.rng).unwrap();
    alice.confirm(&message2).unwrap();
    let frame = alice.seal(b"confirm").unwrap();
    assert!(bob.open(&frame).unwrap().newly_committed);
    assert_eq!(bob.committed_epoch(), Some(2));
    assert!(bob.is_initiation_moot(2));
    assert_eq!(bob.pending_initiation(), None);
    let ack = bob.seal(b"ack").unwrap();
    assert!(alice.open(&ack).unwrap().newly_committed);
    // Bob's late epoch-2 initiation reaches alice, who committed epoch 2: she cannot
    // tell it from a restarted bob's, raises it to 3 and keeps a non-sendable
    // candidate; her committed generation and what she seals under do not change.
    let committed = alice.committed();
    let message2 = respond(&p.alice, &mut alice, &bob_message1, &mut p.rng).unwrap();
    assert_eq!(alice.committed(), committed);
    assert_eq!(alice.best_sendable_generation(), committed);
    let snapshot = alice.snapshot();
    assert_eq!(snapshot.candidates.len(), 1);
    assert_eq!(snapshot.candidates[0].id.epoch, 3);
    assert!(!snapshot.candidates[0].sendable);
    // Bob's initiation is moot: the answer changes nothing there.
    let before = bob.snapshot();
    assert_eq!(
        bob.confirm(&message2).unwrap_err(),
        RingError::NoPendingInitiation
    );
    assert_eq!(bob.snapshot(), before);
    // The next initiation proposes epoch 3.
    alice.initiate(&p.alice, 3_000, &mut p.rng).unwrap();
    assert_eq!(alice.pending_initiation().map(|i| i.epoch), Some(3));
}

#[test]
fn a_restarted_peer_is_back_in_one_handshake_under_new_keys() {
    let mut p = pair(15);
    let (mut alice, mut bob) = committed_rings(&mut p);
    let (pa, pb) = (p.alice.clone(), p.bob.clone());
    upgrade(&mut p, &mut alice, &pa, &mut bob, &pb, 2_000);
    upgrade(&mut p, &mut bob, &pb, &mut alice, &pa, 3_000);
    let old = bob.committed().unwrap();
    let old_secret = bob.committed_fingerprint();
    let old_frame = alice.seal(b"from the old process").unwrap();
    // Alice restarts: an empty ring, proposing epoch 1.
    let mut alice = KeyRing::new(*p.bob.public(), p.rk.clone());
    let message1 = alice.initiate(&p.alice, 4_000, &mut p.rng).unwrap();
    assert_eq!(alice.pending_initiation().map(|i| i.epoch), Some(1));
    let message2 = respond(&p.bob, &mut bob, &message1, &mut p.rng).unwrap();
    // Until the new generation commits, bob keeps the old session.
    assert_eq!(bob.committed(), Some(old));
    assert_eq!(bob.best_sendable_generation(), Some(old));
    assert_eq!(bob.open(&old_frame).unwrap().generation, old);
    let new = alice.confirm(&message2).unwrap();
    assert_eq!(new.epoch, old.epoch + 1);
    let frame = alice.seal(b"back").unwrap();
    let opened = bob.open(&frame).unwrap();
    assert!(opened.newly_committed && opened.epoch_raised);
    let ack = bob.seal(b"welcome back").unwrap();
    let opened = alice.open(&ack).unwrap();
    assert!(opened.newly_committed && opened.epoch_raised);
    assert_eq!(alice.committed(), Some(new));
    assert_eq!(bob.committed(), Some(new));
    assert_eq!(alice.committed_fingerprint(), bob.committed_fingerprint());
    assert_ne!(bob.committed_fingerprint(), old_secret);
    // An ordinary handshake afterwards is not raised.
    let id = upgrade(&mut p, &mut bob, &pb, &mut alice, &pa, 5_000);
    assert_eq!(id.epoch, new.epoch + 1);
    let frame = alice.seal(b"x").unwrap();
    assert!(!bob.open(&frame).unwrap().epoch_raised);
}

#[test]
fn a_replayed_initiation_cannot_displace_the_live_session() {
    let mut p = pair(16);
    let (mut alice, mut bob) = committed_rings(&mut p);
    // An attacker keeps alice's initiation from bob; alice gives up on it and bob's own
    // handshake moves the pair to epoch 2.
    let held_back = alice.initiate(&p.alice, 2_000, &mut p.rng).unwrap();
    let (pa, pb) = (p.alice.clone(), p.bob.clone());
    let live = upgrade(&mut p, &mut bob, &pb, &mut alice, &pa, 3_000);
    // Replayed now, it is fresh to bob (no later initiation from alice was accepted):
    // bob answers with a raised epoch, but only alice's ephemeral key could use the
    // answer, and alice's initiation is moot.
    let message2 = respond(&p.bob, &mut bob, &held_back, &mut p.rng).unwrap();
    assert_eq!(
        alice.confirm(&message2).unwrap_err(),
        RingError::NoPendingInitiation
    );
    // Replayed again: refused outright.
    let before = bob.snapshot();
    assert!(matches!(
        respond(&p.bob, &mut bob, &held_back, &mut p.rng).unwrap_err(),
        RingError::Handshake(HandshakeError::ReplayedInitiation { .. })
    ));
    assert_eq!(bob.snapshot(), before);
    // The live session is untouched and keeps working both ways.
    assert_eq!(bob.committed(), Some(live));
    assert_eq!(bob.best_sendable_generation(), Some(live));
    let frame = alice.seal(b"still here").unwrap();
    assert_eq!(bob.open(&frame).unwrap().generation, live);
    let frame = bob.seal(b"still here").unwrap();
    assert_eq!(alice.open(&frame).unwrap().generation, live);
}

#[test]
fn previous_generation_opens_late_frames_until_the_next_commit() {
    let mut p = pair(6);
    let (mut alice, mut bob) = committed_rings(&mut p);
    let late = alice.seal(b"late").unwrap();
    let too_late = alice.seal(b"too late").unwrap();
    let (pa, pb) = (p.alice.clone(), p.bob.clone());
    upgrade(&mut p, &mut alice, &pa, &mut bob, &pb, 2_000);
    let opened = bob.open(&late).unwrap();
    assert_eq!(opened.slot, Slot::Previous);
    assert!(!opened.newly_committed);
    upgrade(&mut p, &mut bob, &pb, &mut alice, &pa, 3_000);
    assert_eq!(
        bob.open(&too_late).unwrap_err(),
        RingError::UnknownKeyId(too_late.key_id)
    );
}

#[test]
fn a_rekey_is_known_as_one_on_both_sides_and_old_frames_still_open() {
    let mut p = pair(21);
    let (mut alice, mut bob) = committed_rings(&mut p);
    let before = bob.committed_fingerprint();
    // Frames sealed under the old keys, still in flight when the rekey commits.
    let late_to_bob = alice.seal(b"late a").unwrap();
    let late_to_alice = bob.seal(b"late b").unwrap();
    let message1 = alice
        .initiate_for(HandshakePurpose::Rekey, &p.alice, 2_000, &mut p.rng)
        .unwrap();
    let message2 = respond(&p.bob, &mut bob, &message1, &mut p.rng).unwrap();
    alice.confirm(&message2).unwrap();
    let confirming = alice.seal(b"new").unwrap();
    let opened = bob.open(&confirming).unwrap();
    assert!(opened.newly_committed && !opened.epoch_raised);
    assert_eq!(opened.purpose, HandshakePurpose::Rekey);
    let answer = bob.seal(b"ack").unwrap();
    let opened = alice.open(&answer).unwrap();
    assert!(opened.newly_committed);
    assert_eq!(opened.purpose, HandshakePurpose::Rekey);
    assert_ne!(bob.committed_fingerprint(), before, "a new PeerSecret");
    assert_eq!(alice.committed_fingerprint(), bob.committed_fingerprint());
    // The old generation is previous on both sides and still opens what was in flight.
    assert_eq!(bob.open(&late_to_bob).unwrap().slot, Slot::Previous);
    assert_eq!(alice.open(&late_to_alice).unwrap().slot, Slot::Previous);
}

#[test]
fn an_abandoned_rekey_is_never_sent_under_nor_committed() {
    let mut p = pair(22);
    let (mut alice, mut bob) = committed_rings(&mut p);
    let committed = alice.committed();
    let message1 = alice
        .initiate_for(HandshakePurpose::Rekey, &p.alice, 2_000, &mut p.rng)
        .unwrap();
    let message2 = respond(&p.bob, &mut bob, &message1, &mut p.rng).unwrap();
    // A migration begins before message 2 arrives: the rekey is given up.
    assert!(alice.abandon_initiation());
    assert!(!alice.abandon_initiation());
    assert_eq!(
        alice.confirm(&message2),
        Err(RingError::NoPendingInitiation)
    );
    // Both sides keep sending under, and committing, nothing but the old generation.
    let frame = alice.seal(b"still old").unwrap();
    assert!(!bob.open(&frame).unwrap().newly_committed);
    let frame = bob.seal(b"still old").unwrap();
    assert!(!alice.open(&frame).unwrap().newly_committed);
    assert_eq!(alice.committed(), committed);
    assert_eq!(bob.committed(), committed);
    // The next rekey commits on both sides, above the candidate Bob kept.
    let (pa, pb) = (p.alice.clone(), p.bob.clone());
    let id = upgrade(&mut p, &mut alice, &pa, &mut bob, &pb, 3_000);
    assert_eq!(alice.committed(), Some(id));
    assert_eq!(bob.committed(), Some(id));
    assert!(bob.snapshot().candidates.is_empty());
}

#[test]
fn lost_message2_keys_are_never_committed_and_a_retry_commits() {
    let mut p = pair(7);
    let (mut alice, mut bob) = committed_rings(&mut p);
    let first = bob.committed().unwrap();
    let message1 = alice.initiate(&p.alice, 2_000, &mut p.rng).unwrap();
    let _lost = respond(&p.bob, &mut bob, &message1, &mut p.rng).unwrap();
    let orphan = bob.snapshot().candidates[0].id;
    // Neither side sends under the orphan.
    assert_eq!(bob.best_sendable_generation(), Some(first));
    assert_eq!(alice.best_sendable_generation(), Some(first));
    // Alice retries: same epoch, later timestamp, better in the order.
    let retry1 = alice.initiate(&p.alice, 2_000, &mut p.rng).unwrap();
    assert_eq!(
        alice.pending_initiation().map(|i| i.timestamp_ms),
        Some(2_001)
    );
    let retry2 = respond(&p.bob, &mut bob, &retry1, &mut p.rng).unwrap();
    let retry = alice.confirm(&retry2).unwrap();
    assert!(retry > orphan);
    let frame = alice.seal(b"confirm").unwrap();
    assert!(bob.open(&frame).unwrap().newly_committed);
    // The orphan, no better than the committed retry, is gone.
    assert!(bob.snapshot().candidates.is_empty());
    assert_eq!(bob.committed(), Some(retry));
}

#[test]
fn crossing_handshakes_commit_the_lower_initiator_key_on_both_sides() {
    for seed in 0..8 {
        let mut p = pair(100 + seed);
        let (mut alice, mut bob) = committed_rings(&mut p);
        let a1 = alice.initiate(&p.alice, 2_000, &mut p.rng).unwrap();
        let b1 = bob.initiate(&p.bob, 2_000, &mut p.rng).unwrap();
        let a2 = respond(&p.bob, &mut bob, &a1, &mut p.rng).unwrap();
        let b2 = respond(&p.alice, &mut alice, &b1, &mut p.rng).unwrap();
        let by_alice = alice.confirm(&a2).unwrap();
        let by_bob = bob.confirm(&b2).unwrap();
        assert_eq!(by_alice.epoch, by_bob.epoch);
        let winner = if p.alice.public() < p.bob.public() {
            by_alice
        } else {
            by_bob
        };
        assert_eq!(by_alice.max(by_bob), winner);
        // Each side sends under its best sendable; frames cross.
        for _ in 0..2 {
            let to_bob = alice.seal(b"a").unwrap();
            let to_alice = bob.seal(b"b").unwrap();
            bob.open(&to_bob).unwrap();
            alice.open(&to_alice).unwrap();
        }
        assert_eq!(alice.committed(), Some(winner), "seed {seed}");
        assert_eq!(bob.committed(), Some(winner), "seed {seed}");
        assert_eq!(alice.committed_fingerprint(), bob.committed_fingerprint());
        assert_eq!(alice.session_fingerprint(), bob.session_fingerprint());
    }
}

#[test]
fn migration_tags_resolve_against_committed_candidate_and_previous() {
    let mut p = pair(8);
    let (mut alice, mut bob) = committed_rings(&mut p);
    let first = alice.committed().unwrap();
    let tag = alice.migration_tag(&SESSION, 1, b"ep").unwrap();
    let found = bob.resolve_migration_tag(&SESSION, 1, b"ep", &tag).unwrap();
    assert_eq!((found.generation, found.slot), (first, Slot::Committed));
    // Alice upgrades; bob commits, alice has not yet (no frame back).
    let message1 = alice.initiate(&p.alice, 2_000, &mut p.rng).unwrap();
    let message2 = respond(&p.bob, &mut bob, &message1, &mut p.rng).unwrap();
    let second = alice.confirm(&message2).unwrap();
    let frame = alice.seal(b"x").unwrap();
    bob.open(&frame).unwrap();
    assert_eq!(bob.committed(), Some(second));
    assert_eq!(alice.committed(), Some(first));
    // Alice still tags with the first secret: bob resolves it as previous.
    let old_tag = alice.migration_tag(&SESSION, 2, b"ep").unwrap();
    let found = bob
        .resolve_migration_tag(&SESSION, 2, b"ep", &old_tag)
        .unwrap();
    assert_eq!((found.generation, found.slot), (first, Slot::Previous));
    // Bob tags with the second: alice resolves it as a candidate.
    let new_tag = bob.migration_tag(&SESSION, 3, b"ep").unwrap();
    let found = alice
        .resolve_migration_tag(&SESSION, 3, b"ep", &new_tag)
        .unwrap();
    assert_eq!((found.generation, found.slot), (second, Slot::Candidate));
    // Any changed field, or an unrelated ring, refuses it.
    assert_eq!(
        alice.resolve_migration_tag(&SESSION, 4, b"ep", &new_tag),
        None
    );
    assert_eq!(
        alice.resolve_migration_tag(&SESSION, 3, b"eq", &new_tag),
        None
    );
    assert_eq!(
        alice.resolve_migration_tag(&[0; 16], 3, b"ep", &new_tag),
        None
    );
    let mut q = pair(9);
    let (stranger, _) = committed_rings(&mut q);
    assert_eq!(
        stranger.resolve_migration_tag(&SESSION, 3, b"ep", &new_tag),
        None
    );
}

#[test]
fn ring_rekey_and_exhaustion_limits() {
    let mut p = pair(10);
    let (mut alice, mut bob) = committed_rings(&mut p);
    assert!(!alice.needs_rekey());
    alice.set_next_nonce_for_test(REKEY_AFTER_MESSAGES);
    assert!(alice.needs_rekey());
    alice.set_next_nonce_for_test(REJECT_AFTER_MESSAGES - 1);
    let last = alice.seal(b"last").unwrap();
    assert_eq!(
        alice.seal(b"more").unwrap_err(),
        RingError::Seal(SealError::NonceExhausted)
    );
    assert_eq!(bob.open(&last).unwrap().plaintext, b"last");
    // A new handshake gives fresh nonces.
    let (pa, pb) = (p.alice.clone(), p.bob.clone());
    upgrade(&mut p, &mut alice, &pa, &mut bob, &pb, 2_000);
    assert!(!alice.needs_rekey());
    assert_eq!(alice.seal(b"fresh").unwrap().nonce, 1);
}

#[test]
fn candidate_table_is_bounded_and_keeps_the_best() {
    let mut p = pair(11);
    let (mut alice, mut bob) = committed_rings(&mut p);
    let mut last_message2 = Vec::new();
    for attempt in 0..(MAX_CANDIDATES as u64 + 5) {
        let message1 = alice
            .initiate(&p.alice, 2_000 + attempt, &mut p.rng)
            .unwrap();
        last_message2 = respond(&p.bob, &mut bob, &message1, &mut p.rng).unwrap();
        assert!(bob.snapshot().candidates.len() <= MAX_CANDIDATES);
    }
    let newest = alice.confirm(&last_message2).unwrap();
    assert_eq!(bob.snapshot().candidates[0].id, newest);
    let frame = alice.seal(b"x").unwrap();
    assert!(bob.open(&frame).unwrap().newly_committed);
    assert_eq!(bob.committed(), Some(newest));
}

#[test]
fn accept_refuses_a_handshake_with_another_device() {
    let mut p = pair(12);
    let (_, mut bob) = committed_rings(&mut p);
    let carol = StaticKeypair::generate(&mut p.rng);
    let mut carol_ring = KeyRing::new(*p.bob.public(), p.rk.clone());
    let message1 = carol_ring.initiate(&carol, 5_000, &mut p.rng).unwrap();
    // A lookup that wrongly maps carol to bob's peer parameters (sans epoch check).
    let params = crate::handshake::PeerParams {
        committed_epoch: None,
        ..bob.peer_params()
    };
    let responded =
        crate::handshake::Handshake::respond(&p.bob, &message1, |_| Some(params), &mut p.rng)
            .unwrap();
    let before = bob.snapshot();
    assert!(matches!(
        bob.accept(responded),
        Err(RingError::WrongPeer { .. })
    ));
    assert_eq!(bob.snapshot(), before);
}

#[test]
fn initiation_timestamps_strictly_increase_even_if_the_clock_goes_back() {
    let mut p = pair(13);
    let mut ring = KeyRing::new(*p.bob.public(), p.rk.clone());
    assert_eq!(ring.seal(b"x").unwrap_err(), RingError::NoSendableKey);
    ring.initiate(&p.alice, 5_000, &mut p.rng).unwrap();
    ring.initiate(&p.alice, 4_000, &mut p.rng).unwrap();
    assert_eq!(
        ring.pending_initiation().map(|i| (i.epoch, i.timestamp_ms)),
        Some((1, 5_001))
    );
}

#[test]
fn ring_debug_has_no_secrets() {
    let mut p = pair(14);
    let (alice, _) = committed_rings(&mut p);
    let debug = format!("{alice:?}");
    assert!(debug.contains(&alice.committed_fingerprint().unwrap().to_hex()));
    assert!(!debug.contains(p.rk.to_hex().as_str()));
}

/// A readable trace of two crossing handshakes, pinned with insta. Devices are named
/// by key order (`low` has the lower static key) so the trace does not depend on
/// which random keys the seed produced.
#[test]
fn crossing_handshakes_trace() {
    let mut p = pair(200);
    if p.bob.public() < p.alice.public() {
        std::mem::swap(&mut p.alice, &mut p.bob);
    }
    let (mut low, mut high) = committed_rings(&mut p);
    let mut names: Vec<GenerationId> = vec![low.committed().unwrap()];
    let mut trace = Vec::new();
    let mut name = |id: GenerationId| -> String {
        let index = names.iter().position(|n| *n == id).unwrap_or_else(|| {
            names.push(id);
            names.len() - 1
        });
        let by = if id.initiator == *p.alice.public() {
            "low"
        } else {
            "high"
        };
        format!("G{index}(e{} by {by})", id.epoch)
    };
    trace.push("start".to_string());
    describe(&mut trace, "low ", &low, &mut name);
    describe(&mut trace, "high", &high, &mut name);

    let low1 = low.initiate(&p.alice, 2_000, &mut p.rng).unwrap();
    let high1 = high.initiate(&p.bob, 2_000, &mut p.rng).unwrap();
    trace.push(format!(
        "both initiate epoch 2 (message 1: {} bytes each)",
        low1.len()
    ));
    let low2 = respond(&p.bob, &mut high, &low1, &mut p.rng).unwrap();
    let high2 = respond(&p.alice, &mut low, &high1, &mut p.rng).unwrap();
    trace.push(format!(
        "both accept (message 2: {} bytes each)",
        low2.len()
    ));
    describe(&mut trace, "low ", &low, &mut name);
    describe(&mut trace, "high", &high, &mut name);
    let by_low = low.confirm(&low2).unwrap();
    let by_high = high.confirm(&high2).unwrap();
    trace.push(format!(
        "both confirm: low {}, high {}",
        name(by_low),
        name(by_high)
    ));
    describe(&mut trace, "low ", &low, &mut name);
    describe(&mut trace, "high", &high, &mut name);
    let exchange = |from: &str,
                    sender: &mut KeyRing,
                    receiver: &mut KeyRing,
                    trace: &mut Vec<String>,
                    name: &mut dyn FnMut(GenerationId) -> String| {
        let frame = sender.seal(b"data").unwrap();
        let opened = receiver.open(&frame).unwrap();
        trace.push(format!(
            "{from} sends under {}; opened as {:?}, newly committed: {}",
            name(opened.generation),
            opened.slot,
            opened.newly_committed
        ));
    };
    exchange("high", &mut high, &mut low, &mut trace, &mut name);
    describe(&mut trace, "low ", &low, &mut name);
    exchange("low", &mut low, &mut high, &mut trace, &mut name);
    describe(&mut trace, "high", &high, &mut name);
    // Low still has G1 committed, which high never committed: a signal low tags now
    // (it moves at this moment) and a frame low sealed under G1 before must still pass.
    let tag = low.migration_tag(&SESSION, 1, b"ep").unwrap();
    let resolved = high.resolve_migration_tag(&SESSION, 1, b"ep", &tag);
    trace.push(format!(
        "low tags a migration signal under {}; high resolves it: {}",
        name(low.committed().unwrap()),
        resolved.is_some()
    ));
    assert!(
        resolved.is_some(),
        "a genuine migration signal was rejected"
    );
    exchange("high", &mut high, &mut low, &mut trace, &mut name);
    exchange("low", &mut low, &mut high, &mut trace, &mut name);
    trace.push("end".to_string());
    describe(&mut trace, "low ", &low, &mut name);
    describe(&mut trace, "high", &high, &mut name);
    assert_eq!(low.committed_fingerprint(), high.committed_fingerprint());
    insta::assert_snapshot!(trace.join("\n"));
}

/// One trace line describing a ring's generations.
fn describe(
    trace: &mut Vec<String>,
    who: &str,
    ring: &KeyRing,
    name: &mut dyn FnMut(GenerationId) -> String,
) {
    let s = ring.snapshot();
    let candidates: Vec<String> = s
        .candidates
        .iter()
        .map(|c| format!("{}{}", name(c.id), if c.sendable { "*" } else { "" }))
        .collect();
    let committed = s.committed.map_or("-".into(), |c| name(c.id));
    let previous = s.previous.map_or("-".into(), |c| name(c.id));
    let sends = ring
        .best_sendable_generation()
        .map_or("-".into(), &mut *name);
    trace.push(format!(
        "  {who}: committed {committed} previous {previous} candidates [{}] sends under {sends}",
        candidates.join(", "),
    ));
}

/// A node holds one ring per paired peer, sessions or not, so a ring's own size is a
/// cost paid per peer: the generations (about 1.4 KiB each, most of it the replay
/// window) and the pending handshake live behind boxes, allocated only while held.
#[test]
fn a_ring_holds_its_generations_and_handshake_out_of_line() {
    let ring_bytes = std::mem::size_of::<KeyRing>();
    let window_bytes = std::mem::size_of::<crate::replay::ReplayWindow>();
    assert!(
        ring_bytes <= 256,
        "a KeyRing is {ring_bytes} bytes: a generation or handshake is inline again"
    );
    assert!(ring_bytes < window_bytes, "{ring_bytes} vs {window_bytes}");
}
