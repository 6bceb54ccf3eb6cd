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
/// control socket's folder exists, the folder the process writes its data in takes a
/// new file (or its nearest existing parent does, where it will be made), and the UDP
/// and metrics addresses can be bound now (each is bound and released at once). When a
/// process answers on the control socket (the node or relay this config runs, checked
/// before its restart), an address in use is presumably its own: a note, not an error.
/// The first problem, in one line; else the notes.
pub fn check_resources(
    listen: SocketAddr,
    metrics: Option<SocketAddr>,
    control_socket: Option<&Path>,
    data_folder: &Path,
) -> Result<Vec<String>, String> {
    let mut notes = Vec::new();
    let mut running = None;
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
        running = std::os::unix::net::UnixStream::connect(socket)
            .is_ok()
            .then_some(socket);
    }
    check_data_folder(data_folder, &mut notes)?;
    // `what` names the address, `failed` what could not be done with it.
    let unusable = |what: String, failed: &str, error: std::io::Error, notes: &mut Vec<String>| {
        match running {
            Some(socket) if error.kind() == std::io::ErrorKind::AddrInUse => {
                notes.push(format!(
                    "{what} is in use, presumably by the process answering on {}",
                    socket.display()
                ));
                Ok(())
            }
            _ => Err(format!("{what}: {failed}: {error}")),
        }
    };
    if listen.port() != 0 {
        if let Err(error) = std::net::UdpSocket::bind(listen) {
            unusable(format!("listen {listen}"), "cannot bind", error, &mut notes)?;
        }
    }
    if let Some(metrics) = metrics {
        if let Err(error) = std::net::TcpListener::bind(metrics) {
            unusable(
                format!("metrics_addr {metrics}"),
                "cannot listen",
                error,
                &mut notes,
            )?;
        }
    }
    Ok(notes)
}

/// The folder the process writes its data in: an existing one must take a new file
/// (one is made and removed at once); a missing one is made at start, so its nearest
/// existing parent must be a folder that takes one.
fn check_data_folder(folder: &Path, notes: &mut Vec<String>) -> Result<(), String> {
    let takes_a_file = |dir: &Path| {
        let probe = dir.join(format!(".tether-check-{}", std::process::id()));
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
            .map(|_| {
                let _ = std::fs::remove_file(&probe);
            })
            .map_err(|error| format!("data folder {}: cannot write: {error}", dir.display()))
    };
    if folder.is_dir() {
        return takes_a_file(folder);
    }
    let mut existing = folder;
    while std::fs::symlink_metadata(existing).is_err() {
        match existing.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => existing = parent,
            _ => {
                existing = Path::new(".");
                break;
            }
        }
    }
    if !existing.is_dir() {
        return Err(format!(
            "data folder {}: {} is not a folder",
            folder.display(),
            existing.display()
        ));
    }
    takes_a_file(existing)?;
    notes.push(format!(
        "data folder {} will be made at start",
        folder.display()
    ));
    Ok(())
}
