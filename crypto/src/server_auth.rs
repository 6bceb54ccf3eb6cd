//! Proof that a device owns its static X25519 key, for the relay and rendezvous server.
//!
//! The server has a static keypair too, whose public half every device is configured
//! with. On connect the server sends a fresh random 32-byte nonce; the device answers
//! with
//!
//! ```text
//! proof = BLAKE2s-MAC(key = X25519(device_private, server_public),
//!                     "tether server auth v1" || nonce || device_public || server_public)
//! ```
//!
//! and the server recomputes it with `X25519(server_private, device_public)` (the same
//! shared secret) and compares in constant time. No signature scheme is needed: only
//! the holder of the device's private key (or of the server's) can compute the key.
//! The nonce makes a recorded proof useless on another connection, provided the server
//! never repeats a nonce (draw it from a CSPRNG seeded with real entropy).
//!
//! What it does not do: it does not authenticate the server to the device, and it is
//! not bound to the transport connection. An active attacker who can impersonate the
//! server at the transport level could relay a challenge and its proof; binding the
//! proof to the connection (a TLS exporter) or pinning the server's certificate is the
//! transport's job.

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::kdf::{derive, label};
use crate::keys::{PublicKey, StaticKeypair};

/// Length of a proof: a full 256-bit BLAKE2s MAC (it is sent once per connection, so
/// there is no reason to truncate it).
pub const SERVER_AUTH_PROOF_LEN: usize = 32;

/// The static-static X25519 secret of two keypairs' halves, wiped on drop.
fn shared_key(private: &StaticKeypair, public: &PublicKey) -> Zeroizing<[u8; 32]> {
    let secret = x25519_dalek::StaticSecret::from(*private.private_bytes());
    let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(*public.as_bytes()));
    Zeroizing::new(shared.to_bytes())
}

fn proof_under(
    key: &[u8; 32],
    nonce: &[u8; 32],
    device: &PublicKey,
    server: &PublicKey,
) -> Zeroizing<[u8; SERVER_AUTH_PROOF_LEN]> {
    derive(
        key,
        label::SERVER_AUTH,
        &[nonce, device.as_bytes(), server.as_bytes()],
    )
}

/// The device's answer to the server's challenge `nonce`.
pub fn server_auth_proof(
    device: &StaticKeypair,
    server: &PublicKey,
    nonce: &[u8; 32],
) -> [u8; SERVER_AUTH_PROOF_LEN] {
    let key = shared_key(device, server);
    *proof_under(&key, nonce, device.public(), server)
}

/// The server's check of a device's proof for `nonce`, in constant time. A proof of the
/// wrong length is refused.
pub fn verify_server_auth(
    server: &StaticKeypair,
    device: &PublicKey,
    nonce: &[u8; 32],
    proof: &[u8],
) -> bool {
    if proof.len() != SERVER_AUTH_PROOF_LEN {
        return false;
    }
    let key = shared_key(server, device);
    let expected = proof_under(&key, nonce, device, server.public());
    bool::from(expected.ct_eq(proof))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    struct Fixture {
        device: StaticKeypair,
        server: StaticKeypair,
        other: StaticKeypair,
        nonce: [u8; 32],
    }

    fn fixture() -> Fixture {
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        Fixture {
            device: StaticKeypair::generate(&mut rng),
            server: StaticKeypair::generate(&mut rng),
            other: StaticKeypair::generate(&mut rng),
            nonce: [7; 32],
        }
    }

    #[test]
    fn right_proof_verifies() {
        let f = fixture();
        let proof = server_auth_proof(&f.device, f.server.public(), &f.nonce);
        assert!(verify_server_auth(
            &f.server,
            f.device.public(),
            &f.nonce,
            &proof
        ));
    }

    #[test]
    fn proof_for_another_device_key_fails() {
        let f = fixture();
        // The other device computes a proof with its own key but claims the device's id.
        let proof = server_auth_proof(&f.other, f.server.public(), &f.nonce);
        assert!(!verify_server_auth(
            &f.server,
            f.device.public(),
            &f.nonce,
            &proof
        ));
    }

    #[test]
    fn proof_for_another_server_fails() {
        let f = fixture();
        let proof = server_auth_proof(&f.device, f.other.public(), &f.nonce);
        assert!(!verify_server_auth(
            &f.server,
            f.device.public(),
            &f.nonce,
            &proof
        ));
        // And a proof for this server does not verify at another one.
        let proof = server_auth_proof(&f.device, f.server.public(), &f.nonce);
        assert!(!verify_server_auth(
            &f.other,
            f.device.public(),
            &f.nonce,
            &proof
        ));
    }

    #[test]
    fn proof_for_another_nonce_fails() {
        let f = fixture();
        let proof = server_auth_proof(&f.device, f.server.public(), &f.nonce);
        let mut other_nonce = f.nonce;
        other_nonce[31] ^= 1;
        assert!(!verify_server_auth(
            &f.server,
            f.device.public(),
            &other_nonce,
            &proof
        ));
    }

    #[test]
    fn truncated_extended_or_flipped_proof_fails() {
        let f = fixture();
        let proof = server_auth_proof(&f.device, f.server.public(), &f.nonce);
        let verify =
            |bytes: &[u8]| verify_server_auth(&f.server, f.device.public(), &f.nonce, bytes);
        assert!(!verify(&proof[..SERVER_AUTH_PROOF_LEN - 1]));
        assert!(!verify(&[]));
        let mut longer = proof.to_vec();
        longer.push(0);
        assert!(!verify(&longer));
        for index in 0..SERVER_AUTH_PROOF_LEN {
            let mut flipped = proof;
            flipped[index] ^= 0x80;
            assert!(!verify(&flipped), "byte {index}");
        }
    }

    #[test]
    fn proofs_differ_per_nonce_and_are_deterministic() {
        let f = fixture();
        let a = server_auth_proof(&f.device, f.server.public(), &[1; 32]);
        let b = server_auth_proof(&f.device, f.server.public(), &[2; 32]);
        assert_ne!(a, b);
        assert_eq!(a, server_auth_proof(&f.device, f.server.public(), &[1; 32]));
    }
}
