//! Short printable fingerprints: the only form in which keys and secrets reach logs.

use std::fmt;

use data_encoding::{BASE32_NOPAD, HEXLOWER};

/// Length of a fingerprint in bytes. 64 bits tell keys apart in logs and let tests
/// compare the two sides of a session (a chance collision needs ~2^32 values), while
/// staying short enough to read aloud; a fingerprint is never a security check.
pub const FINGERPRINT_LEN: usize = 8;

/// A short one-way digest of a key or secret, safe to print.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fingerprint([u8; FINGERPRINT_LEN]);

impl Fingerprint {
    /// Takes the first [`FINGERPRINT_LEN`] bytes of a digest that is already one-way.
    pub(crate) fn from_digest(digest: &[u8; 32]) -> Self {
        let mut bytes = [0_u8; FINGERPRINT_LEN];
        bytes.copy_from_slice(&digest[..FINGERPRINT_LEN]);
        Self(bytes)
    }

    /// The raw fingerprint bytes, for compact binary status output.
    pub fn as_bytes(&self) -> &[u8; FINGERPRINT_LEN] {
        &self.0
    }

    /// Lowercase hex, 16 characters (also what `Display` prints).
    pub fn to_hex(&self) -> String {
        HEXLOWER.encode(&self.0)
    }

    /// RFC 4648 base32 without padding, 13 characters: shorter to read aloud or type
    /// when two people compare devices.
    pub fn to_base32(&self) -> String {
        BASE32_NOPAD.encode(&self.0)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_hex_and_base32() {
        let mut digest = [0_u8; 32];
        digest[..8].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0x00, 0x01, 0x02, 0x03]);
        let fp = Fingerprint::from_digest(&digest);
        assert_eq!(fp.to_string(), "deadbeef00010203");
        assert_eq!(format!("{fp:?}"), "Fingerprint(deadbeef00010203)");
        assert_eq!(fp.to_base32(), "32W353YAAEBAG");
    }
}
