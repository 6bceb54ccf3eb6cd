//! Default paths: where `tether` looks for a config, where a node puts its control
//! socket and its data when the config does not say, and where the client commands
//! look for a node.
//!
//! Two scopes. **Per user** (XDG base directories): configs in
//! `$XDG_CONFIG_HOME/tether/` (else `~/.config/tether/`), the socket in
//! `$XDG_RUNTIME_DIR/tether/` (else `/tmp/tether-UID/`, made 0700 and refused when
//! another user owns it), data in `$XDG_DATA_HOME/tether/` (else
//! `~/.local/share/tether/`). **System service**: configs in `/etc/tether/`, the socket
//! in `/run/tether/`, data in `/var/lib/tether/`. A node runs as a system service when
//! its config file is in `/etc/tether/`; whatever the scope, the folders systemd
//! passes to a unit (`$CONFIGURATION_DIRECTORY`, `$RUNTIME_DIRECTORY`,
//! `$STATE_DIRECTORY`, from `ConfigurationDirectory=` and so on) come first. Being root
//! alone does not make a system service: tests and one-off runs as root keep to
//! their own folders.

use std::path::{Path, PathBuf};

/// The system service's config folder.
pub const SYSTEM_CONFIG_DIR: &str = "/etc/tether";
/// The system service's runtime folder (its control socket).
pub const SYSTEM_RUNTIME_DIR: &str = "/run/tether";
/// The system service's data folder.
pub const SYSTEM_STATE_DIR: &str = "/var/lib/tether";
/// The socket file's name in a runtime folder.
pub const NODE_SOCKET: &str = "node.sock";

/// An environment variable that is set to an absolute path (the first of a
/// colon-separated list, as systemd passes them).
fn env_dir(name: &str) -> Option<PathBuf> {
    let value = std::env::var_os(name)?;
    let first = value.to_string_lossy().split(':').next()?.to_string();
    let dir = PathBuf::from(first);
    dir.is_absolute().then_some(dir)
}

fn home() -> Option<PathBuf> {
    env_dir("HOME")
}

/// Whether `config` is a system service's config (a file in `/etc/tether/`).
pub fn is_system_config(config: &Path) -> bool {
    config.parent() == Some(Path::new(SYSTEM_CONFIG_DIR))
}

/// The config files `tether` tries, in order, when no `--config` is given:
/// `$CONFIGURATION_DIRECTORY/NAME`, the user's `$XDG_CONFIG_HOME/tether/NAME` (else
/// `~/.config/tether/NAME`), then `/etc/tether/NAME`.
pub fn config_candidates(name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(dir) = env_dir("CONFIGURATION_DIRECTORY") {
        out.push(dir.join(name));
    }
    if let Some(dir) = env_dir("XDG_CONFIG_HOME").or_else(|| home().map(|h| h.join(".config"))) {
        out.push(dir.join("tether").join(name));
    }
    out.push(Path::new(SYSTEM_CONFIG_DIR).join(name));
    out
}

/// The default config file `NAME` (`node.toml`, `relay.toml`): the first of
/// [`config_candidates`] that exists, or Err naming where it was looked for.
pub fn default_config(name: &str) -> Result<PathBuf, String> {
    let candidates = config_candidates(name);
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .ok_or_else(|| {
            let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            format!(
                "no config given (--config FILE or TETHER_CONFIG) and none at {}",
                tried.join(" or ")
            )
        })
}

/// The user's runtime folder for the socket: `$XDG_RUNTIME_DIR/tether`, else
/// `/tmp/tether-UID`.
fn user_runtime_dir() -> PathBuf {
    match env_dir("XDG_RUNTIME_DIR") {
        Some(dir) => dir.join("tether"),
        None => {
            std::env::temp_dir().join(format!("tether-{}", rustix::process::geteuid().as_raw()))
        }
    }
}

/// The control socket of a node whose config (`config`) has no `control_socket`:
/// `$RUNTIME_DIRECTORY/node.sock`, `/run/tether/node.sock` for a system config, else
/// the user's runtime folder.
pub fn node_socket(config: &Path) -> PathBuf {
    if let Some(dir) = env_dir("RUNTIME_DIRECTORY") {
        return dir.join(NODE_SOCKET);
    }
    if is_system_config(config) {
        return Path::new(SYSTEM_RUNTIME_DIR).join(NODE_SOCKET);
    }
    user_runtime_dir().join(NODE_SOCKET)
}

/// Where a client looks for a node when given neither `--socket` nor `--config` and
/// no default config exists: `$RUNTIME_DIRECTORY/node.sock`, the user's socket, then
/// `/run/tether/node.sock`; the first that exists, else the user's (for the error).
pub fn client_socket() -> PathBuf {
    let user = user_runtime_dir().join(NODE_SOCKET);
    let candidates = [
        env_dir("RUNTIME_DIRECTORY").map(|d| d.join(NODE_SOCKET)),
        Some(user.clone()),
        Some(Path::new(SYSTEM_RUNTIME_DIR).join(NODE_SOCKET)),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|path| path.exists())
        .unwrap_or(user)
}

/// The data folder of a config (`config`) without `data_dir`: `$STATE_DIRECTORY`,
/// `/var/lib/tether` for a system config, else `$XDG_DATA_HOME/tether` or
/// `~/.local/share/tether`. None when none of them is known.
pub fn data_dir(config: &Path) -> Option<PathBuf> {
    if let Some(dir) = env_dir("STATE_DIRECTORY") {
        return Some(dir);
    }
    if is_system_config(config) {
        return Some(PathBuf::from(SYSTEM_STATE_DIR));
    }
    env_dir("XDG_DATA_HOME")
        .or_else(|| home().map(|h| h.join(".local/share")))
        .map(|dir| dir.join("tether"))
}

/// Makes the folder of a default control socket, mode 0700, and refuses one that
/// another user owns or others may enter (a shared `/tmp` is open to everyone).
pub fn ensure_socket_dir(socket: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create the socket folder {}: {e}", dir.display()))?;
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| format!("socket folder {}: {e}", dir.display()))?;
    let me = rustix::process::geteuid().as_raw();
    if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o077 != 0 {
        return Err(format!(
            "socket folder {} must be a folder of user {me} with mode 0700 (set control_socket or XDG_RUNTIME_DIR)",
            dir.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_in_etc_tether_is_a_system_service() {
        assert!(is_system_config(Path::new("/etc/tether/node.toml")));
        assert!(!is_system_config(Path::new(
            "/home/a/.config/tether/node.toml"
        )));
        assert!(!is_system_config(Path::new("node.toml")));
    }

    #[test]
    fn the_socket_folder_must_be_private() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let socket = dir.path().join("sub/node.sock");
        assert_eq!(ensure_socket_dir(&socket), Ok(()));
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap_or_else(|e| panic!("{e}"));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(ensure_socket_dir(&open.join("node.sock")).is_err());
    }
}
