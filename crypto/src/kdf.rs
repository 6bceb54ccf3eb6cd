//! Domain-separated derivation: every value Tether derives from a key is a keyed
//! BLAKE2s MAC of a purpose label, so two purposes can never produce related outputs.

use blake2::digest::{KeyInit, Mac};
use blake2::Blake2sMac256;
use zeroize::Zeroizing;

/// Purpose labels. Each names what it derives and carries a version so a future
/// change of derivation cannot collide with today's values.
pub(crate) mod label {
    /// PeerSecret of one handshake (keyed by the handshake's transport keys).
    pub(crate) const PEER_SECRET: &[u8] = b"tether peer-secret v1";
    /// KeyId naming a handshake generation on the wire (from the handshake hash).
    pub(crate) const KEY_ID: &[u8] = b"tether key-id v1";
    /// Session fingerprint, equal on both sides of one handshake.
    pub(crate) const SESSION_FINGERPRINT: &[u8] = b"tether session fingerprint v1";
    /// Printable fingerprint of a PeerSecret.
    pub(crate) const PEER_SECRET_FINGERPRINT: &[u8] = b"tether peer-secret fingerprint v1";
    /// Printable fingerprint of a static public key.
    pub(crate) const PUBLIC_KEY_FINGERPRINT: &[u8] = b"tether public-key fingerprint v1";
    /// Rendezvous id of a device pair, the only thing the rendezvous server sees.
    pub(crate) const RENDEZVOUS_ID: &[u8] = b"tether rendezvous id v1";
    /// Key sealing endpoint hints of a device pair.
    pub(crate) const HINT_KEY: &[u8] = b"tether hint key v1";
    /// Key of the migration-signal MAC, derived from a PeerSecret.
    pub(crate) const MIGRATION_TAG_KEY: &[u8] = b"tether migration-tag key v1";
    /// Proof that a device owns its static key, for the relay/rendezvous server (v2:
    /// bound to the QUIC connection's exporter; v1 proofs were not).
    pub(crate) const SERVER_AUTH: &[u8] = b"tether server auth v2";
    /// Proof that the relay/rendezvous server owns its static key, for the device: the
    /// other direction of [`SERVER_AUTH`], with its own label so neither proof can be
    /// reflected as the other.
    pub(crate) const SERVER_PROOF: &[u8] = b"tether server proof v1";
    /// Key sealing the rendezvous ids a device sends with its proof, for the server
    /// only (the server has not proved its key yet when they leave).
    pub(crate) const SERVER_AUTH_IDS: &[u8] = b"tether server auth ids v1";
    /// Key of a pairing's records on the rendezvous table (from the code's secret).
    pub(crate) const PAIRING_CHANNEL: &[u8] = b"tether pairing channel v1";
    /// Master key of a pairing (from the secret, the devices' DH and both keys).
    pub(crate) const PAIRING_MASTER: &[u8] = b"tether pairing master v1";
    /// The relationship key a pairing ends with (from the pairing's master key).
    pub(crate) const PAIRING_RK: &[u8] = b"tether pairing relationship key v1";
    /// A side's confirmation tag in a pairing (from the pairing's master key).
    pub(crate) const PAIRING_CONFIRM: &[u8] = b"tether pairing confirm v1";
}

/// A keyed BLAKE2s-256 MAC over `label` followed by each of `parts`.
pub(crate) fn derive(key: &[u8; 32], label: &[u8], parts: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    let mut mac = <Blake2sMac256 as KeyInit>::new(key.into());
    mac.update(label);
    for part in parts {
        mac.update(part);
    }
    Zeroizing::new(mac.finalize().into_bytes().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_separate_outputs() {
        let key = [7_u8; 32];
        let a = derive(&key, label::PEER_SECRET, &[]);
        let b = derive(&key, label::KEY_ID, &[]);
        assert_ne!(*a, *b);
    }

    #[test]
    fn keys_separate_outputs() {
        let a = derive(&[1; 32], label::HINT_KEY, &[b"x"]);
        let b = derive(&[2; 32], label::HINT_KEY, &[b"x"]);
        assert_ne!(*a, *b);
        assert_eq!(*a, *derive(&[1; 32], label::HINT_KEY, &[b"x"]));
    }
}
