//! Sealed endpoint hints, exchanged through the rendezvous server (PMS).
//!
//! Both devices of a pair derive the same [`RendezvousId`] from their relationship
//! key; the server files hints under it and learns nothing else (invariant 7): not the
//! devices' identities, not the endpoints, not the times, only the id and the length
//! of each sealed hint. A hint is sealed with XChaCha20-Poly1305 under a key derived
//! from the RK, with a random 24-byte nonce (random nonces are safe at that size) and
//! the version and rendezvous id as associated data, so a hint cannot be moved to
//! another pair's channel.
//!
//! Layout: `version (1) || nonce (24) || ciphertext`, where the plaintext is
//! `sender public key (32) || issued_at_ms (u64 LE) || expires_at_ms (u64 LE) || endpoints`.

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use data_encoding::HEXLOWER;
use rand::{CryptoRng, RngCore};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::fingerprint::Fingerprint;
use crate::kdf::{derive, label};
use crate::keys::{KeyError, PublicKey, RelationshipKey, KEY_LEN};

/// Format version, the first byte of every sealed hint.
pub const HINT_VERSION: u8 = 1;

/// Largest endpoint encoding a hint carries: a few dozen candidate addresses fit,
/// and the server's per-pair storage stays small.
pub const MAX_HINT_ENDPOINTS_LEN: usize = 1024;

/// XChaCha20 nonce length; 192 bits make random nonces collision-free in practice.
const NONCE_LEN: usize = 24;

/// Poly1305 tag length.
const TAG_LEN: usize = 16;

/// Fixed part of the plaintext: sender key and two timestamps.
const HEADER_LEN: usize = KEY_LEN + 8 + 8;

/// Smallest sealed hint: version, nonce, the fixed plaintext header and the tag.
pub const MIN_SEALED_HINT_LEN: usize = 1 + NONCE_LEN + HEADER_LEN + TAG_LEN;

/// Largest sealed hint.
pub const MAX_SEALED_HINT_LEN: usize = MIN_SEALED_HINT_LEN + MAX_HINT_ENDPOINTS_LEN;

/// The id under which a device pair meets on the rendezvous server.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RendezvousId(pub [u8; 32]);

impl RendezvousId {
    /// The pair's id: BLAKE2s keyed by the RK over "tether rendezvous id v1".
    pub fn from_rk(rk: &RelationshipKey) -> Self {
        Self(*derive(rk.as_bytes(), label::RENDEZVOUS_ID, &[]))
    }

    /// Full lowercase hex, as sent to the server.
    pub fn to_hex(&self) -> String {
        HEXLOWER.encode(&self.0)
    }

    /// A short printable form for logs.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::from_digest(&self.0)
    }
}

impl fmt::Debug for RendezvousId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RendezvousId({})", self.fingerprint())
    }
}

/// An opened hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hint {
    /// The device that sealed it (one of the pair).
    pub sender: PublicKey,
    /// The sender's endpoints, in the caller's canonical encoding.
    pub endpoints: Vec<u8>,
    /// When it was sealed (sender's clock).
    pub issued_at_ms: u64,
    /// After this instant (receiver's clock) the hint is refused.
    pub expires_at_ms: u64,
}

/// Why a hint could not be sealed or opened.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HintError {
    /// The endpoint encoding exceeds [`MAX_HINT_ENDPOINTS_LEN`].
    #[error("endpoints of {len} bytes exceed the maximum of {MAX_HINT_ENDPOINTS_LEN}")]
    EndpointsTooLarge {
        /// Length given.
        len: usize,
    },
    /// The sealed hint is shorter or longer than any valid one.
    #[error("sealed hint of {len} bytes has an impossible length")]
    BadLength {
        /// Length received.
        len: usize,
    },
    /// The version byte is unknown.
    #[error("unsupported hint version {0}")]
    UnsupportedVersion(u8),
    /// Authentication failed: tampered with, or sealed under another RK.
    #[error("hint failed authentication")]
    Authentication,
    /// The authenticated sender key is invalid (only a paired device could seal it).
    #[error("hint sender key is invalid: {0}")]
    BadSender(KeyError),
    /// The hint's lifetime is over.
    #[error("hint expired at {expires_at_ms} ms (now {now_ms} ms)")]
    Expired {
        /// When it expired.
        expires_at_ms: u64,
        /// Now.
        now_ms: u64,
    },
    /// The AEAD library failed on input this crate had validated; a bug.
    #[error("hint sealing failed")]
    Seal,
}

fn hint_cipher(rk: &RelationshipKey) -> XChaCha20Poly1305 {
    let key = derive(rk.as_bytes(), label::HINT_KEY, &[]);
    XChaCha20Poly1305::new((&*key).into())
}

fn associated_data(rk: &RelationshipKey) -> [u8; 33] {
    let mut aad = [0_u8; 33];
    aad[0] = HINT_VERSION;
    aad[1..].copy_from_slice(&RendezvousId::from_rk(rk).0);
    aad
}

/// Seals this device's endpoints for its peer, valid for `ttl_ms` after `issued_at_ms`.
pub fn seal_hint<R: RngCore + CryptoRng>(
    rk: &RelationshipKey,
    sender: &PublicKey,
    endpoints: &[u8],
    issued_at_ms: u64,
    ttl_ms: u64,
    rng: &mut R,
) -> Result<Vec<u8>, HintError> {
    if endpoints.len() > MAX_HINT_ENDPOINTS_LEN {
        return Err(HintError::EndpointsTooLarge {
            len: endpoints.len(),
        });
    }
    let mut plaintext = Zeroizing::new(Vec::with_capacity(HEADER_LEN + endpoints.len()));
    plaintext.extend_from_slice(sender.as_bytes());
    plaintext.extend_from_slice(&issued_at_ms.to_le_bytes());
    plaintext.extend_from_slice(&issued_at_ms.saturating_add(ttl_ms).to_le_bytes());
    plaintext.extend_from_slice(endpoints);
    let mut nonce = [0_u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let aad = associated_data(rk);
    let ciphertext = hint_cipher(rk)
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &plaintext,
                aad: &aad,
            },
        )
        .map_err(|_| HintError::Seal)?;
    let mut sealed = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
    sealed.push(HINT_VERSION);
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(&ciphertext);
    Ok(sealed)
}

/// Opens a hint sealed by either device of the pair, refusing it once expired.
pub fn open_hint(rk: &RelationshipKey, sealed: &[u8], now_ms: u64) -> Result<Hint, HintError> {
    if !(MIN_SEALED_HINT_LEN..=MAX_SEALED_HINT_LEN).contains(&sealed.len()) {
        return Err(HintError::BadLength { len: sealed.len() });
    }
    let (version, rest) = sealed
        .split_first()
        .ok_or(HintError::BadLength { len: sealed.len() })?;
    if *version != HINT_VERSION {
        return Err(HintError::UnsupportedVersion(*version));
    }
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let aad = associated_data(rk);
    let plaintext = Zeroizing::new(
        hint_cipher(rk)
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| HintError::Authentication)?,
    );
    let (sender, rest) = plaintext.split_at(KEY_LEN);
    let (issued, rest) = rest.split_at(8);
    let (expires, endpoints) = rest.split_at(8);
    let word = |bytes: &[u8]| -> Result<u64, HintError> {
        Ok(u64::from_le_bytes(
            bytes
                .try_into()
                .map_err(|_| HintError::BadLength { len: sealed.len() })?,
        ))
    };
    let expires_at_ms = word(expires)?;
    if now_ms >= expires_at_ms {
        return Err(HintError::Expired {
            expires_at_ms,
            now_ms,
        });
    }
    Ok(Hint {
        sender: PublicKey::from_slice(sender).map_err(HintError::BadSender)?,
        endpoints: endpoints.to_vec(),
        issued_at_ms: word(issued)?,
        expires_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::StaticKeypair;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    struct Fixture {
        rng: ChaCha8Rng,
        rk: RelationshipKey,
        sender: PublicKey,
    }

    fn fixture() -> Fixture {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let rk = RelationshipKey::generate(&mut rng);
        let sender = *StaticKeypair::generate(&mut rng).public();
        Fixture { rng, rk, sender }
    }

    #[test]
    fn hint_round_trip() {
        let mut f = fixture();
        let sealed = seal_hint(
            &f.rk,
            &f.sender,
            b"udp 192.0.2.7:4433",
            1_000,
            60_000,
            &mut f.rng,
        )
        .unwrap();
        let hint = open_hint(&f.rk, &sealed, 30_000).unwrap();
        assert_eq!(
            hint,
            Hint {
                sender: f.sender,
                endpoints: b"udp 192.0.2.7:4433".to_vec(),
                issued_at_ms: 1_000,
                expires_at_ms: 61_000,
            }
        );
        // The server sees the version, a random nonce and ciphertext: the endpoints and
        // the sender key do not appear in clear.
        let window = |needle: &[u8]| sealed.windows(needle.len()).any(|w| w == needle);
        assert!(!window(b"192.0.2.7"));
        assert!(!window(f.sender.as_bytes()));
        assert_eq!(sealed.len(), MIN_SEALED_HINT_LEN + 18);
    }

    #[test]
    fn hint_expired() {
        let mut f = fixture();
        let sealed = seal_hint(&f.rk, &f.sender, b"x", 1_000, 500, &mut f.rng).unwrap();
        assert!(open_hint(&f.rk, &sealed, 1_499).is_ok());
        assert_eq!(
            open_hint(&f.rk, &sealed, 1_500),
            Err(HintError::Expired {
                expires_at_ms: 1_500,
                now_ms: 1_500
            })
        );
    }

    #[test]
    fn hint_tampered_anywhere_is_refused() {
        let mut f = fixture();
        let sealed = seal_hint(&f.rk, &f.sender, b"endpoints", 0, 1_000, &mut f.rng).unwrap();
        for index in 0..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[index] ^= 0x01;
            let result = open_hint(&f.rk, &tampered, 10);
            if index == 0 {
                assert_eq!(result, Err(HintError::UnsupportedVersion(HINT_VERSION ^ 1)));
            } else {
                assert_eq!(result, Err(HintError::Authentication), "byte {index}");
            }
        }
        assert!(matches!(
            open_hint(&f.rk, &sealed[..sealed.len() - 1], 10),
            Err(HintError::Authentication)
        ));
        assert!(matches!(
            open_hint(&f.rk, &sealed[..10], 10),
            Err(HintError::BadLength { len: 10 })
        ));
        assert!(matches!(
            open_hint(&f.rk, &[], 10),
            Err(HintError::BadLength { len: 0 })
        ));
    }

    #[test]
    fn hint_under_wrong_rk_is_refused() {
        let mut f = fixture();
        let other = RelationshipKey::generate(&mut f.rng);
        let sealed = seal_hint(&f.rk, &f.sender, b"endpoints", 0, 1_000, &mut f.rng).unwrap();
        assert_eq!(
            open_hint(&other, &sealed, 10),
            Err(HintError::Authentication)
        );
        assert_ne!(RendezvousId::from_rk(&other), RendezvousId::from_rk(&f.rk));
    }

    #[test]
    fn rendezvous_id_is_shared_by_the_pair_and_hides_the_rk() {
        let f = fixture();
        let copy = RelationshipKey::from_hex(&f.rk.to_hex()).unwrap();
        assert_eq!(RendezvousId::from_rk(&f.rk), RendezvousId::from_rk(&copy));
        assert_ne!(&RendezvousId::from_rk(&f.rk).0, f.rk.as_bytes());
    }

    #[test]
    fn hint_endpoint_size_is_bounded() {
        let mut f = fixture();
        let big = vec![0_u8; MAX_HINT_ENDPOINTS_LEN + 1];
        assert_eq!(
            seal_hint(&f.rk, &f.sender, &big, 0, 1, &mut f.rng),
            Err(HintError::EndpointsTooLarge {
                len: MAX_HINT_ENDPOINTS_LEN + 1
            })
        );
        let max = vec![7_u8; MAX_HINT_ENDPOINTS_LEN];
        let sealed = seal_hint(&f.rk, &f.sender, &max, 0, 10, &mut f.rng).unwrap();
        assert_eq!(sealed.len(), MAX_SEALED_HINT_LEN);
        assert_eq!(open_hint(&f.rk, &sealed, 0).unwrap().endpoints, max);
    }
}
