//! Bridges the caller's RNG into snow, which otherwise draws from the operating system.
//!
//! snow asks its crypto resolver for a `Random` when a handshake is built. The
//! resolver here hands it a ChaCha20 stream seeded from the caller's RNG, so a seeded
//! test RNG makes the whole handshake (ephemeral keys included) deterministic, and no
//! global RNG is ever read. The cipher is ring's (assembly, with the CPU's vector
//! instructions); the curve and the hash are snow's default pure-Rust ones (ring has
//! no BLAKE2s and no raw X25519).

use rand::{CryptoRng, RngCore};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{BoxedCryptoResolver, CryptoResolver, DefaultResolver, RingResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use zeroize::Zeroizing;

/// A snow resolver whose RNG is a ChaCha20 stream seeded by the caller.
struct SeededResolver {
    seed: Zeroizing<[u8; 32]>,
}

/// snow's view of the seeded stream.
struct SnowRng(ChaCha20Rng);

impl Random for SnowRng {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SnowRng(ChaCha20Rng::from_seed(*self.seed))))
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        RingResolver
            .resolve_cipher(choice)
            .or_else(|| DefaultResolver.resolve_cipher(choice))
    }
}

/// A resolver whose randomness is drawn from `rng` (32 bytes are taken now).
pub(crate) fn resolver_from<R: RngCore + CryptoRng>(rng: &mut R) -> BoxedCryptoResolver {
    let mut seed = Zeroizing::new([0_u8; 32]);
    rng.fill_bytes(seed.as_mut());
    Box::new(SeededResolver { seed })
}
