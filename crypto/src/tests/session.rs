//! Sealing and opening under one generation: refusals leave no trace, limits hold.

use crate::handshake::{HandshakePurpose, InitiationPayload};
use crate::replay::{ReplayError, REPLAY_WINDOW_BITS};
use crate::session::{
    OpenError, SealError, Session, MAX_PLAINTEXT_LEN, REJECT_AFTER_MESSAGES, REKEY_AFTER_MESSAGES,
};
use crate::test_support::{handshake, pair};

fn sessions(seed: u64) -> (Session, Session) {
    let mut p = pair(seed);
    let payload = InitiationPayload {
        epoch: 1,
        timestamp_ms: 1,
        purpose: HandshakePurpose::Establish,
    };
    let (a, b) = handshake(&p.alice, &p.bob, &p.rk, payload, &mut p.rng);
    (Session::new(a), Session::new(b))
}

/// Everything `open` could change.
fn state(session: &Session) -> (u64, crate::replay::ReplayWindow) {
    (session.next_nonce(), session.replay_window().clone())
}

#[test]
fn forged_replayed_corrupted_frames_leave_session_unchanged() {
    let (mut alice, mut bob) = sessions(1);
    let first = alice.seal(b"first").unwrap();
    bob.open(&first).unwrap();
    let second = alice.seal(b"second").unwrap();

    let mut refused = Vec::new();
    // Replayed.
    refused.push(first.clone());
    // Corrupted ciphertext, tag, and nonce.
    for index in [0, second.ciphertext.len() - 1] {
        let mut corrupted = second.clone();
        corrupted.ciphertext[index] ^= 1;
        refused.push(corrupted);
    }
    let mut wrong_nonce = second.clone();
    wrong_nonce.nonce += 1;
    refused.push(wrong_nonce);
    // Forged: random bytes under the right key id and a fresh nonce.
    let mut forged = second.clone();
    forged.nonce = 1_000;
    forged.ciphertext = vec![0xab; 40];
    refused.push(forged);
    // Truncated below a tag, oversized, out-of-range nonce, other key id.
    let mut short = second.clone();
    short.ciphertext.truncate(15);
    refused.push(short);
    let mut long = second.clone();
    long.ciphertext = vec![0; 65_536];
    refused.push(long);
    let mut far = second.clone();
    far.nonce = u64::MAX;
    refused.push(far);
    let mut other_key = second.clone();
    other_key.key_id.0 ^= 1;
    refused.push(other_key);

    for frame in &refused {
        let before = state(&bob);
        assert!(bob.open(frame).is_err(), "{frame:?} was accepted");
        assert_eq!(state(&bob), before, "{frame:?} changed state");
    }
    // The session keeps working, and the genuine second frame still opens once.
    assert_eq!(bob.open(&second).unwrap(), b"second");
    assert_eq!(
        bob.open(&second).unwrap_err(),
        OpenError::Replay(ReplayError::Duplicate(1))
    );
    let reply = bob.seal(b"reply").unwrap();
    assert_eq!(alice.open(&reply).unwrap(), b"reply");
}

#[test]
fn out_of_order_frames_across_the_window() {
    let (mut alice, mut bob) = sessions(2);
    let frames: Vec<_> = (0..10).map(|i| alice.seal(&[i]).unwrap()).collect();
    // Reverse order: all accepted.
    for frame in frames.iter().rev() {
        bob.open(frame).unwrap();
    }
    // A jump far ahead, then old frames inside the window open, older ones do not.
    alice.set_next_nonce_for_test(REPLAY_WINDOW_BITS + 20);
    let ahead = alice.seal(b"ahead").unwrap();
    bob.open(&ahead).unwrap();
    assert_eq!(
        bob.open(&frames[5]).unwrap_err(),
        OpenError::Replay(ReplayError::TooOld {
            nonce: 5,
            greatest: REPLAY_WINDOW_BITS + 20
        })
    );
    alice.set_next_nonce_for_test(21);
    let inside = alice.seal(b"inside").unwrap();
    assert_eq!(bob.open(&inside).unwrap(), b"inside");
    alice.set_next_nonce_for_test(20);
    let outside = alice.seal(b"outside").unwrap();
    assert_eq!(
        bob.open(&outside).unwrap_err(),
        OpenError::Replay(ReplayError::TooOld {
            nonce: 20,
            greatest: REPLAY_WINDOW_BITS + 20
        })
    );
}

#[test]
fn rekey_limit_is_reported() {
    let (mut alice, _) = sessions(3);
    alice.set_next_nonce_for_test(REKEY_AFTER_MESSAGES - 1);
    assert!(!alice.needs_rekey());
    alice.seal(b"x").unwrap();
    assert!(alice.needs_rekey());
}

#[test]
fn nonce_exhaustion_refuses_to_seal_and_receivers_refuse_out_of_range_nonces() {
    let (mut alice, mut bob) = sessions(4);
    alice.set_next_nonce_for_test(REJECT_AFTER_MESSAGES - 1);
    let last = alice.seal(b"last").unwrap();
    assert_eq!(last.nonce, REJECT_AFTER_MESSAGES - 1);
    assert_eq!(alice.seal(b"more").unwrap_err(), SealError::NonceExhausted);
    assert_eq!(alice.next_nonce(), REJECT_AFTER_MESSAGES);
    assert_eq!(bob.open(&last).unwrap(), b"last");
    // A frame claiming a nonce at or past the limit is refused before decryption.
    let mut beyond = last.clone();
    beyond.nonce = REJECT_AFTER_MESSAGES;
    assert_eq!(
        bob.open(&beyond).unwrap_err(),
        OpenError::NonceOutOfRange(REJECT_AFTER_MESSAGES)
    );
    assert_eq!(REJECT_AFTER_MESSAGES, u64::MAX - 8192);
    assert_eq!(REKEY_AFTER_MESSAGES, 1 << 60);
}

#[test]
fn nonce_zero_and_plaintext_size_limits() {
    let (mut alice, mut bob) = sessions(5);
    let empty = alice.seal(b"").unwrap();
    assert_eq!(empty.nonce, 0);
    assert_eq!(bob.open(&empty).unwrap(), b"");
    let max = vec![7_u8; MAX_PLAINTEXT_LEN];
    let sealed = alice.seal(&max).unwrap();
    assert_eq!(sealed.ciphertext.len(), 65_535);
    assert_eq!(bob.open(&sealed).unwrap(), max);
    let before = alice.next_nonce();
    assert_eq!(
        alice.seal(&vec![0; MAX_PLAINTEXT_LEN + 1]).unwrap_err(),
        SealError::TooLarge {
            len: MAX_PLAINTEXT_LEN + 1
        }
    );
    assert_eq!(alice.next_nonce(), before);
}

#[test]
fn sealed_debug_shows_length_not_ciphertext() {
    let (mut alice, _) = sessions(6);
    let sealed = alice.seal(b"secret words").unwrap();
    let debug = format!("{sealed:?}");
    assert!(debug.contains("ciphertext_len: 28"), "{debug}");
}
