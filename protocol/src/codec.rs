//! Encoding and decoding of [`WireFrame`] and [`SessionFrame`].
//!
//! Layout: one version byte ([`WIRE_VERSION`]) followed by the MessagePack body written
//! by rmp-serde in its *compact* form: structs as arrays (no field names), byte strings and
//! Tether's fixed byte arrays (keys, tags, challenges) as MessagePack `bin`, socket
//! addresses as serde's arrays of octets, enum variants by name (a one-entry map, or a
//! bare string for a variant without data: rmp-serde's only enum forms). Compact was chosen over named (maps with
//! field names) because every sealed frame, ping and relay envelope would otherwise pay
//! for its field names on every packet, and both ends are Tether: the
//! schema lives in this crate, the version byte guards changes, and the insta snapshots
//! of the exact bytes make any change visible in review. Consequence: fields may not be
//! reordered or removed without a new version.
//!
//! Decoding never panics and never allocates more than the input justifies: input longer
//! than [`MAX_FRAME_LEN`] is rejected before any parsing, byte strings are read from the
//! input slice, nesting depth is capped, and trailing bytes are an error.

use crate::wire::{SessionFrame, WireFrame};
use serde::{de::DeserializeOwned, Serialize};
use std::io::Cursor;

/// The wire format version written as the first byte of every frame.
pub const WIRE_VERSION: u8 = 1;

/// Largest encoded frame accepted, version byte included. 256 KiB holds the largest
/// sealed frame (a Noise message is at most 65 535 bytes) and a relay batch with room to
/// spare, while bounding what a peer can make a node buffer per frame. Transport links
/// use it as their frame limit too, so an oversized frame is refused before it is read.
pub const MAX_FRAME_LEN: usize = 256 * 1024;

/// Deepest nesting accepted while decoding. Tether's frames nest at most 4 levels; the
/// cap stops crafted deeply nested input from exhausting the stack.
const MAX_DECODE_DEPTH: usize = 16;

/// Why bytes could not be decoded into a frame. Peer-caused: count and drop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// No bytes at all.
    #[error("empty frame")]
    Empty,
    /// Longer than [`MAX_FRAME_LEN`]; rejected before parsing.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Length of the input.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A version this build does not speak.
    #[error("unsupported wire version {0} (this build speaks {WIRE_VERSION})")]
    UnsupportedVersion(u8),
    /// The body is not a valid frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A valid frame followed by extra bytes.
    #[error("{0} trailing bytes after the frame")]
    TrailingBytes(usize),
}

/// Why a frame could not be encoded. Only local: a frame built too large.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The encoded frame would exceed [`MAX_FRAME_LEN`].
    #[error("encoded frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Encoded length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The serializer failed (should not happen for Tether's types).
    #[error("encoding failed: {0}")]
    Serializer(String),
}

/// Encodes a link frame.
pub fn encode(frame: &WireFrame) -> Result<Vec<u8>, EncodeError> {
    encode_versioned(frame)
}

/// Decodes a link frame.
pub fn decode(bytes: &[u8]) -> Result<WireFrame, DecodeError> {
    decode_versioned(bytes)
}

/// Encodes the plaintext of a sealed frame.
pub fn encode_session(frame: &SessionFrame) -> Result<Vec<u8>, EncodeError> {
    encode_versioned(frame)
}

/// Decodes the plaintext of a sealed frame.
pub fn decode_session(bytes: &[u8]) -> Result<SessionFrame, DecodeError> {
    decode_versioned(bytes)
}

fn encode_versioned<T: Serialize>(value: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = vec![WIRE_VERSION];
    rmp_serde::encode::write(&mut out, value)
        .map_err(|err| EncodeError::Serializer(err.to_string()))?;
    if out.len() > MAX_FRAME_LEN {
        return Err(EncodeError::TooLarge {
            len: out.len(),
            max: MAX_FRAME_LEN,
        });
    }
    Ok(out)
}

fn decode_versioned<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() > MAX_FRAME_LEN {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: MAX_FRAME_LEN,
        });
    }
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != WIRE_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let mut deserializer = rmp_serde::Deserializer::new(Cursor::new(body));
    deserializer.set_max_depth(MAX_DECODE_DEPTH);
    let value =
        T::deserialize(&mut deserializer).map_err(|err| DecodeError::Malformed(err.to_string()))?;
    let consumed = usize::try_from(deserializer.position()).unwrap_or(usize::MAX);
    match body.len().checked_sub(consumed) {
        Some(0) => Ok(value),
        Some(extra) => Err(DecodeError::TrailingBytes(extra)),
        None => Err(DecodeError::Malformed("read past the end".into())),
    }
}
