//! Sealing and opening frames under one generation's keys, with explicit nonces.
//!
//! Every frame carries its 64-bit nonce in clear, so frames can travel over any path,
//! be duplicated and arrive in any order; the [`ReplayWindow`] refuses repeats.
//! `open` never changes state unless the frame authenticates: the window is checked
//! without mutation, the frame decrypted, and only then its nonce is marked.

use std::fmt;

use thiserror::Error;

use crate::handshake::SessionKeys;
use crate::peer_secret::KeyId;
use crate::replay::{ReplayError, ReplayWindow};

/// Largest message Noise handles, tag included: the Noise spec caps every message at
/// 65 535 bytes. A sealed frame, and so anything that carries one, is bounded by it.
pub const NOISE_MAX_MESSAGE_LEN: usize = 65535;

/// Length of the ChaCha20-Poly1305 tag added to every frame.
pub const TAG_LEN: usize = 16;

/// Largest plaintext one frame can carry: Noise's message cap minus the tag.
pub const MAX_PLAINTEXT_LEN: usize = NOISE_MAX_MESSAGE_LEN - TAG_LEN;

/// After this many frames sent under one generation, [`Session::needs_rekey`] turns
/// true and the caller should run a new handshake (new epoch). 2^60 as WireGuard's
/// REKEY_AFTER_MESSAGES: far from exhaustion, leaving ample time for the handshake.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;

/// Nonces at or above this are never used: sealing fails with
/// [`SealError::NonceExhausted`] and opening refuses them. 2^64 - 2^13 - 1 as
/// WireGuard's REJECT_AFTER_MESSAGES: it keeps a window's worth of room below 2^64 - 1
/// (which Noise reserves), so the replay window never has to track wrapped nonces.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);

/// One sealed frame, as carried on the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Which generation's keys sealed it.
    pub key_id: KeyId,
    /// The explicit nonce (the sender's counter).
    pub nonce: u64,
    /// Ciphertext and tag.
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("key_id", &self.key_id)
            .field("nonce", &self.nonce)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish()
    }
}

/// Why a frame could not be sealed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SealError {
    /// The plaintext exceeds [`MAX_PLAINTEXT_LEN`].
    #[error("plaintext of {len} bytes exceeds the maximum of {MAX_PLAINTEXT_LEN}")]
    TooLarge {
        /// Length given.
        len: usize,
    },
    /// [`REJECT_AFTER_MESSAGES`] frames were sent: a new handshake is required.
    #[error("nonces exhausted for this generation: a new handshake is required")]
    NonceExhausted,
    /// The Noise library refused input this crate had validated; a bug.
    #[error("noise failure: {0}")]
    Noise(String),
}

/// Why a frame could not be opened. In every case no state changed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenError {
    /// The frame names another generation's key id.
    #[error("frame is for key {found}, this session is {expected}")]
    WrongKeyId {
        /// This session's key id.
        expected: KeyId,
        /// The frame's key id.
        found: KeyId,
    },
    /// The ciphertext is shorter than a tag or longer than any frame.
    #[error("ciphertext of {len} bytes is not a valid frame")]
    BadLength {
        /// Length received.
        len: usize,
    },
    /// The nonce is at or above [`REJECT_AFTER_MESSAGES`], which no sender uses.
    #[error("nonce {0} is beyond the usable range")]
    NonceOutOfRange(u64),
    /// Refused by the replay window.
    #[error(transparent)]
    Replay(#[from] ReplayError),
    /// The frame failed authentication (forged, corrupted, or another key).
    #[error("frame failed authentication")]
    Authentication,
}

/// One generation's sealing state: its keys, the next nonce to send and the window of
/// nonces received.
pub struct Session {
    keys: SessionKeys,
    next_nonce: u64,
    window: ReplayWindow,
}

impl Session {
    /// A fresh session over a handshake's keys: sending starts at nonce 0.
    pub fn new(keys: SessionKeys) -> Self {
        Self {
            keys,
            next_nonce: 0,
            window: ReplayWindow::new(),
        }
    }

    /// The generation's keys and identity.
    pub fn keys(&self) -> &SessionKeys {
        &self.keys
    }

    /// The nonce the next sealed frame will carry.
    pub fn next_nonce(&self) -> u64 {
        self.next_nonce
    }

    /// The receive window.
    pub fn replay_window(&self) -> &ReplayWindow {
        &self.window
    }

    /// True once [`REKEY_AFTER_MESSAGES`] frames were sent: time for a new handshake.
    pub fn needs_rekey(&self) -> bool {
        self.next_nonce >= REKEY_AFTER_MESSAGES
    }

    /// Seals `plaintext` under the next nonce.
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Sealed, SealError> {
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(SealError::TooLarge {
                len: plaintext.len(),
            });
        }
        let nonce = self.next_nonce;
        if nonce >= REJECT_AFTER_MESSAGES {
            return Err(SealError::NonceExhausted);
        }
        let mut ciphertext = vec![0_u8; plaintext.len() + TAG_LEN];
        let written = self
            .keys
            .transport()
            .write_message(nonce, plaintext, &mut ciphertext)
            .map_err(|e| SealError::Noise(e.to_string()))?;
        ciphertext.truncate(written);
        self.next_nonce = nonce + 1;
        Ok(Sealed {
            key_id: self.keys.key_id(),
            nonce,
            ciphertext,
        })
    }

    /// Opens a frame: checks the key id and the window, decrypts, and only then marks
    /// the nonce received. Any error leaves the session unchanged.
    pub fn open(&mut self, sealed: &Sealed) -> Result<Vec<u8>, OpenError> {
        let plaintext = self.open_unmarked(sealed)?;
        self.mark_received(sealed.nonce);
        Ok(plaintext)
    }

    /// Everything `open` does except marking the nonce.
    pub(crate) fn open_unmarked(&self, sealed: &Sealed) -> Result<Vec<u8>, OpenError> {
        if sealed.key_id != self.keys.key_id() {
            return Err(OpenError::WrongKeyId {
                expected: self.keys.key_id(),
                found: sealed.key_id,
            });
        }
        let len = sealed.ciphertext.len();
        if !(TAG_LEN..=NOISE_MAX_MESSAGE_LEN).contains(&len) {
            return Err(OpenError::BadLength { len });
        }
        if sealed.nonce >= REJECT_AFTER_MESSAGES {
            return Err(OpenError::NonceOutOfRange(sealed.nonce));
        }
        self.window.check(sealed.nonce)?;
        let mut plaintext = vec![0_u8; len - TAG_LEN];
        let written = self
            .keys
            .transport()
            .read_message(sealed.nonce, &sealed.ciphertext, &mut plaintext)
            .map_err(|_| OpenError::Authentication)?;
        plaintext.truncate(written);
        Ok(plaintext)
    }

    /// Marks a nonce received after its frame authenticated.
    pub(crate) fn mark_received(&mut self, nonce: u64) {
        self.window.mark(nonce);
    }

    /// Moves the send counter, so tests can reach the rekey and exhaustion limits.
    #[cfg(test)]
    pub(crate) fn set_next_nonce_for_test(&mut self, nonce: u64) {
        self.next_nonce = nonce;
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("keys", &self.keys)
            .field("next_nonce", &self.next_nonce)
            .field("window", &self.window)
            .finish()
    }
}
