//! Pairing two devices with a one-time code, without either private key leaving its
//! device.
//!
//! The inviting device makes a [`PairingCode`]: its public key, the relay it meets the
//! other device through (address and public key), and a fresh 32-byte
//! [`PairingSecret`]. The code travels by hand (copy and paste, a message between the
//! two people); the other device decodes it and both meet on the relay's rendezvous
//! table under an id derived from the secret ([`PairingSecret::channel_key`]), each
//! publishing records sealed under a key derived from it, so the relay sees an id, two
//! authenticated device keys and ciphertext, and can neither read nor forge a record.
//!
//! # The relationship key never travels
//! Both devices derive the pair's relationship key from the secret, the X25519
//! Diffie-Hellman of their static keys and both public keys, in an order-independent
//! way ([`PairingKeys::derive`]). Only the holders of the two private keys can compute
//! it; someone who later reads the code (a chat log, a screenshot) still cannot.
//! Each side proves it holds the same keys with a confirmation tag of its role
//! ([`PairingKeys::tag`]) before the other side writes anything.
//!
//! # Code format (version 1)
//! `tether1-` followed by lowercase RFC 4648 base32 without padding of
//! `inviter public key (32) || relay public key (32) || secret (32) || address length
//! (1) || relay address (UTF-8, host:port) || checksum (4)`, where the checksum is the
//! first 4 bytes of BLAKE2s-256 over everything before it. Decoding ignores white space
//! and case, so a code broken over lines or retyped in capitals still reads; a changed
//! character fails the checksum, so a garbled code is an error at once rather than a
//! pairing that waits in vain.

use std::fmt;

use blake2::{Blake2s256, Digest};
use data_encoding::BASE32_NOPAD;
use rand::{CryptoRng, RngCore};
use subtle::ConstantTimeEq;
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::kdf::{derive, label};
use crate::keys::{KeyError, PublicKey, RelationshipKey, StaticKeypair, KEY_LEN};

/// The code format this build writes and reads.
pub const CODE_VERSION: u32 = 1;

/// What every code starts with: `tether`, the version, `-`.
pub const CODE_PREFIX: &str = "tether1-";

/// Longest relay address a code carries, in bytes (a DNS name is at most 253
/// characters, plus `:port`).
pub const MAX_RELAY_ADDR_LEN: usize = 255;

/// Length of the checksum at the end of a code.
const CHECKSUM_LEN: usize = 4;

/// Fixed part of a code's bytes: three keys, the address length, the checksum.
const FIXED_LEN: usize = 3 * KEY_LEN + 1 + CHECKSUM_LEN;

/// Length of a confirmation tag.
pub const TAG_LEN: usize = 32;

/// The one-time secret of an invitation: 32 bytes from the OS's RNG. Wiped on drop,
/// never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PairingSecret([u8; KEY_LEN]);

impl PairingSecret {
    /// Draws a fresh secret.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut secret = Self([0; KEY_LEN]);
        rng.fill_bytes(&mut secret.0);
        secret
    }

    /// Wraps raw bytes; all zeros is refused (never drawn from an RNG).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Result<Self, KeyError> {
        let secret = Self(bytes);
        if secret.0.iter().all(|b| *b == 0) {
            return Err(KeyError::AllZero);
        }
        Ok(secret)
    }

    /// The key both devices seal their pairing records under, used as a relationship key
    /// is for endpoint hints: its [`crate::RendezvousId`] is where they meet, and
    /// [`crate::seal_hint`] / [`crate::open_hint`] seal and open the records with the
    /// sender's public key inside. Not the pair's relationship key.
    pub fn channel_key(&self) -> RelationshipKey {
        RelationshipKey::from_derived(&derive(&self.0, label::PAIRING_CHANNEL, &[]))
    }
}

impl fmt::Debug for PairingSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PairingSecret(<redacted>)")
    }
}

/// Which side of a pairing a device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The device that made the code (`tether invite`).
    Inviter,
    /// The device that was given the code (`tether accept`).
    Acceptor,
}

/// Why [`PairingKeys::derive`] refused.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum DeriveError {
    /// Both keys are the same: a device cannot pair with itself.
    #[error("a device cannot pair with itself")]
    SameKey,
    /// The Diffie-Hellman output is all zeros (a small-order peer key).
    #[error("the peer's key gives no shared secret")]
    NotContributory,
}

/// What one side of a pairing derives once it knows the other side's public key.
pub struct PairingKeys {
    rk: RelationshipKey,
    master: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for PairingKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PairingKeys(<redacted>)")
    }
}

impl PairingKeys {
    /// Derives the pair's keys on the device holding `own`, paired with `peer`:
    /// a master key `BLAKE2s-MAC(secret, label || DH(own, peer) || lower key || higher
    /// key)`, the relationship key and the confirmation tags from it. Both devices get
    /// the same values; another secret, or another key on either side, gives others.
    pub fn derive(
        secret: &PairingSecret,
        own: &StaticKeypair,
        peer: &PublicKey,
    ) -> Result<Self, DeriveError> {
        if peer == own.public() {
            return Err(DeriveError::SameKey);
        }
        let private = x25519_dalek::StaticSecret::from(*own.private_bytes());
        let shared = private.diffie_hellman(&x25519_dalek::PublicKey::from(*peer.as_bytes()));
        if !shared.was_contributory() {
            // A validated PublicKey is never of small order; kept for defence in depth.
            return Err(DeriveError::NotContributory);
        }
        let (low, high) = if own.public() < peer {
            (own.public(), peer)
        } else {
            (peer, own.public())
        };
        let master = derive(
            &secret.0,
            label::PAIRING_MASTER,
            &[shared.as_bytes(), low.as_bytes(), high.as_bytes()],
        );
        let rk = RelationshipKey::from_derived(&derive(&master, label::PAIRING_RK, &[]));
        Ok(Self { rk, master })
    }

    /// The pair's relationship key.
    pub fn relationship_key(&self) -> &RelationshipKey {
        &self.rk
    }

    /// The confirmation tag of `side`: proof that the device holds the same keys.
    pub fn tag(&self, side: Side) -> [u8; TAG_LEN] {
        let role: &[u8] = match side {
            Side::Inviter => b"inviter",
            Side::Acceptor => b"acceptor",
        };
        *derive(&self.master, label::PAIRING_CONFIRM, &[role])
    }

    /// Whether `tag` is the confirmation tag of `side` (in constant time).
    pub fn verify(&self, side: Side, tag: &[u8]) -> bool {
        tag.len() == TAG_LEN && bool::from(self.tag(side).as_slice().ct_eq(tag))
    }
}

/// An invitation, as the code carries it.
#[derive(Clone)]
pub struct PairingCode {
    /// The inviting device's public key.
    pub inviter: PublicKey,
    /// The relay's address as the inviting device's config gives it (`host:port`).
    pub relay_addr: String,
    /// The relay's public key.
    pub relay_key: PublicKey,
    /// The one-time secret.
    pub secret: PairingSecret,
}

impl fmt::Debug for PairingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PairingCode")
            .field("inviter", &self.inviter)
            .field("relay_addr", &self.relay_addr)
            .field("relay_key", &self.relay_key)
            .field("secret", &self.secret)
            .finish()
    }
}

/// Why a code could not be made or read. Each renders as one line that says what to do.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodeError {
    /// The text does not start with `tether<N>-`.
    #[error("not a tether pairing code (a code starts with \"{CODE_PREFIX}\")")]
    NotACode,
    /// A code of another format version.
    #[error("pairing code version {0} is not supported: this tether reads version {CODE_VERSION} (use the same tether release on both devices)")]
    UnsupportedVersion(u32),
    /// A character that base32 does not use.
    #[error("pairing code is garbled: {0:?} at position {1} is not a code character; copy the code again")]
    BadCharacter(char, usize),
    /// Shorter than any code, or cut inside a field.
    #[error("pairing code is truncated ({0} characters after the prefix); copy the whole code")]
    Truncated(usize),
    /// The checksum does not match: a character changed.
    #[error("pairing code is garbled (its checksum does not match); copy the code again")]
    Checksum,
    /// A key in the code is not a valid public key.
    #[error("pairing code holds an invalid {0} key: {1}")]
    BadKey(&'static str, KeyError),
    /// The relay address is empty, too long, or not printable text.
    #[error("relay address {0:?} cannot go in a pairing code (host:port, printable, at most {MAX_RELAY_ADDR_LEN} bytes)")]
    BadRelayAddr(String),
}

fn checksum(bytes: &[u8]) -> [u8; CHECKSUM_LEN] {
    let digest = Blake2s256::digest(bytes);
    let mut out = [0_u8; CHECKSUM_LEN];
    out.copy_from_slice(&digest[..CHECKSUM_LEN]);
    out
}

fn valid_relay_addr(addr: &str) -> bool {
    !addr.is_empty()
        && addr.len() <= MAX_RELAY_ADDR_LEN
        && !addr.chars().any(|c| c.is_whitespace() || c.is_control())
}

impl PairingCode {
    /// A new invitation with a fresh secret from `rng`.
    pub fn new<R: RngCore + CryptoRng>(
        inviter: PublicKey,
        relay_addr: &str,
        relay_key: PublicKey,
        rng: &mut R,
    ) -> Result<Self, CodeError> {
        if !valid_relay_addr(relay_addr) {
            return Err(CodeError::BadRelayAddr(relay_addr.to_string()));
        }
        Ok(Self {
            inviter,
            relay_addr: relay_addr.to_string(),
            relay_key,
            secret: PairingSecret::generate(rng),
        })
    }

    /// The code as text, in a buffer wiped on drop (it holds the secret).
    pub fn encode(&self) -> Zeroizing<String> {
        let mut bytes = Zeroizing::new(Vec::with_capacity(FIXED_LEN + self.relay_addr.len()));
        bytes.extend_from_slice(self.inviter.as_bytes());
        bytes.extend_from_slice(self.relay_key.as_bytes());
        bytes.extend_from_slice(&self.secret.0);
        // `new` and `decode` keep the address at most 255 bytes.
        bytes.push(u8::try_from(self.relay_addr.len()).unwrap_or(u8::MAX));
        bytes.extend_from_slice(self.relay_addr.as_bytes());
        let sum = checksum(&bytes);
        bytes.extend_from_slice(&sum);
        let mut text = Zeroizing::new(String::with_capacity(CODE_PREFIX.len() + bytes.len() * 2));
        text.push_str(CODE_PREFIX);
        BASE32_NOPAD.encode_append(&bytes, &mut text);
        text.make_ascii_lowercase();
        text
    }

    /// Reads a code (white space and case ignored).
    pub fn decode(text: &str) -> Result<Self, CodeError> {
        let compact: Zeroizing<String> = Zeroizing::new(
            text.chars()
                .filter(|c| !c.is_whitespace())
                .collect::<String>()
                .to_ascii_lowercase(),
        );
        let rest = compact.strip_prefix("tether").ok_or(CodeError::NotACode)?;
        let (version, body) = rest.split_once('-').ok_or(CodeError::NotACode)?;
        if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CodeError::NotACode);
        }
        let version: u32 = version.parse().map_err(|_| CodeError::NotACode)?;
        if version != CODE_VERSION {
            return Err(CodeError::UnsupportedVersion(version));
        }
        let upper = Zeroizing::new(body.to_ascii_uppercase());
        if let Some((at, c)) = upper
            .char_indices()
            .find(|(_, c)| !matches!(c, 'A'..='Z' | '2'..='7'))
        {
            return Err(CodeError::BadCharacter(c.to_ascii_lowercase(), at));
        }
        let bytes =
            Zeroizing::new(BASE32_NOPAD.decode(upper.as_bytes()).map_err(
                |error| match error.kind {
                    // Bits beyond the last byte that are not zero: a changed character.
                    data_encoding::DecodeKind::Trailing => CodeError::Checksum,
                    _ => CodeError::Truncated(body.len()),
                },
            )?);
        if bytes.len() < FIXED_LEN {
            return Err(CodeError::Truncated(body.len()));
        }
        let addr_len = usize::from(bytes[3 * KEY_LEN]);
        let addr_end = 3 * KEY_LEN + 1 + addr_len;
        if bytes.len() != addr_end + CHECKSUM_LEN {
            // One field's length disagrees with the whole: cut, or a changed character.
            return Err(if bytes.len() < addr_end + CHECKSUM_LEN {
                CodeError::Truncated(body.len())
            } else {
                CodeError::Checksum
            });
        }
        if checksum(&bytes[..addr_end]) != bytes[addr_end..] {
            return Err(CodeError::Checksum);
        }
        let key = |from: usize| -> [u8; KEY_LEN] {
            let mut out = [0_u8; KEY_LEN];
            out.copy_from_slice(&bytes[from..from + KEY_LEN]);
            out
        };
        let inviter =
            PublicKey::from_bytes(key(0)).map_err(|e| CodeError::BadKey("inviting device's", e))?;
        let relay_key =
            PublicKey::from_bytes(key(KEY_LEN)).map_err(|e| CodeError::BadKey("relay's", e))?;
        let secret = PairingSecret::from_bytes(key(2 * KEY_LEN))
            .map_err(|e| CodeError::BadKey("secret", e))?;
        let relay_addr = std::str::from_utf8(&bytes[3 * KEY_LEN + 1..addr_end])
            .map_err(|_| {
                CodeError::BadRelayAddr(
                    String::from_utf8_lossy(&bytes[3 * KEY_LEN + 1..addr_end]).into_owned(),
                )
            })?
            .to_string();
        if !valid_relay_addr(&relay_addr) {
            return Err(CodeError::BadRelayAddr(relay_addr));
        }
        Ok(Self {
            inviter,
            relay_addr,
            relay_key,
            secret,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn rng() -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(21)
    }

    fn code(rng: &mut ChaCha8Rng) -> PairingCode {
        let inviter = *StaticKeypair::generate(rng).public();
        let relay = *StaticKeypair::generate(rng).public();
        PairingCode::new(inviter, "relay.example.org:7300", relay, rng).unwrap()
    }

    /// Re-encodes raw code bytes with a correct checksum (a deliberate forgery).
    fn forge(mut bytes: Vec<u8>) -> String {
        let sum = checksum(&bytes);
        bytes.extend_from_slice(&sum);
        format!(
            "{CODE_PREFIX}{}",
            BASE32_NOPAD.encode(&bytes).to_ascii_lowercase()
        )
    }

    fn raw(code: &PairingCode) -> Vec<u8> {
        let text = code.encode();
        let body = text.strip_prefix(CODE_PREFIX).unwrap().to_ascii_uppercase();
        let mut bytes = BASE32_NOPAD.decode(body.as_bytes()).unwrap();
        bytes.truncate(bytes.len() - CHECKSUM_LEN);
        bytes
    }

    #[test]
    fn a_code_round_trips() {
        let mut rng = rng();
        let code = code(&mut rng);
        let text = code.encode();
        assert!(text.starts_with("tether1-"), "{}", text.as_str());
        assert!(text[CODE_PREFIX.len()..]
            .chars()
            .all(|c| matches!(c, 'a'..='z' | '2'..='7')));
        let back = PairingCode::decode(&text).unwrap();
        assert_eq!(back.inviter, code.inviter);
        assert_eq!(back.relay_key, code.relay_key);
        assert_eq!(back.relay_addr, "relay.example.org:7300");
        assert_eq!(back.secret.0, code.secret.0);
        // White space and capitals (a code broken over lines, retyped) read the same.
        let spaced: String = text
            .to_ascii_uppercase()
            .chars()
            .enumerate()
            .flat_map(|(i, c)| {
                if i % 40 == 39 {
                    vec![c, '\n', ' ']
                } else {
                    vec![c]
                }
            })
            .collect();
        assert_eq!(
            PairingCode::decode(&spaced).unwrap().secret.0,
            code.secret.0
        );
        // The secret never shows in Debug.
        assert!(!format!("{code:?}").contains(&data_encoding::HEXLOWER.encode(&code.secret.0)));
    }

    #[test]
    fn every_changed_character_is_caught() {
        let mut rng = rng();
        let text = code(&mut rng).encode();
        for at in CODE_PREFIX.len()..text.len() {
            let mut garbled = text.to_string().into_bytes();
            garbled[at] = if garbled[at] == b'a' { b'b' } else { b'a' };
            let garbled = String::from_utf8(garbled).unwrap();
            let error = PairingCode::decode(&garbled).unwrap_err();
            assert!(
                matches!(error, CodeError::Checksum | CodeError::Truncated(_)),
                "position {at}: {error:?}"
            );
        }
        let mut bad = text.to_string();
        bad.insert(20, '1');
        assert_eq!(
            PairingCode::decode(&bad).unwrap_err(),
            CodeError::BadCharacter('1', 20 - CODE_PREFIX.len())
        );
    }

    #[test]
    fn a_truncated_code_is_refused() {
        let mut rng = rng();
        let text = code(&mut rng).encode();
        for keep in [
            CODE_PREFIX.len(),
            CODE_PREFIX.len() + 10,
            text.len() - 8,
            text.len() - 1,
        ] {
            let error = PairingCode::decode(&text[..keep]).unwrap_err();
            assert!(
                matches!(error, CodeError::Truncated(_) | CodeError::Checksum),
                "{keep}: {error:?}"
            );
        }
        assert!(matches!(
            PairingCode::decode(&text[..text.len() - 20]).unwrap_err(),
            CodeError::Truncated(_)
        ));
    }

    #[test]
    fn other_versions_and_other_text_are_refused() {
        let mut rng = rng();
        let text = code(&mut rng).encode();
        let v2 = text.replacen("tether1-", "tether2-", 1);
        assert_eq!(
            PairingCode::decode(&v2).unwrap_err(),
            CodeError::UnsupportedVersion(2)
        );
        assert_eq!(
            PairingCode::decode(&v2).unwrap_err().to_string(),
            "pairing code version 2 is not supported: this tether reads version 1 (use the same tether release on both devices)"
        );
        for other in ["", "hello", "tether-abc", "tetherx-abc", &"ab".repeat(32)] {
            assert_eq!(
                PairingCode::decode(other).unwrap_err(),
                CodeError::NotACode,
                "{other}"
            );
        }
    }

    #[test]
    fn forged_codes_with_invalid_fields_are_refused() {
        let mut rng = rng();
        let good = raw(&code(&mut rng));
        let mut zero_key = good.clone();
        zero_key[..KEY_LEN].fill(0);
        assert_eq!(
            PairingCode::decode(&forge(zero_key)).unwrap_err(),
            CodeError::BadKey("inviting device's", KeyError::AllZero)
        );
        let mut spaced_addr = good.clone();
        let at = 3 * KEY_LEN + 1;
        spaced_addr[at] = b' ';
        assert!(matches!(
            PairingCode::decode(&forge(spaced_addr)).unwrap_err(),
            CodeError::BadRelayAddr(_)
        ));
        let inviter = *StaticKeypair::generate(&mut rng).public();
        assert!(matches!(
            PairingCode::new(inviter, "", inviter, &mut rng),
            Err(CodeError::BadRelayAddr(_))
        ));
        assert!(matches!(
            PairingCode::new(inviter, &"x".repeat(300), inviter, &mut rng),
            Err(CodeError::BadRelayAddr(_))
        ));
    }

    #[test]
    fn both_sides_derive_the_same_keys_and_another_secret_does_not() {
        let mut rng = rng();
        let a = StaticKeypair::generate(&mut rng);
        let b = StaticKeypair::generate(&mut rng);
        let secret = PairingSecret::generate(&mut rng);
        let at_a = PairingKeys::derive(&secret, &a, b.public()).unwrap();
        let at_b = PairingKeys::derive(&secret, &b, a.public()).unwrap();
        assert_eq!(
            at_a.relationship_key().to_hex(),
            at_b.relationship_key().to_hex()
        );
        assert!(at_b.verify(Side::Inviter, &at_a.tag(Side::Inviter)));
        assert!(at_a.verify(Side::Acceptor, &at_b.tag(Side::Acceptor)));
        // The two roles' tags differ, so one cannot be reflected as the other.
        assert!(!at_a.verify(Side::Acceptor, &at_a.tag(Side::Inviter)));
        assert!(!at_a.verify(Side::Acceptor, &[0; 5]));

        let other_secret = PairingSecret::generate(&mut rng);
        let other = PairingKeys::derive(&other_secret, &b, a.public()).unwrap();
        assert_ne!(
            other.relationship_key().to_hex(),
            at_a.relationship_key().to_hex()
        );
        assert!(!at_a.verify(Side::Acceptor, &other.tag(Side::Acceptor)));

        // A third device that holds the secret but claims B's key cannot compute it.
        let c = StaticKeypair::generate(&mut rng);
        let claimed = PairingKeys::derive(&secret, &c, a.public()).unwrap();
        assert_ne!(
            claimed.relationship_key().to_hex(),
            at_a.relationship_key().to_hex()
        );
        // The channel key is neither the RK nor the secret.
        assert_ne!(
            secret.channel_key().to_hex(),
            at_a.relationship_key().to_hex()
        );
        assert!(PairingKeys::derive(&secret, &a, a.public()).is_err());
    }
}
