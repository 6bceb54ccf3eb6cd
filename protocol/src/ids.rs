//! Identifiers shared by every crate: who a device is, which session, which epoch.

use data_encoding::HEXLOWER;
use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

/// Length of a device's static X25519 public key, which is its identity: crypto's
/// `KEY_LEN` (this crate does not depend on crypto; `tether-harness` asserts that the
/// two agree).
pub const DEVICE_ID_LEN: usize = 32;

/// Bytes of the public key shown in the short printable form: 8 bytes, 16 hex
/// characters, the start of the 64-character key the configs and the CLI show (so a
/// log line's device can be found in a config with a prefix search); 64 bits, so
/// accidental collisions between one's own devices do not happen.
const SHORT_ID_BYTES: usize = 8;

/// A device, identified by its static X25519 public key (the Noise `s` key).
///
/// Printed (`Display`) as its short id, the first 16 lowercase hex characters of the
/// public key, for logs; use [`DeviceId::to_hex`] for the full key in config files.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeviceId(#[serde(with = "serde_bytes")] pub [u8; DEVICE_ID_LEN]);

impl DeviceId {
    /// The raw public key bytes.
    pub fn as_bytes(&self) -> &[u8; DEVICE_ID_LEN] {
        &self.0
    }

    /// The full public key in lowercase hex (64 characters).
    pub fn to_hex(&self) -> String {
        HEXLOWER.encode(&self.0)
    }

    /// Parses the full 64-character hex form written by [`DeviceId::to_hex`].
    pub fn from_hex(text: &str) -> Result<Self, IdParseError> {
        let bytes = HEXLOWER
            .decode(text.trim().to_ascii_lowercase().as_bytes())
            .map_err(|_| IdParseError::NotHex)?;
        let key: [u8; DEVICE_ID_LEN] =
            bytes
                .try_into()
                .map_err(|bytes: Vec<u8>| IdParseError::WrongLength {
                    expected: DEVICE_ID_LEN,
                    actual: bytes.len(),
                })?;
        Ok(Self(key))
    }

    /// The short id: the first 16 hex characters of the key (its first 8 bytes).
    pub fn short(&self) -> String {
        HEXLOWER.encode(&self.0[..SHORT_ID_BYTES])
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.short())
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({})", self.short())
    }
}

/// Why an id could not be parsed from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdParseError {
    /// The text is not hexadecimal.
    #[error("not a hexadecimal string")]
    NotHex,
    /// The text decodes to the wrong number of bytes.
    #[error("expected {expected} bytes, got {actual}")]
    WrongLength {
        /// Bytes the id must have.
        expected: usize,
        /// Bytes the text held.
        actual: usize,
    },
}

/// One session between two devices. It outlives transports: a migration keeps it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(pub Uuid);

impl SessionId {
    /// A session id from 16 random bytes supplied by the caller's seeded RNG.
    pub fn from_random_bytes(bytes: [u8; 16]) -> Self {
        Self(uuid::Builder::from_random_bytes(bytes).into_uuid())
    }

    /// The 16 raw bytes, as bound into migration tags.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The first group of the uuid is enough to follow a session in logs.
        let text = self.0.simple().to_string();
        f.write_str(&text[..8])
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.0)
    }
}

// A session id travels as 16 raw bytes, not as uuid's 36-character string.
impl Serialize for SessionId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0.as_bytes())
    }
}

impl<'de> Deserialize<'de> for SessionId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes: serde_bytes::ByteArray<16> = Deserialize::deserialize(deserializer)?;
        Ok(Self(Uuid::from_bytes(bytes.into_array())))
    }
}

/// Counter of completed handshakes for a session. The keys and the PeerSecret of one
/// epoch are one unit; a migration never changes the epoch.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Epoch(pub u64);

impl Epoch {
    /// The epoch a new handshake proposes after this one.
    pub fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "e{}", self.0)
    }
}

/// Correlates a fire-and-forget request between actors with its later reply message.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

/// A logical stream of application messages inside a session (002's "session" inside a
/// stream): each channel has its own sequence numbers and credit.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct ChannelId(pub u32);

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// Identifies one transport link (a QUIC connection) within the endpoint or driver
/// that numbered it; never reused there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LinkId(pub u64);

impl fmt::Display for LinkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "link#{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_id_hex_round_trip_and_short_form() {
        let id = DeviceId([0xab; 32]);
        assert_eq!(DeviceId::from_hex(&id.to_hex()), Ok(id));
        assert_eq!(id.short().len(), 16);
        assert_eq!(id.to_string(), id.short());
        // The short id is the start of the full key, as the CLI and configs show it.
        assert!(id.to_hex().starts_with(&id.short()));
        assert_eq!(format!("{id:?}"), "DeviceId(abababababababab)");
    }

    #[test]
    fn device_id_rejects_bad_text() {
        assert_eq!(DeviceId::from_hex("zz"), Err(IdParseError::NotHex));
        assert_eq!(
            DeviceId::from_hex("abcd"),
            Err(IdParseError::WrongLength {
                expected: 32,
                actual: 2
            })
        );
    }

    #[test]
    fn epoch_next_saturates() {
        assert_eq!(Epoch(1).next(), Epoch(2));
        assert_eq!(Epoch(u64::MAX).next(), Epoch(u64::MAX));
    }
}
