//! Authentication of migration signals, and validation of a peer's new path.
//!
//! A migration signal ("I moved, my endpoints are now …") is tagged with a MAC keyed
//! by the committed PeerSecret over the session id, epoch, a counter and the endpoint
//! list; the receiver resolves it against every secret it holds
//! ([`crate::KeyRing::resolve_migration_tag`]). Before moving a session to a new
//! address, the receiver sends an unpredictable challenge there with a
//! [`PathChallenger`] and moves only when the answer comes back (invariant 6).

use std::collections::BTreeMap;
use std::fmt;

use blake2::digest::consts::U16;
use blake2::digest::{KeyInit, Mac};
use blake2::Blake2sMac;
use data_encoding::HEXLOWER;
use rand::{CryptoRng, RngCore};
use subtle::ConstantTimeEq;
use thiserror::Error;

use crate::kdf::{derive, label};
use crate::peer_secret::PeerSecret;

/// Length of a migration tag. 128 bits: a forger needs ~2^128 tries, and the tag
/// rides in every migration ping, which should stay small.
pub const MIGRATION_TAG_LEN: usize = 16;

/// Length of a path challenge. 128 random bits cannot be guessed by an off-path
/// attacker who wants a session moved to an address it does not control.
pub const PATH_CHALLENGE_LEN: usize = 16;

/// The MAC on a migration signal.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MigrationTag(pub [u8; MIGRATION_TAG_LEN]);

impl MigrationTag {
    /// Reads a tag from wire bytes of exactly [`MIGRATION_TAG_LEN`].
    pub fn from_slice(bytes: &[u8]) -> Result<Self, MigrationError> {
        bytes
            .try_into()
            .map(Self)
            .map_err(|_| MigrationError::BadTagLength { len: bytes.len() })
    }
}

impl fmt::Debug for MigrationTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MigrationTag({})", HEXLOWER.encode(&self.0))
    }
}

/// Why a migration tag was refused.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MigrationError {
    /// The tag bytes have the wrong length.
    #[error("migration tag has {len} bytes, expected {MIGRATION_TAG_LEN}")]
    BadTagLength {
        /// Length received.
        len: usize,
    },
    /// The tag does not match the signal under this secret.
    #[error("migration tag does not verify")]
    InvalidTag,
}

/// Computes the tag of a migration signal. `session_id` is the bytes of the session's
/// id (a UUID: `tether_protocol::SessionId::as_bytes`). `endpoints` is the caller's canonical
/// encoding of the new endpoint list; `counter` is the signal's sequence number (the
/// caller refuses counters it has seen, the MAC binds it).
pub fn migration_tag(
    peer_secret: &PeerSecret,
    session_id: &[u8; 16],
    epoch: u64,
    counter: u64,
    endpoints: &[u8],
) -> MigrationTag {
    let key = derive(peer_secret.as_bytes(), label::MIGRATION_TAG_KEY, &[]);
    let mut mac = <Blake2sMac<U16> as KeyInit>::new((&*key).into());
    mac.update(session_id);
    mac.update(&epoch.to_le_bytes());
    mac.update(&counter.to_le_bytes());
    // Length-prefixed so the fields can never be re-split differently.
    mac.update(&(endpoints.len() as u64).to_le_bytes());
    mac.update(endpoints);
    MigrationTag(mac.finalize().into_bytes().into())
}

/// Verifies a migration tag in constant time.
pub fn verify_migration_tag(
    peer_secret: &PeerSecret,
    session_id: &[u8; 16],
    epoch: u64,
    counter: u64,
    endpoints: &[u8],
    tag: &MigrationTag,
) -> Result<(), MigrationError> {
    let expected = migration_tag(peer_secret, session_id, epoch, counter, endpoints);
    if bool::from(expected.0.ct_eq(&tag.0)) {
        Ok(())
    } else {
        Err(MigrationError::InvalidTag)
    }
}

/// An unpredictable value sent to a candidate path; the peer echoes it (inside a
/// frame sealed with the session keys) to prove it receives at that address.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PathChallenge(pub [u8; PATH_CHALLENGE_LEN]);

impl fmt::Debug for PathChallenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PathChallenge({})", HEXLOWER.encode(&self.0))
    }
}

/// Why a path response was refused.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathError {
    /// No challenge is outstanding for this address (never sent, or already answered).
    #[error("no outstanding challenge for this address")]
    NoChallenge,
    /// The challenge for this address expired before the answer came.
    #[error("challenge expired at {expired_at_ms} ms (now {now_ms} ms)")]
    Expired {
        /// When it expired.
        expired_at_ms: u64,
        /// When the answer arrived.
        now_ms: u64,
    },
    /// The answer does not match the challenge sent to this address.
    #[error("response does not match the challenge")]
    Mismatch,
}

struct Outstanding {
    challenge: PathChallenge,
    issued_at_ms: u64,
    expires_at_ms: u64,
}

/// Issues path challenges bound to an address key `K` and accepts each answer once.
pub struct PathChallenger<K> {
    outstanding: BTreeMap<K, Outstanding>,
    ttl_ms: u64,
    max_outstanding: usize,
}

impl<K: Ord + Clone> PathChallenger<K> {
    /// A challenger whose challenges live `ttl_ms` and of which at most
    /// `max_outstanding` (at least 1) are kept.
    pub fn new(ttl_ms: u64, max_outstanding: usize) -> Self {
        Self {
            outstanding: BTreeMap::new(),
            ttl_ms,
            max_outstanding: max_outstanding.max(1),
        }
    }

    /// The challenge to send to `address`. While one is outstanding and unexpired it is
    /// returned again (so retransmissions carry the same value); otherwise a fresh one
    /// is drawn. When the table is full the challenge closest to expiry is dropped.
    pub fn issue<R: RngCore + CryptoRng>(
        &mut self,
        address: &K,
        now_ms: u64,
        rng: &mut R,
    ) -> PathChallenge {
        self.prune(now_ms);
        if let Some(existing) = self.outstanding.get(address) {
            return existing.challenge;
        }
        while self.outstanding.len() >= self.max_outstanding {
            let oldest = self
                .outstanding
                .iter()
                .min_by_key(|(_, o)| o.expires_at_ms)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(key) => {
                    self.outstanding.remove(&key);
                }
                None => break,
            }
        }
        let mut bytes = [0_u8; PATH_CHALLENGE_LEN];
        rng.fill_bytes(&mut bytes);
        let challenge = PathChallenge(bytes);
        self.outstanding.insert(
            address.clone(),
            Outstanding {
                challenge,
                issued_at_ms: now_ms,
                expires_at_ms: now_ms.saturating_add(self.ttl_ms),
            },
        );
        challenge
    }

    /// Checks an answer received from `address`; on success, the milliseconds since the
    /// challenge was issued (the path's round trip). Succeeds at most once per challenge:
    /// success removes it. A wrong answer leaves the challenge outstanding (it proves
    /// nothing and must not cancel the genuine one); an expired one is removed.
    pub fn verify(
        &mut self,
        address: &K,
        response: &PathChallenge,
        now_ms: u64,
    ) -> Result<u64, PathError> {
        let outstanding = self
            .outstanding
            .get(address)
            .ok_or(PathError::NoChallenge)?;
        if now_ms >= outstanding.expires_at_ms {
            let expired_at_ms = outstanding.expires_at_ms;
            self.outstanding.remove(address);
            return Err(PathError::Expired {
                expired_at_ms,
                now_ms,
            });
        }
        if !bool::from(outstanding.challenge.0.ct_eq(&response.0)) {
            return Err(PathError::Mismatch);
        }
        let round_trip_ms = now_ms.saturating_sub(outstanding.issued_at_ms);
        self.outstanding.remove(address);
        Ok(round_trip_ms)
    }

    /// Whether an unexpired challenge to `address` awaits its answer (a challenge sent
    /// on a reliable stream needs no second copy).
    pub fn is_pending(&self, address: &K, now_ms: u64) -> bool {
        self.outstanding
            .get(address)
            .is_some_and(|o| now_ms < o.expires_at_ms)
    }

    /// Drops the challenge to `address` (it moved: a new one must be answered there).
    pub fn forget(&mut self, address: &K) {
        self.outstanding.remove(address);
    }

    /// Drops expired challenges.
    pub fn prune(&mut self, now_ms: u64) {
        self.outstanding.retain(|_, o| now_ms < o.expires_at_ms);
    }

    /// How many challenges are outstanding.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }
}

impl<K> fmt::Debug for PathChallenger<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PathChallenger")
            .field("outstanding", &self.outstanding.len())
            .field("ttl_ms", &self.ttl_ms)
            .field("max_outstanding", &self.max_outstanding)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const SESSION: [u8; 16] = [5; 16];

    fn secret(byte: u8) -> PeerSecret {
        PeerSecret::from_bytes_for_test([byte; 32])
    }

    #[test]
    fn migration_tag_verifies_under_the_right_secret_only() {
        let tag = migration_tag(&secret(1), &SESSION, 3, 7, b"endpoints");
        assert_eq!(
            verify_migration_tag(&secret(1), &SESSION, 3, 7, b"endpoints", &tag),
            Ok(())
        );
        assert_eq!(
            verify_migration_tag(&secret(2), &SESSION, 3, 7, b"endpoints", &tag),
            Err(MigrationError::InvalidTag)
        );
    }

    #[test]
    fn migration_tag_fails_when_any_field_changes() {
        let s = secret(1);
        let tag = migration_tag(&s, &SESSION, 3, 7, b"endpoints");
        let mut other_session = SESSION;
        other_session[15] ^= 1;
        let bad = [
            verify_migration_tag(&s, &other_session, 3, 7, b"endpoints", &tag),
            verify_migration_tag(&s, &SESSION, 4, 7, b"endpoints", &tag),
            verify_migration_tag(&s, &SESSION, 3, 8, b"endpoints", &tag),
            verify_migration_tag(&s, &SESSION, 3, 7, b"endpointz", &tag),
            verify_migration_tag(&s, &SESSION, 3, 7, b"endpoint", &tag),
        ];
        for result in bad {
            assert_eq!(result, Err(MigrationError::InvalidTag));
        }
        let mut flipped = tag;
        flipped.0[0] ^= 0x80;
        assert_eq!(
            verify_migration_tag(&s, &SESSION, 3, 7, b"endpoints", &flipped),
            Err(MigrationError::InvalidTag)
        );
    }

    #[test]
    fn migration_tag_from_slice_checks_length() {
        assert_eq!(
            MigrationTag::from_slice(&[0; 15]),
            Err(MigrationError::BadTagLength { len: 15 })
        );
        assert!(MigrationTag::from_slice(&[0; 16]).is_ok());
    }

    #[test]
    fn path_challenge_is_single_use() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut challenger = PathChallenger::new(1_000, 4);
        let challenge = challenger.issue(&"10.0.0.1:4433", 0, &mut rng);
        assert_eq!(
            challenger.verify(&"10.0.0.1:4433", &challenge, 10),
            Ok(10),
            "answered 10 ms after it was issued"
        );
        assert_eq!(
            challenger.verify(&"10.0.0.1:4433", &challenge, 11),
            Err(PathError::NoChallenge)
        );
    }

    #[test]
    fn path_challenge_is_bound_to_its_address_and_value() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut challenger = PathChallenger::new(1_000, 4);
        let a = challenger.issue(&1_u32, 0, &mut rng);
        let b = challenger.issue(&2_u32, 0, &mut rng);
        assert_ne!(a, b);
        assert_eq!(challenger.verify(&1, &b, 5), Err(PathError::Mismatch));
        assert_eq!(challenger.verify(&3, &a, 5), Err(PathError::NoChallenge));
        // The wrong answer did not cancel the genuine one.
        assert_eq!(challenger.verify(&1, &a, 6), Ok(6));
        assert_eq!(challenger.verify(&2, &b, 6), Ok(6));
    }

    #[test]
    fn a_pending_challenge_is_known_until_answered_expired_or_forgotten() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let mut challenger = PathChallenger::new(1_000, 4);
        let a = challenger.issue(&1_u32, 0, &mut rng);
        challenger.issue(&2_u32, 0, &mut rng);
        assert!(challenger.is_pending(&1, 999));
        assert!(!challenger.is_pending(&1, 1_000), "expired");
        assert!(!challenger.is_pending(&3, 0), "never issued");
        assert_eq!(challenger.verify(&1, &a, 10), Ok(10));
        assert!(!challenger.is_pending(&1, 10), "answered");
        challenger.forget(&2);
        assert!(!challenger.is_pending(&2, 10), "forgotten");
        assert_ne!(challenger.issue(&2, 10, &mut rng), a, "a fresh one follows");
    }

    #[test]
    fn path_challenge_expires() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut challenger = PathChallenger::new(1_000, 4);
        let challenge = challenger.issue(&1_u32, 500, &mut rng);
        assert_eq!(
            challenger.verify(&1, &challenge, 1_500),
            Err(PathError::Expired {
                expired_at_ms: 1_500,
                now_ms: 1_500
            })
        );
        assert_eq!(
            challenger.verify(&1, &challenge, 1_501),
            Err(PathError::NoChallenge)
        );
        // One millisecond before expiry still verifies.
        let challenge = challenger.issue(&1_u32, 2_000, &mut rng);
        assert_eq!(challenger.verify(&1, &challenge, 2_999), Ok(999));
    }

    #[test]
    fn path_challenge_reissue_returns_same_value_until_expiry() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let mut challenger = PathChallenger::new(1_000, 4);
        let first = challenger.issue(&1_u32, 0, &mut rng);
        assert_eq!(challenger.issue(&1_u32, 999, &mut rng), first);
        let fresh = challenger.issue(&1_u32, 1_000, &mut rng);
        assert_ne!(fresh, first);
    }

    #[test]
    fn path_challenge_table_is_bounded() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut challenger = PathChallenger::new(10_000, 3);
        let first = challenger.issue(&0_u32, 0, &mut rng);
        for address in 1..10_u32 {
            challenger.issue(&address, u64::from(address), &mut rng);
            assert!(challenger.outstanding() <= 3);
        }
        assert_eq!(
            challenger.verify(&0, &first, 20),
            Err(PathError::NoChallenge)
        );
    }
}
