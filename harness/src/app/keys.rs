//! `tether keygen` and `tether pair`: static key files (mode 0600) and the config
//! entries that pair two devices, when both key files are at hand (`tether pair A B`)
//! or only this device's and the other's public key (`tether pair --peer`). Pairing two
//! machines without moving either key is `tether invite` / `tether accept`
//! ([`super::pairing`]).

use rand::rngs::OsRng;
use std::path::{Path, PathBuf};
use tether_crypto::{KeyFileError, PublicKey, RelationshipKey, StaticKeypair};

/// Writes a new static keypair to `out` (mode 0600; never overwrites) and returns its
/// public key.
pub fn keygen(out: &Path) -> Result<PublicKey, KeyFileError> {
    let pair = StaticKeypair::generate(&mut OsRng);
    pair.save(out)?;
    Ok(*pair.public())
}

/// One device of a pairing.
#[derive(Debug, Clone)]
pub struct PairedDevice {
    /// Its name (the key file's stem).
    pub name: String,
    /// Its key file.
    pub key_file: PathBuf,
    /// Its public key.
    pub public: PublicKey,
    /// Whether the key file was created now (false: an existing one was read).
    pub created: bool,
}

/// Two devices and their fresh relationship key.
#[derive(Debug, Clone)]
pub struct Pairing {
    /// The first device.
    pub a: PairedDevice,
    /// The second device.
    pub b: PairedDevice,
    /// The relationship key both configs get.
    pub rk: RelationshipKey,
}

/// Why pairing failed.
#[derive(Debug, thiserror::Error)]
pub enum PairError {
    /// A key file could not be read or written.
    #[error(transparent)]
    Key(#[from] KeyFileError),
    /// Both files hold the same key.
    #[error("{0} and {1} hold the same key; a device cannot pair with itself")]
    SameKey(String, String),
    /// A key file name that is a public key: the other device's key was given where a
    /// key file belongs.
    #[error("{0} looks like a public key, not a key file: to pair this device with a device whose public key you have, run `tether pair --key KEY_FILE --peer {0}`")]
    KeyAsFile(String),
    /// `--peer` is not a public key.
    #[error(
        "--peer {0:?} is not a public key: {1} (64 hex characters, as `tether keygen` prints)"
    )]
    BadPeerKey(String, tether_crypto::KeyError),
    /// `--peer` is this device's own key.
    #[error("--peer is the public key of {0} itself; a device cannot pair with itself")]
    PeerIsSelf(String),
}

/// Refuses a key file path whose file does not exist and whose name is a run of hex
/// digits at least 32 long: a public key given where a key file belongs, which would
/// otherwise become a new key file named after it.
fn not_a_public_key(path: &Path) -> Result<(), PairError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !path.exists() && name.len() >= 32 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(PairError::KeyAsFile(path.display().to_string()));
    }
    Ok(())
}

fn device(path: &Path) -> Result<PairedDevice, KeyFileError> {
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().replace(char::is_whitespace, "-"))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "peer".into());
    let (pair, created) = if path.exists() {
        (StaticKeypair::load(path)?, false)
    } else {
        let pair = StaticKeypair::generate(&mut OsRng);
        pair.save(path)?;
        (pair, true)
    };
    Ok(PairedDevice {
        name,
        key_file: path.to_path_buf(),
        public: *pair.public(),
        created,
    })
}

/// Pairs the devices whose key files are `a` and `b`: a file that does not exist is
/// created with a new keypair (0600), an existing one is read (and must be 0600).
pub fn pair(a: &Path, b: &Path) -> Result<Pairing, PairError> {
    not_a_public_key(a)?;
    not_a_public_key(b)?;
    let a = device(a)?;
    let b = device(b)?;
    if a.public == b.public {
        return Err(PairError::SameKey(
            a.key_file.display().to_string(),
            b.key_file.display().to_string(),
        ));
    }
    Ok(Pairing {
        a,
        b,
        rk: RelationshipKey::generate(&mut OsRng),
    })
}

/// This device and a peer known only by its public key, and their fresh relationship
/// key (`tether pair --peer`).
#[derive(Debug, Clone)]
pub struct PeerPairing {
    /// This device.
    pub device: PairedDevice,
    /// The peer's public key.
    pub peer: PublicKey,
    /// The relationship key both configs get.
    pub rk: RelationshipKey,
}

/// Pairs the device whose key file is `key` (created with a new keypair, 0600, if
/// missing) with the device whose public key is `peer_hex`. The hex is checked before
/// anything is created; no key file is ever made for the peer.
pub fn pair_with(key: &Path, peer_hex: &str) -> Result<PeerPairing, PairError> {
    let trimmed = peer_hex.trim().to_ascii_lowercase();
    let peer = PublicKey::from_hex(&trimmed)
        .map_err(|error| PairError::BadPeerKey(peer_hex.to_string(), error))?;
    not_a_public_key(key)?;
    let device = device(key)?;
    if device.public == peer {
        return Err(PairError::PeerIsSelf(device.key_file.display().to_string()));
    }
    Ok(PeerPairing {
        device,
        peer,
        rk: RelationshipKey::generate(&mut OsRng),
    })
}

/// How `tether pair` starts its line with the relay's `allow` entry for both devices.
pub const RELAY_ALLOW_PREFIX: &str = "in the relay's config, to admit both devices: ";

/// What `tether pair` says when a key existed: the devices may be paired already.
const REPAIR_NOTE: &str = "# A key file existed: if these devices are paired already, this new relationship key\n# replaces the old one, and both configs must take it (a node keeping the old one\n# cannot reach its peer). `tether invite` / `tether accept` check this for you.\n";

/// One `[[peers]]` entry, as TOML with a comment.
fn peers_entry(name: &str, public: &PublicKey, rk: &RelationshipKey) -> String {
    format!(
        "[[peers]]\nname = \"{name}\"\npublic_key = \"{}\"\nrelationship_key = \"{}\"\naddresses = []  # \"ip:port\" where {name} listens, if known\n",
        public.to_hex(),
        rk.to_hex().as_str(),
    )
}

/// The comment line describing a device's key file.
fn device_line(d: &PairedDevice) -> String {
    format!(
        "# {}: key file {} ({}), public key {}\n",
        d.name,
        d.key_file.display(),
        if d.created {
            "created, mode 0600"
        } else {
            "existing"
        },
        d.public.to_hex()
    )
}

/// The relay's `allow` line for two devices.
fn allow_line(a: &PublicKey, b: &PublicKey) -> String {
    format!(
        "# {RELAY_ALLOW_PREFIX}allow = [\"{}\", \"{}\"]\n",
        a.to_hex(),
        b.to_hex()
    )
}

impl Pairing {
    /// The `[[peers]]` entries for both configs, as TOML with comments, and the
    /// relay's `allow` line for both devices.
    pub fn render(&self) -> String {
        let note = if self.a.created && self.b.created {
            ""
        } else {
            REPAIR_NOTE
        };
        format!(
            "{}{}# The relationship key is a secret: keep both config files mode 0600.\n{note}{}\n# --- in {}'s config (key_file = \"{}\"):\n{}\n# --- in {}'s config (key_file = \"{}\"):\n{}",
            device_line(&self.a),
            device_line(&self.b),
            allow_line(&self.a.public, &self.b.public),
            self.a.name,
            self.a.key_file.display(),
            peers_entry(&self.b.name, &self.b.public, &self.rk),
            self.b.name,
            self.b.key_file.display(),
            peers_entry(&self.a.name, &self.a.public, &self.rk),
        )
    }
}

impl PeerPairing {
    /// The peer's name in this device's config: its short device id.
    pub fn peer_name(&self) -> String {
        tether_protocol::DeviceId(*self.peer.as_bytes()).short()
    }

    /// This device's `[[peers]]` entry for the peer, the entry for the peer's config,
    /// and the relay's `allow` line, as TOML with comments.
    pub fn render(&self) -> String {
        let note = if self.device.created { "" } else { REPAIR_NOTE };
        format!(
            "{}# the peer: public key {}\n# The relationship key is a secret: keep both config files mode 0600, and hand the\n# peer its entry over a private channel.\n{note}{}\n# --- in {}'s config (key_file = \"{}\"):\n{}\n# --- in the peer's config:\n{}",
            device_line(&self.device),
            self.peer.to_hex(),
            allow_line(&self.device.public, &self.peer),
            self.device.name,
            self.device.key_file.display(),
            peers_entry(&self.peer_name(), &self.peer, &self.rk),
            peers_entry(&self.device.name, &self.device.public, &self.rk),
        )
    }
}
