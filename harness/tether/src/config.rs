//! The config files of `tether node` and `tether relay`: TOML read with the `config`
//! crate, every key overridable by a `TETHER_*` environment variable, checked key by
//! key so that a mistake is reported as one line naming the key and the problem.
//!
//! Environment variables map to keys by dropping the `TETHER_` prefix, lowercasing,
//! and reading `__` as the `.` between a table and its key: `TETHER_LISTEN` sets
//! `listen`, `TETHER_RELAY__ADDR` sets `relay.addr`, `TETHER_PRESENCE__MIGRATION_WINDOW_MS`
//! sets `presence.migration_window_ms`. The peer list (`[[peers]]`) can only be set in
//! the file. `TETHER_CONFIG` and `TETHER_SOCKET` belong to the command line and are not
//! config keys. Every key and its default is documented in `docs/config.md`.

use crate::node::{NodePeer, ServerInfo};
use crate::paths;
use config::{Environment, File, FileFormat, Map, Value, ValueKind};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tether_crypto::{
    KeyFileError, PublicKey, RelationshipKey, StaticKeypair, NOISE_MAX_MESSAGE_LEN,
};
use tether_direct_connection::Limits;
use tether_protocol::DeviceId;
use tether_rcs::Admission;
use tether_transport::TransportConfig;

/// Environment variables with the `TETHER_` prefix that belong to the command line.
pub const CLI_ENV_VARS: [&str; 2] = ["TETHER_CONFIG", "TETHER_SOCKET"];

/// Largest `limits.max_message_len` a config may set: a message travels in one sealed
/// frame, which Noise caps at [`NOISE_MAX_MESSAGE_LEN`] bytes; 1 KiB of that is kept for
/// the session frame's fields around the payload and the AEAD tag.
pub const MAX_MESSAGE_LEN_CEILING: usize = NOISE_MAX_MESSAGE_LEN - 1024;

/// Prefix of environment variables that override config keys.
const ENV_PREFIX: &str = "TETHER_";

/// Why a config could not be used. Each renders as one line naming the key (when one
/// is at fault) and the problem.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// The operating system's reason.
        reason: String,
    },
    /// The file is not valid TOML.
    #[error("config file {path} is not valid TOML: {reason}")]
    Syntax {
        /// The file.
        path: String,
        /// The parser's message (position and problem).
        reason: String,
    },
    /// One key is missing, of the wrong type, or has an invalid value.
    #[error("{origin}: key `{key}`: {problem}")]
    Key {
        /// Where the value came from: the file, or the environment variable.
        origin: String,
        /// The key, as a path (`peers[0].public_key`).
        key: String,
        /// What is wrong.
        problem: String,
    },
}

/// The log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("expected \"text\" or \"json\", found {other:?}")),
        }
    }
}

/// One paired peer of a node.
#[derive(Clone)]
pub struct PeerSettings {
    /// The name used in `tether send` and in logs.
    pub name: String,
    /// Its key, relationship key and addresses.
    pub peer: NodePeer,
}

/// Everything `tether node` reads from its config.
#[derive(Clone)]
pub struct NodeSettings {
    /// The key file the keypair came from.
    pub key_file: PathBuf,
    /// This device's static keypair.
    pub keypair: StaticKeypair,
    /// The UDP address to listen on.
    pub listen: SocketAddr,
    /// The control socket path.
    pub control_socket: PathBuf,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// Log output format.
    pub log_format: LogFormat,
    /// Whether to watch the OS's interfaces and rebind on a change.
    pub watch_interfaces: bool,
    /// The relay and rendezvous server (its address resolved when the config was read).
    pub relay: ServerInfo,
    /// The relay's address as the config gives it (`host:port` or `ip:port`).
    pub relay_name: String,
    /// Paired peers.
    pub peers: Vec<PeerSettings>,
    /// Presence settings.
    pub presence: tether_presence::Config,
    /// DirectConnection limits.
    pub limits: Limits,
    /// QUIC transport settings.
    pub transport: TransportConfig,
    /// Where the node keeps its channels across restarts (in
    /// `node-<device>/channels.redb` below it).
    pub data_dir: PathBuf,
    /// Problems that do not stop the node (logged at start).
    pub warnings: Vec<String>,
}

/// Everything `tether relay` reads from its config.
#[derive(Clone)]
pub struct RelaySettings {
    /// The key file the keypair came from.
    pub key_file: PathBuf,
    /// The server's static keypair.
    pub keypair: StaticKeypair,
    /// The UDP address to listen on.
    pub listen: SocketAddr,
    /// The control socket path, if any.
    pub control_socket: Option<PathBuf>,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// Log output format.
    pub log_format: LogFormat,
    /// QUIC transport settings.
    pub transport: TransportConfig,
    /// Where the relay keeps its durable queue (in `relay/` below it).
    pub data_dir: PathBuf,
    /// Which devices the relay serves: the keys of `allow` and `allow_file`, or any
    /// device with `admission = "open"`.
    pub admission: Admission,
}

/// Default listen address of a node: every interface, a port the OS picks.
pub const DEFAULT_NODE_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
/// Default listen address of the relay.
pub const DEFAULT_RELAY_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 7300);

/// Reads and checks a node config: the file, then `TETHER_*` overrides.
pub fn load_node(path: &Path) -> Result<NodeSettings, ConfigError> {
    load(path, |root, path| node_from(root, path, Peers::Required))
}

/// [`load_node`] for `tether invite` and `tether accept`: the same checks, except that
/// a config without any `[[peers]]` (a device not paired yet) is valid.
pub fn load_node_for_pairing(path: &Path) -> Result<NodeSettings, ConfigError> {
    load(path, |root, path| node_from(root, path, Peers::Optional))
}

/// Whether a node config must list a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peers {
    /// `tether node`: a node without peers has nothing to do.
    Required,
    /// Pairing: the config is about to get its first peer.
    Optional,
}

/// Reads and checks a relay config: the file, then `TETHER_*` overrides.
pub fn load_relay(path: &Path) -> Result<RelaySettings, ConfigError> {
    load(path, relay_from)
}

/// Reads the file and the overrides, builds the settings, and refuses unknown keys.
fn load<T>(
    path: &Path,
    settings_from: impl FnOnce(&mut Fields, &Path) -> Result<T, ConfigError>,
) -> Result<T, ConfigError> {
    let env = env_overrides();
    let mut root = Fields::root(read_sources(path, &env)?, path, &env);
    let settings = settings_from(&mut root, path)?;
    root.finish()?;
    Ok(settings)
}

/// Only the `control_socket` key of a config (for the client commands), without
/// loading keys or checking anything else; a node's config (one with `[[peers]]`)
/// without it has the default socket ([`paths::node_socket`]).
pub fn control_socket_of(path: &Path) -> Result<PathBuf, ConfigError> {
    let env = env_overrides();
    let mut root = Fields::root(read_sources(path, &env)?, path, &env);
    let is_node = root.map.contains_key("peers");
    match root.string("control_socket")? {
        Some(socket) => Ok(resolve(path, &socket)),
        None if is_node => Ok(paths::node_socket(path)),
        None => Err(root.error(
            "control_socket",
            "missing (this config has no control socket)",
        )),
    }
}

fn node_from(root: &mut Fields, path: &Path, need: Peers) -> Result<NodeSettings, ConfigError> {
    let (key_file, keypair) = key_file(root, path)?;
    let listen = root.socket_addr("listen")?.unwrap_or(DEFAULT_NODE_LISTEN);
    let control_socket = root
        .string("control_socket")?
        .map_or_else(|| paths::node_socket(path), |p| resolve(path, &p));
    let metrics_addr = root.socket_addr("metrics_addr")?;
    let log_format = log_format(root)?;
    let watch_interfaces = root.bool("watch_interfaces")?.unwrap_or(true);

    let mut relay_fields = root
        .table("relay")?
        .ok_or_else(|| root.error("relay", "missing (the [relay] table: addr and public_key)"))?;
    let relay_name = relay_fields
        .string("addr")?
        .ok_or_else(|| relay_fields.error("addr", "missing (the relay's host:port)"))?;
    let relay = ServerInfo {
        addr: resolve_host(&relay_name, listen)
            .map_err(|problem| relay_fields.error("addr", &problem))?,
        public: public_key(&mut relay_fields, "public_key")?,
    };
    relay_fields.finish()?;

    let mut peers: Vec<PeerSettings> = Vec::new();
    let mut names = BTreeSet::new();
    let mut keys = BTreeSet::new();
    for mut peer in root.tables("peers")? {
        let public = public_key(&mut peer, "public_key")?;
        let name = match peer.string("name")? {
            Some(name) if name.is_empty() || name.contains(char::is_whitespace) => {
                return Err(peer.error("name", "must be non-empty and without spaces"));
            }
            Some(name) => name,
            None => tether_protocol::DeviceId(*public.as_bytes()).short(),
        };
        let rk_hex = peer.string("relationship_key")?.ok_or_else(|| {
            peer.error(
                "relationship_key",
                "missing (the 64 hex characters `tether pair` printed)",
            )
        })?;
        let rk = RelationshipKey::from_hex(&rk_hex)
            .map_err(|e| peer.error("relationship_key", &e.to_string()))?;
        let mut addrs = Vec::new();
        for (i, text) in peer.strings("addresses")?.into_iter().enumerate() {
            let addr = text.parse::<SocketAddr>().map_err(|_| {
                peer.error(
                    &format!("addresses[{i}]"),
                    &format!("{text:?} is not an ip:port address"),
                )
            })?;
            addrs.push(addr);
        }
        if &public == keypair.public() {
            return Err(peer.error("public_key", "is this device's own key"));
        }
        if !keys.insert(public) {
            return Err(peer.error("public_key", "the same peer is listed twice"));
        }
        if !names.insert(name.clone()) {
            return Err(peer.error("name", &format!("{name:?} is used by another peer")));
        }
        peer.finish()?;
        peers.push(PeerSettings {
            name,
            peer: NodePeer { public, rk, addrs },
        });
    }
    if peers.is_empty() && need == Peers::Required {
        return Err(root.error(
            "peers",
            "no peer configured (pair with `tether invite` and `tether accept`, or add a [[peers]] table that `tether pair` prints)",
        ));
    }

    let mut presence = tether_presence::Config::default();
    if let Some(mut table) = root.table("presence")? {
        table.duration("migration_window_ms", &mut presence.migration_window)?;
        table.duration(
            "migration_ping_interval_ms",
            &mut presence.migration_ping_interval,
        )?;
        table.duration("relay_poll_interval_ms", &mut presence.relay_poll_interval)?;
        table.duration(
            "migration_relay_after_ms",
            &mut presence.migration_relay_after,
        )?;
        if let Some(n) = table.positive("max_concurrent_migrations")? {
            presence.max_concurrent_migrations = usize::try_from(n).unwrap_or(usize::MAX);
        }
        table.finish()?;
    }
    let mut limits = Limits::default();
    if let Some(mut table) = root.table("limits")? {
        table.duration("heartbeat_interval_ms", &mut limits.heartbeat_interval)?;
        if let Some(n) = table.positive("missed_heartbeats")? {
            limits.missed_heartbeats =
                u32::try_from(n).map_err(|_| table.error("missed_heartbeats", "is too large"))?;
        }
        table.duration("relay_fallback_after_ms", &mut limits.relay_fallback_after)?;
        table.duration("handshake_retry_ms", &mut limits.handshake_retry)?;
        table.duration("connect_timeout_ms", &mut limits.connect_timeout)?;
        table.duration("rekey_after_ms", &mut limits.rekey_after)?;
        if let Some(n) = table.positive("max_queued")? {
            limits.max_queued = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(n) = table.positive("max_queued_bytes")? {
            limits.max_queued_bytes = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(n) = table.positive("max_message_len")? {
            if n > MAX_MESSAGE_LEN_CEILING as u64 {
                return Err(table.error(
                    "max_message_len",
                    &format!("{n} is above {MAX_MESSAGE_LEN_CEILING} (one sealed Noise frame)"),
                ));
            }
            limits.max_message_len = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(n) = table.positive("receive_budget")? {
            limits.receive_budget = usize::try_from(n).unwrap_or(usize::MAX);
        }
        // What fills a gap must fit in half the budget, or a channel could stall.
        if limits.receive_budget < 4 * limits.max_message_len {
            return Err(table.error(
                "receive_budget",
                &format!(
                    "{} is below four times max_message_len ({})",
                    limits.receive_budget,
                    4 * limits.max_message_len
                ),
            ));
        }
        table.finish()?;
    }
    let transport = transport(root)?;
    let data_dir = data_dir(root, path)?;

    let mut warnings = Vec::new();
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            warnings.push(format!(
                "config file {} holds relationship keys and has mode {mode:04o}; run `chmod 600 {}`",
                path.display(),
                path.display()
            ));
        }
    }

    Ok(NodeSettings {
        key_file,
        keypair,
        listen,
        control_socket,
        metrics_addr,
        log_format,
        watch_interfaces,
        relay,
        relay_name,
        peers,
        presence,
        limits,
        transport,
        data_dir,
        warnings,
    })
}

fn relay_from(root: &mut Fields, path: &Path) -> Result<RelaySettings, ConfigError> {
    let (key_file, keypair) = key_file(root, path)?;
    let listen = root.socket_addr("listen")?.unwrap_or(DEFAULT_RELAY_LISTEN);
    let control_socket = root.string("control_socket")?.map(|p| resolve(path, &p));
    let metrics_addr = root.socket_addr("metrics_addr")?;
    let log_format = log_format(root)?;
    let transport = transport(root)?;
    let data_dir = data_dir(root, path)?;
    let admission = admission(root, path)?;
    Ok(RelaySettings {
        key_file,
        keypair,
        listen,
        control_socket,
        metrics_addr,
        log_format,
        transport,
        data_dir,
        admission,
    })
}

/// What to set when a relay config says nothing about who it serves.
const ADMISSION_MISSING: &str = "missing: list the devices this relay serves with \
    `allow = [\"<device public key>\", ...]` (or `allow_file`), or set `admission = \"open\"` \
    to serve any device that proves a key";

/// The `admission`, `allow` and `allow_file` keys of a relay config. An allowlist is
/// the default; a relay with neither an allowlist nor `admission = "open"` does not
/// start, so a fresh config never serves everyone by accident.
fn admission(root: &mut Fields, path: &Path) -> Result<Admission, ConfigError> {
    let mode = root.string("admission")?;
    let listed = root.strings("allow")?;
    let file = root.string("allow_file")?.map(|p| resolve(path, &p));
    match mode.as_deref() {
        Some("open") => {
            if !listed.is_empty() {
                return Err(root.error(
                    "allow",
                    "not used with admission = \"open\" (remove one of them)",
                ));
            }
            if file.is_some() {
                return Err(root.error(
                    "allow_file",
                    "not used with admission = \"open\" (remove one of them)",
                ));
            }
            return Ok(Admission::Open);
        }
        None | Some("allowlist") => {}
        Some(other) => {
            return Err(root.error(
                "admission",
                &format!("expected \"allowlist\" or \"open\", found {other:?}"),
            ))
        }
    }
    if mode.is_none() && listed.is_empty() && file.is_none() {
        return Err(root.error("admission", ADMISSION_MISSING));
    }
    let mut allowed = std::collections::BTreeSet::new();
    for (i, hex) in listed.iter().enumerate() {
        let key = PublicKey::from_hex(hex.trim())
            .map_err(|e| root.error(&format!("allow[{i}]"), &e.to_string()))?;
        allowed.insert(DeviceId(*key.as_bytes()));
    }
    if let Some(file) = &file {
        let text = std::fs::read_to_string(file).map_err(|e| {
            root.error(
                "allow_file",
                &format!("cannot read {}: {e}", file.display()),
            )
        })?;
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let key = PublicKey::from_hex(line).map_err(|e| {
                root.error(
                    "allow_file",
                    &format!("{} line {}: {e}", file.display(), n + 1),
                )
            })?;
            allowed.insert(DeviceId(*key.as_bytes()));
        }
    }
    if allowed.is_empty() {
        return Err(root.error(
            "allow",
            "the allowlist is empty: list the public keys of the devices this relay serves, \
             or set admission = \"open\"",
        ));
    }
    Ok(Admission::Allowlist(allowed))
}

/// The `data_dir` key: relative to the config file, or the per-user default.
fn data_dir(root: &mut Fields, path: &Path) -> Result<PathBuf, ConfigError> {
    match root.string("data_dir")? {
        Some(dir) if dir.is_empty() => Err(root.error("data_dir", "must not be empty")),
        Some(dir) => Ok(resolve(path, &dir)),
        None => paths::data_dir(path).ok_or_else(|| {
            root.error(
                "data_dir",
                "missing, and there is no default: neither XDG_DATA_HOME nor HOME is set",
            )
        }),
    }
}

/// `host:port` or `ip:port` as one address: an IP as it is, a host name looked up
/// (blocking, once), preferring an address of the family `listen` is bound to (a socket
/// bound to an IPv4 address cannot reach an IPv6 one). Err says why in words.
pub fn resolve_host(text: &str, listen: SocketAddr) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs as _;
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let well_formed = text
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !well_formed {
        return Err(format!(
            "{text:?} is not host:port or ip:port (e.g. \"relay.example.org:7300\")"
        ));
    }
    let found: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|e| format!("{text:?} does not resolve: {e}"))?
        .collect();
    found
        .iter()
        .find(|a| a.is_ipv4() == listen.is_ipv4())
        .or(found.first())
        .copied()
        .ok_or_else(|| format!("{text:?} does not resolve: no address"))
}

fn key_file(root: &mut Fields, path: &Path) -> Result<(PathBuf, StaticKeypair), ConfigError> {
    let file = root
        .string("key_file")?
        .map(|p| resolve(path, &p))
        .ok_or_else(|| {
            root.error(
                "key_file",
                "missing (a key file written by `tether keygen`)",
            )
        })?;
    let keypair = StaticKeypair::load(&file).map_err(|error| {
        let problem = match &error {
            KeyFileError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                format!(
                    "key file {} does not exist (create one with `tether keygen --out {}`)",
                    file.display(),
                    file.display()
                )
            }
            _ => error.to_string(),
        };
        root.error("key_file", &problem)
    })?;
    Ok((file, keypair))
}

fn log_format(root: &mut Fields) -> Result<LogFormat, ConfigError> {
    match root.string("log_format")? {
        None => Ok(LogFormat::Text),
        Some(text) => text
            .parse()
            .map_err(|e: String| root.error("log_format", &e)),
    }
}

fn transport(root: &mut Fields) -> Result<TransportConfig, ConfigError> {
    let mut transport = TransportConfig::default();
    if let Some(mut table) = root.table("transport")? {
        table.duration("keep_alive_ms", &mut transport.keep_alive)?;
        table.duration("idle_timeout_ms", &mut transport.idle_timeout)?;
        table.duration("dial_timeout_ms", &mut transport.dial_timeout)?;
        if let Err(error) = transport.validate() {
            return Err(table.error("keep_alive_ms", &error.to_string()));
        }
        table.finish()?;
    }
    Ok(transport)
}

fn public_key(fields: &mut Fields, key: &str) -> Result<PublicKey, ConfigError> {
    let hex = fields.string(key)?.ok_or_else(|| {
        fields.error(
            key,
            "missing (64 hex characters, as `tether keygen` prints)",
        )
    })?;
    PublicKey::from_hex(&hex).map_err(|e| fields.error(key, &e.to_string()))
}

/// A relative path in a config file is relative to the file's folder.
fn resolve(config: &Path, value: &str) -> PathBuf {
    let path = PathBuf::from(value);
    if path.is_absolute() {
        return path;
    }
    match config.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(path),
        _ => path,
    }
}

/// The `TETHER_*` variables that are config keys (key path → variable name).
fn env_overrides() -> BTreeMap<String, String> {
    std::env::vars()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX) && !CLI_ENV_VARS.contains(&name.as_str()))
        .collect()
}

fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "__").to_uppercase())
}

fn read_sources(
    path: &Path,
    env: &BTreeMap<String, String>,
) -> Result<Map<String, Value>, ConfigError> {
    let shown = path.display().to_string();
    if let Err(error) = std::fs::metadata(path) {
        return Err(ConfigError::Read {
            path: shown,
            reason: error.to_string(),
        });
    }
    if let Some(name) = env.keys().find(|name| name.starts_with("TETHER_PEERS")) {
        return Err(ConfigError::Key {
            origin: format!("environment variable {name}"),
            key: "peers".into(),
            problem: "peers can only be set in the config file".into(),
        });
    }
    let source: Map<String, String> = env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let built = config::Config::builder()
        .add_source(File::from(path).format(FileFormat::Toml).required(true))
        .add_source(
            Environment::with_prefix("TETHER")
                .prefix_separator("_")
                .separator("__")
                .source(Some(source)),
        )
        .build()
        .map_err(|error| match error {
            config::ConfigError::FileParse { cause, .. } => ConfigError::Syntax {
                path: shown.clone(),
                reason: one_line(&cause.to_string()),
            },
            other => ConfigError::Read {
                path: shown.clone(),
                reason: one_line(&other.to_string()),
            },
        })?;
    built.cache_table().map_err(|reason| ConfigError::Read {
        path: shown,
        reason: one_line(&reason),
    })
}

/// Folds a multi-line parser message (position, source excerpt, caret, problem) into
/// "position: problem".
fn one_line(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('|') && !l.contains(" | ") && *l != "^")
        .collect();
    match lines.as_slice() {
        [] => text.trim().to_string(),
        [one] => (*one).to_string(),
        [first, .., last] => {
            let first = first.trim_start_matches("TOML parse error at ");
            format!("{first}: {last}")
        }
    }
}

trait CacheTable {
    fn cache_table(self) -> Result<Map<String, Value>, String>;
}

impl CacheTable for config::Config {
    fn cache_table(self) -> Result<Map<String, Value>, String> {
        use config::Source;
        self.collect().map_err(|e| e.to_string())
    }
}

/// The keys of one table, taken one by one; whatever is left at the end is unknown.
struct Fields {
    prefix: String,
    map: BTreeMap<String, Value>,
    file: String,
    env: BTreeSet<String>,
}

impl Fields {
    fn root(map: Map<String, Value>, path: &Path, env: &BTreeMap<String, String>) -> Self {
        Self {
            prefix: String::new(),
            map: map.into_iter().collect(),
            file: path.display().to_string(),
            env: env.keys().cloned().collect(),
        }
    }

    fn path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    fn error(&self, key: &str, problem: &str) -> ConfigError {
        let path = self.path(key);
        let var = env_name(&path);
        let origin = if self.env.contains(&var) {
            format!("environment variable {var}")
        } else {
            self.file.clone()
        };
        ConfigError::Key {
            origin,
            key: path,
            problem: problem.to_string(),
        }
    }

    fn take(&mut self, key: &str) -> Option<Value> {
        self.map
            .remove(key)
            .filter(|v| !matches!(v.kind, ValueKind::Nil))
    }

    fn type_error(&self, key: &str, expected: &str, found: &Value) -> ConfigError {
        self.error(
            key,
            &format!("expected {expected}, found {}", describe(found)),
        )
    }

    fn string(&mut self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.take(key) {
            None => Ok(None),
            Some(value) => match value.kind {
                ValueKind::String(s) => Ok(Some(s)),
                _ => Err(self.type_error(key, "a string", &value)),
            },
        }
    }

    fn bool(&mut self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.take(key) {
            None => Ok(None),
            Some(value) => match &value.kind {
                ValueKind::Boolean(b) => Ok(Some(*b)),
                ValueKind::String(s) if s == "true" => Ok(Some(true)),
                ValueKind::String(s) if s == "false" => Ok(Some(false)),
                _ => Err(self.type_error(key, "true or false", &value)),
            },
        }
    }

    fn u64(&mut self, key: &str) -> Result<Option<u64>, ConfigError> {
        match self.take(key) {
            None => Ok(None),
            Some(value) => {
                let n = match &value.kind {
                    ValueKind::I64(n) => u64::try_from(*n).ok(),
                    ValueKind::U64(n) => Some(*n),
                    ValueKind::I128(n) => u64::try_from(*n).ok(),
                    ValueKind::U128(n) => u64::try_from(*n).ok(),
                    ValueKind::String(s) => s.trim().parse::<u64>().ok(),
                    _ => None,
                };
                n.map(Some)
                    .ok_or_else(|| self.type_error(key, "a non-negative integer", &value))
            }
        }
    }

    fn positive(&mut self, key: &str) -> Result<Option<u64>, ConfigError> {
        match self.u64(key)? {
            Some(0) => Err(self.error(key, "must be greater than 0")),
            other => Ok(other),
        }
    }

    /// A `*_ms` key: milliseconds, above zero, written into `slot` when present.
    fn duration(&mut self, key: &str, slot: &mut Duration) -> Result<(), ConfigError> {
        if let Some(ms) = self.positive(key)? {
            if ms > 86_400_000 {
                return Err(self.error(key, &format!("{ms} ms is more than a day")));
            }
            *slot = Duration::from_millis(ms);
        }
        Ok(())
    }

    fn socket_addr(&mut self, key: &str) -> Result<Option<SocketAddr>, ConfigError> {
        match self.string(key)? {
            None => Ok(None),
            Some(text) => text.parse::<SocketAddr>().map(Some).map_err(|_| {
                self.error(
                    key,
                    &format!("{text:?} is not an ip:port address (e.g. \"127.0.0.1:7300\")"),
                )
            }),
        }
    }

    fn strings(&mut self, key: &str) -> Result<Vec<String>, ConfigError> {
        match self.take(key) {
            None => Ok(Vec::new()),
            Some(value) => match value.kind {
                ValueKind::Array(items) => {
                    let mut out = Vec::new();
                    for (i, item) in items.into_iter().enumerate() {
                        match item.kind {
                            ValueKind::String(s) => out.push(s),
                            _ => {
                                return Err(self.type_error(
                                    &format!("{key}[{i}]"),
                                    "a string",
                                    &item,
                                ))
                            }
                        }
                    }
                    Ok(out)
                }
                // One address from the environment: "a,b" is a list.
                ValueKind::String(s) => Ok(s
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()),
                _ => Err(self.type_error(key, "an array of strings", &value)),
            },
        }
    }

    fn child(&self, prefix: String, map: Map<String, Value>) -> Fields {
        Fields {
            prefix,
            map: map.into_iter().collect(),
            file: self.file.clone(),
            env: self.env.clone(),
        }
    }

    fn table(&mut self, key: &str) -> Result<Option<Fields>, ConfigError> {
        match self.take(key) {
            None => Ok(None),
            Some(value) => match value.kind {
                ValueKind::Table(map) => Ok(Some(self.child(self.path(key), map))),
                _ => Err(self.type_error(key, &format!("a table ([{key}])"), &value)),
            },
        }
    }

    fn tables(&mut self, key: &str) -> Result<Vec<Fields>, ConfigError> {
        match self.take(key) {
            None => Ok(Vec::new()),
            Some(value) => match value.kind {
                ValueKind::Array(items) => {
                    let mut out = Vec::new();
                    for (i, item) in items.into_iter().enumerate() {
                        let path = format!("{}[{i}]", self.path(key));
                        match item.kind {
                            ValueKind::Table(map) => out.push(self.child(path, map)),
                            _ => {
                                return Err(self.type_error(
                                    &format!("{key}[{i}]"),
                                    "a table",
                                    &item,
                                ))
                            }
                        }
                    }
                    Ok(out)
                }
                _ => Err(self.type_error(key, &format!("an array of tables ([[{key}]])"), &value)),
            },
        }
    }

    /// Fails on the first key nobody asked for (a typo, or an option that does not exist).
    fn finish(&mut self) -> Result<(), ConfigError> {
        match self.map.keys().next().cloned() {
            None => Ok(()),
            Some(key) => Err(self.error(&key, "unknown key (see docs/config.md)")),
        }
    }
}

fn describe(value: &Value) -> String {
    match &value.kind {
        ValueKind::Nil => "nothing".into(),
        ValueKind::Boolean(b) => format!("boolean {b}"),
        ValueKind::I64(n) => format!("integer {n}"),
        ValueKind::I128(n) => format!("integer {n}"),
        ValueKind::U64(n) => format!("integer {n}"),
        ValueKind::U128(n) => format!("integer {n}"),
        ValueKind::Float(n) => format!("number {n}"),
        ValueKind::String(s) => format!("string {s:?}"),
        ValueKind::Table(_) => "a table".into(),
        ValueKind::Array(_) => "an array".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_folds_toml_errors() {
        let text = "TOML parse error at line 2, column 8\n  |\n2 | listen = \n  |        ^\nstring values must be quoted\n";
        assert_eq!(
            one_line(text),
            "line 2, column 8: string values must be quoted"
        );
    }

    #[test]
    fn env_names_follow_the_key_path() {
        assert_eq!(env_name("listen"), "TETHER_LISTEN");
        assert_eq!(env_name("relay.public_key"), "TETHER_RELAY__PUBLIC_KEY");
    }
}
