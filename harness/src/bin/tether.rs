//! `tether`: run the demo, make keys, run a device node or the relay server, and drive
//! a running node through its control socket. See `tether --help`.
//!
//! Exit codes: 0 success; 1 a failure while running (a demo scenario failed, a node
//! stopped on an error, a control request was refused); 2 a usage or config error.

use anyhow::Context as _;
use clap::{Args, CommandFactory as _, Parser, Subcommand};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tether_harness::app::bench;
use tether_harness::app::config::{self, ConfigError, LogFormat};
use tether_harness::app::control::{self, Request};
use tether_harness::app::demo::{self, DemoOptions, Scenario};
use tether_harness::app::keys;
use tether_harness::app::metrics::{self, NodeStatusReport, RelayStatusReport};
use tether_harness::app::{node, pairing, paths, peers_file, relay, run};
use tether_protocol::DeviceId;

/// Tether keeps an end-to-end encrypted session between two trusted devices alive
/// while either of them changes networks: no handshake during a migration, every
/// message exactly once and in order, the relay and rendezvous as fallbacks.
#[derive(Debug, Parser)]
#[command(name = "tether", version)]
#[command(
    after_help = "Start here: `tether demo` plays every scenario in one process, no setup needed.\n\
Logs go to stderr; RUST_LOG sets the level (default: info for node and relay, warn otherwise)."
)]
struct Cli {
    /// Log format: human-readable text or one JSON object per line (default: text, or
    /// the config's `log_format`).
    #[arg(long, global = true, value_name = "FORMAT", value_parser = ["text", "json"])]
    log_format: Option<String>,
    /// Print each result as one JSON object on one line (errors stay one line of text
    /// on stderr).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Play the migration scenarios with a relay and two devices in this process.
    Demo(DemoArgs),
    /// Write a new static keypair to a key file (mode 0600) and print its public key.
    Keygen {
        /// The key file to create (never overwritten).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Pair two devices whose key files are both here, or this device with a public key
    /// (--peer): print both configs' `[[peers]]` entries with a fresh relationship key.
    #[command(
        after_help = "To pair two machines without copying a key file or a relationship key, use `tether invite` on one and `tether accept` on the other."
    )]
    Pair {
        /// Key file of the first device (created with mode 0600 if missing) [default: a.key].
        #[arg(value_name = "KEY_FILE_A")]
        a: Option<PathBuf>,
        /// Key file of the second device (created with mode 0600 if missing) [default: b.key].
        #[arg(value_name = "KEY_FILE_B", conflicts_with = "peer")]
        b: Option<PathBuf>,
        /// Pair this device with the device of this public key (64 hex characters): only
        /// this device's key file is read or created.
        #[arg(long, value_name = "PUBLIC_KEY")]
        peer: Option<String>,
        /// With --peer: this device's key file (created with mode 0600 if missing)
        /// [default: KEY_FILE_A, else a.key].
        #[arg(long, value_name = "FILE", requires = "peer", conflicts_with = "a")]
        key: Option<PathBuf>,
    },
    /// Invite another machine to pair: print a one-time code, wait for `tether accept CODE`
    /// there, then add the new peer to this node's config.
    #[command(after_help = INVITE_AFTER_HELP)]
    Invite {
        #[command(flatten)]
        pairing: PairingArgs,
        /// How long to wait for the other machine (e.g. 90s, 10m, 1h).
        #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
        timeout: std::time::Duration,
    },
    /// Accept another machine's `tether invite` code: pair with it through the relay and
    /// add it to this node's config.
    #[command(after_help = ACCEPT_AFTER_HELP)]
    Accept {
        /// The code `tether invite` printed (without it, read from standard input, which
        /// keeps it out of the shell's history).
        code: Option<String>,
        #[command(flatten)]
        pairing: PairingArgs,
        /// How long to wait for the inviting machine (e.g. 90s, 2m).
        #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = parse_duration)]
        timeout: std::time::Duration,
    },
    /// Run one device: a node with its control socket (see docs/config.md).
    Node {
        /// The node's config file (TOML; TETHER_* variables override keys). Default:
        /// $XDG_CONFIG_HOME/tether/node.toml, else /etc/tether/node.toml.
        #[arg(short, long, value_name = "FILE", env = "TETHER_CONFIG")]
        config: Option<PathBuf>,
        /// Only check the config (and key files), print a summary and exit.
        #[arg(long)]
        check: bool,
    },
    /// Run the relay and rendezvous server (see docs/config.md).
    Relay {
        /// The relay's config file (TOML; TETHER_* variables override keys). Default:
        /// $XDG_CONFIG_HOME/tether/relay.toml, else /etc/tether/relay.toml.
        #[arg(short, long, value_name = "FILE", env = "TETHER_CONFIG")]
        config: Option<PathBuf>,
        /// Only check the config (and key file), print a summary and exit.
        #[arg(long)]
        check: bool,
    },
    /// Show a running node's sessions (or a relay's counters).
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// Send a message to a peer through a running node: TEXT, a file's bytes, or one
    /// message per line of standard input.
    Send(SendArgs),
    /// Stream a running node's events and delivered messages as JSON lines.
    Watch {
        #[command(flatten)]
        target: Target,
    },
    /// Measure round trips to a peer over its session through a running node: RTT and
    /// path (direct or relay, and the peer's address) per probe.
    #[command(after_help = PING_AFTER_HELP)]
    Ping(PingArgs),
    /// Check this machine's network for a node, without a running node: the relay
    /// reachable over UDP and proving the configured key, the reflexive address, and the
    /// addresses to announce.
    #[command(after_help = NETCHECK_AFTER_HELP)]
    Netcheck {
        /// The node's config file (its key_file, listen and relay are used). Default:
        /// $XDG_CONFIG_HOME/tether/node.toml, else /etc/tether/node.toml.
        #[arg(short, long, value_name = "FILE", env = "TETHER_CONFIG")]
        config: Option<PathBuf>,
        /// How long the relay may take to answer and authenticate (e.g. 500ms, 5s).
        #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_probe_duration)]
        timeout: std::time::Duration,
    },
    /// Tell a running node its network changed: rebind it to ADDR (manual migration).
    Migrate {
        /// New local address: an IP (any port) or ip:port, e.g. 127.0.0.2.
        #[arg(long, value_name = "ADDR")]
        bind: String,
        #[command(flatten)]
        target: Target,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(
        after_help = "Install, e.g.: tether completions bash > /usr/share/bash-completion/completions/tether\n\
        tether completions zsh > /usr/share/zsh/site-functions/_tether\n\
        tether completions fish > /usr/share/fish/vendor_completions.d/tether.fish"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout: tether man > tether.1
    Man,
    /// Measure a session on this machine: throughput against bare quinn, handshake
    /// cost, many idle sessions to one node.
    Bench(bench::BenchArgs),
}

const PING_AFTER_HELP: &str = "Each probe is a liveness ping sealed under the session keys and answered by the peer's \
session layer, timed when its answer returns. A probe that cannot go says why (no session, and the session's \
status) and one that is not answered in time says so (and whether it went on the relay). \
Exit code 0 when at least one probe was answered, 1 otherwise.";

const NETCHECK_AFTER_HELP: &str = "One connection attempt to the configured relay, as a node makes it, but \
rendezvous-only: a node running with the same key keeps its connection. It shows the reflexive address \
the relay reports. Not checked: direct UDP to peers (use `tether ping`), the NAT's kind (one relay's \
observation cannot tell it), the other address family. Exit code 1, with a one-line reason, when the relay is unreachable, proves another key or \
does not admit this device.";

#[derive(Debug, Args)]
struct PingArgs {
    /// The peer: its name in the config, or its public key (hex; a unique prefix will do).
    peer: String,
    /// How many probes to send.
    #[arg(short = 'n', long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    count: u32,
    /// Time between the starts of two probes (e.g. 200ms, 1s).
    #[arg(short, long, value_name = "DURATION", default_value = "1s", value_parser = parse_probe_duration)]
    interval: std::time::Duration,
    /// How long each probe waits for its answer (e.g. 500ms, 2s; at most 20s).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_probe_duration)]
    timeout: std::time::Duration,
    #[command(flatten)]
    target: Target,
}

/// `250ms`, `2s` or a number of seconds: from 10 ms to 60 s.
fn parse_probe_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let bad = || format!("{text:?} is not a duration (e.g. 250ms, 2s)");
    let (number, millis_per_unit) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 1)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1000)
    } else {
        (text, 1000)
    };
    let n: u64 = number.parse().map_err(|_| bad())?;
    let ms = n.saturating_mul(millis_per_unit);
    if !(10..=60_000).contains(&ms) {
        return Err(format!("{text:?} must be from 10ms to 60s"));
    }
    Ok(std::time::Duration::from_millis(ms))
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("message").required(true).args(["text", "file", "stdin_lines"])))]
// clap would put the required group before PEER.
#[command(override_usage = "tether send [OPTIONS] <PEER> <TEXT|--file <FILE>|--stdin-lines>")]
struct SendArgs {
    /// The peer: its name in the config, or a prefix of its public key.
    peer: String,
    /// The message, as text.
    text: Option<String>,
    /// Send the bytes of FILE as one message, whatever they are ("-": standard input).
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Send each line of standard input as one message (without its `\n`; any other
    /// byte, `\r` included, is sent as it is), in order, over one connection; waits while
    /// the peer's queue is full.
    #[arg(long)]
    stdin_lines: bool,
    /// Wait while the peer's queue is full instead of failing with "queue full".
    #[arg(long)]
    wait: bool,
    #[command(flatten)]
    target: Target,
}

const INVITE_AFTER_HELP: &str = "Both machines need a node config with `key_file` and `[relay]` (no peer yet is fine). \
The relay must admit both device keys (its `allow` list), or run with admission = \"open\". \
The code holds a secret: pass it over a private channel; it is good for one pairing, until the timeout. \
A running node picks up the new peer when it restarts. With --json: one line with the code, then one with the result.";

const ACCEPT_AFTER_HELP: &str = "The relay named in the code must admit this device's key (its `allow` list), or run with admission = \"open\". \
A running node picks up the new peer when it restarts.";

/// What `invite` and `accept` share.
#[derive(Debug, Args)]
struct PairingArgs {
    /// This node's config file: its key_file and relay are used, and the new peer is
    /// added to it. Default: $XDG_CONFIG_HOME/tether/node.toml, else /etc/tether/node.toml.
    #[arg(short, long, value_name = "FILE", env = "TETHER_CONFIG")]
    config: Option<PathBuf>,
    /// The other machine's name in this config [default: the name it announces, its host
    /// name].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Replace the relationship key of an existing entry for the other machine (it must
    /// then pair with --force too).
    #[arg(long)]
    force: bool,
}

/// `90s`, `10m`, `1h` or a number of seconds.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 90s, 10m, 1h)"))?;
    let seconds = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(format!("{text:?} is not a duration (e.g. 90s, 10m, 1h)")),
    };
    if seconds == 0 || seconds > 86_400 {
        return Err(format!("{text:?} must be above 0 and at most a day"));
    }
    Ok(std::time::Duration::from_secs(seconds))
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// The scenario to play.
    #[arg(long, value_name = "NAME", default_value = "all",
          value_parser = ["all", "establish", "single-side-move", "direct-blocked-relay", "both-move", "window-expiry"])]
    scenario: String,
    /// Play the single-side move over real UDP sockets on loopback (127.0.0.1 -> 127.0.0.2).
    #[arg(long)]
    real: bool,
    /// Seed of the simulation.
    #[arg(long, default_value_t = demo::DEFAULT_SEED)]
    seed: u64,
    /// Round-trip time of the simulated path, in ms.
    #[arg(long, value_name = "MS", default_value_t = 40)]
    rtt_ms: u64,
    /// Packet loss of the simulated path, from 0 to 0.5.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.01)]
    loss: f64,
}

/// Which running node (or relay) a client command talks to. Neither given: the default
/// config's socket, else $XDG_RUNTIME_DIR/tether/node.sock or /run/tether/node.sock.
#[derive(Debug, Args)]
struct Target {
    /// The control socket.
    #[arg(
        short,
        long,
        value_name = "PATH",
        env = "TETHER_SOCKET",
        conflicts_with = "config"
    )]
    socket: Option<PathBuf>,
    /// Or the node's config file, to read its control_socket.
    #[arg(short, long, value_name = "FILE", env = "TETHER_CONFIG")]
    config: Option<PathBuf>,
}

/// `println!` that returns write errors (a closed pipe) instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        let mut out = std::io::stdout().lock();
        writeln!(out, $($arg)*).and_then(|()| out.flush())?
    }};
}

/// `print!` that returns write errors instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        let mut out = std::io::stdout().lock();
        write!(out, $($arg)*).and_then(|()| out.flush())?
    }};
}

/// An error that is the user's input: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        // The reader went away (`tether demo | head`): nothing left to say.
        Err(error)
            if error
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(error) => {
            let usage = error.downcast_ref::<ConfigError>().is_some()
                || error.downcast_ref::<UsageError>().is_some();
            eprintln!("error: {}", one_line(&error));
            if usage {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// How a config file is named in an error: as given on the command line.
fn config_name(path: &Path) -> String {
    path.display().to_string()
}

/// The error and its causes on one line, skipping a cause its parent already quotes.
fn one_line(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    text.replace('\n', " ")
}

fn log_format(cli: &Option<String>, config: LogFormat) -> LogFormat {
    match cli.as_deref() {
        Some("json") => LogFormat::Json,
        Some(_) => LogFormat::Text,
        None => config,
    }
}

/// Dependencies whose warnings say nothing an operator can act on: the netlink parser
/// under interface watching warns at every start on kernels newer than it, about
/// attributes it skips. RUST_LOG still shows them.
const QUIET_DEPENDENCIES: &str = "netlink_packet_route=error";

/// Installs the tracing subscriber: RUST_LOG, or `default_level`.
fn init_logging(format: LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{default_level},{QUIET_DEPENDENCIES}")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
}

/// Prints a generated document (a completion script, the man page) as it is, or with
/// `--json` as one object holding it under `key`.
fn print_document(json: bool, key: &str, document: &[u8]) -> anyhow::Result<ExitCode> {
    if json {
        json_line(&serde_json::json!({ key: String::from_utf8_lossy(document) }))?;
    } else {
        let mut out = std::io::stdout().lock();
        out.write_all(document)?;
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints `value` as one line of JSON.
fn json_line(value: &serde_json::Value) -> anyhow::Result<()> {
    outln!("{value}");
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let json = cli.json;
    match cli.command {
        Command::Demo(args) => {
            init_logging(log_format(&cli.log_format, LogFormat::Text), "warn");
            run_demo(args, json)
        }
        Command::Bench(args) => {
            init_logging(log_format(&cli.log_format, LogFormat::Text), "warn");
            out!("{}", bench::run(args, json)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen { out } => {
            let public = keys::keygen(&out)?;
            if json {
                json_line(&serde_json::json!({
                    "key_file": out.display().to_string(),
                    "public_key": public.to_hex(),
                }))?;
            } else {
                outln!("{}", public.to_hex());
                eprintln!(
                    "wrote {} (mode 0600); its public key is above",
                    out.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Pair {
            a,
            b,
            peer: Some(peer),
            key,
        } => {
            let key = key.or(a).unwrap_or_else(|| PathBuf::from("a.key"));
            debug_assert!(b.is_none());
            let pairing = keys::pair_with(&key, &peer).map_err(pair_error)?;
            if json {
                let d = &pairing.device;
                json_line(&serde_json::json!({
                    "device": {
                        "name": d.name,
                        "key_file": d.key_file.display().to_string(),
                        "public_key": d.public.to_hex(),
                        "created": d.created,
                    },
                    "peer": {
                        "name": pairing.peer_name(),
                        "public_key": pairing.peer.to_hex(),
                    },
                    "relationship_key": pairing.rk.to_hex().as_str(),
                }))?;
            } else {
                out!("{}", pairing.render());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Pair { a, b, .. } => {
            let a = a.unwrap_or_else(|| PathBuf::from("a.key"));
            let b = b.unwrap_or_else(|| PathBuf::from("b.key"));
            let pairing = keys::pair(&a, &b).map_err(pair_error)?;
            if json {
                let device = |d: &keys::PairedDevice| {
                    serde_json::json!({
                        "name": d.name,
                        "key_file": d.key_file.display().to_string(),
                        "public_key": d.public.to_hex(),
                        "created": d.created,
                    })
                };
                json_line(&serde_json::json!({
                    "devices": [device(&pairing.a), device(&pairing.b)],
                    "relationship_key": pairing.rk.to_hex().as_str(),
                }))?;
            } else {
                out!("{}", pairing.render());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Invite { pairing, timeout } => run_invite(pairing, timeout, json),
        Command::Accept {
            code,
            pairing,
            timeout,
        } => run_accept(code, pairing, timeout, json),
        Command::Node { config, check } => {
            let config = config_or_default(config, "node.toml")?;
            let settings = config::load_node(&config)?;
            if settings.control_socket == paths::node_socket(&config) {
                paths::ensure_socket_dir(&settings.control_socket).map_err(|problem| {
                    UsageError(format!("{}: {problem}", config_name(&config)))
                })?;
            }
            if check {
                let device = DeviceId(*settings.keypair.public().as_bytes());
                let channels = node::channel_store_path(&settings.data_dir, &device);
                let notes = run::check_resources(
                    settings.listen,
                    settings.metrics_addr,
                    Some(&settings.control_socket),
                    channels.parent().unwrap_or(&settings.data_dir),
                )
                .map_err(|problem| UsageError(format!("{}: {problem}", config_name(&config))))?;
                let peers: Vec<&str> = settings.peers.iter().map(|p| p.name.as_str()).collect();
                let relay = if settings.relay_name == settings.relay.addr.to_string() {
                    settings.relay_name.clone()
                } else {
                    format!("{} ({})", settings.relay_name, settings.relay.addr)
                };
                if json {
                    json_line(&serde_json::json!({
                        "config_ok": true,
                        "config": config.display().to_string(),
                        "device": settings.keypair.public().to_hex(),
                        "listen": settings.listen.to_string(),
                        "control_socket": settings.control_socket.display().to_string(),
                        "relay": settings.relay_name,
                        "relay_addr": settings.relay.addr.to_string(),
                        "peers": peers,
                        "channels": channels.display().to_string(),
                        "warnings": settings.warnings,
                        "notes": notes,
                    }))?;
                    return Ok(ExitCode::SUCCESS);
                }
                outln!(
                    "config ok: device {} listens on {}, control socket {}, relay {relay}, peers: {}, channels in {}",
                    settings.keypair.public().to_hex(),
                    settings.listen,
                    settings.control_socket.display(),
                    peers.join(", "),
                    channels.display()
                );
                for warning in &settings.warnings {
                    outln!("warning: {warning}");
                }
                for note in &notes {
                    outln!("note: {note}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            init_logging(log_format(&cli.log_format, settings.log_format), "info");
            let system = actix_rt::System::new();
            system.block_on(node::run_node(settings, |ready| {
                let metrics = ready.metrics.map_or("off".to_string(), |m| m.to_string());
                let line = if json {
                    serde_json::json!({
                        "ready": "node",
                        "device": ready.device,
                        "listen": ready.listen.to_string(),
                        "control": ready.control_socket.display().to_string(),
                        "metrics": metrics,
                    })
                    .to_string()
                } else {
                    format!(
                        "tether node ready: device={} listen={} control={} metrics={metrics}",
                        ready.device,
                        ready.listen,
                        ready.control_socket.display(),
                    )
                };
                let _ = writeln!(std::io::stdout(), "{line}");
                let _ = std::io::stdout().flush();
            }))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Relay { config, check } => {
            let config = config_or_default(config, "relay.toml")?;
            let settings = config::load_relay(&config)?;
            if check {
                let queue = relay::relay_queue_path(&settings.data_dir);
                let notes = run::check_resources(
                    settings.listen,
                    settings.metrics_addr,
                    settings.control_socket.as_deref(),
                    queue.parent().unwrap_or(&settings.data_dir),
                )
                .map_err(|problem| UsageError(format!("{}: {problem}", config_name(&config))))?;
                let serves = relay::describe_admission(&settings.admission);
                if json {
                    json_line(&serde_json::json!({
                        "config_ok": true,
                        "config": config.display().to_string(),
                        "public_key": settings.keypair.public().to_hex(),
                        "listen": settings.listen.to_string(),
                        "serves": serves,
                        "queue": queue.display().to_string(),
                        "notes": notes,
                    }))?;
                } else {
                    outln!(
                        "config ok: relay {} listens on {}, serves {}, queue in {}",
                        settings.keypair.public().to_hex(),
                        settings.listen,
                        serves,
                        queue.display()
                    );
                    for note in &notes {
                        outln!("note: {note}");
                    }
                }
                return Ok(ExitCode::SUCCESS);
            }
            init_logging(log_format(&cli.log_format, settings.log_format), "info");
            let system = actix_rt::System::new();
            system.block_on(relay::run_relay(settings, |ready| {
                let metrics = ready.metrics.map_or("off".to_string(), |m| m.to_string());
                let line = if json {
                    serde_json::json!({
                        "ready": "relay",
                        "public_key": ready.public_key,
                        "listen": ready.listen.to_string(),
                        "metrics": metrics,
                    })
                    .to_string()
                } else {
                    format!(
                        "tether relay ready: public_key={} listen={} metrics={metrics}",
                        ready.public_key, ready.listen,
                    )
                };
                let _ = writeln!(std::io::stdout(), "{line}");
                let _ = std::io::stdout().flush();
            }))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { target } => {
            let socket = socket_of(&target)?;
            let reply = client(&socket, Request::Status)?;
            if json {
                let body = reply
                    .get("status")
                    .or_else(|| reply.get("relay"))
                    .cloned()
                    .unwrap_or(reply);
                json_line(&body)?;
            } else if let Some(status) = reply.get("status") {
                let report: NodeStatusReport =
                    serde_json::from_value(status.clone()).context("unexpected status report")?;
                out!("{}", metrics::render_node_status(&report));
            } else if let Some(relay) = reply.get("relay") {
                let report: RelayStatusReport =
                    serde_json::from_value(relay.clone()).context("unexpected relay report")?;
                out!("{}", metrics::render_relay_status(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Send(args) => run_send(args, json),
        Command::Ping(args) => run_ping(args, json),
        Command::Netcheck { config, timeout } => {
            init_logging(log_format(&cli.log_format, LogFormat::Text), "error");
            run_netcheck(config, timeout, json)
        }
        Command::Watch { target } => {
            // Its lines are JSON already, with or without --json.
            let socket = socket_of(&target)?;
            let system = actix_rt::System::new();
            system.block_on(control::watch(&socket, |line| {
                if line.starts_with(r#"{"event":"lagged""#) {
                    let missed = serde_json::from_str::<serde_json::Value>(line)
                        .ok()
                        .and_then(|e| e["missed"].as_u64())
                        .unwrap_or(0);
                    eprintln!(
                        "warning: this watch fell behind and missed {missed} events (messages delivered meanwhile are acknowledged, not shown)"
                    );
                }
                let mut out = std::io::stdout().lock();
                writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
            }))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate { bind, target } => {
            control::parse_bind(&bind).map_err(UsageError)?;
            let socket = socket_of(&target)?;
            let reply = client(&socket, Request::Migrate { bind })?;
            let old = reply.get("old").and_then(|p| p.as_str()).unwrap_or("?");
            let new = reply.get("new").and_then(|p| p.as_str()).unwrap_or("?");
            if json {
                json_line(&serde_json::json!({ "old": old, "new": new }))?;
            } else {
                outln!("rebound {old} -> {new}; the sessions migrate");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "tether", &mut script);
            print_document(json, "script", &script)
        }
        Command::Man => {
            let mut roff = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut roff)?;
            print_document(json, "man", &roff)
        }
    }
}

/// `tether pair`'s mistakes in its arguments are usage errors (exit 2).
fn pair_error(error: keys::PairError) -> anyhow::Error {
    match error {
        keys::PairError::KeyAsFile(_)
        | keys::PairError::BadPeerKey(..)
        | keys::PairError::PeerIsSelf(_) => UsageError(error.to_string()).into(),
        other => other.into(),
    }
}

/// An explicit `--name` for the new peer: a valid name no other peer has.
fn check_peer_name(
    name: &Option<String>,
    settings: &config::NodeSettings,
    config: &Path,
) -> anyhow::Result<()> {
    let Some(name) = name else {
        return Ok(());
    };
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !valid {
        return Err(UsageError(format!(
            "--name {name:?}: use letters, digits, '.', '_' and '-' only"
        ))
        .into());
    }
    if settings.peers.iter().any(|p| &p.name == name) {
        return Err(UsageError(format!(
            "--name {name:?}: {} has a peer of that name already",
            config_name(config)
        ))
        .into());
    }
    Ok(())
}

/// `invite`: print a code, wait for the other machine, write the entry.
fn run_invite(
    args: PairingArgs,
    timeout: std::time::Duration,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let config = config_or_default(args.config.clone(), "node.toml")?;
    let settings = config::load_node_for_pairing(&config)?;
    check_peer_name(&args.name, &settings, &config)?;
    let code = tether_crypto::PairingCode::new(
        *settings.keypair.public(),
        &settings.relay_name,
        settings.relay.public,
        &mut rand::rngs::OsRng,
    )
    .map_err(|e| UsageError(format!("{}: key `relay.addr`: {e}", config_name(&config))))?;
    let text = code.encode();
    if json {
        json_line(&serde_json::json!({
            "code": text.as_str(),
            "device": settings.keypair.public().to_hex(),
            "relay": settings.relay_name,
            "timeout_s": timeout.as_secs(),
        }))?;
    } else {
        outln!("{}", text.as_str());
        eprintln!(
            "On the other machine, run `tether accept` with the code above (it holds a secret: pass it privately). Waiting up to {} s; Ctrl-C cancels.",
            timeout.as_secs()
        );
    }
    let core = pairing::PairingConfig {
        keypair: settings.keypair.clone(),
        relay_addr: settings.relay.addr,
        relay_key: settings.relay.public,
        secret: code.secret.clone(),
        role: pairing::Role::Inviter,
        name: announced_name(&settings),
        known: settings.peers.iter().map(|p| p.peer.public).collect(),
        force: args.force,
        timeout,
        unix_ms_at_start: tether::unix_ms(),
        seed: pairing::os_seed(),
    };
    finish_pairing(core, &config, &settings, &args, Vec::new(), json)
}

/// `accept`: read the code, meet the inviting machine, write the entry.
fn run_accept(
    code: Option<String>,
    args: PairingArgs,
    timeout: std::time::Duration,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let text = match code {
        Some(code) => zeroize::Zeroizing::new(code),
        None => {
            use std::io::BufRead as _;
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprint!("pairing code: ");
            }
            let mut line = zeroize::Zeroizing::new(String::new());
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("cannot read the code from standard input")?;
            line
        }
    };
    let code = tether_crypto::PairingCode::decode(&text).map_err(|e| UsageError(e.to_string()))?;
    let config = config_or_default(args.config.clone(), "node.toml")?;
    let settings = config::load_node_for_pairing(&config)?;
    check_peer_name(&args.name, &settings, &config)?;
    if &code.inviter == settings.keypair.public() {
        return Err(UsageError(pairing::PairingFailure::SameDevice.to_string()).into());
    }
    if let Some(existing) = settings
        .peers
        .iter()
        .find(|p| p.peer.public == code.inviter)
    {
        if !args.force {
            return Err(UsageError(format!(
                "{}: this device has an entry for the inviting device already ([[peers]] {:?}); `tether accept --force` replaces its relationship key, and the inviting device must then re-pair too (`tether invite --force`)",
                config_name(&config),
                existing.name
            ))
            .into());
        }
    }
    let relay_addr = config::resolve_host(&code.relay_addr, settings.listen)
        .map_err(|problem| UsageError(format!("the code's relay address: {problem}")))?;
    let mut warnings = Vec::new();
    if code.relay_key != settings.relay.public {
        warnings.push(format!(
            "{} uses another relay (relay.public_key) than the inviting device ({}, key {}): the pairing went through the inviting device's relay, but the two nodes share no relay to fall back on",
            config_name(&config),
            code.relay_addr,
            code.relay_key.to_hex()
        ));
    }
    let core = pairing::PairingConfig {
        keypair: settings.keypair.clone(),
        relay_addr,
        relay_key: code.relay_key,
        secret: code.secret.clone(),
        role: pairing::Role::Acceptor {
            inviter: code.inviter,
        },
        name: announced_name(&settings),
        known: settings.peers.iter().map(|p| p.peer.public).collect(),
        force: args.force,
        timeout,
        unix_ms_at_start: tether::unix_ms(),
        seed: pairing::os_seed(),
    };
    finish_pairing(core, &config, &settings, &args, warnings, json)
}

/// The name this device announces: its host name, else its short id.
fn announced_name(settings: &config::NodeSettings) -> String {
    pairing::host_name().unwrap_or_else(|| DeviceId(*settings.keypair.public().as_bytes()).short())
}

/// Runs the pairing, writing the entry into `config` when the protocol asks, and prints
/// the result.
fn finish_pairing(
    core: pairing::PairingConfig,
    config: &Path,
    settings: &config::NodeSettings,
    args: &PairingArgs,
    warnings: Vec<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let taken: Vec<String> = settings.peers.iter().map(|p| p.name.clone()).collect();
    let save = |request: &pairing::SaveRequest| {
        let short = DeviceId(*request.peer.as_bytes()).short();
        let name = match &args.name {
            Some(name) => name.clone(),
            None => peers_file::unique_name(
                &request.announced_name,
                &short,
                taken.iter().map(String::as_str),
            ),
        };
        peers_file::write_peer(config, &request.entry(name)).map_err(|e| e.to_string())
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let relay = core.relay_addr;
    let outcome = runtime.block_on(pairing::run(core, save))?;
    let paired = outcome.result?;
    let Some(written) = outcome.saved else {
        anyhow::bail!("the pairing ended without writing the entry");
    };
    let name = written.name();
    let (entry, verb) = match &written {
        peers_file::Written::Added { .. } => ("added", "added [[peers]]"),
        peers_file::Written::Replaced { .. } => {
            ("replaced", "replaced the relationship key of [[peers]]")
        }
    };
    if json {
        json_line(&serde_json::json!({
            "paired": true,
            "peer": { "name": name, "public_key": paired.peer.to_hex() },
            "config": config.display().to_string(),
            "entry": entry,
            "relay": relay.to_string(),
            "restart_required": true,
            "warnings": warnings,
        }))?;
    } else {
        outln!(
            "paired with {name} (public key {}) through the relay at {relay}",
            paired.peer.to_hex()
        );
        outln!("{verb} {name:?} in {}", config_name(config));
        outln!("a running node picks up the new peer when it restarts (`tether node`, or systemctl restart tether-node)");
        for warning in &warnings {
            outln!("warning: {warning}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The config file given, or the default one (see `tether_harness::app::paths`).
fn config_or_default(given: Option<PathBuf>, name: &str) -> anyhow::Result<PathBuf> {
    match given {
        Some(path) => Ok(path),
        None => Ok(paths::default_config(name).map_err(UsageError)?),
    }
}

/// Reads at most `limit + 1` bytes of `file` ("-": standard input).
fn read_message_file(file: &Path, limit: usize) -> anyhow::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    let read = if file == Path::new("-") {
        std::io::stdin().lock().take(cap).read_to_end(&mut bytes)
    } else {
        std::fs::File::open(file).and_then(|f| f.take(cap).read_to_end(&mut bytes))
    };
    read.with_context(|| format!("cannot read {}", file.display()))?;
    if bytes.len() > limit {
        let size = std::fs::metadata(file)
            .ok()
            .filter(|m| m.is_file())
            .map_or(format!("more than {limit} bytes"), |m| {
                format!("{} bytes", m.len())
            });
        return Err(UsageError(format!(
            "{} holds {size}; one message carries at most {limit} bytes (the node's limits.max_message_len may be lower)",
            file.display()
        ))
        .into());
    }
    Ok(bytes)
}

/// The lines of standard input, as bytes without their newline.
fn stdin_lines() -> impl Iterator<Item = std::io::Result<Vec<u8>>> + Send + 'static {
    use std::io::BufRead as _;
    let mut input = std::io::BufReader::with_capacity(64 * 1024, std::io::stdin());
    std::iter::from_fn(move || {
        let mut line = Vec::new();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => None,
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                Some(Ok(line))
            }
            Err(error) => Some(Err(error)),
        }
    })
}

fn run_send(args: SendArgs, json: bool) -> anyhow::Result<ExitCode> {
    let socket = socket_of(&args.target)?;
    if args.stdin_lines {
        let started = std::time::Instant::now();
        let (peer, sent) = control::send_stream(&socket, &args.peer, stdin_lines())?;
        let seconds = started.elapsed().as_secs_f64();
        let rate = if seconds > 0.0 {
            sent.sent as f64 / seconds
        } else {
            0.0
        };
        if json {
            json_line(&serde_json::json!({
                "peer": peer,
                "sent": sent.sent,
                "first_seq": sent.first_seq,
                "last_seq": sent.last_seq,
                "seconds": seconds,
                "per_second": rate.round() as u64,
            }))?;
        } else {
            let seqs = match (sent.first_seq, sent.last_seq) {
                (Some(first), Some(last)) => format!(" as messages {first}..{last}"),
                _ => String::new(),
            };
            outln!(
                "queued {} messages for {peer}{seqs} in {seconds:.2} s ({rate:.0}/s)",
                sent.sent
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (text, data) = match (args.text, &args.file) {
        (_, Some(file)) => {
            let bytes = read_message_file(file, config::MAX_MESSAGE_LEN_CEILING)?;
            (None, Some(data_encoding::BASE64.encode(&bytes)))
        }
        (text, None) => (text, None),
    };
    let request = Request::Send {
        peer: args.peer,
        text,
        data,
        wait: args.wait,
    };
    let reply = if args.wait {
        let system = actix_rt::System::new();
        system.block_on(control::request_waiting(&socket, &request))?
    } else {
        client(&socket, request)?
    };
    let peer = reply.get("peer").and_then(|p| p.as_str()).unwrap_or("?");
    let seq = reply
        .get("seq")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    if json {
        json_line(&serde_json::json!({ "peer": peer, "seq": seq }))?;
    } else {
        outln!("queued for {peer} as message {seq}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `tether ping`: one control request per probe, `interval` apart (from start to
/// start), then a summary.
fn run_ping(args: PingArgs, json: bool) -> anyhow::Result<ExitCode> {
    let socket = socket_of(&args.target)?;
    let timeout = args.timeout.min(control::MAX_PING_TIMEOUT);
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    let system = actix_rt::System::new();
    let mut rtts: Vec<f64> = Vec::new();
    let mut name = args.peer.clone();
    let mut last_reason = String::new();
    for probe in 1..=args.count {
        let started = tokio::time::Instant::now();
        let request = Request::Ping {
            peer: args.peer.clone(),
            timeout_ms: Some(timeout_ms),
        };
        let reply = system.block_on(control::request(&socket, &request))?;
        let text = |key: &str| reply.get(key).and_then(|v| v.as_str()).map(str::to_string);
        if let Some(peer) = text("peer") {
            name = peer;
        }
        let answered = reply.get("answered").and_then(serde_json::Value::as_bool) == Some(true);
        let rtt = reply.get("rtt_ms").and_then(serde_json::Value::as_f64);
        if json {
            let mut line = serde_json::json!({ "probe": probe });
            if let (Some(line), Some(reply)) = (line.as_object_mut(), reply.as_object()) {
                line.extend(
                    reply
                        .iter()
                        .filter(|(k, _)| *k != "ok")
                        .map(|(k, v)| (k.clone(), v.clone())),
                );
            }
            json_line(&line)?;
        }
        match (answered, rtt) {
            (true, Some(rtt)) => {
                rtts.push(rtt);
                if !json {
                    let path = text("path").unwrap_or_default();
                    let remote = text("remote").map_or(String::new(), |r| format!(" {r}"));
                    outln!("pong from {name} via {path}{remote} in {rtt:.2} ms (probe {probe})");
                }
            }
            _ => {
                last_reason = text("reason").unwrap_or_else(|| "no answer".into());
                if !json {
                    outln!("no pong from {name} (probe {probe}): {last_reason}");
                }
            }
        }
        if probe < args.count {
            let next = started + args.interval;
            system.block_on(async move { tokio::time::sleep_until(next).await });
        }
    }
    let sent = args.count;
    let received = rtts.len();
    let min = rtts.iter().copied().fold(f64::INFINITY, f64::min);
    let max = rtts.iter().copied().fold(0.0, f64::max);
    let avg = rtts.iter().sum::<f64>() / (received.max(1) as f64);
    if json {
        let stat = |v: f64| {
            if received > 0 {
                serde_json::json!(v)
            } else {
                serde_json::Value::Null
            }
        };
        json_line(&serde_json::json!({
            "summary": true,
            "peer": name,
            "sent": sent,
            "received": received,
            "min_ms": stat(min),
            "avg_ms": stat(avg),
            "max_ms": stat(max),
        }))?;
    } else if received > 0 {
        outln!("--- {name}: {sent} probes sent, {received} answered; rtt min/avg/max {min:.2}/{avg:.2}/{max:.2} ms");
    } else {
        outln!("--- {name}: {sent} probes sent, 0 answered");
    }
    if received == 0 {
        anyhow::bail!("no probe to {name} was answered ({last_reason})");
    }
    Ok(ExitCode::SUCCESS)
}

/// `tether netcheck`: the relay, the addresses to announce, and what was not checked.
fn run_netcheck(
    config: Option<PathBuf>,
    timeout: std::time::Duration,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use tether_harness::app::netcheck;
    let config = config_or_default(config, "node.toml")?;
    let settings = config::load_node_for_pairing(&config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let relay = settings.relay.addr;
    let check = runtime.block_on(netcheck::check_relay(netcheck::NetcheckConfig {
        keypair: settings.keypair.clone(),
        relay_addr: relay,
        relay_key: settings.relay.public,
        timeout,
        seed: pairing::os_seed(),
    }))?;
    let interfaces = runtime.block_on(node::interface_addresses());
    let announced = netcheck::announced_ips(settings.listen, &interfaces);
    let problem = check.problem(relay);
    // A node running with this config knows the NAT's kind once a peer on a direct path
    // has seen it.
    let node_nat = config::control_socket_of(&config)
        .ok()
        .and_then(|socket| client(&socket, Request::Status).ok())
        .and_then(|report| {
            serde_json::from_value::<tether::metrics::NatReport>(
                report.get("status")?.get("nat")?.clone(),
            )
            .ok()
        });
    let nat = netcheck::nat(check.reflexive(), &interfaces, node_nat.as_ref());
    let nat_known = node_nat.as_ref().is_some_and(|n| n.mapping != "unknown");
    let relay_name = if settings.relay_name == relay.to_string() {
        relay.to_string()
    } else {
        format!("{} ({relay})", settings.relay_name)
    };
    if json {
        json_line(&serde_json::json!({
            "ok": problem.is_none(),
            "relay": {
                "addr": relay.to_string(),
                "name": settings.relay_name,
                "public_key": settings.relay.public.to_hex(),
                "udp": check.udp_works(),
                "quic_handshake_ms": check.quic_ms(),
                "check": check,
                "problem": problem,
            },
            "listen": settings.listen.to_string(),
            "announce": announced.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "reflexive_address": check.reflexive().map(|a| a.to_string()),
            "nat": nat,
            "nat_mapping": node_nat.as_ref().map(|n| n.mapping.as_str()),
            "not_checked": netcheck::not_checked(nat_known),
        }))?;
    } else {
        outln!("relay {relay_name}, key {}", settings.relay.public.to_hex());
        match check.quic_ms() {
            Some(ms) => {
                outln!("  udp: works (QUIC handshake with the relay completed in {ms:.1} ms)")
            }
            None => outln!("  udp: no QUIC connection to the relay"),
        }
        match &check {
            netcheck::RelayCheck::Ok { authenticated_ms, .. } => outln!(
                "  relay key: proved (mutual authentication done in {authenticated_ms:.1} ms); this device is admitted"
            ),
            netcheck::RelayCheck::Unreachable { .. } | netcheck::RelayCheck::TimedOut { .. } => {
                outln!("  relay key: not checked (the relay did not get that far)")
            }
            _ => outln!("  relay key: {}", problem.as_deref().unwrap_or("")),
        }
        let listed = if announced.is_empty() {
            "none (no interface address besides loopback and link-local)".to_string()
        } else {
            announced
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        outln!(
            "addresses to announce (listen {}): {listed}",
            settings.listen
        );
        let reflexive = check
            .reflexive()
            .map_or(netcheck::NOT_REPORTED.to_string(), |a| a.to_string());
        outln!("reflexive address (as the relay sees this machine): {reflexive}");
        outln!("NAT: {nat}");
        outln!(
            "not checked: {}",
            netcheck::not_checked(nat_known).join("; ")
        );
    }
    match problem {
        Some(problem) => {
            eprintln!("error: {problem}");
            Ok(ExitCode::FAILURE)
        }
        None => Ok(ExitCode::SUCCESS),
    }
}

fn client(socket: &Path, request: Request) -> anyhow::Result<serde_json::Value> {
    let system = actix_rt::System::new();
    Ok(system.block_on(control::request(socket, &request))?)
}

fn socket_of(target: &Target) -> anyhow::Result<PathBuf> {
    match (&target.socket, &target.config) {
        (Some(socket), _) => Ok(socket.clone()),
        (None, Some(config)) => Ok(config::control_socket_of(config)?),
        (None, None) => match paths::default_config("node.toml") {
            Ok(config) => Ok(config::control_socket_of(&config)?),
            Err(_) => Ok(paths::client_socket()),
        },
    }
}

fn run_demo(args: DemoArgs, json: bool) -> anyhow::Result<ExitCode> {
    if !(0.0..=0.5).contains(&args.loss) {
        return Err(UsageError(format!("--loss {} is not between 0 and 0.5", args.loss)).into());
    }
    let opts = DemoOptions {
        seed: args.seed,
        rtt_ms: args.rtt_ms,
        loss: args.loss,
    };
    let started = std::time::Instant::now();
    let mut reports = Vec::new();
    if args.real {
        reports.push(demo::play_real(&opts)?);
        emit(&reports, json)?;
    } else {
        let scenarios: Vec<Scenario> = match Scenario::from_name(&args.scenario) {
            Some(one) => vec![one],
            None => Scenario::ALL.to_vec(),
        };
        let total = scenarios.len();
        for (i, scenario) in scenarios.into_iter().enumerate() {
            let report = demo::play(scenario, &opts);
            if json {
                outln!("{}", serde_json::to_string(&report)?);
            } else {
                outln!("{}", demo::render(&report, i, total));
            }
            let _ = std::io::stdout().flush();
            reports.push(report);
        }
    }
    if !json {
        out!("{}", demo::summary(&reports));
        outln!(
            "played in {:.1} s of real time",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(if reports.iter().all(|r| r.passed) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn emit(reports: &[demo::ScenarioReport], json: bool) -> anyhow::Result<()> {
    for (i, report) in reports.iter().enumerate() {
        if json {
            outln!("{}", serde_json::to_string(report)?);
        } else {
            outln!("{}", demo::render(report, i, reports.len()));
        }
    }
    Ok(())
}
