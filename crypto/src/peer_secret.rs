//! The PeerSecret of one handshake, and the KeyId that names a handshake on the wire.
//!
//! The PeerSecret authenticates pings and migration signals (see [`crate::migration`]).
//! It is derived from the handshake's *transport keys* and its handshake hash:
//! `BLAKE2s-MAC(key = k_initiator_to_responder, "tether peer-secret v1" || k_responder_to_initiator || h)`.
//! The handshake hash `h` alone would not do: it hashes only public transcript values
//! (prologue, the responder's static key, ephemeral keys, ciphertexts), so a passive
//! observer who knows the responder's public key can compute it. The transport keys
//! come from the Noise chaining key and are known to the two devices only.

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::fingerprint::Fingerprint;
use crate::kdf::{derive, label};

/// A per-handshake secret both devices hold once the handshake is committed
/// (see the crate docs for the commit rule). Wiped on drop; prints as a fingerprint.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PeerSecret([u8; 32]);

impl PeerSecret {
    /// Derives the secret from the two transport keys and the handshake hash.
    pub(crate) fn derive(
        initiator_to_responder: &[u8; 32],
        responder_to_initiator: &[u8; 32],
        handshake_hash: &[u8; 32],
    ) -> Self {
        Self(*derive(
            initiator_to_responder,
            label::PEER_SECRET,
            &[responder_to_initiator, handshake_hash],
        ))
    }

    /// A short printable digest: equal on two devices iff they hold the same secret.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::from_digest(&derive(&self.0, label::PEER_SECRET_FINGERPRINT, &[]))
    }

    /// The raw secret, for the MACs of this crate only.
    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A secret from fixed bytes, for tests of the MACs built on it.
    #[cfg(test)]
    pub(crate) fn from_bytes_for_test(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl fmt::Debug for PeerSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerSecret({})", self.fingerprint())
    }
}

/// Names the handshake generation whose keys sealed a frame, so the receiver knows
/// which keys to try. Derived from the handshake hash: public, equal on both sides.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub u32);

impl KeyId {
    /// The id of the handshake whose hash is `handshake_hash`.
    pub(crate) fn from_handshake_hash(handshake_hash: &[u8; 32]) -> Self {
        let digest = derive(handshake_hash, label::KEY_ID, &[]);
        Self(u32::from_le_bytes([
            digest[0], digest[1], digest[2], digest[3],
        ]))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({:08x})", self.0)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_depends_on_every_input_and_debug_is_a_fingerprint() {
        let base = PeerSecret::derive(&[1; 32], &[2; 32], &[3; 32]);
        for other in [
            PeerSecret::derive(&[9; 32], &[2; 32], &[3; 32]),
            PeerSecret::derive(&[1; 32], &[9; 32], &[3; 32]),
            PeerSecret::derive(&[1; 32], &[2; 32], &[9; 32]),
        ] {
            assert_ne!(other.as_bytes(), base.as_bytes());
            assert_ne!(other.fingerprint(), base.fingerprint());
        }
        let debug = format!("{base:?}");
        assert_eq!(debug, format!("PeerSecret({})", base.fingerprint()));
        assert!(!debug.contains(&data_encoding::HEXLOWER.encode(base.as_bytes())));
    }
}
