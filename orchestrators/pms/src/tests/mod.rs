//! Unit tests of the rendezvous table and client cores, with transition traces.

mod client;
mod table;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tether_crypto::{RelationshipKey, StaticKeypair};
use tether_protocol::DeviceId;

/// Deterministic keys: devices p1, p2 (paired, sharing `rk`) and p3.
pub(crate) struct Keys {
    pub(crate) devices: Vec<StaticKeypair>,
    pub(crate) rk: RelationshipKey,
    pub(crate) rng: ChaCha8Rng,
}

impl Keys {
    pub(crate) fn new() -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(77);
        let devices = (0..3).map(|_| StaticKeypair::generate(&mut rng)).collect();
        let rk = RelationshipKey::generate(&mut rng);
        Self { devices, rk, rng }
    }

    /// Device `n` (1-based, as its alias pN).
    pub(crate) fn device(&self, n: usize) -> &StaticKeypair {
        &self.devices[n - 1]
    }

    pub(crate) fn id(&self, n: usize) -> DeviceId {
        DeviceId(*self.device(n).public().as_bytes())
    }

    pub(crate) fn alias(&self, id: &DeviceId) -> String {
        (1..=self.devices.len())
            .find(|n| self.id(*n) == *id)
            .map_or_else(|| "p?".into(), |n| format!("p{n}"))
    }
}
