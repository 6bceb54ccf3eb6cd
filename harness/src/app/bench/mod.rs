//! `tether bench`: what a session costs, measured on this machine.
//!
//! | subcommand | module | measures |
//! |---|---|---|
//! | `throughput` | [`throughput`] | one session over real loopback against bare quinn with the same QUIC settings, in the same run; the Noise transport cipher alone |
//! | `handshake` | [`handshake`] | round trips to Ready (virtual time), CPU per side per handshake, handshakes per second per core |
//! | `sessions` | [`sessions`] | many idle sessions to one node: memory per session, time to establish them, one network change of that node |
//! | `relay` | [`relay`] | envelopes per second through the relay with many connected devices, and enqueue → delivery latency |
//! | `migration` | [`migration`] | migration latency in RTTs (virtual time), with loss, jitter and the real detection delay |
//!
//! Each prints a table, or with `--json` one JSON object (the field names are stable,
//! so figures can be checked by script). Nothing here asserts a target: the figures
//! are recorded in `docs/benchmarks.md` against the targets of the performance issue.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Subcommand};
use tether::actors::{RelayServer, RelayServerHandle};
use tether::StaticKeypair;
use tether_rcs::{Admission, RelayServerConfig};
use tether_transport::{Endpoint, TransportConfig};

pub mod handshake;
pub mod migration;
pub mod relay;
pub mod sessions;
pub mod throughput;

/// Bytes in a MiB.
const MIB: f64 = 1024.0 * 1024.0;

/// Why a benchmark could not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// An argument is out of range.
    #[error("{0}")]
    Argument(String),
    /// A node, the relay or a socket could not be set up.
    #[error("setup: {0}")]
    Setup(String),
    /// Something the benchmark waits for did not happen in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The hub process of `sessions` failed or said something unexpected.
    #[error("hub process: {0}")]
    Hub(String),
    /// Reading or writing a file or pipe failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// `tether bench`'s arguments.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// One session over real loopback against bare quinn with the same QUIC settings,
    /// in the same run, at 1 KiB, 16 KiB and 60 KiB messages; and the Noise transport
    /// cipher's seal and open speed.
    Throughput {
        /// Seconds each contender sends at each message size.
        #[arg(long, value_name = "S", default_value_t = 3.0)]
        seconds: f64,
        /// Turn QUIC's path MTU discovery off for both contenders (packets stay at
        /// 1200 bytes), to see what it brings.
        #[arg(long)]
        no_mtu_discovery: bool,
        /// Message sizes in bytes (repeat the option for more than one; default 1 KiB,
        /// 16 KiB and 60 KiB).
        #[arg(long = "size", value_name = "BYTES")]
        sizes: Vec<usize>,
    },
    /// Round trips to Ready of a fresh pair (virtual time, simulated network), CPU time
    /// per side of the Noise handshake, and handshakes per second per core.
    Handshake {
        /// Handshakes to time on the CPU.
        #[arg(long, value_name = "N", default_value_t = 2000)]
        count: usize,
        /// Fresh pairs (seeds) to run on the simulated network.
        #[arg(long, value_name = "N", default_value_t = 20)]
        seeds: u64,
    },
    /// Idle sessions to one node (N = 100 and 1 000, or --count N): memory per
    /// session, time to establish them, then one network change of that node: time
    /// until all are Ready again, and that no handshake ran.
    #[command(
        after_help = "The node holding the sessions runs in a child process, so its memory is its own; the peers run in this process. 10 000 sessions need about 10 000 file descriptors here (ulimit -n)."
    )]
    Sessions {
        /// Run one N instead of 100 and 1 000.
        #[arg(long, value_name = "N")]
        count: Option<usize>,
    },
    /// Envelopes through one relay (in a child process) between many devices connected
    /// over real loopback QUIC: envelopes per second, and the latency from each
    /// `Enqueue` to the recipient's `Push` (or from `Forward` to `Forwarded`).
    #[command(
        after_help = "The devices are lightweight relay clients (the relay protocol, no session layer) in this process; the relay is `tether bench relay-server`, a child process, so its CPU time is its own."
    )]
    Relay(relay::RelayArgs),
    /// The relay of `relay`, in its own process (started by `relay`).
    #[command(hide = true)]
    RelayServer {
        /// Keep the queue in a redb file in this folder, as `tether relay` does,
        /// instead of in memory.
        #[arg(long, value_name = "DIR")]
        store: Option<std::path::PathBuf>,
        /// Worker threads of its tokio runtime (0: one thread for everything).
        #[arg(long, value_name = "N", default_value_t = 0)]
        workers: usize,
    },
    /// Migration latency in RTTs, in virtual time on the simulated network: the rows of
    /// `cargo bench --bench migration`, plus rows with 1 % and 5 % loss, with jitter,
    /// and with the real detection delay (the interface watcher's debounce).
    Migration {
        /// Seeds per row.
        #[arg(long, value_name = "N", default_value_t = 100)]
        seeds: u64,
        /// The first seed (seeds are consecutive).
        #[arg(long, value_name = "N", default_value_t = 1000)]
        first_seed: u64,
        /// Messages sent each way right after the change (0: time to both Ready alone).
        #[arg(long, value_name = "N", default_value_t = 5)]
        messages: usize,
        /// Path RTTs, ms (repeat the option for more than one).
        #[arg(long = "rtt", value_name = "MS", default_values_t = migration::DEFAULT_RTTS_MS)]
        rtts: Vec<u64>,
        /// Only the rows whose name contains this text (e.g. `loss`, `detection`,
        /// `relay`).
        #[arg(long, value_name = "TEXT", default_value = "")]
        only: String,
        /// Only the rows of the cargo bench (no loss, no jitter, detected at once).
        #[arg(long)]
        classic: bool,
        /// Print each row's distribution and slowest seeds to stderr.
        #[arg(long)]
        verbose: bool,
        /// Print the timeline and packet log of each row's first seed to stderr.
        #[arg(long)]
        trace: bool,
    },
    /// The node of `sessions`, in its own process (started by `sessions`).
    #[command(hide = true)]
    SessionsHub {
        /// Its setup file.
        #[arg(long, value_name = "FILE")]
        setup: std::path::PathBuf,
    },
}

/// Runs a benchmark; returns what to print: a table, or one line of JSON.
pub fn run(args: BenchArgs, json: bool) -> Result<String, BenchError> {
    match args.command {
        BenchCommand::Throughput {
            seconds,
            no_mtu_discovery,
            sizes,
        } => {
            if !(seconds.is_finite() && seconds > 0.0 && seconds <= 3600.0) {
                return Err(BenchError::Argument(format!(
                    "--seconds must be more than 0 and at most 3600, not {seconds}"
                )));
            }
            let transport = tether_transport::TransportConfig {
                mtu_discovery: !no_mtu_discovery,
                ..tether_transport::TransportConfig::default()
            };
            let sizes = if sizes.is_empty() {
                throughput::SIZES.to_vec()
            } else {
                sizes
            };
            if let Some(&bad) = sizes
                .iter()
                .find(|&&size| size == 0 || size > throughput::MAX_SIZE)
            {
                return Err(BenchError::Argument(format!(
                    "--size must be 1 to {} bytes, not {bad}",
                    throughput::MAX_SIZE
                )));
            }
            let report = throughput::run(Duration::from_secs_f64(seconds), &sizes, &transport)?;
            Ok(if json {
                to_json(&report)
            } else {
                report.render()
            })
        }
        BenchCommand::Handshake { count, seeds } => {
            let report = handshake::run(count.max(1), seeds.max(1))?;
            Ok(if json {
                to_json(&report)
            } else {
                report.render()
            })
        }
        BenchCommand::Sessions { count } => {
            let counts = match count {
                Some(0) => {
                    return Err(BenchError::Argument("--count must be at least 1".into()));
                }
                Some(n) => vec![n],
                None => vec![100, 1000],
            };
            let report = sessions::run(&counts)?;
            Ok(if json {
                to_json(&report)
            } else {
                report.render()
            })
        }
        BenchCommand::Relay(args) => {
            let report = relay::run(&args)?;
            Ok(if json {
                to_json(&report)
            } else {
                report.render()
            })
        }
        BenchCommand::RelayServer { store, workers } => {
            relay::server_process(store.as_deref(), workers)?;
            Ok(String::new())
        }
        BenchCommand::Migration {
            seeds,
            first_seed,
            messages,
            rtts,
            only,
            classic,
            verbose,
            trace,
        } => {
            if seeds == 0 {
                return Err(BenchError::Argument("--seeds must be at least 1".into()));
            }
            if rtts.iter().any(|r| !(2..=10_000).contains(r)) {
                return Err(BenchError::Argument(
                    "--rtt must be between 2 and 10000 ms".into(),
                ));
            }
            let settings = migration::Settings {
                seeds,
                first_seed,
                messages,
                trace,
                verbose,
            };
            let plan = if classic {
                let mut plan = migration::Plan::classic(&only);
                plan.rows.retain(|r| rtts.contains(&r.rtt_ms));
                plan
            } else {
                migration::Plan::full(&rtts, &only)
            };
            if plan.rows.is_empty() {
                return Err(BenchError::Argument(format!(
                    "no row's name contains {only:?}"
                )));
            }
            let started = std::time::Instant::now();
            let rows = migration::run(&plan, &settings);
            Ok(if json {
                to_json(&migration::report(&rows, &settings))
            } else {
                migration::render(&rows, &settings, started.elapsed())
            })
        }
        BenchCommand::SessionsHub { setup } => {
            sessions::hub_process(&setup)?;
            Ok(String::new())
        }
    }
}

fn to_json(value: &impl serde::Serialize) -> String {
    let mut line =
        serde_json::to_string(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    line.push('\n');
    line
}

/// MiB per second for `bytes` in `time`.
fn mib_per_s(bytes: usize, time: Duration) -> f64 {
    bytes as f64 / MIB / time.as_secs_f64().max(1e-9)
}

/// Rounds to two decimals, for figures in JSON.
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The resident memory of process `pid` (`self` for this one), in KiB, from
/// `/proc/PID/status` (Linux).
fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A relay server on `addr`, admitting any device, on a thread of its own (an actix
/// system); returns its address, its public key, and a handle to stop it.
fn start_relay(addr: SocketAddr) -> Result<RunningRelay, BenchError> {
    let keypair = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let public = *keypair.public();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("bench-relay".into())
        .spawn(move || {
            let system = actix_rt::System::new();
            system.block_on(async move {
                let started = async {
                    let endpoint = Endpoint::bind_udp(addr, TransportConfig::default())
                        .await
                        .map_err(|e| e.to_string())?;
                    let config = RelayServerConfig::new(keypair, [7; 32], Admission::Open);
                    RelayServer::start(endpoint, config).map_err(|e| e.to_string())
                };
                match started.await {
                    Ok(relay) => {
                        let _ = started_tx.send(Ok(relay.local_addr));
                        let _ = stop_rx.await;
                        stop_relay(&relay);
                    }
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                    }
                }
            });
        })?;
    let addr = started_rx
        .recv()
        .map_err(|_| BenchError::Setup("the relay's thread ended".into()))?
        .map_err(|e| BenchError::Setup(format!("relay: {e}")))?;
    Ok(RunningRelay {
        addr,
        public,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

fn stop_relay(relay: &RelayServerHandle) {
    relay.addr.do_send(tether_protocol::Shutdown);
}

/// A relay started by [`start_relay`]; stopped when dropped.
struct RunningRelay {
    addr: SocketAddr,
    public: tether::PublicKey,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for RunningRelay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A current-thread tokio runtime with IO and timers.
fn runtime() -> Result<tokio::runtime::Runtime, BenchError> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The environment variable whose value, when set, is the child process's `RUST_LOG`
/// (the hub of `sessions`, the relay of `relay`).
pub const CHILD_LOG_ENV: &str = "TETHER_BENCH_CHILD_LOG";

/// A child process of `tether bench` (the hub of `sessions`, the relay of `relay`),
/// running this binary, and its pipes: it says `NAME rest` lines on its output, and is
/// told lines on its input; it stops when its input closes.
struct ChildProcess {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl ChildProcess {
    /// Starts this binary with `args`.
    fn spawn(args: &[&std::ffi::OsStr]) -> Result<Self, BenchError> {
        let mut command = std::process::Command::new(std::env::current_exe()?);
        // The child's own log filter, so it can log more than this process's many nodes.
        if let Some(filter) = std::env::var_os(CHILD_LOG_ENV) {
            command.env("RUST_LOG", filter);
        }
        let mut child = command
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .map(std::io::BufReader::new)
            .ok_or_else(|| BenchError::Hub("no stdout".into()))?;
        Ok(Self {
            child,
            stdin,
            stdout,
        })
    }

    /// The rest of the next line that starts with `name`.
    fn line(&mut self, name: &str) -> Result<String, BenchError> {
        use std::io::BufRead as _;
        let mut line = String::new();
        loop {
            line.clear();
            if self.stdout.read_line(&mut line)? == 0 {
                return Err(BenchError::Hub(format!(
                    "it ended before saying {name:?} (its errors are above)"
                )));
            }
            if let Some(rest) = line.trim_end().strip_prefix(name) {
                return Ok(rest.trim().to_owned());
            }
        }
    }

    /// Tells it one line.
    fn say(&mut self, line: &str) -> Result<(), BenchError> {
        use std::io::Write as _;
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| BenchError::Hub("its input is closed".into()))?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Closes its input (it stops) and waits for it; kills it if it does not stop
    /// within 15 s.
    fn finish(mut self) {
        drop(self.stdin.take());
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
