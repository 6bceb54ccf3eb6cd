//! Writing a new `[[peers]]` entry into a node's config file, the way a person would:
//! the file's comments, order and formatting stay as they are, the entry is appended
//! (or, when re-pairing, only its `relationship_key` changes), and the result must load
//! as a node config before it replaces the file, atomically, with the file's mode.

use super::config::{self, ConfigError};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use tether_crypto::{PublicKey, RelationshipKey};
use toml_edit::{value, Array, ArrayOfTables, DocumentMut, InlineTable, Item, Table};

/// A peer entry to write.
#[derive(Debug, Clone)]
pub struct NewPeer {
    /// Its name in this config (already unique here, see [`unique_name`]).
    pub name: String,
    /// Its public key.
    pub public: PublicKey,
    /// The pair's relationship key.
    pub rk: RelationshipKey,
}

/// What [`write_peer`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// A new `[[peers]]` entry named so was appended.
    Added {
        /// Its name.
        name: String,
    },
    /// The entry for this key existed; its relationship key was replaced.
    Replaced {
        /// Its name (as the entry had it, or the key's short id).
        name: String,
    },
}

impl Written {
    /// The peer's name in the config.
    pub fn name(&self) -> &str {
        match self {
            Written::Added { name } | Written::Replaced { name } => name,
        }
    }
}

/// Why the entry could not be written. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The file could not be read or replaced.
    #[error("cannot update {path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The file is not TOML this module can edit.
    #[error("cannot update {path}: {reason}")]
    Shape {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The edited config does not load (and was not written).
    #[error("the config with the new peer would not load, so it was left as it was: {0}")]
    Invalid(#[from] ConfigError),
}

/// `wanted` made into a valid peer name (letters, digits, `.`, `_`, `-`; at most 32
/// characters), made unique among `taken` with a `-2`, `-3`... suffix; `fallback` when
/// nothing of `wanted` is usable.
pub fn unique_name<'a>(
    wanted: &str,
    fallback: &str,
    taken: impl IntoIterator<Item = &'a str> + Clone,
) -> String {
    let clean: String = wanted
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(32)
        .collect();
    let clean = clean.trim_matches('-');
    let base = if clean.is_empty() { fallback } else { clean };
    let is_taken = |name: &str| taken.clone().into_iter().any(|t| t == name);
    if !is_taken(base) {
        return base.to_string();
    }
    (2..)
        .map(|n| format!("{base}-{n}"))
        .find(|name| !is_taken(name))
        .unwrap_or_else(|| base.to_string())
}

fn io_error(path: &Path, error: impl std::fmt::Display) -> WriteError {
    WriteError::Io {
        path: path.display().to_string(),
        reason: error.to_string(),
    }
}

fn shape_error(path: &Path, reason: &str) -> WriteError {
    WriteError::Shape {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Adds `peer` to the node config at `path`, or replaces the relationship key of the
/// entry that already has its public key. The edited text is written next to the file,
/// loaded as a node config (so a broken result never replaces a working file), then
/// renamed over it with the file's own mode.
pub fn write_peer(path: &Path, peer: &NewPeer) -> Result<Written, WriteError> {
    // Edit the file a symbolic link points to, not the link.
    let target: PathBuf = std::fs::canonicalize(path).map_err(|e| io_error(path, e))?;
    let text = std::fs::read_to_string(&target).map_err(|e| io_error(path, e))?;
    let mode = std::fs::metadata(&target)
        .map_err(|e| io_error(path, e))?
        .permissions()
        .mode()
        & 0o7777;
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| shape_error(path, &e.to_string()))?;
    let written = edit(&mut doc, peer).map_err(|reason| shape_error(path, &reason))?;
    let mut edited = doc.to_string();
    if !edited.ends_with('\n') {
        edited.push('\n');
    }

    let folder = target.parent().unwrap_or(Path::new("."));
    let file_name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "node.toml".into());
    let temp = folder.join(format!(".{file_name}.pairing-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)
            .map_err(|e| io_error(&temp, e))?;
        file.write_all(edited.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| io_error(&temp, e))?;
        // The mode given at creation is masked by the umask; set it exactly.
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(mode))
            .map_err(|e| io_error(&temp, e))?;
        // Relative paths in the config resolve against its folder, which is the
        // temporary file's folder too.
        config::load_node(&temp)?;
        std::fs::rename(&temp, &target).map_err(|e| io_error(path, e))?;
        if let Ok(dir) = std::fs::File::open(folder) {
            let _ = dir.sync_all();
        }
        Ok(written)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result.map_err(|error| match error {
        // Name the real file, not the temporary one, in a config error.
        WriteError::Invalid(ConfigError::Key {
            origin,
            key,
            problem,
        }) => WriteError::Invalid(ConfigError::Key {
            origin: origin.replace(&temp.display().to_string(), &path.display().to_string()),
            key,
            problem,
        }),
        other => other,
    })
}

/// The edit itself: replace the key of the entry for `peer.public`, or append one.
fn edit(doc: &mut DocumentMut, peer: &NewPeer) -> Result<Written, String> {
    let hex = peer.public.to_hex();
    let rk = peer.rk.to_hex();
    let short = tether_protocol::DeviceId(*peer.public.as_bytes()).short();
    let has_key = |key: Option<&Item>| key.and_then(Item::as_str) == Some(hex.as_str());
    match doc.get_mut("peers") {
        None => {
            let mut peers = ArrayOfTables::new();
            peers.push(new_table(peer, &hex, &rk));
            doc.insert("peers", Item::ArrayOfTables(peers));
        }
        Some(Item::ArrayOfTables(peers)) => {
            if let Some(entry) = peers.iter_mut().find(|t| has_key(t.get("public_key"))) {
                entry.insert("relationship_key", value(rk.as_str()));
                let name = entry.get("name").and_then(Item::as_str).unwrap_or(&short);
                return Ok(Written::Replaced {
                    name: name.to_string(),
                });
            }
            peers.push(new_table(peer, &hex, &rk));
        }
        Some(Item::Value(toml_edit::Value::Array(peers))) => {
            for entry in peers.iter_mut() {
                let Some(entry) = entry.as_inline_table_mut() else {
                    continue;
                };
                if entry.get("public_key").and_then(|v| v.as_str()) == Some(hex.as_str()) {
                    entry.insert("relationship_key", rk.as_str().into());
                    let name = entry.get("name").and_then(|v| v.as_str()).unwrap_or(&short);
                    return Ok(Written::Replaced {
                        name: name.to_string(),
                    });
                }
            }
            let mut entry = InlineTable::new();
            entry.insert("name", peer.name.as_str().into());
            entry.insert("public_key", hex.as_str().into());
            entry.insert("relationship_key", rk.as_str().into());
            entry.insert("addresses", Array::new().into());
            peers.push(entry);
        }
        Some(_) => return Err("`peers` is not an array of tables ([[peers]])".into()),
    }
    Ok(Written::Added {
        name: peer.name.clone(),
    })
}

fn new_table(peer: &NewPeer, hex: &str, rk: &str) -> Table {
    let mut table = Table::new();
    table.insert("name", value(peer.name.as_str()));
    table.insert("public_key", value(hex));
    table.insert("relationship_key", value(rk));
    table.insert("addresses", value(Array::new()));
    if let Some(item) = table.get_mut("addresses") {
        if let Some(v) = item.as_value_mut() {
            v.decor_mut().set_suffix(
                "  # \"ip:port\" where this peer listens, if known (else the relay finds it)",
            );
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn peer(seed: u64, name: &str) -> NewPeer {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        NewPeer {
            name: name.into(),
            public: *tether_crypto::StaticKeypair::generate(&mut rng).public(),
            rk: RelationshipKey::generate(&mut rng),
        }
    }

    #[test]
    fn names_are_cleaned_and_made_unique() {
        assert_eq!(unique_name("my laptop", "x", ["a"]), "my-laptop");
        assert_eq!(unique_name("phone", "x", ["phone", "phone-2"]), "phone-3");
        assert_eq!(unique_name("  ", "abcd", ["b"]), "abcd");
        assert_eq!(unique_name(&"a".repeat(80), "x", []).len(), 32);
    }

    #[test]
    fn an_entry_is_appended_keeping_comments_and_replaced_in_place() {
        let text = "# my node\nkey_file = \"a.key\" # the key\n\n[relay]\naddr = \"r:1\"\n";
        let mut doc: DocumentMut = text.parse().unwrap();
        let new = peer(1, "phone");
        assert_eq!(
            edit(&mut doc, &new).unwrap(),
            Written::Added {
                name: "phone".into()
            }
        );
        let out = doc.to_string();
        assert!(out.starts_with(text), "{out}");
        assert!(out.contains("[[peers]]\nname = \"phone\""), "{out}");
        assert!(out.contains(&new.public.to_hex()));

        let again = NewPeer {
            name: "other".into(),
            ..peer(2, "x")
        };
        let again = NewPeer {
            public: new.public,
            ..again
        };
        let mut doc: DocumentMut = out.parse().unwrap();
        assert_eq!(
            edit(&mut doc, &again).unwrap(),
            Written::Replaced {
                name: "phone".into()
            }
        );
        let replaced = doc.to_string();
        assert_eq!(replaced.matches("[[peers]]").count(), 1, "{replaced}");
        assert!(replaced.contains(again.rk.to_hex().as_str()));
        assert!(!replaced.contains(new.rk.to_hex().as_str()));
    }

    #[test]
    fn a_peers_key_of_another_shape_is_refused() {
        let mut doc: DocumentMut = "peers = 3\n".parse().unwrap();
        assert!(edit(&mut doc, &peer(3, "x")).is_err());
        let mut doc: DocumentMut = "peers = []\n".parse().unwrap();
        assert!(matches!(
            edit(&mut doc, &peer(3, "x")),
            Ok(Written::Added { .. })
        ));
        assert!(doc.to_string().contains("name = \"x\""));
    }
}
