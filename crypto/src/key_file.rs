//! The static key file: how a device's [`StaticKeypair`] is stored on disk.
//!
//! # Format
//!
//! A UTF-8 text file of two or three lines, each ended by `\n`:
//!
//! ```text
//! tether-static-key-v1
//! <private key: 64 lowercase hex characters>
//! public <public key: 64 lowercase hex characters>
//! ```
//!
//! The first line names the format and its version. The third line is optional: when
//! present it must equal the public key derived from the private key, which catches a
//! file edited by hand or pasted from the wrong device. Nothing else may follow.
//!
//! # Permissions
//!
//! [`StaticKeypair::save`] creates the file with mode `0600` and refuses to overwrite an
//! existing file. [`StaticKeypair::load`] refuses a file whose mode grants any
//! permission to group or others (`mode & 0o077 != 0`), naming the path, the mode and
//! the fix (`chmod 600 <path>`), as ssh does for private keys.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use data_encoding::HEXLOWER;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::keys::{decode_hex_32, KeyError, PublicKey, StaticKeypair, KEY_LEN};

/// First line of every key file: the format name and version.
pub const KEY_FILE_HEADER: &str = "tether-static-key-v1";

/// Prefix of the optional third line carrying the public key.
const PUBLIC_LINE_PREFIX: &str = "public ";

/// Mode of a saved key file: read and write for the owner only (a private key).
pub const KEY_FILE_MODE: u32 = 0o600;

/// Permission bits that must be clear on a key file: any access by group or others.
const FORBIDDEN_MODE_BITS: u32 = 0o077;

/// Largest key file read. A valid file is 157 bytes; the cap stops a wrong path (a log,
/// a device file) from being read whole into memory.
pub const MAX_KEY_FILE_LEN: usize = 1024;

/// Why a key file could not be saved or loaded.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file could not be created, opened, read or written.
    #[error("cannot {action} key file {}: {source}", path.display())]
    Io {
        /// What was being done ("create", "open", ...).
        action: &'static str,
        /// The key file.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The file is accessible to group or others.
    #[error(
        "key file {} has mode {mode:04o}, which lets group or others access a private key; \
         run `chmod 600 {}` and check who may have copied it",
        path.display(),
        path.display()
    )]
    InsecurePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is larger than any key file can be.
    #[error("key file {} is larger than {MAX_KEY_FILE_LEN} bytes; is this the right path?", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The contents are not a valid key file.
    #[error("key file {} is malformed: {source}", path.display())]
    Malformed {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        source: KeyFileFormatError,
    },
}

/// What is wrong with the contents of a key file. Never includes key material.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyFileFormatError {
    /// The file is not UTF-8 text.
    #[error("not UTF-8 text")]
    NotText,
    /// The first line is not [`KEY_FILE_HEADER`].
    #[error("first line is not `{KEY_FILE_HEADER}`")]
    BadHeader,
    /// There is no second line.
    #[error("missing the private key line")]
    MissingPrivateKey,
    /// The second line is not a valid private key.
    #[error("private key line is invalid: {0}")]
    BadPrivateKey(KeyError),
    /// The third line is not `public <hex>` with a valid key.
    #[error("third line must be `public <64 lowercase hex characters>`")]
    BadPublicLine,
    /// The third line names another key than the one derived from the private key.
    #[error("public key line does not match the private key")]
    PublicKeyMismatch,
    /// Content after the last allowed line.
    #[error("unexpected content on line {line}")]
    UnexpectedLine {
        /// 1-based line number.
        line: usize,
    },
}

impl StaticKeypair {
    /// The key file contents for this keypair (in a buffer wiped on drop).
    pub fn to_key_file_contents(&self) -> Zeroizing<String> {
        // Capacity reserved up front so the buffer never reallocates, which would leave
        // an unwiped copy of the private key behind.
        let mut out = Zeroizing::new(String::with_capacity(MAX_KEY_FILE_LEN));
        out.push_str(KEY_FILE_HEADER);
        out.push('\n');
        HEXLOWER.encode_append(self.private_bytes(), &mut out);
        out.push('\n');
        out.push_str(PUBLIC_LINE_PREFIX);
        HEXLOWER.encode_append(self.public().as_bytes(), &mut out);
        out.push('\n');
        out
    }

    /// Parses key file contents (see the module docs for the format).
    pub fn from_key_file_contents(contents: &str) -> Result<Self, KeyFileFormatError> {
        let mut lines = contents.lines();
        if lines.next() != Some(KEY_FILE_HEADER) {
            return Err(KeyFileFormatError::BadHeader);
        }
        let private_hex = lines.next().ok_or(KeyFileFormatError::MissingPrivateKey)?;
        let mut private = Zeroizing::new([0_u8; KEY_LEN]);
        decode_hex_32(private_hex, &mut private).map_err(KeyFileFormatError::BadPrivateKey)?;
        let pair = StaticKeypair::from_private_bytes(*private)
            .map_err(KeyFileFormatError::BadPrivateKey)?;
        if let Some(public_line) = lines.next() {
            let hex = public_line
                .strip_prefix(PUBLIC_LINE_PREFIX)
                .ok_or(KeyFileFormatError::BadPublicLine)?;
            let public = PublicKey::from_hex(hex).map_err(|_| KeyFileFormatError::BadPublicLine)?;
            if &public != pair.public() {
                return Err(KeyFileFormatError::PublicKeyMismatch);
            }
        }
        if lines.next().is_some() {
            return Err(KeyFileFormatError::UnexpectedLine { line: 4 });
        }
        Ok(pair)
    }

    /// Writes the keypair to a new file at `path` with mode 0600. Refuses to overwrite
    /// an existing file, so a keygen run can never destroy a device's identity.
    pub fn save(&self, path: &Path) -> Result<(), KeyFileError> {
        let io_error = |action, source| KeyFileError::Io {
            action,
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(KEY_FILE_MODE)
            .open(path)
            .map_err(|e| io_error("create", e))?;
        file.write_all(self.to_key_file_contents().as_bytes())
            .map_err(|e| io_error("write", e))?;
        file.sync_all().map_err(|e| io_error("sync", e))
    }

    /// Reads a keypair from `path`, refusing files readable by group or others.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let io_error = |action, source| KeyFileError::Io {
            action,
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(|e| io_error("open", e))?;
        // Checked on the open handle, so the file checked is the file read.
        let mode = file
            .metadata()
            .map_err(|e| io_error("inspect", e))?
            .permissions()
            .mode()
            & 0o7777;
        if mode & FORBIDDEN_MODE_BITS != 0 {
            return Err(KeyFileError::InsecurePermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        // Capacity reserved up front: the buffer never reallocates (see above), and one
        // byte past the cap tells a too-large file apart.
        let mut bytes = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE_LEN + 1));
        file.take(MAX_KEY_FILE_LEN as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| io_error("read", e))?;
        if bytes.len() > MAX_KEY_FILE_LEN {
            return Err(KeyFileError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        let malformed = |source| KeyFileError::Malformed {
            path: path.to_path_buf(),
            source,
        };
        let text =
            std::str::from_utf8(&bytes).map_err(|_| malformed(KeyFileFormatError::NotText))?;
        Self::from_key_file_contents(text).map_err(malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use std::fs;

    fn keypair(seed: u64) -> StaticKeypair {
        StaticKeypair::generate(&mut ChaCha8Rng::seed_from_u64(seed))
    }

    fn private_hex(pair: &StaticKeypair) -> String {
        HEXLOWER.encode(pair.private_bytes())
    }

    #[test]
    fn save_then_load_round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.key");
        let pair = keypair(1);
        pair.save(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = StaticKeypair::load(&path).unwrap();
        assert_eq!(loaded.public(), pair.public());
        assert_eq!(loaded.private_bytes(), pair.private_bytes());
    }

    #[test]
    fn save_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.key");
        keypair(1).save(&path).unwrap();
        let err = keypair(2).save(&path).unwrap_err();
        assert!(
            matches!(
                err,
                KeyFileError::Io {
                    action: "create",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            StaticKeypair::load(&path).unwrap().public(),
            keypair(1).public()
        );
    }

    #[test]
    fn load_refuses_mode_0644_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.key");
        keypair(1).save(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = StaticKeypair::load(&path).unwrap_err();
        assert!(matches!(
            err,
            KeyFileError::InsecurePermissions { mode: 0o644, .. }
        ));
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("0644"), "{message}");
        assert!(message.contains("chmod 600"), "{message}");
    }

    #[test]
    fn load_refuses_any_group_or_other_bit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.key");
        keypair(1).save(&path).unwrap();
        for mode in [0o640, 0o604, 0o610, 0o601, 0o620, 0o602] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            assert!(
                matches!(
                    StaticKeypair::load(&path),
                    Err(KeyFileError::InsecurePermissions { .. })
                ),
                "mode {mode:o} accepted"
            );
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(StaticKeypair::load(&path).is_ok());
    }

    #[test]
    fn load_rejects_garbage_and_oversized_files() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .unwrap();
            file.write_all(bytes).unwrap();
            path
        };
        let garbage = write("garbage", b"hello world\n");
        assert!(matches!(
            StaticKeypair::load(&garbage),
            Err(KeyFileError::Malformed {
                source: KeyFileFormatError::BadHeader,
                ..
            })
        ));
        let binary = write("binary", &[0xff, 0xfe, 0x00]);
        assert!(matches!(
            StaticKeypair::load(&binary),
            Err(KeyFileError::Malformed {
                source: KeyFileFormatError::NotText,
                ..
            })
        ));
        let huge = write("huge", &vec![b'a'; MAX_KEY_FILE_LEN + 1]);
        assert!(matches!(
            StaticKeypair::load(&huge),
            Err(KeyFileError::TooLarge { .. })
        ));
        let missing = dir.path().join("missing");
        assert!(matches!(
            StaticKeypair::load(&missing),
            Err(KeyFileError::Io { action: "open", .. })
        ));
    }

    #[test]
    fn parse_accepts_files_with_and_without_public_line() {
        let pair = keypair(4);
        let two_lines = format!("{KEY_FILE_HEADER}\n{}\n", private_hex(&pair));
        let parsed = StaticKeypair::from_key_file_contents(&two_lines).unwrap();
        assert_eq!(parsed.public(), pair.public());
        let full = pair.to_key_file_contents();
        let parsed = StaticKeypair::from_key_file_contents(&full).unwrap();
        assert_eq!(parsed.public(), pair.public());
    }

    #[test]
    fn parse_rejects_malformed_contents() {
        let pair = keypair(5);
        let other = keypair(6);
        let private = private_hex(&pair);
        let cases: Vec<(String, KeyFileFormatError)> = vec![
            (String::new(), KeyFileFormatError::BadHeader),
            (
                "tether-static-key-v2\n".into(),
                KeyFileFormatError::BadHeader,
            ),
            (
                format!("{KEY_FILE_HEADER}\n"),
                KeyFileFormatError::MissingPrivateKey,
            ),
            (
                format!("{KEY_FILE_HEADER}\nnot-hex\n"),
                KeyFileFormatError::BadPrivateKey(KeyError::BadHex),
            ),
            (
                format!("{KEY_FILE_HEADER}\n{}\n", private.to_uppercase()),
                KeyFileFormatError::BadPrivateKey(KeyError::BadHex),
            ),
            (
                format!("{KEY_FILE_HEADER}\n{}\n", &private[..62]),
                KeyFileFormatError::BadPrivateKey(KeyError::BadLength {
                    expected: 32,
                    found: 31,
                }),
            ),
            (
                format!("{KEY_FILE_HEADER}\n{}\n", "00".repeat(32)),
                KeyFileFormatError::BadPrivateKey(KeyError::AllZero),
            ),
            (
                format!(
                    "{KEY_FILE_HEADER}\n{private}\npublik {}\n",
                    pair.public().to_hex()
                ),
                KeyFileFormatError::BadPublicLine,
            ),
            (
                format!("{KEY_FILE_HEADER}\n{private}\npublic {}\n", "00".repeat(32)),
                KeyFileFormatError::BadPublicLine,
            ),
            (
                format!(
                    "{KEY_FILE_HEADER}\n{private}\npublic {}\n",
                    other.public().to_hex()
                ),
                KeyFileFormatError::PublicKeyMismatch,
            ),
            (
                format!(
                    "{KEY_FILE_HEADER}\n{private}\npublic {}\nextra\n",
                    pair.public().to_hex()
                ),
                KeyFileFormatError::UnexpectedLine { line: 4 },
            ),
        ];
        for (contents, expected) in cases {
            assert_eq!(
                StaticKeypair::from_key_file_contents(&contents).unwrap_err(),
                expected,
                "{contents:?}"
            );
        }
    }

    #[test]
    fn format_errors_never_echo_key_material() {
        let pair = keypair(7);
        let private = private_hex(&pair);
        let contents = format!(
            "{KEY_FILE_HEADER}\n{private}\npublic {}\n",
            keypair(8).public().to_hex()
        );
        let err = StaticKeypair::from_key_file_contents(&contents).unwrap_err();
        assert!(!err.to_string().contains(&private));
        assert!(!format!("{err:?}").contains(&private));
    }
}
