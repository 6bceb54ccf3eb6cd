//! Long-term keys: a device's static X25519 keypair, the peer public keys it trusts,
//! and the relationship key (RK) a paired device pair shares.
//!
//! Public keys are validated when constructed: the all-zero key, keys of small order
//! (whose Diffie-Hellman output is predictable) and non-canonical encodings (two byte
//! strings naming one point, so one device could carry two ids) are refused, so an
//! invalid [`PublicKey`] cannot exist. The on-disk format of a static key is in
//! [`crate::key_file`].

use std::fmt;

use data_encoding::HEXLOWER;
use rand::{CryptoRng, RngCore};
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::fingerprint::Fingerprint;
use crate::kdf::{derive, label};

/// Length of X25519 keys and of the relationship key, in bytes (fixed by X25519).
pub const KEY_LEN: usize = 32;

/// Why bytes were refused as a key.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// The text is not lowercase hex.
    #[error("key is not lowercase hex")]
    BadHex,
    /// The key has the wrong length.
    #[error("key has {found} bytes, expected {expected}")]
    BadLength {
        /// Required length in bytes.
        expected: usize,
        /// Length found.
        found: usize,
    },
    /// The all-zero key (an unset or wiped key, never a real one).
    #[error("key is all zeros")]
    AllZero,
    /// A public key of small order: Diffie-Hellman with it yields a value an attacker knows.
    #[error("public key is a low-order point")]
    LowOrder,
    /// A public key encoding that is not the canonical one of its point.
    #[error("public key is not canonically encoded")]
    NonCanonical,
}

/// The scalar used to probe a public key for small order. Any scalar works: X25519
/// clamps it to a multiple of the cofactor, so the output is all zeros exactly when the
/// point lies in the small-order subgroup, whatever the other bits are.
const LOW_ORDER_PROBE_SCALAR: [u8; KEY_LEN] = [0x42; KEY_LEN];

/// A device's static X25519 public key: its identity (DeviceId) and its rank in the
/// PeerSecret tie-break (bytewise order, see the crate docs).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey([u8; KEY_LEN]);

impl PublicKey {
    /// Validates `bytes` as a peer's public key (see the module docs for what is refused).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Result<Self, KeyError> {
        if bytes.iter().all(|b| *b == 0) {
            return Err(KeyError::AllZero);
        }
        if is_non_canonical(&bytes) {
            return Err(KeyError::NonCanonical);
        }
        let probe = x25519_dalek::StaticSecret::from(LOW_ORDER_PROBE_SCALAR);
        let shared = probe.diffie_hellman(&x25519_dalek::PublicKey::from(bytes));
        if !shared.was_contributory() {
            return Err(KeyError::LowOrder);
        }
        Ok(Self(bytes))
    }

    /// Validates a public key given as a byte slice (e.g. from snow or the wire).
    pub fn from_slice(bytes: &[u8]) -> Result<Self, KeyError> {
        let array: [u8; KEY_LEN] = bytes.try_into().map_err(|_| KeyError::BadLength {
            expected: KEY_LEN,
            found: bytes.len(),
        })?;
        Self::from_bytes(array)
    }

    /// Parses and validates 64 lowercase hex characters (config files, the CLI).
    pub fn from_hex(hex: &str) -> Result<Self, KeyError> {
        let mut bytes = [0_u8; KEY_LEN];
        decode_hex_32(hex, &mut bytes)?;
        Self::from_bytes(bytes)
    }

    /// The public key computed from a private scalar. A clamped scalar times the base
    /// point lies in the prime-order subgroup and is never the identity, and
    /// x25519-dalek encodes it canonically, so no validation is needed.
    fn derived_from(secret: &x25519_dalek::StaticSecret) -> Self {
        Self(x25519_dalek::PublicKey::from(secret).to_bytes())
    }

    /// The 32 raw bytes (what goes on the wire and into Noise).
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The full key as lowercase hex, for config files. Logs use [`Self::fingerprint`].
    pub fn to_hex(&self) -> String {
        HEXLOWER.encode(&self.0)
    }

    /// A short printable digest of the key.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::from_digest(&derive(&self.0, label::PUBLIC_KEY_FINGERPRINT, &[]))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

/// True when the little-endian value is at least p = 2^255 - 19 (bit 255 set, or
/// p..2^255-1): such bytes name the same point as a smaller canonical encoding.
fn is_non_canonical(bytes: &[u8; KEY_LEN]) -> bool {
    if bytes[31] & 0x80 != 0 {
        return true;
    }
    bytes[31] == 0x7f && bytes[1..31].iter().all(|b| *b == 0xff) && bytes[0] >= 0xed
}

/// Decodes exactly 32 bytes of lowercase hex into `out` without a heap copy (the
/// input may be a private key).
pub(crate) fn decode_hex_32(hex: &str, out: &mut [u8; KEY_LEN]) -> Result<(), KeyError> {
    let is_lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if !hex.bytes().all(is_lower_hex) || hex.len() % 2 != 0 {
        return Err(KeyError::BadHex);
    }
    if hex.len() != 2 * KEY_LEN {
        return Err(KeyError::BadLength {
            expected: KEY_LEN,
            found: hex.len() / 2,
        });
    }
    HEXLOWER
        .decode_mut(hex.as_bytes(), out)
        .map_err(|_| KeyError::BadHex)?;
    Ok(())
}

/// A device's static X25519 keypair. The private half is wiped on drop and never printed.
#[derive(Clone)]
pub struct StaticKeypair {
    private: Zeroizing<[u8; KEY_LEN]>,
    public: PublicKey,
}

impl StaticKeypair {
    /// Draws a new keypair from `rng`.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let secret = x25519_dalek::StaticSecret::random_from_rng(rng);
        Self::from_secret(secret)
    }

    /// Rebuilds a keypair from its private half (e.g. read from a key file).
    pub fn from_private_bytes(private: [u8; KEY_LEN]) -> Result<Self, KeyError> {
        let private = Zeroizing::new(private);
        if private.iter().all(|b| *b == 0) {
            return Err(KeyError::AllZero);
        }
        Ok(Self::from_secret(x25519_dalek::StaticSecret::from(
            *private,
        )))
    }

    fn from_secret(secret: x25519_dalek::StaticSecret) -> Self {
        Self {
            public: PublicKey::derived_from(&secret),
            private: Zeroizing::new(secret.to_bytes()),
        }
    }

    /// The public half: this device's identity.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// The private half, for Noise and the key file only.
    pub(crate) fn private_bytes(&self) -> &[u8; KEY_LEN] {
        &self.private
    }
}

impl fmt::Debug for StaticKeypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticKeypair")
            .field("public", &self.public.fingerprint())
            .field("private", &format_args!("<redacted>"))
            .finish()
    }
}

/// The relationship key (RK): 32 random bytes shared by one pair of paired devices.
/// It is the Noise PSK (an unpaired device cannot finish a handshake) and the root of
/// the pair's rendezvous id and hint key. Wiped on drop, never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct RelationshipKey([u8; KEY_LEN]);

impl RelationshipKey {
    /// Draws a new RK at pairing time.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut key = Self([0; KEY_LEN]);
        rng.fill_bytes(&mut key.0);
        key
    }

    /// Wraps raw bytes; the all-zero key is refused (an unset RK, never a pairing result).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Result<Self, KeyError> {
        let key = Self(bytes);
        if key.0.iter().all(|b| *b == 0) {
            return Err(KeyError::AllZero);
        }
        Ok(key)
    }

    /// Parses 64 lowercase hex characters (how pairing exports the RK).
    pub fn from_hex(hex: &str) -> Result<Self, KeyError> {
        let mut key = Self([0; KEY_LEN]);
        decode_hex_32(hex, &mut key.0)?;
        if key.0.iter().all(|b| *b == 0) {
            return Err(KeyError::AllZero);
        }
        Ok(key)
    }

    /// A key derived inside this crate: a BLAKE2s output, never all zeros in practice.
    pub(crate) fn from_derived(bytes: &[u8; KEY_LEN]) -> Self {
        Self(*bytes)
    }

    /// The key as lowercase hex, in a buffer wiped on drop (for pairing export only).
    pub fn to_hex(&self) -> Zeroizing<String> {
        let mut out = Zeroizing::new(String::with_capacity(2 * KEY_LEN));
        HEXLOWER.encode_append(&self.0, &mut out);
        out
    }

    /// The raw key, for Noise and derivations inside this crate.
    pub(crate) fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for RelationshipKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RelationshipKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// Low-order points of Curve25519 (from the X25519 small-subgroup lists used by
    /// libsodium and WireGuard), in canonical encoding.
    const LOW_ORDER: [[u8; 32]; 4] = [
        // u = 1.
        [
            1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0,
        ],
        // Order 8.
        [
            0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f,
            0xc4, 0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16,
            0x5f, 0x49, 0xb8, 0x00,
        ],
        // Order 8.
        [
            0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83,
            0xef, 0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd,
            0xd0, 0x9f, 0x11, 0x57,
        ],
        // p - 1: order 2.
        [
            0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xff, 0x7f,
        ],
    ];

    #[test]
    fn refuses_all_zero_public_key() {
        assert_eq!(PublicKey::from_bytes([0; 32]), Err(KeyError::AllZero));
    }

    #[test]
    fn refuses_low_order_public_keys() {
        for point in LOW_ORDER {
            assert_eq!(
                PublicKey::from_bytes(point),
                Err(KeyError::LowOrder),
                "{point:02x?}"
            );
        }
    }

    #[test]
    fn refuses_non_canonical_public_keys() {
        // p itself (equals 0) and p + 1 (equals 1), and a valid key with bit 255 set.
        let mut p = [0xff_u8; 32];
        p[0] = 0xed;
        p[31] = 0x7f;
        assert_eq!(PublicKey::from_bytes(p), Err(KeyError::NonCanonical));
        p[0] = 0xee;
        assert_eq!(PublicKey::from_bytes(p), Err(KeyError::NonCanonical));
        let good = *StaticKeypair::generate(&mut ChaCha8Rng::seed_from_u64(1))
            .public()
            .as_bytes();
        let mut high = good;
        high[31] |= 0x80;
        assert_eq!(PublicKey::from_bytes(high), Err(KeyError::NonCanonical));
        assert!(PublicKey::from_bytes(good).is_ok());
    }

    #[test]
    fn generated_public_keys_validate_and_round_trip_hex() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..32 {
            let pair = StaticKeypair::generate(&mut rng);
            let again = PublicKey::from_hex(&pair.public().to_hex()).unwrap();
            assert_eq!(&again, pair.public());
        }
    }

    #[test]
    fn keypair_from_private_bytes_derives_the_same_public_key() {
        let pair = StaticKeypair::generate(&mut ChaCha8Rng::seed_from_u64(3));
        let again = StaticKeypair::from_private_bytes(*pair.private_bytes()).unwrap();
        assert_eq!(again.public(), pair.public());
        assert_eq!(
            StaticKeypair::from_private_bytes([0; 32]).unwrap_err(),
            KeyError::AllZero
        );
    }

    #[test]
    fn hex_parsing_rejects_garbage() {
        assert_eq!(PublicKey::from_hex("zz"), Err(KeyError::BadHex));
        assert!(matches!(
            PublicKey::from_hex("abcd"),
            Err(KeyError::BadLength { found: 2, .. })
        ));
        let upper = "AB".repeat(32);
        assert_eq!(PublicKey::from_hex(&upper), Err(KeyError::BadHex));
        assert_eq!(
            RelationshipKey::from_hex(&"00".repeat(32)).unwrap_err(),
            KeyError::AllZero
        );
    }

    #[test]
    fn debug_output_never_contains_secrets() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let pair = StaticKeypair::generate(&mut rng);
        let rk = RelationshipKey::generate(&mut rng);
        let private_hex = HEXLOWER.encode(pair.private_bytes());
        let pair_debug = format!("{pair:?}");
        assert!(!pair_debug.contains(&private_hex));
        assert!(pair_debug.contains("<redacted>"));
        assert!(pair_debug.contains(&pair.public().fingerprint().to_hex()));
        let rk_debug = format!("{rk:?}");
        assert_eq!(rk_debug, "RelationshipKey(<redacted>)");
        assert!(!rk_debug.contains(rk.to_hex().as_str()));
        let rk_again = RelationshipKey::from_hex(&rk.to_hex()).unwrap();
        assert_eq!(rk_again.as_bytes(), rk.as_bytes());
    }
}
