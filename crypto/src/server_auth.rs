//! Mutual proof of static keys between a device and the relay/rendezvous server, bound
//! to the transport connection they travel on.
//!
//! Both sides have a static X25519 keypair; every device is configured with (pins) the
//! server's public key. Both ends of the QUIC connection derive the same 32-byte
//! *channel binding* from its TLS 1.3 exporter (RFC 8446 §7.5): unique per connection,
//! and different on the two connections of a man in the middle who terminates TLS on
//! each side. On connect the server sends a fresh random 32-byte nonce (and names its
//! public key); the device answers with
//!
//! ```text
//! key   = X25519(device_private, server_public) = X25519(server_private, device_public)
//! proof = BLAKE2s-MAC(key, "tether server auth v2"  || nonce || binding || device_public || server_public)
//! ```
//!
//! and the server, having checked it, answers with its own proof
//!
//! ```text
//! server proof = BLAKE2s-MAC(key, "tether server proof v1" || nonce || binding || device_public || server_public)
//! ```
//!
//! which the device checks against the pinned key before it trusts anything the
//! server says. Only a holder of one of the two private keys can compute `key`, so no
//! signature scheme is needed; the distinct labels keep one direction's proof from
//! being reflected as the other's. The nonce makes a recorded proof useless on a later
//! connection (provided the server draws it from a CSPRNG with real entropy), and the
//! binding makes a proof useless on any other connection: a man in the middle that
//! relays the device's proof to the genuine server presents it on a connection with
//! another binding, where it does not verify, and cannot produce the server's proof
//! for the device's connection at all.
//!
//! With its proof the device may send the rendezvous ids of its pairs, so that the
//! server can introduce it to a connected partner as soon as it is authenticated
//! (instead of after its first publish, one round trip later). The server has not
//! proved its key at that point, so the ids are sealed (XChaCha20-Poly1305) under
//!
//! ```text
//! ids key = BLAKE2s-MAC(key, "tether server auth ids v1" || nonce || binding || device_public || server_public)
//! ```
//!
//! which only the two holders of `key` can compute, for this connection only: a man in
//! the middle learns how many ids there are, not which.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::kdf::{derive, label};
use crate::keys::{PublicKey, StaticKeypair};

/// Length of a proof in either direction: a full 256-bit BLAKE2s MAC (it is sent once
/// per connection, so there is no reason to truncate it).
pub const SERVER_AUTH_PROOF_LEN: usize = 32;

/// Length of a connection's channel binding: 32 bytes of TLS exporter output, the
/// security level of the X25519 keys it is combined with.
pub const CHANNEL_BINDING_LEN: usize = 32;

/// The static-static X25519 secret of two keypairs' halves, wiped on drop.
fn shared_key(private: &StaticKeypair, public: &PublicKey) -> Zeroizing<[u8; 32]> {
    let secret = x25519_dalek::StaticSecret::from(*private.private_bytes());
    let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(*public.as_bytes()));
    Zeroizing::new(shared.to_bytes())
}

fn proof_under(
    key: &[u8; 32],
    purpose: &[u8],
    nonce: &[u8; 32],
    binding: &[u8; CHANNEL_BINDING_LEN],
    device: &PublicKey,
    server: &PublicKey,
) -> Zeroizing<[u8; SERVER_AUTH_PROOF_LEN]> {
    derive(
        key,
        purpose,
        &[nonce, binding, device.as_bytes(), server.as_bytes()],
    )
}

fn equal(expected: &[u8; SERVER_AUTH_PROOF_LEN], proof: &[u8]) -> bool {
    proof.len() == SERVER_AUTH_PROOF_LEN && bool::from(expected.ct_eq(proof))
}

/// The device's answer to the server's challenge `nonce` on the connection whose
/// channel binding is `binding`.
pub fn server_auth_proof(
    device: &StaticKeypair,
    server: &PublicKey,
    nonce: &[u8; 32],
    binding: &[u8; CHANNEL_BINDING_LEN],
) -> [u8; SERVER_AUTH_PROOF_LEN] {
    let key = shared_key(device, server);
    *proof_under(
        &key,
        label::SERVER_AUTH,
        nonce,
        binding,
        device.public(),
        server,
    )
}

/// The server's check of a device's proof for `nonce` on the connection whose channel
/// binding is `binding`, in constant time. A proof of the wrong length is refused.
pub fn verify_server_auth(
    server: &StaticKeypair,
    device: &PublicKey,
    nonce: &[u8; 32],
    binding: &[u8; CHANNEL_BINDING_LEN],
    proof: &[u8],
) -> bool {
    let key = shared_key(server, device);
    let expected = proof_under(
        &key,
        label::SERVER_AUTH,
        nonce,
        binding,
        device,
        server.public(),
    );
    equal(&expected, proof)
}

/// The server's proof of its static key to `device`, for the challenge `nonce` on the
/// connection whose channel binding is `binding` (sent in `Welcome`).
pub fn server_proof(
    server: &StaticKeypair,
    device: &PublicKey,
    nonce: &[u8; 32],
    binding: &[u8; CHANNEL_BINDING_LEN],
) -> [u8; SERVER_AUTH_PROOF_LEN] {
    let key = shared_key(server, device);
    *proof_under(
        &key,
        label::SERVER_PROOF,
        nonce,
        binding,
        device,
        server.public(),
    )
}

/// The device's check, in constant time, that the server on the connection whose
/// channel binding is `binding` holds the private half of `server` (the pinned key).
/// A proof of the wrong length is refused.
pub fn verify_server_proof(
    device: &StaticKeypair,
    server: &PublicKey,
    nonce: &[u8; 32],
    binding: &[u8; CHANNEL_BINDING_LEN],
    proof: &[u8],
) -> bool {
    let key = shared_key(device, server);
    let expected = proof_under(
        &key,
        label::SERVER_PROOF,
        nonce,
        binding,
        device.public(),
        server,
    );
    equal(&expected, proof)
}

/// Length of a rendezvous id, the unit of [`seal_rendezvous_ids`].
pub const RENDEZVOUS_ID_LEN: usize = 32;

/// Bytes the seal adds to the ids (the AEAD tag).
pub const SEALED_IDS_OVERHEAD: usize = 16;

/// Why sealed rendezvous ids were not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealedIdsError {
    /// More ids than the caller accepts, or a length that is not a whole number of ids.
    #[error("sealed rendezvous ids: bad length {0}")]
    BadLength(usize),
    /// Not sealed for this server, device and connection (or altered on the way).
    #[error("sealed rendezvous ids do not open")]
    DoNotOpen,
}

fn ids_cipher(
    key: &[u8; 32],
    nonce: &[u8; 32],
    binding: &[u8; CHANNEL_BINDING_LEN],
    device: &PublicKey,
    server: &PublicKey,
) -> XChaCha20Poly1305 {
    let ids_key = proof_under(key, label::SERVER_AUTH_IDS, nonce, binding, device, server);
    XChaCha20Poly1305::new((&*ids_key).into())
}

/// The device's rendezvous ids sealed for the server it answers on the connection
/// whose channel binding is `binding` (sent next to its proof). The key is used for
/// this one message, so the AEAD nonce is fixed.
pub fn seal_rendezvous_ids(
    device: &StaticKeypair,
    server: &PublicKey,
    nonce: &[u8; 32],
    binding: &[u8; CHANNEL_BINDING_LEN],
    ids: &[[u8; RENDEZVOUS_ID_LEN]],
) -> Vec<u8> {
    let key = shared_key(device, server);
    let plain: Vec<u8> = ids.concat();
    ids_cipher(&key, nonce, binding, device.public(), server)
        .encrypt(&XNonce::default(), Payload::from(plain.as_slice()))
        // Encryption fails only beyond the cipher's length limit (256 GiB).
        .unwrap_or_default()
}

/// The server's opening of [`seal_rendezvous_ids`]: at most `max_ids` ids, checked
/// before anything is decrypted.
pub fn open_rendezvous_ids(
    server: &StaticKeypair,
    device: &PublicKey,
    nonce: &[u8; 32],
    binding: &[u8; CHANNEL_BINDING_LEN],
    sealed: &[u8],
    max_ids: usize,
) -> Result<Vec<[u8; RENDEZVOUS_ID_LEN]>, SealedIdsError> {
    let plain_len = sealed
        .len()
        .checked_sub(SEALED_IDS_OVERHEAD)
        .filter(|len| len % RENDEZVOUS_ID_LEN == 0 && len / RENDEZVOUS_ID_LEN <= max_ids)
        .ok_or(SealedIdsError::BadLength(sealed.len()))?;
    let key = shared_key(server, device);
    let plain = ids_cipher(&key, nonce, binding, device, server.public())
        .decrypt(&XNonce::default(), Payload::from(sealed))
        .map_err(|_| SealedIdsError::DoNotOpen)?;
    debug_assert_eq!(plain.len(), plain_len);
    Ok(plain
        .chunks_exact(RENDEZVOUS_ID_LEN)
        .map(|chunk| {
            let mut id = [0; RENDEZVOUS_ID_LEN];
            id.copy_from_slice(chunk);
            id
        })
        .collect())
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
        binding: [u8; CHANNEL_BINDING_LEN],
    }

    fn fixture() -> Fixture {
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        Fixture {
            device: StaticKeypair::generate(&mut rng),
            server: StaticKeypair::generate(&mut rng),
            other: StaticKeypair::generate(&mut rng),
            nonce: [7; 32],
            binding: [9; CHANNEL_BINDING_LEN],
        }
    }

    #[test]
    fn right_proof_verifies() {
        let f = fixture();
        let proof = server_auth_proof(&f.device, f.server.public(), &f.nonce, &f.binding);
        assert!(verify_server_auth(
            &f.server,
            f.device.public(),
            &f.nonce,
            &f.binding,
            &proof
        ));
    }

    #[test]
    fn proof_for_another_device_key_fails() {
        let f = fixture();
        // The other device computes a proof with its own key but claims the device's id.
        let proof = server_auth_proof(&f.other, f.server.public(), &f.nonce, &f.binding);
        assert!(!verify_server_auth(
            &f.server,
            f.device.public(),
            &f.nonce,
            &f.binding,
            &proof
        ));
    }

    #[test]
    fn proof_for_another_server_fails() {
        let f = fixture();
        let proof = server_auth_proof(&f.device, f.other.public(), &f.nonce, &f.binding);
        assert!(!verify_server_auth(
            &f.server,
            f.device.public(),
            &f.nonce,
            &f.binding,
            &proof
        ));
        // And a proof for this server does not verify at another one.
        let proof = server_auth_proof(&f.device, f.server.public(), &f.nonce, &f.binding);
        assert!(!verify_server_auth(
            &f.other,
            f.device.public(),
            &f.nonce,
            &f.binding,
            &proof
        ));
    }

    #[test]
    fn proof_for_another_nonce_fails() {
        let f = fixture();
        let proof = server_auth_proof(&f.device, f.server.public(), &f.nonce, &f.binding);
        let mut other_nonce = f.nonce;
        other_nonce[31] ^= 1;
        assert!(!verify_server_auth(
            &f.server,
            f.device.public(),
            &other_nonce,
            &f.binding,
            &proof
        ));
    }

    #[test]
    fn truncated_extended_or_flipped_proof_fails() {
        let f = fixture();
        let proof = server_auth_proof(&f.device, f.server.public(), &f.nonce, &f.binding);
        let verify = |bytes: &[u8]| {
            verify_server_auth(&f.server, f.device.public(), &f.nonce, &f.binding, bytes)
        };
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
        let a = server_auth_proof(&f.device, f.server.public(), &[1; 32], &f.binding);
        let b = server_auth_proof(&f.device, f.server.public(), &[2; 32], &f.binding);
        assert_ne!(a, b);
        assert_eq!(
            a,
            server_auth_proof(&f.device, f.server.public(), &[1; 32], &f.binding)
        );
    }

    #[test]
    fn device_proof_bound_to_another_connection_fails() {
        // A man in the middle relays the device's proof (made for its connection to
        // the device) to the server over its own connection: another binding.
        let f = fixture();
        let proof = server_auth_proof(&f.device, f.server.public(), &f.nonce, &f.binding);
        let mut other_binding = f.binding;
        other_binding[0] ^= 1;
        assert!(!verify_server_auth(
            &f.server,
            f.device.public(),
            &f.nonce,
            &other_binding,
            &proof
        ));
    }

    #[test]
    fn server_proof_verifies_with_the_pinned_key_on_the_same_connection() {
        let f = fixture();
        let proof = server_proof(&f.server, f.device.public(), &f.nonce, &f.binding);
        assert!(verify_server_proof(
            &f.device,
            f.server.public(),
            &f.nonce,
            &f.binding,
            &proof
        ));
    }

    #[test]
    fn server_proof_bound_to_another_connection_fails() {
        let f = fixture();
        let mut other_binding = f.binding;
        other_binding[31] ^= 1;
        let proof = server_proof(&f.server, f.device.public(), &f.nonce, &other_binding);
        assert!(!verify_server_proof(
            &f.device,
            f.server.public(),
            &f.nonce,
            &f.binding,
            &proof
        ));
    }

    #[test]
    fn server_proof_by_another_key_fails() {
        // A relay with another key (or a fake one) cannot prove the pinned key.
        let f = fixture();
        let proof = server_proof(&f.other, f.device.public(), &f.nonce, &f.binding);
        assert!(!verify_server_proof(
            &f.device,
            f.server.public(),
            &f.nonce,
            &f.binding,
            &proof
        ));
        // Nor does a genuine proof for another device verify here.
        let proof = server_proof(&f.server, f.other.public(), &f.nonce, &f.binding);
        assert!(!verify_server_proof(
            &f.device,
            f.server.public(),
            &f.nonce,
            &f.binding,
            &proof
        ));
    }

    #[test]
    fn proofs_cannot_be_reflected_between_directions() {
        let f = fixture();
        let device_proof = server_auth_proof(&f.device, f.server.public(), &f.nonce, &f.binding);
        assert!(!verify_server_proof(
            &f.device,
            f.server.public(),
            &f.nonce,
            &f.binding,
            &device_proof
        ));
        let relay_proof = server_proof(&f.server, f.device.public(), &f.nonce, &f.binding);
        assert!(!verify_server_auth(
            &f.server,
            f.device.public(),
            &f.nonce,
            &f.binding,
            &relay_proof
        ));
        assert!(!verify_server_proof(
            &f.device,
            f.server.public(),
            &f.nonce,
            &f.binding,
            &relay_proof[..SERVER_AUTH_PROOF_LEN - 1]
        ));
    }

    #[test]
    fn sealed_ids_open_only_at_the_server_for_this_device_and_connection() {
        let f = fixture();
        let ids = [[1; 32], [2; 32], [3; 32]];
        let sealed = seal_rendezvous_ids(&f.device, f.server.public(), &f.nonce, &f.binding, &ids);
        assert_eq!(sealed.len(), 3 * RENDEZVOUS_ID_LEN + SEALED_IDS_OVERHEAD);
        let open = |server: &StaticKeypair, device: &PublicKey, binding, sealed: &[u8], max| {
            open_rendezvous_ids(server, device, &f.nonce, binding, sealed, max)
        };
        assert_eq!(
            open(&f.server, f.device.public(), &f.binding, &sealed, 64),
            Ok(ids.to_vec())
        );
        // Another server (a man in the middle), another claimed device, another
        // connection: nothing opens.
        let other_binding = [8; CHANNEL_BINDING_LEN];
        for (server, device, binding) in [
            (&f.other, f.device.public(), &f.binding),
            (&f.server, f.other.public(), &f.binding),
            (&f.server, f.device.public(), &other_binding),
        ] {
            assert_eq!(
                open(server, device, binding, &sealed, 64),
                Err(SealedIdsError::DoNotOpen)
            );
        }
        let mut flipped = sealed.clone();
        flipped[5] ^= 1;
        assert_eq!(
            open(&f.server, f.device.public(), &f.binding, &flipped, 64),
            Err(SealedIdsError::DoNotOpen)
        );
    }

    #[test]
    fn sealed_ids_beyond_the_bound_or_cut_are_refused_unopened() {
        let f = fixture();
        let ids = [[1; 32], [2; 32], [3; 32]];
        let sealed = seal_rendezvous_ids(&f.device, f.server.public(), &f.nonce, &f.binding, &ids);
        let open = |sealed: &[u8], max| {
            open_rendezvous_ids(
                &f.server,
                f.device.public(),
                &f.nonce,
                &f.binding,
                sealed,
                max,
            )
        };
        assert_eq!(
            open(&sealed, 2),
            Err(SealedIdsError::BadLength(sealed.len()))
        );
        assert_eq!(open(&sealed[..20], 64), Err(SealedIdsError::BadLength(20)));
        assert_eq!(open(&[], 64), Err(SealedIdsError::BadLength(0)));
        let none = seal_rendezvous_ids(&f.device, f.server.public(), &f.nonce, &f.binding, &[]);
        assert_eq!(open(&none, 64), Ok(Vec::new()));
    }
}
