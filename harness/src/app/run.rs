//! What `tether node` and `tether relay` share to run: their start-up errors, the UDP
//! endpoint they bind, and the signals that stop them.

use super::{control, metrics};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tether_transport::{Endpoint, TransportConfig};
use tokio::signal::unix::{signal, Signal, SignalKind};

/// Why a node or the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The UDP endpoint could not be bound.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The node's actors or the server could not start.
    #[error("cannot start the {what}: {source}")]
    Start {
        /// `node` or `relay`.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The control socket could not be opened.
    #[error(transparent)]
    Control(#[from] control::BindError),
    /// The metrics listener could not be opened.
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsBindError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The data folder could not be created.
    #[error("cannot create data directory {path}: {reason}")]
    DataDir {
        /// The folder.
        path: PathBuf,
        /// The operating system's reason.
        reason: String,
    },
    /// The relay's queue store could not be opened (damaged, locked, unreadable).
    #[error(transparent)]
    RelayStore(#[from] tether_store::RelayQueueDbError),
    /// The node's channel store could not be opened (damaged, locked, unreadable).
    #[error(transparent)]
    ChannelStore(#[from] tether_store::ChannelDbError),
}

/// Creates a folder below `data_dir` for a store, mode 0700: what it holds (who talks to
/// whom, and the messages themselves) is not for other users.
pub fn create_private_dir(dir: &std::path::Path) -> Result<(), RunError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|error| RunError::DataDir {
            path: dir.to_path_buf(),
            reason: error.to_string(),
        })
}

/// Binds the UDP endpoint at `addr`.
pub async fn bind(addr: SocketAddr, transport: TransportConfig) -> Result<Endpoint, RunError> {
    Endpoint::bind_udp(addr, transport)
        .await
        .map_err(|e| RunError::Listen {
            addr,
            reason: e.to_string(),
        })
}

/// SIGTERM and SIGINT, either of which stops the process cleanly.
pub struct StopSignals {
    terminate: Signal,
    interrupt: Signal,
}

impl StopSignals {
    /// Installs the handlers (before the process says it is ready, so no signal is
    /// missed).
    pub fn install() -> Result<Self, RunError> {
        Ok(Self {
            terminate: signal(SignalKind::terminate()).map_err(RunError::Signals)?,
            interrupt: signal(SignalKind::interrupt()).map_err(RunError::Signals)?,
        })
    }

    /// Resolves when either signal arrives.
    pub async fn received(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

/// What `--check` can verify beyond the config's syntax without starting anything: the
/// control socket's folder exists, the data folder can be written (or made), and the UDP
/// and metrics addresses can be bound now (each is bound and released at once). When a
/// process already answers on the control socket (the node or relay this config runs,
/// checked before its restart), its addresses are its own: they are not bound, and a note
/// says so. The first problem, in one line; else the notes.
pub fn check_resources(
    listen: SocketAddr,
    metrics: Option<SocketAddr>,
    control_socket: Option<&Path>,
    data_dir: &Path,
) -> Result<Vec<String>, String> {
    let mut notes = Vec::new();
    let mut running = false;
    if let Some(socket) = control_socket {
        let folder = match socket.parent() {
            Some(folder) if !folder.as_os_str().is_empty() => folder,
            _ => Path::new("."),
        };
        if !folder.is_dir() {
            return Err(format!(
                "control_socket {}: folder {} does not exist",
                socket.display(),
                folder.display()
            ));
        }
        running = std::os::unix::net::UnixStream::connect(socket).is_ok();
    }
    check_data_dir(data_dir, &mut notes)?;
    if running {
        notes.push(format!(
            "a process answers on {}: the addresses are its own until it stops, so they were not bound",
            control_socket.map_or_else(String::new, |s| s.display().to_string())
        ));
        return Ok(notes);
    }
    if listen.port() != 0 {
        std::net::UdpSocket::bind(listen)
            .map_err(|error| format!("listen {listen}: cannot bind: {error}"))?;
    }
    if let Some(metrics) = metrics {
        std::net::TcpListener::bind(metrics)
            .map_err(|error| format!("metrics_addr {metrics}: cannot listen: {error}"))?;
    }
    Ok(notes)
}

/// The data folder: an existing one must take a new file (one is made and removed at
/// once); a missing one is made at start, under its nearest existing folder.
fn check_data_dir(dir: &Path, notes: &mut Vec<String>) -> Result<(), String> {
    if dir.is_dir() {
        let probe = dir.join(format!(".tether-check-{}", std::process::id()));
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
            .map_err(|error| format!("data_dir {}: cannot write: {error}", dir.display()))?;
        let _ = std::fs::remove_file(&probe);
        return Ok(());
    }
    if dir.exists() {
        return Err(format!("data_dir {}: not a folder", dir.display()));
    }
    match dir.ancestors().skip(1).find(|a| a.exists()) {
        Some(existing) if existing.is_dir() => {
            notes.push(format!("data_dir {} will be made at start", dir.display()));
            Ok(())
        }
        Some(existing) => Err(format!(
            "data_dir {}: {} is not a folder",
            dir.display(),
            existing.display()
        )),
        None => Ok(()),
    }
}
