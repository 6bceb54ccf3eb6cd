//! `tether keygen` and `tether pair`: static key files (mode 0600) and the config
//! entries that pair two devices.

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

/// How `tether pair` starts its line with the relay's `allow` entry for both devices.
pub const RELAY_ALLOW_PREFIX: &str = "in the relay's config, to admit both devices: ";

impl Pairing {
    /// The `[[peers]]` entries for both configs, as TOML with comments, and the
    /// relay's `allow` line for both devices.
    pub fn render(&self) -> String {
        let entry = |of: &PairedDevice| {
            format!(
                "[[peers]]\nname = \"{}\"\npublic_key = \"{}\"\nrelationship_key = \"{}\"\naddresses = []  # \"ip:port\" where {} listens, if known\n",
                of.name,
                of.public.to_hex(),
                self.rk.to_hex().as_str(),
                of.name,
            )
        };
        let line = |d: &PairedDevice| {
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
        };
        format!(
            "{}{}# The relationship key is a secret: keep both config files mode 0600.\n# {}{}\n\n# --- in {}'s config (key_file = \"{}\"):\n{}\n# --- in {}'s config (key_file = \"{}\"):\n{}",
            line(&self.a),
            line(&self.b),
            RELAY_ALLOW_PREFIX,
            format_args!(
                "allow = [\"{}\", \"{}\"]",
                self.a.public.to_hex(),
                self.b.public.to_hex()
            ),
            self.a.name,
            self.a.key_file.display(),
            entry(&self.b),
            self.b.name,
            self.b.key_file.display(),
            entry(&self.a),
        )
    }
}
